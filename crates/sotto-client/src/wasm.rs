//! The browser / Node client: two WebSockets (P0 and P1) driving a [`ClientSession`],
//! exported to JavaScript with wasm-bindgen as [`WasmClient`].
//!
//! The protocol (hello and role check, message order, routing, deadlines, reconstruction)
//! is the session's; this file only moves bytes between it and the sockets, keeps one JS
//! timer armed at the session's next deadline, and hands results to the promises waiting
//! for them (`futures` oneshot channels). The WebSocket class is passed in by the caller
//! (the npm package gives the browser's, or the `ws` package's in Node): nothing global is
//! installed or read. The sockets are driven through web-sys's [`WebSocket`] bindings, which
//! are structural (`socket.send(...)`, not `WebSocket.prototype.send.call(...)`), so they
//! work on an object of any class with the WebSocket interface: sockets and their events are
//! cast with `unchecked_into`, never checked with `instanceof` (`dyn_into`), and
//! `WebSocket::new` is never called (it would read the global `WebSocket`, which Node 20
//! lacks).
//!
//! Errors cross into JavaScript as `Error` objects whose message is the [`ClientError`]'s,
//! with extra properties `kind` (see [`ClientError::kind`]) and, for server errors, `server`
//! (`"P0"`/`"P1"`) and `code` (the server's error code). Shares are never logged.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};

use futures_channel::oneshot;
use js_sys::{Array, Float64Array, Function, Object, Reflect, Uint8Array};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

use crate::session::{ClientSession, Event, Outcome, Server, SessionConfig, SessionState};
use crate::{ClientError, Prediction};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(f: &Function, ms: f64) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);
    #[wasm_bindgen(js_namespace = Date, js_name = now)]
    fn date_now() -> f64;
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(msg: &str);
}

fn now() -> u64 {
    date_now().max(0.0) as u64
}

/// Sends Rust panics to `console.error` (once per module instance).
fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            console_error(&format!("sotto-client (wasm) panicked: {info}"));
        }))
    });
}

type Handler = Closure<dyn FnMut(JsValue)>;
type Reply = Result<Outcome, ClientError>;

fn js_message(v: &JsValue) -> Option<String> {
    Reflect::get(v, &JsValue::from_str("message"))
        .ok()
        .and_then(|m| m.as_string())
        .or_else(|| v.as_string())
        .filter(|m| !m.is_empty())
}

fn get(v: &JsValue, k: &str) -> JsValue {
    Reflect::get(v, &JsValue::from_str(k)).unwrap_or(JsValue::UNDEFINED)
}

/// What the sockets' handlers, the timer and the client share.
struct Driver {
    session: RefCell<ClientSession>,
    /// Objects of the caller's WebSocket class (not necessarily the browser's).
    sockets: RefCell<Vec<WebSocket>>,
    open: [Cell<bool>; 2],
    detached: Cell<bool>,
    waiters: RefCell<HashMap<u32, oneshot::Sender<Reply>>>,
    ready: RefCell<Option<oneshot::Sender<Result<(), ClientError>>>>,
    on_close: Option<Function>,
    /// The pending timeout's id and deadline.
    timer: RefCell<Option<(JsValue, u64)>>,
    /// The one timer callback (kept for the driver's lifetime: never dropped while running).
    timer_cb: RefCell<Option<Closure<dyn FnMut()>>>,
    handlers: RefCell<Vec<Handler>>,
}

impl Driver {
    /// Hands on what the session says (messages, results, the end), and re-arms the timer.
    fn pump(&self) {
        loop {
            let mut out: Vec<(Server, Vec<u8>)> = Vec::new();
            let mut events = Vec::new();
            {
                let mut s = self.session.borrow_mut();
                for server in Server::BOTH {
                    if self.open[server.idx()].get() && !self.detached.get() {
                        while let Some(b) = s.poll_transmit(server) {
                            out.push((server, b));
                        }
                    }
                }
                while let Some(e) = s.poll_event() {
                    events.push(e);
                }
            }
            if out.is_empty() && events.is_empty() {
                break;
            }
            for (server, b) in out {
                let sent = {
                    let sockets = self.sockets.borrow();
                    match sockets.get(server.idx()) {
                        // A copy owned by JS: the socket may keep (and mask) it.
                        Some(ws) => ws.send_with_js_u8_array(&Uint8Array::from(&b[..])),
                        None => Ok(()),
                    }
                };
                if let Err(e) = sent {
                    let detail = format!(
                        "cannot send: {}",
                        js_message(&e).unwrap_or_else(|| "the socket refused the message".into())
                    );
                    self.session.borrow_mut().handle_io_error(server, &detail);
                }
            }
            for e in events {
                match e {
                    Event::Connected => {
                        if let Some(tx) = self.ready.borrow_mut().take() {
                            let _ = tx.send(Ok(()));
                        }
                    }
                    Event::Done(id, r) => {
                        let tx = self.waiters.borrow_mut().remove(&id);
                        if let Some(tx) = tx {
                            let _ = tx.send(r);
                        }
                    }
                    Event::Closed(why) => {
                        if let Some(tx) = self.ready.borrow_mut().take() {
                            let _ = tx.send(Err(why.clone()));
                        }
                        self.detach();
                        if let Some(f) = &self.on_close {
                            let _ = f.call1(&JsValue::UNDEFINED, &js_error(&why));
                        }
                    }
                }
            }
        }
        self.arm();
    }

    /// Sends what is still queued (the `Close` frames), then closes both sockets and
    /// silences their handlers.
    fn detach(&self) {
        if self.detached.get() {
            return;
        }
        let mut queued: Vec<(Server, Vec<u8>)> = Vec::new();
        {
            let mut s = self.session.borrow_mut();
            for server in Server::BOTH {
                while let Some(b) = s.poll_transmit(server) {
                    queued.push((server, b));
                }
            }
        }
        self.detached.set(true);
        let sockets = self.sockets.borrow();
        for (server, b) in queued {
            if self.open[server.idx()].get() {
                if let Some(ws) = sockets.get(server.idx()) {
                    let _ = ws.send_with_js_u8_array(&Uint8Array::from(&b[..]));
                }
            }
        }
        for ws in sockets.iter() {
            ws.set_onopen(None);
            ws.set_onmessage(None);
            ws.set_onclose(None);
            // Not null: Node's `ws` throws an "error" event nobody listens to (closing a
            // socket that is still connecting emits one).
            NOOP.with(|f| ws.set_onerror(Some(f)));
            let _ = ws.close();
        }
    }

    /// Keeps one timeout armed at the session's next deadline.
    fn arm(&self) {
        let next = self.session.borrow().next_deadline();
        let mut t = self.timer.borrow_mut();
        if t.as_ref().map(|(_, d)| *d) == next {
            return;
        }
        if let Some((id, _)) = t.take() {
            clear_timeout(&id);
        }
        if let (Some(deadline), Some(cb)) = (next, self.timer_cb.borrow().as_ref()) {
            let ms = deadline.saturating_sub(now()) as f64;
            let id = set_timeout(cb.as_ref().unchecked_ref(), ms);
            *t = Some((id, deadline));
        }
    }

    fn on_timer(&self) {
        self.timer.borrow_mut().take();
        self.session.borrow_mut().handle_timeout(now());
        self.pump();
    }

    fn on_open(&self, server: Server) {
        self.open[server.idx()].set(true);
        self.pump();
    }

    fn on_message(&self, server: Server, ev: JsValue) {
        let data = ev.unchecked_into::<MessageEvent>().data();
        {
            let mut s = self.session.borrow_mut();
            if data.is_instance_of::<js_sys::ArrayBuffer>() || js_sys::ArrayBuffer::is_view(&data) {
                let bytes = Uint8Array::new(&data).to_vec();
                s.handle_bytes(server, &bytes, now());
            } else {
                s.handle_text(server);
            }
        }
        self.pump();
    }

    /// Not a `web_sys::ErrorEvent`: the browser fires a plain `Event` (no `message`), Node's
    /// `ws` an object with `message` and `error`; both are read as they come.
    fn on_error(&self, server: Server, ev: JsValue) {
        let detail = js_message(&ev)
            .or_else(|| js_message(&get(&ev, "error")))
            .unwrap_or_else(|| "connection failed".into());
        self.session.borrow_mut().handle_io_error(server, &detail);
        self.pump();
    }

    fn on_close(&self, server: Server, ev: JsValue) {
        let ev = ev.unchecked_into::<CloseEvent>();
        // 0 is no close code (the wire never carries it): an event without one.
        let code = Some(ev.code()).filter(|c| *c != 0);
        let reason = ev.reason();
        self.session
            .borrow_mut()
            .handle_closed(server, code, &reason);
        self.pump();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.session.borrow_mut().close();
        self.detach();
        if let Some((id, _)) = self.timer.borrow_mut().take() {
            clear_timeout(&id);
        }
    }
}

thread_local! {
    /// An event handler that does nothing, for sockets whose client is gone (one per module,
    /// kept for its lifetime).
    static NOOP: Function = Handler::new(|_: JsValue| {}).into_js_value().unchecked_into();
}

/// Turns a [`ClientError`] into a JS `Error` with `kind` (and `server`, `code`) properties.
fn js_error(e: &ClientError) -> JsValue {
    let err = js_sys::Error::new(&e.to_string());
    if let ClientError::Server { server, code, .. } = e {
        let _ = Reflect::set(&err, &"server".into(), &server.as_str().into());
        let _ = Reflect::set(&err, &"code".into(), &code.as_str().into());
    }
    let _ = Reflect::set(&err, &"kind".into(), &e.kind().into());
    err.into()
}

fn set(o: &Object, k: &str, v: &JsValue) {
    let _ = Reflect::set(o, &JsValue::from_str(k), v);
}

fn num(v: usize) -> JsValue {
    JsValue::from_f64(v as f64)
}

/// A JS array of numbers from sizes or indices.
fn index_array(v: &[usize]) -> JsValue {
    v.iter().map(|x| num(*x)).collect::<Array>().into()
}

fn prediction_to_js(p: &Prediction, sent: [usize; 2]) -> JsValue {
    let o = Object::new();
    set(&o, "sentP0", &num(sent[0]));
    set(&o, "sentP1", &num(sent[1]));
    set(&o, "logits", &Float64Array::from(&p.logits[..]).into());
    set(
        &o,
        "probabilities",
        &match &p.probabilities {
            Some(v) => Float64Array::from(&v[..]).into(),
            None => JsValue::NULL,
        },
    );
    set(&o, "labels", &index_array(&p.labels));
    set(&o, "outputLen", &num(p.output_len));
    o.into()
}

/// A private-prediction client for P0 and P1 of one deployment (from JavaScript).
///
/// `new WasmClient(...)` opens both sockets at once; `ready()` resolves when both servers
/// answered and form a pair. Predictions may overlap.
#[wasm_bindgen]
pub struct WasmClient {
    d: Rc<Driver>,
}

impl std::fmt::Debug for WasmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WasmClient({:?})", self.d.session.borrow())
    }
}

#[wasm_bindgen]
impl WasmClient {
    /// Starts connecting to P0 and P1 (`ws://`, `wss://`, `http://` or `https://` base
    /// URLs; `/v1/ws` is appended unless present) with `web_socket` (a WebSocket class),
    /// asking for `model` (empty: the servers' default) with `api_key`, if any. `timeout_ms`
    /// (0: 10 000) bounds the setup and each prediction. `on_close` is called
    /// once, with the error, when the connection ends for any reason. Throws on a bad URL.
    #[wasm_bindgen(constructor)]
    pub fn new(
        p0: String,
        p1: String,
        model: String,
        api_key: Option<String>,
        timeout_ms: u32,
        web_socket: JsValue,
        on_close: Option<Function>,
    ) -> Result<WasmClient, JsValue> {
        install_panic_hook();
        let cfg = SessionConfig {
            p0,
            p1,
            model,
            api_key,
            timeout_ms: u64::from(timeout_ms),
            keep_last_sent: true,
        };
        let session = ClientSession::new(cfg, now()).map_err(|e| js_error(&e))?;
        let ctor: Function = web_socket.dyn_into().map_err(|_| {
            JsValue::from(js_sys::TypeError::new(
                "webSocket must be a WebSocket class",
            ))
        })?;
        let d = Rc::new(Driver {
            session: RefCell::new(session),
            sockets: RefCell::new(Vec::new()),
            open: [Cell::new(false), Cell::new(false)],
            detached: Cell::new(false),
            waiters: RefCell::new(HashMap::new()),
            ready: RefCell::new(None),
            on_close,
            timer: RefCell::new(None),
            timer_cb: RefCell::new(None),
            handlers: RefCell::new(Vec::new()),
        });
        let w = Rc::downgrade(&d);
        *d.timer_cb.borrow_mut() = Some(Closure::<dyn FnMut()>::new(move || {
            if let Some(d) = w.upgrade() {
                d.on_timer()
            }
        }));
        for server in Server::BOTH {
            let url = d.session.borrow().url(server).to_string();
            let ws = match Reflect::construct(&ctor, &Array::of1(&url.into())) {
                // Unchecked: the class may not be the browser's WebSocket (Node's `ws`).
                Ok(ws) => ws.unchecked_into::<WebSocket>(),
                Err(e) => {
                    let detail = js_message(&e).unwrap_or_else(|| "cannot open a WebSocket".into());
                    d.session.borrow_mut().handle_io_error(server, &detail);
                    break;
                }
            };
            ws.set_binary_type(BinaryType::Arraybuffer);
            let handler = |f: fn(&Driver, Server, JsValue)| {
                let w: Weak<Driver> = Rc::downgrade(&d);
                Handler::new(move |ev: JsValue| {
                    if let Some(d) = w.upgrade() {
                        f(&d, server, ev)
                    }
                })
            };
            let hs = [
                handler(|d, s, _| d.on_open(s)),
                handler(Driver::on_message),
                handler(Driver::on_error),
                handler(Driver::on_close),
            ];
            ws.set_onopen(Some(hs[0].as_ref().unchecked_ref()));
            ws.set_onmessage(Some(hs[1].as_ref().unchecked_ref()));
            ws.set_onerror(Some(hs[2].as_ref().unchecked_ref()));
            ws.set_onclose(Some(hs[3].as_ref().unchecked_ref()));
            d.handlers.borrow_mut().extend(hs);
            d.sockets.borrow_mut().push(ws);
        }
        d.pump();
        Ok(WasmClient { d })
    }

    /// Resolves when both servers answered with manifests that form a pair; rejects with the
    /// reason the setup failed (call once).
    pub fn ready(&self) -> js_sys::Promise {
        let (tx, rx) = oneshot::channel();
        *self.d.ready.borrow_mut() = Some(tx);
        let state = self.d.session.borrow().state();
        let now = match state {
            SessionState::Ready => Some(Ok(())),
            SessionState::Closed => Some(Err(self
                .d
                .session
                .borrow()
                .close_reason()
                .cloned()
                .unwrap_or_else(|| ClientError::Connection("closed".into())))),
            SessionState::Connecting => None,
        };
        if let Some(r) = now {
            if let Some(tx) = self.d.ready.borrow_mut().take() {
                let _ = tx.send(r);
            }
        }
        wasm_bindgen_futures::future_to_promise(async move {
            match rx.await {
                Ok(Ok(())) => Ok(JsValue::UNDEFINED),
                Ok(Err(e)) => Err(js_error(&e)),
                Err(_) => Err(js_error(&ClientError::Connection("closed".into()))),
            }
        })
    }

    /// `"connecting"`, `"open"` or `"closed"`.
    pub fn state(&self) -> String {
        match self.d.session.borrow().state() {
            SessionState::Connecting => "connecting",
            SessionState::Ready => "open",
            SessionState::Closed => "closed",
        }
        .into()
    }

    /// The model's manifest as an object (`undefined` before `ready()`): `modelId`,
    /// `inputShape`, `fracBits`, `outputLen`, `outFrac`, `softmaxAtClient`, `inputBound`,
    /// `deployment`, `maxBatch`, `inputBits` (`null` without a range step).
    pub fn manifest(&self) -> JsValue {
        let s = self.d.session.borrow();
        let Some(m) = s.manifest() else {
            return JsValue::UNDEFINED;
        };
        let o = Object::new();
        set(&o, "modelId", &m.model_id.as_str().into());
        set(&o, "inputShape", &index_array(&m.input_shape));
        set(&o, "fracBits", &JsValue::from_f64(f64::from(m.frac_bits)));
        set(&o, "outputLen", &num(m.output_len));
        set(&o, "outFrac", &JsValue::from_f64(f64::from(m.out_frac)));
        set(
            &o,
            "softmaxAtClient",
            &JsValue::from_bool(m.softmax_at_client),
        );
        set(&o, "inputBound", &JsValue::from_f64(m.input_bound));
        set(&o, "deployment", &m.deployment.as_str().into());
        set(&o, "maxBatch", &num(m.max_batch));
        set(
            &o,
            "inputBits",
            &m.input_bits
                .map_or(JsValue::NULL, |k| JsValue::from_f64(f64::from(k))),
        );
        o.into()
    }

    /// Starts a prediction of `batch` inputs (`x` batch first): throws at once for input
    /// that does not fit (nothing is sent), else returns `{id, done}` where `done` resolves
    /// to `{logits: Float64Array, probabilities: Float64Array | null, labels: number[],
    /// outputLen, sentP0, sentP1}` or rejects (a server's refusal, a timeout, a closed
    /// connection, `cancel(id)`).
    pub fn begin(&self, x: Vec<f32>, batch: u32) -> Result<JsValue, JsValue> {
        let id = self
            .d
            .session
            .borrow_mut()
            .start_predict(&x, batch as usize, now())
            .map_err(|e| js_error(&e))?;
        let (tx, rx) = oneshot::channel();
        self.d.waiters.borrow_mut().insert(id, tx);
        self.d.pump();
        let done = wasm_bindgen_futures::future_to_promise(async move {
            match rx.await {
                Ok(Ok(o)) => Ok(prediction_to_js(&o.prediction, o.sent)),
                Ok(Err(e)) => Err(js_error(&e)),
                Err(_) => Err(js_error(&ClientError::Connection("closed".into()))),
            }
        });
        let o = Object::new();
        set(&o, "id", &JsValue::from_f64(f64::from(id)));
        set(&o, "done", &done.into());
        Ok(o.into())
    }

    /// Gives up on prediction `id`: its `done` rejects with kind `aborted`, and whatever the
    /// servers still send for it is dropped. False when it is no longer in flight.
    pub fn cancel(&self, id: u32) -> bool {
        let found = self.d.session.borrow_mut().cancel(id);
        self.d.pump();
        found
    }

    /// Bytes sent so far (frames, headers included): `{p0, p1}`.
    #[wasm_bindgen(js_name = bytesSent)]
    pub fn bytes_sent(&self) -> JsValue {
        let b = self.d.session.borrow().bytes_sent();
        let o = Object::new();
        set(&o, "p0", &JsValue::from_f64(b[0] as f64));
        set(&o, "p1", &JsValue::from_f64(b[1] as f64));
        o.into()
    }

    /// The payloads of the last input share sent to P0 and of the last seed sent to P1, as
    /// `{p0: Uint8Array, p1: Uint8Array}` (empty before the first prediction): all that each
    /// server received of the input.
    #[wasm_bindgen(js_name = lastSent)]
    pub fn last_sent(&self) -> JsValue {
        let s = self.d.session.borrow();
        let o = Object::new();
        set(&o, "p0", &Uint8Array::from(s.last_sent(Server::P0)).into());
        set(&o, "p1", &Uint8Array::from(s.last_sent(Server::P1)).into());
        o.into()
    }

    /// Closes both connections; predictions still waiting reject.
    pub fn close(&self) {
        self.d.session.borrow_mut().close();
        self.d.pump();
    }
}

//! The browser / Node client: two WebSockets (P0 and P1) through the JS global `WebSocket`,
//! exported to JavaScript with wasm-bindgen as [`WasmClient`].
//!
//! The wire protocol is the native client's: a `Hello` answered by a `Manifest`; per
//! prediction an `InputShare` to P0 (session 0, `step` = request number) answered by a
//! `Session` frame, then the `InputSeed` to P1 for that session, then one `Output` (or `Error`)
//! frame from each server. Replies are routed by request number and session, so several
//! predictions may be in flight at once; an `Output` that arrives before its prediction waits
//! for it is kept. Every wait has a deadline (a JS timer), and a connection that closes or
//! fails rejects every prediction waiting on it at once.
//!
//! Errors cross into JavaScript as `Error` objects whose message is the [`ClientError`]'s, with
//! extra properties `kind` (`"input"`, `"server"`, `"connection"` or `"protocol"`) and, for
//! server errors, `server` (`"P0"`/`"P1"`) and `code` (the server's error code). Shares are
//! never logged.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use js_sys::{Array, Float64Array, Object, Reflect, Uint8Array};
use sotto_core::ring;
use sotto_wire::{decode, Frame, Hello, Kind, Manifest, Role, DEFAULT_MAX_PAYLOAD, HEADER_LEN};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{BinaryType, CloseEvent, WebSocket};

use crate::{elements, reconstruct, server_error, share_input, ClientError, Prediction, Result};

/// Deadline of the connection setup and of each wait of a prediction when none is given.
const DEFAULT_TIMEOUT_MS: u32 = 10_000;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(f: &js_sys::Function, ms: f64) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(msg: &str);
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

// ---------------------------------------------------------------------------------------------
// A one-shot reply slot and its future (single-threaded: wasm has no threads here).

enum SlotState<T> {
    Waiting(Option<Waker>),
    Ready(Result<T>),
    Taken,
}

/// Where one reply lands: filled once (later fills are ignored), awaited once.
struct Slot<T>(RefCell<SlotState<T>>);

impl<T> Slot<T> {
    fn new() -> Rc<Slot<T>> {
        Rc::new(Slot(RefCell::new(SlotState::Waiting(None))))
    }

    fn fill(&self, r: Result<T>) {
        let waker = {
            let mut s = self.0.borrow_mut();
            match &mut *s {
                SlotState::Waiting(w) => {
                    let w = w.take();
                    *s = SlotState::Ready(r);
                    w
                }
                _ => None,
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Waits for a [`Slot`].
struct Wait<T>(Rc<Slot<T>>);

impl<T> Future for Wait<T> {
    type Output = Result<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        let mut s = self.0 .0.borrow_mut();
        match std::mem::replace(&mut *s, SlotState::Taken) {
            SlotState::Ready(r) => Poll::Ready(r),
            SlotState::Waiting(_) => {
                *s = SlotState::Waiting(Some(cx.waker().clone()));
                Poll::Pending
            }
            SlotState::Taken => Poll::Ready(Err(ClientError::Protocol(
                "a reply was awaited twice".into(),
            ))),
        }
    }
}

/// A JS timer that runs `on_fire` once unless dropped first.
struct Timer {
    id: JsValue,
    _cb: Closure<dyn FnMut()>,
}

impl Timer {
    fn start(ms: u32, on_fire: impl FnOnce() + 'static) -> Timer {
        let mut f = Some(on_fire);
        let cb = Closure::<dyn FnMut()>::new(move || {
            if let Some(f) = f.take() {
                f()
            }
        });
        let id = set_timeout(cb.as_ref().unchecked_ref(), f64::from(ms));
        Timer { id, _cb: cb }
    }

    /// A timer that fails each slot with "`<name>` did not `<what>` within `ms` ms".
    fn deadline(ms: u32, what: &'static str, slots: Vec<(&'static str, Rc<Slot<Frame>>)>) -> Timer {
        Timer::start(ms, move || {
            for (name, s) in slots {
                s.fill(Err(ClientError::Connection(format!(
                    "{name} did not {what} within {ms} ms"
                ))));
            }
        })
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        clear_timeout(&self.id);
    }
}

// ---------------------------------------------------------------------------------------------
// One server connection.

#[derive(Default)]
struct Routes {
    open: Option<Rc<Slot<()>>>,
    hello: Option<Rc<Slot<Frame>>>,
    by_request: HashMap<u32, Rc<Slot<Frame>>>,
    by_session: HashMap<u128, Rc<Slot<Frame>>>,
    early: HashMap<u128, Frame>,
    closed: Option<ClientError>,
}

/// What the socket's event handlers share with the client.
struct Shared {
    name: &'static str,
    ws: WebSocket,
    routes: RefCell<Routes>,
}

fn js_message(v: &JsValue) -> Option<String> {
    Reflect::get(v, &JsValue::from_str("message"))
        .ok()
        .and_then(|m| m.as_string())
        .or_else(|| v.as_string())
        .filter(|m| !m.is_empty())
}

impl Shared {
    /// Marks the connection failed (the first reason stays), rejects everything waiting on it
    /// and closes the socket.
    fn fail(&self, why: ClientError) {
        let (open, hello, waiting) = {
            let mut r = self.routes.borrow_mut();
            if r.closed.is_some() {
                return;
            }
            r.closed = Some(why.clone());
            r.early.clear();
            let mut waiting: Vec<Rc<Slot<Frame>>> = r.by_request.drain().map(|(_, s)| s).collect();
            waiting.extend(r.by_session.drain().map(|(_, s)| s));
            (r.open.take(), r.hello.take(), waiting)
        };
        if let Some(s) = open {
            s.fill(Err(why.clone()));
        }
        if let Some(s) = hello {
            s.fill(Err(why.clone()));
        }
        for s in waiting {
            s.fill(Err(why.clone()));
        }
        let _ = self.ws.close();
    }

    fn on_open(&self) {
        let open = self.routes.borrow_mut().open.take();
        if let Some(s) = open {
            s.fill(Ok(()));
        }
    }

    fn on_message(&self, ev: JsValue) {
        let name = self.name;
        let data = Reflect::get(&ev, &JsValue::from_str("data")).unwrap_or(JsValue::UNDEFINED);
        if data.is_string() || data.is_undefined() || data.is_null() {
            return self.fail(ClientError::Protocol(format!(
                "{name} sent a message that is not binary"
            )));
        }
        let bytes = Uint8Array::new(&data).to_vec();
        let f = match decode(&bytes, DEFAULT_MAX_PAYLOAD) {
            Ok(f) => f,
            Err(e) => {
                return self.fail(ClientError::Protocol(format!(
                    "{name} sent a bad frame: {e}"
                )))
            }
        };
        let mut r = self.routes.borrow_mut();
        if r.closed.is_some() {
            return;
        }
        if let Some(s) = r.hello.take() {
            drop(r);
            return s.fill(Ok(f));
        }
        match f.kind {
            Kind::Session => {
                // A request nobody waits for any more (timed out) is ignored.
                if let Some(s) = r.by_request.remove(&f.step) {
                    drop(r);
                    s.fill(Ok(f));
                }
            }
            Kind::Output => {
                if let Some(s) = r.by_session.remove(&f.session) {
                    drop(r);
                    s.fill(Ok(f));
                } else {
                    r.early.insert(f.session, f);
                }
            }
            Kind::Error if f.session != 0 => {
                if let Some(s) = r.by_session.remove(&f.session) {
                    drop(r);
                    s.fill(Err(server_error(name, &f)));
                } else {
                    r.early.insert(f.session, f);
                }
            }
            Kind::Error => {
                if let Some(s) = r.by_request.remove(&f.step) {
                    drop(r);
                    s.fill(Err(server_error(name, &f)));
                } else {
                    drop(r);
                    self.fail(server_error(name, &f));
                }
            }
            k => {
                drop(r);
                self.fail(ClientError::Protocol(format!(
                    "{name} sent an unexpected {k:?} frame"
                )))
            }
        }
    }
}

type Handler = Closure<dyn FnMut(JsValue)>;

thread_local! {
    /// An event handler that does nothing, for sockets whose client is gone (one per module,
    /// kept for its lifetime).
    static NOOP: JsValue = Handler::new(|_: JsValue| {}).into_js_value();
}

struct Conn {
    shared: Rc<Shared>,
    sent: Cell<u64>,
    _handlers: Vec<Handler>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let ws = &self.shared.ws;
        ws.set_onopen(None);
        ws.set_onmessage(None);
        ws.set_onclose(None);
        // Not None: Node's `ws` throws an "error" event nobody listens to (closing a socket
        // that is still connecting emits one).
        NOOP.with(|f| ws.set_onerror(Some(f.unchecked_ref())));
        let _ = ws.close();
    }
}

/// `http(s)://` base URLs name the same server as `ws(s)://`.
fn ws_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        base.to_string()
    };
    format!("{base}/v1/ws")
}

impl Conn {
    async fn open(
        name: &'static str,
        base: &str,
        model: &str,
        timeout_ms: u32,
    ) -> Result<(Conn, Manifest)> {
        let url = ws_url(base);
        let ws = WebSocket::new(&url).map_err(|e| {
            ClientError::Connection(format!(
                "{name} ({url}): {}",
                js_message(&e).unwrap_or_else(|| "cannot open a WebSocket".into())
            ))
        })?;
        ws.set_binary_type(BinaryType::Arraybuffer);
        let open = Slot::new();
        let shared = Rc::new(Shared {
            name,
            ws,
            routes: RefCell::new(Routes {
                open: Some(open.clone()),
                ..Routes::default()
            }),
        });
        let s = shared.clone();
        let on_open = Handler::new(move |_: JsValue| s.on_open());
        let s = shared.clone();
        let on_message = Handler::new(move |ev: JsValue| s.on_message(ev));
        let s = shared.clone();
        let u = url.clone();
        let on_error = Handler::new(move |ev: JsValue| {
            let detail = js_message(&ev)
                .or_else(|| {
                    Reflect::get(&ev, &JsValue::from_str("error"))
                        .ok()
                        .and_then(|e| js_message(&e))
                })
                .unwrap_or_else(|| "connection failed".into());
            s.fail(ClientError::Connection(format!("{name} ({u}): {detail}")))
        });
        let s = shared.clone();
        let on_close = Handler::new(move |ev: JsValue| {
            let ev: CloseEvent = ev.unchecked_into();
            let reason = ev.reason();
            let reason = if reason.is_empty() {
                String::new()
            } else {
                format!(": {reason}")
            };
            s.fail(ClientError::Connection(format!(
                "{name} closed the connection (code {}{reason})",
                ev.code()
            )))
        });
        let ws = &shared.ws;
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onerror(Some(on_error.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        let conn = Conn {
            shared: shared.clone(),
            sent: Cell::new(0),
            _handlers: vec![on_open, on_message, on_error, on_close],
        };
        let s = shared.clone();
        let u = url.clone();
        let _timer = Timer::start(timeout_ms, move || {
            s.fail(ClientError::Connection(format!(
                "{name} ({u}) did not answer within {timeout_ms} ms"
            )))
        });
        Wait(open).await?;
        let hello = Slot::new();
        shared.routes.borrow_mut().hello = Some(hello.clone());
        let f = Frame::json(
            Kind::Hello,
            0,
            0,
            &Hello {
                role: Role::Client,
                model_id: model.to_string(),
                api_key: None,
            },
        )
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        conn.send(&f)?;
        let reply = Wait(hello).await?;
        let manifest = match reply.kind {
            Kind::Manifest => reply
                .parse_json::<Manifest>(Kind::Manifest)
                .map_err(|e| ClientError::Protocol(format!("{name}: {e}")))?,
            Kind::Error => return Err(server_error(name, &reply)),
            k => {
                return Err(ClientError::Protocol(format!(
                    "{name} answered the hello with a {k:?} frame"
                )))
            }
        };
        Ok((conn, manifest))
    }

    fn name(&self) -> &'static str {
        self.shared.name
    }

    fn check_open(&self) -> Result<()> {
        match &self.shared.routes.borrow().closed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn send(&self, f: &Frame) -> Result<()> {
        self.check_open()?;
        let b = f.encode();
        // A copy owned by JS: the socket may keep (and mask) it after this call.
        let arr = Uint8Array::from(&b[..]);
        self.shared
            .ws
            .send_with_array_buffer(&arr.buffer())
            .map_err(|e| {
                ClientError::Connection(format!(
                    "{}: cannot send: {}",
                    self.name(),
                    js_message(&e).unwrap_or_else(|| "the socket refused the message".into())
                ))
            })?;
        self.sent.set(self.sent.get() + b.len() as u64);
        Ok(())
    }

    fn expect_request(&self, req: u32) -> Result<Rc<Slot<Frame>>> {
        let mut r = self.shared.routes.borrow_mut();
        if let Some(e) = &r.closed {
            return Err(e.clone());
        }
        let s = Slot::new();
        r.by_request.insert(req, s.clone());
        Ok(s)
    }

    fn expect_session(&self, session: u128) -> Result<Rc<Slot<Frame>>> {
        let mut r = self.shared.routes.borrow_mut();
        let s = Slot::new();
        if let Some(f) = r.early.remove(&session) {
            s.fill(if f.kind == Kind::Error {
                Err(server_error(self.name(), &f))
            } else {
                Ok(f)
            });
        } else if let Some(e) = &r.closed {
            return Err(e.clone());
        } else {
            r.by_session.insert(session, s.clone());
        }
        Ok(s)
    }

    fn forget_request(&self, req: u32) {
        self.shared.routes.borrow_mut().by_request.remove(&req);
    }

    fn forget_session(&self, session: u128) {
        let mut r = self.shared.routes.borrow_mut();
        r.by_session.remove(&session);
        r.early.remove(&session);
    }

    fn close(&self) {
        let _ = self.send(&Frame {
            kind: Kind::Close,
            session: 0,
            step: 0,
            payload: Vec::new(),
        });
        self.shared.fail(ClientError::Connection(format!(
            "the client closed its connection to {}",
            self.name()
        )));
    }
}

// ---------------------------------------------------------------------------------------------
// The client.

struct Inner {
    p0: Conn,
    p1: Conn,
    manifest: Manifest,
    timeout_ms: u32,
    next_request: Cell<u32>,
    last_p0: RefCell<Vec<u8>>,
    last_p1: RefCell<Vec<u8>>,
}

impl Inner {
    /// Predicts; also returns the bytes sent to P0 and to P1 for this prediction.
    async fn predict(&self, x: &[f32], batch: usize) -> Result<(Prediction, [usize; 2])> {
        let shares = share_input(&self.manifest, x, batch)?;
        self.p0.check_open()?;
        self.p1.check_open()?;
        let req = self.next_request.get();
        self.next_request.set(req.checked_add(1).unwrap_or(1));

        let payload = ring::to_le_bytes(&shares.to_p0);
        let assigned = self.p0.expect_request(req)?;
        let timer = Timer::deadline(
            self.timeout_ms,
            "assign a session",
            vec![("P0", assigned.clone())],
        );
        let sent = self.p0.send(&Frame {
            kind: Kind::InputShare,
            session: 0,
            step: req,
            payload: payload.clone(),
        });
        let s = match sent {
            Ok(()) => Wait(assigned).await,
            Err(e) => Err(e),
        };
        drop(timer);
        self.p0.forget_request(req);
        let s = s?;
        let sent = [payload.len() + HEADER_LEN, 32 + HEADER_LEN];
        *self.last_p0.borrow_mut() = payload;
        let session = s.session;
        if session == 0 {
            return Err(ClientError::Protocol("P0 assigned session 0".into()));
        }

        let res = async {
            let out0 = self.p0.expect_session(session)?;
            let out1 = self.p1.expect_session(session)?;
            let _timer = Timer::deadline(
                self.timeout_ms,
                "send its output",
                vec![("P0", out0.clone()), ("P1", out1.clone())],
            );
            let seed = shares.to_p1.0.to_vec();
            self.p1.send(&Frame {
                kind: Kind::InputSeed,
                session,
                step: 0,
                payload: seed.clone(),
            })?;
            *self.last_p1.borrow_mut() = seed;
            Both {
                a: Box::pin(Wait(out0)),
                b: Box::pin(Wait(out1)),
                ra: None,
                rb: None,
            }
            .await
        }
        .await;
        self.p0.forget_session(session);
        self.p1.forget_session(session);
        let (a, b) = res?;
        if a.kind != Kind::Output || b.kind != Kind::Output {
            return Err(ClientError::Protocol(format!(
                "expected output frames, got {:?} and {:?}",
                a.kind, b.kind
            )));
        }
        let n = batch.saturating_mul(self.manifest.output_len);
        let ya = elements(&a.payload, n)?;
        let yb = elements(&b.payload, n)?;
        Ok((reconstruct(&self.manifest, &ya, &yb, batch)?, sent))
    }
}

/// Turns a [`ClientError`] into a JS `Error` with `kind` (and `server`, `code`) properties.
fn js_error(e: &ClientError) -> JsValue {
    let err = js_sys::Error::new(&e.to_string());
    let kind = match e {
        ClientError::Input(_) => "input",
        ClientError::Server { server, code, .. } => {
            let _ = Reflect::set(&err, &"server".into(), &server.as_str().into());
            let _ = Reflect::set(&err, &"code".into(), &code.as_str().into());
            "server"
        }
        ClientError::Connection(_) => "connection",
        ClientError::Protocol(_) => "protocol",
    };
    let _ = Reflect::set(&err, &"kind".into(), &kind.into());
    err.into()
}

fn set(o: &Object, k: &str, v: &JsValue) {
    let _ = Reflect::set(o, &JsValue::from_str(k), v);
}

/// A JS array of numbers from sizes or indices.
fn index_array(v: &[usize]) -> JsValue {
    v.iter()
        .map(|x| JsValue::from_f64(*x as f64))
        .collect::<Array>()
        .into()
}

fn prediction_to_js(p: &Prediction, sent: [usize; 2]) -> JsValue {
    let o = Object::new();
    set(&o, "sentP0", &JsValue::from_f64(sent[0] as f64));
    set(&o, "sentP1", &JsValue::from_f64(sent[1] as f64));
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
    set(&o, "outputLen", &JsValue::from_f64(p.output_len as f64));
    o.into()
}

/// A private-prediction client connected to P0 and P1 for one model (from JavaScript).
///
/// `predict` may be called again before earlier predictions finish.
#[wasm_bindgen]
pub struct WasmClient {
    inner: Rc<Inner>,
}

impl std::fmt::Debug for WasmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WasmClient(model {})", self.inner.manifest.model_id)
    }
}

#[wasm_bindgen]
impl WasmClient {
    /// Connects to P0 and P1 (`ws://`, `wss://`, `http://` or `https://` base URLs; the
    /// client appends `/v1/ws`), asks both for `model` (empty: the servers' default) and
    /// checks that they describe it identically. `timeout_ms` (0: 10 000) bounds the setup
    /// and each wait of every prediction. Rejects with an `Error` on failure.
    pub async fn connect(
        p0: String,
        p1: String,
        model: String,
        timeout_ms: u32,
    ) -> std::result::Result<WasmClient, JsValue> {
        install_panic_hook();
        let timeout_ms = if timeout_ms == 0 {
            DEFAULT_TIMEOUT_MS
        } else {
            timeout_ms
        };
        let opened = Both {
            a: Box::pin(Conn::open("P0", &p0, &model, timeout_ms)),
            b: Box::pin(Conn::open("P1", &p1, &model, timeout_ms)),
            ra: None,
            rb: None,
        }
        .await;
        let ((c0, m0), (c1, m1)) = opened.map_err(|e| js_error(&e))?;
        Manifest::check_pair(&m0, &m1)
            .map_err(|e| js_error(&ClientError::Protocol(e.to_string())))?;
        Ok(WasmClient {
            inner: Rc::new(Inner {
                p0: c0,
                p1: c1,
                manifest: m0,
                timeout_ms,
                next_request: Cell::new(1),
                last_p0: RefCell::new(Vec::new()),
                last_p1: RefCell::new(Vec::new()),
            }),
        })
    }

    /// The model's manifest as an object: `modelId`, `inputShape`, `fracBits`, `outputLen`,
    /// `outFrac`, `softmaxAtClient`, `inputBound`, `deployment`, `maxBatch`.
    pub fn manifest(&self) -> JsValue {
        let m = &self.inner.manifest;
        let o = Object::new();
        set(&o, "modelId", &m.model_id.as_str().into());
        set(&o, "inputShape", &index_array(&m.input_shape));
        set(&o, "fracBits", &JsValue::from_f64(f64::from(m.frac_bits)));
        set(&o, "outputLen", &JsValue::from_f64(m.output_len as f64));
        set(&o, "outFrac", &JsValue::from_f64(f64::from(m.out_frac)));
        set(
            &o,
            "softmaxAtClient",
            &JsValue::from_bool(m.softmax_at_client),
        );
        set(&o, "inputBound", &JsValue::from_f64(m.input_bound));
        set(&o, "deployment", &m.deployment.as_str().into());
        set(&o, "maxBatch", &JsValue::from_f64(m.max_batch as f64));
        o.into()
    }

    /// Predicts `batch` inputs (`x` batch first). Resolves to `{logits: Float64Array,
    /// probabilities: Float64Array | null, labels: number[], outputLen, sentP0, sentP1}`
    /// (`sentP0`/`sentP1`: bytes of this prediction's frames to each server); rejects with an
    /// `Error` (bad input, a server's refusal, a timeout, a closed connection).
    pub fn predict(&self, x: Vec<f32>, batch: u32) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            match inner.predict(&x, batch as usize).await {
                Ok((p, sent)) => Ok(prediction_to_js(&p, sent)),
                Err(e) => Err(js_error(&e)),
            }
        })
    }

    /// Bytes sent so far (frames, headers included): `{p0, p1}`.
    #[wasm_bindgen(js_name = bytesSent)]
    pub fn bytes_sent(&self) -> JsValue {
        let o = Object::new();
        set(
            &o,
            "p0",
            &JsValue::from_f64(self.inner.p0.sent.get() as f64),
        );
        set(
            &o,
            "p1",
            &JsValue::from_f64(self.inner.p1.sent.get() as f64),
        );
        o.into()
    }

    /// The payloads of the last input share sent to P0 and of the last seed sent to P1, as
    /// `{p0: Uint8Array, p1: Uint8Array}` (empty before the first prediction): all that each
    /// server received of the input.
    #[wasm_bindgen(js_name = lastSent)]
    pub fn last_sent(&self) -> JsValue {
        let o = Object::new();
        set(
            &o,
            "p0",
            &Uint8Array::from(&self.inner.last_p0.borrow()[..]).into(),
        );
        set(
            &o,
            "p1",
            &Uint8Array::from(&self.inner.last_p1.borrow()[..]).into(),
        );
        o.into()
    }

    /// Closes both connections; predictions still waiting reject.
    pub fn close(&self) {
        self.inner.p0.close();
        self.inner.p1.close();
    }
}

/// Runs two futures together; the first error wins at once.
struct Both<A, B, TA, TB>
where
    A: Future<Output = Result<TA>>,
    B: Future<Output = Result<TB>>,
{
    a: Pin<Box<A>>,
    b: Pin<Box<B>>,
    ra: Option<TA>,
    rb: Option<TB>,
}

impl<A, B, TA, TB> Future for Both<A, B, TA, TB>
where
    A: Future<Output = Result<TA>>,
    B: Future<Output = Result<TB>>,
    TA: Unpin,
    TB: Unpin,
{
    type Output = Result<(TA, TB)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = &mut *self;
        if me.ra.is_none() {
            match me.a.as_mut().poll(cx) {
                Poll::Ready(Ok(v)) => me.ra = Some(v),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if me.rb.is_none() {
            match me.b.as_mut().poll(cx) {
                Poll::Ready(Ok(v)) => me.rb = Some(v),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        match (me.ra.take(), me.rb.take()) {
            (Some(a), Some(b)) => Poll::Ready(Ok((a, b))),
            (a, b) => {
                me.ra = a;
                me.rb = b;
                Poll::Pending
            }
        }
    }
}

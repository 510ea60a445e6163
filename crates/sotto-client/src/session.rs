//! The client protocol without IO: [`ClientSession`].
//!
//! One session is one client's pair of connections (P0 and P1) for one model. It owns
//! everything the protocol decides, and nothing that touches a socket or a clock:
//!
//! - the hello to each server and the check of their manifests ([`Manifest::check_pair`])
//!   before anything secret may leave the client;
//! - per prediction, the messages: a fresh random 128-bit tag names the request on the wire;
//!   the input share goes to P0 (`session` = the tag, `step` = request number) and the seed
//!   to P1 (`session` = the tag, `step` = [`TAGGED_SEED`]) at once, without waiting for P0:
//!   P0 tells P1 over their own link which dealt session the tag stands for. Each server then
//!   answers with one `Output` (or `Error`) under the tag;
//! - routing replies by tag, so that predictions may overlap;
//! - deadlines, as numbers: the driver passes the time in milliseconds (any epoch) and asks
//!   [`ClientSession::next_deadline`] when to call [`ClientSession::handle_timeout`];
//! - reconstruction of the output, and the errors a caller sees.
//!
//! A driver (the tokio client in `native.rs`, the wasm-bindgen client in `wasm.rs`) opens the
//! two sockets, feeds what arrives to `handle_*`, sends what [`ClientSession::poll_transmit`]
//! gives to the server it names (once that socket is open), and hands
//! [`ClientSession::poll_event`]'s events to whoever waits for them.
//!
//! ```
//! use sotto_client::session::{ClientSession, Event, Server, SessionConfig};
//! let mut s = ClientSession::new(SessionConfig::new("ws://p0.example:8100", "ws://p1.example:8101"), 0).unwrap();
//! assert!(s.poll_transmit(Server::P0).is_some()); // the hello
//! s.handle_timeout(10_000); // nobody answered
//! assert!(matches!(s.poll_event(), Some(Event::Closed(_))));
//! ```

use std::collections::{HashMap, VecDeque};

use sotto_core::prg::Seed;
use sotto_wire::{
    decode, ErrorCode, Frame, Hello, Kind, Manifest, Role, WireError, DEFAULT_MAX_PAYLOAD,
};

use crate::{elements, reconstruct, server_error, share_input, ClientError, Prediction, Result};

/// One of the two servers of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Server {
    /// The server that receives the input share.
    P0,
    /// The server that receives only the seed.
    P1,
}

impl Server {
    /// Both servers, P0 first.
    pub const BOTH: [Server; 2] = [Server::P0, Server::P1];

    /// "P0" or "P1".
    pub fn name(self) -> &'static str {
        match self {
            Server::P0 => "P0",
            Server::P1 => "P1",
        }
    }

    /// 0 for P0, 1 for P1.
    pub fn idx(self) -> usize {
        match self {
            Server::P0 => 0,
            Server::P1 => 1,
        }
    }
}

/// The number a session gives each prediction (also the `step` of its input share frame).
pub type RequestId = u32;

/// Deadline of the connection setup and of each prediction when none is given.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// The `step` of a seed frame sent under the client's tag: defined by the wire format
/// ([`sotto_wire::TAGGED_SEED`]), re-exported here where clients have always found it.
pub use sotto_wire::TAGGED_SEED;

/// Settings of a [`ClientSession`].
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// P0's base URL (`ws://`, `wss://`, `http://` or `https://`; `/v1/ws` is appended unless
    /// the URL already ends with it).
    pub p0: String,
    /// P1's base URL.
    pub p1: String,
    /// The model; empty for the servers' default.
    pub model: String,
    /// The API key to present in the hello.
    pub api_key: Option<String>,
    /// Deadline of the connection setup and of each prediction, ms.
    pub timeout_ms: u64,
    /// Keep a copy of the last share and seed sent ([`ClientSession::last_sent`]).
    pub keep_last_sent: bool,
}

impl SessionConfig {
    /// Defaults (default model, no API key, 10 s deadlines) for two servers.
    pub fn new(p0: impl Into<String>, p1: impl Into<String>) -> SessionConfig {
        SessionConfig {
            p0: p0.into(),
            p1: p1.into(),
            model: String::new(),
            api_key: None,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            keep_last_sent: false,
        }
    }
}

/// The WebSocket URL of a server's client endpoint: `http(s)://` becomes `ws(s)://`, and
/// `/v1/ws` is appended unless the URL already ends with it. Anything but those four schemes,
/// or no host, is refused.
pub fn ws_url(base: &str) -> Result<String> {
    let trimmed = base.trim();
    let (scheme, rest) = match trimmed.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => return Err(bad_url(base)),
    };
    let scheme = match scheme.as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        _ => return Err(bad_url(base)),
    };
    let rest = rest.trim_end_matches('/');
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || rest.contains(char::is_whitespace) {
        return Err(bad_url(base));
    }
    let rest = rest.strip_suffix("/v1/ws").unwrap_or(rest);
    Ok(format!("{scheme}://{rest}/v1/ws"))
}

fn bad_url(base: &str) -> ClientError {
    ClientError::Input(format!(
        "\"{base}\" is not a server URL (ws://, wss://, http:// or https:// and a host)"
    ))
}

/// Request numbers in increasing order (an insertion sort: few are ever in flight, and the
/// wasm build stays smaller than with the standard library's sort).
fn sorted(mut v: Vec<RequestId>) -> Vec<RequestId> {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && v[j - 1] > v[j] {
            v.swap(j - 1, j);
            j -= 1;
        }
    }
    v
}

/// What a finished prediction gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The reconstructed result.
    pub prediction: Prediction,
    /// Bytes of this prediction's frames to P0 and to P1 (headers included).
    pub sent: [usize; 2],
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Hellos sent (or waiting for the sockets), manifests not both in.
    Connecting,
    /// Both servers answered with manifests that form a pair: predictions may start.
    Ready,
    /// Failed or closed; every prediction has been answered.
    Closed,
}

/// What the driver hands on.
#[derive(Debug)]
pub enum Event {
    /// Both manifests arrived and form a pair.
    Connected,
    /// A prediction finished (or failed, timed out, was cancelled).
    Done(RequestId, Result<Outcome>),
    /// The session is over (a connection failed or closed, the setup failed or timed out,
    /// or the client closed it). Comes once, after the `Done` of every prediction.
    Closed(ClientError),
}

struct Request {
    batch: usize,
    deadline: u64,
    sent: [usize; 2],
    /// The request's name on the wire (both servers answer under it).
    tag: u128,
    /// The output shares of P0 and P1, as they arrive.
    out: [Option<Vec<u8>>; 2],
    /// P1's `unknown_session` refusal, held until P0 answers: when P0 refuses a tagged
    /// request (rate limit, shape, budget), P1 learns only that no session came, and P0's
    /// refusal is the one that says why. Given at the deadline if P0 stays silent.
    held: Option<ClientError>,
}

enum Phase {
    Connecting {
        manifests: [Option<Manifest>; 2],
        deadline: u64,
    },
    Ready(Manifest),
    Closed(ClientError),
}

/// The client protocol of one pair of connections, without IO (see the module docs).
pub struct ClientSession {
    urls: [String; 2],
    timeout_ms: u64,
    keep_last_sent: bool,
    phase: Phase,
    next_request: RequestId,
    requests: HashMap<RequestId, Request>,
    tags: HashMap<u128, RequestId>,
    outbox: [VecDeque<Vec<u8>>; 2],
    events: VecDeque<Event>,
    sent: [u64; 2],
    last_sent: [Vec<u8>; 2],
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientSession({:?}, {} in flight)",
            self.state(),
            self.requests.len()
        )
    }
}

impl ClientSession {
    /// A session that has queued its hello to each server; `now_ms` starts the setup's
    /// deadline. Fails on a URL that is not a server URL.
    pub fn new(cfg: SessionConfig, now_ms: u64) -> Result<ClientSession> {
        let urls = [ws_url(&cfg.p0)?, ws_url(&cfg.p1)?];
        let timeout_ms = if cfg.timeout_ms == 0 {
            DEFAULT_TIMEOUT_MS
        } else {
            cfg.timeout_ms
        };
        let hello = Frame::json(
            Kind::Hello,
            0,
            0,
            &Hello {
                role: Role::Client,
                model_id: cfg.model,
                api_key: cfg.api_key,
            },
        )
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .encode();
        let mut s = ClientSession {
            urls,
            timeout_ms,
            keep_last_sent: cfg.keep_last_sent,
            phase: Phase::Connecting {
                manifests: [None, None],
                deadline: now_ms.saturating_add(timeout_ms),
            },
            next_request: 1,
            requests: HashMap::new(),
            tags: HashMap::new(),
            outbox: [VecDeque::new(), VecDeque::new()],
            events: VecDeque::new(),
            sent: [0, 0],
            last_sent: [Vec::new(), Vec::new()],
        };
        for server in Server::BOTH {
            s.push(server, hello.clone());
        }
        Ok(s)
    }

    /// Where the session is.
    pub fn state(&self) -> SessionState {
        match self.phase {
            Phase::Connecting { .. } => SessionState::Connecting,
            Phase::Ready(_) => SessionState::Ready,
            Phase::Closed(_) => SessionState::Closed,
        }
    }

    /// Why the session closed, once it has.
    pub fn close_reason(&self) -> Option<&ClientError> {
        match &self.phase {
            Phase::Closed(e) => Some(e),
            _ => None,
        }
    }

    /// The model's manifest (P0's, which equals P1's but for the role), once connected.
    pub fn manifest(&self) -> Option<&Manifest> {
        match &self.phase {
            Phase::Ready(m) => Some(m),
            _ => None,
        }
    }

    /// The WebSocket URL of `server`'s client endpoint.
    pub fn url(&self, server: Server) -> &str {
        &self.urls[server.idx()]
    }

    /// The deadline of every step, ms.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// Bytes queued for P0 and for P1 so far (frames, headers included).
    pub fn bytes_sent(&self) -> [u64; 2] {
        self.sent
    }

    /// The payload of the last input share (P0) or seed (P1) sent; empty before the first
    /// prediction or without [`SessionConfig::keep_last_sent`].
    pub fn last_sent(&self, server: Server) -> &[u8] {
        &self.last_sent[server.idx()]
    }

    /// Predictions started and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.requests.len()
    }

    /// The next message for `server`, if any. Send them in order, once its socket is open.
    pub fn poll_transmit(&mut self, server: Server) -> Option<Vec<u8>> {
        self.outbox[server.idx()].pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`ClientSession::handle_timeout`] should next be called, if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        match &self.phase {
            Phase::Connecting { deadline, .. } => Some(*deadline),
            Phase::Ready(_) => self.requests.values().map(|r| r.deadline).min(),
            Phase::Closed(_) => None,
        }
    }

    fn push(&mut self, server: Server, bytes: Vec<u8>) {
        self.sent[server.idx()] += bytes.len() as u64;
        self.outbox[server.idx()].push_back(bytes);
    }

    /// A fresh random tag (nonzero, not in flight) from the OS generator: it names a request
    /// on the wire, so another client must not be able to guess it.
    fn fresh_tag(&self) -> Result<u128> {
        loop {
            let s = Seed::random().map_err(|e| ClientError::Connection(e.to_string()))?;
            let mut b = [0u8; 16];
            b.copy_from_slice(&s.0[..16]);
            let tag = u128::from_le_bytes(b);
            if tag != 0 && !self.tags.contains_key(&tag) {
                return Ok(tag);
            }
        }
    }

    /// Starts a prediction of `batch` inputs (`x` batch first): checks the input against the
    /// manifest (shape, bound, `max_batch`) before anything is queued, then queues the input
    /// share for P0 and the seed for P1. The answer comes as [`Event::Done`] with the returned
    /// number.
    pub fn start_predict(&mut self, x: &[f32], batch: usize, now_ms: u64) -> Result<RequestId> {
        let m = match &self.phase {
            Phase::Ready(m) => m,
            Phase::Connecting { .. } => {
                return Err(ClientError::Connection("not connected yet".into()))
            }
            Phase::Closed(e) => return Err(e.clone()),
        };
        if m.max_batch > 0 && batch > m.max_batch {
            return Err(ClientError::Input(format!(
                "a batch of {batch} inputs is over the servers' limit of {} per request (manifest max_batch): split it",
                m.max_batch
            )));
        }
        let shares = share_input(m, x, batch)?;
        let tag = self.fresh_tag()?;
        let mut id = self.next_request;
        while id == 0 || self.requests.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_request = id.wrapping_add(1);
        let share = Frame {
            kind: shares.kind,
            session: tag,
            step: id,
            payload: shares.to_p0,
        };
        let seed = Frame {
            kind: Kind::InputSeed,
            session: tag,
            step: TAGGED_SEED,
            payload: shares.to_p1.to_vec(),
        };
        let (to_p0, to_p1) = (share.encode(), seed.encode());
        let sent = [to_p0.len(), to_p1.len()];
        if self.keep_last_sent {
            self.last_sent = [share.payload, seed.payload];
        }
        // The share first: P0 has more to do before P1 can start (take a session, bind it).
        self.push(Server::P0, to_p0);
        self.push(Server::P1, to_p1);
        self.tags.insert(tag, id);
        self.requests.insert(
            id,
            Request {
                batch,
                deadline: now_ms.saturating_add(self.timeout_ms),
                sent,
                tag,
                out: [None, None],
                held: None,
            },
        );
        Ok(id)
    }

    /// Gives up on prediction `id` (an abort): answers it with [`ClientError::Aborted`] and
    /// drops whatever the servers still send for it. False when it is not in flight.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        let Some(r) = self.requests.remove(&id) else {
            return false;
        };
        self.tags.remove(&r.tag);
        self.events
            .push_back(Event::Done(id, Err(ClientError::Aborted)));
        true
    }

    fn finish(&mut self, id: RequestId, result: Result<Outcome>) {
        if let Some(r) = self.requests.remove(&id) {
            self.tags.remove(&r.tag);
            self.events.push_back(Event::Done(id, result));
        }
    }

    /// Ends the session: queues a `Close` to each server (when connected) and answers every
    /// prediction with a connection error. The driver sends what is queued, then closes the
    /// sockets.
    pub fn close(&mut self) {
        if let Phase::Ready(_) = self.phase {
            for server in Server::BOTH {
                let f = Frame {
                    kind: Kind::Close,
                    session: 0,
                    step: 0,
                    payload: Vec::new(),
                };
                self.push(server, f.encode());
            }
        }
        self.fail(ClientError::Connection(
            "the client closed its connection to P0".into(),
        ));
    }

    /// Fails the session (the first reason stays): every prediction, then the session.
    fn fail(&mut self, why: ClientError) {
        if let Phase::Closed(_) = self.phase {
            return;
        }
        self.phase = Phase::Closed(why.clone());
        for id in sorted(self.requests.keys().copied().collect()) {
            self.requests.remove(&id);
            self.events.push_back(Event::Done(id, Err(why.clone())));
        }
        self.tags.clear();
        self.events.push_back(Event::Closed(why));
    }

    /// A socket failed (could not open, or broke): the session fails with `detail`.
    pub fn handle_io_error(&mut self, server: Server, detail: &str) {
        let name = server.name();
        let e = match self.phase {
            Phase::Connecting { .. } => {
                format!("{name} ({}): {detail}", self.urls[server.idx()])
            }
            _ => format!("{name}: {detail}"),
        };
        self.fail(ClientError::Connection(e));
    }

    /// A socket closed (`code` and `reason` of the WebSocket close, when known).
    pub fn handle_closed(&mut self, server: Server, code: Option<u16>, reason: &str) {
        let name = server.name();
        let how = match (code, reason.is_empty()) {
            (Some(c), true) => format!(" (code {c})"),
            (Some(c), false) => format!(" (code {c}: {reason})"),
            (None, false) => format!(" ({reason})"),
            (None, true) => String::new(),
        };
        self.fail(ClientError::Connection(format!(
            "{name} closed the connection{how}"
        )));
    }

    /// A text message arrived (the protocol has none).
    pub fn handle_text(&mut self, server: Server) {
        self.fail(ClientError::Protocol(format!(
            "{} sent a message that is not binary",
            server.name()
        )));
    }

    /// Fails whatever is due at `now_ms`: the setup, or the predictions that took too long
    /// (each with the server it waited for).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let t = self.timeout_ms;
        match &self.phase {
            Phase::Closed(_) => {}
            Phase::Connecting {
                manifests,
                deadline,
            } => {
                if now_ms >= *deadline {
                    let s = if manifests[0].is_none() {
                        Server::P0
                    } else {
                        Server::P1
                    };
                    let e = ClientError::Connection(format!(
                        "{} ({}) did not answer within {t} ms",
                        s.name(),
                        self.urls[s.idx()]
                    ));
                    self.fail(e);
                }
            }
            Phase::Ready(_) => {
                let due = sorted(
                    self.requests
                        .iter()
                        .filter(|(_, r)| now_ms >= r.deadline)
                        .map(|(id, _)| *id)
                        .collect(),
                );
                for id in due {
                    if let Some(e) = self.requests.get_mut(&id).and_then(|r| r.held.take()) {
                        self.finish(id, Err(e));
                        continue;
                    }
                    let e = match self.requests.get(&id).map(|r| &r.out) {
                        Some([None, None]) => {
                            format!("neither P0 nor P1 answered within {t} ms")
                        }
                        Some([waiting, _]) => format!(
                            "{} did not answer within {t} ms (no output share)",
                            if waiting.is_none() { "P0" } else { "P1" }
                        ),
                        None => continue,
                    };
                    self.finish(id, Err(ClientError::Connection(e)));
                }
            }
        }
    }

    /// A binary message from `server` that arrived at `_now_ms` (no reply restarts a
    /// deadline today: each prediction has one, from its start).
    pub fn handle_bytes(&mut self, server: Server, bytes: &[u8], _now_ms: u64) {
        if let Phase::Closed(_) = self.phase {
            return;
        }
        let name = server.name();
        let f = match decode(bytes, DEFAULT_MAX_PAYLOAD) {
            Ok(f) => f,
            Err(e) => {
                return self.fail(ClientError::Protocol(format!(
                    "{name} sent a bad frame: {e}"
                )))
            }
        };
        if let Phase::Connecting { .. } = self.phase {
            return self.on_hello_reply(server, f);
        }
        match f.kind {
            Kind::Output if f.session != 0 => self.on_output(server, f),
            Kind::Error if f.session != 0 => {
                let Some(id) = self.tags.get(&f.session).copied() else {
                    return; // a request abandoned (timed out, cancelled): dropped.
                };
                let e = server_error(name, &f);
                let consequence = matches!(
                    e,
                    ClientError::Server {
                        code: ErrorCode::UnknownSession,
                        ..
                    }
                );
                match self.requests.get_mut(&id) {
                    Some(r) if server == Server::P1 && consequence && r.out[0].is_none() => {
                        r.held = Some(e);
                    }
                    _ => self.finish(id, Err(e)),
                }
            }
            Kind::Error if f.step != 0 => {
                // A refusal naming the request number only; dropped when abandoned already.
                if self.requests.contains_key(&f.step) {
                    self.finish(f.step, Err(server_error(name, &f)));
                }
            }
            // About the connection itself (idle, too many errors, ...).
            Kind::Error => self.fail(server_error(name, &f)),
            k => self.fail(ClientError::Protocol(format!(
                "{name} sent an unexpected {k:?} frame"
            ))),
        }
    }

    fn on_hello_reply(&mut self, server: Server, f: Frame) {
        let name = server.name();
        let answered = match &self.phase {
            Phase::Connecting { manifests, .. } => manifests[server.idx()].is_some(),
            _ => return,
        };
        if answered {
            return self.fail(ClientError::Protocol(format!(
                "{name} sent a {:?} frame before the client asked anything",
                f.kind
            )));
        }
        let m: Manifest = match f.kind {
            Kind::Manifest => match f.parse_json(Kind::Manifest) {
                Ok(m) => m,
                Err(e) => return self.fail(ClientError::Protocol(format!("{name}: {e}"))),
            },
            Kind::Error => return self.fail(server_error(name, &f)),
            k => {
                return self.fail(ClientError::Protocol(format!(
                    "{name} answered the hello with a {k:?} frame"
                )))
            }
        };
        let checked = match &mut self.phase {
            Phase::Connecting { manifests, .. } => {
                manifests[server.idx()] = Some(m);
                match manifests {
                    [Some(m0), Some(m1)] => Some(Manifest::check_pair(m0, m1).map(|()| m0.clone())),
                    _ => None,
                }
            }
            _ => None,
        };
        match checked {
            None => {}
            Some(Ok(m)) => {
                self.phase = Phase::Ready(m);
                self.events.push_back(Event::Connected);
            }
            Some(Err(WireError::NotAPair(why))) => self.fail(ClientError::BadDeployment(why)),
            Some(Err(e)) => self.fail(ClientError::Protocol(e.to_string())),
        }
    }

    fn on_output(&mut self, server: Server, f: Frame) {
        let Some(id) = self.tags.get(&f.session).copied() else {
            return; // abandoned
        };
        let Some(r) = self.requests.get_mut(&id) else {
            return;
        };
        let out = &mut r.out;
        let slot = &mut out[server.idx()];
        if slot.is_some() {
            let e = ClientError::Protocol(format!(
                "{} sent two outputs for one session",
                server.name()
            ));
            return self.finish(id, Err(e));
        }
        *slot = Some(f.payload);
        if let [Some(_), Some(_)] = out {
            let (batch, sent) = (r.batch, r.sent);
            let [a, b] = std::mem::take(out);
            let result = self.outcome(batch, sent, &a.unwrap_or_default(), &b.unwrap_or_default());
            self.finish(id, result);
        }
    }

    fn outcome(&self, batch: usize, sent: [usize; 2], a: &[u8], b: &[u8]) -> Result<Outcome> {
        let Phase::Ready(m) = &self.phase else {
            return Err(ClientError::Protocol("not connected".into()));
        };
        let n = batch.saturating_mul(m.output_len);
        let ya = elements(a, n)?;
        let yb = elements(b, n)?;
        Ok(Outcome {
            prediction: reconstruct(m, &ya, &yb, batch)?,
            sent,
        })
    }
}

//! # sotto-net
//!
//! The links between sotto's parties.
//!
//! - [`WsTransport`]: sotto-core's [`Transport`] over one WebSocket connection per pair of
//!   parties, carrying [`sotto_wire`] frames. A reader task per connection decodes frames and
//!   files them by session, sender and step; `recv` waits for its tag and fails (never hangs)
//!   when the peer's connection closes, the session is aborted, or nothing arrives within the
//!   transport's timeout. Links can be replaced while the transport is in use (a party that
//!   restarts dials again), and a finished or aborted session's queued messages are freed.
//! - [`auth`]: the pre-shared-key handshake that runs on every party connection before it
//!   carries anything, so a process that is not the configured P0, P1 or helper is refused.
//! - [`tls`]: rustls configurations and a dialer for `wss://` links.
//! - [`loopback_mesh`] joins P0, P1, the helper and a client on 127.0.0.1 with real sockets,
//!   as tests use it.
#![deny(missing_docs)]
// The workspace denies `unsafe`; only sotto-core allows it, for one call (`simd`).
#![forbid(unsafe_code)]

pub mod auth;
pub mod tls;

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use sotto_core::transport::{PartyId, Tag, Transport};
use sotto_core::{CoreError, TransportError};
use sotto_wire::{decode, Control, Frame, Kind, WireError};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The one error type of `sotto-net`.
#[derive(Debug, Error)]
pub enum NetError {
    /// A socket error.
    #[error("network: {0}")]
    Io(String),
    /// A TLS configuration or handshake error.
    #[error("TLS: {0}")]
    Tls(String),
    /// The peer failed authentication, or we did.
    #[error("authentication: {0}")]
    Auth(String),
    /// The connection closed.
    #[error("connection closed: {0}")]
    Closed(String),
    /// Nothing arrived in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A malformed frame.
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// Result alias of `sotto-net`.
pub type Result<T> = std::result::Result<T, NetError>;

/// Largest frame between parties (1 GiB): the helper's comparison keys for a large batch come
/// in one message. Client links use sotto-wire's smaller default.
pub const PARTY_MAX_PAYLOAD: usize = 1 << 30;

/// Most messages a party link's writer hands the socket in one flush (the rest of a longer
/// queue goes in the next).
const MAX_BURST: usize = 64;

/// WebSocket limits matching [`PARTY_MAX_PAYLOAD`].
pub fn party_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(PARTY_MAX_PAYLOAD + 64))
        .max_frame_size(Some(PARTY_MAX_PAYLOAD + 64))
}

/// How a message connection failed, as its reader or writer sees it.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum LinkError {
    /// A message or frame over the connection's size limit (the connection is unusable).
    #[error("a message over the size limit: {0}")]
    TooLarge(String),
    /// A text message (the protocol is binary frames only).
    #[error("text messages are not part of the protocol")]
    Text,
    /// The peer broke the WebSocket protocol.
    #[error("WebSocket protocol error: {0}")]
    Protocol(String),
    /// The connection failed or closed.
    #[error("connection error: {0}")]
    Io(String),
}

impl LinkError {
    /// Classifies an error from a WebSocket library (tokio-tungstenite's, or one that wraps
    /// it, such as axum's) by walking its source chain.
    pub fn classify(e: &(dyn std::error::Error + 'static)) -> LinkError {
        use tokio_tungstenite::tungstenite::Error as WsError;
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = cur {
            if let Some(ws) = err.downcast_ref::<WsError>() {
                return match ws {
                    WsError::Capacity(c) => LinkError::TooLarge(c.to_string()),
                    WsError::Protocol(p) => LinkError::Protocol(p.to_string()),
                    other => LinkError::Io(other.to_string()),
                };
            }
            cur = err.source();
        }
        LinkError::Io(e.to_string())
    }
}

/// The sending half of a message connection.
pub type BoxSink = Pin<Box<dyn Sink<Vec<u8>, Error = LinkError> + Send>>;
/// The receiving half of a message connection: binary messages, an `Err` on failure, the end
/// of the stream on close.
pub type BoxStream = Pin<Box<dyn Stream<Item = std::result::Result<Vec<u8>, LinkError>> + Send>>;

/// A message connection (a WebSocket, whichever library accepted it), as binary messages.
pub struct Duplex {
    /// Outgoing messages.
    pub sink: BoxSink,
    /// Incoming messages.
    pub stream: BoxStream,
}

impl std::fmt::Debug for Duplex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Duplex")
    }
}

impl Duplex {
    /// Wraps a tokio-tungstenite WebSocket (text, ping and pong messages are skipped).
    pub fn from_ws<S>(ws: WebSocketStream<S>) -> Duplex
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (sink, stream) = ws.split();
        let sink = sink
            .sink_map_err(|e| LinkError::classify(&e))
            .with(|b: Vec<u8>| futures_util::future::ready(Ok(Message::Binary(b.into()))));
        let stream = stream.filter_map(|m| {
            futures_util::future::ready(match m {
                Ok(Message::Binary(b)) => Some(Ok(b.to_vec())),
                Ok(Message::Text(_)) => Some(Err(LinkError::Text)),
                Ok(_) => None,
                Err(e) => Some(Err(LinkError::classify(&e))),
            })
        });
        Duplex {
            sink: Box::pin(sink),
            stream: Box::pin(stream),
        }
    }

    /// Sends one frame.
    pub async fn send_frame(&mut self, f: &Frame) -> Result<()> {
        self.sink
            .send(f.encode())
            .await
            .map_err(|e| NetError::Closed(e.to_string()))
    }

    /// Receives one frame (at most `limit` payload bytes) within `timeout`.
    pub async fn recv_frame(&mut self, limit: usize, timeout: Duration) -> Result<Frame> {
        match tokio::time::timeout(timeout, self.stream.next()).await {
            Err(_) => Err(NetError::Timeout(format!("no message within {timeout:?}"))),
            Ok(None) => Err(NetError::Closed("the peer closed the connection".into())),
            Ok(Some(Err(e))) => Err(NetError::Closed(e.to_string())),
            Ok(Some(Ok(b))) => Ok(decode(&b, limit)?),
        }
    }
}

/// Messages kept for a session, by sender and step.
#[derive(Default)]
struct SessionBox {
    queues: HashMap<(PartyId, u32), VecDeque<Vec<u8>>>,
    notify: Arc<Notify>,
}

/// How long a finished or aborted session is remembered (its late messages are dropped).
const DEAD_MEMORY: Duration = Duration::from_secs(120);

#[derive(Default)]
struct InboxState {
    sessions: HashMap<u128, SessionBox>,
    closed_peers: HashMap<PartyId, String>,
    generations: HashMap<PartyId, u64>,
    dead: HashMap<u128, String>,
    dead_order: VecDeque<(Instant, u128)>,
}

impl InboxState {
    fn forget_old(&mut self) {
        let now = Instant::now();
        while let Some((t, s)) = self.dead_order.front().copied() {
            if now.duration_since(t) < DEAD_MEMORY && self.dead_order.len() < 1 << 20 {
                break;
            }
            self.dead_order.pop_front();
            self.dead.remove(&s);
        }
    }
}

#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
    /// Woken when a peer's connection closes.
    peers: Notify,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn push(&self, from: PartyId, tag: Tag, data: Vec<u8>) {
        let mut st = self.lock();
        if st.dead.contains_key(&tag.session) {
            return;
        }
        let b = st.sessions.entry(tag.session).or_default();
        b.queues
            .entry((from, tag.step))
            .or_default()
            .push_back(data);
        b.notify.notify_waiters();
    }
    fn close_peer(&self, from: PartyId, why: String) {
        self.lock().closed_peers.entry(from).or_insert(why);
        self.peers.notify_waiters();
    }
    fn close_link(&self, from: PartyId, generation: u64, why: String) {
        let mut st = self.lock();
        if st.generations.get(&from) == Some(&generation) {
            st.closed_peers.entry(from).or_insert(why);
            drop(st);
            self.peers.notify_waiters();
        }
    }
    fn end_session(&self, session: u128, why: String) {
        let mut st = self.lock();
        st.forget_old();
        if let Some(b) = st.sessions.remove(&session) {
            b.notify.notify_waiters();
        }
        if st.dead.insert(session, why).is_none() {
            st.dead_order.push_back((Instant::now(), session));
        }
    }
}

/// Bytes and messages over one link.
#[derive(Debug, Default)]
struct LinkCounters {
    sent: AtomicU64,
    received: AtomicU64,
}

struct Out {
    tx: mpsc::UnboundedSender<Vec<u8>>,
}

/// How often a party link is probed.
pub const PING_INTERVAL: Duration = Duration::from_millis(500);

/// How long a link may stay silent (no frame, not even a pong) before it is declared dead:
/// two ping intervals less than the transport's timeout (so that a frozen peer is reported
/// within that timeout), at least 1.5 s.
fn liveness_deadline(timeout: Duration) -> Duration {
    timeout
        .saturating_sub(2 * PING_INTERVAL)
        .max(Duration::from_millis(1500))
}

/// Control frames received from other parties, with their sender.
pub type ControlReceiver = mpsc::UnboundedReceiver<(PartyId, u128, Control)>;

/// One party's endpoint to the others.
pub struct WsTransport {
    me: PartyId,
    outs: Mutex<HashMap<PartyId, Out>>,
    generation: AtomicU64,
    inbox: Arc<Inbox>,
    timeout: Duration,
    max_payload: usize,
    control: Option<mpsc::UnboundedSender<(PartyId, u128, Control)>>,
    counters: Arc<[LinkCounters; 4]>,
}

impl std::fmt::Debug for WsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peers: Vec<PartyId> = self.lock_outs().keys().copied().collect();
        write!(f, "WsTransport({:?} to {:?})", self.me, peers)
    }
}

impl WsTransport {
    /// An endpoint for `me` with no connection yet; `timeout` bounds every `recv`. Control
    /// frames are refused (see [`WsTransport::with_control`]).
    pub fn new(me: PartyId, timeout: Duration) -> Self {
        WsTransport {
            me,
            outs: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            inbox: Arc::new(Inbox::default()),
            timeout,
            max_payload: PARTY_MAX_PAYLOAD,
            control: None,
            counters: Arc::new(Default::default()),
        }
    }

    /// Like [`WsTransport::new`], delivering the [`Control`] frames peers send to the returned
    /// receiver.
    pub fn with_control(me: PartyId, timeout: Duration) -> (Self, ControlReceiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut t = WsTransport::new(me, timeout);
        t.control = Some(tx);
        (t, rx)
    }

    fn lock_outs(&self) -> std::sync::MutexGuard<'_, HashMap<PartyId, Out>> {
        self.outs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The timeout of every `recv`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Uses the connection `link` to `peer` from now on (replacing any earlier one, whose
    /// pending receives fail): spawns its reader and writer tasks on the current tokio runtime.
    pub fn attach(&self, peer: PartyId, link: Duplex) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let Duplex {
            mut sink,
            mut stream,
        } = link;
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let pong_tx = tx.clone();
        let ping_tx = tx.clone();
        self.lock_outs().insert(peer, Out { tx });
        {
            let mut st = self.inbox.lock();
            st.closed_peers.remove(&peer);
            st.generations.insert(peer, generation);
        }
        let writer = tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                // The messages already queued behind this one go out with it: one flush (one
                // system call for the small ones) per burst instead of one per message.
                let mut burst = sink.feed(bytes).await;
                let mut queued = 1;
                while burst.is_ok() && queued < MAX_BURST {
                    let Ok(b) = rx.try_recv() else { break };
                    burst = sink.feed(b).await;
                    queued += 1;
                }
                if burst.is_err() || sink.flush().await.is_err() {
                    // A failed sink is not polled again (not even to close it).
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let inbox = self.inbox.clone();
        let limit = self.max_payload;
        let control = self.control.clone();
        let counters = self.counters.clone();
        let me = self.me;
        let started = Instant::now();
        let last_seen = Arc::new(AtomicU64::new(0));
        let seen = last_seen.clone();
        let reader = tokio::spawn(async move {
            let why = loop {
                match stream.next().await {
                    Some(Ok(b)) => {
                        seen.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                        counters[peer.index()]
                            .received
                            .fetch_add(b.len() as u64, Ordering::Relaxed);
                        match decode(&b, limit) {
                            Ok(f) if f.kind == Kind::Share => inbox.push(
                                peer,
                                Tag {
                                    session: f.session,
                                    step: f.step,
                                },
                                f.payload,
                            ),
                            Ok(f) if f.kind == Kind::Control => {
                                let parsed = f.parse_json::<Control>(Kind::Control);
                                match (parsed, &control) {
                                    (Ok(Control::Ping { n }), _) => {
                                        if let Ok(p) =
                                            Frame::json(Kind::Control, 0, 0, &Control::Pong { n })
                                        {
                                            let _ = pong_tx.send(p.encode());
                                        }
                                    }
                                    (Ok(Control::Pong { .. }), _) => {}
                                    (Ok(c), Some(tx)) => {
                                        if let Control::Abort { reason } = &c {
                                            inbox.end_session(
                                                f.session,
                                                format!("{peer:?} aborted the session: {reason}"),
                                            );
                                        }
                                        let _ = tx.send((peer, f.session, c));
                                    }
                                    (Ok(_), None) => {
                                        break format!("{me:?} takes no control frames")
                                    }
                                    (Err(e), _) => break format!("malformed control frame: {e}"),
                                }
                            }
                            Ok(f) => break format!("unexpected {:?} frame", f.kind),
                            Err(e) => break format!("malformed frame: {e}"),
                        }
                    }
                    None => break "connection closed".to_string(),
                    Some(Err(e)) => break format!("connection error: {e}"),
                }
            };
            // Only the link still in use marks the peer closed.
            inbox.close_link(peer, generation, why);
        });
        // Liveness: a ping every PING_INTERVAL; a link with no frame at all for the deadline
        // (a frozen or unreachable peer) is closed, so that waiting receives fail and the
        // party reports the peer down, within the transport's timeout.
        let inbox = self.inbox.clone();
        let deadline = liveness_deadline(self.timeout);
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                tokio::time::sleep(PING_INTERVAL).await;
                let replaced = {
                    let st = inbox.lock();
                    st.generations.get(&peer) != Some(&generation)
                        || st.closed_peers.contains_key(&peer)
                };
                if replaced || reader.is_finished() || writer.is_finished() {
                    // A replaced, closed or failed link: end both of its tasks (the reader
                    // and this task hold senders that would keep the writer alive).
                    reader.abort();
                    writer.abort();
                    break;
                }
                let silent = started.elapsed().as_millis() as u64
                    - last_seen
                        .load(Ordering::Relaxed)
                        .min(started.elapsed().as_millis() as u64);
                if Duration::from_millis(silent) > deadline {
                    inbox.close_link(
                        peer,
                        generation,
                        format!("{peer:?} sent nothing, not even a pong, for {deadline:?}"),
                    );
                    reader.abort();
                    writer.abort();
                    break;
                }
                n += 1;
                if let Ok(f) = Frame::json(Kind::Control, 0, 0, &Control::Ping { n }) {
                    if ping_tx.send(f.encode()).is_err() {
                        break;
                    }
                }
            }
        });
    }

    /// True when a connection to `peer` is attached and has not closed.
    pub fn is_up(&self, peer: PartyId) -> bool {
        self.lock_outs()
            .get(&peer)
            .is_some_and(|o| !o.tx.is_closed())
            && !self.inbox.lock().closed_peers.contains_key(&peer)
    }

    /// The generation of the link to `peer` in use (each [`WsTransport::attach`] starts a new
    /// one), or `None` when no link to it is up: a party that prepared work over one link can
    /// tell when it was replaced, even by a reconnection quicker than its polling.
    pub fn link_generation(&self, peer: PartyId) -> Option<u64> {
        if !self.is_up(peer) {
            return None;
        }
        self.inbox.lock().generations.get(&peer).copied()
    }

    /// Closes the link to `peer` (the peer sees the connection end and dials again, or is
    /// dialed again): pending and later receives from it fail with `why`.
    pub fn drop_link(&self, peer: PartyId, why: &str) {
        let generation = self.inbox.lock().generations.get(&peer).copied();
        self.lock_outs().remove(&peer);
        if let Some(g) = generation {
            // The link's ping task sees it closed and ends its reader and writer, which
            // drops the socket.
            self.inbox.close_link(peer, g, why.to_string());
        }
    }

    /// Sends a control frame for `session` to `to`.
    pub fn send_control(&self, to: PartyId, session: u128, c: &Control) -> Result<()> {
        let f = Frame::json(Kind::Control, session, 0, c)?;
        self.send_raw(to, f.encode())
    }

    fn send_raw(&self, to: PartyId, bytes: Vec<u8>) -> Result<()> {
        let outs = self.lock_outs();
        let out = outs.get(&to).ok_or_else(|| {
            NetError::Closed(format!("{:?} has no connection to {to:?}", self.me))
        })?;
        let n = bytes.len() as u64;
        out.tx
            .send(bytes)
            .map_err(|_| NetError::Closed(format!("the connection to {to:?} is closed")))?;
        self.counters[to.index()]
            .sent
            .fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Ends `session` here: its queued messages are freed, pending and later receives for it
    /// fail with `why`, and messages that still arrive for it are dropped.
    pub fn end_session(&self, session: u128, why: &str) {
        self.inbox.end_session(session, why.to_string());
    }

    /// True when `session` was ended here (finished or aborted) in the last two minutes.
    pub fn is_ended(&self, session: u128) -> bool {
        self.inbox.lock().dead.contains_key(&session)
    }

    /// Sessions with queued messages (for metrics and leak checks).
    pub fn queued_sessions(&self) -> usize {
        self.inbox.lock().sessions.len()
    }

    /// Bytes sent to and received from `peer` over this endpoint's lifetime.
    pub fn bytes(&self, peer: PartyId) -> (u64, u64) {
        let c = &self.counters[peer.index()];
        (
            c.sent.load(Ordering::Relaxed),
            c.received.load(Ordering::Relaxed),
        )
    }

    /// Closes every connection of this endpoint (the peers' receives then fail).
    pub fn close(&self) {
        self.lock_outs().clear();
        for p in PartyId::ALL {
            self.inbox.close_peer(p, "this endpoint was closed".into());
        }
    }
}

fn core(e: NetError) -> CoreError {
    match e {
        NetError::Timeout(m) => TransportError::Timeout(m),
        e => TransportError::PeerGone(e.to_string()),
    }
    .into()
}

impl Transport for WsTransport {
    fn id(&self) -> PartyId {
        self.me
    }

    async fn send(&self, to: PartyId, tag: Tag, data: Vec<u8>) -> sotto_core::Result<()> {
        let frame = Frame {
            kind: Kind::Share,
            session: tag.session,
            step: tag.step,
            payload: data,
        };
        self.send_raw(to, frame.encode()).map_err(core)?;
        // The link's writer task was just woken, into this worker's LIFO slot, which other
        // workers cannot steal from: without a yield it would wait until this session's next
        // computation ends, so each party's compute would run while the other waits for a
        // message already "sent" (measured: the two servers alternated instead of overlapping,
        // 97 ms for a batch of 100 on loopback).
        tokio::task::yield_now().await;
        Ok(())
    }

    async fn recv(&self, from: PartyId, tag: Tag) -> sotto_core::Result<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let session_notify = {
                let mut st = self.inbox.lock();
                if let Some(why) = st.dead.get(&tag.session) {
                    return Err(TransportError::Aborted(why.clone()).into());
                }
                let st = &mut *st;
                let b = st.sessions.entry(tag.session).or_default();
                if let Some(q) = b.queues.get_mut(&(from, tag.step)) {
                    if let Some(m) = q.pop_front() {
                        if q.is_empty() {
                            b.queues.remove(&(from, tag.step));
                        }
                        return Ok(m);
                    }
                }
                if let Some(why) = st.closed_peers.get(&from) {
                    return Err(TransportError::PeerGone(format!("{from:?}: {why}")).into());
                }
                b.notify.clone()
            };
            // Register for both wake-ups, then re-check (a push may have happened between
            // the check above and the registration).
            let on_session = session_notify.notified();
            let on_peer = self.inbox.peers.notified();
            tokio::pin!(on_session, on_peer);
            on_session.as_mut().enable();
            on_peer.as_mut().enable();
            {
                let st = self.inbox.lock();
                let ready = st.dead.contains_key(&tag.session)
                    || st.closed_peers.contains_key(&from)
                    || st
                        .sessions
                        .get(&tag.session)
                        .is_none_or(|b| b.queues.contains_key(&(from, tag.step)));
                if ready {
                    continue;
                }
            }
            let woke = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    _ = &mut on_session => {},
                    _ = &mut on_peer => {},
                }
            })
            .await;
            if woke.is_err() {
                let mut st = self.inbox.lock();
                if st
                    .sessions
                    .get(&tag.session)
                    .is_some_and(|b| b.queues.is_empty())
                {
                    st.sessions.remove(&tag.session);
                }
                return Err(CoreError::from(TransportError::Timeout(format!(
                    "{from:?} sent nothing for {:?} (step {})",
                    self.timeout, tag.step
                ))));
            }
        }
    }
}

/// Joins P0, P1, the helper and a client with one loopback WebSocket connection per pair (no
/// TLS, no authentication: for tests). Returns the endpoints in [`PartyId::ALL`] order.
pub async fn loopback_mesh(timeout: Duration) -> Result<[WsTransport; 4]> {
    let net = |e: std::io::Error| NetError::Io(e.to_string());
    let ends = PartyId::ALL.map(|p| WsTransport::new(p, timeout));
    for i in 0..4 {
        for j in i + 1..4 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(net)?;
            let addr = listener.local_addr().map_err(net)?;
            let accept = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await?;
                tokio_tungstenite::accept_async_with_config(tcp, Some(party_ws_config()))
                    .await
                    .map_err(|e| std::io::Error::other(e.to_string()))
            });
            let dialed = tls::connect(&format!("ws://{addr}/"), None, party_ws_config()).await?;
            let accepted = accept
                .await
                .map_err(|e| NetError::Io(e.to_string()))?
                .map_err(net)?;
            ends[i].attach(PartyId::ALL[j], dialed);
            ends[j].attach(PartyId::ALL[i], Duplex::from_ws(accepted));
        }
    }
    Ok(ends)
}

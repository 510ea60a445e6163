//! HTTP pieces of `sotto serve`: the TLS listener for axum, the axum WebSocket adapter, static
//! files, and the Prometheus metrics.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sotto_net::{Duplex, LinkError};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;

/// How long a client may take for its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a new connection has until the server first answers it (its request read in
/// full, TLS done before): a slow or silent client loses its connection slot then.
const FIRST_ANSWER: Duration = Duration::from_secs(10);
/// How long an answered connection may go without any byte read or written (WebSocket
/// clients are closed earlier by the idle timeout; party links ping every 500 ms).
const IO_IDLE: Duration = Duration::from_secs(120);
/// How long a write may stay blocked (the peer's receive window full: it does not read, as a
/// ping flood that never reads its pongs) before the connection is closed. Not for an
/// authenticated party link ([`LinkKind::mark_party`]): a party busy computing may leave
/// hundreds of megabytes of helper material unread for longer, and its link has liveness
/// pings of its own.
const WRITE_STALL: Duration = Duration::from_secs(5);

/// Shared between a connection and its handler: set once the connection is an authenticated
/// party link, which lifts the [`WRITE_STALL`] limit (the [`IO_IDLE`] limit stays).
#[derive(Debug, Clone, Default)]
pub struct LinkKind(Arc<AtomicBool>);

impl LinkKind {
    /// Marks the connection as an authenticated party link (call only after the party
    /// handshake succeeded: an outsider must not escape the write-stall limit).
    pub fn mark_party(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_party(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A connection holding one of the listener's connection slots until it closes, and closed
/// when it goes quiet: no answer within [`FIRST_ANSWER`] of the accept (hyper under axum has
/// no header-read timeout of its own), or no progress for [`IO_IDLE`] after that.
pub struct Counted<S> {
    io: S,
    _slot: OwnedSemaphorePermit,
    answered: bool,
    deadline: Pin<Box<tokio::time::Sleep>>,
    /// Since when writes have been blocked, if they are.
    stalled: Option<tokio::time::Instant>,
    kind: LinkKind,
}

impl<S> Counted<S> {
    fn new(io: S, slot: OwnedSemaphorePermit) -> Self {
        Counted {
            io,
            _slot: slot,
            answered: false,
            deadline: Box::pin(tokio::time::sleep(FIRST_ANSWER)),
            stalled: None,
            kind: LinkKind::default(),
        }
    }

    /// Called when a write is pending: true once writes have been blocked for
    /// [`WRITE_STALL`] (checked whenever the connection is polled, as a flood of pings does).
    fn write_stalled(&mut self) -> bool {
        if self.kind.is_party() {
            return false;
        }
        let now = tokio::time::Instant::now();
        let since = *self.stalled.get_or_insert(now);
        now.duration_since(since) >= WRITE_STALL
    }

    fn progress(&mut self) {
        self.deadline
            .as_mut()
            .reset(tokio::time::Instant::now() + IO_IDLE);
    }

    /// Bookkeeping after a write attempt: bytes written answer the connection and count as
    /// progress; a write blocked for [`WRITE_STALL`], or past the deadline, fails.
    fn after_write(
        &mut self,
        r: Poll<std::io::Result<usize>>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        match &r {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.answered = true;
                self.stalled = None;
                self.progress();
            }
            Poll::Pending if self.write_stalled() || self.expired(cx) => {
                return Poll::Ready(Err(quiet()))
            }
            _ => {}
        }
        r
    }

    /// Called when the inner IO is pending: an error once the deadline has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn quiet() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the connection went quiet (no request in time, or no progress)",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        match &r {
            // Before the first answer, bytes trickling in do not extend the deadline.
            Poll::Ready(Ok(())) if self.answered && buf.filled().len() > before => self.progress(),
            Poll::Pending if self.expired(cx) => return Poll::Ready(Err(quiet())),
            _ => {}
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.after_write(r, cx)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        if r.is_pending() && self.expired(cx) {
            return Poll::Ready(Err(quiet()));
        }
        r
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.after_write(r, cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// What a handler learns of its connection: the TLS channel's binding (the TLS exporter's
/// value, as the dialer computes it in `sotto_net::tls::connect_bound`; `None` without TLS)
/// and the party role the peer's certificate states (mutual TLS; `None` for clients).
#[derive(Debug, Clone)]
pub struct Channel {
    /// The TLS exporter's value.
    pub binding: Option<[u8; 32]>,
    /// The role in the peer's verified certificate.
    pub peer: Option<sotto_wire::Role>,
    /// The connection's kind, to mark it a party link once authenticated.
    pub kind: LinkKind,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PlainListener>>
    for Channel
{
    fn connect_info(s: axum::serve::IncomingStream<'_, PlainListener>) -> Self {
        Channel {
            binding: None,
            peer: None,
            kind: s.io().kind.clone(),
        }
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for Channel
{
    fn connect_info(s: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        let conn = s.io().io.get_ref().1;
        Channel {
            binding: conn
                .export_keying_material([0u8; 32], sotto_net::tls::BINDING_LABEL, None)
                .ok(),
            peer: sotto_net::tls::peer_role(conn.peer_certificates()),
            kind: s.io().kind.clone(),
        }
    }
}

/// Accepts a TCP connection when a slot is free; a connection over the cap is closed at once.
async fn accept_slot(
    tcp: &TcpListener,
    slots: &Arc<Semaphore>,
) -> (TcpStream, SocketAddr, OwnedSemaphorePermit) {
    loop {
        let (sock, addr) = match tcp.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                let _ = sock.set_nodelay(true);
                return (sock, addr, slot);
            }
            // Over the cap: closed before anything is read from it.
            Err(_) => drop(sock),
        }
    }
}

/// Plain TCP connections, at most as many at once as the slots allow.
pub struct PlainListener {
    tcp: TcpListener,
    slots: Arc<Semaphore>,
}

impl PlainListener {
    /// Accepts on `tcp` with `slots` connection slots.
    pub fn new(tcp: TcpListener, slots: Arc<Semaphore>) -> Self {
        PlainListener { tcp, slots }
    }
}

impl axum::serve::Listener for PlainListener {
    type Io = Counted<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr, slot) = accept_slot(&self.tcp, &self.slots).await;
        (Counted::new(io, slot), addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Accepts TCP connections and completes TLS handshakes concurrently (a slow client never
/// holds up the others); axum gets only finished TLS streams. Connections, handshakes
/// included, take slots.
pub struct TlsListener {
    rx: mpsc::Receiver<(Counted<TlsStream<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp` with `cfg` and `slots` connection slots.
    pub fn new(
        tcp: TcpListener,
        cfg: Arc<rustls::ServerConfig>,
        slots: Arc<Semaphore>,
    ) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        tokio::spawn(async move {
            loop {
                let (sock, addr, slot) = accept_slot(&tcp, &slots).await;
                if tx.is_closed() {
                    break;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    // A failed or slow handshake (outsiders can cause either) is dropped
                    // without a log line: the client reports its own failure.
                    if let Ok(Ok(io)) =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await
                    {
                        let _ = tx.send((Counted::new(io, slot), addr)).await;
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Counted<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(x) => x,
            // The acceptor task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// WebSocket control messages (pings, pongs) a connection may send per second.
const CONTROL_RATE: u32 = 64;

/// An axum WebSocket as a [`Duplex`] of binary messages.
pub fn duplex(ws: WebSocket) -> Duplex {
    let (sink, stream) = ws.split();
    // An empty message is no frame of sotto's: it stands for a WebSocket ping (a keepalive:
    // the peer's pong proves it still reads).
    let sink = sink
        .sink_map_err(|e| LinkError::classify(&e))
        .with(|b: Vec<u8>| {
            futures_util::future::ready(Ok(if b.is_empty() {
                Message::Ping(Default::default())
            } else {
                Message::Binary(b.into())
            }))
        });
    // WebSocket pings and pongs are answered by the library; more than CONTROL_RATE of them
    // in a second is a flood (each costs the party a parse and a pong) and ends the stream.
    let mut window = (std::time::Instant::now(), 0u32);
    let stream = stream.filter_map(move |m| {
        futures_util::future::ready(match m {
            Ok(Message::Binary(b)) => Some(Ok(b.to_vec())),
            Ok(Message::Text(_)) => Some(Err(LinkError::Text)),
            Ok(Message::Ping(_) | Message::Pong(_)) => {
                let now = std::time::Instant::now();
                if now.duration_since(window.0) >= Duration::from_secs(1) {
                    window = (now, 0);
                }
                window.1 += 1;
                (window.1 > CONTROL_RATE).then(|| {
                    Err(LinkError::Protocol(format!(
                        "more than {CONTROL_RATE} WebSocket pings or pongs in a second"
                    )))
                })
            }
            Ok(_) => None,
            Err(e) => Some(Err(LinkError::classify(&e))),
        })
    });
    Duplex {
        sink: Box::pin(sink),
        stream: Box::pin(stream),
    }
}

/// Serves a file below `root` (no `..`, no absolute paths); `index.html` for `/`.
pub async fn static_file(root: &Path, path: &str) -> Response {
    let rel = PathBuf::from(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return (StatusCode::BAD_REQUEST, "bad path").into_response();
    }
    let mut full = root.join(&rel);
    if path.is_empty() || path.ends_with('/') {
        full = full.join("index.html");
    }
    let kind = match full.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        Some("ts") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    match tokio::fs::read(&full).await {
        Ok(b) => ([(header::CONTENT_TYPE, kind)], b).into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// The metrics a party exports at `/metrics`.
pub struct Metrics {
    registry: Registry,
    /// Finished client requests by outcome (`ok` or an error code).
    pub requests: Family<Vec<(String, String)>, Counter>,
    /// Seconds from a request's input to its output share being sent.
    pub latency: Histogram,
    /// Bytes sent to and received from each peer party (set when rendered).
    pub link_bytes: Family<Vec<(String, String)>, Gauge<i64, AtomicI64>>,
    /// Errors by code.
    pub errors: Family<Vec<(String, String)>, Counter>,
    /// Predictions running now.
    pub active: Gauge<i64, AtomicI64>,
    /// Sessions of dealt material waiting to be used.
    pub pool_ready: Gauge<i64, AtomicI64>,
    /// Sessions with queued messages on the party links.
    pub queued_sessions: Gauge<i64, AtomicI64>,
    /// Open client connections.
    pub clients: Gauge<i64, AtomicI64>,
    /// KiB of helper material held by admitted requests (set when rendered).
    pub inflight_kib: Gauge<i64, AtomicI64>,
    /// Open TCP connections of every kind.
    pub connections: Gauge<i64, AtomicI64>,
    /// Predictions whose material was streamed.
    pub streamed: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sotto");
        let requests = Family::<Vec<(String, String)>, Counter>::default();
        let latency = Histogram::new([
            0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]);
        let link_bytes = Family::<Vec<(String, String)>, Gauge<i64, AtomicI64>>::default();
        let errors = Family::<Vec<(String, String)>, Counter>::default();
        let active = Gauge::<i64, AtomicI64>::default();
        let pool_ready = Gauge::<i64, AtomicI64>::default();
        let queued_sessions = Gauge::<i64, AtomicI64>::default();
        let clients = Gauge::<i64, AtomicI64>::default();
        let inflight_kib = Gauge::<i64, AtomicI64>::default();
        let connections = Gauge::<i64, AtomicI64>::default();
        let streamed = Counter::default();
        registry.register(
            "streamed_sessions",
            "Predictions whose helper material was streamed as they ran (sessions too large to deal whole within --inflight-budget-mb)",
            streamed.clone(),
        );
        registry.register(
            "inflight_material_kib",
            "KiB of helper material held by the admitted requests (bounded by --inflight-budget-mb)",
            inflight_kib.clone(),
        );
        registry.register(
            "connections",
            "Open TCP connections of every kind (bounded by --max-connections)",
            connections.clone(),
        );
        registry.register("requests", "Finished prediction requests", requests.clone());
        registry.register(
            "prediction_seconds",
            "Time from a request's input share to this party's output share",
            latency.clone(),
        );
        registry.register(
            "link_bytes",
            "Bytes sent to (direction=sent) and received from each peer party since start",
            link_bytes.clone(),
        );
        registry.register("errors", "Errors by code", errors.clone());
        registry.register("active_sessions", "Predictions running now", active.clone());
        registry.register(
            "pool_ready_sessions",
            "Sessions of helper material ready for use",
            pool_ready.clone(),
        );
        registry.register(
            "queued_sessions",
            "Sessions with messages queued on the party links",
            queued_sessions.clone(),
        );
        registry.register(
            "client_connections",
            "Open client connections",
            clients.clone(),
        );
        Metrics {
            registry,
            requests,
            latency,
            link_bytes,
            errors,
            active,
            pool_ready,
            queued_sessions,
            clients,
            inflight_kib,
            connections,
            streamed,
        }
    }

    /// Counts an error with `code`.
    pub fn error(&self, code: &str) {
        self.errors
            .get_or_create(&vec![("code".to_string(), code.to_string())])
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that never reads: every write stays pending.
    struct Stuck;

    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Polls one write once (as a connection is polled whenever anything happens on it).
    async fn poll_write_once(c: &mut Counted<Stuck>) -> Poll<std::io::Result<usize>> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *c).poll_write(cx, b"x"))).await
    }

    /// Seconds until a blocked write fails (polled every second), at most `limit`.
    async fn seconds_until_failure(c: &mut Counted<Stuck>, limit: u64) -> Option<u64> {
        for s in 0..=limit {
            if let Poll::Ready(r) = poll_write_once(c).await {
                assert!(r.is_err(), "a write to a peer that never reads succeeded");
                return Some(s);
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn a_blocked_write_ends_a_client_connection_soon_and_a_party_link_only_when_idle() {
        let slots = Arc::new(Semaphore::new(2));
        let answered = |slots: &Arc<Semaphore>| {
            let mut c = Counted::new(Stuck, slots.clone().try_acquire_owned().expect("slot"));
            c.answered = true;
            c.progress();
            c
        };
        let mut client = answered(&slots);
        let s = seconds_until_failure(&mut client, 30).await;
        assert_eq!(s, Some(WRITE_STALL.as_secs()), "client connection: {s:?}");

        let mut party = answered(&slots);
        party.kind.mark_party();
        let s = seconds_until_failure(&mut party, 3 * IO_IDLE.as_secs()).await;
        assert_eq!(s, Some(IO_IDLE.as_secs()), "party link: {s:?}");
    }
}

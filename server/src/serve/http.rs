//! HTTP pieces of `sotto serve`: the TLS listener for axum, the axum WebSocket adapter, static
//! files, and the Prometheus metrics.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::AtomicI64;
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
use sotto_net::Duplex;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

/// How long a client may take for its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections and completes TLS handshakes concurrently (a slow client never
/// holds up the others); axum gets only finished TLS streams.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp` with `cfg`.
    pub fn new(tcp: TcpListener, cfg: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
        tokio::spawn(async move {
            loop {
                let (sock, addr) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = sock.set_nodelay(true);
                if tx.is_closed() {
                    break;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                        Ok(Ok(s)) => {
                            let _ = tx.send((s, addr)).await;
                        }
                        Ok(Err(e)) => eprintln!("TLS handshake with {addr} failed: {e}"),
                        Err(_) => eprintln!("TLS handshake with {addr} timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
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

/// An axum WebSocket as a [`Duplex`] of binary messages.
pub fn duplex(ws: WebSocket) -> Duplex {
    let (sink, stream) = ws.split();
    let sink = sink
        .sink_map_err(|e| e.to_string())
        .with(|b: Vec<u8>| futures_util::future::ready(Ok(Message::Binary(b.into()))));
    let stream = stream.filter_map(|m| {
        futures_util::future::ready(match m {
            Ok(Message::Binary(b)) => Some(Ok(b.to_vec())),
            Ok(Message::Text(_)) => Some(Err("text messages are not part of the protocol".into())),
            Ok(_) => None,
            Err(e) => Some(Err(e.to_string())),
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

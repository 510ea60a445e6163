//! The native client: two WebSocket connections (P0 and P1) over tokio-tungstenite, driving
//! a [`ClientSession`] from one task (the protocol itself lives in `session.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use sotto_net::{BoxStream, Duplex};
use sotto_wire::{Manifest, DEFAULT_MAX_PAYLOAD};
use tokio::sync::{mpsc, oneshot};

use crate::session::{ClientSession, Event, Outcome, Server, SessionConfig, SessionState};
use crate::{ClientError, Prediction, Result};

/// Client links take frames up to sotto-wire's default limit. Servers send a client small
/// messages (the manifest, result shares), so its reads take 16 KiB at a time rather than the
/// library's 128 KiB, which every read zero-fills.
fn ws_config() -> sotto_net::tls::WsConfig {
    sotto_net::tls::WsConfig::default()
        .max_message_size(Some(DEFAULT_MAX_PAYLOAD + 64))
        .max_frame_size(Some(DEFAULT_MAX_PAYLOAD + 64))
        .read_buffer_size(16 << 10)
}

/// Options of [`Client::connect`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The model to use; empty for the servers' default.
    pub model: String,
    /// The CA certificate (PEM) to trust for `wss://` URLs.
    pub ca_pem: Option<Vec<u8>>,
    /// How long the connection setup, and each prediction, may take.
    pub timeout: Duration,
    /// The API key to present in the hello, when the servers require one.
    pub api_key: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            model: String::new(),
            ca_pem: None,
            timeout: Duration::from_secs(10),
            api_key: None,
        }
    }
}

enum Cmd {
    Predict {
        x: Vec<f32>,
        batch: usize,
        reply: oneshot::Sender<Result<Outcome>>,
    },
    Close,
}

/// A connection to P0 and P1 for one model. `predict` may be called concurrently.
pub struct Client {
    cmds: mpsc::UnboundedSender<Cmd>,
    manifest: Manifest,
    sent: Arc<[AtomicU64; 2]>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client(model {})", self.manifest.model_id)
    }
}

impl Client {
    /// Connects to P0 and P1 (`ws://`, `wss://`, `http://` or `https://` base URLs), and
    /// checks that they are P0 and P1 of one deployment serving the same model (a
    /// [`ClientError::BadDeployment`] otherwise, before anything secret is sent).
    pub async fn connect(p0_url: &str, p1_url: &str, opts: ClientOptions) -> Result<Client> {
        let epoch = Instant::now();
        let cfg = SessionConfig {
            p0: p0_url.into(),
            p1: p1_url.into(),
            model: opts.model.clone(),
            api_key: opts.api_key.clone(),
            timeout_ms: u64::try_from(opts.timeout.as_millis()).unwrap_or(u64::MAX),
            keep_last_sent: false,
        };
        let mut session = ClientSession::new(cfg, 0)?;
        let tls = match &opts.ca_pem {
            Some(ca) => Some(
                sotto_net::tls::client_config(ca)
                    .map_err(|e| ClientError::Connection(format!("TLS: {e}")))?,
            ),
            None => None,
        };
        let (u0, u1) = (
            session.url(Server::P0).to_string(),
            session.url(Server::P1).to_string(),
        );
        let opened = tokio::time::timeout(opts.timeout, async {
            let open = |server: Server, url: String| {
                let tls = tls.clone();
                async move {
                    sotto_net::tls::connect(&url, tls, ws_config())
                        .await
                        .map_err(|e| (server, e.to_string()))
                }
            };
            tokio::try_join!(open(Server::P0, u0), open(Server::P1, u1))
        })
        .await;
        let (l0, l1) = match opened {
            Ok(Ok(links)) => links,
            Ok(Err((server, e))) => {
                session.handle_io_error(server, &e);
                return Err(closed(&session));
            }
            Err(_) => {
                session.handle_timeout(u64::MAX);
                return Err(closed(&session));
            }
        };
        let sent = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let (cmds, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = tokio::spawn(drive(session, [l0, l1], rx, ready_tx, epoch, sent.clone()));
        let manifest = match ready_rx.await {
            Ok(r) => r?,
            Err(_) => return Err(ClientError::Connection("the client task ended".into())),
        };
        Ok(Client {
            cmds,
            manifest,
            sent,
            task,
        })
    }

    /// The model's manifest (input shape, fixed-point format, output size, batch limit).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Bytes sent so far to P0 and to P1.
    pub fn bytes_sent(&self) -> (u64, u64) {
        (
            self.sent[0].load(Ordering::Relaxed),
            self.sent[1].load(Ordering::Relaxed),
        )
    }

    /// Predicts `batch` inputs (`x` batch first, `batch × input size` values). Input that
    /// does not fit the model (length, bound, a batch over `max_batch`) is refused before
    /// anything is sent.
    pub async fn predict(&self, x: &[f32], batch: usize) -> Result<Prediction> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Predict {
                x: x.to_vec(),
                batch,
                reply,
            })
            .map_err(|_| ClientError::Connection("the client is closed".into()))?;
        match rx.await {
            Ok(r) => r.map(|o| o.prediction),
            Err(_) => Err(ClientError::Connection("the client is closed".into())),
        }
    }

    /// Closes both connections (after sending each server a `Close`).
    pub async fn close(self) {
        let Client { cmds, task, .. } = self;
        let _ = cmds.send(Cmd::Close);
        drop(cmds);
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
}

fn closed(s: &ClientSession) -> ClientError {
    s.close_reason()
        .cloned()
        .unwrap_or_else(|| ClientError::Connection("closed".into()))
}

/// One writer task per link, so that a slow socket does not hold up reading.
fn writer(mut sink: sotto_net::BoxSink) -> mpsc::UnboundedSender<Vec<u8>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if sink.send(b).await.is_err() {
                // A failed sink is not polled again (not even to close it).
                return;
            }
        }
        let _ = sink.close().await;
    });
    tx
}

async fn next(s: &mut Option<BoxStream>) -> Option<std::result::Result<Vec<u8>, String>> {
    match s {
        Some(st) => st.next().await.map(|r| r.map_err(|e| e.to_string())),
        None => std::future::pending().await,
    }
}

/// The task that owns the session: feeds it what arrives, the time and the caller's
/// commands, and hands on what it says.
async fn drive(
    mut session: ClientSession,
    links: [Duplex; 2],
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    ready: oneshot::Sender<Result<Manifest>>,
    epoch: Instant,
    sent: Arc<[AtomicU64; 2]>,
) {
    let now = || u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
    let [l0, l1] = links;
    let mut writers = [Some(writer(l0.sink)), Some(writer(l1.sink))];
    let mut streams = [Some(l0.stream), Some(l1.stream)];
    let mut ready = Some(ready);
    let mut waiters: HashMap<u32, oneshot::Sender<Result<Outcome>>> = HashMap::new();
    loop {
        // Hand on what the session says.
        for server in Server::BOTH {
            while let Some(b) = session.poll_transmit(server) {
                if let Some(w) = &writers[server.idx()] {
                    let _ = w.send(b);
                }
            }
        }
        let b = session.bytes_sent();
        sent[0].store(b[0], Ordering::Relaxed);
        sent[1].store(b[1], Ordering::Relaxed);
        while let Some(ev) = session.poll_event() {
            match ev {
                Event::Connected => {
                    if let (Some(tx), Some(m)) = (ready.take(), session.manifest()) {
                        let _ = tx.send(Ok(m.clone()));
                    }
                }
                Event::Done(id, r) => {
                    if let Some(tx) = waiters.remove(&id) {
                        let _ = tx.send(r);
                    }
                }
                Event::Closed(e) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Err(e));
                    }
                }
            }
        }
        if session.state() == SessionState::Closed {
            // Writers close their sinks once their queue is sent; readers are dropped.
            writers = [None, None];
            streams = [None, None];
            let why = closed(&session);
            // Answer whoever still asks, until the client is dropped.
            while let Some(cmd) = cmds.recv().await {
                if let Cmd::Predict { reply, .. } = cmd {
                    let _ = reply.send(Err(why.clone()));
                }
            }
            drop((writers, streams));
            return;
        }
        let deadline = session.next_deadline();
        let sleep = async {
            match deadline {
                Some(ms) => {
                    tokio::time::sleep_until((epoch + Duration::from_millis(ms)).into()).await
                }
                None => std::future::pending().await,
            }
        };
        let [s0, s1] = &mut streams;
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Predict { x, batch, reply }) => match session.start_predict(&x, batch, now()) {
                    Ok(id) => {
                        waiters.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Some(Cmd::Close) | None => session.close(),
            },
            m = next(s0) => on_message(&mut session, Server::P0, m, now()),
            m = next(s1) => on_message(&mut session, Server::P1, m, now()),
            () = sleep => session.handle_timeout(now()),
        }
    }
}

fn on_message(
    session: &mut ClientSession,
    server: Server,
    m: Option<std::result::Result<Vec<u8>, String>>,
    now: u64,
) {
    match m {
        Some(Ok(b)) => session.handle_bytes(server, &b, now),
        Some(Err(e)) => session.handle_io_error(server, &e),
        None => session.handle_closed(server, None, ""),
    }
}

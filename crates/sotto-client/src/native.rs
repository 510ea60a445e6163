//! The native client: two WebSocket connections (P0 and P1) over tokio-tungstenite.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sotto_core::ring;
use sotto_net::Duplex;
use sotto_wire::{decode, Frame, Hello, Kind, Manifest, Role, DEFAULT_MAX_PAYLOAD};
use tokio::sync::{mpsc, oneshot};

use crate::{reconstruct, server_error, share_input, ClientError, Prediction, Result};

/// Client links take frames up to sotto-wire's default limit.
fn ws_config() -> sotto_net::tls::WsConfig {
    sotto_net::tls::WsConfig::default()
        .max_message_size(Some(DEFAULT_MAX_PAYLOAD + 64))
        .max_frame_size(Some(DEFAULT_MAX_PAYLOAD + 64))
}

/// Options of [`Client::connect`].
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The model to use; empty for the servers' default.
    pub model: String,
    /// The CA certificate (PEM) to trust for `wss://` URLs.
    pub ca_pem: Option<Vec<u8>>,
    /// How long one prediction (or the connection setup) may take before it fails.
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

type Reply = std::result::Result<Frame, ClientError>;

#[derive(Default)]
struct Waiting {
    by_request: HashMap<u32, oneshot::Sender<Reply>>,
    by_session: HashMap<u128, oneshot::Sender<Reply>>,
    early: HashMap<u128, Frame>,
    closed: Option<ClientError>,
}

/// One server connection: a writer task and a reader task that routes replies.
struct Conn {
    name: &'static str,
    out: mpsc::UnboundedSender<Vec<u8>>,
    waiting: Arc<Mutex<Waiting>>,
    sent: AtomicU64,
}

fn lock(w: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

impl Conn {
    async fn open(name: &'static str, url: &str, opts: &ClientOptions) -> Result<(Conn, Manifest)> {
        let url = format!("{}/v1/ws", url.trim_end_matches('/'));
        let tls = match &opts.ca_pem {
            Some(ca) => Some(
                sotto_net::tls::client_config(ca)
                    .map_err(|e| ClientError::Connection(format!("{name}: {e}")))?,
            ),
            None => None,
        };
        let mut link = sotto_net::tls::connect(&url, tls, ws_config())
            .await
            .map_err(|e| ClientError::Connection(format!("{name} ({url}): {e}")))?;
        let hello = Hello {
            role: Role::Client,
            model_id: opts.model.clone(),
            api_key: opts.api_key.clone(),
        };
        let f = Frame::json(Kind::Hello, 0, 0, &hello)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        link.send_frame(&f)
            .await
            .map_err(|e| ClientError::Connection(format!("{name}: {e}")))?;
        let reply = link
            .recv_frame(1 << 20, opts.timeout)
            .await
            .map_err(|e| ClientError::Connection(format!("{name}: {e}")))?;
        let manifest: Manifest = match reply.kind {
            Kind::Manifest => reply
                .parse_json(Kind::Manifest)
                .map_err(|e| ClientError::Protocol(format!("{name}: {e}")))?,
            Kind::Error => return Err(server_error(name, &reply)),
            k => {
                return Err(ClientError::Protocol(format!(
                    "{name} answered the hello with a {k:?} frame"
                )))
            }
        };
        let Duplex {
            mut sink,
            mut stream,
        } = link;
        let (out, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if sink.send(b).await.is_err() {
                    // A failed sink is not polled again (not even to close it).
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let w = waiting.clone();
        tokio::spawn(async move {
            let why = loop {
                let f = match stream.next().await {
                    None => break ClientError::Connection(format!("{name} closed the connection")),
                    Some(Err(e)) => break ClientError::Connection(format!("{name}: {e}")),
                    Some(Ok(b)) => match decode(&b, DEFAULT_MAX_PAYLOAD) {
                        Ok(f) => f,
                        Err(e) => {
                            break ClientError::Protocol(format!("{name} sent a bad frame: {e}"))
                        }
                    },
                };
                let mut st = lock(&w);
                match f.kind {
                    Kind::Session => {
                        if let Some(tx) = st.by_request.remove(&f.step) {
                            let _ = tx.send(Ok(f));
                        }
                    }
                    Kind::Output => {
                        if let Some(tx) = st.by_session.remove(&f.session) {
                            let _ = tx.send(Ok(f));
                        } else {
                            st.early.insert(f.session, f);
                        }
                    }
                    Kind::Error if f.session != 0 => {
                        let e = server_error(name, &f);
                        if let Some(tx) = st.by_session.remove(&f.session) {
                            let _ = tx.send(Err(e));
                        } else {
                            st.early.insert(f.session, f);
                        }
                    }
                    Kind::Error => {
                        let e = server_error(name, &f);
                        match st.by_request.remove(&f.step) {
                            Some(tx) => {
                                let _ = tx.send(Err(e));
                            }
                            None => break e,
                        }
                    }
                    k => {
                        break ClientError::Protocol(format!(
                            "{name} sent an unexpected {k:?} frame"
                        ))
                    }
                }
            };
            let mut st = lock(&w);
            for (_, tx) in st.by_request.drain() {
                let _ = tx.send(Err(why.clone()));
            }
            for (_, tx) in st.by_session.drain() {
                let _ = tx.send(Err(why.clone()));
            }
            st.closed = Some(why);
        });
        Ok((
            Conn {
                name,
                out,
                waiting,
                sent: AtomicU64::new(0),
            },
            manifest,
        ))
    }

    fn send(&self, f: Frame) -> Result<()> {
        let b = f.encode();
        let n = b.len() as u64;
        self.out
            .send(b)
            .map_err(|_| ClientError::Connection(format!("{} connection is closed", self.name)))?;
        self.sent.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    fn expect_request(&self, req: u32) -> Result<oneshot::Receiver<Reply>> {
        let (tx, rx) = oneshot::channel();
        let mut st = lock(&self.waiting);
        if let Some(e) = &st.closed {
            return Err(e.clone());
        }
        st.by_request.insert(req, tx);
        Ok(rx)
    }

    fn expect_session(&self, session: u128) -> Result<oneshot::Receiver<Reply>> {
        let (tx, rx) = oneshot::channel();
        let mut st = lock(&self.waiting);
        if let Some(f) = st.early.remove(&session) {
            let _ = tx.send(if f.kind == Kind::Error {
                Err(server_error(self.name, &f))
            } else {
                Ok(f)
            });
        } else if let Some(e) = &st.closed {
            return Err(e.clone());
        } else {
            st.by_session.insert(session, tx);
        }
        Ok(rx)
    }

    fn forget(&self, session: u128) {
        let mut st = lock(&self.waiting);
        st.by_session.remove(&session);
        st.early.remove(&session);
    }
}

async fn wait(name: &str, rx: oneshot::Receiver<Reply>, timeout: Duration) -> Result<Frame> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(ClientError::Connection(format!(
            "{name} connection is gone"
        ))),
        Err(_) => Err(ClientError::Connection(format!(
            "{name} did not answer within {timeout:?}"
        ))),
    }
}

/// A connection to P0 and P1 for one model. `predict` may be called concurrently.
pub struct Client {
    p0: Conn,
    p1: Conn,
    manifest: Manifest,
    next_request: AtomicU32,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client(model {})", self.manifest.model_id)
    }
}

impl Client {
    /// Connects to P0 and P1 (`ws://` or `wss://` base URLs), and checks that both serve the
    /// same model.
    pub async fn connect(p0_url: &str, p1_url: &str, opts: ClientOptions) -> Result<Client> {
        let (a, b) = tokio::join!(
            Conn::open("P0", p0_url, &opts),
            Conn::open("P1", p1_url, &opts)
        );
        let (p0, m0) = a?;
        let (p1, m1) = b?;
        Manifest::check_pair(&m0, &m1).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Client {
            p0,
            p1,
            manifest: m0,
            next_request: AtomicU32::new(1),
            timeout: opts.timeout,
        })
    }

    /// The model's manifest (input shape, fixed-point format, output size).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Bytes sent so far to P0 and to P1.
    pub fn bytes_sent(&self) -> (u64, u64) {
        (
            self.p0.sent.load(Ordering::Relaxed),
            self.p1.sent.load(Ordering::Relaxed),
        )
    }

    /// Predicts `batch` inputs (`x` batch first, `batch × input size` values).
    pub async fn predict(&self, x: &[f32], batch: usize) -> Result<Prediction> {
        let shares = share_input(&self.manifest, x, batch)?;
        let req = self.next_request.fetch_add(1, Ordering::Relaxed);
        let assigned = self.p0.expect_request(req)?;
        self.p0.send(Frame {
            kind: Kind::InputShare,
            session: 0,
            step: req,
            payload: ring::to_le_bytes(&shares.to_p0),
        })?;
        let s = wait("P0", assigned, self.timeout).await?;
        let session = s.session;
        if session == 0 {
            return Err(ClientError::Protocol("P0 assigned session 0".into()));
        }
        let out0 = self.p0.expect_session(session)?;
        let out1 = self.p1.expect_session(session)?;
        self.p1.send(Frame {
            kind: Kind::InputSeed,
            session,
            step: 0,
            payload: shares.to_p1.0.to_vec(),
        })?;
        // The first error wins: a server that refuses need not wait for the other's timeout.
        let res = tokio::try_join!(
            wait("P0", out0, self.timeout),
            wait("P1", out1, self.timeout)
        );
        self.p0.forget(session);
        self.p1.forget(session);
        let (a, b) = res?;
        let n = batch.saturating_mul(self.manifest.output_len);
        let ya = crate::elements(&a.payload, n)?;
        let yb = crate::elements(&b.payload, n)?;
        reconstruct(&self.manifest, &ya, &yb, batch)
    }

    /// Closes both connections.
    pub async fn close(self) {
        let close = |c: &Conn| {
            let _ = c.send(Frame {
                kind: Kind::Close,
                session: 0,
                step: 0,
                payload: Vec::new(),
            });
        };
        close(&self.p0);
        close(&self.p1);
    }
}

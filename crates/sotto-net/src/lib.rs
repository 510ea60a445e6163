//! # sotto-net
//!
//! [`WsTransport`]: sotto-core's [`Transport`] over WebSocket connections, one per pair of
//! parties, carrying [`sotto_wire`] frames. A reader task per connection decodes frames and
//! files them by sender and tag; `recv` waits for its tag, and fails (never hangs) when the
//! peer's connection closes or nothing arrives within the transport's timeout.
//!
//! [`loopback_mesh`] joins P0, P1, the helper and a client on 127.0.0.1 with real sockets, as
//! the end-to-end tests and the loopback demo use it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sotto_core::transport::{PartyId, Tag, Transport};
use sotto_core::{CoreError, Result};
use sotto_wire::{decode, Frame, Kind};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Largest frame between parties (1 GiB): the helper's comparison keys for a large batch come
/// in one message. Client links use sotto-wire's smaller default.
pub const PARTY_MAX_PAYLOAD: usize = 1 << 30;

/// WebSocket limits matching [`PARTY_MAX_PAYLOAD`].
pub fn party_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(PARTY_MAX_PAYLOAD + 64))
        .max_frame_size(Some(PARTY_MAX_PAYLOAD + 64))
}
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Key = (PartyId, Tag);

#[derive(Default)]
struct InboxState {
    queues: HashMap<Key, VecDeque<Vec<u8>>>,
    closed: HashMap<PartyId, String>,
}

#[derive(Default)]
struct Inbox {
    state: Mutex<InboxState>,
    notify: Notify,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn push(&self, from: PartyId, tag: Tag, data: Vec<u8>) {
        self.lock()
            .queues
            .entry((from, tag))
            .or_default()
            .push_back(data);
        self.notify.notify_waiters();
    }
    fn close(&self, from: PartyId, why: String) {
        self.lock().closed.entry(from).or_insert(why);
        self.notify.notify_waiters();
    }
}

/// One party's WebSocket endpoint to the others.
pub struct WsTransport {
    me: PartyId,
    outs: HashMap<PartyId, mpsc::UnboundedSender<Vec<u8>>>,
    inbox: Arc<Inbox>,
    timeout: Duration,
    max_payload: usize,
}

impl std::fmt::Debug for WsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peers: HashSet<_> = self.outs.keys().collect();
        write!(f, "WsTransport({:?} to {:?})", self.me, peers)
    }
}

impl WsTransport {
    /// An endpoint for `me` with no connection yet; `timeout` bounds every `recv`.
    pub fn new(me: PartyId, timeout: Duration) -> Self {
        WsTransport {
            me,
            outs: HashMap::new(),
            inbox: Arc::new(Inbox::default()),
            timeout,
            max_payload: PARTY_MAX_PAYLOAD,
        }
    }

    /// Adds the connection to `peer`: spawns its reader and writer tasks on the current tokio
    /// runtime.
    pub fn attach<S>(&mut self, peer: PartyId, ws: WebSocketStream<S>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        self.outs.insert(peer, tx);
        tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if sink.send(Message::Binary(bytes.into())).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let inbox = self.inbox.clone();
        let limit = self.max_payload;
        tokio::spawn(async move {
            let why = loop {
                match stream.next().await {
                    Some(Ok(Message::Binary(b))) => match decode(&b, limit) {
                        Ok(f) if f.kind == Kind::Share => inbox.push(
                            peer,
                            Tag {
                                session: f.session,
                                step: f.step,
                            },
                            f.payload,
                        ),
                        Ok(f) => break format!("unexpected {:?} frame", f.kind),
                        Err(e) => break format!("malformed frame: {e}"),
                    },
                    Some(Ok(Message::Close(_))) | None => break "connection closed".to_string(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break format!("connection error: {e}"),
                }
            };
            inbox.close(peer, why);
        });
    }

    /// Closes every connection of this endpoint (the peers' receives then fail).
    pub fn close(&mut self) {
        self.outs.clear();
        let peers: Vec<PartyId> = PartyId::ALL.to_vec();
        for p in peers {
            self.inbox.close(p, "this endpoint was closed".into());
        }
    }
}

impl Transport for WsTransport {
    fn id(&self) -> PartyId {
        self.me
    }

    async fn send(&self, to: PartyId, tag: Tag, data: Vec<u8>) -> Result<()> {
        let out = self.outs.get(&to).ok_or_else(|| {
            CoreError::Transport(format!("{:?} has no connection to {to:?}", self.me))
        })?;
        let frame = Frame {
            kind: Kind::Share,
            session: tag.session,
            step: tag.step,
            payload: data,
        };
        out.send(frame.encode())
            .map_err(|_| CoreError::Transport(format!("the connection to {to:?} is closed")))
    }

    async fn recv(&self, from: PartyId, tag: Tag) -> Result<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let notified = self.inbox.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.inbox.lock();
                if let Some(q) = st.queues.get_mut(&(from, tag)) {
                    if let Some(m) = q.pop_front() {
                        if q.is_empty() {
                            st.queues.remove(&(from, tag));
                        }
                        return Ok(m);
                    }
                }
                if let Some(why) = st.closed.get(&from) {
                    return Err(CoreError::Transport(format!("{from:?}: {why}")));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(CoreError::Transport(format!(
                    "{from:?} sent nothing for {:?} (step {})",
                    self.timeout, tag.step
                )));
            }
        }
    }
}

/// Joins P0, P1, the helper and a client with one loopback WebSocket connection per pair.
/// Returns the endpoints in [`PartyId::ALL`] order.
pub async fn loopback_mesh(timeout: Duration) -> Result<[WsTransport; 4]> {
    let net = |e: std::io::Error| CoreError::Transport(e.to_string());
    let mut ends = PartyId::ALL.map(|p| WsTransport::new(p, timeout));
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
            let (dialed, _) = tokio_tungstenite::connect_async_with_config(
                format!("ws://{addr}/"),
                Some(party_ws_config()),
                false,
            )
            .await
            .map_err(|e| CoreError::Transport(e.to_string()))?;
            let accepted = accept
                .await
                .map_err(|e| CoreError::Transport(e.to_string()))?
                .map_err(net)?;
            ends[i].attach(PartyId::ALL[j], dialed);
            ends[j].attach(PartyId::ALL[i], accepted);
        }
    }
    Ok(ends)
}

//! The transport abstraction the protocols run on, an in-memory mesh, and a counting wrapper.
//!
//! A [`Transport`] sends and receives byte buffers tagged by session and step. Protocol code
//! never knows which transport it has: the same `async fn` runs over [`MemoryTransport`] in
//! tests and benchmarks and over WebSockets in the servers.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::error::{CoreError, Result, TransportError};

/// The four parties of a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PartyId {
    /// First server.
    P0 = 0,
    /// Second server.
    P1 = 1,
    /// The helper that deals correlated randomness.
    Helper = 2,
    /// The client that owns the input.
    Client = 3,
}

impl PartyId {
    /// All parties, in index order.
    pub const ALL: [PartyId; 4] = [PartyId::P0, PartyId::P1, PartyId::Helper, PartyId::Client];

    /// Index 0..4.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The other server, for P0 and P1.
    pub fn peer(self) -> Result<PartyId> {
        match self {
            PartyId::P0 => Ok(PartyId::P1),
            PartyId::P1 => Ok(PartyId::P0),
            other => Err(CoreError::Param(format!("{other:?} has no peer server"))),
        }
    }
}

/// Tag of a message: the session it belongs to and the protocol step inside the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tag {
    /// Session id (unique per prediction or per model load).
    pub session: u128,
    /// Step inside the session.
    pub step: u32,
}

/// Asynchronous, tagged, point-to-point messaging between parties.
///
/// `recv(from, tag)` returns the message `from` sent with exactly that tag, whatever order
/// messages arrived in. Implementations must fail (not hang forever) once the peer is gone.
pub trait Transport: Send + Sync {
    /// The party this endpoint belongs to.
    fn id(&self) -> PartyId;
    /// Sends `data` to `to` under `tag`.
    fn send(&self, to: PartyId, tag: Tag, data: Vec<u8>)
        -> impl Future<Output = Result<()>> + Send;
    /// Receives the message from `from` with `tag`.
    fn recv(&self, from: PartyId, tag: Tag) -> impl Future<Output = Result<Vec<u8>>> + Send;
}

type Key = (PartyId, PartyId, Tag);

#[derive(Default)]
struct HubState {
    queues: HashMap<Key, VecDeque<Vec<u8>>>,
    wakers: HashMap<Key, Waker>,
    closed: [bool; 4],
}

/// Shared mailbox of the in-memory mesh.
#[derive(Default)]
struct Hub {
    state: Mutex<HubState>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        // A poisoned lock only means another party panicked mid-send; the map is still valid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One party's endpoint of an in-memory mesh. Dropping it (or calling
/// [`MemoryTransport::close`]) makes every pending and later `recv` from this party fail.
pub struct MemoryTransport {
    me: PartyId,
    hub: Arc<Hub>,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryTransport({:?})", self.me)
    }
}

/// Creates an in-memory mesh joining P0, P1, the helper and a client; endpoints in
/// [`PartyId::ALL`] order.
pub fn memory_mesh() -> [MemoryTransport; 4] {
    let hub = Arc::new(Hub::default());
    PartyId::ALL.map(|me| MemoryTransport {
        me,
        hub: hub.clone(),
    })
}

impl MemoryTransport {
    /// Marks this party as gone: its peers' receives fail from now on.
    pub fn close(&self) {
        let mut st = self.hub.lock();
        st.closed[self.me.index()] = true;
        for w in st.wakers.drain().map(|(_, w)| w) {
            w.wake();
        }
    }
}

impl Drop for MemoryTransport {
    fn drop(&mut self) {
        self.close();
    }
}

impl Transport for MemoryTransport {
    fn id(&self) -> PartyId {
        self.me
    }

    fn send(
        &self,
        to: PartyId,
        tag: Tag,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<()>> + Send {
        let res = (|| {
            let mut st = self.hub.lock();
            if st.closed[to.index()] {
                return Err(TransportError::PeerGone(format!("{to:?} has gone away")).into());
            }
            let key = (self.me, to, tag);
            st.queues.entry(key).or_default().push_back(data);
            if let Some(w) = st.wakers.remove(&key) {
                w.wake();
            }
            Ok(())
        })();
        std::future::ready(res)
    }

    fn recv(&self, from: PartyId, tag: Tag) -> impl Future<Output = Result<Vec<u8>>> + Send {
        Recv {
            hub: self.hub.clone(),
            key: (from, self.me, tag),
        }
    }
}

struct Recv {
    hub: Arc<Hub>,
    key: Key,
}

impl Future for Recv {
    type Output = Result<Vec<u8>>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.hub.lock();
        if let Some(q) = st.queues.get_mut(&self.key) {
            if let Some(msg) = q.pop_front() {
                if q.is_empty() {
                    st.queues.remove(&self.key);
                }
                return Poll::Ready(Ok(msg));
            }
        }
        let (from, me, _) = self.key;
        if st.closed[from.index()] || st.closed[me.index()] {
            return Poll::Ready(Err(TransportError::PeerGone(format!(
                "{from:?} went away before sending"
            ))
            .into()));
        }
        st.wakers.insert(self.key, cx.waker().clone());
        Poll::Pending
    }
}

/// Bytes and messages one party sent to each other party.
#[derive(Debug, Default)]
pub struct Counters {
    bytes: [AtomicU64; 4],
    messages: [AtomicU64; 4],
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes sent to each party, indexed by [`PartyId::index`].
    pub bytes: [u64; 4],
    /// Messages sent to each party.
    pub messages: [u64; 4],
}

impl LinkStats {
    /// Bytes sent to `to`.
    pub fn bytes_to(&self, to: PartyId) -> u64 {
        self.bytes[to.index()]
    }
    /// Messages sent to `to`. For a server, messages to its peer are its online rounds: every
    /// protocol round sends exactly one message to the peer.
    pub fn messages_to(&self, to: PartyId) -> u64 {
        self.messages[to.index()]
    }
    /// Difference of two snapshots (`self - earlier`).
    pub fn since(&self, earlier: &LinkStats) -> LinkStats {
        let mut out = *self;
        for i in 0..4 {
            out.bytes[i] -= earlier.bytes[i];
            out.messages[i] -= earlier.messages[i];
        }
        out
    }
}

impl Counters {
    /// Current values.
    pub fn snapshot(&self) -> LinkStats {
        let mut s = LinkStats::default();
        for i in 0..4 {
            s.bytes[i] = self.bytes[i].load(Ordering::Relaxed);
            s.messages[i] = self.messages[i].load(Ordering::Relaxed);
        }
        s
    }
}

/// A transport that counts what its party sends (bytes and messages per destination).
#[derive(Debug)]
pub struct Counting<T> {
    inner: T,
    counters: Arc<Counters>,
}

impl<T: Transport> Counting<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Counting {
            inner,
            counters: Arc::new(Counters::default()),
        }
    }
    /// The live counters (keep the `Arc` to read them after the transport moved away).
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

impl<T: Transport> Transport for Counting<T> {
    fn id(&self) -> PartyId {
        self.inner.id()
    }
    fn send(
        &self,
        to: PartyId,
        tag: Tag,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<()>> + Send {
        self.counters.bytes[to.index()].fetch_add(data.len() as u64, Ordering::Relaxed);
        self.counters.messages[to.index()].fetch_add(1, Ordering::Relaxed);
        self.inner.send(to, tag, data)
    }
    fn recv(&self, from: PartyId, tag: Tag) -> impl Future<Output = Result<Vec<u8>>> + Send {
        self.inner.recv(from, tag)
    }
}

impl<T: Transport> Transport for Arc<T> {
    fn id(&self) -> PartyId {
        (**self).id()
    }
    fn send(
        &self,
        to: PartyId,
        tag: Tag,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).send(to, tag, data)
    }
    fn recv(&self, from: PartyId, tag: Tag) -> impl Future<Output = Result<Vec<u8>>> + Send {
        (**self).recv(from, tag)
    }
}

impl<T: Transport> Transport for &T {
    fn id(&self) -> PartyId {
        (**self).id()
    }
    fn send(
        &self,
        to: PartyId,
        tag: Tag,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<()>> + Send {
        (**self).send(to, tag, data)
    }
    fn recv(&self, from: PartyId, tag: Tag) -> impl Future<Output = Result<Vec<u8>>> + Send {
        (**self).recv(from, tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;

    #[test]
    fn tagged_out_of_order_delivery_and_counting() {
        let [p0, p1, _h, _c] = memory_mesh();
        let p0 = Counting::new(p0);
        let t = |step| Tag { session: 9, step };
        block_on(async {
            p0.send(PartyId::P1, t(2), vec![2; 3]).await.expect("open");
            p0.send(PartyId::P1, t(1), vec![1]).await.expect("open");
            assert_eq!(p1.recv(PartyId::P0, t(1)).await.expect("sent"), vec![1]);
            assert_eq!(p1.recv(PartyId::P0, t(2)).await.expect("sent"), vec![2; 3]);
        });
        let s = p0.counters().snapshot();
        assert_eq!(s.bytes_to(PartyId::P1), 4);
        assert_eq!(s.messages_to(PartyId::P1), 2);
    }

    #[test]
    fn a_party_that_goes_away_fails_pending_receives() {
        let [p0, p1, _h, _c] = memory_mesh();
        let t = Tag {
            session: 1,
            step: 0,
        };
        let waiter = std::thread::spawn(move || block_on(p1.recv(PartyId::P0, t)));
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(p0);
        assert!(waiter.join().expect("no panic").is_err());
    }
}

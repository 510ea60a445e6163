//! Admission control: what one client, or all of them, can make a party hold.
//!
//! A prediction's cost to a server is mostly the helper's material for it (comparison keys,
//! dealt values), which grows with the batch: [`sotto_model::Plan::material_per_input`] bytes
//! per input. Requests are weighed by that, in KiB:
//! - one request may weigh at most half of the party's budget (`--inflight-budget-mb`), else
//!   it is refused as `too_large` with the largest batch that fits;
//! - one connection may have at most half of the budget in flight, else `busy` at once;
//! - all connections together at most the whole budget; a request over it waits up to [`WAIT`]
//!   and is then refused `busy`. Freed room goes to the waiting request whose connection holds
//!   the least (oldest first among equals), so a connection that floods the party queues
//!   behind everyone else's first request instead of ahead of it. The input shares of waiting
//!   requests may take at most [`MAX_WAITING_BYTES`], beyond which a request is refused `busy`
//!   at once;
//! - P1 keeps at most [`MAX_CLAIMS_PER_CONNECTION`] seeds per connection and
//!   [`MAX_CLAIMS`] in all waiting for their session's announcement.
//!
//! Connections themselves are capped (`--max-connections`, counted from the TCP accept, TLS
//! handshakes included), and a connection with nothing in flight closes after
//! `--idle-timeout-ms`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Longest a request waits for room in the budget.
pub const WAIT: Duration = Duration::from_secs(10);
/// Most bytes of input shares held by requests waiting for room.
pub const MAX_WAITING_BYTES: usize = 64 << 20;
/// Seeds one P1 connection may have waiting for their session's announcement (a seed whose
/// session P1 already holds does not wait).
pub const MAX_CLAIMS_PER_CONNECTION: usize = 16;
/// Seeds all P1 connections together may have waiting: the default connection cap (512)
/// times the per-connection cap, so that filling it takes more connections than a party
/// accepts (a waiting seed costs about a kilobyte).
pub const MAX_CLAIMS: usize = 8192;
/// Bad requests (wrong shapes, unknown frames) after which a connection is closed.
pub const MAX_STRIKES: u32 = 8;

/// The party-wide budget.
#[derive(Debug)]
pub struct Admission {
    budget_kib: u32,
    pool: Mutex<Pool>,
    waiting_bytes: AtomicUsize,
    claims: AtomicUsize,
}

/// The party's free room and the requests waiting for it.
#[derive(Debug)]
struct Pool {
    free_kib: u64,
    next_seq: u64,
    waiting: Vec<Waiter>,
}

/// A request waiting for room.
#[derive(Debug)]
struct Waiter {
    seq: u64,
    kib: u64,
    /// Its connection's budget (what the connection holds decides who goes first).
    conn: Arc<Semaphore>,
    conn_limit: u64,
    grant: oneshot::Sender<()>,
}

impl Waiter {
    fn conn_holds(&self) -> u64 {
        self.conn_limit
            .saturating_sub(self.conn.available_permits() as u64)
    }
}

impl Pool {
    /// Hands freed room to waiting requests: the one whose connection holds least goes first
    /// (the oldest among equals); when it does not fit yet, nobody overtakes it.
    fn dispatch(&mut self) {
        while let Some(i) = (0..self.waiting.len())
            .min_by_key(|&i| (self.waiting[i].conn_holds(), self.waiting[i].seq))
        {
            if self.waiting[i].kib > self.free_kib {
                return;
            }
            let w = self.waiting.swap_remove(i);
            self.free_kib -= w.kib;
            if w.grant.send(()).is_err() {
                // Its request is gone: the room stays free.
                self.free_kib += w.kib;
            }
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request alone weighs more than a request may.
    TooLarge {
        /// Its weight, KiB.
        kib: u64,
        /// The most a request may weigh, KiB.
        limit_kib: u64,
    },
    /// The connection, or the party, has no room now.
    Busy(String),
}

impl Refusal {
    /// What the client is told.
    pub fn message(&self) -> String {
        match self {
            Refusal::TooLarge { kib, limit_kib } => format!(
                "the request needs {} MiB of correlated randomness per server, over the {} MiB a request may take",
                kib / 1024,
                limit_kib / 1024
            ),
            Refusal::Busy(m) => m.clone(),
        }
    }
}

fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024).max(1)
}

impl Admission {
    /// A budget of `bytes` of material in flight.
    pub fn new(bytes: u64) -> Admission {
        let budget_kib = kib(bytes).min(u64::from(u32::MAX >> 4)) as u32;
        Admission {
            budget_kib,
            pool: Mutex::new(Pool {
                free_kib: u64::from(budget_kib),
                next_seq: 0,
                waiting: Vec::new(),
            }),
            waiting_bytes: AtomicUsize::new(0),
            claims: AtomicUsize::new(0),
        }
    }

    /// The most one request may weigh, KiB.
    pub fn per_request_kib(&self) -> u64 {
        u64::from(self.budget_kib / 2).max(1)
    }

    /// The most one connection may have in flight, KiB.
    pub fn per_connection_kib(&self) -> u64 {
        u64::from(self.budget_kib / 2).max(1)
    }

    /// The weight of a request of `batch` inputs at `per_input` bytes each, KiB.
    pub fn weight(batch: usize, per_input: u64) -> u64 {
        kib((batch as u64).saturating_mul(per_input))
    }

    /// A connection's own budget (half of the party's).
    pub fn connection(&self) -> ConnectionBudget {
        ConnectionBudget {
            sem: Arc::new(Semaphore::new(self.per_connection_kib() as usize)),
            limit_kib: self.per_connection_kib(),
            claims: Arc::new(AtomicUsize::new(0)),
            running: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Reserves room for a request of `kib` on connection `conn`, without waiting: refuses a
    /// request heavier than a request may be, or one its connection has no room for. The
    /// reservation then waits for room in the party's budget with [`Reserved::admit`].
    pub fn reserve(
        self: &Arc<Self>,
        conn: &ConnectionBudget,
        kib: u64,
    ) -> Result<Reserved, Refusal> {
        if kib > self.per_request_kib() {
            return Err(Refusal::TooLarge {
                kib,
                limit_kib: self.per_request_kib(),
            });
        }
        let own = conn.sem.clone().try_acquire_many_owned(kib as u32).map_err(|_| {
            Refusal::Busy(format!(
                "this connection already has {} MiB of requests in flight (at most {} MiB): wait for their results",
                (conn.limit_kib - conn.sem.available_permits() as u64) / 1024,
                conn.limit_kib / 1024
            ))
        })?;
        Ok(Reserved {
            all: self.clone(),
            own,
            conn: conn.sem.clone(),
            conn_limit: conn.limit_kib,
            kib,
        })
    }

    /// Takes a claim slot (P1: a seed waiting for its session); freed when dropped.
    pub fn claim(self: &Arc<Self>, conn: &ConnectionBudget) -> Result<Claim, Refusal> {
        if conn.claims.fetch_add(1, Ordering::SeqCst) >= MAX_CLAIMS_PER_CONNECTION {
            conn.claims.fetch_sub(1, Ordering::SeqCst);
            return Err(Refusal::Busy(format!(
                "this connection already has {MAX_CLAIMS_PER_CONNECTION} seeds waiting for their sessions"
            )));
        }
        if self.claims.fetch_add(1, Ordering::SeqCst) >= MAX_CLAIMS {
            self.claims.fetch_sub(1, Ordering::SeqCst);
            conn.claims.fetch_sub(1, Ordering::SeqCst);
            return Err(Refusal::Busy(
                "the server has too many seeds waiting for their sessions: try again shortly"
                    .into(),
            ));
        }
        Ok(Claim {
            all: self.clone(),
            conn: conn.claims.clone(),
        })
    }

    /// KiB in flight now (for metrics).
    pub fn in_flight_kib(&self) -> u64 {
        u64::from(self.budget_kib).saturating_sub(self.pool().free_kib)
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn release(&self, kib: u64) {
        let mut p = self.pool();
        p.free_kib += kib;
        p.dispatch();
    }
}

/// A request that fits its connection's budget, waiting for room in the party's.
#[derive(Debug)]
pub struct Reserved {
    all: Arc<Admission>,
    own: OwnedSemaphorePermit,
    conn: Arc<Semaphore>,
    conn_limit: u64,
    kib: u64,
}

/// A request in the queue; leaving it (admitted, timed out or dropped) cleans up after it.
struct Queued<'a> {
    all: &'a Admission,
    seq: u64,
    kib: u64,
    input_bytes: usize,
    granted: oneshot::Receiver<()>,
    taken: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.all
            .waiting_bytes
            .fetch_sub(self.input_bytes, Ordering::SeqCst);
        if self.taken {
            return;
        }
        let mut p = self.all.pool();
        if let Some(i) = p.waiting.iter().position(|w| w.seq == self.seq) {
            p.waiting.swap_remove(i);
            // It may have been the one everybody else waited behind.
            p.dispatch();
        } else if self.granted.try_recv().is_ok() {
            // Granted (under the lock, while this receiver was alive) but never taken.
            p.free_kib += self.kib;
            p.dispatch();
        }
    }
}

impl Reserved {
    /// Waits up to [`WAIT`] for room in the party's budget (freed room goes first to the
    /// request whose connection holds least); the waiting request's input (`input_bytes`)
    /// counts against [`MAX_WAITING_BYTES`].
    pub async fn admit(self, input_bytes: usize) -> Result<Admitted, Refusal> {
        let a = &self.all;
        let (tx, rx) = oneshot::channel();
        let seq = {
            let mut p = a.pool();
            if p.waiting.is_empty() && p.free_kib >= self.kib {
                p.free_kib -= self.kib;
                drop(p);
                return Ok(self.admitted());
            }
            if a.waiting_bytes.fetch_add(input_bytes, Ordering::SeqCst) + input_bytes
                > MAX_WAITING_BYTES
            {
                a.waiting_bytes.fetch_sub(input_bytes, Ordering::SeqCst);
                return Err(Refusal::Busy(
                    "the server is at capacity and its queue is full: try again shortly".into(),
                ));
            }
            let seq = p.next_seq;
            p.next_seq += 1;
            p.waiting.push(Waiter {
                seq,
                kib: self.kib,
                conn: self.conn.clone(),
                conn_limit: self.conn_limit,
                grant: tx,
            });
            p.dispatch();
            seq
        };
        let mut q = Queued {
            all: a,
            seq,
            kib: self.kib,
            input_bytes,
            granted: rx,
            taken: false,
        };
        let res = match tokio::time::timeout(WAIT, &mut q.granted).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Refusal::Busy("the server is shutting down".into())),
            Err(_) => Err(Refusal::Busy(format!(
                "the server stayed at capacity for {WAIT:?}: try again shortly"
            ))),
        };
        match res {
            Ok(()) => {
                q.taken = true;
                drop(q);
                Ok(self.admitted())
            }
            // Dropping the queue entry removes it, or returns room granted at the last moment.
            Err(r) => {
                drop(q);
                Err(r)
            }
        }
    }

    fn admitted(self) -> Admitted {
        Admitted {
            _own: self.own,
            _all: Grant {
                all: self.all,
                kib: self.kib,
            },
        }
    }
}

/// One connection's share of the budget.
#[derive(Debug)]
pub struct ConnectionBudget {
    sem: Arc<Semaphore>,
    limit_kib: u64,
    claims: Arc<AtomicUsize>,
    /// Sessions of this connection running at P1 (which holds no budget for them).
    running: Arc<AtomicUsize>,
}

impl ConnectionBudget {
    /// True when nothing of this connection is in flight.
    pub fn idle(&self) -> bool {
        self.sem.available_permits() as u64 == self.limit_kib
            && self.claims.load(Ordering::SeqCst) == 0
            && self.running.load(Ordering::SeqCst) == 0
    }

    /// Marks a session of this connection running until the guard is dropped: a connection
    /// waiting for a long prediction is not idle.
    pub fn running(&self) -> Running {
        self.running.fetch_add(1, Ordering::SeqCst);
        Running(self.running.clone())
    }
}

/// A running session of a connection ([`ConnectionBudget::running`]).
#[derive(Debug)]
pub struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Room in the budget, held while a request runs.
#[derive(Debug)]
pub struct Admitted {
    _own: OwnedSemaphorePermit,
    _all: Grant,
}

/// Room in the party's budget; returned (and handed on) when dropped.
#[derive(Debug)]
struct Grant {
    all: Arc<Admission>,
    kib: u64,
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.all.release(self.kib);
    }
}

/// A claim slot, held while a seed waits for its session and the session runs.
#[derive(Debug)]
pub struct Claim {
    all: Arc<Admission>,
    conn: Arc<AtomicUsize>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.all.claims.fetch_sub(1, Ordering::SeqCst);
        self.conn.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_are_weighed_and_limited() {
        // 16 MiB: 8 MiB per request and per connection.
        let a = Arc::new(Admission::new(16 << 20));
        assert_eq!(a.per_request_kib(), 8192);
        assert_eq!(a.per_connection_kib(), 8192);
        let c = a.connection();
        assert!(matches!(a.reserve(&c, 9000), Err(Refusal::TooLarge { .. })));
        let admit = |c: &ConnectionBudget, kib: u64| {
            let r = a.reserve(c, kib).expect("fits its connection");
            tokio::spawn(async move { r.admit(10).await })
        };
        let p1 = admit(&c, 4000).await.expect("join").expect("room");
        let p2 = admit(&c, 4000).await.expect("join").expect("room");
        assert!(!c.idle());
        assert!(matches!(a.reserve(&c, 1000), Err(Refusal::Busy(_))));
        // another connection gets the rest of the party's budget, then waits
        let c2 = a.connection();
        let p3 = admit(&c2, 4000).await.expect("join").expect("room");
        let p4 = admit(&c2, 4000).await.expect("join").expect("room");
        let c3 = a.connection();
        let waiting = admit(&c3, 2000);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "waits for room");
        drop(p1);
        let p5 = waiting
            .await
            .expect("join")
            .expect("admitted once room is freed");
        drop((p2, p3, p4, p5));
        assert!(c.idle() && c2.idle() && c3.idle());
        assert_eq!(a.in_flight_kib(), 0);
    }

    #[tokio::test]
    async fn freed_room_goes_to_the_connection_holding_least() {
        // 16,384 KiB; 4,096 per request, 8,192 per connection.
        let a = Arc::new(Admission::new(16 << 20));
        let admit = |c: &ConnectionBudget, kib: u64| {
            let r = a.reserve(c, kib).expect("fits its connection");
            tokio::spawn(async move { r.admit(0).await })
        };
        let (flood, g, k, honest) = (
            a.connection(),
            a.connection(),
            a.connection(),
            a.connection(),
        );
        let f1 = admit(&flood, 4000).await.expect("join").expect("room");
        let g1 = admit(&g, 4000).await.expect("join").expect("room");
        let g2 = admit(&g, 4000).await.expect("join").expect("room");
        let k1 = admit(&k, 4000).await.expect("join").expect("room");
        // 384 KiB free: the flooder queues first, the honest connection after it.
        let f2 = admit(&flood, 4000);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let h = admit(&honest, 4000);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!f2.is_finished() && !h.is_finished());
        // Room for one: it goes to the honest connection (it holds 4,000 KiB, the flooder
        // 8,000 with its waiting request), although the flooder came first.
        drop(k1);
        let h1 = h.await.expect("join").expect("admitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!f2.is_finished(), "the flooder waits for the next room");
        drop(g1);
        let f2 = f2.await.expect("join").expect("admitted next");
        drop((f1, f2, g2, h1));
        assert_eq!(a.in_flight_kib(), 0);
        assert!(flood.idle() && honest.idle() && g.idle() && k.idle());
    }

    /// A 4 MiB party whose budget two connections fill with four 1 MiB requests.
    async fn full_party() -> (Arc<Admission>, Vec<Admitted>) {
        let a = Arc::new(Admission::new(4 << 20));
        let (c, c2) = (a.connection(), a.connection());
        let mut held = Vec::new();
        for c in [&c, &c, &c2, &c2] {
            held.push(
                a.reserve(c, 1024)
                    .expect("fits")
                    .admit(0)
                    .await
                    .expect("room"),
            );
        }
        (a, held)
    }

    #[tokio::test]
    async fn a_request_dropped_while_waiting_leaves_no_trace() {
        let (a, held) = full_party().await;
        let c3 = a.connection();
        let r = a.reserve(&c3, 512).expect("fits");
        let waiting = tokio::spawn(async move { r.admit(100).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(a.waiting_bytes.load(Ordering::SeqCst), 0);
        assert!(a.pool().waiting.is_empty());
        drop(held);
        assert_eq!(a.in_flight_kib(), 0);
        assert!(c3.idle());
    }

    #[tokio::test]
    async fn waiting_input_is_bounded() {
        let (a, _held) = full_party().await;
        let c3 = a.connection();
        let r = a
            .reserve(&c3, 10)
            .expect("fits")
            .admit(MAX_WAITING_BYTES + 1)
            .await;
        assert!(
            matches!(r, Err(Refusal::Busy(ref m)) if m.contains("queue")),
            "{r:?}"
        );
    }

    #[test]
    fn claims_are_capped_per_connection() {
        let a = Arc::new(Admission::new(1 << 20));
        let c = a.connection();
        let held: Vec<Claim> = (0..MAX_CLAIMS_PER_CONNECTION)
            .map(|_| a.claim(&c).expect("room"))
            .collect();
        assert!(a.claim(&c).is_err());
        let other = a.connection();
        let one = a.claim(&other).expect("another connection has room");
        drop(held);
        drop(one);
        assert!(c.idle() && other.idle());
    }
}

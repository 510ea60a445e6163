//! Admission control: what one client, or all of them, can make a party hold.
//!
//! A prediction's cost to a server is mostly the helper's material for it (comparison keys,
//! dealt values), which grows with the batch: [`sotto_model::Plan::material_per_input`] bytes
//! per input. Requests are weighed by that, in KiB:
//! - one request may weigh at most half of the party's budget (`--inflight-budget-mb`), else
//!   it is refused as `too_large` with the largest batch that fits;
//! - one connection may have at most half of the budget in flight, else `busy` at once;
//! - all connections together at most the whole budget; a request over it waits (first come,
//!   first served) up to [`WAIT`] and is then refused `busy`; the input shares of waiting
//!   requests may take at most [`MAX_WAITING_BYTES`], beyond which a request is refused `busy`
//!   at once;
//! - P1 keeps at most [`MAX_CLAIMS_PER_CONNECTION`] seeds per connection and
//!   [`MAX_CLAIMS`] in all waiting for their session's announcement.
//!
//! Connections themselves are capped (`--max-connections`, counted from the TCP accept, TLS
//! handshakes included), and a connection with nothing in flight closes after
//! `--idle-timeout-ms`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
    sem: Arc<Semaphore>,
    waiting_bytes: AtomicUsize,
    claims: AtomicUsize,
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
            sem: Arc::new(Semaphore::new(budget_kib as usize)),
            waiting_bytes: AtomicUsize::new(0),
            claims: AtomicUsize::new(0),
        }
    }

    /// The most one request (and one connection) may weigh, KiB.
    pub fn per_request_kib(&self) -> u64 {
        u64::from(self.budget_kib / 2).max(1)
    }

    /// The weight of a request of `batch` inputs at `per_input` bytes each, KiB.
    pub fn weight(batch: usize, per_input: u64) -> u64 {
        kib((batch as u64).saturating_mul(per_input))
    }

    /// The largest batch of a model with `per_input` bytes per input that one request may
    /// carry.
    pub fn max_batch(&self, per_input: u64) -> usize {
        ((self.per_request_kib() * 1024) / per_input.max(1)) as usize
    }

    /// A connection's own budget (half of the party's).
    pub fn connection(&self) -> ConnectionBudget {
        ConnectionBudget {
            sem: Arc::new(Semaphore::new(self.per_request_kib() as usize)),
            limit_kib: self.per_request_kib(),
            claims: Arc::new(AtomicUsize::new(0)),
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
            kib: kib as u32,
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
        u64::from(self.budget_kib) - self.sem.available_permits() as u64
    }
}

/// A request that fits its connection's budget, waiting for room in the party's.
#[derive(Debug)]
pub struct Reserved {
    all: Arc<Admission>,
    own: OwnedSemaphorePermit,
    kib: u32,
}

impl Reserved {
    /// Waits up to [`WAIT`] for room in the party's budget (first come, first served); the
    /// waiting request's input (`input_bytes`) counts against [`MAX_WAITING_BYTES`].
    pub async fn admit(self, input_bytes: usize) -> Result<Admitted, Refusal> {
        let a = &self.all;
        if let Ok(p) = a.sem.clone().try_acquire_many_owned(self.kib) {
            return Ok(Admitted {
                _own: self.own,
                _all: p,
            });
        }
        let before = a.waiting_bytes.fetch_add(input_bytes, Ordering::SeqCst);
        let res = if before + input_bytes > MAX_WAITING_BYTES {
            Err(Refusal::Busy(
                "the server is at capacity and its queue is full: try again shortly".into(),
            ))
        } else {
            match tokio::time::timeout(WAIT, a.sem.clone().acquire_many_owned(self.kib)).await {
                Ok(Ok(p)) => Ok(p),
                Ok(Err(_)) => Err(Refusal::Busy("the server is shutting down".into())),
                Err(_) => Err(Refusal::Busy(format!(
                    "the server stayed at capacity for {WAIT:?}: try again shortly"
                ))),
            }
        };
        a.waiting_bytes.fetch_sub(input_bytes, Ordering::SeqCst);
        res.map(|p| Admitted {
            _own: self.own,
            _all: p,
        })
    }
}

/// One connection's share of the budget.
#[derive(Debug)]
pub struct ConnectionBudget {
    sem: Arc<Semaphore>,
    limit_kib: u64,
    claims: Arc<AtomicUsize>,
}

impl ConnectionBudget {
    /// True when nothing of this connection is in flight.
    pub fn idle(&self) -> bool {
        self.sem.available_permits() as u64 == self.limit_kib
            && self.claims.load(Ordering::SeqCst) == 0
    }
}

/// Room in the budget, held while a request runs.
#[derive(Debug)]
pub struct Admitted {
    _own: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
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
        let a = Arc::new(Admission::new(8 << 20)); // 8 MiB: 4 MiB per request and connection
        assert_eq!(a.per_request_kib(), 4096);
        assert_eq!(a.max_batch(1 << 20), 4);
        let c = a.connection();
        assert!(matches!(a.reserve(&c, 5000), Err(Refusal::TooLarge { .. })));
        let p1 = a
            .reserve(&c, 3000)
            .expect("fits")
            .admit(10)
            .await
            .expect("room");
        assert!(!c.idle());
        assert!(matches!(a.reserve(&c, 2000), Err(Refusal::Busy(_))));
        // another connection gets the rest of the party's budget, then waits
        let c2 = a.connection();
        let p2 = a
            .reserve(&c2, 4000)
            .expect("fits")
            .admit(10)
            .await
            .expect("room");
        let a2 = a.clone();
        let waiting = tokio::spawn(async move {
            let c3 = a2.connection();
            let r = a2.reserve(&c3, 2000).expect("fits its connection");
            r.admit(10).await.map(|_| ())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "waits for room");
        drop(p1);
        waiting
            .await
            .expect("join")
            .expect("admitted once room is freed");
        drop(p2);
        assert!(c.idle() && c2.idle());
        assert_eq!(a.in_flight_kib(), 0);
    }

    #[tokio::test]
    async fn waiting_input_is_bounded() {
        let a = Arc::new(Admission::new(2 << 20));
        let c = a.connection();
        let _held = a
            .reserve(&c, 1024)
            .expect("fits")
            .admit(0)
            .await
            .expect("room");
        let c2 = a.connection();
        let _held2 = a
            .reserve(&c2, 1024)
            .expect("fits")
            .admit(0)
            .await
            .expect("room");
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

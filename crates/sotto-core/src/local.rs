//! Running the three parties in one process over the in-memory mesh: for tests, benchmarks
//! and the local demo. Each party runs on its own thread.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use crate::error::{CoreError, Result};
use crate::session::{Dealer, Server};
use crate::transport::{memory_mesh, Counting, LinkStats, MemoryTransport};

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on the current thread (a minimal executor; the in-memory
/// transport needs nothing more).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

/// A fresh session id from the OS generator.
pub fn new_session_id() -> Result<u128> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| CoreError::Rng(e.to_string()))?;
    Ok(u128::from_le_bytes(b))
}

/// What [`run_local`] returns: each server's result, the client's, and what each party sent.
pub struct LocalRun<R, C> {
    /// P0's result.
    pub p0: R,
    /// P1's result.
    pub p1: R,
    /// The client's result.
    pub client: C,
    /// Bytes and messages sent by P0, P1, the helper and the client.
    pub sent: [LinkStats; 4],
    /// Wall time of the servers' part. With `helper_first` this is the online phase alone.
    pub server_time: std::time::Duration,
}

/// A counting in-memory transport, shared between the runner and the party's task.
pub type LocalTransport = Arc<Counting<MemoryTransport>>;

impl<R, C> std::fmt::Debug for LocalRun<R, C> {
    /// Shows the traffic only: the results may be shares.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRun")
            .field("sent", &self.sent)
            .field("server_time", &self.server_time)
            .finish_non_exhaustive()
    }
}

/// A client that does nothing, for sessions without one.
pub async fn no_client(_t: LocalTransport, _session: u128) -> Result<()> {
    Ok(())
}

/// Runs one session: `helper` on the helper's thread, `server` on P0's and P1's threads and
/// `client` on a fourth. If `helper_first`, the helper deals everything before the servers
/// start, so that the servers' time is the online phase alone.
pub fn run_local<H, HF, S, SF, R, C, CF, CR>(
    helper: H,
    server: S,
    client: C,
    helper_first: bool,
) -> Result<LocalRun<R, CR>>
where
    H: FnOnce(Dealer<LocalTransport>) -> HF + Send,
    HF: Future<Output = Result<()>>,
    S: Fn(Server<LocalTransport>) -> SF + Send + Sync,
    SF: Future<Output = Result<R>>,
    R: Send,
    C: FnOnce(LocalTransport, u128) -> CF + Send,
    CF: Future<Output = Result<CR>>,
    CR: Send,
{
    run_local_with(helper, server, client, helper_first, None)
}

/// [`run_local`], with a streamed session when `window` is given
/// ([`Dealer::start_streamed`]): the helper stays at most about `window` bytes of material
/// ahead of the servers.
pub fn run_local_with<H, HF, S, SF, R, C, CF, CR>(
    helper: H,
    server: S,
    client: C,
    helper_first: bool,
    window: Option<usize>,
) -> Result<LocalRun<R, CR>>
where
    H: FnOnce(Dealer<LocalTransport>) -> HF + Send,
    HF: Future<Output = Result<()>>,
    S: Fn(Server<LocalTransport>) -> SF + Send + Sync,
    SF: Future<Output = Result<R>>,
    R: Send,
    C: FnOnce(LocalTransport, u128) -> CF + Send,
    CF: Future<Output = Result<CR>>,
    CR: Send,
{
    let session = new_session_id()?;
    let [p0, p1, h, c] = memory_mesh().map(|t| Arc::new(Counting::new(t)));
    let counters = [p0.counters(), p1.counters(), h.counters(), c.counters()];
    let helper_run = |h: &LocalTransport| -> Result<()> {
        let r = block_on(async {
            let d = match window {
                Some(w) => Dealer::start_streamed(h.clone(), session, w).await?,
                None => Dealer::start(h.clone(), session).await?,
            };
            helper(d).await
        });
        if r.is_err() {
            h.inner().close();
        }
        r
    };
    let server_run = |t: &LocalTransport| -> Result<R> {
        let r = block_on(async { server(Server::start(t.clone(), session).await?).await });
        if r.is_err() {
            t.inner().close();
        }
        r
    };
    let (r0, r1, rh, rc, server_time) = thread::scope(|sc| {
        let cref = &c;
        let jc = sc.spawn(move || {
            let r = block_on(client(cref.clone(), session));
            if r.is_err() {
                cref.inner().close();
            }
            r
        });
        let (hres, a0, a1);
        let t0;
        if helper_first {
            hres = helper_run(&h);
            t0 = std::time::Instant::now();
            let j1 = sc.spawn(|| server_run(&p1));
            a0 = server_run(&p0);
            a1 = j1.join();
        } else {
            t0 = std::time::Instant::now();
            let jh = sc.spawn(|| helper_run(&h));
            let j1 = sc.spawn(|| server_run(&p1));
            a0 = server_run(&p0);
            a1 = j1.join();
            hres = jh
                .join()
                .unwrap_or_else(|_| Err(CoreError::Protocol("helper panicked".into())));
        }
        let a1 = a1.unwrap_or_else(|_| Err(CoreError::Protocol("P1 panicked".into())));
        let server_time = t0.elapsed();
        let ac = jc
            .join()
            .unwrap_or_else(|_| Err(CoreError::Protocol("client panicked".into())));
        (a0, a1, hres, ac, server_time)
    });
    rh?;
    let sent = counters.map(|c| c.snapshot());
    Ok(LocalRun {
        p0: r0?,
        p1: r1?,
        client: rc?,
        sent,
        server_time,
    })
}

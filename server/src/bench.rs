//! `sotto bench`: private predictions end to end (client, P0, P1, helper over loopback
//! WebSockets, or parties already running), printed as JSON.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use serde_json::Value;
use sotto_client::{Client, ClientOptions};
use sotto_core::transport::PartyId;
use sotto_model::{Model, Plan};

use crate::launch::{launch_linked, link_bytes, wait_pool_full, LaunchOptions, Launched};
use crate::netsim::{LinkSpec, Shaping};

/// Flags of `sotto bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The ONNX model (also run in the clear for `plain_ms`).
    #[arg(long, default_value = "models/network_a.onnx")]
    pub model: PathBuf,
    /// Batch sizes to run, comma-separated.
    #[arg(long, default_value = "1,100", value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Concurrent clients, comma-separated.
    #[arg(long, default_value = "1,8", value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// Requests per (batch, concurrency) run for batch 1; larger batches run fewer (at least
    /// 10, or all of them when fewer are asked for).
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Public weights (only the input is private).
    #[arg(long)]
    pub public_weights: bool,
    /// Target running parties instead of starting three (then only client-side bytes are
    /// known).
    #[arg(long, requires = "p1")]
    pub p0: Option<String>,
    /// P1's URL with --p0.
    #[arg(long, requires = "p0")]
    pub p1: Option<String>,
    /// Simulate a wide-area network: every link (client–P0, client–P1, P0–P1, helper–P0,
    /// helper–P1) delays each direction by this many milliseconds (the round trip is twice
    /// this), through a TCP proxy per link in this process.
    #[arg(long, conflicts_with = "p0")]
    pub link_delay_ms: Option<f64>,
    /// Simulate a wide-area network: cap each direction of every link (each TCP connection)
    /// at this many Mbit/s.
    #[arg(long, conflicts_with = "p0")]
    pub link_mbps: Option<f64>,
    /// Also measure past the pool: after the pool-served runs, start the parties again with
    /// a pool of only twice the clients (filled before each run) and run at least four times
    /// that many requests, so that the helper deals while predictions run.
    #[arg(long, conflicts_with = "p0")]
    pub sustained: bool,
    /// Most memory, in MiB, the bench may take with its three parties in this process: each
    /// batch size's pool of prepared sessions is cut to fit (a pooled session costs both
    /// servers' prepared material, about 1.1 times its helper material each), after the
    /// parties' fixed memory and one session being dealt; when not even one session of
    /// each batch size fits, the bench stops at once and names the budget it needs. Not
    /// used with --p0/--p1.
    #[arg(long, default_value_t = DEFAULT_MEMORY_BUDGET_MB,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub memory_budget_mb: u64,
    /// Opt-in plan setting, private weights only: each truncating ReLU that feeds only a
    /// dense layer runs with that layer's product (network A: 8 → 6 rounds, about 1 MB more
    /// helper material per prediction and server).
    #[arg(long, conflicts_with = "public_weights")]
    pub fewer_rounds: bool,
    /// Opt-in plan setting: max pools and ReLUs without a truncation compare with one-bit keys,
    /// one more round per comparison, and ReLUs behind non-overlapping max pools run after them
    /// (CIFAR-10 CNN: 21 → 25 rounds, 36 % less helper material and less online CPU; a loss
    /// over a WAN)
    #[arg(long)]
    pub compact_comparisons: bool,
}

/// Default of `sotto bench --memory-budget-mb`: the bench process, three parties and their
/// pools included, stays under 4 GB (3.5 GiB, the estimates leaving some room).
pub const DEFAULT_MEMORY_BUDGET_MB: u64 = 3584;

/// Largest pool a bench keeps of one batch size: twice the largest run, so that the pool
/// never falls below half (P0's refill mark) and the helper stays idle during a run; at
/// most 24 sessions from batch 32 on.
fn wanted_pool(batch: usize, requests: usize, max_conc: usize) -> usize {
    (2 * requests_for(batch, requests))
        .max(max_conc)
        .min(if batch >= 32 { 24 } else { 1024 })
}

fn requests_for(batch: usize, base: usize) -> usize {
    (base / batch.max(1)).clamp(base.min(10), base.max(10))
}

/// Predictions per second over the second half of a run's requests (from the moment half
/// of them had finished to the last): the steady rate, without the start-up (connections,
/// and in a sustained run the pool's first refills). `None` for runs of fewer than 4.
fn second_half_rate(finished: &mut [f64], batch: usize) -> Option<f64> {
    if finished.len() < 4 {
        return None;
    }
    finished.sort_by(f64::total_cmp);
    let mid = finished.len() / 2;
    let span = finished[finished.len() - 1] - finished[mid - 1];
    (span > 0.0).then(|| ((finished.len() - mid) * batch) as f64 / span)
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Messages of [`party_link_round_trip`] (the size of network A's largest opening between the
/// servers is 6 KiB, its others 1 KiB or less).
const LINK_PROBE_BYTES: usize = 1024;
/// Round trips [`party_link_round_trip`] times.
const LINK_PROBE_COUNT: usize = 200;

/// P0 → P1 → P0 round trips of a `bytes`-byte message over the servers' own link (the one
/// their openings take, through their transports as a protocol uses them), one after another
/// on idle parties: what a server round costs here before any computation, since a round is
/// one one-way trip.
async fn party_link_round_trip(l: &Launched, n: usize, bytes: usize) -> Result<Value, String> {
    use sotto_core::transport::{Tag, Transport};
    let (m0, m1) = (l.states[0].mesh.clone(), l.states[1].mesh.clone());
    let session = sotto_core::local::new_session_id().map_err(|e| e.to_string())?;
    let tag = move |step: usize| Tag {
        session,
        step: step as u32,
    };
    let echo = tokio::spawn(async move {
        for k in 1..=n {
            let m = m1.recv(PartyId::P0, tag(k)).await?;
            m1.send(PartyId::P0, tag(k), m).await?;
        }
        m1.end_session(session, "the link was measured");
        Ok::<_, sotto_core::CoreError>(())
    });
    let mut rtt = Vec::with_capacity(n);
    for k in 1..=n {
        let t = Instant::now();
        m0.send(PartyId::P1, tag(k), vec![0x5a; bytes])
            .await
            .map_err(|e| e.to_string())?;
        let back = m0
            .recv(PartyId::P1, tag(k))
            .await
            .map_err(|e| e.to_string())?;
        rtt.push(t.elapsed().as_secs_f64() * 1e6);
        if back.len() != bytes {
            return Err(format!(
                "the link probe came back with {} bytes",
                back.len()
            ));
        }
    }
    m0.end_session(session, "the link was measured");
    echo.await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    rtt.sort_by(f64::total_cmp);
    Ok(json!({
        "median_us": pct(&rtt, 0.5),
        "p10_us": pct(&rtt, 0.1),
        "p90_us": pct(&rtt, 0.9),
        "message_bytes": bytes,
        "round_trips": n,
        "how": "P0 sends P1 a message over their own link and P1 sends it back, one round trip after another, before the runs (parties idle, the pool full); a server round is one one-way trip, so (online_rounds + 2) / 2 round trips is what a batch-1 prediction spends on messages alone",
    }))
}

fn inputs(plan: &Plan, n: usize) -> Vec<f32> {
    let images = crate::read_npy(&PathBuf::from("models/mnist_test_images.npy"))
        .ok()
        .filter(|(_, s)| s.iter().skip(1).product::<usize>() == plan.input_len)
        .map(|(x, _)| x);
    match images {
        Some(x) => (0..n * plan.input_len)
            .map(|i| x[i % x.len()] as f32)
            .collect(),
        None => (0..n * plan.input_len)
            .map(|i| (((i * 7919) % 1000) as f64 / 1000.0 * plan.input_bound) as f32)
            .collect(),
    }
}

fn plain_ms(model: &Model, x: &[f32], batch: usize) -> f64 {
    let reps = (200 / batch).clamp(3, 200);
    let mut t = Vec::new();
    for _ in 0..reps {
        let s = Instant::now();
        let _ = model.forward(&x[..batch * model.input_len()], batch);
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    pct(&t, 0.5)
}

/// How a run gets its sessions.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// From a pool that is full before the run (and before each wave of `wave` requests,
    /// when the pool holds fewer than the run): the helper idles, the online phase is timed.
    PoolServed { settled: usize, wave: usize },
    /// From a small pool the helper refills while the run goes on.
    Sustained { settled: usize },
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Mode::PoolServed { .. } => "pool_served",
            Mode::Sustained { .. } => "sustained",
        }
    }
}

/// What every run shares.
struct Ctx<'a> {
    launched: Option<&'a Launched>,
    p0: &'a str,
    p1: &'a str,
    plan: &'a Plan,
    cost: u32,
    opts: ClientOptions,
    shaping: Option<&'a Shaping>,
    rtt_ms: f64,
    bar: &'a ProgressBar,
}

impl Ctx<'_> {
    /// Waits (untimed) for the pool to hold `settled` sessions; simulated links forward at
    /// once meanwhile (the fill is not what a pool-served run times).
    async fn settle(&self, settled: usize) {
        if let Some(l) = self.launched {
            if let Some(s) = self.shaping {
                s.set(false);
            }
            wait_pool_full(l, settled).await;
            if let Some(s) = self.shaping {
                s.set(true);
            }
        }
    }
}

/// `n` requests of `batch` inputs from `conc` clients; the run's JSON.
async fn one_run(
    cx: &Ctx<'_>,
    batch: usize,
    conc: usize,
    n: usize,
    plain: f64,
    mode: Mode,
) -> Result<Value, String> {
    let x = inputs(cx.plan, batch);
    cx.bar
        .set_message(format!("{}: batch {batch}, {conc} clients", mode.name()));
    let (settled, wave) = match mode {
        Mode::PoolServed { settled, wave } => (settled, wave.max(1)),
        Mode::Sustained { settled } => (settled, n),
    };
    let launched = cx.launched;
    // Every pool is full before the byte counters are read: the first run of a bench
    // otherwise counted the initial fill of every pool as its own material (network A, batch 1
    // with a batch-100 pool: 1.3 MB per prediction instead of 313 KB). In a sustained run the
    // pools hold only twice the clients, so the helper deals for this run's batch size
    // throughout it, and not for the other batch sizes' pools (the first sustained run used
    // to deal every batch size's pool: a batch-1 run, that of batch 100 as well).
    cx.settle(settled).await;
    let before_links = launched.map(link_bytes);
    let before_dealt = launched.map_or(0, |l| l.states[0].dealt.load(Ordering::Relaxed));
    let before_out: Vec<u64> = launched
        .map(|l| {
            l.states
                .iter()
                .map(|s| s.client_sent.load(Ordering::Relaxed))
                .collect()
        })
        .unwrap_or_default();
    let mut lat = Vec::new();
    // When each request finished, from the start of the run's waves (for the steady rate).
    let mut finished: Vec<f64> = Vec::new();
    let mut wall = 0.0;
    let mut dealt_during_run = 0;
    let mut done = 0;
    // Bytes the clients sent to P0 and to P1.
    let (mut c0, mut c1) = (0u64, 0u64);
    while done < n {
        let this = wave.min(n - done);
        if let Mode::PoolServed { .. } = mode {
            cx.settle(settled).await;
        }
        // Clients connect after the (untimed) wait for the pool: a connection idle for a
        // minute is closed by the servers, and a large batch's pool can take longer.
        let mut clients = Vec::new();
        for _ in 0..conc {
            clients.push(Arc::new(
                Client::connect(cx.p0, cx.p1, cx.opts.clone())
                    .await
                    .map_err(|e| e.to_string())?,
            ));
        }
        let before: Vec<(u64, u64)> = clients.iter().map(|c| c.bytes_sent()).collect();
        let dealt0 = launched.map_or(0, |l| l.states[0].dealt.load(Ordering::Relaxed));
        let t = Instant::now();
        let mut tasks = Vec::new();
        for (k, c) in clients.iter().enumerate() {
            let (c, x, bar) = (c.clone(), x.clone(), cx.bar.clone());
            let mine = this / conc + usize::from(k < this % conc);
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut ends = Vec::new();
                for _ in 0..mine {
                    let r = Instant::now();
                    c.predict(&x, batch).await.map_err(|e| e.to_string())?;
                    lat.push(r.elapsed().as_secs_f64() * 1e3);
                    ends.push(t.elapsed().as_secs_f64());
                    bar.inc(1);
                }
                Ok::<_, String>((lat, ends))
            }));
        }
        for tk in tasks {
            let (l, ends) = tk.await.map_err(|e| e.to_string())??;
            lat.extend(l);
            finished.extend(ends.into_iter().map(|e| e + wall));
        }
        wall += t.elapsed().as_secs_f64();
        dealt_during_run +=
            launched.map_or(0, |l| l.states[0].dealt.load(Ordering::Relaxed)) - dealt0;
        done += this;
        for (c, (b0, b1)) in clients.into_iter().zip(before) {
            let (x, y) = c.bytes_sent();
            c0 += x - b0;
            c1 += y - b1;
            if let Ok(c) = Arc::try_unwrap(c) {
                c.close().await;
            }
        }
    }
    lat.sort_by(f64::total_cmp);
    let nreq = lat.len() as u64;
    let client_bytes = c0 + c1;
    let median = pct(&lat, 0.5);
    let mut run = json!({
        "mode": mode.name(),
        "batch": batch,
        "concurrency": conc,
        "requests": nreq,
        "predictions": nreq * batch as u64,
        "min_ms": pct(&lat, 0.0),
        "median_ms": median,
        "p95_ms": pct(&lat, 0.95),
        "p99_ms": pct(&lat, 0.99),
        "predictions_per_s": (nreq * batch as u64) as f64 / wall,
        "predictions_per_s_second_half": second_half_rate(&mut finished, batch),
        "online_rounds": cx.cost,
        "plain_ms": plain,
        "ratio_private_to_plain": median / plain,
    });
    if cx.shaping.is_some() {
        // A round between P0 and P1 is both sending at once: one one-way delay, not a round
        // trip. The floor adds the client's input out and output back.
        run["rounds_x_rtt_ms"] = json!(f64::from(cx.cost) * cx.rtt_ms);
        run["latency_floor_ms"] = json!(f64::from(cx.cost + 2) * cx.rtt_ms / 2.0);
    }
    if wave < n {
        run["waves"] = json!(n.div_ceil(wave));
    }
    match (launched, before_links) {
        (Some(l), Some(bl)) => {
            run["dealt_during_run"] = json!(dealt_during_run);
            // The helper refills what this run used; wait for it so its bytes are the
            // material of exactly these requests.
            cx.settle(settled).await;
            let dealt = l.states[0].dealt.load(Ordering::Relaxed) - before_dealt;
            let al = link_bytes(l);
            let d = |f: PartyId, t: PartyId| al[f.index()][t.index()] - bl[f.index()][t.index()];
            let out: Vec<u64> = l
                .states
                .iter()
                .zip(&before_out)
                .map(|(s, b)| s.client_sent.load(Ordering::Relaxed) - b)
                .collect();
            let per = |v: u64| v as f64 / nreq as f64;
            let online = client_bytes
                + d(PartyId::P0, PartyId::P1)
                + d(PartyId::P1, PartyId::P0)
                + out[0]
                + out[1];
            let offline = d(PartyId::Helper, PartyId::P0) + d(PartyId::Helper, PartyId::P1);
            run["online_bytes_per_prediction"] = json!(per(online) / batch as f64);
            run["online_bytes_per_request"] = json!(per(online));
            // The helper refilled `dealt` sessions (not always exactly the ones used: the
            // pool refills below half); each serves one request.
            let per_session = |v: u64| v as f64 / dealt.max(1) as f64;
            run["offline_bytes_per_prediction"] = json!(per_session(offline) / batch as f64);
            run["offline_bytes_per_request"] = json!(per_session(offline));
            run["bytes_by_link"] = json!({
                "client_to_p0": per(c0),
                "client_to_p1": per(c1),
                "p0_to_p1": per(d(PartyId::P0, PartyId::P1)),
                "p1_to_p0": per(d(PartyId::P1, PartyId::P0)),
                "p0_to_client": per(out[0]),
                "p1_to_client": per(out[1]),
                "helper_to_p0": per_session(d(PartyId::Helper, PartyId::P0)),
                "helper_to_p1": per_session(d(PartyId::Helper, PartyId::P1)),
                "p0_to_helper": per(d(PartyId::P0, PartyId::Helper)),
                "p1_to_helper": per(d(PartyId::P1, PartyId::Helper)),
            });
        }
        _ => {
            run["online_bytes_per_prediction"] = json!(null);
            run["offline_bytes_per_prediction"] = json!(null);
            run["bytes_by_link"] = json!({
                "client_to_p0": c0 as f64 / nreq as f64,
                "client_to_p1": c1 as f64 / nreq as f64,
            });
        }
    }
    Ok(run)
}

/// One batch size's pool, as planned against the memory budget.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pool {
    batch: usize,
    /// Sessions the runs would like ([`wanted_pool`], or twice the clients when sustained).
    wanted: usize,
    /// Sessions kept.
    sessions: usize,
    /// Bytes one pooled session takes in this process (both servers' prepared material).
    session_bytes: u64,
}

impl Pool {
    /// What the bench JSON says of the pool: its size and why.
    fn json(&self, budget_mb: u64) -> Value {
        let mib = |b: u64| (b as f64 / f64::from(1 << 20) * 10.0).round() / 10.0;
        let why = if self.sessions < self.wanted {
            format!(
                "cut from {} to fit --memory-budget-mb {budget_mb}: {} MiB per pooled session in this process (both servers' prepared material)",
                self.wanted,
                mib(self.session_bytes)
            )
        } else {
            "twice the largest run (or the clients), within the memory budget".to_string()
        };
        json!({
            "batch": self.batch,
            "sessions": self.sessions,
            "wanted": self.wanted,
            "session_bytes_estimated": self.session_bytes,
            "why": why,
        })
    }
}

/// Sizes pools of `(batch, wanted, bytes per session)` to fit `room` bytes together: one
/// session each first, then the rest of the room shared out evenly, smallest wants first,
/// what a pool leaves going to the larger ones. `Err(i)`: not even one session of each
/// fits, pool `i` being the first (by session size) left out.
fn fit_pools(wants: &[(usize, usize, u64)], room: u64) -> Result<Vec<Pool>, usize> {
    let bytes = |i: usize| wants[i].2.max(1);
    let mut by_size: Vec<usize> = (0..wants.len()).collect();
    by_size.sort_by_key(|&i| bytes(i));
    let mut left = room;
    for &i in &by_size {
        left = left.checked_sub(bytes(i)).ok_or(i)?;
    }
    let extra = |i: usize| wants[i].1.saturating_sub(1);
    let mut order: Vec<usize> = (0..wants.len()).collect();
    order.sort_by_key(|&i| (extra(i) as u64).saturating_mul(bytes(i)));
    let mut sessions = vec![1usize; wants.len()];
    for (k, &i) in order.iter().enumerate() {
        let share = left / (order.len() - k) as u64;
        let n = usize::try_from(share / bytes(i))
            .unwrap_or(usize::MAX)
            .min(extra(i));
        left -= n as u64 * bytes(i);
        sessions[i] += n;
    }
    // What rounding left over, to whichever pools still want it.
    for &i in &order {
        let n = usize::try_from(left / bytes(i))
            .unwrap_or(usize::MAX)
            .min(wants[i].1.saturating_sub(sessions[i]));
        left -= n as u64 * bytes(i);
        sessions[i] += n;
    }
    Ok(wants
        .iter()
        .zip(sessions)
        .map(|(&(batch, wanted, session_bytes), sessions)| Pool {
            batch,
            wanted,
            sessions,
            session_bytes,
        })
        .collect())
}

/// The pools of a bench that launches its parties: the pool-served runs' (and with
/// `sustained`, the second launch's) within `budget_mb`, after the parties' fixed memory
/// (twice with a second launch) and the dealing of one session of the largest batch; an
/// error naming the budget needed when not even one session of each fits.
fn plan_pools(
    plan: &Plan,
    private: bool,
    first: &[(usize, usize)],
    sustained: &[(usize, usize)],
    model_file_bytes: u64,
    budget_mb: u64,
) -> Result<(Vec<Pool>, Vec<Pool>, Value), String> {
    let pools =
        |plan: &Plan| plan_pools_of(plan, private, first, sustained, model_file_bytes, budget_mb);
    pools(plan).map_err(|e| {
        // One-bit keys for max pools may be what makes the sessions fit: say so.
        let compact = plan.clone().with_compact_comparisons(true);
        if !plan.compact_comparisons
            && compact.material_per_input(private) < plan.material_per_input(private)
            && pools(&compact).is_ok()
        {
            format!(
                "{e} (or --compact-comparisons: with one-bit keys for max pools this budget fits)"
            )
        } else {
            e
        }
    })
}

/// [`plan_pools`] for `plan` as it is.
fn plan_pools_of(
    plan: &Plan,
    private: bool,
    first: &[(usize, usize)],
    sustained: &[(usize, usize)],
    model_file_bytes: u64,
    budget_mb: u64,
) -> Result<(Vec<Pool>, Vec<Pool>, Value), String> {
    let launches = if sustained.is_empty() { 1 } else { 2 };
    let fixed = crate::launch::fixed_bytes(model_file_bytes).saturating_mul(launches);
    let max_batch = first.iter().map(|p| p.0).max().unwrap_or(1);
    let dealing = crate::launch::dealing_bytes(plan, private, max_batch);
    let wants: Vec<(usize, usize, u64)> = first
        .iter()
        .chain(sustained)
        .map(|&(b, w)| {
            (
                b,
                w,
                crate::launch::prepared_bytes(plan, private, b).saturating_mul(2),
            )
        })
        .collect();
    let budget = budget_mb.saturating_mul(1 << 20);
    let room = budget.saturating_sub(fixed.saturating_add(dealing));
    let mib = |b: u64| b.div_ceil(1 << 20);
    let pools = fit_pools(&wants, room).map_err(|i| {
        let least: u64 = wants.iter().map(|w| w.2).sum::<u64>() + fixed + dealing;
        format!(
            "--memory-budget-mb {budget_mb} is too small: one pooled session of batch {} takes about {} MiB in this process (both servers' prepared material), the parties {} MiB, and dealing a session of batch {max_batch} {} MiB more; give at least --memory-budget-mb {}, or smaller batches",
            wants[i].0,
            mib(wants[i].2),
            mib(fixed),
            mib(dealing),
            mib(least)
        )
    })?;
    let held: u64 = pools
        .iter()
        .map(|p| p.sessions as u64 * p.session_bytes)
        .sum();
    let memory = json!({
        "budget_bytes": budget,
        "parties_fixed_bytes_estimated": fixed,
        "dealing_bytes_estimated": dealing,
        "pools_bytes_estimated": held,
        "peak_bytes_estimated": fixed + dealing + held,
        "how": "pools are cut to fit --memory-budget-mb: each pooled session costs both servers' prepared material (keys and dealt values as received, masks and products expanded ahead, a sixteenth for the allocator), estimated from the plan; the parties' fixed memory and one session being dealt (its material at both servers until prepared, its heaviest step in flight) come first; peak_rss_bytes is this process's measured peak (Linux)",
    });
    let (a, b) = pools.split_at(first.len());
    Ok((a.to_vec(), b.to_vec(), memory))
}

/// This process's peak resident memory so far (Linux; `None` elsewhere).
fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs the benchmark and prints JSON.
pub fn run(a: BenchArgs) -> Result<(), String> {
    let out = measure(&a)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// Runs the benchmark; its JSON.
fn measure(a: &BenchArgs) -> Result<Value, String> {
    if a.batch.iter().chain(&a.concurrency).any(|v| *v == 0) {
        return Err("batch sizes and concurrency are ≥ 1".into());
    }
    let spec = match (a.link_delay_ms, a.link_mbps) {
        (None, None) => None,
        (d, m) => Some(LinkSpec::new(d.unwrap_or(0.0), m)?),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (out, keep) = rt.block_on(async move {
        let id = a
            .model
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_string();
        let shaping = spec.map(|_| Shaping::on());
        let links = spec.zip(shaping.clone());
        let private = !a.public_weights;
        // A prediction over slow links, or one waiting for the helper to deal a large batch,
        // may take far longer than the client's default 10 s.
        let opts = ClientOptions {
            timeout: Duration::from_secs(300),
            ..ClientOptions::default()
        };
        let party_timeout = if spec.is_some() { 300 } else { 30 };
        let (_, plan0, _) = crate::launch::model_entries(
            &a.model,
            &id,
            private,
            a.fewer_rounds,
            a.compact_comparisons,
        )?;
        // Pool: twice the material of the largest run at each batch size, dealt ahead and
        // complete before each run, so that the pool never falls below half (the refill
        // mark) and the helper stays idle during a run: the runs time the online phase.
        // A pool cut to fit --memory-budget-mb is refilled between waves of half its size.
        // `dealt_during_run` in each run says whether that held.
        let max_conc = *a.concurrency.iter().max().unwrap_or(&1);
        let wanted: Vec<(usize, usize)> = a
            .batch
            .iter()
            .map(|b| (*b, wanted_pool(*b, a.requests, max_conc)))
            .collect();
        let sustained_wanted: Vec<(usize, usize)> = if a.sustained {
            a.batch.iter().map(|b| (*b, (2 * max_conc).max(2))).collect()
        } else {
            Vec::new()
        };
        let launching = a.p0.is_none();
        let (pools, sustained_pools, memory) = if launching {
            let file_bytes = std::fs::metadata(&a.model).map_or(0, |m| m.len());
            plan_pools(
                &plan0,
                private,
                &wanted,
                &sustained_wanted,
                file_bytes,
                a.memory_budget_mb,
            )?
        } else {
            (Vec::new(), Vec::new(), Value::Null)
        };
        let pool: Vec<(usize, usize)> = pools.iter().map(|p| (p.batch, p.sessions)).collect();
        let options = |pool: Vec<(usize, usize)>| LaunchOptions {
            model: a.model.clone(),
            id: id.clone(),
            private,
            port: 0,
            pool,
            max_batch: *a.batch.iter().max().unwrap_or(&1),
            web: None,
            timeout: Duration::from_secs(party_timeout),
            fewer_rounds: a.fewer_rounds,
            compact_comparisons: a.compact_comparisons,
        };
        let started = Instant::now();
        let (launched, model, plan, p0, p1) = match (&a.p0, &a.p1) {
            (Some(p0), Some(p1)) => {
                let (model, plan, _) = crate::launch::model_entries(
                    &a.model,
                    &id,
                    true,
                    a.fewer_rounds,
                    a.compact_comparisons,
                )?;
                (None, model, plan, p0.clone(), p1.clone())
            }
            _ => {
                let l = launch_linked(&options(pool.clone()), links.clone()).await?;
                let (model, plan) = (l.model.clone(), l.plan.clone());
                let (p0, p1) = (l.p0_url.clone(), l.p1_url.clone());
                (Some(l), model, plan, p0, p1)
            }
        };
        let startup_ms = started.elapsed().as_secs_f64() * 1e3;
        let cost = plan
            .step_costs(private)
            .iter()
            .fold(0u32, |r, c| r + c.rounds);
        // First prediction right after the parties are up (the pool may still be filling;
        // behind a pool of large batches the helper may not deal it in time: reported, not
        // fatal).
        let first = async {
            let c = Client::connect(&p0, &p1, opts.clone())
                .await
                .map_err(|e| e.to_string())?;
            let x = inputs(&plan, 1);
            let t = Instant::now();
            let r = c.predict(&x, 1).await.map_err(|e| e.to_string());
            let ms = t.elapsed().as_secs_f64() * 1e3;
            c.close().await;
            r.map(|_| ms)
        }
        .await;
        let sustained_pool: Vec<(usize, usize)> = sustained_pools
            .iter()
            .map(|p| (p.batch, p.sessions))
            .collect();
        let sustained_n = |b: usize| {
            let buffer = sustained_pool.iter().find(|p| p.0 == b).map_or(2, |p| p.1);
            requests_for(b, a.requests).max(4 * buffer)
        };
        let total: u64 = a
            .batch
            .iter()
            .map(|b| {
                let s = if a.sustained { sustained_n(*b) } else { 0 };
                ((requests_for(*b, a.requests) + s) * a.concurrency.len()) as u64
            })
            .sum();
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} requests, {eta} left")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        // The servers' link on its own, before the runs (not over simulated links: their
        // delay is known).
        let link_rtt = match (&launched, spec) {
            (Some(l), None) => {
                wait_pool_full(l, pool.iter().map(|p| p.1).sum()).await;
                Some(party_link_round_trip(l, LINK_PROBE_COUNT, LINK_PROBE_BYTES).await?)
            }
            _ => None,
        };
        let rtt_ms = spec.map_or(0.0, |s| 2.0 * s.delay.as_secs_f64() * 1e3);
        let mut second: Option<Launched> = None;
        let mut cx = Ctx {
            launched: launched.as_ref(),
            p0: &p0,
            p1: &p1,
            plan: &plan,
            cost,
            opts: opts.clone(),
            shaping: shaping.as_ref(),
            rtt_ms,
            bar: &bar,
        };
        let mut runs = Vec::new();
        let mut plains = Vec::new();
        let pool_json = |pools: &[Pool], batch: usize| {
            pools
                .iter()
                .find(|p| p.batch == batch)
                .map_or(Value::Null, |p| p.json(a.memory_budget_mb))
        };
        let settled = pool.iter().map(|p| p.1).sum::<usize>();
        for &batch in &a.batch {
            let x = inputs(&plan, batch);
            let plain = plain_ms(&model, &x, batch);
            plains.push(plain);
            let size = pool.iter().find(|p| p.0 == batch).map_or(1, |p| p.1);
            for &conc in &a.concurrency {
                let n = requests_for(batch, a.requests);
                let mode = Mode::PoolServed {
                    settled,
                    wave: (size / 2).max(1),
                };
                let mut run = one_run(&cx, batch, conc, n, plain, mode).await?;
                run["pool"] = pool_json(&pools, batch);
                runs.push(run);
            }
        }
        let mut sustained_startup = None;
        if a.sustained {
            // Parties of their own, with a pool of twice the clients that is not filled
            // before the runs: the helper deals while predictions run, and the rate counts
            // it. (The first parties stay up, idle, until the bench ends.)
            let t = Instant::now();
            second = Some(launch_linked(&options(sustained_pool.clone()), links.clone()).await?);
            sustained_startup = Some(t.elapsed().as_secs_f64() * 1e3);
            let l = second.as_ref().ok_or("the second launch")?;
            cx.launched = Some(l);
            cx.p0 = &l.p0_url;
            cx.p1 = &l.p1_url;
            let settled = sustained_pool.iter().map(|p| p.1).sum::<usize>();
            for (&batch, &plain) in a.batch.iter().zip(&plains) {
                for &conc in &a.concurrency {
                    let mode = Mode::Sustained { settled };
                    let mut run =
                        one_run(&cx, batch, conc, sustained_n(batch), plain, mode).await?;
                    run["pool"] = pool_json(&sustained_pools, batch);
                    runs.push(run);
                }
            }
        }
        bar.finish_and_clear();
        let link_json = match spec {
            None => json!({ "simulated": false }),
            Some(s) => json!({
                "simulated": true,
                "one_way_delay_ms": s.delay.as_secs_f64() * 1e3,
                "rtt_ms": rtt_ms,
                "mbps_per_direction": s.bits_per_s.map(|b| b / 1e6),
                "links": ["client-P0", "client-P1", "P0-P1", "helper-P0", "helper-P1"],
                "proxies": launched.as_ref().map_or(0, |l| l.proxies.len()),
                "how": "a TCP proxy per link in the bench process; each direction of each connection (each client has its own) delayed and capped; a proxy holds at most the bandwidth-delay product plus 64 KiB per direction",
                "pool_fill": "pool_served runs: the pool is filled before each run with the links unshaped (untimed); sustained runs: the pools (twice the clients) filled before each run with the links unshaped (untimed), every link shaped during the run",
            }),
        };
        let mut out = json!({
            "model": a.model.display().to_string(),
            "private_weights": private,
            "fewer_rounds": a.fewer_rounds,
            "compact_comparisons": a.compact_comparisons,
            "parties": if launched.is_some() { "three tasks in this process, loopback WebSockets" } else { "running parties" },
            "links": link_json,
            "ring_product_build": sotto_core::linear::simd_kernel().unwrap_or("portable"),
            "comparison_key_build": sotto_core::dcf_bit::eval_build(),
            "party_link_round_trip": link_rtt,
            "modes": if a.sustained { json!(["pool_served", "sustained"]) } else { json!(["pool_served"]) },
            "startup_ms": startup_ms,
            "first_prediction_ms": first.as_ref().ok(),
            "first_prediction_error": first.as_ref().err(),
            "pool": pools.iter().map(|p| p.json(a.memory_budget_mb)).collect::<Vec<_>>(),
            "memory": memory,
            "runs": runs,
            "notes": "latencies are per request at the client (input out to output reconstructed); mode pool_served: helper material is dealt ahead into a pool that is full before each run (and each wave, when the pool holds fewer sessions than the run), so the online phase is timed; mode sustained: a pool of twice the clients per batch size, filled before each run, and at least four times as many requests, so the helper deals while predictions run and predictions_per_s counts dealing; predictions_per_s_second_half is the rate over the second half of a run's requests (the steady rate, without the start-up); dealt_during_run counts sessions the helper dealt while the run was going; online_rounds are rounds between P0 and P1 (the client adds one round trip); rounds_x_rtt_ms is online_rounds times the simulated round trip; latency_floor_ms is (online_rounds + 2) one-way delays (a round is P0 and P1 sending to each other at once, one one-way delay; plus the client's input out and output back), the least a request can take on the simulated links; online bytes count every message of the request on every link, frame headers included; *_per_prediction divides a request's bytes by its batch; bytes_by_link are per request; ring_product_build is the build of the ring matrix product this process runs (avx512 where the processor has it, else portable; SOTTO_SIMD=0 forces portable; same results); comparison_key_build is the build of the one-bit key evaluation (avx512+vaes, avx512 or portable, the same way)",
        });
        if let Some(m) = out.get_mut("memory").filter(|m| m.is_object()) {
            let peak = peak_rss_bytes();
            m["peak_rss_bytes"] = json!(peak);
            let budget = a.memory_budget_mb.saturating_mul(1 << 20);
            if let Some(p) = peak.filter(|p| *p > budget) {
                eprintln!(
                    "sotto bench: this process peaked at {} MiB, over --memory-budget-mb {} (the pools were sized by an estimate; see \"memory\" in the JSON)",
                    p >> 20,
                    a.memory_budget_mb
                );
            }
        }
        if a.sustained {
            out["sustained_pool"] = json!(sustained_pools
                .iter()
                .map(|p| p.json(a.memory_budget_mb))
                .collect::<Vec<_>>());
            out["sustained_startup_ms"] = json!(sustained_startup);
        }
        // The parties and proxies stay up until the runtime is gone (a party whose proxy
        // closed first would log the lost link).
        Ok::<_, String>((out, (launched, second)))
    })?;
    drop(rt);
    drop(keep);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steady_rate_leaves_out_the_start() {
        // Four slow requests (one per second), then four fast ones (ten per second).
        let mut t = vec![1.0, 2.0, 3.0, 4.0, 4.1, 4.2, 4.3, 4.4];
        let r = second_half_rate(&mut t, 2).expect("a rate");
        assert!((r - 8.0 / 0.4).abs() < 1e-9, "{r}");
        // Unordered completions (clients finish out of order) give the same.
        let mut u = vec![4.4, 1.0, 4.2, 3.0, 4.1, 2.0, 4.3, 4.0];
        assert_eq!(second_half_rate(&mut u, 2), Some(r));
        assert_eq!(second_half_rate(&mut [1.0, 2.0, 3.0], 1), None);
        assert_eq!(second_half_rate(&mut [1.0, 1.0, 1.0, 1.0], 1), None);
    }

    #[test]
    fn pools_fit_the_room_small_wants_whole_the_rest_shared_and_one_session_each_or_refused() {
        let mib = 1u64 << 20;
        // Everything fits: every pool whole.
        let p = fit_pools(&[(1, 400, mib), (100, 20, 100 * mib)], 10_000 * mib).expect("fits");
        assert_eq!(p.iter().map(|p| p.sessions).collect::<Vec<_>>(), [400, 20]);
        // Tight: the small pool whole, the large one gets what is left.
        let room = 1_000 * mib;
        let p = fit_pools(&[(1, 400, mib), (100, 20, 100 * mib)], room).expect("fits");
        assert_eq!((p[0].sessions, p[1].sessions), (400, 6));
        let held: u64 = p.iter().map(|p| p.sessions as u64 * p.session_bytes).sum();
        assert!(held <= room);
        // Two large pools share the room evenly.
        let p = fit_pools(&[(1, 400, 250 * mib), (2, 400, 500 * mib)], 3_000 * mib).expect("fits");
        assert_eq!((p[0].sessions, p[1].sessions), (6, 3));
        // Not one session of the second: refused, naming it.
        assert_eq!(
            fit_pools(&[(1, 4, mib), (100, 4, 100 * mib)], 50 * mib),
            Err(1)
        );
        assert_eq!(fit_pools(&[(1, 4, mib)], 0), Err(0));
    }

    #[test]
    fn a_budget_too_small_is_refused_before_launching_and_names_a_budget_that_fits() {
        let bytes = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../models/network_a.onnx"
        ))
        .expect("bundled network A");
        let m = sotto_model::import(&bytes).expect("imports");
        let plan = Plan::new(&m, sotto_core::fixed::FixedPoint::default(), 1.0).expect("plans");
        let first = [(1, 400), (100, 20)];
        let e = plan_pools(&plan, true, &first, &[], bytes.len() as u64, 64)
            .expect_err("64 MiB is too small");
        assert!(e.contains("--memory-budget-mb 64 is too small"), "{e}");
        let need: u64 = e
            .split("give at least --memory-budget-mb ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|v| v.parse().ok())
            .expect("a budget named");
        let (pools, _, memory) =
            plan_pools(&plan, true, &first, &[], bytes.len() as u64, need).expect("fits");
        assert!(pools.iter().all(|p| p.sessions >= 1));
        let est = memory["peak_bytes_estimated"].as_u64().expect("estimate");
        assert!(est <= need << 20, "{est} over {need} MiB");
        // A pooled session weighs more than its material: both servers, expanded.
        let wire = plan.material_per_input(true) * 100;
        assert!(pools[1].session_bytes > 2 * wire);
        // With the default budget network A keeps its batch-1 pool whole.
        let (pools, _, _) = plan_pools(
            &plan,
            true,
            &first,
            &[(1, 16), (100, 16)],
            bytes.len() as u64,
            DEFAULT_MEMORY_BUDGET_MB,
        )
        .expect("fits");
        assert_eq!(pools[0].sessions, 400);
    }

    #[test]
    fn a_refusal_names_compact_comparisons_where_they_make_the_pools_fit() {
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/cnn.onnx"))
            .expect("bundled cnn");
        let m = sotto_model::import(&bytes).expect("imports");
        let plan = Plan::new(&m, sotto_core::fixed::FixedPoint::default(), 1.0).expect("plans");
        let first = [(1, 40), (100, 4)];
        let len = bytes.len() as u64;
        let budget = DEFAULT_MEMORY_BUDGET_MB;
        let e = plan_pools(&plan, true, &first, &[], len, budget).expect_err("too small");
        assert!(e.contains("--compact-comparisons"), "{e}");
        let compact = plan.clone().with_compact_comparisons(true);
        plan_pools(&compact, true, &first, &[], len, budget).expect("fits with one-bit keys");
        // Where the setting would not help, no hint.
        let e = plan_pools(&plan, true, &first, &[], len, 64).expect_err("too small");
        assert!(!e.contains("--compact-comparisons"), "{e}");
    }
}

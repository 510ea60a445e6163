//! Three parties in one process (separate tasks, real loopback WebSockets): what `sotto demo`
//! and `sotto bench` start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sotto_core::fixed::FixedPoint;
use sotto_core::transport::PartyId;
use sotto_model::files::{make_set, read_file, Role as FileRole};
use sotto_model::{import, Model, Plan};
use sotto_net::auth::PartyKeys;
use sotto_wire::Role;

use crate::netsim::{LinkSpec, Proxy, Shaping};
use crate::serve::{self, ModelEntry, ServeConfig, State};

/// What to start.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    /// The ONNX model.
    pub model: PathBuf,
    /// Model id for clients.
    pub id: String,
    /// Private weights (shared between P0 and P1) or public.
    pub private: bool,
    /// First of three consecutive ports (P0, P1, helper); 0 picks free ports.
    pub port: u16,
    /// Pool sizes.
    pub pool: Vec<(usize, usize)>,
    /// Largest batch.
    pub max_batch: usize,
    /// Static files P0 serves at `/`.
    pub web: Option<PathBuf>,
    /// Party timeout.
    pub timeout: Duration,
    /// The opt-in "fewer rounds" plan setting (`sotto bench --fewer-rounds`; private weights
    /// only): one set of files carries it to all three parties.
    pub fewer_rounds: bool,
    /// The opt-in "compact comparisons" plan setting (`sotto bench --compact-comparisons`).
    pub compact_comparisons: bool,
}

/// Three running parties.
#[derive(Debug)]
pub struct Launched {
    /// P0's base URL.
    pub p0_url: String,
    /// P1's base URL.
    pub p1_url: String,
    /// P0's HTTP address (the web page, if any).
    pub p0_addr: SocketAddr,
    /// The parties' states (for byte counters), P0, P1, helper.
    pub states: [Arc<State>; 3],
    /// The imported model (for plaintext comparisons).
    pub model: Model,
    /// Its plan.
    pub plan: Plan,
    /// The simulated links' proxies (`sotto bench --link-delay-ms`), kept running while the
    /// parties are; empty on plain loopback.
    pub proxies: Vec<crate::netsim::Proxy>,
}

/// Bytes one server holds for a dealt session of `batch` inputs of `plan` once it is prepared
/// and pooled (`sotto bench` sizes its pools by this, not by the material's wire size): the
/// helper's material as received and parsed (the comparison keys, and P1's dealt values,
/// which P0 expands from its seed instead), plus what the server expands or computes ahead
/// for each step with material (masks, shares of dealt words, a product's `A_i` and
/// `A_i·F + C_i`: at most 8 bytes times the step's input and twice its output elements),
/// and a sixteenth more for what the allocator keeps of the freed messages. Measured (RSS
/// growth per pooled session, halved): 126.6 MB per server for the CIFAR-10 CNN at batch 1
/// (115.4 MB of material to P1, 108.5 MB to P0; this estimate 128 MB), 63 MB for network A
/// at batch 100 (59.1 MB to P1; this estimate 66 MB).
pub fn prepared_bytes(plan: &Plan, private: bool, batch: usize) -> u64 {
    let costs = plan.step_costs(private);
    let material: u64 = costs.iter().map(|c| c.helper_bytes).sum::<u64>().max(1);
    let expanded: u64 = costs
        .iter()
        .zip(&plan.steps)
        .enumerate()
        .filter(|(_, (c, _))| c.helper_bytes > 0)
        .map(|(i, (_, s))| 8 * (plan.step_input_len(i) as u64 + 2 * s.per_example as u64))
        .sum();
    let per_input = material.saturating_add(expanded);
    let held = per_input.saturating_mul(batch as u64);
    held.saturating_add(held / 16)
}

/// Bytes the three parties of [`launch`] take before any session is dealt: the runtime, the
/// parsed model and its three party files, P0's and P1's weight shares and masks, the
/// helper's masks, the plaintext model: 128 MiB plus 16 times the ONNX file (measured at
/// launch: 152 MB with the 2.4 MB CIFAR-10 CNN, 64–121 MB with network A).
pub fn fixed_bytes(model_file_bytes: u64) -> u64 {
    (128u64 << 20).saturating_add(model_file_bytes.saturating_mul(16))
}

/// Bytes the dealing of one session of `batch` inputs takes beyond the pooled sessions:
/// its material as received at both servers until they have prepared it (the helper
/// announces a session when all of it is dealt), and its heaviest step in flight, held at
/// once by the helper while it builds it, by the links, and by the servers while they parse
/// it (six times that step's material per server). Measured (peak RSS less the pooled
/// sessions and the launch): 320–420 MB for the CIFAR-10 CNN at batch 1 (this estimate
/// 388 MB), about 350 MB for network A at batch 100 (345 MB).
pub fn dealing_bytes(plan: &Plan, private: bool, batch: usize) -> u64 {
    let b = batch as u64;
    let whole = plan.material_per_input(private).saturating_mul(b);
    let step = plan.largest_step_material(private).saturating_mul(b);
    whole
        .saturating_mul(2)
        .saturating_add(step.saturating_mul(6))
}

/// Imports `path`, makes the three files of a set in memory (with the "fewer rounds" and
/// "compact comparisons" plan settings when asked), and reads each party's.
pub fn model_entries(
    path: &Path,
    id: &str,
    private: bool,
    fewer_rounds: bool,
    compact_comparisons: bool,
) -> Result<(Model, Plan, [ModelEntry; 3]), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let model = import(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let plan = Plan::new(&model, FixedPoint::default(), 1.0)
        .map_err(|e| e.to_string())?
        .with_fewer_rounds(fewer_rounds)
        .with_compact_comparisons(compact_comparisons)
        .for_weights(private);
    let files = make_set(&plan, &bytes, private).map_err(|e| e.to_string())?;
    let mut entries = Vec::new();
    for (role, data) in [FileRole::P0, FileRole::P1, FileRole::Helper]
        .into_iter()
        .zip(&files)
    {
        let file = read_file(data, role).map_err(|e| e.to_string())?;
        entries.push(ModelEntry {
            id: id.to_string(),
            file,
        });
    }
    let [a, b, c]: [ModelEntry; 3] = entries.try_into().map_err(|_| "three files".to_string())?;
    Ok((model, plan, [a, b, c]))
}

/// Starts P0, P1 and the helper on 127.0.0.1 and waits until P0 and P1 are ready.
pub async fn launch(o: &LaunchOptions) -> Result<Launched, String> {
    launch_linked(o, None).await
}

/// [`launch`], with every link simulated when `links` is given (`sotto bench` only): each
/// dialer reaches its peer through a proxy of its own (P0 → P1, P0 → helper, P1 → helper,
/// and the clients' P0 and P1 URLs), each direction delayed and capped by the spec.
pub async fn launch_linked(
    o: &LaunchOptions,
    links: Option<(LinkSpec, Shaping)>,
) -> Result<Launched, String> {
    let (model, plan, [e0, e1, eh]) = model_entries(
        &o.model,
        &o.id,
        o.private,
        o.fewer_rounds,
        o.compact_comparisons,
    )?;
    // The default in-flight budget, or enough for two requests of the largest batch asked
    // for (`sotto bench --batch 100` must not be refused as too large), dealt whole: with
    // exactly twice a request's material the admission's KiB rounding left a request a few
    // bytes over half the budget, so it was streamed and never pooled, and a pool-served
    // bench waited five minutes for a pool that could not fill (the CIFAR-10 CNN at batch 1).
    let inflight_budget = (crate::cmd::DEFAULT_BUDGET_MB << 20).max(
        plan.material_per_input(o.private)
            .saturating_mul(o.max_batch as u64)
            .saturating_mul(2)
            .saturating_add(1 << 20),
    );
    let keys = PartyKeys::generate().map_err(|e| e.to_string())?;
    let port = |i: u16| if o.port == 0 { 0 } else { o.port + i };
    let addr = |i: u16| SocketAddr::from(([127, 0, 0, 1], port(i)));
    let b0 = serve::bind(addr(0), &None, None, crate::cmd::DEFAULT_MAX_CONNECTIONS).await?;
    let b1 = serve::bind(addr(1), &None, None, crate::cmd::DEFAULT_MAX_CONNECTIONS).await?;
    let bh = serve::bind(addr(2), &None, None, crate::cmd::DEFAULT_MAX_CONNECTIONS).await?;
    let a0 = b0.local_addr().map_err(|e| e.to_string())?;
    let a1 = b1.local_addr().map_err(|e| e.to_string())?;
    let ah = bh.local_addr().map_err(|e| e.to_string())?;
    let cfg = |role, models, p1: Option<String>, helper: Option<String>, web| ServeConfig {
        role,
        p1,
        public_p1: None,
        helper,
        models: vec![models],
        tls: None,
        ca: None,
        keys: keys[match role {
            Role::P0 => 0,
            Role::P1 => 1,
            _ => 2,
        }]
        .clone(),
        pool: o.pool.clone(),
        max_batch: o.max_batch,
        timeout: o.timeout,
        inflight_budget,
        idle_timeout: Duration::from_secs(60),
        max_connections: crate::cmd::DEFAULT_MAX_CONNECTIONS,
        web,
        allowed_origins: Vec::new(),
        client_keys: None,
        admin: None,
        verbose: false,
    };
    // Where each dialer finds its peer: the party itself, or a proxy per link.
    let mut proxies = Vec::new();
    let p0_to_p1 = via(a1, &links, &mut proxies).await?;
    let p0_to_helper = via(ah, &links, &mut proxies).await?;
    let p1_to_helper = via(ah, &links, &mut proxies).await?;
    let p0_url = via(a0, &links, &mut proxies).await?;
    let p1_url = via(a1, &links, &mut proxies).await?;
    let sh = serve::prepare(cfg(Role::Helper, eh, None, None, None))?;
    let s1 = serve::prepare(cfg(Role::P1, e1, None, Some(p1_to_helper), None))?;
    let s0 = serve::prepare(cfg(
        Role::P0,
        e0,
        Some(p0_to_p1),
        Some(p0_to_helper),
        o.web.clone(),
    ))?;
    for (s, b) in [(sh.clone(), bh), (s1.clone(), b1), (s0.clone(), b0)] {
        tokio::spawn(async move {
            if let Err(e) = serve::run_state(s.clone(), b).await {
                eprintln!("[{:?}] stopped: {e}", s.me);
            }
        });
    }
    let t = Instant::now();
    while !(s0.ready() && s1.ready()) {
        if t.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "the parties did not get ready: P0: {}; P1: {}",
                s0.status(),
                s1.status()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(Launched {
        p0_url,
        p1_url,
        p0_addr: a0,
        states: [s0, s1, sh],
        model,
        plan,
        proxies,
    })
}

/// The URL that reaches `target`: itself, or a new proxy to it with `links`.
async fn via(
    target: SocketAddr,
    links: &Option<(LinkSpec, Shaping)>,
    proxies: &mut Vec<Proxy>,
) -> Result<String, String> {
    match links {
        None => Ok(format!("ws://{target}")),
        Some((spec, shaping)) => {
            let p = Proxy::start(target, *spec, shaping.clone()).await?;
            let url = format!("ws://{}", p.addr());
            proxies.push(p);
            Ok(url)
        }
    }
}

/// Bytes each party has sent to each other party (`[from][to]`, PartyId order).
pub fn link_bytes(l: &Launched) -> [[u64; 4]; 4] {
    let mut out = [[0u64; 4]; 4];
    for s in &l.states {
        for to in [PartyId::P0, PartyId::P1, PartyId::Helper] {
            if to != s.me {
                out[s.me.index()][to.index()] = s.mesh.bytes(to).0;
            }
        }
    }
    out
}

/// Waits (up to 5 min) until P0's pool holds at least `target` dealt sessions and no deal
/// is outstanding, so that the helper's link bytes and P0's dealt counter agree.
pub async fn wait_pool_full(l: &Launched, target: usize) {
    let t = Instant::now();
    crate::serve::top_up(&l.states[0]);
    while (crate::serve::pool_size(&l.states[0]) < target
        || crate::serve::dealing(&l.states[0]) > 0)
        && t.elapsed() < Duration::from_secs(300)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

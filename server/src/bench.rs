//! `sotto bench`: private predictions end to end (client, P0, P1, helper over loopback
//! WebSockets, or parties already running), printed as JSON.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use sotto_client::{Client, ClientOptions};
use sotto_core::transport::PartyId;
use sotto_model::{Model, Plan};

use crate::launch::{launch, link_bytes, wait_pool_full, LaunchOptions};

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
    /// 10).
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
}

fn requests_for(batch: usize, base: usize) -> usize {
    (base / batch.max(1)).clamp(10, base.max(10))
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
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

/// Runs the benchmark and prints JSON.
pub fn run(a: BenchArgs) -> Result<(), String> {
    if a.batch.iter().chain(&a.concurrency).any(|v| *v == 0) {
        return Err("batch sizes and concurrency are ≥ 1".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let id = a
            .model
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_string();
        // Pool: twice the material of the largest run at each batch size, dealt ahead and
        // complete before each run, so that the pool never falls below half (the refill
        // mark) and the helper stays idle during a run: the runs time the online phase.
        // `dealt_during_run` in each run says whether that held.
        let max_conc = *a.concurrency.iter().max().unwrap_or(&1);
        let pool: Vec<(usize, usize)> = a
            .batch
            .iter()
            .map(|b| (*b, (2 * requests_for(*b, a.requests)).max(max_conc).min(if *b >= 32 { 24 } else { 1024 })))
            .collect();
        let started = Instant::now();
        let (launched, model, plan, p0, p1) = match (&a.p0, &a.p1) {
            (Some(p0), Some(p1)) => {
                let (model, plan, _) = crate::launch::model_entries(&a.model, &id, true)?;
                (None, model, plan, p0.clone(), p1.clone())
            }
            _ => {
                let l = launch(&LaunchOptions {
                    model: a.model.clone(),
                    id: id.clone(),
                    private: !a.public_weights,
                    port: 0,
                    pool: pool.clone(),
                    max_batch: *a.batch.iter().max().unwrap_or(&1),
                    web: None,
                    timeout: Duration::from_secs(30),
                })
                .await?;
                let (model, plan) = (l.model.clone(), l.plan.clone());
                let (p0, p1) = (l.p0_url.clone(), l.p1_url.clone());
                (Some(l), model, plan, p0, p1)
            }
        };
        let startup_ms = started.elapsed().as_secs_f64() * 1e3;
        let cost = plan.steps.iter().enumerate().fold(0u32, |r, (i, s)| {
            r + s.cost(plan.step_input_len(i), !a.public_weights).rounds
        });
        // First prediction right after the parties are up (the pool may still be filling).
        let first = {
            let c = Client::connect(&p0, &p1, ClientOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            let x = inputs(&plan, 1);
            let t = Instant::now();
            c.predict(&x, 1).await.map_err(|e| e.to_string())?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            c.close().await;
            ms
        };
        let total_runs = a.batch.len() * a.concurrency.len();
        let total: u64 = a
            .batch
            .iter()
            .map(|b| (requests_for(*b, a.requests) * a.concurrency.len()) as u64)
            .sum();
        let bar = ProgressBar::new(total).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} requests, {eta} left")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut runs = Vec::new();
        for &batch in &a.batch {
            let x = inputs(&plan, batch);
            let plain = plain_ms(&model, &x, batch);
            for &conc in &a.concurrency {
                bar.set_message(format!("batch {batch}, {conc} clients"));
                let n = requests_for(batch, a.requests);
                let settled = pool.iter().map(|p| p.1).sum::<usize>();
                if let Some(l) = &launched {
                    wait_pool_full(l, settled).await;
                }
                let mut clients = Vec::new();
                for _ in 0..conc {
                    clients.push(Arc::new(
                        Client::connect(&p0, &p1, ClientOptions::default())
                            .await
                            .map_err(|e| e.to_string())?,
                    ));
                }
                let before_links = launched.as_ref().map(link_bytes);
                let before_dealt = launched.as_ref().map_or(0, |l| l.states[0].dealt.load(Ordering::Relaxed));
                let before_out: Vec<u64> = launched
                    .as_ref()
                    .map(|l| l.states.iter().map(|s| s.client_sent.load(Ordering::Relaxed)).collect())
                    .unwrap_or_default();
                let before_client: Vec<(u64, u64)> = clients.iter().map(|c| c.bytes_sent()).collect();
                let t = Instant::now();
                let mut tasks = Vec::new();
                for (k, c) in clients.iter().enumerate() {
                    let (c, x, bar) = (c.clone(), x.clone(), bar.clone());
                    let mine = n / conc + usize::from(k < n % conc);
                    tasks.push(tokio::spawn(async move {
                        let mut lat = Vec::new();
                        for _ in 0..mine {
                            let t = Instant::now();
                            c.predict(&x, batch).await.map_err(|e| e.to_string())?;
                            lat.push(t.elapsed().as_secs_f64() * 1e3);
                            bar.inc(1);
                        }
                        Ok::<_, String>(lat)
                    }));
                }
                let mut lat = Vec::new();
                for tk in tasks {
                    lat.extend(tk.await.map_err(|e| e.to_string())??);
                }
                let wall = t.elapsed().as_secs_f64();
                lat.sort_by(f64::total_cmp);
                let nreq = lat.len() as u64;
                let client_bytes: u64 = clients
                    .iter()
                    .zip(&before_client)
                    .map(|(c, b)| {
                        let (x, y) = c.bytes_sent();
                        (x - b.0) + (y - b.1)
                    })
                    .sum();
                let (c0, c1) = clients
                    .iter()
                    .zip(&before_client)
                    .fold((0, 0), |(s0, s1), (c, b)| {
                        let (x, y) = c.bytes_sent();
                        (s0 + x - b.0, s1 + y - b.1)
                    });
                for c in clients {
                    if let Ok(c) = Arc::try_unwrap(c) {
                        c.close().await;
                    }
                }
                let mut run = json!({
                    "batch": batch,
                    "concurrency": conc,
                    "requests": nreq,
                    "predictions": nreq * batch as u64,
                    "median_ms": pct(&lat, 0.5),
                    "p95_ms": pct(&lat, 0.95),
                    "predictions_per_s": (nreq * batch as u64) as f64 / wall,
                    "online_rounds": cost,
                    "plain_ms": plain,
                    "ratio_private_to_plain": pct(&lat, 0.5) / plain,
                });
                match (&launched, before_links) {
                    (Some(l), Some(bl)) => {
                        // The helper refills what this run used; wait for it so its bytes are
                        // the material of exactly these requests.
                        let dealt_during_run = l.states[0].dealt.load(Ordering::Relaxed) - before_dealt;
                        run["dealt_during_run"] = json!(dealt_during_run);
                        wait_pool_full(l, settled).await;
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
                        let online = client_bytes + d(PartyId::P0, PartyId::P1) + d(PartyId::P1, PartyId::P0) + out[0] + out[1];
                        let offline = d(PartyId::Helper, PartyId::P0) + d(PartyId::Helper, PartyId::P1);
                        run["online_bytes_per_prediction"] = json!(per(online) / batch as f64);
                        run["online_bytes_per_request"] = json!(per(online));
                        // The helper refilled `dealt` sessions (not always exactly the ones
                        // used: the pool refills below half); each serves one request.
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
                runs.push(run);
            }
        }
        bar.finish_and_clear();
        let out = json!({
            "model": a.model.display().to_string(),
            "private_weights": !a.public_weights,
            "parties": if launched.is_some() { "three tasks in this process, loopback WebSockets" } else { "running parties" },
            "startup_ms": startup_ms,
            "first_prediction_ms": first,
            "pool": pool.iter().map(|(b, c)| json!({"batch": b, "sessions": c})).collect::<Vec<_>>(),
            "runs": runs,
            "notes": "latencies are per request at the client (input out to output reconstructed); helper material is dealt ahead into a pool that is full before each run (offline_bytes_per_prediction; dealt_during_run counts sessions the helper dealt while the run was going); online bytes count every message of the request on every link, frame headers included; *_per_prediction divides a request's bytes by its batch; bytes_by_link are per request",
        });
        let _ = total_runs;
        println!("{}", serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?);
        Ok(())
    })
}

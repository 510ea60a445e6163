//! Benchmarks of the ring kernels and of every protocol at the shapes of network A
//! (784→128→128→10) over the in-memory transport. Protocol benchmarks time the servers' online
//! phase (the helper deals first) and print bytes sent per party and online rounds.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use sotto_core::linear::{Bilinear, PoolShape};
use sotto_core::local::{no_client, run_local, LocalRun, LocalTransport};
use sotto_core::prg::Prg;
use sotto_core::protocols as p;
use sotto_core::session::{Dealer, Server};
use sotto_core::transport::PartyId;
use sotto_core::{ring, share};

type T = LocalTransport;

fn report<R>(name: &str, run: &LocalRun<R, ()>, offline_time: Duration) {
    let s = &run.sent;
    println!(
        "{name}: online {:.3} ms (helper dealing took {:.3} ms); online bytes P0→P1 {} P1→P0 {}; \
         rounds {}; helper material to P0 {} B, to P1 {} B",
        run.server_time.as_secs_f64() * 1e3,
        offline_time.as_secs_f64() * 1e3,
        s[0].bytes_to(PartyId::P1),
        s[1].bytes_to(PartyId::P0),
        s[0].messages_to(PartyId::P1),
        s[2].bytes_to(PartyId::P0),
        s[2].bytes_to(PartyId::P1),
    );
}

/// Runs a session with the helper first; returns the run and the whole wall time.
fn session<HF, SF, R>(
    helper: impl FnOnce(Dealer<T>) -> HF + Send,
    server: impl Fn(Server<T>) -> SF + Send + Sync,
) -> (LocalRun<R, ()>, Duration)
where
    HF: std::future::Future<Output = sotto_core::Result<()>>,
    SF: std::future::Future<Output = sotto_core::Result<R>>,
    R: Send,
{
    let t = Instant::now();
    let run = run_local(helper, server, no_client, true).expect("session runs");
    let total = t.elapsed();
    let offline = total.saturating_sub(run.server_time);
    (run, offline)
}

fn bench_matmul(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring_matmul");
    let mut prg = Prg::from_os().expect("os rng");
    for &(m, k, n) in &[
        (1usize, 784usize, 128usize),
        (100, 784, 128),
        (100, 128, 128),
    ] {
        let a = prg.vec_u64(m * k);
        let b = prg.vec_u64(k * n);
        g.bench_with_input(
            BenchmarkId::from_parameter(format!("{m}x{k}x{n}")),
            &(),
            |bch, _| bch.iter(|| ring::matmul(&a, &b, m, k, n).expect("fits")),
        );
    }
    g.finish();
}

/// Private dense 784→128 followed by ReLU (with the fused truncation), private weights.
fn bench_dense_relu(c: &mut Criterion) {
    let mut g = c.benchmark_group("private_dense784x128_relu");
    g.sample_size(10);
    let mut prg = Prg::from_os().expect("os rng");
    let w = share::share(&prg.vec_u64(784 * 128), &mut prg);
    for batch in [1usize, 100] {
        let x = share::share(
            &prg.vec_u64(batch * 784)
                .iter()
                .map(|v| v >> 48)
                .collect::<Vec<_>>(),
            &mut prg,
        );
        let op = Bilinear::MatMul {
            m: batch,
            k: 784,
            n: 128,
        };
        // Model load happens once; the benchmark times the queries.
        let run_once = || {
            session(
                |mut d: Dealer<T>| async move {
                    let mask = p::deal_weight_mask(&mut d, op.w_len()).await?;
                    p::deal_bilinear_private(&mut d, &op, &mask).await?;
                    p::deal_relu(&mut d, op.out_len(), 16, p::FULL_BITS).await
                },
                |mut s: Server<T>| {
                    let (x, w) = (&x, &w);
                    async move {
                        let me = s.id() == PartyId::P0;
                        let pw =
                            p::load_private_weight(&mut s, if me { &w.0 } else { &w.1 }).await?;
                        let t = Instant::now();
                        let prep = p::prepare_bilinear_private(&mut s, &op, &pw).await?;
                        let prep_relu =
                            p::prepare_relu(&mut s, op.out_len(), 16, p::FULL_BITS).await?;
                        let prepared = t.elapsed();
                        let xi = if me { &x.0 } else { &x.1 };
                        let z = p::finish_bilinear_private(&mut s, prep, xi, &pw).await?;
                        p::finish_relu(&mut s, prep_relu, &z).await?;
                        Ok((prepared, t.elapsed() - prepared))
                    }
                },
            )
        };
        let (run, off) = run_once();
        report(
            &format!("private dense 784x128 + ReLU, batch {batch} (incl. model load)"),
            &run,
            off,
        );
        println!(
            "  query: online {:.3} ms after {:.3} ms of input-independent preparation (A_i·F, key parsing)",
            run.p0.1.as_secs_f64() * 1e3,
            run.p0.0.as_secs_f64() * 1e3
        );
        g.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run_once().0.p0.1).sum())
        });
    }
    g.finish();
}

fn bench_gate<HF, SF>(
    c: &mut Criterion,
    group: &str,
    label: String,
    helper: impl Fn(Dealer<T>) -> HF + Send + Sync + Copy,
    server: impl Fn(Server<T>) -> SF + Send + Sync + Copy,
) where
    HF: std::future::Future<Output = sotto_core::Result<()>>,
    SF: std::future::Future<Output = sotto_core::Result<Vec<u64>>>,
{
    let (run, off) = session(helper, server);
    report(&format!("{group} {label}"), &run, off);
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function(BenchmarkId::from_parameter(label), |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| session(helper, server).0.server_time)
                .sum()
        })
    });
    g.finish();
}

fn input(n: usize, bits: u32) -> (Vec<u64>, Vec<u64>) {
    let mut prg = Prg::from_os().expect("os rng");
    let x: Vec<u64> = prg
        .vec_u64(n)
        .iter()
        .map(|v| ((*v as i64) >> (64 - bits)) as u64)
        .collect();
    share::share(&x, &mut prg)
}

fn pick(s: &Server<T>, x: &(Vec<u64>, Vec<u64>)) -> Vec<u64> {
    if s.id() == PartyId::P0 {
        x.0.clone()
    } else {
        x.1.clone()
    }
}

fn bench_relu(c: &mut Criterion) {
    for bits in [64u32, 40] {
        for n in [128usize, 4096, 65536] {
            let x = input(n, 39);
            let x = &x;
            bench_gate(
                c,
                &format!("relu_{bits}bit"),
                format!("{n}"),
                move |mut d: Dealer<T>| async move { p::deal_relu(&mut d, n, 16, bits).await },
                move |mut s: Server<T>| async move {
                    let v = pick(&s, x);
                    p::relu(&mut s, &v, 16, bits).await
                },
            );
        }
    }
}

fn bench_truncate(c: &mut Criterion) {
    for n in [128usize, 65536] {
        let x = input(n, 60);
        let x = &x;
        bench_gate(
            c,
            "truncate",
            format!("{n}"),
            move |mut d: Dealer<T>| async move { p::deal_truncate(&mut d, n, 16).await },
            move |mut s: Server<T>| async move {
                let v = pick(&s, x);
                p::truncate(&mut s, &v, 16).await
            },
        );
    }
}

fn bench_pools(c: &mut Criterion) {
    // 65,536 windows of 2×2: 16 channels of 128×128 pixels.
    let shape = PoolShape::square(1, 16, 128, 128, 2);
    let x = input(shape.in_len(), 38);
    let x = &x;
    for bits in [64u32, 40] {
        bench_gate(
            c,
            &format!("maxpool2x2_{bits}bit"),
            format!("{}windows", shape.windows()),
            move |mut d: Dealer<T>| async move { p::deal_maxpool(&mut d, &shape, bits).await },
            move |mut s: Server<T>| async move {
                let v = pick(&s, x);
                p::maxpool(&mut s, &v, &shape, bits).await
            },
        );
        // The same with the keys received and parsed before the input exists (online only).
        let run_once = move || {
            session(
                move |mut d: Dealer<T>| async move { p::deal_maxpool(&mut d, &shape, bits).await },
                move |mut s: Server<T>| async move {
                    let v = pick(&s, x);
                    let prep = p::prepare_maxpool(&mut s, &shape, bits).await?;
                    let t = Instant::now();
                    p::finish_maxpool(&mut s, prep, &v).await?;
                    Ok(t.elapsed())
                },
            )
        };
        let (run, _) = run_once();
        println!(
            "maxpool2x2_{bits}bit prepared: online {:.3} ms after key parsing",
            run.p0.as_secs_f64() * 1e3
        );
        let mut g = c.benchmark_group(format!("maxpool2x2_{bits}bit_prepared"));
        g.sample_size(10);
        g.bench_function(
            BenchmarkId::from_parameter(format!("{}windows", shape.windows())),
            |b| b.iter_custom(|iters| (0..iters).map(|_| run_once().0.p0).sum()),
        );
        g.finish();
    }
    bench_gate(
        c,
        "avgpool2x2",
        format!("{}windows", shape.windows()),
        move |mut d: Dealer<T>| async move { p::deal_avgpool(&mut d, &shape).await },
        move |mut s: Server<T>| async move {
            let v = pick(&s, x);
            p::avgpool(&mut s, &v, &shape).await
        },
    );
}

/// The whole of network A (784→128→128→10, ReLU with fused truncation) on shares, with
/// private and with public weights; products and ReLUs prepared before the input arrives.
fn bench_network_a(c: &mut Criterion) {
    const SIZES: [usize; 4] = [784, 128, 128, 10];
    let mut prg = Prg::from_os().expect("os rng");
    let ws: Vec<(Vec<u64>, Vec<u64>)> = (0..3)
        .map(|l| {
            let w: Vec<u64> = prg
                .vec_u64(SIZES[l] * SIZES[l + 1])
                .iter()
                .map(|v| ((*v as i64) >> 50) as u64)
                .collect();
            share::share(&w, &mut prg)
        })
        .collect();
    for private in [true, false] {
        for batch in [1usize, 100] {
            let x = input(batch * 784, 17);
            let (x, ws) = (&x, &ws);
            let ops: Vec<Bilinear> = (0..3)
                .map(|l| Bilinear::MatMul {
                    m: batch,
                    k: SIZES[l],
                    n: SIZES[l + 1],
                })
                .collect();
            let ops = &ops;
            let run_once = move || {
                session(
                    move |mut d: Dealer<T>| async move {
                        if private {
                            let mut masks = Vec::new();
                            for op in ops {
                                masks.push(p::deal_weight_mask(&mut d, op.w_len()).await?);
                            }
                            for (op, mask) in ops.iter().zip(&masks) {
                                p::deal_bilinear_private(&mut d, op, mask).await?;
                            }
                        }
                        for op in &ops[..2] {
                            p::deal_relu(&mut d, op.out_len(), 16, p::FULL_BITS).await?;
                        }
                        Ok(())
                    },
                    move |mut s: Server<T>| async move {
                        let me = s.id() == PartyId::P0;
                        let mine =
                            |v: &(Vec<u64>, Vec<u64>)| if me { v.0.clone() } else { v.1.clone() };
                        // Public weights: both servers hold the same plain weights.
                        let plain: Vec<Vec<u64>> = ws
                            .iter()
                            .map(|w| ring::add(&w.0, &w.1).expect("same length"))
                            .collect();
                        let mut pw = Vec::new();
                        let mut preps = Vec::new();
                        if private {
                            for w in ws {
                                pw.push(p::load_private_weight(&mut s, &mine(w)).await?);
                            }
                            for (op, w) in ops.iter().zip(&pw) {
                                preps.push(p::prepare_bilinear_private(&mut s, op, w).await?);
                            }
                        }
                        let mut relus = Vec::new();
                        for op in &ops[..2] {
                            relus.push(
                                p::prepare_relu(&mut s, op.out_len(), 16, p::FULL_BITS).await?,
                            );
                        }
                        let t = Instant::now();
                        let mut h = mine(x);
                        let mut preps = preps.into_iter();
                        let mut relus = relus.into_iter();
                        for (l, op) in ops.iter().enumerate() {
                            let z = match preps.next() {
                                Some(prep) => {
                                    p::finish_bilinear_private(&mut s, prep, &h, &pw[l]).await?
                                }
                                None => p::bilinear_public(op, &h, &plain[l])?,
                            };
                            h = match relus.next() {
                                Some(r) => p::finish_relu(&mut s, r, &z).await?,
                                None => z,
                            };
                        }
                        Ok(t.elapsed())
                    },
                )
            };
            let mode = if private { "private" } else { "public" };
            let (run, off) = run_once();
            report(
                &format!("network A, {mode} weights, batch {batch} (incl. model load)"),
                &run,
                off,
            );
            let load = if private { 3 } else { 0 };
            println!(
                "  query online: {:.3} ms in {} rounds, {} B sent per server",
                run.p0.as_secs_f64() * 1e3,
                run.sent[0].messages_to(PartyId::P1) - load,
                run.sent[0].bytes_to(PartyId::P1)
                    - if private {
                        8 * (784 * 128 + 128 * 128 + 1280)
                    } else {
                        0
                    },
            );
            let mut g = c.benchmark_group(format!("network_a_{mode}"));
            g.sample_size(10);
            g.bench_function(BenchmarkId::from_parameter(format!("batch{batch}")), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| run_once().0.p0).sum())
            });
            g.finish();
        }
    }
}

fn bench_network_a_layers(c: &mut Criterion) {
    // The other layers of network A, batch 1 and 100: dense 128→128 and 128→10, argmax over 10.
    for batch in [1usize, 100] {
        let x = input(batch * 10, 40);
        let x = &x;
        bench_gate(
            c,
            "argmax10",
            format!("batch{batch}"),
            move |mut d: Dealer<T>| async move { p::deal_argmax(&mut d, batch, 10).await },
            move |mut s: Server<T>| async move {
                let v = pick(&s, x);
                p::argmax(&mut s, &v, batch, 10).await
            },
        );
        let x = input(batch * 10, 40);
        let x = &x;
        bench_gate(
            c,
            "sigmoid",
            format!("{}", batch * 10),
            move |mut d: Dealer<T>| async move { p::deal_sigmoid(&mut d, batch * 10, 32, 16).await },
            move |mut s: Server<T>| async move {
                let v = pick(&s, x);
                p::sigmoid(&mut s, &v, 32, 16).await
            },
        );
    }
}

criterion_group!(
    benches,
    bench_matmul,
    bench_dense_relu,
    bench_network_a,
    bench_relu,
    bench_truncate,
    bench_pools,
    bench_network_a_layers
);
criterion_main!(benches);

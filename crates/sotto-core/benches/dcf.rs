//! Benchmark of the DCF at the widths real models use.
//!
//! First a table: for ReLU/DReLU comparisons on `bits` = 20, 25, 32, 40 and 64 (a DCF on
//! `bits − 1` levels) and payloads of m = 1 (DReLU, carries) and m = 2 (ReLU, max), the key
//! bytes per comparison and party, and the generation and evaluation time per key (the best of
//! a few runs over a batch of 16,384 keys: on a shared machine the fastest run is the one
//! least disturbed by other work), for `DCF1`, `DCF2` and the one-bit `DCFB`
//! ([`sotto_core::dcf_bit`]). `SOTTO_DCF_BENCH_MS=300` makes every timed run last 300 ms and
//! times single-thread runs by the thread's CPU time (minutes in all). Then the helper material and online traffic per element of a
//! ReLU in each [`Comparisons`] mode, counted from the bytes a local session actually sends.
//! Then criterion's measurements of 4,096 keys.

use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput};
use sotto_core::local::{no_client, run_local, LocalTransport};
use sotto_core::prg::Prg;
use sotto_core::protocols::{self as p, Comparisons};
use sotto_core::session::{Dealer, Server};
use sotto_core::transport::PartyId;
use sotto_core::{dcf, dcf_bit, share};

const TABLE_KEYS: usize = 16384;
const RUNS: usize = 7;
const BITS: [u32; 5] = [20, 25, 32, 40, 64];

/// CPU time of the calling thread in ns (Linux: the first field of
/// `/proc/thread-self/schedstat`, which the kernel brings up to date at scheduler ticks, so
/// it is only good over runs much longer than a tick), or `None` where it cannot be read.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Shortest timed run in ms (`SOTTO_DCF_BENCH_MS`, default 0: one call per run). With 100 or
/// more, single-thread runs are timed by the thread's CPU time ([`thread_cpu_ns`]) instead of
/// the wall clock, which other work on a shared machine inflates.
fn min_run_ms() -> u64 {
    std::env::var("SOTTO_DCF_BENCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_timed() -> bool {
    min_run_ms() >= 100 && thread_cpu_ns().is_some()
}

/// Best of [`RUNS`] runs of `f`, in ns per key; each run repeats `f` for at least
/// [`min_run_ms`]. Timed by the calling thread's CPU time when `cpu` and [`cpu_timed`], else by
/// the wall clock (always for multi-threaded runs, whose other threads that clock misses).
fn time_per_key(count: usize, cpu: bool, mut f: impl FnMut()) -> f64 {
    f();
    let use_cpu = cpu && cpu_timed();
    let min = std::time::Duration::from_millis(min_run_ms());
    (0..RUNS)
        .map(|_| {
            let (t, c) = (Instant::now(), thread_cpu_ns());
            let mut reps = 0u32;
            while reps == 0 || t.elapsed() < min {
                f();
                reps += 1;
            }
            let ns = match (use_cpu, c, thread_cpu_ns()) {
                (true, Some(a), Some(b)) => b.saturating_sub(a) as f64,
                _ => t.elapsed().as_nanos() as f64,
            };
            ns / (count as f64 * f64::from(reps))
        })
        .fold(f64::INFINITY, f64::min)
}

fn low_mask(n: u32) -> u64 {
    if n == 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

fn table() {
    let count = TABLE_KEYS;
    let mut rng = Prg::from_os().expect("os rng");
    println!("DCF, {count} keys per batch; ns per key (best of {RUNS} runs)");
    let par = dcf::Parallelism::auto();
    println!(
        "1t: one thread, {}; mt: {} threads (Parallelism::auto), wall time",
        if cpu_timed() {
            "CPU time of the thread (/proc/thread-self/schedstat)"
        } else {
            "wall time (SOTTO_DCF_BENCH_MS=300 for CPU time over longer runs)"
        },
        par.threads
    );
    println!(
        "{:>5} {:>3} {:>2} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "bits", "n", "m", "key bytes", "gen 1t", "eval 1t", "gen mt", "eval mt"
    );
    for format in [dcf::Format::Bytes, dcf::Format::Packed] {
        println!("{format:?}");
        for bits in BITS {
            let n = bits - 1;
            for m in [1usize, 2] {
                let mask = low_mask(n);
                let alphas: Vec<u64> = rng.vec_u64(count).iter().map(|v| v & mask).collect();
                let xs: Vec<u64> = rng.vec_u64(count).iter().map(|v| v & mask).collect();
                let pay = rng.vec_u64(count * m);
                let seq = dcf::Parallelism::SEQUENTIAL;
                let (k0, _) =
                    dcf::gen_with(n, &alphas, &pay, m, &mut rng, seq, format).expect("valid");
                let bytes = (k0.encoded_len() - 12) / count;
                let mut out = vec![0u64; count * m];
                let mut times = Vec::new();
                for (p, cpu) in [(dcf::Parallelism::SEQUENTIAL, true), (par, false)] {
                    times.push(time_per_key(count, cpu, || {
                        dcf::gen_with(n, &alphas, &pay, m, &mut rng, p, format).expect("valid");
                    }));
                    times.push(time_per_key(count, cpu, || {
                        dcf::eval_with(&k0, &xs, &mut out, p).expect("valid")
                    }));
                }
                println!(
                    "{bits:>5} {n:>3} {m:>2} {bytes:>10} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
                    times[0], times[1], times[2], times[3]
                );
            }
        }
    }
    println!("Bit (DCFB: one XOR-shared output bit, 7 levels early-terminated)");
    for bits in BITS {
        let n = bits - 1;
        let mask = low_mask(n);
        let alphas: Vec<u64> = rng.vec_u64(count).iter().map(|v| v & mask).collect();
        let xs: Vec<u64> = rng.vec_u64(count).iter().map(|v| v & mask).collect();
        let seq = dcf::Parallelism::SEQUENTIAL;
        let (k0, _) = dcf_bit::gen_with(n, &alphas, &mut rng, seq).expect("valid");
        let bytes = (k0.encoded_len() - 12) / count;
        assert_eq!(bytes, dcf_bit::key_bytes(n));
        let mut out = vec![0u8; count];
        let mut times = Vec::new();
        for (p, cpu) in [(dcf::Parallelism::SEQUENTIAL, true), (par, false)] {
            times.push(time_per_key(count, cpu, || {
                dcf_bit::gen_with(n, &alphas, &mut rng, p).expect("valid");
            }));
            times.push(time_per_key(count, cpu, || {
                dcf_bit::eval_with(&k0, &xs, &mut out, p).expect("valid")
            }));
        }
        println!(
            "{bits:>5} {n:>3} {:>2} {bytes:>10} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            "-", times[0], times[1], times[2], times[3]
        );
    }
}

/// `SOTTO_DCF_AB=R`: R rounds in which `DCF2` (m = 1 and 2) and `DCFB` keys at n = 31 and 39
/// are generated and evaluated one after the other (4,096 keys, one thread, each run at
/// least `SOTTO_DCF_BENCH_MS` or 200 ms, CPU-timed where [`thread_cpu_ns`] works), so that
/// all formats see the same machine load; prints the best and the median ns per key.
fn interleaved(rounds: usize) {
    let count = 4096;
    let seq = dcf::Parallelism::SEQUENTIAL;
    let ms = min_run_ms().max(200);
    let min = std::time::Duration::from_millis(ms);
    let cpu = thread_cpu_ns().is_some();
    let mut rng = Prg::from_os().expect("os rng");
    println!();
    println!(
        "Interleaved, {rounds} rounds of {ms} ms runs, {count} keys, one thread, {}: ns per key",
        if cpu { "thread CPU time" } else { "wall time" }
    );
    println!(
        "{:>3} {:>10} {:>6} {:>9} {:>9} {:>9} {:>9}",
        "n", "format", "bytes", "gen best", "gen med", "eval best", "eval med"
    );
    let time = |f: &mut dyn FnMut()| -> f64 {
        let (t, c) = (Instant::now(), thread_cpu_ns());
        let mut reps = 0u32;
        while reps == 0 || t.elapsed() < min {
            f();
            reps += 1;
        }
        let ns = match (cpu, c, thread_cpu_ns()) {
            (true, Some(a), Some(b)) => b.saturating_sub(a) as f64,
            _ => t.elapsed().as_nanos() as f64,
        };
        ns / (count as f64 * f64::from(reps))
    };
    let stats = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[0], v[v.len() / 2])
    };
    for n in [31u32, 39] {
        let mask = low_mask(n);
        let alphas: Vec<u64> = rng.vec_u64(count).iter().map(|v| v & mask).collect();
        let xs: Vec<u64> = rng.vec_u64(count).iter().map(|v| v & mask).collect();
        let pay = rng.vec_u64(count * 2);
        let packed = dcf::Format::Packed;
        let (k1, _) =
            dcf::gen_with(n, &alphas, &pay[..count], 1, &mut rng, seq, packed).expect("valid");
        let (k2, _) = dcf::gen_with(n, &alphas, &pay, 2, &mut rng, seq, packed).expect("valid");
        let (kb, _) = dcf_bit::gen_with(n, &alphas, &mut rng, seq).expect("valid");
        let mut o1 = vec![0u64; count];
        let mut o2 = vec![0u64; count * 2];
        let mut ob = vec![0u8; count];
        // [gen, eval] samples of DCF2 m = 1, DCF2 m = 2, DCFB
        let mut samples: [[Vec<f64>; 2]; 3] = Default::default();
        for _ in 0..rounds {
            samples[0][0].push(time(&mut || {
                dcf::gen_with(n, &alphas, &pay[..count], 1, &mut rng, seq, packed).expect("valid");
            }));
            samples[1][0].push(time(&mut || {
                dcf::gen_with(n, &alphas, &pay, 2, &mut rng, seq, packed).expect("valid");
            }));
            samples[2][0].push(time(&mut || {
                dcf_bit::gen_with(n, &alphas, &mut rng, seq).expect("valid");
            }));
            samples[0][1].push(time(&mut || {
                dcf::eval_with(&k1, &xs, &mut o1, seq).expect("valid")
            }));
            samples[1][1].push(time(&mut || {
                dcf::eval_with(&k2, &xs, &mut o2, seq).expect("valid")
            }));
            samples[2][1].push(time(&mut || {
                dcf_bit::eval_with(&kb, &xs, &mut ob, seq).expect("valid")
            }));
        }
        let names = ["DCF2 m=1", "DCF2 m=2", "DCFB"];
        let bytes = [
            packed.key_bytes(n, 1),
            packed.key_bytes(n, 2),
            dcf_bit::key_bytes(n),
        ];
        for (i, [g, e]) in samples.into_iter().enumerate() {
            let (gb, gm) = stats(g);
            let (eb, em) = stats(e);
            println!(
                "{n:>3} {:>10} {:>6} {gb:>9.0} {gm:>9.0} {eb:>9.0} {em:>9.0}",
                names[i], bytes[i]
            );
        }
    }
}

/// Helper material and online traffic per element of a ReLU, from a local session's counted
/// bytes (the 32-byte session seed taken off; per-gate framing and key headers included).
fn material() {
    const N: usize = 4096;
    println!();
    println!("ReLU of {N} elements: bytes per element, counted from a local session");
    println!(
        "{:>4} {:>3} {:>5} {:>8} {:>9} {:>9} {:>7} {:>11}",
        "bits", "f", "cmp", "mode", "H->P0", "H->P1", "rounds", "online/srv"
    );
    let mut rng = Prg::from_os().expect("os rng");
    for bits in [28u32, 40] {
        for f in [19u32, 0] {
            // |x| < 2^(bits−1)
            let x: Vec<u64> = rng
                .vec_u64(N)
                .iter()
                .map(|v| ((*v as i64) >> (65 - bits)) as u64)
                .collect();
            let (x0, x1) = share::share(&x, &mut rng);
            for mode in [Comparisons::Fast, Comparisons::Compact] {
                let run = run_local(
                    |mut d: Dealer<LocalTransport>| async move {
                        p::deal_relu_with(&mut d, N, f, bits, mode).await
                    },
                    |mut s: Server<LocalTransport>| {
                        let mine = if s.is_p0() { x0.clone() } else { x1.clone() };
                        async move { p::relu_with(&mut s, &mine, f, bits, mode).await }
                    },
                    no_client,
                    false,
                )
                .expect("runs");
                let y = share::reveal(&run.p0, &run.p1).expect("same length");
                assert_eq!(y, sotto_core::plain::relu(&x, f), "exact");
                let per = |b: u64| b.saturating_sub(32) as f64 / N as f64;
                // A compact ReLU with a truncation compares the high part (on
                // fused_sign_bits) and the carry (on f bits) from one opening.
                let cmp = if mode == Comparisons::Compact && f > 0 {
                    format!("{}+{f}", p::fused_sign_bits(bits, f))
                } else {
                    p::shifted_bits(bits, f).to_string()
                };
                println!(
                    "{bits:>4} {f:>3} {cmp:>5} {:>8} {:>9.1} {:>9.1} {:>7} {:>11.3}",
                    format!("{mode:?}"),
                    per(run.sent[2].bytes_to(PartyId::P0)),
                    per(run.sent[2].bytes_to(PartyId::P1)),
                    run.sent[0].messages_to(PartyId::P1),
                    run.sent[0].bytes_to(PartyId::P1) as f64 / N as f64,
                );
            }
        }
    }
    println!(
        "(cmp: width of the comparison, shifted_bits(bits, f), its DCF with cmp − 1 levels; \
         k+f: the sign of the high part on k bits and the truncation's carry on f bits, one \
         fused gate)"
    );
}

fn bench(c: &mut Criterion) {
    let count = 4096;
    let mut rng = Prg::from_os().expect("os rng");
    for &(n, m) in &[(31u32, 2usize), (63, 2), (63, 1)] {
        let mask = (1u64 << n) - 1;
        let alphas: Vec<u64> = rng.vec_u64(count).iter().map(|v| v & mask).collect();
        let xs: Vec<u64> = rng.vec_u64(count).iter().map(|v| v & mask).collect();
        let pay = rng.vec_u64(count * m);
        let (k0, _) = dcf::gen(n, &alphas, &pay, m, &mut rng).expect("valid");
        let mut g = c.benchmark_group(format!("dcf_n{n}_m{m}"));
        g.throughput(Throughput::Elements(count as u64));
        g.bench_function(BenchmarkId::new("gen", count), |b| {
            b.iter(|| dcf::gen(n, &alphas, &pay, m, &mut rng).expect("valid"))
        });
        let mut out = vec![0u64; count * m];
        g.bench_function(BenchmarkId::new("eval", count), |b| {
            b.iter(|| dcf::eval(&k0, &xs, &mut out).expect("valid"))
        });
        g.finish();
    }
    let n = 39u32;
    let mask = low_mask(n);
    let alphas: Vec<u64> = rng.vec_u64(count).iter().map(|v| v & mask).collect();
    let xs: Vec<u64> = rng.vec_u64(count).iter().map(|v| v & mask).collect();
    let (k0, _) = dcf_bit::gen(n, &alphas, &mut rng).expect("valid");
    let mut g = c.benchmark_group(format!("dcf_bit_n{n}"));
    g.throughput(Throughput::Elements(count as u64));
    g.bench_function(BenchmarkId::new("gen", count), |b| {
        b.iter(|| dcf_bit::gen(n, &alphas, &mut rng).expect("valid"))
    });
    let mut out = vec![0u8; count];
    g.bench_function(BenchmarkId::new("eval", count), |b| {
        b.iter(|| dcf_bit::eval(&k0, &xs, &mut out).expect("valid"))
    });
    g.finish();
}

fn main() {
    table();
    material();
    if let Some(r) = std::env::var("SOTTO_DCF_AB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        interleaved(r.max(1));
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(2))
        .warm_up_time(std::time::Duration::from_millis(500))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}

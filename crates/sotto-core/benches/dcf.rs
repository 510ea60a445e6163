//! Benchmark of the DCF at the widths real models use.
//!
//! First a table: for ReLU/DReLU comparisons on `bits` = 20, 25, 32 and 64 (a DCF on
//! `bits − 1` levels) and payloads of m = 1 (DReLU, carries) and m = 2 (ReLU, max), the key
//! bytes per comparison and party, and the generation and evaluation time per key (median of a
//! few runs over a batch of 16,384 keys). Then criterion's measurements of 4,096 keys.

use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput};
use sotto_core::dcf;
use sotto_core::prg::Prg;

const TABLE_KEYS: usize = 16384;
const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time_per_key(count: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_nanos() as f64 / count as f64
            })
            .collect(),
    )
}

fn table() {
    let count = TABLE_KEYS;
    let mut rng = Prg::from_os().expect("os rng");
    println!("DCF, {count} keys per batch; ns per key (median of {RUNS} runs)");
    let par = dcf::Parallelism::auto();
    println!("1 thread, and {} threads (Parallelism::auto)", par.threads);
    println!(
        "{:>5} {:>3} {:>2} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "bits", "n", "m", "key bytes", "gen 1t", "eval 1t", "gen mt", "eval mt"
    );
    for format in [dcf::Format::Bytes, dcf::Format::Packed] {
        println!("{format:?}");
        for bits in [20u32, 25, 32, 64] {
            let n = bits - 1;
            for m in [1usize, 2] {
                let mask = (1u64 << n) - 1;
                let alphas: Vec<u64> = rng.vec_u64(count).iter().map(|v| v & mask).collect();
                let xs: Vec<u64> = rng.vec_u64(count).iter().map(|v| v & mask).collect();
                let pay = rng.vec_u64(count * m);
                let seq = dcf::Parallelism::SEQUENTIAL;
                let (k0, _) =
                    dcf::gen_with(n, &alphas, &pay, m, &mut rng, seq, format).expect("valid");
                let bytes = (k0.encoded_len() - 12) / count;
                let mut out = vec![0u64; count * m];
                let mut times = Vec::new();
                for p in [dcf::Parallelism::SEQUENTIAL, par] {
                    times.push(time_per_key(count, || {
                        dcf::gen_with(n, &alphas, &pay, m, &mut rng, p, format).expect("valid");
                    }));
                    times.push(time_per_key(count, || {
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
}

fn main() {
    table();
    let mut c = Criterion::default()
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(2))
        .warm_up_time(std::time::Duration::from_millis(500))
        .configure_from_args();
    bench(&mut c);
    c.final_summary();
}

//! Benchmark of the DCF: key generation and evaluation of 4,096 comparisons side by side.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sotto_core::dcf;
use sotto_core::prg::Prg;

fn bench(c: &mut Criterion) {
    let count = 4096;
    let mut rng = Prg::from_os().expect("os rng");
    for &(n, m) in &[(63u32, 1usize), (63, 2), (63, 3), (39, 2), (39, 3)] {
        let mask = (1u64 << n) - 1;
        let alphas: Vec<u64> = rng.vec_u64(count).iter().map(|v| v & mask).collect();
        let xs: Vec<u64> = rng.vec_u64(count).iter().map(|v| v & mask).collect();
        let pay = rng.vec_u64(count * m);
        let (k0, _) = dcf::gen(n, &alphas, &pay, m, &mut rng).expect("valid");
        println!(
            "dcf n={n} m={m}: key {} bytes per comparison per party",
            (k0.encoded_len() - 12) / count
        );
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

criterion_group!(benches, bench);
criterion_main!(benches);

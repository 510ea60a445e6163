//! Throughput of the ring products in GMAC/s (10^9 wrapping u64 multiply-adds per second) at
//! the shapes that matter: network A's dense layers, the bundled CNN's convolutions and
//! CIFAR-like 'same' convolutions, at batch 1 and above.
//!
//! Each case runs two ways: `loops` is the product as it was computed before the ring GEMM
//! (`ring::matmul`'s row-streaming loops, and for convolutions `im2col` into
//! `[N·OH·OW, C·kh·kw]`, that product and a transpose to NCHW), kept here as the yardstick;
//! `apply` is [`Bilinear::apply`], what the protocols run. A table of both is printed first
//! (best and median of interleaved timed runs, see `table`), then criterion measures each with
//! its throughput in elements/s, one element being one multiply-add. `cargo bench --bench gemm
//! -- nothing` prints only the table.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sotto_core::linear::{Bilinear, Conv2dShape};
use sotto_core::prg::Prg;
use sotto_core::ring;

/// A named product with random operands.
struct Case {
    name: String,
    op: Bilinear,
    x: Vec<u64>,
    w: Vec<u64>,
}

impl Case {
    fn macs(&self) -> u64 {
        match self.op {
            Bilinear::MatMul { m, k, n } => (m * k * n) as u64,
            Bilinear::Conv2d(s) => {
                (s.batch * s.out_h() * s.out_w() * s.patch_len()) as u64 * s.out_channels as u64
            }
            Bilinear::GroupedConv2d { group: s, groups } => {
                (s.batch * s.out_h() * s.out_w() * s.patch_len()) as u64
                    * (s.out_channels * groups) as u64
            }
        }
    }

    /// The product as the loops before the ring GEMM computed it.
    fn loops(&self) -> Vec<u64> {
        match self.op {
            Bilinear::MatMul { m, k, n } => ring::matmul(&self.x, &self.w, m, k, n).expect("fits"),
            // (no loop before this one: the grouped product is newer than the ring GEMM)
            Bilinear::GroupedConv2d { .. } => self.op.apply(&self.x, &self.w).expect("fits"),
            Bilinear::Conv2d(s) => {
                let cols = s.im2col(&self.x).expect("fits");
                let hw = s.out_h() * s.out_w();
                let y = ring::matmul(&cols, &self.w, s.batch * hw, s.patch_len(), s.out_channels)
                    .expect("fits");
                let mut out = vec![0u64; y.len()];
                for n in 0..s.batch {
                    for p in 0..hw {
                        for o in 0..s.out_channels {
                            out[(n * s.out_channels + o) * hw + p] =
                                y[(n * hw + p) * s.out_channels + o];
                        }
                    }
                }
                out
            }
        }
    }

    fn apply(&self) -> Vec<u64> {
        self.op.apply(&self.x, &self.w).expect("fits")
    }
}

fn conv(batch: usize, c: usize, hw: usize, o: usize, k: usize, same: bool) -> Conv2dShape {
    let pad = if same { (k - 1) / 2 } else { 0 };
    Conv2dShape {
        batch,
        in_channels: c,
        height: hw,
        width: hw,
        out_channels: o,
        kernel_h: k,
        kernel_w: k,
        stride_h: 1,
        stride_w: 1,
        pad_top: pad,
        pad_left: pad,
        pad_bottom: k - 1 - pad,
        pad_right: k - 1 - pad,
    }
}

fn cases() -> Vec<Case> {
    let mut prg = Prg::from_os().expect("os rng");
    let mut out = Vec::new();
    let mut add = |name: String, op: Bilinear| {
        let (x, w) = (prg.vec_u64(op.x_len()), prg.vec_u64(op.w_len()));
        out.push(Case { name, op, x, w });
    };
    // Network A: 784→128→128→10.
    for m in [1usize, 100] {
        for (k, n) in [(784usize, 128usize), (128, 128), (128, 10)] {
            add(format!("dense {k}x{n} b{m}"), Bilinear::MatMul { m, k, n });
        }
    }
    // The bundled CNN (models/cnn.onnx): Conv2D(8, 5) on 28×28×1, Conv2D(16, 3) on 12×12×8;
    // CIFAR-like 'same' 3×3 convolutions.
    for b in [1usize, 8] {
        for (c, hw, o, k, same, what) in [
            (1usize, 28usize, 8usize, 5usize, false, "cnn"),
            (8, 12, 16, 3, false, "cnn"),
            (32, 32, 32, 3, true, "cifar same"),
            (64, 16, 64, 3, true, "cifar same"),
        ] {
            add(
                format!("{what} conv {c}->{o} {k}x{k} on {hw}x{hw} b{b}"),
                Bilinear::Conv2d(conv(b, c, hw, o, k, same)),
            );
        }
    }
    out
}

/// Calls of `f` per timed run: enough for `min` of wall time.
fn calibrate(min: Duration, mut f: impl FnMut() -> Vec<u64>) -> u32 {
    let mut iters = 1u32;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            black_box(f());
        }
        if t.elapsed() >= min {
            return iters;
        }
        iters *= 2;
    }
}

/// Time this thread has run on a CPU (Linux's schedstat, in ns; it advances a scheduler tick
/// at a time, so runs timed with it must be long); `None` elsewhere.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// GMAC/s of one run of `iters` calls, by the wall clock or, if `cpu` and Linux, by the
/// thread's CPU time.
fn rate(macs: u64, iters: u32, cpu: bool, mut f: impl FnMut() -> Vec<u64>) -> f64 {
    let (t, c) = (Instant::now(), cpu.then(cpu_ns).flatten());
    for _ in 0..iters {
        black_box(f());
    }
    let secs = match (c, cpu.then(cpu_ns).flatten()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
        _ => t.elapsed().as_secs_f64(),
    };
    macs as f64 * f64::from(iters) / secs / 1e9
}

/// Best and median GMAC/s of both ways over interleaved runs. On a machine shared with other
/// work the best run is the least disturbed one. A product that takes under 15 ms is timed by
/// the wall clock over 101 runs of at least 2 ms (many of which fit in one time slice); a
/// longer one by this thread's CPU time over 9 runs of at least 300 ms. `GEMM_TABLE=text`
/// keeps the cases whose name contains `text`.
fn table(cases: &[Case]) {
    let only = std::env::var("GEMM_TABLE").unwrap_or_default();
    println!(
        "{:<42} {:>18} {:>18} {:>7}",
        "GMAC/s: best (median)", "loops", "apply", "ratio"
    );
    for c in cases.iter().filter(|c| c.name.contains(&only)) {
        assert_eq!(c.loops(), c.apply(), "{}: the two products differ", c.name);
        let short = Duration::from_millis(2);
        let slow = |f: &dyn Fn() -> Vec<u64>| {
            black_box(f()); // warm: allocations and caches
            let t = Instant::now();
            black_box(f());
            t.elapsed() >= Duration::from_millis(15)
        };
        let long = slow(&|| c.loops()) || slow(&|| c.apply());
        let (runs, min) = if long {
            (9, Duration::from_millis(300))
        } else {
            (101, short)
        };
        let (il, ia) = (calibrate(min, || c.loops()), calibrate(min, || c.apply()));
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            before.push(rate(c.macs(), il, long, || c.loops()));
            after.push(rate(c.macs(), ia, long, || c.apply()));
        }
        before.sort_by(f64::total_cmp);
        after.sort_by(f64::total_cmp);
        let cell = |v: &[f64]| format!("{:.3} ({:.3})", v[runs - 1], v[runs / 2]);
        println!(
            "{:<42} {:>18} {:>18} {:>6.2}x{}",
            c.name,
            cell(&before),
            cell(&after),
            after[runs - 1] / before[runs - 1],
            if long { "  (CPU time)" } else { "" }
        );
    }
}

fn bench(c: &mut Criterion) {
    let cases = cases();
    table(&cases);
    for case in &cases {
        let mut g = c.benchmark_group(format!("gemm {}", case.name));
        g.throughput(Throughput::Elements(case.macs()));
        g.sample_size(20);
        g.warm_up_time(Duration::from_millis(500));
        g.measurement_time(Duration::from_secs(2));
        g.bench_function(BenchmarkId::from_parameter("loops"), |b| {
            b.iter(|| case.loops())
        });
        g.bench_function(BenchmarkId::from_parameter("apply"), |b| {
            b.iter(|| case.apply())
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

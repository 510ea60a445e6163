//! Throughput of the ring products in GMAC/s (10^9 wrapping u64 multiply-adds per second) at
//! the shapes that matter: network A's dense layers, the bundled CNN's convolutions and
//! CIFAR-like 'same' convolutions, at batch 1 and above, and larger ones: a wide dense layer,
//! ResNet-50-like convolutions (3×3 and 1×1 on 56×56×64), a ResNeXt-like grouped one and
//! MobileNet-like depthwise ones.
//!
//! Each case runs three ways: `loops` is the product as it was computed before the ring GEMM
//! (`ring::matmul`'s row-streaming loops, and for convolutions `im2col` into
//! `[N·OH·OW, C·kh·kw]`, that product and a transpose to NCHW), kept here as the yardstick;
//! `1 thread` is [`Bilinear::apply_threads`] on the calling thread only (the sequential path);
//! `all threads` is [`Bilinear::apply`], what the protocols run, on up to
//! [`linear::max_threads`] threads (`SOTTO_THREADS` caps it). `1 thread` and `all threads`
//! run the wider build of the product where the processor has one (AVX-512, named above the
//! table; `SOTTO_SIMD=0` runs the portable one). A table of the three is printed
//! first (best and median of interleaved timed runs, see `table`), then criterion measures
//! each with its throughput in elements/s, one element being one multiply-add. `cargo bench
//! --bench gemm -- nothing` prints only the table.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sotto_core::linear::{self, Bilinear, Conv2dShape};
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
        self.op.macs()
    }

    /// The product as the loops before the ring GEMM computed it.
    fn loops(&self) -> Vec<u64> {
        match self.op {
            Bilinear::MatMul { m, k, n } => ring::matmul(&self.x, &self.w, m, k, n).expect("fits"),
            // (no loop before this one: the grouped product is newer than the ring GEMM)
            Bilinear::GroupedConv2d { .. } => self.one(),
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

    /// The product on the calling thread only.
    fn one(&self) -> Vec<u64> {
        self.op.apply_threads(&self.x, &self.w, 1).expect("fits")
    }

    /// The product as the protocols compute it, on all threads if it is large enough.
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
    // At the threshold of the split: 2 Mi multiply-adds, the least split in two.
    add(
        "dense 1024x256 b8 (threshold)".into(),
        Bilinear::MatMul {
            m: 8,
            k: 1024,
            n: 256,
        },
    );
    // Larger: a wide dense layer at batch 1 (split by columns) and at batch 16 (by rows).
    for m in [1usize, 16] {
        add(
            format!("dense 4096x4096 b{m}"),
            Bilinear::MatMul {
                m,
                k: 4096,
                n: 4096,
            },
        );
    }
    // ResNet-50's stage-1 3×3 and 1×1 convolutions (56×56×64 → 64, 'same'), at batch 1.
    add(
        "resnet conv 64->64 3x3 on 56x56 b1".into(),
        Bilinear::Conv2d(conv(1, 64, 56, 64, 3, true)),
    );
    add(
        "resnet conv 64->256 1x1 on 56x56 b1".into(),
        Bilinear::Conv2d(conv(1, 64, 56, 256, 1, true)),
    );
    // ResNeXt-like grouped 3×3: 128 channels in 32 groups of 4 on 56×56.
    add(
        "resnext grouped 32x(4->4) 3x3 on 56x56 b1".into(),
        Bilinear::GroupedConv2d {
            group: conv(1, 4, 56, 4, 3, true),
            groups: 32,
        },
    );
    // MobileNet's depthwise 3×3 convolutions: 32 channels on 112×112, 128 on 56×56, and its
    // pointwise 1×1 after the latter (128 → 128).
    for (ch, hw) in [(32usize, 112usize), (128, 56)] {
        add(
            format!("mobilenet depthwise {ch}x 3x3 on {hw}x{hw} b1"),
            Bilinear::GroupedConv2d {
                group: conv(1, 1, hw, 1, 3, true),
                groups: ch,
            },
        );
    }
    add(
        "mobilenet pointwise 128->128 1x1 on 56x56 b1".into(),
        Bilinear::Conv2d(conv(1, 128, 56, 128, 1, true)),
    );
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

/// CPU time of the whole process, all its threads (those that have ended included), in
/// clock ticks (Linux's /proc/self/stat, usually 10 ms a tick); `None` elsewhere.
fn process_ticks() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After the command name, which ends with the last ')': utime and stime are fields 14 and
    // 15 of the line, 12 and 13 after it.
    let mut f = s[s.rfind(')')? + 1..].split_whitespace().skip(11);
    Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
}

/// GMAC/s of one run of `iters` calls, by the wall clock (the threaded product runs on
/// several threads, so the calling thread's CPU time would not measure it).
fn rate(macs: u64, iters: u32, mut f: impl FnMut() -> Vec<u64>) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        black_box(f());
    }
    macs as f64 * f64::from(iters) / t.elapsed().as_secs_f64() / 1e9
}

/// Best and median GMAC/s of the three ways over interleaved runs, by the wall clock. On a
/// machine shared with other work the best run is the least disturbed one. A product that
/// takes under 15 ms is timed over 101 runs of at least 2 ms; a longer one over 31 single
/// calls (under load, a short run is likelier to find the cores free). `gain` is the speedup
/// of all threads over one (best runs). On a loaded machine that can show less than the
/// split gives, so `cpu` adds the CPU time of the process (all threads) per product on all
/// threads over that on one, summed over the runs: the split's cost in CPU time. On idle
/// cores, N threads would then give about N / `cpu` (the parts are of equal size).
/// `GEMM_TABLE=text` keeps the cases whose name contains `text`.
fn table(cases: &[Case]) {
    let only = std::env::var("GEMM_TABLE").unwrap_or_default();
    let threads = linear::max_threads();
    println!(
        "ring product build: {} (SOTTO_SIMD=0 for the portable one)",
        linear::simd_kernel().unwrap_or("portable")
    );
    println!(
        "{:<44} {:>15} {:>15} {:>15} {:>6} {:>5}",
        "GMAC/s: best (median)",
        "loops",
        "1 thread",
        format!("{threads} threads"),
        "gain",
        "cpu"
    );
    for c in cases.iter().filter(|c| c.name.contains(&only)) {
        let one = c.one();
        assert_eq!(c.loops(), one, "{}: the loops and the GEMM differ", c.name);
        assert_eq!(c.apply(), one, "{}: one and all threads differ", c.name);
        let slow = |f: &dyn Fn() -> Vec<u64>| {
            black_box(f()); // warm: allocations and caches
            let t = Instant::now();
            black_box(f());
            t.elapsed() >= Duration::from_millis(15)
        };
        let long = slow(&|| c.loops()) || slow(&|| c.one());
        let (runs, min) = if long {
            (31, Duration::ZERO)
        } else {
            (101, Duration::from_millis(2))
        };
        let ways: [&dyn Fn() -> Vec<u64>; 3] = [&|| c.loops(), &|| c.one(), &|| c.apply()];
        let iters = ways.map(|f| calibrate(min, f));
        let mut rates: [Vec<f64>; 3] = Default::default();
        let mut ticks = [0u64; 3];
        for _ in 0..runs {
            for (i, ((f, &n), r)) in ways.iter().zip(&iters).zip(&mut rates).enumerate() {
                let t0 = process_ticks();
                r.push(rate(c.macs(), n, f));
                if let (Some(a), Some(b)) = (t0, process_ticks()) {
                    ticks[i] += b - a;
                }
            }
        }
        // CPU per call, all threads over one.
        let per_call = |i: usize| ticks[i] as f64 / f64::from(iters[i]);
        let cpu = per_call(2) / per_call(1);
        for r in &mut rates {
            r.sort_by(f64::total_cmp);
        }
        let cell = |v: &[f64]| format!("{:.2} ({:.2})", v[runs - 1], v[runs / 2]);
        println!(
            "{:<44} {:>15} {:>15} {:>15} {:>5.2}x {:>5.2}",
            c.name,
            cell(&rates[0]),
            cell(&rates[1]),
            cell(&rates[2]),
            rates[2][runs - 1] / rates[1][runs - 1],
            cpu,
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
        g.bench_function(BenchmarkId::from_parameter("1 thread"), |b| {
            b.iter(|| case.one())
        });
        g.bench_function(BenchmarkId::from_parameter("all threads"), |b| {
            b.iter(|| case.apply())
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

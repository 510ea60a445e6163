//! Piecewise-linear activations: the private evaluation against its plaintext twin at the
//! comparison width `comparison_bits` gives, the encoded functions' errors against the real
//! ones, and the width and range checks.

use proptest::prelude::*;
use sotto_core::local::{no_client, run_local, LocalRun};
use sotto_core::prg::Prg;
use sotto_core::protocols::{self as p, PiecewiseLinear, FULL_BITS, SLOPE_BITS};
use sotto_core::session::{Dealer, Server};
use sotto_core::transport::PartyId;
use sotto_core::{fixed, plain, share, Result};

type T = sotto_core::local::LocalTransport;

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn swish(x: f64) -> f64 {
    x * sigmoid(x)
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + p::erf(x / 2f64.sqrt()))
}

fn gelu_tanh(x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

fn hard_swish(x: f64) -> f64 {
    x * (x + 3.0).clamp(0.0, 6.0) / 6.0
}

fn elu(alpha: f64, x: f64) -> f64 {
    if x < 0.0 {
        alpha * x.exp_m1()
    } else {
        x
    }
}

fn leaky(alpha: f64, x: f64) -> f64 {
    if x < 0.0 {
        alpha * x
    } else {
        x
    }
}

/// A named constructor, its real function, the error bound its doc comment states (as a
/// function of `x`) and its number of pieces.
struct Case {
    name: &'static str,
    make: fn(u32, u32) -> Result<PiecewiseLinear>,
    func: fn(f64) -> f64,
    bound: fn(f64) -> f64,
    pieces: usize,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "sigmoid",
            make: PiecewiseLinear::sigmoid,
            func: sigmoid,
            bound: |_| 0.0035,
            pieces: 21,
        },
        Case {
            name: "tanh",
            make: PiecewiseLinear::tanh,
            func: f64::tanh,
            bound: |_| 0.0069,
            pieces: 21,
        },
        Case {
            name: "leaky_relu(0.3)",
            make: |i, o| PiecewiseLinear::leaky_relu(0.3, i, o),
            func: |x| leaky(0.3, x),
            // α = 0.3 is encoded as 1229/4096 (the doc bounds the error by 2^−13·|x|).
            bound: |x| (0.300_048_828_125 - 0.3) * x.abs() + 1e-12,
            pieces: 1,
        },
        Case {
            name: "leaky_relu(0.25)",
            make: |i, o| PiecewiseLinear::leaky_relu(0.25, i, o),
            func: |x| leaky(0.25, x),
            bound: |_| 1e-12,
            pieces: 1,
        },
        Case {
            name: "elu(1)",
            make: |i, o| PiecewiseLinear::elu(1.0, i, o),
            func: |x| elu(1.0, x),
            bound: |_| 0.0086,
            pieces: 8,
        },
        Case {
            name: "elu(0.5)",
            make: |i, o| PiecewiseLinear::elu(0.5, i, o),
            func: |x| elu(0.5, x),
            bound: |_| 0.0086 * 0.5,
            pieces: 8,
        },
        Case {
            name: "swish",
            make: PiecewiseLinear::swish,
            func: swish,
            bound: |_| 0.0084,
            pieces: 14,
        },
        Case {
            name: "gelu",
            make: PiecewiseLinear::gelu,
            func: gelu,
            bound: |_| 0.0091,
            pieces: 10,
        },
        Case {
            name: "hard_swish",
            make: PiecewiseLinear::hard_swish,
            func: hard_swish,
            bound: |_| 0.0090,
            pieces: 14,
        },
    ]
}

fn rng() -> Prg {
    Prg::from_os().expect("os rng")
}

fn mine<'a>(s: &Server<T>, x: &'a (Vec<u64>, Vec<u64>)) -> &'a [u64] {
    if s.id() == PartyId::P0 {
        &x.0
    } else {
        &x.1
    }
}

fn revealed(run: &LocalRun<Vec<u64>, ()>) -> Vec<u64> {
    share::reveal(&run.p0, &run.p1).expect("same length")
}

/// Runs `piecewise` privately for each `(function, input, width)` in one session and reveals
/// each output.
fn private(jobs: &[(PiecewiseLinear, Vec<u64>, u32)]) -> Result<Vec<Vec<u64>>> {
    let shared: Vec<_> = jobs
        .iter()
        .map(|(_, x, _)| share::share(x, &mut rng()))
        .collect();
    let run = run_local(
        |mut d: Dealer<T>| async move {
            for (g, x, bits) in jobs {
                p::deal_piecewise(&mut d, x.len(), g, *bits).await?;
            }
            Ok(())
        },
        |mut s: Server<T>| {
            let shared = &shared;
            async move {
                let mut out = Vec::new();
                for ((g, _, bits), xs) in jobs.iter().zip(shared) {
                    let v = mine(&s, xs).to_vec();
                    out.extend(p::piecewise(&mut s, &v, g, *bits).await?);
                }
                Ok(out)
            }
        },
        no_client,
        false,
    )?;
    let all = revealed(&run);
    let mut at = 0;
    Ok(jobs
        .iter()
        .map(|(_, x, _)| {
            let part = all[at..at + x.len()].to_vec();
            at += x.len();
            part
        })
        .collect())
}

fn dec(v: u64, f: u32) -> f64 {
    fixed::decode_with(v, f)
}

#[test]
fn erf_matches_reference_values() {
    // Reference values from CPython's math.erf.
    let table = [
        (0.1, 0.1124629160182849),
        (0.5, 0.5204998778130465),
        (1.0, 0.8427007929497149),
        (1.5, 0.9661051464753108),
        (2.0, 0.9953222650189527),
        (2.5, 0.999593047982555),
        (3.0, 0.9999779095030014),
        (3.5, 0.9999992569016276),
        (4.0, 0.9999999845827421),
        (5.0, 0.9999999999984626),
        (5.9, 0.9999999999999999),
        (-0.7, -0.6778011938374184),
        (1e-5, 1.1283791670579e-05),
    ];
    for (x, want) in table {
        let got = p::erf(x);
        assert!(
            (got - want).abs() < 1e-14,
            "erf({x}) = {got}, expected {want}"
        );
        assert_eq!(p::erf(-x), -got, "odd");
    }
    assert_eq!(p::erf(0.0), 0.0);
    assert_eq!(p::erf(7.0), 1.0);
    assert_eq!(p::erf(-40.0), -1.0);
    assert!(p::erf(f64::NAN).is_nan());
    // monotone across the switch to ±1
    let mut prev = -1.0;
    for i in -700..=700 {
        let v = p::erf(i as f64 / 100.0);
        assert!(
            v >= prev - 1e-15,
            "erf not monotone at {}",
            i as f64 / 100.0
        );
        prev = v;
    }
}

#[test]
fn constructors_meet_their_documented_errors() {
    for c in cases() {
        for (inf, outf) in [(16, 16), (32, 16), (24, 20), (20, 12)] {
            let g = (c.make)(inf, outf).expect("valid");
            assert_eq!(g.pieces(), c.pieces, "{}", c.name);
            // The documented bound, at the worst point of a wide range: the error is measured
            // near the knots densely and in the tails up to ±1000.
            for (lo, hi) in [(-40.0, 40.0), (-1000.0, 1000.0)] {
                let e = g.max_error(c.func, lo, hi);
                let b = (c.bound)(lo).max((c.bound)(hi));
                assert!(
                    e <= b,
                    "{} at ({inf}, {outf}) on [{lo}, {hi}]: {e} > {b}",
                    c.name
                );
                // and the bound is tight (a documentation that drifted would be caught)
                if b > 1e-9 {
                    assert!(e > 0.8 * b, "{} at ({inf}, {outf}): {e} ≪ {b}", c.name);
                }
            }
        }
    }
}

#[test]
fn gelu_against_its_tanh_form() {
    let g = PiecewiseLinear::gelu(16, 16).expect("valid");
    let e = g.max_error(gelu_tanh, -1000.0, 1000.0);
    assert!(e <= 0.0094 && e > 0.009, "{e}");
    let mut forms = 0f64;
    for i in -100_000..=100_000 {
        let x = i as f64 / 10_000.0;
        forms = forms.max((gelu(x) - gelu_tanh(x)).abs());
    }
    assert!((forms - 0.00047).abs() < 0.00001, "{forms}");
}

#[test]
fn max_error_measures_the_encoded_function() {
    // x² interpolated on [0, 1] by the chord: error 1/4 at 0.5.
    let g = PiecewiseLinear::fit(|x| x * x, &[0.0, 1.0], 0.0, 2.0, 16, 16).expect("valid");
    let e = g.max_error(|x| x * x, 0.0, 1.0);
    assert!((e - 0.25).abs() < 1e-4, "{e}");
    // Beyond the knots the tails are the given slopes: x² against 2x − 1 at x = 3 is 4.
    let e = g.max_error(|x| x * x, 0.0, 3.0);
    assert!((e - 4.0).abs() < 1e-3, "{e}");
    // Slope rounding is included: α = 0.3 is encoded as 1229/4096.
    let g = PiecewiseLinear::leaky_relu(0.3, 16, 16).expect("valid");
    let e = g.max_error(|x| leaky(0.3, x), -1000.0, 0.0);
    assert!((e - (1229.0 / 4096.0 - 0.3) * 1000.0).abs() < 1e-9, "{e}");
    assert_eq!(g.max_error(|x| leaky(0.3, x), 0.0, 1000.0), 0.0);
    // A function that is NaN somewhere has an infinite error.
    assert_eq!(
        g.max_error(|x| if x > 0.5 { f64::NAN } else { x }, 0.0, 1.0),
        f64::INFINITY
    );
}

#[test]
fn slope_rounding_does_not_drift_along_the_knots() {
    // With error feedback the encoded function meets `func` at every knot within one slope
    // unit over the segment before it (plus the base's rounding), and the tails keep the
    // exact slopes 0 and 1: rounding each slope change on its own drifts (tanh went above 1).
    for c in cases() {
        let g = (c.make)(32, 16).expect("valid");
        let knots: Vec<f64> = g.knots.iter().map(|&t| dec(t, 32)).collect();
        for (j, t) in knots.iter().enumerate() {
            let seg = if j == 0 { 0.0 } else { t - knots[j - 1] };
            let tol = seg * 2f64.powi(-(SLOPE_BITS as i32) - 1) + 2f64.powi(-17) + 1e-12;
            let err = (g.value(*t) - (c.func)(*t)).abs();
            assert!(err <= tol, "{} at knot {t}: {err} > {tol}", c.name);
        }
    }
    let g = PiecewiseLinear::tanh(32, 16).expect("valid");
    assert!(g.value(1e6) <= 1.0 && g.value(-1e6) >= -1.0);
    let g = PiecewiseLinear::swish(32, 16).expect("valid");
    assert!(
        (g.value(1e6) - 1e6).abs() < 0.01,
        "right tail slope is exactly 1"
    );
}

#[test]
fn comparison_bits_is_the_smallest_safe_width() {
    let g = PiecewiseLinear::leaky_relu(0.25, 16, 16).expect("valid");
    assert_eq!(g.comparison_bits(0), 2);
    assert_eq!(g.comparison_bits(1), 2);
    assert_eq!(g.comparison_bits(2), 3);
    assert_eq!(g.comparison_bits((1 << 20) - 1), 21);
    assert_eq!(g.comparison_bits(1 << 20), 22);
    assert_eq!(g.comparison_bits((1 << 62) - 1), 63);
    assert_eq!(g.comparison_bits(1 << 62), FULL_BITS);
    assert_eq!(g.comparison_bits(u64::MAX), FULL_BITS, "saturates");
    // The knots count: swish's outer knot is 6.7047 · 2^16 = 439 399.
    let g = PiecewiseLinear::swish(16, 16).expect("valid");
    let t = (g.knots[0] as i64).unsigned_abs();
    assert_eq!(t, 439_399);
    assert_eq!(g.comparison_bits((1 << 20) - t - 1), 21);
    assert_eq!(g.comparison_bits((1 << 20) - t), 22);
    assert_eq!(g.checked_comparison_bits(1 << 23).expect("fits"), 25);
}

#[test]
fn checked_comparison_bits_refuses_sums_that_reach_two_to_62() {
    // Leaky ReLU with 32 input bits: the sum is 2^12 · x for x ≥ 0, so 2^50 is the limit.
    let g = PiecewiseLinear::leaky_relu(0.25, 32, 16).expect("valid");
    assert_eq!(g.checked_comparison_bits((1 << 50) - 1).expect("fits"), 51);
    assert!(g.checked_comparison_bits(1 << 50).is_err());
    // A negative left slope reaching it on the left: −2 · 2^12 · x for x < 0.
    let g = PiecewiseLinear::fit(|x| -2.0 * x.min(0.0), &[0.0], -2.0, 0.0, 32, 16).expect("ok");
    assert!(g.checked_comparison_bits((1 << 49) - 1).is_ok());
    assert!(g.checked_comparison_bits(1 << 49).is_err());
    // A bounded function (sigmoid: flat tails) is fine up to any encodable bound; a
    // per-piece bound |s_j|·(B + |t_j|) would refuse it.
    let g = PiecewiseLinear::sigmoid(32, 16).expect("valid");
    assert_eq!(
        g.checked_comparison_bits((1 << 62) - 1).expect("fits"),
        FULL_BITS
    );
    assert!(
        g.checked_comparison_bits(1 << 62).is_err(),
        "not an encoded value"
    );
    // A hand-built function with no knot or mismatched lengths.
    let mut bad = g.clone();
    bad.slopes.pop();
    assert!(bad.checked_comparison_bits(1).is_err());
}

#[test]
fn malformed_functions_are_refused() {
    let id = |x: f64| x;
    assert!(PiecewiseLinear::fit(id, &[], 0.0, 1.0, 16, 16).is_err());
    assert!(PiecewiseLinear::fit(id, &[1.0, 0.0], 0.0, 1.0, 16, 16).is_err());
    assert!(PiecewiseLinear::fit(id, &[0.0, f64::NAN], 0.0, 1.0, 16, 16).is_err());
    assert!(
        PiecewiseLinear::fit(id, &[0.01, 0.02], 0.0, 1.0, 2, 2).is_err(),
        "knots coincide"
    );
    assert!(PiecewiseLinear::fit(|_| f64::NAN, &[0.0], 0.0, 1.0, 16, 16).is_err());
    assert!(PiecewiseLinear::fit(id, &[0.0], f64::INFINITY, 1.0, 16, 16).is_err());
    assert!(
        PiecewiseLinear::fit(id, &[0.0], 0.0, 1.0, 16, 40).is_err(),
        "out_frac too big"
    );
    assert!(
        PiecewiseLinear::fit(id, &[0.0], 0.0, 1.0, 60, 2).is_err(),
        "shift > 62"
    );
    assert!(PiecewiseLinear::interpolate(id, &[0.0], 16, 16).is_err());
    let mut empty = PiecewiseLinear::leaky_relu(0.25, 16, 16).expect("valid");
    empty.knots.clear();
    empty.slopes.clear();
    empty.negative.clear();
    assert!(private(&[(empty, vec![1, 2], 20)]).is_err());
    let g = PiecewiseLinear::leaky_relu(0.25, 16, 16).expect("valid");
    assert!(
        private(&[(g, vec![1, 2], 1)]).is_err(),
        "a 1-bit comparison"
    );
}

#[test]
fn one_bit_short_of_comparison_bits_breaks_and_full_width_matches() {
    // x = 2^20 needs 22 bits: on 21 its top bit reads as a sign and ReLU(x) becomes 0.
    let g = PiecewiseLinear::leaky_relu(0.25, 16, 16).expect("valid");
    let b: u64 = 1 << 20;
    let bits = g.comparison_bits(b);
    assert_eq!(bits, 22);
    let x = vec![b, b.wrapping_neg(), b - 1, 0, 1, 1u64.wrapping_neg()];
    let edge = vec![b - 1, (b - 1).wrapping_neg()];
    let want = plain::piecewise(&x, &g);
    let out = private(&[
        (g.clone(), x.clone(), bits),
        (g.clone(), x.clone(), FULL_BITS),
        (g.clone(), vec![b], bits - 1),
        (g.clone(), edge.clone(), g.comparison_bits(b - 1)),
    ])
    .expect("runs");
    assert_eq!(out[0], want, "at comparison_bits");
    assert_eq!(out[1], want, "at FULL_BITS");
    assert_ne!(out[2], plain::piecewise(&[b], &g), "one bit short");
    assert_eq!(out[2], vec![b >> 2], "read as negative: 0.25·x");
    assert_eq!(out[3], plain::piecewise(&edge, &g));
}

#[test]
fn narrower_comparisons_send_less_helper_material() {
    let g = PiecewiseLinear::swish(16, 16).expect("valid");
    let x: Vec<u64> = (0..32u64).map(|i| i << 16).collect();
    let helper_bytes = |bits: u32| {
        let xs = share::share(&x, &mut rng());
        let (g, n) = (&g, x.len());
        let run = run_local(
            |mut d: Dealer<T>| async move { p::deal_piecewise(&mut d, n, g, bits).await },
            |mut s: Server<T>| {
                let xs = &xs;
                async move {
                    let v = mine(&s, xs).to_vec();
                    p::piecewise(&mut s, &v, g, bits).await
                }
            },
            no_client,
            false,
        )
        .expect("runs");
        assert_eq!(revealed(&run), plain::piecewise(&x, g));
        run.sent[2].bytes_to(PartyId::P0) + run.sent[2].bytes_to(PartyId::P1)
    };
    let narrow = helper_bytes(g.comparison_bits(40 << 16));
    let full = helper_bytes(FULL_BITS);
    // keys of 16 + (bits − 1)·33 + 16 bytes: 824 at 25 bits against 2111 at 64
    assert!(narrow * 2 < full, "{narrow} against {full}");
}

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 16,
        ..ProptestConfig::default()
    }
}

/// `n` inputs with |x| ≤ bound, with the edges ±bound and 0 always present.
fn inputs(bound: u64, n: usize) -> Vec<u64> {
    let mut x = vec![bound, bound.wrapping_neg(), 0];
    let span = 2 * u128::from(bound) + 1;
    for r in rng().vec_u64(n) {
        let r = (u128::from(r) % span) as i128 - i128::from(bound);
        x.push(r as i64 as u64);
    }
    x
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn constructors_match_twin_at_their_width(
        inf in prop_oneof![Just(16u32), Just(24), Just(32)],
        outf in prop_oneof![Just(12u32), Just(16)],
        real_bits in 0u32..12,
        frac in 0.0f64..1.0,
    ) {
        // |x| ≤ bound, bound somewhere below 2^real_bits in real terms.
        let bound = (((1u64 << (real_bits + inf)) as f64) * frac) as u64 + 1;
        let mut jobs = Vec::new();
        for c in cases() {
            let g = (c.make)(inf, outf).expect("valid");
            let bits = g.checked_comparison_bits(bound).expect("in range");
            prop_assert!(bits < FULL_BITS);
            jobs.push((g, inputs(bound, 40), bits));
        }
        let out = private(&jobs).expect("runs");
        for ((c, (g, x, bits)), got) in cases().iter().zip(&jobs).zip(&out) {
            prop_assert_eq!(got, &plain::piecewise(x, g), "{} on {} bits", c.name, bits);
            for (xi, yi) in x.iter().zip(got) {
                let real = dec(*xi, inf);
                let y = dec(*yi, outf);
                let tol = (c.bound)(real) + 2f64.powi(-(outf as i32)) + 1e-12;
                prop_assert!(((c.func)(real) - y).abs() <= tol, "{}({real}) = {y}", c.name);
            }
        }
    }

    #[test]
    fn random_fits_match_twin(
        gaps in prop::collection::vec(0.05f64..6.0, 1..8),
        start in -20.0f64..5.0,
        coef in (-3.0f64..3.0, 0.1f64..4.0, -2.0f64..2.0),
        slopes in (-3.0f64..3.0, -3.0f64..3.0),
        inf in 8u32..=32,
        out_delta in -4i32..=12,
        bound_bits in 0u32..10,
        frac in 0.0f64..1.0,
        full in any::<bool>(),
    ) {
        let mut points = vec![start];
        for g in &gaps {
            points.push(points.last().copied().unwrap_or(0.0) + g);
        }
        let outf = (inf as i32 + out_delta).max(2) as u32;
        let (a, w, c) = coef;
        let func = move |x: f64| a * (w * x).sin() + c * x;
        let g = PiecewiseLinear::fit(func, &points, slopes.0, slopes.1, inf, outf).expect("valid");
        prop_assert_eq!(g.pieces(), points.len());
        let bound = (((1u64 << (bound_bits + inf)) as f64) * frac) as u64 + 1;
        let bits = g.checked_comparison_bits(bound).expect("small enough");
        let bits = if full { FULL_BITS } else { bits };
        let x = inputs(bound, 40);
        let got = private(&[(g.clone(), x.clone(), bits)]).expect("runs").remove(0);
        prop_assert_eq!(&got, &plain::piecewise(&x, &g), "on {} bits", bits);
        // The decoded function is what the protocol floors.
        for (xi, yi) in x.iter().zip(&got) {
            let v = g.value(dec(*xi, inf));
            let y = dec(*yi, outf);
            let slack = 1e-9 * (1.0 + v.abs());
            prop_assert!(y <= v + slack && y > v - 2f64.powi(-(outf as i32)) - slack,
                "value {v}, protocol {y}");
        }
    }
}

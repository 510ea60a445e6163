//! Calibrated bounds: a deep chain whose proven worst-case bound does not fit the ring is
//! refused by [`Plan::new`] naming the layer, and planned with bounds observed on samples
//! (times a margin) by [`Plan::with_calibration`]; the calibrated plan runs privately equal to
//! its fixed-point twin bit for bit on fresh inputs, agrees with the float model, and sizes
//! its comparisons narrower than the proven bounds would.

use sotto_core::fixed::{decode_with, FixedPoint};
use sotto_core::prg::Prg;
use sotto_model::ir::{Dim, Layer, Model, Named};
use sotto_model::plan::StepKind;
use sotto_model::private::{run_in_process, share_weights};
use sotto_model::{Calibration, Plan};

const WIDTH: usize = 24;
const DEPTH: usize = 11;

/// Uniform values in `[-scale, scale)` from the OS-seeded generator.
fn uniform(prg: &mut Prg, n: usize, scale: f32) -> Vec<f32> {
    prg.vec_u64(n)
        .iter()
        .map(|v| ((*v >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale)
        .collect()
}

/// `DEPTH` dense layers of `WIDTH` with ReLUs between them and a residual sum in the middle:
/// every layer's L1 weight norm is about 12, so the proven bound grows about 12-fold per
/// layer while real activations grow far less.
fn deep_chain(prg: &mut Prg) -> Model {
    let mut layers = Vec::new();
    let shape = |n: usize| vec![Dim::Batch, Dim::Fixed(n)];
    for d in 0..DEPTH {
        let last = d + 1 == DEPTH;
        let outputs = if last { 4 } else { WIDTH };
        let input = layers.len();
        layers.push(Named {
            node: format!("dense{d}"),
            layer: Layer::Dense {
                inputs: WIDTH,
                outputs,
                weights: uniform(prg, WIDTH * outputs, 1.0),
                bias: uniform(prg, outputs, 0.1),
            },
            out_shape: shape(outputs),
            inputs: vec![input],
        });
        if !last {
            layers.push(Named {
                node: format!("relu{d}"),
                layer: Layer::Relu,
                out_shape: shape(WIDTH),
                inputs: vec![layers.len()],
            });
        }
        if d == DEPTH / 2 {
            // a skip connection: the ReLU's output plus the value two layers back
            let n = layers.len();
            layers.push(Named {
                node: "residual".into(),
                layer: Layer::Add,
                out_shape: shape(WIDTH),
                inputs: vec![n, n - 2],
            });
        }
    }
    Model {
        input_name: "x".into(),
        input_shape: shape(WIDTH),
        layers,
        softmax_at_client: false,
        output_name: "y".into(),
    }
}

#[test]
fn a_deep_chain_runs_with_calibrated_bounds() {
    let mut prg = Prg::from_os().expect("os rng");
    let model = deep_chain(&mut prg);
    let fp = FixedPoint::new(12).expect("valid");
    let refused = Plan::new(&model, fp, 1.0).expect_err("the proven bound overflows");
    assert!(
        refused.to_string().contains("could overflow") && refused.to_string().contains("dense"),
        "{refused}"
    );

    let samples = uniform(&mut prg, 64 * WIDTH, 1.0);
    let cal = Calibration::observe(&model, &samples, Calibration::DEFAULT_MARGIN).expect("runs");
    assert_eq!(cal.samples, 64);
    assert_eq!(cal.observed.len(), model.layers.len() + 1);
    let plan = Plan::with_calibration(&model, fp, 1.0, Some(&cal)).expect("fits calibrated");
    // Every bound is at most the proven one, and the deep layers' are far below it.
    assert!(plan.steps.iter().all(|s| s.bound <= s.proven_bound));
    let last_relu = plan
        .steps
        .iter()
        .rev()
        .find(|s| matches!(s.kind, StepKind::Relu { .. }))
        .expect("a ReLU");
    assert!(
        last_relu.proven_bound > 1e6 * last_relu.bound,
        "{} vs {}",
        last_relu.bound,
        last_relu.proven_bound
    );

    // Fresh inputs from the same distribution: private = twin, and close to the float model.
    let batch = 16;
    let x = uniform(&mut prg, batch * WIDTH, 1.0);
    let enc = fp.encode_f32(&x).expect("in range");
    let want = model.forward(&x, batch).expect("float");
    let twin = plan.eval_fixed(&enc, batch).expect("twin");
    let weights = share_weights(&plan, true).expect("os rng");
    let run = run_in_process(&plan, [&plan, &plan], &weights, &enc, batch).expect("runs");
    assert_eq!(run.output, twin, "private = twin");
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    for (o, w) in run.output.iter().zip(&want) {
        let o = decode_with(*o, plan.out_frac);
        assert!((o - w).abs() <= 1e-2 * scale, "{o} vs {w}");
    }
}

#[test]
fn calibration_refuses_what_it_cannot_use() {
    let mut prg = Prg::from_os().expect("os rng");
    let model = deep_chain(&mut prg);
    let samples = uniform(&mut prg, 4 * WIDTH, 1.0);
    for margin in [0.5, f64::NAN, f64::INFINITY] {
        assert!(Calibration::observe(&model, &samples, margin).is_err());
    }
    assert!(Calibration::observe(&model, &samples[1..], 8.0).is_err());
    assert!(Calibration::observe(&model, &[], 8.0).is_err());
    // A calibration of another model is refused, not misapplied.
    let mut cal = Calibration::observe(&model, &samples, 8.0).expect("runs");
    cal.observed.pop();
    let fp = FixedPoint::new(12).expect("valid");
    assert!(Plan::with_calibration(&model, fp, 1.0, Some(&cal)).is_err());
}

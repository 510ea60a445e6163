//! The bundled models (trained and exported by `examples/tensorflow`) predict privately what
//! TensorFlow predicts, on TensorFlow's own fixture outputs.
//!
//! `SOTTO_MODELS_DIR` points the test at another export (CI runs the Python pipeline in a
//! fresh venv and checks its output this way); by default it reads the committed `models/`.

use std::path::PathBuf;

use sotto_core::fixed::{decode_with, FixedPoint};
use sotto_model::ir::argmax;
use sotto_model::private::{run_in_process, share_weights};
use sotto_model::{import, Plan};

fn dir() -> PathBuf {
    std::env::var_os("SOTTO_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models"))
}

fn npy_f32(path: &PathBuf) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    npyz::NpyFile::new(&bytes[..])
        .and_then(|f| f.into_vec::<f32>())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check(name: &str, private: bool) {
    let d = dir();
    let bytes = std::fs::read(d.join(format!("{name}.onnx"))).expect("bundled model");
    let t = std::time::Instant::now();
    let model = import(&bytes).expect("imports");
    let import_ms = t.elapsed().as_secs_f64() * 1e3;
    let plan = Plan::new(&model, FixedPoint::default(), 1.0).expect("fits the ring");
    let x = npy_f32(&d.join(format!("{name}_fixture_inputs.npy")));
    let tf = npy_f32(&d.join(format!("{name}_fixture_logits.npy")));
    let batch = x.len() / plan.input_len;
    assert_eq!(batch, 16);
    let x_enc = plan.fp.encode_f32(&x).expect("pixels encode");
    let weights = share_weights(&plan, private).expect("os rng");
    let run = run_in_process(&plan, [&plan, &plan], &weights, &x_enc, batch)
        .expect("private prediction runs");
    assert_eq!(
        run.output,
        plan.eval_fixed(&x_enc, batch).expect("fits"),
        "{name}: private output differs from the fixed-point twin"
    );
    let got: Vec<f64> = run
        .output
        .iter()
        .map(|v| decode_with(*v, plan.out_frac))
        .collect();
    let cols = plan.output_len;
    let mut worst: f64 = 0.0;
    for b in 0..batch {
        let (g, w) = (
            &got[b * cols..(b + 1) * cols],
            &tf[b * cols..(b + 1) * cols],
        );
        let wf: Vec<f64> = w.iter().map(|v| f64::from(*v)).collect();
        assert_eq!(
            argmax(g),
            argmax(&wf),
            "{name}: private label differs from TensorFlow's on fixture {b}"
        );
        for (a, c) in g.iter().zip(&wf) {
            worst = worst.max((a - c).abs());
        }
    }
    println!(
        "{name} ({}): import {import_ms:.1} ms, max |private - TF| logit {worst:.6}",
        if private { "private" } else { "public" }
    );
    assert!(worst <= 0.01, "{name}: logit error {worst} above 0.01");
}

#[test]
fn network_a_matches_tensorflow() {
    check("network_a", true);
    check("network_a", false);
}

#[test]
fn cnn_matches_tensorflow() {
    check("cnn", true);
}

#[test]
fn logistic_matches_tensorflow() {
    check("logistic", true);
}

/// One input sent 100 times (fresh shares, fresh masks, fresh weight shares each time) gives one
/// output, equal to the fixed-point twin: nothing the client sees depends on the masks.
#[test]
fn repeating_one_input_gives_one_output() {
    let d = dir();
    let bytes = std::fs::read(d.join("network_a.onnx")).expect("bundled model");
    let plan = Plan::new(
        &import(&bytes).expect("imports"),
        FixedPoint::default(),
        1.0,
    )
    .expect("fits the ring");
    let x = npy_f32(&d.join("network_a_fixture_inputs.npy"));
    let x_enc = plan
        .fp
        .encode_f32(&x[..plan.input_len])
        .expect("pixels encode");
    let want = plan.eval_fixed(&x_enc, 1).expect("fits");
    let mut outputs = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let weights = share_weights(&plan, true).expect("os rng");
        let run = run_in_process(&plan, [&plan, &plan], &weights, &x_enc, 1)
            .expect("private prediction runs");
        outputs.insert(run.output);
    }
    assert_eq!(outputs.len(), 1, "100 runs gave {} outputs", outputs.len());
    assert_eq!(outputs.pop_first(), Some(want));
}

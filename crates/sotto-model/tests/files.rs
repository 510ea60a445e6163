//! Per-party model files: right party, integrity, set membership, and a private run from them.

use sotto_core::fixed::{decode_with, FixedPoint};
use sotto_core::share;
use sotto_model::files::{check_set, make_set, read_file, Role};
use sotto_model::private::run_in_process;
use sotto_model::{import, Plan};

fn bundled() -> (Vec<u8>, Plan, sotto_model::Model) {
    let path =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/network_a.onnx");
    let bytes = std::fs::read(path).expect("bundled model");
    let model = import(&bytes).expect("imports");
    let plan = Plan::new(&model, FixedPoint::default(), 1.0).expect("fits");
    (bytes, plan, model)
}

#[test]
fn a_set_round_trips_and_runs_privately() {
    let (bytes, plan, model) = bundled();
    let [f0, f1, fh] = make_set(&plan, &bytes, true).expect("makes files");
    let p0 = read_file(&f0, Role::P0).expect("P0's file");
    let p1 = read_file(&f1, Role::P1).expect("P1's file");
    let h = read_file(&fh, Role::Helper).expect("helper's file");
    check_set(&[&p0, &p1, &h]).expect("one set");
    assert!(
        fh.len() < 4096,
        "the helper's file holds no weights ({} bytes)",
        fh.len()
    );
    // The two shares add up to the plan's weights, and neither equals them.
    for (l, (w, b)) in plan.weights.iter().enumerate() {
        let (w0, b0) = &p0.plan.weights[l];
        let (w1, b1) = &p1.plan.weights[l];
        assert_eq!(&share::reveal(w0, w1).expect("same length"), w);
        assert_eq!(&share::reveal(b0, b1).expect("same length"), b);
        assert_ne!(w0, w);
    }
    // Shares never reach a log through Debug.
    let shown = format!("{:?} {:?}", p0.plan, p0);
    let w0 = p0.plan.weights[0].0[0];
    assert!(
        !shown.contains(&w0.to_string()),
        "Debug printed a weight share"
    );
    // A private prediction where each party uses only its own file.
    let x: Vec<f32> = (0..2 * 784)
        .map(|i| ((i * 37) % 255) as f32 / 255.0)
        .collect();
    let x_enc = plan.fp.encode_f32(&x).expect("pixels");
    let weights = [
        p0.server_weights().expect("P0"),
        p1.server_weights().expect("P1"),
    ];
    let run = run_in_process(&h.plan, [&p0.plan, &p1.plan], &weights, &x_enc, 2).expect("runs");
    let got: Vec<f64> = run
        .output
        .iter()
        .map(|v| decode_with(*v, plan.out_frac))
        .collect();
    let want = model.forward(&x, 2).expect("fits");
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 0.01, "{g} vs {w}");
    }
}

#[test]
fn wrong_party_corruption_and_mixed_sets_are_refused() {
    let (bytes, plan, _) = bundled();
    let [f0, f1, fh] = make_set(&plan, &bytes, true).expect("makes files");
    let e = read_file(&f0, Role::P1).expect_err("P0's file for P1");
    assert!(e.to_string().contains("for P0, not for P1"), "{e}");
    assert!(read_file(&fh, Role::P0).is_err());
    let mut bad = f1.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    let e = read_file(&bad, Role::P1).expect_err("corrupted");
    assert!(e.to_string().contains("corrupted"), "{e}");
    assert!(read_file(&f1[..f1.len() - 1], Role::P1).is_err());
    assert!(read_file(b"SOTTOMDL", Role::P1).is_err());
    assert!(
        read_file(&bytes, Role::P0).is_err(),
        "an ONNX file is not a party file"
    );
    let [g0, ..] = make_set(&plan, &bytes, true).expect("another set");
    let p1 = read_file(&f1, Role::P1).expect("valid");
    let q0 = read_file(&g0, Role::P0).expect("valid");
    let e = check_set(&[&q0, &p1]).expect_err("two sets");
    assert!(e.to_string().contains("different sets"), "{e}");
}

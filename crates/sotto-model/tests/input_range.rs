//! The input bound is enforced privately: whatever a client sends, the parties compute on a
//! value of the input range's width, and the private result equals the fixed-point twin's
//! (which wraps the input the same way) bit for bit, so an out-of-range input cannot make a
//! reduced-width comparison return a wrong sign.

use sotto_core::fixed::FixedPoint;
use sotto_core::prg::Prg;
use sotto_model::plan::StepKind;
use sotto_model::private::{run_in_process, share_weights};
use sotto_model::{import, Plan};

fn network_a() -> (sotto_model::Model, Plan) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/network_a.onnx");
    let model = import(&std::fs::read(path).expect("models/network_a.onnx")).expect("imports");
    let plan = Plan::new(&model, FixedPoint::default(), 1.0).expect("fits");
    (model, plan)
}

#[test]
fn any_input_a_client_sends_is_forced_into_the_range_and_matches_the_twin() {
    let (_, plan) = network_a();
    let bits = match plan.steps[0].kind {
        StepKind::LiftInput { bits } => bits,
        ref k => panic!("the plan starts with {k:?}, not the input lift"),
    };
    // Pixels in [0, 1] with 16 fractional bits: 2^17 > 65,536 = 1.0.
    assert_eq!(bits, 18);
    let mut prg = Prg::from_os().expect("os rng");
    let batch = 3;
    let n = batch * plan.input_len;
    for private in [true, false] {
        let weights = share_weights(&plan, private).expect("os rng");
        // Three kinds of malicious input: any 64-bit values, values just past the bound, and
        // huge values of either sign.
        let raw = prg.vec_u64(n);
        let cases: [Vec<u64>; 3] = [
            raw.clone(),
            raw.iter().map(|v| (1u64 << 16) + (v >> 46)).collect(),
            raw.iter()
                .map(|v| {
                    if v & 1 == 0 {
                        v >> 2
                    } else {
                        (v >> 2).wrapping_neg()
                    }
                })
                .collect(),
        ];
        for x in cases {
            let run = run_in_process(&plan, [&plan, &plan], &weights, &x, batch)
                .unwrap_or_else(|e| panic!("private run failed: {e}"));
            let twin = plan.eval_fixed(&x, batch).expect("twin");
            assert_eq!(
                run.output, twin,
                "private = twin for out-of-range inputs ({private})"
            );
            // The twin is the model on the wrapped input.
            let wrapped = sotto_core::plain::lift(&x, bits);
            assert!(wrapped
                .iter()
                .all(|v| (*v as i64).unsigned_abs() <= 1 << (bits - 1)));
            assert_eq!(plan.eval_fixed(&wrapped, batch).expect("twin"), twin);
        }
    }
}

/// The control: without the lift, the same kind of input makes the private result differ from
/// the twin (a reduced-width comparison returns a wrong sign), which is what the lift prevents.
#[test]
fn without_the_lift_out_of_range_inputs_break_the_comparisons() {
    let (_, mut plan) = network_a();
    plan.steps = sotto_model::plan::without_lift(&plan.steps);
    let mut prg = Prg::from_os().expect("os rng");
    let batch = 3;
    let x = prg.vec_u64(batch * plan.input_len);
    let weights = share_weights(&plan, true).expect("os rng");
    let run = run_in_process(&plan, [&plan, &plan], &weights, &x, batch).expect("runs");
    assert_ne!(run.output, plan.eval_fixed(&x, batch).expect("twin"));
}

#[test]
fn honest_inputs_are_unchanged_by_the_lift() {
    let (model, plan) = network_a();
    let fp = plan.fp;
    let mut prg = Prg::from_os().expect("os rng");
    let x: Vec<f32> = prg
        .vec_u64(2 * plan.input_len)
        .iter()
        .map(|v| (*v >> 40) as f32 / (1u64 << 24) as f32)
        .collect();
    let enc = fp.encode_f32(&x).expect("in range");
    let StepKind::LiftInput { bits } = plan.steps[0].kind else {
        panic!("no lift")
    };
    assert_eq!(sotto_core::plain::lift(&enc, bits), enc);
    let float = model.forward(&x, 2).expect("float");
    let fixed = plan.eval_fixed(&enc, 2).expect("twin");
    for (a, b) in fixed.iter().zip(&float) {
        let v = sotto_core::fixed::decode_with(*a, plan.out_frac);
        assert!((v - b).abs() < 1e-2, "{v} vs {b}");
    }
}

/// With public weights there is no secret the range protects: the files of a public-weights
/// set have no lift step (one round and half the helper material saved); private ones do.
#[test]
fn only_private_weight_sets_carry_the_lift() {
    use sotto_model::files::{make_set, read_file, Role};
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/network_a.onnx");
    let bytes = std::fs::read(path).expect("model");
    let (_, plan) = network_a();
    for private in [true, false] {
        let files = make_set(&plan, &bytes, private).expect("set");
        for (data, role) in files.iter().zip([Role::P0, Role::P1, Role::Helper]) {
            let f = read_file(data, role).expect("reads");
            let lifted = matches!(f.plan.steps[0].kind, StepKind::LiftInput { .. });
            assert_eq!(lifted, private, "{role:?}, private weights: {private}");
        }
    }
    let public = plan.clone().for_weights(false);
    assert_eq!(public.steps.len() + 1, plan.steps.len());
    let rounds = |p: &Plan, private: bool| -> u32 {
        (0..p.steps.len())
            .map(|i| p.steps[i].cost(p.step_input_len(i), private).rounds)
            .sum()
    };
    assert_eq!(rounds(&public, false) + 1, rounds(&plan, false));
}

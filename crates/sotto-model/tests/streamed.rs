//! Streamed sessions: the helper deals alongside the servers and stays at most a window of
//! material ahead of them. The output is still the fixed-point twin's, bit for bit, and the
//! material sent ahead stays within the window plus one step's.

use std::path::PathBuf;

use sotto_core::fixed::FixedPoint;
use sotto_core::prg::Prg;
use sotto_model::private::{run_in_process, run_in_process_with, share_weights};
use sotto_model::{import, Plan};

fn model(name: &str) -> Plan {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../models/{name}.onnx"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let m = import(&bytes).expect("imports");
    Plan::new(&m, FixedPoint::default(), 1.0).expect("fits the ring")
}

fn random_inputs(plan: &Plan, batch: usize) -> Vec<u64> {
    let mut prg = Prg::from_os().expect("os rng");
    let x: Vec<f32> = prg
        .vec_u64(batch * plan.input_len)
        .iter()
        .map(|v| (*v >> 40) as f32 / (1u64 << 24) as f32)
        .collect();
    plan.fp.encode_f32(&x).expect("in range")
}

#[test]
fn streamed_sessions_give_the_twins_output_within_their_window() {
    for (name, private, batch) in [
        ("network_a", true, 3),
        ("cnn", true, 2),
        ("cnn", false, 2),
        ("logistic", true, 4),
    ] {
        let plan = model(name).for_weights(private);
        let x = random_inputs(&plan, batch);
        let weights = share_weights(&plan, private).expect("os rng");
        let twin = plan.eval_fixed(&x, batch).expect("fits");
        let whole = plan.material_per_input(private) * batch as u64;
        // (plus the keys' batch headers: 16 bytes per key batch, a few per step)
        let largest = plan.largest_step_material(private) * batch as u64 + 256;
        for window in [0usize, 4096, (whole / 3) as usize] {
            let run = run_in_process_with(&plan, [&plan, &plan], &weights, &x, batch, Some(window))
                .unwrap_or_else(|e| panic!("{name}: streamed run failed: {e}"));
            assert_eq!(
                run.output, twin,
                "{name} (window {window}): the streamed output differs from the twin"
            );
            assert!(
                run.peak_ahead as u64 <= window as u64 + largest,
                "{name}: {} bytes ahead with a window of {window} and a largest step of {largest}",
                run.peak_ahead
            );
            assert!(run.peak_ahead > 0, "{name}: nothing was dealt ahead?");
        }
        // Not streamed: the same output, nothing measured ahead.
        let run = run_in_process(&plan, [&plan, &plan], &weights, &x, batch).expect("runs");
        assert_eq!(run.output, twin);
        assert_eq!(run.peak_ahead, 0);
        // The window holds back: with the whole session allowed, the helper runs ahead by
        // more than a small window lets it.
        let small = run_in_process_with(&plan, [&plan, &plan], &weights, &x, batch, Some(0))
            .expect("runs")
            .peak_ahead;
        assert!(
            small as u64 <= largest,
            "{name}: window 0 still let {small} bytes ahead (largest step {largest})"
        );
    }
}

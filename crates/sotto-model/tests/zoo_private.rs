//! Every zoo model that lowers to the layer chain runs privately (three parties in process,
//! private weights) on its 16 fixture inputs: the private result equals the fixed-point twin
//! bit for bit, every label equals TensorFlow's (but where TensorFlow's own decision is a
//! near-tie, within twice the error), and the largest output error against TensorFlow stays
//! within 1 % of the output's range. A model whose weights would lose
//! precision is refused by the plan with the `--frac-bits` to use, and runs with it.

use std::path::PathBuf;

use sotto_core::fixed::{decode_with, FixedPoint};
use sotto_model::private::{run_in_process, share_weights};
use sotto_model::{import, Plan};

fn zoo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/zoo")
}

fn npy(path: &PathBuf) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    npyz::NpyFile::new(&bytes[..])
        .and_then(|f| f.into_vec::<f32>())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn argmax(row: &[f64]) -> usize {
    (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b })
}

#[test]
fn lowering_zoo_models_run_privately_and_agree_with_tensorflow() {
    let dir = zoo_dir();
    let zoo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("zoo.json")).expect("zoo.json"))
            .expect("JSON");
    let mut ran = 0;
    let mut failures = Vec::new();
    println!("\n| model | frac bits | labels = TF | max abs(private − TF) | max abs(TF) | ms per input (in process, dealing included) | rounds | online B / server | helper B / server |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for m in zoo["models"].as_array().expect("models") {
        let name = m["name"].as_str().expect("name");
        let Ok(model) = import(&std::fs::read(dir.join(format!("{name}.onnx"))).expect("onnx"))
        else {
            continue; // not lowered yet (tests/graph.rs checks the refusal)
        };
        let bound = m["input_bound"].as_f64().unwrap_or(1.0);
        let mut f = 16;
        let plan = loop {
            match Plan::new(&model, FixedPoint::new(f).expect("valid"), bound) {
                Ok(p) => break p,
                Err(e) if e.to_string().contains("significant bits") && f < 24 => {
                    let need: u32 = e
                        .to_string()
                        .split("--frac-bits ")
                        .nth(1)
                        .and_then(|t| t.split(' ').next())
                        .and_then(|t| t.parse().ok())
                        .unwrap_or_else(|| panic!("{name}: no --frac-bits in {e}"));
                    assert!(need > f, "{name}: {e}");
                    f = need;
                }
                Err(e) => panic!("{name}: {e}"),
            }
        };
        let x = npy(&dir.join(format!("{name}_inputs.npy")));
        let logits = dir.join(format!("{name}_tf_logits.npy"));
        let tf = npy(&if logits.exists() {
            logits
        } else {
            dir.join(format!("{name}_tf.npy"))
        });
        let batch = x.len() / plan.input_len;
        let enc = plan.fp.encode_f32(&x).expect("in range");
        let weights = share_weights(&plan, true).expect("os rng");
        let t = std::time::Instant::now();
        let run = run_in_process(&plan, [&plan, &plan], &weights, &enc, batch)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ms = t.elapsed().as_secs_f64() * 1e3 / batch as f64;
        let (mut rounds, mut online, mut helper) = (0, 0, 0);
        for (i, st) in plan.steps.iter().enumerate() {
            let c = st.cost(plan.step_input_len(i), true);
            rounds += c.rounds;
            online += c.online_bytes;
            helper += c.helper_bytes;
        }
        if run.output != plan.eval_fixed(&enc, batch).expect("twin") {
            failures.push(format!("{name}: private differs from the twin"));
        }
        let out: Vec<f64> = run
            .output
            .iter()
            .map(|v| decode_with(*v, plan.out_frac))
            .collect();
        let cols = plan.output_len;
        let err = out
            .iter()
            .zip(&tf)
            .fold(0f64, |a, (p, t)| a.max((p - f64::from(*t)).abs()));
        let range = tf.iter().fold(0f64, |a, t| a.max(f64::from(*t).abs()));
        // A label may differ only where TensorFlow's own decision is a near-tie: its margin
        // (top two logits, or the distance of a sigmoid from 0.5) within twice the error.
        let (mut same, mut ties) = (0, 0);
        for b in 0..batch {
            let p = &out[b * cols..(b + 1) * cols];
            let t: Vec<f64> = tf[b * cols..(b + 1) * cols]
                .iter()
                .map(|v| f64::from(*v))
                .collect();
            let (agree, margin) = if cols == 1 {
                ((p[0] > 0.5) == (t[0] > 0.5), (t[0] - 0.5).abs())
            } else {
                let top = argmax(&t);
                let second = (0..cols)
                    .filter(|&j| j != top)
                    .map(|j| t[j])
                    .fold(f64::NEG_INFINITY, f64::max);
                (argmax(p) == top, t[top] - second)
            };
            if agree {
                same += 1;
            } else if margin <= 2.0 * err {
                ties += 1;
            }
        }
        println!("| {name} | {f} | {same}/{batch} ({ties} near-ties) | {err:.2e} | {range:.2} | {ms:.2} | {rounds} | {online} | {helper} |");
        if same + ties != batch {
            failures.push(format!("{name}: {same}/{batch} labels equal TensorFlow's"));
        }
        if err > 0.01 * (1.0 + range) {
            failures.push(format!("{name}: max error {err:.3e} vs TensorFlow"));
        }
        ran += 1;
    }
    assert!(ran >= 10, "only {ran} zoo models lowered");
    assert!(failures.is_empty(), "{failures:#?}");
}

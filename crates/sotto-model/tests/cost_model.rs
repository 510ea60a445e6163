//! The cost model ([`Step::cost`], what `sotto inspect` prints and admission control weighs
//! requests by) agrees with what the protocols actually send: per step, the helper material
//! P1 receives (the larger share: P0's dealt values come from its seed) is the predicted
//! `helper_bytes`; per prediction, the openings between the servers are the predicted rounds
//! and their bytes the predicted online bytes. The same with the opt-in "fewer rounds"
//! setting, whose fused ReLU-and-dense gates ([`Plan::step_costs`]) are checked as one gate,
//! and with the opt-in compact comparisons (one-bit keys for max pools).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use sotto_core::fixed::FixedPoint;
use sotto_core::local::block_on;
use sotto_core::prg::Prg;
use sotto_core::session::Dealer;
use sotto_core::transport::{memory_mesh, Counting, PartyId};
use sotto_model::plan::Step;
use sotto_model::private::{deal_load, deal_predict, run_in_process_with, share_weights};
use sotto_model::{import, Plan};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn plan_of(path: &str, frac_bits: u32) -> Plan {
    let bytes = std::fs::read(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let model = import(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
    Plan::new(&model, FixedPoint::new(frac_bits).expect("valid"), 1.0)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The plans checked: the bundled models and zoo models covering every kind of step, the
/// ones with a ReLU feeding a dense layer again with the "fewer rounds" setting, and two with
/// max pools again with compact comparisons.
fn plans() -> Vec<(&'static str, Plan)> {
    vec![
        (
            "network_a, fewer rounds",
            plan_of("models/network_a.onnx", 16).with_fewer_rounds(true),
        ),
        (
            "cnn, fewer rounds",
            plan_of("models/cnn.onnx", 16).with_fewer_rounds(true),
        ),
        (
            "dense_bn, fewer rounds",
            plan_of("tests/fixtures/zoo/dense_bn.onnx", 16).with_fewer_rounds(true),
        ),
        (
            "mini_resnet, fewer rounds",
            plan_of("tests/fixtures/zoo/mini_resnet.onnx", 16).with_fewer_rounds(true),
        ),
        (
            "cnn, compact comparisons",
            plan_of("models/cnn.onnx", 16).with_compact_comparisons(true),
        ),
        (
            "padded_pool, compact comparisons",
            plan_of("tests/fixtures/zoo/padded_pool.onnx", 16).with_compact_comparisons(true),
        ),
        ("network_a", plan_of("models/network_a.onnx", 16)),
        ("cnn", plan_of("models/cnn.onnx", 16)),
        ("logistic", plan_of("models/logistic.onnx", 16)),
        (
            "mini_mobilenet",
            plan_of("tests/fixtures/zoo/mini_mobilenet.onnx", 16),
        ),
        (
            "padded_pool",
            plan_of("tests/fixtures/zoo/padded_pool.onnx", 16),
        ),
        (
            "mlp_mixed_act",
            plan_of("tests/fixtures/zoo/mlp_mixed_act.onnx", 16),
        ),
        (
            "sigmoid_end",
            plan_of("tests/fixtures/zoo/sigmoid_end.onnx", 16),
        ),
        (
            "mini_resnet",
            plan_of("tests/fixtures/zoo/mini_resnet.onnx", 16),
        ),
        ("concat", plan_of("tests/fixtures/zoo/concat.onnx", 16)),
    ]
}

fn kind_name(s: &Step) -> String {
    format!("{:?}", s.kind)
        .split([' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// What the helper sends P1 for each step of `plan` (batch `batch`), material only: each step
/// dealt alone, as a one-step plan, in a session whose servers never answer (a session that
/// is not streamed does not wait for them); a fused (ReLU, dense) pair dealt as a two-step
/// plan, all of it counted at the ReLU's step and none at the dense step's. The flag byte
/// heading each gate's message is framing, not material.
fn dealt_per_step(plan: &Plan, private: bool, batch: usize) -> Vec<u64> {
    let pairs = if private {
        plan.relu_dense_pairs()
    } else {
        Vec::new()
    };
    let [p0, p1, h, _c] = memory_mesh();
    let h = Arc::new(Counting::new(h));
    let counters = h.counters();
    let out = block_on(async {
        let mut d = Dealer::start(h.clone(), 7).await.expect("starts");
        let loaded = deal_load(&mut d, plan, private).await.expect("loads");
        let mut per_step = Vec::new();
        for (i, st) in plan.steps.iter().enumerate() {
            let steps = if let Some((_, j)) = pairs.iter().find(|(r, _)| *r == i) {
                let relu = Step {
                    inputs: vec![0],
                    ..st.clone()
                };
                let dense = Step {
                    inputs: vec![1],
                    ..plan.steps[*j].clone()
                };
                vec![relu, dense]
            } else if pairs.iter().any(|(_, d)| *d == i) {
                per_step.push(0);
                continue;
            } else {
                vec![st.clone()]
            };
            let one = Plan {
                steps,
                ..plan.clone()
            };
            assert_eq!(
                one.relu_dense_pairs().len(),
                usize::from(one.steps.len() == 2),
                "the two-step plan of a fused pair fuses it"
            );
            let before = counters.snapshot();
            deal_predict(&mut d, &one, &loaded, batch)
                .await
                .expect("deals");
            let sent = counters.snapshot().since(&before);
            per_step.push(sent.bytes_to(PartyId::P1) - sent.messages_to(PartyId::P1));
        }
        per_step
    });
    drop((p0, p1));
    out
}

#[test]
fn predicted_helper_material_is_what_the_dealer_sends_per_step() {
    let mut kinds = BTreeSet::new();
    for (name, plan) in plans() {
        for private in [true, false] {
            let plan = plan.clone().for_weights(private);
            let one = dealt_per_step(&plan, private, 1);
            let three = dealt_per_step(&plan, private, 3);
            let costs = plan.step_costs(private);
            let pairs = plan.relu_dense_pairs();
            if !pairs.is_empty() {
                kinds.insert("ReluDense".to_string());
            }
            if name.starts_with("network_a, fewer") {
                assert_eq!(pairs.len(), usize::from(private) * 2, "{name}");
            }
            for (i, st) in plan.steps.iter().enumerate() {
                kinds.insert(kind_name(st));
                let c = costs[i];
                // A step on its own is costed without the plan's settings.
                if !pairs.iter().any(|(r, d)| *r == i || *d == i) && !plan.compact_comparisons {
                    assert_eq!(
                        c,
                        st.cost(plan.step_input_len(i), private),
                        "{name}: step {i}"
                    );
                }
                let at = format!(
                    "{name} (private weights: {private}), step {i} {:?}",
                    st.kind
                );
                // Per element, exactly: two more examples cost twice the prediction more.
                assert_eq!(
                    three[i] - one[i],
                    2 * c.helper_bytes,
                    "{at}: per-element material"
                );
                // Per gate, a constant the model leaves out: each DCF key batch's length
                // prefix and header, 16 bytes, at most one batch per round.
                let framing = one[i] - c.helper_bytes;
                assert!(
                    framing.is_multiple_of(16) && framing <= 16 * u64::from(c.rounds),
                    "{at}: {} bytes dealt for {} predicted ({} rounds)",
                    one[i],
                    c.helper_bytes,
                    c.rounds
                );
            }
        }
    }
    for k in [
        "LiftInput",
        "Dense",
        "Conv",
        "MaxPool",
        "AvgPool",
        "AvgPoolPadded",
        "Truncate",
        "Relu",
        "Clip",
        "Sigmoid",
        "Piecewise",
        "Pad",
        "Add",
        "Concat",
        "Transpose",
        "ReluDense",
    ] {
        assert!(
            kinds.contains(k),
            "no {k} step among the plans checked: {kinds:?}"
        );
    }
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
fn predicted_rounds_and_online_bytes_are_the_openings_sent() {
    for (name, plan) in plans() {
        for (private, window) in [(true, None), (false, None), (true, Some(1 << 16))] {
            let plan = plan.clone().for_weights(private);
            let batch = 2;
            let x = random_inputs(&plan, batch);
            let weights = share_weights(&plan, private).expect("os rng");
            let run = run_in_process_with(&plan, [&plan, &plan], &weights, &x, batch, window)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                run.output,
                plan.eval_fixed(&x, batch).expect("twin"),
                "{name}: private output differs from the twin"
            );
            // Loading private weights opens `W − B` once per tensor; in either mode the
            // helper's word of protocol settings is opened.
            let (load_rounds, load_bytes) = if private {
                let lens = plan.weight_lens();
                (
                    lens.len() as u64 + 1,
                    lens.iter().map(|l| 8 * *l as u64).sum::<u64>() + 8,
                )
            } else {
                (1, 8)
            };
            let (mut rounds, mut online) = (0u64, 0u64);
            for c in plan.step_costs(private) {
                rounds += u64::from(c.rounds);
                online += c.online_bytes * batch as u64;
            }
            for (server, peer) in [(0, PartyId::P1), (1, PartyId::P0)] {
                let sent = run.sent[server];
                assert_eq!(
                    sent.messages_to(peer),
                    load_rounds + rounds,
                    "{name} (private weights: {private}, window {window:?}): rounds of P{server}"
                );
                assert_eq!(
                    sent.bytes_to(peer),
                    load_bytes + online,
                    "{name} (private weights: {private}, window {window:?}): online bytes of P{server}"
                );
            }
        }
    }
}

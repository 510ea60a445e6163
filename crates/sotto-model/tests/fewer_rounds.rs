//! The opt-in "fewer rounds" setting ([`Plan::fewer_rounds`]): a truncating ReLU whose output
//! only a private dense layer reads runs with that layer's product as one gate
//! (`Gate::ReluDense`). Private predictions equal the plaintext twin and the plan without the
//! setting bit for bit, in fewer rounds; parties whose files disagree on it are refused.

mod common;

use proptest::prelude::*;
use sotto_core::fixed::FixedPoint;
use sotto_core::prg::Prg;
use sotto_core::transport::PartyId;
use sotto_model::files::{make_set, read_file, Role};
use sotto_model::interp::Gate;
use sotto_model::ir::{Dim, Layer, Model, Named};
use sotto_model::private::{run_in_process, share_weights};
use sotto_model::{import, Plan};

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn network_a() -> (Vec<u8>, Plan) {
    let bytes = std::fs::read(root().join("models/network_a.onnx")).expect("bundled model");
    let model = import(&bytes).expect("imports");
    let plan = Plan::new(&model, FixedPoint::default(), 1.0).expect("plans");
    (bytes, plan)
}

/// `batch` inputs with values in [−1, 1] (the input bound), the edges −1, 0, 1 among them.
fn inputs(plan: &Plan, batch: usize, prg: &mut Prg) -> Vec<u64> {
    let x: Vec<f32> = prg
        .vec_u64(batch * plan.input_len)
        .iter()
        .enumerate()
        .map(|(i, v)| match i % 11 {
            0 => 1.0,
            1 => -1.0,
            2 => 0.0,
            _ => ((*v >> 40) as f32 / (1u64 << 23) as f32) - 1.0,
        })
        .collect();
    plan.fp.encode_f32(&x).expect("in range")
}

fn rounds(plan: &Plan, private: bool) -> u32 {
    plan.step_costs(private).iter().map(|c| c.rounds).sum()
}

/// A private prediction of `plan` (all three parties with the same plan) on `x`: its output
/// and the messages P0 sent P1 (the rounds, loading included).
fn private_run(plan: &Plan, x: &[u64], batch: usize) -> (Vec<u64>, u64) {
    let w = share_weights(plan, true).expect("os rng");
    let run = run_in_process(plan, [plan, plan], &w, x, batch).expect("runs");
    (run.output, run.sent[0].messages_to(PartyId::P1))
}

#[test]
fn network_a_runs_in_six_rounds_with_the_same_outputs() {
    let (_, plan) = network_a();
    let fewer = plan.clone().with_fewer_rounds(true);
    assert_eq!(plan.relu_dense_pairs(), vec![]);
    assert_eq!(fewer.relu_dense_pairs().len(), 2, "both hidden ReLUs fuse");
    assert_eq!(rounds(&plan, true), 8);
    assert_eq!(rounds(&fewer, true), 6);
    // Public weights: nothing to save, the setting is off.
    let public = fewer.clone().for_weights(false);
    assert!(!public.fewer_rounds);
    assert_eq!(
        rounds(&public, false),
        rounds(&plan.clone().for_weights(false), false)
    );

    let mut prg = Prg::from_os().expect("os rng");
    for batch in [1, 3] {
        let x = inputs(&plan, batch, &mut prg);
        let twin = plan.eval_fixed(&x, batch).expect("twin");
        assert_eq!(fewer.eval_fixed(&x, batch).expect("twin"), twin);
        let (out, msgs) = private_run(&plan, &x, batch);
        let (out_fewer, msgs_fewer) = private_run(&fewer, &x, batch);
        assert_eq!(out, twin, "batch {batch}: default plan");
        assert_eq!(out_fewer, twin, "batch {batch}: fewer rounds");
        // Loading: three weight openings and the settings word; then the prediction.
        assert_eq!(msgs, 4 + 8);
        assert_eq!(msgs_fewer, 4 + 6);
    }

    // The material: the products of the seven dealt words with the mask's rows, instead of
    // the two Beaver products' C.
    let extra = fewer.material_per_input(true) - plan.material_per_input(true);
    assert_eq!(extra, 56 * (128 * 128 + 128 * 10) - 8 * (128 + 10));
}

#[test]
fn the_setting_is_carried_by_the_files_of_a_set() {
    let (bytes, plan) = network_a();
    let fewer = plan.clone().with_fewer_rounds(true);
    let files = make_set(&fewer, &bytes, true).expect("set");
    for (role, data) in [Role::P0, Role::P1, Role::Helper].into_iter().zip(&files) {
        let f = read_file(data, role).expect("reads");
        assert!(f.plan.fewer_rounds, "{role:?}");
        assert_eq!(f.plan.relu_dense_pairs().len(), 2, "{role:?}");
    }
    // Public weights: the files never carry it.
    let files = make_set(&fewer, &bytes, false).expect("set");
    for (role, data) in [Role::P0, Role::P1, Role::Helper].into_iter().zip(&files) {
        assert!(!read_file(data, role).expect("reads").plan.fewer_rounds);
    }
    // Default sets do not carry it either.
    let files = make_set(&plan, &bytes, true).expect("set");
    assert!(
        !read_file(&files[2], Role::Helper)
            .expect("reads")
            .plan
            .fewer_rounds
    );
}

#[test]
fn parties_whose_files_disagree_on_the_setting_are_refused() {
    let (_, plan) = network_a();
    let fewer = plan.clone().with_fewer_rounds(true);
    let w = share_weights(&plan, true).expect("os rng");
    let mut prg = Prg::from_os().expect("os rng");
    let x = inputs(&plan, 1, &mut prg);
    // Loading alone: each server that disagrees with the helper says why.
    for (helper, servers) in [
        (&fewer, [&plan, &plan]),
        (&plan, [&fewer, &fewer]),
        (&fewer, [&plan, &fewer]),
        (&plan, [&plan, &fewer]),
    ] {
        let errors = common::load_errors(helper, servers, &w, true);
        for (i, e) in errors.into_iter().enumerate() {
            if servers[i].fewer_rounds == helper.fewer_rounds {
                assert_eq!(e, None);
            } else {
                let e = e.expect("refused");
                assert!(
                    e.contains("fewer rounds") && e.contains("share-model"),
                    "{e}"
                );
            }
        }
    }
    // A whole prediction: refused, never a hang or another answer.
    for servers in [
        [&fewer, &plan],
        [&plan, &fewer],
        [&plan, &plan],
        [&fewer, &fewer],
    ] {
        assert!(
            run_in_process(&fewer, servers, &w, &x, 1).is_err() != (servers == [&fewer, &fewer])
        );
        assert!(run_in_process(&plan, servers, &w, &x, 1).is_err() != (servers == [&plan, &plan]));
    }
}

/// A dense layer of random weights (at most 1 in magnitude, the first 1, so that a plan with
/// 12 fractional bits keeps them) reading `input`.
fn dense(i: usize, o: usize, input: usize, prg: &mut Prg) -> Named {
    let scale = 1.0 / (i as f32).sqrt();
    let w: Vec<f32> = prg
        .vec_u64(i * o)
        .iter()
        .enumerate()
        .map(|(j, v)| {
            if j == 0 {
                1.0
            } else {
                ((*v >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            }
        })
        .collect();
    let b: Vec<f32> = prg
        .vec_u64(o)
        .iter()
        .map(|v| ((*v >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2)
        .collect();
    Named {
        node: format!("dense{input}"),
        layer: Layer::Dense {
            inputs: i,
            outputs: o,
            weights: w,
            bias: b,
        },
        out_shape: vec![Dim::Batch, Dim::Fixed(o)],
        inputs: vec![input],
    }
}

fn relu(n: usize, input: usize) -> Named {
    Named {
        node: format!("relu{input}"),
        layer: Layer::Relu,
        out_shape: vec![Dim::Batch, Dim::Fixed(n)],
        inputs: vec![input],
    }
}

/// A chain of dense layers of `sizes`, with a ReLU after the hidden ones where `relus` says;
/// with `branch`, the first hidden ReLU is also read by a second dense layer whose output is
/// added to the next layer's (that ReLU then has two readers and must not fuse).
fn mlp(sizes: &[usize], relus: &[bool], branch: bool, prg: &mut Prg) -> (Model, usize) {
    let mut layers = Vec::new();
    let mut cur = 0;
    let mut fusable = 0;
    let mut branched = false;
    let mut l = 0;
    while l + 1 < sizes.len() {
        let (i, o) = (sizes[l], sizes[l + 1]);
        layers.push(dense(i, o, cur, prg));
        cur = layers.len();
        if l + 2 < sizes.len() && relus[l] {
            layers.push(relu(o, cur));
            cur = layers.len();
            if branch && !branched {
                // Two dense layers read this ReLU, their outputs are added: no fusion.
                branched = true;
                let o2 = sizes[l + 2];
                layers.push(dense(o, o2, cur, prg));
                let main = layers.len();
                layers.push(dense(o, o2, cur, prg));
                let side = layers.len();
                layers.push(Named {
                    node: format!("add{main}"),
                    layer: Layer::Add,
                    out_shape: vec![Dim::Batch, Dim::Fixed(o2)],
                    inputs: vec![main, side],
                });
                cur = layers.len();
                l += 2;
                continue;
            }
            // The dense layer after a truncating ReLU is its only reader: they fuse.
            fusable += 1;
        }
        l += 1;
    }
    let model = Model {
        input_name: "x".into(),
        input_shape: vec![Dim::Batch, Dim::Fixed(sizes[0])],
        layers,
        softmax_at_client: false,
        output_name: "y".into(),
    };
    (model, fusable)
}

fn cfg() -> ProptestConfig {
    ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cfg())]

    #[test]
    fn random_mlps_give_the_twin_in_fewer_rounds(
        sizes in prop::collection::vec(1usize..24, 3..6),
        relus in prop::collection::vec(prop::bool::weighted(0.8), 5),
        branch in prop::bool::weighted(0.3),
        frac in prop_oneof![Just(16u32), Just(12u32), Just(19u32)],
        batch in 1usize..4,
    ) {
        let mut prg = Prg::from_os().expect("os rng");
        let (model, fusable) = mlp(&sizes, &relus, branch, &mut prg);
        let plan = Plan::new(&model, FixedPoint::new(frac).expect("valid"), 1.0)
            .expect("plans");
        let fewer = plan.clone().with_fewer_rounds(true);
        let pairs = fewer.relu_dense_pairs();
        prop_assert_eq!(pairs.len(), fusable);
        for (r, d) in &pairs {
            let ok = matches!(fewer.steps[*r].gate(1, frac), Ok(Gate::Relu { shift, .. }) if shift > 0);
            prop_assert!(ok, "step {} is a truncating ReLU", r);
            prop_assert_eq!(&fewer.steps[*d].inputs, &vec![r + 1]);
        }
        prop_assert_eq!(rounds(&fewer, true) + fusable as u32, rounds(&plan, true));
        let x = inputs(&plan, batch, &mut prg);
        let twin = plan.eval_fixed(&x, batch).expect("twin");
        prop_assert_eq!(&fewer.eval_fixed(&x, batch).expect("twin"), &twin);
        let (out, msgs) = private_run(&fewer, &x, batch);
        prop_assert_eq!(&out, &twin);
        let load = plan.weight_lens().len() as u64 + 1;
        prop_assert_eq!(msgs, load + u64::from(rounds(&fewer, true)));
    }
}

//! The opt-in "compact comparisons" setting ([`Plan::compact_comparisons`]): max pools and
//! ReLUs without a truncation compare with one-bit keys, one more round per comparison (per
//! max-tree level). Private predictions equal the plaintext twin and the default plan bit for
//! bit, with both weights modes, in the predicted rounds and with less helper material; the
//! files of a set carry the setting, and parties whose files disagree on it are refused.
//! The setting also moves a ReLU behind a non-overlapping max pool after it
//! ([`Plan::pool_first`]), with the same numbers bit for bit.

mod common;

use proptest::prelude::*;
use sotto_core::fixed::FixedPoint;
use sotto_core::prg::Prg;
use sotto_core::protocols::max_tree_rounds;
use sotto_core::transport::PartyId;
use sotto_model::files::{make_set, read_file, Role};
use sotto_model::ir::{ConvParams, Dim, Layer, Model, Named, PoolParams};
use sotto_model::plan::StepKind;
use sotto_model::private::{run_in_process, share_weights};
use sotto_model::{import, Plan};

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bundled_cnn() -> (Vec<u8>, Plan) {
    let bytes = std::fs::read(root().join("models/cnn.onnx")).expect("bundled model");
    let model = import(&bytes).expect("imports");
    let plan = Plan::new(&model, FixedPoint::default(), 1.0).expect("plans");
    (bytes, plan)
}

/// `batch` inputs with values in [−1, 1] (the input bound), the edges −1, 0, 1 among them and
/// runs of equal values (ties in a max pool's window).
fn inputs(plan: &Plan, batch: usize, prg: &mut Prg) -> Vec<u64> {
    let x: Vec<f32> = prg
        .vec_u64(batch * plan.input_len)
        .iter()
        .enumerate()
        .map(|(i, v)| match i % 13 {
            0 | 1 => 1.0,
            2 => -1.0,
            3 | 4 => 0.0,
            _ => ((*v >> 40) as f32 / (1u64 << 23) as f32) - 1.0,
        })
        .collect();
    plan.fp.encode_f32(&x).expect("in range")
}

fn rounds(plan: &Plan, private: bool) -> u32 {
    plan.step_costs(private).iter().map(|c| c.rounds).sum()
}

/// Rounds the setting adds to `plan`: one per max-tree level and per ReLU without a
/// truncation (a clip's two comparisons run as one gate).
fn added_rounds(plan: &Plan) -> u32 {
    plan.steps
        .iter()
        .map(|st| match st.kind {
            StepKind::MaxPool { params, .. } => {
                max_tree_rounds(params.kernel[0] * params.kernel[1])
            }
            StepKind::Relu { shift: 0, .. } | StepKind::Clip { shift: 0, .. } => 1,
            _ => 0,
        })
        .sum()
}

/// A private prediction (all three parties with `plan`, weights private or public) on `x`:
/// its output and the messages P0 sent P1 (loading included).
fn run(plan: &Plan, private: bool, x: &[u64], batch: usize) -> (Vec<u64>, u64) {
    let w = share_weights(plan, private).expect("os rng");
    let run = run_in_process(plan, [plan, plan], &w, x, batch).expect("runs");
    (run.output, run.sent[0].messages_to(PartyId::P1))
}

/// Messages P0 sends P1 while loading: one opening per private weight tensor, then the
/// helper's settings word.
fn load_messages(plan: &Plan, private: bool) -> u64 {
    if private {
        plan.weight_lens().len() as u64 + 1
    } else {
        1
    }
}

#[test]
fn the_bundled_cnn_gives_the_same_outputs_with_one_bit_pool_keys() {
    let (_, plan) = bundled_cnn();
    let compact = plan.clone().with_compact_comparisons(true);
    let added = added_rounds(&plan);
    assert!(added > 0, "the bundled CNN has a max pool");
    // Its first ReLU moved after the 2×2 pool.
    let kinds = |p: &Plan| -> Vec<&'static str> {
        p.steps
            .iter()
            .map(|st| match st.kind {
                StepKind::Relu { .. } => "relu",
                StepKind::MaxPool { .. } => "pool",
                _ => "-",
            })
            .filter(|k| *k != "-")
            .collect()
    };
    assert_eq!(kinds(&plan), ["relu", "pool", "relu"]);
    assert_eq!(kinds(&compact), ["pool", "relu", "relu"]);
    compact.validate().expect("a valid plan");
    let mut prg = Prg::from_os().expect("os rng");
    for private in [true, false] {
        let (plan, compact) = (
            plan.clone().for_weights(private),
            compact.clone().for_weights(private),
        );
        assert!(compact.compact_comparisons, "kept in either weights mode");
        assert_eq!(rounds(&compact, private), rounds(&plan, private) + added);
        assert!(
            compact.material_per_input(private) < plan.material_per_input(private),
            "one-bit keys are smaller"
        );
        for batch in [1, 2] {
            let x = inputs(&plan, batch, &mut prg);
            let twin = plan.eval_fixed(&x, batch).expect("twin");
            assert_eq!(compact.eval_fixed(&x, batch).expect("twin"), twin);
            let (out, msgs) = run(&plan, private, &x, batch);
            let (out_c, msgs_c) = run(&compact, private, &x, batch);
            assert_eq!(out, twin, "private {private}, batch {batch}: default plan");
            assert_eq!(out_c, twin, "private {private}, batch {batch}: compact");
            let load = load_messages(&plan, private);
            assert_eq!(msgs, load + u64::from(rounds(&plan, private)));
            assert_eq!(msgs_c, load + u64::from(rounds(&compact, private)));
        }
    }
}

#[test]
fn the_setting_is_carried_by_the_files_of_a_set() {
    let (bytes, plan) = bundled_cnn();
    let compact = plan.clone().with_compact_comparisons(true);
    for private in [true, false] {
        let files = make_set(&compact.clone().for_weights(private), &bytes, private).expect("set");
        for (role, data) in [Role::P0, Role::P1, Role::Helper].into_iter().zip(&files) {
            let f = read_file(data, role).expect("reads");
            assert!(f.plan.compact_comparisons, "{role:?}, private {private}");
        }
        let files = make_set(&plan.clone().for_weights(private), &bytes, private).expect("set");
        for (role, data) in [Role::P0, Role::P1, Role::Helper].into_iter().zip(&files) {
            let f = read_file(data, role).expect("reads");
            assert!(!f.plan.compact_comparisons, "{role:?}, private {private}");
        }
    }
}

#[test]
fn parties_whose_files_disagree_on_the_setting_are_refused() {
    let (_, plan) = bundled_cnn();
    let compact = plan.clone().with_compact_comparisons(true);
    let mut prg = Prg::from_os().expect("os rng");
    let x = inputs(&plan, 1, &mut prg);
    for private in [true, false] {
        let w = share_weights(&plan, private).expect("os rng");
        for (helper, servers) in [
            (&compact, [&plan, &plan]),
            (&plan, [&compact, &compact]),
            (&compact, [&plan, &compact]),
            (&plan, [&compact, &plan]),
        ] {
            // Loading alone: each server that disagrees with the helper says why.
            let errors = common::load_errors(helper, servers, &w, private);
            for (i, e) in errors.into_iter().enumerate() {
                if servers[i].compact_comparisons == helper.compact_comparisons {
                    assert_eq!(e, None);
                } else {
                    let e = e.expect("refused");
                    assert!(
                        e.contains("compact comparisons") && e.contains("share-model"),
                        "private {private}: {e}"
                    );
                }
            }
            // A whole prediction: refused, never a hang or another answer.
            assert!(run_in_process(helper, servers, &w, &x, 1).is_err());
        }
    }
}

/// A max pool of random geometry over the input (`c` channels of `h × w`), a ReLU after it
/// (no truncation: the pool keeps the input's scale), or before it when `relu_first`, then a
/// dense layer of random weights to `outs` outputs.
fn pool_model(
    [c, h, w]: [usize; 3],
    kernel: [usize; 2],
    stride: [usize; 2],
    relu_first: bool,
    outs: usize,
    prg: &mut Prg,
) -> Model {
    let params = PoolParams {
        in_chw: [c, h, w],
        kernel,
        stride,
    };
    let (oh, ow) = (
        (h - kernel[0]) / stride[0] + 1,
        (w - kernel[1]) / stride[1] + 1,
    );
    let chw = |hh, ww| vec![Dim::Batch, Dim::Fixed(c), Dim::Fixed(hh), Dim::Fixed(ww)];
    let relu = |input: usize, shape: Vec<Dim>| Named {
        node: format!("relu{input}"),
        layer: Layer::Relu,
        out_shape: shape,
        inputs: vec![input],
    };
    let pool = |input: usize| Named {
        node: format!("pool{input}"),
        layer: Layer::MaxPool(params),
        out_shape: chw(oh, ow),
        inputs: vec![input],
    };
    let mut layers = if relu_first {
        vec![relu(0, chw(h, w)), pool(1)]
    } else {
        vec![pool(0), relu(1, chw(oh, ow))]
    };
    let feats = c * oh * ow;
    layers.push(Named {
        node: "flatten".into(),
        layer: Layer::Flatten,
        out_shape: vec![Dim::Batch, Dim::Fixed(feats)],
        inputs: vec![2],
    });
    let scale = 1.0 / (feats as f32).sqrt();
    let weights: Vec<f32> = prg
        .vec_u64(feats * outs)
        .iter()
        .enumerate()
        .map(|(j, v)| {
            // The first weight 1, so that 12 fractional bits keep every weight.
            if j == 0 {
                1.0
            } else {
                ((*v >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            }
        })
        .collect();
    layers.push(Named {
        node: "dense".into(),
        layer: Layer::Dense {
            inputs: feats,
            outputs: outs,
            weights,
            bias: vec![0.125; outs],
        },
        out_shape: vec![Dim::Batch, Dim::Fixed(outs)],
        inputs: vec![3],
    });
    Model {
        input_name: "x".into(),
        input_shape: chw(h, w),
        layers,
        softmax_at_client: false,
        output_name: "y".into(),
    }
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
    fn random_pools_and_untruncated_relus_give_the_twin(
        c in 1usize..3,
        h in 3usize..8,
        w in 3usize..8,
        kh in 1usize..4,
        kw in 2usize..4,
        sh in 1usize..3,
        sw in 1usize..3,
        relu_first in any::<bool>(),
        private in any::<bool>(),
        frac in prop_oneof![Just(16u32), Just(12u32)],
        batch in 1usize..4,
    ) {
        let (kh, kw) = (kh.min(h), kw.min(w));
        let mut prg = Prg::from_os().expect("os rng");
        let model = pool_model([c, h, w], [kh, kw], [sh, sw], relu_first, 3, &mut prg);
        let plan = Plan::new(&model, FixedPoint::new(frac).expect("valid"), 1.0)
            .expect("plans")
            .for_weights(private);
        let untruncated = plan
            .steps
            .iter()
            .filter(|st| matches!(st.kind, StepKind::Relu { shift: 0, .. }))
            .count();
        prop_assert_eq!(untruncated, 1, "the ReLU keeps the input's scale");
        let compact = plan.clone().with_compact_comparisons(true);
        prop_assert_eq!(
            rounds(&compact, private),
            rounds(&plan, private) + added_rounds(&plan)
        );
        let x = inputs(&plan, batch, &mut prg);
        let twin = plan.eval_fixed(&x, batch).expect("twin");
        let (out, msgs) = run(&compact, private, &x, batch);
        prop_assert_eq!(&out, &twin);
        prop_assert_eq!(
            msgs,
            load_messages(&plan, private) + u64::from(rounds(&compact, private))
        );
    }
}

/// A convolution (2 output channels, 3×3, padded by one) of `c` channels of `h × w`, a ReLU
/// (truncating: the product has `2f` bits), a max pool of the given geometry (its input
/// padded with `pad` bottom and right rows and columns of `pad_value` when `pad > 0`), then a
/// dense layer.
fn conv_relu_pool(
    [c, h, w]: [usize; 3],
    kernel: [usize; 2],
    stride: [usize; 2],
    (pad, pad_value): (usize, f32),
    prg: &mut Prg,
) -> Model {
    let o = 2;
    let chw = |cc, hh, ww| vec![Dim::Batch, Dim::Fixed(cc), Dim::Fixed(hh), Dim::Fixed(ww)];
    let rand = |n: usize, scale: f32, prg: &mut Prg| -> Vec<f32> {
        prg.vec_u64(n)
            .iter()
            .map(|v| ((*v >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale)
            .collect()
    };
    let (ph, pw) = (h + pad, w + pad);
    let (oh, ow) = (
        (ph - kernel[0]) / stride[0] + 1,
        (pw - kernel[1]) / stride[1] + 1,
    );
    let mut layers = vec![
        Named {
            node: "conv".into(),
            layer: Layer::Conv2d {
                shape: ConvParams {
                    in_chw: [c, h, w],
                    out_channels: o,
                    kernel: [3, 3],
                    stride: [1, 1],
                    pads: [1, 1, 1, 1],
                    group: 1,
                },
                weights: rand(o * c * 9, 0.5, prg),
                bias: rand(o, 0.25, prg),
            },
            out_shape: chw(o, h, w),
            inputs: vec![0],
        },
        Named {
            node: "relu".into(),
            layer: Layer::Relu,
            out_shape: chw(o, h, w),
            inputs: vec![1],
        },
    ];
    if pad > 0 {
        layers.push(Named {
            node: "pad".into(),
            layer: Layer::Pad {
                in_chw: [o, h, w],
                pads: [0, 0, pad, pad],
                value: pad_value,
            },
            out_shape: chw(o, ph, pw),
            inputs: vec![2],
        });
    }
    let n = layers.len();
    layers.push(Named {
        node: "pool".into(),
        layer: Layer::MaxPool(PoolParams {
            in_chw: [o, ph, pw],
            kernel,
            stride,
        }),
        out_shape: chw(o, oh, ow),
        inputs: vec![n],
    });
    let feats = o * oh * ow;
    layers.push(Named {
        node: "flatten".into(),
        layer: Layer::Flatten,
        out_shape: vec![Dim::Batch, Dim::Fixed(feats)],
        inputs: vec![n + 1],
    });
    layers.push(Named {
        node: "dense".into(),
        layer: Layer::Dense {
            inputs: feats,
            outputs: 3,
            weights: rand(feats * 3, 1.0 / (feats as f32).sqrt(), prg),
            bias: vec![0.125; 3],
        },
        out_shape: vec![Dim::Batch, Dim::Fixed(3)],
        inputs: vec![n + 2],
    });
    Model {
        input_name: "x".into(),
        input_shape: chw(c, h, w),
        layers,
        softmax_at_client: false,
        output_name: "y".into(),
    }
}

proptest! {
    #![proptest_config(cfg())]

    /// With the setting, a truncating ReLU behind a max pool whose windows do not overlap
    /// runs after the pool (padded with the pool's fill or zeros, or not padded), in the same
    /// rounds and with less helper material; behind an overlapping pool, or a padding above
    /// zero, it stays. Either way the plan computes the default plan's
    /// numbers bit for bit, and the private run equals that twin.
    #[test]
    fn relus_move_after_non_overlapping_pools_with_the_same_numbers(
        c in 1usize..3,
        h in 2usize..7,
        w in 2usize..7,
        kh in 1usize..4,
        kw in 1usize..4,
        dh in 0usize..3,
        dw in 0usize..3,
        pad in 0usize..2,
        pad_value in prop_oneof![Just(f32::NEG_INFINITY), Just(0.0f32), Just(0.5f32)],
        private in any::<bool>(),
        batch in 1usize..3,
    ) {
        let (kh, kw) = (kh.min(h).max(pad + 1), kw.min(w).max(pad + 1));
        // Strides one below the window (overlapping), equal to it or one above.
        let (sh, sw) = ((kh + dh).saturating_sub(1).max(1), (kw + dw).saturating_sub(1).max(1));
        let mut prg = Prg::from_os().expect("os rng");
        let model = conv_relu_pool([c, h, w], [kh, kw], [sh, sw], (pad, pad_value), &mut prg);
        let plan = Plan::new(&model, FixedPoint::default(), 1.0)
            .expect("plans")
            .for_weights(private);
        let compact = plan.clone().with_compact_comparisons(true);
        compact.validate().expect("a valid plan");
        let relu_at = |p: &Plan| {
            p.steps
                .iter()
                .position(|st| matches!(st.kind, StepKind::Relu { shift, .. } if shift > 0))
                .expect("a truncating ReLU")
        };
        let pool_at = |p: &Plan| {
            p.steps
                .iter()
                .position(|st| matches!(st.kind, StepKind::MaxPool { .. }))
                .expect("a pool")
        };
        prop_assert!(relu_at(&plan) < pool_at(&plan));
        let moved = relu_at(&compact) > pool_at(&compact);
        // Only behind windows that do not overlap, and only where it saves material: always
        // behind an unpadded 2×2 pool at stride 2 that covers the input.
        if moved {
            // A padding above zero would win over the ReLU's zeros: it stays in place.
            prop_assert!(sh >= kh && sw >= kw && (pad == 0 || pad_value <= 0.0));
            let mut unmoved = plan.clone();
            unmoved.compact_comparisons = true;
            prop_assert!(compact.material_per_input(private) < unmoved.material_per_input(private));
        }
        if (kh, kw, sh, sw, pad, h % 2, w % 2) == (2, 2, 2, 2, 0, 0, 0) {
            prop_assert!(moved);
        }
        prop_assert_eq!(
            rounds(&compact, private),
            rounds(&plan, private) + added_rounds(&plan)
        );
        let x = inputs(&plan, batch, &mut prg);
        let twin = plan.eval_fixed(&x, batch).expect("twin");
        prop_assert_eq!(&compact.eval_fixed(&x, batch).expect("twin"), &twin);
        let (out, msgs) = run(&compact, private, &x, batch);
        prop_assert_eq!(&out, &twin);
        prop_assert_eq!(
            msgs,
            load_messages(&plan, private) + u64::from(rounds(&compact, private))
        );
    }
}

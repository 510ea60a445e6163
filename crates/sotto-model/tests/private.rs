//! Private prediction of imported models against the plaintext fixed-point twin and the float
//! model, on random inputs.

use prost::Message;
use sotto_core::fixed::{decode_with, FixedPoint};
use sotto_core::prg::Prg;
use sotto_model::onnx::*;
use sotto_model::private::{run_in_process, share_weights};
use sotto_model::{import, Plan};

fn f32_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: Some(data_type::FLOAT),
        name: Some(name.into()),
        float_data: data.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(format!("{op}_{output}")),
        op_type: Some(op.into()),
        ..Default::default()
    }
}

fn io(name: &str, n: i64) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeTensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto {
                    dim: vec![
                        Dimension {
                            dim_value: None,
                            dim_param: Some("N".into()),
                        },
                        Dimension {
                            dim_value: Some(n),
                            dim_param: None,
                        },
                    ],
                }),
            }),
        }),
    }
}

/// Dense layers of `sizes` with `act` between them (Gemm with bias), random weights.
fn mlp(sizes: &[usize], act: &str, prg: &mut Prg) -> Vec<u8> {
    let mut nodes = Vec::new();
    let mut inits = Vec::new();
    let mut cur = "x".to_string();
    for l in 0..sizes.len() - 1 {
        let (i, o) = (sizes[l], sizes[l + 1]);
        let scale = (2.0 / i as f64).sqrt();
        let w: Vec<f32> = prg
            .vec_u64(i * o)
            .iter()
            .map(|v| (((*v >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale) as f32)
            .collect();
        let b: Vec<f32> = prg
            .vec_u64(o)
            .iter()
            .map(|v| ((*v >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2)
            .collect();
        inits.push(f32_tensor(&format!("w{l}"), &[i as i64, o as i64], &w));
        inits.push(f32_tensor(&format!("b{l}"), &[o as i64], &b));
        let out = format!("z{l}");
        nodes.push(node(
            "Gemm",
            &[&cur, &format!("w{l}"), &format!("b{l}")],
            &out,
        ));
        cur = out;
        if l + 2 < sizes.len() {
            let a = format!("a{l}");
            nodes.push(node(act, &[&cur], &a));
            cur = a;
        }
    }
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: None,
            version: Some(13),
        }],
        producer_name: None,
        producer_version: None,
        graph: Some(GraphProto {
            node: nodes,
            name: None,
            initializer: inits,
            input: vec![io("x", sizes[0] as i64)],
            output: vec![io(&cur, *sizes.last().unwrap_or(&1) as i64)],
        }),
    }
    .encode_to_vec()
}

fn check(sizes: &[usize], act: &str, private: bool, batch: usize) {
    let mut prg = Prg::from_os().expect("os rng");
    let bytes = mlp(sizes, act, &mut prg);
    check_model(&bytes, act, private, batch);
}

fn check_model(bytes: &[u8], act: &str, private: bool, batch: usize) {
    let mut prg = Prg::from_os().expect("os rng");
    let model = import(bytes).expect("imports");
    let fp = FixedPoint::default();
    let plan = Plan::new(&model, fp, 1.0).expect("fits the ring");
    let x: Vec<f32> = prg
        .vec_u64(batch * model.input_len())
        .iter()
        .map(|v| (*v >> 40) as f32 / (1u64 << 24) as f32)
        .collect();
    let x_enc = fp.encode_f32(&x).expect("in range");
    let weights = share_weights(&plan, private).expect("os rng");
    let run = run_in_process(&plan, [&plan, &plan], &weights, &x_enc, batch)
        .unwrap_or_else(|e| panic!("private run failed: {e}"));
    let private_out: Vec<f64> = run
        .output
        .iter()
        .map(|v| decode_with(*v, plan.out_frac))
        .collect();
    let twin_fixed = plan.eval_fixed(&x_enc, batch).expect("fits");
    assert_eq!(
        run.output, twin_fixed,
        "{act}: private output differs from the fixed-point twin"
    );
    let twin: Vec<f64> = twin_fixed
        .iter()
        .map(|v| decode_with(*v, plan.out_frac))
        .collect();
    let float = model.forward(&x, batch).expect("fits");
    let cols = plan.output_len;
    for b in 0..batch {
        for j in 0..cols {
            let (pv, tv, fv) = (
                private_out[b * cols + j],
                twin[b * cols + j],
                float[b * cols + j],
            );
            assert!(
                (pv - tv).abs() < 1e-3,
                "{act} private {pv} vs fixed twin {tv}"
            );
            let tol = if act == "Relu" { 1e-2 } else { 5e-2 };
            assert!((pv - fv).abs() < tol, "{act} private {pv} vs float {fv}");
        }
    }
}

#[test]
fn relu_mlp_private_weights_matches_twin_and_float() {
    check(&[20, 16, 16, 4], "Relu", true, 3);
}

#[test]
fn relu_mlp_public_weights_matches_twin_and_float() {
    check(&[20, 16, 4], "Relu", false, 2);
}

#[test]
fn sigmoid_and_tanh_mlps_match() {
    check(&[12, 8, 3], "Sigmoid", true, 2);
    check(&[12, 8, 3], "Tanh", false, 2);
}

#[test]
fn a_model_that_could_overflow_is_refused_naming_the_layer() {
    let mut prg = Prg::from_os().expect("os rng");
    let model = import(&mlp(&[4, 3], "Relu", &mut prg)).expect("imports");
    // A huge declared input range overflows the first layer at 2f = 52 bits.
    let err = Plan::new(&model, FixedPoint::new(26).expect("valid"), 1e6).expect_err("overflows");
    let msg = err.to_string();
    assert!(
        msg.contains("Gemm_z0") && msg.contains("fewer fractional bits"),
        "{msg}"
    );
}

#[test]
fn comparisons_use_the_width_the_budget_allows() {
    let mut prg = Prg::from_os().expect("os rng");
    let model = import(&mlp(&[20, 16, 4], "Relu", &mut prg)).expect("imports");
    let plan = Plan::new(&model, FixedPoint::default(), 1.0).expect("fits");
    let bits: Vec<u32> = plan
        .steps
        .iter()
        .filter_map(|s| match s.kind {
            sotto_model::plan::StepKind::Relu { bits, .. } => Some(bits),
            _ => None,
        })
        .collect();
    assert_eq!(bits.len(), 1);
    assert!(
        bits[0] < 48,
        "ReLU after a 20-input layer on [0, 1] inputs needs few bits, got {}",
        bits[0]
    );
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn rand_f32(prg: &mut Prg, n: usize, scale: f64) -> Vec<f32> {
    prg.vec_u64(n)
        .iter()
        .map(|v| (((*v >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale) as f32)
        .collect()
}

/// A small CNN as tf2onnx exports a Keras NHWC model: Transpose to NCHW, Conv (+BN), Relu,
/// MaxPool, Conv, Relu, AveragePool, Transpose back, Flatten by Reshape, Dense.
fn cnn(prg: &mut Prg, global: bool) -> Vec<u8> {
    let mut nodes = Vec::new();
    let mut t = node("Transpose", &["x"], "t0");
    t.attribute = vec![attr_ints("perm", &[0, 3, 1, 2])];
    nodes.push(t);
    let mut c1 = node("Conv", &["t0", "k1", "c1b"], "c1");
    c1.attribute = vec![
        attr_ints("pads", &[1, 1, 1, 1]),
        attr_ints("strides", &[1, 1]),
    ];
    nodes.push(c1);
    nodes.push(node(
        "BatchNormalization",
        &["c1", "bn_s", "bn_b", "bn_m", "bn_v"],
        "bn",
    ));
    nodes.push(node("Relu", &["bn"], "r1"));
    let mut mp = node("MaxPool", &["r1"], "p1");
    mp.attribute = vec![
        attr_ints("kernel_shape", &[2, 2]),
        attr_ints("strides", &[2, 2]),
    ];
    nodes.push(mp);
    nodes.push(node("Conv", &["p1", "k2", "c2b"], "c2"));
    nodes.push(node("Relu", &["c2"], "r2"));
    if global {
        nodes.push(node("GlobalAveragePool", &["r2"], "p2"));
    } else {
        let mut ap = node("AveragePool", &["r2"], "p2");
        ap.attribute = vec![
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("strides", &[2, 2]),
        ];
        nodes.push(ap);
    }
    let mut t2 = node("Transpose", &["p2"], "t2");
    t2.attribute = vec![attr_ints("perm", &[0, 2, 3, 1])];
    nodes.push(t2);
    nodes.push(node("Shape", &["t2"], "sh"));
    nodes.push(node("Slice", &["sh", "zero", "one"], "n"));
    nodes.push(node("Concat", &["n", "minus1"], "target"));
    nodes.push(node("Reshape", &["t2", "target"], "flat"));
    nodes.push(node("MatMul", &["flat", "wd"], "d"));
    nodes.push(node("Add", &["d", "bd"], "y"));
    let i64t = |name: &str, v: &[i64]| TensorProto {
        dims: vec![v.len() as i64],
        data_type: Some(data_type::INT64),
        name: Some(name.into()),
        int64_data: v.to_vec(),
        ..Default::default()
    };
    // 10x10x1 input: conv same -> 10x10x4, maxpool -> 5x5x4, conv 3x3 valid -> 3x3x6,
    // avgpool 2x2 -> 1x1x6 (or global -> 1x1x6)
    let inits = vec![
        f32_tensor("k1", &[4, 1, 3, 3], &rand_f32(prg, 36, 0.5)),
        f32_tensor("c1b", &[4], &rand_f32(prg, 4, 0.1)),
        f32_tensor("bn_s", &[4], &[1.0, 0.5, 2.0, 1.5]),
        f32_tensor("bn_b", &[4], &[0.1, -0.1, 0.0, 0.2]),
        f32_tensor("bn_m", &[4], &[0.05, 0.0, -0.05, 0.1]),
        f32_tensor("bn_v", &[4], &[1.0, 0.25, 4.0, 0.5]),
        f32_tensor("k2", &[6, 4, 3, 3], &rand_f32(prg, 216, 0.3)),
        f32_tensor("c2b", &[6], &rand_f32(prg, 6, 0.1)),
        f32_tensor("wd", &[6, 3], &rand_f32(prg, 18, 0.5)),
        f32_tensor("bd", &[3], &rand_f32(prg, 3, 0.1)),
        i64t("zero", &[0]),
        i64t("one", &[1]),
        i64t("minus1", &[-1]),
    ];
    let input = ValueInfoProto {
        name: Some("x".into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeTensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto {
                    dim: [None, Some(10), Some(10), Some(1)]
                        .iter()
                        .map(|d| Dimension {
                            dim_value: *d,
                            dim_param: d.is_none().then(|| "N".to_string()),
                        })
                        .collect(),
                }),
            }),
        }),
    };
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: None,
            version: Some(13),
        }],
        producer_name: Some("tf2onnx-like".into()),
        producer_version: None,
        graph: Some(GraphProto {
            node: nodes,
            name: None,
            initializer: inits,
            input: vec![input],
            output: vec![io("y", 3)],
        }),
    }
    .encode_to_vec()
}

#[test]
fn cnn_with_transposes_batchnorm_and_pools_matches_twin_and_float() {
    let mut prg = Prg::from_os().expect("os rng");
    let bytes = cnn(&mut prg, false);
    let m = import(&bytes).expect("imports");
    let kinds: Vec<&str> = m.layers.iter().map(|l| l.layer.kind()).collect();
    assert_eq!(
        kinds,
        vec![
            "Transpose",
            "Conv2D",
            "ReLU",
            "MaxPool",
            "Conv2D",
            "ReLU",
            "AvgPool",
            "Transpose",
            "Flatten",
            "Dense"
        ]
    );
    check_model(&bytes, "Relu", true, 2);
    check_model(&bytes, "Relu", false, 1);
    check_model(&cnn(&mut prg, true), "Relu", true, 2);
}

#[test]
fn permute_moves_channels() {
    // one example of shape [2 (H), 1 (W), 3 (C)] in NHWC to NCHW [3, 2, 1]
    let x = [1, 2, 3, 4, 5, 6];
    let y = sotto_model::ir::permute(&x, 1, &[2, 1, 3], &[0, 3, 1, 2]);
    assert_eq!(y, vec![1, 4, 2, 5, 3, 6]);
}

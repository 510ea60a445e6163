//! Import of ONNX models built here with the same protobuf messages a tf2onnx export holds.

use proptest::prelude::*;
use prost::Message;
use sotto_model::onnx::*;
use sotto_model::{import, Dim, Layer, ModelError};

fn f32_tensor(name: &str, dims: &[i64], data: &[f32]) -> TensorProto {
    TensorProto {
        dims: dims.to_vec(),
        data_type: Some(data_type::FLOAT),
        name: Some(name.into()),
        raw_data: Some(data.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn i64_tensor(name: &str, data: &[i64]) -> TensorProto {
    TensorProto {
        dims: vec![data.len() as i64],
        data_type: Some(data_type::INT64),
        name: Some(name.into()),
        int64_data: data.to_vec(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: Some(name.into()),
        op_type: Some(op.into()),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(2),
        i: Some(v),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Option<i64>]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeTensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            dim_value: *d,
                            dim_param: if d.is_none() { Some("N".into()) } else { None },
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

fn model(
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    input: ValueInfoProto,
    output: &str,
) -> Vec<u8> {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(13),
        }],
        producer_name: Some("test".into()),
        producer_version: None,
        graph: Some(GraphProto {
            node: nodes,
            name: Some("g".into()),
            initializer: inits,
            input: vec![input],
            output: vec![value_info(output, &[None, Some(3)])],
        }),
    }
    .encode_to_vec()
}

fn lcg(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

/// A two-layer network as tf2onnx writes a Keras Dense stack: MatMul + Add, Relu, ..., Softmax.
/// The file, then w1, b1, w2, b2.
type DenseNet = (Vec<u8>, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>);

fn dense_net(seed: u64) -> DenseNet {
    let mut s = seed;
    let w1: Vec<f32> = (0..4 * 5).map(|_| lcg(&mut s)).collect();
    let b1: Vec<f32> = (0..5).map(|_| lcg(&mut s)).collect();
    let w2: Vec<f32> = (0..5 * 3).map(|_| lcg(&mut s)).collect();
    let b2: Vec<f32> = (0..3).map(|_| lcg(&mut s)).collect();
    let bytes = model(
        vec![
            node("MatMul", "dense/MatMul", &["x", "w1"], "h1"),
            node("Add", "dense/BiasAdd", &["h1", "b1"], "h2"),
            node("Relu", "dense/Relu", &["h2"], "h3"),
            node("MatMul", "dense_1/MatMul", &["h3", "w2"], "h4"),
            node("Add", "dense_1/BiasAdd", &["h4", "b2"], "h5"),
            node("Softmax", "dense_1/Softmax", &["h5"], "y"),
        ],
        vec![
            f32_tensor("w1", &[4, 5], &w1),
            f32_tensor("b1", &[5], &b1),
            f32_tensor("w2", &[5, 3], &w2),
            f32_tensor("b2", &[3], &b2),
        ],
        value_info("x", &[None, Some(4)]),
        "y",
    );
    (bytes, w1, b1, w2, b2)
}

#[test]
fn dense_network_imports_and_evaluates() {
    let (bytes, w1, b1, w2, b2) = dense_net(7);
    let m = import(&bytes).expect("imports");
    assert_eq!(m.input_shape, vec![Dim::Batch, Dim::Fixed(4)]);
    assert!(m.softmax_at_client);
    let kinds: Vec<&str> = m.layers.iter().map(|l| l.layer.kind()).collect();
    assert_eq!(kinds, vec!["Dense", "ReLU", "Dense"]);
    let x = [0.5f32, -1.0, 0.25, 2.0, 1.0, 1.0, -0.5, 0.0];
    let y = m.forward(&x, 2).expect("fits");
    for b in 0..2 {
        let xr = &x[b * 4..(b + 1) * 4];
        let h: Vec<f64> = (0..5)
            .map(|j| {
                let s: f64 = (0..4)
                    .map(|i| f64::from(xr[i]) * f64::from(w1[i * 5 + j]))
                    .sum::<f64>()
                    + f64::from(b1[j]);
                s.max(0.0)
            })
            .collect();
        for j in 0..3 {
            let want: f64 =
                (0..5).map(|i| h[i] * f64::from(w2[i * 3 + j])).sum::<f64>() + f64::from(b2[j]);
            assert!((y[b * 3 + j] - want).abs() < 1e-9);
        }
    }
    assert!(matches!(m.forward(&x[..7], 2), Err(ModelError::Input(_))));
}

#[test]
fn gemm_with_transposed_weights_alpha_and_beta() {
    let w: Vec<f32> = (0..12).map(|i| i as f32 * 0.1).collect(); // [3 outputs, 4 inputs]
    let c = [1.0f32, 2.0, 3.0];
    let mut g = node("Gemm", "fc", &["x", "w", "c"], "y");
    g.attribute = vec![
        attr_int("transB", 1),
        AttributeProto {
            name: Some("alpha".into()),
            f: Some(2.0),
            ..Default::default()
        },
        AttributeProto {
            name: Some("beta".into()),
            f: Some(0.5),
            ..Default::default()
        },
    ];
    let bytes = model(
        vec![g],
        vec![f32_tensor("w", &[3, 4], &w), f32_tensor("c", &[3], &c)],
        value_info("x", &[None, Some(4)]),
        "y",
    );
    let m = import(&bytes).expect("imports");
    let y = m.forward(&[1.0, 0.0, 0.0, 1.0], 1).expect("fits");
    for o in 0..3 {
        let want = 2.0 * (f64::from(w[o * 4]) + f64::from(w[o * 4 + 3])) + 0.5 * f64::from(c[o]);
        assert!((y[o] - want).abs() < 1e-6, "{} vs {want}", y[o]);
    }
}

/// Keras `Flatten` with a dynamic batch, as tf2onnx writes it: Shape, Slice, Concat, Reshape.
#[test]
fn flatten_chain_with_dynamic_batch_is_folded() {
    let w: Vec<f32> = (0..8 * 3).map(|i| (i % 5) as f32).collect();
    let bytes = model(
        vec![
            node("Shape", "flatten/Shape", &["x"], "s"),
            node("Slice", "flatten/strided_slice", &["s", "zero", "one"], "n"),
            node(
                "Concat",
                "flatten/Reshape/shape",
                &["n", "minus1"],
                "target",
            ),
            node("Reshape", "flatten/Reshape", &["x", "target"], "flat"),
            node("MatMul", "dense/MatMul", &["flat", "w"], "y"),
        ],
        vec![
            i64_tensor("zero", &[0]),
            i64_tensor("one", &[1]),
            i64_tensor("minus1", &[-1]),
            f32_tensor("w", &[8, 3], &w),
        ],
        value_info("x", &[None, Some(2), Some(2), Some(2)]),
        "y",
    );
    let m = import(&bytes).expect("imports");
    let kinds: Vec<&str> = m.layers.iter().map(|l| l.layer.kind()).collect();
    assert_eq!(kinds, vec!["Flatten", "Dense"]);
    assert_eq!(m.output_shape(), &[Dim::Batch, Dim::Fixed(3)]);
    let x: Vec<f32> = (0..16).map(|i| i as f32).collect();
    let y = m.forward(&x, 2).expect("fits");
    assert_eq!(y.len(), 6);
    // Gather + Unsqueeze variant
    let mut unsq = node("Unsqueeze", "flatten/Unsqueeze", &["g", "axes"], "n");
    unsq.attribute.clear();
    let bytes2 = model(
        vec![
            node("Shape", "s", &["x"], "s"),
            node("Gather", "g", &["s", "idx"], "g"),
            unsq,
            node("Concat", "c", &["n", "minus1"], "target"),
            node("Reshape", "r", &["x", "target"], "flat"),
            node("MatMul", "d", &["flat", "w"], "y"),
        ],
        vec![
            TensorProto {
                dims: vec![],
                data_type: Some(data_type::INT64),
                name: Some("idx".into()),
                int64_data: vec![0],
                ..Default::default()
            },
            i64_tensor("axes", &[0]),
            i64_tensor("minus1", &[-1]),
            f32_tensor("w", &[8, 3], &w),
        ],
        value_info("x", &[None, Some(2), Some(2), Some(2)]),
        "y",
    );
    let m2 = import(&bytes2).expect("imports");
    assert_eq!(m2.forward(&x, 2).expect("fits"), y);
}

#[test]
fn unsupported_operator_names_op_node_and_the_supported_list() {
    let bytes = model(
        vec![node("LSTM", "rnn/lstm_cell", &["x"], "y")],
        vec![],
        value_info("x", &[None, Some(4)]),
        "y",
    );
    let err = import(&bytes).expect_err("LSTM is unsupported");
    let msg = err.to_string();
    assert!(
        msg.contains("LSTM") && msg.contains("rnn/lstm_cell"),
        "{msg}"
    );
    assert!(
        msg.contains("Gemm") && msg.contains("Relu") && msg.contains("MatMul"),
        "{msg}"
    );
}

#[test]
fn not_onnx_truncated_and_invalid_models_are_refused() {
    for bad in [&b"PK\x03\x04 a zip file"[..], b"{\"json\": true}", b""] {
        let e = import(bad).expect_err("not onnx");
        assert!(e.to_string().contains("not an ONNX model"), "{e}");
    }
    let (bytes, ..) = dense_net(3);
    for cut in [1, 10, bytes.len() / 2, bytes.len() - 1] {
        assert!(import(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    // a NaN weight
    let bytes = model(
        vec![node("MatMul", "m", &["x", "w"], "y")],
        vec![f32_tensor("w", &[1, 3], &[1.0, f32::NAN, 0.0])],
        value_info("x", &[None, Some(1)]),
        "y",
    );
    assert!(import(&bytes).expect_err("nan").to_string().contains("NaN"));
    // weights that do not fit
    let bytes = model(
        vec![node("MatMul", "m", &["x", "w"], "y")],
        vec![f32_tensor("w", &[2, 3], &[0.0; 6])],
        value_info("x", &[None, Some(4)]),
        "y",
    );
    assert!(matches!(import(&bytes), Err(ModelError::Node { .. })));
    // a reshape that mixes the batch into the features
    let bytes = model(
        vec![node("Reshape", "r", &["x", "t"], "y")],
        vec![i64_tensor("t", &[2, -1])],
        value_info("x", &[None, Some(4)]),
        "y",
    );
    assert!(import(&bytes).is_err());
    // a fixed non-batch input dimension must be known
    let bytes = model(
        vec![node("Relu", "r", &["x"], "y")],
        vec![],
        value_info("x", &[None, None]),
        "y",
    );
    assert!(matches!(import(&bytes), Err(ModelError::Graph(_))));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn random_and_mutated_files_never_panic(junk in prop::collection::vec(any::<u8>(), 0..300),
                                           flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
                                           cut in any::<usize>()) {
        let _ = import(&junk);
        let (mut bytes, ..) = dense_net(1);
        for (i, v) in flips {
            let i = i % bytes.len();
            bytes[i] ^= v;
        }
        let _ = import(&bytes);
        let _ = import(&bytes[..cut % bytes.len()]);
        if let Ok(m) = import(&bytes) {
            let x = vec![0.5f32; m.input_len()];
            let _ = m.forward(&x, 1);
        }
    }
}

#[test]
fn softmax_must_be_last_but_may_be_renamed() {
    let w = f32_tensor("w", &[2, 3], &[0.5; 6]);
    let ok = model(
        vec![
            node("MatMul", "m", &["x", "w"], "z"),
            node("Softmax", "s", &["z"], "p"),
            node("Identity", "out", &["p"], "y"),
        ],
        vec![w.clone()],
        value_info("x", &[None, Some(2)]),
        "y",
    );
    assert!(import(&ok).expect("imports").softmax_at_client);
    let bad = model(
        vec![
            node("MatMul", "m", &["x", "w"], "z"),
            node("Softmax", "s", &["z"], "p"),
            node("Relu", "r", &["p"], "y"),
        ],
        vec![w],
        value_info("x", &[None, Some(2)]),
        "y",
    );
    let e = import(&bad).expect_err("a layer after softmax");
    assert!(e.to_string().contains("softmax"), "{e}");
}

#[test]
fn layers_report_their_kinds() {
    assert_eq!(Layer::Relu.kind(), "ReLU");
}

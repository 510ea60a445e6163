//! The graph IR: every model of the Keras zoo (`tests/fixtures/zoo`, tf2onnx exports with
//! TensorFlow's outputs) imports and its float evaluation agrees with TensorFlow; the passes
//! keep the function; lowering gives today's layer chain where the graph is one, and refuses
//! the rest naming the node; the importer's work stays bounded on hostile files.
//!
//! `cargo test --release -p sotto-model --test graph -- --nocapture` prints the zoo table.

use std::path::PathBuf;

use prost::Message;
use sotto_model::graph::{Graph, Op};
use sotto_model::onnx::*;
use sotto_model::{import, import_graph, ModelError};

fn zoo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/zoo")
}

fn npy(path: &PathBuf) -> (Vec<u64>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let f = npyz::NpyFile::new(&bytes[..]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shape = f.shape().to_vec();
    let v = f
        .into_vec::<f32>()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (shape, v)
}

/// Deterministic numbers in [-1, 1).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

fn argmax(row: &[f64]) -> usize {
    (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b })
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

/// What the zoo test found for one model.
struct Row {
    name: String,
    imports: String,
    lowers: String,
    tf_err: f64,
    failures: Vec<String>,
}

fn check_zoo_model(m: &serde_json::Value) -> Row {
    let name = m["name"].as_str().expect("name").to_string();
    let dir = zoo_dir();
    let file = |key: &str| dir.join(m[key].as_str().unwrap_or_else(|| panic!("{name}: {key}")));
    let mut row = Row {
        name: name.clone(),
        imports: "no".into(),
        lowers: String::new(),
        tf_err: f64::NAN,
        failures: Vec::new(),
    };
    let bytes = std::fs::read(file("onnx")).expect("onnx file");
    let g = match import_graph(&bytes) {
        Ok(g) => g,
        Err(e) => {
            row.failures.push(format!("{name}: import_graph: {e}"));
            row.lowers = e.to_string();
            return row;
        }
    };
    row.imports = format!("yes ({} nodes)", g.nodes.len());
    let (xshape, x) = npy(&file("inputs"));
    // Softmax-ended models: the graph computes the logits (the client applies the softmax).
    let reference = if m.get("tf_logits").is_some() {
        file("tf_logits")
    } else {
        file("tf_outputs")
    };
    let (_, tf) = npy(&reference);
    let batch = xshape[0] as usize;
    let y = match g.forward(&x, batch) {
        Ok(y) => y,
        Err(e) => {
            row.failures.push(format!("{name}: forward: {e}"));
            return row;
        }
    };
    let tf: Vec<f64> = tf.iter().map(|v| f64::from(*v)).collect();
    let cols = g.output_shape().iter().product::<usize>();
    row.tf_err = max_diff(&y, &tf);
    let tol = 1e-4 * (1.0 + max_abs(&tf));
    if row.tf_err > tol {
        row.failures.push(format!(
            "{name}: max |graph - TF| = {:.3e} > {tol:.3e}",
            row.tf_err
        ));
    }
    for b in 0..batch {
        let (gr, tr) = (&y[b * cols..(b + 1) * cols], &tf[b * cols..(b + 1) * cols]);
        if argmax(gr) != argmax(tr) {
            row.failures
                .push(format!("{name}: label differs from TF on input {b}"));
        }
    }
    // The passes keep the function: on the fixture inputs and on random ones.
    let mut opt = g.clone();
    if let Err(e) = opt.optimize() {
        row.failures.push(format!("{name}: optimize: {e}"));
        return row;
    }
    let bound = m["input_bound"].as_f64().unwrap_or(1.0) as f32;
    let mut rng = Lcg(name.len() as u64 * 7919);
    let rand = rng.vec(x.len() / batch * 8, bound);
    for (inputs, n) in [(&x, batch), (&rand, 8)] {
        let before = g.forward(inputs, n).expect("forward");
        let after = opt.forward(inputs, n).expect("forward after optimize");
        let d = max_diff(&before, &after);
        if d > 1e-5 * (1.0 + max_abs(&before)) {
            row.failures
                .push(format!("{name}: optimize changed the function by {d:.3e}"));
        }
    }
    // Lowering: where the graph is a chain, today's Model computes what the graph computes.
    match import(&bytes) {
        Ok(model) => {
            row.lowers = format!("yes ({} layers)", model.layers.len());
            for (inputs, n) in [(&x, batch), (&rand, 8)] {
                let want = opt.forward(inputs, n).expect("forward");
                let got = model.forward(inputs, n).expect("model forward");
                let d = max_diff(&got, &want);
                if d > 1e-9 * (1.0 + max_abs(&want)) {
                    row.failures.push(format!(
                        "{name}: Model::forward differs from the graph by {d:.3e}"
                    ));
                }
            }
            if model.softmax_at_client != (m["output_kind"] == "softmax") {
                row.failures.push(format!("{name}: softmax flag"));
            }
        }
        Err(e) => {
            let msg = e.to_string();
            row.lowers = msg.clone();
            let names_node = opt
                .nodes
                .iter()
                .any(|n| msg.contains(&format!("{:?}", n.name)));
            if !names_node || !msg.contains("import succeeded") || msg.contains("sequential") {
                row.failures.push(format!(
                    "{name}: refusal does not name the node plainly: {msg}"
                ));
            }
        }
    }
    row
}

/// Every zoo model imports, agrees with TensorFlow, keeps its function through the passes,
/// and lowers exactly or is refused naming the node.
#[test]
fn zoo_models_import_and_agree_with_tensorflow() {
    let path = zoo_dir().join("zoo.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the zoo fixtures are part of the repo)",
            path.display()
        )
    });
    let zoo: serde_json::Value = serde_json::from_str(&text).expect("zoo.json");
    let models = zoo["models"].as_array().expect("models");
    assert!(!models.is_empty());
    let rows: Vec<Row> = models
        .iter()
        .filter(|m| m.get("skipped").is_none_or(|s| s.is_null()))
        .map(check_zoo_model)
        .collect();
    println!();
    println!("| model | imports | lowers (or the refusal) | max abs(graph - TF) |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.2e} |",
            r.name, r.imports, r.lowers, r.tf_err
        );
    }
    let lowered = rows.iter().filter(|r| r.lowers.starts_with("yes")).count();
    println!(
        "{} models: {} import, {lowered} lower to the layer chain",
        rows.len(),
        rows.iter().filter(|r| r.imports.starts_with("yes")).count()
    );
    let failures: Vec<&String> = rows.iter().flat_map(|r| &r.failures).collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---- small ONNX graphs built here ----

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

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        ..Default::default()
    }
}

fn with(mut n: NodeProto, attrs: Vec<AttributeProto>) -> NodeProto {
    n.attribute = attrs;
    n
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
                            dim_param: d.is_none().then(|| "N".to_string()),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

/// A model with input `x` of per-example shape `dims` and output `y`.
fn model(nodes: Vec<NodeProto>, inits: Vec<TensorProto>, dims: &[i64]) -> Vec<u8> {
    let mut d = vec![None];
    d.extend(dims.iter().map(|v| Some(*v)));
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
            input: vec![value_info("x", &d)],
            output: vec![value_info("y", &[None])],
        }),
    }
    .encode_to_vec()
}

fn ops(g: &Graph) -> Vec<&'static str> {
    g.nodes.iter().map(|n| n.op.name()).collect()
}

/// Direct reference of a grouped, padded, strided convolution (one example, NCHW).
#[allow(clippy::too_many_arguments)]
fn conv_ref(
    x: &[f32],
    [c, h, w]: [usize; 3],
    k: &[f32],
    o: usize,
    group: usize,
    [kh, kw]: [usize; 2],
    s: usize,
    [pt, pl, pb, pr]: [usize; 4],
) -> Vec<f64> {
    let oh = (h + pt + pb - kh) / s + 1;
    let ow = (w + pl + pr - kw) / s + 1;
    let (cg, og) = (c / group, o / group);
    let mut out = Vec::new();
    for oc in 0..o {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut acc = 0f64;
                for cc in 0..cg {
                    let ch = (oc / og) * cg + cc;
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let iy = (oy * s + ky) as i64 - pt as i64;
                            let ix = (ox * s + kx) as i64 - pl as i64;
                            if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                continue;
                            }
                            acc += f64::from(x[(ch * h + iy as usize) * w + ix as usize])
                                * f64::from(k[((oc * cg + cc) * kh + ky) * kw + kx]);
                        }
                    }
                }
                out.push(acc);
            }
        }
    }
    out
}

#[test]
fn grouped_padded_conv_matches_a_direct_reference() {
    let mut r = Lcg(5);
    // 4 channels in 2 groups to 6 channels, 3x2 kernel, stride 2, asymmetric padding.
    let k = r.vec(6 * 2 * 3 * 2, 1.0);
    let conv = with(
        node("Conv", "conv", &["x", "k"], "y"),
        vec![
            int("group", 2),
            ints("strides", &[2, 2]),
            ints("pads", &[1, 0, 2, 1]),
        ],
    );
    let bytes = model(
        vec![conv],
        vec![f32_tensor("k", &[6, 2, 3, 2], &k)],
        &[4, 5, 6],
    );
    let g = import_graph(&bytes).expect("imports");
    let x = r.vec(2 * 4 * 5 * 6, 1.0);
    let y = g.forward(&x, 2).expect("runs");
    for b in 0..2 {
        let want = conv_ref(
            &x[b * 120..(b + 1) * 120],
            [4, 5, 6],
            &k,
            6,
            2,
            [3, 2],
            2,
            [1, 0, 2, 1],
        );
        let got = &y[b * want.len()..(b + 1) * want.len()];
        assert!(max_diff(got, &want) < 1e-12);
    }
    // It lowers to a full convolution with zero blocks outside each group: the same function.
    let m = import(&bytes).expect("a grouped conv lowers");
    let z = m.forward(&x, 2).expect("runs");
    assert!(max_diff(&z, &y) < 1e-12);
}

#[test]
fn padded_pooling_ignores_padding_or_counts_it_as_asked() {
    let x: Vec<f32> = vec![-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0];
    let pool = |op: &str, count: i64| {
        let n = with(
            node(op, "p", &["x"], "y"),
            vec![
                ints("kernel_shape", &[3, 3]),
                ints("pads", &[1, 1, 1, 1]),
                int("count_include_pad", count),
            ],
        );
        import_graph(&model(vec![n], vec![], &[1, 3, 3]))
            .expect("imports")
            .forward(&x, 1)
            .expect("runs")
    };
    // Max: the top-left window sees -1, -2, -4, -5 and padding, which must not win.
    let max = pool("MaxPool", 0);
    assert_eq!(max[0], -1.0);
    assert_eq!(max[4], -1.0);
    // Average excluding padding: (-1 - 2 - 4 - 5) / 4; including it: / 9.
    let avg = pool("AveragePool", 0);
    assert!((avg[0] - (-3.0)).abs() < 1e-12);
    let avg_incl = pool("AveragePool", 1);
    assert!((avg_incl[0] - (-12.0 / 9.0)).abs() < 1e-12);
    assert!((avg_incl[4] - (-45.0 / 9.0)).abs() < 1e-12);
}

/// Rescaling, a conv with BatchNormalization after its ReLU, a Dense with BatchNormalization
/// as tf2onnx writes it (Mul, Add): everything folds, and the function is kept.
#[test]
fn affines_fold_into_neighbouring_linear_layers() {
    let mut r = Lcg(11);
    let nodes = vec![
        node("Mul", "rescale/mul", &["x", "s255"], "a"),
        node("Add", "rescale/add", &["a", "off"], "b"),
        with(
            node("Transpose", "to_nchw", &["b"], "t"),
            vec![ints("perm", &[0, 3, 1, 2])],
        ),
        node("Conv", "conv", &["t", "k", "kb"], "c"),
        node("Relu", "relu", &["c"], "r"),
        node(
            "BatchNormalization",
            "bn",
            &["r", "g", "be", "mu", "var"],
            "n",
        ),
        with(
            node("Transpose", "to_nhwc", &["n"], "t2"),
            vec![ints("perm", &[0, 2, 3, 1])],
        ),
        node("Reshape", "flatten", &["t2", "flat"], "f"),
        node("MatMul", "dense", &["f", "w"], "d"),
        node("Add", "dense/bias", &["d", "db"], "e"),
        node("Mul", "dense_bn/mul", &["e", "bns"], "h"),
        node("Add", "dense_bn/add", &["h", "bnb"], "y"),
    ];
    let inits = vec![
        f32_tensor("s255", &[], &[1.0 / 255.0]),
        f32_tensor("off", &[], &[-0.5]),
        f32_tensor("k", &[3, 2, 2, 2], &r.vec(24, 1.0)),
        f32_tensor("kb", &[3], &r.vec(3, 0.1)),
        f32_tensor("g", &[3], &[1.5, -0.5, 0.8]),
        f32_tensor("be", &[3], &[0.1, 0.2, -0.3]),
        f32_tensor("mu", &[3], &[0.3, 0.1, 0.2]),
        f32_tensor("var", &[3], &[0.5, 2.0, 1.0]),
        i64_tensor("flat", &[-1, 27]),
        f32_tensor("w", &[27, 4], &r.vec(108, 0.5)),
        f32_tensor("db", &[4], &r.vec(4, 0.1)),
        f32_tensor("bns", &[4], &[0.5, 2.0, -1.0, 1.0]),
        f32_tensor("bnb", &[1, 4], &[0.0, 0.1, 0.2, 0.3]),
    ];
    let bytes = model(nodes, inits, &[4, 4, 2]);
    let g = import_graph(&bytes).expect("imports");
    let mut opt = g.clone();
    opt.optimize().expect("optimizes");
    assert_eq!(
        ops(&opt),
        ["Transpose", "Conv", "Relu", "Transpose", "Reshape", "Dense"]
    );
    let x: Vec<f32> = Lcg(3)
        .vec(3 * 32, 1.0)
        .iter()
        .map(|v| (v + 1.0) * 127.5)
        .collect();
    let (a, b) = (
        g.forward(&x, 3).expect("runs"),
        opt.forward(&x, 3).expect("runs"),
    );
    assert!(max_diff(&a, &b) < 1e-5 * (1.0 + max_abs(&a)), "{a:?} {b:?}");
    let m = import(&bytes).expect("lowers");
    let kinds: Vec<&str> = m.layers.iter().map(|l| l.layer.kind()).collect();
    assert_eq!(
        kinds,
        [
            "Transpose",
            "Conv2D",
            "ReLU",
            "Transpose",
            "Flatten",
            "Dense"
        ]
    );
    assert!(max_diff(&m.forward(&x, 3).expect("runs"), &b) < 1e-9 * (1.0 + max_abs(&b)));
}

/// A shift cannot move into a padded convolution (the padding is not shifted); a scale can.
/// The unfolded shift still lowers (as a depthwise 1×1 convolution).
#[test]
fn a_shift_stays_before_a_padded_conv_and_a_scale_folds() {
    let mut r = Lcg(2);
    let k = r.vec(2 * 2 * 3 * 3, 1.0);
    let build = |shift: f32| {
        model(
            vec![
                node("Mul", "scale", &["x", "s"], "a"),
                node("Add", "shift", &["a", "t"], "b"),
                with(
                    node("Conv", "conv", &["b", "k"], "y"),
                    vec![ints("pads", &[1, 1, 1, 1])],
                ),
            ],
            vec![
                f32_tensor("s", &[2, 1, 1], &[2.0, -0.5]),
                f32_tensor("t", &[2, 1, 1], &[shift, 0.0]),
                f32_tensor("k", &[2, 2, 3, 3], &k),
            ],
            &[2, 4, 4],
        )
    };
    let x = r.vec(32, 1.0);
    for (shift, folded) in [(0.0, true), (0.25, false)] {
        let g = import_graph(&build(shift)).expect("imports");
        let mut opt = g.clone();
        opt.optimize().expect("optimizes");
        assert_eq!(ops(&opt).contains(&"Affine"), !folded, "{:?}", ops(&opt));
        let (a, b) = (
            g.forward(&x, 1).expect("runs"),
            opt.forward(&x, 1).expect("runs"),
        );
        assert!(max_diff(&a, &b) < 1e-5 * (1.0 + max_abs(&a)));
        // Either way it lowers: an unfolded shift runs as a depthwise 1×1 convolution.
        let m = import(&build(shift)).expect("lowers");
        let convs = m
            .layers
            .iter()
            .filter(|l| l.layer.kind() == "Conv2D")
            .count();
        assert_eq!(convs, if folded { 1 } else { 2 });
        assert!(max_diff(&m.forward(&x, 1).expect("runs"), &a) < 1e-5 * (1.0 + max_abs(&a)));
    }
}

/// Residual Add and Concat import (any activation may be read, not only the latest), run in
/// float, lower to layers reading earlier outputs, and run privately: the private result
/// equals the fixed-point twin bit for bit on random inputs (the sum adds a value with `f`
/// fractional bits to one with `2f`: the first is scaled up locally) and stays within the
/// fixed-point error of the float model.
#[test]
fn branches_import_lower_and_run_privately() {
    let mut r = Lcg(9);
    let w1 = r.vec(16, 1.0);
    let w2 = r.vec(32, 1.0);
    let nodes = vec![
        node("MatMul", "d1", &["x", "w1"], "h"),
        node("Relu", "r1", &["h"], "hr"),
        node("Add", "residual", &["x", "hr"], "s"),
        node("Concat", "cat", &["s", "hr"], "c"),
        node("MatMul", "d2", &["c", "w2"], "y"),
    ];
    let mut cat = nodes;
    cat[3].attribute = vec![int("axis", 1)];
    let bytes = model(
        cat,
        vec![
            f32_tensor("w1", &[4, 4], &w1),
            f32_tensor("w2", &[8, 4], &w2),
        ],
        &[4],
    );
    let g = import_graph(&bytes).expect("imports");
    assert_eq!(ops(&g), ["Dense", "Relu", "Add", "Concat", "Dense"]);
    let x = [0.5f32, -1.0, 2.0, 0.25];
    let y = g.forward(&x, 1).expect("runs");
    let h: Vec<f64> = (0..4)
        .map(|j| {
            (0..4)
                .map(|i| f64::from(x[i]) * f64::from(w1[i * 4 + j]))
                .sum::<f64>()
                .max(0.0)
        })
        .collect();
    let c: Vec<f64> = (0..4)
        .map(|i| f64::from(x[i]) + h[i])
        .chain(h.iter().copied())
        .collect();
    for j in 0..4 {
        let want: f64 = (0..8).map(|i| c[i] * f64::from(w2[i * 4 + j])).sum();
        assert!((y[j] - want).abs() < 1e-12);
    }
    // It lowers to layers that read earlier layers' outputs, and computes the same.
    let m = import(&bytes).expect("a graph with a skip connection and a branch lowers");
    let kinds: Vec<&str> = m.layers.iter().map(|l| l.layer.kind()).collect();
    assert_eq!(kinds, ["Dense", "ReLU", "Add", "Concat", "Dense"]);
    let reads: Vec<&[usize]> = m.layers.iter().map(|l| &l.inputs[..]).collect();
    assert_eq!(reads, [&[0][..], &[1], &[0, 2], &[3, 2], &[4]]);
    let got = m.forward(&x, 1).expect("runs");
    for j in 0..4 {
        assert!((got[j] - y[j]).abs() < 1e-12, "{got:?} vs {y:?}");
    }
    let kinds = private_equals_twin(&m, 2.0, &r.vec(4 * 6, 2.0), 6, 1e-2);
    assert!(
        kinds.contains(&"local sum") && kinds.contains(&"local concatenation"),
        "{kinds:?}"
    );
}

/// Plans `m` for inputs bounded by `bound`, runs it privately (three parties in process) with
/// private and with public weights on `xs` (`batch` examples): the result equals the
/// fixed-point twin bit for bit and is within `tol` of the float model. Returns the plan's
/// step protocols.
fn private_equals_twin(
    m: &sotto_model::Model,
    bound: f64,
    xs: &[f32],
    batch: usize,
    tol: f64,
) -> Vec<&'static str> {
    let fp = sotto_core::fixed::FixedPoint::new(16).expect("valid");
    let plan = sotto_model::Plan::new(m, fp, bound).expect("plans");
    let enc = fp.encode_f32(xs).expect("in range");
    let want = m.forward(xs, batch).expect("float");
    for private in [true, false] {
        let plan = plan.clone().for_weights(private);
        let weights = sotto_model::private::share_weights(&plan, private).expect("os rng");
        let run =
            sotto_model::private::run_in_process(&plan, [&plan, &plan], &weights, &enc, batch)
                .expect("runs privately");
        assert_eq!(run.output, plan.eval_fixed(&enc, batch).expect("twin"));
        assert_eq!(run.output.len(), want.len());
        for (o, w) in run.output.iter().zip(&want) {
            let o = sotto_core::fixed::decode_with(*o, plan.out_frac);
            assert!((o - w).abs() < tol, "{o} vs {w}");
        }
    }
    plan.steps.iter().map(|s| s.kind.protocol()).collect()
}

/// Swish written as exporters do (`Mul(x, Sigmoid(x))`) is recognised, LeakyReLU and ELU
/// lower, and all three run privately as piecewise-linear functions equal to their fixed-point
/// twin on random inputs (within their approximation error of the float model).
#[test]
fn piecewise_activations_run_privately() {
    let mut r = Lcg(33);
    let mut leaky = node("LeakyRelu", "leaky", &["d2"], "l");
    leaky.attribute = vec![AttributeProto {
        name: Some("alpha".into()),
        f: Some(0.2),
        ..Default::default()
    }];
    let nodes = vec![
        node("MatMul", "d1", &["x", "w1"], "h"),
        node("Sigmoid", "swish/sigmoid", &["h"], "s"),
        node("Mul", "swish/mul", &["h", "s"], "sw"),
        node("MatMul", "d2", &["sw", "w2"], "d2"),
        leaky,
        node("Elu", "elu", &["l"], "e"),
        node("MatMul", "d3", &["e", "w3"], "y"),
    ];
    let inits = vec![
        f32_tensor("w1", &[6, 8], &r.vec(48, 1.0)),
        f32_tensor("w2", &[8, 8], &r.vec(64, 1.0)),
        f32_tensor("w3", &[8, 3], &r.vec(24, 1.0)),
    ];
    let m = import(&model(nodes, inits, &[6])).expect("lowers");
    let kinds: Vec<&str> = m.layers.iter().map(|l| l.layer.kind()).collect();
    assert_eq!(
        kinds,
        ["Dense", "swish", "Dense", "LeakyReLU", "ELU", "Dense"]
    );
    let batch = 8;
    let steps = private_equals_twin(&m, 2.0, &r.vec(6 * batch, 2.0), batch, 0.1);
    assert_eq!(
        steps
            .iter()
            .filter(|s| **s == "FSS piecewise-linear")
            .count(),
        3,
        "{steps:?}"
    );
}

/// BatchNormalization after a ReLU and before a 'same' convolution cannot fold (the padded
/// zeros would not be shifted): it runs as a depthwise 1×1 convolution (a product with private
/// weights), equal to its twin on random inputs (the affine after the Dense folds into it).
#[test]
fn unfoldable_batch_normalization_runs_as_a_depthwise_product() {
    let mut r = Lcg(44);
    let mut same = node("Conv", "conv2", &["n", "k2"], "c2");
    same.attribute = vec![ints("pads", &[1, 1, 1, 1])];
    let nodes = vec![
        node("Conv", "conv1", &["x", "k1"], "c1"),
        node("Relu", "relu", &["c1"], "h"),
        node(
            "BatchNormalization",
            "bn",
            &["h", "g", "be", "mu", "var"],
            "n",
        ),
        same,
        node("Flatten", "flat", &["c2"], "f"),
        node("MatMul", "dense", &["f", "w"], "d"),
        node("Mul", "bn2/mul", &["d", "s2"], "e"),
        node("Add", "bn2/add", &["e", "t2"], "y"),
    ];
    let inits = vec![
        f32_tensor("k1", &[3, 2, 3, 3], &r.vec(54, 1.0)),
        f32_tensor("g", &[3], &[1.5, -0.5, 0.8]),
        f32_tensor("be", &[3], &[0.1, 0.2, -0.3]),
        f32_tensor("mu", &[3], &[0.3, 0.1, 0.2]),
        f32_tensor("var", &[3], &[0.5, 2.0, 1.0]),
        f32_tensor("k2", &[2, 3, 3, 3], &r.vec(54, 1.0)),
        f32_tensor("w", &[2 * 4 * 4, 3], &r.vec(96, 0.5)),
        f32_tensor("s2", &[3], &[0.5, 2.0, -1.0]),
        f32_tensor("t2", &[3], &[0.0, 0.1, 0.2]),
    ];
    let m = import(&model(nodes, inits, &[2, 6, 6])).expect("lowers");
    let kinds: Vec<&str> = m.layers.iter().map(|l| l.layer.kind()).collect();
    assert_eq!(
        kinds,
        ["Conv2D", "ReLU", "Conv2D", "Conv2D", "Flatten", "Dense"]
    );
    let batch = 4;
    private_equals_twin(&m, 1.0, &r.vec(2 * 36 * batch, 1.0), batch, 1e-2);
}

/// ONNX's own HardSigmoid and HardSwish nodes (other exporters than tf2onnx write them) run
/// privately: a scale and shift folded into the Dense before it and a clip; hard_swish.
#[test]
fn onnx_hard_sigmoid_and_hard_swish_nodes_run_privately() {
    let mut r = Lcg(55);
    let nodes = vec![
        node("MatMul", "d1", &["x", "w1"], "h"),
        node("HardSigmoid", "hs", &["h"], "a"),
        node("MatMul", "d2", &["a", "w2"], "b"),
        node("HardSwish", "hw", &["b"], "c"),
        node("MatMul", "d3", &["c", "w3"], "y"),
    ];
    let inits = vec![
        f32_tensor("w1", &[5, 6], &r.vec(30, 1.0)),
        f32_tensor("w2", &[6, 6], &r.vec(36, 2.0)),
        f32_tensor("w3", &[6, 2], &r.vec(12, 1.0)),
    ];
    let m = import(&model(nodes, inits, &[5])).expect("lowers");
    let kinds: Vec<&str> = m.layers.iter().map(|l| l.layer.kind()).collect();
    assert_eq!(kinds, ["Dense", "Clip", "Dense", "hard_swish", "Dense"]);
    let batch = 6;
    private_equals_twin(&m, 2.0, &r.vec(5 * batch, 2.0), batch, 0.05);
}

/// An explicit Pad with a non-zero value, a padded max pooling on signed values (the padding
/// must not win), a 'same' average pooling that does not count padded positions and one that
/// does: they lower, and run privately equal to their fixed-point twin on random inputs.
#[test]
fn padding_and_padded_pooling_run_privately() {
    let mut r = Lcg(21);
    let pool = |op: &str, name: &str, i: &str, o: &str, k: i64, pads: &[i64], count: i64| {
        with(
            node(op, name, &[i], o),
            vec![
                ints("kernel_shape", &[k, k]),
                ints("strides", &[if k == 3 { 2 } else { 1 }; 2]),
                ints("pads", pads),
                int("count_include_pad", count),
            ],
        )
    };
    let nodes = vec![
        pool("MaxPool", "max", "x", "m", 3, &[1, 1, 1, 1], 0),
        node("Pad", "pad", &["m", "pads", "half"], "p"),
        pool("AveragePool", "avg", "p", "a", 2, &[1, 0, 0, 1], 0),
        pool("AveragePool", "avg_incl", "a", "b", 2, &[0, 1, 1, 0], 1),
        node("Flatten", "flat", &["b"], "f"),
        node("MatMul", "dense", &["f", "w"], "y"),
    ];
    // ONNX pads: begins of [N, C, H, W], then ends
    let inits = vec![
        i64_tensor("pads", &[0, 0, 1, 0, 0, 0, 2, 1]),
        f32_tensor("half", &[], &[0.5]),
        f32_tensor("w", &[2 * 6 * 4, 3], &r.vec(2 * 6 * 4 * 3, 1.0)),
    ];
    let bytes = model(nodes, inits, &[2, 5, 5]);
    let m = import(&bytes).expect("lowers");
    let kinds: Vec<&str> = m.layers.iter().map(|l| l.layer.kind()).collect();
    assert_eq!(
        kinds,
        ["Pad", "MaxPool", "Pad", "AvgPool", "AvgPool", "Flatten", "Dense"]
    );
    // Negative inputs: a max pooling padded with zeros would return 0 at every edge.
    let batch = 5;
    let xs: Vec<f32> = r.vec(2 * 25 * batch, 1.0).iter().map(|v| v - 2.0).collect();
    let steps = private_equals_twin(&m, 3.0, &xs, batch, 1e-2);
    assert!(steps.contains(&"local padding"), "{steps:?}");
}

/// GlobalAveragePooling2D as tf2onnx writes it (GlobalAveragePool, Squeeze with axes as an
/// input) lowers to an average pool and a flatten.
#[test]
fn global_average_pool_with_squeeze_lowers() {
    let bytes = model(
        vec![
            node("GlobalAveragePool", "gap", &["x"], "p"),
            node("Squeeze", "squeeze", &["p", "axes"], "q"),
            node("MatMul", "dense", &["q", "w"], "y"),
        ],
        vec![
            i64_tensor("axes", &[2, 3]),
            f32_tensor("w", &[2, 1], &[1.0, -1.0]),
        ],
        &[2, 2, 2],
    );
    let m = import(&bytes).expect("lowers");
    let kinds: Vec<&str> = m.layers.iter().map(|l| l.layer.kind()).collect();
    assert_eq!(kinds, ["AvgPool", "Flatten", "Dense"]);
    let y = m
        .forward(&[1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 4.0], 1)
        .expect("runs");
    assert_eq!(y, vec![2.5 - 1.0]);
}

#[test]
fn activations_evaluate_as_defined() {
    let xs = [-3.0f32, -0.5, 0.0, 0.5, 3.0, 7.0];
    let run = |n: NodeProto, inits: Vec<TensorProto>| -> Vec<f64> {
        import_graph(&model(vec![n], inits, &[6]))
            .expect("imports")
            .forward(&xs, 1)
            .expect("runs")
    };
    let clip = run(
        node("Clip", "c", &["x", "lo", "hi"], "y"),
        vec![f32_tensor("lo", &[], &[0.0]), f32_tensor("hi", &[], &[6.0])],
    );
    assert_eq!(clip, [0.0, 0.0, 0.0, 0.5, 3.0, 6.0]);
    let leaky = run(
        with(
            node("LeakyRelu", "l", &["x"], "y"),
            vec![AttributeProto {
                name: Some("alpha".into()),
                f: Some(0.5),
                ..Default::default()
            }],
        ),
        vec![],
    );
    assert_eq!(leaky, [-1.5, -0.25, 0.0, 0.5, 3.0, 7.0]);
    let elu = run(node("Elu", "e", &["x"], "y"), vec![]);
    assert!((elu[0] - ((-3f64).exp() - 1.0)).abs() < 1e-15 && elu[4] == 3.0);
    let hs = run(node("HardSigmoid", "h", &["x"], "y"), vec![]);
    assert!((hs[1] - 0.4).abs() < 1e-7 && hs[4] == 1.0 && hs[0] == 0.0);
    let hsw = run(node("HardSwish", "hs", &["x"], "y"), vec![]);
    assert!((hsw[3] - 0.5 * (0.5 / 6.0 + 0.5)).abs() < 1e-7 && hsw[0] == 0.0);
    let erf = run(node("Erf", "e", &["x"], "y"), vec![]);
    assert!(
        (erf[3] - 0.520_499_877_813_046_5).abs() < 1e-14,
        "{}",
        erf[3]
    );
    assert!(
        (erf[0] + 0.999_977_909_503_001_4).abs() < 1e-14,
        "{}",
        erf[0]
    );
    let cube = run(
        node("Pow", "p", &["x", "three"], "y"),
        vec![f32_tensor("three", &[], &[3.0])],
    );
    assert_eq!(cube[0], -27.0);
    let max = run(
        node("Max", "m", &["x", "zero"], "y"),
        vec![f32_tensor("zero", &[1], &[0.0])],
    );
    assert_eq!(max, [0.0, 0.0, 0.0, 0.5, 3.0, 7.0]);
}

/// A zero `Pad` before a Conv (and before a MaxPool of a ReLU) folds into its padding.
#[test]
fn zero_pad_folds_into_the_next_conv_or_pool() {
    let mut r = Lcg(4);
    let k = r.vec(9, 1.0);
    let bytes = model(
        vec![
            node("Pad", "pad", &["x", "pads"], "p"),
            node("Conv", "conv", &["p", "k"], "c"),
            node("Relu", "relu", &["c"], "r"),
            node("Pad", "pad2", &["r", "pads2"], "q"),
            with(
                node("MaxPool", "pool", &["q"], "y"),
                vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2])],
            ),
        ],
        vec![
            i64_tensor("pads", &[0, 0, 1, 0, 0, 0, 2, 1]),
            f32_tensor("k", &[1, 1, 3, 3], &k),
            i64_tensor("pads2", &[0, 0, 1, 1, 0, 0, 1, 1]),
        ],
        &[1, 5, 5],
    );
    let g = import_graph(&bytes).expect("imports");
    let mut opt = g.clone();
    opt.optimize().expect("optimizes");
    assert_eq!(ops(&opt), ["Conv", "Relu", "MaxPool"]);
    let Op::Conv { params, .. } = &opt.nodes[0].op else {
        panic!("conv")
    };
    assert_eq!(params.pads, [1, 0, 2, 1]);
    let x = r.vec(2 * 25, 1.0);
    let (a, b) = (
        g.forward(&x, 2).expect("runs"),
        opt.forward(&x, 2).expect("runs"),
    );
    assert!(max_diff(&a, &b) < 1e-12);
}

// ---- bounded work on hostile files ----

#[test]
fn doubling_shape_concats_are_bounded() {
    let mut nodes = vec![node("Shape", "s", &["x"], "v0")];
    for i in 0..40 {
        let (a, b) = (format!("v{i}"), format!("v{}", i + 1));
        nodes.push(node("Concat", &format!("c{i}"), &[&a, &a], &b));
    }
    let bytes = model(nodes, vec![], &[4]);
    let t = std::time::Instant::now();
    let e = import_graph(&bytes).expect_err("too large");
    assert!(e.to_string().contains("shape vector"), "{e}");
    assert!(t.elapsed().as_secs() < 2);
}

#[test]
fn identity_fan_out_of_a_large_constant_is_cheap() {
    let big = f32_tensor("w", &[1 << 20], &vec![0.5; 1 << 20]);
    let mut nodes = Vec::new();
    for i in 0..50_000 {
        nodes.push(node("Identity", &format!("i{i}"), &["w"], &format!("w{i}")));
    }
    nodes.push(node("Relu", "r", &["x"], "y"));
    let bytes = model(nodes, vec![big], &[4]);
    let t = std::time::Instant::now();
    import_graph(&bytes).expect("imports");
    assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());
}

#[test]
fn reshape_sizes_that_overflow_are_refused() {
    for target in [
        vec![-1, 1 << 40, 1 << 40, 1 << 40],
        vec![-1, i64::MAX, 2],
        vec![0, 1 << 62, 4, -1],
    ] {
        let bytes = model(
            vec![node("Reshape", "r", &["x", "t"], "y")],
            vec![i64_tensor("t", &target)],
            &[4],
        );
        let e = import_graph(&bytes).expect_err("overflow");
        assert!(matches!(e, ModelError::Node { .. }), "{e}");
    }
}

#[test]
fn too_many_nodes_are_refused() {
    let nodes: Vec<NodeProto> = (0..100_001)
        .map(|i| node("Identity", "i", &["x"], &format!("y{i}")))
        .collect();
    let e = import_graph(&model(nodes, vec![], &[4])).expect_err("too many");
    assert!(e.to_string().contains("node"), "{e}");
}

#[test]
fn malformed_graphs_are_errors_not_panics() {
    let bytes = model(vec![node("Relu", "r", &["x"], "y")], vec![], &[4]);
    let mut g = import_graph(&bytes).expect("imports");
    g.nodes[0].inputs = vec![7];
    assert!(g.forward(&[0.0; 4], 1).is_err());
    assert!(g.clone().optimize().is_err());
    assert!(g.lower().is_err());
    let mut g = import_graph(&bytes).expect("imports");
    g.nodes[0].op = Op::Transpose { perm: vec![1] };
    assert!(g.forward(&[0.0; 4], 1).is_err());
    assert!(matches!(
        g.forward(&[0.0; 3], 1),
        Err(ModelError::Node { .. } | ModelError::Input(_))
    ));
}

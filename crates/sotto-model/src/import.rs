//! ONNX to IR: decode, fold constants and shape arithmetic, map each operator through a
//! name-keyed registry, check shapes.
//!
//! sotto runs sequential networks: one input, a chain of layers, one output. Constant
//! subgraphs are folded away, including the `Shape → Gather/Slice → Concat → Reshape` chains
//! that tf2onnx emits for Keras `Flatten` with a dynamic batch: shapes are tracked
//! symbolically, with the batch as an unknown.

use std::collections::HashMap;

use prost::Message;

use crate::error::{ModelError, Result};
use crate::ir::{shape_string, ConvParams, Dim, Layer, Model, Named, PoolParams};
use crate::onnx::{data_type, GraphProto, ModelProto, NodeProto, TensorProto};

/// Largest model file accepted.
pub const MAX_MODEL_BYTES: usize = 512 << 20;
/// Most elements of one tensor.
const MAX_TENSOR: usize = 1 << 28;

/// A constant tensor.
#[derive(Debug, Clone, PartialEq)]
enum Data {
    F(Vec<f32>),
    I(Vec<i64>),
}

#[derive(Debug, Clone, PartialEq)]
struct Tensor {
    dims: Vec<usize>,
    data: Data,
}

/// One element of a shape-valued tensor: a known integer or the batch size.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sym {
    Int(i64),
    Batch,
}

/// What a value name stands for during import.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    /// The running activation, with its shape.
    Act(Vec<Dim>),
    /// A constant.
    Const(Tensor),
    /// A 1-D integer tensor that may contain the batch size (from `Shape`).
    Sym(Vec<Sym>),
}

type OpFn = fn(&mut Ctx, &NodeProto, usize) -> Result<()>;

/// The operator registry: ONNX operator name to its importer.
const OPS: &[(&str, OpFn)] = &[
    ("Add", op_add),
    ("AveragePool", op_pool),
    ("BatchNormalization", op_batchnorm),
    ("Conv", op_conv),
    ("GlobalAveragePool", op_pool),
    ("MaxPool", op_pool),
    ("Transpose", op_transpose),
    ("Cast", op_passthrough),
    ("Concat", op_concat),
    ("Constant", op_constant),
    ("Flatten", op_flatten),
    ("Gather", op_gather),
    ("Gemm", op_gemm),
    ("Identity", op_passthrough),
    ("MatMul", op_matmul),
    ("Relu", op_activation),
    ("Reshape", op_reshape),
    ("Shape", op_shape),
    ("Sigmoid", op_activation),
    ("Slice", op_slice),
    ("Softmax", op_softmax),
    ("Squeeze", op_squeeze_unsqueeze),
    ("Tanh", op_activation),
    ("Unsqueeze", op_squeeze_unsqueeze),
];

/// The names of the supported ONNX operators.
pub fn supported_ops() -> Vec<&'static str> {
    OPS.iter().map(|(n, _)| *n).collect()
}

struct Ctx {
    vals: HashMap<String, Val>,
    layers: Vec<Named>,
    /// Name of the value holding the running activation.
    act: String,
    softmax_node: Option<usize>,
    opset: i64,
}

fn node_name(n: &NodeProto, index: usize) -> String {
    n.name
        .clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("#{index}"))
}

fn op_of(n: &NodeProto) -> &str {
    n.op_type.as_deref().unwrap_or("")
}

fn node_err(n: &NodeProto, index: usize, reason: impl Into<String>) -> ModelError {
    ModelError::Node {
        node: node_name(n, index),
        op: op_of(n).to_string(),
        reason: reason.into(),
    }
}

/// Decodes and imports an ONNX model.
pub fn import(bytes: &[u8]) -> Result<Model> {
    if bytes.len() > MAX_MODEL_BYTES {
        return Err(ModelError::NotOnnx(format!(
            "{} bytes is larger than the {MAX_MODEL_BYTES}-byte limit",
            bytes.len()
        )));
    }
    let model = ModelProto::decode(bytes).map_err(|e| {
        ModelError::NotOnnx(format!(
            "the bytes are not a valid ONNX protobuf (truncated or another format?): {e}"
        ))
    })?;
    if model.ir_version.is_none() {
        return Err(ModelError::NotOnnx(
            "no ir_version: this is not an ONNX ModelProto".into(),
        ));
    }
    let graph = model
        .graph
        .as_ref()
        .ok_or_else(|| ModelError::NotOnnx("the model has no graph".into()))?;
    let opset = model
        .opset_import
        .iter()
        .filter(|o| {
            o.domain.as_deref().unwrap_or("").is_empty() || o.domain.as_deref() == Some("ai.onnx")
        })
        .filter_map(|o| o.version)
        .max()
        .unwrap_or(13);
    import_graph(graph, opset)
}

fn import_graph(g: &GraphProto, opset: i64) -> Result<Model> {
    let mut vals = HashMap::new();
    for t in &g.initializer {
        let name = t.name.clone().unwrap_or_default();
        vals.insert(
            name.clone(),
            Val::Const(
                tensor(t).map_err(|r| ModelError::Graph(format!("initializer {name:?}: {r}")))?,
            ),
        );
    }
    let inputs: Vec<_> = g
        .input
        .iter()
        .filter(|i| !vals.contains_key(i.name.as_deref().unwrap_or("")))
        .collect();
    if inputs.len() != 1 {
        return Err(ModelError::Graph(format!(
            "sotto runs models with exactly one input; this one has {}",
            inputs.len()
        )));
    }
    let input = inputs[0];
    let input_name = input.name.clone().unwrap_or_default();
    let dims = input
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| s.dim.clone())
        .ok_or_else(|| ModelError::Graph(format!("input {input_name:?} has no tensor shape")))?;
    if dims.is_empty() {
        return Err(ModelError::Graph(
            "the input is a scalar; a batch dimension is needed".into(),
        ));
    }
    let mut input_shape = vec![Dim::Batch];
    for (i, d) in dims.iter().enumerate().skip(1) {
        match d.dim_value {
            Some(v) if v > 0 && (v as u64) < (1 << 24) => input_shape.push(Dim::Fixed(v as usize)),
            _ => {
                return Err(ModelError::Graph(format!(
                    "input dimension {i} is not a fixed positive size (only the first, the batch, may be dynamic)"
                )))
            }
        }
    }
    let per_example = input_shape.iter().try_fold(1usize, |acc, d| match d {
        Dim::Batch => Some(acc),
        Dim::Fixed(k) => acc.checked_mul(*k),
    });
    if per_example.is_none_or(|n| n > MAX_TENSOR) {
        return Err(ModelError::Graph(format!(
            "input shape {} is too large",
            shape_string(&input_shape)
        )));
    }
    vals.insert(input_name.clone(), Val::Act(input_shape.clone()));
    let mut ctx = Ctx {
        vals,
        layers: Vec::new(),
        act: input_name.clone(),
        softmax_node: None,
        opset,
    };
    for (index, node) in g.node.iter().enumerate() {
        let op = op_of(node);
        let domain = node.domain.as_deref().unwrap_or("");
        let f = OPS
            .iter()
            .find(|(name, _)| *name == op)
            .filter(|_| domain.is_empty() || domain == "ai.onnx")
            .map(|(_, f)| *f)
            .ok_or_else(|| ModelError::Unsupported {
                op: if domain.is_empty() {
                    op.to_string()
                } else {
                    format!("{domain}.{op}")
                },
                node: node_name(node, index),
                index,
                supported: supported_ops().join(", "),
            })?;
        if let Some(s) = ctx.softmax_node {
            // Renaming the probabilities (Identity, Cast) is fine; computing on them is not.
            if node.input.contains(&ctx.act) && !matches!(op, "Identity" | "Cast") {
                return Err(node_err(node, index, format!("a layer after the softmax at node #{s}: sotto applies softmax at the client, so it must be the last layer")));
            }
        }
        f(&mut ctx, node, index)?;
    }
    let outputs: Vec<String> = g
        .output
        .iter()
        .map(|o| o.name.clone().unwrap_or_default())
        .collect();
    if outputs.len() != 1 {
        return Err(ModelError::Graph(format!(
            "sotto runs models with exactly one output; this one has {}",
            outputs.len()
        )));
    }
    if outputs[0] != ctx.act {
        return Err(ModelError::Graph(format!(
            "the output {:?} is not the end of the layer chain ({:?})",
            outputs[0], ctx.act
        )));
    }
    if ctx.layers.is_empty() {
        return Err(ModelError::Graph("the model has no layer".into()));
    }
    Ok(Model {
        input_name,
        input_shape,
        layers: ctx.layers,
        softmax_at_client: ctx.softmax_node.is_some(),
        output_name: outputs[0].clone(),
    })
}

fn tensor(t: &TensorProto) -> std::result::Result<Tensor, String> {
    if t.data_location == Some(1) {
        return Err(
            "external data is not supported: export the model with its weights inside".into(),
        );
    }
    let mut dims = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(format!("negative dimension {d}"));
        }
        dims.push(d as usize);
    }
    let n = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= MAX_TENSOR)
        .ok_or_else(|| format!("dimensions {dims:?} are too large"))?;
    let raw = t.raw_data.as_deref().unwrap_or(&[]);
    let fixed = |size: usize| -> std::result::Result<Vec<[u8; 8]>, String> {
        if raw.len() != n * size {
            return Err(format!(
                "raw data of {} bytes for {n} elements of {size} bytes",
                raw.len()
            ));
        }
        Ok(raw
            .chunks_exact(size)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..size].copy_from_slice(c);
                b
            })
            .collect())
    };
    let dt = t.data_type.unwrap_or(0);
    let data = match dt {
        data_type::FLOAT if t.raw_data.is_some() => Data::F(
            fixed(4)?
                .iter()
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        data_type::FLOAT => Data::F(t.float_data.clone()),
        data_type::DOUBLE if t.raw_data.is_some() => Data::F(
            fixed(8)?
                .iter()
                .map(|b| f64::from_le_bytes(*b) as f32)
                .collect(),
        ),
        data_type::DOUBLE => Data::F(t.double_data.iter().map(|v| *v as f32).collect()),
        data_type::INT64 if t.raw_data.is_some() => {
            Data::I(fixed(8)?.iter().map(|b| i64::from_le_bytes(*b)).collect())
        }
        data_type::INT64 => Data::I(t.int64_data.clone()),
        data_type::INT32 if t.raw_data.is_some() => Data::I(
            fixed(4)?
                .iter()
                .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect(),
        ),
        data_type::INT32 => Data::I(t.int32_data.iter().map(|v| i64::from(*v)).collect()),
        other => {
            return Err(format!(
                "element type {other} is not supported (float, double, int32, int64 are)"
            ))
        }
    };
    let len = match &data {
        Data::F(v) => v.len(),
        Data::I(v) => v.len(),
    };
    if len != n {
        return Err(format!("{len} elements for dimensions {dims:?}"));
    }
    if let Data::F(v) = &data {
        if v.iter().any(|x| !x.is_finite()) {
            return Err("a weight is NaN or infinite".into());
        }
    }
    Ok(Tensor { dims, data })
}

impl Ctx {
    fn get(&self, n: &NodeProto, index: usize, i: usize) -> Result<&Val> {
        let name = n
            .input
            .get(i)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| node_err(n, index, format!("missing input {i}")))?;
        self.vals.get(name).ok_or_else(|| {
            node_err(
                n,
                index,
                format!("input {name:?} is not produced by any earlier node"),
            )
        })
    }

    fn set(&mut self, n: &NodeProto, index: usize, v: Val) -> Result<()> {
        let out = n
            .output
            .first()
            .ok_or_else(|| node_err(n, index, "no output"))?
            .clone();
        if let Val::Act(_) = v {
            self.act = out.clone();
        }
        self.vals.insert(out, v);
        Ok(())
    }

    /// The running activation as input `i`, or an error.
    fn act_input(&self, n: &NodeProto, index: usize, i: usize) -> Result<Vec<Dim>> {
        match self.get(n, index, i)? {
            Val::Act(s) if n.input[i] == self.act => Ok(s.clone()),
            Val::Act(_) => Err(node_err(n, index, "uses an activation other than the running one: only sequential networks (a chain of layers) are supported")),
            _ => Err(node_err(n, index, format!("input {i} should be the activation"))),
        }
    }

    fn push(
        &mut self,
        n: &NodeProto,
        index: usize,
        layer: Layer,
        out_shape: Vec<Dim>,
    ) -> Result<()> {
        self.layers.push(Named {
            node: node_name(n, index),
            layer,
            out_shape: out_shape.clone(),
        });
        self.set(n, index, Val::Act(out_shape))
    }
}

fn attr_i(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.i)
}

fn attr_f(n: &NodeProto, name: &str) -> Option<f32> {
    n.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.f)
}

fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    n.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .map(|a| a.ints.clone())
}

fn features(shape: &[Dim], n: &NodeProto, index: usize) -> Result<usize> {
    match shape {
        [Dim::Batch, Dim::Fixed(k)] => Ok(*k),
        _ => Err(node_err(
            n,
            index,
            format!(
                "expects a [batch, features] activation, got {}",
                shape_string(shape)
            ),
        )),
    }
}

fn const_input(ctx: &Ctx, n: &NodeProto, index: usize, i: usize) -> Result<Tensor> {
    match ctx.get(n, index, i)? {
        Val::Const(t) => Ok(t.clone()),
        _ => Err(node_err(
            n,
            index,
            format!("input {i} must be a constant (weights are part of the model)"),
        )),
    }
}

fn floats(t: &Tensor, n: &NodeProto, index: usize) -> Result<Vec<f32>> {
    match &t.data {
        Data::F(v) => Ok(v.clone()),
        Data::I(_) => Err(node_err(n, index, "integer weights are not supported")),
    }
}

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = v[r * cols + c];
        }
    }
    out
}

fn op_matmul(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let shape = ctx.act_input(n, index, 0)?;
    let k = features(&shape, n, index)?;
    let w = const_input(ctx, n, index, 1)?;
    if w.dims.len() != 2 || w.dims[0] != k {
        return Err(node_err(
            n,
            index,
            format!(
                "weights of shape {:?} do not fit {k} input features",
                w.dims
            ),
        ));
    }
    let outputs = w.dims[1];
    let weights = floats(&w, n, index)?;
    let layer = Layer::Dense {
        inputs: k,
        outputs,
        weights,
        bias: vec![0.0; outputs],
    };
    ctx.push(n, index, layer, vec![Dim::Batch, Dim::Fixed(outputs)])
}

fn op_gemm(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let shape = ctx.act_input(n, index, 0)?;
    let k = features(&shape, n, index)?;
    if attr_i(n, "transA").unwrap_or(0) != 0 {
        return Err(node_err(
            n,
            index,
            "transA = 1 (a transposed activation) is not supported",
        ));
    }
    let alpha = attr_f(n, "alpha").unwrap_or(1.0);
    let beta = attr_f(n, "beta").unwrap_or(1.0);
    let w = const_input(ctx, n, index, 1)?;
    if w.dims.len() != 2 {
        return Err(node_err(
            n,
            index,
            format!("weights of shape {:?} are not a matrix", w.dims),
        ));
    }
    let mut weights = floats(&w, n, index)?;
    let (rows, cols) = (w.dims[0], w.dims[1]);
    let outputs = if attr_i(n, "transB").unwrap_or(0) != 0 {
        weights = transpose(&weights, rows, cols);
        rows
    } else {
        cols
    };
    if weights.len() != k * outputs {
        return Err(node_err(
            n,
            index,
            format!(
                "weights of shape {:?} do not fit {k} input features",
                w.dims
            ),
        ));
    }
    weights.iter_mut().for_each(|v| *v *= alpha);
    let mut bias = vec![0f32; outputs];
    if n.input.len() > 2 && !n.input[2].is_empty() {
        let c = floats(&const_input(ctx, n, index, 2)?, n, index)?;
        bias = broadcast_bias(&c, outputs).ok_or_else(|| {
            node_err(
                n,
                index,
                format!("bias of {} elements for {outputs} outputs", c.len()),
            )
        })?;
        bias.iter_mut().for_each(|v| *v *= beta);
    }
    let layer = Layer::Dense {
        inputs: k,
        outputs,
        weights,
        bias,
    };
    ctx.push(n, index, layer, vec![Dim::Batch, Dim::Fixed(outputs)])
}

fn broadcast_bias(c: &[f32], outputs: usize) -> Option<Vec<f32>> {
    match c.len() {
        1 => Some(vec![c[0]; outputs]),
        l if l == outputs => Some(c.to_vec()),
        _ => None,
    }
}

/// `Add(activation, constant)`: folded into the bias of the dense layer right before it.
fn op_add(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let (ai, ci) = match (ctx.get(n, index, 0)?, ctx.get(n, index, 1)?) {
        (Val::Act(_), Val::Const(_)) => (0, 1),
        (Val::Const(_), Val::Act(_)) => (1, 0),
        _ => {
            return Err(node_err(
                n,
                index,
                "only the addition of a constant bias to the activation is supported",
            ))
        }
    };
    let shape = ctx.act_input(n, index, ai)?;
    let c = floats(&const_input(ctx, n, index, ci)?, n, index)?;
    let last_matches = ctx.layers.last().is_some_and(|l| l.out_shape == shape);
    match ctx.layers.last_mut() {
        Some(Named {
            layer: Layer::Dense { bias, .. } | Layer::Conv2d { bias, .. },
            ..
        }) if last_matches => {
            let add = broadcast_bias(&c, bias.len()).ok_or_else(|| {
                node_err(
                    n,
                    index,
                    format!("bias of {} elements for {} outputs", c.len(), bias.len()),
                )
            })?;
            for (b, a) in bias.iter_mut().zip(add) {
                *b += a;
            }
        }
        _ => {
            return Err(node_err(
                n,
                index,
                "a bias must follow a MatMul, Gemm or Conv directly",
            ))
        }
    }
    ctx.set(n, index, Val::Act(shape))
}

fn op_activation(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let shape = ctx.act_input(n, index, 0)?;
    let layer = match op_of(n) {
        "Relu" => Layer::Relu,
        "Sigmoid" => Layer::Sigmoid,
        _ => Layer::Tanh,
    };
    ctx.push(n, index, layer, shape)
}

fn op_softmax(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let shape = ctx.act_input(n, index, 0)?;
    let axis = attr_i(n, "axis").unwrap_or(if ctx.opset >= 13 { -1 } else { 1 });
    if shape.len() != 2 || !(axis == -1 || axis == 1) {
        return Err(node_err(
            n,
            index,
            "softmax is supported only over the features of a [batch, features] output",
        ));
    }
    ctx.softmax_node = Some(index);
    // The softmax is not a layer: its output name aliases the logits.
    ctx.set(n, index, Val::Act(shape))
}

fn flatten_shape(shape: &[Dim]) -> Vec<Dim> {
    vec![Dim::Batch, Dim::Fixed(crate::ir::per_example(shape))]
}

fn op_flatten(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let shape = ctx.act_input(n, index, 0)?;
    if attr_i(n, "axis").unwrap_or(1) != 1 {
        return Err(node_err(
            n,
            index,
            "only Flatten with axis = 1 (keep the batch) is supported",
        ));
    }
    push_flatten(ctx, n, index, shape)
}

fn push_flatten(ctx: &mut Ctx, n: &NodeProto, index: usize, shape: Vec<Dim>) -> Result<()> {
    let out = flatten_shape(&shape);
    if out == shape {
        return ctx.set(n, index, Val::Act(shape));
    }
    ctx.push(n, index, Layer::Flatten, out)
}

fn sym_or_ints(ctx: &Ctx, n: &NodeProto, index: usize, i: usize) -> Result<Vec<Sym>> {
    match ctx.get(n, index, i)? {
        Val::Sym(s) => Ok(s.clone()),
        Val::Const(Tensor {
            data: Data::I(v), ..
        }) => Ok(v.iter().map(|x| Sym::Int(*x)).collect()),
        _ => Err(node_err(
            n,
            index,
            format!("input {i} must be a constant integer tensor or a shape"),
        )),
    }
}

fn ints(ctx: &Ctx, n: &NodeProto, index: usize, i: usize) -> Result<Vec<i64>> {
    sym_or_ints(ctx, n, index, i)?
        .into_iter()
        .map(|s| match s {
            Sym::Int(v) => Ok(v),
            Sym::Batch => Err(node_err(
                n,
                index,
                format!("input {i} depends on the batch size"),
            )),
        })
        .collect()
}

fn op_reshape(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let shape = ctx.act_input(n, index, 0)?;
    let target = sym_or_ints(ctx, n, index, 1)?;
    let total = crate::ir::per_example(&shape);
    // Resolve the target against the input: 0 copies a dimension, -1 takes the rest.
    let mut known = 1usize;
    let mut out: Vec<Option<Dim>> = Vec::new();
    let mut has_batch = false;
    for (i, t) in target.iter().enumerate() {
        match t {
            Sym::Batch => {
                has_batch = true;
                out.push(Some(Dim::Batch));
            }
            Sym::Int(0) => match shape.get(i) {
                Some(Dim::Batch) => {
                    has_batch = true;
                    out.push(Some(Dim::Batch));
                }
                Some(Dim::Fixed(d)) => {
                    known = known.saturating_mul(*d);
                    out.push(Some(Dim::Fixed(*d)));
                }
                None => {
                    return Err(node_err(
                        n,
                        index,
                        "shape 0 copies a dimension the input does not have",
                    ))
                }
            },
            Sym::Int(-1) => out.push(None),
            Sym::Int(v) if *v > 0 => {
                known = known.saturating_mul(*v as usize);
                out.push(Some(Dim::Fixed(*v as usize)));
            }
            Sym::Int(v) => return Err(node_err(n, index, format!("invalid target dimension {v}"))),
        }
    }
    let free = out.iter().filter(|d| d.is_none()).count();
    let resolved: Vec<Dim> = if free == 0 {
        out.into_iter().flatten().collect()
    } else if free == 1 && (has_batch || target.len() >= 2) && known > 0 && total % known == 0 {
        let rest = total / known;
        // With no symbolic batch in the target, a leading -1 is the batch: accept
        // [-1, d1, ..] when d1·.. is the per-example size.
        if !has_batch {
            if target[0] == Sym::Int(-1) && known == total {
                std::iter::once(Dim::Batch)
                    .chain(out.into_iter().skip(1).flatten())
                    .collect()
            } else {
                return Err(node_err(
                    n,
                    index,
                    "only reshapes that keep the batch first are supported",
                ));
            }
        } else {
            out.into_iter()
                .map(|d| d.unwrap_or(Dim::Fixed(rest)))
                .collect()
        }
    } else {
        return Err(node_err(
            n,
            index,
            format!(
                "cannot resolve target shape {target:?} for input {}",
                shape_string(&shape)
            ),
        ));
    };
    if crate::ir::per_example(&resolved) != total || resolved.first() != Some(&Dim::Batch) {
        return Err(node_err(
            n,
            index,
            format!(
                "reshape of {} to {} changes the size or moves the batch",
                shape_string(&shape),
                shape_string(&resolved)
            ),
        ));
    }
    if resolved == shape {
        return ctx.set(n, index, Val::Act(shape));
    }
    if resolved.len() == 2 {
        return push_flatten(ctx, n, index, shape);
    }
    // Row-major data is unchanged by a reshape that keeps the batch first.
    ctx.push(n, index, Layer::Reshape, resolved)
}

fn op_shape(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let v = match ctx.get(n, index, 0)? {
        Val::Act(s) => s
            .iter()
            .map(|d| match d {
                Dim::Batch => Sym::Batch,
                Dim::Fixed(k) => Sym::Int(*k as i64),
            })
            .collect(),
        Val::Const(t) => t.dims.iter().map(|d| Sym::Int(*d as i64)).collect(),
        Val::Sym(s) => vec![Sym::Int(s.len() as i64)],
    };
    ctx.set(n, index, Val::Sym(v))
}

fn op_passthrough(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let v = ctx.get(n, index, 0)?.clone();
    if let Val::Act(_) = v {
        ctx.act_input(n, index, 0)?;
    }
    ctx.set(n, index, v)
}

fn op_constant(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let t = n
        .attribute
        .iter()
        .find(|a| a.name.as_deref() == Some("value"))
        .and_then(|a| a.t.as_ref())
        .ok_or_else(|| node_err(n, index, "only Constant with a tensor `value` is supported"))?;
    let t = tensor(t).map_err(|r| node_err(n, index, r))?;
    ctx.set(n, index, Val::Const(t))
}

fn norm_index(i: i64, len: usize) -> Option<usize> {
    let j = if i < 0 { i + len as i64 } else { i };
    (0..len as i64).contains(&j).then_some(j as usize)
}

fn op_gather(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let data = sym_or_ints(ctx, n, index, 0)?;
    let idx = ints(ctx, n, index, 1)?;
    if attr_i(n, "axis").unwrap_or(0) != 0 {
        return Err(node_err(
            n,
            index,
            "Gather is supported on shape vectors (axis 0) only",
        ));
    }
    let out = idx
        .iter()
        .map(|&i| norm_index(i, data.len()).map(|j| data[j]))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| node_err(n, index, "index out of range"))?;
    ctx.set(n, index, Val::Sym(out))
}

fn op_slice(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let data = sym_or_ints(ctx, n, index, 0)?;
    let (starts, ends) = if ctx.opset >= 10 {
        (ints(ctx, n, index, 1)?, ints(ctx, n, index, 2)?)
    } else {
        (
            attr_ints(n, "starts").unwrap_or_default(),
            attr_ints(n, "ends").unwrap_or_default(),
        )
    };
    if starts.len() != 1 || ends.len() != 1 {
        return Err(node_err(
            n,
            index,
            "Slice is supported on shape vectors only",
        ));
    }
    if n.input.len() > 4 && !n.input[4].is_empty() && ints(ctx, n, index, 4)? != vec![1] {
        return Err(node_err(
            n,
            index,
            "Slice with a step other than 1 is not supported",
        ));
    }
    let len = data.len() as i64;
    let clamp = |v: i64| -> usize { (if v < 0 { v + len } else { v }).clamp(0, len) as usize };
    let (s, e) = (clamp(starts[0]), clamp(ends[0]));
    let out = if s < e {
        data[s..e].to_vec()
    } else {
        Vec::new()
    };
    ctx.set(n, index, Val::Sym(out))
}

fn op_concat(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let mut out = Vec::new();
    for i in 0..n.input.len() {
        out.extend(sym_or_ints(ctx, n, index, i)?);
    }
    ctx.set(n, index, Val::Sym(out))
}

fn op_squeeze_unsqueeze(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    // On shape vectors both only change the rank of a 0-D/1-D integer tensor.
    let data = sym_or_ints(ctx, n, index, 0)?;
    ctx.set(n, index, Val::Sym(data))
}

fn attr_s(n: &NodeProto, name: &str) -> Option<String> {
    n.attribute
        .iter()
        .find(|a| a.name.as_deref() == Some(name))
        .and_then(|a| a.s.as_ref())
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

fn nchw(shape: &[Dim], n: &NodeProto, index: usize) -> Result<[usize; 3]> {
    match shape {
        [Dim::Batch, Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)] => Ok([*c, *h, *w]),
        _ => Err(node_err(
            n,
            index,
            format!(
                "expects a [batch, channels, height, width] activation, got {}",
                shape_string(shape)
            ),
        )),
    }
}

fn pair(
    v: Option<Vec<i64>>,
    default: usize,
    n: &NodeProto,
    index: usize,
    what: &str,
) -> Result<[usize; 2]> {
    match v.as_deref() {
        None | Some([]) => Ok([default, default]),
        Some([a, b]) if *a > 0 && *b > 0 && *a < 1 << 16 && *b < 1 << 16 => {
            Ok([*a as usize, *b as usize])
        }
        Some(other) => Err(node_err(
            n,
            index,
            format!("{what} {other:?} is not two positive sizes"),
        )),
    }
}

/// Padding `[top, left, bottom, right]` from `pads` or `auto_pad`.
fn padding(
    n: &NodeProto,
    index: usize,
    hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
) -> Result<[usize; 4]> {
    let auto = attr_s(n, "auto_pad").unwrap_or_else(|| "NOTSET".into());
    match auto.as_str() {
        "NOTSET" => match attr_ints(n, "pads").as_deref() {
            None | Some([]) => Ok([0; 4]),
            Some(p) if p.len() == 4 && p.iter().all(|v| (0..1 << 16).contains(v)) => {
                Ok([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize])
            }
            Some(p) => Err(node_err(
                n,
                index,
                format!("pads {p:?} are not four non-negative sizes"),
            )),
        },
        "VALID" => Ok([0; 4]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut out = [0usize; 4];
            for a in 0..2 {
                let o = hw[a].div_ceil(stride[a]);
                let total = ((o - 1) * stride[a] + kernel[a]).saturating_sub(hw[a]);
                let small = total / 2;
                let (begin, end) = if auto == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                out[a] = begin;
                out[a + 2] = end;
            }
            Ok(out)
        }
        other => Err(node_err(
            n,
            index,
            format!("auto_pad {other} is not supported"),
        )),
    }
}

fn op_conv(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let shape = ctx.act_input(n, index, 0)?;
    let [c, h, w] = nchw(&shape, n, index)?;
    let wt = const_input(ctx, n, index, 1)?;
    if wt.dims.len() != 4 || wt.dims[1] != c {
        return Err(node_err(
            n,
            index,
            format!(
                "kernel of shape {:?} does not fit {c} input channels",
                wt.dims
            ),
        ));
    }
    if attr_i(n, "group").unwrap_or(1) != 1 {
        return Err(node_err(
            n,
            index,
            "grouped or depthwise convolution (group > 1) is not supported",
        ));
    }
    if attr_ints(n, "dilations").is_some_and(|d| d.iter().any(|v| *v != 1)) {
        return Err(node_err(n, index, "dilated convolution is not supported"));
    }
    let (o, kernel) = (wt.dims[0], [wt.dims[2], wt.dims[3]]);
    let stride = pair(attr_ints(n, "strides"), 1, n, index, "strides")?;
    let pads = padding(n, index, [h, w], kernel, stride)?;
    if h + pads[0] + pads[2] < kernel[0] || w + pads[1] + pads[3] < kernel[1] {
        return Err(node_err(n, index, "kernel larger than the padded input"));
    }
    let weights = floats(&wt, n, index)?;
    let bias = if n.input.len() > 2 && !n.input[2].is_empty() {
        let b = floats(&const_input(ctx, n, index, 2)?, n, index)?;
        broadcast_bias(&b, o).ok_or_else(|| {
            node_err(
                n,
                index,
                format!("bias of {} elements for {o} channels", b.len()),
            )
        })?
    } else {
        vec![0.0; o]
    };
    let params = ConvParams {
        in_chw: [c, h, w],
        out_channels: o,
        kernel,
        stride,
        pads,
    };
    let cs = params.core_shape(1);
    let out = vec![
        Dim::Batch,
        Dim::Fixed(o),
        Dim::Fixed(cs.out_h()),
        Dim::Fixed(cs.out_w()),
    ];
    ctx.push(
        n,
        index,
        Layer::Conv2d {
            shape: params,
            weights,
            bias,
        },
        out,
    )
}

fn op_pool(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let shape = ctx.act_input(n, index, 0)?;
    let [c, h, w] = nchw(&shape, n, index)?;
    let global = op_of(n) == "GlobalAveragePool";
    let (kernel, stride) = if global {
        ([h, w], [1, 1])
    } else {
        let k =
            attr_ints(n, "kernel_shape").ok_or_else(|| node_err(n, index, "no kernel_shape"))?;
        let kernel = pair(Some(k), 1, n, index, "kernel_shape")?;
        (
            kernel,
            pair(attr_ints(n, "strides"), 1, n, index, "strides")?,
        )
    };
    if !global {
        if padding(n, index, [h, w], kernel, stride)? != [0; 4] {
            return Err(node_err(
                n,
                index,
                "padded pooling is not supported (use 'valid' pooling in Keras)",
            ));
        }
        if attr_i(n, "ceil_mode").unwrap_or(0) != 0 {
            return Err(node_err(n, index, "ceil_mode = 1 is not supported"));
        }
        if attr_ints(n, "dilations").is_some_and(|d| d.iter().any(|v| *v != 1)) {
            return Err(node_err(n, index, "dilated pooling is not supported"));
        }
    }
    if kernel[0] > h || kernel[1] > w {
        return Err(node_err(n, index, "pooling window larger than the input"));
    }
    let params = PoolParams {
        in_chw: [c, h, w],
        kernel,
        stride,
    };
    let ps = params.core_shape(1);
    let out = vec![
        Dim::Batch,
        Dim::Fixed(c),
        Dim::Fixed(ps.out_h()),
        Dim::Fixed(ps.out_w()),
    ];
    let layer = if op_of(n) == "MaxPool" {
        Layer::MaxPool(params)
    } else {
        Layer::AvgPool(params)
    };
    ctx.push(n, index, layer, out)
}

fn op_transpose(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let shape = ctx.act_input(n, index, 0)?;
    let rank = shape.len();
    let perm: Vec<usize> = match attr_ints(n, "perm") {
        Some(p) => p.iter().map(|v| *v as usize).collect(),
        None => (0..rank).rev().collect(),
    };
    let mut seen = vec![false; rank];
    let valid = perm.len() == rank
        && perm
            .iter()
            .all(|&p| p < rank && !std::mem::replace(&mut seen[p], true));
    if !valid || perm[0] != 0 {
        return Err(node_err(
            n,
            index,
            format!("permutation {perm:?} must keep the batch axis first"),
        ));
    }
    if perm.iter().enumerate().all(|(i, p)| i == *p) {
        return ctx.set(n, index, Val::Act(shape));
    }
    let out: Vec<Dim> = perm.iter().map(|&p| shape[p]).collect();
    ctx.push(n, index, Layer::Transpose { perm }, out)
}

/// `BatchNormalization` (inference): folded into the dense or conv layer right before it.
fn op_batchnorm(ctx: &mut Ctx, n: &NodeProto, index: usize) -> Result<()> {
    let shape = ctx.act_input(n, index, 0)?;
    let eps = f64::from(attr_f(n, "epsilon").unwrap_or(1e-5));
    let p: Vec<Vec<f32>> = (1..5)
        .map(|i| const_input(ctx, n, index, i).and_then(|t| floats(&t, n, index)))
        .collect::<Result<_>>()?;
    let (scale, shift, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
    let last_matches = ctx.layers.last().is_some_and(|l| l.out_shape == shape);
    let fold = |outputs: usize| -> Result<Vec<(f64, f64)>> {
        if [scale, shift, mean, var].iter().any(|v| v.len() != outputs) {
            return Err(node_err(
                n,
                index,
                format!("parameters do not have {outputs} channels"),
            ));
        }
        (0..outputs)
            .map(|o| {
                let v = f64::from(var[o]) + eps;
                if v <= 0.0 {
                    return Err(node_err(n, index, "non-positive variance"));
                }
                let a = f64::from(scale[o]) / v.sqrt();
                Ok((a, f64::from(shift[o]) - f64::from(mean[o]) * a))
            })
            .collect()
    };
    match ctx.layers.last_mut() {
        Some(Named {
            layer:
                Layer::Dense {
                    outputs,
                    weights,
                    bias,
                    ..
                },
            ..
        }) if last_matches => {
            let ab = fold(*outputs)?;
            for (i, w) in weights.iter_mut().enumerate() {
                *w = (f64::from(*w) * ab[i % *outputs].0) as f32;
            }
            for (b, (a, c)) in bias.iter_mut().zip(ab) {
                *b = (f64::from(*b) * a + c) as f32;
            }
        }
        Some(Named {
            layer:
                Layer::Conv2d {
                    shape: cp,
                    weights,
                    bias,
                },
            ..
        }) if last_matches => {
            let ab = fold(cp.out_channels)?;
            let per = weights.len() / cp.out_channels.max(1);
            for (i, w) in weights.iter_mut().enumerate() {
                *w = (f64::from(*w) * ab[i / per].0) as f32;
            }
            for (b, (a, c)) in bias.iter_mut().zip(ab) {
                *b = (f64::from(*b) * a + c) as f32;
            }
        }
        _ => return Err(node_err(
            n,
            index,
            "batch normalization must follow a dense or conv layer directly (it is folded into it)",
        )),
    }
    ctx.set(n, index, Val::Act(shape))
}

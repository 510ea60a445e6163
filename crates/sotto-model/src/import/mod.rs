//! ONNX to the graph IR: decode, fold constants and shape arithmetic, map each operator
//! through a name-keyed registry, check shapes.
//!
//! A name in the ONNX graph stands for an activation (a [`ValueId`] of the [`Graph`], any of
//! them, not only the latest), a constant, or a symbolic shape vector: constant subgraphs
//! are folded away, including the `Shape → Gather/Slice → Concat → Reshape` chains that
//! tf2onnx emits for Keras `Flatten` with a dynamic batch, where the batch is an unknown.
//!
//! The operators live in one file per family (`linear`, `pool`, `activation`,
//! `elementwise`, `shape`); adding one is a function there and a line in the registry below.
//!
//! Work is bounded: the file size, the nodes, the elements of each tensor, the bytes of all
//! constants and shape vectors together, the length of shape vectors, and the elements per
//! example of every activation.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use ndarray::{ArrayD, IxDyn};
use prost::Message;

use crate::error::{ModelError, Result};
use crate::graph::{elements, Graph, Node, Op, Value, ValueId, MAX_VALUE_ELEMENTS};
use crate::ir::Model;
use crate::onnx::{data_type, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

mod activation;
mod elementwise;
mod linear;
mod pool;
mod shape;

/// Largest model file accepted.
pub const MAX_MODEL_BYTES: usize = 512 << 20;
/// Most nodes in an ONNX graph.
pub const MAX_NODES: usize = 100_000;
/// Most elements of one constant tensor.
const MAX_TENSOR: usize = MAX_VALUE_ELEMENTS;
/// Most bytes of all constants and shape vectors of a model together (initializers and what
/// the nodes compute from them; aliases such as `Identity` are free).
pub const MAX_CONSTANT_BYTES: usize = 1 << 30;
/// Most elements of a shape vector (`Shape`, `Concat` of shapes, ...).
pub const MAX_SHAPE_VECTOR: usize = 4096;

/// A constant tensor.
#[derive(Debug, Clone, PartialEq)]
enum Tensor {
    F(ArrayD<f32>),
    I(ArrayD<i64>),
}

impl Tensor {
    fn dims(&self) -> &[usize] {
        match self {
            Tensor::F(a) => a.shape(),
            Tensor::I(a) => a.shape(),
        }
    }

    /// Bytes of its elements.
    fn bytes(&self) -> usize {
        match self {
            Tensor::F(a) => a.len() * std::mem::size_of::<f32>(),
            Tensor::I(a) => a.len() * std::mem::size_of::<i64>(),
        }
    }
}

/// One element of a shape-valued tensor: a known integer or the batch size.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sym {
    Int(i64),
    Batch,
}

/// What a name stands for during import. Constants are shared, so aliasing one is free.
#[derive(Debug, Clone)]
enum Val {
    /// An activation.
    Act(ValueId),
    /// A constant.
    Const(Rc<Tensor>),
    /// A 1-D integer tensor that may contain the batch size (from `Shape`).
    Sym(Rc<Vec<Sym>>),
}

type OpFn = fn(&mut Ctx, &At) -> Result<()>;

/// The operator registry: ONNX operator name to its importer.
const OPS: &[(&str, OpFn)] = &[
    ("Add", elementwise::add),
    ("AveragePool", pool::pool),
    ("BatchNormalization", elementwise::batch_norm),
    ("Cast", shape::cast),
    ("Clip", activation::clip),
    ("Concat", shape::concat),
    ("Constant", shape::constant),
    ("Conv", linear::conv),
    ("Div", elementwise::div),
    ("Dropout", shape::identity),
    ("Elu", activation::elu),
    ("Erf", activation::erf),
    ("Flatten", shape::flatten),
    ("Gather", shape::gather),
    ("Gemm", linear::gemm),
    ("GlobalAveragePool", pool::global_average),
    ("GlobalMaxPool", pool::global_max),
    ("HardSigmoid", activation::hard_sigmoid),
    ("HardSwish", activation::hard_swish),
    ("Identity", shape::identity),
    ("LeakyRelu", activation::leaky_relu),
    ("MatMul", linear::matmul),
    ("Max", elementwise::max),
    ("MaxPool", pool::pool),
    ("Min", elementwise::min),
    ("Mul", elementwise::mul),
    ("Pad", pool::pad),
    ("Pow", activation::pow),
    ("Relu", activation::relu),
    ("Reshape", shape::reshape),
    ("Shape", shape::shape),
    ("Sigmoid", activation::sigmoid),
    ("Slice", shape::slice),
    ("Softmax", activation::softmax),
    ("Squeeze", shape::squeeze),
    ("Sub", elementwise::sub),
    ("Tanh", activation::tanh),
    ("Transpose", shape::transpose),
    ("Unsqueeze", shape::unsqueeze),
];

/// Operators that only rename their input: they may follow the softmax.
const RENAMES: &[&str] = &["Identity", "Cast", "Dropout"];

/// The names of the supported ONNX operators.
pub fn supported_ops() -> Vec<&'static str> {
    OPS.iter().map(|(n, _)| *n).collect()
}

/// Decodes and imports an ONNX model as a chain of layers: [`import_graph`], then
/// [`Graph::optimize`], then [`Graph::lower`].
pub fn import(bytes: &[u8]) -> Result<Model> {
    let mut g = import_graph(bytes)?;
    g.optimize()?;
    g.lower()
}

/// Decodes and imports an ONNX model as a [`Graph`] (not optimized).
pub fn import_graph(bytes: &[u8]) -> Result<Graph> {
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
    build(graph, opset)
}

/// The node being imported and its position.
struct At<'a> {
    n: &'a NodeProto,
    index: usize,
}

impl At<'_> {
    fn name(&self) -> String {
        self.n
            .name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("#{}", self.index))
    }

    fn op(&self) -> &str {
        self.n.op_type.as_deref().unwrap_or("")
    }

    fn err(&self, reason: impl Into<String>) -> ModelError {
        ModelError::Node {
            node: self.name(),
            op: self.op().to_string(),
            reason: reason.into(),
        }
    }

    /// Whether optional input `i` is given.
    fn has(&self, i: usize) -> bool {
        self.n.input.get(i).is_some_and(|s| !s.is_empty())
    }

    fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.n
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some(name))
    }

    fn attr_i(&self, name: &str) -> Option<i64> {
        self.attr(name).and_then(|a| a.i)
    }

    fn attr_f(&self, name: &str) -> Option<f32> {
        self.attr(name).and_then(|a| a.f)
    }

    fn attr_ints(&self, name: &str) -> Option<Vec<i64>> {
        self.attr(name).map(|a| a.ints.clone())
    }

    fn attr_s(&self, name: &str) -> Option<String> {
        self.attr(name)
            .and_then(|a| a.s.as_ref())
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}

struct Ctx {
    vals: HashMap<String, Val>,
    values: Vec<Value>,
    nodes: Vec<Node>,
    opset: i64,
    /// Name of the softmax node, once there is one.
    softmax: Option<String>,
    /// Names that hold the softmax's probabilities (the softmax output and its renames).
    probs: HashSet<String>,
    /// Bytes of constants and shape vectors so far.
    constant_bytes: usize,
}

fn build(g: &GraphProto, opset: i64) -> Result<Graph> {
    if g.node.len() > MAX_NODES {
        return Err(ModelError::Graph(format!(
            "{} nodes is more than the {MAX_NODES}-node limit",
            g.node.len()
        )));
    }
    let mut ctx = Ctx {
        vals: HashMap::new(),
        values: Vec::new(),
        nodes: Vec::new(),
        opset,
        softmax: None,
        probs: HashSet::new(),
        constant_bytes: 0,
    };
    for t in &g.initializer {
        let name = t.name.clone().unwrap_or_default();
        let t = tensor(t).map_err(|r| ModelError::Graph(format!("initializer {name:?}: {r}")))?;
        ctx.count(t.bytes())
            .map_err(|r| ModelError::Graph(format!("initializer {name:?}: {r}")))?;
        ctx.vals.insert(name, Val::Const(Rc::new(t)));
    }
    let inputs: Vec<_> = g
        .input
        .iter()
        .filter(|i| !ctx.vals.contains_key(i.name.as_deref().unwrap_or("")))
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
    let mut shape = Vec::new();
    for (i, d) in dims.iter().enumerate().skip(1) {
        match d.dim_value {
            Some(v) if v > 0 && v < (1 << 24) => shape.push(v as usize),
            _ => {
                return Err(ModelError::Graph(format!(
                    "input dimension {i} is not a fixed positive size (only the first, the batch, may be dynamic)"
                )))
            }
        }
    }
    if elements(&shape).is_none_or(|n| n > MAX_TENSOR) {
        return Err(ModelError::Graph(format!(
            "input shape [N, {}] is too large",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    ctx.values.push(Value { shape });
    ctx.vals.insert(input_name.clone(), Val::Act(0));
    for (index, node) in g.node.iter().enumerate() {
        let at = At { n: node, index };
        let op = at.op();
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
                node: at.name(),
                index,
                supported: supported_ops().join(", "),
            })?;
        let reads_probs = node.input.iter().any(|i| ctx.probs.contains(i));
        if let (Some(s), true) = (&ctx.softmax, reads_probs) {
            // Renaming the probabilities (Identity, Cast) is fine; computing on them is not.
            if !RENAMES.contains(&op) {
                return Err(at.err(format!("a layer after the softmax at node {s:?}: sotto applies softmax at the client, so it must be the last layer")));
            }
        }
        f(&mut ctx, &at)?;
        if let (Some(out), false) = (node.output.first(), op == "Softmax") {
            if reads_probs {
                ctx.probs.insert(out.clone());
            } else {
                ctx.probs.remove(out);
            }
        }
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
    let output_name = outputs[0].clone();
    let output = match ctx.vals.get(&output_name) {
        Some(Val::Act(v)) => *v,
        Some(_) => {
            return Err(ModelError::Graph(format!(
                "the output {output_name:?} is a constant, not computed from the input"
            )))
        }
        None => {
            return Err(ModelError::Graph(format!(
                "the output {output_name:?} is not produced by any node"
            )))
        }
    };
    let softmax_at_client = ctx.probs.contains(&output_name);
    if let (Some(s), false) = (&ctx.softmax, softmax_at_client) {
        return Err(ModelError::Graph(format!(
            "the softmax at node {s:?} does not give the output {output_name:?}: sotto applies softmax at the client, so it must be the last layer"
        )));
    }
    if ctx.nodes.is_empty() {
        return Err(ModelError::Graph("the model has no layer".into()));
    }
    let g = Graph {
        input_name,
        input: 0,
        values: ctx.values,
        nodes: ctx.nodes,
        output,
        output_name,
        softmax_at_client,
    };
    g.validate()?;
    Ok(g)
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
        dims.push(usize::try_from(d).map_err(|_| format!("dimension {d} is too large"))?);
    }
    let n = elements(&dims)
        .filter(|&n| n <= MAX_TENSOR)
        .ok_or_else(|| format!("dimensions {dims:?} are too large"))?;
    let raw = t.raw_data.as_deref().unwrap_or(&[]);
    let fixed = |size: usize| -> std::result::Result<Vec<[u8; 8]>, String> {
        if Some(raw.len()) != n.checked_mul(size) {
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
    let four = |b: &[u8; 8]| [b[0], b[1], b[2], b[3]];
    let dt = t.data_type.unwrap_or(0);
    let has_raw = t.raw_data.is_some();
    let (f, i): (Option<Vec<f32>>, Option<Vec<i64>>) = match dt {
        data_type::FLOAT if has_raw => (
            Some(
                fixed(4)?
                    .iter()
                    .map(|b| f32::from_le_bytes(four(b)))
                    .collect(),
            ),
            None,
        ),
        data_type::FLOAT => (Some(t.float_data.clone()), None),
        data_type::DOUBLE if has_raw => (
            Some(
                fixed(8)?
                    .iter()
                    .map(|b| f64::from_le_bytes(*b) as f32)
                    .collect(),
            ),
            None,
        ),
        data_type::DOUBLE => (
            Some(t.double_data.iter().map(|v| *v as f32).collect()),
            None,
        ),
        data_type::INT64 if has_raw => (
            None,
            Some(fixed(8)?.iter().map(|b| i64::from_le_bytes(*b)).collect()),
        ),
        data_type::INT64 => (None, Some(t.int64_data.clone())),
        data_type::INT32 if has_raw => (
            None,
            Some(
                fixed(4)?
                    .iter()
                    .map(|b| i64::from(i32::from_le_bytes(four(b))))
                    .collect(),
            ),
        ),
        data_type::INT32 => (
            None,
            Some(t.int32_data.iter().map(|v| i64::from(*v)).collect()),
        ),
        other => {
            return Err(format!(
                "element type {other} is not supported (float, double, int32, int64 are)"
            ))
        }
    };
    let len = f.as_ref().map_or(0, Vec::len) + i.as_ref().map_or(0, Vec::len);
    if len != n {
        return Err(format!("{len} elements for dimensions {dims:?}"));
    }
    let shape = IxDyn(&dims);
    match (f, i) {
        (Some(v), _) => {
            if v.iter().any(|x| !x.is_finite()) {
                return Err("a weight is NaN or infinite".into());
            }
            ArrayD::from_shape_vec(shape, v)
                .map(Tensor::F)
                .map_err(|e| e.to_string())
        }
        (None, Some(v)) => ArrayD::from_shape_vec(shape, v)
            .map(Tensor::I)
            .map_err(|e| e.to_string()),
        (None, None) => Err("no data".into()),
    }
}

impl Ctx {
    /// The total after `n` more constant bytes, if it stays within [`MAX_CONSTANT_BYTES`].
    fn room(&self, n: usize) -> std::result::Result<usize, String> {
        self.constant_bytes
            .checked_add(n)
            .filter(|&t| t <= MAX_CONSTANT_BYTES)
            .ok_or_else(|| {
                format!("the model's constants and shape vectors exceed {MAX_CONSTANT_BYTES} bytes")
            })
    }

    /// Counts `n` new constant bytes against [`MAX_CONSTANT_BYTES`].
    fn count(&mut self, n: usize) -> std::result::Result<(), String> {
        self.constant_bytes = self.room(n)?;
        Ok(())
    }

    fn get(&self, at: &At, i: usize) -> Result<&Val> {
        let name =
            at.n.input
                .get(i)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| at.err(format!("missing input {i}")))?;
        self.vals.get(name).ok_or_else(|| {
            at.err(format!(
                "input {name:?} is not produced by any earlier node"
            ))
        })
    }

    /// Input `i` as an activation.
    fn act(&self, at: &At, i: usize) -> Result<ValueId> {
        match self.get(at, i)? {
            Val::Act(v) => Ok(*v),
            _ => Err(at.err(format!(
                "input {i} should be an activation (computed from the model input), not a constant"
            ))),
        }
    }

    /// Per-example shape of an activation.
    fn shape(&self, v: ValueId) -> Vec<usize> {
        self.values
            .get(v)
            .map(|v| v.shape.clone())
            .unwrap_or_default()
    }

    fn konst(&self, at: &At, i: usize) -> Result<Rc<Tensor>> {
        match self.get(at, i)? {
            Val::Const(t) => Ok(t.clone()),
            _ => Err(at.err(format!(
                "input {i} must be a constant (weights are part of the model)"
            ))),
        }
    }

    /// Input `i` as a float constant.
    fn floats(&self, at: &At, i: usize) -> Result<ArrayD<f32>> {
        match &*self.konst(at, i)? {
            Tensor::F(a) => Ok(a.clone()),
            Tensor::I(_) => Err(at.err(format!(
                "input {i} holds integers where float weights are expected"
            ))),
        }
    }

    /// Input `i` as one float (a scalar or a one-element tensor).
    fn scalar(&self, at: &At, i: usize) -> Result<f32> {
        let a = match &*self.konst(at, i)? {
            Tensor::F(a) => a.iter().copied().collect::<Vec<_>>(),
            Tensor::I(a) => a.iter().map(|v| *v as f32).collect(),
        };
        match a[..] {
            [v] => Ok(v),
            _ => Err(at.err(format!(
                "input {i} should be a single number, not {} of them",
                a.len()
            ))),
        }
    }

    fn sym_or_ints(&self, at: &At, i: usize) -> Result<Vec<Sym>> {
        match self.get(at, i)? {
            Val::Sym(s) => Ok(s.to_vec()),
            Val::Const(t) => match &**t {
                Tensor::I(v) if v.len() > MAX_SHAPE_VECTOR => Err(at.err(format!(
                    "input {i} has {} integers, more than a shape or index list may ({MAX_SHAPE_VECTOR})",
                    v.len()
                ))),
                Tensor::I(v) => Ok(v.iter().map(|x| Sym::Int(*x)).collect()),
                Tensor::F(_) => Err(at.err(format!(
                    "input {i} must be an integer tensor or a shape, not floats"
                ))),
            },
            Val::Act(_) => Err(at.err(format!(
                "input {i} must be a constant integer tensor or a shape, not an activation"
            ))),
        }
    }

    fn ints(&self, at: &At, i: usize) -> Result<Vec<i64>> {
        self.sym_or_ints(at, i)?
            .into_iter()
            .map(|s| match s {
                Sym::Int(v) => Ok(v),
                Sym::Batch => Err(at.err(format!("input {i} depends on the batch size"))),
            })
            .collect()
    }

    fn out_name(at: &At) -> Result<String> {
        at.n.output
            .first()
            .filter(|s| !s.is_empty())
            .cloned()
            .ok_or_else(|| at.err("no output"))
    }

    /// Names the node's output `v` (no new data).
    fn alias(&mut self, at: &At, v: Val) -> Result<()> {
        let out = Self::out_name(at)?;
        self.vals.insert(out, v);
        Ok(())
    }

    /// A new constant as the node's output.
    fn set_const(&mut self, at: &At, t: Tensor) -> Result<()> {
        self.count(t.bytes()).map_err(|r| at.err(r))?;
        self.alias(at, Val::Const(Rc::new(t)))
    }

    /// A new shape vector as the node's output.
    fn set_sym(&mut self, at: &At, s: Vec<Sym>) -> Result<()> {
        if s.len() > MAX_SHAPE_VECTOR {
            return Err(at.err(format!(
                "a shape vector of {} elements (at most {MAX_SHAPE_VECTOR} are supported)",
                s.len()
            )));
        }
        self.count(s.len() * std::mem::size_of::<Sym>())
            .map_err(|r| at.err(r))?;
        self.alias(at, Val::Sym(Rc::new(s)))
    }

    /// Adds a node computing `op` from `inputs` (its output shape checked, `declared` for a
    /// `Reshape`) and returns its output value.
    fn add_node(
        &mut self,
        at: &At,
        name: String,
        op: Op,
        inputs: Vec<ValueId>,
        declared: &[usize],
    ) -> Result<ValueId> {
        if self.nodes.len() >= 2 * MAX_NODES {
            return Err(at.err("too many nodes"));
        }
        let ins: Vec<&[usize]> = inputs
            .iter()
            .map(|&v| self.values.get(v).map(|x| &x.shape[..]).unwrap_or(&[]))
            .collect();
        let shape = op.output_shape(&ins, declared).map_err(|r| at.err(r))?;
        let id = self.values.len();
        self.values.push(Value { shape });
        self.nodes.push(Node {
            name,
            op,
            inputs,
            output: id,
        });
        Ok(id)
    }

    /// Adds a node for `at` and names its output.
    fn emit(&mut self, at: &At, op: Op, inputs: Vec<ValueId>) -> Result<()> {
        self.emit_as(at, op, inputs, &[])
    }

    /// [`Ctx::emit`] with the output shape a `Reshape` needs.
    fn emit_as(&mut self, at: &At, op: Op, inputs: Vec<ValueId>, declared: &[usize]) -> Result<()> {
        let id = self.add_node(at, at.name(), op, inputs, declared)?;
        self.alias(at, Val::Act(id))
    }
}

/// Normalizes axis `i` (possibly negative) of a rank-`rank` tensor.
fn norm_axis(i: i64, rank: usize) -> Option<usize> {
    let r = i64::try_from(rank).ok()?;
    let j = if i < 0 { i.checked_add(r)? } else { i };
    (0..r).contains(&j).then_some(j as usize)
}

/// Two positive sizes (kernel, strides) from an attribute, `default` when absent.
fn pair(at: &At, name: &str, default: usize) -> Result<[usize; 2]> {
    match at.attr_ints(name).as_deref() {
        None | Some([]) => Ok([default, default]),
        Some([a, b]) if *a > 0 && *b > 0 && *a < 1 << 16 && *b < 1 << 16 => {
            Ok([*a as usize, *b as usize])
        }
        Some(other) => Err(at.err(format!("{name} {other:?} is not two positive sizes"))),
    }
}

/// Padding `[top, left, bottom, right]` from `pads` or `auto_pad`.
fn padding(at: &At, hw: [usize; 2], kernel: [usize; 2], stride: [usize; 2]) -> Result<[usize; 4]> {
    let auto = at.attr_s("auto_pad").unwrap_or_else(|| "NOTSET".into());
    match auto.as_str() {
        "NOTSET" | "" => match at.attr_ints("pads").as_deref() {
            None | Some([]) => Ok([0; 4]),
            Some(p) if p.len() == 4 && p.iter().all(|v| (0..1 << 16).contains(v)) => {
                Ok([p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize])
            }
            Some(p) => Err(at.err(format!("pads {p:?} are not four non-negative sizes"))),
        },
        "VALID" => Ok([0; 4]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut out = [0usize; 4];
            for a in 0..2 {
                let o = hw[a].div_ceil(stride[a].max(1));
                let total = (o.saturating_sub(1) * stride[a] + kernel[a]).saturating_sub(hw[a]);
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
        other => Err(at.err(format!("auto_pad {other} is not supported"))),
    }
}

/// `[C, H, W]` of an activation, or an error naming the shape.
fn chw(shape: &[usize], at: &At) -> Result<[usize; 3]> {
    match shape {
        [c, h, w] => Ok([*c, *h, *w]),
        _ => Err(at.err(format!(
            "expects a [batch, channels, height, width] activation, got {}",
            batch_shape(shape)
        ))),
    }
}

/// `[N, 28, 28, 1]`-style text of a per-example shape.
fn batch_shape(shape: &[usize]) -> String {
    let parts: Vec<String> = std::iter::once("N".to_string())
        .chain(shape.iter().map(|d| d.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

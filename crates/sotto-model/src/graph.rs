//! The graph IR: values with ids, nodes that read values and write one, in topological order.
//!
//! This is what an ONNX file becomes ([`crate::import::import_graph`]): every activation is a
//! [`Value`] (its per-example shape, the batch excluded), every computation a [`Node`]. Chains
//! of layers are the special case that [`Graph::lower`] turns into today's
//! [`Model`](crate::ir::Model), which the fixed-point plan and the private protocols run;
//! [`Graph::forward`] evaluates any graph in floating point (the reference the private run is
//! compared with), and [`Graph::optimize`] folds constant scales and shifts into the linear
//! layers next to them.
//!
//! Shapes are per example and tensors are laid out batch first, row-major (NCHW for images,
//! as ONNX has them).

use ndarray::ArrayD;

use crate::error::{ModelError, Result};
use crate::ir::{ConvParams, PoolParams};

mod eval;
mod lower;
mod passes;

pub(crate) use eval::pool as pool_f64;
/// The error function (the series sotto-core evaluates for its gelu approximation).
pub use sotto_core::protocols::erf;

/// Most elements of one example of any value (and of any constant tensor).
pub const MAX_VALUE_ELEMENTS: usize = 1 << 28;

/// Index of a value in [`Graph::values`].
pub type ValueId = usize;

/// An activation: the output of a node or the graph input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// Shape of one example (the batch excluded).
    pub shape: Vec<usize>,
}

/// What a node computes. Shapes are per example; "activation" means a value computed from the
/// input (not a constant).
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// `y = x · W + b` over a `[inputs]` activation.
    Dense {
        /// Input features.
        inputs: usize,
        /// Output features.
        outputs: usize,
        /// Weights, `inputs × outputs`, row-major.
        weights: Vec<f32>,
        /// Bias, `outputs`.
        bias: Vec<f32>,
    },
    /// 2-D convolution over a `[C, H, W]` activation, possibly grouped (depthwise when
    /// `group == C`).
    Conv {
        /// Geometry (input, output channels, kernel, stride, padding).
        params: ConvParams,
        /// Number of groups: input and output channels are split in `group` blocks.
        group: usize,
        /// Weights `[O, C / group, kh, kw]`.
        weights: Vec<f32>,
        /// Bias `[O]`.
        bias: Vec<f32>,
    },
    /// Max pooling over `[C, H, W]`; padded positions are ignored (as if `-inf`).
    MaxPool {
        /// Input, window and stride.
        params: PoolParams,
        /// Padding: top, left, bottom, right (each smaller than the window).
        pads: [usize; 4],
    },
    /// Average pooling over `[C, H, W]`.
    AvgPool {
        /// Input, window and stride.
        params: PoolParams,
        /// Padding: top, left, bottom, right (each smaller than the window).
        pads: [usize; 4],
        /// Whether padded positions count in the divisor (ONNX `count_include_pad`; Keras
        /// 'same' pooling does not count them).
        count_include_pad: bool,
    },
    /// Mean over height and width of `[C, H, W]`, giving `[C, 1, 1]`.
    GlobalAvgPool,
    /// Constant padding.
    Pad {
        /// Elements added before and after, per per-example axis.
        pads: Vec<[usize; 2]>,
        /// The padding value.
        value: f32,
    },
    /// `y = x · scale + shift`, elementwise; both broadcast (numpy-style, aligned at the
    /// trailing axis) to the per-example shape.
    Affine {
        /// The factor.
        scale: ArrayD<f32>,
        /// The offset.
        shift: ArrayD<f32>,
    },
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// `min(max(x, min), max)` (ReLU6 is `Clip{0, 6}`; either bound may be infinite).
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// `x` if `x ≥ 0`, else `alpha · x`.
    LeakyRelu {
        /// Slope below zero.
        alpha: f32,
    },
    /// `x` if `x ≥ 0`, else `alpha · (e^x − 1)`.
    Elu {
        /// Scale below zero.
        alpha: f32,
    },
    /// `max(0, min(1, alpha · x + beta))`.
    HardSigmoid {
        /// Slope.
        alpha: f32,
        /// Offset.
        beta: f32,
    },
    /// The error function (exact gelu is built from it).
    Erf,
    /// An activation recognised in a group of elementwise nodes (swish, gelu, hard_swish as
    /// exporters write them: a product of a value and a function of it), or LeakyReLU/ELU.
    Act(crate::ir::Activation),
    /// `x^exponent` for a constant exponent.
    Pow {
        /// The exponent.
        exponent: f32,
    },
    /// Sum of two activations (ONNX broadcasting; a residual connection).
    Add,
    /// Difference of two activations.
    Sub,
    /// Product of two activations (swish, gelu).
    Mul,
    /// Elementwise maximum of two activations.
    Max,
    /// Elementwise minimum of two activations.
    Min,
    /// Concatenation of activations along a per-example axis.
    Concat {
        /// The axis (0 is the first axis after the batch).
        axis: usize,
    },
    /// Same data, the output value's shape.
    Reshape,
    /// A permutation of the per-example axes.
    Transpose {
        /// Output axis `i` is input axis `perm[i]` (per-example axes, the batch excluded).
        perm: Vec<usize>,
    },
}

impl Op {
    /// Short name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Dense { .. } => "Dense",
            Op::Conv { .. } => "Conv",
            Op::MaxPool { .. } => "MaxPool",
            Op::AvgPool { .. } => "AveragePool",
            Op::GlobalAvgPool => "GlobalAveragePool",
            Op::Pad { .. } => "Pad",
            Op::Affine { .. } => "Affine",
            Op::Relu => "Relu",
            Op::Sigmoid => "Sigmoid",
            Op::Tanh => "Tanh",
            Op::Clip { .. } => "Clip",
            Op::LeakyRelu { .. } => "LeakyRelu",
            Op::Elu { .. } => "Elu",
            Op::HardSigmoid { .. } => "HardSigmoid",
            Op::Erf => "Erf",
            Op::Act(a) => a.name(),
            Op::Pow { .. } => "Pow",
            Op::Add => "Add",
            Op::Sub => "Sub",
            Op::Mul => "Mul",
            Op::Max => "Max",
            Op::Min => "Min",
            Op::Concat { .. } => "Concat",
            Op::Reshape => "Reshape",
            Op::Transpose { .. } => "Transpose",
        }
    }

    /// Shape of the output for inputs of shapes `ins`, or why the op does not fit them.
    /// `declared` is the output shape recorded in the graph, which only [`Op::Reshape`]
    /// takes as given (its size must match).
    pub fn output_shape(
        &self,
        ins: &[&[usize]],
        declared: &[usize],
    ) -> std::result::Result<Vec<usize>, String> {
        let arity = match self {
            Op::Add | Op::Sub | Op::Mul | Op::Max | Op::Min => 2,
            Op::Concat { .. } => ins.len().max(1),
            _ => 1,
        };
        if ins.len() != arity {
            return Err(format!("{} inputs where {arity} are expected", ins.len()));
        }
        let x = ins[0];
        let out = match self {
            Op::Dense {
                inputs,
                outputs,
                weights,
                bias,
            } => {
                if x != [*inputs] {
                    return Err(format!("expects [{inputs}] features, got {x:?}"));
                }
                if Some(weights.len()) != inputs.checked_mul(*outputs) || bias.len() != *outputs {
                    return Err(format!(
                        "{} weights and {} biases for {inputs} × {outputs}",
                        weights.len(),
                        bias.len()
                    ));
                }
                vec![*outputs]
            }
            Op::Conv {
                params,
                group,
                weights,
                bias,
            } => conv_shape(x, params, *group, weights.len(), bias.len())?.to_vec(),
            Op::MaxPool { params, pads }
            | Op::AvgPool {
                params,
                pads,
                count_include_pad: _,
            } => pool_shape(x, params, *pads)?.to_vec(),
            Op::GlobalAvgPool => match x {
                [c, h, w] if *h > 0 && *w > 0 => vec![*c, 1, 1],
                _ => return Err(format!("expects [C, H, W], got {x:?}")),
            },
            Op::Pad { pads, value } => {
                if pads.len() != x.len() || !value.is_finite() {
                    return Err(format!(
                        "pads {pads:?} (value {value}) do not fit shape {x:?}"
                    ));
                }
                x.iter()
                    .zip(pads)
                    .map(|(d, [a, b])| d.checked_add(*a)?.checked_add(*b))
                    .collect::<Option<Vec<usize>>>()
                    .ok_or("padded size overflows")?
            }
            Op::Affine { scale, shift } => {
                for (what, a) in [("scale", scale), ("shift", shift)] {
                    if !broadcasts_to(a.shape(), x) {
                        return Err(format!(
                            "{what} of shape {:?} does not broadcast to {x:?}",
                            a.shape()
                        ));
                    }
                    if a.iter().any(|v| !v.is_finite()) {
                        return Err(format!("{what} is not finite"));
                    }
                }
                x.to_vec()
            }
            Op::Clip { min, max } => {
                if min.is_nan() || max.is_nan() || min > max {
                    return Err(format!("bounds [{min}, {max}] are not an interval"));
                }
                x.to_vec()
            }
            Op::LeakyRelu { alpha } | Op::Elu { alpha } if !alpha.is_finite() => {
                return Err(format!("alpha {alpha} is not finite"))
            }
            Op::HardSigmoid { alpha, beta } if !(alpha.is_finite() && beta.is_finite()) => {
                return Err(format!("alpha {alpha} or beta {beta} is not finite"))
            }
            Op::Pow { exponent } if !exponent.is_finite() => {
                return Err(format!("exponent {exponent} is not finite"))
            }
            Op::Relu
            | Op::Sigmoid
            | Op::Tanh
            | Op::LeakyRelu { .. }
            | Op::Elu { .. }
            | Op::HardSigmoid { .. }
            | Op::Erf
            | Op::Act(_)
            | Op::Pow { .. } => x.to_vec(),
            Op::Add | Op::Sub | Op::Mul | Op::Max | Op::Min => {
                if ins[0].len() != ins[1].len() {
                    return Err(format!(
                        "operands of ranks {} and {} (with the batch first, they must have the same rank)",
                        ins[0].len(),
                        ins[1].len()
                    ));
                }
                broadcast_shape(ins[0], ins[1]).ok_or_else(|| {
                    format!("shapes {:?} and {:?} do not broadcast", ins[0], ins[1])
                })?
            }
            Op::Concat { axis } => {
                let mut out = x.to_vec();
                if *axis >= out.len() {
                    return Err(format!("axis {axis} of a rank-{} value", out.len()));
                }
                for s in &ins[1..] {
                    let fits = s.len() == out.len()
                        && s.iter()
                            .zip(&out)
                            .enumerate()
                            .all(|(i, (a, b))| i == *axis || a == b);
                    if !fits {
                        return Err(format!("shapes {x:?} and {s:?} do not concatenate"));
                    }
                    out[*axis] = out[*axis]
                        .checked_add(s[*axis])
                        .ok_or("concatenated size overflows")?;
                }
                out
            }
            Op::Reshape => {
                if elements(x) != elements(declared) || elements(x).is_none() {
                    return Err(format!("reshape of {x:?} to {declared:?} changes the size"));
                }
                declared.to_vec()
            }
            Op::Transpose { perm } => {
                if !is_permutation(perm, x.len()) {
                    return Err(format!("{perm:?} is not a permutation of {} axes", x.len()));
                }
                perm.iter().map(|&p| x[p]).collect()
            }
        };
        if elements(&out).is_none_or(|n| n > MAX_VALUE_ELEMENTS) {
            return Err(format!(
                "output shape {out:?} is larger than {MAX_VALUE_ELEMENTS} elements per example"
            ));
        }
        Ok(out)
    }
}

/// One computation: reads `inputs`, writes `output`.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Name of the ONNX node it comes from (the first one, when several were merged).
    pub name: String,
    /// What it computes.
    pub op: Op,
    /// The values it reads.
    pub inputs: Vec<ValueId>,
    /// The value it writes.
    pub output: ValueId,
}

/// A model as a graph: one input, one output, nodes in topological order.
#[derive(Debug, Clone, PartialEq)]
pub struct Graph {
    /// Name of the graph input.
    pub input_name: String,
    /// The input value.
    pub input: ValueId,
    /// All values; a value is written by exactly one node, or is the input.
    pub values: Vec<Value>,
    /// The nodes, each after the nodes that write its inputs.
    pub nodes: Vec<Node>,
    /// The output value (the logits when `softmax_at_client`).
    pub output: ValueId,
    /// Name of the graph output.
    pub output_name: String,
    /// True when the ONNX graph ends with a softmax: the client applies it to the output.
    pub softmax_at_client: bool,
}

impl Graph {
    /// Elements of one input example.
    pub fn input_len(&self) -> usize {
        self.values
            .get(self.input)
            .and_then(|v| elements(&v.shape))
            .unwrap_or(0)
    }

    /// Shape of one output example.
    pub fn output_shape(&self) -> &[usize] {
        self.values
            .get(self.output)
            .map_or(&[][..], |v| &v.shape[..])
    }

    /// Checks that the graph is well formed: ids in range, each value written once and
    /// before it is read, every op fits the shapes of its inputs and output.
    pub fn validate(&self) -> Result<()> {
        let n = self.values.len();
        if self.input >= n || self.output >= n {
            return Err(ModelError::Graph(
                "the input or output is not a value of the graph".into(),
            ));
        }
        if elements(&self.values[self.input].shape).is_none_or(|e| e > MAX_VALUE_ELEMENTS) {
            return Err(ModelError::Graph("the input is too large".into()));
        }
        let mut defined = vec![false; n];
        defined[self.input] = true;
        for node in &self.nodes {
            let err = |reason: String| ModelError::Node {
                node: node.name.clone(),
                op: node.op.name().into(),
                reason,
            };
            if node.output >= n || defined[node.output] {
                return Err(err("writes a value that already exists".into()));
            }
            let mut ins = Vec::with_capacity(node.inputs.len());
            for &i in &node.inputs {
                if !defined.get(i).copied().unwrap_or(false) {
                    return Err(err(format!(
                        "reads value {i}, which no earlier node writes"
                    )));
                }
                ins.push(&self.values[i].shape[..]);
            }
            let declared = &self.values[node.output].shape;
            let out = node.op.output_shape(&ins, declared).map_err(err)?;
            if &out != declared {
                return Err(err(format!(
                    "computes shape {out:?} but its output is recorded as {declared:?}"
                )));
            }
            defined[node.output] = true;
        }
        if !defined[self.output] {
            return Err(ModelError::Graph(
                "the output is not computed by any node".into(),
            ));
        }
        Ok(())
    }
}

/// Product of the dimensions, or `None` when it overflows.
pub fn elements(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Whether `from` broadcasts to `to` (numpy rules, aligned at the trailing axis, without
/// growing `to`).
pub fn broadcasts_to(from: &[usize], to: &[usize]) -> bool {
    from.len() <= to.len()
        && from
            .iter()
            .rev()
            .zip(to.iter().rev())
            .all(|(a, b)| a == b || *a == 1)
}

/// The numpy broadcast of two shapes (aligned at the trailing axis), if they broadcast.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let at = |s: &[usize], i: usize| -> usize {
        let off = rank - s.len();
        if i < off {
            1
        } else {
            s[i - off]
        }
    };
    (0..rank)
        .map(|i| {
            let (x, y) = (at(a, i), at(b, i));
            if x == y || y == 1 {
                Some(x)
            } else if x == 1 {
                Some(y)
            } else {
                None
            }
        })
        .collect()
}

fn is_permutation(perm: &[usize], rank: usize) -> bool {
    let mut seen = vec![false; rank];
    perm.len() == rank
        && perm
            .iter()
            .all(|&p| p < rank && !std::mem::replace(&mut seen[p], true))
}

/// Output `[O, oh, ow]` of a (grouped) convolution, checking its parameters.
pub(crate) fn conv_shape(
    x: &[usize],
    p: &ConvParams,
    group: usize,
    weights: usize,
    bias: usize,
) -> std::result::Result<[usize; 3], String> {
    let [c, h, w] = p.in_chw;
    if x != p.in_chw {
        return Err(format!("expects [{c}, {h}, {w}], got {x:?}"));
    }
    let o = p.out_channels;
    if group == 0 || c % group != 0 || !o.is_multiple_of(group) || c == 0 || o == 0 {
        return Err(format!(
            "{group} groups do not divide {c} input and {o} output channels"
        ));
    }
    let per = [o, c / group, p.kernel[0], p.kernel[1]];
    if Some(weights) != elements(&per) || bias != o {
        return Err(format!(
            "{weights} weights and {bias} biases do not fit a kernel {per:?}"
        ));
    }
    let [oh, ow] = window_out([h, w], p.kernel, p.stride, p.pads, false)?;
    Ok([o, oh, ow])
}

/// Output `[C, oh, ow]` of a pooling, checking its parameters.
pub(crate) fn pool_shape(
    x: &[usize],
    p: &PoolParams,
    pads: [usize; 4],
) -> std::result::Result<[usize; 3], String> {
    let [c, h, w] = p.in_chw;
    if x != p.in_chw {
        return Err(format!("expects [{c}, {h}, {w}], got {x:?}"));
    }
    let [oh, ow] = window_out([h, w], p.kernel, p.stride, pads, true)?;
    Ok([c, oh, ow])
}

/// Output size of a sliding window over `hw` padded by `pads` (top, left, bottom, right).
/// With `pads_below_kernel` every window must hold at least one real element.
fn window_out(
    hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    pads: [usize; 4],
    pads_below_kernel: bool,
) -> std::result::Result<[usize; 2], String> {
    let mut out = [0; 2];
    for a in 0..2 {
        let (k, s, before, after) = (kernel[a], stride[a], pads[a], pads[a + 2]);
        if k == 0 || s == 0 || hw[a] == 0 {
            return Err(format!(
                "kernel {kernel:?}, stride {stride:?} over {hw:?} are not positive sizes"
            ));
        }
        if pads_below_kernel && (before >= k || after >= k) {
            return Err(format!(
                "padding {pads:?} must be smaller than the window {kernel:?}"
            ));
        }
        let padded = hw[a]
            .checked_add(before)
            .and_then(|v| v.checked_add(after))
            .ok_or("padded size overflows")?;
        if padded < k {
            return Err(format!(
                "window {kernel:?} larger than the padded input {hw:?} + {pads:?}"
            ));
        }
        out[a] = (padded - k) / s + 1;
    }
    Ok(out)
}

//! Lowering to the layers ([`Model`]) that the fixed-point plan and the private protocols
//! run: a chain, or a graph of layers with skip connections (Add, Sub) and branches (Concat).

use super::{Graph, Node, Op};
use crate::error::{ModelError, Result};
use crate::ir::{Activation, ConvParams, Dim, Layer, Model, Named, PoolParams};

impl Graph {
    /// The graph as layers, when every op has a layer (each layer reads the input or earlier
    /// layers' outputs, in the graph's order); otherwise the first node that does not fit,
    /// with what the private plan does not run yet and, where there is one, what to change in
    /// the Keras model. Run [`Graph::optimize`] first: it folds constant scales and shifts
    /// (BatchNormalization, Rescaling) into the layers next to them.
    pub fn lower(&self) -> Result<Model> {
        self.validate()?;
        if self.nodes.is_empty() {
            return Err(ModelError::Graph("the model has no layer".into()));
        }
        let dims = |s: &[usize]| -> Vec<Dim> {
            std::iter::once(Dim::Batch)
                .chain(s.iter().map(|&d| Dim::Fixed(d)))
                .collect()
        };
        // Ops first, so that the message names what is missing (a LeakyReLU, a product of
        // two activations) rather than a constant next to it; constant scales and shifts last, since
        // they are left over when what is next to them is missing (gelu's Mul(0.5)).
        for affine in [false, true] {
            for n in &self.nodes {
                if matches!(n.op, Op::Affine { .. }) == affine {
                    if let Some(e) = refusal(n, &self.values[n.inputs[0]].shape) {
                        return Err(e);
                    }
                }
            }
        }
        // Model value ids: 0 is the input, `k + 1` the output of layer `k`.
        let mut id = vec![usize::MAX; self.values.len()];
        id[self.input] = 0;
        let mut layers = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            let in_shape = &self.values[n.inputs[0]].shape;
            let out_shape = &self.values[n.output].shape;
            if matches!(n.op, Op::Add | Op::Sub)
                && (n.inputs.len() != 2 || self.values[n.inputs[1]].shape != *in_shape)
            {
                return Err(not_yet(
                    n,
                    "a sum or difference of two activations of different shapes (broadcasting)",
                    "give both branches the same shape",
                ));
            }
            let inputs = n
                .inputs
                .iter()
                .map(|v| match id.get(*v) {
                    Some(&i) if i != usize::MAX => Ok(i),
                    _ => Err(internal(n)),
                })
                .collect::<Result<Vec<_>>>()?;
            // A padded max pooling is two layers: the padding (which the max ignores), then
            // the pooling.
            if let Op::MaxPool { params, pads } = &n.op {
                if *pads != [0; 4] {
                    let padded = params.padded(*pads);
                    let [c, h, w] = padded.in_chw;
                    layers.push(Named {
                        node: n.name.clone(),
                        layer: Layer::Pad {
                            in_chw: params.in_chw,
                            pads: *pads,
                            value: f32::NEG_INFINITY,
                        },
                        out_shape: dims(&[c, h, w]),
                        inputs,
                    });
                    layers.push(Named {
                        node: n.name.clone(),
                        layer: Layer::MaxPool(padded),
                        out_shape: dims(out_shape),
                        inputs: vec![layers.len()],
                    });
                    id[n.output] = layers.len();
                    continue;
                }
            }
            layers.push(Named {
                node: n.name.clone(),
                layer: layer_of(n, in_shape, out_shape)?,
                out_shape: dims(out_shape),
                inputs,
            });
            id[n.output] = layers.len();
        }
        if self.nodes.last().map(|n| n.output) != Some(self.output) {
            return Err(ModelError::Graph(
                "the output is not written by the last layer (a layer whose result nothing reads?)"
                    .into(),
            ));
        }
        Ok(Model {
            input_name: self.input_name.clone(),
            input_shape: dims(&self.values[self.input].shape),
            layers,
            softmax_at_client: self.softmax_at_client,
            output_name: self.output_name.clone(),
        })
    }
}

/// Every window of a pooling padded by `pads` reaches the input (each padding below the
/// window), so that a max or an average over its real positions exists.
fn pads_fit(p: &PoolParams, pads: &[usize; 4]) -> bool {
    pads[0] < p.kernel[0] && pads[2] < p.kernel[0] && pads[1] < p.kernel[1] && pads[3] < p.kernel[1]
}

/// A constant scale and shift that is the same for every element of a channel (of a
/// `[C, H, W]` value) or is per feature (of a `[F]` value) as a depthwise 1×1 convolution:
/// weights `scale`, bias `shift`, one group per channel (a product with the weights' own
/// cost: one opening with private weights, local with public ones). BatchNormalization after
/// an activation and before a 'same' convolution or a pooling ends here.
fn affine_as_conv(
    scale: &ndarray::ArrayD<f32>,
    shift: &ndarray::ArrayD<f32>,
    in_shape: &[usize],
) -> Option<(ConvParams, Vec<f32>, Vec<f32>)> {
    let chw = match *in_shape {
        [c, h, w] => [c, h, w],
        [f] => [f, 1, 1],
        _ => return None,
    };
    let full = ndarray::IxDyn(in_shape);
    let per_channel = |a: &ndarray::ArrayD<f32>| -> Option<Vec<f32>> {
        let b = a.broadcast(full.clone())?;
        let (c, rest) = (chw[0], chw[1] * chw[2]);
        let flat: Vec<f32> = b.iter().copied().collect();
        (0..c)
            .map(|ch| {
                let plane = &flat[ch * rest..(ch + 1) * rest];
                plane.iter().all(|v| *v == plane[0]).then_some(plane[0])
            })
            .collect()
    };
    let (s, t) = (per_channel(scale)?, per_channel(shift)?);
    if s.iter().chain(&t).any(|v| !v.is_finite()) {
        return None;
    }
    let params = ConvParams {
        in_chw: chw,
        out_channels: chw[0],
        kernel: [1, 1],
        stride: [1, 1],
        pads: [0; 4],
        group: chw[0],
    };
    Some((params, s, t))
}

/// The refusal of a node the import accepted but the private plan cannot run yet.
fn not_yet(n: &Node, what: &str, change: &str) -> ModelError {
    ModelError::Node {
        node: n.name.clone(),
        op: n.op.name().into(),
        reason: format!(
            "the import succeeded, but the private plan does not run {what} yet{}{change}",
            if change.is_empty() { "" } else { "; " }
        ),
    }
}

/// Why node `n` (reading a value of shape `in_shape`) has no layer yet, if it has none.
fn refusal(n: &Node, in_shape: &[usize]) -> Option<ModelError> {
    let (what, change) = match &n.op {
        Op::Affine { scale, shift } if affine_as_conv(scale, shift, in_shape).is_some() => {
            return None
        }
        Op::Dense { .. }
        | Op::Conv { .. }
        | Op::Relu
        | Op::Sigmoid
        | Op::Tanh
        | Op::Reshape
        | Op::Transpose { .. }
        | Op::Add
        | Op::Sub
        | Op::Concat { .. }
        | Op::Act(_)
        | Op::LeakyRelu { .. }
        | Op::Elu { .. } => return None,
        Op::MaxPool { params, pads } | Op::AvgPool { params, pads, .. }
            if pads_fit(params, pads) =>
        {
            return None
        }
        Op::Pad { pads, value }
            if in_shape.len() == 3 && pads[0] == [0, 0] && value.is_finite() =>
        {
            return None
        }
        Op::GlobalAvgPool if in_shape.len() == 3 => return None,
        Op::Clip { min, max } if min.is_finite() && max.is_finite() && min < max => return None,
        Op::MaxPool { .. } | Op::AvgPool { .. } => (
            "pooling with padding as wide as its window",
            "use padding='same' or 'valid' pooling without a wider ZeroPadding2D before it",
        ),
        Op::GlobalAvgPool => ("a global average pooling that is not over [C, H, W]", ""),
        Op::Pad { .. } => (
            "padding of anything but the height and width of an image, or with an infinite value",
            "use ZeroPadding2D on [H, W, C] images",
        ),
        Op::Affine { .. } => (
            "a constant scale and shift that is neither folded into a neighbouring Dense or Conv2D nor the same for every element of a channel (or of a feature)",
            "use BatchNormalization, Rescaling or Normalization per channel (the last axis in Keras)",
        ),
        Op::Clip { .. } => (
            "a clip with an infinite or empty range",
            "use activation='relu'",
        ),
        Op::HardSigmoid { .. } => ("hard_sigmoid", "use activation='sigmoid'"),
        Op::Erf | Op::Pow { .. } => (
            "the error function or a power outside an activation it recognises (gelu)",
            "use activation='gelu', 'swish' or 'relu'",
        ),
        Op::Mul => (
            "the product of two activations that is not an activation it recognises (swish, gelu, hard_swish)",
            "use activation='relu', 'swish', 'gelu' or 'hard_swish'",
        ),
        Op::Max | Op::Min => (
            "the maximum or minimum of two activations (Maximum / Minimum layers)",
            "",
        ),
    };
    Some(not_yet(n, what, change))
}

fn layer_of(n: &Node, in_shape: &[usize], out_shape: &[usize]) -> Result<Layer> {
    if let Some(e) = refusal(n, in_shape) {
        return Err(e);
    }
    Ok(match &n.op {
        Op::Dense {
            inputs,
            outputs,
            weights,
            bias,
        } => Layer::Dense {
            inputs: *inputs,
            outputs: *outputs,
            weights: weights.clone(),
            bias: bias.clone(),
        },
        Op::Conv {
            params,
            group,
            weights,
            bias,
        } => Layer::Conv2d {
            shape: ConvParams {
                group: (*group).max(1),
                ..*params
            },
            weights: weights.clone(),
            bias: bias.clone(),
        },
        Op::MaxPool { params, .. } => Layer::MaxPool(*params),
        Op::AvgPool { params, pads, .. } if *pads == [0; 4] => Layer::AvgPool(*params),
        Op::AvgPool {
            params,
            pads,
            count_include_pad,
        } => Layer::AvgPoolPadded {
            params: *params,
            pads: *pads,
            include_pad: *count_include_pad,
        },
        Op::Pad { pads, value } => match in_shape {
            [c, h, w] => Layer::Pad {
                in_chw: [*c, *h, *w],
                pads: [pads[1][0], pads[2][0], pads[1][1], pads[2][1]],
                value: *value,
            },
            _ => return Err(internal(n)),
        },
        Op::GlobalAvgPool => match in_shape {
            [c, h, w] => Layer::AvgPool(PoolParams {
                in_chw: [*c, *h, *w],
                kernel: [*h, *w],
                stride: [1, 1],
            }),
            _ => return Err(internal(n)),
        },
        Op::Relu => Layer::Relu,
        Op::Clip { min, max } => Layer::Clip {
            min: *min,
            max: *max,
        },
        Op::Sigmoid => Layer::Sigmoid,
        Op::Tanh => Layer::Tanh,
        Op::Reshape if out_shape.len() == 1 => Layer::Flatten,
        Op::Reshape => Layer::Reshape,
        Op::Transpose { perm } => Layer::Transpose {
            perm: std::iter::once(0)
                .chain(perm.iter().map(|p| p + 1))
                .collect(),
        },
        Op::Affine { scale, shift } => {
            let (params, weights, bias) =
                affine_as_conv(scale, shift, in_shape).ok_or_else(|| internal(n))?;
            Layer::Conv2d {
                shape: params,
                weights,
                bias,
            }
        }
        Op::Act(a) => Layer::Activation(*a),
        Op::LeakyRelu { alpha } => Layer::Activation(Activation::LeakyRelu { alpha: *alpha }),
        Op::Elu { alpha } => Layer::Activation(Activation::Elu { alpha: *alpha }),
        Op::Add => Layer::Add,
        Op::Sub => Layer::Sub,
        Op::Concat { axis } => Layer::Concat { axis: *axis },
        _ => return Err(internal(n)),
    })
}

fn internal(n: &Node) -> ModelError {
    ModelError::Node {
        node: n.name.clone(),
        op: n.op.name().into(),
        reason: "has no layer".into(),
    }
}

//! The layer IR: what a model is once imported, independent of ONNX.

use crate::error::{ModelError, Result};

/// A dimension of an activation's shape: the (dynamic) batch or a fixed size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    /// The batch dimension, known only at prediction time.
    Batch,
    /// A fixed size.
    Fixed(usize),
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Batch => write!(f, "N"),
            Dim::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// One layer of a sequential network.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    /// `y = x · W + b`, with `W` row-major `inputs × outputs`.
    Dense {
        /// Input features.
        inputs: usize,
        /// Output features.
        outputs: usize,
        /// Weights, `inputs × outputs`, row-major.
        weights: Vec<f32>,
        /// Bias, `outputs` (zeros when the model has none).
        bias: Vec<f32>,
    },
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// Reshape to `[batch, features]`.
    Flatten,
}

impl Layer {
    /// Short name, as `sotto inspect` prints it.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Dense { .. } => "Dense",
            Layer::Relu => "ReLU",
            Layer::Sigmoid => "Sigmoid",
            Layer::Tanh => "Tanh",
            Layer::Flatten => "Flatten",
        }
    }
}

/// A layer with the ONNX node(s) it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Named {
    /// Name of the (first) ONNX node.
    pub node: String,
    /// The layer.
    pub layer: Layer,
    /// Shape of the layer's output (batch first).
    pub out_shape: Vec<Dim>,
}

/// An imported model: a chain of layers from one input to one output.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    /// Name of the graph input.
    pub input_name: String,
    /// Shape of the input, batch first.
    pub input_shape: Vec<Dim>,
    /// The layers in order.
    pub layers: Vec<Named>,
    /// True when the ONNX graph ends with a softmax: the client applies it to the logits.
    pub softmax_at_client: bool,
    /// Name of the graph output.
    pub output_name: String,
}

impl Model {
    /// Elements of one input example (the input shape without the batch).
    pub fn input_len(&self) -> usize {
        per_example(&self.input_shape)
    }

    /// Shape of the output, batch first.
    pub fn output_shape(&self) -> &[Dim] {
        self.layers
            .last()
            .map_or(&self.input_shape, |l| &l.out_shape)
    }

    /// Elements of one output example.
    pub fn output_len(&self) -> usize {
        per_example(self.output_shape())
    }

    /// Runs the model in `f64` on `batch` examples laid out one after the other; returns the
    /// logits (before a final softmax, which [`Model::softmax_at_client`] flags).
    pub fn forward(&self, x: &[f32], batch: usize) -> Result<Vec<f64>> {
        if batch == 0 || x.len() != batch * self.input_len() {
            return Err(ModelError::Input(format!(
                "{} values for a batch of {batch} inputs of shape {}",
                x.len(),
                shape_string(&self.input_shape)
            )));
        }
        let mut h: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        for l in &self.layers {
            h = match &l.layer {
                Layer::Dense {
                    inputs,
                    outputs,
                    weights,
                    bias,
                } => {
                    let mut y = vec![0f64; batch * outputs];
                    for b in 0..batch {
                        let row = &h[b * inputs..(b + 1) * inputs];
                        let out = &mut y[b * outputs..(b + 1) * outputs];
                        for (o, bv) in out.iter_mut().zip(bias) {
                            *o = f64::from(*bv);
                        }
                        for (i, xv) in row.iter().enumerate() {
                            let wrow = &weights[i * outputs..(i + 1) * outputs];
                            for (o, w) in out.iter_mut().zip(wrow) {
                                *o += xv * f64::from(*w);
                            }
                        }
                    }
                    y
                }
                Layer::Relu => h.into_iter().map(|v| v.max(0.0)).collect(),
                Layer::Sigmoid => h.into_iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
                Layer::Tanh => h.into_iter().map(f64::tanh).collect(),
                Layer::Flatten => h,
            };
        }
        Ok(h)
    }
}

/// Elements per example of a batch-first shape.
pub fn per_example(shape: &[Dim]) -> usize {
    shape
        .iter()
        .map(|d| match d {
            Dim::Batch => 1,
            Dim::Fixed(n) => *n,
        })
        .product()
}

/// `[N, 28, 28, 1]`-style text.
pub fn shape_string(shape: &[Dim]) -> String {
    let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Softmax of each row of `cols` logits (what the client applies).
pub fn softmax(logits: &[f64], cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks(cols.max(1)) {
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = row.iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|v| v / s));
    }
    out
}

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

/// An activation the private plan runs as a piecewise-linear function
/// ([`sotto_core::protocols::PiecewiseLinear`]): exact for LeakyReLU (up to its slope's 12
/// fractional bits), an approximation for the others whose error `sotto inspect` reports.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Activation {
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
    /// `x · sigmoid(x)` (swish, SiLU).
    Swish,
    /// `x · Φ(x)` (gelu with the error function).
    Gelu,
    /// gelu's tanh form, `x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))` (run privately with
    /// the same approximation as [`Activation::Gelu`]).
    GeluTanh,
    /// `x · ReLU6(x + 3) / 6`.
    HardSwish,
}

// The alphas are finite (the importer refuses others), so equality is an equivalence.
impl Eq for Activation {}

impl Activation {
    /// Its name, as messages and `sotto inspect` print it.
    pub fn name(&self) -> &'static str {
        match self {
            Activation::LeakyRelu { .. } => "LeakyReLU",
            Activation::Elu { .. } => "ELU",
            Activation::Swish => "swish",
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu (tanh form)",
            Activation::HardSwish => "hard_swish",
        }
    }

    /// The function itself, in `f64`.
    pub fn eval(&self, x: f64) -> f64 {
        match *self {
            Activation::LeakyRelu { alpha } => {
                if x < 0.0 {
                    f64::from(alpha) * x
                } else {
                    x
                }
            }
            Activation::Elu { alpha } => {
                if x < 0.0 {
                    f64::from(alpha) * x.exp_m1()
                } else {
                    x
                }
            }
            Activation::Swish => x / (1.0 + (-x).exp()),
            Activation::Gelu => 0.5 * x * (1.0 + crate::graph::erf(x / std::f64::consts::SQRT_2)),
            Activation::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            Activation::HardSwish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        }
    }

    /// The piecewise-linear function the private plan computes, from `in_frac` to `out_frac`
    /// fractional bits.
    pub fn piecewise(
        &self,
        in_frac: u32,
        out_frac: u32,
    ) -> sotto_core::Result<sotto_core::protocols::PiecewiseLinear> {
        use sotto_core::protocols::PiecewiseLinear as P;
        match *self {
            Activation::LeakyRelu { alpha } => P::leaky_relu(f64::from(alpha), in_frac, out_frac),
            Activation::Elu { alpha } => P::elu(f64::from(alpha), in_frac, out_frac),
            Activation::Swish => P::swish(in_frac, out_frac),
            Activation::Gelu | Activation::GeluTanh => P::gelu(in_frac, out_frac),
            Activation::HardSwish => P::hard_swish(in_frac, out_frac),
        }
    }

    /// A bound on `|f(x)|` for `|x| ≤ b`, the approximation's error included (each of these
    /// stays within `|x|` and, below zero, within `alpha` or 0.38).
    pub fn bound(&self, b: f64) -> f64 {
        let floor = match *self {
            Activation::Elu { alpha } => f64::from(alpha).abs(),
            Activation::LeakyRelu { alpha } => b * f64::from(alpha).abs(),
            _ => 0.38,
        };
        b.max(floor) + 0.05
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
    /// `min(max(x, min), max)` with finite bounds (ReLU6 is `Clip { 0, 6 }`).
    Clip {
        /// Lower bound.
        min: f32,
        /// Upper bound.
        max: f32,
    },
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// Reshape to `[batch, features]`.
    Flatten,
    /// Any other reshape that keeps the batch first (the data does not move).
    Reshape,
    /// 2-D convolution over `[batch, C, H, W]` (NCHW); weights `[O, C, kh, kw]`.
    Conv2d {
        /// Shape of one example's convolution (batch 1).
        shape: ConvParams,
        /// Weights `[O, C, kh, kw]`.
        weights: Vec<f32>,
        /// Bias `[O]`.
        bias: Vec<f32>,
    },
    /// Max pooling over `[batch, C, H, W]` windows (no padding).
    MaxPool(PoolParams),
    /// Average pooling over `[batch, C, H, W]` windows (no padding).
    AvgPool(PoolParams),
    /// A permutation of the axes that keeps the batch first (a layout change, free on shares).
    Transpose {
        /// The permutation, `perm[0] == 0`.
        perm: Vec<usize>,
    },
    /// Constant padding of the height and width of `[batch, C, H, W]` (`value` may be
    /// `-inf`: the padding a max pooling ignores).
    Pad {
        /// Channels, height and width of the input.
        in_chw: [usize; 3],
        /// Rows and columns added: top, left, bottom, right.
        pads: [usize; 4],
        /// The padding value.
        value: f32,
    },
    /// Average pooling over `[batch, C, H, W]` padded with zeros by `pads` (each below the
    /// window); padded positions count in the divisor only when `include_pad` (Keras 'same'
    /// pooling does not count them).
    AvgPoolPadded {
        /// The unpadded input, window and stride.
        params: PoolParams,
        /// Padding: top, left, bottom, right.
        pads: [usize; 4],
        /// Whether padded positions count in the divisor.
        include_pad: bool,
    },
    /// A piecewise-linear activation.
    Activation(Activation),
    /// The sum of two values of the same shape (a residual connection).
    Add,
    /// The difference of two values of the same shape, the first minus the second.
    Sub,
    /// The concatenation of values along a per-example axis.
    Concat {
        /// The axis, counted without the batch (0 is the channel axis of `[C, H, W]`).
        axis: usize,
    },
}

/// A convolution's geometry for one example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConvParams {
    /// Input channels, height and width.
    pub in_chw: [usize; 3],
    /// Output channels.
    pub out_channels: usize,
    /// Kernel height and width.
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
    /// Padding: top, left, bottom, right.
    pub pads: [usize; 4],
    /// Groups: input and output channels split in `group` blocks, each output block reading
    /// only its input block (depthwise when `group` is the input channels); weights
    /// `[O, C / group, kh, kw]`.
    #[serde(default = "one")]
    pub group: usize,
}

fn one() -> usize {
    1
}

impl ConvParams {
    /// The bilinear map of this convolution over `batch` examples: a convolution, or a grouped
    /// one with its groups' own products.
    pub fn bilinear(&self, batch: usize) -> sotto_core::linear::Bilinear {
        use sotto_core::linear::Bilinear;
        let full = self.core_shape(batch);
        let g = self.group.max(1);
        if g == 1 {
            Bilinear::Conv2d(full)
        } else {
            Bilinear::GroupedConv2d {
                group: sotto_core::linear::Conv2dShape {
                    in_channels: full.in_channels / g,
                    out_channels: full.out_channels / g,
                    ..full
                },
                groups: g,
            }
        }
    }

    /// Weight elements: `O · C / group · kh · kw`.
    pub fn weight_len(&self) -> usize {
        self.out_channels * (self.in_chw[0] / self.group.max(1)) * self.kernel[0] * self.kernel[1]
    }

    /// The sotto-core shape of this convolution over `batch` examples.
    pub fn core_shape(&self, batch: usize) -> sotto_core::linear::Conv2dShape {
        sotto_core::linear::Conv2dShape {
            batch,
            in_channels: self.in_chw[0],
            height: self.in_chw[1],
            width: self.in_chw[2],
            out_channels: self.out_channels,
            kernel_h: self.kernel[0],
            kernel_w: self.kernel[1],
            stride_h: self.stride[0],
            stride_w: self.stride[1],
            pad_top: self.pads[0],
            pad_left: self.pads[1],
            pad_bottom: self.pads[2],
            pad_right: self.pads[3],
        }
    }
}

/// A pooling window's geometry for one example.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolParams {
    /// Channels, height and width of the input.
    pub in_chw: [usize; 3],
    /// Window height and width.
    pub kernel: [usize; 2],
    /// Vertical and horizontal stride.
    pub stride: [usize; 2],
}

impl PoolParams {
    /// The same window over the input padded by `pads` (top, left, bottom, right).
    pub fn padded(&self, pads: [usize; 4]) -> PoolParams {
        let [c, h, w] = self.in_chw;
        PoolParams {
            in_chw: [
                c,
                h.saturating_add(pads[0]).saturating_add(pads[2]),
                w.saturating_add(pads[1]).saturating_add(pads[3]),
            ],
            ..*self
        }
    }

    /// The sotto-core shape of this pooling over `batch` examples.
    pub fn core_shape(&self, batch: usize) -> sotto_core::linear::PoolShape {
        sotto_core::linear::PoolShape {
            batch,
            channels: self.in_chw[0],
            height: self.in_chw[1],
            width: self.in_chw[2],
            kernel_h: self.kernel[0],
            kernel_w: self.kernel[1],
            stride_h: self.stride[0],
            stride_w: self.stride[1],
        }
    }
}

/// Permutes the axes of `batch` examples of shape `dims` (without the batch) by `perm`
/// (a permutation of all axes with `perm[0] == 0`).
pub fn permute<T: Copy + Default>(x: &[T], batch: usize, dims: &[usize], perm: &[usize]) -> Vec<T> {
    let rank = dims.len();
    let per: usize = dims.iter().product();
    let out_dims: Vec<usize> = perm[1..].iter().map(|&p| dims[p - 1]).collect();
    // strides of the input, per axis
    let mut in_strides = vec![1usize; rank];
    for i in (0..rank.saturating_sub(1)).rev() {
        in_strides[i] = in_strides[i + 1] * dims[i + 1];
    }
    let src_strides: Vec<usize> = perm[1..].iter().map(|&p| in_strides[p - 1]).collect();
    let mut out = vec![T::default(); x.len()];
    let mut idx = vec![0usize; rank];
    for b in 0..batch {
        let base = b * per;
        idx.iter_mut().for_each(|v| *v = 0);
        for o in 0..per {
            let src: usize = idx.iter().zip(&src_strides).map(|(i, s)| i * s).sum();
            out[base + o] = x[base + src];
            for a in (0..rank).rev() {
                idx[a] += 1;
                if idx[a] < out_dims[a] {
                    break;
                }
                idx[a] = 0;
            }
        }
    }
    out
}

impl Layer {
    /// Short name, as `sotto inspect` prints it.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Dense { .. } => "Dense",
            Layer::Relu => "ReLU",
            Layer::Clip { .. } => "Clip",
            Layer::Sigmoid => "Sigmoid",
            Layer::Tanh => "Tanh",
            Layer::Flatten => "Flatten",
            Layer::Reshape => "Reshape",
            Layer::Conv2d { .. } => "Conv2D",
            Layer::MaxPool(_) => "MaxPool",
            Layer::AvgPool(_) => "AvgPool",
            Layer::Transpose { .. } => "Transpose",
            Layer::Pad { .. } => "Pad",
            Layer::AvgPoolPadded { .. } => "AvgPool",
            Layer::Activation(a) => a.name(),
            Layer::Add => "Add",
            Layer::Sub => "Sub",
            Layer::Concat { .. } => "Concat",
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
    /// The values the layer reads: 0 is the model input, `i + 1` the output of layer `i`
    /// (always an earlier one). A chain reads `[i]` at layer `i`.
    pub inputs: Vec<usize>,
}

/// An imported model: layers from one input to one output, each reading the input or the
/// outputs of earlier layers (a chain, or a graph with skip connections and branches); the
/// last layer's output is the model's output.
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
        self.forward_observing(x, batch, &mut |_, _| {})
    }

    /// [`Model::forward`], calling `observe(v, values)` with each value as it is computed
    /// (`v` 0 for the input, `i + 1` for layer `i`'s output; the whole batch). A value is
    /// dropped once the last layer reading it has run.
    pub fn forward_observing(
        &self,
        x: &[f32],
        batch: usize,
        observe: &mut dyn FnMut(usize, &[f64]),
    ) -> Result<Vec<f64>> {
        if batch == 0 || x.len() != batch * self.input_len() {
            return Err(ModelError::Input(format!(
                "{} values for a batch of {batch} inputs of shape {}",
                x.len(),
                shape_string(&self.input_shape)
            )));
        }
        let mut last = vec![0usize; self.layers.len() + 1];
        for (i, l) in self.layers.iter().enumerate() {
            for v in &l.inputs {
                if let Some(slot) = last.get_mut(*v) {
                    *slot = i;
                }
            }
        }
        let mut vals: Vec<Vec<f64>> = Vec::with_capacity(self.layers.len() + 1);
        vals.push(x.iter().map(|&v| f64::from(v)).collect());
        observe(0, &vals[0]);
        for (i, l) in self.layers.iter().enumerate() {
            let read = |k: usize| -> Result<(&Vec<f64>, &[Dim])> {
                let v = *l.inputs.get(k).ok_or_else(|| {
                    ModelError::Graph(format!("layer {:?} reads too few values", l.node))
                })?;
                if v > i {
                    return Err(ModelError::Graph(format!(
                        "layer {:?} reads value {v}, which is not computed before it",
                        l.node
                    )));
                }
                let shape = if v == 0 {
                    &self.input_shape[..]
                } else {
                    &self.layers[v - 1].out_shape[..]
                };
                Ok((&vals[v], shape))
            };
            let (h, shape) = read(0)?;
            let dims: Vec<usize> = shape[1..]
                .iter()
                .map(|d| match d {
                    Dim::Fixed(n) => *n,
                    Dim::Batch => 1,
                })
                .collect();
            let y = match &l.layer {
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
                Layer::Relu => h.iter().map(|v| v.max(0.0)).collect(),
                Layer::Clip { min, max } => h
                    .iter()
                    .map(|v| v.clamp(f64::from(*min), f64::from(*max)))
                    .collect(),
                Layer::Sigmoid => h.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
                Layer::Tanh => h.iter().map(|v| v.tanh()).collect(),
                Layer::Flatten | Layer::Reshape => h.clone(),
                Layer::Transpose { perm } => permute(h, batch, &dims, perm),
                Layer::Conv2d {
                    shape: c,
                    weights,
                    bias,
                } => conv_f64(h, batch, c, weights, bias),
                Layer::MaxPool(pp) => pool_f64(h, batch, pp, true),
                Layer::AvgPool(pp) => pool_f64(h, batch, pp, false),
                Layer::Pad {
                    in_chw,
                    pads,
                    value,
                } => pad_chw(h, batch, *in_chw, *pads, f64::from(*value)),
                Layer::AvgPoolPadded {
                    params,
                    pads,
                    include_pad,
                } => {
                    let ps = params.padded(*pads).core_shape(1);
                    let out = [params.in_chw[0], ps.out_h(), ps.out_w()];
                    crate::graph::pool_f64(h, batch, params, *pads, Some(*include_pad), &out)
                }
                Layer::Activation(a) => h.iter().map(|v| a.eval(*v)).collect(),
                Layer::Add | Layer::Sub => {
                    let (g, _) = read(1)?;
                    if g.len() != h.len() {
                        return Err(ModelError::Graph(format!(
                            "layer {:?} adds values of different sizes",
                            l.node
                        )));
                    }
                    let sign = if matches!(l.layer, Layer::Sub) {
                        -1.0
                    } else {
                        1.0
                    };
                    h.iter().zip(g).map(|(a, b)| a + sign * b).collect()
                }
                Layer::Concat { axis } => {
                    let mut parts = Vec::with_capacity(l.inputs.len());
                    for k in 0..l.inputs.len() {
                        parts.push(read(k)?.0.as_slice());
                    }
                    let outer = batch * dims[..(*axis).min(dims.len())].iter().product::<usize>();
                    concat(&parts, outer)
                }
            };
            observe(i + 1, &y);
            vals.push(y);
            for v in &l.inputs {
                if last[*v] == i {
                    vals[*v] = Vec::new();
                }
            }
        }
        let h = vals.pop().unwrap_or_default();
        Ok(h)
    }
}

/// Pads each `[C, H, W]` example of `x` with `fill` (`pads`: rows and columns added at the
/// top, left, bottom and right).
pub fn pad_chw<T: Copy>(
    x: &[T],
    batch: usize,
    chw: [usize; 3],
    pads: [usize; 4],
    fill: T,
) -> Vec<T> {
    let [c, h, w] = chw;
    let (ph, pw) = (h + pads[0] + pads[2], w + pads[1] + pads[3]);
    let mut out = Vec::with_capacity(batch * c * ph * pw);
    for plane in x.chunks(h * w).take(batch * c) {
        out.extend(std::iter::repeat_n(fill, pads[0] * pw));
        for row in plane.chunks(w) {
            out.extend(std::iter::repeat_n(fill, pads[1]));
            out.extend_from_slice(row);
            out.extend(std::iter::repeat_n(fill, pads[3]));
        }
        out.extend(std::iter::repeat_n(fill, pads[2] * pw));
    }
    out
}

/// Concatenates `parts`, each made of `outer` equal chunks: chunk `o` of every part in turn,
/// for each `o` (a concatenation along the axis after the first `outer` elements' axes).
pub fn concat<T: Copy>(parts: &[&[T]], outer: usize) -> Vec<T> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(total);
    if outer == 0 {
        return out;
    }
    for o in 0..outer {
        for p in parts {
            let c = p.len() / outer;
            out.extend_from_slice(&p[o * c..(o + 1) * c]);
        }
    }
    out
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

/// Index of the first largest value of a row (the predicted label).
pub fn argmax(row: &[f64]) -> usize {
    (0..row.len()).fold(0, |best, j| if row[j] > row[best] { j } else { best })
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

fn conv_f64(x: &[f64], batch: usize, c: &ConvParams, w: &[f32], bias: &[f32]) -> Vec<f64> {
    use ndarray::{Array2, ArrayView2};
    let s = c.core_shape(batch);
    let (oh, ow) = (s.out_h(), s.out_w());
    let [ci, h, wd] = c.in_chw;
    let [kh, kw] = c.kernel;
    let o_ch = c.out_channels;
    let g = c.group.max(1);
    let (cg, og) = (ci / g, o_ch / g);
    let k = cg * kh * kw;
    let wm: Vec<f64> = w.iter().map(|v| f64::from(*v)).collect();
    let Ok(wm) = ArrayView2::from_shape((o_ch, k), &wm) else {
        return vec![f64::NAN; batch * o_ch * oh * ow];
    };
    let mut out = Vec::with_capacity(batch * o_ch * oh * ow);
    // im2col, then one matrix product per example and group:
    // [O_g, C_g·kh·kw] · [C_g·kh·kw, oh·ow]
    let mut patches = Array2::<f64>::zeros((k, oh * ow));
    for n in 0..batch {
        let img = &x[n * ci * h * wd..(n + 1) * ci * h * wd];
        for gr in 0..g {
            for ch in 0..cg {
                let plane = &img[(gr * cg + ch) * h * wd..(gr * cg + ch + 1) * h * wd];
                for ky in 0..kh {
                    for kx in 0..kw {
                        let mut row = patches.row_mut((ch * kh + ky) * kw + kx);
                        for oy in 0..oh {
                            let iy = (oy * c.stride[0] + ky) as isize - c.pads[0] as isize;
                            for ox in 0..ow {
                                let ix = (ox * c.stride[1] + kx) as isize - c.pads[1] as isize;
                                row[oy * ow + ox] =
                                    if iy < 0 || iy >= h as isize || ix < 0 || ix >= wd as isize {
                                        0.0
                                    } else {
                                        plane[iy as usize * wd + ix as usize]
                                    };
                            }
                        }
                    }
                }
            }
            let y = wm
                .slice_axis(
                    ndarray::Axis(0),
                    ndarray::Slice::from(gr * og..(gr + 1) * og),
                )
                .dot(&patches);
            for (o, row) in y.outer_iter().enumerate() {
                let b = f64::from(bias[gr * og + o]);
                out.extend(row.iter().map(|v| v + b));
            }
        }
    }
    out
}

fn pool_f64(x: &[f64], batch: usize, p: &PoolParams, max: bool) -> Vec<f64> {
    let s = p.core_shape(batch);
    let (oh, ow) = (s.out_h(), s.out_w());
    let [c, h, w] = p.in_chw;
    let [kh, kw] = p.kernel;
    let mut out = Vec::with_capacity(batch * c * oh * ow);
    for nc in 0..batch * c {
        let plane = &x[nc * h * w..(nc + 1) * h * w];
        for oy in 0..oh {
            for ox in 0..ow {
                let vals = (0..kh).flat_map(|ky| {
                    (0..kw)
                        .map(move |kx| plane[(oy * p.stride[0] + ky) * w + ox * p.stride[1] + kx])
                });
                out.push(if max {
                    vals.fold(f64::NEG_INFINITY, f64::max)
                } else {
                    vals.sum::<f64>() / (kh * kw) as f64
                });
            }
        }
    }
    out
}

//! The fixed-point plan of a model: where products are truncated, which protocol runs each
//! layer, and the bit budget (DESIGN §3) that proves no value overflows the ring.
//!
//! Values carry `f` fractional bits between layers. A dense layer multiplies a value with `f`
//! bits by weights with `f` bits, giving `2f`; the bias is encoded with `2f` bits and added
//! there. The next ReLU truncates by `f` first (an exact truncation, one round of its own),
//! then compares the truncated value on fewer bits; a sigmoid or tanh reads the `2f`
//! value directly; a dense layer right after another one gets a truncation first; the last
//! layer's output stays at `2f` and the client divides exactly.
//!
//! The bit budget bounds every value from the declared input bound and the weights
//! (`|x·W + b|_j ≤ Σ_i |W_ij|·B + |b_j|`), refuses a model whose encoded values could reach
//! 2^62, and sizes each comparison to the bits its inputs need, which shrinks the FSS keys.

use sotto_core::fixed::{encode_with, FixedPoint};
use sotto_core::linear::conv_weight_matrix;
use sotto_core::plain;
use sotto_core::protocols::{PiecewiseLinear, FULL_BITS, SLOPE_BITS};

use crate::error::{ModelError, Result};
use crate::ir::{per_example, Activation, ConvParams, Layer, Model, PoolParams};

/// What a plan step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StepKind {
    /// The input forced into a signed `bits`-bit value (the input bound's width): whatever a
    /// client sends, the parties compute on a value the later comparisons are sized for.
    LiftInput {
        /// Width of the input range, sign included.
        bits: u32,
    },
    /// Dense layer: product + bias; `dense` indexes [`Plan::weights`].
    Dense {
        /// Index into [`Plan::weights`].
        dense: usize,
        /// Input features.
        inputs: usize,
        /// Output features.
        outputs: usize,
    },
    /// Convolution number `weights` (index into [`Plan::weights`]) + per-channel bias.
    Conv {
        /// Index into [`Plan::weights`].
        weights: usize,
        /// Geometry.
        params: ConvParams,
    },
    /// Max pooling, comparing on `bits` bits.
    MaxPool {
        /// Geometry.
        params: PoolParams,
        /// Comparison width.
        bits: u32,
    },
    /// Average pooling (keeps the scale).
    AvgPool {
        /// Geometry.
        params: PoolParams,
    },
    /// Axis permutation of the per-example `dims` (local).
    Transpose {
        /// Input dimensions without the batch.
        dims: [usize; 8],
        /// Rank without the batch.
        rank: usize,
        /// Permutation including the batch axis.
        perm: [usize; 9],
    },
    /// Truncation by `f` bits (a `2f` value feeding a product).
    Truncate,
    /// `ReLU(x) >> shift`, comparing on `bits` bits.
    Relu {
        /// Truncation fused into the ReLU.
        shift: u32,
        /// Comparison width.
        bits: u32,
    },
    /// `clip(x, lo, hi) >> shift` as `ReLU(x − lo) − ReLU(x − hi) + lo`: two sign gates in
    /// one gate call (both differences compared on `bits` bits).
    Clip {
        /// Truncation applied to both ReLUs.
        shift: u32,
        /// Comparison width of the differences.
        bits: u32,
        /// The lower bound, encoded at the input's scale.
        lo: u64,
        /// The upper bound, encoded at the input's scale.
        hi: u64,
    },
    /// Sigmoid from `in_frac` fractional bits to `f`.
    Sigmoid {
        /// Fractional bits of the input.
        in_frac: u32,
    },
    /// Tanh from `in_frac` fractional bits to `f`.
    Tanh {
        /// Fractional bits of the input.
        in_frac: u32,
    },
    /// Padding of the height and width of each `[C, H, W]` example with a public constant
    /// (local: P0 writes it, P1 writes zeros).
    Pad {
        /// Channels, height and width of the input.
        chw: [usize; 3],
        /// Rows and columns added: top, left, bottom, right.
        pads: [usize; 4],
        /// The constant, encoded at the input's scale (a max pooling's padding is the
        /// value's lower bound, which the max ignores).
        value: u64,
    },
    /// Average pooling of the input padded with zeros by `pads`: window sums times a
    /// per-position reciprocal (of the window's area, or of its real positions when padded
    /// ones do not count), then one exact truncation (keeps the scale).
    AvgPoolPadded {
        /// The unpadded input, window and stride.
        params: PoolParams,
        /// Padding: top, left, bottom, right.
        pads: [usize; 4],
        /// Whether padded positions count in the divisor.
        include_pad: bool,
    },
    /// A piecewise-linear activation from `in_frac` fractional bits to `f`, comparing
    /// `x − t_j` for each knot on `bits` bits.
    Piecewise {
        /// The activation.
        act: Activation,
        /// Fractional bits of the input.
        in_frac: u32,
        /// Comparison width.
        bits: u32,
    },
    /// Multiplication by `2^shift` (local, exact): brings a value to the fractional bits of
    /// the value it is added to or concatenated with.
    Scale {
        /// Bits added to the fraction.
        shift: u32,
    },
    /// The sum (or difference, first minus second) of two values with the same fractional
    /// bits (local).
    Add {
        /// True for a difference.
        subtract: bool,
    },
    /// The concatenation of values with the same fractional bits, each made of `outer`
    /// chunks per example: chunk `o` of each input in turn (local).
    Concat {
        /// Chunks per example (the product of the axes before the concatenation axis).
        outer: usize,
    },
}

impl StepKind {
    /// The protocol that runs the step, as `sotto inspect` prints it.
    pub fn protocol(&self) -> &'static str {
        match self {
            StepKind::LiftInput { .. } => "input range: top bits and a wrap bit made additive",
            StepKind::Dense { .. } | StepKind::Conv { .. } => {
                "Beaver product (private) / local (public)"
            }
            StepKind::MaxPool { .. } => "FSS max tree",
            StepKind::AvgPool { .. } | StepKind::AvgPoolPadded { .. } => "sum + exact truncation",
            StepKind::Pad { .. } => "local padding",
            StepKind::Piecewise { .. } => "FSS piecewise-linear",
            StepKind::Transpose { .. } => "local permutation",
            StepKind::Truncate => "exact truncation (FSS carry)",
            StepKind::Relu { shift: 0, .. } => "FSS sign gate (ReLU)",
            StepKind::Relu { .. } => "FSS sign + carry on one opening, then select",
            StepKind::Clip { .. } => "two ReLUs (clip = ReLU(x - lo) - ReLU(x - hi) + lo)",
            StepKind::Sigmoid { .. } | StepKind::Tanh { .. } => "FSS piecewise-linear",
            StepKind::Scale { .. } => "local scaling by a power of two",
            StepKind::Add { subtract: false } => "local sum",
            StepKind::Add { subtract: true } => "local difference",
            StepKind::Concat { .. } => "local concatenation",
        }
    }
}

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    /// The ONNX node the step comes from.
    pub node: String,
    /// What it does.
    pub kind: StepKind,
    /// The values it reads: 0 is the plan's input, `i + 1` the output of step `i` (always an
    /// earlier step). A chain's step `i` reads `[i]`.
    pub inputs: Vec<usize>,
    /// Elements per example of its output.
    pub per_example: usize,
    /// Bound on the real magnitude of its output (calibrated where the plan is).
    pub bound: f64,
    /// The proven worst-case bound on the real magnitude of its output (equal to `bound`
    /// unless the plan is calibrated; 0 in model files, like `bound`).
    #[serde(default)]
    pub proven_bound: f64,
    /// Fractional bits of its output.
    pub out_frac: u32,
}

/// A model's fixed-point plan.
#[derive(Clone, PartialEq)]
pub struct Plan {
    /// The format between layers.
    pub fp: FixedPoint,
    /// Declared bound on the input's magnitude.
    pub input_bound: f64,
    /// Elements per input example.
    pub input_len: usize,
    /// Shape of one input example (the model's input shape without the batch).
    pub input_shape: Vec<usize>,
    /// True when the client applies a softmax to the output (the model ended with one).
    pub softmax_at_client: bool,
    /// The steps in order.
    pub steps: Vec<Step>,
    /// Fractional bits of the output (the client divides by `2^out_frac`).
    pub out_frac: u32,
    /// Elements per output example.
    pub output_len: usize,
    /// Weights of the dense and conv layers encoded with `f` bits (dense: `inputs ×
    /// outputs`; conv: the matrix layout `[C·kh·kw, O]`) and biases with `2f` bits.
    pub weights: Vec<(Vec<u64>, Vec<u64>)>,
    /// The opt-in "fewer rounds" setting (private weights only; off by default): each
    /// truncating ReLU whose output only a private dense product reads runs with that product
    /// as one gate ([`crate::interp::Gate::ReluDense`]), which saves the product's round for
    /// `7·inputs·outputs` more words of helper material per example. It changes the protocol:
    /// the three parties' files carry it, and loading a model checks that they agree.
    pub fewer_rounds: bool,
    /// The opt-in "compact comparisons" setting (either weights mode; off by default): max
    /// pools and ReLUs without a truncation compare with one-bit keys
    /// ([`sotto_core::protocols::Comparisons::Compact`]), about 2.4 times smaller and half the
    /// evaluation of the default keys, for one more round per comparison (per level of a max
    /// tree). It pays where computation costs more than a round (parties on one host or a
    /// LAN), not over a WAN. Truncating ReLUs use one-bit keys either way. A plan made with
    /// it on also runs ReLUs behind non-overlapping max pools after them ([`Plan::pool_first`]).
    /// It changes the protocol: the three parties' files carry it, and loading a model checks
    /// that they agree.
    pub compact_comparisons: bool,
}

impl std::fmt::Debug for Plan {
    /// Never prints the weights: on a server they are shares.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("fp", &self.fp)
            .field("input_len", &self.input_len)
            .field("steps", &self.steps)
            .field("out_frac", &self.out_frac)
            .field("weight_tensors", &self.weights.len())
            .field("fewer_rounds", &self.fewer_rounds)
            .field("compact_comparisons", &self.compact_comparisons)
            .finish()
    }
}

/// Bits needed for an encoded magnitude below `v` plus a sign bit and one bit of margin.
fn bits_for(v: f64) -> u32 {
    let b = (v.max(1.0) + 2.0).log2().ceil() as u32 + 2;
    if b >= 63 {
        FULL_BITS
    } else {
        b.max(2)
    }
}

const LIMIT: f64 = (1u64 << 62) as f64;

/// The magnitude of a max pooling's padding below every value of bound `bound` at `scale`
/// fractional bits: the power of two at or above the bound (a power of two, so that the plan
/// shows the servers no more of the weights' magnitudes than the comparison widths do).
fn pool_fill(bound: f64, scale: u32) -> f64 {
    let k = (bound * 2f64.powi(scale as i32)).max(1.0).log2().ceil();
    2f64.powi(k as i32 - scale as i32)
}

fn encode_all(v: &[f32], frac: u32, node: &str) -> Result<Vec<u64>> {
    v.iter()
        .map(|x| encode_with(f64::from(*x), frac))
        .collect::<sotto_core::Result<Vec<_>>>()
        .map_err(|e| ModelError::Graph(format!("layer {node:?}: {e}")))
}

/// Significant bits the largest weight of a layer must keep in fixed point: below this, the
/// rounding of every weight to `2^-f` is a visible part of the weights themselves (a
/// Rescaling(1/255) folded into the first convolution makes its weights 255 times smaller).
pub const MIN_WEIGHT_BITS: u32 = 10;

/// Refuses a layer whose weights would keep fewer than [`MIN_WEIGHT_BITS`] significant bits
/// at `f` fractional bits, naming it and the `--frac-bits` that would do.
fn check_precision(weights: &[f32], f: u32, node: &str) -> Result<()> {
    let max = weights.iter().fold(0f64, |m, v| m.max(f64::from(*v).abs()));
    if max == 0.0 || max * 2f64.powi(f as i32) >= f64::from(1u32 << MIN_WEIGHT_BITS) {
        return Ok(());
    }
    let need = (f64::from(1u32 << MIN_WEIGHT_BITS) / max).log2().ceil() as u32;
    Err(ModelError::Graph(format!(
        "layer {node:?}: its largest weight is {max:.3e}, which keeps fewer than {MIN_WEIGHT_BITS} significant bits with {f} fractional bits (every weight would be off by up to {:.1} %); use --frac-bits {need} or more, or scale the inputs before sending them (a Rescaling or Normalization layer folded into this layer is what makes its weights this small)",
        100.0 * 2f64.powi(-(f as i32) - 1) / max
    )))
}

/// The bound on a dense or conv layer's outputs for inputs bounded by `xb`: the largest
/// `l1_j · (xb + 2^-f) + |bias_j|` over the outputs `j` (`l1_j` the L1 norm of output `j`'s
/// weights; the `2^-f` covers the input's rounding).
fn linear_bound(l1: &[f64], bias: &[f32], xb: f64, f: u32) -> f64 {
    let ulp = 2f64.powi(-(f as i32));
    l1.iter()
        .zip(bias)
        .map(|(a, c)| a * (xb + ulp) + f64::from(*c).abs())
        .fold(0f64, f64::max)
}

fn overflow(node: &str, bound: f64, frac: u32) -> ModelError {
    ModelError::Graph(format!(
        "layer {node:?} could overflow: its values may reach {bound:.3e}, which with {frac} fractional bits needs more than the ring's 62 bits (a proven worst case, usually far above real values). Remedy: --calibrate SAMPLES.npy (bounds from values seen on sample inputs), fewer fractional bits, or scale the input (or the weights) down"
    ))
}

/// Magnitudes observed on sample inputs, which [`Plan::with_calibration`] turns into bounds
/// (`--calibrate SAMPLES.npy`): for deep networks whose proven worst-case bounds do not fit
/// the ring although their real activations are small.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    /// Largest magnitude seen of each model value (0 the input, `i + 1` layer `i`'s output).
    pub observed: Vec<f64>,
    /// The factor between an observed magnitude and the bound planned for.
    pub margin: f64,
    /// How many sample inputs were observed.
    pub samples: usize,
}

impl Calibration {
    /// The margin used when none is given: a value may reach 8 times the largest magnitude
    /// seen on the samples before the plan's comparisons could go wrong.
    pub const DEFAULT_MARGIN: f64 = 8.0;

    /// Runs `model` in floating point on `x` (sample inputs laid out one after the other,
    /// in chunks so that memory stays small) and records each value's largest magnitude.
    pub fn observe(model: &Model, x: &[f32], margin: f64) -> Result<Calibration> {
        if !(margin.is_finite() && margin >= 1.0) {
            return Err(ModelError::Input(format!(
                "calibration margin {margin}: it must be at least 1"
            )));
        }
        let per = model.input_len();
        if per == 0 || x.is_empty() || !x.len().is_multiple_of(per) {
            return Err(ModelError::Input(format!(
                "{} calibration values are not whole inputs of {per} elements",
                x.len()
            )));
        }
        let mut observed = vec![0f64; model.layers.len() + 1];
        for chunk in x.chunks(per * 16) {
            model.forward_observing(chunk, chunk.len() / per, &mut |v, vals| {
                // (a max pooling's padding is -inf, which the max ignores)
                let m = vals
                    .iter()
                    .filter(|a| !a.is_infinite())
                    .fold(0f64, |m, a| m.max(a.abs()));
                observed[v] = observed[v].max(m);
            })?;
        }
        if let Some(v) = observed.iter().position(|m| !m.is_finite()) {
            return Err(ModelError::Input(format!(
                "calibration: value {v} of the model is not finite on the samples"
            )));
        }
        Ok(Calibration {
            observed,
            margin,
            samples: x.len() / per,
        })
    }

    /// The bound planned for model value `v`: its observed magnitude (at least 1) times the
    /// margin.
    pub fn bound(&self, v: usize) -> f64 {
        self.margin
            * self
                .observed
                .get(v)
                .copied()
                .unwrap_or(f64::INFINITY)
                .max(1.0)
    }
}

/// What a plan value is: its id (0 the input, `i + 1` step `i`'s output), fractional bits,
/// bound on its real magnitude and elements per example.
#[derive(Debug, Clone, Copy)]
struct Val {
    id: usize,
    scale: u32,
    bound: f64,
    proven: f64,
    per: usize,
}

/// The steps of a plan being built, with the truncations and scalings already made (a value
/// read by two layers is truncated or scaled once).
struct Builder {
    f: u32,
    steps: Vec<Step>,
    truncated: Vec<(usize, Val)>,
    scaled: Vec<((usize, u32), Val)>,
}

impl Builder {
    fn push(
        &mut self,
        node: &str,
        kind: StepKind,
        inputs: Vec<usize>,
        per: usize,
        (bound, proven): (f64, f64),
        scale: u32,
    ) -> Val {
        self.steps.push(Step {
            node: node.to_string(),
            kind,
            inputs,
            per_example: per,
            bound,
            proven_bound: proven,
            out_frac: scale,
        });
        Val {
            id: self.steps.len(),
            scale,
            bound,
            proven,
            per,
        }
    }

    /// `x` with `f` fractional bits: itself, or its (one) exact truncation.
    fn at_f(&mut self, x: Val) -> Val {
        if x.scale == self.f {
            return x;
        }
        if let Some((_, t)) = self.truncated.iter().find(|(id, _)| *id == x.id) {
            return *t;
        }
        let node = self.steps[x.id - 1].node.clone();
        let t = self.push(
            &node,
            StepKind::Truncate,
            vec![x.id],
            x.per,
            (x.bound, x.proven),
            self.f,
        );
        self.truncated.push((x.id, t));
        t
    }

    /// `x` with `scale ≥ x.scale` fractional bits (a local scaling, made once).
    fn at_scale(&mut self, x: Val, scale: u32) -> Val {
        if x.scale >= scale {
            return x;
        }
        let shift = scale - x.scale;
        if let Some((_, v)) = self.scaled.iter().find(|(k, _)| *k == (x.id, shift)) {
            return *v;
        }
        let node = if x.id == 0 {
            "input".to_string()
        } else {
            self.steps[x.id - 1].node.clone()
        };
        let v = self.push(
            &node,
            StepKind::Scale { shift },
            vec![x.id],
            x.per,
            (x.bound, x.proven),
            scale,
        );
        self.scaled.push(((x.id, shift), v));
        v
    }
}

impl Plan {
    /// Plans `model` with `fp` between layers for inputs bounded by `input_bound` in
    /// magnitude (1.0 for images scaled to [0, 1]).
    pub fn new(model: &Model, fp: FixedPoint, input_bound: f64) -> Result<Plan> {
        Plan::with_calibration(model, fp, input_bound, None)
    }

    /// [`Plan::new`], with each value's bound, where `calibration` is given, the smaller of
    /// the proven one and [`Calibration::bound`] (the magnitude observed on sample inputs
    /// times a margin): comparisons are sized and overflow is checked for the calibrated
    /// bounds, and a value beyond its bound gives a wrong result (see the README).
    pub fn with_calibration(
        model: &Model,
        fp: FixedPoint,
        input_bound: f64,
        calibration: Option<&Calibration>,
    ) -> Result<Plan> {
        if let Some(c) = calibration {
            if c.observed.len() != model.layers.len() + 1 {
                return Err(ModelError::Input(format!(
                    "a calibration of {} values for a model of {} layers",
                    c.observed.len(),
                    model.layers.len()
                )));
            }
        }
        // The bound of layer `li`'s output: `b`, capped by the calibration.
        let cap = |li: usize, b: f64| calibration.map_or(b, |c| b.min(c.bound(li + 1)));
        if !(input_bound.is_finite() && input_bound > 0.0) {
            return Err(ModelError::Input(format!(
                "input bound {input_bound} must be positive"
            )));
        }
        let f = fp.frac_bits();
        let mut b = Builder {
            f,
            steps: Vec::new(),
            truncated: Vec::new(),
            scaled: Vec::new(),
        };
        let mut dense: Vec<(Vec<u64>, Vec<u64>)> = Vec::new();
        let mut bound = input_bound;
        if bound * 2f64.powi(f as i32) >= LIMIT {
            return Err(overflow("input", bound, f));
        }
        let per0 = model.input_len();
        // The input's range is enforced privately: an honest client's value is a signed
        // `k`-bit value with 2^(k−1) above the encoded bound, and whatever a client sends, the
        // parties compute on a value within the lift's bound (1.25·2^(k−1)), so the layers are
        // planned for that (at most 2.5 times the declared bound) and no value a client can
        // send overflows a reduced-width comparison.
        let input_bits = ((bound * 2f64.powi(f as i32) + 1.0).log2().ceil() as u32 + 1).max(2);
        if input_bits > sotto_core::protocols::MAX_LIFT_BITS {
            return Err(overflow("input", bound * 2.5, f));
        }
        bound = sotto_core::protocols::lift_bound(input_bits) as f64 / 2f64.powi(f as i32);
        let input = b.push(
            "input",
            StepKind::LiftInput { bits: input_bits },
            vec![0],
            per0,
            (bound, bound),
            f,
        );
        // What each model value (0 the input, `i + 1` layer `i`'s output) is in the plan.
        let mut vals: Vec<Val> = vec![input];
        for (li, l) in model.layers.iter().enumerate() {
            let node = l.node.as_str();
            let arg = |k: usize| -> Result<Val> {
                l.inputs
                    .get(k)
                    .and_then(|v| if *v <= li { vals.get(*v) } else { None })
                    .copied()
                    .ok_or_else(|| {
                        ModelError::Graph(format!(
                            "layer {node:?} reads a value not computed before it"
                        ))
                    })
            };
            let x = arg(0)?;
            let out_per = per_example(&l.out_shape);
            let out = match &l.layer {
                Layer::Dense {
                    inputs,
                    outputs,
                    weights,
                    bias,
                } => {
                    let x = b.at_f(x);
                    let mut l1 = vec![0f64; *outputs];
                    for row in weights.chunks((*outputs).max(1)) {
                        for (a, w) in l1.iter_mut().zip(row) {
                            *a += f64::from(*w).abs();
                        }
                    }
                    let ob = |xb: f64| linear_bound(&l1, bias, xb, f);
                    let (out_bound, proven) = (cap(li, ob(x.bound)), ob(x.proven));
                    if out_bound * 2f64.powi(2 * f as i32) >= LIMIT / 2.0 {
                        return Err(overflow(node, out_bound, 2 * f));
                    }
                    check_precision(weights, f, node)?;
                    let w = encode_all(weights, f, node)?;
                    let bias = encode_all(bias, 2 * f, node)?;
                    let kind = StepKind::Dense {
                        dense: dense.len(),
                        inputs: *inputs,
                        outputs: *outputs,
                    };
                    dense.push((w, bias));
                    b.push(node, kind, vec![x.id], *outputs, (out_bound, proven), 2 * f)
                }
                Layer::Relu => {
                    let shift = x.scale - f;
                    let bits = bits_for(x.bound * 2f64.powi(x.scale as i32));
                    b.push(
                        node,
                        StepKind::Relu { shift, bits },
                        vec![x.id],
                        x.per,
                        (cap(li, x.bound), x.proven),
                        f,
                    )
                }
                Layer::Clip { min, max } => {
                    let shift = x.scale - f;
                    let (min, max) = (f64::from(*min), f64::from(*max));
                    let reach = x.bound + min.abs().max(max.abs());
                    if reach * 2f64.powi(x.scale as i32) >= LIMIT / 2.0 {
                        return Err(overflow(node, reach, x.scale));
                    }
                    let enc = |v: f64| {
                        encode_with(v, x.scale)
                            .map_err(|e| ModelError::Graph(format!("layer {node:?}: {e}")))
                    };
                    let (lo, hi) = (enc(min)?, enc(max)?);
                    let bits = bits_for(reach * 2f64.powi(x.scale as i32));
                    let kind = StepKind::Clip {
                        shift,
                        bits,
                        lo,
                        hi,
                    };
                    let m = min.abs().max(max.abs());
                    b.push(node, kind, vec![x.id], x.per, (cap(li, m), m), f)
                }
                Layer::Sigmoid | Layer::Tanh => {
                    let pw = if matches!(l.layer, Layer::Sigmoid) {
                        PiecewiseLinear::sigmoid(x.scale, f)
                    } else {
                        PiecewiseLinear::tanh(x.scale, f)
                    }
                    .map_err(|e| ModelError::Graph(format!("layer {node:?}: {e}")))?;
                    for (t, s) in pw.knots.iter().zip(&pw.slopes) {
                        let t = (*t as i64).unsigned_abs() as f64;
                        let reach = (x.bound * 2f64.powi(x.scale as i32) + t) * *s as f64;
                        if reach >= LIMIT / 2.0 {
                            return Err(overflow(node, x.bound, x.scale + SLOPE_BITS));
                        }
                    }
                    let kind = if matches!(l.layer, Layer::Sigmoid) {
                        StepKind::Sigmoid { in_frac: x.scale }
                    } else {
                        StepKind::Tanh { in_frac: x.scale }
                    };
                    b.push(node, kind, vec![x.id], x.per, (1.0, 1.0), f)
                }
                Layer::Activation(act) => {
                    let g = act
                        .piecewise(x.scale, f)
                        .map_err(|e| ModelError::Graph(format!("layer {node:?}: {e}")))?;
                    let enc = x.bound * 2f64.powi(x.scale as i32);
                    if enc >= LIMIT {
                        return Err(overflow(node, x.bound, x.scale));
                    }
                    let bits = g
                        .checked_comparison_bits(enc.ceil() as u64)
                        .map_err(|_| overflow(node, x.bound, x.scale + SLOPE_BITS))?;
                    let kind = StepKind::Piecewise {
                        act: *act,
                        in_frac: x.scale,
                        bits,
                    };
                    let bounds = (cap(li, act.bound(x.bound)), act.bound(x.proven));
                    b.push(node, kind, vec![x.id], x.per, bounds, f)
                }
                Layer::Flatten | Layer::Reshape => x,
                Layer::Conv2d {
                    shape: params,
                    weights,
                    bias,
                } => {
                    let x = b.at_f(x);
                    let o = params.out_channels;
                    let k = weights.len() / o.max(1);
                    let l1: Vec<f64> = weights
                        .chunks(k.max(1))
                        .map(|row| row.iter().map(|v| f64::from(*v).abs()).sum())
                        .collect();
                    let ob = |xb: f64| linear_bound(&l1, bias, xb, f);
                    let (out_bound, proven) = (cap(li, ob(x.bound)), ob(x.proven));
                    if out_bound * 2f64.powi(2 * f as i32) >= LIMIT / 2.0 {
                        return Err(overflow(node, out_bound, 2 * f));
                    }
                    check_precision(weights, f, node)?;
                    let w = encode_all(weights, f, node)?;
                    // One weight matrix per group, in turn (one in all for a plain conv).
                    let g = params.group.max(1);
                    let gshape = sotto_core::linear::Conv2dShape {
                        in_channels: params.in_chw[0] / g,
                        out_channels: params.out_channels / g,
                        ..params.core_shape(1)
                    };
                    let per = (w.len() / g).max(1);
                    let mut wm = Vec::with_capacity(w.len());
                    for wg in w.chunks(per) {
                        wm.extend(conv_weight_matrix(wg, &gshape).map_err(core_err)?);
                    }
                    dense.push((wm, encode_all(bias, 2 * f, node)?));
                    let kind = StepKind::Conv {
                        weights: dense.len() - 1,
                        params: *params,
                    };
                    b.push(node, kind, vec![x.id], out_per, (out_bound, proven), 2 * f)
                }
                Layer::MaxPool(params) => {
                    let bits = bits_for(2.0 * x.bound * 2f64.powi(x.scale as i32));
                    let kind = StepKind::MaxPool {
                        params: *params,
                        bits,
                    };
                    b.push(
                        node,
                        kind,
                        vec![x.id],
                        out_per,
                        (x.bound, x.proven),
                        x.scale,
                    )
                }
                Layer::AvgPool(params) => {
                    let area = (params.kernel[0] * params.kernel[1]) as f64;
                    let recip = sotto_core::protocols::AVG_RECIP_BITS;
                    if area * x.bound * 2f64.powi((x.scale + recip) as i32) >= LIMIT / 2.0 {
                        return Err(overflow(node, area * x.bound, x.scale + recip));
                    }
                    let kind = StepKind::AvgPool { params: *params };
                    b.push(
                        node,
                        kind,
                        vec![x.id],
                        out_per,
                        (x.bound, x.proven),
                        x.scale,
                    )
                }
                Layer::Pad {
                    in_chw,
                    pads,
                    value,
                } => {
                    let value = f64::from(*value);
                    let (fill, bound) = if value == f64::NEG_INFINITY {
                        let p = pool_fill(x.bound, x.scale);
                        (-p, p)
                    } else {
                        (value, x.bound.max(value.abs()))
                    };
                    if bound * 2f64.powi(x.scale as i32) >= LIMIT / 2.0 {
                        return Err(overflow(node, bound, x.scale));
                    }
                    let value = encode_with(fill, x.scale)
                        .map_err(|e| ModelError::Graph(format!("layer {node:?}: {e}")))?;
                    let kind = StepKind::Pad {
                        chw: *in_chw,
                        pads: *pads,
                        value,
                    };
                    let proven = x.proven.max(bound);
                    b.push(node, kind, vec![x.id], out_per, (bound, proven), x.scale)
                }
                Layer::AvgPoolPadded {
                    params,
                    pads,
                    include_pad,
                } => {
                    let area = (params.kernel[0] * params.kernel[1]) as f64;
                    let recip = sotto_core::protocols::AVG_RECIP_BITS;
                    if area * x.bound * 2f64.powi((x.scale + recip) as i32) >= LIMIT / 2.0 {
                        return Err(overflow(node, area * x.bound, x.scale + recip));
                    }
                    let kind = StepKind::AvgPoolPadded {
                        params: *params,
                        pads: *pads,
                        include_pad: *include_pad,
                    };
                    b.push(
                        node,
                        kind,
                        vec![x.id],
                        out_per,
                        (x.bound, x.proven),
                        x.scale,
                    )
                }
                Layer::Transpose { perm } => {
                    let in_shape = if l.inputs[0] == 0 {
                        &model.input_shape
                    } else {
                        &model.layers[l.inputs[0] - 1].out_shape
                    };
                    let in_dims = &in_shape[1..];
                    if in_dims.len() > 8 || perm.len() != in_dims.len() + 1 {
                        return Err(ModelError::Graph(format!(
                            "layer {node:?}: a permutation of {} axes over {} dimensions (at most 8)",
                            perm.len(),
                            in_shape.len()
                        )));
                    }
                    let mut dims = [0usize; 8];
                    let mut pm = [0usize; 9];
                    for (i, d) in in_dims.iter().enumerate() {
                        dims[i] = match d {
                            crate::ir::Dim::Fixed(n) => *n,
                            crate::ir::Dim::Batch => 1,
                        };
                    }
                    pm[..perm.len()].copy_from_slice(perm);
                    let kind = StepKind::Transpose {
                        dims,
                        rank: in_dims.len(),
                        perm: pm,
                    };
                    b.push(node, kind, vec![x.id], x.per, (x.bound, x.proven), x.scale)
                }
                Layer::Add | Layer::Sub => {
                    let y = arg(1)?;
                    if x.per != y.per {
                        return Err(ModelError::Graph(format!(
                            "layer {node:?} adds values of {} and {} elements",
                            x.per, y.per
                        )));
                    }
                    let scale = x.scale.max(y.scale);
                    let bound = cap(li, x.bound + y.bound);
                    if bound * 2f64.powi(scale as i32) >= LIMIT / 2.0 {
                        return Err(overflow(node, bound, scale));
                    }
                    let (x, y) = (b.at_scale(x, scale), b.at_scale(y, scale));
                    let kind = StepKind::Add {
                        subtract: matches!(l.layer, Layer::Sub),
                    };
                    let proven = x.proven + y.proven;
                    b.push(node, kind, vec![x.id, y.id], x.per, (bound, proven), scale)
                }
                Layer::Concat { axis } => {
                    let parts = (0..l.inputs.len()).map(&arg).collect::<Result<Vec<_>>>()?;
                    let scale = parts.iter().map(|p| p.scale).max().unwrap_or(f);
                    let bound = parts.iter().map(|p| p.bound).fold(0.0, f64::max);
                    if bound * 2f64.powi(scale as i32) >= LIMIT / 2.0 {
                        return Err(overflow(node, bound, scale));
                    }
                    let outer: usize = l.out_shape[1..]
                        .iter()
                        .take(*axis)
                        .map(|d| match d {
                            crate::ir::Dim::Fixed(n) => *n,
                            crate::ir::Dim::Batch => 1,
                        })
                        .product();
                    let ids = parts.iter().map(|p| b.at_scale(*p, scale).id).collect();
                    let kind = StepKind::Concat { outer };
                    let proven = parts.iter().map(|p| p.proven).fold(0.0, f64::max);
                    b.push(node, kind, ids, out_per, (bound, proven), scale)
                }
            };
            vals.push(out);
        }
        let out = *vals.last().unwrap_or(&input);
        if out.id != b.steps.len() {
            return Err(ModelError::Graph(
                "the model's output is not computed by its last layer".into(),
            ));
        }
        let plan = Plan {
            fp,
            input_bound,
            input_len: per0,
            input_shape: model
                .input_shape
                .iter()
                .filter_map(|d| match d {
                    crate::ir::Dim::Batch => None,
                    crate::ir::Dim::Fixed(n) => Some(*n),
                })
                .collect(),
            softmax_at_client: model.softmax_at_client,
            steps: b.steps,
            out_frac: out.scale,
            output_len: out.per,
            weights: dense,
            fewer_rounds: false,
            compact_comparisons: false,
        };
        plan.validate()?;
        Ok(plan)
    }
}

/// `steps` without a first [`StepKind::LiftInput`] step, the values renumbered: what read the
/// lifted input reads the input.
pub fn without_lift(steps: &[Step]) -> Vec<Step> {
    if !matches!(
        steps.first().map(|s| s.kind),
        Some(StepKind::LiftInput { .. })
    ) {
        return steps.to_vec();
    }
    steps[1..]
        .iter()
        .map(|s| Step {
            inputs: s.inputs.iter().map(|v| v.saturating_sub(1)).collect(),
            ..s.clone()
        })
        .collect()
}

/// The window sums of `x` padded with zeros by `pads`, each times the reciprocal of its
/// divisor with [`sotto_core::protocols::AVG_RECIP_BITS`] bits (the window's area, or the
/// number of its real positions when `!include_pad`): what an exact truncation turns into
/// the average (local on shares).
pub(crate) fn padded_window_sums(
    x: &[u64],
    batch: usize,
    params: &PoolParams,
    pads: [usize; 4],
    include_pad: bool,
) -> Result<Vec<u64>> {
    let padded = params.padded(pads);
    let xp = crate::ir::pad_chw(x, batch, params.in_chw, pads, 0u64);
    let shape = padded.core_shape(batch);
    let mut sums = shape.window_sums(&xp).map_err(core_err)?;
    let (oh, ow) = (shape.out_h(), shape.out_w());
    let [_, h, w] = params.in_chw;
    let [kh, kw] = params.kernel;
    let covered = |start: usize, k: usize, pad: usize, len: usize| {
        // real positions of [start, start + k) in the padded axis
        let lo = start.max(pad);
        let hi = (start + k).min(pad + len);
        hi.saturating_sub(lo)
    };
    let one = 1u64 << sotto_core::protocols::AVG_RECIP_BITS;
    let factors: Vec<u64> = (0..oh * ow)
        .map(|i| {
            let (oy, ox) = (i / ow, i % ow);
            let count = if include_pad {
                kh * kw
            } else {
                covered(oy * params.stride[0], kh, pads[0], h)
                    * covered(ox * params.stride[1], kw, pads[1], w)
            } as u64;
            (one + count.max(1) / 2) / count.max(1)
        })
        .collect();
    for plane in sums.chunks_mut(oh * ow) {
        for (v, f) in plane.iter_mut().zip(&factors) {
            *v = v.wrapping_mul(*f);
        }
    }
    Ok(sums)
}

/// `x · 2^shift` (wrapping; exact while the value fits, which the plan checks).
pub(crate) fn scale_up(x: &[u64], shift: u32) -> Vec<u64> {
    x.iter().map(|v| v.wrapping_shl(shift)).collect()
}

/// `x + y`, or `x − y` when `subtract` (wrapping).
pub(crate) fn add(x: &[u64], y: &[u64], subtract: bool) -> Vec<u64> {
    x.iter()
        .zip(y)
        .map(|(a, b)| {
            if subtract {
                a.wrapping_sub(*b)
            } else {
                a.wrapping_add(*b)
            }
        })
        .collect()
}

/// The values of one run of a plan (the input and every step's output), each dropped once
/// the last step reading it has run: the one walk over a plan's values that the plaintext
/// twin and the servers share.
pub(crate) struct Values {
    vals: Vec<Option<Vec<u64>>>,
    /// The values each step reads.
    reads: Vec<Vec<usize>>,
    /// For each value, the last step reading it (`steps.len()` for the output).
    last: Vec<usize>,
    batch: usize,
}

impl Values {
    /// The values of a run on `x`, the input of `batch` examples.
    pub(crate) fn new(plan: &Plan, x: Vec<u64>, batch: usize) -> Result<Values> {
        let n = plan.steps.len();
        let mut last = vec![0usize; n + 1];
        for (i, st) in plan.steps.iter().enumerate() {
            if st.inputs.is_empty() {
                return Err(ModelError::Graph(format!("step {i} reads no value")));
            }
            for v in &st.inputs {
                if *v > i {
                    return Err(ModelError::Graph(format!(
                        "step {i} reads value {v}, not computed before it"
                    )));
                }
                last[*v] = i;
            }
        }
        last[n] = n;
        let mut vals = vec![None; n + 1];
        vals[0] = Some(x);
        Ok(Values {
            vals,
            reads: plan.steps.iter().map(|s| s.inputs.clone()).collect(),
            last,
            batch,
        })
    }

    /// Value `v`: computed and not yet dropped for every input of the step being run (the
    /// order of `last`).
    pub(crate) fn get(&self, v: usize) -> &[u64] {
        self.vals[v].as_deref().unwrap_or(&[])
    }

    /// The concatenation of the values `ids`, each of `outer` chunks per example.
    pub(crate) fn concat(&self, ids: &[usize], outer: usize) -> Vec<u64> {
        let parts: Vec<&[u64]> = ids.iter().map(|v| self.get(*v)).collect();
        crate::ir::concat(&parts, self.batch * outer)
    }

    /// Stores step `i`'s output and drops the values no later step reads.
    pub(crate) fn set(&mut self, i: usize, y: Vec<u64>) {
        self.vals[i + 1] = Some(y);
        for &v in &self.reads[i] {
            if self.last[v] == i {
                self.vals[v] = None;
            }
        }
    }

    /// The last step's output (the plan's output).
    pub(crate) fn output(mut self) -> Vec<u64> {
        self.vals.pop().flatten().unwrap_or_default()
    }
}

/// The fixed-point meaning of [`StepKind::Clip`]: `ReLU(x − lo) >> shift − ReLU(x − hi) >>
/// shift + lo >> shift` (what the private step computes, bit for bit).
pub fn clip_twin(x: &[u64], shift: u32, lo: u64, hi: u64) -> Vec<u64> {
    let (a, b) = clip_inputs(x, lo, hi, true);
    let (ra, rb) = (plain::relu(&a, shift), plain::relu(&b, shift));
    clip_combine(&ra, &rb, lo, shift, true)
}

/// The two differences a clip compares, `x − lo` and `x − hi` (the constants subtracted by
/// P0 only, `p0`; in the clear, `true`).
pub(crate) fn clip_inputs(x: &[u64], lo: u64, hi: u64, p0: bool) -> (Vec<u64>, Vec<u64>) {
    let (lo, hi) = if p0 { (lo, hi) } else { (0, 0) };
    (
        x.iter().map(|v| v.wrapping_sub(lo)).collect(),
        x.iter().map(|v| v.wrapping_sub(hi)).collect(),
    )
}

/// `ra − rb + (lo >> shift)` (the constant added by P0 only).
pub(crate) fn clip_combine(ra: &[u64], rb: &[u64], lo: u64, shift: u32, p0: bool) -> Vec<u64> {
    let c = if p0 { ((lo as i64) >> shift) as u64 } else { 0 };
    ra.iter()
        .zip(rb)
        .map(|(a, b)| a.wrapping_sub(*b).wrapping_add(c))
        .collect()
}

pub(crate) fn core_err(e: sotto_core::CoreError) -> ModelError {
    ModelError::Graph(format!("engine: {e}"))
}

/// What one step costs per example (batch 1, [`Step::cost`]), or one gate for the batch it
/// was lowered for ([`crate::interp::Gate::cost`]), per server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    /// Online rounds between P0 and P1.
    pub rounds: u32,
    /// Bytes each server sends to the other online.
    pub online_bytes: u64,
    /// Bytes of helper material each server receives (DCF keys; P1 also gets dealt values,
    /// counted here).
    pub helper_bytes: u64,
}

impl Plan {
    /// Number of weight elements of each dense or conv layer, in order.
    pub fn weight_lens(&self) -> Vec<usize> {
        self.steps
            .iter()
            .filter_map(|s| match s.kind {
                StepKind::Dense {
                    inputs, outputs, ..
                } => Some(inputs * outputs),
                StepKind::Conv { params, .. } => Some(params.weight_len()),
                _ => None,
            })
            .collect()
    }

    /// Number of bias elements of each dense or conv layer, in order.
    pub fn bias_lens(&self) -> Vec<usize> {
        self.steps
            .iter()
            .filter_map(|s| match s.kind {
                StepKind::Dense { outputs, .. } => Some(outputs),
                StepKind::Conv { params, .. } => Some(params.out_channels),
                _ => None,
            })
            .collect()
    }

    /// Checks that the steps fit together: each step takes what the previous one gives,
    /// shapes are positive and fit in memory, comparison widths and shifts are in range, a
    /// transpose keeps the batch first. [`Plan::new`] builds only such plans; a plan read from
    /// a file (which anyone could have edited, checksum included) is checked with this before
    /// any evaluator or protocol indexes by its numbers.
    pub fn validate(&self) -> Result<()> {
        let bad = |i: usize, m: String| Err(ModelError::Graph(format!("step {i}: {m}")));
        const MAX_ELEMENTS: usize = 1 << 32;
        let f = self.fp.frac_bits();
        if self.input_len == 0 || self.input_len > MAX_ELEMENTS {
            return Err(ModelError::Graph(format!(
                "input of {} elements",
                self.input_len
            )));
        }
        for (i, st) in self.steps.iter().enumerate() {
            let out = st.per_example;
            if out == 0 || out > MAX_ELEMENTS {
                return bad(i, format!("{out} elements per example"));
            }
            let arity_ok = match st.kind {
                StepKind::Add { .. } => st.inputs.len() == 2,
                StepKind::Concat { .. } => (1..=1024).contains(&st.inputs.len()),
                _ => st.inputs.len() == 1,
            };
            if !arity_ok || st.inputs.iter().any(|v| *v > i) {
                return bad(
                    i,
                    format!(
                        "reads values {:?} (a {:?} step)",
                        st.inputs,
                        st.kind.protocol()
                    ),
                );
            }
            let len = |v: usize| self.step_input_len_of(v);
            let frac = |v: usize| {
                if v == 0 {
                    f
                } else {
                    self.steps[v - 1].out_frac
                }
            };
            let cur = len(st.inputs[0]);
            let chw = |c: [usize; 3]| c.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
            match st.kind {
                StepKind::Dense {
                    inputs, outputs, ..
                } => {
                    if inputs != cur
                        || outputs != out
                        || inputs.checked_mul(outputs).is_none_or(|n| n > MAX_ELEMENTS)
                    {
                        return bad(
                            i,
                            format!("dense {inputs}×{outputs} after {cur} elements, giving {out}"),
                        );
                    }
                }
                StepKind::Conv { params, .. } => {
                    let cs = params.core_shape(1);
                    let g = params.group;
                    if g == 0 || params.in_chw[0] % g != 0 || params.out_channels % g != 0 {
                        return bad(i, format!("{g} groups of {params:?}"));
                    }
                    params.bilinear(1).check().map_err(core_err)?;
                    let want = cs
                        .out_h()
                        .checked_mul(cs.out_w())
                        .and_then(|n| n.checked_mul(params.out_channels));
                    if chw(params.in_chw) != Some(cur) || want != Some(out) {
                        return bad(
                            i,
                            format!("convolution {params:?} after {cur} elements, giving {out}"),
                        );
                    }
                }
                StepKind::MaxPool { params, .. } | StepKind::AvgPool { params } => {
                    let [c, h, w] = params.in_chw;
                    let ok = params.kernel.iter().all(|k| *k >= 1)
                        && params.stride.iter().all(|s| *s >= 1)
                        && params.kernel[0] <= h
                        && params.kernel[1] <= w
                        && params.kernel[0]
                            .checked_mul(params.kernel[1])
                            .is_some_and(|k| k <= 1 << 16)
                        && chw(params.in_chw) == Some(cur);
                    let ps = params.core_shape(1);
                    if !ok || c * ps.out_h() * ps.out_w() != out {
                        return bad(
                            i,
                            format!("pooling {params:?} after {cur} elements, giving {out}"),
                        );
                    }
                    if let StepKind::MaxPool { bits, .. } = st.kind {
                        if !(2..=64).contains(&bits) {
                            return bad(i, format!("comparison on {bits} bits"));
                        }
                    }
                }
                StepKind::Transpose { dims, rank, perm } => {
                    let mut seen = [false; 9];
                    let perm_ok = rank <= 8
                        && perm[0] == 0
                        && perm[..rank + 1]
                            .iter()
                            .all(|p| *p <= rank && !std::mem::replace(&mut seen[*p], true));
                    let size = dims[..rank.min(8)]
                        .iter()
                        .try_fold(1usize, |a, d| a.checked_mul(*d));
                    if !perm_ok || size != Some(cur) || out != cur {
                        return bad(
                            i,
                            format!(
                                "transpose of {:?} by {:?} after {cur} elements",
                                &dims[..rank.min(8)],
                                &perm[..(rank + 1).min(9)]
                            ),
                        );
                    }
                }
                StepKind::Truncate => {
                    if out != cur {
                        return bad(i, format!("truncation of {cur} elements giving {out}"));
                    }
                }
                StepKind::LiftInput { bits } => {
                    if i != 0
                        || out != cur
                        || !(2..=sotto_core::protocols::MAX_LIFT_BITS).contains(&bits)
                    {
                        return bad(i, format!("input lift to {bits} bits at step {i}"));
                    }
                }
                StepKind::Relu { shift, bits } | StepKind::Clip { shift, bits, .. } => {
                    if out != cur || shift > 62 || !(2..=64).contains(&bits) {
                        return bad(
                            i,
                            format!("ReLU >> {shift} on {bits} bits, {cur} elements giving {out}"),
                        );
                    }
                }
                StepKind::Sigmoid { in_frac } | StepKind::Tanh { in_frac } => {
                    if out != cur
                        || in_frac > 62
                        || in_frac + SLOPE_BITS < f
                        || in_frac + SLOPE_BITS - f > 62
                    {
                        return bad(i, format!("activation from {in_frac} fractional bits, {cur} elements giving {out}"));
                    }
                }
                StepKind::Pad {
                    chw: [c, h, w],
                    pads,
                    ..
                } => {
                    let size = (|| {
                        let ph = h.checked_add(pads[0])?.checked_add(pads[2])?;
                        let pw = w.checked_add(pads[1])?.checked_add(pads[3])?;
                        c.checked_mul(ph)?.checked_mul(pw)
                    })();
                    if chw([c, h, w]) != Some(cur) || size != Some(out) {
                        return bad(i, format!("padding of [{c}, {h}, {w}] by {pads:?} after {cur} elements, giving {out}"));
                    }
                }
                StepKind::AvgPoolPadded { params, pads, .. } => {
                    let p = params.padded(pads);
                    let [c, h, w] = p.in_chw;
                    let ok = params.kernel.iter().all(|k| *k >= 1)
                        && params.stride.iter().all(|s| *s >= 1)
                        && pads[0] < params.kernel[0]
                        && pads[2] < params.kernel[0]
                        && pads[1] < params.kernel[1]
                        && pads[3] < params.kernel[1]
                        && params.kernel[0] <= h
                        && params.kernel[1] <= w
                        && params.kernel[0]
                            .checked_mul(params.kernel[1])
                            .is_some_and(|k| k <= 1 << 16)
                        && chw(params.in_chw) == Some(cur)
                        && chw(p.in_chw).is_some_and(|n| n <= MAX_ELEMENTS);
                    let ps = p.core_shape(1);
                    if !ok || c * ps.out_h() * ps.out_w() != out {
                        return bad(
                            i,
                            format!("pooling {params:?} padded by {pads:?} after {cur} elements, giving {out}"),
                        );
                    }
                }
                StepKind::Piecewise { act, in_frac, bits } => {
                    if out != cur
                        || in_frac > 62
                        || !(2..=64).contains(&bits)
                        || act.piecewise(in_frac, f).is_err()
                    {
                        return bad(
                            i,
                            format!(
                                "{} from {in_frac} fractional bits on {bits} bits",
                                act.name()
                            ),
                        );
                    }
                }
                StepKind::Scale { shift } => {
                    if out != cur || shift > 62 {
                        return bad(
                            i,
                            format!("scaling by 2^{shift} of {cur} elements giving {out}"),
                        );
                    }
                }
                StepKind::Add { .. } => {
                    let (a, b) = (st.inputs[0], st.inputs[1]);
                    if out != cur || len(b) != cur || frac(a) != frac(b) {
                        return bad(
                            i,
                            format!("sum of {cur} and {} elements giving {out}", len(b)),
                        );
                    }
                }
                StepKind::Concat { outer } => {
                    let total = st
                        .inputs
                        .iter()
                        .try_fold(0usize, |t, v| t.checked_add(len(*v)));
                    let even = outer >= 1
                        && st
                            .inputs
                            .iter()
                            .all(|v| len(*v) % outer == 0 && frac(*v) == frac(st.inputs[0]));
                    if !even || total != Some(out) {
                        return bad(
                            i,
                            format!(
                                "concatenation of {} values in {outer} chunks giving {out}",
                                st.inputs.len()
                            ),
                        );
                    }
                }
            }
        }
        let cur = self.step_input_len_of(self.steps.len());
        if self.output_len != cur || self.out_frac > 62 {
            return Err(ModelError::Graph(format!(
                "the plan ends with {cur} elements at {} fractional bits, the file says {}",
                self.out_frac, self.output_len
            )));
        }
        Ok(())
    }

    /// Bytes of helper material (per server and input) of the plan's heaviest step: a
    /// streamed session holds at most its window plus this much (times the batch) at once.
    pub fn largest_step_material(&self, private: bool) -> u64 {
        self.step_costs(private)
            .iter()
            .map(|c| c.helper_bytes)
            .max()
            .unwrap_or(0)
    }

    /// The width `k` of the input's range when the plan enforces it (its first step is
    /// [`StepKind::LiftInput`], as with private weights): clients then share each input's
    /// `k`-bit code modulo `2^k` with a XOR-shared wrap bit
    /// ([`sotto_core::share::share_input_bits`]) instead of sharing it modulo `2^64`.
    /// `None` when the plan takes additive shares.
    pub fn input_bits(&self) -> Option<u32> {
        match self.steps.first().map(|s| &s.kind) {
            Some(StepKind::LiftInput { bits }) => Some(*bits),
            _ => None,
        }
    }

    /// Bytes of helper material one server holds for one input of a prediction (batch 1,
    /// every step's cost in [`Plan::step_costs`]): what admission control weighs a request by.
    pub fn material_per_input(&self, private: bool) -> u64 {
        self.step_costs(private)
            .iter()
            .map(|c| c.helper_bytes)
            .sum::<u64>()
            .max(1)
    }

    /// The plan as a deployment with private (`true`) or public weights runs it: with public
    /// weights the input's range is not enforced (no secret depends on it: a client sending
    /// an out-of-range value only gets a wrong answer for itself), so the lift step, one round
    /// and 25 KB of network A's helper material at P1, is dropped; and the "fewer rounds" setting is
    /// off (public products are local already: there is no round to save).
    pub fn for_weights(mut self, private: bool) -> Plan {
        if !private {
            self.steps = without_lift(&self.steps);
            self.fewer_rounds = false;
        }
        self
    }

    /// The plan with the opt-in "fewer rounds" setting on or off ([`Plan::fewer_rounds`];
    /// `sotto inspect|bench|share-model --fewer-rounds`). It only takes effect with private
    /// weights: [`Plan::for_weights`]`(false)` turns it off.
    pub fn with_fewer_rounds(mut self, on: bool) -> Plan {
        self.fewer_rounds = on;
        self
    }

    /// The plan with the opt-in "compact comparisons" setting on or off
    /// ([`Plan::compact_comparisons`]; `sotto inspect|bench|share-model|eval
    /// --compact-comparisons`), in either weights mode.
    ///
    /// Turning it on also moves each ReLU that only a max pool with non-overlapping windows
    /// reads (through a padding or not) after that pool ([`Plan::pool_first`]).
    pub fn with_compact_comparisons(mut self, on: bool) -> Plan {
        self.compact_comparisons = on;
        if on {
            self.pool_first();
        }
        self
    }

    /// Rewrites every `Relu → [Pad →] MaxPool` whose windows do not overlap, each value read
    /// only by the next step, into `[Pad →] MaxPool → Relu`: the ReLU (and the exact
    /// truncation it carries) then runs on a quarter of the values behind a 2×2 pool, and the
    /// pool compares the untruncated values (wider: `shift` more bits). The numbers are the
    /// same bit for bit: `max` commutes with any non-decreasing function, the truncating
    /// ReLU `⌊max(x, 0) / 2^shift⌋` is one, and the padding's fill stays below every value.
    /// It is made only where the one-bit keys of the wider comparisons take less helper
    /// material than the ReLUs they replace (the CIFAR-10 CNN: 18 % less material, 19 % less
    /// online traffic; not where padding adds many comparisons); with the default pool keys
    /// (32 B per bit and comparison, and a costlier evaluation) it rarely pays (the bundled
    /// CNN at batch 50: 16–40 % slower), which is why only
    /// [`Plan::with_compact_comparisons`] applies it. Overlapping windows stay (a 3×3 window
    /// at stride 2 compares eight values per output: more than the ReLUs saved).
    pub fn pool_first(&mut self) {
        for a in 0..self.steps.len() {
            if let Some(new) = self.pool_first_at(a) {
                let n = new.len();
                self.steps.splice(a..a + n, new);
            }
        }
    }

    /// The steps replacing `a..a + n` when step `a` is a ReLU [`Plan::pool_first`] moves.
    fn pool_first_at(&self, a: usize) -> Option<Vec<Step>> {
        let r = &self.steps[a];
        let StepKind::Relu { shift, bits } = r.kind else {
            return None;
        };
        let v = *r.inputs.first()?;
        let x = self.steps.get(v.checked_sub(1)?)?;
        let scale = r.out_frac.checked_add(shift)?;
        // Value `val` is read only by step `by`, and only that value.
        let only = |val: usize, by: usize| {
            self.steps.get(by).is_some_and(|s| s.inputs == [val])
                && self
                    .steps
                    .iter()
                    .enumerate()
                    .all(|(i, s)| i == by || !s.inputs.contains(&val))
        };
        if r.inputs.len() != 1 || x.out_frac != scale || !only(a + 1, a + 1) {
            return None;
        }
        let padded = matches!(self.steps[a + 1].kind, StepKind::Pad { .. });
        let at = a + 1 + usize::from(padded);
        if padded && !only(a + 2, at) {
            return None;
        }
        let p = &self.steps[at];
        let StepKind::MaxPool { params, .. } = p.kind else {
            return None;
        };
        if (0..2).any(|k| params.stride[k] < params.kernel[k]) {
            return None;
        }
        let mut out = Vec::new();
        let (mut xb, mut xp) = (x.bound, x.proven_bound);
        if let StepKind::Pad { chw, pads, value } = self.steps[a + 1].kind {
            // The padding becomes the fill below every value. That keeps the numbers when the
            // padding was not above the ReLU's outputs (a max pool's own fill, or zeros) and
            // no window is all padding (each side's padding below the window).
            let fits = (0..4).all(|k| pads[k] < params.kernel[k % 2]);
            if value as i64 > 0 || !fits {
                return None;
            }
            let fill = pool_fill(xb, scale);
            if fill * 2f64.powi(scale as i32) >= LIMIT / 2.0 {
                return None;
            }
            let value = encode_with(-fill, scale).ok()?;
            (xb, xp) = (fill, xp.max(fill));
            out.push(Step {
                node: self.steps[a + 1].node.clone(),
                kind: StepKind::Pad { chw, pads, value },
                inputs: vec![v],
                per_example: self.steps[a + 1].per_example,
                bound: xb,
                proven_bound: xp,
                out_frac: scale,
            });
        }
        out.push(Step {
            node: p.node.clone(),
            kind: StepKind::MaxPool {
                params,
                bits: bits_for(2.0 * xb * 2f64.powi(scale as i32)),
            },
            inputs: vec![if padded { a + 1 } else { v }],
            per_example: p.per_example,
            bound: xb,
            proven_bound: xp,
            out_frac: scale,
        });
        // The pool's output is one of its window's values (a window always holds one that is
        // not padding): the ReLU's comparison width stays.
        out.push(Step {
            node: r.node.clone(),
            kind: StepKind::Relu { shift, bits },
            inputs: vec![a + out.len()],
            per_example: p.per_example,
            bound: r.bound,
            proven_bound: r.proven_bound,
            out_frac: r.out_frac,
        });
        // Only where it saves material: padded positions add comparisons that save no ReLU
        // (a 3×3 input padded to 4×4 behind a 2×2 pool: 12 wider comparisons for 5 ReLUs).
        let f = self.fp.frac_bits();
        let material = |steps: &[Step]| -> u64 {
            steps
                .iter()
                .map(|st| {
                    let mut g = st.gate(1, f).unwrap_or(crate::interp::Gate::Local);
                    g.compact();
                    g.cost(true).helper_bytes
                })
                .sum()
        };
        (material(&out) < material(&self.steps[a..a + out.len()])).then_some(out)
    }

    /// Elements per example of the (first) value step `i` reads.
    pub fn step_input_len(&self, i: usize) -> usize {
        self.step_input_len_of(self.steps[i].inputs.first().copied().unwrap_or(i))
    }

    /// Elements per example of value `v` (0 the input, `i + 1` step `i`'s output).
    pub fn step_input_len_of(&self, v: usize) -> usize {
        if v == 0 {
            self.input_len
        } else {
            self.steps[v - 1].per_example
        }
    }
}

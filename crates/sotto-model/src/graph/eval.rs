//! The float evaluator: every op in `f64` over `[batch, ...]` arrays.

use std::borrow::Cow;

use ndarray::{ArrayD, Axis, IxDyn, Slice, Zip};

use super::{erf, Graph, Op};
use crate::error::{ModelError, Result};
use crate::ir::{ConvParams, PoolParams};

impl Graph {
    /// Runs the graph in `f64` on `batch` examples laid out one after the other (row-major,
    /// batch first); returns the output (before a final softmax, which
    /// [`Graph::softmax_at_client`] flags), row-major.
    pub fn forward(&self, x: &[f32], batch: usize) -> Result<Vec<f64>> {
        self.validate()?;
        let in_shape = &self.values[self.input].shape;
        let per = self.input_len();
        if batch == 0 || batch.checked_mul(per) != Some(x.len()) {
            return Err(ModelError::Input(format!(
                "{} values for a batch of {batch} inputs of shape {in_shape:?}",
                x.len()
            )));
        }
        // Free each value after its last reader.
        let mut last_use = vec![usize::MAX; self.values.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &v in &n.inputs {
                last_use[v] = i;
            }
        }
        let mut vals: Vec<Option<ArrayD<f64>>> = vec![None; self.values.len()];
        vals[self.input] = Some(
            ArrayD::from_shape_vec(
                full(batch, in_shape),
                x.iter().map(|&v| f64::from(v)).collect(),
            )
            .map_err(|e| ModelError::Input(e.to_string()))?,
        );
        for (i, n) in self.nodes.iter().enumerate() {
            let ins = n
                .inputs
                .iter()
                .map(|&v| vals[v].as_ref())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    ModelError::Graph(format!("node {:?}: an input was freed early", n.name))
                })?;
            let y = eval(&n.op, &ins, batch, &self.values[n.output].shape).map_err(|reason| {
                ModelError::Node {
                    node: n.name.clone(),
                    op: n.op.name().into(),
                    reason,
                }
            })?;
            vals[n.output] = Some(y);
            for &v in &n.inputs {
                if last_use[v] == i && v != self.output {
                    vals[v] = None;
                }
            }
        }
        let out = vals[self.output]
            .take()
            .ok_or_else(|| ModelError::Graph("the output was not computed".into()))?;
        Ok(out.iter().copied().collect())
    }
}

/// `[batch, shape...]`.
fn full(batch: usize, shape: &[usize]) -> IxDyn {
    let mut d = Vec::with_capacity(shape.len() + 1);
    d.push(batch);
    d.extend_from_slice(shape);
    IxDyn(&d)
}

/// The elements in row-major order, borrowed when already laid out so.
fn flat(a: &ArrayD<f64>) -> Cow<'_, [f64]> {
    match a.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().copied().collect()),
    }
}

fn shaped(batch: usize, shape: &[usize], v: Vec<f64>) -> std::result::Result<ArrayD<f64>, String> {
    ArrayD::from_shape_vec(full(batch, shape), v).map_err(|e| e.to_string())
}

fn eval(
    op: &Op,
    ins: &[&ArrayD<f64>],
    batch: usize,
    out_shape: &[usize],
) -> std::result::Result<ArrayD<f64>, String> {
    let x = ins.first().ok_or("no input")?;
    let unary = |f: &dyn Fn(f64) -> f64| x.mapv(f);
    Ok(match op {
        Op::Dense {
            inputs,
            outputs,
            weights,
            bias,
        } => shaped(
            batch,
            out_shape,
            dense(&flat(x), batch, *inputs, *outputs, weights, bias),
        )?,
        Op::Conv {
            params,
            group,
            weights,
            bias,
        } => shaped(
            batch,
            out_shape,
            conv(&flat(x), batch, params, *group, weights, bias, out_shape),
        )?,
        Op::MaxPool { params, pads } => shaped(
            batch,
            out_shape,
            pool(&flat(x), batch, params, *pads, None, out_shape),
        )?,
        Op::AvgPool {
            params,
            pads,
            count_include_pad,
        } => shaped(
            batch,
            out_shape,
            pool(
                &flat(x),
                batch,
                params,
                *pads,
                Some(*count_include_pad),
                out_shape,
            ),
        )?,
        Op::GlobalAvgPool => {
            let (n, c) = (x.shape()[0], x.shape()[1]);
            let hw = x.shape()[2] * x.shape()[3];
            let v: Vec<f64> = flat(x)
                .chunks(hw.max(1))
                .map(|p| p.iter().sum::<f64>() / hw as f64)
                .collect();
            ArrayD::from_shape_vec(IxDyn(&[n, c, 1, 1]), v).map_err(|e| e.to_string())?
        }
        Op::Pad { pads, value } => {
            let mut y = ArrayD::from_elem(full(batch, out_shape), f64::from(*value));
            y.slice_each_axis_mut(|ad| match ad.axis.index() {
                0 => Slice::from(..),
                a => {
                    let [before, _] = pads[a - 1];
                    Slice::from(before..before + x.shape()[a])
                }
            })
            .assign(x);
            y
        }
        Op::Affine { scale, shift } => {
            let s = scale.mapv(f64::from);
            let t = shift.mapv(f64::from);
            let dim = x.raw_dim();
            let sb = s.broadcast(dim.clone()).ok_or("scale does not broadcast")?;
            let tb = t.broadcast(dim).ok_or("shift does not broadcast")?;
            Zip::from(*x)
                .and(&sb)
                .and(&tb)
                .map_collect(|v, s, t| v * s + t)
        }
        Op::Relu => unary(&|v| v.max(0.0)),
        Op::Sigmoid => unary(&|v| 1.0 / (1.0 + (-v).exp())),
        Op::Tanh => unary(&f64::tanh),
        Op::Clip { min, max } => {
            let (lo, hi) = (f64::from(*min), f64::from(*max));
            unary(&|v| v.max(lo).min(hi))
        }
        Op::LeakyRelu { alpha } => {
            let a = f64::from(*alpha);
            unary(&|v| if v < 0.0 { a * v } else { v })
        }
        Op::Elu { alpha } => {
            let a = f64::from(*alpha);
            unary(&|v| if v < 0.0 { a * v.exp_m1() } else { v })
        }
        Op::HardSigmoid { alpha, beta } => {
            let (a, b) = (f64::from(*alpha), f64::from(*beta));
            unary(&|v| (a * v + b).clamp(0.0, 1.0))
        }
        Op::Erf => unary(&erf),
        Op::Act(a) => unary(&|v| a.eval(v)),
        Op::Pow { exponent } => {
            let e = f64::from(*exponent);
            if e.fract() == 0.0 && e.abs() <= 64.0 {
                let k = e as i32;
                unary(&|v| v.powi(k))
            } else {
                unary(&|v| v.powf(e))
            }
        }
        Op::Add | Op::Sub | Op::Mul | Op::Max | Op::Min => {
            let y = ins.get(1).ok_or("one operand")?;
            let dim = full(batch, out_shape);
            let a = x
                .broadcast(dim.clone())
                .ok_or("operands do not broadcast")?;
            let b = y.broadcast(dim).ok_or("operands do not broadcast")?;
            let f: fn(f64, f64) -> f64 = match op {
                Op::Add => |a, b| a + b,
                Op::Sub => |a, b| a - b,
                Op::Mul => |a, b| a * b,
                Op::Max => f64::max,
                _ => f64::min,
            };
            Zip::from(&a).and(&b).map_collect(|a, b| f(*a, *b))
        }
        Op::Concat { axis } => {
            let views: Vec<_> = ins.iter().map(|a| a.view()).collect();
            ndarray::concatenate(Axis(axis + 1), &views).map_err(|e| e.to_string())?
        }
        Op::Reshape => shaped(batch, out_shape, flat(x).into_owned())?,
        Op::Transpose { perm } => {
            let mut p = Vec::with_capacity(perm.len() + 1);
            p.push(0);
            p.extend(perm.iter().map(|a| a + 1));
            let t = (*x).view().permuted_axes(IxDyn(&p));
            t.as_standard_layout().into_owned()
        }
    })
}

/// `y = x · W + b` for `batch` rows.
fn dense(
    x: &[f64],
    batch: usize,
    inputs: usize,
    outputs: usize,
    weights: &[f32],
    bias: &[f32],
) -> Vec<f64> {
    let mut y = vec![0f64; batch * outputs];
    for (row, out) in x.chunks(inputs.max(1)).zip(y.chunks_mut(outputs.max(1))) {
        for (o, b) in out.iter_mut().zip(bias) {
            *o = f64::from(*b);
        }
        for (xv, wrow) in row.iter().zip(weights.chunks(outputs.max(1))) {
            for (o, w) in out.iter_mut().zip(wrow) {
                *o += xv * f64::from(*w);
            }
        }
    }
    y
}

/// Grouped, padded, strided 2-D convolution of `[batch, C, H, W]`.
fn conv(
    x: &[f64],
    batch: usize,
    p: &ConvParams,
    group: usize,
    w: &[f32],
    bias: &[f32],
    out_shape: &[usize],
) -> Vec<f64> {
    let [ci, h, wd] = p.in_chw;
    let [kh, kw] = p.kernel;
    let (oc, oh, ow) = (p.out_channels, out_shape[1], out_shape[2]);
    let g = group.max(1);
    let (cg, og) = (ci / g, oc / g);
    let mut out = vec![0f64; batch * oc * oh * ow];
    for n in 0..batch {
        for o in 0..oc {
            let c0 = (o / og.max(1)) * cg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = f64::from(bias[o]);
                    for cc in 0..cg {
                        let plane = &x[((n * ci) + c0 + cc) * h * wd..][..h * wd];
                        let wk = &w[((o * cg) + cc) * kh * kw..][..kh * kw];
                        for ky in 0..kh {
                            let Some(iy) = (oy * p.stride[0] + ky).checked_sub(p.pads[0]) else {
                                continue;
                            };
                            if iy >= h {
                                continue;
                            }
                            for kx in 0..kw {
                                let Some(ix) = (ox * p.stride[1] + kx).checked_sub(p.pads[1])
                                else {
                                    continue;
                                };
                                if ix < wd {
                                    acc += plane[iy * wd + ix] * f64::from(wk[ky * kw + kx]);
                                }
                            }
                        }
                    }
                    out[((n * oc + o) * oh + oy) * ow + ox] = acc;
                }
            }
        }
    }
    out
}

/// Padded pooling of `[batch, C, H, W]`: max when `avg` is `None` (padding ignored), else
/// average, counting padded positions in the divisor when `avg == Some(true)`.
pub(crate) fn pool(
    x: &[f64],
    batch: usize,
    p: &PoolParams,
    pads: [usize; 4],
    avg: Option<bool>,
    out_shape: &[usize],
) -> Vec<f64> {
    let [c, h, w] = p.in_chw;
    let [kh, kw] = p.kernel;
    let (oh, ow) = (out_shape[1], out_shape[2]);
    let mut out = Vec::with_capacity(batch * c * oh * ow);
    for plane in x.chunks(h * w).take(batch * c) {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut max = f64::NEG_INFINITY;
                let (mut sum, mut count) = (0f64, 0usize);
                for ky in 0..kh {
                    let iy = (oy * p.stride[0] + ky).checked_sub(pads[0]);
                    for kx in 0..kw {
                        let ix = (ox * p.stride[1] + kx).checked_sub(pads[1]);
                        match (iy, ix) {
                            (Some(iy), Some(ix)) if iy < h && ix < w => {
                                let v = plane[iy * w + ix];
                                max = max.max(v);
                                sum += v;
                                count += 1;
                            }
                            _ => {}
                        }
                    }
                }
                out.push(match avg {
                    None => max,
                    Some(true) => {
                        // ONNX counts the window clipped to the padded input.
                        let rows =
                            (oy * p.stride[0] + kh).min(h + pads[0] + pads[2]) - oy * p.stride[0];
                        let cols =
                            (ox * p.stride[1] + kw).min(w + pads[1] + pads[3]) - ox * p.stride[1];
                        sum / (rows * cols) as f64
                    }
                    Some(false) => sum / count.max(1) as f64,
                });
            }
        }
    }
    out
}

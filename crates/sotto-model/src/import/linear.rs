//! Linear layers: `MatMul`, `Gemm` (Keras Dense) and `Conv` (Conv2D, and with `group > 1`
//! DepthwiseConv2D, SeparableConv2D's depthwise half and grouped Conv2D).

use super::{batch_shape, chw, padding, pair, At, Ctx};
use crate::error::Result;
use crate::graph::Op;
use crate::ir::ConvParams;

/// Features of a `[batch, features]` activation.
fn features(shape: &[usize], at: &At) -> Result<usize> {
    match shape {
        [k] => Ok(*k),
        _ => Err(at.err(format!(
            "expects a [batch, features] activation, got {}",
            batch_shape(shape)
        ))),
    }
}

/// `c` as `outputs` biases: one per output, or one for all.
fn broadcast_bias(c: &[f32], outputs: usize) -> Option<Vec<f32>> {
    match c.len() {
        1 => Some(vec![c[0]; outputs]),
        l if l == outputs => Some(c.to_vec()),
        _ => None,
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

/// `MatMul(activation, W)`: a dense layer without bias (tf2onnx adds the bias with `Add`).
pub(super) fn matmul(ctx: &mut Ctx, at: &At) -> Result<()> {
    let x = ctx.act(at, 0)?;
    let k = features(&ctx.shape(x), at)?;
    let w = ctx.floats(at, 1)?;
    let outputs = match w.shape() {
        [rows, cols] if *rows == k => *cols,
        dims => {
            return Err(at.err(format!(
                "weights of shape {dims:?} do not fit {k} input features"
            )))
        }
    };
    let op = Op::Dense {
        inputs: k,
        outputs,
        weights: w.iter().copied().collect(),
        bias: vec![0.0; outputs],
    };
    ctx.emit(at, op, vec![x])
}

/// `Gemm(activation, W, C)`: `alpha · x · W' + beta · C` with `W'` = W or Wᵀ.
pub(super) fn gemm(ctx: &mut Ctx, at: &At) -> Result<()> {
    let x = ctx.act(at, 0)?;
    let k = features(&ctx.shape(x), at)?;
    if at.attr_i("transA").unwrap_or(0) != 0 {
        return Err(at.err("transA = 1 (a transposed activation) is not supported"));
    }
    let alpha = at.attr_f("alpha").unwrap_or(1.0);
    let beta = at.attr_f("beta").unwrap_or(1.0);
    let w = ctx.floats(at, 1)?;
    let [rows, cols] = w.shape() else {
        return Err(at.err(format!("weights of shape {:?} are not a matrix", w.shape())));
    };
    let (rows, cols) = (*rows, *cols);
    let mut weights: Vec<f32> = w.iter().copied().collect();
    let outputs = if at.attr_i("transB").unwrap_or(0) != 0 {
        weights = transpose(&weights, rows, cols);
        rows
    } else {
        cols
    };
    if Some(weights.len()) != k.checked_mul(outputs) {
        return Err(at.err(format!(
            "weights of shape {:?} do not fit {k} input features",
            w.shape()
        )));
    }
    weights.iter_mut().for_each(|v| *v *= alpha);
    let mut bias = vec![0f32; outputs];
    if at.has(2) {
        let c: Vec<f32> = ctx.floats(at, 2)?.iter().copied().collect();
        bias = broadcast_bias(&c, outputs).ok_or_else(|| {
            at.err(format!(
                "bias of {} elements for {outputs} outputs",
                c.len()
            ))
        })?;
        bias.iter_mut().for_each(|v| *v *= beta);
    }
    if weights.iter().chain(&bias).any(|v| !v.is_finite()) {
        return Err(at.err("alpha or beta makes a weight infinite"));
    }
    let op = Op::Dense {
        inputs: k,
        outputs,
        weights,
        bias,
    };
    ctx.emit(at, op, vec![x])
}

/// `Conv` over NCHW, with `group` (depthwise when it equals the channels), strides and
/// padding (`pads` or `auto_pad`).
pub(super) fn conv(ctx: &mut Ctx, at: &At) -> Result<()> {
    let x = ctx.act(at, 0)?;
    let [c, h, w] = chw(&ctx.shape(x), at)?;
    let wt = ctx.floats(at, 1)?;
    let &[o, cg, kh, kw] = wt.shape() else {
        return Err(at.err(format!(
            "kernel of shape {:?} is not [out, in, height, width]: only 2-D convolution is supported",
            wt.shape()
        )));
    };
    let group = at.attr_i("group").unwrap_or(1);
    let group = usize::try_from(group)
        .ok()
        .filter(|&g| g > 0 && c % g == 0 && o % g == 0)
        .ok_or_else(|| {
            at.err(format!(
                "group = {group} does not divide the {c} input and {o} output channels"
            ))
        })?;
    if cg != c / group {
        return Err(at.err(format!(
            "kernel of shape {:?} does not fit {c} input channels in {group} group(s) (it should have {} input channels per group)",
            wt.shape(),
            c / group
        )));
    }
    if at
        .attr_ints("dilations")
        .is_some_and(|d| d.iter().any(|v| *v != 1))
    {
        return Err(at.err("dilated convolution is not supported"));
    }
    let kernel = [kh, kw];
    if let Some(ks) = at.attr_ints("kernel_shape") {
        if ks.len() != 2
            || ks
                .iter()
                .zip(kernel)
                .any(|(a, b)| usize::try_from(*a) != Ok(b))
        {
            return Err(at.err(format!(
                "kernel_shape {ks:?} differs from the weights' {kernel:?}"
            )));
        }
    }
    let stride = pair(at, "strides", 1)?;
    let pads = padding(at, [h, w], kernel, stride)?;
    let bias = if at.has(2) {
        let b: Vec<f32> = ctx.floats(at, 2)?.iter().copied().collect();
        broadcast_bias(&b, o)
            .ok_or_else(|| at.err(format!("bias of {} elements for {o} channels", b.len())))?
    } else {
        vec![0.0; o]
    };
    let params = ConvParams {
        in_chw: [c, h, w],
        out_channels: o,
        kernel,
        stride,
        pads,
        group,
    };
    let op = Op::Conv {
        params,
        group,
        weights: wt.iter().copied().collect(),
        bias,
    };
    ctx.emit(at, op, vec![x])
}

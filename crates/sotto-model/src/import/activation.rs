//! Activations: `Relu`, `Sigmoid`, `Tanh`, `Clip` (ReLU6), `LeakyRelu`, `Elu`,
//! `HardSigmoid`, `HardSwish`, `Erf`, `Pow` (by a constant), and the final `Softmax` (applied
//! at the client).

use super::{At, Ctx, Val};
use crate::error::Result;
use crate::graph::Op;

fn unary(ctx: &mut Ctx, at: &At, op: Op) -> Result<()> {
    let x = ctx.act(at, 0)?;
    ctx.emit(at, op, vec![x])
}

/// `Relu`.
pub(super) fn relu(ctx: &mut Ctx, at: &At) -> Result<()> {
    unary(ctx, at, Op::Relu)
}

/// `Sigmoid`.
pub(super) fn sigmoid(ctx: &mut Ctx, at: &At) -> Result<()> {
    unary(ctx, at, Op::Sigmoid)
}

/// `Tanh`.
pub(super) fn tanh(ctx: &mut Ctx, at: &At) -> Result<()> {
    unary(ctx, at, Op::Tanh)
}

/// `Erf` (exact gelu is `x · (1 + erf(x / √2)) / 2`).
pub(super) fn erf(ctx: &mut Ctx, at: &At) -> Result<()> {
    unary(ctx, at, Op::Erf)
}

/// `Clip`: bounds as optional inputs (opset ≥ 11) or attributes; absent ones are infinite.
pub(super) fn clip(ctx: &mut Ctx, at: &At) -> Result<()> {
    let (min, max) = if ctx.opset >= 11 {
        let bound = |i: usize, default: f32| -> Result<f32> {
            if at.has(i) {
                ctx.scalar(at, i)
            } else {
                Ok(default)
            }
        };
        (bound(1, f32::NEG_INFINITY)?, bound(2, f32::INFINITY)?)
    } else {
        (
            at.attr_f("min").unwrap_or(f32::NEG_INFINITY),
            at.attr_f("max").unwrap_or(f32::INFINITY),
        )
    };
    if min.is_nan() || max.is_nan() || min > max {
        return Err(at.err(format!("bounds [{min}, {max}] are not an interval")));
    }
    unary(ctx, at, Op::Clip { min, max })
}

/// `LeakyRelu` (alpha 0.01 by default; Keras' LeakyReLU writes 0.3 or its own).
pub(super) fn leaky_relu(ctx: &mut Ctx, at: &At) -> Result<()> {
    let alpha = at.attr_f("alpha").unwrap_or(0.01);
    unary(ctx, at, Op::LeakyRelu { alpha })
}

/// `Elu` (alpha 1 by default).
pub(super) fn elu(ctx: &mut Ctx, at: &At) -> Result<()> {
    let alpha = at.attr_f("alpha").unwrap_or(1.0);
    unary(ctx, at, Op::Elu { alpha })
}

/// `HardSigmoid`: `max(0, min(1, alpha · x + beta))`, alpha 0.2 and beta 0.5 by default:
/// two nodes, a scale and shift (which folds into the layer before it where it can) and a
/// `Clip(0, 1)`.
pub(super) fn hard_sigmoid(ctx: &mut Ctx, at: &At) -> Result<()> {
    let alpha = at.attr_f("alpha").unwrap_or(0.2);
    let beta = at.attr_f("beta").unwrap_or(0.5);
    if !(alpha.is_finite() && beta.is_finite()) {
        return Err(at.err(format!("alpha {alpha} or beta {beta} is not finite")));
    }
    let x = ctx.act(at, 0)?;
    let scalar = |v: f32| ndarray::ArrayD::from_elem(ndarray::IxDyn(&[]), v);
    let op = Op::Affine {
        scale: scalar(alpha),
        shift: scalar(beta),
    };
    let a = ctx.add_node(at, format!("{}/affine", at.name()), op, vec![x], &[])?;
    ctx.emit(at, Op::Clip { min: 0.0, max: 1.0 }, vec![a])
}

/// `HardSwish`: `x · ReLU6(x + 3) / 6`, the activation itself.
pub(super) fn hard_swish(ctx: &mut Ctx, at: &At) -> Result<()> {
    unary(ctx, at, Op::Act(crate::ir::Activation::HardSwish))
}

/// `Pow(activation, constant)`.
pub(super) fn pow(ctx: &mut Ctx, at: &At) -> Result<()> {
    let x = ctx.act(at, 0)?;
    let exponent = ctx.scalar(at, 1)?;
    if exponent == 1.0 {
        return ctx.alias(at, Val::Act(x));
    }
    if !exponent.is_finite() {
        return Err(at.err(format!("exponent {exponent} is not finite")));
    }
    ctx.emit(at, Op::Pow { exponent }, vec![x])
}

/// `Softmax` over the features of a `[batch, features]` output: not a layer, the client
/// applies it; its output names the logits, and only renames may follow it.
pub(super) fn softmax(ctx: &mut Ctx, at: &At) -> Result<()> {
    let x = ctx.act(at, 0)?;
    let rank = ctx.shape(x).len();
    let axis = at
        .attr_i("axis")
        .unwrap_or(if ctx.opset >= 13 { -1 } else { 1 });
    if rank != 1 || !(axis == -1 || axis == 1) {
        return Err(
            at.err("softmax is supported only over the features of a [batch, features] output")
        );
    }
    if let Some(s) = &ctx.softmax {
        return Err(at.err(format!(
            "a second softmax (the first is node {s:?}): sotto applies softmax at the client, once, at the end"
        )));
    }
    ctx.softmax = Some(at.name());
    ctx.alias(at, Val::Act(x))?;
    let out = Ctx::out_name(at)?;
    ctx.probs.insert(out);
    Ok(())
}

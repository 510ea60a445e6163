//! Pooling and padding: `MaxPool`, `AveragePool` (with `pads`/`auto_pad` and
//! `count_include_pad`), `GlobalAveragePool`, `GlobalMaxPool`, `Pad`.

use super::{chw, padding, pair, At, Ctx, Val};
use crate::error::Result;
use crate::graph::Op;
use crate::ir::PoolParams;

/// `MaxPool` and `AveragePool` over NCHW.
pub(super) fn pool(ctx: &mut Ctx, at: &At) -> Result<()> {
    let x = ctx.act(at, 0)?;
    let [c, h, w] = chw(&ctx.shape(x), at)?;
    let k = at
        .attr_ints("kernel_shape")
        .ok_or_else(|| at.err("no kernel_shape"))?;
    if k.len() != 2 {
        return Err(at.err(format!("kernel_shape {k:?}: only 2-D pooling is supported")));
    }
    let kernel = pair(at, "kernel_shape", 1)?;
    let stride = pair(at, "strides", 1)?;
    if at.attr_i("ceil_mode").unwrap_or(0) != 0 {
        return Err(at.err("ceil_mode = 1 is not supported"));
    }
    if at
        .attr_ints("dilations")
        .is_some_and(|d| d.iter().any(|v| *v != 1))
    {
        return Err(at.err("dilated pooling is not supported"));
    }
    let pads = padding(at, [h, w], kernel, stride)?;
    if (0..4).any(|a| pads[a] >= kernel[a % 2]) {
        return Err(at.err(format!(
            "padding {pads:?} is not smaller than the window {kernel:?}"
        )));
    }
    let params = PoolParams {
        in_chw: [c, h, w],
        kernel,
        stride,
    };
    let op = if at.op() == "MaxPool" {
        Op::MaxPool { params, pads }
    } else {
        Op::AvgPool {
            params,
            pads,
            count_include_pad: at.attr_i("count_include_pad").unwrap_or(0) != 0,
        }
    };
    ctx.emit(at, op, vec![x])
}

/// `GlobalAveragePool`: the mean over height and width.
pub(super) fn global_average(ctx: &mut Ctx, at: &At) -> Result<()> {
    let x = ctx.act(at, 0)?;
    chw(&ctx.shape(x), at)?;
    ctx.emit(at, Op::GlobalAvgPool, vec![x])
}

/// `GlobalMaxPool`: a max pooling with the whole height and width as its window.
pub(super) fn global_max(ctx: &mut Ctx, at: &At) -> Result<()> {
    let x = ctx.act(at, 0)?;
    let [c, h, w] = chw(&ctx.shape(x), at)?;
    let params = PoolParams {
        in_chw: [c, h, w],
        kernel: [h, w],
        stride: [1, 1],
    };
    ctx.emit(
        at,
        Op::MaxPool {
            params,
            pads: [0; 4],
        },
        vec![x],
    )
}

/// `Pad` in constant mode (Keras ZeroPadding2D), pads as an input (opset ≥ 11) or an
/// attribute.
pub(super) fn pad(ctx: &mut Ctx, at: &At) -> Result<()> {
    let x = ctx.act(at, 0)?;
    let shape = ctx.shape(x);
    let mode = at.attr_s("mode").unwrap_or_else(|| "constant".into());
    if mode != "constant" {
        return Err(at.err(format!(
            "mode {mode:?} is not supported (constant padding is)"
        )));
    }
    let (pads, value) = if ctx.opset >= 11 {
        if at.has(3) {
            return Err(at.err("Pad with an axes input is not supported"));
        }
        let value = if at.has(2) { ctx.scalar(at, 2)? } else { 0.0 };
        (ctx.ints(at, 1)?, value)
    } else {
        (
            at.attr_ints("pads").unwrap_or_default(),
            at.attr_f("value").unwrap_or(0.0),
        )
    };
    let rank = shape.len() + 1;
    if pads.len() != 2 * rank {
        return Err(at.err(format!("{} pads for a rank-{rank} activation", pads.len())));
    }
    if pads[0] != 0 || pads[rank] != 0 {
        return Err(at.err("padding the batch axis is not supported"));
    }
    if !value.is_finite() {
        return Err(at.err(format!("padding value {value} is not finite")));
    }
    let per: Vec<[usize; 2]> = (1..rank)
        .map(|a| {
            let (b, e) = (pads[a], pads[a + rank]);
            match (usize::try_from(b), usize::try_from(e)) {
                (Ok(b), Ok(e)) if b < 1 << 24 && e < 1 << 24 => Ok([b, e]),
                _ => Err(at.err(format!(
                    "pads {pads:?} are not non-negative sizes (cropping is not supported)"
                ))),
            }
        })
        .collect::<Result<_>>()?;
    if per.iter().all(|p| *p == [0, 0]) {
        return ctx.alias(at, Val::Act(x));
    }
    ctx.emit(at, Op::Pad { pads: per, value }, vec![x])
}

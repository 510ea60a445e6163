//! Shapes and renames: `Shape`, `Gather`, `Slice`, `Concat` (of shape vectors or of
//! activations), `Squeeze`/`Unsqueeze` (of shape vectors, or of activations as a reshape),
//! `Reshape`, `Flatten`, `Transpose`, `Identity`, `Dropout`, `Cast`, `Constant`.

use ndarray::{ArrayD, Axis, IxDyn};

use super::{batch_shape, norm_axis, At, Ctx, Sym, Tensor, Val};
use crate::error::Result;
use crate::graph::{elements, Op};
use crate::onnx::data_type;

/// `Identity` and `Dropout` (inference): the output names the input.
pub(super) fn identity(ctx: &mut Ctx, at: &At) -> Result<()> {
    let v = ctx.get(at, 0)?.clone();
    ctx.alias(at, v)
}

/// `Cast`: a rename for activations; converts constants between integers and floats.
pub(super) fn cast(ctx: &mut Ctx, at: &At) -> Result<()> {
    let v = ctx.get(at, 0)?.clone();
    let to = at.attr_i("to").unwrap_or(0);
    let to_float = to == i64::from(data_type::FLOAT) || to == i64::from(data_type::DOUBLE);
    let to_int = to == i64::from(data_type::INT64) || to == i64::from(data_type::INT32);
    match v {
        Val::Const(t) => match &*t {
            Tensor::I(a) if to_float => ctx.set_const(at, Tensor::F(a.mapv(|v| v as f32))),
            Tensor::F(a) if to_int => ctx.set_const(at, Tensor::I(a.mapv(|v| v.trunc() as i64))),
            _ => ctx.alias(at, Val::Const(t)),
        },
        Val::Sym(s) if to_float => {
            let v = s
                .iter()
                .map(|x| match x {
                    Sym::Int(i) => Some(*i as f32),
                    Sym::Batch => None,
                })
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| at.err("a cast of the batch size to float is not supported"))?;
            let a =
                ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).map_err(|e| at.err(e.to_string()))?;
            ctx.set_const(at, Tensor::F(a))
        }
        v => ctx.alias(at, v),
    }
}

/// `Constant` (`value` tensor, or `value_float(s)` / `value_int(s)`).
pub(super) fn constant(ctx: &mut Ctx, at: &At) -> Result<()> {
    let vec_f = |v: Vec<f32>, scalar: bool| {
        let d: &[usize] = if scalar { &[] } else { &[v.len()] };
        ArrayD::from_shape_vec(IxDyn(d), v).map(Tensor::F)
    };
    let vec_i = |v: Vec<i64>, scalar: bool| {
        let d: &[usize] = if scalar { &[] } else { &[v.len()] };
        ArrayD::from_shape_vec(IxDyn(d), v).map(Tensor::I)
    };
    let t = if let Some(t) = at.attr("value").and_then(|a| a.t.as_ref()) {
        super::tensor(t).map_err(|r| at.err(r))?
    } else if let Some(f) = at.attr_f("value_float") {
        vec_f(vec![f], true).map_err(|e| at.err(e.to_string()))?
    } else if let Some(a) = at.attr("value_floats") {
        vec_f(a.floats.clone(), false).map_err(|e| at.err(e.to_string()))?
    } else if let Some(i) = at.attr_i("value_int") {
        vec_i(vec![i], true).map_err(|e| at.err(e.to_string()))?
    } else if let Some(a) = at.attr("value_ints") {
        vec_i(a.ints.clone(), false).map_err(|e| at.err(e.to_string()))?
    } else {
        return Err(at.err("only Constant with a tensor, float(s) or int(s) value is supported"));
    };
    if let Tensor::F(a) = &t {
        if a.iter().any(|v| !v.is_finite()) {
            return Err(at.err("a constant is NaN or infinite"));
        }
    }
    ctx.set_const(at, t)
}

/// `Shape` (with the opset-15 `start`/`end`): a shape vector, with the batch symbolic.
pub(super) fn shape(ctx: &mut Ctx, at: &At) -> Result<()> {
    let v: Vec<Sym> = match ctx.get(at, 0)? {
        Val::Act(x) => std::iter::once(Sym::Batch)
            .chain(ctx.shape(*x).iter().map(|d| Sym::Int(*d as i64)))
            .collect(),
        Val::Const(t) => t.dims().iter().map(|d| Sym::Int(*d as i64)).collect(),
        Val::Sym(s) => vec![Sym::Int(s.len() as i64)],
    };
    let len = v.len() as i64;
    let clamp = |x: i64| -> usize {
        (if x < 0 { x.saturating_add(len) } else { x }).clamp(0, len) as usize
    };
    let s = clamp(at.attr_i("start").unwrap_or(0));
    let e = clamp(at.attr_i("end").unwrap_or(len));
    let out = if s < e { v[s..e].to_vec() } else { Vec::new() };
    ctx.set_sym(at, out)
}

/// `Gather` on a shape vector (axis 0).
pub(super) fn gather(ctx: &mut Ctx, at: &At) -> Result<()> {
    if let Val::Act(_) = ctx.get(at, 0)? {
        return Err(at.err("Gather on an activation is not supported"));
    }
    let data = ctx.sym_or_ints(at, 0)?;
    let idx = ctx.ints(at, 1)?;
    if at.attr_i("axis").unwrap_or(0) != 0 {
        return Err(at.err("Gather is supported on shape vectors (axis 0) only"));
    }
    let out = idx
        .iter()
        .map(|&i| norm_axis(i, data.len()).map(|j| data[j]))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| at.err("index out of range"))?;
    ctx.set_sym(at, out)
}

/// `Slice` on a shape vector.
pub(super) fn slice(ctx: &mut Ctx, at: &At) -> Result<()> {
    if let Val::Act(_) = ctx.get(at, 0)? {
        return Err(at.err("Slice of an activation is not supported"));
    }
    let data = ctx.sym_or_ints(at, 0)?;
    let (starts, ends) = if ctx.opset >= 10 {
        (ctx.ints(at, 1)?, ctx.ints(at, 2)?)
    } else {
        (
            at.attr_ints("starts").unwrap_or_default(),
            at.attr_ints("ends").unwrap_or_default(),
        )
    };
    if starts.len() != 1 || ends.len() != 1 {
        return Err(at.err("Slice is supported on shape vectors only"));
    }
    if at.has(3) && !matches!(ctx.ints(at, 3)?[..], [0] | [-1]) {
        return Err(at.err("Slice is supported on shape vectors (axis 0) only"));
    }
    if at.has(4) && ctx.ints(at, 4)? != [1] {
        return Err(at.err("Slice with a step other than 1 is not supported"));
    }
    let len = data.len() as i64;
    let clamp = |v: i64| -> usize {
        (if v < 0 { v.saturating_add(len) } else { v }).clamp(0, len) as usize
    };
    let (s, e) = (clamp(starts[0]), clamp(ends[0]));
    let out = if s < e {
        data[s..e].to_vec()
    } else {
        Vec::new()
    };
    ctx.set_sym(at, out)
}

/// `Concat`: of activations (a graph op, Keras Concatenate), of shape vectors, or of float
/// constants.
pub(super) fn concat(ctx: &mut Ctx, at: &At) -> Result<()> {
    if at.n.input.is_empty() {
        return Err(at.err("no inputs"));
    }
    let vals: Vec<Val> = (0..at.n.input.len())
        .map(|i| ctx.get(at, i).cloned())
        .collect::<Result<_>>()?;
    let acts: Vec<usize> = vals
        .iter()
        .filter_map(|v| match v {
            Val::Act(x) => Some(*x),
            _ => None,
        })
        .collect();
    if !acts.is_empty() {
        if acts.len() != vals.len() {
            return Err(
                at.err("the concatenation of an activation with a constant is not supported")
            );
        }
        let rank = ctx.shape(acts[0]).len() + 1;
        let axis = at
            .attr_i("axis")
            .and_then(|a| norm_axis(a, rank))
            .ok_or_else(|| at.err("no valid axis"))?;
        if axis == 0 {
            return Err(at.err("concatenation along the batch axis is not supported"));
        }
        return ctx.emit(at, Op::Concat { axis: axis - 1 }, acts);
    }
    let floats: Vec<&ArrayD<f32>> = vals
        .iter()
        .filter_map(|v| match v {
            Val::Const(t) => match &**t {
                Tensor::F(a) => Some(a),
                Tensor::I(_) => None,
            },
            _ => None,
        })
        .collect();
    if !floats.is_empty() {
        if floats.len() != vals.len() {
            return Err(at.err("the concatenation of floats with integers is not supported"));
        }
        let rank = floats[0].ndim();
        let axis = at
            .attr_i("axis")
            .and_then(|a| norm_axis(a, rank))
            .ok_or_else(|| at.err("no valid axis"))?;
        let total = floats
            .iter()
            .try_fold(0usize, |a, f| a.checked_add(f.len()))
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| at.err("too large"))?;
        ctx.room(total).map_err(|r| at.err(r))?;
        let views: Vec<_> = floats.iter().map(|a| a.view()).collect();
        let out = ndarray::concatenate(Axis(axis), &views).map_err(|e| at.err(e.to_string()))?;
        return ctx.set_const(at, Tensor::F(out));
    }
    // Shape vectors: check the total before building it.
    let mut total = 0usize;
    for v in &vals {
        let n = match v {
            Val::Sym(s) => s.len(),
            Val::Const(t) => t.dims().iter().product(),
            Val::Act(_) => 0,
        };
        total = total.checked_add(n).ok_or_else(|| at.err("too large"))?;
    }
    if total > super::MAX_SHAPE_VECTOR {
        return Err(at.err(format!(
            "a shape vector of {total} elements (at most {} are supported)",
            super::MAX_SHAPE_VECTOR
        )));
    }
    let mut out = Vec::with_capacity(total);
    for i in 0..vals.len() {
        out.extend(ctx.sym_or_ints(at, i)?);
    }
    ctx.set_sym(at, out)
}

/// Axes of `Squeeze`/`Unsqueeze`: an input from opset 13, an attribute before.
fn axes(ctx: &Ctx, at: &At) -> Result<Option<Vec<i64>>> {
    if ctx.opset >= 13 {
        if at.has(1) {
            return ctx.ints(at, 1).map(Some);
        }
        Ok(None)
    } else {
        Ok(at.attr_ints("axes"))
    }
}

/// Normalized, sorted, distinct axes of a rank-`rank` tensor, none the batch.
fn batch_free_axes(at: &At, list: &[i64], rank: usize) -> Result<Vec<usize>> {
    let mut out = list
        .iter()
        .map(|&a| norm_axis(a, rank))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| at.err(format!("axes {list:?} out of range for rank {rank}")))?;
    out.sort_unstable();
    if out.windows(2).any(|w| w[0] == w[1]) {
        return Err(at.err(format!("repeated axes {list:?}")));
    }
    if out.first() == Some(&0) {
        return Err(at.err("squeezing or unsqueezing the batch axis is not supported"));
    }
    Ok(out)
}

/// `Squeeze`: of a shape vector (a no-op on its values), or of an activation (a reshape;
/// GlobalAveragePooling2D's `[N, C, 1, 1] → [N, C]`).
pub(super) fn squeeze(ctx: &mut Ctx, at: &At) -> Result<()> {
    match ctx.get(at, 0)?.clone() {
        Val::Act(x) => {
            let shape = ctx.shape(x);
            let rank = shape.len() + 1;
            let out: Vec<usize> = match axes(ctx, at)? {
                None => shape.iter().copied().filter(|&d| d != 1).collect(),
                Some(list) => {
                    let ax = batch_free_axes(at, &list, rank)?;
                    if ax.iter().any(|&a| shape[a - 1] != 1) {
                        return Err(at.err(format!(
                            "axes {list:?} of {} are not all of size 1",
                            batch_shape(&shape)
                        )));
                    }
                    (1..rank)
                        .filter(|a| !ax.contains(a))
                        .map(|a| shape[a - 1])
                        .collect()
                }
            };
            reshape_to(ctx, at, x, out)
        }
        Val::Const(t) => {
            let Tensor::F(a) = &*t else {
                let data = ctx.sym_or_ints(at, 0)?;
                return ctx.set_sym(at, data);
            };
            let dims: Vec<usize> = match axes(ctx, at)? {
                None => a.shape().iter().copied().filter(|&d| d != 1).collect(),
                Some(list) => {
                    let ax = list
                        .iter()
                        .map(|&v| norm_axis(v, a.ndim()))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| at.err("axes out of range"))?;
                    (0..a.ndim())
                        .filter(|i| !ax.contains(i))
                        .map(|i| a.shape()[i])
                        .collect()
                }
            };
            reshape_const(ctx, at, a, dims)
        }
        Val::Sym(s) => ctx.alias(at, Val::Sym(s)),
    }
}

/// `Unsqueeze`: of a shape vector (a no-op on its values), or of an activation (a reshape).
pub(super) fn unsqueeze(ctx: &mut Ctx, at: &At) -> Result<()> {
    let list = axes(ctx, at)?.ok_or_else(|| at.err("no axes"))?;
    match ctx.get(at, 0)?.clone() {
        Val::Act(x) => {
            let shape = ctx.shape(x);
            let rank = shape
                .len()
                .checked_add(1 + list.len())
                .filter(|&r| r <= 64)
                .ok_or_else(|| at.err("rank too large"))?;
            let ax = batch_free_axes(at, &list, rank)?;
            let mut it = shape.iter();
            let out: Vec<usize> = (1..rank)
                .map(|a| {
                    if ax.contains(&a) {
                        1
                    } else {
                        it.next().copied().unwrap_or(1)
                    }
                })
                .collect();
            reshape_to(ctx, at, x, out)
        }
        Val::Const(t) => {
            let Tensor::F(a) = &*t else {
                let data = ctx.sym_or_ints(at, 0)?;
                return ctx.set_sym(at, data);
            };
            let rank = a.ndim() + list.len();
            if rank > 64 {
                return Err(at.err("rank too large"));
            }
            let ax = list
                .iter()
                .map(|&v| norm_axis(v, rank))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| at.err("axes out of range"))?;
            let mut it = a.shape().iter();
            let dims: Vec<usize> = (0..rank)
                .map(|i| {
                    if ax.contains(&i) {
                        1
                    } else {
                        it.next().copied().unwrap_or(1)
                    }
                })
                .collect();
            reshape_const(ctx, at, a, dims)
        }
        Val::Sym(s) => ctx.alias(at, Val::Sym(s)),
    }
}

fn reshape_const(ctx: &mut Ctx, at: &At, a: &ArrayD<f32>, dims: Vec<usize>) -> Result<()> {
    if elements(&dims) != Some(a.len()) {
        return Err(at.err(format!(
            "cannot reshape a constant of shape {:?} to {dims:?}",
            a.shape()
        )));
    }
    let out = ArrayD::from_shape_vec(IxDyn(&dims), a.iter().copied().collect())
        .map_err(|e| at.err(e.to_string()))?;
    ctx.set_const(at, Tensor::F(out))
}

/// An activation reshaped to the per-example shape `out` (a rename when it is unchanged).
fn reshape_to(ctx: &mut Ctx, at: &At, x: usize, out: Vec<usize>) -> Result<()> {
    let shape = ctx.shape(x);
    if out == shape {
        return ctx.alias(at, Val::Act(x));
    }
    if elements(&out) != elements(&shape) {
        return Err(at.err(format!(
            "reshape of {} to {} changes the size",
            batch_shape(&shape),
            batch_shape(&out)
        )));
    }
    ctx.emit_as(at, Op::Reshape, vec![x], &out)
}

/// `Flatten` with axis 1: `[N, ...] → [N, features]`.
pub(super) fn flatten(ctx: &mut Ctx, at: &At) -> Result<()> {
    let x = ctx.act(at, 0)?;
    let shape = ctx.shape(x);
    let axis = at.attr_i("axis").unwrap_or(1);
    if norm_axis(axis, shape.len() + 1) != Some(1) {
        return Err(at.err("only Flatten with axis = 1 (keep the batch) is supported"));
    }
    let n = elements(&shape).ok_or_else(|| at.err("too large"))?;
    reshape_to(ctx, at, x, vec![n])
}

/// `Reshape` of an activation: the target may hold the symbolic batch, `0` (copy a
/// dimension) and one `-1` (the rest); the batch must stay first.
pub(super) fn reshape(ctx: &mut Ctx, at: &At) -> Result<()> {
    let x = ctx.act(at, 0)?;
    let shape = ctx.shape(x);
    let target = ctx.sym_or_ints(at, 1)?;
    let total = elements(&shape).ok_or_else(|| at.err("too large"))?;
    let allow_zero = at.attr_i("allowzero").unwrap_or(0) != 0;
    let bad = || {
        at.err(format!(
            "cannot reshape {} to {target:?}: only reshapes that keep the batch first and the size are supported",
            batch_shape(&shape)
        ))
    };
    // Resolve against the input [N, shape...]: the batch, fixed sizes, and one free -1.
    let mut out: Vec<Option<Sym>> = Vec::with_capacity(target.len());
    let mut known = 1usize;
    for (i, t) in target.iter().enumerate() {
        let d =
            match t {
                Sym::Int(0) if !allow_zero => match i {
                    0 => Sym::Batch,
                    _ => Sym::Int(*shape.get(i - 1).ok_or_else(|| {
                        at.err("shape 0 copies a dimension the input does not have")
                    })? as i64),
                },
                Sym::Int(-1) => {
                    out.push(None);
                    continue;
                }
                Sym::Int(v) if *v > 0 => *t,
                Sym::Batch => *t,
                Sym::Int(v) => return Err(at.err(format!("invalid target dimension {v}"))),
            };
        if let Sym::Int(v) = d {
            known = usize::try_from(v)
                .ok()
                .and_then(|v| known.checked_mul(v))
                .ok_or_else(|| at.err(format!("target shape {target:?} overflows")))?;
        }
        out.push(Some(d));
    }
    let batches = out.iter().filter(|d| **d == Some(Sym::Batch)).count();
    let free = out.iter().filter(|d| d.is_none()).count();
    let dims: Vec<usize> = match (batches, free) {
        // [N, d1, ..., dk] (with at most one -1 among the d's)
        (1, _) if out[0] == Some(Sym::Batch) && free <= 1 => {
            let rest = if free == 1 {
                if known == 0 || total % known != 0 {
                    return Err(bad());
                }
                total / known
            } else {
                0
            };
            out[1..]
                .iter()
                .map(|d| match d {
                    Some(Sym::Int(v)) => *v as usize,
                    _ => rest,
                })
                .collect()
        }
        // [-1, d1, ..., dk] with d1·...·dk the per-example size: the -1 is the batch.
        (0, 1) if out[0].is_none() && known == total => out[1..]
            .iter()
            .map(|d| match d {
                Some(Sym::Int(v)) => *v as usize,
                _ => 0,
            })
            .collect(),
        _ => return Err(bad()),
    };
    if elements(&dims) != Some(total) {
        return Err(bad());
    }
    reshape_to(ctx, at, x, dims)
}

/// `Transpose` that keeps the batch first.
pub(super) fn transpose(ctx: &mut Ctx, at: &At) -> Result<()> {
    let x = ctx.act(at, 0)?;
    let rank = ctx.shape(x).len() + 1;
    let perm: Vec<i64> = match at.attr_ints("perm") {
        Some(p) => p,
        None => (0..rank as i64).rev().collect(),
    };
    let mut seen = vec![false; rank];
    let valid = perm.len() == rank
        && perm.iter().all(|&p| {
            usize::try_from(p)
                .ok()
                .filter(|&p| p < rank)
                .is_some_and(|p| !std::mem::replace(&mut seen[p], true))
        });
    if !valid || perm[0] != 0 {
        return Err(at.err(format!(
            "permutation {perm:?} must keep the batch axis first"
        )));
    }
    let per: Vec<usize> = perm[1..].iter().map(|&p| p as usize - 1).collect();
    if per.iter().enumerate().all(|(i, p)| i == *p) {
        return ctx.alias(at, Val::Act(x));
    }
    ctx.emit(at, Op::Transpose { perm: per }, vec![x])
}

//! Elementwise arithmetic: `Add`, `Sub`, `Mul`, `Div`, `Max`, `Min` and
//! `BatchNormalization`.
//!
//! With a constant operand (a bias, Rescaling, Normalization, Dense → BatchNormalization as
//! tf2onnx writes it) they become an [`Op::Affine`], which [`crate::graph::Graph::optimize`]
//! folds into a neighbouring linear layer where it can; with two activations they are graph
//! ops of their own (residual connections, swish); with two constants they are folded.

use std::rc::Rc;

use ndarray::{ArrayD, Axis, IxDyn, Zip};

use super::{batch_shape, At, Ctx, Sym, Tensor, Val};
use crate::error::Result;
use crate::graph::{broadcast_shape, broadcasts_to, elements, Op, MAX_VALUE_ELEMENTS};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

impl Kind {
    fn f(self, a: f64, b: f64) -> f64 {
        match self {
            Kind::Add => a + b,
            Kind::Sub => a - b,
            Kind::Mul => a * b,
            Kind::Div => a / b,
            Kind::Max => a.max(b),
            Kind::Min => a.min(b),
        }
    }

    fn int(self, a: i64, b: i64) -> Option<i64> {
        match self {
            Kind::Add => a.checked_add(b),
            Kind::Sub => a.checked_sub(b),
            Kind::Mul => a.checked_mul(b),
            Kind::Div => a.checked_div(b),
            Kind::Max => Some(a.max(b)),
            Kind::Min => Some(a.min(b)),
        }
    }
}

/// `Add`.
pub(super) fn add(ctx: &mut Ctx, at: &At) -> Result<()> {
    binary(ctx, at, Kind::Add)
}

/// `Sub`.
pub(super) fn sub(ctx: &mut Ctx, at: &At) -> Result<()> {
    binary(ctx, at, Kind::Sub)
}

/// `Mul`.
pub(super) fn mul(ctx: &mut Ctx, at: &At) -> Result<()> {
    binary(ctx, at, Kind::Mul)
}

/// `Div` (by a constant).
pub(super) fn div(ctx: &mut Ctx, at: &At) -> Result<()> {
    binary(ctx, at, Kind::Div)
}

/// `Max` of two operands (`Max(x, 0)` is a ReLU-like clip).
pub(super) fn max(ctx: &mut Ctx, at: &At) -> Result<()> {
    binary(ctx, at, Kind::Max)
}

/// `Min` of two operands (`Min(x, 6)` clips from above).
pub(super) fn min(ctx: &mut Ctx, at: &At) -> Result<()> {
    binary(ctx, at, Kind::Min)
}

fn binary(ctx: &mut Ctx, at: &At, kind: Kind) -> Result<()> {
    if at.n.input.len() != 2 {
        return Err(at.err(format!("{} inputs: supported with two", at.n.input.len())));
    }
    let (a, b) = (ctx.get(at, 0)?.clone(), ctx.get(at, 1)?.clone());
    match (a, b) {
        (Val::Act(x), Val::Act(y)) => {
            let op = match kind {
                Kind::Add => Op::Add,
                Kind::Sub => Op::Sub,
                Kind::Mul => Op::Mul,
                Kind::Max => Op::Max,
                Kind::Min => Op::Min,
                Kind::Div => return Err(at.err("the division of two activations is not supported")),
            };
            ctx.emit(at, op, vec![x, y])
        }
        (Val::Act(x), Val::Const(c)) => with_constant(ctx, at, kind, x, &c, true),
        (Val::Const(c), Val::Act(x)) => with_constant(ctx, at, kind, x, &c, false),
        (Val::Act(_), Val::Sym(_)) | (Val::Sym(_), Val::Act(_)) => {
            Err(at.err("arithmetic between an activation and a shape is not supported"))
        }
        (Val::Const(a), Val::Const(b))
            if matches!((&*a, &*b), (Tensor::F(_), _) | (_, Tensor::F(_))) =>
        {
            let (a, b) = (to_f32(&a), to_f32(&b));
            let shape = broadcast_shape(a.shape(), b.shape()).ok_or_else(|| {
                at.err(format!(
                    "shapes {:?} and {:?} do not broadcast",
                    a.shape(),
                    b.shape()
                ))
            })?;
            let n = elements(&shape)
                .filter(|&n| n <= MAX_VALUE_ELEMENTS)
                .ok_or_else(|| at.err(format!("a constant of shape {shape:?} is too large")))?;
            ctx.room(n.saturating_mul(4)).map_err(|r| at.err(r))?;
            let dim = IxDyn(&shape);
            let (Some(a), Some(b)) = (a.broadcast(dim.clone()), b.broadcast(dim)) else {
                return Err(at.err("operands do not broadcast"));
            };
            let r = Zip::from(&a)
                .and(&b)
                .map_collect(|x, y| kind.f(f64::from(*x), f64::from(*y)) as f32);
            if r.iter().any(|v| !v.is_finite()) {
                return Err(at.err("constant arithmetic gives a NaN or infinite value"));
            }
            ctx.set_const(at, Tensor::F(r))
        }
        _ => {
            // Integer and shape arithmetic (sizes for a Reshape), elementwise with a scalar
            // broadcast.
            let a = ctx.sym_or_ints(at, 0)?;
            let b = ctx.sym_or_ints(at, 1)?;
            let n = match (a.len(), b.len()) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                (x, y) => return Err(at.err(format!("integer tensors of {x} and {y} elements"))),
            };
            let out = (0..n)
                .map(|i| match (a[i.min(a.len() - 1)], b[i.min(b.len() - 1)]) {
                    (Sym::Int(p), Sym::Int(q)) => kind.int(p, q).map(Sym::Int),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    at.err(
                        "integer arithmetic overflows, divides by zero or depends on the batch size",
                    )
                })?;
            ctx.set_sym(at, out)
        }
    }
}

fn to_f32(t: &Tensor) -> ArrayD<f32> {
    match t {
        Tensor::F(a) => a.clone(),
        Tensor::I(a) => a.mapv(|v| v as f32),
    }
}

/// `x ∘ c` or `c ∘ x` for an activation `x` and a constant `c`: an [`Op::Affine`] for Add,
/// Sub, Mul and Div (by the constant), a [`Op::Clip`] for Max and Min with a scalar.
fn with_constant(
    ctx: &mut Ctx,
    at: &At,
    kind: Kind,
    x: usize,
    c: &Rc<Tensor>,
    act_first: bool,
) -> Result<()> {
    let shape = ctx.shape(x);
    let mut c = to_f32(c);
    // A constant written with the batch axis (of size 1) applies to every example.
    if c.ndim() == shape.len() + 1 {
        if c.shape()[0] != 1 {
            return Err(at.err(format!(
                "a constant of shape {:?} differs across the batch",
                c.shape()
            )));
        }
        c = c.index_axis_move(Axis(0), 0);
    }
    if !broadcasts_to(c.shape(), &shape) {
        return Err(at.err(format!(
            "the constant of shape {:?} does not broadcast to the activation {}",
            c.shape(),
            batch_shape(&shape)
        )));
    }
    let scalar = |v: f32| ArrayD::from_elem(IxDyn(&[]), v);
    let op = match kind {
        Kind::Add => Op::Affine {
            scale: scalar(1.0),
            shift: c,
        },
        Kind::Sub if act_first => Op::Affine {
            scale: scalar(1.0),
            shift: c.mapv(|v| -v),
        },
        Kind::Sub => Op::Affine {
            scale: scalar(-1.0),
            shift: c,
        },
        Kind::Mul => Op::Affine {
            scale: c,
            shift: scalar(0.0),
        },
        Kind::Div if act_first => {
            let inv = c.mapv(|v| 1.0 / v);
            if inv.iter().any(|v| !v.is_finite()) {
                return Err(at.err("division by zero (or by a tiny constant)"));
            }
            Op::Affine {
                scale: inv,
                shift: scalar(0.0),
            }
        }
        Kind::Div => {
            return Err(at.err("the division of a constant by an activation is not supported"))
        }
        Kind::Max | Kind::Min => {
            let v = match c.iter().collect::<Vec<_>>()[..] {
                [v] => *v,
                _ => {
                    return Err(at.err(format!(
                        "{} with a constant of shape {:?}: only a single number is supported",
                        at.op(),
                        c.shape()
                    )))
                }
            };
            if kind == Kind::Max {
                Op::Clip {
                    min: v,
                    max: f32::INFINITY,
                }
            } else {
                Op::Clip {
                    min: f32::NEG_INFINITY,
                    max: v,
                }
            }
        }
    };
    ctx.emit(at, op, vec![x])
}

/// `BatchNormalization` (inference form), anywhere: a per-channel [`Op::Affine`]
/// `x · γ/√(σ² + ε) + (β − μ · γ/√(σ² + ε))`.
pub(super) fn batch_norm(ctx: &mut Ctx, at: &At) -> Result<()> {
    let x = ctx.act(at, 0)?;
    let shape = ctx.shape(x);
    if at.attr_i("training_mode").unwrap_or(0) != 0 {
        return Err(at.err("training_mode = 1 is not supported (export the model for inference)"));
    }
    let eps = f64::from(at.attr_f("epsilon").unwrap_or(1e-5));
    let c = *shape
        .first()
        .ok_or_else(|| at.err("expects an activation with channels"))?;
    let p: Vec<Vec<f32>> = (1..5)
        .map(|i| ctx.floats(at, i).map(|a| a.iter().copied().collect()))
        .collect::<Result<_>>()?;
    let (gamma, beta, mean, var) = (&p[0], &p[1], &p[2], &p[3]);
    if p.iter().any(|v| v.len() != c) {
        return Err(at.err(format!("parameters do not have {c} channels")));
    }
    let mut scale = Vec::with_capacity(c);
    let mut shift = Vec::with_capacity(c);
    for ch in 0..c {
        let v = f64::from(var[ch]) + eps;
        if v.is_nan() || v <= 0.0 {
            return Err(at.err("non-positive variance"));
        }
        let a = f64::from(gamma[ch]) / v.sqrt();
        let b = f64::from(beta[ch]) - f64::from(mean[ch]) * a;
        if !(a.is_finite() && b.is_finite() && (a as f32).is_finite() && (b as f32).is_finite()) {
            return Err(at.err("the scale or shift is not finite"));
        }
        scale.push(a as f32);
        shift.push(b as f32);
    }
    let mut dims = vec![1usize; shape.len()];
    dims[0] = c;
    let arr =
        |v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(&dims), v).map_err(|e| at.err(e.to_string()));
    let op = Op::Affine {
        scale: arr(scale)?,
        shift: arr(shift)?,
    };
    ctx.emit(at, op, vec![x])
}

//! The plaintext twin of every protocol: the same functions on the same fixed-point numbers,
//! computed in the clear. `reveal(protocol(share(x)))` must equal these (within one unit in the
//! last place per truncation, as each protocol documents).

use crate::error::{CoreError, Result};
use crate::linear::{Bilinear, PoolShape};
use crate::protocols::{avg_factor, PiecewiseLinear, AVG_RECIP_BITS};
use crate::ring;

fn signed(x: u64) -> i64 {
    x as i64
}

/// `op(x, w)`.
pub fn bilinear(op: &Bilinear, x: &[u64], w: &[u64]) -> Result<Vec<u64>> {
    op.apply(x, w)
}

/// `x >> f`, arithmetic (floor division by 2^f).
pub fn truncate(x: &[u64], f: u32) -> Vec<u64> {
    ring::shr_signed(x, f)
}

/// `x` read as a signed `k`-bit value: `((x + 2^(k−1)) mod 2^k) − 2^(k−1)`, the identity for
/// `|x| < 2^(k−1)` (what [`crate::protocols::lift`] computes on shares; `k` in 2..=63).
pub fn lift(x: &[u64], k: u32) -> Vec<u64> {
    let half = 1u64 << (k - 1);
    let low = (1u64 << k) - 1;
    x.iter()
        .map(|&v| (v.wrapping_add(half) & low).wrapping_sub(half))
        .collect()
}

/// `[x ≥ 0]` as 0/1.
pub fn drelu(x: &[u64]) -> Vec<u64> {
    x.iter().map(|&v| u64::from(signed(v) >= 0)).collect()
}

/// `ReLU(x) >> f`.
pub fn relu(x: &[u64], f: u32) -> Vec<u64> {
    x.iter().map(|&v| (signed(v).max(0) >> f) as u64).collect()
}

/// Max pooling.
pub fn maxpool(x: &[u64], shape: &PoolShape) -> Result<Vec<u64>> {
    let cols = shape.window_columns(x)?;
    let mut out = cols.first().cloned().unwrap_or_default();
    for c in cols.iter().skip(1) {
        for (o, v) in out.iter_mut().zip(c) {
            if signed(*v) > signed(*o) {
                *o = *v;
            }
        }
    }
    Ok(out)
}

/// Average pooling: `(sum · round(2^16/area)) >> 16`.
pub fn avgpool(x: &[u64], shape: &PoolShape) -> Result<Vec<u64>> {
    let mut sums = shape.window_sums(x)?;
    ring::scale_assign(&mut sums, avg_factor(shape));
    Ok(truncate(&sums, AVG_RECIP_BITS))
}

/// Index of the first largest value per row.
pub fn argmax(x: &[u64], rows: usize, classes: usize) -> Result<Vec<u64>> {
    if classes == 0 || x.len() != rows * classes {
        return Err(CoreError::Shape(format!(
            "argmax of {} values as {rows}×{classes}",
            x.len()
        )));
    }
    Ok(x.chunks(classes)
        .map(|row| {
            let mut best = 0;
            for (j, v) in row.iter().enumerate() {
                if signed(*v) > signed(row[best]) {
                    best = j;
                }
            }
            best as u64
        })
        .collect())
}

/// A piecewise-linear function on fixed-point inputs:
/// `base + (a·(x − t_0) + Σ_j ±|s_j|·ReLU(x − t_j)) >> shift` (one floor of the sum, not one
/// per piece; ReLU on the signed 64-bit `x − t_j`). [`crate::protocols::piecewise`] equals it
/// bit for bit at any width `bits` that [`PiecewiseLinear::checked_comparison_bits`] allows.
pub fn piecewise(x: &[u64], g: &PiecewiseLinear) -> Vec<u64> {
    let inputs = g.piece_inputs(x, true);
    let y = relu(&inputs, 0);
    let mut out = truncate(&g.sum_pieces(x, &y, true), g.shift());
    g.add_base(&mut out, true);
    out
}

/// Sigmoid approximation (see [`PiecewiseLinear::sigmoid`]).
pub fn sigmoid(x: &[u64], in_frac: u32, out_frac: u32) -> Result<Vec<u64>> {
    Ok(piecewise(x, &PiecewiseLinear::sigmoid(in_frac, out_frac)?))
}

/// Tanh approximation (see [`PiecewiseLinear::tanh`]).
pub fn tanh(x: &[u64], in_frac: u32, out_frac: u32) -> Result<Vec<u64>> {
    Ok(piecewise(x, &PiecewiseLinear::tanh(in_frac, out_frac)?))
}

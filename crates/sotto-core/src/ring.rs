//! Arithmetic in the ring Z_2^64 as free functions on slices.
//!
//! Every value is a `u64` and every operation wraps: this *is* the ring, not an overflow.
//! These are the hot loops of the engine; they take slices so that callers control allocation.

use crate::error::{CoreError, Result};

fn same_len(what: &str, a: usize, b: usize) -> Result<()> {
    if a == b {
        Ok(())
    } else {
        Err(CoreError::Shape(format!(
            "{what}: lengths {a} and {b} differ"
        )))
    }
}

/// `a[i] += b[i]`.
pub fn add_assign(a: &mut [u64], b: &[u64]) -> Result<()> {
    same_len("add", a.len(), b.len())?;
    for (x, y) in a.iter_mut().zip(b) {
        *x = x.wrapping_add(*y);
    }
    Ok(())
}

/// `a[i] -= b[i]`.
pub fn sub_assign(a: &mut [u64], b: &[u64]) -> Result<()> {
    same_len("sub", a.len(), b.len())?;
    for (x, y) in a.iter_mut().zip(b) {
        *x = x.wrapping_sub(*y);
    }
    Ok(())
}

/// `a[i] = -a[i]`.
pub fn neg_assign(a: &mut [u64]) {
    for x in a.iter_mut() {
        *x = x.wrapping_neg();
    }
}

/// `a[i] *= k` for a public ring element `k`.
pub fn scale_assign(a: &mut [u64], k: u64) {
    for x in a.iter_mut() {
        *x = x.wrapping_mul(k);
    }
}

/// `a[i] += k` for a public ring element `k`.
pub fn add_scalar_assign(a: &mut [u64], k: u64) {
    for x in a.iter_mut() {
        *x = x.wrapping_add(k);
    }
}

/// `a[i] += b[i] * c[i]`.
pub fn mul_add_assign(a: &mut [u64], b: &[u64], c: &[u64]) -> Result<()> {
    same_len("mul_add", a.len(), b.len())?;
    same_len("mul_add", a.len(), c.len())?;
    for ((x, y), z) in a.iter_mut().zip(b).zip(c) {
        *x = x.wrapping_add(y.wrapping_mul(*z));
    }
    Ok(())
}

/// Element-wise sum of two slices into a new vector.
pub fn add(a: &[u64], b: &[u64]) -> Result<Vec<u64>> {
    let mut out = a.to_vec();
    add_assign(&mut out, b)?;
    Ok(out)
}

/// Element-wise difference of two slices into a new vector.
pub fn sub(a: &[u64], b: &[u64]) -> Result<Vec<u64>> {
    let mut out = a.to_vec();
    sub_assign(&mut out, b)?;
    Ok(out)
}

/// Block size of the matmul kernel along the shared dimension.
const KB: usize = 256;
/// Block size of the matmul kernel along the output columns.
const NB: usize = 512;

/// `out += a · b` for row-major `a` (m×k), `b` (k×n) and `out` (m×n), wrapping.
///
/// The loop order (i, p, j) streams rows of `b` and `out`, which the compiler vectorises; the
/// shared and column dimensions are blocked so that the touched part of `b` stays in cache.
pub fn matmul_acc(
    a: &[u64],
    b: &[u64],
    out: &mut [u64],
    m: usize,
    k: usize,
    n: usize,
) -> Result<()> {
    check_matmul(a, b, out, m, k, n)?;
    for j0 in (0..n).step_by(NB) {
        let j1 = (j0 + NB).min(n);
        for p0 in (0..k).step_by(KB) {
            let p1 = (p0 + KB).min(k);
            for i in 0..m {
                let arow = &a[i * k..(i + 1) * k];
                let orow = &mut out[i * n + j0..i * n + j1];
                for p in p0..p1 {
                    let av = arow[p];
                    if av == 0 {
                        continue;
                    }
                    let brow = &b[p * n + j0..p * n + j1];
                    for (o, bv) in orow.iter_mut().zip(brow) {
                        *o = o.wrapping_add(av.wrapping_mul(*bv));
                    }
                }
            }
        }
    }
    Ok(())
}

/// `a · b` for row-major `a` (m×k) and `b` (k×n), wrapping.
pub fn matmul(a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Result<Vec<u64>> {
    let mut out = vec![0u64; m.checked_mul(n).ok_or_else(|| too_big(m, n))?];
    matmul_acc(a, b, &mut out, m, k, n)?;
    Ok(out)
}

fn too_big(m: usize, n: usize) -> CoreError {
    CoreError::Shape(format!("matrix {m}×{n} is too large"))
}

fn check_matmul(a: &[u64], b: &[u64], out: &[u64], m: usize, k: usize, n: usize) -> Result<()> {
    let mk = m.checked_mul(k).ok_or_else(|| too_big(m, k))?;
    let kn = k.checked_mul(n).ok_or_else(|| too_big(k, n))?;
    let mn = m.checked_mul(n).ok_or_else(|| too_big(m, n))?;
    if a.len() != mk || b.len() != kn || out.len() != mn {
        return Err(CoreError::Shape(format!(
            "matmul {m}×{k} · {k}×{n}: got slices of {}, {} and {} elements",
            a.len(),
            b.len(),
            out.len()
        )));
    }
    Ok(())
}

/// Transpose of a row-major `rows × cols` matrix.
pub fn transpose(a: &[u64], rows: usize, cols: usize) -> Result<Vec<u64>> {
    same_len("transpose", a.len(), rows * cols)?;
    let mut out = vec![0u64; a.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = a[r * cols + c];
        }
    }
    Ok(out)
}

/// Arithmetic shift right of every element read as a signed integer (floor division by 2^f).
pub fn shr_signed(a: &[u64], f: u32) -> Vec<u64> {
    a.iter().map(|&x| ((x as i64) >> f) as u64).collect()
}

/// Most significant bit of `x` (the sign bit of its signed reading).
#[inline]
pub fn msb(x: u64) -> u64 {
    x >> 63
}

/// Encodes a slice of ring elements as little-endian bytes.
pub fn to_le_bytes(a: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() * 8);
    for x in a {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// Decodes little-endian bytes into exactly `expected` ring elements.
pub fn from_le_bytes(bytes: &[u8], expected: usize) -> Result<Vec<u64>> {
    if Some(bytes.len()) != expected.checked_mul(8) {
        return Err(CoreError::decode(
            "ring elements",
            format!(
                "expected {expected} elements ({} bytes), got {} bytes",
                expected.saturating_mul(8),
                bytes.len()
            ),
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect())
}

/// `a · b` (`[m, k] · [k, n]`) by the definition: the reference the products are tested
/// against.
#[cfg(test)]
pub(crate) fn naive_matmul(a: &[u64], b: &[u64], m: usize, k: usize, n: usize) -> Vec<u64> {
    let mut out = vec![0u64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0u64;
            for p in 0..k {
                s = s.wrapping_add(a[i * k + p].wrapping_mul(b[p * n + j]));
            }
            out[i * n + j] = s;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::naive_matmul as naive;

    #[test]
    fn matmul_matches_naive_across_block_edges() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for &(m, k, n) in &[(1, 1, 1), (3, 257, 5), (2, 600, 513), (7, 3, 1030)] {
            let a: Vec<u64> = (0..m * k).map(|_| next()).collect();
            let b: Vec<u64> = (0..k * n).map(|_| next()).collect();
            assert_eq!(
                matmul(&a, &b, m, k, n).expect("shapes fit"),
                naive(&a, &b, m, k, n)
            );
        }
    }

    #[test]
    fn shape_errors_are_errors() {
        assert!(matmul(&[1, 2], &[1, 2, 3], 1, 2, 2).is_err());
        assert!(add_assign(&mut [1], &[1, 2]).is_err());
        assert!(from_le_bytes(&[0; 7], 1).is_err());
        assert!(from_le_bytes(&[0; 16], 1).is_err());
        assert_eq!(
            from_le_bytes(&to_le_bytes(&[5, u64::MAX]), 2).expect("fits"),
            vec![5, u64::MAX]
        );
    }
}

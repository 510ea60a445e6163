//! Ring tensors: a shape and row-major `u64` data, with ndarray at the API.

use ndarray::{ArrayD, IxDyn};

use crate::error::{CoreError, Result};
use crate::fixed::FixedPoint;
use crate::ring;

/// Most dimensions a tensor may have.
pub const MAX_DIMS: usize = 8;
/// Most elements a tensor decoded from untrusted bytes may have (2^26, 512 MiB of data).
pub const MAX_ELEMENTS: usize = 1 << 26;

/// A tensor over Z_2^64, row-major.
#[derive(Clone, PartialEq, Eq)]
pub struct RingTensor {
    shape: Vec<usize>,
    data: Vec<u64>,
}

impl std::fmt::Debug for RingTensor {
    /// Prints the shape only: a tensor may be a secret share, and shares are never logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RingTensor{:?}", self.shape)
    }
}

/// Number of elements of `shape`, or an error when it overflows.
pub fn shape_len(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| CoreError::Shape(format!("shape {shape:?} has too many elements")))
}

impl RingTensor {
    /// A tensor from a shape and row-major data; the lengths must agree.
    pub fn new(shape: Vec<usize>, data: Vec<u64>) -> Result<Self> {
        let n = shape_len(&shape)?;
        if n != data.len() {
            return Err(CoreError::Shape(format!(
                "shape {shape:?} needs {n} elements, got {}",
                data.len()
            )));
        }
        Ok(RingTensor { shape, data })
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Result<Self> {
        Ok(RingTensor {
            shape: shape.to_vec(),
            data: vec![0; shape_len(shape)?],
        })
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Row-major data.
    pub fn data(&self) -> &[u64] {
        &self.data
    }

    /// Mutable row-major data.
    pub fn data_mut(&mut self) -> &mut [u64] {
        &mut self.data
    }

    /// The data, consuming the tensor.
    pub fn into_data(self) -> Vec<u64> {
        self.data
    }

    /// The same data under another shape with as many elements.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Self> {
        RingTensor::new(shape, self.data)
    }

    /// From an ndarray (any layout).
    pub fn from_ndarray(a: &ArrayD<u64>) -> Self {
        RingTensor {
            shape: a.shape().to_vec(),
            data: a.iter().copied().collect(),
        }
    }

    /// To an ndarray.
    pub fn to_ndarray(&self) -> ArrayD<u64> {
        // The shape and length agree by construction.
        ArrayD::from_shape_vec(IxDyn(&self.shape), self.data.clone())
            .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0])))
    }

    /// Encodes a float array in fixed point.
    pub fn encode(a: &ArrayD<f64>, fp: FixedPoint) -> Result<Self> {
        let data = a
            .iter()
            .map(|&x| fp.encode(x))
            .collect::<Result<Vec<_>>>()?;
        RingTensor::new(a.shape().to_vec(), data)
    }

    /// Decodes to floats, reading each element with `frac_bits` fractional bits.
    pub fn decode(&self, frac_bits: u32) -> ArrayD<f64> {
        let data = self
            .data
            .iter()
            .map(|&v| crate::fixed::decode_with(v, frac_bits))
            .collect();
        ArrayD::from_shape_vec(IxDyn(&self.shape), data)
            .unwrap_or_else(|_| ArrayD::zeros(IxDyn(&[0])))
    }

    /// Element-wise sum.
    pub fn add(&self, other: &RingTensor) -> Result<RingTensor> {
        self.same_shape(other)?;
        Ok(RingTensor {
            shape: self.shape.clone(),
            data: ring::add(&self.data, &other.data)?,
        })
    }

    /// Element-wise difference.
    pub fn sub(&self, other: &RingTensor) -> Result<RingTensor> {
        self.same_shape(other)?;
        Ok(RingTensor {
            shape: self.shape.clone(),
            data: ring::sub(&self.data, &other.data)?,
        })
    }

    fn same_shape(&self, other: &RingTensor) -> Result<()> {
        if self.shape != other.shape {
            return Err(CoreError::Shape(format!(
                "shapes {:?} and {:?} differ",
                self.shape, other.shape
            )));
        }
        Ok(())
    }

    /// Encodes as bytes: `u8` rank, `u32` LE per dimension, then `u64` LE elements.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 4 * self.shape.len() + 8 * self.data.len());
        out.push(self.shape.len() as u8);
        for &d in &self.shape {
            out.extend_from_slice(&(d as u32).to_le_bytes());
        }
        for x in &self.data {
            out.extend_from_slice(&x.to_le_bytes());
        }
        out
    }

    /// Decodes untrusted bytes written by [`RingTensor::to_bytes`]. Refuses a truncated or
    /// oversized buffer, more than [`MAX_DIMS`] dimensions, more than [`MAX_ELEMENTS`]
    /// elements, and (when `expected` is given) any other shape.
    pub fn from_bytes(bytes: &[u8], expected: Option<&[usize]>) -> Result<Self> {
        let what = "tensor";
        let (&rank, rest) = bytes
            .split_first()
            .ok_or_else(|| CoreError::decode(what, "empty buffer"))?;
        let rank = rank as usize;
        if rank > MAX_DIMS {
            return Err(CoreError::decode(
                what,
                format!("{rank} dimensions (at most {MAX_DIMS})"),
            ));
        }
        if rest.len() < 4 * rank {
            return Err(CoreError::decode(what, "truncated shape"));
        }
        let (dims, body) = rest.split_at(4 * rank);
        let shape: Vec<usize> = dims
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
            .collect();
        let n = shape_len(&shape)
            .ok()
            .filter(|&n| n <= MAX_ELEMENTS)
            .ok_or_else(|| CoreError::decode(what, format!("shape {shape:?} is too large")))?;
        if let Some(exp) = expected {
            if exp != shape.as_slice() {
                return Err(CoreError::decode(
                    what,
                    format!("shape {shape:?} where {exp:?} was expected"),
                ));
            }
        }
        let data = ring::from_le_bytes(body, n).map_err(|_| {
            CoreError::decode(
                what,
                format!(
                    "shape {shape:?} needs {} data bytes, got {}",
                    8 * n,
                    body.len()
                ),
            )
        })?;
        Ok(RingTensor { shape, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_errors() {
        let t = RingTensor::new(vec![2, 3], vec![1, 2, 3, 4, 5, u64::MAX]).expect("fits");
        let b = t.to_bytes();
        assert_eq!(RingTensor::from_bytes(&b, None).expect("valid"), t);
        assert_eq!(RingTensor::from_bytes(&b, Some(&[2, 3])).expect("valid"), t);
        assert!(RingTensor::from_bytes(&b, Some(&[3, 2])).is_err());
        for cut in 0..b.len() {
            assert!(
                RingTensor::from_bytes(&b[..cut], None).is_err(),
                "cut at {cut}"
            );
        }
        let mut long = b.clone();
        long.push(0);
        assert!(RingTensor::from_bytes(&long, None).is_err());
        let mut huge = vec![2u8];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(RingTensor::from_bytes(&huge, None).is_err());
        assert!(RingTensor::from_bytes(&[9], None).is_err());
    }

    #[test]
    fn debug_hides_data() {
        let t = RingTensor::new(vec![1], vec![123_456_789]).expect("fits");
        assert!(!format!("{t:?}").contains("123456789"));
    }
}

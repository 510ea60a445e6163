//! Signed fixed-point numbers in Z_2^64.
//!
//! A real `x` is encoded as `round(x · 2^f)` read as a two's-complement `i64`, where `f` is the
//! number of fractional bits. The product of two encodings carries `2f` fractional bits until a
//! truncation removes `f` of them.
//!
//! Every protocol in this crate that compares or truncates needs `|v| < 2^62` for the encoded
//! value `v` (one bit of headroom for the truncation protocol, one for the sign). Encoding
//! therefore refuses NaN, infinities and any value whose encoding would reach `2^62`: such a
//! value is an error, never a silent wrap-around.

use crate::error::{CoreError, Result};

/// Largest magnitude (exclusive) of an encoded value: `2^62`.
pub const MAX_ENCODED: u64 = 1 << 62;

/// A fixed-point format: the number of fractional bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FixedPoint {
    frac_bits: u32,
}

impl Default for FixedPoint {
    /// 16 fractional bits, the default of DESIGN §3.
    fn default() -> Self {
        FixedPoint { frac_bits: 16 }
    }
}

impl FixedPoint {
    /// A format with `frac_bits` fractional bits (at most 30, so that a product of two values
    /// with `2 · frac_bits` fractional bits still leaves room for an integer part).
    pub fn new(frac_bits: u32) -> Result<Self> {
        if frac_bits > 30 {
            return Err(CoreError::Param(format!(
                "{frac_bits} fractional bits: at most 30 are supported"
            )));
        }
        Ok(FixedPoint { frac_bits })
    }

    /// Fractional bits `f`.
    pub fn frac_bits(&self) -> u32 {
        self.frac_bits
    }

    /// `2^f` as a float.
    pub fn scale(&self) -> f64 {
        (1u64 << self.frac_bits) as f64
    }

    /// Largest magnitude (exclusive) of a real number this format encodes: `2^(62 - f)`.
    pub fn max_abs(&self) -> f64 {
        MAX_ENCODED as f64 / self.scale()
    }

    /// Encodes one real number with `f` fractional bits.
    pub fn encode(&self, x: f64) -> Result<u64> {
        encode_with(x, self.frac_bits)
    }

    /// Encodes a slice of real numbers.
    pub fn encode_slice(&self, xs: &[f64]) -> Result<Vec<u64>> {
        xs.iter().map(|&x| self.encode(x)).collect()
    }

    /// Encodes `f32` values (the type models and clients use).
    pub fn encode_f32(&self, xs: &[f32]) -> Result<Vec<u64>> {
        xs.iter().map(|&x| self.encode(f64::from(x))).collect()
    }

    /// Decodes one ring element carrying `f` fractional bits.
    pub fn decode(&self, v: u64) -> f64 {
        decode_with(v, self.frac_bits)
    }

    /// Decodes a slice of ring elements carrying `f` fractional bits.
    pub fn decode_slice(&self, vs: &[u64]) -> Vec<f64> {
        vs.iter().map(|&v| self.decode(v)).collect()
    }
}

/// Encodes `x` with `frac_bits` fractional bits (round to nearest), refusing NaN, infinities and
/// values whose encoding would reach `2^62` in magnitude.
pub fn encode_with(x: f64, frac_bits: u32) -> Result<u64> {
    let err = |reason| CoreError::Encode {
        value: format!("{x}"),
        frac_bits,
        reason,
    };
    if x.is_nan() {
        return Err(err("not a number"));
    }
    if x.is_infinite() {
        return Err(err("infinite"));
    }
    if frac_bits > 62 {
        return Err(err("more than 62 fractional bits"));
    }
    let v = (x * (1u64 << frac_bits) as f64).round();
    if v.abs() >= MAX_ENCODED as f64 {
        return Err(err(
            "outside the format's range (|x · 2^f| must stay below 2^62)",
        ));
    }
    Ok((v as i64) as u64)
}

/// Decodes a ring element carrying `frac_bits` fractional bits.
pub fn decode_with(v: u64, frac_bits: u32) -> f64 {
    (v as i64) as f64 / (1u64 << frac_bits.min(63)) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_signs() {
        let fp = FixedPoint::default();
        for &x in &[0.0, 1.0, -1.0, 0.5, -3.25, 1234.5678, -0.000_01] {
            let v = fp.encode(x).expect("in range");
            assert!((fp.decode(v) - x).abs() <= 0.5 / fp.scale());
        }
        assert_eq!(fp.encode(-1.0).expect("in range"), (-(1i64 << 16)) as u64);
    }

    #[test]
    fn refuses_what_it_cannot_encode() {
        let fp = FixedPoint::default();
        assert!(fp.encode(f64::NAN).is_err());
        assert!(fp.encode(f64::INFINITY).is_err());
        assert!(fp.encode(f64::NEG_INFINITY).is_err());
        assert!(fp.encode(fp.max_abs()).is_err());
        assert!(fp.encode(-fp.max_abs()).is_err());
        assert!(fp.encode(fp.max_abs() * 0.99).is_ok());
        assert!(FixedPoint::new(31).is_err());
    }
}

//! 2-of-2 additive secret sharing over Z_2^64.
//!
//! `x = x0 + x1 (mod 2^64)` with `x0` uniform: either share alone is a uniformly random
//! tensor, independent of `x`. The seed-compressed form used by clients (DESIGN §2) sends
//! `x0 = x - PRG(s)` to P0 and only the 32-byte seed `s` to P1, which expands `x1 = PRG(s)`.

use crate::error::{CoreError, Result};
use crate::prg::{Prg, Seed};
use crate::ring;

/// ChaCha stream used to expand a client's input seed.
pub const INPUT_STREAM: u64 = 0x1_0000;

/// Splits `x` into two uniformly random shares with the given generator.
pub fn share(x: &[u64], rng: &mut Prg) -> (Vec<u64>, Vec<u64>) {
    let x1 = rng.vec_u64(x.len());
    let x0 = x.iter().zip(&x1).map(|(a, b)| a.wrapping_sub(*b)).collect();
    (x0, x1)
}

/// Adds two shares back together.
pub fn reveal(x0: &[u64], x1: &[u64]) -> Result<Vec<u64>> {
    ring::add(x0, x1)
}

/// P1's share of a seed-compressed sharing: `PRG(seed)` expanded to `n` elements.
pub fn expand_seed(seed: &Seed, n: usize) -> Vec<u64> {
    Prg::new(seed, INPUT_STREAM).vec_u64(n)
}

/// P0's share of a seed-compressed sharing: `x - PRG(seed)`.
pub fn share_with_seed(x: &[u64], seed: &Seed) -> Vec<u64> {
    let mask = expand_seed(seed, x.len());
    x.iter()
        .zip(&mask)
        .map(|(a, b)| a.wrapping_sub(*b))
        .collect()
}

/// Bytes per element of a `k`-bit XOR share on the wire ([`encode_bits`]).
pub fn bits_width(k: u32) -> usize {
    k.div_ceil(8) as usize
}

/// The `k`-bit code of a signed input, `(x + 2^(k−1)) mod 2^k`: what a client XOR-shares when
/// the deployment enforces the input's range (`k` in 1..=63). A value within `±2^(k−1)` is
/// `code − 2^(k−1)`; any other wraps into that range, as [`crate::plain::lift`] does.
pub fn input_code(x: &[u64], k: u32) -> Vec<u64> {
    let low = (1u64 << k) - 1;
    let half = 1u64 << (k - 1);
    x.iter().map(|v| v.wrapping_add(half) & low).collect()
}

/// P1's XOR share of a seed-compressed `k`-bit sharing: the low `k` bits of `PRG(seed)`.
pub fn expand_seed_bits(seed: &Seed, n: usize, k: u32) -> Vec<u64> {
    let low = (1u64 << k) - 1;
    let mut v = expand_seed(seed, n);
    for x in v.iter_mut() {
        *x &= low;
    }
    v
}

/// `k`-bit words (each below `2^k`) as [`bits_width`]`(k)` little-endian bytes each.
pub fn encode_bits(words: &[u64], k: u32) -> Vec<u8> {
    let w = bits_width(k);
    let mut out = Vec::with_capacity(w * words.len());
    for v in words {
        out.extend_from_slice(&v.to_le_bytes()[..w]);
    }
    out
}

/// Decodes `n` words of [`encode_bits`]: exactly `n · `[`bits_width`]`(k)` bytes, no bit set
/// at or above `k`.
pub fn decode_bits(bytes: &[u8], n: usize, k: u32) -> Result<Vec<u64>> {
    let w = bits_width(k);
    if Some(bytes.len()) != n.checked_mul(w) {
        return Err(CoreError::decode(
            "input share",
            format!(
                "{} bytes for {n} inputs of {k} bits ({w} bytes each)",
                bytes.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(n);
    for (i, c) in bytes.chunks_exact(w).enumerate() {
        let mut b = [0u8; 8];
        b[..w].copy_from_slice(c);
        let v = u64::from_le_bytes(b);
        if v >> k != 0 {
            return Err(CoreError::decode(
                "input share",
                format!("element {i} has bits set above the input's {k}-bit range"),
            ));
        }
        out.push(v);
    }
    Ok(out)
}

/// Seed-compressed XOR sharing of the `k`-bit codes of `x` ([`input_code`]) with a fresh seed
/// from the operating system: P0's payload `code ⊕ low_k(PRG(s))` ([`encode_bits`]) and the
/// seed `s` for P1. Any `k`-bit string decodes to a value in range, so the servers need no
/// comparison to enforce it (`crate::protocols::lift`).
pub fn share_input_bits(x: &[u64], k: u32) -> Result<(Vec<u8>, Seed)> {
    if !(2..=63).contains(&k) {
        return Err(CoreError::Param(format!(
            "an input range of {k} bits (2 to 63 are supported)"
        )));
    }
    let seed = Seed::random()?;
    let mask = expand_seed_bits(&seed, x.len(), k);
    let words: Vec<u64> = input_code(x, k)
        .iter()
        .zip(&mask)
        .map(|(a, b)| a ^ b)
        .collect();
    Ok((encode_bits(&words, k), seed))
}

/// What a client sends: the full share for P0, the seed for P1.
#[derive(Clone)]
pub struct ClientShares {
    /// `x - PRG(seed)`, for P0.
    pub to_p0: Vec<u64>,
    /// The seed, for P1.
    pub to_p1: Seed,
}

impl std::fmt::Debug for ClientShares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientShares({} elements)", self.to_p0.len())
    }
}

/// Shares an encoded input with a fresh seed from the operating system.
pub fn share_input(x: &[u64]) -> Result<ClientShares> {
    let seed = Seed::random()?;
    Ok(ClientShares {
        to_p0: share_with_seed(x, &seed),
        to_p1: seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_reveal_and_are_fresh() {
        let x = vec![0, 1, u64::MAX, 42];
        let mut rng = Prg::from_os().expect("os rng");
        let (a0, a1) = share(&x, &mut rng);
        assert_eq!(reveal(&a0, &a1).expect("same len"), x);
        let (b0, _) = share(&x, &mut rng);
        assert_ne!(a0, b0, "two sharings of one value must differ");

        let c = share_input(&x).expect("os rng");
        let d = share_input(&x).expect("os rng");
        assert_ne!(c.to_p0, d.to_p0);
        let x1 = expand_seed(&c.to_p1, x.len());
        assert_eq!(reveal(&c.to_p0, &x1).expect("same len"), x);
    }

    #[test]
    fn bit_shares_xor_to_the_codes_and_bad_bytes_are_errors() {
        let k = 18;
        let x = vec![
            0,
            1,
            (1u64 << 17) - 1,
            (1u64 << 17).wrapping_neg(),
            1 << 20,
            u64::MAX,
        ];
        let (to_p0, seed) = share_input_bits(&x, k).expect("os rng");
        assert_eq!(to_p0.len(), 3 * x.len());
        let u0 = decode_bits(&to_p0, x.len(), k).expect("decodes");
        let u1 = expand_seed_bits(&seed, x.len(), k);
        let codes: Vec<u64> = u0.iter().zip(&u1).map(|(a, b)| a ^ b).collect();
        assert_eq!(codes, input_code(&x, k));
        // Within ±2^(k−1) the code is the value plus 2^(k−1); beyond, it wraps.
        assert_eq!(&codes[..4], &[1 << 17, (1 << 17) + 1, (1 << 18) - 1, 0]);
        assert_eq!(codes[4], 1 << 17);
        let (again, _) = share_input_bits(&x, k).expect("os rng");
        assert_ne!(to_p0, again, "fresh seeds give fresh shares");
        // Wrong lengths and bits above k are errors, not wrong values.
        assert!(decode_bits(&to_p0[1..], x.len(), k).is_err());
        assert!(decode_bits(&to_p0, x.len() + 1, k).is_err());
        let mut high = to_p0.clone();
        high[2] |= 1 << 2;
        assert!(decode_bits(&high, x.len(), k).is_err());
        assert!(share_input_bits(&x, 64).is_err() && share_input_bits(&x, 1).is_err());
    }
}

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

/// Bytes per element of a client's share of a `k`-bit input on the wire ([`encode_bits`]):
/// `k + 1` bits, a share of the `k`-bit code and of a wrap bit ([`share_input_bits`]).
pub fn bits_width(k: u32) -> usize {
    (k + 1).div_ceil(8) as usize
}

/// The `k`-bit code of a signed input, `(x + 2^(k−1)) mod 2^k`: the value a client shares when
/// the deployment enforces the input's range (`k` in 2..=61). A value within `±2^(k−1)` is
/// `code − 2^(k−1)`; any other wraps into that range, as [`crate::plain::lift`] does.
pub fn input_code(x: &[u64], k: u32) -> Vec<u64> {
    let low = (1u64 << k) - 1;
    let half = 1u64 << (k - 1);
    x.iter().map(|v| v.wrapping_add(half) & low).collect()
}

/// P1's part of a seed-compressed range sharing ([`share_input_bits`]): per element the low
/// `k + 1` bits of one word of `PRG(seed)`, laid out as [`share_input_bits`] says.
pub fn expand_seed_bits(seed: &Seed, n: usize, k: u32) -> Vec<u64> {
    let keep = (1u64 << (k + 1)) - 1;
    let mut v = expand_seed(seed, n);
    for x in v.iter_mut() {
        *x &= keep;
    }
    v
}

/// Bits of a `k`-bit code shared by XOR in a range sharing ([`share_input_bits`]): the top
/// [`crate::protocols::LIFT_XOR_BITS`] (fewer for tiny `k`).
pub fn xor_bits(k: u32) -> u32 {
    crate::protocols::LIFT_XOR_BITS.min(k - 1)
}

/// `k + 1`-bit words (each below `2^(k+1)`) as [`bits_width`]`(k)` little-endian bytes each.
pub fn encode_bits(words: &[u64], k: u32) -> Vec<u8> {
    let w = bits_width(k);
    let mut out = Vec::with_capacity(w * words.len());
    for v in words {
        out.extend_from_slice(&v.to_le_bytes()[..w]);
    }
    out
}

/// Decodes `n` words of [`encode_bits`]: exactly `n · `[`bits_width`]`(k)` bytes, no bit set
/// above bit `k`.
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
        if v >> (k + 1) != 0 {
            return Err(CoreError::decode(
                "input share",
                format!("element {i} has bits set above its {k}-bit share and wrap bit"),
            ));
        }
        out.push(v);
    }
    Ok(out)
}

/// Seed-compressed sharing of the `k`-bit codes `v` of `x` ([`input_code`]) for a deployment
/// that enforces the input's range, with a fresh seed from the operating system. With
/// `j = `[`xor_bits`]`(k)` and `l = k − j`, each party's word holds, from bit 0: an additive
/// share of `v mod 2^l` modulo `2^l` (`l` bits), a XOR share of `v >> l` (`j` bits), and a
/// XOR share of the low part's wrap bit `w = [x0 + x1 ≥ 2^l]` (bit `k`). P1's word is `PRG(s)`
/// ([`expand_seed_bits`]); P0's follows ([`encode_bits`]). Then
/// `v = x0 + x1 − 2^l·w + 2^l·(h0 ⊕ h1)` over the integers, and whatever a client sends, that
/// lies in `[−2^l, 2^k + 2^l)`: the servers enforce the range by converting `j + 1` shared
/// bits per value (`crate::protocols::lift`), not by a comparison.
pub fn share_input_bits(x: &[u64], k: u32) -> Result<(Vec<u8>, Seed)> {
    crate::protocols::check_lift(k)?;
    let seed = Seed::random()?;
    let l = k - xor_bits(k);
    let low = (1u64 << l) - 1;
    let p1 = expand_seed_bits(&seed, x.len(), k);
    let words: Vec<u64> = input_code(x, k)
        .iter()
        .zip(&p1)
        .map(|(&v, &r)| {
            let x1 = r & low;
            let x0 = v.wrapping_sub(x1) & low;
            let wrap = u64::from(x0 + x1 > low);
            let high = (v >> l) ^ ((r >> l) & ((1u64 << (k - l)) - 1));
            x0 | (high << l) | ((wrap ^ (r >> k)) << k)
        })
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
    fn range_shares_add_up_to_the_codes_and_bad_bytes_are_errors() {
        let k = 18;
        let low = (1u64 << k) - 1;
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
        let l = k - xor_bits(k);
        let codes: Vec<u64> = u0
            .iter()
            .zip(&u1)
            .map(|(a, b)| {
                let lo = (1u64 << l) - 1;
                let wrap = ((a ^ b) >> k) & 1;
                let high = ((a ^ b) & low) >> l;
                (a & lo) + (b & lo) - (wrap << l) + (high << l)
            })
            .collect();
        assert_eq!(codes, input_code(&x, k));
        // Within ±2^(k−1) the code is the value plus 2^(k−1); beyond, it wraps.
        assert_eq!(&codes[..4], &[1 << 17, (1 << 17) + 1, (1 << 18) - 1, 0]);
        assert_eq!(codes[4], 1 << 17);
        let (again, _) = share_input_bits(&x, k).expect("os rng");
        assert_ne!(to_p0, again, "fresh seeds give fresh shares");
        // Wrong lengths and bits above the wrap bit are errors, not wrong values.
        assert!(decode_bits(&to_p0[1..], x.len(), k).is_err());
        assert!(decode_bits(&to_p0, x.len() + 1, k).is_err());
        let mut high = to_p0.clone();
        high[2] |= 1 << 3;
        assert!(decode_bits(&high, x.len(), k).is_err());
        assert!(share_input_bits(&x, 62).is_err() && share_input_bits(&x, 1).is_err());
    }
}

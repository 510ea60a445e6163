//! 2-of-2 additive secret sharing over Z_2^64.
//!
//! `x = x0 + x1 (mod 2^64)` with `x0` uniform: either share alone is a uniformly random
//! tensor, independent of `x`. The seed-compressed form used by clients (DESIGN §2) sends
//! `x0 = x - PRG(s)` to P0 and only the 32-byte seed `s` to P1, which expands `x1 = PRG(s)`.

use crate::error::Result;
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
}

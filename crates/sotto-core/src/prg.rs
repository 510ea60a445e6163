//! Randomness: 32-byte seeds from the operating system and a ChaCha20 stream expanded from them.
//!
//! All randomness in sotto comes from [`Seed::random`] (the OS generator through `getrandom`;
//! `crypto.getRandomValues` in browsers) or from a [`Prg`] seeded by it. If the OS generator
//! fails, the call fails: there is no fallback.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

use crate::error::{CoreError, Result};

/// A 32-byte seed. Its `Debug` output does not show the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Seed(pub [u8; 32]);

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed(..)")
    }
}

impl Seed {
    /// A fresh seed from the operating system's generator.
    pub fn random() -> Result<Seed> {
        let mut s = [0u8; 32];
        getrandom::fill(&mut s).map_err(|e| CoreError::Rng(e.to_string()))?;
        Ok(Seed(s))
    }

    /// A seed from untrusted bytes (exactly 32).
    pub fn from_bytes(bytes: &[u8]) -> Result<Seed> {
        let arr: [u8; 32] = bytes.try_into().map_err(|_| {
            CoreError::decode("seed", format!("{} bytes instead of 32", bytes.len()))
        })?;
        Ok(Seed(arr))
    }
}

/// A ChaCha20 stream. `Prg::new(seed, stream)` for different `stream` numbers gives
/// independent streams from one seed (domain separation by ChaCha's stream id).
pub struct Prg {
    rng: ChaCha20Rng,
}

impl std::fmt::Debug for Prg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prg(..)")
    }
}

impl Prg {
    /// The stream number `stream` of `seed`.
    pub fn new(seed: &Seed, stream: u64) -> Prg {
        let mut rng = ChaCha20Rng::from_seed(seed.0);
        rng.set_stream(stream);
        Prg { rng }
    }

    /// A generator seeded from the operating system.
    pub fn from_os() -> Result<Prg> {
        Ok(Prg::new(&Seed::random()?, 0))
    }

    /// Fills a slice with uniform ring elements.
    pub fn fill_u64(&mut self, out: &mut [u64]) {
        // ChaCha's output is consumed in 8-byte little-endian words; filling bytes first is
        // faster than one call per word.
        let mut buf = [0u8; 1024];
        for chunk in out.chunks_mut(128) {
            let bytes = &mut buf[..chunk.len() * 8];
            self.rng.fill_bytes(bytes);
            for (x, b) in chunk.iter_mut().zip(bytes.chunks_exact(8)) {
                let mut w = [0u8; 8];
                w.copy_from_slice(b);
                *x = u64::from_le_bytes(w);
            }
        }
    }

    /// `n` uniform ring elements.
    pub fn vec_u64(&mut self, n: usize) -> Vec<u64> {
        let mut v = vec![0u64; n];
        self.fill_u64(&mut v);
        v
    }

    /// A fresh seed drawn from this stream.
    pub fn seed(&mut self) -> Seed {
        let mut s = [0u8; 32];
        self.rng.fill_bytes(&mut s);
        Seed(s)
    }
}

impl RngCore for Prg {
    fn next_u32(&mut self) -> u32 {
        self.rng.next_u32()
    }
    fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
    fn fill_bytes(&mut self, dst: &mut [u8]) {
        self.rng.fill_bytes(dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_and_distinct() {
        let s = Seed([7; 32]);
        assert_eq!(Prg::new(&s, 1).vec_u64(9), Prg::new(&s, 1).vec_u64(9));
        assert_ne!(Prg::new(&s, 1).vec_u64(9), Prg::new(&s, 2).vec_u64(9));
        let a = Seed::random().expect("os rng");
        let b = Seed::random().expect("os rng");
        assert_ne!(a, b);
        assert!(Seed::from_bytes(&[0; 31]).is_err());
        assert_eq!(format!("{a:?}"), "Seed(..)");
    }
}

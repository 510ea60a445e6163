//! Target `dcf-keys`: `sotto_core::dcf::DcfKeys::from_bytes` on mutated key batches made with
//! `sotto_core::dcf::gen_with` in both formats (`DCF1`, and the packed `DCF2` that comparisons
//! use; domains of 1 to 64 bits, payloads of 1 to 8 elements, 0 to 17 comparisons, both
//! parties), and `sotto_core::dcf_bit::BitKeys::from_bytes` on mutated one-bit key batches
//! (`DCFB`, made with `sotto_core::dcf_bit::gen_with`; the header's byte 6 is then the
//! early-terminated level count, not a payload length). Header-aware edits change the party, domain bits, payload
//! length, reserved byte and key count, and often resize the body to what the new header
//! announces so that the body checks run. Keys that decode must re-encode to the same bytes
//! and evaluate (on inputs inside and outside the domain, and with wrong lengths) without a
//! panic.

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use sotto_core::dcf::{eval, gen_with, DcfKeys, Format, Parallelism, MAX_PAYLOAD};
use sotto_core::dcf_bit::{self, BitKeys};

use crate::mutate::{below, chance, count, interesting, mutate_bytes, pick, pick_input, Rng};
use crate::Outcome;

const HEADER: usize = 12;

/// Bytes of a batch of `count` keys on `n` bits with `m`-element payloads (the documented
/// layout: 16 + n·(17 + 8m) + 8m per key, one byte per level less when `packed`, plus the
/// header).
fn batch_len(n: u64, m: u64, count: u64, packed: bool) -> Option<u64> {
    let per = 16 + n * (16 + u64::from(!packed) + 8 * m) + 8 * m;
    per.checked_mul(count)?.checked_add(HEADER as u64)
}

/// Bytes of a batch of `count` one-bit keys on `n` bits (`DCFB`: `32 + 16·(n − 7)` per key
/// from n = 7 on, plus the header).
fn bit_batch_len(n: u64, count: u64) -> Option<u64> {
    let per = dcf_bit::key_bytes(u32::try_from(n).ok()?) as u64;
    per.checked_mul(count)?.checked_add(HEADER as u64)
}

/// `count` random comparison points on `n` bits.
fn random_alphas(rng: &mut ChaCha20Rng, n: u32, count: usize) -> Vec<u64> {
    (0..count).map(|_| rng.next_u64() >> (64 - n)).collect()
}

/// The seeds: valid key batches of both parties.
pub struct Dcf {
    seeds: Vec<Vec<u8>>,
}

impl Dcf {
    /// Makes key batches of many shapes (a fixed ChaCha20 stream, so the seeds do not depend
    /// on the run's seed).
    pub fn new() -> Result<Self, String> {
        let mut rng = ChaCha20Rng::seed_from_u64(0x05ee_ddcf);
        let mut seeds = Vec::new();
        for &n in &[1u32, 2, 7, 8, 31, 32, 63, 64] {
            for &m in &[1usize, 2, 3, MAX_PAYLOAD] {
                for &count in &[0usize, 1, 2, 5, 17] {
                    if n * m as u32 * count as u32 > 64 * 8 * 5 {
                        continue;
                    }
                    let alphas = random_alphas(&mut rng, n, count);
                    let payloads: Vec<u64> = (0..count * m).map(|_| rng.next_u64()).collect();
                    for format in [Format::Bytes, Format::Packed] {
                        let (k0, k1) = gen_with(
                            n,
                            &alphas,
                            &payloads,
                            m,
                            &mut rng,
                            Parallelism::new(1, usize::MAX),
                            format,
                        )
                        .map_err(|e| format!("dcf::gen({n} bits, m = {m}, {format:?}): {e}"))?;
                        seeds.push(k0.to_bytes());
                        seeds.push(k1.to_bytes());
                    }
                }
            }
            for &count in &[0usize, 1, 2, 5, 17] {
                let alphas = random_alphas(&mut rng, n, count);
                let (k0, k1) =
                    dcf_bit::gen_with(n, &alphas, &mut rng, Parallelism::new(1, usize::MAX))
                        .map_err(|e| format!("dcf_bit::gen({n} bits): {e}"))?;
                seeds.push(k0.to_bytes());
                seeds.push(k1.to_bytes());
            }
        }
        Ok(Dcf { seeds })
    }

    /// One line about the seeds.
    pub fn describe(&self) -> Vec<String> {
        vec![format!(
            "{} key batches (1 to 64 bits, 1 to {MAX_PAYLOAD} payload elements, 0 to 17 keys, both parties, formats DCF1, DCF2 and one-bit DCFB)",
            self.seeds.len()
        )]
    }

    /// Makes one input.
    pub fn generate(&self, rng: &mut Rng, pool: &[Vec<u8>], out: &mut Vec<u8>) {
        out.clear();
        if !pool.is_empty() && chance(rng, 20) {
            out.extend_from_slice(pick_input(rng, pool));
        } else {
            out.extend_from_slice(pick_input(rng, &self.seeds));
        }
        let donors: Vec<&[u8]> = vec![pick_input(rng, &self.seeds)];
        let mut header_changed = false;
        for _ in 0..count(rng, 5) {
            if out.len() >= HEADER && chance(rng, 50) {
                header_changed = true;
                match below(rng, 6) {
                    0 => out[4] = *pick(rng, &[0u8, 1, 2, 255]),
                    1 => out[5] = *pick(rng, &[0u8, 1, 2, 63, 64, 65, 128, 255]),
                    2 => out[6] = *pick(rng, &[0u8, 1, 2, 7, 8, 9, 255]),
                    3 => out[7] = *pick(rng, &[0u8, 1, 255]),
                    4 => out[8..12].copy_from_slice(&(interesting(rng) as u32).to_le_bytes()),
                    _ => out[8..12].copy_from_slice(&(below(rng, 40) as u32).to_le_bytes()),
                }
            } else if out.len() > HEADER && chance(rng, 30) {
                // a control-bit correction byte out of its 0..=3 range, or a body byte
                let i = HEADER + below(rng, out.len() - HEADER);
                out[i] = *pick(rng, &[0u8, 1, 2, 3, 4, 0x80, 255]);
            } else {
                mutate_bytes(rng, out, &donors);
            }
        }
        if header_changed && out.len() >= HEADER && chance(rng, 60) {
            // make the body as long as the header announces (up to 4 MiB)
            let count = u32::from_le_bytes([out[8], out[9], out[10], out[11]]);
            let packed = out[..4] == *b"DCF2";
            let want = if out[..4] == *b"DCFB" {
                bit_batch_len(u64::from(out[5]), u64::from(count))
            } else {
                batch_len(
                    u64::from(out[5]),
                    u64::from(out[6]),
                    u64::from(count),
                    packed,
                )
            };
            if let Some(want) = want.filter(|w| *w <= 4 << 20) {
                let want = want as usize;
                let old = out.len();
                out.resize(want, 0);
                if want > old {
                    rng.fill_bytes(&mut out[old..]);
                    // keep the control-bit corrections mostly valid
                    for b in out[old..].iter_mut() {
                        if chance(rng, 90) {
                            *b &= 3;
                        }
                    }
                }
            }
        }
    }
}

/// Runs the target on one input: decode, and on success re-encode and evaluate.
pub fn run(bytes: &[u8]) -> Outcome {
    if bytes.starts_with(b"DCFB") {
        return run_bits(bytes);
    }
    let keys = match DcfKeys::from_bytes(bytes) {
        Ok(k) => k,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    if keys.to_bytes() != bytes {
        return Outcome::Property("to_bytes(from_bytes(b)) differs from b".into());
    }
    if keys.encoded_len() != bytes.len() {
        return Outcome::Property(format!(
            "encoded_len {} for {} bytes",
            keys.encoded_len(),
            bytes.len()
        ));
    }
    let (n, m, c) = (keys.n_bits(), keys.payload_len(), keys.len());
    if keys.party() > 1 || !(1..=64).contains(&n) || !(1..=MAX_PAYLOAD).contains(&m) {
        return Outcome::Property(format!("decoded {keys:?}"));
    }
    // Evaluation on inputs in the domain: deterministic inputs derived from the key bytes.
    if c <= 4096 {
        let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        let xs: Vec<u64> = (0..c as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) & mask)
            .collect();
        let mut out = vec![0u64; c * m];
        if let Err(e) = eval(&keys, &xs, &mut out) {
            return Outcome::Property(format!("eval on in-domain inputs fails: {e}"));
        }
        // Wrong lengths and (when the domain is smaller than 64 bits) an input outside it.
        if c > 0 && eval(&keys, &xs[1..], &mut out).is_ok() {
            return Outcome::Property("eval accepted too few inputs".into());
        }
        if eval(&keys, &xs, &mut out[..c * m / 2]).is_ok() && c > 0 {
            return Outcome::Property("eval accepted a short output".into());
        }
        if n < 64 && c > 0 {
            let mut ys = xs.clone();
            ys[0] = 1u64 << n;
            if eval(&keys, &ys, &mut out).is_ok() {
                return Outcome::Property("eval accepted an input outside the domain".into());
            }
        }
    }
    Outcome::Ok(format!(
        "decoded and evaluated ({})",
        if c == 0 { "empty batch" } else { "keys" }
    ))
}

/// The one-bit format: decode, and on success re-encode and evaluate (inputs in the domain,
/// wrong lengths, an input outside the domain).
fn run_bits(bytes: &[u8]) -> Outcome {
    let keys = match BitKeys::from_bytes(bytes) {
        Ok(k) => k,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    if keys.to_bytes() != bytes || keys.encoded_len() != bytes.len() {
        return Outcome::Property("a one-bit key batch does not re-encode to its bytes".into());
    }
    let (n, c) = (keys.n_bits(), keys.len());
    if keys.party() > 1 || !(1..=64).contains(&n) {
        return Outcome::Property(format!("decoded {keys:?}"));
    }
    if c <= 4096 {
        let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        let xs: Vec<u64> = (0..c as u64)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) & mask)
            .collect();
        let mut out = vec![0u8; c];
        if let Err(e) = dcf_bit::eval(&keys, &xs, &mut out) {
            return Outcome::Property(format!("one-bit eval on in-domain inputs fails: {e}"));
        }
        if out.iter().any(|&b| b > 1) {
            return Outcome::Property("a one-bit share that is not 0 or 1".into());
        }
        if c > 0 && dcf_bit::eval(&keys, &xs[1..], &mut out[1..]).is_ok() {
            return Outcome::Property("one-bit eval accepted too few inputs".into());
        }
        if n < 64 && c > 0 {
            let mut ys = xs.clone();
            ys[0] = 1u64 << n;
            if dcf_bit::eval(&keys, &ys, &mut out).is_ok() {
                return Outcome::Property(
                    "one-bit eval accepted an input outside the domain".into(),
                );
            }
        }
    }
    Outcome::Ok(format!(
        "decoded and evaluated one-bit keys ({})",
        if c == 0 { "empty batch" } else { "keys" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_decodes_and_the_documented_length_holds() {
        let d = Dcf::new().expect("seeds");
        let packed = d.seeds.iter().filter(|s| s[..4] == *b"DCF2").count();
        let plain = d.seeds.iter().filter(|s| s[..4] == *b"DCF1").count();
        let bits = d.seeds.iter().filter(|s| s[..4] == *b"DCFB").count();
        assert_eq!(packed, plain, "as many packed as byte-format seeds");
        assert_eq!(
            bits,
            2 * 8 * 5,
            "one-bit seeds: 8 widths, 5 counts, both parties"
        );
        for s in &d.seeds {
            assert!(matches!(run(s), Outcome::Ok(_)), "{:?}", run(s));
            let count = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
            let want = if s[..4] == *b"DCFB" {
                bit_batch_len(u64::from(s[5]), u64::from(count))
            } else {
                batch_len(
                    u64::from(s[5]),
                    u64::from(s[6]),
                    u64::from(count),
                    s[..4] == *b"DCF2",
                )
            };
            assert_eq!(want, Some(s.len() as u64));
        }
    }
}

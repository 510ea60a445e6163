//! Distributed comparison functions (DCF) with arithmetic output over Z_2^64.
//!
//! The helper, knowing a threshold `α` on an `n`-bit domain and a payload `β ∈ (Z_2^64)^m`,
//! makes two keys. For any public `x < 2^n`, `eval(k0, x) + eval(k1, x) = β · [x < α]`
//! (element-wise, wrapping); either key alone is pseudorandom and reveals nothing about `α`
//! or `β`. This is the construction of Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar and
//! Rathee (*Function Secret Sharing for Mixed-Mode and Fixed-Point Secure Computation*,
//! Eurocrypt 2021, Fig. 1), walking the bits of `x` from the most significant one.
//!
//! The PRG is fixed-key AES-128 in Matyas–Meyer–Oseas mode, `H(s) = AES_k(s) ⊕ s`, with a
//! different tweak XORed into the seed for each output block. A seed's lowest bit is the
//! control bit `t`; seeds carry 127 bits. One evaluation step needs `1 + ⌈m/2⌉` AES blocks,
//! and many keys are evaluated side by side so that AES-NI pipelines them.
//!
//! Key size per comparison and party: `16 + n · (17 + 8m) + 8m` bytes (n = 63, m = 1:
//! 1,599 bytes; m = 3: 2,623 bytes), plus a 12-byte header per batch.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes128, Block};
use rand_core::RngCore;

use crate::error::{CoreError, Result};

/// The fixed, public AES key of the PRG.
const PRG_KEY: [u8; 16] = *b"sotto-dcf-prg-k1";
/// Largest payload length.
pub const MAX_PAYLOAD: usize = 8;
/// Most comparisons in one batch decoded from bytes.
pub const MAX_KEYS: usize = 1 << 24;
const MAGIC: [u8; 4] = *b"DCF1";
const HEADER: usize = 12;

fn cipher() -> Aes128 {
    Aes128::new(&PRG_KEY.into())
}

/// Tweak of output block `j` of side `side` (0 = left, 1 = right, 2 = final conversion).
#[inline]
fn tweak(side: usize, j: usize) -> u128 {
    ((side as u128) << 64) | ((j as u128 + 1) << 1)
}

#[inline]
fn blocks_per_side(m: usize) -> usize {
    1 + m.div_ceil(2)
}

#[inline]
fn to_block(v: u128) -> Block {
    Block::from(v.to_le_bytes())
}

#[inline]
fn from_block(b: &Block) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    u128::from_le_bytes(a)
}

/// One party's keys for `count` independent comparisons on an `n`-bit domain with `m`-element
/// payloads.
#[derive(Clone, PartialEq, Eq)]
pub struct DcfKeys {
    party: u8,
    n_bits: u32,
    m: usize,
    count: usize,
    roots: Vec<u128>,
    cw_s: Vec<u128>,
    cw_t: Vec<u8>,
    cw_v: Vec<u64>,
    cw_final: Vec<u64>,
}

impl std::fmt::Debug for DcfKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DcfKeys(party {}, {} keys, {} bits, m = {})",
            self.party, self.count, self.n_bits, self.m
        )
    }
}

impl DcfKeys {
    /// The party (0 or 1) these keys belong to.
    pub fn party(&self) -> u8 {
        self.party
    }
    /// Bits of the domain.
    pub fn n_bits(&self) -> u32 {
        self.n_bits
    }
    /// Elements of each payload.
    pub fn payload_len(&self) -> usize {
        self.m
    }
    /// Number of comparisons.
    pub fn len(&self) -> usize {
        self.count
    }
    /// True when there is no comparison.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn per_key_len(n: usize, m: usize) -> usize {
        16 + n * (17 + 8 * m) + 8 * m
    }

    /// Length of [`DcfKeys::to_bytes`].
    pub fn encoded_len(&self) -> usize {
        HEADER + self.count * Self::per_key_len(self.n_bits as usize, self.m)
    }

    /// Compact little-endian encoding: a 12-byte header (magic, party, bits, m, count), then
    /// roots, seed corrections, control-bit corrections, value corrections and final
    /// corrections. Corrections are stored level-major (level `i` of every key, then level
    /// `i + 1`), the order in which evaluation reads them.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&MAGIC);
        out.push(self.party);
        out.push(self.n_bits as u8);
        out.push(self.m as u8);
        out.push(0);
        out.extend_from_slice(&(self.count as u32).to_le_bytes());
        for s in self.roots.iter().chain(&self.cw_s) {
            out.extend_from_slice(&s.to_le_bytes());
        }
        out.extend_from_slice(&self.cw_t);
        for v in self.cw_v.iter().chain(&self.cw_final) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Decodes untrusted bytes; every malformation is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let bad = |r: String| CoreError::decode("DCF keys", r);
        if bytes.len() < HEADER {
            return Err(bad(format!(
                "{} bytes is shorter than the header",
                bytes.len()
            )));
        }
        if bytes[..4] != MAGIC {
            return Err(bad("wrong magic".into()));
        }
        let party = bytes[4];
        let n_bits = u32::from(bytes[5]);
        let m = bytes[6] as usize;
        if party > 1 {
            return Err(bad(format!("party {party}")));
        }
        if !(1..=64).contains(&n_bits) {
            return Err(bad(format!("{n_bits}-bit domain")));
        }
        if !(1..=MAX_PAYLOAD).contains(&m) {
            return Err(bad(format!("payload of {m} elements")));
        }
        if bytes[7] != 0 {
            return Err(bad("reserved byte is not zero".into()));
        }
        let count = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        if count > MAX_KEYS {
            return Err(bad(format!("{count} keys (at most {MAX_KEYS})")));
        }
        let n = n_bits as usize;
        let want = HEADER + count * Self::per_key_len(n, m);
        if bytes.len() != want {
            return Err(bad(format!(
                "{} bytes where {want} were expected",
                bytes.len()
            )));
        }
        let mut pos = HEADER;
        let mut take = |len: usize| {
            let s = &bytes[pos..pos + len];
            pos += len;
            s
        };
        let u128s = |b: &[u8]| -> Vec<u128> {
            b.chunks_exact(16)
                .map(|c| {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(c);
                    u128::from_le_bytes(a)
                })
                .collect()
        };
        let u64s = |b: &[u8]| -> Vec<u64> {
            b.chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    u64::from_le_bytes(a)
                })
                .collect()
        };
        let roots = u128s(take(16 * count));
        let cw_s = u128s(take(16 * count * n));
        let cw_t = take(count * n).to_vec();
        if cw_t.iter().any(|&t| t > 3) {
            return Err(bad("control-bit correction out of range".into()));
        }
        let cw_v = u64s(take(8 * count * n * m));
        let cw_final = u64s(take(8 * count * m));
        Ok(DcfKeys {
            party,
            n_bits,
            m,
            count,
            roots,
            cw_s,
            cw_t,
            cw_v,
            cw_final,
        })
    }
}

fn sign_mul(neg: bool, v: u64) -> u64 {
    if neg {
        v.wrapping_neg()
    } else {
        v
    }
}

/// Keys processed together in one AES batch.
const CHUNK: usize = 256;

/// Dealer: keys for `alphas.len()` comparisons; `payloads` holds `m` elements per comparison
/// (row-major). Every alpha must be below `2^n_bits`. Keys are built level by level, all side
/// by side, so that the AES calls are batched.
pub fn gen(
    n_bits: u32,
    alphas: &[u64],
    payloads: &[u64],
    m: usize,
    rng: &mut impl RngCore,
) -> Result<(DcfKeys, DcfKeys)> {
    if !(1..=64).contains(&n_bits) {
        return Err(CoreError::Param(format!("DCF on {n_bits} bits (1 to 64)")));
    }
    if !(1..=MAX_PAYLOAD).contains(&m) {
        return Err(CoreError::Param(format!(
            "DCF payload of {m} elements (1 to {MAX_PAYLOAD})"
        )));
    }
    let count = alphas.len();
    if payloads.len() != count * m {
        return Err(CoreError::Shape(format!(
            "{} payload elements for {count} comparisons of {m}",
            payloads.len()
        )));
    }
    if count > MAX_KEYS {
        return Err(CoreError::Param(format!(
            "{count} comparisons in one batch (at most {MAX_KEYS})"
        )));
    }
    if n_bits < 64 && alphas.iter().any(|&a| a >> n_bits != 0) {
        return Err(CoreError::Param(format!(
            "a threshold does not fit in {n_bits} bits"
        )));
    }
    let n = n_bits as usize;
    let aes = cipher();
    let nb = blocks_per_side(m);
    // Per key: both parties' seeds and control bits, and V_α.
    let mut s0 = vec![0u128; count];
    let mut s1 = vec![0u128; count];
    for s in s0.iter_mut().chain(s1.iter_mut()) {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        *s = u128::from_le_bytes(b) & !1;
    }
    let mut t0 = vec![0u8; count];
    let mut t1 = vec![1u8; count];
    let mut va = vec![0u64; count * m];
    let mut cw_s = vec![0u128; n * count];
    let mut cw_t = vec![0u8; n * count];
    let mut cw_v = vec![0u64; n * count * m];
    let roots = (s0.clone(), s1.clone());
    let mut buf: Vec<Block> = Vec::with_capacity(CHUNK * 4 * nb);
    // expanded[p][side] = (seed, t, values) for the current key
    let mut vals = vec![0u64; 4 * m];
    for i in 0..n {
        for c0 in (0..count).step_by(CHUNK) {
            let c1 = (c0 + CHUNK).min(count);
            buf.clear();
            for k in c0..c1 {
                for s in [s0[k], s1[k]] {
                    for side in 0..2 {
                        for j in 0..nb {
                            buf.push(to_block(s ^ tweak(side, j)));
                        }
                    }
                }
            }
            aes.encrypt_blocks(&mut buf);
            for k in c0..c1 {
                let blk = &buf[(k - c0) * 4 * nb..(k - c0 + 1) * 4 * nb];
                let mut sn = [[0u128; 2]; 2];
                let mut tn = [[0u8; 2]; 2];
                for p in 0..2 {
                    let s = if p == 0 { s0[k] } else { s1[k] };
                    for side in 0..2 {
                        let b = &blk[(2 * p + side) * nb..(2 * p + side + 1) * nb];
                        let first = from_block(&b[0]) ^ s ^ tweak(side, 0);
                        sn[p][side] = first & !1;
                        tn[p][side] = (first & 1) as u8;
                        let v = &mut vals[(2 * p + side) * m..(2 * p + side + 1) * m];
                        unpack_values(b, s, side, v);
                    }
                }
                let a_i = ((alphas[k] >> (n - 1 - i)) & 1) as usize;
                let (keep, lose) = (a_i, 1 - a_i);
                let neg = t1[k] == 1;
                let beta = &payloads[k * m..(k + 1) * m];
                let va_k = &mut va[k * m..(k + 1) * m];
                let lvl = i * count + k;
                for h in 0..m {
                    let v = |p: usize, side: usize| vals[(2 * p + side) * m + h];
                    let mut x = v(1, lose).wrapping_sub(v(0, lose)).wrapping_sub(va_k[h]);
                    if lose == 0 {
                        // α_i = 1: the left subtree lies below α
                        x = x.wrapping_add(beta[h]);
                    }
                    let vcw = sign_mul(neg, x);
                    cw_v[lvl * m + h] = vcw;
                    va_k[h] = va_k[h]
                        .wrapping_sub(v(1, keep))
                        .wrapping_add(v(0, keep))
                        .wrapping_add(sign_mul(neg, vcw));
                }
                let s_cw = sn[0][lose] ^ sn[1][lose];
                let t_l = tn[0][0] ^ tn[1][0] ^ (a_i as u8) ^ 1;
                let t_r = tn[0][1] ^ tn[1][1] ^ (a_i as u8);
                let t_keep = if keep == 0 { t_l } else { t_r };
                cw_s[lvl] = s_cw;
                cw_t[lvl] = t_l | (t_r << 1);
                s0[k] = sn[0][keep] ^ if t0[k] == 1 { s_cw } else { 0 };
                s1[k] = sn[1][keep] ^ if t1[k] == 1 { s_cw } else { 0 };
                t0[k] = tn[0][keep] ^ (t0[k] & t_keep);
                t1[k] = tn[1][keep] ^ (t1[k] & t_keep);
            }
        }
    }
    // final correction: (−1)^t1 · (Convert(s1) − Convert(s0) − V_α)
    let c0 = convert_all(&aes, &s0, m);
    let c1 = convert_all(&aes, &s1, m);
    let mut cw_final = vec![0u64; count * m];
    for (idx, f) in cw_final.iter_mut().enumerate() {
        let x = c1[idx].wrapping_sub(c0[idx]).wrapping_sub(va[idx]);
        *f = sign_mul(t1[idx / m] == 1, x);
    }
    let make = |party: u8, roots: Vec<u128>| DcfKeys {
        party,
        n_bits,
        m,
        count,
        roots,
        cw_s: cw_s.clone(),
        cw_t: cw_t.clone(),
        cw_v: cw_v.clone(),
        cw_final: cw_final.clone(),
    };
    Ok((make(0, roots.0), make(1, roots.1)))
}

/// The `m` values in the value blocks `b[1..]` expanded from seed `s` on `side`.
#[inline]
fn unpack_values(b: &[Block], s: u128, side: usize, v: &mut [u64]) {
    for (j, blk) in b.iter().enumerate().skip(1) {
        let w = from_block(blk) ^ s ^ tweak(side, j);
        let k = 2 * (j - 1);
        v[k] = w as u64;
        if k + 1 < v.len() {
            v[k + 1] = (w >> 64) as u64;
        }
    }
}

/// `Convert(s)`: `m` ring elements from each final seed.
fn convert_all(aes: &Aes128, seeds: &[u128], m: usize) -> Vec<u64> {
    let nb = blocks_per_side(m);
    let mut out = vec![0u64; seeds.len() * m];
    let mut buf: Vec<Block> = Vec::with_capacity(CHUNK * nb);
    for c0 in (0..seeds.len()).step_by(CHUNK) {
        let c1 = (c0 + CHUNK).min(seeds.len());
        buf.clear();
        for s in &seeds[c0..c1] {
            for j in 0..nb {
                buf.push(to_block(s ^ tweak(2, j)));
            }
        }
        aes.encrypt_blocks(&mut buf);
        for k in c0..c1 {
            let b = &buf[(k - c0) * nb..(k - c0 + 1) * nb];
            unpack_values(b, seeds[k], 2, &mut out[k * m..(k + 1) * m]);
        }
    }
    out
}

/// Party evaluation: `out[i·m..(i+1)·m]` receives this party's shares of
/// `payload_i · [xs[i] < alpha_i]`. Keys are walked level by level, all side by side.
pub fn eval(keys: &DcfKeys, xs: &[u64], out: &mut [u64]) -> Result<()> {
    let (n, m, count) = (keys.n_bits as usize, keys.m, keys.count);
    if xs.len() != count || out.len() != count * m {
        return Err(CoreError::Shape(format!(
            "DCF evaluation of {count} keys (m = {m}) on {} inputs into {} outputs",
            xs.len(),
            out.len()
        )));
    }
    if n < 64 && xs.iter().any(|&x| x >> n != 0) {
        return Err(CoreError::Param(format!(
            "an input does not fit in {n} bits"
        )));
    }
    let aes = cipher();
    let nb = blocks_per_side(m);
    let neg = keys.party == 1;
    let mut s: Vec<u128> = keys.roots.clone();
    let mut t: Vec<u8> = vec![keys.party; count];
    // Accumulate unsigned sums; the party's sign is applied once at the end.
    out.iter_mut().for_each(|o| *o = 0);
    let mut buf: Vec<Block> = Vec::with_capacity(CHUNK * nb);
    for i in 0..n {
        let shift = n - 1 - i;
        let lvl = i * count..(i + 1) * count;
        let (cw_s, cw_t) = (&keys.cw_s[lvl.clone()], &keys.cw_t[lvl]);
        let cw_v = &keys.cw_v[i * count * m..(i + 1) * count * m];
        for c0 in (0..count).step_by(CHUNK) {
            let c1 = (c0 + CHUNK).min(count);
            let xs_c = &xs[c0..c1];
            buf.clear();
            for (x, sk) in xs_c.iter().zip(&s[c0..c1]) {
                let side = ((x >> shift) & 1) as usize;
                buf.extend((0..nb).map(|j| to_block(sk ^ tweak(side, j))));
            }
            aes.encrypt_blocks(&mut buf);
            let rows = buf
                .chunks_exact(nb)
                .zip(xs_c)
                .zip(s[c0..c1].iter_mut().zip(t[c0..c1].iter_mut()))
                .zip(cw_s[c0..c1].iter().zip(&cw_t[c0..c1]))
                .zip(
                    cw_v[c0 * m..c1 * m]
                        .chunks_exact(m)
                        .zip(out[c0 * m..c1 * m].chunks_exact_mut(m)),
                );
            for ((((blk, x), (sk, tk)), (cws, cwt)), (vcw, o)) in rows {
                let side = ((x >> shift) & 1) as usize;
                let first = from_block(&blk[0]) ^ *sk ^ tweak(side, 0);
                // Branch-free correction: the control bit is a coin flip per key and level.
                let mask = 0u64.wrapping_sub(u64::from(*tk));
                let mask128 = 0u128.wrapping_sub(u128::from(*tk));
                for (j, b) in blk[1..].iter().enumerate() {
                    let w = from_block(b) ^ *sk ^ tweak(side, j + 1);
                    for (h, part) in [w as u64, (w >> 64) as u64].into_iter().enumerate() {
                        let idx = 2 * j + h;
                        if idx < m {
                            o[idx] = o[idx].wrapping_add(part).wrapping_add(vcw[idx] & mask);
                        }
                    }
                }
                *sk = (first & !1) ^ (cws & mask128);
                *tk = ((first & 1) as u8) ^ ((cwt >> side) & *tk & 1);
            }
        }
    }
    let conv = convert_all(&aes, &s, m);
    for (idx, o) in out.iter_mut().enumerate() {
        let mut val = o.wrapping_add(conv[idx]);
        if t[idx / m] == 1 {
            val = val.wrapping_add(keys.cw_final[idx]);
        }
        *o = sign_mul(neg, val);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prg::Prg;
    use proptest::prelude::{any, prop, prop_oneof, proptest, Just, ProptestConfig};

    fn check(n: u32, m: usize, alphas: &[u64], xs: &[u64], rng: &mut Prg) {
        let pay = rng.vec_u64(alphas.len() * m);
        let (k0, k1) = gen(n, alphas, &pay, m, rng).expect("valid");
        let (mut o0, mut o1) = (vec![0; pay.len()], vec![0; pay.len()]);
        eval(&k0, xs, &mut o0).expect("valid");
        eval(&k1, xs, &mut o1).expect("valid");
        for i in 0..alphas.len() {
            for h in 0..m {
                let want = if xs[i] < alphas[i] { pay[i * m + h] } else { 0 };
                assert_eq!(
                    o0[i * m + h].wrapping_add(o1[i * m + h]),
                    want,
                    "n={n} m={m} alpha={} x={}",
                    alphas[i],
                    xs[i]
                );
            }
        }
    }

    fn top(n: u32) -> u64 {
        if n == 64 {
            u64::MAX
        } else {
            (1u64 << n) - 1
        }
    }

    #[test]
    fn edges_for_every_width_and_payload() {
        let mut rng = Prg::from_os().expect("os rng");
        for n in [1u32, 2, 8, 40, 63, 64] {
            for m in [1usize, 2, 3] {
                let t = top(n);
                let mut alphas = Vec::new();
                let mut xs = Vec::new();
                let a = rng.vec_u64(1)[0] & t;
                for (al, x) in [
                    (a, a),
                    (a, a.wrapping_sub(1) & t),
                    (a, (a + 1) & t),
                    (0, 0),
                    (0, t),
                    (t, t),
                    (t, t - 1),
                    (t, 0),
                    (1, 0),
                ] {
                    alphas.push(al);
                    xs.push(x);
                }
                check(n, m, &alphas, &xs, &mut rng);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn matches_plain_comparison(n in prop_oneof![Just(63u32), Just(64u32), 1u32..64], m in 1usize..4,
                                    pairs in prop::collection::vec((any::<u64>(), any::<u64>()), 1..40)) {
            let mut rng = Prg::from_os().expect("os rng");
            let t = top(n);
            let alphas: Vec<u64> = pairs.iter().map(|p| p.0 & t).collect();
            // half the inputs near the threshold
            let xs: Vec<u64> = pairs.iter().enumerate().map(|(i, p)| {
                if i % 2 == 0 { p.1 & t } else { (p.0 ^ (p.1 & 7)) & t }
            }).collect();
            check(n, m, &alphas, &xs, &mut rng);
        }

        #[test]
        fn decoding_random_or_mutated_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600),
                                                          flip in any::<(usize, u8)>()) {
            let _ = DcfKeys::from_bytes(&bytes);
            let mut rng = Prg::from_os().expect("os rng");
            let (k0, _) = gen(8, &[3, 200], &[1, 2], 1, &mut rng).expect("valid");
            let mut b = k0.to_bytes();
            let i = flip.0 % b.len();
            b[i] ^= flip.1 | 1;
            if let Ok(k) = DcfKeys::from_bytes(&b) {
                let mut out = vec![0; 2];
                let _ = eval(&k, &[1, 2], &mut out);
            }
        }
    }

    #[test]
    fn keys_round_trip_and_bad_bytes_are_errors() {
        let mut rng = Prg::from_os().expect("os rng");
        let (k0, k1) = gen(63, &[5, 1 << 62], &[1, 2, 3, 4], 2, &mut rng).expect("valid");
        assert_eq!(k0.encoded_len(), k0.to_bytes().len());
        let b = k0.to_bytes();
        let back = DcfKeys::from_bytes(&b).expect("valid");
        assert_eq!(back, k0);
        for cut in [0, 5, HEADER, b.len() - 1] {
            assert!(DcfKeys::from_bytes(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = b.clone();
        long.push(0);
        assert!(DcfKeys::from_bytes(&long).is_err());
        for (at, val) in [
            (0, b'X'),
            (4, 2),
            (5, 0),
            (5, 65),
            (6, 0),
            (6, 99),
            (7, 1),
            (11, 0xff),
        ] {
            let mut bad = b.clone();
            bad[at] = val;
            assert!(DcfKeys::from_bytes(&bad).is_err(), "byte {at} = {val}");
        }
        // the two keys differ, and a second generation for the same alpha gives other keys
        assert_ne!(k0.to_bytes()[HEADER..], k1.to_bytes()[HEADER..]);
        let (k0b, _) = gen(63, &[5, 1 << 62], &[1, 2, 3, 4], 2, &mut rng).expect("valid");
        assert_ne!(k0.to_bytes(), k0b.to_bytes());
    }

    #[test]
    fn bad_arguments_are_errors() {
        let mut rng = Prg::from_os().expect("os rng");
        assert!(gen(0, &[0], &[1], 1, &mut rng).is_err());
        assert!(gen(65, &[0], &[1], 1, &mut rng).is_err());
        assert!(gen(8, &[256], &[1], 1, &mut rng).is_err());
        assert!(gen(8, &[1], &[1, 2], 1, &mut rng).is_err());
        assert!(gen(8, &[1], &[], 0, &mut rng).is_err());
        let (k0, _) = gen(8, &[1, 2], &[1, 2], 1, &mut rng).expect("valid");
        let mut out = vec![0; 2];
        assert!(eval(&k0, &[1], &mut out).is_err());
        assert!(eval(&k0, &[1, 256], &mut out).is_err());
        assert!(eval(&k0, &[1, 2], &mut [0; 3]).is_err());
    }
}

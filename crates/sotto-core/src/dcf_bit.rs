//! A distributed comparison function with a **one-bit, XOR-shared output** and early
//! termination: the keys of the compact comparisons ([`crate::protocols::Comparisons::Compact`]).
//!
//! The helper, knowing a threshold `α` on an `n`-bit domain, makes two keys. For any public
//! `x < 2^n`, `eval(k0, x) ⊕ eval(k1, x) = [x < α]`; either key alone is pseudorandom and
//! reveals nothing about `α`.
//!
//! **Construction.** The DCF of Boyle, Chandran, Gilboa, Gupta, Ishai, Kumar and Rathee
//! (*Function Secret Sharing for Mixed-Mode and Fixed-Point Secure Computation*, Eurocrypt
//! 2021, Fig. 1) with output group `G = Z_2` and payload `β = 1`, walking the bits of `x` from
//! the most significant one, as [`crate::dcf`] does. In `Z_2` every sign `(−1)^t` of the
//! construction is 1 and a value correction is one bit. Three changes:
//!
//! 1. **Early termination** (the trick of Boyle, Gilboa and Ishai, *Function Secret Sharing:
//!    Improvements and Extensions*, CCS 2016, §3.2, for DPFs; used for one-bit DCFs by Orca,
//!    Jawalkar et al., S&P 2024): the tree stops `ν = min(n, 7)` levels early. The seed
//!    reached at depth `n − ν` is expanded into one 128-bit block whose bit `j` stands for
//!    the leaf `j` of the `2^ν = 128`-leaf subtree below it; a single 128-bit final
//!    correction `CW = Convert(s0) ⊕ Convert(s1) ⊕ V_α·1^128 ⊕ [j < α mod 2^ν]_j` (masked to
//!    the `2^ν` leaves used) replaces the last seven levels' corrections and the final word.
//!    On α's path the two parties' control bits differ, so their outputs XOR to
//!    `V_α ⊕ V_α ⊕ [x mod 2^ν < α mod 2^ν]`; off the path the seeds and control bits agree
//!    from the level where `x` left it, so everything after cancels, as in the full-depth
//!    tree.
//! 2. **Packed corrections.** Seeds carry 125 bits (bit 0 of an expanded block is the
//!    control bit `t`, bit 1 the value bit `v`, bit 2 is dropped); a level's correction word
//!    is `s_cw` with the two control-bit corrections `t_L`, `t_R` in its bits 0 and 1 (as in
//!    the packed `DCF2` of [`crate::dcf`], after LLAMA's implementation) and the one-bit value
//!    correction `V_cw` in bit 2. A level costs exactly 16 bytes.
//! 3. **One AES block per step.** A child's seed, control bit and value bit all come from
//!    one block, `H(s, σ) = AES_k(s ⊕ τ_σ) ⊕ s ⊕ τ_σ` (fixed-key AES in MMO mode with a
//!    per-side tweak, [`crate::dcf`]'s PRG), so evaluation costs `n − ν + 1` AES blocks and
//!    generation `4(n − ν) + 2`.
//!
//! **Security.** Theorem 3.2 of Boyle et al. simulates a single key from uniform seeds and
//! corrections given a secure PRG; it holds for any abelian output group, `Z_2` included.
//! Here the PRG is `G(s) = H(s, 0) ‖ H(s, 1)` with 125-bit seeds (λ = 125): each child seed
//! is 125 uniform bits of output, the control and value bits are further output bits, and
//! the leaf block is `H(s, 2)`, one more output block of the same PRG (domain-separated
//! tweak). Early termination changes only what the last PRG output is used for: the key's
//! final correction is the XOR of the two parties' leaf blocks, which are PRG outputs at a
//! seed the other party cannot compute, hence pseudorandom to each key holder, exactly like
//! the final correction of the full-depth tree (Boyle, Gilboa and Ishai's argument for the
//! early-terminated DPF). The packing stores pseudorandom correction bits in bits of `s_cw`
//! that the seeds do not use; nothing else is revealed. Modelling fixed-key AES as a random
//! permutation for such PRGs follows Guo, Katz, Wang and Yu (S&P 2020), as for
//! [`crate::dcf`]. A single key therefore reveals nothing about `α`.
//!
//! **Wire format** (`DCFB`): a 12-byte header — magic `DCFB`, party (0 or 1), `n` (1 to 64),
//! `ν = min(n, 7)`, a reserved 0 byte, the key count (u32, little-endian) — then the roots
//! (16 bytes per key, the three low bits 0), the level corrections level-major (level `i` of
//! every key, then level `i + 1`; `n − ν` levels of 16 bytes) and the final corrections (16
//! bytes per key, the bits beyond leaf `2^ν − 1` zero). All integers little-endian. Key size
//! per comparison and party: **`32 + 16·max(n − 7, 0)` bytes** (n = 39: 544 bytes; n = 31:
//! 416; n = 63: 928), against `16 + n·(16 + 8m) + 8m` for `DCF2` (n = 39, m = 2: 1,280).
//! [`BitKeys::from_bytes`] checks all of it and refuses anything else with an error.

use aes::cipher::BlockEncrypt;
use aes::Block;
use rand_core::RngCore;

use crate::dcf::{
    cipher, from_block, per_worker, read_u128, run_split, split_levels, to_block, tweak,
    write_u128, Parallelism, CHUNK, HEADER, MAX_KEYS, WINDOW,
};
use crate::error::{CoreError, Result};

const MAGIC: [u8; 4] = *b"DCFB";
/// Levels replaced by the expanded leaf block (`2^7 = 128` output bits per block).
pub const LEAF_LEVELS: u32 = 7;
/// Seeds use bits 3..128; bits 0, 1, 2 of a correction word carry `t_L`, `t_R`, `V_cw`.
pub(crate) const SEED_MASK: u128 = !7;

/// Levels replaced by the leaf block for an `n`-bit domain.
#[inline]
pub(crate) fn nu(n: usize) -> usize {
    n.min(LEAF_LEVELS as usize)
}

/// The leaf bits used for `ν` leaf levels.
#[inline]
pub(crate) fn leaf_mask(nu: usize) -> u128 {
    if nu >= 7 {
        u128::MAX
    } else {
        (1u128 << (1usize << nu)) - 1
    }
}

/// Bytes per comparison and party of keys on an `n_bits`-bit domain: `32 + 16·max(n − 7, 0)`
/// (the encoding adds a 12-byte header per batch).
pub fn key_bytes(n_bits: u32) -> usize {
    32 + 16 * (n_bits as usize).saturating_sub(LEAF_LEVELS as usize)
}

/// Byte offsets of the parts of an encoding.
#[derive(Clone, Copy)]
struct Layout {
    levels: usize,
    count: usize,
}

impl Layout {
    fn roots(self) -> usize {
        HEADER
    }
    fn cws(self) -> usize {
        self.roots() + 16 * self.count
    }
    fn finals(self) -> usize {
        self.cws() + 16 * self.levels * self.count
    }
    fn total(self) -> usize {
        self.finals() + 16 * self.count
    }
}

/// A validated encoding, borrowed: what evaluation reads.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub(crate) party: u8,
    pub(crate) n: usize,
    pub(crate) count: usize,
    pub(crate) roots: &'a [u8],
    pub(crate) cws: &'a [u8],
    pub(crate) finals: &'a [u8],
}

impl<'a> View<'a> {
    fn of(bytes: &'a [u8], party: u8, n: usize, count: usize) -> View<'a> {
        let l = Layout {
            levels: n - nu(n),
            count,
        };
        View {
            party,
            n,
            count,
            roots: &bytes[l.roots()..l.cws()],
            cws: &bytes[l.cws()..l.finals()],
            finals: &bytes[l.finals()..l.total()],
        }
    }
}

/// Checks an encoding completely (header, length, unused bits zero).
fn parse(bytes: &[u8]) -> Result<View<'_>> {
    let bad = |r: String| CoreError::decode("one-bit DCF keys", r);
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
    if party > 1 {
        return Err(bad(format!("party {party}")));
    }
    let n = bytes[5] as usize;
    if !(1..=64).contains(&n) {
        return Err(bad(format!("{n}-bit domain")));
    }
    if bytes[6] as usize != nu(n) {
        return Err(bad(format!(
            "{} leaf levels where {} were expected",
            bytes[6],
            nu(n)
        )));
    }
    if bytes[7] != 0 {
        return Err(bad("reserved byte is not zero".into()));
    }
    let count = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
    if count > MAX_KEYS {
        return Err(bad(format!("{count} keys (at most {MAX_KEYS})")));
    }
    let want = count
        .checked_mul(key_bytes(n as u32))
        .and_then(|b| b.checked_add(HEADER));
    if want != Some(bytes.len()) {
        return Err(bad(format!(
            "{} bytes where {} were expected",
            bytes.len(),
            want.map_or_else(|| "more than fit in memory".to_string(), |w| w.to_string())
        )));
    }
    let v = View::of(bytes, party, n, count);
    if v.roots.chunks_exact(16).any(|r| r[0] & 7 != 0) {
        return Err(bad("a root seed has its low bits set".into()));
    }
    let unused = !leaf_mask(nu(n));
    if unused != 0 && (0..count).any(|i| read_u128(v.finals, i) & unused != 0) {
        return Err(bad("a final correction has bits beyond its leaves".into()));
    }
    Ok(v)
}

/// One party's keys for `count` independent one-bit comparisons `[x < α]` on an `n`-bit
/// domain. It holds its encoding (`DCFB`, see the module docs) and evaluates from it.
#[derive(Clone, PartialEq, Eq)]
pub struct BitKeys {
    party: u8,
    n_bits: u32,
    count: usize,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for BitKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BitKeys(party {}, {} keys, {} bits)",
            self.party, self.count, self.n_bits
        )
    }
}

impl BitKeys {
    /// The party (0 or 1) these keys belong to.
    pub fn party(&self) -> u8 {
        self.party
    }
    /// Bits of the domain.
    pub fn n_bits(&self) -> u32 {
        self.n_bits
    }
    /// Number of comparisons.
    pub fn len(&self) -> usize {
        self.count
    }
    /// True when there is no comparison.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Length of [`BitKeys::to_bytes`]: `12 + count · key_bytes(n)`.
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }
    /// The `DCFB` encoding (module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }
    /// The encoding, borrowed.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The encoding, without a copy.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
    /// Decodes untrusted bytes; every malformation is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_vec(bytes.to_vec())
    }
    /// Decodes untrusted bytes it takes over (no copy); every malformation is an error.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self> {
        let v = parse(&bytes)?;
        let (party, n_bits, count) = (v.party, v.n as u32, v.count);
        Ok(BitKeys {
            party,
            n_bits,
            count,
            bytes,
        })
    }
    fn view(&self) -> View<'_> {
        View::of(&self.bytes, self.party, self.n_bits as usize, self.count)
    }
}

/// Dealer: key pairs for `[x < α]` for every `α` of `alphas` (each below `2^n_bits`). Large
/// batches use every core ([`Parallelism::auto`]); the keys equal [`gen_with`]'s with
/// [`Parallelism::SEQUENTIAL`] given the same generator state.
pub fn gen(n_bits: u32, alphas: &[u64], rng: &mut impl RngCore) -> Result<(BitKeys, BitKeys)> {
    gen_with(n_bits, alphas, rng, Parallelism::auto())
}

/// [`gen`] with an explicit [`Parallelism`]. All randomness (the roots) is drawn before the
/// batch is split, so the keys do not depend on the split.
pub fn gen_with(
    n_bits: u32,
    alphas: &[u64],
    rng: &mut impl RngCore,
    par: Parallelism,
) -> Result<(BitKeys, BitKeys)> {
    let (mut b0, mut b1) = (Vec::new(), Vec::new());
    gen_into(n_bits, alphas, rng, par, &mut b0, &mut b1)?;
    let make = |party: u8, bytes: Vec<u8>| BitKeys {
        party,
        n_bits,
        count: alphas.len(),
        bytes,
    };
    Ok((make(0, b0), make(1, b1)))
}

/// [`gen_with`] that appends the two keys' encodings to `out0` (party 0's) and `out1`
/// instead of returning them (as [`crate::dcf::gen_into`]: one copy instead of a fresh
/// buffer per key, a clone and a copy of each). On an error nothing is appended.
pub fn gen_into(
    n_bits: u32,
    alphas: &[u64],
    rng: &mut impl RngCore,
    par: Parallelism,
    out0: &mut Vec<u8>,
    out1: &mut Vec<u8>,
) -> Result<()> {
    if !(1..=64).contains(&n_bits) {
        return Err(CoreError::Param(format!(
            "one-bit DCF on {n_bits} bits (1 to 64)"
        )));
    }
    let count = alphas.len();
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
    let l = Layout {
        levels: n - nu(n),
        count,
    };
    let start = out0.len();
    out0.resize(start + l.total(), 0);
    let b0 = &mut out0[start..];
    b0[..4].copy_from_slice(&MAGIC);
    b0[5] = n_bits as u8;
    b0[6] = nu(n) as u8;
    b0[8..12].copy_from_slice(&(count as u32).to_le_bytes());
    // All the randomness first: both parties' roots (the low bits clear).
    let mut roots1 = vec![0u8; 16 * count];
    rng.fill_bytes(&mut b0[l.roots()..l.cws()]);
    rng.fill_bytes(&mut roots1);
    for r in b0[l.roots()..l.cws()]
        .chunks_exact_mut(16)
        .chain(roots1.chunks_exact_mut(16))
    {
        r[0] &= SEED_MASK as u8;
    }
    if count > 0 {
        let (head, rest) = b0.split_at_mut(l.cws());
        let roots0: &[u8] = &head[l.roots()..];
        let (cws, finals) = rest.split_at_mut(l.finals() - l.cws());
        let workers = par.workers(count);
        let per = per_worker(count, workers);
        let mut outs: Vec<(Vec<&mut [u8]>, &mut [u8])> = split_levels(cws, count, 16, per, workers)
            .into_iter()
            .zip(finals.chunks_mut(16 * per))
            .collect();
        let job = GenJob {
            n,
            alphas,
            roots0,
            roots1: &roots1,
        };
        run_split(&mut outs, per, |first, (cw, fin)| job.run(first, cw, fin));
    }
    let at = out1.len();
    out1.extend_from_slice(&out0[start..]);
    let b1 = &mut out1[at..];
    b1[4] = 1;
    b1[l.roots()..l.cws()].copy_from_slice(&roots1);
    Ok(())
}

/// Inputs of a key generation.
pub(crate) struct GenJob<'a> {
    pub(crate) n: usize,
    pub(crate) alphas: &'a [u64],
    pub(crate) roots0: &'a [u8],
    pub(crate) roots1: &'a [u8],
}

/// `H(s, σ)`: the expanded block of side `σ` (0 left, 1 right, 2 leaf).
#[inline(always)]
fn unmask(b: &Block, s: u128, side: usize) -> u128 {
    from_block(b) ^ s ^ tweak(side, 0)
}

impl GenJob<'_> {
    /// Generates the keys `first..first + len` into `cw` (one slice per level) and `fin`: in
    /// the VAES build where the processor has it ([`crate::simd`]), up to a multiple of
    /// sixteen keys, the rest (or all) with [`GenJob::run_body`]. Both write the same bytes.
    fn run(&self, first: usize, cw: &mut [&mut [u8]], fin: &mut [u8]) {
        let len = fin.len() / 16;
        let done = crate::simd::dcf_bit_gen(self, first, cw, fin);
        if done < len {
            let mut tail: Vec<&mut [u8]> = cw.iter_mut().map(|c| &mut c[16 * done..]).collect();
            self.run_body(first + done, &mut tail, &mut fin[16 * done..]);
        }
    }

    /// The portable generation of the keys `first..first + len` into `cw` (one slice per
    /// level) and `fin`: windows of [`WINDOW`] / 2 keys walk the levels one after the other,
    /// [`CHUNK`] keys per AES call.
    pub(crate) fn run_body(&self, first: usize, cw: &mut [&mut [u8]], fin: &mut [u8]) {
        let n = self.n;
        let nu = nu(n);
        let levels = n - nu;
        let low = (1u64 << nu) - 1;
        let lmask = leaf_mask(nu);
        let len = fin.len() / 16;
        let aes = cipher();
        let gw = WINDOW / 2;
        let win = gw.min(len);
        let mut buf = vec![Block::default(); CHUNK * 4];
        let mut s = [vec![0u128; win], vec![0u128; win]];
        let mut t = [vec![0u8; win], vec![1u8; win]];
        let mut va = vec![0u8; win];
        for w0 in (0..len).step_by(gw) {
            let w1 = (w0 + gw).min(len);
            for i in 0..w1 - w0 {
                s[0][i] = read_u128(self.roots0, first + w0 + i) & SEED_MASK;
                s[1][i] = read_u128(self.roots1, first + w0 + i) & SEED_MASK;
                t[0][i] = 0;
                t[1][i] = 1;
                va[i] = 0;
            }
            for (lvl, out) in cw.iter_mut().enumerate().take(levels) {
                let shift = n - 1 - lvl;
                for c0 in (w0..w1).step_by(CHUNK) {
                    let c1 = (c0 + CHUNK).min(w1);
                    let bl = &mut buf[..(c1 - c0) * 4];
                    for (row, k) in bl.chunks_exact_mut(4).zip(c0..c1) {
                        for (j, b) in row.iter_mut().enumerate() {
                            *b = to_block(s[j / 2][k - w0] ^ tweak(j % 2, 0));
                        }
                    }
                    aes.encrypt_blocks(bl);
                    for (row, k) in bl.chunks_exact(4).zip(c0..c1) {
                        let i = k - w0;
                        let a = ((self.alphas[first + k] >> shift) & 1) as usize;
                        let (keep, lose) = (a, 1 - a);
                        let mut w = [[0u128; 2]; 2];
                        for p in 0..2 {
                            for side in 0..2 {
                                w[p][side] = unmask(&row[2 * p + side], s[p][i], side);
                            }
                        }
                        let bit = |x: u128, j: u32| ((x >> j) & 1) as u8;
                        let s_cw = (w[0][lose] ^ w[1][lose]) & SEED_MASK;
                        // V_cw = v0 ⊕ v1 (losing children) ⊕ V_α ⊕ β·[losing child is left].
                        let v_cw = bit(w[0][lose] ^ w[1][lose], 1) ^ va[i] ^ a as u8;
                        va[i] ^= bit(w[0][keep] ^ w[1][keep], 1) ^ v_cw;
                        let t_l = bit(w[0][0] ^ w[1][0], 0) ^ a as u8 ^ 1;
                        let t_r = bit(w[0][1] ^ w[1][1], 0) ^ a as u8;
                        let t_keep = if keep == 0 { t_l } else { t_r };
                        let word = s_cw
                            | u128::from(t_l)
                            | (u128::from(t_r) << 1)
                            | (u128::from(v_cw) << 2);
                        write_u128(out, k, word);
                        for p in 0..2 {
                            let m128 = 0u128.wrapping_sub(u128::from(t[p][i]));
                            s[p][i] = (w[p][keep] & SEED_MASK) ^ (s_cw & m128);
                            t[p][i] = bit(w[p][keep], 0) ^ (t[p][i] & t_keep);
                        }
                    }
                }
            }
            // The leaf blocks: CW = Convert(s0) ⊕ Convert(s1) ⊕ V_α·1 ⊕ [j < α mod 2^ν].
            for c0 in (w0..w1).step_by(CHUNK) {
                let c1 = (c0 + CHUNK).min(w1);
                let bl = &mut buf[..(c1 - c0) * 2];
                for (row, k) in bl.chunks_exact_mut(2).zip(c0..c1) {
                    for (p, b) in row.iter_mut().enumerate() {
                        *b = to_block(s[p][k - w0] ^ tweak(2, 0));
                    }
                }
                aes.encrypt_blocks(bl);
                for (row, k) in bl.chunks_exact(2).zip(c0..c1) {
                    let i = k - w0;
                    let a_low = self.alphas[first + k] & low;
                    let below = (1u128 << a_low) - 1;
                    let all = 0u128.wrapping_sub(u128::from(va[i]));
                    let c = unmask(&row[0], s[0][i], 2) ^ unmask(&row[1], s[1][i], 2);
                    write_u128(fin, k, (c ^ all ^ below) & lmask);
                }
            }
        }
    }
}

/// One level of evaluation for one key: `w` is the expanded block `H(s, side)` of the key's
/// seed `s` on the side `side` (bit of the input at this level), `cwb` the level's correction
/// word; updates the seed, the control bit `t` and the running output bit `o`. Branch-free:
/// the control bit is a coin flip per key and level.
#[inline(always)]
fn level_step(w: u128, side: u32, cwb: &[u8], s: &mut u128, t: &mut u8, o: &mut u8) {
    let mut a = [0u8; 16];
    a.copy_from_slice(cwb);
    let cw = u128::from_le_bytes(a);
    let m128 = 0u128.wrapping_sub(u128::from(*t));
    let cb = cw as u8;
    *o ^= ((w >> 1) as u8 ^ (cb >> 2 & *t)) & 1;
    *s = (w & SEED_MASK) ^ (cw & SEED_MASK & m128);
    *t = (w as u8 ^ (cb >> side & *t)) & 1;
}

/// The build [`eval`] runs on this processor: `"avx512+vaes"`, `"avx512"` or `"portable"`
/// (`SOTTO_SIMD=0` forces the portable one; the outputs are the same).
pub fn eval_build() -> &'static str {
    crate::simd::key_eval_kernel().unwrap_or("portable")
}

/// Party evaluation: `out[i]` (0 or 1) receives this party's XOR share of
/// `[xs[i] < alpha_i]`. Large batches use every core ([`Parallelism::auto`]); the output does
/// not depend on the split.
pub fn eval(keys: &BitKeys, xs: &[u64], out: &mut [u8]) -> Result<()> {
    eval_with(keys, xs, out, Parallelism::auto())
}

/// [`eval`] with an explicit [`Parallelism`].
pub fn eval_with(keys: &BitKeys, xs: &[u64], out: &mut [u8], par: Parallelism) -> Result<()> {
    eval_view(&keys.view(), xs, out, par)
}

/// [`eval`] straight from an encoding ([`BitKeys::to_bytes`]): the bytes are validated as
/// [`BitKeys::from_bytes`] does, then read in place.
pub fn eval_bytes(bytes: &[u8], xs: &[u64], out: &mut [u8], par: Parallelism) -> Result<()> {
    eval_view(&parse(bytes)?, xs, out, par)
}

fn eval_view(v: &View<'_>, xs: &[u64], out: &mut [u8], par: Parallelism) -> Result<()> {
    let (n, count) = (v.n, v.count);
    if xs.len() != count || out.len() != count {
        return Err(CoreError::Shape(format!(
            "one-bit DCF evaluation of {count} keys on {} inputs into {} outputs",
            xs.len(),
            out.len()
        )));
    }
    if n < 64 && xs.iter().any(|&x| x >> n != 0) {
        return Err(CoreError::Param(format!(
            "an input does not fit in {n} bits"
        )));
    }
    if count == 0 {
        return Ok(());
    }
    let per = per_worker(count, par.workers(count));
    let mut parts: Vec<(&[u64], &mut [u8])> = xs.chunks(per).zip(out.chunks_mut(per)).collect();
    run_split(&mut parts, per, |first, (x, o)| eval_range(v, first, x, o));
    Ok(())
}

/// Evaluates the keys `first..first + xs.len()`: windows of [`WINDOW`] keys walk the levels
/// one after the other (each level's corrections of a window are read in one sequential run),
/// [`CHUNK`] keys per AES call.
fn eval_range(v: &View<'_>, first: usize, xs: &[u64], out: &mut [u8]) {
    if !crate::simd::dcf_bit_eval(v, first, xs, out) {
        eval_range_body(v, first, xs, out)
    }
}

/// [`eval_range`]'s portable body (also compiled for AVX-512 in [`crate::simd`]).
#[inline(always)]
pub(crate) fn eval_range_body(v: &View<'_>, first: usize, xs: &[u64], out: &mut [u8]) {
    let (n, count) = (v.n, v.count);
    let nu = nu(n);
    let levels = n - nu;
    let low = (1u64 << nu) - 1;
    let aes = cipher();
    let win = WINDOW.min(xs.len());
    let mut buf = vec![Block::default(); CHUNK];
    let mut s = vec![0u128; win];
    let mut t = vec![0u8; win];
    for (w, (xw, ow)) in xs.chunks(WINDOW).zip(out.chunks_mut(WINDOW)).enumerate() {
        let base = first + w * WINDOW;
        let len = xw.len();
        let (s, t) = (&mut s[..len], &mut t[..len]);
        for (i, (sk, tk)) in s.iter_mut().zip(t.iter_mut()).enumerate() {
            *sk = read_u128(v.roots, base + i) & SEED_MASK;
            *tk = v.party;
        }
        // The running value bits V, kept in the output.
        ow.fill(0);
        for lvl in 0..levels {
            let shift = n - 1 - lvl;
            let at = lvl * count + base;
            let cws = &v.cws[16 * at..16 * (at + len)];
            for c0 in (0..len).step_by(CHUNK) {
                let c1 = (c0 + CHUNK).min(len);
                let bl = &mut buf[..c1 - c0];
                // The chunk's slices, all of one length: no bounds checks in the loops.
                let (xc, sc) = (&xw[c0..c1], &mut s[c0..c1]);
                let (tc, oc) = (&mut t[c0..c1], &mut ow[c0..c1]);
                let cc = &cws[16 * c0..16 * c1];
                for ((b, x), sk) in bl.iter_mut().zip(xc).zip(sc.iter()) {
                    *b = to_block(sk ^ tweak(((x >> shift) & 1) as usize, 0));
                }
                aes.encrypt_blocks(bl);
                let rows = bl.iter().zip(xc).zip(sc.iter_mut());
                for ((((b, x), sk), (tk, ok)), cwb) in rows
                    .zip(tc.iter_mut().zip(oc.iter_mut()))
                    .zip(cc.chunks_exact(16))
                {
                    let side = ((x >> shift) & 1) as u32;
                    let w = unmask(b, *sk, side as usize);
                    level_step(w, side, cwb, sk, tk, ok);
                }
            }
        }
        // The leaf block, corrected, and bit `x mod 2^ν` of it.
        for c0 in (0..len).step_by(CHUNK) {
            let c1 = (c0 + CHUNK).min(len);
            let bl = &mut buf[..c1 - c0];
            for (b, sk) in bl.iter_mut().zip(&s[c0..c1]) {
                *b = to_block(sk ^ tweak(2, 0));
            }
            aes.encrypt_blocks(bl);
            for (b, i) in bl.iter().zip(c0..c1) {
                let m128 = 0u128.wrapping_sub(u128::from(t[i]));
                let leaf = unmask(b, s[i], 2) ^ (read_u128(v.finals, base + i) & m128);
                ow[i] ^= (leaf >> (xw[i] & low)) as u8 & 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prg::{Prg, Seed};
    use proptest::prelude::{any, prop, prop_assert, prop_oneof, proptest, Just, ProptestConfig};

    fn top(n: u32) -> u64 {
        if n == 64 {
            u64::MAX
        } else {
            (1u64 << n) - 1
        }
    }

    /// The dealer's path: `gen_into` appends to messages that already hold bytes exactly the
    /// encodings `gen_with` returns from the same generator state; an error appends nothing.
    #[test]
    fn gen_into_appends_gen_with_encodings() {
        let seed = Seed::random().expect("os rng");
        let mut data = Prg::new(&seed, 1);
        for (n, count) in [(1u32, 3usize), (17, 100), (40, 5000), (64, 9)] {
            let alphas: Vec<u64> = data.vec_u64(count).iter().map(|&a| a & top(n)).collect();
            let (k0, k1) =
                gen_with(n, &alphas, &mut Prg::new(&seed, 2), Parallelism::auto()).expect("valid");
            let (mut m0, mut m1) = (vec![7u8; 5], vec![9u8; 3]);
            gen_into(
                n,
                &alphas,
                &mut Prg::new(&seed, 2),
                Parallelism::auto(),
                &mut m0,
                &mut m1,
            )
            .expect("valid");
            assert_eq!(
                (&m0[..5], &m0[5..]),
                (&[7u8; 5][..], k0.as_bytes()),
                "n={n}"
            );
            assert_eq!(
                (&m1[..3], &m1[3..]),
                (&[9u8; 3][..], k1.as_bytes()),
                "n={n}"
            );
        }
        let (mut m0, mut m1) = (vec![1u8], vec![2u8]);
        let bad = gen_into(3, &[8], &mut data, Parallelism::auto(), &mut m0, &mut m1);
        assert!(bad.is_err());
        assert_eq!((m0, m1), (vec![1u8], vec![2u8]));
    }

    fn check(n: u32, alphas: &[u64], xs: &[u64], rng: &mut Prg) {
        let (k0, k1) = gen(n, alphas, rng).expect("valid");
        assert_eq!(k0.encoded_len(), HEADER + alphas.len() * key_bytes(n));
        assert_eq!(&k0.as_bytes()[..4], b"DCFB");
        let (mut o0, mut o1) = (vec![9u8; xs.len()], vec![9u8; xs.len()]);
        eval(&k0, xs, &mut o0).expect("valid");
        eval(&k1, xs, &mut o1).expect("valid");
        for i in 0..xs.len() {
            assert!(o0[i] <= 1 && o1[i] <= 1);
            assert_eq!(
                o0[i] ^ o1[i],
                u8::from(xs[i] < alphas[i]),
                "n={n} alpha={} x={}",
                alphas[i],
                xs[i]
            );
        }
    }

    /// The boundary points of the brief: α − 1, α, α + 1, 0, 2^n − 1, for random α and for
    /// α at 0, 1, the top, and the leaf-block edges (multiples of 128 and their neighbours).
    #[test]
    fn boundary_points_for_every_width() {
        let mut rng = Prg::from_os().expect("os rng");
        for n in (1u32..=64).chain([39, 39, 40, 63, 64]) {
            let t = top(n);
            let mut specials = vec![0, 1, t, (t - 1) & t, 127 & t, 128 & t, 129 & t, 255 & t];
            specials.extend(rng.vec_u64(4).iter().map(|v| v & t));
            specials.push(rng.vec_u64(1)[0] & t & !127);
            let (mut alphas, mut xs) = (Vec::new(), Vec::new());
            for &a in &specials {
                for x in [a.wrapping_sub(1) & t, a, a.wrapping_add(1) & t, 0, t] {
                    alphas.push(a);
                    xs.push(x);
                }
            }
            check(n, &alphas, &xs, &mut rng);
        }
    }

    #[test]
    fn sizes_follow_the_formula() {
        assert_eq!(key_bytes(39), 544, "a 40-bit comparison");
        assert_eq!(key_bytes(31), 416);
        assert_eq!(key_bytes(63), 928);
        assert_eq!(key_bytes(7), 32);
        assert_eq!(key_bytes(1), 32);
        let mut rng = Prg::from_os().expect("os rng");
        for n in [1u32, 6, 7, 8, 39, 64] {
            let (k0, k1) = gen(n, &[0, 0, 0], &mut rng).expect("valid");
            assert_eq!(
                k0.encoded_len(),
                12 + 3 * (32 + 16 * (n as usize).saturating_sub(7))
            );
            assert_eq!(k1.encoded_len(), k0.encoded_len());
            assert_ne!(k0.as_bytes()[12..], k1.as_bytes()[12..]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn matches_plain_comparison(n in prop_oneof![Just(39u32), Just(63u32), Just(64u32), 1u32..64],
                                    pairs in prop::collection::vec((any::<u64>(), any::<u64>()), 1..60)) {
            let mut rng = Prg::from_os().expect("os rng");
            let t = top(n);
            let alphas: Vec<u64> = pairs.iter().map(|p| p.0 & t).collect();
            // half the inputs near the threshold (same high bits, or the same leaf block)
            let xs: Vec<u64> = pairs.iter().enumerate().map(|(i, p)| match i % 3 {
                0 => p.1 & t,
                1 => (p.0 ^ (p.1 & 7)) & t,
                _ => (p.0 ^ (p.1 & 0x3ff)) & t,
            }).collect();
            check(n, &alphas, &xs, &mut rng);
        }

        #[test]
        fn decoding_random_or_mutated_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600),
                                                          flip in any::<(usize, u8)>(),
                                                          n in prop_oneof![Just(3u32), Just(9u32), 1u32..65]) {
            let _ = BitKeys::from_bytes(&bytes);
            let mut rng = Prg::from_os().expect("os rng");
            let (k0, _) = gen_with(n, &[0, 1], &mut rng, Parallelism::SEQUENTIAL).expect("valid");
            let mut b = k0.to_bytes();
            let i = flip.0 % b.len();
            b[i] ^= flip.1 | 1;
            if let Ok(k) = BitKeys::from_bytes(&b) {
                let mut out = vec![0; 2];
                let _ = eval(&k, &[1, 0], &mut out);
                prop_assert!(out.iter().all(|&o| o <= 1));
            }
            prop_assert!(crate::dcf::DcfKeys::from_bytes(&k0.to_bytes()).is_err(), "not a DCF1/DCF2 batch");
        }
    }

    #[test]
    fn malformed_bytes_are_errors() {
        let mut rng = Prg::from_os().expect("os rng");
        for n in [5u32, 39] {
            let (k0, _) = gen(n, &[5, 17], &mut rng).expect("valid");
            let b = k0.to_bytes();
            assert_eq!(BitKeys::from_bytes(&b).expect("valid"), k0);
            assert_eq!(BitKeys::from_vec(b.clone()).expect("valid"), k0);
            for cut in [0, 3, 11, HEADER, b.len() - 16, b.len() - 1] {
                assert!(BitKeys::from_bytes(&b[..cut]).is_err(), "cut at {cut}");
            }
            let mut long = b.clone();
            long.push(0);
            assert!(BitKeys::from_bytes(&long).is_err());
            for (at, val) in [
                (0, b'X'),
                (3, b'1'),
                (4, 2),
                (5, 0),
                (5, 65),
                (5, n as u8 + 1),
                (6, 0),
                (6, 8),
                (7, 1),
                (8, 3),
                (11, 0xff),
                (HEADER, b[HEADER] | 1),
                (HEADER + 16, b[HEADER + 16] | 4),
            ] {
                let mut bad = b.clone();
                bad[at] = val;
                assert!(
                    BitKeys::from_bytes(&bad).is_err(),
                    "n={n}: byte {at} = {val}"
                );
            }
            if n < 7 {
                // bits of the final correction beyond the 2^n leaves
                let mut bad = b.clone();
                let last = bad.len() - 1;
                bad[last] |= 0x80;
                assert!(BitKeys::from_bytes(&bad).is_err());
            }
            // evaluation straight from bytes validates them too
            let mut out = [0u8; 2];
            assert!(eval_bytes(&b[1..], &[1, 2], &mut out, Parallelism::SEQUENTIAL).is_err());
            eval_bytes(&b, &[1, 2], &mut out, Parallelism::SEQUENTIAL).expect("valid");
        }
        // DCF2 bytes are not DCFB bytes
        let (p0, _) = crate::dcf::gen_with(
            39,
            &[5],
            &[1],
            1,
            &mut rng,
            Parallelism::SEQUENTIAL,
            crate::dcf::Format::Packed,
        )
        .expect("valid");
        assert!(BitKeys::from_bytes(p0.as_bytes()).is_err());
        let mut renamed = p0.to_bytes();
        renamed[..4].copy_from_slice(b"DCFB");
        assert!(BitKeys::from_bytes(&renamed).is_err());
    }

    #[test]
    fn bad_arguments_are_errors() {
        let mut rng = Prg::from_os().expect("os rng");
        assert!(gen(0, &[0], &mut rng).is_err());
        assert!(gen(65, &[0], &mut rng).is_err());
        assert!(gen(8, &[256], &mut rng).is_err());
        let (k0, _) = gen(8, &[1, 2], &mut rng).expect("valid");
        assert!(eval(&k0, &[1], &mut [0; 2]).is_err());
        assert!(eval(&k0, &[1, 256], &mut [0; 2]).is_err());
        assert!(eval(&k0, &[1, 2], &mut [0; 3]).is_err());
        let (e0, _) = gen(12, &[], &mut rng).expect("valid");
        assert!(e0.is_empty());
        eval(&e0, &[], &mut []).expect("valid");
        assert_eq!(BitKeys::from_vec(e0.to_bytes()).expect("valid"), e0);
    }

    /// `count` random thresholds and as many random inputs on `n` bits, from stream 1 of `seed`.
    fn thresholds_and_inputs(seed: &Seed, n: u32, count: usize) -> (Vec<u64>, Vec<u64>) {
        let mut data = Prg::new(seed, 1);
        let t = top(n);
        let alphas = data.vec_u64(count).iter().map(|a| a & t).collect();
        let xs = data.vec_u64(count).iter().map(|a| a & t).collect();
        (alphas, xs)
    }

    /// The AVX-512 build of the evaluation (where this processor has it) against the portable
    /// build, called directly, for both parties' keys, widths 3 to 64 and counts that end
    /// windows and AES chunks at different places.
    /// The VAES generation (where this processor has it) writes exactly the portable
    /// generation's corrections, for key ranges that start anywhere and of any length.
    #[test]
    fn vaes_generation_equals_portable() {
        let seed = Seed::random().expect("os rng");
        for (n, count) in [
            (39u32, 600usize),
            (23, 100),
            (16, 33),
            (64, 50),
            (8, 40),
            (7, 20),
        ] {
            let (alphas, _) = thresholds_and_inputs(&seed, n, count);
            let mut data = Prg::new(&seed, 3);
            let mut roots0 = vec![0u8; 16 * count];
            let mut roots1 = vec![0u8; 16 * count];
            data.fill_bytes(&mut roots0);
            data.fill_bytes(&mut roots1);
            let job = GenJob {
                n: n as usize,
                alphas: &alphas,
                roots0: &roots0,
                roots1: &roots1,
            };
            let levels = n as usize - nu(n as usize);
            for from in [0, 5, count / 2] {
                let len = count - from;
                let make = |vaes: bool| {
                    let mut cws = vec![0u8; levels.max(1) * 16 * len];
                    let mut fin = vec![0u8; 16 * len];
                    let mut cw: Vec<&mut [u8]> = cws.chunks_mut(16 * len).take(levels).collect();
                    if vaes {
                        job.run(from, &mut cw, &mut fin);
                    } else {
                        job.run_body(from, &mut cw, &mut fin);
                    }
                    (cws, fin)
                };
                assert_eq!(make(true), make(false), "n={n} count={count} from={from}");
            }
        }
    }

    #[test]
    fn wider_build_equals_portable_build() {
        eprintln!("one-bit DCF build: {}", eval_build());
        let seed = Seed::random().expect("os rng");
        for (n, count) in [
            (39u32, 5000usize),
            (23, 1030),
            (16, 9),
            (64, 300),
            (7, 100),
            (3, 17),
        ] {
            let (alphas, xs) = thresholds_and_inputs(&seed, n, count);
            let par = Parallelism::SEQUENTIAL;
            let (k0, k1) = gen_with(n, &alphas, &mut Prg::new(&seed, 2), par).expect("valid");
            for k in [&k0, &k1] {
                let v = k.view();
                let (mut a, mut b) = (vec![0; count], vec![0; count]);
                eval_range(&v, 0, &xs, &mut a);
                eval_range_body(&v, 0, &xs, &mut b);
                assert_eq!(a, b, "outputs, n={n} count={count}");
                // A range that starts inside the keys (as a thread's share does).
                let from = count / 3;
                let (mut a, mut b) = (vec![0; count - from], vec![0; count - from]);
                eval_range(&v, from, &xs[from..], &mut a);
                eval_range_body(&v, from, &xs[from..], &mut b);
                assert_eq!(a, b, "outputs from key {from}, n={n} count={count}");
            }
        }
    }

    #[test]
    fn threads_give_the_same_keys_and_outputs_bit_for_bit() {
        let seed = Seed::random().expect("os rng");
        for (n, count) in [
            (39u32, 5000usize),
            (19, 3000),
            (64, 4097),
            (7, 700),
            (3, 130),
        ] {
            let (alphas, xs) = thresholds_and_inputs(&seed, n, count);
            let seq = gen_with(n, &alphas, &mut Prg::new(&seed, 2), Parallelism::SEQUENTIAL)
                .expect("valid");
            for threads in [1usize, 2, 3, 7] {
                let par = Parallelism::new(threads, 1);
                let p = gen_with(n, &alphas, &mut Prg::new(&seed, 2), par).expect("valid");
                assert_eq!(p, seq, "keys, n={n} threads={threads}");
                for k in [&seq.0, &seq.1] {
                    let mut a = vec![0; count];
                    let mut b = vec![0; count];
                    let mut c = vec![0; count];
                    eval_with(k, &xs, &mut a, Parallelism::SEQUENTIAL).expect("valid");
                    eval_with(k, &xs, &mut b, par).expect("valid");
                    eval_bytes(k.as_bytes(), &xs, &mut c, par).expect("valid");
                    assert_eq!(a, b, "outputs, n={n} threads={threads}");
                    assert_eq!(a, c);
                }
            }
            let (mut o0, mut o1) = (vec![0; count], vec![0; count]);
            eval(&seq.0, &xs, &mut o0).expect("valid");
            eval(&seq.1, &xs, &mut o1).expect("valid");
            for i in 0..count {
                assert_eq!(o0[i] ^ o1[i], u8::from(xs[i] < alphas[i]));
            }
        }
    }
}

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
//! control bit `t`; seeds carry 127 bits (126 in the packed format). One evaluation step needs
//! `1 + ⌈m/2⌉` AES blocks, the final conversion `⌈m/2⌉`.
//!
//! **Batching.** Windows of [`WINDOW`] keys walk the levels one after the other: their seeds
//! and control bits stay in the L1 cache, each level's corrections of the window are read (or
//! written) in one sequential run, and [`CHUNK`] keys' blocks go through AES in one call so
//! that AES-NI pipelines them. Nothing is allocated per level. Large batches are split over
//! threads ([`Parallelism`]); the result is the same bit for bit whatever the split (every key
//! is computed independently, and generation draws all its randomness before splitting).
//!
//! **Wire formats** ([`Format`]): a 12-byte header (magic `DCF1` or `DCF2`, party, bits, m,
//! reserved 0, count), then roots, seed corrections, control-bit corrections (`DCF1` only: one
//! byte, two bits used), value corrections and final corrections, corrections level-major
//! (level `i` of every key, then level `i + 1`). Key size per comparison and party:
//! `16 + n · (17 + 8m) + 8m` bytes in `DCF1` (n = 63, m = 1: 1,599 bytes; m = 3: 2,623
//! bytes), `16 + n · (16 + 8m) + 8m` in `DCF2`, whose seed corrections carry the control-bit
//! corrections in their two low bits (docs/COMPARISONS.md). [`DcfKeys`] holds the encoding
//! itself, so decoding is a validation and one copy ([`DcfKeys::from_vec`]: none), and
//! [`eval_bytes`] evaluates straight from a borrowed buffer.
//!
//! A third format, `DCFB` (one XOR-shared output bit, early termination, `32 + 16·(n − 7)`
//! bytes per key), lives in [`crate::dcf_bit`]; it reuses this module's PRG, window and chunk
//! batching and [`Parallelism`] splitting.

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes128, Block};
use rand_core::RngCore;

use crate::error::{CoreError, Result};

/// The fixed, public AES key of the PRG.
pub(crate) const PRG_KEY: [u8; 16] = *b"sotto-dcf-prg-k1";
/// Largest payload length.
pub const MAX_PAYLOAD: usize = 8;
/// Most comparisons in one batch decoded from bytes.
pub const MAX_KEYS: usize = 1 << 24;
const MAGIC: [u8; 4] = *b"DCF1";
const MAGIC_PACKED: [u8; 4] = *b"DCF2";
pub(crate) const HEADER: usize = 12;
/// Keys whose blocks go through AES in one call (AES-NI pipelines them).
pub const CHUNK: usize = 64;
/// Keys walked side by side through every level: their state stays in the L1 cache and each
/// level's corrections are read (or written) in one sequential run.
pub const WINDOW: usize = 1024;
/// Smallest batch that [`Parallelism::auto`] splits over threads: below it the threads'
/// start-up would cost more latency than they save.
pub const PARALLEL_MIN_KEYS: usize = 4096;

pub(crate) fn cipher() -> Aes128 {
    Aes128::new(&PRG_KEY.into())
}

/// Tweak of output block `j` of side `side` (0 = left, 1 = right, 2 = final conversion).
#[inline(always)]
pub(crate) fn tweak(side: usize, j: usize) -> u128 {
    ((side as u128) << 64) | ((j as u128 + 1) << 1)
}

#[inline]
fn blocks_per_side(m: usize) -> usize {
    1 + m.div_ceil(2)
}

#[inline(always)]
pub(crate) fn to_block(v: u128) -> Block {
    Block::from(v.to_le_bytes())
}

#[inline(always)]
pub(crate) fn from_block(b: &Block) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    u128::from_le_bytes(a)
}

#[inline(always)]
pub(crate) fn read_u128(b: &[u8], i: usize) -> u128 {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[16 * i..16 * i + 16]);
    u128::from_le_bytes(a)
}

#[inline(always)]
fn read_u64(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[8 * i..8 * i + 8]);
    u64::from_le_bytes(a)
}

#[inline(always)]
pub(crate) fn write_u128(b: &mut [u8], i: usize, v: u128) {
    b[16 * i..16 * i + 16].copy_from_slice(&v.to_le_bytes());
}

#[inline(always)]
fn write_u64(b: &mut [u8], i: usize, v: u64) {
    b[8 * i..8 * i + 8].copy_from_slice(&v.to_le_bytes());
}

#[inline(always)]
fn sign_mul(neg: bool, v: u64) -> u64 {
    if neg {
        v.wrapping_neg()
    } else {
        v
    }
}

/// How a batch of keys is spread over threads. On `wasm32` everything runs on the calling
/// thread whatever the settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parallelism {
    /// Most threads used (the calling thread included); 0 or 1 means sequential.
    pub threads: usize,
    /// Batches of fewer keys run on the calling thread.
    pub min_keys: usize,
}

impl Parallelism {
    /// Everything on the calling thread.
    pub const SEQUENTIAL: Parallelism = Parallelism {
        threads: 1,
        min_keys: usize::MAX,
    };

    /// Every core of the machine (`std::thread::available_parallelism`) for batches of at
    /// least [`PARALLEL_MIN_KEYS`] keys.
    pub fn auto() -> Parallelism {
        Parallelism {
            threads: available_threads(),
            min_keys: PARALLEL_MIN_KEYS,
        }
    }

    /// `threads` threads for batches of at least `min_keys` keys.
    pub fn new(threads: usize, min_keys: usize) -> Parallelism {
        Parallelism { threads, min_keys }
    }

    /// Threads used for a batch of `count` keys: at most one per [`CHUNK`].
    pub(crate) fn workers(self, count: usize) -> usize {
        if cfg!(target_arch = "wasm32") || self.threads <= 1 || count < self.min_keys.max(2) {
            1
        } else {
            self.threads.min(count.div_ceil(CHUNK))
        }
    }
}

impl Default for Parallelism {
    fn default() -> Self {
        Parallelism::auto()
    }
}

/// The same cap as the matrix products' ([`crate::linear::max_threads`]: `SOTTO_THREADS`,
/// else every core).
fn available_threads() -> usize {
    crate::linear::max_threads()
}

/// Keys per worker when `count` keys are split over `workers` (a multiple of [`CHUNK`]).
pub(crate) fn per_worker(count: usize, workers: usize) -> usize {
    count.div_ceil(workers.max(1)).div_ceil(CHUNK).max(1) * CHUNK
}

/// The encoding of a batch of keys. Both hold the same construction and evaluate alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `DCF1`: 127-bit seeds; the two control-bit corrections of a level take a byte of their
    /// own. `16 + n · (17 + 8m) + 8m` bytes per key.
    #[default]
    Bytes,
    /// `DCF2`: 126-bit seeds; the two control-bit corrections of a level sit in the two low
    /// bits of its seed correction (which are free). `16 + n · (16 + 8m) + 8m` bytes per key:
    /// `n` bytes less.
    Packed,
}

impl Format {
    /// Bytes per comparison and party of keys on `n_bits` bits with `m`-element payloads (the
    /// encoding adds a 12-byte header per batch).
    pub fn key_bytes(self, n_bits: u32, m: usize) -> usize {
        Layout::per_key(n_bits as usize, m, self == Format::Packed)
    }

    pub(crate) fn seed_mask(self) -> u128 {
        match self {
            Format::Bytes => !1,
            Format::Packed => !3,
        }
    }
}

/// Byte offsets of the parts of an encoding.
#[derive(Clone, Copy)]
struct Layout {
    n: usize,
    m: usize,
    count: usize,
    packed: bool,
}

impl Layout {
    fn per_key(n: usize, m: usize, packed: bool) -> usize {
        16 + n * (16 + usize::from(!packed) + 8 * m) + 8 * m
    }
    fn roots(self) -> usize {
        HEADER
    }
    fn cw_s(self) -> usize {
        self.roots() + 16 * self.count
    }
    fn cw_t(self) -> usize {
        self.cw_s() + 16 * self.n * self.count
    }
    fn cw_v(self) -> usize {
        self.cw_t() + if self.packed { 0 } else { self.n * self.count }
    }
    fn cw_final(self) -> usize {
        self.cw_v() + 8 * self.m * self.n * self.count
    }
    fn total(self) -> usize {
        self.cw_final() + 8 * self.m * self.count
    }
}

/// A validated encoding, borrowed: what evaluation reads.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    pub(crate) format: Format,
    pub(crate) party: u8,
    pub(crate) n: usize,
    pub(crate) m: usize,
    pub(crate) count: usize,
    pub(crate) roots: &'a [u8],
    pub(crate) cw_s: &'a [u8],
    pub(crate) cw_t: &'a [u8],
    pub(crate) cw_v: &'a [u8],
    pub(crate) cw_final: &'a [u8],
}

/// Checks an encoding completely (header, length, control-bit range).
fn parse(bytes: &[u8]) -> Result<View<'_>> {
    let bad = |r: String| CoreError::decode("DCF keys", r);
    if bytes.len() < HEADER {
        return Err(bad(format!(
            "{} bytes is shorter than the header",
            bytes.len()
        )));
    }
    let format = if bytes[..4] == MAGIC {
        Format::Bytes
    } else if bytes[..4] == MAGIC_PACKED {
        Format::Packed
    } else {
        return Err(bad("wrong magic".into()));
    };
    let packed = format == Format::Packed;
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
    let l = Layout {
        n,
        m,
        count,
        packed,
    };
    let want = HEADER + count * Layout::per_key(n, m, packed);
    if bytes.len() != want || l.total() != want {
        return Err(bad(format!(
            "{} bytes where {want} were expected",
            bytes.len()
        )));
    }
    let cw_t = &bytes[l.cw_t()..l.cw_v()];
    if cw_t.iter().any(|&t| t > 3) {
        return Err(bad("control-bit correction out of range".into()));
    }
    Ok(View {
        format,
        party,
        n,
        m,
        count,
        roots: &bytes[l.roots()..l.cw_s()],
        cw_s: &bytes[l.cw_s()..l.cw_t()],
        cw_t,
        cw_v: &bytes[l.cw_v()..l.cw_final()],
        cw_final: &bytes[l.cw_final()..],
    })
}

/// One party's keys for `count` independent comparisons on an `n`-bit domain with `m`-element
/// payloads. It holds its encoding ([`DcfKeys::to_bytes`]) and evaluates from it.
#[derive(Clone, PartialEq, Eq)]
pub struct DcfKeys {
    format: Format,
    party: u8,
    n_bits: u32,
    m: usize,
    count: usize,
    bytes: Vec<u8>,
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

    /// The encoding.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Length of [`DcfKeys::to_bytes`].
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// Compact little-endian encoding: a 12-byte header (magic, party, bits, m, count), then
    /// roots, seed corrections, control-bit corrections, value corrections and final
    /// corrections. Corrections are stored level-major (level `i` of every key, then level
    /// `i + 1`), the order in which evaluation reads them.
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
        let (format, party, n_bits, m, count) = (v.format, v.party, v.n as u32, v.m, v.count);
        Ok(DcfKeys {
            format,
            party,
            n_bits,
            m,
            count,
            bytes,
        })
    }

    fn view(&self) -> View<'_> {
        let l = Layout {
            n: self.n_bits as usize,
            m: self.m,
            count: self.count,
            packed: self.format == Format::Packed,
        };
        let b = &self.bytes;
        View {
            format: self.format,
            party: self.party,
            n: l.n,
            m: l.m,
            count: l.count,
            roots: &b[l.roots()..l.cw_s()],
            cw_s: &b[l.cw_s()..l.cw_t()],
            cw_t: &b[l.cw_t()..l.cw_v()],
            cw_v: &b[l.cw_v()..l.cw_final()],
            cw_final: &b[l.cw_final()..],
        }
    }
}

/// Dealer: keys for `alphas.len()` comparisons; `payloads` holds `m` elements per comparison
/// (row-major). Every alpha must be below `2^n_bits`. Large batches use every core
/// ([`Parallelism::auto`]); the keys are the same as [`gen_with`] with
/// [`Parallelism::SEQUENTIAL`] given the same generator state.
pub fn gen(
    n_bits: u32,
    alphas: &[u64],
    payloads: &[u64],
    m: usize,
    rng: &mut impl RngCore,
) -> Result<(DcfKeys, DcfKeys)> {
    gen_with(
        n_bits,
        alphas,
        payloads,
        m,
        rng,
        Parallelism::auto(),
        Format::Bytes,
    )
}

/// [`gen`] with an explicit [`Parallelism`] and [`Format`]. The format changes the encoding
/// only: the evaluations give the same shares' sum, and a single key is pseudorandom either
/// way.
pub fn gen_with(
    n_bits: u32,
    alphas: &[u64],
    payloads: &[u64],
    m: usize,
    rng: &mut impl RngCore,
    par: Parallelism,
    format: Format,
) -> Result<(DcfKeys, DcfKeys)> {
    let (mut b0, mut b1) = (Vec::new(), Vec::new());
    gen_into(
        n_bits, alphas, payloads, m, rng, par, format, &mut b0, &mut b1,
    )?;
    let make = |party: u8, bytes: Vec<u8>| DcfKeys {
        format,
        party,
        n_bits,
        m,
        count: alphas.len(),
        bytes,
    };
    Ok((make(0, b0), make(1, b1)))
}

/// [`gen_with`] that appends the two keys' encodings to `out0` (party 0's) and `out1`
/// instead of returning them: the dealer writes them straight into its messages, with one
/// copy (party 1's encoding is party 0's with its own roots and party byte) instead of a
/// fresh buffer for each key, a clone and a copy of each into its message. On an error
/// nothing is appended.
#[allow(clippy::too_many_arguments)]
pub fn gen_into(
    n_bits: u32,
    alphas: &[u64],
    payloads: &[u64],
    m: usize,
    rng: &mut impl RngCore,
    par: Parallelism,
    format: Format,
    out0: &mut Vec<u8>,
    out1: &mut Vec<u8>,
) -> Result<()> {
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
    let packed = format == Format::Packed;
    let l = Layout {
        n,
        m,
        count,
        packed,
    };
    let start = out0.len();
    out0.resize(start + l.total(), 0);
    let b0 = &mut out0[start..];
    b0[..4].copy_from_slice(if packed { &MAGIC_PACKED } else { &MAGIC });
    b0[5] = n_bits as u8;
    b0[6] = m as u8;
    b0[8..12].copy_from_slice(&(count as u32).to_le_bytes());
    // All the randomness first: the roots of both parties (seeds with a clear control bit).
    let mut roots1 = vec![0u8; 16 * count];
    rng.fill_bytes(&mut b0[l.roots()..l.cw_s()]);
    rng.fill_bytes(&mut roots1);
    for r in b0[l.roots()..l.cw_s()]
        .chunks_exact_mut(16)
        .chain(roots1.chunks_exact_mut(16))
    {
        r[0] &= format.seed_mask() as u8;
    }
    if count > 0 {
        let (head, rest) = b0.split_at_mut(l.cw_s());
        let roots0: &[u8] = &head[l.roots()..];
        let (cw_s, rest) = rest.split_at_mut(l.cw_t() - l.cw_s());
        let (cw_t, rest) = rest.split_at_mut(l.cw_v() - l.cw_t());
        let (cw_v, cw_final) = rest.split_at_mut(l.cw_final() - l.cw_v());
        let workers = par.workers(count);
        let per = per_worker(count, workers);
        let mut outs = split_out(cw_s, cw_t, cw_v, cw_final, l, per);
        let job = GenJob {
            format,
            n,
            m,
            alphas,
            payloads,
            roots0,
            roots1: &roots1,
        };
        run_split(&mut outs, per, |first, out| job.run(first, out));
    }
    let at = out1.len();
    out1.extend_from_slice(&out0[start..]);
    let b1 = &mut out1[at..];
    b1[4] = 1;
    b1[l.roots()..l.cw_s()].copy_from_slice(&roots1);
    Ok(())
}

/// A worker's part of the corrections: per level, the slices of its keys.
struct GenOut<'a> {
    cw_s: Vec<&'a mut [u8]>,
    cw_t: Vec<&'a mut [u8]>,
    cw_v: Vec<&'a mut [u8]>,
    cw_final: &'a mut [u8],
}

/// Cuts the level-major correction regions into the parts of workers of `per` keys each.
fn split_out<'a>(
    cw_s: &'a mut [u8],
    cw_t: &'a mut [u8],
    cw_v: &'a mut [u8],
    cw_final: &'a mut [u8],
    l: Layout,
    per: usize,
) -> Vec<GenOut<'a>> {
    let workers = l.count.div_ceil(per);
    let cw_s = split_levels(cw_s, l.count, 16, per, workers);
    let cw_t = if l.packed {
        (0..workers)
            .map(|_| (0..l.n).map(|_| Default::default()).collect())
            .collect()
    } else {
        split_levels(cw_t, l.count, 1, per, workers)
    };
    let cw_v = split_levels(cw_v, l.count, 8 * l.m, per, workers);
    cw_final
        .chunks_mut(8 * l.m * per)
        .zip(cw_s)
        .zip(cw_t)
        .zip(cw_v)
        .map(|(((cw_final, cw_s), cw_t), cw_v)| GenOut {
            cw_s,
            cw_t,
            cw_v,
            cw_final,
        })
        .collect()
}

/// Cuts a level-major region (every level holds `count` keys of `width` bytes) into the parts
/// of `workers` workers of `per` keys each: part `w` holds, level by level, the slice of keys
/// `w·per..(w + 1)·per`. An empty region gives `workers` empty parts.
pub(crate) fn split_levels(
    region: &mut [u8],
    count: usize,
    width: usize,
    per: usize,
    workers: usize,
) -> Vec<Vec<&mut [u8]>> {
    let mut parts: Vec<Vec<&mut [u8]>> = (0..workers).map(|_| Vec::new()).collect();
    if count == 0 || width == 0 {
        return parts;
    }
    for level in region.chunks_mut(width * count) {
        for (p, part) in parts.iter_mut().zip(level.chunks_mut(width * per)) {
            p.push(part);
        }
    }
    parts
}

/// Runs `f(first key, part)` for every part, on scoped threads when there are several (the
/// first part on the calling thread).
pub(crate) fn run_split<P: Send>(parts: &mut [P], per: usize, f: impl Fn(usize, &mut P) + Sync) {
    #[cfg(not(target_arch = "wasm32"))]
    if parts.len() > 1 {
        let f = &f;
        std::thread::scope(|sc| {
            let mut it = parts.iter_mut().enumerate();
            let first = it.next();
            for (w, p) in it {
                sc.spawn(move || f(w * per, p));
            }
            if let Some((_, p)) = first {
                f(0, p);
            }
        });
        return;
    }
    for (w, p) in parts.iter_mut().enumerate() {
        f(w * per, p);
    }
}

/// Inputs of a key generation.
struct GenJob<'a> {
    format: Format,
    n: usize,
    m: usize,
    alphas: &'a [u64],
    payloads: &'a [u64],
    roots0: &'a [u8],
    roots1: &'a [u8],
}

impl GenJob<'_> {
    /// Generates the keys `first..first + len` into `out` (whose slices start at `first`):
    /// windows of [`WINDOW`] / 2 keys walk the levels one after the other, [`CHUNK`] keys per
    /// AES call.
    fn run(&self, first: usize, out: &mut GenOut<'_>) {
        match self.m {
            1 => self.run_m::<1>(first, out),
            2 => self.run_m::<2>(first, out),
            3 => self.run_m::<3>(first, out),
            _ => self.run_m::<0>(first, out),
        }
    }

    /// [`GenJob::run`] for payloads of `M` elements (`M = 0`: any length).
    fn run_m<const M: usize>(&self, first: usize, out: &mut GenOut<'_>) {
        let n = self.n;
        let m = if M == 0 { self.m } else { M };
        let smask = self.format.seed_mask();
        let len = out.cw_final.len() / (8 * m);
        let aes = cipher();
        let nb = blocks_per_side(m);
        let nv = m.div_ceil(2);
        let gw = WINDOW / 2;
        let win = gw.min(len);
        let mut buf = vec![Block::default(); CHUNK * 4 * nb];
        let mut s = [vec![0u128; win], vec![0u128; win]];
        let mut t = [vec![0u8; win], vec![1u8; win]];
        let mut va = vec![0u64; win * m];
        for w0 in (0..len).step_by(gw) {
            let w1 = (w0 + gw).min(len);
            for i in 0..w1 - w0 {
                s[0][i] = read_u128(self.roots0, first + w0 + i) & smask;
                s[1][i] = read_u128(self.roots1, first + w0 + i) & smask;
                t[0][i] = 0;
                t[1][i] = 1;
            }
            va.fill(0);
            for lvl in 0..n {
                let shift = n - 1 - lvl;
                let (o_s, o_t, o_v) = (
                    &mut *out.cw_s[lvl],
                    &mut *out.cw_t[lvl],
                    &mut *out.cw_v[lvl],
                );
                for c0 in (w0..w1).step_by(CHUNK) {
                    let c1 = (c0 + CHUNK).min(w1);
                    let bl = &mut buf[..(c1 - c0) * 4 * nb];
                    for (row, k) in bl.chunks_exact_mut(4 * nb).zip(c0..c1) {
                        for (p, half) in row.chunks_exact_mut(2 * nb).enumerate() {
                            let sp = s[p][k - w0];
                            for (side, blocks) in half.chunks_exact_mut(nb).enumerate() {
                                for (j, b) in blocks.iter_mut().enumerate() {
                                    *b = to_block(sp ^ tweak(side, j));
                                }
                            }
                        }
                    }
                    aes.encrypt_blocks(bl);
                    for (row, k) in bl.chunks_exact(4 * nb).zip(c0..c1) {
                        self.level::<M>(
                            row,
                            lvl,
                            shift,
                            first + k,
                            k,
                            k - w0,
                            &mut s,
                            &mut t,
                            &mut va,
                            o_s,
                            o_t,
                            o_v,
                        );
                    }
                }
            }
            // final correction: (−1)^t1 · (Convert(s1) − Convert(s0) − V_α)
            for c0 in (w0..w1).step_by(CHUNK) {
                let c1 = (c0 + CHUNK).min(w1);
                let bl = &mut buf[..(c1 - c0) * 2 * nv];
                for (row, k) in bl.chunks_exact_mut(2 * nv).zip(c0..c1) {
                    for (p, blocks) in row.chunks_exact_mut(nv).enumerate() {
                        for (j, b) in blocks.iter_mut().enumerate() {
                            *b = to_block(s[p][k - w0] ^ tweak(2, j + 1));
                        }
                    }
                }
                aes.encrypt_blocks(bl);
                for (row, k) in bl.chunks_exact(2 * nv).zip(c0..c1) {
                    let i = k - w0;
                    let neg = t[1][i] == 1;
                    for h in 0..m {
                        let j = h / 2;
                        let sh = 64 * (h % 2);
                        let c_p = |p: usize| {
                            ((from_block(&row[p * nv + j]) ^ s[p][i] ^ tweak(2, j + 1)) >> sh)
                                as u64
                        };
                        let x = c_p(1).wrapping_sub(c_p(0)).wrapping_sub(va[i * m + h]);
                        write_u64(out.cw_final, k * m + h, sign_mul(neg, x));
                    }
                }
            }
        }
    }

    /// One level of key `key` (index `k` in the worker's slices, `i` in the window) from its
    /// expanded blocks `row` (party 0 left, party 0 right, party 1 left, party 1 right).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn level<const M: usize>(
        &self,
        row: &[Block],
        lvl: usize,
        shift: usize,
        key: usize,
        k: usize,
        i: usize,
        s: &mut [Vec<u128>; 2],
        t: &mut [Vec<u8>; 2],
        va: &mut [u64],
        o_s: &mut [u8],
        o_t: &mut [u8],
        o_v: &mut [u8],
    ) {
        let m = if M == 0 { self.m } else { M };
        let nb = blocks_per_side(m);
        let smask = self.format.seed_mask();
        let _ = lvl;
        let a_i = ((self.alphas[key] >> shift) & 1) as usize;
        let (keep, lose) = (a_i, 1 - a_i);
        // seeds and control bits of both children for both parties
        let mut sn = [[0u128; 2]; 2];
        let mut tn = [[0u8; 2]; 2];
        for p in 0..2 {
            for side in 0..2 {
                let w = from_block(&row[(2 * p + side) * nb]) ^ s[p][i] ^ tweak(side, 0);
                sn[p][side] = w & smask;
                tn[p][side] = (w & 1) as u8;
            }
        }
        let neg = t[1][i] == 1;
        let beta = &self.payloads[key * m..(key + 1) * m];
        let va_k = &mut va[i * m..(i + 1) * m];
        for jv in 0..m.div_ceil(2) {
            let j = jv + 1;
            let word = |p: usize, side: usize| {
                from_block(&row[(2 * p + side) * nb + j]) ^ s[p][i] ^ tweak(side, j)
            };
            let (l0, l1) = (word(0, lose), word(1, lose));
            let (k0w, k1w) = (word(0, keep), word(1, keep));
            for half in 0..2 {
                let h = 2 * jv + half;
                if h >= m {
                    break;
                }
                let sh = 64 * half;
                let v = |w: u128| (w >> sh) as u64;
                let mut x = v(l1).wrapping_sub(v(l0)).wrapping_sub(va_k[h]);
                if lose == 0 {
                    // α_i = 1: the left subtree lies below α
                    x = x.wrapping_add(beta[h]);
                }
                let vcw = sign_mul(neg, x);
                write_u64(o_v, k * m + h, vcw);
                va_k[h] = va_k[h]
                    .wrapping_sub(v(k1w))
                    .wrapping_add(v(k0w))
                    .wrapping_add(sign_mul(neg, vcw));
            }
        }
        let s_cw = sn[0][lose] ^ sn[1][lose];
        let t_l = tn[0][0] ^ tn[1][0] ^ (a_i as u8) ^ 1;
        let t_r = tn[0][1] ^ tn[1][1] ^ (a_i as u8);
        let t_keep = if keep == 0 { t_l } else { t_r };
        if self.format == Format::Packed {
            write_u128(o_s, k, s_cw | u128::from(t_l) | (u128::from(t_r) << 1));
        } else {
            write_u128(o_s, k, s_cw);
            o_t[k] = t_l | (t_r << 1);
        }
        for p in 0..2 {
            let m128 = 0u128.wrapping_sub(u128::from(t[p][i]));
            s[p][i] = sn[p][keep] ^ (s_cw & m128);
            t[p][i] = tn[p][keep] ^ (t[p][i] & t_keep);
        }
    }
}

/// Party evaluation: `out[i·m..(i+1)·m]` receives this party's shares of
/// `payload_i · [xs[i] < alpha_i]`. Large batches use every core ([`Parallelism::auto`]);
/// the output does not depend on the split.
pub fn eval(keys: &DcfKeys, xs: &[u64], out: &mut [u64]) -> Result<()> {
    eval_with(keys, xs, out, Parallelism::auto())
}

/// [`eval`] with an explicit [`Parallelism`].
pub fn eval_with(keys: &DcfKeys, xs: &[u64], out: &mut [u64], par: Parallelism) -> Result<()> {
    eval_view(&keys.view(), xs, out, par)
}

/// [`eval`] straight from an encoding ([`DcfKeys::to_bytes`]) without decoding it into a
/// [`DcfKeys`]: the bytes are validated as [`DcfKeys::from_bytes`] does, then read in place.
pub fn eval_bytes(bytes: &[u8], xs: &[u64], out: &mut [u64], par: Parallelism) -> Result<()> {
    eval_view(&parse(bytes)?, xs, out, par)
}

fn eval_view(v: &View<'_>, xs: &[u64], out: &mut [u64], par: Parallelism) -> Result<()> {
    let (n, m, count) = (v.n, v.m, v.count);
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
    if count == 0 {
        return Ok(());
    }
    let per = per_worker(count, par.workers(count));
    let mut parts: Vec<(&[u64], &mut [u64])> =
        xs.chunks(per).zip(out.chunks_mut(per * m)).collect();
    run_split(&mut parts, per, |first, (x, o)| eval_range(v, first, x, o));
    Ok(())
}

/// Evaluates the keys `first..first + xs.len()`: windows of [`WINDOW`] keys walk the levels
/// one after the other (each level's corrections of a window are read in one sequential run),
/// [`CHUNK`] keys per AES call.
fn eval_range(v: &View<'_>, first: usize, xs: &[u64], out: &mut [u64]) {
    if v.m == 2 && v.format == Format::Packed && crate::simd::dcf_packed2_eval(v, first, xs, out) {
        return;
    }
    match v.m {
        1 => eval_range_m::<1>(v, first, xs, out),
        2 => eval_range_m::<2>(v, first, xs, out),
        3 => eval_range_m::<3>(v, first, xs, out),
        _ => eval_range_m::<0>(v, first, xs, out),
    }
}

/// [`eval_range`] for payloads of `M` elements (`M = 0`: any length, read from the keys).
pub(crate) fn eval_range_m<const M: usize>(
    v: &View<'_>,
    first: usize,
    xs: &[u64],
    out: &mut [u64],
) {
    let (n, count) = (v.n, v.count);
    let m = if M == 0 { v.m } else { M };
    let aes = cipher();
    let nb = blocks_per_side(m);
    let nv = m.div_ceil(2);
    let neg = v.party == 1;
    let packed = v.format == Format::Packed;
    let smask = v.format.seed_mask();
    let win = WINDOW.min(xs.len());
    let mut buf = vec![Block::default(); CHUNK * nb];
    let mut s = vec![0u128; win];
    let mut t = vec![0u8; win];
    for (w, (xw, ow)) in xs
        .chunks(WINDOW)
        .zip(out.chunks_mut(WINDOW * m))
        .enumerate()
    {
        let base = first + w * WINDOW;
        let len = xw.len();
        let (s, t) = (&mut s[..len], &mut t[..len]);
        for (i, (sk, tk)) in s.iter_mut().zip(t.iter_mut()).enumerate() {
            *sk = read_u128(v.roots, base + i) & smask;
            *tk = v.party;
        }
        // Unsigned sums; the party's sign is applied once at the end.
        ow.fill(0);
        for lvl in 0..n {
            let shift = n - 1 - lvl;
            let at = lvl * count + base;
            let cw_s = &v.cw_s[16 * at..16 * (at + len)];
            let cw_t = if packed {
                &[][..]
            } else {
                &v.cw_t[at..at + len]
            };
            let cw_v = &v.cw_v[8 * m * at..8 * m * (at + len)];
            for c0 in (0..len).step_by(CHUNK) {
                let c1 = (c0 + CHUNK).min(len);
                let bl = &mut buf[..(c1 - c0) * nb];
                // The chunk's slices, cut once: no bounds checks per key.
                let (xc, sc, tc) = (&xw[c0..c1], &mut s[c0..c1], &mut t[c0..c1]);
                let (oc, vc) = (&mut ow[c0 * m..c1 * m], &cw_v[8 * m * c0..8 * m * c1]);
                let sc_s = &cw_s[16 * c0..16 * c1];
                for ((blocks, x), sk) in bl.chunks_exact_mut(nb).zip(xc).zip(sc.iter()) {
                    let side = ((x >> shift) & 1) as usize;
                    for (j, b) in blocks.iter_mut().enumerate() {
                        *b = to_block(sk ^ tweak(side, j));
                    }
                }
                aes.encrypt_blocks(bl);
                let rows = bl.chunks_exact(nb).zip(xc).zip(sc.iter_mut());
                let words = oc.chunks_exact_mut(m).zip(vc.chunks_exact(8 * m));
                for (i, ((((blocks, x), sk), tk), (o, v))) in
                    rows.zip(tc.iter_mut()).zip(words).enumerate()
                {
                    let side = ((x >> shift) & 1) as usize;
                    let first = from_block(&blocks[0]) ^ *sk ^ tweak(side, 0);
                    // Branch-free correction: the control bit is a coin flip per key and level.
                    let mask = 0u64.wrapping_sub(u64::from(*tk));
                    let mask128 = 0u128.wrapping_sub(u128::from(*tk));
                    for jv in 0..nv {
                        let w = from_block(&blocks[jv + 1]) ^ *sk ^ tweak(side, jv + 1);
                        let h = 2 * jv;
                        o[h] = o[h]
                            .wrapping_add(w as u64)
                            .wrapping_add(read_u64(v, h) & mask);
                        if h + 1 < m {
                            o[h + 1] = o[h + 1]
                                .wrapping_add((w >> 64) as u64)
                                .wrapping_add(read_u64(v, h + 1) & mask);
                        }
                    }
                    let cws = read_u128(sc_s, i);
                    let cwt = if packed { cws as u8 } else { cw_t[c0 + i] };
                    *sk = (first & smask) ^ (cws & smask & mask128);
                    *tk = ((first & 1) as u8) ^ ((cwt >> side) & *tk & 1);
                }
            }
        }
        // Convert(s) and the final correction.
        for c0 in (0..len).step_by(CHUNK) {
            let c1 = (c0 + CHUNK).min(len);
            let bl = &mut buf[..(c1 - c0) * nv];
            for (blocks, sk) in bl.chunks_exact_mut(nv).zip(&s[c0..c1]) {
                for (j, b) in blocks.iter_mut().enumerate() {
                    *b = to_block(sk ^ tweak(2, j + 1));
                }
            }
            aes.encrypt_blocks(bl);
            for (blocks, i) in bl.chunks_exact(nv).zip(c0..c1) {
                let mask = 0u64.wrapping_sub(u64::from(t[i]));
                for h in 0..m {
                    let w = from_block(&blocks[h / 2]) ^ s[i] ^ tweak(2, h / 2 + 1);
                    let conv = (w >> (64 * (h % 2))) as u64;
                    let fin = read_u64(v.cw_final, (base + i) * m + h) & mask;
                    let o = &mut ow[i * m + h];
                    *o = sign_mul(neg, o.wrapping_add(conv).wrapping_add(fin));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prg::Prg;
    use proptest::prelude::{any, prop, prop_oneof, proptest, Just, ProptestConfig};

    /// The dealer's path: `gen_into` appends to messages that already hold bytes exactly the
    /// encodings `gen_with` returns from the same generator state, in both formats; an error
    /// appends nothing.
    #[test]
    fn gen_into_appends_gen_with_encodings() {
        let seed = crate::prg::Seed::random().expect("os rng");
        let mut data = Prg::new(&seed, 1);
        for format in [Format::Bytes, Format::Packed] {
            for (n, m, count) in [
                (1u32, 1usize, 3usize),
                (20, 2, 100),
                (40, 1, 5000),
                (64, 3, 9),
            ] {
                let alphas: Vec<u64> = data
                    .vec_u64(count)
                    .iter()
                    .map(|&a| if n == 64 { a } else { a & ((1 << n) - 1) })
                    .collect();
                let pay = data.vec_u64(count * m);
                let par = Parallelism::auto();
                let mut rng = Prg::new(&seed, 2);
                let (k0, k1) = gen_with(n, &alphas, &pay, m, &mut rng, par, format).expect("ok");
                let (mut m0, mut m1) = (vec![7u8; 5], vec![9u8; 3]);
                let mut rng = Prg::new(&seed, 2);
                gen_into(n, &alphas, &pay, m, &mut rng, par, format, &mut m0, &mut m1)
                    .expect("valid");
                assert_eq!(&m0[..5], &[7u8; 5]);
                assert_eq!(&m0[5..], k0.as_bytes(), "{format:?} n={n} m={m}");
                assert_eq!(&m1[..3], &[9u8; 3]);
                assert_eq!(&m1[3..], k1.as_bytes(), "{format:?} n={n} m={m}");
            }
        }
        let (mut m0, mut m1) = (vec![1u8], vec![2u8]);
        let par = Parallelism::auto();
        let bad = gen_into(
            3,
            &[8],
            &[1],
            1,
            &mut data,
            par,
            Format::Packed,
            &mut m0,
            &mut m1,
        );
        assert!(bad.is_err());
        assert_eq!((m0, m1), (vec![1u8], vec![2u8]));
    }

    fn check(n: u32, m: usize, alphas: &[u64], xs: &[u64], rng: &mut Prg) {
        check_in(Format::Bytes, n, m, alphas, xs, rng);
        check_in(Format::Packed, n, m, alphas, xs, rng);
    }

    fn check_in(format: Format, n: u32, m: usize, alphas: &[u64], xs: &[u64], rng: &mut Prg) {
        let pay = rng.vec_u64(alphas.len() * m);
        let par = Parallelism::auto();
        let (k0, k1) = gen_with(n, alphas, &pay, m, rng, par, format).expect("valid");
        assert_eq!(k0.format(), format);
        assert_eq!(
            k0.encoded_len(),
            HEADER + alphas.len() * format.key_bytes(n, m)
        );
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
            let format = if flip.1 & 2 == 0 { Format::Bytes } else { Format::Packed };
            let (k0, _) = gen_with(8, &[3, 200], &[1, 2], 1, &mut rng, Parallelism::SEQUENTIAL, format)
                .expect("valid");
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
    fn vaes_build_equals_portable_build() {
        eprintln!(
            "packed two-word DCF build: {}",
            crate::dcf_bit::eval_build()
        );
        let seed = crate::prg::Seed::random().expect("os rng");
        for (n, count) in [
            (40u32, 5000usize),
            (26, 1030),
            (16, 9),
            (64, 300),
            (1, 33),
            (42, 16),
        ] {
            let mut data = Prg::new(&seed, 1);
            let t = top(n);
            let alphas: Vec<u64> = data.vec_u64(count).iter().map(|a| a & t).collect();
            let xs: Vec<u64> = data.vec_u64(count).iter().map(|a| a & t).collect();
            let pay = data.vec_u64(count * 2);
            let par = Parallelism::SEQUENTIAL;
            let (k0, k1) = gen_with(
                n,
                &alphas,
                &pay,
                2,
                &mut Prg::new(&seed, 2),
                par,
                Format::Packed,
            )
            .expect("valid");
            for k in [&k0, &k1] {
                let v = k.view();
                for from in [0, count / 3] {
                    let len = count - from;
                    let (mut a, mut b) = (vec![0; 2 * len], vec![0; 2 * len]);
                    eval_range(&v, from, &xs[from..], &mut a);
                    eval_range_m::<2>(&v, from, &xs[from..], &mut b);
                    assert_eq!(a, b, "outputs from key {from}, n={n} count={count}");
                }
            }
        }
    }

    #[test]
    fn threads_give_the_same_keys_and_outputs_bit_for_bit() {
        use crate::prg::Seed;
        let seed = Seed::random().expect("os rng");
        for (format, n, m, count) in [
            (Format::Packed, 19u32, 2usize, 5000usize),
            (Format::Bytes, 19, 2, 3000),
            (Format::Bytes, 31, 1, 4097),
            (Format::Packed, 64, 3, 700),
            (Format::Packed, 5, 2, 130),
            (Format::Bytes, 40, 5, 300),
        ] {
            let mut data = Prg::new(&seed, 1);
            let t = top(n);
            let alphas: Vec<u64> = data.vec_u64(count).iter().map(|a| a & t).collect();
            let xs: Vec<u64> = data.vec_u64(count).iter().map(|a| a & t).collect();
            let pay = data.vec_u64(count * m);
            let seq = gen_with(
                n,
                &alphas,
                &pay,
                m,
                &mut Prg::new(&seed, 2),
                Parallelism::SEQUENTIAL,
                format,
            )
            .expect("valid");
            for threads in [2usize, 3, 7] {
                let par = Parallelism::new(threads, 1);
                let p = gen_with(n, &alphas, &pay, m, &mut Prg::new(&seed, 2), par, format)
                    .expect("valid");
                assert_eq!(p, seq, "keys, n={n} m={m} threads={threads}");
                for k in [&seq.0, &seq.1] {
                    let mut a = vec![0; count * m];
                    let mut b = vec![0; count * m];
                    let mut c = vec![0; count * m];
                    eval_with(k, &xs, &mut a, Parallelism::SEQUENTIAL).expect("valid");
                    eval_with(k, &xs, &mut b, par).expect("valid");
                    eval_bytes(k.as_bytes(), &xs, &mut c, par).expect("valid");
                    assert_eq!(a, b, "outputs, n={n} m={m} threads={threads}");
                    assert_eq!(a, c);
                }
            }
            let (mut o0, mut o1) = (vec![0; count * m], vec![0; count * m]);
            eval(&seq.0, &xs, &mut o0).expect("valid");
            eval(&seq.1, &xs, &mut o1).expect("valid");
            for i in 0..count {
                for h in 0..m {
                    let want = if xs[i] < alphas[i] { pay[i * m + h] } else { 0 };
                    assert_eq!(o0[i * m + h].wrapping_add(o1[i * m + h]), want);
                }
            }
        }
    }

    #[test]
    fn empty_batches_and_owned_decoding() {
        let mut rng = Prg::from_os().expect("os rng");
        let (k0, _) = gen(12, &[], &[], 2, &mut rng).expect("valid");
        assert!(k0.is_empty());
        eval(&k0, &[], &mut []).expect("valid");
        let back = DcfKeys::from_vec(k0.to_bytes()).expect("valid");
        assert_eq!(back, k0);
        let (k0, _) = gen(12, &[7, 9], &[1, 2, 3, 4], 2, &mut rng).expect("valid");
        assert_eq!(
            DcfKeys::from_vec(k0.clone().into_bytes()).expect("valid"),
            k0
        );
        assert_eq!(
            k0.encoded_len(),
            HEADER + 2 * Format::Bytes.key_bytes(12, 2)
        );
        let (p0, _) = gen_with(
            12,
            &[7, 9],
            &[1, 2, 3, 4],
            2,
            &mut rng,
            Parallelism::SEQUENTIAL,
            Format::Packed,
        )
        .expect("valid");
        assert_eq!(p0.encoded_len(), HEADER + 2 * (16 + 12 * 32 + 16));
        assert_eq!(&p0.as_bytes()[..4], b"DCF2");
        assert_eq!(DcfKeys::from_bytes(p0.as_bytes()).expect("valid"), p0);
        let mut wrong = p0.to_bytes();
        wrong[..4].copy_from_slice(b"DCF1");
        assert!(
            DcfKeys::from_bytes(&wrong).is_err(),
            "a DCF2 body is not a DCF1 batch"
        );
        assert!(eval_bytes(
            &k0.as_bytes()[1..],
            &[1, 2],
            &mut [0; 4],
            Parallelism::SEQUENTIAL
        )
        .is_err());
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

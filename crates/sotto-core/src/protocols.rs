//! The three-party protocols (DESIGN §4, PROTOCOLS.md). Each protocol is a pair of `async fn`s:
//! `deal_*` runs on the helper, the plain name runs on P0 and P1 over their shares. The helper
//! and the servers must call the pairs in the same order with the same shapes.
//!
//! Costs per call (online: what P0 and P1 exchange; `n` elements, 8 bytes each):
//!
//! | protocol | online rounds | bytes sent online, per server | helper material |
//! |---|---|---|---|
//! | [`load_private_weight`] (once per model) | 1 | 8·|W| | none (seeds) |
//! | [`bilinear_private`] (dense, conv; `op(A_i, F)` can be prepared offline) | 1 | 8·|X| | 8·|Y| to P1 |
//! | [`bilinear_public`] | 0 (local) | 0 | none |
//! | [`truncate`] by f (exact) | 1 | 8n | 16n to P1, an f-bit DCF key (m = 1) to each |
//! | [`drelu`] | 1 | 8n | 8n to P1, a DCF key (m = 1) to each |
//! | [`relu`], f = 0 | 1 | 8n | 16n to P1, a DCF key (m = 2) to each |
//! | [`relu`] with truncation by f > 0 | 2 | 16n | [`truncate`] + [`relu`] on `bits − f + 1` bits |
//! | [`maxpool`] k×k | ⌈log2 k²⌉ | 8·(k²−1)·windows | per comparison 16 bytes to P1 and a DCF key (m = 2) to each |
//! | [`avgpool`] | 1 | 8·windows | as [`truncate`] |
//! | [`piecewise`] ([`sigmoid`], [`tanh`], leaky ReLU, ELU, swish, GELU, hard swish) | 2 | 8·(pieces + 1)·n | per piece as [`relu`] (f = 0) on `bits`, then [`truncate`] |
//! | [`argmax`] over c classes | ⌈log2 c⌉ | 8·(c−1) per row | as [`maxpool`] |
//! | [`output`] | 0 (one message to the client) | 8n to the client | 8n to P1 |
//! | [`relu_dense`]: `(ReLU(x) >> f)·W`, `W` private dense `k×o`, `x` of `m·k` elements | 2 | 8n + ⌈2n/8⌉ (n = m·k) | the fused compact ReLU's, plus `56·n·o` bytes to P1 (each dealt word times the mask's row) |
//! | [`deal_word`] / [`open_dealt_word`] (once per loaded model) | 1 | 8 | 8 to P1 |
//! | [`relu_with`], [`drelu_with`], [`maxpool_with`] in [`Comparisons::Compact`] mode | 2 per comparison (+1 for a truncation) | 8n + ⌈n/8⌉ per comparison | as `Fast`, but a one-bit DCF key ([`crate::dcf_bit`], `32 + 16·(n − 7)` bytes) instead of the arithmetic-payload key |
//!
//! A comparison key on `bits` bits is `16 + (bits − 1) · (16 + 8m) + 8m` bytes (packed
//! [`crate::dcf::Format`]; m = 2: 1,024 bytes at 32 bits); the truncation's carry key on
//! f = 16 bits is 424 bytes.
//!
//! Every protocol is exact: its revealed output equals the twin in [`crate::plain`] bit for bit
//! whatever the masks, so repeating a query gives the same output (PROTOCOLS §6).

use crate::dcf;
use crate::dcf_bit;
use crate::error::{CoreError, Result};
use crate::fixed;
use crate::linear::{Bilinear, PoolShape};
use crate::ring;
use crate::session::{Dealer, DealerGate, Deferred, Server, ServerGate};
use crate::transport::Transport;

fn check_len(what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(CoreError::Shape(format!(
            "{what}: got {got} elements, expected {want}"
        )));
    }
    Ok(())
}

fn check_shift(f: u32) -> Result<()> {
    if f > 62 {
        return Err(CoreError::Param(format!(
            "truncation by {f} bits (at most 62)"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Private and public weights
// ---------------------------------------------------------------------------------------------

/// The helper's per-model mask `B` of one private weight (DESIGN §4): kept for the model's
/// lifetime; every query's triple uses it.
pub struct WeightMask {
    b: Vec<u64>,
}

impl std::fmt::Debug for WeightMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightMask({} elements)", self.b.len())
    }
}

/// A server's private weight: its share `W_i` and the opened mask difference `F = W − B`.
pub struct PrivateWeight {
    w: Vec<u64>,
    f: Vec<u64>,
}

impl std::fmt::Debug for PrivateWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateWeight({} elements)", self.w.len())
    }
}

impl PrivateWeight {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.w.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.w.is_empty()
    }
}

/// Helper side of [`load_private_weight`]: draws `B = B0 + B1` from the session seeds.
pub async fn deal_weight_mask<T: Transport>(d: &mut Dealer<T>, len: usize) -> Result<WeightMask> {
    let mut g = d.gate()?;
    let b = g.random(len);
    g.finish().await?;
    Ok(WeightMask { b })
}

/// Once per loaded model: opens `F = W − B`. `F` is uniform (B is), so it reveals nothing.
pub async fn load_private_weight<T: Transport>(
    s: &mut Server<T>,
    w_share: &[u64],
) -> Result<PrivateWeight> {
    let mut g = s.gate().await?;
    let b = g.random(w_share.len());
    let f = g.open(&ring::sub(w_share, &b)?).await?;
    g.finish()?;
    Ok(PrivateWeight {
        w: w_share.to_vec(),
        f,
    })
}

/// Helper side of [`bilinear_private`]: a fresh `A`, and `C = op(A, B)` dealt.
pub async fn deal_bilinear_private<T: Transport>(
    d: &mut Dealer<T>,
    op: &Bilinear,
    mask: &WeightMask,
) -> Result<()> {
    op.check()?;
    check_len("weight mask", mask.b.len(), op.w_len())?;
    let mut g = d.gate()?;
    let a = g.random(op.x_len());
    let c = op.apply(&a, &mask.b)?;
    g.value(&c);
    g.finish().await
}

/// A private product whose input-independent part is done: `A_i`, and `op(A_i, F) + C_i`.
pub struct PreparedProduct {
    op: Bilinear,
    a: Vec<u64>,
    partial: Vec<u64>,
    gate: Deferred,
}

impl std::fmt::Debug for PreparedProduct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PreparedProduct({:?})", self.op)
    }
}

/// Offline part of [`bilinear_private`]: receives the gate's material and computes
/// `op(A_i, F) + C_i` before the input exists. Call it in the gate order the helper dealt.
pub async fn prepare_bilinear_private<T: Transport>(
    s: &mut Server<T>,
    op: &Bilinear,
    w: &PrivateWeight,
) -> Result<PreparedProduct> {
    op.check()?;
    check_len("bilinear weight", w.w.len(), op.w_len())?;
    let mut g = s.gate().await?;
    let a = g.random(op.x_len());
    let c = g.value(op.out_len())?;
    let gate = g.defer()?;
    let mut partial = op.apply(&a, &w.f)?;
    ring::add_assign(&mut partial, &c)?;
    Ok(PreparedProduct {
        op: *op,
        a,
        partial,
        gate,
    })
}

/// Online part of [`bilinear_private`]: opens `E = X − A` and adds `op(E, W_i)`.
pub async fn finish_bilinear_private<T: Transport>(
    s: &mut Server<T>,
    mut prep: PreparedProduct,
    x: &[u64],
    w: &PrivateWeight,
) -> Result<Vec<u64>> {
    check_len("bilinear input", x.len(), prep.op.x_len())?;
    check_len("bilinear weight", w.w.len(), prep.op.w_len())?;
    let e = s
        .open_deferred(&mut prep.gate, &ring::sub(x, &prep.a)?)
        .await?;
    let mut z = prep.op.apply(&e, &w.w)?;
    ring::add_assign(&mut z, &prep.partial)?;
    Ok(z)
}

/// `op(X, W)` with X and W both secret (Beaver product with the once-per-model mask):
/// open `E = X − A`, then `Z_i = op(E, W_i) + op(A_i, F) + C_i`. One round. The same as
/// [`prepare_bilinear_private`] followed by [`finish_bilinear_private`].
pub async fn bilinear_private<T: Transport>(
    s: &mut Server<T>,
    op: &Bilinear,
    x: &[u64],
    w: &PrivateWeight,
) -> Result<Vec<u64>> {
    op.check()?;
    check_len("bilinear input", x.len(), op.x_len())?;
    let prep = prepare_bilinear_private(s, op, w).await?;
    finish_bilinear_private(s, prep, x, w).await
}

/// `op(X_i, W)` with public weights: local, no round, no helper material.
pub fn bilinear_public(op: &Bilinear, x: &[u64], w: &[u64]) -> Result<Vec<u64>> {
    op.apply(x, w)
}

/// Adds a bias to a share with `rows` rows: a public bias is added by P0 only; a shared
/// bias (private weights) is added by both.
pub fn add_bias<T: Transport>(
    s: &Server<T>,
    x: &mut [u64],
    bias: &[u64],
    public: bool,
) -> Result<()> {
    if bias.is_empty() || !x.len().is_multiple_of(bias.len()) {
        return Err(CoreError::Shape(format!(
            "bias of {} elements does not divide {} outputs",
            bias.len(),
            x.len()
        )));
    }
    if public && !s.is_p0() {
        return Ok(());
    }
    for row in x.chunks_mut(bias.len()) {
        ring::add_assign(row, bias)?;
    }
    Ok(())
}

/// Adds a bias to the channel planes of an NCHW tensor (conv bias): `bias[c]` to every
/// element of channel `c`; `plane` is `H · W`.
pub fn add_channel_bias<T: Transport>(
    s: &Server<T>,
    x: &mut [u64],
    plane: usize,
    bias: &[u64],
    public: bool,
) -> Result<()> {
    let channels = bias.len();
    if channels == 0 || plane == 0 || !x.len().is_multiple_of(channels * plane) {
        return Err(CoreError::Shape(format!(
            "channel bias of {channels} elements with planes of {plane} for {} outputs",
            x.len()
        )));
    }
    if public && !s.is_p0() {
        return Ok(());
    }
    for (i, chunk) in x.chunks_mut(plane).enumerate() {
        ring::add_scalar_assign(chunk, bias[i % channels]);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Truncation
// ---------------------------------------------------------------------------------------------

/// Helper side of [`truncate`]: a mask `r`, shares of `msb(r)` and `r >> f`, and an `f`-bit
/// DCF key pair for the carry `[c mod 2^f < r mod 2^f]` (PROTOCOLS §6).
pub async fn deal_truncate<T: Transport>(d: &mut Dealer<T>, n: usize, f: u32) -> Result<()> {
    check_shift(f)?;
    let mut g = d.gate()?;
    let r = g.random(n);
    let rh: Vec<u64> = r.iter().map(|&v| v >> 63).collect();
    let rs: Vec<u64> = r.iter().map(|&v| v >> f).collect();
    g.value(&rh);
    g.value(&rs);
    if f > 0 {
        let low = (1u64 << f) - 1;
        let alphas: Vec<u64> = r.iter().map(|&v| v & low).collect();
        let ones = vec![1u64; n];
        g.keys_into(|rng, k0, k1| {
            dcf::gen_into(
                f,
                &alphas,
                &ones,
                1,
                rng,
                dcf::Parallelism::auto(),
                dcf::Format::Bytes,
                k0,
                k1,
            )
        })?;
    }
    g.finish().await
}

/// A [`truncate`] whose helper material (mask parts and carry keys) is received and parsed.
pub struct PreparedTruncate {
    f: u32,
    r: Vec<u64>,
    rh: Vec<u64>,
    rs: Vec<u64>,
    keys: Option<dcf::DcfKeys>,
    gate: Deferred,
}

impl std::fmt::Debug for PreparedTruncate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PreparedTruncate({} elements by {} bits)",
            self.r.len(),
            self.f
        )
    }
}

/// Offline part of [`truncate`]: receives and parses the gate's material for `n` elements.
pub async fn prepare_truncate<T: Transport>(
    s: &mut Server<T>,
    n: usize,
    f: u32,
) -> Result<PreparedTruncate> {
    check_shift(f)?;
    let mut g = s.gate().await?;
    let r = g.random(n);
    let rh = g.value(n)?;
    let rs = g.value(n)?;
    let keys = if f > 0 {
        let k = g.keys()?;
        if k.len() != n || k.payload_len() != 1 || k.n_bits() != f {
            return Err(CoreError::Protocol(format!(
                "helper sent {} carry keys (m = {}, {} bits) for {n} truncations by {f} bits",
                k.len(),
                k.payload_len(),
                k.n_bits()
            )));
        }
        Some(k)
    } else {
        None
    };
    Ok(PreparedTruncate {
        f,
        r,
        rh,
        rs,
        keys,
        gate: g.defer()?,
    })
}

/// Online part of [`truncate`]: one opening of `c = x + r` and the local carry evaluation.
pub async fn finish_truncate<T: Transport>(
    s: &mut Server<T>,
    prep: PreparedTruncate,
    x: &[u64],
) -> Result<Vec<u64>> {
    let PreparedTruncate {
        f,
        r,
        rh,
        rs,
        keys,
        mut gate,
    } = prep;
    check_len("truncation input", x.len(), r.len())?;
    let n = x.len();
    let c = s.open_deferred(&mut gate, &ring::add(x, &r)?).await?;
    // e = [c mod 2^f < r mod 2^f], the carry out of the low bits (c and c + 2^62 share them).
    let mut e = vec![0u64; n];
    if let Some(keys) = &keys {
        let low = (1u64 << f) - 1;
        let cl: Vec<u64> = c.iter().map(|&v| v & low).collect();
        dcf::eval(keys, &cl, &mut e)?;
    }
    let p0 = s.is_p0();
    let sub_off = g_const(p0, (1u64 << 62) >> f);
    let big = if f == 0 { 0 } else { 1u64 << (64 - f) };
    Ok((0..n)
        .map(|i| {
            let cp = c[i].wrapping_add(1 << 62);
            // w = msb(r)·(1 − msb(c')): the sum y + r wrapped.
            let w = rh[i].wrapping_mul(1 - (cp >> 63));
            g_const(p0, cp >> f)
                .wrapping_sub(rs[i])
                .wrapping_add(big.wrapping_mul(w))
                .wrapping_sub(e[i])
                .wrapping_sub(sub_off)
        })
        .collect())
}

/// `x >> f` (arithmetic; floor division by 2^f) for |x| < 2^62, exact: the result equals
/// [`crate::plain::truncate`] bit for bit whatever the masks (PROTOCOLS §6). One round: the
/// opening of `x + r`, then an `f`-bit DCF on its low bits gives the carry locally.
pub async fn truncate<T: Transport>(s: &mut Server<T>, x: &[u64], f: u32) -> Result<Vec<u64>> {
    let prep = prepare_truncate(s, x.len(), f).await?;
    finish_truncate(s, prep, x).await
}

fn g_const(p0: bool, k: u64) -> u64 {
    if p0 {
        k
    } else {
        0
    }
}

// ---------------------------------------------------------------------------------------------
// Input range: lifting a k-bit value to the ring
// ---------------------------------------------------------------------------------------------

/// The widest input range [`lift`] enforces (whatever a client sends lies within
/// `±(2^(k−1) + 2^(k−j))`, which must stay below `2^62`).
pub const MAX_LIFT_BITS: u32 = 61;

/// How many top bits of an input's `k`-bit code a client shares by XOR in a range sharing
/// ([`crate::share::share_input_bits`]; the rest modulo `2^(k−j)` with a XOR-shared wrap bit).
/// Each costs P1 8 bytes of helper material per value; the more there are, the less a
/// malicious client can exceed the honest range `±2^(k−1)`: by `2^(k−j)`, a quarter of it
/// with 3, so later layers are planned for 1.25 times the range ([`lift_bound`]).
pub const LIFT_XOR_BITS: u32 = 3;

/// The largest magnitude [`lift`]'s output can have, whatever a client sends, in units of the
/// encoding (`2^(k−1) + 2^(k−j)`, `j = `[`crate::share::xor_bits`]`(k)`).
pub fn lift_bound(k: u32) -> u64 {
    (1u64 << (k - 1)) + (1u64 << (k - crate::share::xor_bits(k)))
}

/// Checks an input range width for [`lift`]: 2 to [`MAX_LIFT_BITS`].
pub fn check_lift(k: u32) -> Result<()> {
    if !(2..=MAX_LIFT_BITS).contains(&k) {
        return Err(CoreError::Param(format!(
            "an input range of {k} bits (2 to {MAX_LIFT_BITS} are supported)"
        )));
    }
    Ok(())
}

fn lift_bits(n: usize, k: u32) -> Result<usize> {
    n.checked_mul(crate::share::xor_bits(k) as usize + 1)
        .ok_or_else(|| CoreError::Param(format!("{n} inputs of {k} bits")))
}

/// Helper side of [`lift`]: `j + 1` random bits `ρ` per element (`j` =
/// [`crate::share::xor_bits`]), XOR-shared (both servers expand their parts from their seeds:
/// nothing sent) and additively shared (P0's share from its seed, P1 receives the rest: 8
/// bytes per bit).
pub async fn deal_lift<T: Transport>(d: &mut Dealer<T>, n: usize, k: u32) -> Result<()> {
    check_lift(k)?;
    let bits = lift_bits(n, k)?;
    let mut g = d.gate()?;
    let rho = g.random_bits(bits);
    let rho: Vec<u64> = rho.into_iter().map(u64::from).collect();
    g.value(&rho);
    g.finish().await
}

/// A [`lift`] whose helper material is received and parsed.
pub struct PreparedLift {
    k: u32,
    rho: Vec<u8>,
    rho_a: Vec<u64>,
    gate: Deferred,
}

impl std::fmt::Debug for PreparedLift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PreparedLift({} elements of {} bits)",
            self.rho.len() / (crate::share::xor_bits(self.k) as usize + 1),
            self.k
        )
    }
}

/// Offline part of [`lift`]: receives and parses the gate's material for `n` elements.
pub async fn prepare_lift<T: Transport>(
    s: &mut Server<T>,
    n: usize,
    k: u32,
) -> Result<PreparedLift> {
    check_lift(k)?;
    let bits = lift_bits(n, k)?;
    let mut g = s.gate().await?;
    let rho = g.random_bits(bits);
    let rho_a = g.value(bits)?;
    Ok(PreparedLift {
        k,
        rho,
        rho_a,
        gate: g.defer()?,
    })
}

/// Online part of [`lift`]: `u` holds this server's words of the client's sharing
/// ([`crate::share::share_input_bits`]). Its `j + 1` XOR-shared bits per element (the code's
/// top `j` bits and the low part's wrap bit) are opened masked, `t = b ⊕ ρ`, in one round;
/// then each `b = t + ρ·(1 − 2t)` is linear in the dealt `ρ`, and the value
/// `x0 + x1 − 2^l·w + Σ 2^(l+i)·h_i − 2^(k−1)` is local.
pub async fn finish_lift<T: Transport>(
    s: &mut Server<T>,
    prep: PreparedLift,
    u: &[u64],
) -> Result<Vec<u64>> {
    let PreparedLift {
        k,
        rho,
        rho_a,
        mut gate,
    } = prep;
    let j = crate::share::xor_bits(k);
    let per = j as usize + 1;
    check_len("lift input", u.len().saturating_mul(per), rho.len())?;
    if let Some(i) = u.iter().position(|&v| v >> (k + 1) != 0) {
        return Err(CoreError::Param(format!(
            "lift input {i} has bits above its {k}-bit share and wrap bit"
        )));
    }
    let l = k - j;
    // Per element: the top j bits (bits l..k of the word), then the wrap bit (bit k).
    let mut masked = Vec::with_capacity(rho.len());
    for (&v, r) in u.iter().zip(rho.chunks_exact(per)) {
        for (i, &ri) in r.iter().enumerate() {
            masked.push(((v >> (l + i as u32)) as u8 & 1) ^ ri);
        }
    }
    let t = s.open_bits_deferred(&mut gate, &masked).await?;
    let p0 = s.is_p0();
    let low = (1u64 << l) - 1;
    let (one, half) = (g_const(p0, 1), g_const(p0, 1u64 << (k - 1)));
    Ok(u.iter()
        .zip(t.chunks_exact(per).zip(rho_a.chunks_exact(per)))
        .map(|(&v, (t, a))| {
            // Each bit's share: t + ρ·(1 − 2t), i.e. ρ when t = 0 and 1 − ρ when t = 1,
            // computed as ρ + t·(1 − 2ρ) without a branch (t is an opened, uniform bit: a
            // branch on it is mispredicted half the time).
            let bit = |i: usize| {
                let ti = u64::from(t[i] & 1);
                a[i].wrapping_add(ti.wrapping_mul(one.wrapping_sub(a[i].wrapping_mul(2))))
            };
            let mut y = (v & low).wrapping_sub(half);
            for i in 0..j as usize {
                y = y.wrapping_add(bit(i) << (l + i as u32));
            }
            y.wrapping_sub(bit(j as usize) << l)
        })
        .collect())
}

/// Enforces the input's range: from the client's range sharing of `k`-bit codes
/// ([`crate::share::share_input_bits`]) to additive shares of the value they encode. For an
/// honest client that is [`crate::plain::lift`] of its value, bit for bit whatever the masks;
/// and whatever a client sends it lies within `±`[`lift_bound`]`(k)` (`1.25·2^(k−1)`), so the
/// comparisons sized for that stay exact. One round of `j + 1` bits per element, `8·(j + 1)`
/// bytes of helper material per element at P1 and none at P0 (`j` = [`LIFT_XOR_BITS`]).
pub async fn lift<T: Transport>(s: &mut Server<T>, u: &[u64], k: u32) -> Result<Vec<u64>> {
    let prep = prepare_lift(s, u.len(), k).await?;
    finish_lift(s, prep, u).await
}

// ---------------------------------------------------------------------------------------------
// Comparisons by function secret sharing
// ---------------------------------------------------------------------------------------------

/// What a sign gate outputs besides `d = [x ≥ 0]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignOut {
    /// Only `d`.
    Bit,
    /// `d` and `y = d · x = ReLU(x)`.
    Relu,
}

impl SignOut {
    fn payload_len(self) -> usize {
        match self {
            SignOut::Bit => 1,
            SignOut::Relu => 2,
        }
    }
}

/// Bits of the comparison domain by default: the whole ring (|x| < 2^62 suffices).
pub const FULL_BITS: u32 = 64;

fn check_bits(bits: u32) -> Result<()> {
    if !(2..=64).contains(&bits) {
        return Err(CoreError::Param(format!(
            "comparison on {bits} bits (2 to 64 are supported)"
        )));
    }
    Ok(())
}

/// Comparison width for `x >> f` when `|x| < 2^(bits−1)`: `|x >> f| ≤ 2^(bits−1−f)`, so
/// `bits − f + 1` bits hold it (at least 2; [`FULL_BITS`] stays).
pub fn shifted_bits(bits: u32, f: u32) -> u32 {
    if bits >= FULL_BITS {
        FULL_BITS
    } else {
        (bits.saturating_sub(f) + 1).clamp(2, FULL_BITS)
    }
}

/// The masked value's sign bit and low bits when only `bits` bits are compared: for
/// |x| < 2^(bits−1), the sign of `x` is the top bit of `x mod 2^bits`.
fn split(v: u64, bits: u32) -> (u64, u64) {
    let low_mask = (1u64 << (bits - 1)) - 1;
    ((v >> (bits - 1)) & 1, v & low_mask)
}

/// Helper side of a sign gate over `n` elements.
async fn deal_sign<T: Transport>(
    d: &mut Dealer<T>,
    n: usize,
    out: SignOut,
    bits: u32,
) -> Result<()> {
    check_bits(bits)?;
    let m = out.payload_len();
    let mut g = d.gate()?;
    let r = g.random(n);
    // t = top bit of r mod 2^bits (the comparison's).
    let t: Vec<u64> = r.iter().map(|&v| split(v, bits).0).collect();
    g.value(&t);
    if out == SignOut::Relu {
        g.value(&mul(&t, &r));
    }
    let alphas: Vec<u64> = r.iter().map(|&x| split(x, bits).1).collect();
    let mut payload = Vec::with_capacity(n * m);
    for i in 0..n {
        let sgn = 1u64.wrapping_sub(2 * t[i]);
        payload.push(sgn);
        if m >= 2 {
            payload.push(sgn.wrapping_mul(r[i]));
        }
    }
    // Packed keys (`DCF2`): the control-bit corrections ride in the seed corrections, one
    // byte per level less (docs/COMPARISONS.md).
    g.keys_into(|rng, k0, k1| {
        dcf::gen_into(
            bits - 1,
            &alphas,
            &payload,
            m,
            rng,
            dcf::Parallelism::auto(),
            dcf::Format::Packed,
            k0,
            k1,
        )
    })?;
    g.finish().await
}

fn mul(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_mul(*y)).collect()
}

/// A sign gate: one opening of `c = x + r`, then local DCF evaluation (PROTOCOLS §4–§5).
/// Returns shares of `d = [x ≥ 0]` and, for `SignOut::Relu`, of `d · x`, both exact.
/// Requires |x| < 2^(bits−1) and |x| < 2^62.
///
/// With `t` the top bit of `r mod 2^bits` and `b = [c_L < r_L]` from the DCF on the low
/// `bits − 1` bits, `u = t ⊕ b` and `d = 1 − (c_t ⊕ u) = k0 + k1·u` with public
/// `k0 = 1 − c_t`, `k1 = 2c_t − 1`. For the mask `r`, `d·r = k0·r + k1·(t·r) + k1·(1−2t)·r·b`,
/// where the last term is a DCF payload slot; `ReLU(x) = d·c − d·r`.
/// A sign gate whose material has been received and parsed before its input exists.
struct PreparedSign {
    out: SignOut,
    bits: u32,
    r: Vec<u64>,
    t: Vec<u64>,
    tr: Vec<u64>,
    keys: dcf::DcfKeys,
    gate: Deferred,
}

async fn prepare_sign<T: Transport>(
    s: &mut Server<T>,
    n: usize,
    out: SignOut,
    bits: u32,
) -> Result<PreparedSign> {
    check_bits(bits)?;
    let m = out.payload_len();
    let mut g = s.gate().await?;
    let r = g.random(n);
    let t = g.value(n)?;
    let tr = if out == SignOut::Relu {
        g.value(n)?
    } else {
        Vec::new()
    };
    let keys = g.keys()?;
    if keys.len() != n || keys.payload_len() != m || keys.n_bits() != bits - 1 {
        return Err(CoreError::Protocol(format!(
            "helper sent {} DCF keys (m = {}, {} bits) for {n} comparisons (m = {m}, {} bits)",
            keys.len(),
            keys.payload_len(),
            keys.n_bits(),
            bits - 1
        )));
    }
    Ok(PreparedSign {
        out,
        bits,
        r,
        t,
        tr,
        keys,
        gate: g.defer()?,
    })
}

async fn sign<T: Transport>(
    s: &mut Server<T>,
    x: &[u64],
    out: SignOut,
    bits: u32,
) -> Result<(Vec<u64>, Vec<u64>)> {
    let prep = prepare_sign(s, x.len(), out, bits).await?;
    finish_sign(s, prep, x).await
}

async fn finish_sign<T: Transport>(
    s: &mut Server<T>,
    prep: PreparedSign,
    x: &[u64],
) -> Result<(Vec<u64>, Vec<u64>)> {
    let PreparedSign {
        out,
        bits,
        r,
        t,
        tr,
        keys,
        mut gate,
    } = prep;
    check_len("comparison input", x.len(), r.len())?;
    let n = x.len();
    let m = out.payload_len();
    let c = s.open_deferred(&mut gate, &ring::add(x, &r)?).await?;
    let low: Vec<u64> = c.iter().map(|&v| split(v, bits).1).collect();
    let mut o = vec![0u64; n * m];
    dcf::eval(&keys, &low, &mut o)?;
    let p0 = s.is_p0();
    let mut d = vec![0u64; n];
    let mut y = match out {
        SignOut::Bit => Vec::new(),
        SignOut::Relu => vec![0u64; n],
    };
    for i in 0..n {
        let ct = split(c[i], bits).0;
        let k0 = 1 - ct;
        let k1 = (2 * ct).wrapping_sub(1);
        let oi = &o[i * m..(i + 1) * m];
        let u = t[i].wrapping_add(oi[0]);
        d[i] = g_const(p0, k0).wrapping_add(k1.wrapping_mul(u));
        if out == SignOut::Relu {
            let dr = k0
                .wrapping_mul(r[i])
                .wrapping_add(k1.wrapping_mul(tr[i]))
                .wrapping_add(k1.wrapping_mul(oi[1]));
            y[i] = c[i].wrapping_mul(d[i]).wrapping_sub(dr);
        }
    }
    Ok((d, y))
}

/// How the comparisons of a ReLU, DReLU or max pool are made. Both are exact (their outputs
/// equal the [`crate::plain`] twins bit for bit); they trade helper material for rounds
/// (docs/COMPARISONS.md §5).
///
/// | mode | online rounds per comparison | bytes sent online per element and server | key per comparison and party |
/// |---|---|---|---|
/// | `Fast` | 1 | 8 | a `DCF2` key with an arithmetic payload: `16 + n·(16 + 8m) + 8m` bytes (n = bits − 1; ReLU m = 2: 1,280 at 40 bits) |
/// | `Compact` | 2 | 8 + 1/8 | a one-bit `DCFB` key ([`crate::dcf_bit`]): `32 + 16·(n − 7)` bytes (544 at 40 bits) |
///
/// Both also deal 16 bytes per ReLU element to P1 (8 for DReLU). A truncation (`f > 0`) adds
/// its own round and material to either mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Comparisons {
    /// One round per comparison: the DCF's payload delivers arithmetic shares of the sign and
    /// of `sign · mask` directly (PROTOCOLS §4–§5). What [`relu`], [`drelu`] and [`maxpool`]
    /// use.
    #[default]
    Fast,
    /// About 2.4× smaller keys and fewer AES calls, one more round per comparison: a one-bit
    /// DCF gives XOR shares of the sign `d`; the parties open `e = d ⊕ m` for a dealt random
    /// bit `m` (one bit per element, packed) and select locally with dealt `[m]`, `[m·r]`.
    Compact,
}

impl Comparisons {
    /// Online rounds of one comparison (one ReLU without truncation, one max-tree level).
    pub fn rounds(self) -> u32 {
        match self {
            Comparisons::Fast => 1,
            Comparisons::Compact => 2,
        }
    }
}

/// A compact sign gate whose material has been received and parsed before its input exists:
/// this server's part `r_i` of the mask, its XOR share of `m' = m ⊕ t` (from its seed), its
/// arithmetic shares of `m` and (ReLU) of `m·r`, and its one-bit DCF keys for `r_L`.
struct PreparedCompact {
    out: SignOut,
    bits: u32,
    r: Vec<u64>,
    mx: Vec<u8>,
    m: Vec<u64>,
    mr: Vec<u64>,
    keys: dcf_bit::BitKeys,
    gate: Deferred,
}

/// The selection bit `m = t ⊕ m'` of a compact sign gate, for the mask `r` and the servers'
/// seed-expanded XOR-shared `m'` (`t`: the top bit of `r mod 2^bits`), as the helper deals it.
fn selection_bits(r: &[u64], mx: &[u8], bits: u32) -> Vec<u64> {
    r.iter()
        .zip(mx)
        .map(|(&v, &b)| split(v, bits).0 ^ u64::from(b))
        .collect()
}

/// One-bit DCF keys of the sign of `x` for the mask `r`: `α = r_L` on the low `bits − 1`
/// bits.
fn sign_bit_keys<T: Transport>(g: &mut DealerGate<'_, T>, r: &[u64], bits: u32) -> Result<()> {
    let alphas: Vec<u64> = r.iter().map(|&x| split(x, bits).1).collect();
    g.keys_into(|rng, k0, k1| {
        dcf_bit::gen_into(bits - 1, &alphas, rng, dcf::Parallelism::auto(), k0, k1)
    })
}

/// A server's XOR shares of `d ⊕ m`, `d = [x ≥ 0]`, from the opened `c = x + r`: the sign
/// keys on `c_L`, its share of `m' = m ⊕ t`, and (P0) the public `1 ⊕ c_t`
/// (`d = 1 ⊕ c_t ⊕ t ⊕ [c_L < r_L]`, as in [`finish_sign`]).
fn masked_sign_shares(
    keys: &dcf_bit::BitKeys,
    c: &[u64],
    mx: &[u8],
    bits: u32,
    p0: bool,
    out: &mut [u8],
) -> Result<()> {
    let low: Vec<u64> = c.iter().map(|&v| split(v, bits).1).collect();
    dcf_bit::eval(keys, &low, out)?;
    for ((o, &v), &m) in out.iter_mut().zip(c).zip(mx) {
        let not_ct = if p0 { 1 ^ split(v, bits).0 as u8 } else { 0 };
        *o ^= m ^ not_ct;
    }
    Ok(())
}

/// Helper side of a compact sign gate over `n` elements. The material, in order: the mask
/// `r` (seeds), the XOR-shared bit `m' = m ⊕ t` (seeds; uniform because `m` is), `[m]`
/// and (ReLU) `[m·r]` dealt, and one-bit DCF keys for `α = r_L` on `bits − 1` bits.
async fn deal_compact<T: Transport>(
    d: &mut Dealer<T>,
    n: usize,
    out: SignOut,
    bits: u32,
) -> Result<()> {
    check_bits(bits)?;
    let mut g = d.gate()?;
    let r = g.random(n);
    let mx = g.random_bits(n);
    let m = selection_bits(&r, &mx, bits);
    g.value(&m);
    if out == SignOut::Relu {
        g.value(&mul(&m, &r));
    }
    sign_bit_keys(&mut g, &r, bits)?;
    g.finish().await
}

async fn prepare_compact<T: Transport>(
    s: &mut Server<T>,
    n: usize,
    out: SignOut,
    bits: u32,
) -> Result<PreparedCompact> {
    check_bits(bits)?;
    let mut g = s.gate().await?;
    let r = g.random(n);
    let mx = g.random_bits(n);
    let m = g.value(n)?;
    let mr = if out == SignOut::Relu {
        g.value(n)?
    } else {
        Vec::new()
    };
    let keys = g.bit_keys()?;
    if keys.len() != n || keys.n_bits() != bits - 1 {
        return Err(CoreError::Protocol(format!(
            "helper sent {} one-bit DCF keys ({} bits) for {n} comparisons ({} bits)",
            keys.len(),
            keys.n_bits(),
            bits - 1
        )));
    }
    Ok(PreparedCompact {
        out,
        bits,
        r,
        mx,
        m,
        mr,
        keys,
        gate: g.defer()?,
    })
}

/// A compact sign gate's online part: two rounds. Round 1 opens `c = x + r`; the one-bit DCF
/// on `c_L` gives XOR shares of `b = [c_L < r_L]`, so `d = [x ≥ 0] = 1 ⊕ c_t ⊕ t ⊕ b` (as
/// in [`finish_sign`]). Round 2 opens `e = d ⊕ m = (1 ⊕ c_t) ⊕ b ⊕ m'` (P0 folds the public
/// `1 ⊕ c_t`), one packed bit per element; it is uniform because `m` is. Then, locally,
/// `[d] = e + (1 − 2e)·[m]` (as `d = e ⊕ m`), `[d·r] = e·[r] + (1 − 2e)·[m·r]` and
/// `ReLU(x) = d·c − d·r`, exact in Z_2^64.
async fn finish_compact<T: Transport>(
    s: &mut Server<T>,
    prep: PreparedCompact,
    x: &[u64],
) -> Result<(Vec<u64>, Vec<u64>)> {
    let PreparedCompact {
        out,
        bits,
        r,
        mx,
        m,
        mr,
        keys,
        mut gate,
    } = prep;
    check_len("comparison input", x.len(), r.len())?;
    let n = x.len();
    let c = s.open_deferred(&mut gate, &ring::add(x, &r)?).await?;
    let p0 = s.is_p0();
    let mut b = vec![0u8; n];
    masked_sign_shares(&keys, &c, &mx, bits, p0, &mut b)?;
    let e = s.open_bits_deferred(&mut gate, &b).await?;
    let mut d = vec![0u64; n];
    let mut y = match out {
        SignOut::Bit => Vec::new(),
        SignOut::Relu => vec![0u64; n],
    };
    for i in 0..n {
        let ei = u64::from(e[i]);
        let k = 1u64.wrapping_sub(2 * ei);
        d[i] = g_const(p0, ei).wrapping_add(k.wrapping_mul(m[i]));
        if out == SignOut::Relu {
            let dr = ei.wrapping_mul(r[i]).wrapping_add(k.wrapping_mul(mr[i]));
            y[i] = c[i].wrapping_mul(d[i]).wrapping_sub(dr);
        }
    }
    Ok((d, y))
}

/// A compact `ReLU(x) >> f` (f > 0) whose material has been received: the truncation and
/// the comparison read one opening of `c = x + r` (the sign is read from `c >> f` and the
/// carry, [`fused_sign_bits`]), so it takes the two rounds of a `Fast` ReLU with truncation
/// with one-bit keys.
struct PreparedFused {
    m: FusedMaterial,
    gate: Deferred,
}

/// A fused gate's material on a server (what [`read_fused`] takes from a gate).
struct FusedMaterial {
    bits: u32,
    f: u32,
    r: Vec<u64>,
    /// XOR share of `m1' = m1 ⊕ t` (t: the top bit of `(r >> f) mod 2^k`, `k` the sign's
    /// width [`fused_sign_bits`]).
    m1x: Vec<u8>,
    /// XOR share of `m2`.
    m2x: Vec<u8>,
    /// Shares of the seven dealt words [`FUSED_WORDS`]: `m1`, `m2`, `m1·m2`, `r >> f`,
    /// `m1·(r >> f)`, `msb(r)`, `m1·msb(r)`.
    v: [Vec<u64>; FUSED_WORDS],
    /// One-bit keys for the sign (`α` the low `k − 1` bits of `r >> f`) and for the carry
    /// (`α = r mod 2^f` on `f` bits).
    sign: dcf_bit::BitKeys,
    carry: dcf_bit::BitKeys,
}

/// Words per element a fused gate deals (its output is a public combination of them).
const FUSED_WORDS: usize = 7;

/// Helper side of [`PreparedFused`]'s gate over `n` elements.
async fn deal_fused<T: Transport>(d: &mut Dealer<T>, n: usize, f: u32, bits: u32) -> Result<()> {
    check_bits(bits)?;
    check_fused_shift(f)?;
    let mut g = d.gate()?;
    let words = deal_fused_into(&mut g, n, f, bits)?;
    drop(words);
    g.finish().await
}

/// Deals a fused gate's material over `n` elements into `g` (the mask and bits from the
/// seeds, the seven words, the two key batches) and returns the seven words, whole.
fn deal_fused_into<T: Transport>(
    g: &mut DealerGate<'_, T>,
    n: usize,
    f: u32,
    bits: u32,
) -> Result<[Vec<u64>; FUSED_WORDS]> {
    check_bits(bits)?;
    check_fused_shift(f)?;
    let r = g.random(n);
    let m1x = g.random_bits(n);
    let m2x = g.random_bits(n);
    let k = fused_sign_bits(bits, f);
    let rs: Vec<u64> = r.iter().map(|&v| v >> f).collect();
    let m1 = selection_bits(&rs, &m1x, k);
    let m2: Vec<u64> = m2x.iter().map(|&b| u64::from(b)).collect();
    let rh: Vec<u64> = r.iter().map(|&v| v >> 63).collect();
    let m12 = mul(&m1, &m2);
    let m1rs = mul(&m1, &rs);
    let m1rh = mul(&m1, &rh);
    let words = [m1, m2, m12, rs, m1rs, rh, m1rh];
    for w in &words {
        g.value(w);
    }
    sign_bit_keys(g, &words[3], k)?;
    let low = (1u64 << f) - 1;
    let alphas: Vec<u64> = r.iter().map(|&x| x & low).collect();
    g.keys_into(|rng, k0, k1| {
        dcf_bit::gen_into(f, &alphas, rng, dcf::Parallelism::auto(), k0, k1)
    })?;
    Ok(words)
}

/// Width of the fused gate's sign comparison: that of `x >> f` with one bit of headroom,
/// `min(bits, 63) − f + 1` (at least 2). The sign is read from the high part of the opened
/// value alone, which is what makes its key `16·(f − 1)` bytes smaller than a comparison of
/// the untruncated `x` on `bits` bits.
///
/// With `c = x + r`, `C = c >> f`, `R = r >> f` and the truncation's carry
/// `e = [c mod 2^f < r mod 2^f]`, `x >> f = C − R − e` (mod `2^(64−f)`, PROTOCOLS §6). The
/// gate compares at the public point `C − 1`, that is it computes the sign of
/// `w = (x >> f) + e − 1`: for `e = 1` that is the sign of `x >> f`; for `e = 0` it is
/// `[x >> f ≥ 1]`, which differs from `[x >> f ≥ 0]` only where `x >> f = 0`, and there the
/// output `d·(x >> f)` is 0 either way. `w` lies in `[−2^(k−1), 2^(k−1))` for `|x| <
/// 2^(bits−1)` (the headroom bit covers `w = (x >> f) − 1`), and `k ≤ 64 − f`, so the
/// comparison modulo `2^k` is exact. The output `ReLU(x) >> f` is therefore unchanged.
pub fn fused_sign_bits(bits: u32, f: u32) -> u32 {
    (bits.min(63).saturating_sub(f) + 1).max(2)
}

fn check_fused_shift(f: u32) -> Result<()> {
    if !(1..=62).contains(&f) {
        return Err(CoreError::Param(format!(
            "a fused ReLU and truncation by {f} bits (1 to 62 are supported)"
        )));
    }
    Ok(())
}

async fn prepare_fused<T: Transport>(
    s: &mut Server<T>,
    n: usize,
    f: u32,
    bits: u32,
) -> Result<PreparedFused> {
    check_bits(bits)?;
    check_fused_shift(f)?;
    let mut g = s.gate().await?;
    let m = read_fused(&mut g, n, f, bits)?;
    Ok(PreparedFused {
        m,
        gate: g.defer()?,
    })
}

/// Takes a fused gate's material over `n` elements from `g` (as [`deal_fused_into`] put it).
fn read_fused<T: Transport>(
    g: &mut ServerGate<'_, T>,
    n: usize,
    f: u32,
    bits: u32,
) -> Result<FusedMaterial> {
    check_bits(bits)?;
    check_fused_shift(f)?;
    let r = g.random(n);
    let m1x = g.random_bits(n);
    let m2x = g.random_bits(n);
    let v = [
        g.value(n)?,
        g.value(n)?,
        g.value(n)?,
        g.value(n)?,
        g.value(n)?,
        g.value(n)?,
        g.value(n)?,
    ];
    let sign = g.bit_keys()?;
    let carry = g.bit_keys()?;
    let k = fused_sign_bits(bits, f);
    if sign.len() != n || sign.n_bits() != k - 1 || carry.len() != n || carry.n_bits() != f {
        return Err(CoreError::Protocol(format!(
            "helper sent {} sign keys ({} bits) and {} carry keys ({} bits) for {n} ReLUs \
             compared on {} bits and truncated by {f}",
            sign.len(),
            sign.n_bits(),
            carry.len(),
            carry.n_bits(),
            k - 1
        )));
    }
    Ok(FusedMaterial {
        bits,
        f,
        r,
        m1x,
        m2x,
        v,
        sign,
        carry,
    })
}

/// The fused gate's two rounds on `x`: opens `c = x + r`, evaluates both one-bit keys on it,
/// then opens `E1 = d ⊕ m1` and `E2 = e ⊕ m2`. Returns `c` and the opened bits (`E1` of
/// every element, then `E2` of every element).
async fn open_fused<T: Transport>(
    s: &mut Server<T>,
    m: &FusedMaterial,
    gate: &mut Deferred,
    x: &[u64],
) -> Result<(Vec<u64>, Vec<u8>)> {
    check_len("ReLU input", x.len(), m.r.len())?;
    let n = x.len();
    let c = s.open_deferred(gate, &ring::add(x, &m.r)?).await?;
    let mut open = vec![0u8; 2 * n];
    {
        let (bd, be) = open.split_at_mut(n);
        let k = fused_sign_bits(m.bits, m.f);
        let z: Vec<u64> = c.iter().map(|&v| (v >> m.f).wrapping_sub(1)).collect();
        masked_sign_shares(&m.sign, &z, &m.m1x, k, s.is_p0(), bd)?;
        let mask = (1u64 << m.f) - 1;
        let low: Vec<u64> = c.iter().map(|&v| v & mask).collect();
        dcf_bit::eval(&m.carry, &low, be)?;
        for (b, mb) in be.iter_mut().zip(&m.m2x) {
            *b ^= mb;
        }
    }
    let e = s.open_bits_deferred(gate, &open).await?;
    Ok((c, e))
}

/// The fused gate's output for one element as a public combination of its dealt words:
/// `ReLU(x) >> f = K + Σ_k a_k·s_k` with `s` the seven words of [`FusedMaterial::v`], from the
/// opened `c` and bits `E1`, `E2`. Returns `(K, a)`; `K` is a public constant (P0 adds it).
///
/// With `c' = c + 2^62`, `A = (c' >> f) − 2^(62−f)`, `W = 2^(64−f)·(1 − msb(c'))`,
/// `k1 = 1 − 2E1`, `k2 = 1 − 2E2`: `d = E1 + k1·m1`, `d·(r >> f) = E1·(r >> f) +
/// k1·m1(r >> f)`, `d·msb(r) = E1·msb(r) + k1·m1·msb(r)`, `d·e = E1·E2 + E1·k2·m2 + E2·k1·m1
/// + k1·k2·m1·m2`, and `d·T = A·d − d·(r >> f) + W·d·msb(r) − d·e`, so `K = A·E1 − E1·E2` and
/// `a = (k1·(A − E2), −E1·k2, −k1·k2, −E1, −k1, W·E1, W·k1)`.
#[inline]
fn fused_terms(c: u64, e1: u64, e2: u64, f: u32) -> (u64, [u64; FUSED_WORDS]) {
    let (k1, k2) = (1u64.wrapping_sub(2 * e1), 1u64.wrapping_sub(2 * e2));
    let cp = c.wrapping_add(1 << 62);
    let a = (cp >> f).wrapping_sub((1u64 << 62) >> f);
    let w = (1u64 << (64 - f)).wrapping_mul(1 - (cp >> 63));
    let konst = a.wrapping_mul(e1).wrapping_sub(e1 & e2);
    (
        konst,
        [
            k1.wrapping_mul(a.wrapping_sub(e2)),
            e1.wrapping_mul(k2).wrapping_neg(),
            k1.wrapping_mul(k2).wrapping_neg(),
            e1.wrapping_neg(),
            k1.wrapping_neg(),
            w.wrapping_mul(e1),
            w.wrapping_mul(k1),
        ],
    )
}

/// The fused gate's online part, two rounds ([`open_fused`]). With `c' = c + 2^62` the exact
/// truncation is `T = (c' >> f) − (r >> f) + 2^(64−f)·msb(r)·(1 − msb(c')) − e − 2^(62−f)`
/// (PROTOCOLS §6) with the carry `e = [c mod 2^f < r mod 2^f]`, and the sign `d` is that of
/// `(c >> f) − 1 − (r >> f)` on `k` bits ([`fused_sign_bits`]: equal to the sign of `x`
/// wherever `x >> f ≠ 0`), `d = 1 ⊕ z_t ⊕ t ⊕ [z_L < R_L]` as in [`finish_sign`] with
/// `z = (c >> f) − 1` and `R = r >> f`: one-bit DCFs give XOR shares of
/// both bits. Round 2 opens `E1 = d ⊕ m1` and `E2 = e ⊕ m2` (two packed bits per element,
/// uniform because the dealt bits are), after which `d = E1 + (1 − 2E1)·m1`,
/// `e = E2 + (1 − 2E2)·m2` and every product `d·T` needs is a public combination of the dealt
/// `m1`, `m2`, `m1·m2`, `r >> f`, `m1·(r >> f)`, `msb(r)`, `m1·msb(r)` ([`fused_terms`]):
/// `ReLU(x) >> f = d·T`, exact.
async fn finish_fused<T: Transport>(
    s: &mut Server<T>,
    prep: PreparedFused,
    x: &[u64],
) -> Result<Vec<u64>> {
    let PreparedFused { m, mut gate } = prep;
    let (c, e) = open_fused(s, &m, &mut gate, x).await?;
    let n = x.len();
    let p0 = s.is_p0();
    Ok((0..n)
        .map(|i| {
            let (konst, a) = fused_terms(c[i], u64::from(e[i]), u64::from(e[n + i]), m.f);
            a.iter().zip(&m.v).fold(g_const(p0, konst), |y, (ak, vk)| {
                y.wrapping_add(ak.wrapping_mul(vk[i]))
            })
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// A truncating ReLU and the private dense product after it, in the ReLU's two rounds
// ---------------------------------------------------------------------------------------------

/// The shape of a [`relu_dense`] product: `(m, k, o)` of `y [m×k] · W [k×o]`.
fn relu_dense_shape(op: &Bilinear) -> Result<(usize, usize, usize)> {
    op.check()?;
    match *op {
        Bilinear::MatMul { m, k, n } => {
            let words = m
                .checked_mul(k)
                .and_then(|v| v.checked_mul(n))
                .and_then(|v| v.checked_mul(FUSED_WORDS));
            if words.is_none_or(|w| w > 1 << 30) {
                return Err(CoreError::Shape(format!(
                    "{op:?}: too many dealt products for a fused ReLU and product"
                )));
            }
            Ok((m, k, n))
        }
        _ => Err(CoreError::Param(format!(
            "a fused ReLU and product needs a dense product, not {op:?}"
        ))),
    }
}

/// Helper side of [`relu_dense`]: the fused ReLU gate's material over the product's `m·k`
/// inputs, then, for each of its seven dealt words `s`, the shares of `s[b, j]·B[j, :]` for
/// every input element `(b, j)` (`B` the weight's once-per-model mask): `7·m·k·o` words to
/// P1, P0's from its seed. No Beaver triple: the product needs no opening.
pub async fn deal_relu_dense<T: Transport>(
    d: &mut Dealer<T>,
    f: u32,
    bits: u32,
    op: &Bilinear,
    mask: &WeightMask,
) -> Result<()> {
    check_bits(bits)?;
    check_fused_shift(f)?;
    let (m, k, o) = relu_dense_shape(op)?;
    check_len("weight mask", mask.b.len(), op.w_len())?;
    let mut g = d.gate()?;
    let words = deal_fused_into(&mut g, m * k, f, bits)?;
    let mut prods = vec![0u64; m * k * o];
    for w in &words {
        scaled_mask_rows(w, &mask.b, o, &mut prods);
        g.value(&prods);
    }
    drop((words, prods));
    g.finish().await
}

/// `out[(i·o)..(i+1)·o] = s[i]·B[j, :]` for every element `i = b·k + j` of `s` (`B`: `k`
/// rows of `o`; `out`: `s.len()·o` words).
fn scaled_mask_rows(s: &[u64], b: &[u64], o: usize, out: &mut [u64]) {
    if o == 0 {
        return;
    }
    let k = b.len() / o;
    for (i, (sv, row)) in s.iter().zip(out.chunks_exact_mut(o)).enumerate() {
        let j = if k == 0 { 0 } else { i % k };
        for (y, bv) in row.iter_mut().zip(&b[j * o..(j + 1) * o]) {
            *y = sv.wrapping_mul(*bv);
        }
    }
}

/// `out[b, :] += Σ_j a[b·k + j]·P[(b·k + j), :]` for `m` rows: `a` has `m·k` elements, `p`
/// holds `m·k` rows of `o` words, `out` `m` rows of `o` (wrapping).
fn scaled_rows_acc(a: &[u64], p: &[u64], out: &mut [u64], k: usize, o: usize) {
    if k == 0 || o == 0 {
        return;
    }
    for ((ab, pb), ob) in a
        .chunks_exact(k)
        .zip(p.chunks_exact(k * o))
        .zip(out.chunks_exact_mut(o))
    {
        for (av, prow) in ab.iter().zip(pb.chunks_exact(o)) {
            if *av == 0 {
                continue;
            }
            for (y, pv) in ob.iter_mut().zip(prow) {
                *y = y.wrapping_add(av.wrapping_mul(*pv));
            }
        }
    }
}

/// A [`relu_dense`] whose material has been received (the fused ReLU's, and this server's
/// shares of the seven `s·B` products), waiting for its input.
pub struct PreparedReluDense {
    op: Bilinear,
    m: FusedMaterial,
    prods: [Vec<u64>; FUSED_WORDS],
    gate: Deferred,
}

impl std::fmt::Debug for PreparedReluDense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PreparedReluDense({:?}, truncated by {})",
            self.op, self.m.f
        )
    }
}

/// Offline part of [`relu_dense`]: receives and parses its material. Call it in the gate
/// order the helper dealt.
pub async fn prepare_relu_dense<T: Transport>(
    s: &mut Server<T>,
    f: u32,
    bits: u32,
    op: &Bilinear,
    w: &PrivateWeight,
) -> Result<PreparedReluDense> {
    check_bits(bits)?;
    check_fused_shift(f)?;
    let (m, k, o) = relu_dense_shape(op)?;
    check_len("dense weight", w.w.len(), op.w_len())?;
    let mut g = s.gate().await?;
    let mat = read_fused(&mut g, m * k, f, bits)?;
    let len = m * k * o;
    let prods = [
        g.value(len)?,
        g.value(len)?,
        g.value(len)?,
        g.value(len)?,
        g.value(len)?,
        g.value(len)?,
        g.value(len)?,
    ];
    Ok(PreparedReluDense {
        op: *op,
        m: mat,
        prods,
        gate: g.defer()?,
    })
}

/// Online part of [`relu_dense`]: the fused ReLU's two rounds, then the product, local.
/// With `y = ReLU(x) >> f = K + Σ_k a_k ⊙ s_k` ([`fused_terms`]; `K` and `a_k` public, `s_k`
/// dealt) and `W = F + B`, party `i` computes
/// `Z_i = (Σ_k a_k ⊙ s_k,i)·F + K·W_i + Σ_k Σ_j a_k[·, j]·(s_k[·, j]·B[j, :])_i`, whose sum
/// is `(y − K)·F + K·W + (y − K)·B = y·W`.
pub async fn finish_relu_dense<T: Transport>(
    s: &mut Server<T>,
    prep: PreparedReluDense,
    x: &[u64],
    w: &PrivateWeight,
) -> Result<Vec<u64>> {
    let PreparedReluDense {
        op,
        m: mat,
        prods,
        mut gate,
    } = prep;
    let (m, k, o) = relu_dense_shape(&op)?;
    check_len("dense weight", w.w.len(), op.w_len())?;
    check_len("ReLU input", x.len(), m * k)?;
    let (c, e) = open_fused(s, &mat, &mut gate, x).await?;
    let n = x.len();
    let mut konst = vec![0u64; n];
    let mut ys = vec![0u64; n];
    let mut coef: [Vec<u64>; FUSED_WORDS] = std::array::from_fn(|_| vec![0u64; n]);
    for i in 0..n {
        let (kv, a) = fused_terms(c[i], u64::from(e[i]), u64::from(e[n + i]), mat.f);
        konst[i] = kv;
        let mut y = 0u64;
        for (j, (aj, vj)) in a.iter().zip(&mat.v).enumerate() {
            y = y.wrapping_add(aj.wrapping_mul(vj[i]));
            coef[j][i] = *aj;
        }
        ys[i] = y;
    }
    let mut z = ring::matmul(&ys, &w.f, m, k, o)?;
    ring::matmul_acc(&konst, &w.w, &mut z, m, k, o)?;
    for (a, p) in coef.iter().zip(&prods) {
        scaled_rows_acc(a, p, &mut z, k, o);
    }
    Ok(z)
}

/// `(ReLU(x) >> f)·W` for a private dense weight `W` (`op` a [`Bilinear::MatMul`] whose input
/// is the ReLU's output), |x| < 2^(bits−1): the fused ReLU gate of [`relu_with`] in
/// `Compact` mode (two rounds), and the product with no round of its own, from dealt shares
/// of each dealt word times the mask's rows (`56·m·k·o` bytes to P1 instead of a Beaver
/// triple's `8·m·o`). Equal to [`crate::plain::relu`] then [`crate::plain::bilinear`] bit for
/// bit. The same as [`prepare_relu_dense`] followed by [`finish_relu_dense`].
pub async fn relu_dense<T: Transport>(
    s: &mut Server<T>,
    x: &[u64],
    f: u32,
    bits: u32,
    op: &Bilinear,
    w: &PrivateWeight,
) -> Result<Vec<u64>> {
    let prep = prepare_relu_dense(s, f, bits, op, w).await?;
    finish_relu_dense(s, prep, x, w).await
}

/// Helper side of [`open_dealt_word`]: deals shares of the public word `v` (a setting every
/// party must hold the same: P1 gets 8 bytes).
pub async fn deal_word<T: Transport>(d: &mut Dealer<T>, v: u64) -> Result<()> {
    let mut g = d.gate()?;
    g.value(&[v]);
    g.finish().await
}

/// Opens the word the helper dealt with [`deal_word`] (one round, 8 bytes per server), so
/// that each server can compare the helper's setting with its own.
pub async fn open_dealt_word<T: Transport>(s: &mut Server<T>) -> Result<u64> {
    let mut g = s.gate().await?;
    let v = g.value(1)?;
    let out = g.open(&v).await?;
    g.finish()?;
    out.first()
        .copied()
        .ok_or_else(|| CoreError::Protocol("an empty opening".into()))
}

/// A prepared sign gate of either [`Comparisons`] mode.
enum PreparedCmp {
    Fast(PreparedSign),
    Compact(PreparedCompact),
}

impl PreparedCmp {
    fn len(&self) -> usize {
        match self {
            PreparedCmp::Fast(p) => p.r.len(),
            PreparedCmp::Compact(p) => p.r.len(),
        }
    }
    fn mode(&self) -> Comparisons {
        match self {
            PreparedCmp::Fast(_) => Comparisons::Fast,
            PreparedCmp::Compact(_) => Comparisons::Compact,
        }
    }
}

async fn deal_cmp<T: Transport>(
    d: &mut Dealer<T>,
    n: usize,
    out: SignOut,
    bits: u32,
    mode: Comparisons,
) -> Result<()> {
    match mode {
        Comparisons::Fast => deal_sign(d, n, out, bits).await,
        Comparisons::Compact => deal_compact(d, n, out, bits).await,
    }
}

async fn prepare_cmp<T: Transport>(
    s: &mut Server<T>,
    n: usize,
    out: SignOut,
    bits: u32,
    mode: Comparisons,
) -> Result<PreparedCmp> {
    Ok(match mode {
        Comparisons::Fast => PreparedCmp::Fast(prepare_sign(s, n, out, bits).await?),
        Comparisons::Compact => PreparedCmp::Compact(prepare_compact(s, n, out, bits).await?),
    })
}

async fn finish_cmp<T: Transport>(
    s: &mut Server<T>,
    prep: PreparedCmp,
    x: &[u64],
) -> Result<(Vec<u64>, Vec<u64>)> {
    match prep {
        PreparedCmp::Fast(p) => finish_sign(s, p, x).await,
        PreparedCmp::Compact(p) => finish_compact(s, p, x).await,
    }
}

/// Helper side of [`drelu`].
pub async fn deal_drelu<T: Transport>(d: &mut Dealer<T>, n: usize, bits: u32) -> Result<()> {
    deal_sign(d, n, SignOut::Bit, bits).await
}

/// `DReLU(x) = [x ≥ 0]` as shares of 0/1, for |x| < 2^(bits−1) (and < 2^62). One round.
/// Use [`FULL_BITS`] unless a bit budget proves a smaller bound: the comparison key shrinks
/// and its evaluation speeds up in proportion to `bits`.
pub async fn drelu<T: Transport>(s: &mut Server<T>, x: &[u64], bits: u32) -> Result<Vec<u64>> {
    Ok(sign(s, x, SignOut::Bit, bits).await?.0)
}

/// Helper side of [`drelu_with`].
pub async fn deal_drelu_with<T: Transport>(
    d: &mut Dealer<T>,
    n: usize,
    bits: u32,
    mode: Comparisons,
) -> Result<()> {
    deal_cmp(d, n, SignOut::Bit, bits, mode).await
}

/// [`drelu`] with the comparisons made in `mode`: `Fast` is [`drelu`] (one round), `Compact`
/// takes two rounds (8 bytes, then one bit per element and server) and a one-bit DCF key.
pub async fn drelu_with<T: Transport>(
    s: &mut Server<T>,
    x: &[u64],
    bits: u32,
    mode: Comparisons,
) -> Result<Vec<u64>> {
    let prep = prepare_cmp(s, x.len(), SignOut::Bit, bits, mode).await?;
    Ok(finish_cmp(s, prep, x).await?.0)
}

/// A [`relu`] whose helper material is received and parsed, waiting for its input.
pub struct PreparedRelu {
    inner: ReluParts,
}

/// A ReLU's prepared gates: an optional truncation then a sign gate, or one fused gate.
enum ReluParts {
    Separate {
        trunc: Option<PreparedTruncate>,
        sign: PreparedCmp,
    },
    Fused(PreparedFused),
}

impl std::fmt::Debug for PreparedRelu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PreparedRelu({})",
            match &self.inner {
                ReluParts::Separate { trunc, sign } => format!(
                    "{} elements, truncated first: {}, {:?}",
                    sign.len(),
                    trunc.is_some(),
                    sign.mode()
                ),
                ReluParts::Fused(p) => format!(
                    "{} elements, truncated by {} in the same gate, Compact",
                    p.m.r.len(),
                    p.m.f
                ),
            }
        )
    }
}

/// Offline part of [`relu`]: receives and parses the material (masks and DCF keys) of its
/// gates for `n` elements. Call it in the gate order the helper dealt.
pub async fn prepare_relu<T: Transport>(
    s: &mut Server<T>,
    n: usize,
    f: u32,
    bits: u32,
) -> Result<PreparedRelu> {
    prepare_relu_with(s, n, f, bits, Comparisons::Fast).await
}

/// Offline part of [`relu_with`]: [`prepare_relu`] with the comparison made in `mode`
/// (`Compact` with `f > 0`: one fused gate). [`finish_relu`] completes either mode.
pub async fn prepare_relu_with<T: Transport>(
    s: &mut Server<T>,
    n: usize,
    f: u32,
    bits: u32,
    mode: Comparisons,
) -> Result<PreparedRelu> {
    check_shift(f)?;
    check_bits(bits)?;
    if mode == Comparisons::Compact && f > 0 {
        let fused = prepare_fused(s, n, f, bits).await?;
        return Ok(PreparedRelu {
            inner: ReluParts::Fused(fused),
        });
    }
    let trunc = if f > 0 {
        Some(prepare_truncate(s, n, f).await?)
    } else {
        None
    };
    let sign = prepare_cmp(s, n, SignOut::Relu, shifted_bits(bits, f), mode).await?;
    Ok(PreparedRelu {
        inner: ReluParts::Separate { trunc, sign },
    })
}

/// Online part of [`relu`] and [`relu_with`]: in `Fast` mode the truncation's opening (when
/// `f > 0`), then the comparison's; in `Compact` mode two openings (the masked input, then
/// packed bits), with or without a truncation.
pub async fn finish_relu<T: Transport>(
    s: &mut Server<T>,
    prep: PreparedRelu,
    x: &[u64],
) -> Result<Vec<u64>> {
    match prep.inner {
        ReluParts::Fused(p) => finish_fused(s, p, x).await,
        ReluParts::Separate {
            trunc: Some(tp),
            sign,
        } => {
            let t = finish_truncate(s, tp, x).await?;
            Ok(finish_cmp(s, sign, &t).await?.1)
        }
        ReluParts::Separate { trunc: None, sign } => Ok(finish_cmp(s, sign, x).await?.1),
    }
}

/// Helper side of [`relu`].
pub async fn deal_relu<T: Transport>(d: &mut Dealer<T>, n: usize, f: u32, bits: u32) -> Result<()> {
    deal_relu_with(d, n, f, bits, Comparisons::Fast).await
}

/// Helper side of [`relu_with`] (and of [`prepare_relu_with`]).
pub async fn deal_relu_with<T: Transport>(
    d: &mut Dealer<T>,
    n: usize,
    f: u32,
    bits: u32,
    mode: Comparisons,
) -> Result<()> {
    check_shift(f)?;
    check_bits(bits)?;
    if mode == Comparisons::Compact && f > 0 {
        return deal_fused(d, n, f, bits).await;
    }
    if f > 0 {
        deal_truncate(d, n, f).await?;
    }
    deal_cmp(d, n, SignOut::Relu, shifted_bits(bits, f), mode).await
}

/// [`relu`] with the comparison made in `mode`, as exact. `Fast` is [`relu`]. `Compact`
/// without a truncation takes one more round (2; the extra one sends one bit per element,
/// packed) for a one-bit DCF key of `32 + 16·(n − 7)` bytes instead of `16 + n·32 + 16`
/// (n = `bits`). `Compact` with a truncation (`f > 0`) takes the same 2 rounds as `Fast`:
/// one opening of `x + r` serves the truncation's carry and the sign (compared on the high
/// part, [`fused_sign_bits`]), then two packed bits per element; it deals two one-bit keys
/// (`fused_sign_bits(bits, f) − 1` and `f` bits) and 56 bytes to P1 instead of the carry key, a two-word-payload key and 32
/// bytes (measured per element in docs/COMPARISONS.md §5).
pub async fn relu_with<T: Transport>(
    s: &mut Server<T>,
    x: &[u64],
    f: u32,
    bits: u32,
    mode: Comparisons,
) -> Result<Vec<u64>> {
    let prep = prepare_relu_with(s, x.len(), f, bits, mode).await?;
    finish_relu(s, prep, x).await
}

/// `ReLU(x) >> f` for |x| < 2^(bits−1) (and < 2^62), exact: equal to [`crate::plain::relu`]
/// bit for bit whatever the masks. With `f = 0` one round (a sign gate). With `f > 0` the
/// exact [`truncate`] runs first and the ReLU compares `x >> f` on
/// [`shifted_bits`]`(bits, f)` bits (`ReLU(x) >> f = ReLU(x >> f)`): two rounds,
/// 16 bytes per element per server. (A single round would need the product of the sign and
/// the truncation's carry, two secret bits that depend on the same opening; PROTOCOLS §6.)
pub async fn relu<T: Transport>(
    s: &mut Server<T>,
    x: &[u64],
    f: u32,
    bits: u32,
) -> Result<Vec<u64>> {
    let prep = prepare_relu(s, x.len(), f, bits).await?;
    finish_relu(s, prep, x).await
}

// ---------------------------------------------------------------------------------------------
// Max, maxpool, argmax, average pool
// ---------------------------------------------------------------------------------------------

/// Number of rounds of a max tree over `k` values.
pub fn max_tree_rounds(k: usize) -> u32 {
    let mut rounds = 0;
    let mut k = k;
    while k > 1 {
        k = k.div_ceil(2);
        rounds += 1;
    }
    rounds
}

async fn deal_max_tree<T: Transport>(
    d: &mut Dealer<T>,
    k: usize,
    len: usize,
    bits: u32,
    mode: Comparisons,
) -> Result<()> {
    let mut k = k;
    while k > 1 {
        deal_cmp(d, (k / 2) * len, SignOut::Relu, bits, mode).await?;
        k = k.div_ceil(2);
    }
    Ok(())
}

/// Element-wise maximum of `cols` (each of the same length) by a tree of
/// `max(a, b) = b + ReLU(a − b)`; ties keep the earlier column.
async fn max_tree<T: Transport>(
    s: &mut Server<T>,
    cols: Vec<Vec<u64>>,
    bits: u32,
    mode: Comparisons,
) -> Result<Vec<u64>> {
    let len = cols.first().map_or(0, Vec::len);
    let levels = prepare_max_tree(s, cols.len(), len, bits, mode).await?;
    finish_max_tree(s, levels, cols).await
}

/// Receives and parses the material of every level of a max tree over `k` columns of `len`.
async fn prepare_max_tree<T: Transport>(
    s: &mut Server<T>,
    k: usize,
    len: usize,
    bits: u32,
    mode: Comparisons,
) -> Result<Vec<PreparedCmp>> {
    let mut levels = Vec::new();
    let mut k = k;
    while k > 1 {
        levels.push(prepare_cmp(s, (k / 2) * len, SignOut::Relu, bits, mode).await?);
        k = k.div_ceil(2);
    }
    Ok(levels)
}

async fn finish_max_tree<T: Transport>(
    s: &mut Server<T>,
    levels: Vec<PreparedCmp>,
    mut cols: Vec<Vec<u64>>,
) -> Result<Vec<u64>> {
    let len = cols.first().map_or(0, Vec::len);
    let mut levels = levels.into_iter();
    while cols.len() > 1 {
        let pairs = cols.len() / 2;
        let mut diff = Vec::with_capacity(pairs * len);
        for p in 0..pairs {
            diff.extend_from_slice(&ring::sub(&cols[2 * p], &cols[2 * p + 1])?);
        }
        let level = levels
            .next()
            .ok_or_else(|| CoreError::Protocol("max tree prepared for fewer levels".into()))?;
        let (_, y) = finish_cmp(s, level, &diff).await?;
        let mut next = Vec::with_capacity(cols.len().div_ceil(2));
        for p in 0..pairs {
            next.push(ring::add(&cols[2 * p + 1], &y[p * len..(p + 1) * len])?);
        }
        if cols.len() % 2 == 1 {
            next.push(cols.pop().unwrap_or_default());
        }
        cols = next;
    }
    Ok(cols.pop().unwrap_or_default())
}

/// A [`maxpool`] whose helper material (every level's keys) is received and parsed.
pub struct PreparedMaxpool {
    shape: PoolShape,
    levels: Vec<PreparedCmp>,
}

impl std::fmt::Debug for PreparedMaxpool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PreparedMaxpool({:?}, {} levels, {:?})",
            self.shape,
            self.levels.len(),
            self.levels
                .first()
                .map_or(Comparisons::Fast, PreparedCmp::mode)
        )
    }
}

/// Offline part of [`maxpool`]: receives and parses every level's material.
pub async fn prepare_maxpool<T: Transport>(
    s: &mut Server<T>,
    shape: &PoolShape,
    bits: u32,
) -> Result<PreparedMaxpool> {
    prepare_maxpool_with(s, shape, bits, Comparisons::Fast).await
}

/// Offline part of [`maxpool_with`]: every level's material, comparisons in `mode`.
/// [`finish_maxpool`] completes either mode.
pub async fn prepare_maxpool_with<T: Transport>(
    s: &mut Server<T>,
    shape: &PoolShape,
    bits: u32,
    mode: Comparisons,
) -> Result<PreparedMaxpool> {
    let levels = prepare_max_tree(
        s,
        shape.kernel_h * shape.kernel_w,
        shape.windows(),
        bits,
        mode,
    )
    .await?;
    Ok(PreparedMaxpool {
        shape: *shape,
        levels,
    })
}

/// Online part of [`maxpool`] and [`maxpool_with`]: ⌈log2(kh·kw)⌉ tree levels of one
/// (`Fast`) or two (`Compact`) openings each, and local key evaluations.
pub async fn finish_maxpool<T: Transport>(
    s: &mut Server<T>,
    prep: PreparedMaxpool,
    x: &[u64],
) -> Result<Vec<u64>> {
    let cols = prep.shape.window_columns(x)?;
    finish_max_tree(s, prep.levels, cols).await
}

/// Helper side of [`maxpool`].
pub async fn deal_maxpool<T: Transport>(
    d: &mut Dealer<T>,
    shape: &PoolShape,
    bits: u32,
) -> Result<()> {
    deal_maxpool_with(d, shape, bits, Comparisons::Fast).await
}

/// Helper side of [`maxpool_with`] (and of [`prepare_maxpool_with`]).
pub async fn deal_maxpool_with<T: Transport>(
    d: &mut Dealer<T>,
    shape: &PoolShape,
    bits: u32,
    mode: Comparisons,
) -> Result<()> {
    deal_max_tree(
        d,
        shape.kernel_h * shape.kernel_w,
        shape.windows(),
        bits,
        mode,
    )
    .await
}

/// Max pooling (NCHW, no padding) by a comparison tree: ⌈log2(kh·kw)⌉ rounds. Any two values
/// `a`, `b` of a window must satisfy |a − b| < 2^(bits−1) (and < 2^62); see [`drelu`].
pub async fn maxpool<T: Transport>(
    s: &mut Server<T>,
    x: &[u64],
    shape: &PoolShape,
    bits: u32,
) -> Result<Vec<u64>> {
    maxpool_with(s, x, shape, bits, Comparisons::Fast).await
}

/// [`maxpool`] with the comparisons made in `mode`, as exact: the same tree of
/// `max(a, b) = b + ReLU(a − b)`, each level taking [`Comparisons::rounds`] rounds, so
/// `Compact` needs 2·⌈log2(kh·kw)⌉ rounds for keys about 2.4× smaller.
pub async fn maxpool_with<T: Transport>(
    s: &mut Server<T>,
    x: &[u64],
    shape: &PoolShape,
    bits: u32,
    mode: Comparisons,
) -> Result<Vec<u64>> {
    let cols = shape.window_columns(x)?;
    max_tree(s, cols, bits, mode).await
}

/// Fractional bits of the reciprocal in [`avgpool`].
pub const AVG_RECIP_BITS: u32 = 16;

/// The public factor `round(2^16 / area)` used by average pooling.
pub fn avg_factor(shape: &PoolShape) -> u64 {
    let area = (shape.kernel_h * shape.kernel_w).max(1) as u64;
    ((1u64 << AVG_RECIP_BITS) + area / 2) / area
}

/// Helper side of [`avgpool`].
pub async fn deal_avgpool<T: Transport>(d: &mut Dealer<T>, shape: &PoolShape) -> Result<()> {
    deal_truncate(d, shape.windows(), AVG_RECIP_BITS).await
}

/// Offline part of [`avgpool`]: its truncation's material.
pub async fn prepare_avgpool<T: Transport>(
    s: &mut Server<T>,
    shape: &PoolShape,
) -> Result<PreparedTruncate> {
    prepare_truncate(s, shape.windows(), AVG_RECIP_BITS).await
}

/// Online part of [`avgpool`].
pub async fn finish_avgpool<T: Transport>(
    s: &mut Server<T>,
    prep: PreparedTruncate,
    x: &[u64],
    shape: &PoolShape,
) -> Result<Vec<u64>> {
    let mut sums = shape.window_sums(x)?;
    ring::scale_assign(&mut sums, avg_factor(shape));
    finish_truncate(s, prep, &sums).await
}

/// Average pooling: window sums times `round(2^16/area)`, truncated exactly by 16 bits. One
/// round; the output keeps the input's scale. Needs |sum · factor| < 2^62.
pub async fn avgpool<T: Transport>(
    s: &mut Server<T>,
    x: &[u64],
    shape: &PoolShape,
) -> Result<Vec<u64>> {
    let prep = prepare_avgpool(s, shape).await?;
    finish_avgpool(s, prep, x, shape).await
}

/// Bits of the index field used by [`argmax`] over `classes` classes.
pub fn argmax_bits(classes: usize) -> u32 {
    (usize::BITS - classes.saturating_sub(1).leading_zeros()).max(1)
}

/// Helper side of [`argmax`].
pub async fn deal_argmax<T: Transport>(
    d: &mut Dealer<T>,
    rows: usize,
    classes: usize,
) -> Result<()> {
    deal_max_tree(d, classes, rows, FULL_BITS, Comparisons::Fast).await
}

/// Index of the largest of `classes` values in each of `rows` rows (the first one on ties),
/// as shares **modulo 2^k**, `k = argmax_bits(classes)`. Each value `v` is turned into the key
/// `v · 2^k + (2^k − 1 − index)`, the keys go through a max tree (⌈log2 classes⌉ rounds), and
/// the low `k` bits of the winning key, which additive shares give locally, hold the index.
/// Needs |v| < 2^(61 − k).
pub async fn argmax<T: Transport>(
    s: &mut Server<T>,
    x: &[u64],
    rows: usize,
    classes: usize,
) -> Result<Vec<u64>> {
    check_len("argmax input", x.len(), rows * classes)?;
    if classes == 0 {
        return Err(CoreError::Shape("argmax over zero classes".into()));
    }
    let k = argmax_bits(classes);
    let top = (1u64 << k) - 1;
    let p0 = s.is_p0();
    let cols: Vec<Vec<u64>> = (0..classes)
        .map(|j| {
            (0..rows)
                .map(|r| (x[r * classes + j] << k).wrapping_add(g_const(p0, top - j as u64)))
                .collect()
        })
        .collect();
    let best = max_tree(s, cols, FULL_BITS, Comparisons::Fast).await?;
    Ok(best
        .iter()
        .map(|&v| g_const(p0, top).wrapping_sub(v) & top)
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Piecewise-linear activations: sigmoid, tanh, leaky ReLU, ELU, swish, GELU, hard swish
// ---------------------------------------------------------------------------------------------

/// Fractional bits of the slopes of a [`PiecewiseLinear`]. Slopes are rounded to multiples of
/// 2^−12 (with error feedback, see [`PiecewiseLinear::fit`]), which adds at most
/// 2^−13·|x − t_0| to a tail whose slope is not a multiple of 2^−12 (leaky ReLU) and
/// about 2^−13 times a segment's length inside; every other error here is larger.
pub const SLOPE_BITS: u32 = 12;

/// A continuous piecewise-linear function
/// `g(x) = g(t_0) + a·(x − t_0) + Σ_j s_j · ReLU(x − t_j)` with knots `t_0 < t_1 < …`: slope
/// `a` left of `t_0`, `a + s_0 + … + s_j` right of `t_j`. Encoded for an input with `in_frac`
/// and an output with `out_frac` fractional bits, [`piecewise`] computes
/// `base + (a·(x − t_0) + Σ_j ±|s_j|·ReLU(x − t_j)) >> shift` exactly: one comparison per knot
/// (of `x − t_j`, see [`PiecewiseLinear::comparison_bits`]), the left slope as a local term,
/// one floor. The floor puts the output below the decoded function ([`PiecewiseLinear::value`])
/// by less than 2^−out_frac.
#[derive(Debug, Clone, PartialEq)]
pub struct PiecewiseLinear {
    /// `g(t_0)` with `out_frac` fractional bits.
    pub base: u64,
    /// The slope `a` left of the first knot, signed (two's complement), with [`SLOPE_BITS`]
    /// fractional bits.
    pub left_slope: u64,
    /// Knots `t_j` with `in_frac` fractional bits (signed, increasing).
    pub knots: Vec<u64>,
    /// `|s_j|` with [`SLOPE_BITS`] fractional bits.
    pub slopes: Vec<u64>,
    /// Sign of each `s_j` (true for negative).
    pub negative: Vec<bool>,
    /// Fractional bits of the input.
    pub in_frac: u32,
    /// Fractional bits of the output.
    pub out_frac: u32,
}

/// Knots of [`PiecewiseLinear::swish`]: interpolation error equalised over the segments and
/// both tails (`x·σ(x) − x/2` is even, so they are symmetric).
const SWISH_KNOTS: [f64; 14] = [
    -6.7047, -4.5144, -3.1273, -1.5118, -0.9767, -0.5567, -0.1814, 0.1814, 0.5567, 0.9767, 1.5118,
    3.1273, 4.5144, 6.7047,
];

/// Knots of [`PiecewiseLinear::gelu`], equalised as for swish.
const GELU_KNOTS: [f64; 10] = [
    -2.7173, -1.8383, -0.8401, -0.4647, -0.15, 0.15, 0.4647, 0.8401, 1.8383, 2.7173,
];

/// Knots of [`PiecewiseLinear::elu`] (for α = 1; the error scales with α), equalised over the
/// segments and the left tail; 0 is the kink.
const ELU_KNOTS: [f64; 8] = [
    -4.7732, -3.0224, -2.098, -1.4673, -0.9884, -0.6021, -0.2785, 0.0,
];

/// Pieces of [`PiecewiseLinear::hard_swish`]: uniform knots on [−3, 3] (the function is
/// quadratic there, `x(x + 3)/6`, so uniform spacing equalises the error `h²/24`).
const HARD_SWISH_PIECES: usize = 14;

/// The error function, from its series `erf(x) = 2/√π · e^(−x²) · Σ_n 2^n·x^(2n+1) /
/// (1·3···(2n+1))` (Abramowitz & Stegun 7.1.6), whose terms are all positive (no
/// cancellation): absolute error about 1e−15 for |x| < 6; ±1 beyond (1 − erf(6) < 3e−17).
pub fn erf(x: f64) -> f64 {
    let ax = x.abs();
    if x.is_nan() || ax == 0.0 {
        return x;
    }
    if ax >= 6.0 {
        return 1f64.copysign(x);
    }
    let x2 = 2.0 * ax * ax;
    let mut term = ax;
    let mut sum = ax;
    let mut n = 0u32;
    while term > sum * 1e-17 {
        n += 1;
        term *= x2 / f64::from(2 * n + 1);
        sum += term;
    }
    let v = std::f64::consts::FRAC_2_SQRT_PI * (-ax * ax).exp() * sum;
    v.min(1.0).copysign(x)
}

impl PiecewiseLinear {
    /// Interpolates `func` linearly between `points` (sorted), slope `left_slope` left of the
    /// first point and `right_slope` right of the last: one piece (one comparison per element)
    /// per point. The points are encoded with `in_frac` fractional bits first and `func` is
    /// interpolated at the encoded points. Slopes are rounded to [`SLOPE_BITS`] with error
    /// feedback (each segment's slope aims at `func` at its right end from the value the
    /// rounded slopes before it reached), so that rounding errors do not add up along the
    /// knots; the tails' slopes are rounded directly, so a tail slope that is a multiple of
    /// 2^−[`SLOPE_BITS`] (0, 1, 0.25, …) is exact. Check the result with
    /// [`PiecewiseLinear::max_error`].
    pub fn fit(
        func: impl Fn(f64) -> f64,
        points: &[f64],
        left_slope: f64,
        right_slope: f64,
        in_frac: u32,
        out_frac: u32,
    ) -> Result<Self> {
        if points.is_empty()
            || points.iter().any(|p| !p.is_finite())
            || points.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(CoreError::Param(
                "need at least one knot, all finite and increasing".into(),
            ));
        }
        if in_frac > 62 || out_frac > 62 {
            return Err(CoreError::Param(format!(
                "{in_frac} input and {out_frac} output fractional bits (at most 62)"
            )));
        }
        if in_frac + SLOPE_BITS < out_frac {
            return Err(CoreError::Param(
                "output has more fractional bits than input and slope".into(),
            ));
        }
        check_shift(in_frac + SLOPE_BITS - out_frac)?;
        let knots: Vec<u64> = points
            .iter()
            .map(|&p| fixed::encode_with(p, in_frac))
            .collect::<Result<_>>()?;
        if knots.windows(2).any(|w| (w[0] as i64) >= (w[1] as i64)) {
            return Err(CoreError::Param(format!(
                "knots closer than 2^-{in_frac} coincide once encoded"
            )));
        }
        let tau: Vec<f64> = knots
            .iter()
            .map(|&t| fixed::decode_with(t, in_frac))
            .collect();
        let quantise = |s: f64| -> Result<i64> { Ok(fixed::encode_with(s, SLOPE_BITS)? as i64) };
        let base = fixed::encode_with(func(tau[0]), out_frac)?;
        // Slopes of the segments from left to right: the left tail, the interpolating
        // segments (with error feedback), the right tail.
        let mut seg = Vec::with_capacity(tau.len() + 1);
        seg.push(quantise(left_slope)?);
        let mut reached = fixed::decode_with(base, out_frac);
        for w in tau.windows(2) {
            let dt = w[1] - w[0];
            let q = quantise((func(w[1]) - reached) / dt)?;
            reached += q as f64 / f64::from(1u32 << SLOPE_BITS) * dt;
            seg.push(q);
        }
        seg.push(quantise(right_slope)?);
        // |seg| < 2^62, so the differences fit an i64.
        let s: Vec<i64> = seg.windows(2).map(|w| w[1] - w[0]).collect();
        Ok(PiecewiseLinear {
            base,
            left_slope: seg[0] as u64,
            knots,
            slopes: s.iter().map(|v| v.unsigned_abs()).collect(),
            negative: s.iter().map(|v| *v < 0).collect(),
            in_frac,
            out_frac,
        })
    }

    /// Interpolates `func` linearly between `points` (sorted, at least two), constant outside
    /// them: [`PiecewiseLinear::fit`] with both tail slopes 0.
    pub fn interpolate(
        func: impl Fn(f64) -> f64,
        points: &[f64],
        in_frac: u32,
        out_frac: u32,
    ) -> Result<Self> {
        if points.len() < 2 {
            return Err(CoreError::Param(
                "need at least two increasing knots".into(),
            ));
        }
        Self::fit(func, points, 0.0, 0.0, in_frac, out_frac)
    }

    /// The sigmoid approximation used by [`sigmoid`]: 21 pieces, max error 0.0035 on the real
    /// line (measured, as for every constructor here, for `in_frac` ≥ 12; the constant tails
    /// are off by at most 1 − σ(8) ≈ 0.0003).
    pub fn sigmoid(in_frac: u32, out_frac: u32) -> Result<Self> {
        let pts = [
            -8.0, -6.0, -5.0, -4.0, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0,
            2.5, 3.0, 4.0, 5.0, 6.0, 8.0,
        ];
        Self::interpolate(|x| 1.0 / (1.0 + (-x).exp()), &pts, in_frac, out_frac)
    }

    /// The tanh approximation used by [`tanh`]: 21 pieces, max error 0.0069 on the real
    /// line (measured; the constant tails are off by at most 1 − tanh(4) ≈ 0.0007).
    pub fn tanh(in_frac: u32, out_frac: u32) -> Result<Self> {
        let pts = [
            -4.0, -3.0, -2.5, -2.0, -1.5, -1.25, -1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75,
            1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0,
        ];
        Self::interpolate(f64::tanh, &pts, in_frac, out_frac)
    }

    /// Leaky ReLU, `x` for `x ≥ 0` and `α·x` below: one piece (a knot at 0) and the left slope
    /// as a local term. Exact for `x ≥ 0`; below, `α` is rounded to a multiple of 2^−12, so
    /// the error is at most 2^−13·|x| (0, i.e. exact, when `α·2^12` is an integer;
    /// 1.2e−5·|x| for α = 0.3).
    pub fn leaky_relu(alpha: f64, in_frac: u32, out_frac: u32) -> Result<Self> {
        Self::fit(
            |x| if x < 0.0 { alpha * x } else { x },
            &[0.0],
            alpha,
            1.0,
            in_frac,
            out_frac,
        )
    }

    /// ELU, `x` for `x ≥ 0` and `α·(e^x − 1)` below: 8 pieces, max error 0.0086·α on the real
    /// line (measured for α = 1 and 0.5; exact for `x ≥ 0`; left of the first knot the error
    /// is `α·e^x`, below 0.0085·α).
    pub fn elu(alpha: f64, in_frac: u32, out_frac: u32) -> Result<Self> {
        Self::fit(
            |x| if x < 0.0 { alpha * x.exp_m1() } else { x },
            &ELU_KNOTS,
            0.0,
            1.0,
            in_frac,
            out_frac,
        )
    }

    /// Swish (SiLU), `x·σ(x)`: 14 pieces, max error 0.0084 on the real line (measured; in
    /// the tails the error decreases to 0, as `|x|·e^−|x|`).
    pub fn swish(in_frac: u32, out_frac: u32) -> Result<Self> {
        Self::fit(
            |x| x / (1.0 + (-x).exp()),
            &SWISH_KNOTS,
            0.0,
            1.0,
            in_frac,
            out_frac,
        )
    }

    /// GELU, `x·Φ(x)` with the exact normal CDF `Φ(x) = (1 + erf(x/√2))/2` ([`erf`]): 10
    /// pieces, max error 0.0091 on the real line (measured; the tails' error decreases to 0).
    /// Against the tanh form `x/2·(1 + tanh(√(2/π)·(x + 0.044715x³)))`, which differs from
    /// the exact GELU by up to 0.00047, the max error is 0.0094.
    pub fn gelu(in_frac: u32, out_frac: u32) -> Result<Self> {
        Self::fit(
            |x| 0.5 * x * (1.0 + erf(x * std::f64::consts::FRAC_1_SQRT_2)),
            &GELU_KNOTS,
            0.0,
            1.0,
            in_frac,
            out_frac,
        )
    }

    /// Hard swish, `x·ReLU6(x + 3)/6`: 14 pieces (uniform knots on [−3, 3]), max error 0.0090
    /// (measured; the interpolation's `h²/24` = 0.0089 plus slope rounding; exact outside
    /// [−3, 3], where the function is 0 or `x`).
    pub fn hard_swish(in_frac: u32, out_frac: u32) -> Result<Self> {
        let n = HARD_SWISH_PIECES;
        let pts: Vec<f64> = (0..n)
            .map(|i| -3.0 + 6.0 * i as f64 / (n - 1) as f64)
            .collect();
        Self::fit(
            |x| x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
            &pts,
            0.0,
            1.0,
            in_frac,
            out_frac,
        )
    }

    /// Number of pieces: comparisons per element.
    pub fn pieces(&self) -> usize {
        self.knots.len()
    }

    /// Shift applied to the sum of the pieces (from `in_frac + SLOPE_BITS` fractional bits to
    /// `out_frac`).
    pub fn shift(&self) -> u32 {
        (self.in_frac + SLOPE_BITS).saturating_sub(self.out_frac)
    }

    /// Refuses what the protocol cannot run: no knot, inconsistent lengths, an output with
    /// more fractional bits than input and slope, a shift beyond 62 bits.
    fn check(&self) -> Result<()> {
        if self.knots.is_empty()
            || self.slopes.len() != self.knots.len()
            || self.negative.len() != self.knots.len()
        {
            return Err(CoreError::Param(format!(
                "piecewise function with {} knots, {} slopes and {} signs",
                self.knots.len(),
                self.slopes.len(),
                self.negative.len()
            )));
        }
        if self.in_frac + SLOPE_BITS < self.out_frac {
            return Err(CoreError::Param(
                "output has more fractional bits than input and slope".into(),
            ));
        }
        check_shift(self.shift())
    }

    /// The encoded function as a real function (decoded base, knots and slopes, before the
    /// protocol's floor): what [`PiecewiseLinear::max_error`] measures.
    pub fn value(&self, x: f64) -> f64 {
        let unit = f64::from(1u32 << SLOPE_BITS);
        let t0 = self
            .knots
            .first()
            .map_or(0.0, |&t| fixed::decode_with(t, self.in_frac));
        let mut v = fixed::decode_with(self.base, self.out_frac)
            + (self.left_slope as i64) as f64 / unit * (x - t0);
        for ((t, s), neg) in self.knots.iter().zip(&self.slopes).zip(&self.negative) {
            let s = *s as f64 / unit;
            let r = (x - fixed::decode_with(*t, self.in_frac)).max(0.0);
            v += if *neg { -s * r } else { s * r };
        }
        v
    }

    /// Largest `|value(x) − func(x)|` (see [`PiecewiseLinear::value`]: knots and slopes as
    /// encoded, so their rounding is included) over `[lo, hi]`: on a uniform grid of 2^14 + 1
    /// points, 64 points inside every segment between knots, and the knots. The protocol's
    /// output lies below `value(x)` by less than 2^−out_frac more. A NaN counts as infinite.
    pub fn max_error(&self, func: impl Fn(f64) -> f64, lo: f64, hi: f64) -> f64 {
        const GRID: usize = 1 << 14;
        const PER_SEGMENT: usize = 64;
        let (lo, hi) = (lo.min(hi), lo.max(hi));
        let mut worst = 0f64;
        let mut at = |x: f64| {
            let e = (self.value(x) - func(x)).abs();
            worst = if e.is_nan() {
                f64::INFINITY
            } else {
                worst.max(e)
            };
        };
        for i in 0..=GRID {
            at(lo + (hi - lo) * i as f64 / GRID as f64);
        }
        let tau: Vec<f64> = self
            .knots
            .iter()
            .map(|&t| fixed::decode_with(t, self.in_frac))
            .collect();
        for &t in &tau {
            if (lo..=hi).contains(&t) {
                at(t);
            }
        }
        for w in tau.windows(2) {
            let (a, b) = (w[0].max(lo), w[1].min(hi));
            for i in 1..PER_SEGMENT {
                if a < b {
                    at(a + (b - a) * i as f64 / PER_SEGMENT as f64);
                }
            }
        }
        worst
    }

    /// Comparison width for inputs with `|x| ≤ input_bound_enc` (encoded, `in_frac` fractional
    /// bits): the sign gate on `bits` bits is exact for `|x − t_j| < 2^(bits−1)`, so this is
    /// the smallest `bits ≥ 2` with `input_bound_enc + |t_j| < 2^(bits−1)` for every knot, or
    /// [`FULL_BITS`] when that reaches 64. (The pieces compare `x − t_j`, not `s_j·(x − t_j)`:
    /// the slope multiplies the comparison's output, so it costs no comparison bits.) Does not
    /// check the sum's range: see [`PiecewiseLinear::checked_comparison_bits`].
    pub fn comparison_bits(&self, input_bound_enc: u64) -> u32 {
        let reach = self
            .knots
            .iter()
            .map(|&t| u128::from(input_bound_enc) + u128::from((t as i64).unsigned_abs()))
            .max()
            .unwrap_or(u128::from(input_bound_enc));
        let need = 128 - reach.leading_zeros() + 1;
        if need >= FULL_BITS {
            FULL_BITS
        } else {
            need.max(2)
        }
    }

    /// The sum before the truncation, `a·(x − t_0) + Σ_j s_j·ReLU(x − t_j)`, as an exact
    /// integer (`None` beyond i128).
    fn exact_sum(&self, x: i128) -> Option<i128> {
        let t0 = i128::from(*self.knots.first()? as i64);
        let mut acc = i128::from(self.left_slope as i64).checked_mul(x - t0)?;
        for ((t, s), neg) in self.knots.iter().zip(&self.slopes).zip(&self.negative) {
            let r = (x - i128::from(*t as i64)).max(0);
            let p = i128::from(*s).checked_mul(r)?;
            acc = if *neg {
                acc.checked_sub(p)?
            } else {
                acc.checked_add(p)?
            };
        }
        Some(acc)
    }

    /// [`PiecewiseLinear::comparison_bits`] after checking that the protocol is exact for every
    /// `|x| ≤ input_bound_enc`: the bound is below 2^62 and the sum before the truncation,
    /// `a·(x − t_0) + Σ_j s_j·ReLU(x − t_j)` (a piecewise-linear function of `x`, so largest at
    /// ±bound or at a knot), stays below 2^62 in magnitude, as [`truncate`] needs. This is
    /// both necessary and sufficient: the slope products themselves may wrap in the ring.
    /// With the returned width, [`piecewise`] equals [`crate::plain::piecewise`] bit for bit.
    pub fn checked_comparison_bits(&self, input_bound_enc: u64) -> Result<u32> {
        self.check()?;
        if input_bound_enc >= fixed::MAX_ENCODED {
            return Err(CoreError::Param(format!(
                "input bound {input_bound_enc} is not below 2^62"
            )));
        }
        let b = i128::from(input_bound_enc);
        let mut xs = vec![-b, b];
        xs.extend(
            self.knots
                .iter()
                .map(|&t| i128::from(t as i64).clamp(-b, b)),
        );
        for x in xs {
            match self.exact_sum(x) {
                Some(v) if v.unsigned_abs() < u128::from(fixed::MAX_ENCODED) => {}
                _ => {
                    return Err(CoreError::Param(format!(
                    "piecewise function: the sum of the pieces at x = {x} (encoded) reaches 2^62; \
                         lower the input bound or in_frac"
                )))
                }
            }
        }
        Ok(self.comparison_bits(input_bound_enc))
    }

    /// The pieces' inputs `x − t_j`, piece-major (`pieces × x.len()`); `p0` says whether this
    /// holder adds public constants.
    pub(crate) fn piece_inputs(&self, x: &[u64], p0: bool) -> Vec<u64> {
        let mut out = Vec::with_capacity(x.len() * self.knots.len());
        for t in &self.knots {
            let t = g_const(p0, *t);
            out.extend(x.iter().map(|v| v.wrapping_sub(t)));
        }
        out
    }

    /// The sum before the truncation, `a·(x − t_0) + Σ_j ±|s_j|·ReLU(x − t_j)` with
    /// `in_frac + SLOPE_BITS` fractional bits, from the pieces' ReLU outputs `y` (as
    /// [`PiecewiseLinear::piece_inputs`] lays them out): local, public factors only.
    pub(crate) fn sum_pieces(&self, x: &[u64], y: &[u64], p0: bool) -> Vec<u64> {
        let t0 = g_const(p0, self.knots.first().copied().unwrap_or(0));
        let mut out: Vec<u64> = x
            .iter()
            .map(|v| v.wrapping_sub(t0).wrapping_mul(self.left_slope))
            .collect();
        let n = x.len();
        for (j, (s, neg)) in self.slopes.iter().zip(&self.negative).enumerate() {
            let piece = &y[j * n..(j + 1) * n];
            for (o, v) in out.iter_mut().zip(piece) {
                let p = v.wrapping_mul(*s);
                *o = if *neg {
                    o.wrapping_sub(p)
                } else {
                    o.wrapping_add(p)
                };
            }
        }
        out
    }

    /// Adds the base `g(t_0)` (P0 only, as a public constant).
    pub(crate) fn add_base(&self, out: &mut [u64], p0: bool) {
        ring::add_scalar_assign(out, g_const(p0, self.base));
    }
}

/// Helper side of [`piecewise`], with the same comparison width `bits`.
pub async fn deal_piecewise<T: Transport>(
    d: &mut Dealer<T>,
    n: usize,
    g: &PiecewiseLinear,
    bits: u32,
) -> Result<()> {
    g.check()?;
    check_bits(bits)?;
    deal_sign(d, n * g.pieces(), SignOut::Relu, bits).await?;
    deal_truncate(d, n, g.shift()).await
}

/// Evaluates a [`PiecewiseLinear`] function as
/// `base + (a·(x − t_0) + Σ_j ±|s_j|·ReLU(x − t_j)) >> shift`: all pieces go through one sign
/// gate on `bits` bits (one round, `8 · pieces` bytes per element per server; a DCF key on
/// `bits − 1` bits with m = 2 per piece and element from the helper), then one exact
/// [`truncate`] of the sum (one round, 8 bytes per element). Equal to
/// [`crate::plain::piecewise`] bit for bit for `|x| ≤ B` when
/// [`PiecewiseLinear::checked_comparison_bits`]`(B)` succeeds and `bits` is at least what it
/// returns ([`FULL_BITS`] always is, given the same check).
pub async fn piecewise<T: Transport>(
    s: &mut Server<T>,
    x: &[u64],
    g: &PiecewiseLinear,
    bits: u32,
) -> Result<Vec<u64>> {
    g.check()?;
    let p0 = s.is_p0();
    let inputs = g.piece_inputs(x, p0);
    let (_, y) = sign(s, &inputs, SignOut::Relu, bits).await?;
    let sum = g.sum_pieces(x, &y, p0);
    let mut out = truncate(s, &sum, g.shift()).await?;
    g.add_base(&mut out, p0);
    Ok(out)
}

/// Sigmoid of `x` (with `in_frac` fractional bits) into `out_frac` fractional bits
/// ([`PiecewiseLinear::sigmoid`], compared on [`FULL_BITS`]).
pub async fn sigmoid<T: Transport>(
    s: &mut Server<T>,
    x: &[u64],
    in_frac: u32,
    out_frac: u32,
) -> Result<Vec<u64>> {
    piecewise(
        s,
        x,
        &PiecewiseLinear::sigmoid(in_frac, out_frac)?,
        FULL_BITS,
    )
    .await
}

/// Helper side of [`sigmoid`].
pub async fn deal_sigmoid<T: Transport>(
    d: &mut Dealer<T>,
    n: usize,
    in_frac: u32,
    out_frac: u32,
) -> Result<()> {
    deal_piecewise(
        d,
        n,
        &PiecewiseLinear::sigmoid(in_frac, out_frac)?,
        FULL_BITS,
    )
    .await
}

/// Tanh of `x` (with `in_frac` fractional bits) into `out_frac` fractional bits
/// ([`PiecewiseLinear::tanh`], compared on [`FULL_BITS`]).
pub async fn tanh<T: Transport>(
    s: &mut Server<T>,
    x: &[u64],
    in_frac: u32,
    out_frac: u32,
) -> Result<Vec<u64>> {
    piecewise(s, x, &PiecewiseLinear::tanh(in_frac, out_frac)?, FULL_BITS).await
}

/// Helper side of [`tanh`].
pub async fn deal_tanh<T: Transport>(
    d: &mut Dealer<T>,
    n: usize,
    in_frac: u32,
    out_frac: u32,
) -> Result<()> {
    deal_piecewise(d, n, &PiecewiseLinear::tanh(in_frac, out_frac)?, FULL_BITS).await
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

/// Helper side of [`output`]: a fresh sharing of zero.
pub async fn deal_output<T: Transport>(d: &mut Dealer<T>, n: usize) -> Result<()> {
    let mut g = d.gate()?;
    g.value(&vec![0u64; n]);
    g.finish().await
}

/// Re-randomises a share with a fresh sharing of zero (so that what the client sees from
/// each server is uniform; PROTOCOLS §8) and sends it to the client. `modulus_bits` < 64
/// reduces the share modulo `2^modulus_bits` (for [`argmax`] results).
pub async fn output<T: Transport>(s: &mut Server<T>, y: &[u64], modulus_bits: u32) -> Result<()> {
    let mut g = s.gate().await?;
    let z = g.value(y.len())?;
    g.finish()?;
    let mut out = ring::add(y, &z)?;
    if modulus_bits < 64 {
        let mask = (1u64 << modulus_bits) - 1;
        for v in out.iter_mut() {
            *v &= mask;
        }
    }
    s.send_output(&out).await
}

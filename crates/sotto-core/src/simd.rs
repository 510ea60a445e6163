//! Hot loops compiled a second time for wider vector instructions, chosen at run time.
//!
//! The release build targets baseline x86-64 (SSE2), which has no 64-bit vector multiply: the
//! ring product builds each one from three 32-bit ones. Processors with AVX-512 (F, DQ and
//! VL) multiply eight 64-bit lanes in one instruction, and the same loop compiled for them
//! runs three to six times faster (`benches/gemm.rs`: 3.0 → 9.0 GMAC/s for network A's first
//! layer at batch 1, 3.0–3.1 → 16.8–18.1 for 3×3 convolutions). Building the whole program for them
//! (`-C target-cpu=native`) would make a binary that dies with an illegal instruction on any
//! other processor, so only these loops get a second build, and the processor is asked at
//! run time which one to run. The one-bit DCF's evaluation ([`crate::dcf_bit`]) has such a
//! build too, for a smaller gain (one thread, 39-bit keys, both builds in one process: 5.2–5.7
//! against 5.8–6.2 ns per key and level); the packed DCF's evaluation and the one-bit key
//! generation, measured the same way, gained nothing from such a build and have none. Where
//! the processor also has VAES, the one-bit keys' evaluation and generation and the packed
//! two-word keys' evaluation run code written for it instead: four keys' seeds per register
//! through the whole level step, the AES rounds included (`x86::dcf_bit_eval_vaes`,
//! `dcf_bit_gen_vaes`, `dcf_packed2_eval_vaes`; about twice as fast, `docs/COMPARISONS.md`
//! §13).
//!
//! The workspace denies `unsafe` code; this module holds its only exception, one kind of call
//! in one place per loop: calling a function compiled with `#[target_feature]` is `unsafe`, and
//! sound exactly when the processor has those features, which `is_x86_feature_detected!`
//! checks right before the call. The functions themselves are safe Rust: each is the portable
//! body, inlined, so it computes the same values in the same order and its result is the
//! portable one bit for bit (tests compare the two on random inputs). [`set_enabled`] (or the
//! environment variable `SOTTO_SIMD=0`) keeps the portable build, to compare or to rule it out.

use std::sync::atomic::{AtomicU8, Ordering};

/// 0: not decided yet (read `SOTTO_SIMD`); 1: wider builds allowed; 2: portable only.
static MODE: AtomicU8 = AtomicU8::new(0);

/// Allows (`true`, the default) or forbids the wider builds for the whole process. Results do
/// not depend on it.
pub fn set_enabled(on: bool) {
    MODE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

fn enabled() -> bool {
    match MODE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let off = std::env::var("SOTTO_SIMD").is_ok_and(|v| v.trim() == "0");
            // A racing `set_enabled` wins over the environment.
            let _ = MODE.compare_exchange(
                0,
                if off { 2 } else { 1 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            MODE.load(Ordering::Relaxed) == 1
        }
    }
}

/// The wider build the ring product and the one-bit key evaluation run on this processor, if
/// any: `"avx512"` or `None` (portable code, also when [`set_enabled`] turned it off).
pub fn kernel() -> Option<&'static str> {
    (enabled() && avx512()).then_some("avx512")
}

/// The build the one-bit key evaluation runs on this processor: `"avx512+vaes"` (four keys
/// per register, AES rounds included), `"avx512"` or `None` (portable code, also when
/// [`set_enabled`] turned the wider builds off).
pub fn key_eval_kernel() -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    if enabled() && vaes() {
        return Some("avx512+vaes");
    }
    kernel()
}

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512() -> bool {
    false
}

/// [`crate::linear`]'s ring product `c += a · b` in its AVX-512 build when this processor has
/// it and it is enabled: returns whether it ran (if not, the caller runs the portable one).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_acc(
    a: &[u64],
    lda: usize,
    b: &[u64],
    ldb: usize,
    c: &mut [u64],
    ldc: usize,
    m: usize,
    k: usize,
    n: usize,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if enabled() && avx512() {
        #[allow(unsafe_code)]
        // SAFETY: `gemm_acc_avx512` is safe Rust compiled with `avx512f,avx512dq,avx512vl`;
        // calling it is sound because `avx512()` just checked that this processor has all
        // three.
        unsafe {
            x86::gemm_acc_avx512(a, lda, b, ldb, c, ldc, m, k, n)
        };
        return true;
    }
    let _ = (a, lda, b, ldb, c, ldc, m, k, n);
    false
}

#[cfg(target_arch = "x86_64")]
fn vaes() -> bool {
    avx512()
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("vaes")
        && std::arch::is_x86_feature_detected!("aes")
}

/// [`crate::dcf_bit`]'s evaluation of a range of keys in its AVX-512 build when this processor
/// has it and it is enabled: returns whether it ran (if not, the caller runs the portable one).
/// With VAES as well, four keys' seeds share one 512-bit register through the whole level
/// step, the AES rounds included ([`x86::dcf_bit_eval_vaes`]).
pub(crate) fn dcf_bit_eval(
    v: &crate::dcf_bit::View<'_>,
    first: usize,
    xs: &[u64],
    out: &mut [u8],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if enabled() && vaes() {
        #[allow(unsafe_code)]
        // SAFETY: `dcf_bit_eval_vaes` is safe Rust compiled with `avx512f,avx512dq,avx512vl,
        // avx512bw,vaes,aes`; calling it is sound because `vaes()` just checked that this
        // processor has all six.
        unsafe {
            x86::dcf_bit_eval_vaes(v, first, xs, out)
        };
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    if enabled() && avx512() {
        #[allow(unsafe_code)]
        // SAFETY: `dcf_bit_eval_avx512` is safe Rust compiled with `avx512f,avx512dq,
        // avx512vl`; calling it is sound because `avx512()` just checked that this processor
        // has all three.
        unsafe {
            x86::dcf_bit_eval_avx512(v, first, xs, out)
        };
        return true;
    }
    let _ = (v, first, xs, out);
    false
}

/// [`crate::dcf_bit`]'s generation of the keys `first..` of `job` into `cw` and `fin` in a
/// VAES build when this processor has it and it is enabled: returns how many keys it made
/// (a multiple of sixteen, from the first; 0 when it did not run), the caller makes the rest.
pub(crate) fn dcf_bit_gen(
    job: &crate::dcf_bit::GenJob<'_>,
    first: usize,
    cw: &mut [&mut [u8]],
    fin: &mut [u8],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if enabled() && vaes() {
        #[allow(unsafe_code)]
        // SAFETY: `dcf_bit_gen_vaes` is safe Rust compiled with `avx512f,avx512dq,avx512vl,
        // avx512bw,vaes,aes`; calling it is sound because `vaes()` just checked that this
        // processor has all six.
        return unsafe { x86::dcf_bit_gen_vaes(job, first, cw, fin) };
    }
    let _ = (job, first, cw, fin);
    0
}

/// [`crate::dcf`]'s evaluation of a range of packed keys with two-word payloads (the default
/// max pools' keys) in a VAES build when this processor has it and it is enabled: returns
/// whether it ran (if not, the caller runs the portable one).
pub(crate) fn dcf_packed2_eval(
    v: &crate::dcf::View<'_>,
    first: usize,
    xs: &[u64],
    out: &mut [u64],
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if enabled() && vaes() {
        #[allow(unsafe_code)]
        // SAFETY: `dcf_packed2_eval_vaes` is safe Rust compiled with `avx512f,avx512dq,
        // avx512vl,avx512bw,vaes,aes`; calling it is sound because `vaes()` just checked that
        // this processor has all six.
        unsafe {
            x86::dcf_packed2_eval_vaes(v, first, xs, out)
        };
        return true;
    }
    let _ = (v, first, xs, out);
    false
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Keys per window of [`dcf_bit_eval_vaes`]: their state (48 bytes each) stays in the L1
    /// cache while every level's corrections of the window are read in one run.
    const VWINDOW: usize = 256;

    /// Eight `u64` (four 128-bit blocks) as one register.
    macro_rules! ld {
        ($a:expr) => {{
            let a: &[u64; 8] = $a;
            _mm512_set_epi64(
                a[7] as i64,
                a[6] as i64,
                a[5] as i64,
                a[4] as i64,
                a[3] as i64,
                a[2] as i64,
                a[1] as i64,
                a[0] as i64,
            )
        }};
    }

    /// One register into eight `u64`.
    macro_rules! st {
        ($a:expr, $v:expr) => {{
            let a: &mut [u64; 8] = $a;
            let v = $v;
            let lo = _mm512_castsi512_si256(v);
            let hi = _mm512_extracti64x4_epi64::<1>(v);
            a[0] = _mm256_extract_epi64::<0>(lo) as u64;
            a[1] = _mm256_extract_epi64::<1>(lo) as u64;
            a[2] = _mm256_extract_epi64::<2>(lo) as u64;
            a[3] = _mm256_extract_epi64::<3>(lo) as u64;
            a[4] = _mm256_extract_epi64::<0>(hi) as u64;
            a[5] = _mm256_extract_epi64::<1>(hi) as u64;
            a[6] = _mm256_extract_epi64::<2>(hi) as u64;
            a[7] = _mm256_extract_epi64::<3>(hi) as u64;
        }};
    }

    /// 64 bytes (four little-endian 128-bit words) as eight `u64`.
    macro_rules! words {
        ($b:expr) => {{
            let b: &[u8] = $b;
            let mut w = [0u64; 8];
            for (o, c) in w.iter_mut().zip(b.chunks_exact(8)) {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                *o = u64::from_le_bytes(a);
            }
            w
        }};
    }

    /// A 128-bit word in all four 128-bit lanes of a register.
    macro_rules! lanes {
        ($w:expr) => {{
            let w: u128 = $w;
            let (lo, hi) = (w as i64, (w >> 64) as i64);
            _mm512_set_epi64(hi, lo, hi, lo, hi, lo, hi, lo)
        }};
    }

    /// Keys `k..k + 4` of a state array holding two words per key, as one register.
    macro_rules! ldk {
        ($a:expr, $k:expr) => {
            ld!((&$a[2 * $k..2 * $k + 8]).try_into().expect("8 words"))
        };
    }

    /// One register into keys `k..k + 4` of a state array holding two words per key.
    macro_rules! stk {
        ($a:expr, $k:expr, $v:expr) => {
            st!(
                (&mut $a[2 * $k..2 * $k + 8]).try_into().expect("8 words"),
                $v
            )
        };
    }

    /// Bit `shift` of the inputs `k..k + 4`, in both words of each key's lane.
    macro_rules! sides {
        ($x:expr, $k:expr, $shift:expr) => {{
            let b = |i: usize| (($x[$k + i] >> $shift) & 1) as i64;
            let (b0, b1, b2, b3) = (b(0), b(1), b(2), b(3));
            _mm512_set_epi64(b3, b3, b2, b2, b1, b1, b0, b0)
        }};
    }

    /// `tweak(σ, j)` of each key's side bit σ (`sides!`): the low word of `tweak(0, j)`, σ in
    /// the high one.
    macro_rules! tweaks {
        ($sides:expr, $j:expr) => {
            _mm512_xor_si512(
                lanes!(crate::dcf::tweak(0, $j)),
                _mm512_and_si512($sides, lanes!(u128::MAX << 64)),
            )
        };
    }

    /// One level's seed and control-bit step of four keys, shared by evaluation and
    /// generation: from the expanded block `w`, the seed correction `c`, the control-bit
    /// corrections `bits` (bit 0 of the low word) and the control mask `t` (all-ones lanes
    /// where the bit is 1), the next seed `(w ^ (c & t)) & mask` and the next control mask,
    /// `(w ^ (bits & t)) & 1` spread over the lane.
    macro_rules! advance {
        ($w:expr, $c:expr, $bits:expr, $t:expr, $mask:expr) => {{
            let (w, t) = ($w, $t);
            let s = _mm512_and_si512(_mm512_xor_si512(w, _mm512_and_si512($c, t)), $mask);
            let tb = _mm512_and_si512(_mm512_xor_si512(w, _mm512_and_si512($bits, t)), lanes!(1));
            (
                s,
                _mm512_sub_epi64(_mm512_setzero_si512(), _mm512_unpacklo_epi64(tb, tb)),
            )
        }};
    }

    /// One AES-128 key-expansion step (round constant `R`).
    macro_rules! expand {
        ($k:expr, $r:literal) => {{
            let k = $k;
            let t = _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$r>(k));
            let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
            let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
            let k = _mm_xor_si128(k, _mm_slli_si128::<4>(k));
            _mm_xor_si128(k, t)
        }};
    }

    /// The round keys of the PRG's fixed key ([`crate::dcf::PRG_KEY`]), each in all four
    /// 128-bit lanes.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,vaes,aes")]
    fn round_keys() -> [__m512i; 11] {
        let key = u128::from_le_bytes(crate::dcf::PRG_KEY);
        let k0 = _mm_set_epi64x((key >> 64) as i64, key as i64);
        let k1 = expand!(k0, 0x01);
        let k2 = expand!(k1, 0x02);
        let k3 = expand!(k2, 0x04);
        let k4 = expand!(k3, 0x08);
        let k5 = expand!(k4, 0x10);
        let k6 = expand!(k5, 0x20);
        let k7 = expand!(k6, 0x40);
        let k8 = expand!(k7, 0x80);
        let k9 = expand!(k8, 0x1b);
        let k10 = expand!(k9, 0x36);
        [k0, k1, k2, k3, k4, k5, k6, k7, k8, k9, k10].map(|k| _mm512_broadcast_i32x4(k))
    }

    /// AES-128 with the round keys `rk` of four registers (sixteen blocks) side by side.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,vaes,aes")]
    fn aes4(rk: &[__m512i; 11], mut b: [__m512i; 4]) -> [__m512i; 4] {
        for x in b.iter_mut() {
            *x = _mm512_xor_si512(*x, rk[0]);
        }
        for k in &rk[1..10] {
            for x in b.iter_mut() {
                *x = _mm512_aesenc_epi128(*x, *k);
            }
        }
        for x in b.iter_mut() {
            *x = _mm512_aesenclast_epi128(*x, rk[10]);
        }
        b
    }

    /// [`crate::dcf_bit::GenJob::run_body`] for the first multiple of sixteen keys, four
    /// keys per 512-bit register: both parties' seeds walk the levels side by side (four AES
    /// blocks per key and level: each party's left and right child), the threshold's bits
    /// choose the kept and lost children with lane blends, and each level's corrections of
    /// four keys are stored as one register. The same values as the portable body
    /// (`vaes_generation_equals_portable` in `dcf_bit.rs` compares the bytes). Returns the
    /// number of keys made.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,vaes,aes")]
    pub(super) fn dcf_bit_gen_vaes(
        job: &crate::dcf_bit::GenJob<'_>,
        first: usize,
        cw: &mut [&mut [u8]],
        fin: &mut [u8],
    ) -> usize {
        let len = fin.len() / 16;
        let n16 = len / 16 * 16;
        let n = job.n;
        let nu = crate::dcf_bit::nu(n);
        let levels = n - nu;
        let low = (1u64 << nu) - 1;
        let lmask = crate::dcf_bit::leaf_mask(nu);
        let rk = round_keys();
        let sm = crate::dcf_bit::SEED_MASK;
        let smask = lanes!(sm);
        let one_lo = lanes!(1);
        let zero = _mm512_setzero_si512();
        let tw_l = lanes!(crate::dcf::tweak(0, 0));
        let tw_r = lanes!(crate::dcf::tweak(1, 0));
        let tw_leaf = lanes!(crate::dcf::tweak(2, 0));
        // Per key: both parties' seeds and control masks, and V_α (bit 0 of the low word).
        let mut s0 = vec![0u64; 2 * VWINDOW];
        let mut s1 = vec![0u64; 2 * VWINDOW];
        let mut m0 = vec![0u64; 2 * VWINDOW];
        let mut m1 = vec![0u64; 2 * VWINDOW];
        let mut va = vec![0u64; 2 * VWINDOW];
        for w0 in (0..n16).step_by(VWINDOW) {
            let wl = VWINDOW.min(n16 - w0);
            for i in 0..wl {
                let r0 = crate::dcf::read_u128(job.roots0, first + w0 + i) & sm;
                let r1 = crate::dcf::read_u128(job.roots1, first + w0 + i) & sm;
                s0[2 * i] = r0 as u64;
                s0[2 * i + 1] = (r0 >> 64) as u64;
                s1[2 * i] = r1 as u64;
                s1[2 * i + 1] = (r1 >> 64) as u64;
                m0[2 * i] = 0;
                m0[2 * i + 1] = 0;
                m1[2 * i] = u64::MAX;
                m1[2 * i + 1] = u64::MAX;
                va[2 * i] = 0;
                va[2 * i + 1] = 0;
            }
            for (lvl, out) in cw.iter_mut().enumerate().take(levels) {
                let shift = n - 1 - lvl;
                for g in (0..wl).step_by(16) {
                    let mut in0l = [zero; 4];
                    let mut in0r = [zero; 4];
                    let mut in1l = [zero; 4];
                    let mut in1r = [zero; 4];
                    // Per register: the threshold bits as a lane mask (two lanes per key) and
                    // as bit 0 of each key's low word.
                    let mut ka = [0u8; 4];
                    let mut abit = [zero; 4];
                    for j in 0..4 {
                        let k = g + 4 * j;
                        let a = |i: usize| ((job.alphas[first + w0 + k + i] >> shift) & 1) as u8;
                        let (a0, a1, a2, a3) = (a(0), a(1), a(2), a(3));
                        ka[j] = (a0 * 3) | ((a1 * 3) << 2) | ((a2 * 3) << 4) | ((a3 * 3) << 6);
                        abit[j] = _mm512_set_epi64(
                            0, a3 as i64, 0, a2 as i64, 0, a1 as i64, 0, a0 as i64,
                        );
                        let p0 = ldk!(s0, k);
                        let p1 = ldk!(s1, k);
                        in0l[j] = _mm512_xor_si512(p0, tw_l);
                        in0r[j] = _mm512_xor_si512(p0, tw_r);
                        in1l[j] = _mm512_xor_si512(p1, tw_l);
                        in1r[j] = _mm512_xor_si512(p1, tw_r);
                    }
                    let o0l = aes4(&rk, in0l);
                    let o0r = aes4(&rk, in0r);
                    let o1l = aes4(&rk, in1l);
                    let o1r = aes4(&rk, in1r);
                    for j in 0..4 {
                        let k = g + 4 * j;
                        let w0l = _mm512_xor_si512(o0l[j], in0l[j]);
                        let w0r = _mm512_xor_si512(o0r[j], in0r[j]);
                        let w1l = _mm512_xor_si512(o1l[j], in1l[j]);
                        let w1r = _mm512_xor_si512(o1r[j], in1r[j]);
                        let k_a = ka[j];
                        // keep = α's bit: the right child where it is 1.
                        let w0k = _mm512_mask_blend_epi64(k_a, w0l, w0r);
                        let w1k = _mm512_mask_blend_epi64(k_a, w1l, w1r);
                        let xl = _mm512_xor_si512(w0l, w1l);
                        let xr = _mm512_xor_si512(w0r, w1r);
                        let xlose = _mm512_mask_blend_epi64(k_a, xr, xl);
                        let xkeep = _mm512_mask_blend_epi64(k_a, xl, xr);
                        let s_cw = _mm512_and_si512(xlose, smask);
                        let av = abit[j];
                        let vav = ldk!(va, k);
                        // V_cw = v0 ⊕ v1 (losing children) ⊕ V_α ⊕ α's bit; V_α ^= v (kept) ⊕ V_cw
                        let v_cw = _mm512_and_si512(
                            _mm512_xor_si512(
                                _mm512_xor_si512(_mm512_srli_epi64::<1>(xlose), vav),
                                av,
                            ),
                            one_lo,
                        );
                        let vav = _mm512_and_si512(
                            _mm512_xor_si512(
                                _mm512_xor_si512(vav, _mm512_srli_epi64::<1>(xkeep)),
                                v_cw,
                            ),
                            one_lo,
                        );
                        let t_l = _mm512_and_si512(
                            _mm512_xor_si512(_mm512_xor_si512(xl, av), one_lo),
                            one_lo,
                        );
                        let t_r = _mm512_and_si512(_mm512_xor_si512(xr, av), one_lo);
                        let t_keep = _mm512_mask_blend_epi64(k_a, t_l, t_r);
                        let word = _mm512_or_si512(
                            _mm512_or_si512(s_cw, t_l),
                            _mm512_or_si512(
                                _mm512_slli_epi64::<1>(t_r),
                                _mm512_slli_epi64::<2>(v_cw),
                            ),
                        );
                        let mut ww = [0u64; 8];
                        st!(&mut ww, word);
                        for (i, c) in out[16 * (w0 + k)..16 * (w0 + k) + 64]
                            .chunks_exact_mut(8)
                            .enumerate()
                        {
                            c.copy_from_slice(&ww[i].to_le_bytes());
                        }
                        // Each party: s = (w_keep & SEED_MASK) ^ (s_cw & t) (s_cw has the
                        // mask's zero bits already), t = (w_keep ^ (t & t_keep)) & 1.
                        let (sv0, mv0) = advance!(w0k, s_cw, t_keep, ldk!(m0, k), smask);
                        let (sv1, mv1) = advance!(w1k, s_cw, t_keep, ldk!(m1, k), smask);
                        stk!(s0, k, sv0);
                        stk!(m0, k, mv0);
                        stk!(s1, k, sv1);
                        stk!(m1, k, mv1);
                        stk!(va, k, vav);
                    }
                }
            }
            // The leaf blocks: CW = Convert(s0) ⊕ Convert(s1) ⊕ V_α·1 ⊕ [j < α mod 2^ν].
            for g in (0..wl).step_by(16) {
                let mut in0 = [zero; 4];
                let mut in1 = [zero; 4];
                for j in 0..4 {
                    let k = g + 4 * j;
                    in0[j] = _mm512_xor_si512(ldk!(s0, k), tw_leaf);
                    in1[j] = _mm512_xor_si512(ldk!(s1, k), tw_leaf);
                }
                let o0 = aes4(&rk, in0);
                let o1 = aes4(&rk, in1);
                for j in 0..4 {
                    let k = g + 4 * j;
                    let c = _mm512_xor_si512(
                        _mm512_xor_si512(o0[j], in0[j]),
                        _mm512_xor_si512(o1[j], in1[j]),
                    );
                    let mut cc = [0u64; 8];
                    st!(&mut cc, c);
                    for i in 0..4 {
                        let key = w0 + k + i;
                        let cv = u128::from(cc[2 * i]) | (u128::from(cc[2 * i + 1]) << 64);
                        let a_low = job.alphas[first + key] & low;
                        let below = (1u128 << a_low) - 1;
                        let all = 0u128.wrapping_sub(u128::from(va[2 * (k + i)] as u8 & 1));
                        let word = (cv ^ all ^ below) & lmask;
                        fin[16 * key..16 * key + 16].copy_from_slice(&word.to_le_bytes());
                    }
                }
            }
        }
        n16
    }

    /// [`crate::dcf::eval_range_m`] for packed keys with two-word payloads, four keys per
    /// 512-bit register as in [`dcf_bit_eval_vaes`]: per key and level two AES blocks (the
    /// next seed and control bit; the two payload words), and the payload's running sums in
    /// the register's two words per key. The same operations as the portable body
    /// (`vaes_build_equals_portable_build` in `dcf.rs` compares them); keys beyond a multiple
    /// of sixteen run the portable body.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,vaes,aes")]
    pub(super) fn dcf_packed2_eval_vaes(
        v: &crate::dcf::View<'_>,
        first: usize,
        xs: &[u64],
        out: &mut [u64],
    ) {
        let n16 = xs.len() / 16 * 16;
        let (n, count) = (v.n, v.count);
        let rk = round_keys();
        let seed_mask = crate::dcf::Format::Packed.seed_mask();
        let smask = lanes!(seed_mask);
        let zero = _mm512_setzero_si512();
        let party = if v.party == 1 { -1i64 } else { 0 };
        // Per key: seed, control mask and the two payload sums, two words each.
        let mut s = vec![0u64; 2 * VWINDOW];
        let mut m = vec![0u64; 2 * VWINDOW];
        let mut o = vec![0u64; 2 * VWINDOW];
        for (w, (xw, ow)) in xs[..n16]
            .chunks(VWINDOW)
            .zip(out[..2 * n16].chunks_mut(2 * VWINDOW))
            .enumerate()
        {
            let base = first + w * VWINDOW;
            let len = xw.len();
            for i in 0..len {
                let r = crate::dcf::read_u128(v.roots, base + i) & seed_mask;
                s[2 * i] = r as u64;
                s[2 * i + 1] = (r >> 64) as u64;
                m[2 * i] = party as u64;
                m[2 * i + 1] = party as u64;
                o[2 * i] = 0;
                o[2 * i + 1] = 0;
            }
            for lvl in 0..n {
                let shift = n - 1 - lvl;
                let at = lvl * count + base;
                let cws = &v.cw_s[16 * at..16 * (at + len)];
                let cwv = &v.cw_v[16 * at..16 * (at + len)];
                let next = (lvl + 1 < n).then(|| {
                    (
                        &v.cw_s[16 * (at + count)..16 * (at + count + len)],
                        &v.cw_v[16 * (at + count)..16 * (at + count + len)],
                    )
                });
                for g in (0..len).step_by(16) {
                    if let Some((ns, nv)) = next {
                        for line in 0..4 {
                            _mm_prefetch::<_MM_HINT_T0>(ns[16 * g + 64 * line..].as_ptr().cast());
                            _mm_prefetch::<_MM_HINT_T0>(nv[16 * g + 64 * line..].as_ptr().cast());
                        }
                    }
                    let mut sides = [zero; 4];
                    let mut in0 = [zero; 4];
                    let mut in1 = [zero; 4];
                    for j in 0..4 {
                        let k = g + 4 * j;
                        sides[j] = sides!(xw, k, shift);
                        let sj = ldk!(s, k);
                        in0[j] = _mm512_xor_si512(sj, tweaks!(sides[j], 0));
                        in1[j] = _mm512_xor_si512(sj, tweaks!(sides[j], 1));
                    }
                    let out0 = aes4(&rk, in0);
                    let out1 = aes4(&rk, in1);
                    for j in 0..4 {
                        let k = g + 4 * j;
                        let fv = _mm512_xor_si512(out0[j], in0[j]);
                        let wv = _mm512_xor_si512(out1[j], in1[j]);
                        let cwsv = ld!(&words!(&cws[16 * k..16 * k + 64]));
                        let cwvv = ld!(&words!(&cwv[16 * k..16 * k + 64]));
                        let mv = ldk!(m, k);
                        // o += w + (cw_v & t), word by word
                        let ov = _mm512_add_epi64(
                            ldk!(o, k),
                            _mm512_add_epi64(wv, _mm512_and_si512(cwvv, mv)),
                        );
                        let bits = _mm512_srlv_epi64(cwsv, sides[j]);
                        let (sv, mv) = advance!(fv, cwsv, bits, mv, smask);
                        stk!(s, k, sv);
                        stk!(m, k, mv);
                        stk!(o, k, ov);
                    }
                }
            }
            // Convert(s) and the final correction, then the party's sign.
            let conv_tweak = lanes!(crate::dcf::tweak(2, 1));
            for g in (0..len).step_by(16) {
                let mut inp = [zero; 4];
                for (j, x) in inp.iter_mut().enumerate() {
                    let k = g + 4 * j;
                    *x = _mm512_xor_si512(ldk!(s, k), conv_tweak);
                }
                let outb = aes4(&rk, inp);
                for j in 0..4 {
                    let k = g + 4 * j;
                    let at = 16 * (base + k);
                    let fin = ld!(&words!(&v.cw_final[at..at + 64]));
                    let sum = _mm512_add_epi64(
                        ldk!(o, k),
                        _mm512_add_epi64(
                            _mm512_xor_si512(outb[j], inp[j]),
                            _mm512_and_si512(fin, ldk!(m, k)),
                        ),
                    );
                    let sum = if v.party == 1 {
                        _mm512_sub_epi64(zero, sum)
                    } else {
                        sum
                    };
                    stk!(ow, k, sum);
                }
            }
        }
        crate::dcf::eval_range_m::<2>(v, first + n16, &xs[n16..], &mut out[2 * n16..]);
    }

    /// [`crate::dcf_bit::eval_range_body`] with four keys per 512-bit register: the seeds,
    /// the control bits (as all-ones or all-zeros 128-bit lanes) and the running output bits
    /// stay in registers through a level, the fixed-key AES runs as VAES rounds on sixteen
    /// keys at a time, and the corrections of four keys load as one register. It computes
    /// the portable body's values with the same operations (`wider_build_equals_portable_
    /// build` compares them); keys beyond a multiple of sixteen run the portable body.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl,avx512bw,vaes,aes")]
    pub(super) fn dcf_bit_eval_vaes(
        v: &crate::dcf_bit::View<'_>,
        first: usize,
        xs: &[u64],
        out: &mut [u8],
    ) {
        let n4 = xs.len() / 16 * 16;
        let (n, count) = (v.n, v.count);
        let nu = crate::dcf_bit::nu(n);
        let levels = n - nu;
        let low = (1u64 << nu) - 1;
        let rk = round_keys();
        let aes = |b: [__m512i; 4]| aes4(&rk, b);
        let seed_mask = lanes!(crate::dcf_bit::SEED_MASK);
        let zero = _mm512_setzero_si512();
        let party = if v.party == 1 { -1i64 } else { 0 };
        // Per key: seed (2 words), control mask (2 words), output bit (in word 0 of 2).
        let mut s = vec![0u64; 2 * VWINDOW];
        let mut m = vec![0u64; 2 * VWINDOW];
        let mut o = vec![0u64; 2 * VWINDOW];
        for (w, (xw, ow)) in xs[..n4]
            .chunks(VWINDOW)
            .zip(out[..n4].chunks_mut(VWINDOW))
            .enumerate()
        {
            let base = first + w * VWINDOW;
            let len = xw.len();
            for i in 0..len {
                let r = crate::dcf::read_u128(v.roots, base + i) & crate::dcf_bit::SEED_MASK;
                s[2 * i] = r as u64;
                s[2 * i + 1] = (r >> 64) as u64;
                m[2 * i] = party as u64;
                m[2 * i + 1] = party as u64;
                o[2 * i] = 0;
                o[2 * i + 1] = 0;
            }
            for lvl in 0..levels {
                let shift = n - 1 - lvl;
                let at = lvl * count + base;
                let cws = &v.cws[16 * at..16 * (at + len)];
                // The next level's corrections of the same keys, fetched one level ahead:
                // a pooled session's keys are long out of the caches, and each level's run
                // of a window is a separate stream the hardware prefetcher would start cold.
                let next =
                    (lvl + 1 < levels).then(|| &v.cws[16 * (at + count)..16 * (at + count + len)]);
                // Sixteen keys (four registers) per step.
                for g in (0..len).step_by(16) {
                    if let Some(nx) = next {
                        for line in 0..4 {
                            _mm_prefetch::<_MM_HINT_T0>(nx[16 * g + 64 * line..].as_ptr().cast());
                        }
                    }
                    let mut sides = [zero; 4];
                    let mut inp = [zero; 4];
                    for j in 0..4 {
                        let k = g + 4 * j;
                        sides[j] = sides!(xw, k, shift);
                        inp[j] = _mm512_xor_si512(ldk!(s, k), tweaks!(sides[j], 0));
                    }
                    let out_b = aes(inp);
                    for j in 0..4 {
                        let k = g + 4 * j;
                        let wv = _mm512_xor_si512(out_b[j], inp[j]);
                        let cwv = ld!(&words!(&cws[16 * k..16 * k + 64]));
                        let mv = ldk!(m, k);
                        // o ^= (w >> 1) ^ ((cw >> 2) & t)   (bit 0 of the low word)
                        let ov = _mm512_xor_si512(
                            ldk!(o, k),
                            _mm512_xor_si512(
                                _mm512_srli_epi64::<1>(wv),
                                _mm512_and_si512(_mm512_srli_epi64::<2>(cwv), mv),
                            ),
                        );
                        // s = (w & SEED_MASK) ^ (cw & SEED_MASK & t), t = (w ^ ((cw >> σ) & t)) & 1
                        let bits = _mm512_srlv_epi64(cwv, sides[j]);
                        let (sv, mv) = advance!(wv, cwv, bits, mv, seed_mask);
                        stk!(s, k, sv);
                        stk!(m, k, mv);
                        stk!(o, k, ov);
                    }
                }
            }
            // The leaf block, corrected, and bit `x mod 2^ν` of it.
            let leaf_tweak = lanes!(crate::dcf::tweak(2, 0));
            for g in (0..len).step_by(16) {
                let mut inp = [zero; 4];
                for (j, x) in inp.iter_mut().enumerate() {
                    let k = g + 4 * j;
                    *x = _mm512_xor_si512(ldk!(s, k), leaf_tweak);
                }
                let out_b = aes(inp);
                for j in 0..4 {
                    let k = g + 4 * j;
                    let fin = ld!(&words!(&v.finals[16 * (base + k)..16 * (base + k) + 64]));
                    let leaf = _mm512_xor_si512(
                        _mm512_xor_si512(out_b[j], inp[j]),
                        _mm512_and_si512(fin, ldk!(m, k)),
                    );
                    let mut l = [0u64; 8];
                    st!(&mut l, leaf);
                    for i in 0..4 {
                        let bit = xw[k + i] & low;
                        let word = if bit < 64 {
                            l[2 * i] >> bit
                        } else {
                            l[2 * i + 1] >> (bit - 64)
                        };
                        ow[k + i] = ((o[2 * (k + i)] ^ word) & 1) as u8;
                    }
                }
            }
        }
        crate::dcf_bit::eval_range_body(v, first + n4, &xs[n4..], &mut out[n4..]);
    }

    /// [`crate::dcf_bit::eval_range_body`] compiled for AVX-512.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    pub(super) fn dcf_bit_eval_avx512(
        v: &crate::dcf_bit::View<'_>,
        first: usize,
        xs: &[u64],
        out: &mut [u8],
    ) {
        crate::dcf_bit::eval_range_body(v, first, xs, out)
    }

    /// [`crate::linear::gemm_acc_body`] compiled for AVX-512.
    #[target_feature(enable = "avx512f,avx512dq,avx512vl")]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm_acc_avx512(
        a: &[u64],
        lda: usize,
        b: &[u64],
        ldb: usize,
        c: &mut [u64],
        ldc: usize,
        m: usize,
        k: usize,
        n: usize,
    ) {
        crate::linear::gemm_acc_body(a, lda, b, ldb, c, ldc, m, k, n)
    }
}

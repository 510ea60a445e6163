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
//! generation, measured the same way, gained nothing and have none.
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

/// [`crate::dcf_bit`]'s evaluation of a range of keys in its AVX-512 build when this processor
/// has it and it is enabled: returns whether it ran (if not, the caller runs the portable one).
pub(crate) fn dcf_bit_eval(
    v: &crate::dcf_bit::View<'_>,
    first: usize,
    xs: &[u64],
    out: &mut [u8],
) -> bool {
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

#[cfg(target_arch = "x86_64")]
mod x86 {
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

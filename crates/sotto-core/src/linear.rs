//! Shapes and local kernels of the linear layers: matmul, conv2d by im2col, pooling windows.
//!
//! Tensors are row-major; images are NCHW (batch, channels, height, width).
//!
//! Both bilinear maps run on one ring product, `gemm_acc`: `c += a · b` over Z_2^64, cache
//! blocked, streaming each row of `b` into four rows of `c` at once (its comment says why this
//! shape and not a register-tiled one). A convolution is that product per image between the
//! weights `[O, C·kh·kw]` and the image's patches laid out as rows `[C·kh·kw, OH·OW]` (im2col,
//! built one cache-sized block of taps by pixels at a time), which yields NCHW output without a
//! transpose.
//!
//! A large product is spread over the cores ([`max_threads`], set by [`set_max_threads`] or the
//! environment variable `SOTTO_THREADS`) with scoped threads, each computing whole outputs:
//! a range of output rows, or of columns for a matrix product with few rows. The sums are
//! the sequential ones, so the result is the same bit for bit; products under
//! [`PAR_MACS_PER_THREAD`] multiply-adds per thread, and every product on wasm32, stay on the
//! calling thread.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(not(target_arch = "wasm32"))]
use std::sync::Mutex;
use std::sync::OnceLock;

use crate::error::{CoreError, Result};
use crate::ring;

/// Shape of a 2-D convolution over an NCHW batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conv2dShape {
    /// Batch size N.
    pub batch: usize,
    /// Input channels C.
    pub in_channels: usize,
    /// Input height H.
    pub height: usize,
    /// Input width W.
    pub width: usize,
    /// Output channels O.
    pub out_channels: usize,
    /// Kernel height.
    pub kernel_h: usize,
    /// Kernel width.
    pub kernel_w: usize,
    /// Vertical stride (≥ 1).
    pub stride_h: usize,
    /// Horizontal stride (≥ 1).
    pub stride_w: usize,
    /// Zero rows added above.
    pub pad_top: usize,
    /// Zero columns added on the left.
    pub pad_left: usize,
    /// Zero rows added below.
    pub pad_bottom: usize,
    /// Zero columns added on the right.
    pub pad_right: usize,
}

impl Conv2dShape {
    fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(CoreError::Shape(format!("conv2d {self:?}: {m}")));
        if self.stride_h == 0 || self.stride_w == 0 {
            return bad("stride must be at least 1");
        }
        if self.kernel_h == 0 || self.kernel_w == 0 {
            return bad("kernel must be at least 1×1");
        }
        // Every size this shape implies must fit (shapes can come from untrusted files).
        let dims = [
            self.batch,
            self.in_channels,
            self.height,
            self.width,
            self.out_channels,
            self.kernel_h,
            self.kernel_w,
            self.pad_top,
            self.pad_left,
            self.pad_bottom,
            self.pad_right,
        ];
        if dims.iter().any(|&d| d > 1 << 24) {
            return bad("a dimension is larger than 2^24");
        }
        if self.height + self.pad_top + self.pad_bottom < self.kernel_h
            || self.width + self.pad_left + self.pad_right < self.kernel_w
        {
            return bad("kernel larger than the padded input");
        }
        let patch = self
            .in_channels
            .checked_mul(self.kernel_h)
            .and_then(|v| v.checked_mul(self.kernel_w));
        let prod = |ds: &[usize]| {
            ds.iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .filter(|&n| n <= crate::tensor::MAX_ELEMENTS)
                .is_some()
        };
        let (oh, ow) = (self.out_h(), self.out_w());
        let cols = patch.is_some_and(|p| prod(&[self.batch, oh, ow, p]))
            && prod(&[self.batch, oh, ow, self.out_channels]);
        let x = [self.batch, self.in_channels, self.height, self.width]
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .is_some();
        if !cols || !x {
            return bad("the convolution is too large");
        }
        Ok(())
    }

    /// Output height.
    pub fn out_h(&self) -> usize {
        (self.height + self.pad_top + self.pad_bottom).saturating_sub(self.kernel_h)
            / self.stride_h.max(1)
            + 1
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        (self.width + self.pad_left + self.pad_right).saturating_sub(self.kernel_w)
            / self.stride_w.max(1)
            + 1
    }

    /// Rows of the im2col matrix: `C · kh · kw`.
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.kernel_h * self.kernel_w
    }

    /// Output shape `[N, O, OH, OW]`.
    pub fn out_shape(&self) -> [usize; 4] {
        [self.batch, self.out_channels, self.out_h(), self.out_w()]
    }

    /// im2col: `[N·OH·OW, C·kh·kw]`, zeros where the window covers padding.
    pub fn im2col(&self, x: &[u64]) -> Result<Vec<u64>> {
        self.check()?;
        let (c, h, w) = (self.in_channels, self.height, self.width);
        if x.len() != self.batch * c * h * w {
            return Err(CoreError::Shape(format!(
                "conv2d input has {} elements, shape needs {}",
                x.len(),
                self.batch * c * h * w
            )));
        }
        let (oh, ow, kh, kw) = (self.out_h(), self.out_w(), self.kernel_h, self.kernel_w);
        let plen = self.patch_len();
        let mut out = vec![0u64; self.batch * oh * ow * plen];
        for n in 0..self.batch {
            for oy in 0..oh {
                for ox in 0..ow {
                    let row = &mut out[((n * oh + oy) * ow + ox) * plen..][..plen];
                    for ch in 0..c {
                        for ky in 0..kh {
                            let iy = (oy * self.stride_h + ky) as isize - self.pad_top as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix =
                                    (ox * self.stride_w + kx) as isize - self.pad_left as isize;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                row[(ch * kh + ky) * kw + kx] =
                                    x[((n * c + ch) * h + iy as usize) * w + ix as usize];
                            }
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

impl Conv2dShape {
    /// True when the patches of an image are the image itself (1×1 kernel, stride 1, no
    /// padding): its `[C, H·W]` layout is already the `[C·kh·kw, OH·OW]` the product needs.
    fn patches_are_input(&self) -> bool {
        self.kernel_h == 1
            && self.kernel_w == 1
            && self.stride_h == 1
            && self.stride_w == 1
            && self.pad_top == 0
            && self.pad_left == 0
            && self.pad_bottom == 0
            && self.pad_right == 0
    }

    /// A block of the patch matrix of one image `[C, H, W]`: rows `taps`, columns `pixels`.
    /// `panel[(t − taps.start)·width + (q − pixels.start)]` is the input under kernel tap
    /// `t = (c·kh + ky)·kw + kx` at output pixel `q = oy·OW + ox`, zero over padding, where
    /// `width = pixels.len()`. The whole matrix (all `C·kh·kw` taps, all `OH·OW` pixels) is
    /// the transpose of [`Conv2dShape::im2col`] for one image. Every element of
    /// `panel[..taps.len()·width]` is written.
    fn patch_panel(&self, x: &[u64], taps: Range<usize>, pixels: Range<usize>, panel: &mut [u64]) {
        let (h, w, kh, kw) = (self.height, self.width, self.kernel_h, self.kernel_w);
        let (ow, sh, sw) = (self.out_w(), self.stride_h, self.stride_w);
        let (pt, pl) = (self.pad_top, self.pad_left);
        let (q0, q1, width) = (pixels.start, pixels.end, pixels.len());
        for (t, row) in taps.zip(panel.chunks_exact_mut(width)) {
            let (ch, ky, kx) = (t / (kh * kw), t / kw % kh, t % kw);
            let plane = &x[ch * h * w..][..h * w];
            // The outputs ox whose input column ox·sw + kx − pl lies in [0, w).
            let lo = pl.saturating_sub(kx).div_ceil(sw).min(ow);
            let hi = (w + pl).saturating_sub(kx).div_ceil(sw).clamp(lo, ow);
            for oy in q0 / ow..q1.div_ceil(ow) {
                // This output row's pixels inside the panel: ox in sa..sb.
                let sa = q0.max(oy * ow) - oy * ow;
                let sb = q1.min(oy * ow + ow) - oy * ow;
                let seg = &mut row[oy * ow + sa - q0..oy * ow + sb - q0];
                let iy = oy * sh + ky;
                if iy < pt || iy - pt >= h {
                    seg.fill(0);
                    continue;
                }
                let src = &plane[(iy - pt) * w..][..w];
                let (a, b) = (lo.clamp(sa, sb), hi.clamp(sa, sb));
                let (head, rest) = seg.split_at_mut(a - sa);
                let (mid, tail) = rest.split_at_mut(b - a);
                head.fill(0);
                tail.fill(0);
                if mid.is_empty() {
                    continue;
                }
                // a·sw + kx ≥ pl as a ≥ lo, and the last column read is below w.
                let first = a * sw + kx - pl;
                if sw == 1 {
                    mid.copy_from_slice(&src[first..first + mid.len()]);
                } else {
                    for (d, v) in mid.iter_mut().zip(src[first..].iter().step_by(sw)) {
                        *d = *v;
                    }
                }
            }
        }
    }

    /// `y += conv(x, w)` restricted to the output channels `outs`, for one image
    /// `x [C, H, W]`, weights `wt [O, C·kh·kw]` and `y [outs.len(), OH·OW]` (the rows `outs`
    /// of the image's output). The patch matrix is built a block of the product at a time (at
    /// most [`GEMM_KB`] taps by [`GEMM_NB`] pixels, 512 KiB) into `panel`, which stays in L2
    /// while every group of output channels streams it.
    fn conv_image(
        &self,
        x: &[u64],
        wt: &[u64],
        outs: Range<usize>,
        y: &mut [u64],
        panel: &mut Vec<u64>,
    ) {
        let plen = self.patch_len();
        let (o, wt) = (outs.len(), &wt[outs.start * plen..]);
        let hw = self.out_h() * self.out_w();
        if o == 0 || plen == 0 || hw == 0 {
            return;
        }
        if self.patches_are_input() {
            // 1×1, stride 1, no padding: the image [C, H·W] is its own patch matrix.
            gemm_acc(wt, plen, x, hw, y, hw, o, plen, hw);
            return;
        }
        panel.resize(GEMM_KB.min(plen) * GEMM_NB.min(hw), 0);
        for q0 in (0..hw).step_by(GEMM_NB) {
            let q1 = (q0 + GEMM_NB).min(hw);
            for t0 in (0..plen).step_by(GEMM_KB) {
                let t1 = (t0 + GEMM_KB).min(plen);
                self.patch_panel(x, t0..t1, q0..q1, panel);
                let (k, n) = (t1 - t0, q1 - q0);
                gemm_acc(&wt[t0..], plen, panel, n, &mut y[q0..], hw, o, k, n);
            }
        }
    }
}

/// Rows of `c` (and `a`) that [`gemm_acc`] updates together: each element of `b` it loads
/// serves this many multiply-adds.
const GEMM_ROWS: usize = 4;
/// Columns per block: [`GEMM_ROWS`] rows of this many outputs (8 KiB) stay in L1.
const GEMM_NB: usize = 256;
/// Inner-dimension block: a `GEMM_KB × GEMM_NB` block of `b` (512 KiB) stays in L2 while every
/// group of rows streams it.
const GEMM_KB: usize = 256;

/// `c += a · b` over Z_2^64 for `a` (m×k), `b` (k×n) and `c` (m×n), row-major with row
/// strides `lda`, `ldb` and `ldc` (element `(i, j)` of `c` is `c[i·ldc + j]`).
///
/// For each group of [`GEMM_ROWS`] rows of `a` and each row `p` of `b`, the kernel adds
/// `a[i][p] · b[p][j]` to `c[i][j]` for the group's rows along a block of `j`: one load of
/// `b[p][j]` feeds several products, and the loop over `j` is one the compiler vectorises
/// (SSE2 has no 64-bit multiply; LLVM builds each pair of lanes from three 32×32→64-bit
/// `pmuludq`). On the AMD EPYC (Zen 4) core it was measured on, with baseline x86-64 code,
/// this runs at about 3.3 GMAC/s against 2.8 for the single-row loop it replaces. Kernels
/// that keep a tile of `c` in registers measured slower there: written on `u64` they stay
/// scalar (one `imul` per product, at most one per cycle: 2.2–3.0 GMAC/s for 4×4 tiles), and
/// written on 32-bit halves so that they vectorise (a dot-product form over pre-split
/// operands), they spend more instructions on loads and register copies than they save
/// (1.9–2.7). More rows per group (5, 6, 8) or two inner steps per pass did not help either.
///
/// On x86-64 processors with AVX-512 (F, DQ and VL, checked at run time) the same code runs
/// compiled for those instructions ([`crate::simd`]): the 64-bit multiply is one instruction
/// there, and the loop over `j` takes eight lanes at a time (3.0–3.1 → 16.8–18.1 GMAC/s on one
/// core for the CIFAR-like convolutions of `benches/gemm.rs`). The sums are the same, so the
/// result is too, bit for bit ([`set_simd`] turns it off).
///
/// Callers guarantee the slices cover the strided matrices.
#[allow(clippy::too_many_arguments)]
fn gemm_acc(
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
    // (Empty products return at once in the body, which both builds run.)
    if crate::simd::gemm_acc(a, lda, b, ldb, c, ldc, m, k, n) {
        return;
    }
    gemm_acc_body(a, lda, b, ldb, c, ldc, m, k, n);
}

/// The body of [`gemm_acc`], inlined into each build of it (portable, and the one for wider
/// vector instructions in [`crate::simd`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_acc_body(
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
    if m == 0 || k == 0 || n == 0 {
        return;
    }
    debug_assert!(a.len() >= (m - 1) * lda + k && b.len() >= (k - 1) * ldb + n);
    debug_assert!(c.len() >= (m - 1) * ldc + n);
    for j0 in (0..n).step_by(GEMM_NB) {
        let j1 = (j0 + GEMM_NB).min(n);
        for p0 in (0..k).step_by(GEMM_KB) {
            let p1 = (p0 + GEMM_KB).min(k);
            let mut i = 0;
            while i < m {
                let r = (m - i).min(GEMM_ROWS);
                let step = Rows {
                    a: &a[i * lda..],
                    lda,
                    b,
                    ldb,
                    cols: j0..j1,
                    inner: p0..p1,
                };
                let c = &mut c[i * ldc..];
                match r {
                    4 => step.run::<4>(c, ldc),
                    3 => step.run::<3>(c, ldc),
                    2 => step.run::<2>(c, ldc),
                    _ => step.run::<1>(c, ldc),
                }
                i += r;
            }
        }
    }
}

/// One step of [`gemm_acc`]: a group of rows of `a`, a block of columns and of the inner
/// dimension.
struct Rows<'a> {
    a: &'a [u64],
    lda: usize,
    b: &'a [u64],
    ldb: usize,
    cols: Range<usize>,
    inner: Range<usize>,
}

impl Rows<'_> {
    /// `c[r][cols] += Σ_{p ∈ inner} a[r][p] · b[p][cols]` for the first `R` rows of `self.a`
    /// and of `c` (row stride `ldc`).
    #[inline(always)]
    fn run<const R: usize>(&self, c: &mut [u64], ldc: usize) {
        let (j0, w) = (self.cols.start, self.cols.len());
        let mut rest = c;
        let out: [&mut [u64]; R] = std::array::from_fn(|_| {
            let at = ldc.min(rest.len());
            let (row, tail) = std::mem::take(&mut rest).split_at_mut(at);
            rest = tail;
            &mut row[j0..j0 + w]
        });
        for p in self.inner.clone() {
            let av: [u64; R] = std::array::from_fn(|r| self.a[r * self.lda + p]);
            if av.iter().all(|&v| v == 0) {
                // Nothing to add (shares are never all zero; plaintext inputs often are).
                continue;
            }
            let brow = &self.b[p * self.ldb + j0..][..w];
            for j in 0..w {
                let bv = brow[j];
                for r in 0..R {
                    out[r][j] = out[r][j].wrapping_add(av[r].wrapping_mul(bv));
                }
            }
        }
    }
}

/// Turns conv weights `[O, C, kh, kw]` into the matrix layout `[C·kh·kw, O]` used by
/// [`Bilinear::Conv2d`].
pub fn conv_weight_matrix(w: &[u64], shape: &Conv2dShape) -> Result<Vec<u64>> {
    ring::transpose(w, shape.out_channels, shape.patch_len())
}

/// A bilinear map `(x, w) -> y`: the linear layers that multiply an input by weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Bilinear {
    /// `x [m×k] · w [k×n]`.
    MatMul {
        /// Rows of x (the batch).
        m: usize,
        /// Inner dimension.
        k: usize,
        /// Columns of w.
        n: usize,
    },
    /// Convolution of `x [N, C, H, W]` with `w` in matrix layout `[C·kh·kw, O]`
    /// (see [`conv_weight_matrix`]); output `[N, O, OH, OW]`.
    Conv2d(Conv2dShape),
    /// A grouped convolution (depthwise when each group has one input channel): `groups`
    /// convolutions of shape `group` side by side, group `g` reading input channels
    /// `g·C_g .. (g+1)·C_g` of `x [N, groups·C_g, H, W]` and writing output channels
    /// `g·O_g .. (g+1)·O_g`; `w` holds the groups' weight matrices `[C_g·kh·kw, O_g]` one
    /// after the other. The products are the groups' own, not those of a full convolution.
    GroupedConv2d {
        /// One group's convolution (`in_channels` = C_g, `out_channels` = O_g).
        group: Conv2dShape,
        /// Number of groups.
        groups: usize,
    },
}

impl Bilinear {
    /// Elements of x.
    pub fn x_len(&self) -> usize {
        match self {
            Bilinear::MatMul { m, k, .. } => m * k,
            Bilinear::Conv2d(s) => s.batch * s.in_channels * s.height * s.width,
            Bilinear::GroupedConv2d { group: s, groups } => {
                s.batch * groups * s.in_channels * s.height * s.width
            }
        }
    }

    /// Elements of w.
    pub fn w_len(&self) -> usize {
        match self {
            Bilinear::MatMul { k, n, .. } => k * n,
            Bilinear::Conv2d(s) => s.patch_len() * s.out_channels,
            Bilinear::GroupedConv2d { group: s, groups } => groups * s.patch_len() * s.out_channels,
        }
    }

    /// Checks that the shape is valid and its sizes fit in memory.
    pub fn check(&self) -> Result<()> {
        match self {
            Bilinear::MatMul { m, k, n } => {
                let fits = [*m, *k, *n].iter().all(|d| *d <= 1 << 28)
                    && m.checked_mul(*k).is_some()
                    && k.checked_mul(*n).is_some()
                    && m.checked_mul(*n).is_some();
                if fits {
                    Ok(())
                } else {
                    Err(CoreError::Shape(format!("{self:?} is too large")))
                }
            }
            Bilinear::Conv2d(s) => s.check(),
            Bilinear::GroupedConv2d { group: s, groups } => {
                s.check()?;
                let full = Conv2dShape {
                    in_channels: s.in_channels.saturating_mul(*groups),
                    out_channels: s.out_channels.saturating_mul(*groups),
                    ..*s
                };
                if *groups == 0 || *groups > 1 << 24 {
                    return Err(CoreError::Shape(format!("{self:?}: {groups} groups")));
                }
                full.check()
            }
        }
    }

    /// Shape of the output.
    pub fn out_shape(&self) -> Vec<usize> {
        match self {
            Bilinear::MatMul { m, n, .. } => vec![*m, *n],
            Bilinear::Conv2d(s) => s.out_shape().to_vec(),
            Bilinear::GroupedConv2d { group: s, groups } => {
                vec![s.batch, groups * s.out_channels, s.out_h(), s.out_w()]
            }
        }
    }

    /// Elements of the output.
    pub fn out_len(&self) -> usize {
        self.out_shape().iter().product()
    }

    /// Multiply-adds of the product (saturating; [`Bilinear::check`] bounds it for valid
    /// shapes).
    pub fn macs(&self) -> u64 {
        let prod = |ds: &[usize]| {
            ds.iter().fold(1u64, |a, &d| {
                a.saturating_mul(u64::try_from(d).unwrap_or(u64::MAX))
            })
        };
        match self {
            Bilinear::MatMul { m, k, n } => prod(&[*m, *k, *n]),
            Bilinear::Conv2d(s) => {
                prod(&[s.batch, s.out_channels, s.out_h(), s.out_w(), s.patch_len()])
            }
            Bilinear::GroupedConv2d { group: s, groups } => prod(&[
                s.batch,
                *groups,
                s.out_channels,
                s.out_h(),
                s.out_w(),
                s.patch_len(),
            ]),
        }
    }

    /// Computes `y = op(x, w)` over Z_2^64.
    ///
    /// A large product (at least [`PAR_MACS_PER_THREAD`] multiply-adds per thread, so
    /// 2 Mi for two threads) is spread over up to [`max_threads`] threads; see
    /// [`Bilinear::apply_threads`].
    pub fn apply(&self, x: &[u64], w: &[u64]) -> Result<Vec<u64>> {
        self.apply_threads(x, w, max_threads())
    }

    /// [`Bilinear::apply`] on at most `threads` threads, the calling one included (0 or 1:
    /// on the calling thread only). The product is split into
    /// `min(threads, macs / PAR_MACS_PER_THREAD)` parts, so a small one still runs on the
    /// calling thread alone. Each part computes whole outputs with the same kernel and the
    /// same sums as the sequential path (a range of output rows: images, groups and output
    /// channels of a convolution, rows of a matrix product; or, for a matrix product with
    /// too few rows, a range of its columns), so the result does not depend on `threads`.
    /// On wasm32 there are no threads and every product runs on the calling thread.
    pub fn apply_threads(&self, x: &[u64], w: &[u64], threads: usize) -> Result<Vec<u64>> {
        let by_size = self.macs() / PAR_MACS_PER_THREAD;
        let parts = threads
            .min(MAX_THREADS_LIMIT)
            .min(by_size.try_into().unwrap_or(usize::MAX));
        self.eval(x, w, parts.max(1))
    }

    /// The product in at most `parts` parts (1: on the calling thread), whatever its size.
    fn eval(&self, x: &[u64], w: &[u64], parts: usize) -> Result<Vec<u64>> {
        self.check()?;
        if x.len() != self.x_len() || w.len() != self.w_len() {
            return Err(CoreError::Shape(format!(
                "{self:?}: got {} input and {} weight elements, expected {} and {}",
                x.len(),
                w.len(),
                self.x_len(),
                self.w_len()
            )));
        }
        let mut out = vec![0u64; self.out_len()];
        let (s, groups) = match self {
            Bilinear::MatMul { m, k, n } => {
                matmul_parts(x, w, &mut out, (*m, *k, *n), parts);
                return Ok(out);
            }
            Bilinear::Conv2d(s) => (s, 1),
            Bilinear::GroupedConv2d { group, groups } => (group, *groups),
        };
        // Per image and group: [O, C·kh·kw] · [C·kh·kw, OH·OW] = [O, OH·OW], already NCHW; a
        // group's channels are contiguous in NCHW, in the input and in the output. So the
        // output is `N·groups·O` rows of `OH·OW`, row `(n·groups + g)·O + o` for image n,
        // group g, output channel o, and a part is a range of those rows.
        let (plen, o) = (s.patch_len(), s.out_channels);
        let hw = s.out_h() * s.out_w();
        let image = s.in_channels * s.height * s.width;
        if s.batch == 0 || image == 0 || plen == 0 || o == 0 {
            // No input element reaches an output: every output is zero.
            return Ok(out);
        }
        let wts = w
            .chunks_exact(plen * o)
            .map(|wg| ring::transpose(wg, plen, o))
            .collect::<Result<Vec<_>>>()?;
        let ranges = split_range(s.batch * groups * o, o, GEMM_ROWS, parts);
        run_parts(carve(&mut out, &ranges, hw), |(rows, mut y)| {
            let mut panel = Vec::new();
            let mut row = rows.start;
            while row < rows.end {
                // Block `blk` = image n, group g: rows o0..o1 of it.
                let (blk, o0) = (row / o, row % o);
                let o1 = (rows.end - blk * o).min(o);
                let (yb, rest) = std::mem::take(&mut y).split_at_mut((o1 - o0) * hw);
                y = rest;
                let xg = &x[blk * image..][..image];
                s.conv_image(xg, &wts[blk % groups], o0..o1, yb, &mut panel);
                row = blk * o + o1;
            }
        });
        Ok(out)
    }
}

/// Multiply-adds a part of a product must have for the product to be split: starting a
/// thread and joining it costs some tens of microseconds, 2^20 multiply-adds take about
/// 0.3 ms at 3 GMAC/s. So a product is split in two from 2 Mi multiply-adds on (network A's
/// layers at batch 1, at most 0.1 Mi, stay on the calling thread).
pub const PAR_MACS_PER_THREAD: u64 = 1 << 20;

/// Most threads a product is ever split over, whatever is asked.
const MAX_THREADS_LIMIT: usize = 256;

/// Allows (the default) or forbids, for the whole process, the build of the ring product for
/// wider vector instructions that the processor may have (AVX-512); the environment variable
/// `SOTTO_SIMD=0` forbids it too. Results do not depend on it. See [`simd_kernel`].
pub fn set_simd(enabled: bool) {
    crate::simd::set_enabled(enabled)
}

/// The wider build of the ring product in use: `Some("avx512")`, or `None` for the portable
/// one (no such instructions, or [`set_simd`] turned it off).
pub fn simd_kernel() -> Option<&'static str> {
    crate::simd::kernel()
}

/// Threads set by [`set_max_threads`]; 0 when not set.
static MAX_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the number of threads, the calling one included, that [`Bilinear::apply`] spreads a
/// large product over, for the whole process (at most 256); 0 restores the default: the
/// environment variable `SOTTO_THREADS` if it holds a positive integer (read once), else
/// [`std::thread::available_parallelism`]. `1` keeps every product on the calling thread.
/// Results do not depend on it. Without effect on wasm32.
pub fn set_max_threads(n: usize) {
    MAX_THREADS.store(n, Ordering::Relaxed);
}

/// The number of threads [`Bilinear::apply`] may use: see [`set_max_threads`]. Always 1 on
/// wasm32.
pub fn max_threads() -> usize {
    if cfg!(target_arch = "wasm32") {
        return 1;
    }
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    let n = match MAX_THREADS.load(Ordering::Relaxed) {
        0 => *DEFAULT.get_or_init(|| {
            std::env::var("SOTTO_THREADS")
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        }),
        n => n,
    };
    n.min(MAX_THREADS_LIMIT)
}

/// `0..total` cut into at most `parts` consecutive non-empty ranges of about equal length.
/// The range is made of blocks of `block` (a convolution's image and group); each cut is
/// moved to the nearest multiple of `align` inside its block, or to the block's end (so
/// that parts start on a group of [`GEMM_ROWS`] rows, or a cache line of columns).
fn split_range(total: usize, block: usize, align: usize, parts: usize) -> Vec<Range<usize>> {
    let (parts, block, align) = (parts.max(1), block.max(1), align.max(1));
    let mut cuts = vec![0];
    for t in 1..parts {
        // t·total/parts without overflow.
        let at = total / parts * t + total % parts * t / parts;
        let (blk, r) = (at / block, at % block);
        let r = (r + align / 2) / align * align;
        cuts.push(
            if r >= block {
                (blk + 1) * block
            } else {
                blk * block + r
            }
            .min(total),
        );
    }
    cuts.push(total);
    cuts.windows(2)
        .filter(|c| c[1] > c[0])
        .map(|c| c[0]..c[1])
        .collect()
}

/// `out` cut into the consecutive `ranges` of rows of `width` elements (the ranges cover
/// `0..out.len() / width` in order).
fn carve<'a>(
    mut out: &'a mut [u64],
    ranges: &[Range<usize>],
    width: usize,
) -> Vec<(Range<usize>, &'a mut [u64])> {
    let mut parts = Vec::with_capacity(ranges.len());
    for r in ranges {
        let (head, tail) = std::mem::take(&mut out).split_at_mut(r.len() * width);
        out = tail;
        parts.push((r.clone(), head));
    }
    parts
}

/// Runs `work` on every part: on the calling thread and, if there are several parts and
/// threads exist, on one scoped thread per further part, each thread taking parts from a
/// shared queue until it is empty (so if the OS refuses a thread, the others take its share).
fn run_parts<P: Send>(parts: Vec<P>, work: impl Fn(P) + Sync) {
    #[cfg(not(target_arch = "wasm32"))]
    if parts.len() > 1 {
        let workers = parts.len();
        let queue = Mutex::new(parts);
        let drain = || {
            while let Some(part) = queue.lock().ok().and_then(|mut q| q.pop()) {
                work(part);
            }
        };
        std::thread::scope(|s| {
            for _ in 1..workers {
                let spawned = std::thread::Builder::new()
                    .name("sotto-gemm".into())
                    .spawn_scoped(s, drain);
                if spawned.is_err() {
                    break;
                }
            }
            drain();
        });
        return;
    }
    parts.into_iter().for_each(work);
}

/// `out += x · w` for `x` (m×k), `w` (k×n) and `out` (m×n), in at most `parts` parts: ranges
/// of rows of `out` when each has at least one group of [`GEMM_ROWS`] rows, else ranges of
/// columns (each computed into its own buffer, then copied into place).
fn matmul_parts(
    x: &[u64],
    w: &[u64],
    out: &mut [u64],
    (m, k, n): (usize, usize, usize),
    parts: usize,
) {
    /// Columns of a cache line: column parts start on one.
    const LINE: usize = 8;
    if m == 0 || k == 0 || n == 0 {
        return; // nothing to add
    }
    if parts > 1 && m / parts >= GEMM_ROWS {
        let ranges = split_range(m, m, GEMM_ROWS, parts);
        run_parts(carve(out, &ranges, n), |(rows, y)| {
            gemm_acc(&x[rows.start * k..], k, w, n, y, n, rows.len(), k, n);
        });
    } else if parts > 1 && n / parts >= LINE {
        let ranges = split_range(n, n, LINE, parts);
        let mut bufs: Vec<Vec<u64>> = ranges.iter().map(|c| vec![0; m * c.len()]).collect();
        let jobs: Vec<_> = ranges.iter().cloned().zip(bufs.iter_mut()).collect();
        run_parts(jobs, |(cols, buf)| {
            let wd = cols.len();
            gemm_acc(x, k, &w[cols.start..], n, buf, wd, m, k, wd);
        });
        for (cols, buf) in ranges.iter().zip(&bufs) {
            for (row, part) in out.chunks_exact_mut(n).zip(buf.chunks_exact(cols.len())) {
                row[cols.clone()].copy_from_slice(part);
            }
        }
    } else {
        gemm_acc(x, k, w, n, out, n, m, k, n);
    }
}

/// Shape of a pooling layer over an NCHW batch (no padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolShape {
    /// Batch size N.
    pub batch: usize,
    /// Channels C.
    pub channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Window height.
    pub kernel_h: usize,
    /// Window width.
    pub kernel_w: usize,
    /// Vertical stride.
    pub stride_h: usize,
    /// Horizontal stride.
    pub stride_w: usize,
}

impl PoolShape {
    /// A square `k×k` window with stride `k` (the usual pooling).
    pub fn square(batch: usize, channels: usize, height: usize, width: usize, k: usize) -> Self {
        PoolShape {
            batch,
            channels,
            height,
            width,
            kernel_h: k,
            kernel_w: k,
            stride_h: k,
            stride_w: k,
        }
    }

    fn check(&self) -> Result<()> {
        if self.stride_h == 0
            || self.stride_w == 0
            || self.kernel_h == 0
            || self.kernel_w == 0
            || self.kernel_h > self.height
            || self.kernel_w > self.width
        {
            return Err(CoreError::Shape(format!("invalid pooling {self:?}")));
        }
        Ok(())
    }

    /// Output height.
    pub fn out_h(&self) -> usize {
        self.height.saturating_sub(self.kernel_h) / self.stride_h.max(1) + 1
    }

    /// Output width.
    pub fn out_w(&self) -> usize {
        self.width.saturating_sub(self.kernel_w) / self.stride_w.max(1) + 1
    }

    /// Number of windows (= output elements).
    pub fn windows(&self) -> usize {
        self.batch * self.channels * self.out_h() * self.out_w()
    }

    /// Elements of the input.
    pub fn in_len(&self) -> usize {
        self.batch * self.channels * self.height * self.width
    }

    /// Output shape `[N, C, OH, OW]`.
    pub fn out_shape(&self) -> [usize; 4] {
        [self.batch, self.channels, self.out_h(), self.out_w()]
    }

    /// The windows as `kh·kw` column vectors: `cols[p][j]` is position `p` of window `j`.
    pub fn window_columns(&self, x: &[u64]) -> Result<Vec<Vec<u64>>> {
        self.check()?;
        if x.len() != self.in_len() {
            return Err(CoreError::Shape(format!(
                "pooling input has {} elements, {self:?} needs {}",
                x.len(),
                self.in_len()
            )));
        }
        let (oh, ow) = (self.out_h(), self.out_w());
        let mut cols = vec![Vec::with_capacity(self.windows()); self.kernel_h * self.kernel_w];
        for nc in 0..self.batch * self.channels {
            let plane = &x[nc * self.height * self.width..][..self.height * self.width];
            for oy in 0..oh {
                for ox in 0..ow {
                    for ky in 0..self.kernel_h {
                        for kx in 0..self.kernel_w {
                            let v = plane
                                [(oy * self.stride_h + ky) * self.width + ox * self.stride_w + kx];
                            cols[ky * self.kernel_w + kx].push(v);
                        }
                    }
                }
            }
        }
        Ok(cols)
    }

    /// Sum of each window.
    pub fn window_sums(&self, x: &[u64]) -> Result<Vec<u64>> {
        let cols = self.window_columns(x)?;
        let mut out = vec![0u64; self.windows()];
        for c in &cols {
            ring::add_assign(&mut out, c)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_matches_direct_definition() {
        let s = Conv2dShape {
            batch: 2,
            in_channels: 2,
            height: 5,
            width: 4,
            out_channels: 3,
            kernel_h: 3,
            kernel_w: 2,
            stride_h: 2,
            stride_w: 1,
            pad_top: 1,
            pad_left: 0,
            pad_bottom: 1,
            pad_right: 1,
        };
        let x: Vec<u64> = (0..2 * 2 * 5 * 4).map(|i| (i * 7 % 11) as u64).collect();
        let w: Vec<u64> = (0..3 * 2 * 3 * 2).map(|i| (i * 5 % 7) as u64).collect();
        let wm = conv_weight_matrix(&w, &s).expect("fits");
        let y = Bilinear::Conv2d(s).apply(&x, &wm).expect("fits");
        let (oh, ow) = (s.out_h(), s.out_w());
        for n in 0..2 {
            for o in 0..3 {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0u64;
                        for c in 0..2 {
                            for ky in 0..3 {
                                for kx in 0..2 {
                                    let iy = (oy * 2 + ky) as isize - 1;
                                    let ix = (ox + kx) as isize;
                                    if !(0..5).contains(&iy) || ix >= 4 {
                                        continue;
                                    }
                                    acc += x[((n * 2 + c) * 5 + iy as usize) * 4 + ix as usize]
                                        * w[((o * 2 + c) * 3 + ky) * 2 + kx];
                                }
                            }
                        }
                        assert_eq!(y[((n * 3 + o) * oh + oy) * ow + ox], acc);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod gemm_tests {
    //! The ring product and the convolution against their definitions, on random shapes
    //! (odd sizes, every padding side, strides 1–3, kernels 1–5, batches above 1, blocks of
    //! the product crossed) and random ring elements, so that every product wraps.

    use super::*;

    /// xorshift64: deterministic, so a failure names its case.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn vec(&mut self, n: usize) -> Vec<u64> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    use crate::ring::naive_matmul;

    /// The convolution by its definition, weights `[O, C, kh, kw]`, output NCHW.
    fn naive_conv(s: &Conv2dShape, x: &[u64], w: &[u64]) -> Vec<u64> {
        let (c, h, wd, o) = (s.in_channels, s.height, s.width, s.out_channels);
        let (kh, kw, oh, ow) = (s.kernel_h, s.kernel_w, s.out_h(), s.out_w());
        let mut out = vec![0u64; s.batch * o * oh * ow];
        for n in 0..s.batch {
            for oc in 0..o {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut acc = 0u64;
                        for ch in 0..c {
                            for ky in 0..kh {
                                for kx in 0..kw {
                                    let iy = (oy * s.stride_h + ky) as isize - s.pad_top as isize;
                                    let ix = (ox * s.stride_w + kx) as isize - s.pad_left as isize;
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                        continue;
                                    }
                                    let xv = x[((n * c + ch) * h + iy as usize) * wd + ix as usize];
                                    let wv = w[((oc * c + ch) * kh + ky) * kw + kx];
                                    acc = acc.wrapping_add(xv.wrapping_mul(wv));
                                }
                            }
                        }
                        out[((n * o + oc) * oh + oy) * ow + ox] = acc;
                    }
                }
            }
        }
        out
    }

    fn check_matmul(rng: &mut Rng, m: usize, k: usize, n: usize) {
        let (mut a, b) = (rng.vec(m * k), rng.vec(k * n));
        if rng.below(3) == 0 {
            // Mostly zeros, as plaintext inputs can be: the kernel skips all-zero steps.
            for v in a.iter_mut() {
                if rng.below(4) != 0 {
                    *v = 0;
                }
            }
        }
        let got = Bilinear::MatMul { m, k, n }
            .apply(&a, &b)
            .expect("shape fits");
        assert_eq!(got, naive_matmul(&a, &b, m, k, n), "matmul {m}×{k}×{n}");
    }

    fn check_conv(rng: &mut Rng, s: Conv2dShape) {
        let x = rng.vec(s.batch * s.in_channels * s.height * s.width);
        let w = rng.vec(s.out_channels * s.patch_len());
        let wm = conv_weight_matrix(&w, &s).expect("fits");
        let got = Bilinear::Conv2d(s).apply(&x, &wm).expect("shape fits");
        assert_eq!(got, naive_conv(&s, &x, &w), "{s:?}");
    }

    #[allow(clippy::too_many_arguments)]
    fn shape(
        batch: usize,
        c: usize,
        hw: (usize, usize),
        o: usize,
        k: (usize, usize),
        stride: (usize, usize),
        pad: [usize; 4],
    ) -> Conv2dShape {
        Conv2dShape {
            batch,
            in_channels: c,
            height: hw.0,
            width: hw.1,
            out_channels: o,
            kernel_h: k.0,
            kernel_w: k.1,
            stride_h: stride.0,
            stride_w: stride.1,
            pad_top: pad[0],
            pad_left: pad[1],
            pad_bottom: pad[2],
            pad_right: pad[3],
        }
    }

    #[test]
    fn matmul_matches_definition_on_random_shapes() {
        let mut rng = Rng(0x243f_6a88_85a3_08d3);
        for _ in 0..300 {
            let (m, k, n) = (1 + rng.below(13), 1 + rng.below(40), 1 + rng.below(40));
            check_matmul(&mut rng, m, k, n);
        }
        // Across the blocks of the product (256 columns, 256 inner) and every row remainder.
        for (m, k, n) in [
            (1, 784, 128),
            (4, 256, 256),
            (5, 257, 257),
            (6, 300, 513),
            (7, 513, 3),
            (3, 1, 600),
            (100, 128, 10),
        ] {
            check_matmul(&mut rng, m, k, n);
        }
        // Empty dimensions give empty or zero products.
        check_matmul(&mut rng, 0, 5, 3);
        check_matmul(&mut rng, 3, 0, 4);
        check_matmul(&mut rng, 3, 5, 0);
    }

    /// The wider build of the ring product (when this processor has one) against the
    /// portable build, called directly: strided operands, a `c` that already holds values,
    /// every row remainder and block boundaries crossed. Where there is no wider build the
    /// dispatcher must say so and leave `c` alone.
    #[test]
    fn wider_build_equals_portable_build() {
        let mut rng = Rng(0xa409_3822_299f_31d0);
        let kernel = simd_kernel();
        eprintln!("ring product build: {}", kernel.unwrap_or("portable"));
        let mut shapes: Vec<(usize, usize, usize)> = (0..200)
            .map(|_| (1 + rng.below(11), 1 + rng.below(70), 1 + rng.below(70)))
            .collect();
        shapes.extend([(1, 784, 128), (5, 257, 513), (9, 600, 17), (4, 3, 1031)]);
        for (m, k, n) in shapes {
            let (lda, ldb, ldc) = (k + rng.below(3), n + rng.below(3), n + rng.below(3));
            let a = rng.vec((m - 1) * lda + k);
            let b = rng.vec((k - 1) * ldb + n);
            let c0 = rng.vec((m - 1) * ldc + n);
            let mut want = c0.clone();
            gemm_acc_body(&a, lda, &b, ldb, &mut want, ldc, m, k, n);
            let mut got = c0.clone();
            let ran = crate::simd::gemm_acc(&a, lda, &b, ldb, &mut got, ldc, m, k, n);
            assert_eq!(
                ran,
                kernel.is_some(),
                "the dispatcher and simd_kernel disagree"
            );
            if ran {
                assert_eq!(got, want, "{m}×{k}×{n}, strides {lda} {ldb} {ldc}");
            } else {
                assert_eq!(got, c0, "no wider build, yet c changed");
            }
        }
    }

    #[test]
    fn matmul_wraps_at_the_extremes() {
        let a = vec![u64::MAX; 6];
        let b = vec![u64::MAX, 1 << 63, 3, (1 << 32) + 1, u64::MAX - 1, 1 << 32];
        let got = Bilinear::MatMul { m: 2, k: 3, n: 2 }
            .apply(&a, &b)
            .expect("fits");
        assert_eq!(got, naive_matmul(&a, &b, 2, 3, 2));
    }

    #[test]
    fn conv_matches_definition_on_random_shapes() {
        let mut rng = Rng(0x1319_8a2e_0370_7344);
        let mut done = 0;
        while done < 400 {
            let s = shape(
                1 + rng.below(3),
                1 + rng.below(4),
                (1 + rng.below(9), 1 + rng.below(9)),
                1 + rng.below(6),
                (1 + rng.below(5), 1 + rng.below(5)),
                (1 + rng.below(3), 1 + rng.below(3)),
                [rng.below(4), rng.below(4), rng.below(4), rng.below(4)],
            );
            if Bilinear::Conv2d(s).check().is_err() {
                continue; // kernel larger than the padded input
            }
            check_conv(&mut rng, s);
            done += 1;
        }
    }

    #[test]
    fn conv_matches_definition_on_chosen_shapes() {
        let mut rng = Rng(0xa409_3822_299f_31d0);
        for s in [
            // The bundled CNN and CIFAR-like 'same' convolutions, batch 2.
            shape(2, 1, (28, 28), 8, (5, 5), (1, 1), [0; 4]),
            shape(2, 8, (12, 12), 16, (3, 3), (1, 1), [0; 4]),
            shape(2, 5, (20, 20), 6, (3, 3), (1, 1), [1; 4]),
            // More than 256 patch rows and outputs per image: the product's blocks.
            shape(1, 30, (17, 19), 5, (3, 3), (1, 1), [1, 1, 1, 1]),
            // 1×1 kernels: without padding or stride the image is its own patch matrix.
            shape(3, 7, (5, 6), 4, (1, 1), (1, 1), [0; 4]),
            shape(2, 3, (5, 6), 4, (1, 1), (2, 1), [0; 4]),
            shape(2, 3, (5, 6), 4, (1, 1), (1, 1), [1, 0, 0, 2]),
            // Padding on one side only, each side; padding wider than the kernel.
            shape(2, 2, (6, 5), 3, (3, 2), (1, 1), [2, 0, 0, 0]),
            shape(2, 2, (6, 5), 3, (3, 2), (1, 1), [0, 2, 0, 0]),
            shape(2, 2, (6, 5), 3, (3, 2), (1, 1), [0, 0, 2, 0]),
            shape(2, 2, (6, 5), 3, (3, 2), (1, 1), [0, 0, 0, 2]),
            shape(1, 2, (3, 3), 2, (2, 2), (2, 3), [5, 6, 4, 7]),
            // Strides larger than the kernel skip inputs; kernel as large as the input.
            shape(2, 2, (9, 11), 3, (2, 2), (3, 3), [0, 1, 2, 0]),
            shape(2, 3, (4, 5), 2, (4, 5), (1, 1), [0; 4]),
            // All padding: no input element under any window.
            shape(2, 2, (0, 3), 3, (2, 2), (1, 1), [1, 0, 1, 0]),
            // Empty batch.
            shape(0, 2, (4, 4), 3, (3, 3), (1, 1), [1; 4]),
        ] {
            check_conv(&mut rng, s);
        }
    }

    #[test]
    fn patch_rows_are_the_transpose_of_im2col() {
        let mut rng = Rng(0x0827_4b4f_5c1d_7e29);
        let mut done = 0;
        while done < 200 {
            let s = shape(
                1,
                1 + rng.below(4),
                (1 + rng.below(8), 1 + rng.below(8)),
                1,
                (1 + rng.below(5), 1 + rng.below(5)),
                (1 + rng.below(3), 1 + rng.below(3)),
                [rng.below(4), rng.below(4), rng.below(4), rng.below(4)],
            );
            if s.check().is_err() {
                continue;
            }
            let x = rng.vec(s.in_channels * s.height * s.width);
            let hw = s.out_h() * s.out_w();
            let cols = s.im2col(&x).expect("fits");
            let want = ring::transpose(&cols, hw, s.patch_len()).expect("fits");
            // The whole matrix, then a random block of its columns; stale contents of the
            // buffer must be overwritten.
            let plen = s.patch_len();
            let mut rows = rng.vec(plen * hw);
            s.patch_panel(&x, 0..plen, 0..hw, &mut rows);
            assert_eq!(rows, want, "{s:?}");
            let q0 = rng.below(hw);
            let q1 = q0 + 1 + rng.below(hw - q0);
            let t0 = rng.below(plen);
            let t1 = t0 + 1 + rng.below(plen - t0);
            let width = q1 - q0;
            let mut block = rng.vec((t1 - t0) * width);
            s.patch_panel(&x, t0..t1, q0..q1, &mut block);
            for t in t0..t1 {
                assert_eq!(
                    block[(t - t0) * width..][..width],
                    want[t * hw + q0..][..width],
                    "{s:?} taps {t0}..{t1} pixels {q0}..{q1}"
                );
            }

            done += 1;
        }
    }

    /// The grouped convolution by its definition: each group's channels through
    /// [`naive_conv`]; `w` holds the groups' weights `[O_g, C_g, kh, kw]` one after the other.
    fn naive_grouped(s: &Conv2dShape, groups: usize, x: &[u64], w: &[u64]) -> Vec<u64> {
        let image = s.in_channels * s.height * s.width;
        let (wg, yg) = (
            s.out_channels * s.patch_len(),
            s.out_channels * s.out_h() * s.out_w(),
        );
        let one = Conv2dShape { batch: 1, ..*s };
        let mut out = Vec::new();
        for n in 0..s.batch {
            for g in 0..groups {
                let xg = &x[(n * groups + g) * image..][..image];
                let y = naive_conv(&one, xg, &w[g * wg..][..wg]);
                assert_eq!(y.len(), yg);
                out.extend(y);
            }
        }
        out
    }

    /// `op` on 1 to 6 parts (whatever its size) and through `apply_threads` all give
    /// `want`.
    fn check_parts(op: &Bilinear, x: &[u64], w: &[u64], want: &[u64]) {
        for parts in 1..=6 {
            let got = op.eval(x, w, parts).expect("shape fits");
            assert_eq!(got, want, "{op:?} in {parts} parts");
        }
        for threads in [1, 2, 3] {
            let got = op.apply_threads(x, w, threads).expect("shape fits");
            assert_eq!(got, want, "{op:?} on {threads} threads");
        }
    }

    #[test]
    fn split_ranges_cover_in_order() {
        let mut rng = Rng(0x4528_21e6_38d0_1377);
        for _ in 0..2000 {
            let total = rng.below(300);
            let block = 1 + rng.below(40);
            let (align, parts) = (1 + rng.below(9), 1 + rng.below(9));
            let r = split_range(total, block, align, parts);
            assert!(r.len() <= parts && r.iter().all(|r| !r.is_empty()));
            let mut at = 0;
            for p in &r {
                assert_eq!(p.start, at, "{total} {block} {align} {parts}: {r:?}");
                at = p.end;
            }
            assert_eq!(at, total);
        }
        // An even split on aligned sizes, cuts on groups of rows and at image boundaries.
        assert_eq!(split_range(64, 64, 4, 2), vec![0..32, 32..64]);
        assert_eq!(split_range(8, 8, 4, 2), vec![0..4, 4..8]);
        assert_eq!(split_range(24, 6, 4, 2), vec![0..12, 12..24]);
        assert_eq!(split_range(10, 10, 4, 2), vec![0..4, 4..10]);
        assert_eq!(split_range(3, 1, 4, 5), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn matmul_in_parts_matches_sequential_and_definition() {
        let mut rng = Rng(0xbe54_66cf_34e9_0c6c);
        for _ in 0..200 {
            // Few rows (column parts) and many (row parts), odd sizes.
            let m = if rng.below(2) == 0 {
                1 + rng.below(7)
            } else {
                1 + rng.below(60)
            };
            let (k, n) = (1 + rng.below(50), 1 + rng.below(90));
            let (x, w) = (rng.vec(m * k), rng.vec(k * n));
            let op = Bilinear::MatMul { m, k, n };
            let want = naive_matmul(&x, &w, m, k, n);
            assert_eq!(op.eval(&x, &w, 1).expect("fits"), want);
            check_parts(&op, &x, &w, &want);
        }
        for (m, k, n) in [(0, 5, 40), (30, 0, 40), (30, 5, 0), (3, 7, 600)] {
            let (x, w) = (rng.vec(m * k), rng.vec(k * n));
            check_parts(
                &Bilinear::MatMul { m, k, n },
                &x,
                &w,
                &naive_matmul(&x, &w, m, k, n),
            );
        }
    }

    #[test]
    fn convs_in_parts_match_sequential_and_definition() {
        let mut rng = Rng(0xc0ac_29b7_c97c_50dd);
        let mut done = 0;
        while done < 150 {
            let s = shape(
                1 + rng.below(3),
                1 + rng.below(4),
                (1 + rng.below(9), 1 + rng.below(9)),
                1 + rng.below(10),
                (1 + rng.below(4), 1 + rng.below(4)),
                (1 + rng.below(2), 1 + rng.below(2)),
                [rng.below(3), rng.below(3), rng.below(3), rng.below(3)],
            );
            let groups = 1 + rng.below(4);
            let grouped = Bilinear::GroupedConv2d { group: s, groups };
            if Bilinear::Conv2d(s).check().is_err() || grouped.check().is_err() {
                continue;
            }
            let x = rng.vec(s.batch * s.in_channels * s.height * s.width);
            let w = rng.vec(s.out_channels * s.patch_len());
            let wm = conv_weight_matrix(&w, &s).expect("fits");
            check_parts(&Bilinear::Conv2d(s), &x, &wm, &naive_conv(&s, &x, &w));

            let x = rng.vec(grouped.x_len());
            let w = rng.vec(grouped.w_len());
            let wm: Vec<u64> = w
                .chunks_exact(s.out_channels * s.patch_len())
                .flat_map(|wg| conv_weight_matrix(wg, &s).expect("fits"))
                .collect();
            check_parts(&grouped, &x, &wm, &naive_grouped(&s, groups, &x, &w));
            done += 1;
        }
    }

    #[test]
    fn large_products_on_threads_match_one_thread() {
        // Over the threshold: these run on threads when asked to.
        let mut rng = Rng(0x3f84_d5b5_b547_0917);
        let ops = [
            Bilinear::MatMul {
                m: 64,
                k: 300,
                n: 257,
            },
            Bilinear::MatMul {
                m: 2,
                k: 1100,
                n: 1030,
            },
            Bilinear::Conv2d(shape(1, 16, (20, 20), 38, (3, 3), (1, 1), [1; 4])),
            Bilinear::Conv2d(shape(3, 32, (30, 33), 32, (3, 3), (1, 2), [1, 0, 2, 1])),
            Bilinear::Conv2d(shape(4, 64, (14, 14), 48, (1, 1), (1, 1), [0; 4])),
            Bilinear::GroupedConv2d {
                group: shape(2, 1, (40, 40), 1, (3, 3), (1, 1), [1; 4]),
                groups: 160,
            },
            Bilinear::GroupedConv2d {
                group: shape(1, 8, (32, 32), 8, (3, 3), (1, 1), [1; 4]),
                groups: 6,
            },
        ];
        for op in ops {
            assert!(op.macs() >= 2 * PAR_MACS_PER_THREAD, "{op:?}");
            let (x, w) = (rng.vec(op.x_len()), rng.vec(op.w_len()));
            let want = op.apply_threads(&x, &w, 1).expect("fits");
            for threads in [2, 3, 4, 7] {
                assert_eq!(
                    op.apply_threads(&x, &w, threads).expect("fits"),
                    want,
                    "{op:?}"
                );
            }
        }
    }

    #[test]
    fn thread_count_is_settable() {
        assert!(max_threads() >= 1);
        set_max_threads(3);
        assert_eq!(max_threads(), 3);
        set_max_threads(100_000);
        assert_eq!(max_threads(), MAX_THREADS_LIMIT);
        set_max_threads(0);
        assert!((1..=MAX_THREADS_LIMIT).contains(&max_threads()));
    }

    #[test]
    fn bad_shapes_are_errors_in_parts_too() {
        let op = Bilinear::MatMul {
            m: 64,
            k: 300,
            n: 257,
        };
        assert!(op.apply_threads(&[0; 10], &[0; 300 * 257], 4).is_err());
        assert!(op.eval(&[0; 64 * 300], &[0; 3], 4).is_err());
    }
}

#[cfg(test)]
mod par_props {
    //! Random products split into random numbers of parts against the sequential path.

    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn matmul_parts_agree(
            (m, k, n) in (0usize..40, 0usize..40, 0usize..120),
            parts in 1usize..9,
            seed in any::<u64>(),
        ) {
            let mut prg = crate::prg::Prg::new(&crate::prg::Seed(seed_bytes(seed)), 0);
            let op = Bilinear::MatMul { m, k, n };
            let (x, w) = (prg.vec_u64(m * k), prg.vec_u64(k * n));
            prop_assert_eq!(op.eval(&x, &w, parts)?, op.eval(&x, &w, 1)?);
        }

        #[test]
        fn grouped_conv_parts_agree(
            (batch, c, o, groups) in (1usize..3, 1usize..4, 1usize..7, 1usize..5),
            (h, wd) in (1usize..10, 1usize..10),
            (k, stride, pad) in (1usize..4, 1usize..3, 0usize..2),
            parts in 1usize..9,
            seed in any::<u64>(),
        ) {
            let group = Conv2dShape {
                batch, in_channels: c, height: h, width: wd, out_channels: o,
                kernel_h: k, kernel_w: k, stride_h: stride, stride_w: stride,
                pad_top: pad, pad_left: pad, pad_bottom: pad, pad_right: pad,
            };
            let op = Bilinear::GroupedConv2d { group, groups };
            prop_assume!(op.check().is_ok());
            let mut prg = crate::prg::Prg::new(&crate::prg::Seed(seed_bytes(seed)), 0);
            let (x, w) = (prg.vec_u64(op.x_len()), prg.vec_u64(op.w_len()));
            prop_assert_eq!(op.eval(&x, &w, parts)?, op.eval(&x, &w, 1)?);
            if groups == 1 {
                let full = Bilinear::Conv2d(group);
                prop_assert_eq!(full.eval(&x, &w, parts)?, op.eval(&x, &w, 1)?);
            }
        }
    }

    fn seed_bytes(seed: u64) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&seed.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn absurd_shapes_are_errors_not_overflows() {
        let huge = Conv2dShape {
            batch: 1 << 20,
            in_channels: 1 << 20,
            height: 1 << 20,
            width: 1 << 20,
            out_channels: 1 << 20,
            kernel_h: 3,
            kernel_w: 3,
            stride_h: 1,
            stride_w: 1,
            pad_top: 0,
            pad_left: 0,
            pad_bottom: 0,
            pad_right: 0,
        };
        assert!(Bilinear::Conv2d(huge).check().is_err());
        assert!(Bilinear::Conv2d(huge).apply(&[], &[]).is_err());
        let m = Bilinear::MatMul {
            m: usize::MAX / 2,
            k: 4,
            n: 4,
        };
        assert!(m.check().is_err());
        assert!(m.apply(&[], &[]).is_err());
    }
}

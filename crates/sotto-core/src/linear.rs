//! Shapes and local kernels of the linear layers: matmul, conv2d by im2col, pooling windows.
//!
//! Tensors are row-major; images are NCHW (batch, channels, height, width).

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
}

impl Bilinear {
    /// Elements of x.
    pub fn x_len(&self) -> usize {
        match self {
            Bilinear::MatMul { m, k, .. } => m * k,
            Bilinear::Conv2d(s) => s.batch * s.in_channels * s.height * s.width,
        }
    }

    /// Elements of w.
    pub fn w_len(&self) -> usize {
        match self {
            Bilinear::MatMul { k, n, .. } => k * n,
            Bilinear::Conv2d(s) => s.patch_len() * s.out_channels,
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
        }
    }

    /// Shape of the output.
    pub fn out_shape(&self) -> Vec<usize> {
        match self {
            Bilinear::MatMul { m, n, .. } => vec![*m, *n],
            Bilinear::Conv2d(s) => s.out_shape().to_vec(),
        }
    }

    /// Elements of the output.
    pub fn out_len(&self) -> usize {
        self.out_shape().iter().product()
    }

    /// Computes `y = op(x, w)` over Z_2^64.
    pub fn apply(&self, x: &[u64], w: &[u64]) -> Result<Vec<u64>> {
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
        match self {
            Bilinear::MatMul { m, k, n } => ring::matmul(x, w, *m, *k, *n),
            Bilinear::Conv2d(s) => {
                let cols = s.im2col(x)?;
                let rows = s.batch * s.out_h() * s.out_w();
                let y = ring::matmul(&cols, w, rows, s.patch_len(), s.out_channels)?;
                // [N, OH·OW, O] -> [N, O, OH·OW]
                let hw = s.out_h() * s.out_w();
                let mut out = vec![0u64; y.len()];
                for n in 0..s.batch {
                    for p in 0..hw {
                        for o in 0..s.out_channels {
                            out[(n * s.out_channels + o) * hw + p] =
                                y[(n * hw + p) * s.out_channels + o];
                        }
                    }
                }
                Ok(out)
            }
        }
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

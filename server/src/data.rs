//! Inputs, labels and reference outputs for `eval`, `plain` and `predict`, read from .npy
//! files with the checks that keep a score from misleading: the element type and memory
//! order, the input's arrangement against the model's (NHWC vs NCHW named), labels that are
//! integers and not one-hot, and references that are logits or recognisably probabilities.

use std::path::Path;

/// A .npy array as read: values, shape and the element type's numpy code.
#[derive(Debug)]
pub struct Npy {
    /// The values in row-major order.
    pub data: Vec<f64>,
    /// The shape.
    pub shape: Vec<usize>,
    /// The numpy type code, e.g. `<f4`, `|u1`.
    pub dtype: String,
}

impl Npy {
    fn is_float(&self) -> bool {
        matches!(self.dtype.as_str(), "<f4" | "<f8")
    }
}

/// Reads a .npy file without converting its values (uint8 stays 0..255). Fortran-order
/// arrays are refused: their values are not in the order sotto reads them.
pub fn read(path: &Path) -> Result<Npy, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let bad = |e: std::io::Error| format!("{}: not a readable .npy file: {e}", path.display());
    let npy = npyz::NpyFile::new(&bytes[..]).map_err(bad)?;
    if npy.order() == npyz::Order::Fortran {
        return Err(format!(
            "{}: a Fortran-order (column-major) array; save it in C order (np.save(path, np.ascontiguousarray(x)))",
            path.display()
        ));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|d| *d as usize).collect();
    let dtype = npy.dtype().descr().trim_matches('\'').to_string();
    macro_rules! ints {
        ($t:ty) => {
            npy.into_vec::<$t>()
                .map_err(bad)?
                .into_iter()
                .map(|v| v as f64)
                .collect()
        };
    }
    let data: Vec<f64> = match dtype.as_str() {
        "<f4" => ints!(f32),
        "<f8" => npy.into_vec::<f64>().map_err(bad)?,
        "|u1" => ints!(u8),
        "|i1" => ints!(i8),
        "<i2" => ints!(i16),
        "<u2" => ints!(u16),
        "<i4" => ints!(i32),
        "<u4" => ints!(u32),
        "<i8" => ints!(i64),
        "<u8" => ints!(u64),
        other => {
            return Err(format!(
                "{}: element type {other} is not supported (float32/64, and integers for labels)",
                path.display()
            ))
        }
    };
    Ok(Npy { data, shape, dtype })
}

fn squeezed(s: &[usize]) -> Vec<usize> {
    s.iter().copied().filter(|&d| d != 1).collect()
}

/// Reads model inputs: `model_shape` is one example's shape (batch excluded). Accepts the
/// exact shape, the same with size-1 axes dropped or added, one flat row per example, or for
/// a flat model input any example shape of that size (flattened row-major);
/// refuses another arrangement of the same values (naming NHWC vs NCHW), other element types,
/// and values beyond `bound`. uint8 pixels are divided by 255 when the model's input bound is
/// at most 1 (said on stderr), else taken as they are. Returns the values and the count.
pub fn inputs(path: &Path, model_shape: &[usize], bound: f64) -> Result<(Vec<f64>, usize), String> {
    let mut a = read(path)?;
    let per: usize = model_shape.iter().product();
    let shown = |s: &[usize]| {
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if a.shape.is_empty() {
        return Err(format!(
            "{}: a scalar, not a batch of inputs",
            path.display()
        ));
    }
    let (n, rest) = (a.shape[0], a.shape[1..].to_vec());
    let fits = rest == model_shape
        || squeezed(&rest) == squeezed(model_shape)
        || (rest.len() == 1 && rest[0] == per)
        // A flat model input takes each example flattened in row-major order (as Keras'
        // Flatten does), e.g. [N, 28, 28] images for a [N, 784] model.
        || (squeezed(model_shape).len() <= 1 && rest.iter().product::<usize>() == per);
    if !fits {
        let same_count = rest.iter().product::<usize>() == per;
        let layout = match (model_shape, rest.as_slice()) {
            ([h, w, c], [c2, h2, w2]) if c == c2 && h == h2 && w == w2 && c != h => {
                format!(": the model takes NHWC (Keras) inputs [N, {h}, {w}, {c}] and this array is NCHW; transpose it (np.transpose(x, (0, 2, 3, 1)))")
            }
            ([c, h, w], [h2, w2, c2]) if c == c2 && h == h2 && w == w2 && c != h => {
                format!(": the model takes NCHW inputs [N, {c}, {h}, {w}] and this array is NHWC; transpose it (np.transpose(x, (0, 3, 1, 2)))")
            }
            _ if same_count => ": the same number of values in another arrangement; reorder the array to the model's layout".to_string(),
            _ => String::new(),
        };
        return Err(format!(
            "{}: shape [{}] does not fit the model's input [N, {}]{layout}",
            path.display(),
            shown(&a.shape),
            shown(model_shape)
        ));
    }
    match a.dtype.as_str() {
        "<f4" | "<f8" => {}
        "|u1" if bound <= 1.0 => {
            eprintln!(
                "note: {} holds uint8 pixels; dividing by 255 (the model's input bound is {bound})",
                path.display()
            );
            a.data.iter_mut().for_each(|v| *v /= 255.0);
        }
        "|u1" => {}
        other => {
            return Err(format!(
                "{}: inputs of type {other}; give float32 values (or uint8 pixels)",
                path.display()
            ))
        }
    }
    if let Some(bad) = a.data.iter().find(|v| !v.is_finite() || v.abs() > bound) {
        return Err(format!(
            "{}: an input value {bad} exceeds --input-bound {bound}",
            path.display()
        ));
    }
    Ok((a.data, n))
}

/// Reads `n` integer class labels for a model with `classes` outputs (a one-output model is
/// binary: labels 0 and 1). Refuses float labels, one-hot rows and labels out of range.
pub fn labels(path: &Path, n: usize, classes: usize) -> Result<Vec<usize>, String> {
    let a = read(path)?;
    if a.is_float() {
        return Err(format!(
            "{}: labels of type {}; save integer class indices (y.astype('int64'))",
            path.display(),
            a.dtype
        ));
    }
    match a.shape.as_slice() {
        [m] | [m, 1] if *m == n => {}
        [m, k] if *m == n && *k > 1 => {
            return Err(format!(
            "{}: labels of shape [{m}, {k}] look one-hot; pass class indices (y.argmax(axis=1))",
            path.display()
        ))
        }
        s => {
            return Err(format!(
                "{}: labels of shape {s:?} for {n} inputs (want [{n}])",
                path.display()
            ))
        }
    }
    let limit = classes.max(2);
    a.data
        .iter()
        .map(|&v| {
            if v >= 0.0 && (v as usize) < limit {
                Ok(v as usize)
            } else {
                Err(format!(
                    "{}: label {v} is not a class of this model (0 to {})",
                    path.display(),
                    limit - 1
                ))
            }
        })
        .collect()
}

/// What a reference file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// Values comparable with the model's outputs as sotto computes them.
    Outputs,
    /// Rows of probabilities for a model whose softmax the client applies: compared with the
    /// softmax of the private logits.
    Probabilities,
}

/// Reads a reference of `n` rows of `cols` outputs and says what it holds: probabilities
/// (rows in [0, 1] summing to 1) are recognised for a softmax-ended model, and refused for a
/// model whose outputs are logits.
pub fn reference(
    path: &Path,
    n: usize,
    cols: usize,
    softmax_at_client: bool,
) -> Result<(Vec<f64>, Reference), String> {
    let a = read(path)?;
    let fits = match a.shape.as_slice() {
        [m, k] => *m >= n && *k == cols,
        [m] => *m >= n && cols == 1,
        _ => false,
    };
    if !fits {
        return Err(format!(
            "{}: shape {:?} does not hold {n} outputs of {cols}",
            path.display(),
            a.shape
        ));
    }
    let rows = &a.data[..n * cols];
    let probabilities = cols > 1
        && rows.iter().all(|v| (0.0..=1.0).contains(v))
        && rows
            .chunks(cols)
            .all(|r| (r.iter().sum::<f64>() - 1.0).abs() < 1e-3);
    let kind = match (probabilities, softmax_at_client) {
        (true, true) => {
            eprintln!(
                "note: {} holds probabilities; comparing them with the softmax of the private logits",
                path.display()
            );
            Reference::Probabilities
        }
        (true, false) => {
            return Err(format!(
                "{}: rows of probabilities, but the model outputs logits (it has no final softmax); give the logits (the output before the softmax)",
                path.display()
            ))
        }
        (false, _) => Reference::Outputs,
    };
    Ok((a.data, kind))
}

/// The predicted class of one output row: argmax, or for a one-output model the side of the
/// threshold (0.5 for a sigmoid output, 0 for a logit).
pub fn predicted(row: &[f64], sigmoid_output: bool) -> usize {
    match row {
        [v] => usize::from(*v > if sigmoid_output { 0.5 } else { 0.0 }),
        _ => sotto_model::ir::argmax(row),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(
        dir: &Path,
        name: &str,
        descr: &str,
        shape: &[usize],
        fortran: bool,
        body: &[u8],
    ) -> std::path::PathBuf {
        let shape_s = match shape {
            [one] => format!("({one},)"),
            s => format!(
                "({})",
                s.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header = format!(
            "{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape_s}, }}",
            if fortran { "True" } else { "False" }
        );
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(body);
        let p = dir.join(name);
        std::fs::write(&p, out).expect("write");
        p
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn misleading_arrays_are_refused_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("sotto-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let x = f32s(&[0.5; 2 * 2 * 3 * 3]);
        // NHWC model [2, 3, 3] (H=2? no: H, W, C = 3, 3, 2): an NCHW array [N, 2, 3, 3].
        let nchw = npy(&dir, "nchw.npy", "<f4", &[2, 2, 3, 3], false, &x);
        let e = inputs(&nchw, &[3, 3, 2], 1.0).unwrap_err();
        assert!(e.contains("NHWC") && e.contains("np.transpose"), "{e}");
        assert_eq!(inputs(&nchw, &[2, 3, 3], 1.0).expect("fits").1, 2);
        let flat = npy(&dir, "flat.npy", "<f4", &[2, 18], false, &x);
        assert_eq!(inputs(&flat, &[3, 3, 2], 1.0).expect("flat rows fit").1, 2);
        let fortran = npy(&dir, "f.npy", "<f4", &[2, 18], true, &x);
        assert!(inputs(&fortran, &[18], 1.0)
            .unwrap_err()
            .contains("Fortran"));
        let px = npy(&dir, "px.npy", "|u1", &[1, 3], false, &[0, 128, 255]);
        let (v, _) = inputs(&px, &[3], 1.0).expect("pixels");
        assert_eq!(v, vec![0.0, 128.0 / 255.0, 1.0]);
        let (v, _) = inputs(&px, &[3], 255.0).expect("raw pixels for a 0..255 model");
        assert_eq!(v, vec![0.0, 128.0, 255.0]);
        // Labels: uint8 kept as integers, float and one-hot refused, range checked.
        let l8 = npy(&dir, "l8.npy", "|u1", &[3], false, &[0, 9, 3]);
        assert_eq!(labels(&l8, 3, 10).expect("uint8 labels"), vec![0, 9, 3]);
        assert!(labels(&l8, 3, 5).unwrap_err().contains("label 9"));
        let lf = npy(&dir, "lf.npy", "<f4", &[3], false, &f32s(&[0.0, 1.0, 2.0]));
        assert!(labels(&lf, 3, 10).unwrap_err().contains("int64"));
        let onehot = npy(&dir, "oh.npy", "|u1", &[2, 3], false, &[1, 0, 0, 0, 0, 1]);
        assert!(labels(&onehot, 2, 3).unwrap_err().contains("one-hot"));
        // References: probabilities recognised for a softmax model, refused otherwise.
        let probs = npy(
            &dir,
            "p.npy",
            "<f4",
            &[2, 2],
            false,
            &f32s(&[0.25, 0.75, 0.5, 0.5]),
        );
        assert_eq!(
            reference(&probs, 2, 2, true).expect("probs").1,
            Reference::Probabilities
        );
        assert!(reference(&probs, 2, 2, false)
            .unwrap_err()
            .contains("logits"));
        let logits = npy(
            &dir,
            "lg.npy",
            "<f4",
            &[2, 2],
            false,
            &f32s(&[2.0, -1.0, 0.5, 0.5]),
        );
        assert_eq!(
            reference(&logits, 2, 2, true).expect("logits").1,
            Reference::Outputs
        );
        // One-output models: threshold, not argmax of one column.
        assert_eq!(predicted(&[0.7], true), 1);
        assert_eq!(predicted(&[0.3], true), 0);
        assert_eq!(predicted(&[-0.2], false), 0);
        assert_eq!(predicted(&[0.1, 0.9], false), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

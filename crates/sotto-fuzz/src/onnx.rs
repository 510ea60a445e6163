//! Target `onnx`: `sotto_model::import` on mutated bundled ONNX models, then
//! [`sotto_model::Plan::new`] on what imports (under two fixed-point formats).
//!
//! Two mutators: byte-level edits of the file (they mostly test the protobuf decoder), and
//! edits of the decoded protobuf (the prost messages of `sotto_model::onnx`) re-encoded
//! afterwards: tensor dimensions, element types and data, attributes (kernel shapes, strides,
//! pads, permutations, axes, `auto_pad`), operator types, node inputs and outputs, node
//! order, duplicated or chained nodes, graph input shapes, outputs and opset versions. The
//! structural edits reach the importer's shape checks, which random bytes rarely do.

use prost::Message;
use sotto_core::fixed::FixedPoint;
use sotto_model::onnx::{
    AttributeProto, Dimension, ModelProto, NodeProto, TensorProto, ValueInfoProto,
};
use sotto_model::{import, Plan};

use crate::mutate::{
    below, chance, count, interesting, mutate_bytes, pick, pick_input, weighted, Rng,
};
use crate::{load_model, Outcome, MODELS};

/// The seeds, raw and decoded.
pub struct Onnx {
    raw: Vec<Vec<u8>>,
    decoded: Vec<ModelProto>,
    weights: Vec<u32>,
    names: Vec<String>,
}

/// Operators the importer knows, and a few it does not.
const OPS: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Conv",
    "GlobalAveragePool",
    "MaxPool",
    "Transpose",
    "Cast",
    "Concat",
    "Constant",
    "Flatten",
    "Gather",
    "Gemm",
    "Identity",
    "MatMul",
    "Relu",
    "Reshape",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Squeeze",
    "Tanh",
    "Unsqueeze",
    "LeakyRelu",
    "Sub",
    "Mul",
    "Div",
    "Pad",
    "Clip",
    "Max",
    "Min",
    "Elu",
    "HardSigmoid",
    "Erf",
    "Pow",
    "Loop",
    "",
];

/// Attribute names the importer reads.
const ATTRS: &[&str] = &[
    "kernel_shape",
    "strides",
    "pads",
    "dilations",
    "group",
    "auto_pad",
    "ceil_mode",
    "perm",
    "axis",
    "axes",
    "transA",
    "transB",
    "alpha",
    "beta",
    "epsilon",
    "value",
    "starts",
    "ends",
    "to",
];

impl Onnx {
    /// Loads the bundled models.
    pub fn new() -> Result<Self, String> {
        let mut raw = Vec::new();
        let mut decoded = Vec::new();
        let mut weights = Vec::new();
        let mut names = Vec::new();
        for name in MODELS {
            let (bytes, _) = load_model(name)?;
            decoded.push(ModelProto::decode(bytes.as_slice()).map_err(|e| format!("{name}: {e}"))?);
            // the large network is imported less often than the small ones
            weights.push(if bytes.len() > 200_000 { 2 } else { 10 });
            names.push(format!("{name}.onnx ({} bytes)", bytes.len()));
            raw.push(bytes);
        }
        Ok(Onnx {
            raw,
            decoded,
            weights,
            names,
        })
    }

    /// One line per seed.
    pub fn describe(&self) -> Vec<String> {
        self.names.clone()
    }

    /// Makes one input.
    pub fn generate(&self, rng: &mut Rng, pool: &[Vec<u8>], out: &mut Vec<u8>) {
        out.clear();
        let i = weighted(rng, &self.weights);
        let donors: Vec<&[u8]> = self.raw.iter().map(Vec::as_slice).collect();
        let mode = weighted(rng, &[60, 30, 10]);
        if mode == 1 {
            // byte-level edits of a seed or of an earlier accepted model
            if !pool.is_empty() && chance(rng, 30) {
                out.extend_from_slice(pick_input(rng, pool));
            } else {
                out.extend_from_slice(&self.raw[i]);
            }
            for _ in 0..count(rng, 6) {
                mutate_bytes(rng, out, &donors);
            }
            return;
        }
        let mut m = if !pool.is_empty() && chance(rng, 30) {
            ModelProto::decode(pick_input(rng, pool)).unwrap_or_else(|_| self.decoded[i].clone())
        } else {
            self.decoded[i].clone()
        };
        let donor = &self.decoded[below(rng, self.decoded.len())];
        for _ in 0..count(rng, 5) {
            mutate_model(rng, &mut m, donor);
        }
        m.encode(out).unwrap_or_default();
        if mode == 2 {
            // structure and bytes
            for _ in 0..count(rng, 3) {
                mutate_bytes(rng, out, &donors);
            }
        }
    }
}

/// Every value name of the graph (inputs, outputs, initializers, node outputs).
fn value_names(m: &ModelProto) -> Vec<String> {
    let mut v = Vec::new();
    if let Some(g) = &m.graph {
        v.extend(g.input.iter().filter_map(|i| i.name.clone()));
        v.extend(g.initializer.iter().filter_map(|t| t.name.clone()));
        for n in &g.node {
            v.extend(n.output.iter().cloned());
            v.extend(n.input.iter().cloned());
        }
    }
    v.push(String::new());
    v.push("nowhere".into());
    v
}

fn interesting_i64(rng: &mut Rng) -> i64 {
    match below(rng, 4) {
        0 => below(rng, 8) as i64 - 2,
        1 => interesting(rng) as i64,
        _ => below(rng, 40) as i64,
    }
}

fn mutate_ints(rng: &mut Rng, v: &mut Vec<i64>) {
    match below(rng, 6) {
        0 if !v.is_empty() => {
            let i = below(rng, v.len());
            v[i] = interesting_i64(rng);
        }
        1 => v.push(interesting_i64(rng)),
        2 if !v.is_empty() => {
            v.remove(below(rng, v.len()));
        }
        3 if v.len() > 1 => {
            let (a, b) = (below(rng, v.len()), below(rng, v.len()));
            v.swap(a, b);
        }
        4 => v.clear(),
        _ => {
            let n = below(rng, 5);
            *v = (0..n).map(|_| interesting_i64(rng)).collect();
        }
    }
}

fn mutate_tensor(rng: &mut Rng, t: &mut TensorProto) {
    match below(rng, 8) {
        0 | 1 => mutate_ints(rng, &mut t.dims),
        2 => t.data_type = Some(*pick(rng, &[0, 1, 2, 6, 7, 10, 11, 16, -1])),
        3 => {
            if let Some(r) = &mut t.raw_data {
                match below(rng, 3) {
                    0 => r.truncate(below(rng, r.len() + 1)),
                    1 => r.extend(std::iter::repeat_n(0u8, 1 + below(rng, 16))),
                    _ => mutate_bytes(rng, r, &[]),
                }
            } else {
                t.raw_data = Some(vec![0; 4 * below(rng, 8)]);
            }
        }
        4 => {
            // a special float in the raw data (NaN, infinity, huge, denormal)
            if let Some(r) = &mut t.raw_data {
                if r.len() >= 4 {
                    let at = 4 * below(rng, r.len() / 4);
                    let v: f32 = *pick(
                        rng,
                        &[f32::NAN, f32::INFINITY, f32::MAX, -f32::MAX, 1e-45, 1e30],
                    );
                    r[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        5 => {
            // data moved between the raw bytes and the typed fields
            if let Some(r) = t.raw_data.take() {
                t.float_data = r
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
            } else {
                t.int64_data.push(interesting_i64(rng));
            }
        }
        6 => t.data_location = Some(*pick(rng, &[0, 1, 2])),
        _ => {
            t.float_data.push(f32::NAN);
            t.double_data.push(1e300);
        }
    }
}

fn mutate_attr(rng: &mut Rng, a: &mut AttributeProto) {
    match below(rng, 7) {
        0 | 1 => mutate_ints(rng, &mut a.ints),
        2 => a.i = Some(interesting_i64(rng)),
        3 => {
            a.f = Some(*pick(
                rng,
                &[0.0, -1.0, 1e30, f32::NAN, f32::INFINITY, -1e-30, 2.0],
            ))
        }
        4 => {
            a.s = Some(
                pick(
                    rng,
                    &[
                        &b"SAME_UPPER"[..],
                        b"SAME_LOWER",
                        b"VALID",
                        b"NOTSET",
                        b"\xff\xfe",
                        b"",
                    ],
                )
                .to_vec(),
            )
        }
        5 => a.name = Some(pick(rng, ATTRS).to_string()),
        _ => {
            let mut t = a.t.take().unwrap_or_default();
            mutate_tensor(rng, &mut t);
            a.t = Some(t);
        }
    }
}

fn mutate_node(rng: &mut Rng, n: &mut NodeProto, names: &[String]) {
    match below(rng, 9) {
        0 => n.op_type = Some(pick(rng, OPS).to_string()),
        1 | 2 if !n.attribute.is_empty() => {
            let i = below(rng, n.attribute.len());
            mutate_attr(rng, &mut n.attribute[i]);
        }
        3 => {
            let mut a = AttributeProto {
                name: Some(pick(rng, ATTRS).to_string()),
                ..Default::default()
            };
            mutate_attr(rng, &mut a);
            mutate_attr(rng, &mut a);
            n.attribute.push(a);
        }
        4 if !n.attribute.is_empty() => {
            n.attribute.remove(below(rng, n.attribute.len()));
        }
        5 if !n.input.is_empty() => {
            let i = below(rng, n.input.len());
            n.input[i] = pick(rng, names).clone();
        }
        6 => match below(rng, 3) {
            0 if !n.input.is_empty() => {
                n.input.remove(below(rng, n.input.len()));
            }
            1 if !n.input.is_empty() => {
                // every input the same value (a Concat of x with x, an Add of x and x)
                let x = n.input[below(rng, n.input.len())].clone();
                n.input.iter_mut().for_each(|s| *s = x.clone());
            }
            _ => n.input.push(pick(rng, names).clone()),
        },
        7 => match below(rng, 3) {
            0 => n.output.clear(),
            1 => n.output.push(pick(rng, names).clone()),
            _ => {
                if let Some(o) = n.output.first_mut() {
                    *o = pick(rng, names).clone();
                }
            }
        },
        _ => n.domain = Some(pick(rng, &["", "ai.onnx", "com.microsoft"]).to_string()),
    }
}

fn mutate_dims(rng: &mut Rng, v: &mut ValueInfoProto) {
    let tt = v
        .r#type
        .get_or_insert_with(Default::default)
        .tensor_type
        .get_or_insert_with(Default::default);
    let dims = &mut tt.shape.get_or_insert_with(Default::default).dim;
    match below(rng, 5) {
        0 if !dims.is_empty() => {
            let i = below(rng, dims.len());
            dims[i].dim_value = Some(interesting_i64(rng));
        }
        1 if !dims.is_empty() => {
            let i = below(rng, dims.len());
            dims[i] = Dimension {
                dim_value: None,
                dim_param: Some("N".into()),
            };
        }
        2 => dims.push(Dimension {
            dim_value: Some(interesting_i64(rng)),
            dim_param: None,
        }),
        3 if !dims.is_empty() => {
            dims.remove(below(rng, dims.len()));
        }
        _ => tt.elem_type = Some(below(rng, 17) as i32),
    }
}

/// One structural edit of a decoded model; `donor` is another decoded seed.
fn mutate_model(rng: &mut Rng, m: &mut ModelProto, donor: &ModelProto) {
    let names = value_names(m);
    if chance(rng, 10) {
        match below(rng, 4) {
            0 => m.ir_version = None,
            1 => m.opset_import.clear(),
            2 => {
                if let Some(o) = m.opset_import.first_mut() {
                    o.version = Some(*pick(rng, &[1, 9, 10, 11, 12, 13, 18, 0, -1, i64::MAX]));
                }
            }
            _ => m.graph = None,
        }
    }
    let Some(g) = m.graph.as_mut() else {
        return;
    };
    let dg = donor.graph.as_ref();
    match below(rng, 12) {
        // a node's operator, attributes, inputs or outputs
        0..=3 if !g.node.is_empty() => {
            let i = below(rng, g.node.len());
            mutate_node(rng, &mut g.node[i], &names);
        }
        // an initializer's dims, type or data
        4 | 5 if !g.initializer.is_empty() => {
            let i = below(rng, g.initializer.len());
            mutate_tensor(rng, &mut g.initializer[i]);
        }
        // the graph input's shape
        6 => {
            if g.input.is_empty() {
                g.input.push(ValueInfoProto::default());
            }
            let i = below(rng, g.input.len());
            mutate_dims(rng, &mut g.input[i]);
        }
        // node order: delete, duplicate, swap, move
        7 if !g.node.is_empty() => {
            let i = below(rng, g.node.len());
            match below(rng, 3) {
                0 => {
                    g.node.remove(i);
                }
                1 => {
                    let n = g.node[i].clone();
                    g.node.insert(below(rng, g.node.len() + 1), n);
                }
                _ => {
                    let j = below(rng, g.node.len());
                    g.node.swap(i, j);
                }
            }
        }
        // a node repeated as a chain, each copy reading the previous one's output
        8 if !g.node.is_empty() => {
            let i = below(rng, g.node.len());
            let base = g.node[i].clone();
            let mut prev = base.output.first().cloned().unwrap_or_default();
            let reps = 1 + below(rng, 40);
            let mut chain = Vec::with_capacity(reps);
            for r in 0..reps {
                let mut n = base.clone();
                n.name = Some(format!("chain{r}"));
                for inp in n.input.iter_mut() {
                    if base.output.contains(inp) || base.input.first() == Some(inp) {
                        *inp = prev.clone();
                    }
                }
                let out = format!("chain_out{r}");
                if let Some(o) = n.output.first_mut() {
                    *o = out.clone();
                }
                prev = out;
                chain.push(n);
            }
            g.node.splice(i + 1..i + 1, chain);
        }
        // a node or an initializer from another model
        9 => {
            if let Some(dg) = dg {
                if !dg.node.is_empty() && chance(rng, 50) {
                    let n = pick(rng, &dg.node).clone();
                    g.node.insert(below(rng, g.node.len() + 1), n);
                } else if !dg.initializer.is_empty() {
                    let t = pick(rng, &dg.initializer).clone();
                    if !g.initializer.is_empty() && chance(rng, 50) {
                        let j = below(rng, g.initializer.len());
                        let name = g.initializer[j].name.clone();
                        g.initializer[j] = TensorProto { name, ..t };
                    } else {
                        g.initializer.push(t);
                    }
                }
            }
        }
        // outputs and inputs of the graph
        10 => match below(rng, 4) {
            0 => g.output.clear(),
            1 => g.output.push(ValueInfoProto {
                name: Some(pick(rng, &names).clone()),
                r#type: None,
            }),
            2 => {
                if let Some(o) = g.output.first_mut() {
                    o.name = Some(pick(rng, &names).clone());
                }
            }
            _ => g.input.push(ValueInfoProto {
                name: Some(pick(rng, &names).clone()),
                r#type: g.input.first().and_then(|i| i.r#type.clone()),
            }),
        },
        // a new node of a random operator on existing values
        _ => {
            let mut n = NodeProto {
                op_type: Some(pick(rng, OPS).to_string()),
                name: Some("new".into()),
                ..Default::default()
            };
            for _ in 0..below(rng, 4) {
                n.input.push(pick(rng, &names).clone());
            }
            n.output.push(if chance(rng, 50) {
                pick(rng, &names).clone()
            } else {
                "new_out".into()
            });
            if chance(rng, 50) {
                let mut a = AttributeProto {
                    name: Some(pick(rng, ATTRS).to_string()),
                    ..Default::default()
                };
                mutate_attr(rng, &mut a);
                n.attribute.push(a);
            }
            g.node.insert(below(rng, g.node.len() + 1), n);
        }
    }
}

/// Runs the target on one input: import, then plan what imports.
pub fn run(bytes: &[u8]) -> Outcome {
    let model = match import(bytes) {
        Ok(m) => m,
        Err(e) => return Outcome::Error(e.to_string()),
    };
    let _ = (model.input_len(), model.output_len(), model.output_shape());
    let mut planned = 0;
    let mut last_err = String::new();
    for (f, bound) in [(16, 1.0), (8, 255.0)] {
        let fp = FixedPoint::new(f).unwrap_or_default();
        match Plan::new(&model, fp, bound) {
            Ok(p) => {
                planned += 1;
                let _ = (p.weight_lens(), p.bias_lens());
                for (i, s) in p.steps.iter().enumerate() {
                    let _ = s.cost(p.step_input_len(i), true);
                }
            }
            Err(e) => last_err = e.to_string(),
        }
    }
    if planned == 0 {
        Outcome::Ok(format!("imported, plan refused: {last_err}"))
    } else {
        Outcome::Ok(format!(
            "imported and planned ({} layers)",
            model.layers.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_imports_plans_and_survives_a_re_encoding() {
        let o = Onnx::new().expect("seeds");
        for (raw, m) in o.raw.iter().zip(&o.decoded) {
            assert!(matches!(run(raw), Outcome::Ok(ref l) if l.contains("planned")));
            // re-encoding through the prost messages keeps what the importer reads
            assert!(matches!(run(&m.encode_to_vec()), Outcome::Ok(ref l) if l.contains("planned")));
        }
    }
}

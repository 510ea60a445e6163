//! Per-party model files, made by `sotto share-model`.
//!
//! One set has three files: P0's and P1's hold the plan and, in private-weights mode, an
//! additive share of every weight (in public mode, the plain weights); the helper's holds the
//! plan's shapes only. Every file is versioned, names its role, carries the set's random id
//! and the SHA-256 of the source model, and ends with a SHA-256 of its own bytes, so that a
//! file for another party, a corrupted file or files of two different sets are refused.
//!
//! Layout: `SOTTOMDL`, version (u16 LE), role (u8), header length (u32 LE), a JSON header,
//! the weights (u64 LE, per layer the weights then the bias), SHA-256 of all that.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sotto_core::fixed::FixedPoint;

use crate::error::{ModelError, Result};
use crate::plan::{Plan, Step};
use crate::private::{share_weights, ServerWeights};

const MAGIC: &[u8; 8] = b"SOTTOMDL";
/// Version of the file format.
pub const VERSION: u16 = 1;
const MAX_HEADER: usize = 16 << 20;

/// Whose file it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// The first server.
    P0,
    /// The second server.
    P1,
    /// The helper.
    Helper,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::P0 => 0,
            Role::P1 => 1,
            Role::Helper => 2,
        }
    }
    /// The conventional file name: `p0.sotto`, `p1.sotto`, `helper.sotto`.
    pub fn file_name(self) -> &'static str {
        match self {
            Role::P0 => "p0.sotto",
            Role::P1 => "p1.sotto",
            Role::Helper => "helper.sotto",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Header {
    role: Role,
    private: bool,
    set_id: String,
    model_sha256: String,
    frac_bits: u32,
    input_bound: f64,
    input_len: usize,
    #[serde(default)]
    input_shape: Vec<usize>,
    #[serde(default)]
    softmax_at_client: bool,
    output_len: usize,
    out_frac: u32,
    steps: Vec<Step>,
    has_weights: bool,
}

/// A decoded model file.
#[derive(Debug, Clone)]
pub struct PartyFile {
    /// Whose file it is.
    pub role: Role,
    /// True in private-weights mode.
    pub private: bool,
    /// Random id shared by the three files of one set.
    pub set_id: String,
    /// SHA-256 of the ONNX model the set was made from.
    pub model_sha256: String,
    /// The plan; its weights are this party's (shares, plain, or empty for the helper).
    pub plan: Plan,
}

impl PartyFile {
    /// This server's weights (P0 and P1 only).
    pub fn server_weights(&self) -> Result<ServerWeights> {
        if self.role == Role::Helper {
            return Err(ModelError::Graph(
                "the helper's file holds no weights".into(),
            ));
        }
        Ok(ServerWeights {
            private: self.private,
            dense: self.plan.weights.clone(),
        })
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Makes the three files (P0, P1, helper) of a set from a plan and its source model.
pub fn make_set(plan: &Plan, model_bytes: &[u8], private: bool) -> Result<[Vec<u8>; 3]> {
    let seed = sotto_core::prg::Seed::random().map_err(crate::plan::core_err)?;
    let set_id = hex(&seed.0[..16]);
    let model_sha256 = hex(&Sha256::digest(model_bytes));
    let [w0, w1] = share_weights(plan, private)?;
    let mut out = Vec::new();
    for (role, weights) in [
        (Role::P0, Some(w0)),
        (Role::P1, Some(w1)),
        (Role::Helper, None),
    ] {
        let header = Header {
            role,
            private,
            set_id: set_id.clone(),
            model_sha256: model_sha256.clone(),
            frac_bits: plan.fp.frac_bits(),
            input_bound: plan.input_bound,
            input_len: plan.input_len,
            input_shape: plan.input_shape.clone(),
            softmax_at_client: plan.softmax_at_client,
            output_len: plan.output_len,
            out_frac: plan.out_frac,
            steps: plan.steps.clone(),
            has_weights: weights.is_some(),
        };
        let json = serde_json::to_vec(&header).map_err(|e| ModelError::Graph(e.to_string()))?;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.push(role.byte());
        bytes.extend_from_slice(&(json.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&json);
        if let Some(w) = weights {
            for (ws, bs) in &w.dense {
                for v in ws.iter().chain(bs) {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        let sum = Sha256::digest(&bytes);
        bytes.extend_from_slice(&sum);
        out.push(bytes);
    }
    let [a, b, c]: [Vec<u8>; 3] = out
        .try_into()
        .map_err(|_| ModelError::Graph("internal: three files expected".into()))?;
    Ok([a, b, c])
}

fn bad(reason: impl Into<String>) -> ModelError {
    ModelError::NotOnnx(format!("not a valid sotto model file: {}", reason.into()))
}

/// Reads a model file and checks it is `expected`'s, uncorrupted and of this version.
pub fn read_file(bytes: &[u8], expected: Role) -> Result<PartyFile> {
    if bytes.len() < 8 + 2 + 1 + 4 + 32 || &bytes[..8] != MAGIC {
        return Err(bad("it does not start with the sotto model-file magic"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err(bad("checksum mismatch: the file is corrupted or truncated"));
    }
    let version = u16::from_le_bytes([body[8], body[9]]);
    if version != VERSION {
        return Err(bad(format!(
            "format version {version}; this sotto reads version {VERSION}"
        )));
    }
    let role_byte = body[10];
    if role_byte != expected.byte() {
        let found = match role_byte {
            0 => "P0",
            1 => "P1",
            2 => "the helper",
            _ => "an unknown role",
        };
        return Err(bad(format!(
            "this file is for {found}, not for {expected:?}"
        )));
    }
    let hlen = u32::from_le_bytes([body[11], body[12], body[13], body[14]]) as usize;
    if hlen > MAX_HEADER || 15 + hlen > body.len() {
        return Err(bad("header length out of range"));
    }
    let header: Header =
        serde_json::from_slice(&body[15..15 + hlen]).map_err(|e| bad(format!("header: {e}")))?;
    if header.role != expected {
        return Err(bad("role in the header disagrees with the role byte"));
    }
    let fp = FixedPoint::new(header.frac_bits).map_err(crate::plan::core_err)?;
    let mut plan = Plan {
        fp,
        input_bound: header.input_bound,
        input_len: header.input_len,
        input_shape: if header.input_shape.iter().product::<usize>() == header.input_len {
            header.input_shape
        } else {
            vec![header.input_len]
        },
        softmax_at_client: header.softmax_at_client,
        steps: header.steps,
        out_frac: header.out_frac,
        output_len: header.output_len,
        weights: Vec::new(),
    };
    let blob = &body[15 + hlen..];
    if header.has_weights {
        let lens: Vec<(usize, usize)> = plan
            .weight_lens()
            .into_iter()
            .zip(plan.bias_lens())
            .collect();
        let total: usize = lens.iter().map(|(a, b)| a + b).sum();
        if blob.len() != total.saturating_mul(8) {
            return Err(bad(format!(
                "{} weight bytes where the plan needs {}",
                blob.len(),
                total * 8
            )));
        }
        let mut words = blob.chunks_exact(8).map(|c| {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            u64::from_le_bytes(b)
        });
        for (lw, lb) in lens {
            let w: Vec<u64> = words.by_ref().take(lw).collect();
            let b: Vec<u64> = words.by_ref().take(lb).collect();
            plan.weights.push((w, b));
        }
    } else if !blob.is_empty() {
        return Err(bad("trailing bytes after the header"));
    }
    Ok(PartyFile {
        role: expected,
        private: header.private,
        set_id: header.set_id,
        model_sha256: header.model_sha256,
        plan,
    })
}

/// Checks that files belong to one set (same set id and source model).
pub fn check_set(files: &[&PartyFile]) -> Result<()> {
    if let Some(first) = files.first() {
        for f in files {
            if f.set_id != first.set_id || f.model_sha256 != first.model_sha256 {
                return Err(ModelError::Graph(format!(
                    "model files of different sets: {:?} has set {} (model {}), {:?} has set {} (model {}); make all three with one `sotto share-model` run",
                    first.role, first.set_id, &first.model_sha256[..12.min(first.model_sha256.len())],
                    f.role, f.set_id, &f.model_sha256[..12.min(f.model_sha256.len())]
                )));
            }
            if f.private != first.private {
                return Err(ModelError::Graph(
                    "private and public model files mixed".into(),
                ));
            }
        }
    }
    Ok(())
}

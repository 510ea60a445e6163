//! Per-party model files, made by `sotto share-model`, and the model owner's record of a set.
//!
//! One set has three party files and one record:
//!
//! - `p0.sotto`, `p1.sotto`: the plan (step kinds, shapes, comparison widths, shifts,
//!   fractional bits, input shape and declared input bound, output length, whether the client
//!   applies a softmax, the opt-in settings [`Plan::fewer_rounds`] and
//!   [`Plan::compact_comparisons`]) and, in
//!   private-weights mode, an additive share of every weight (in public mode, the plain
//!   weights). Steps are named `step0`, `step1`, ... unless the operator asks to keep the
//!   ONNX node names ([`SetOptions::keep_node_names`]).
//! - `helper.sotto`: only what the helper needs to deal material: the step kinds and shapes,
//!   comparison widths, shifts, fractional bits, input and output lengths, the weights mode,
//!   the "fewer rounds" and "compact comparisons" settings (which change the gates it deals;
//!   loading a model checks that the helper's settings are the servers'). No weights, no node names, no input bound
//!   (written 0.0), no softmax flag, a flat input shape.
//! - `set.json` ([`SetRecord`]): the set id, the SHA-256 of the ONNX file, the fractional
//!   bits, the weights mode, the two opt-in settings and the date. It stays with the model owner and is not copied to
//!   the parties' hosts.
//!
//! No party file carries a step's value bound (an aggregate of the weights' magnitudes: every
//! step's `bound` is written 0.0; nothing reads it at run time, `sotto inspect` computes it from
//! the ONNX model) nor a hash of the source model (an unsalted hash would let a party confirm a
//! guessed model). The three files of a set share a random set id, by which the parties match
//! them. Every file is versioned, names its role and ends with a SHA-256 of its own bytes, so
//! that a file for another party, a corrupted file, a file of an older format or files of two
//! different sets are refused; reading returns an error, never panics, on any bytes.
//!
//! Layout: `SOTTOMDL`, version (u16 LE, [`VERSION`]), role (u8), header length (u32 LE), a
//! JSON header, the weights (u64 LE, per layer the weights then the bias), SHA-256 of all that.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sotto_core::fixed::FixedPoint;

use crate::error::{ModelError, Result};
use crate::plan::{Plan, Step, StepKind};
use crate::private::{share_weights, ServerWeights};

const MAGIC: &[u8; 8] = b"SOTTOMDL";
/// Version of the file format (2: no bounds, no model hash, node names only on request; 1
/// carried all three in every file and is refused).
pub const VERSION: u16 = 4;
const MAX_HEADER: usize = 16 << 20;
/// Most weight and bias elements a file may describe (32 GiB of shares).
const MAX_WEIGHT_ELEMENTS: usize = 1 << 32;
/// Name of the model owner's record next to the party files.
pub const SET_RECORD_FILE: &str = "set.json";
/// What the set record says about itself.
pub const SET_RECORD_NOTE: &str = "This record stays with the model owner: do not copy it to the parties' hosts. The parties' files carry only the random set id; the SHA-256 here tells you which ONNX model this set was made from.";

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
    frac_bits: u32,
    input_bound: f64,
    input_len: usize,
    input_shape: Vec<usize>,
    softmax_at_client: bool,
    output_len: usize,
    out_frac: u32,
    steps: Vec<Step>,
    has_weights: bool,
    /// [`Plan::fewer_rounds`]: written only when on (a default set's headers are what they
    /// were before the setting; absent: off). A protocol setting, no secret: every party
    /// must know it to run the same gates.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    fewer_rounds: bool,
    /// [`Plan::compact_comparisons`]: written only when on, like `fewer_rounds`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    compact_comparisons: bool,
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
    /// The plan; its weights are this party's (shares, plain, or empty for the helper). Every
    /// step's `bound` is 0.0; the helper's plan has input bound 0.0 and a flat input shape.
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

/// How [`make_set_with`] writes a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetOptions {
    /// Private-weights mode: P0 and P1 get additive shares of the weights (else both get the
    /// plain weights).
    pub private: bool,
    /// Keep the ONNX node names in P0's and P1's files (for the servers' operators; the
    /// helper's file never has them). Off: the steps are named `step0`, `step1`, ...
    pub keep_node_names: bool,
}

impl Default for SetOptions {
    fn default() -> Self {
        SetOptions {
            private: true,
            keep_node_names: false,
        }
    }
}

/// The model owner's record of a set (`set.json`): not for the parties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetRecord {
    /// [`SET_RECORD_NOTE`]: the record stays with the model owner.
    pub note: String,
    /// The random id the three party files carry.
    pub set_id: String,
    /// SHA-256 (hex) of the ONNX file the set was made from.
    pub model_sha256: String,
    /// Fractional bits of the fixed-point format.
    pub frac_bits: u32,
    /// Declared bound on the input's magnitude.
    pub input_bound: f64,
    /// True in private-weights mode (P0 and P1 hold shares), false with public weights.
    pub private_weights: bool,
    /// True when P0's and P1's files keep the ONNX node names.
    pub node_names_in_server_files: bool,
    /// Format version of the party files.
    pub file_version: u16,
    /// True when the files plan the opt-in "fewer rounds" gates ([`Plan::fewer_rounds`]).
    #[serde(default)]
    pub fewer_rounds: bool,
    /// True when the files plan the opt-in compact comparisons
    /// ([`Plan::compact_comparisons`]).
    #[serde(default)]
    pub compact_comparisons: bool,
    /// When the set was made (UTC, RFC 3339).
    pub created_utc: String,
}

impl SetRecord {
    /// The record as pretty-printed JSON (the contents of `set.json`).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| ModelError::Graph(e.to_string()))
    }
}

/// A set made by [`make_set_with`]: the party files and the owner's record.
#[derive(Clone)]
pub struct ModelSet {
    /// The files of P0, P1 and the helper, in that order.
    pub files: [Vec<u8>; 3],
    /// The model owner's record.
    pub record: SetRecord,
}

impl std::fmt::Debug for ModelSet {
    /// Never prints the files: they hold weight shares.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSet")
            .field("file_bytes", &self.files.each_ref().map(Vec::len))
            .field("record", &self.record)
            .finish()
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A UTC time in RFC 3339 from seconds since the Unix epoch.
fn utc_rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Makes the three files (P0, P1, helper) of a set from a plan and its source model, with
/// neutral step names. [`make_set_with`] also returns the owner's record.
pub fn make_set(plan: &Plan, model_bytes: &[u8], private: bool) -> Result<[Vec<u8>; 3]> {
    let set = make_set_with(
        plan,
        model_bytes,
        SetOptions {
            private,
            keep_node_names: false,
        },
    )?;
    Ok(set.files)
}

/// Makes the three files (P0, P1, helper) of a set from a plan and its source model, and the
/// model owner's record (which holds the model's SHA-256; the files do not).
pub fn make_set_with(plan: &Plan, model_bytes: &[u8], opts: SetOptions) -> Result<ModelSet> {
    let seed = sotto_core::prg::Seed::random().map_err(crate::plan::core_err)?;
    let set_id = hex(&seed.0[..16]);
    let [w0, w1] = share_weights(plan, opts.private)?;
    let mut out = Vec::new();
    for (role, weights) in [
        (Role::P0, Some(w0)),
        (Role::P1, Some(w1)),
        (Role::Helper, None),
    ] {
        let server = role != Role::Helper;
        // Public weights: no input lift (see `Plan::for_weights`).
        let kept = if opts.private {
            plan.steps.clone()
        } else {
            crate::plan::without_lift(&plan.steps)
        };
        let steps = kept
            .iter()
            .enumerate()
            .map(|(i, st)| Step {
                node: if server && opts.keep_node_names {
                    st.node.clone()
                } else {
                    format!("step{i}")
                },
                bound: 0.0,
                proven_bound: 0.0,
                ..st.clone()
            })
            .collect();
        let header = Header {
            role,
            private: opts.private,
            set_id: set_id.clone(),
            frac_bits: plan.fp.frac_bits(),
            input_bound: if server { plan.input_bound } else { 0.0 },
            input_len: plan.input_len,
            input_shape: if server {
                plan.input_shape.clone()
            } else {
                vec![plan.input_len]
            },
            softmax_at_client: server && plan.softmax_at_client,
            output_len: plan.output_len,
            out_frac: plan.out_frac,
            steps,
            has_weights: weights.is_some(),
            fewer_rounds: plan.fewer_rounds && opts.private,
            compact_comparisons: plan.compact_comparisons,
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
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let record = SetRecord {
        note: SET_RECORD_NOTE.into(),
        set_id,
        model_sha256: hex(&Sha256::digest(model_bytes)),
        frac_bits: plan.fp.frac_bits(),
        input_bound: plan.input_bound,
        private_weights: opts.private,
        node_names_in_server_files: opts.keep_node_names,
        file_version: VERSION,
        fewer_rounds: plan.fewer_rounds && opts.private,
        compact_comparisons: plan.compact_comparisons,
        created_utc: utc_rfc3339(secs),
    };
    Ok(ModelSet {
        files: [a, b, c],
        record,
    })
}

fn bad(reason: impl Into<String>) -> ModelError {
    ModelError::File(reason.into())
}

/// Element counts (weights, bias) of each dense or conv layer of `steps`, checked: the layers
/// index the weights in order, no count overflows, the total stays below a sane limit; and
/// each transpose's rank and permutation are valid.
fn checked_weight_lens(steps: &[Step]) -> Result<Vec<(usize, usize)>> {
    let mut lens = Vec::new();
    let mut total: usize = 0;
    for (i, st) in steps.iter().enumerate() {
        let (index, w, b) = match st.kind {
            StepKind::Dense {
                dense,
                inputs,
                outputs,
            } => (dense, inputs.checked_mul(outputs), outputs),
            StepKind::Conv { weights, params } => (
                weights,
                (params.group >= 1
                    && params.in_chw[0] % params.group == 0
                    && params.out_channels % params.group == 0)
                    .then(|| params.in_chw[0] / params.group)
                    .and_then(|c| c.checked_mul(params.kernel[0]))
                    .and_then(|v| v.checked_mul(params.kernel[1]))
                    .and_then(|v| v.checked_mul(params.out_channels)),
                params.out_channels,
            ),
            StepKind::Transpose { rank, perm, .. } => {
                let mut seen = [false; 9];
                let ok = rank < 9
                    && perm[..rank + 1]
                        .iter()
                        .all(|&p| p <= rank && !std::mem::replace(&mut seen[p], true));
                if !ok {
                    return Err(bad(format!("step {i}: not a valid axis permutation")));
                }
                continue;
            }
            _ => continue,
        };
        if index != lens.len() {
            return Err(bad(format!(
                "step {i} names weight tensor {index} where {} comes next",
                lens.len()
            )));
        }
        total = w
            .and_then(|w| w.checked_add(b))
            .and_then(|n| n.checked_add(total))
            .filter(|t| *t <= MAX_WEIGHT_ELEMENTS)
            .ok_or_else(|| bad(format!("step {i}: weight count out of range")))?;
        lens.push((w.unwrap_or(0), b));
    }
    Ok(lens)
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
    if version < VERSION {
        return Err(bad(format!(
            "this file has format version {version} ({}); this sotto reads version {VERSION} only. Make the set again with `sotto share-model MODEL.onnx --out DIR` and give each party its new file",
            if version < 2 {
                "it carried the model's hash, weight statistics and node names in every party's file"
            } else {
                "its plan does not enforce the input bound privately"
            }
        )));
    }
    if version != VERSION {
        return Err(bad(format!(
            "format version {version}, from a newer sotto; this sotto reads version {VERSION}: upgrade sotto or make the files with this one"
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
    if header.has_weights != (expected != Role::Helper) {
        return Err(bad(if header.has_weights {
            "the helper's file holds weights"
        } else {
            "a server's file without weights"
        }));
    }
    if expected != Role::Helper && !(header.input_bound.is_finite() && header.input_bound > 0.0) {
        return Err(bad("a server's input bound must be positive and finite"));
    }
    let fp = FixedPoint::new(header.frac_bits).map_err(|e| bad(format!("header: {e}")))?;
    let shape_len = header
        .input_shape
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(*d));
    if shape_len != Some(header.input_len) {
        return Err(bad("the input shape disagrees with the input length"));
    }
    let lens = checked_weight_lens(&header.steps)?;
    if header.fewer_rounds && !header.private {
        return Err(bad(
            "the \"fewer rounds\" setting with public weights (it needs private weights; make the set again with `sotto share-model`)",
        ));
    }
    let mut plan = Plan {
        fp,
        input_bound: header.input_bound,
        input_len: header.input_len,
        input_shape: header.input_shape,
        softmax_at_client: header.softmax_at_client,
        steps: header.steps,
        out_frac: header.out_frac,
        output_len: header.output_len,
        weights: Vec::new(),
        fewer_rounds: header.fewer_rounds,
        compact_comparisons: header.compact_comparisons,
    };
    let blob = &body[15 + hlen..];
    if header.has_weights {
        // At most MAX_WEIGHT_ELEMENTS elements: no overflow.
        let total: usize = lens.iter().map(|(a, b)| a + b).sum();
        if blob.len() != total * 8 {
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
    plan.validate().map_err(|e| bad(format!("plan: {e}")))?;
    Ok(PartyFile {
        role: expected,
        private: header.private,
        set_id: header.set_id,
        plan,
    })
}

/// Checks that files belong to one set (same random set id and weights mode).
pub fn check_set(files: &[&PartyFile]) -> Result<()> {
    if let Some(first) = files.first() {
        for f in files {
            if f.set_id != first.set_id {
                return Err(ModelError::Graph(format!(
                    "model files of different sets: {:?} has set {}, {:?} has set {}; make all three with one `sotto share-model` run",
                    first.role, first.set_id, f.role, f.set_id
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

#[cfg(test)]
mod tests {
    use super::utc_rfc3339;

    #[test]
    fn utc_dates() {
        assert_eq!(utc_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc_rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    }
}

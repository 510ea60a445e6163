//! Target `model-files`: `sotto_model::files::read_file` for each of the three roles.
//!
//! Seeds are the three files of a set, private and public, made in memory with
//! [`sotto_model::files::make_set`] from every bundled model. The files end with a SHA-256 of
//! their contents, so most mutations recompute it afterwards; the layout (`SOTTOMDL`, version,
//! role, header length, JSON header, weights, SHA-256) is found in the seeds themselves (the
//! header is the first JSON object preceded by its u32 length), not hard-coded, so that a new
//! format version keeps working as long as it keeps a length-prefixed JSON header and a
//! trailing SHA-256.
//!
//! On a file that is accepted, the harness also calls what `sotto inspect` and the servers call
//! on the plan (weight and bias lengths, per-step costs, the server weights, the set check)
//! and labels the acceptance with the first inconsistency it sees in the plan (a step whose
//! shapes do not chain, a weight index out of range, a degenerate geometry): such files are
//! not failures of `read_file`, but they show what it lets through.

use rand_core::RngCore;
use serde_json::Value;
use sha2::{Digest, Sha256};
use sotto_core::fixed::FixedPoint;
use sotto_model::files::{check_set, make_set, read_file, PartyFile, Role};
use sotto_model::plan::StepKind;
use sotto_model::Plan;

use crate::mutate::{
    below, chance, count, interesting, mutate_bytes, mutate_json, pick, pick_input, Rng,
};
use crate::{load_model, Outcome, MODELS};

/// Where the JSON header of a file sits.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Offset of the u32 LE header length (the JSON follows it).
    len_at: usize,
    /// Length of the JSON header.
    json_len: usize,
}

impl Layout {
    fn json(&self) -> std::ops::Range<usize> {
        self.len_at + 4..self.len_at + 4 + self.json_len
    }
}

/// Finds the header: the first `{` after the magic, preceded by its u32 LE length, that
/// parses as JSON, with a 32-byte checksum after it.
fn layout(file: &[u8]) -> Option<Layout> {
    let end = file.len().checked_sub(32)?;
    (12..end.min(256)).find_map(|o| {
        if file[o] != b'{' {
            return None;
        }
        let l = u32::from_le_bytes(file[o - 4..o].try_into().ok()?) as usize;
        (o + l <= end && serde_json::from_slice::<Value>(&file[o..o + l]).is_ok()).then_some(
            Layout {
                len_at: o - 4,
                json_len: l,
            },
        )
    })
}

/// Replaces the trailing 32 bytes by the SHA-256 of everything before them.
fn fix_checksum(file: &mut [u8]) {
    if file.len() >= 32 {
        let (body, sum) = file.split_at_mut(file.len() - 32);
        sum.copy_from_slice(&Sha256::digest(body));
    }
}

struct FileSeed {
    bytes: Vec<u8>,
    layout: Option<Layout>,
    header: Value,
    label: String,
}

/// The seeds of the target and what the mutator knows about them.
pub struct ModelFiles {
    seeds: Vec<FileSeed>,
    weights: Vec<u32>,
    /// True when the seeds end with the SHA-256 of their contents (the checksum can be fixed).
    pub checksum_ok: bool,
}

/// Seed-selection weight of a file of `model`: the large network's server files (about a
/// megabyte each) are picked less often than the small ones.
fn seed_weight(model: &str, bytes: usize) -> u32 {
    match (model, bytes > 200_000) {
        (_, true) => 1,
        ("network_a", false) => 6,
        _ => 10,
    }
}

impl ModelFiles {
    /// Makes sets of every bundled model, private and public, in memory.
    pub fn new() -> Result<Self, String> {
        let mut seeds = Vec::new();
        let mut weights = Vec::new();
        for name in MODELS {
            let (bytes, model) = load_model(name)?;
            let plan = Plan::new(&model, FixedPoint::default(), 1.0)
                .map_err(|e| format!("planning {name}: {e}"))?;
            for private in [true, false] {
                let set = make_set(&plan, &bytes, private)
                    .map_err(|e| format!("make_set for {name}: {e}"))?;
                for (role, file) in ["p0", "p1", "helper"].iter().zip(set) {
                    let layout = layout(&file);
                    let header = layout
                        .and_then(|l| serde_json::from_slice(&file[l.json()]).ok())
                        .unwrap_or(Value::Null);
                    weights.push(seed_weight(name, file.len()));
                    seeds.push(FileSeed {
                        label: format!(
                            "{name} {} {role} ({} bytes)",
                            if private { "private" } else { "public" },
                            file.len()
                        ),
                        bytes: file,
                        layout,
                        header,
                    });
                }
            }
        }
        let checksum_ok = seeds.iter().all(|s| {
            let mut c = s.bytes.clone();
            fix_checksum(&mut c);
            c == s.bytes
        });
        Ok(ModelFiles {
            seeds,
            weights,
            checksum_ok,
        })
    }

    /// One line per seed.
    pub fn describe(&self) -> Vec<String> {
        self.seeds
            .iter()
            .map(|s| {
                format!(
                    "{}{}",
                    s.label,
                    if s.layout.is_some() {
                        ""
                    } else {
                        " [header not found: byte mutations only]"
                    }
                )
            })
            .collect()
    }

    /// Makes one input.
    pub fn generate(&self, rng: &mut Rng, pool: &[Vec<u8>], out: &mut Vec<u8>) {
        out.clear();
        let seed = &self.seeds[crate::mutate::weighted(rng, &self.weights)];
        let from_pool = !pool.is_empty() && chance(rng, 20);
        if from_pool {
            out.extend_from_slice(pick_input(rng, pool));
        } else {
            out.extend_from_slice(&seed.bytes);
        }
        let donors: Vec<&[u8]> = vec![&seed.bytes, &self.seeds[below(rng, self.seeds.len())].bytes];
        let mode = crate::mutate::weighted(rng, &[55, 25, 10, 10]);
        match mode {
            // JSON-aware edits of the header, length and checksum fixed
            0 => {
                let Some(l) = layout(out) else {
                    self.byte_mutations(rng, out, &donors, true);
                    return;
                };
                let mut header = if from_pool {
                    serde_json::from_slice(&out[l.json()]).unwrap_or(Value::Null)
                } else {
                    seed.header.clone()
                };
                let mut json = if chance(rng, 85) {
                    let donor = &self.seeds[below(rng, self.seeds.len())].header;
                    for _ in 0..count(rng, 5) {
                        mutate_json(rng, &mut header, donor);
                    }
                    serde_json::to_vec(&header).unwrap_or_default()
                } else {
                    // text-level edits of the JSON (numbers too large for any type, bad
                    // escapes, unbalanced brackets)
                    let mut j = out[l.json()].to_vec();
                    for _ in 0..count(rng, 3) {
                        mutate_bytes(rng, &mut j, &[]);
                    }
                    j
                };
                if rng.next_u32().is_multiple_of(256) {
                    // a header of up to a few megabytes
                    json.extend(std::iter::repeat_n(b' ', 1 + below(rng, 3 << 20)));
                }
                let mut blob = out[l.json().end..out.len() - 32].to_vec();
                if chance(rng, 40) {
                    resize_weights(rng, &header, &mut blob);
                }
                let mut file = out[..l.len_at].to_vec();
                let hlen = if chance(rng, 95) {
                    json.len() as u32
                } else {
                    interesting(rng) as u32
                };
                file.extend_from_slice(&hlen.to_le_bytes());
                file.extend_from_slice(&json);
                file.extend_from_slice(&blob);
                file.extend_from_slice(&[0; 32]);
                fix_checksum(&mut file);
                *out = file;
            }
            // byte-level edits, checksum fixed
            1 => self.byte_mutations(rng, out, &donors, true),
            // byte-level edits, checksum left alone
            2 => self.byte_mutations(rng, out, &donors, false),
            // one seed's header with another seed's weights
            _ => {
                let other = &self.seeds[below(rng, self.seeds.len())];
                if let (Some(a), Some(b)) = (layout(out), other.layout) {
                    let mut file = out[..a.json().end].to_vec();
                    file.extend_from_slice(&other.bytes[b.json().end..other.bytes.len() - 32]);
                    file.extend_from_slice(&[0; 32]);
                    fix_checksum(&mut file);
                    *out = file;
                } else {
                    self.byte_mutations(rng, out, &donors, true);
                }
            }
        }
    }

    fn byte_mutations(&self, rng: &mut Rng, out: &mut Vec<u8>, donors: &[&[u8]], fix: bool) {
        for _ in 0..count(rng, 6) {
            if chance(rng, 30) && out.len() > 15 {
                // the fixed fields: version (8..10), role (10), header length (11..15)
                match below(rng, 3) {
                    0 => out[8..10].copy_from_slice(&(interesting(rng) as u16).to_le_bytes()),
                    1 => out[10] = *pick(rng, &[0u8, 1, 2, 3, 255]),
                    _ => out[11..15].copy_from_slice(&(interesting(rng) as u32).to_le_bytes()),
                }
            } else if fix && out.len() > 32 {
                // mutate the body only: the checksum is rewritten below
                let mut body = out[..out.len() - 32].to_vec();
                mutate_bytes(rng, &mut body, donors);
                body.extend_from_slice(&[0; 32]);
                *out = body;
            } else {
                mutate_bytes(rng, out, donors);
            }
        }
        if fix && self.checksum_ok {
            fix_checksum(out);
        }
    }
}

/// Words of weights the header's steps need, if that is a sane number.
fn needed_words(header: &Value) -> Option<u64> {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let mut total: u64 = 0;
    for step in header.get("steps")?.as_array()? {
        let kind = step.get("kind")?;
        if let Some(d) = kind.get("Dense") {
            let o = n(&d["outputs"]);
            total = total.saturating_add(n(&d["inputs"]).saturating_mul(o).saturating_add(o));
        } else if let Some(c) = kind.get("Conv") {
            let p = &c["params"];
            let o = n(&p["out_channels"]);
            let w = n(&p["in_chw"][0])
                .saturating_mul(n(&p["kernel"][0]))
                .saturating_mul(n(&p["kernel"][1]))
                .saturating_mul(o);
            total = total.saturating_add(w.saturating_add(o));
        }
    }
    Some(total)
}

/// Makes the weights blob as long as the (edited) header needs, when that is at most 8 MiB.
fn resize_weights(rng: &mut Rng, header: &Value, blob: &mut Vec<u8>) {
    if let Some(words) = needed_words(header).filter(|w| *w <= 1 << 20) {
        let want = words as usize * 8;
        if blob.len() > want {
            blob.truncate(want);
        } else {
            let start = blob.len();
            blob.resize(want, 0);
            if chance(rng, 50) {
                rng_fill(rng, &mut blob[start..]);
            }
        }
    }
}

fn rng_fill(rng: &mut Rng, b: &mut [u8]) {
    rng.fill_bytes(b);
}

/// Output height and width of a window sliding over `hw` (checked arithmetic; `None` when
/// the window does not fit, a stride is zero or a sum overflows).
fn out_size(
    hw: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    pads: [usize; 4],
) -> Option<[usize; 2]> {
    let mut out = [0; 2];
    for a in 0..2 {
        let padded = hw[a].checked_add(pads[a])?.checked_add(pads[a + 2])?;
        let room = padded.checked_sub(kernel[a])?;
        out[a] = room.checked_div(stride[a])?.checked_add(1)?;
    }
    Some(out)
}

/// The first inconsistency of an accepted plan, if any (cheap checks only).
fn inconsistency(f: &PartyFile) -> Option<String> {
    let p = &f.plan;
    let has_weights = f.role != Role::Helper;
    // (the helper's file carries no input bound: it is written 0.0)
    if has_weights && !(p.input_bound.is_finite() && p.input_bound > 0.0) {
        return Some("input bound not positive and finite".into());
    }
    if p.input_len == 0 {
        return Some("zero input length".into());
    }
    // elements per example of each value: the input, then each step's output
    let mut sizes = vec![p.input_len];
    let mut dense_seen = 0usize;
    for (i, s) in p.steps.iter().enumerate() {
        let arity = match s.kind {
            StepKind::Add { .. } => s.inputs.len() == 2,
            StepKind::Concat { .. } => !s.inputs.is_empty(),
            _ => s.inputs.len() == 1,
        };
        if !arity {
            return Some("a step reads the wrong number of values".into());
        }
        if s.inputs.iter().any(|v| *v > i) {
            return Some("a step reads a value not computed before it".into());
        }
        let per = sizes[s.inputs[0]];
        let what = match s.kind {
            StepKind::Dense {
                dense,
                inputs,
                outputs,
            } => {
                let idx_bad = dense != dense_seen || (has_weights && dense >= p.weights.len());
                dense_seen += 1;
                if idx_bad {
                    Some("Dense weight index out of order or range")
                } else if inputs != per {
                    Some("Dense inputs do not match the previous step")
                } else if outputs != s.per_example {
                    Some("Dense outputs differ from per_example")
                } else {
                    None
                }
            }
            StepKind::Conv { weights, params } => {
                let idx_bad = weights != dense_seen || (has_weights && weights >= p.weights.len());
                dense_seen += 1;
                let chw = params
                    .in_chw
                    .iter()
                    .try_fold(1usize, |a, d| a.checked_mul(*d));
                let out = out_size(
                    [params.in_chw[1], params.in_chw[2]],
                    params.kernel,
                    params.stride,
                    params.pads,
                )
                .and_then(|[h, w]| params.out_channels.checked_mul(h)?.checked_mul(w));
                if idx_bad {
                    Some("Conv weight index out of order or range")
                } else if params.stride.contains(&0) || params.kernel.contains(&0) {
                    Some("Conv with a zero stride or kernel")
                } else if chw != Some(per) {
                    Some("Conv input shape does not match the previous step")
                } else if out.is_none() {
                    Some("Conv kernel larger than the padded input, or sizes overflow")
                } else if out != Some(s.per_example) {
                    Some("Conv output size differs from per_example")
                } else {
                    None
                }
            }
            StepKind::MaxPool { params, .. } | StepKind::AvgPool { params } => {
                let chw = params
                    .in_chw
                    .iter()
                    .try_fold(1usize, |a, d| a.checked_mul(*d));
                let out = out_size(
                    [params.in_chw[1], params.in_chw[2]],
                    params.kernel,
                    params.stride,
                    [0; 4],
                )
                .and_then(|[h, w]| params.in_chw[0].checked_mul(h)?.checked_mul(w));
                if params.stride.contains(&0) || params.kernel.contains(&0) {
                    Some("pooling with a zero stride or kernel")
                } else if chw != Some(per) {
                    Some("pooling input shape does not match the previous step")
                } else if out.is_none() {
                    Some("pooling window larger than the input, or sizes overflow")
                } else if out != Some(s.per_example) {
                    Some("pooling output size differs from per_example")
                } else {
                    None
                }
            }
            StepKind::Transpose { dims, rank, perm } => {
                if rank > 8 {
                    Some("Transpose rank above 8")
                } else {
                    let mut seen = [false; 9];
                    let ok = perm[..=rank]
                        .iter()
                        .all(|&q| q <= rank && !std::mem::replace(&mut seen[q], true));
                    let n = dims[..rank]
                        .iter()
                        .try_fold(1usize, |a, d| a.checked_mul(*d));
                    if !ok || perm[0] != 0 {
                        Some("Transpose permutation invalid")
                    } else if n != Some(per) {
                        Some("Transpose dims do not match the previous step")
                    } else {
                        None
                    }
                }
            }
            StepKind::Relu { shift, bits } | StepKind::Clip { shift, bits, .. } => {
                if !(2..=64).contains(&bits) || shift >= 64 {
                    Some("ReLU bit width or shift out of range")
                } else {
                    None
                }
            }
            StepKind::Piecewise { in_frac, bits, .. } => {
                if in_frac > 62 || !(2..=64).contains(&bits) {
                    Some("piecewise input fraction or comparison width out of range")
                } else {
                    None
                }
            }
            StepKind::Sigmoid { in_frac } | StepKind::Tanh { in_frac } => {
                (in_frac > 62).then_some("sigmoid/tanh input fraction above 62 bits")
            }
            StepKind::Truncate => None,
            StepKind::Pad { chw, pads, .. } => {
                let n = chw.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
                let out = out_size([chw[1], chw[2]], [1, 1], [1, 1], pads)
                    .and_then(|[h, w]| chw[0].checked_mul(h)?.checked_mul(w));
                if n != Some(per) {
                    Some("Pad input shape does not match the value it reads")
                } else if out != Some(s.per_example) {
                    Some("Pad output size differs from per_example")
                } else {
                    None
                }
            }
            StepKind::AvgPoolPadded { params, pads, .. } => {
                let chw = params
                    .in_chw
                    .iter()
                    .try_fold(1usize, |a, d| a.checked_mul(*d));
                let out = out_size(
                    [params.in_chw[1], params.in_chw[2]],
                    params.kernel,
                    params.stride,
                    pads,
                )
                .and_then(|[h, w]| params.in_chw[0].checked_mul(h)?.checked_mul(w));
                if params.stride.contains(&0) || params.kernel.contains(&0) {
                    Some("pooling with a zero stride or kernel")
                } else if pads[0] >= params.kernel[0]
                    || pads[2] >= params.kernel[0]
                    || pads[1] >= params.kernel[1]
                    || pads[3] >= params.kernel[1]
                {
                    Some("pooling padded as wide as its window")
                } else if chw != Some(per) {
                    Some("pooling input shape does not match the value it reads")
                } else if out != Some(s.per_example) {
                    Some("pooling output size differs from per_example")
                } else {
                    None
                }
            }
            StepKind::Scale { shift } => (shift > 62).then_some("scaling shift above 62 bits"),
            StepKind::Add { .. } => {
                (sizes[s.inputs[1]] != per).then_some("a sum of values of different sizes")
            }
            StepKind::Concat { outer } => {
                let total = s
                    .inputs
                    .iter()
                    .try_fold(0usize, |t, v| t.checked_add(sizes[*v]));
                if outer == 0 || s.inputs.iter().any(|v| sizes[*v] % outer != 0) {
                    Some("a concatenation whose parts do not split in its chunks")
                } else if total != Some(s.per_example) {
                    Some("a concatenation whose size differs from per_example")
                } else {
                    None
                }
            }
            StepKind::LiftInput { bits } => {
                if !(2..=sotto_core::protocols::MAX_LIFT_BITS).contains(&bits) {
                    Some("input lift width out of range")
                } else if !std::ptr::eq(s, &p.steps[0]) {
                    Some("input lift not the first step")
                } else {
                    None
                }
            }
        };
        if let Some(w) = what {
            return Some(w.to_string());
        }
        if !matches!(
            s.kind,
            StepKind::Dense { .. }
                | StepKind::Conv { .. }
                | StepKind::MaxPool { .. }
                | StepKind::AvgPool { .. }
                | StepKind::AvgPoolPadded { .. }
                | StepKind::Pad { .. }
                | StepKind::Concat { .. }
        ) && s.per_example != per
        {
            return Some("an element-wise step changes the size".into());
        }
        sizes.push(s.per_example);
    }
    let per = *sizes.last().unwrap_or(&p.input_len);
    if has_weights && dense_seen != p.weights.len() {
        return Some("weight tensors and weight steps differ in number".into());
    }
    if per != p.output_len {
        return Some("output length differs from the last step".into());
    }
    None
}

/// With `--deep`: accepted server files whose sizes are small enough also run
/// [`Plan::eval_fixed`] (the plaintext twin of a private prediction, which shares its layer
/// code, such as `ir::permute`, with the servers) on one example.
pub static DEEP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Largest size (elements, or multiply-adds) the deep stage lets a plan reach.
const DEEP_LIMIT: usize = 1 << 18;

/// True when every size `eval_fixed` allocates or loops over is at most [`DEEP_LIMIT`]
/// (checked arithmetic throughout: the plan is untrusted).
fn small_enough(p: &Plan) -> bool {
    let ok = |n: Option<usize>| n.is_some_and(|n| n <= DEEP_LIMIT);
    let prod = |v: &[usize]| v.iter().try_fold(1usize, |a, d| a.checked_mul(*d));
    if p.input_len > DEEP_LIMIT || p.steps.len() > 256 {
        return false;
    }
    p.steps.iter().all(|s| {
        s.per_example <= DEEP_LIMIT
            && match s.kind {
                StepKind::Dense {
                    inputs, outputs, ..
                } => ok(inputs.checked_mul(outputs)),
                StepKind::Conv { params, .. } => {
                    let out = out_size(
                        [params.in_chw[1], params.in_chw[2]],
                        params.kernel,
                        params.stride,
                        params.pads,
                    );
                    ok(prod(&params.in_chw))
                        && ok(prod(&params.kernel))
                        && out.is_some_and(|[h, w]| {
                            ok(prod(&[h, w, params.out_channels]))
                                && ok(prod(&[
                                    h,
                                    w,
                                    params.in_chw[0],
                                    params.kernel[0],
                                    params.kernel[1],
                                    params.out_channels.max(1),
                                ])
                                .map(|n| n >> 10))
                        })
                }
                StepKind::MaxPool { params, .. } | StepKind::AvgPool { params } => {
                    let out = out_size(
                        [params.in_chw[1], params.in_chw[2]],
                        params.kernel,
                        params.stride,
                        [0; 4],
                    );
                    ok(prod(&params.in_chw))
                        && out.is_some_and(|[h, w]| {
                            ok(prod(&[
                                h,
                                w,
                                params.in_chw[0],
                                params.kernel[0],
                                params.kernel[1],
                            ]))
                        })
                }
                StepKind::Transpose { dims, rank, .. } => ok(prod(&dims[..rank.min(8)])),
                StepKind::AvgPoolPadded { params, pads, .. } => {
                    let out = out_size(
                        [params.in_chw[1], params.in_chw[2]],
                        params.kernel,
                        params.stride,
                        pads,
                    );
                    ok(prod(&params.in_chw))
                        && out.is_some_and(|[h, w]| {
                            ok(prod(&[
                                h,
                                w,
                                params.in_chw[0],
                                params.kernel[0],
                                params.kernel[1],
                            ]))
                        })
                }
                _ => true,
            }
    })
}

/// Runs the target on one input: `read_file` for each role, then what callers do with it.
pub fn run(bytes: &[u8]) -> Outcome {
    let mut accepted = Vec::new();
    let mut err = None;
    let role_byte = bytes.get(10).copied();
    for (i, role) in [Role::P0, Role::P1, Role::Helper].into_iter().enumerate() {
        match read_file(bytes, role) {
            Ok(f) => accepted.push(f),
            Err(e) => {
                // report the error of the role the file names (the informative one)
                if err.is_none() || role_byte == Some(i as u8) {
                    err = Some(e.to_string());
                }
            }
        }
    }
    match accepted.len() {
        0 => Outcome::Error(err.unwrap_or_default()),
        1 => {
            let f = &accepted[0];
            if role_byte.is_some_and(|b| b > 2) {
                return Outcome::Property(format!(
                    "accepted as {:?} with role byte {role_byte:?}",
                    f.role
                ));
            }
            // What callers do with an accepted file (`sotto inspect`, the servers).
            let _ = (f.plan.weight_lens(), f.plan.bias_lens());
            // what a server weighs each request by (admission control)
            let _ = f.plan.material_per_input(f.private);
            for (i, s) in f.plan.steps.iter().enumerate() {
                let _ = s.cost(f.plan.step_input_len(i), f.private);
                let _ = s.kind.protocol();
            }
            let _ = f.server_weights();
            let _ = check_set(&[f, f]);
            let _ = format!("{:?} {:?}", f, f.plan);
            let kind = if f.role == Role::Helper {
                "helper"
            } else {
                "server"
            };
            let mut deep = "";
            if f.role != Role::Helper && DEEP.load(std::sync::atomic::Ordering::Relaxed) {
                deep = if !small_enough(&f.plan) {
                    "; too large for eval_fixed"
                } else {
                    let x: Vec<u64> = (0..f.plan.input_len as u64)
                        .map(|i| (i.wrapping_mul(0x9e37_79b9) % 65_536).wrapping_sub(32_768))
                        .collect();
                    match f.plan.eval_fixed(&x, 1) {
                        Ok(_) => "; eval_fixed ok",
                        Err(_) => "; eval_fixed error",
                    }
                };
            }
            Outcome::Ok(match inconsistency(f) {
                None => format!("accepted ({kind} file, consistent plan){deep}"),
                Some(w) => format!("accepted [!] ({kind} file) {w}{deep}"),
            })
        }
        n => Outcome::Property(format!("accepted for {n} roles at once")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_is_read_back_and_its_header_is_found() {
        let m = ModelFiles::new().expect("seeds");
        assert!(m.checksum_ok, "the seeds end with their SHA-256");
        assert_eq!(m.seeds.len(), 3 * 2 * MODELS.len());
        for s in &m.seeds {
            assert!(s.layout.is_some(), "{}: header not found", s.label);
            assert!(s.header.get("steps").is_some(), "{}", s.label);
            assert!(
                matches!(run(&s.bytes), Outcome::Ok(ref l) if l.contains("consistent plan")),
                "{}: {:?}",
                s.label,
                run(&s.bytes)
            );
        }
    }

    #[test]
    fn the_needed_weights_are_those_of_the_seed() {
        let m = ModelFiles::new().expect("seeds");
        for s in m.seeds.iter().filter(|s| !s.label.contains("helper")) {
            let l = s.layout.expect("layout");
            let blob = s.bytes.len() - 32 - l.json().end;
            assert_eq!(
                needed_words(&s.header),
                Some(blob as u64 / 8),
                "{}",
                s.label
            );
        }
    }
}

//! Target `frames`: `sotto_wire::decode` under several payload limits, every JSON payload
//! type of the wire crate on every decoded frame, the element view, and the round trips
//! `decode(encode(frame)) == frame` and `encode(decode(bytes)) == bytes`.

use serde_json::Value;
use sotto_wire::{
    decode, Control, ErrorPayload, Frame, Hello, Kind, Manifest, PartyAuth, Role,
    DEFAULT_MAX_PAYLOAD, HEADER_LEN,
};

use crate::mutate::{
    below, chance, count, interesting, mutate_bytes, mutate_json, pick, pick_input, Rng,
};
use crate::Outcome;

/// The seeds: valid encoded frames of every kind.
pub struct Frames {
    inputs: Vec<Vec<u8>>,
}

const KINDS: [Kind; 12] = [
    Kind::Hello,
    Kind::Manifest,
    Kind::InputShare,
    Kind::InputSeed,
    Kind::Share,
    Kind::Output,
    Kind::Error,
    Kind::Close,
    Kind::Session,
    Kind::Control,
    Kind::Auth,
    Kind::InputBits,
];

/// Limits every input is decoded under.
const LIMITS: [usize; 5] = [0, 16, 4096, DEFAULT_MAX_PAYLOAD, usize::MAX];

impl Frames {
    /// Valid frames of every kind, each with a plausible payload.
    pub fn new() -> Result<Self, String> {
        Ok(Frames {
            inputs: seeds()?.iter().map(Frame::encode).collect(),
        })
    }

    /// One line about the seeds.
    pub fn describe(&self) -> Vec<String> {
        vec![format!("{} valid frames, every kind", self.inputs.len())]
    }
}

fn seeds() -> Result<Vec<Frame>, String> {
    let e = |e: sotto_wire::WireError| e.to_string();
    let mut v = vec![
        Frame::json(
            Kind::Hello,
            1,
            0,
            &Hello {
                role: Role::Client,
                model_id: "network_a".into(),
                api_key: None,
            },
        )
        .map_err(e)?,
        Frame::json(
            Kind::Hello,
            1,
            0,
            &Hello {
                role: Role::P1,
                model_id: String::new(),
                api_key: None,
            },
        )
        .map_err(e)?,
        Frame::json(
            Kind::Manifest,
            2,
            0,
            &Manifest {
                model_id: "cnn".into(),
                input_shape: vec![1, 28, 28],
                frac_bits: 16,
                output_len: 10,
                out_frac: 32,
                softmax_at_client: true,
                input_bound: 1.0,
                role: Role::P0,
                deployment: "00".repeat(16),
                max_batch: 128,
                input_bits: Some(18),
            },
        )
        .map_err(e)?,
        Frame::json(
            Kind::Error,
            3,
            9,
            &ErrorPayload {
                code: "bad_shape".into(),
                message: "784 values expected".into(),
            },
        )
        .map_err(e)?,
        Frame::json(
            Kind::Control,
            4,
            0,
            &Control::Load {
                model: "m".into(),
                set_id: "00ff".repeat(8),
            },
        )
        .map_err(e)?,
        Frame::json(
            Kind::Control,
            5,
            0,
            &Control::Deal {
                model: "m".into(),
                batch: 4,
                count: 8,
                load: "abcdef".into(),
                window: Some(1 << 20),
            },
        )
        .map_err(e)?,
        Frame::json(
            Kind::Control,
            6,
            0,
            &Control::Ready {
                model: "m".into(),
                batch: 1,
                load: "01".into(),
            },
        )
        .map_err(e)?,
        Frame::json(
            Kind::Control,
            7,
            0,
            &Control::Abort {
                reason: "timeout".into(),
            },
        )
        .map_err(e)?,
        Frame::json(
            Kind::Auth,
            0,
            0,
            &PartyAuth {
                role: Role::Helper,
                nonce: "aa".repeat(16),
                proof: None,
            },
        )
        .map_err(e)?,
        Frame::json(
            Kind::Auth,
            0,
            1,
            &PartyAuth {
                role: Role::P0,
                nonce: "bb".repeat(16),
                proof: Some("cc".repeat(32)),
            },
        )
        .map_err(e)?,
        Frame::from_elements(Kind::InputShare, u128::MAX, 2, &[1, u64::MAX, 1 << 40]),
        Frame::from_elements(Kind::Output, 8, 7, &[0; 10]),
        Frame {
            kind: Kind::InputBits,
            session: 5,
            step: 1,
            payload: vec![1, 2, 3, 4, 5, 6],
        },
        Frame {
            kind: Kind::InputSeed,
            session: 9,
            step: 0,
            payload: (0..32).collect(),
        },
        Frame {
            kind: Kind::Share,
            session: 10,
            step: 5,
            payload: (0..200u32).map(|x| (x * 7) as u8).collect(),
        },
    ];
    for kind in [Kind::Close, Kind::Session] {
        v.push(Frame {
            kind,
            session: 11,
            step: 3,
            payload: Vec::new(),
        });
    }
    Ok(v)
}

/// Sets the header's length field to the payload actually present.
fn fix_len(data: &mut [u8]) {
    if data.len() >= HEADER_LEN {
        let n = (data.len() - HEADER_LEN) as u32;
        data[28..32].copy_from_slice(&n.to_le_bytes());
    }
}

impl Frames {
    /// Makes one input: a seed (or an earlier accepted input) mutated.
    pub fn generate(&self, rng: &mut Rng, pool: &[Vec<u8>], out: &mut Vec<u8>) {
        let seeds = self;
        out.clear();
        let base = if !pool.is_empty() && chance(rng, 25) {
            pick_input(rng, pool)
        } else {
            pick_input(rng, &seeds.inputs)
        };
        out.extend_from_slice(base);
        let donors: Vec<&[u8]> = seeds.inputs.iter().map(Vec::as_slice).collect();
        let mut fix = chance(rng, 70);
        for _ in 0..count(rng, 6) {
            match below(rng, 10) {
                // header fields
                0 if out.len() >= HEADER_LEN => match below(rng, 6) {
                    0 => out[5] = below(rng, 13) as u8,
                    1 => out[4] = *pick(rng, &[0u8, 1, 2, 255]),
                    2 => out[6 + below(rng, 2)] = rng_byte(rng),
                    3 => out[24..28].copy_from_slice(&(interesting(rng) as u32).to_le_bytes()),
                    4 => out[8..24].copy_from_slice(&u128::from(interesting(rng)).to_le_bytes()),
                    _ => {
                        out[28..32].copy_from_slice(&(interesting(rng) as u32).to_le_bytes());
                        fix = false;
                    }
                },
                // the JSON payload
                1..=4 if out.len() > HEADER_LEN => {
                    if let Ok(mut doc) = serde_json::from_slice::<Value>(&out[HEADER_LEN..]) {
                        let donor = serde_json::from_slice::<Value>(
                            &pick_input(rng, &seeds.inputs)[HEADER_LEN.min(out.len())..],
                        )
                        .unwrap_or(Value::Null);
                        mutate_json(rng, &mut doc, &donor);
                        if let Ok(p) = serde_json::to_vec(&doc) {
                            out.truncate(HEADER_LEN);
                            out.extend_from_slice(&p);
                        }
                    } else {
                        mutate_bytes(rng, out, &donors);
                    }
                }
                // the payload swapped for another frame's (kind and payload then disagree)
                5 if out.len() >= HEADER_LEN => {
                    let other = pick_input(rng, &seeds.inputs);
                    out.truncate(HEADER_LEN);
                    out.extend_from_slice(&other[HEADER_LEN..]);
                }
                _ => mutate_bytes(rng, out, &donors),
            }
        }
        if fix {
            fix_len(out);
        }
    }
}

fn rng_byte(rng: &mut Rng) -> u8 {
    below(rng, 256) as u8
}

/// Every JSON type on `f` under `kind`: parse, and re-encode what parses.
fn parse_all(f: &Frame, kind: Kind) -> Result<usize, String> {
    let mut parsed = 0;
    macro_rules! round_trip {
        ($t:ty, $eq:expr) => {
            if let Ok(v) = f.parse_json::<$t>(kind) {
                parsed += 1;
                let g = Frame::json(kind, f.session, f.step, &v).map_err(|e| {
                    format!(
                        "property: a parsed {} does not serialize: {e}",
                        stringify!($t)
                    )
                })?;
                let w: $t = g.parse_json(kind).map_err(|e| {
                    format!(
                        "property: a re-encoded {} does not parse: {e}",
                        stringify!($t)
                    )
                })?;
                let eq = $eq;
                if !eq(&v, &w) {
                    return Err(format!(
                        "property: {} changes in a JSON round trip: {v:?} vs {w:?}",
                        stringify!($t)
                    ));
                }
            }
        };
    }
    round_trip!(Hello, |a: &Hello, b: &Hello| a == b);
    round_trip!(ErrorPayload, |a: &ErrorPayload, b: &ErrorPayload| a == b);
    round_trip!(Control, |a: &Control, b: &Control| a == b);
    round_trip!(PartyAuth, |a: &PartyAuth, b: &PartyAuth| a == b);
    round_trip!(Role, |a: &Role, b: &Role| a == b);
    round_trip!(Kind, |a: &Kind, b: &Kind| a == b);
    // f64 fields: serde_json's default float parsing may be off by one unit in the last
    // place, so the bound is compared with a relative tolerance.
    round_trip!(Manifest, |a: &Manifest, b: &Manifest| {
        let close = a.input_bound == b.input_bound
            || (a.input_bound - b.input_bound).abs() <= 1e-15 * a.input_bound.abs();
        close
            && a.model_id == b.model_id
            && a.input_shape == b.input_shape
            && (a.frac_bits, a.output_len, a.out_frac) == (b.frac_bits, b.output_len, b.out_frac)
            && a.softmax_at_client == b.softmax_at_client
    });
    Ok(parsed)
}

/// Runs the target on one input.
pub fn run(bytes: &[u8]) -> Outcome {
    let mut first: Option<Result<Frame, String>> = None;
    let mut accepted_under: Option<usize> = None;
    for limit in LIMITS {
        match decode(bytes, limit) {
            Ok(f) => {
                if let Some(Ok(prev)) = &first {
                    if *prev != f {
                        return Outcome::Property(format!(
                            "decode under limit {limit} gives {f:?}, a smaller limit gave {prev:?}"
                        ));
                    }
                }
                accepted_under.get_or_insert(limit);
                first.get_or_insert(Ok(f));
            }
            Err(e) => {
                if accepted_under.is_some() {
                    return Outcome::Property(format!(
                        "decode accepts under a smaller limit but refuses under {limit}: {e}"
                    ));
                }
                if limit == DEFAULT_MAX_PAYLOAD {
                    first = Some(Err(e.to_string()));
                }
            }
        }
    }
    let frame = match first {
        Some(Ok(f)) => f,
        Some(Err(e)) => return Outcome::Error(e),
        None => return Outcome::Error("refused under every limit".into()),
    };
    // Re-encoding gives the same bytes and the same frame.
    let enc = frame.encode();
    if enc != bytes {
        return Outcome::Property(format!(
            "encode(decode(bytes)) differs from the bytes ({} vs {} bytes)",
            enc.len(),
            bytes.len()
        ));
    }
    match decode(&enc, usize::MAX) {
        Ok(g) if g == frame => {}
        Ok(g) => {
            return Outcome::Property(format!("decode(encode(f)) = {g:?}, f = {frame:?}"));
        }
        Err(e) => return Outcome::Property(format!("decode(encode(f)) fails: {e}")),
    }
    // Every JSON type, under the frame's own kind and under every other kind.
    let mut parsed = 0;
    for kind in KINDS {
        match parse_all(&frame, kind) {
            Ok(n) if kind == frame.kind => parsed += n,
            Ok(0) => {}
            Ok(_) => {
                return Outcome::Property(format!(
                    "a {:?} frame's payload parsed as {kind:?}",
                    frame.kind
                ))
            }
            Err(e) => return Outcome::Property(e),
        }
        // The element view: right length, wrong length, an overflowing length.
        let n = frame.payload.len() / 8;
        let ok = frame.elements(kind, n);
        if kind == frame.kind && frame.payload.len() % 8 == 0 {
            match ok {
                Ok(v) if v.len() == n => {}
                other => {
                    return Outcome::Property(format!(
                        "elements({kind:?}, {n}) on a {}-byte payload: {other:?}",
                        frame.payload.len()
                    ))
                }
            }
        } else if ok.is_ok() {
            return Outcome::Property(format!(
                "elements({kind:?}, {n}) accepted a {:?} frame of {} bytes",
                frame.kind,
                frame.payload.len()
            ));
        }
        for m in [n + 1, usize::MAX, usize::MAX / 8 + 1] {
            if frame.elements(kind, m).is_ok() {
                return Outcome::Property(format!(
                    "elements({kind:?}, {m}) accepted {} bytes",
                    frame.payload.len()
                ));
            }
        }
    }
    Outcome::Ok(if parsed > 0 {
        format!("{:?} frame, JSON payload", frame.kind)
    } else {
        format!("{:?} frame", frame.kind)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_decodes_and_json_seeds_parse() {
        let f = Frames::new().expect("seeds");
        for s in &f.inputs {
            assert!(matches!(run(s), Outcome::Ok(_)), "{:?}", run(s));
        }
        let json = f
            .inputs
            .iter()
            .filter(|s| matches!(run(s), Outcome::Ok(ref l) if l.contains("JSON")))
            .count();
        assert_eq!(json, 10);
    }
}

//! Mutators shared by the targets: byte-level edits (bit flips, byte changes, interesting
//! integers, truncation, insertion, deletion, duplication, splicing) and edits of a JSON
//! document (numbers made huge, negative or zero, strings, arrays and objects reshaped, keys
//! renamed, subtrees copied from a donor document).

use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;
use serde_json::{Map, Number, Value};

/// The generator every case draws from.
pub type Rng = ChaCha20Rng;

/// A number below `n` (`n > 0`; a slight modulo bias does not matter here).
pub fn below(rng: &mut Rng, n: usize) -> usize {
    debug_assert!(n > 0);
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// True with probability `percent` / 100.
pub fn chance(rng: &mut Rng, percent: u32) -> bool {
    rng.next_u32() % 100 < percent
}

/// One element of a non-empty slice.
pub fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[below(rng, items.len())]
}

/// One input of a non-empty list.
pub fn pick_input<'a>(rng: &mut Rng, items: &'a [Vec<u8>]) -> &'a [u8] {
    &items[below(rng, items.len())]
}

/// An index chosen by weight (the weights need not sum to anything in particular).
pub fn weighted(rng: &mut Rng, weights: &[u32]) -> usize {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    let mut x = rng.next_u64() % total.max(1);
    for (i, w) in weights.iter().enumerate() {
        if x < u64::from(*w) {
            return i;
        }
        x -= u64::from(*w);
    }
    weights.len() - 1
}

/// How many stacked mutations: 1 most of the time, up to `max`, geometrically fewer.
pub fn count(rng: &mut Rng, max: usize) -> usize {
    let mut n = 1;
    while n < max && chance(rng, 45) {
        n += 1;
    }
    n
}

/// Integers that sit on boundaries: zero, one, all ones, sign bits, powers of two.
const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    3,
    7,
    8,
    15,
    16,
    31,
    32,
    33,
    63,
    64,
    65,
    127,
    128,
    255,
    256,
    1023,
    1024,
    4095,
    4096,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0xff_ffff,
    0x100_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0x8000_0000_0000_0000,
    u64::MAX,
    u64::MAX - 1,
];

/// An interesting integer, sometimes negated (two's complement).
pub fn interesting(rng: &mut Rng) -> u64 {
    let v = *pick(rng, INTERESTING);
    if chance(rng, 20) {
        v.wrapping_neg()
    } else {
        v
    }
}

/// Largest input a byte mutation may grow to.
pub const MAX_LEN: usize = 4 << 20;

/// Applies one random byte-level mutation to `data`; `donors` are other inputs to splice from.
pub fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, donors: &[&[u8]]) {
    let len = data.len();
    match below(rng, 13) {
        // flip a bit
        0 if len > 0 => {
            let i = below(rng, len);
            data[i] ^= 1 << below(rng, 8);
        }
        // random byte
        1 if len > 0 => {
            let i = below(rng, len);
            data[i] = rng.next_u32() as u8;
        }
        // small add or subtract
        2 if len > 0 => {
            let i = below(rng, len);
            let d = (below(rng, 35) as u8).wrapping_sub(17);
            data[i] = data[i].wrapping_add(d);
        }
        // interesting integer of 1, 2, 4 or 8 bytes, little or big endian
        3 if len > 0 => {
            let w = *pick(rng, &[1usize, 2, 4, 8]);
            let i = below(rng, len);
            let v = interesting(rng);
            let bytes = if chance(rng, 80) {
                v.to_le_bytes()
            } else {
                v.to_be_bytes()
            };
            let n = w.min(len - i);
            let src = if chance(rng, 80) {
                &bytes[..n]
            } else {
                &bytes[8 - n..]
            };
            data[i..i + n].copy_from_slice(src);
        }
        // truncate
        4 if len > 0 => {
            let to = if chance(rng, 50) {
                below(rng, len)
            } else {
                len - 1 - below(rng, len.min(64))
            };
            data.truncate(to);
        }
        // insert random bytes
        5 => {
            let i = below(rng, len + 1);
            let max = if chance(rng, 90) { 16 } else { 4096 };
            let n = 1 + below(rng, max);
            let mut ins = vec![0u8; n];
            if chance(rng, 70) {
                rng.fill_bytes(&mut ins);
            } else {
                ins.fill(rng.next_u32() as u8);
            }
            data.splice(i..i, ins);
        }
        // delete a range
        6 if len > 0 => {
            let i = below(rng, len);
            let max = if chance(rng, 80) { 16 } else { len };
            let n = 1 + below(rng, (len - i).min(max));
            data.drain(i..i + n);
        }
        // duplicate a range somewhere else
        7 if len > 0 => {
            let i = below(rng, len);
            let n = 1 + below(rng, (len - i).min(256));
            let chunk = data[i..i + n].to_vec();
            let at = below(rng, len + 1);
            data.splice(at..at, chunk);
        }
        // overwrite a range with a copy of another range
        8 if len > 1 => {
            let a = below(rng, len);
            let b = below(rng, len);
            let n = 1 + below(rng, (len - a.max(b)).min(64));
            data.copy_within(a..a + n, b);
        }
        // splice: our prefix, a donor's suffix
        9 if !donors.is_empty() => {
            let d = *pick(rng, donors);
            let cut = below(rng, len + 1);
            let from = below(rng, d.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&d[from..]);
        }
        // overwrite with a donor chunk
        10 if !donors.is_empty() && len > 0 => {
            let d = *pick(rng, donors);
            if !d.is_empty() {
                let from = below(rng, d.len());
                let n = 1 + below(rng, (d.len() - from).min(64));
                let at = below(rng, len);
                let n = n.min(len - at);
                data[at..at + n].copy_from_slice(&d[from..from + n]);
            }
        }
        // ASCII digits, a sign or a JSON-ish token somewhere (reaches text formats)
        11 if len > 0 => {
            let tok: &[u8] = pick::<&[u8]>(
                rng,
                &[
                    &b"-"[..],
                    b"0",
                    b"9",
                    b"1e308",
                    b"-1",
                    b"18446744073709551616",
                    b"null",
                    b"\"",
                    b"{",
                    b"}",
                    b"[",
                    b"]",
                    b",",
                    b":",
                    b"\\u0000",
                ],
            );
            let i = below(rng, len);
            if chance(rng, 50) {
                data.splice(i..i, tok.iter().copied());
            } else {
                let n = tok.len().min(len - i);
                data[i..i + n].copy_from_slice(&tok[..n]);
            }
        }
        // a few random bytes in a row
        _ if len > 0 => {
            let i = below(rng, len);
            let n = (1 + below(rng, 8)).min(len - i);
            rng.fill_bytes(&mut data[i..i + n]);
        }
        _ => data.push(rng.next_u32() as u8),
    }
    if data.len() > MAX_LEN {
        data.truncate(MAX_LEN);
    }
}

/// JSON pointers of every node of `v` (the root is `""`).
fn paths(v: &Value, prefix: &mut String, out: &mut Vec<String>) {
    out.push(prefix.clone());
    let len = prefix.len();
    match v {
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                prefix.push('/');
                prefix.push_str(&i.to_string());
                paths(x, prefix, out);
                prefix.truncate(len);
            }
        }
        Value::Object(o) => {
            for (k, x) in o {
                prefix.push('/');
                prefix.push_str(&k.replace('~', "~0").replace('/', "~1"));
                paths(x, prefix, out);
                prefix.truncate(len);
            }
        }
        _ => {}
    }
}

/// Every node of `v`, as JSON pointers.
pub fn all_paths(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    paths(v, &mut String::new(), &mut out);
    out
}

/// Keys of every object in `v`.
fn all_keys(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| all_keys(x, out)),
        Value::Object(o) => {
            for (k, x) in o {
                out.push(k.clone());
                all_keys(x, out);
            }
        }
        _ => {}
    }
}

/// A number at a boundary: zero, one, negative, huge, fractional, or near `current`.
fn interesting_number(rng: &mut Rng, current: Option<&Number>) -> Value {
    let cur = current.and_then(Number::as_f64).unwrap_or(1.0);
    match below(rng, 9) {
        0 => Value::from(0u64),
        1 => Value::from(interesting(rng)),
        2 => Value::from(interesting(rng) as i64),
        3 => Value::from(*pick(
            rng,
            &[
                1e308,
                -1e308,
                1.5,
                -0.5,
                -0.0,
                1e-300,
                4.611_686_018_427_388e18,
                9.3e18,
                1.8446744073709552e19,
                f64::MAX,
                f64::MIN_POSITIVE,
            ],
        )),
        4 => Value::from(-1i64),
        5 => {
            // current plus or minus a little
            let d = below(rng, 5) as i64 - 2;
            match current.and_then(Number::as_i64) {
                Some(c) => Value::from(c.saturating_add(d)),
                None => Value::from(cur + d as f64),
            }
        }
        6 => match current.and_then(Number::as_u64) {
            Some(c) => Value::from(c.saturating_mul(2 + below(rng, 1000) as u64)),
            None => Value::from(cur * 1e6),
        },
        7 => match current.and_then(Number::as_u64) {
            Some(c) => Value::from(c / (2 + below(rng, 8) as u64)),
            None => Value::from(cur / 3.0),
        },
        _ => Value::from(below(rng, 70) as u64),
    }
}

/// A random node of `v`, cloned.
fn random_subtree(rng: &mut Rng, v: &Value) -> Value {
    let ps = all_paths(v);
    let p = pick(rng, &ps);
    v.pointer(p).cloned().unwrap_or(Value::Null)
}

/// Applies one random edit to the JSON document `doc`; `donor` is a document to copy
/// subtrees and keys from (it may be `doc` itself, cloned).
pub fn mutate_json(rng: &mut Rng, doc: &mut Value, donor: &Value) {
    let ps = all_paths(doc);
    let path = pick(rng, &ps).clone();
    // a node copied from the donor, chosen before we borrow `doc` mutably
    let graft = random_subtree(rng, donor);
    let mut keys = Vec::new();
    all_keys(donor, &mut keys);
    all_keys(doc, &mut keys);
    let Some(node) = doc.pointer_mut(&path) else {
        return;
    };
    // one in six: replace the node by a donor subtree or a value of another type
    if chance(rng, 16) {
        *node = match below(rng, 6) {
            0..=2 => graft,
            3 => Value::Null,
            4 => Value::from("x"),
            _ => Value::Array(vec![]),
        };
        return;
    }
    match node {
        Value::Number(n) => {
            let n = n.clone();
            *node = interesting_number(rng, Some(&n));
        }
        Value::Bool(b) => *b = !*b,
        Value::Null => *node = interesting_number(rng, None),
        Value::String(s) => match below(rng, 6) {
            0 => s.clear(),
            1 if !keys.is_empty() => *s = pick(rng, &keys).clone(),
            2 => s.push_str(&"A".repeat(1 + below(rng, 300))),
            3 => *s = "\u{0}\u{fffd}é/~\"\\".into(),
            4 if !s.is_empty() => {
                let mut chars: Vec<char> = s.chars().collect();
                let i = below(rng, chars.len());
                chars[i] = char::from(b'0' + below(rng, 75) as u8);
                *s = chars.into_iter().collect();
            }
            _ => *node = interesting_number(rng, None),
        },
        Value::Array(a) => match below(rng, 8) {
            0 if !a.is_empty() => {
                let i = below(rng, a.len());
                a.remove(i);
            }
            1 if !a.is_empty() => {
                let i = below(rng, a.len());
                let x = a[i].clone();
                a.insert(below(rng, a.len() + 1), x);
            }
            2 if a.len() > 1 => {
                let i = below(rng, a.len());
                let j = below(rng, a.len());
                a.swap(i, j);
            }
            3 => a.clear(),
            4 if !a.is_empty() => a.truncate(below(rng, a.len())),
            5 => a.push(graft),
            6 if !a.is_empty() => {
                // many copies of one element
                let x = a[below(rng, a.len())].clone();
                let n = 1 + below(rng, 64);
                a.extend(std::iter::repeat_n(x, n));
            }
            _ => a.push(interesting_number(rng, None)),
        },
        Value::Object(o) => {
            let own: Vec<String> = o.keys().cloned().collect();
            match below(rng, 5) {
                // drop a key
                0 if !own.is_empty() => {
                    o.remove(pick(rng, &own));
                }
                // rename a key to another known key (swaps enum variants such as step kinds)
                1 | 2 if !own.is_empty() && !keys.is_empty() => {
                    let from = pick(rng, &own).clone();
                    let to = pick(rng, &keys).clone();
                    if let Some(v) = o.remove(&from) {
                        o.insert(to, v);
                    }
                }
                // add a known key with a donor value
                3 if !keys.is_empty() => {
                    o.insert(pick(rng, &keys).clone(), graft);
                }
                _ => {
                    let mut m = Map::new();
                    m.insert(format!("k{}", below(rng, 4)), graft);
                    o.extend(m);
                }
            }
        }
    }
}

//! Client API keys (`sotto serve --client-keys FILE`): who may spend this deployment's
//! compute, and how fast.
//!
//! A client presents its key in the hello (`api_key`); P0 and P1 both check it before they
//! answer with the manifest, and P0 takes one token of the key's bucket per request. The
//! file holds only SHA-256 digests of the keys (`sotto client-key` makes a key, prints it
//! once and appends its line), so a copy of the file lets nobody in:
//!
//! ```text
//! # name    sha256 of the key                                                        requests/s
//! alice     sha256:3a7bd3e2360a3d29eea436fcfb7e44c735d117c42d1c1835420b6b9942dd4f1b  20
//! batchjob  sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! ```
//!
//! A line without a rate is not rate-limited. A key's bucket holds one second of its rate
//! (at least one request), so a client may burst that much and then keeps to the rate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::error::{Result, ServeError};

/// Most bytes of a client-keys file.
pub const MAX_FILE: usize = 1 << 20;
/// Most keys in one file.
pub const MAX_KEYS: usize = 10_000;
/// Bytes of a key `sotto client-key` makes (printed as 64 hex digits).
pub const KEY_BYTES: usize = 32;

/// The keys a deployment accepts.
#[derive(Debug)]
pub struct ClientKeys {
    by_digest: HashMap<[u8; 32], Arc<KeyEntry>>,
}

/// One accepted key: its name (for logs and metrics; never the key) and its rate.
#[derive(Debug)]
pub struct KeyEntry {
    /// The name given in the file.
    pub name: String,
    /// Requests per second, if limited.
    pub rate: Option<f64>,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Why a hello's key was refused (said to the client as `unauthenticated`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// The hello carried no key.
    Missing,
    /// The key is not in the file.
    Unknown,
}

impl KeyRefusal {
    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            KeyRefusal::Missing => {
                "this deployment requires an API key: pass it in the hello (`apiKey` in the npm package, `api_key` in ClientOptions)"
            }
            KeyRefusal::Unknown => "the API key is not valid for this deployment",
        }
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.trim().as_bytes()).into()
}

fn parse_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

fn bad(line: usize, what: String) -> ServeError {
    ServeError::Other(format!("client keys, line {line}: {what}"))
}

impl ClientKeys {
    /// Parses a client-keys file (see the module docs).
    pub fn parse(text: &str) -> Result<ClientKeys> {
        let mut by_digest = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (name, hash, rate) = match fields.as_slice() {
                [name, hash] => (*name, *hash, None),
                [name, hash, rate] => (*name, *hash, Some(*rate)),
                _ => {
                    return Err(bad(
                        n,
                        "expected `NAME sha256:HEX [REQUESTS_PER_SECOND]`".into(),
                    ))
                }
            };
            let d = hash
                .strip_prefix("sha256:")
                .and_then(parse_hex32)
                .ok_or_else(|| {
                    bad(
                        n,
                        format!("{name}: the key must be given as sha256: and 64 hex digits (`sotto client-key` writes such lines; the file never holds keys themselves)"),
                    )
                })?;
            let rate = match rate {
                None => None,
                Some(r) => {
                    let v: f64 = r
                        .trim_end_matches("/s")
                        .parse()
                        .map_err(|_| bad(n, format!("{name}: rate {r:?} is not a number")))?;
                    if !(v.is_finite() && v > 0.0 && v <= 1e6) {
                        return Err(bad(
                            n,
                            format!(
                                "{name}: rate {r} must be above 0 and at most 1000000 requests/s"
                            ),
                        ));
                    }
                    Some(v)
                }
            };
            if !names.insert(name.to_string()) {
                return Err(bad(n, format!("the name {name} appears twice")));
            }
            let entry = Arc::new(KeyEntry {
                name: name.to_string(),
                rate,
                bucket: Mutex::new(Bucket {
                    tokens: rate.map_or(0.0, |r| r.max(1.0)),
                    at: Instant::now(),
                }),
            });
            if by_digest.insert(d, entry).is_some() {
                return Err(bad(n, format!("{name}: the same key is listed twice")));
            }
            if by_digest.len() > MAX_KEYS {
                return Err(bad(n, format!("more than {MAX_KEYS} keys")));
            }
        }
        if by_digest.is_empty() {
            return Err(ServeError::Other(
                "the client keys file lists no key (every client would be refused)".into(),
            ));
        }
        Ok(ClientKeys { by_digest })
    }

    /// How many keys the file lists.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// The entry of the key a hello presented.
    pub fn check(&self, presented: Option<&str>) -> std::result::Result<Arc<KeyEntry>, KeyRefusal> {
        let key = presented
            .filter(|k| !k.trim().is_empty())
            .ok_or(KeyRefusal::Missing)?;
        self.by_digest
            .get(&digest(key))
            .cloned()
            .ok_or(KeyRefusal::Unknown)
    }
}

impl KeyEntry {
    /// Takes one request from the key's bucket, or says how long until one is there.
    pub fn take(&self) -> std::result::Result<(), Duration> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let cap = rate.max(1.0);
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(cap);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }
}

/// A new key and its line for the file: (key as 64 hex digits, `NAME sha256:HEX [RATE]`).
pub fn new_key(name: &str, rate: Option<f64>) -> Result<(String, String)> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        return Err(ServeError::Other(format!(
            "key name {name:?}: 1 to 64 letters, digits or -_.@"
        )));
    }
    let mut bytes = [0u8; KEY_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| ServeError::Other(format!("no randomness from the OS: {e}")))?;
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let d: String = digest(&key).iter().map(|b| format!("{b:02x}")).collect();
    let line = match rate {
        Some(r) => format!("{name} sha256:{d} {r}"),
        None => format!("{name} sha256:{d}"),
    };
    ClientKeys::parse(&line)?;
    Ok((key, line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_by_digest_and_rate_limited() {
        let (k1, l1) = new_key("alice", Some(2.0)).expect("key");
        let (k2, l2) = new_key("batch-job", None).expect("key");
        assert_eq!(k1.len(), 64);
        assert!(!l1.contains(&k1), "the file line must not hold the key");
        let keys =
            ClientKeys::parse(&format!("# comment\n{l1}\n\n{l2}  # trailing\n")).expect("parse");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.check(None).unwrap_err(), KeyRefusal::Missing);
        assert_eq!(keys.check(Some("  ")).unwrap_err(), KeyRefusal::Missing);
        assert_eq!(keys.check(Some(&k1[1..])).unwrap_err(), KeyRefusal::Unknown);
        let a = keys.check(Some(&k1)).expect("alice");
        assert_eq!(a.name, "alice");
        // A burst of the rate (2), then refused with a wait of about half a second.
        assert!(a.take().is_ok() && a.take().is_ok());
        let wait = a.take().expect_err("over the rate");
        assert!(
            wait > Duration::from_millis(300) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        let b = keys.check(Some(&k2)).expect("batch-job");
        assert!(
            (0..1000).all(|_| b.take().is_ok()),
            "no rate: never limited"
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_line() {
        let (_, l) = new_key("a", None).expect("key");
        for (text, why) in [
            ("", "no key"),
            ("alice 0123", "sha256:"),
            ("alice sha256:zz", "sha256:"),
            (&format!("{l}\n{l}") as &str, "line 2"),
            (&format!("{l} fast") as &str, "not a number"),
            (&format!("{l} 0") as &str, "above 0"),
            (&format!("{l} 1 2") as &str, "expected"),
        ] {
            let e = ClientKeys::parse(text).expect_err(text).to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
        assert!(new_key("bad name", None).is_err());
    }
}

//! Party authentication with pre-shared keys, one key per pair of parties.
//!
//! Each pair (P0–P1, P0–helper, P1–helper) shares its own 32-byte key, and each party holds
//! only the keys of its own pairs ([`PartyKeys`], written by `sotto certs` as `p0.keys`,
//! `p1.keys`, `helper.keys`). So P1 cannot pose as P0 to the helper, nor the helper as P0 to
//! P1: it lacks that pair's key.
//!
//! A party connection is authenticated twice:
//! 1. **Before the WebSocket exists**: the dialer's HTTP upgrade request carries
//!    [`UPGRADE_HEADER`], a token `v1.<role>.<unix seconds>.<nonce>.<MAC>` over both roles,
//!    the time and a fresh nonce ([`upgrade_token`]). The acceptor checks it
//!    ([`UpgradeGuard::check`]: known role, the pair's key, a clock skew of at most
//!    [`MAX_SKEW`], a nonce not seen before) and answers 401 otherwise, so a process without a
//!    key never gets a WebSocket and cannot make a party buffer large messages.
//! 2. **On the WebSocket**, a challenge-response handshake with fresh nonces on both sides:
//!    the accepting party sends its role and a nonce; the dialing party answers with its role,
//!    its own nonce and a MAC over both roles and nonces; the acceptor checks it and answers
//!    with its own MAC (label "acceptor"), which the dialer checks. A recorded handshake cannot
//!    be replayed.
//!
//! Every MAC is HMAC-SHA256 over a length-prefixed transcript (each field preceded by its
//! length as a u32), so no two different field lists give the same bytes. Over TLS the
//! handshake's transcript also holds 32 bytes of the TLS exporter (label
//! [`crate::tls::BINDING_LABEL`]), which both ends of one TLS channel compute alike: a
//! handshake relayed into another TLS channel fails. (A TLS-terminating proxy between two
//! parties breaks the binding too: the parties must hold the TLS channel themselves.)

use std::collections::HashMap;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sotto_wire::{ErrorPayload, Frame, Kind, PartyAuth, Role};

use crate::{Duplex, NetError, Result};

/// Largest handshake message.
const AUTH_MAX: usize = 4096;

/// A 32-byte pre-shared key known to P0, P1 and the helper (never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct Psk([u8; 32]);

impl std::fmt::Debug for Psk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Psk(..)")
    }
}

impl Psk {
    /// A fresh key from the OS.
    pub fn random() -> Result<Psk> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| NetError::Auth(format!("OS randomness: {e}")))?;
        Ok(Psk(k))
    }

    /// Parses 64 hex digits (surrounding whitespace allowed, as in a key file).
    pub fn from_hex(s: &str) -> Result<Psk> {
        let b = hex_decode(s.trim())
            .filter(|b| b.len() == 32)
            .ok_or_else(|| NetError::Auth("a key is 64 hex digits (32 bytes)".into()))?;
        let mut k = [0u8; 32];
        k.copy_from_slice(&b);
        if k.iter().all(|v| *v == k[0]) {
            return Err(NetError::Auth(
                "a key with 32 equal bytes is refused (make keys with `sotto certs`)".into(),
            ));
        }
        Ok(Psk(k))
    }

    /// The key as 64 hex digits (for writing a key file).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    fn mac(&self, fields: &[&[u8]]) -> Hmac<Sha256> {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for f in fields {
            m.update(&(f.len() as u32).to_le_bytes());
            m.update(f);
        }
        m
    }

    fn proof(
        &self,
        label: &str,
        dialer: Role,
        acceptor: Role,
        na: &str,
        nd: &str,
        binding: Option<&[u8; 32]>,
    ) -> Hmac<Sha256> {
        self.mac(&[
            b"sotto-party-auth-v3",
            label.as_bytes(),
            role_name(dialer).as_bytes(),
            role_name(acceptor).as_bytes(),
            na.as_bytes(),
            nd.as_bytes(),
            binding.map_or(&[][..], |b| &b[..]),
        ])
    }
}

/// A role's name in key files and tokens.
pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::P0 => "p0",
        Role::P1 => "p1",
        Role::Helper => "helper",
        Role::Client => "client",
    }
}

fn role_from_name(s: &str) -> Option<Role> {
    match s {
        "p0" => Some(Role::P0),
        "p1" => Some(Role::P1),
        "helper" => Some(Role::Helper),
        _ => None,
    }
}

/// The peers a party links with.
pub fn peers_of(me: Role) -> &'static [Role] {
    match me {
        Role::P0 => &[Role::P1, Role::Helper],
        Role::P1 => &[Role::P0, Role::Helper],
        Role::Helper => &[Role::P0, Role::P1],
        Role::Client => &[],
    }
}

/// Longest key file read (a key file is a few lines).
pub const MAX_KEY_FILE: usize = 4096;

/// One party's keys: one per peer it links with (never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct PartyKeys {
    me: Role,
    peers: Vec<(Role, Psk)>,
}

impl std::fmt::Debug for PartyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let peers: Vec<&str> = self.peers.iter().map(|(r, _)| role_name(*r)).collect();
        write!(f, "PartyKeys({} with {:?})", role_name(self.me), peers)
    }
}

impl PartyKeys {
    /// Fresh keys for a deployment: P0's, P1's and the helper's key rings, in that order
    /// (each pair's key drawn from the OS once and given to both of its parties).
    pub fn generate() -> Result<[PartyKeys; 3]> {
        let (k01, k0h, k1h) = (Psk::random()?, Psk::random()?, Psk::random()?);
        Ok([
            PartyKeys {
                me: Role::P0,
                peers: vec![(Role::P1, k01.clone()), (Role::Helper, k0h.clone())],
            },
            PartyKeys {
                me: Role::P1,
                peers: vec![(Role::P0, k01), (Role::Helper, k1h.clone())],
            },
            PartyKeys {
                me: Role::Helper,
                peers: vec![(Role::P0, k0h), (Role::P1, k1h)],
            },
        ])
    }

    /// Parses a key file of party `me`: one line `PEER = <64 hex digits>` per peer
    /// (`#` comments and blank lines allowed). Every peer of `me` must have a key, and the
    /// keys must differ.
    pub fn parse(me: Role, text: &str) -> Result<PartyKeys> {
        if text.len() > MAX_KEY_FILE {
            return Err(NetError::Auth(format!(
                "a key file holds at most {MAX_KEY_FILE} bytes"
            )));
        }
        let mut peers: Vec<(Role, Psk)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hex)) = line.split_once('=') else {
                let hint = if Psk::from_hex(line).is_ok() {
                    ": this is a single key for every party (the old party.key), which lets any party pose as another; run `sotto certs` again for one key per pair (p0.keys, p1.keys, helper.keys)"
                } else {
                    ""
                };
                return Err(NetError::Auth(format!(
                    "line {}: write `PEER = KEY` (PEER is p0, p1 or helper){hint}",
                    i + 1
                )));
            };
            let peer = role_from_name(name.trim()).ok_or_else(|| {
                NetError::Auth(format!(
                    "line {}: unknown party {:?} (p0, p1 or helper)",
                    i + 1,
                    name.trim()
                ))
            })?;
            if peer == me || !peers_of(me).contains(&peer) {
                return Err(NetError::Auth(format!(
                    "line {}: {} has no link with {}",
                    i + 1,
                    role_name(me),
                    role_name(peer)
                )));
            }
            if peers.iter().any(|(r, _)| *r == peer) {
                return Err(NetError::Auth(format!(
                    "line {}: a second key for {}",
                    i + 1,
                    role_name(peer)
                )));
            }
            let k =
                Psk::from_hex(hex).map_err(|e| NetError::Auth(format!("line {}: {e}", i + 1)))?;
            peers.push((peer, k));
        }
        for p in peers_of(me) {
            if !peers.iter().any(|(r, _)| r == p) {
                return Err(NetError::Auth(format!(
                    "no key for {} (a key file of {} names p0, p1 or helper, one line per peer)",
                    role_name(*p),
                    role_name(me)
                )));
            }
        }
        if peers.len() == 2 && peers[0].1 == peers[1].1 {
            return Err(NetError::Auth(
                "both peers have the same key: each pair needs its own".into(),
            ));
        }
        Ok(PartyKeys { me, peers })
    }

    /// The key file's text (see [`PartyKeys::parse`]).
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "# sotto party keys of {}: one per peer. Keep this file on {}'s host only, mode 0600.\n",
            role_name(self.me),
            role_name(self.me)
        );
        for (r, k) in &self.peers {
            s.push_str(&format!("{} = {}\n", role_name(*r), k.to_hex()));
        }
        s
    }

    /// Whose keys these are.
    pub fn me(&self) -> Role {
        self.me
    }

    /// The key shared with `peer`.
    pub fn key_for(&self, peer: Role) -> Result<&Psk> {
        self.peers
            .iter()
            .find(|(r, _)| *r == peer)
            .map(|(_, k)| k)
            .ok_or_else(|| {
                NetError::Auth(format!(
                    "{} holds no key for {}",
                    role_name(self.me),
                    role_name(peer)
                ))
            })
    }
}

/// The HTTP header of a party's upgrade request that carries its [`upgrade_token`].
pub const UPGRADE_HEADER: &str = "x-sotto-party";
/// Largest clock difference between two parties an upgrade token tolerates.
pub const MAX_SKEW: Duration = Duration::from_secs(300);
/// Most upgrade nonces remembered (each needs a valid MAC, so only a key holder adds some).
const MAX_NONCES: usize = 65_536;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The token a party (`keys.me()`) sends in [`UPGRADE_HEADER`] when it dials `acceptor`.
pub fn upgrade_token(keys: &PartyKeys, acceptor: Role) -> Result<String> {
    let key = keys.key_for(acceptor)?;
    let (me, t, n) = (keys.me, unix_now().to_string(), nonce()?);
    let mac = key.mac(&[
        b"sotto-party-upgrade-v1",
        role_name(me).as_bytes(),
        role_name(acceptor).as_bytes(),
        t.as_bytes(),
        n.as_bytes(),
    ]);
    Ok(format!(
        "v1.{}.{t}.{n}.{}",
        role_name(me),
        hex(&mac.finalize().into_bytes())
    ))
}

/// Checks upgrade tokens on the accepting side and remembers their nonces (a token is good
/// once).
#[derive(Debug, Default)]
pub struct UpgradeGuard {
    seen: std::sync::Mutex<HashMap<String, u64>>,
}

impl UpgradeGuard {
    /// Checks `token` from a party dialing `keys.me()`; returns the dialer's role.
    pub fn check(&self, keys: &PartyKeys, token: &str) -> Result<Role> {
        let bad = |why: &str| NetError::Auth(format!("party upgrade refused: {why}"));
        if token.len() > 256 {
            return Err(bad("token too long"));
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [v, role, t, n, mac] = parts[..] else {
            return Err(bad("malformed token"));
        };
        if v != "v1" {
            return Err(bad("unknown token version"));
        }
        let dialer = role_from_name(role).ok_or_else(|| bad("unknown role"))?;
        if !peers_of(keys.me).contains(&dialer) {
            return Err(bad(&format!(
                "{} takes no party connection from {}",
                role_name(keys.me),
                role_name(dialer)
            )));
        }
        let secs: u64 = t.parse().map_err(|_| bad("malformed time"))?;
        let now = unix_now();
        if secs.abs_diff(now) > MAX_SKEW.as_secs() {
            return Err(bad("the token's time is off by more than 5 minutes"));
        }
        if n.len() != 32 || hex_decode(n).is_none() {
            return Err(bad("malformed nonce"));
        }
        let key = keys.key_for(dialer)?;
        let m = key.mac(&[
            b"sotto-party-upgrade-v1",
            role.as_bytes(),
            role_name(keys.me).as_bytes(),
            t.as_bytes(),
            n.as_bytes(),
        ]);
        if !verify(m, Some(mac)) {
            return Err(bad(&format!(
                "the peer claiming to be {role} does not hold that pair's key"
            )));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let horizon = 2 * MAX_SKEW.as_secs();
        seen.retain(|_, at| now.saturating_sub(*at) <= horizon);
        if seen.len() >= MAX_NONCES {
            return Err(bad("too many party upgrades recently"));
        }
        if seen.insert(n.to_string(), now).is_some() {
            return Err(bad("a replayed token"));
        }
        Ok(dialer)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn nonce() -> Result<String> {
    let mut n = [0u8; 16];
    getrandom::fill(&mut n).map_err(|e| NetError::Auth(format!("OS randomness: {e}")))?;
    Ok(hex(&n))
}

async fn recv_auth(link: &mut Duplex, timeout: Duration) -> Result<PartyAuth> {
    let f = link.recv_frame(AUTH_MAX, timeout).await?;
    if f.kind == Kind::Error {
        let e: ErrorPayload = f.parse_json(Kind::Error)?;
        return Err(NetError::Auth(format!(
            "the peer refused us: {}",
            e.message
        )));
    }
    Ok(f.parse_json(Kind::Auth)?)
}

async fn send_auth(link: &mut Duplex, a: &PartyAuth) -> Result<()> {
    link.send_frame(&Frame::json(Kind::Auth, 0, 0, a)?).await
}

async fn refuse(link: &mut Duplex, message: String) -> NetError {
    let e = ErrorPayload {
        code: "unauthenticated".into(),
        message: message.clone(),
    };
    if let Ok(f) = Frame::json(Kind::Error, 0, 0, &e) {
        let _ = link.send_frame(&f).await;
    }
    NetError::Auth(message)
}

fn verify(m: Hmac<Sha256>, proof: Option<&str>) -> bool {
    proof
        .and_then(hex_decode)
        .is_some_and(|p| m.verify_slice(&p).is_ok())
}

/// Dialing side: authenticates as `keys.me()` to a party that must be `expect`. `binding` is
/// the TLS channel's exporter value ([`crate::tls::connect_bound`]; `None` without TLS): both
/// sides must see the same channel, so a handshake relayed into another TLS channel fails.
pub async fn dial(
    link: &mut Duplex,
    keys: &PartyKeys,
    expect: Role,
    timeout: Duration,
    binding: Option<&[u8; 32]>,
) -> Result<()> {
    let me = keys.me;
    let psk = keys.key_for(expect)?;
    let first = recv_auth(link, timeout).await?;
    if first.role != expect {
        return Err(NetError::Auth(format!(
            "dialed {expect:?} but the peer says it is {:?}",
            first.role
        )));
    }
    let nd = nonce()?;
    let proof = psk
        .proof("dialer", me, expect, &first.nonce, &nd, binding)
        .finalize();
    send_auth(
        link,
        &PartyAuth {
            role: me,
            nonce: nd.clone(),
            proof: Some(hex(&proof.into_bytes())),
        },
    )
    .await?;
    let reply = recv_auth(link, timeout).await?;
    let ok = reply.role == expect
        && reply.nonce == first.nonce
        && verify(
            psk.proof("acceptor", me, expect, &first.nonce, &nd, binding),
            reply.proof.as_deref(),
        );
    if !ok {
        return Err(NetError::Auth(format!(
            "{expect:?} did not prove it holds the party key"
        )));
    }
    Ok(())
}

/// Accepting side: authenticates a dialing party, which must be one of `allowed` (and a peer
/// `keys` holds a key for); returns its role. On failure the peer gets an error frame saying
/// why.
pub async fn accept(
    link: &mut Duplex,
    keys: &PartyKeys,
    allowed: &[Role],
    timeout: Duration,
    binding: Option<&[u8; 32]>,
) -> Result<Role> {
    let me = keys.me;
    let na = nonce()?;
    send_auth(
        link,
        &PartyAuth {
            role: me,
            nonce: na.clone(),
            proof: None,
        },
    )
    .await?;
    let answer = match recv_auth(link, timeout).await {
        Ok(a) => a,
        Err(e) => return Err(refuse(link, format!("bad handshake: {e}")).await),
    };
    let psk = match keys.key_for(answer.role) {
        Ok(k) if allowed.contains(&answer.role) => k,
        _ => {
            return Err(refuse(
                link,
                format!("{me:?} takes no party connection from {:?}", answer.role),
            )
            .await)
        }
    };
    if !verify(
        psk.proof("dialer", answer.role, me, &na, &answer.nonce, binding),
        answer.proof.as_deref(),
    ) {
        return Err(refuse(
            link,
            format!(
                "the peer claiming to be {:?} does not hold the party key (or its TLS channel is not this one: is a TLS-terminating proxy between the parties?)",
                answer.role
            ),
        )
        .await);
    }
    let proof = psk
        .proof("acceptor", answer.role, me, &na, &answer.nonce, binding)
        .finalize();
    send_auth(
        link,
        &PartyAuth {
            role: me,
            nonce: na,
            proof: Some(hex(&proof.into_bytes())),
        },
    )
    .await?;
    Ok(answer.role)
}

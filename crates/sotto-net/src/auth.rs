//! Party authentication with a pre-shared key.
//!
//! Every party connection starts with a challenge-response handshake before it carries any
//! share: the accepting party sends its role and a fresh nonce; the dialing party answers
//! with its role, its own nonce and `HMAC-SHA256(key, "dialer" ‖ roles ‖ both nonces)`; the
//! acceptor checks the role is one it expects and the proof, and answers with its own proof
//! (label "acceptor"), which the dialer checks. A process without the key, or claiming a
//! role the acceptor does not expect, is refused; a recorded handshake cannot be replayed
//! (fresh nonces on both sides). Over TLS this also binds the link to the deployment's key.

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
        Ok(Psk(k))
    }

    /// The key as 64 hex digits (for writing a key file).
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    fn proof(&self, label: &str, dialer: Role, acceptor: Role, na: &str, nd: &str) -> Hmac<Sha256> {
        let mut m =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(
            format!("sotto-party-auth-v1|{label}|{dialer:?}|{acceptor:?}|{na}|{nd}").as_bytes(),
        );
        m
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
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

/// Dialing side: authenticates as `me` to a party that must be `expect`.
pub async fn dial(
    link: &mut Duplex,
    me: Role,
    expect: Role,
    psk: &Psk,
    timeout: Duration,
) -> Result<()> {
    let first = recv_auth(link, timeout).await?;
    if first.role != expect {
        return Err(NetError::Auth(format!(
            "dialed {expect:?} but the peer says it is {:?}",
            first.role
        )));
    }
    let nd = nonce()?;
    let proof = psk
        .proof("dialer", me, expect, &first.nonce, &nd)
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
            psk.proof("acceptor", me, expect, &first.nonce, &nd),
            reply.proof.as_deref(),
        );
    if !ok {
        return Err(NetError::Auth(format!(
            "{expect:?} did not prove it holds the party key"
        )));
    }
    Ok(())
}

/// Accepting side: authenticates a dialing party, which must be one of `allowed`; returns
/// its role. On failure the peer gets an error frame saying why.
pub async fn accept(
    link: &mut Duplex,
    me: Role,
    allowed: &[Role],
    psk: &Psk,
    timeout: Duration,
) -> Result<Role> {
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
    if !allowed.contains(&answer.role) {
        return Err(refuse(
            link,
            format!("{me:?} takes no party connection from {:?}", answer.role),
        )
        .await);
    }
    if !verify(
        psk.proof("dialer", answer.role, me, &na, &answer.nonce),
        answer.proof.as_deref(),
    ) {
        return Err(refuse(
            link,
            format!(
                "the peer claiming to be {:?} does not hold the party key",
                answer.role
            ),
        )
        .await);
    }
    let proof = psk
        .proof("acceptor", answer.role, me, &na, &answer.nonce)
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

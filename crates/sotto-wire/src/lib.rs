//! # sotto-wire
//!
//! The binary frames that sotto's parties and clients exchange over WebSockets. A frame is a
//! fixed 32-byte header and a payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | magic `SOTW` |
//! | 4 | version ([`VERSION`]) |
//! | 5 | kind ([`Kind`]) |
//! | 6..8 | reserved, zero |
//! | 8..24 | session id (u128 LE) |
//! | 24..28 | step (u32 LE) |
//! | 28..32 | payload length (u32 LE) |
//!
//! Decoding checks every field and the length against a limit before touching the payload,
//! and returns a [`WireError`] for anything malformed: it never panics, whatever the bytes.
//!
//! ```
//! use sotto_wire::{Frame, Kind, decode, DEFAULT_MAX_PAYLOAD};
//! let f = Frame { kind: Kind::Share, session: 7, step: 3, payload: vec![1, 2, 3] };
//! assert_eq!(decode(&f.encode(), DEFAULT_MAX_PAYLOAD).unwrap(), f);
//! assert!(decode(b"garbage", DEFAULT_MAX_PAYLOAD).is_err());
//! ```
#![deny(missing_docs)]
// The workspace denies `unsafe`; only sotto-core allows it, for one call (`simd`).
#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Frame format version.
pub const VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 32;
/// Default largest payload accepted (64 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 64 << 20;
/// The `step` of an [`Kind::InputSeed`] frame whose `session` is the client's tag for the
/// request (the `session` of its [`Kind::InputShare`] to P0), not a session P0 assigned: P1
/// learns the session from P0. Servers still take the older order too (an `InputShare` with
/// session 0, answered by P0's [`Kind::Session`] frame, then a seed with step 0 for that
/// session), which costs the client a round trip to P0 before P1 can start.
pub const TAGGED_SEED: u32 = 1;
const MAGIC: &[u8; 4] = b"SOTW";

/// The one error type of `sotto-wire`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than a header, or than the header announces.
    #[error("truncated frame: {0}")]
    Truncated(String),
    /// The bytes are not a sotto frame.
    #[error("not a sotto frame: {0}")]
    Malformed(String),
    /// A frame of another format version.
    #[error("frame version {found}, this build speaks version {VERSION}")]
    Version {
        /// The version found.
        found: u8,
    },
    /// The payload is larger than allowed.
    #[error("payload of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A payload that does not decode as its kind requires.
    #[error("bad {kind:?} payload: {reason}")]
    Payload {
        /// The frame kind.
        kind: Kind,
        /// What is wrong.
        reason: String,
    },
    /// The two servers a client dialed are not P0 and P1 of one deployment.
    #[error("{0}")]
    NotAPair(String),
}

/// Result alias of `sotto-wire`.
pub type Result<T> = std::result::Result<T, WireError>;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Opens a connection: [`Hello`] as JSON.
    Hello = 1,
    /// A model manifest: [`Manifest`] as JSON.
    Manifest = 2,
    /// A client's input share for P0 (u64 LE elements).
    InputShare = 3,
    /// A client's 32-byte input seed for P1.
    InputSeed = 4,
    /// Shares exchanged between parties, or helper material (opaque bytes).
    Share = 5,
    /// An output share for the client (u64 LE elements).
    Output = 6,
    /// An error: [`ErrorPayload`] as JSON.
    Error = 7,
    /// Orderly end of a session (empty payload).
    Close = 8,
    /// P0 to a client: the session assigned to its request (the frame's `step` echoes the
    /// request number the client chose; empty payload).
    Session = 9,
    /// Coordination between parties: [`Control`] as JSON.
    Control = 10,
    /// Party authentication: [`PartyAuth`] as JSON.
    Auth = 11,
    /// A client's input share for P0 for a `k`-bit range: per element `⌈(k+1)/8⌉` LE bytes, a
    /// share of the element's `k`-bit code modulo `2^k` and, in bit `k`, a share of its wrap
    /// bit; for deployments whose manifest sets [`Manifest::input_bits`].
    InputBits = 12,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Manifest,
            3 => Kind::InputShare,
            4 => Kind::InputSeed,
            5 => Kind::Share,
            6 => Kind::Output,
            7 => Kind::Error,
            8 => Kind::Close,
            9 => Kind::Session,
            10 => Kind::Control,
            11 => Kind::Auth,
            12 => Kind::InputBits,
            _ => return None,
        })
    }
}

/// A frame.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// Session id.
    pub session: u128,
    /// Protocol step within the session.
    pub step: u32,
    /// The payload.
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    /// Never prints the payload: it may be a share.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Frame({:?}, session {:x}, step {}, {} bytes)",
            self.kind,
            self.session,
            self.step,
            self.payload.len()
        )
    }
}

impl Frame {
    /// Encodes the frame (header + payload).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.session.to_le_bytes());
        out.extend_from_slice(&self.step.to_le_bytes());
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// A frame whose payload is `value` as JSON.
    pub fn json<T: Serialize>(kind: Kind, session: u128, step: u32, value: &T) -> Result<Frame> {
        let payload = serde_json::to_vec(value).map_err(|e| WireError::Payload {
            kind,
            reason: e.to_string(),
        })?;
        Ok(Frame {
            kind,
            session,
            step,
            payload,
        })
    }

    /// Decodes the JSON payload, checking the frame has kind `kind`.
    pub fn parse_json<T: for<'de> Deserialize<'de>>(&self, kind: Kind) -> Result<T> {
        if self.kind != kind {
            return Err(WireError::Payload {
                kind,
                reason: format!("got a {:?} frame", self.kind),
            });
        }
        serde_json::from_slice(&self.payload).map_err(|e| WireError::Payload {
            kind,
            reason: e.to_string(),
        })
    }

    /// The payload as `n` ring elements (u64 LE), checking kind and length.
    pub fn elements(&self, kind: Kind, n: usize) -> Result<Vec<u64>> {
        if self.kind != kind {
            return Err(WireError::Payload {
                kind,
                reason: format!("got a {:?} frame", self.kind),
            });
        }
        if Some(self.payload.len()) != n.checked_mul(8) {
            return Err(WireError::Payload {
                kind,
                reason: format!(
                    "{} bytes where {n} elements ({} bytes) were expected",
                    self.payload.len(),
                    n.saturating_mul(8)
                ),
            });
        }
        Ok(self
            .payload
            .chunks_exact(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b.copy_from_slice(c);
                u64::from_le_bytes(b)
            })
            .collect())
    }

    /// A frame carrying ring elements.
    pub fn from_elements(kind: Kind, session: u128, step: u32, v: &[u64]) -> Frame {
        Frame {
            kind,
            session,
            step,
            payload: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }
}

/// Decodes one frame from exactly `bytes`, refusing payloads above `max_payload`.
pub fn decode(bytes: &[u8], max_payload: usize) -> Result<Frame> {
    if bytes.len() < HEADER_LEN {
        return Err(WireError::Truncated(format!(
            "{} bytes, a header needs {HEADER_LEN}",
            bytes.len()
        )));
    }
    if &bytes[..4] != MAGIC {
        return Err(WireError::Malformed("wrong magic".into()));
    }
    if bytes[4] != VERSION {
        return Err(WireError::Version { found: bytes[4] });
    }
    let kind = Kind::from_byte(bytes[5])
        .ok_or_else(|| WireError::Malformed(format!("unknown kind {}", bytes[5])))?;
    if bytes[6] != 0 || bytes[7] != 0 {
        return Err(WireError::Malformed("reserved bytes are not zero".into()));
    }
    let mut s = [0u8; 16];
    s.copy_from_slice(&bytes[8..24]);
    let session = u128::from_le_bytes(s);
    let step = u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]);
    let len = u32::from_le_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]) as usize;
    if len > max_payload {
        return Err(WireError::TooLarge {
            len,
            limit: max_payload,
        });
    }
    let body = &bytes[HEADER_LEN..];
    if body.len() < len {
        return Err(WireError::Truncated(format!(
            "header announces {len} payload bytes, {} present",
            body.len()
        )));
    }
    if body.len() > len {
        return Err(WireError::Malformed(format!(
            "{} bytes after the payload",
            body.len() - len
        )));
    }
    Ok(Frame {
        kind,
        session,
        step,
        payload: body.to_vec(),
    })
}

/// Which party a connection claims to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// First server.
    P0,
    /// Second server.
    P1,
    /// The helper.
    Helper,
    /// A client.
    Client,
}

/// Opens a client connection: the server answers with the model's [`Manifest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's role ([`Role::Client`]).
    pub role: Role,
    /// The model the connection is for; empty for the server's default model.
    pub model_id: String,
    /// The client's API key, when the deployment requires one (`sotto serve --client-keys`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
}

/// One message of the pre-shared-key handshake between parties (see `sotto-net`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartyAuth {
    /// The sender's role.
    pub role: Role,
    /// The sender's fresh random nonce, hex.
    pub nonce: String,
    /// HMAC-SHA256 proof of the key over both roles and nonces, hex (absent in the first
    /// message).
    #[serde(default)]
    pub proof: Option<String>,
}

/// Coordination between parties, sent as JSON in [`Kind::Control`] frames; the frame's
/// session field names the session it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    /// P0 to P1 and the helper: load `model` (the model files' set id must be `set_id`) in
    /// this session.
    Load {
        /// Model id.
        model: String,
        /// The model files' set id, hex.
        set_id: String,
    },
    /// P0 to the helper: deal the material of `count` predictions of `batch` inputs.
    Deal {
        /// Model id.
        model: String,
        /// Inputs per prediction.
        batch: usize,
        /// How many sessions.
        count: usize,
        /// The load session the material must match, hex.
        load: String,
        /// Stream each session with this window (bytes of material sent ahead of what the
        /// servers have taken) instead of dealing it whole; announced when it starts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        window: Option<u64>,
    },
    /// Helper to P0 and P1: all material of this session has been sent (streamed: the
    /// session has started and its material follows as the servers take it).
    Ready {
        /// Model id.
        model: String,
        /// Inputs per prediction.
        batch: usize,
        /// The load session whose weight masks the material uses, hex.
        load: String,
    },
    /// Any party to another: this session failed here; drop it.
    Abort {
        /// Why, for the logs and the client.
        reason: String,
    },
    /// Liveness probe on a party link (answered with [`Control::Pong`] by the link itself).
    Ping {
        /// A counter echoed back.
        n: u64,
    },
    /// The answer to a [`Control::Ping`].
    Pong {
        /// The ping's counter.
        n: u64,
    },
}

/// What a client needs to know about a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Model id.
    pub model_id: String,
    /// Input shape without the batch.
    pub input_shape: Vec<usize>,
    /// Fractional bits of the input encoding.
    pub frac_bits: u32,
    /// Elements per output example.
    pub output_len: usize,
    /// Fractional bits of the output.
    pub out_frac: u32,
    /// True when the client applies a softmax to the logits.
    pub softmax_at_client: bool,
    /// Largest input magnitude the model's bit budget allows.
    pub input_bound: f64,
    /// The role of the server that sent this manifest ([`Role::P0`] or [`Role::P1`]). A
    /// client refuses a P0 that says P1, a P1 that says P0, or one server for both, before
    /// any share or seed leaves it.
    pub role: Role,
    /// The deployment's id: the set id of the model files (`sotto share-model`), the same at
    /// P0 and P1 of one deployment and different across deployments.
    pub deployment: String,
    /// The largest batch one request may carry (beyond it the server answers `too_large`).
    pub max_batch: usize,
    /// When set (`k`, private-weights deployments), the servers enforce the input's range:
    /// the client shares each input's `k`-bit code `(x + 2^(k−1)) mod 2^k` modulo `2^k`, with
    /// its wrap bit XOR-shared, and sends P0 an [`Kind::InputBits`] frame of `⌈(k+1)/8⌉` bytes
    /// per element (P1 still gets the seed); an [`Kind::InputShare`] is refused. Absent:
    /// additive shares in `InputShare` frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_bits: Option<u32>,
}

impl Manifest {
    /// Whether `other` describes the same model of the same deployment (everything but the
    /// sender's role agrees).
    pub fn same_model(&self, other: &Manifest) -> bool {
        let mut o = other.clone();
        o.role = self.role;
        *self == o
    }

    /// The check a client makes before any share or seed leaves it: `p0` came from the
    /// server it dialed as P0 and says so, `p1` likewise, and both describe one model of one
    /// deployment. The error says what is wrong in words an operator can act on.
    pub fn check_pair(p0: &Manifest, p1: &Manifest) -> Result<()> {
        match (p0.role, p1.role) {
            (Role::P0, Role::P1) => {}
            (Role::P1, Role::P0) => {
                return Err(WireError::NotAPair("the P0 and P1 URLs are swapped: the server given as P0 is P1 and the one given as P1 is P0".into()))
            }
            (Role::P0, Role::P0) | (Role::P1, Role::P1) => {
                return Err(WireError::NotAPair(format!(
                    "both URLs reach a {:?}: P0 and P1 must be the two different servers of one deployment (one server would see both the share and the seed, that is the input)",
                    p0.role
                )))
            }
            (a, b) => {
                return Err(WireError::NotAPair(format!(
                    "the server given as P0 says it is {a:?} and the one given as P1 says it is {b:?}"
                )))
            }
        }
        if p0.deployment != p1.deployment {
            return Err(WireError::NotAPair(format!(
                "P0 and P1 are not one deployment (model files of set {} at P0, {} at P1)",
                p0.deployment, p1.deployment
            )));
        }
        if !p0.same_model(p1) {
            return Err(WireError::NotAPair(format!(
                "P0 and P1 describe model {:?} differently ({p0:?} vs {p1:?})",
                p0.model_id
            )));
        }
        Ok(())
    }
}

/// The codes of [`ErrorPayload`]s: one list for the servers, both clients and the npm
/// package's `index.d.ts` (a test checks the two agree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The first message was not a valid client hello.
    BadHello,
    /// The hello named a model the server does not serve.
    UnknownModel,
    /// A frame that is malformed, or of a kind this server does not take from a client.
    BadFrame,
    /// A WebSocket message that is not binary.
    BadMessage,
    /// An input share or seed of the wrong size, or a batch over the limit.
    BadShape,
    /// A message, or a request's material, over the server's limits.
    TooLarge,
    /// The server, or this connection, is at capacity now: retry later.
    Busy,
    /// The connection sent nothing for too long and is closed.
    Idle,
    /// Too many bad requests on one connection: it is closed.
    TooManyErrors,
    /// The parties are not ready (a party link is down, or models are loading).
    NotReady,
    /// No helper material could be had for the request.
    NoMaterial,
    /// A seed for a session P1 does not know (never dealt, used, or expired).
    UnknownSession,
    /// The session failed while running (a party died, froze or aborted it).
    SessionFailed,
    /// A party failed authentication, or a client's API key is missing or unknown.
    Unauthenticated,
    /// The client's API key is over its request rate: retry after the time the message
    /// states.
    RateLimited,
    /// A code this version does not know (from a newer server).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code a server sends (not [`ErrorCode::Unknown`]).
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::BadHello,
        ErrorCode::UnknownModel,
        ErrorCode::BadFrame,
        ErrorCode::BadMessage,
        ErrorCode::BadShape,
        ErrorCode::TooLarge,
        ErrorCode::Busy,
        ErrorCode::Idle,
        ErrorCode::TooManyErrors,
        ErrorCode::NotReady,
        ErrorCode::NoMaterial,
        ErrorCode::UnknownSession,
        ErrorCode::SessionFailed,
        ErrorCode::Unauthenticated,
        ErrorCode::RateLimited,
    ];

    /// The code as it travels (`bad_shape`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadHello => "bad_hello",
            ErrorCode::UnknownModel => "unknown_model",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::BadShape => "bad_shape",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Busy => "busy",
            ErrorCode::Idle => "idle",
            ErrorCode::TooManyErrors => "too_many_errors",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::NoMaterial => "no_material",
            ErrorCode::UnknownSession => "unknown_session",
            ErrorCode::SessionFailed => "session_failed",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// The code of a travelling string ([`ErrorCode::Unknown`] for one this version does
    /// not know).
    pub fn parse(s: &str) -> ErrorCode {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .unwrap_or(ErrorCode::Unknown)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error sent to the peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorPayload {
    /// A short machine-readable code, one of [`ErrorCode`] (kept as text on the wire so that
    /// an older client still reads a newer server's codes).
    pub code: String,
    /// A message for people.
    pub message: String,
}

impl ErrorPayload {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorPayload {
        ErrorPayload {
            code: code.as_str().to_string(),
            message: message.into(),
        }
    }

    /// The code, typed.
    pub fn error_code(&self) -> ErrorCode {
        ErrorCode::parse(&self.code)
    }
}

//! The one error type of `sotto-core`.

use thiserror::Error;

/// Everything that can go wrong inside the engine.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// The operating system's random number generator failed. There is no fallback.
    #[error("the OS random number generator failed: {0}")]
    Rng(String),
    /// A real number cannot be encoded in the fixed-point format.
    #[error("cannot encode {value} with {frac_bits} fractional bits: {reason}")]
    Encode {
        /// The value that was refused (as text, so NaN and infinities print).
        value: String,
        /// Fractional bits of the format.
        frac_bits: u32,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Two tensors, or a tensor and its declared shape, do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Bytes from outside (a peer, a file, a client) could not be decoded.
    #[error("malformed {what}: {reason}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A parameter is outside what a protocol supports.
    #[error("invalid parameter: {0}")]
    Param(String),
    /// The transport failed: a peer went away, nothing came in time, or the session was
    /// aborted.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A message arrived that the protocol did not expect at this point.
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// How a [`crate::transport::Transport`] failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// Nothing arrived within the transport's timeout.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The peer (or the client) went away: its connection closed or was declared dead.
    #[error("peer gone: {0}")]
    PeerGone(String),
    /// The session was ended (finished, or aborted by a party) while this was waiting.
    #[error("session ended: {0}")]
    Aborted(String),
}

/// Result alias of `sotto-core`.
pub type Result<T> = std::result::Result<T, CoreError>;

impl CoreError {
    pub(crate) fn decode(what: &'static str, reason: impl Into<String>) -> Self {
        CoreError::Decode {
            what,
            reason: reason.into(),
        }
    }
}

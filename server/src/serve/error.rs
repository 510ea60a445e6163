//! The one error type of `sotto serve`'s party code.

use thiserror::Error;

/// What can go wrong while a party links, loads, deals or serves.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The engine (a protocol, the transport, randomness).
    #[error(transparent)]
    Core(#[from] sotto_core::CoreError),
    /// A party link (connecting, TLS, authentication).
    #[error(transparent)]
    Net(#[from] sotto_net::NetError),
    /// A model (its plan, its weights, its files).
    #[error(transparent)]
    Model(#[from] sotto_model::ModelError),
    /// A frame.
    #[error(transparent)]
    Wire(#[from] sotto_wire::WireError),
    /// Anything else, said in words.
    #[error("{0}")]
    Other(String),
}

impl From<String> for ServeError {
    fn from(s: String) -> Self {
        ServeError::Other(s)
    }
}

impl From<&str> for ServeError {
    fn from(s: &str) -> Self {
        ServeError::Other(s.to_string())
    }
}

/// Result alias of the party code.
pub type Result<T> = std::result::Result<T, ServeError>;

//! sotto-core: the secret-sharing engine (work in progress).
#![deny(missing_docs)]

pub mod dcf;
pub mod error;
pub mod fixed;
pub mod linear;
pub mod local;
pub mod plain;
pub mod prg;
pub mod protocols;
pub mod ring;
pub mod session;
pub mod share;
pub mod tensor;
pub mod transport;

pub use error::{CoreError, Result};

//! sotto-core: the secret-sharing engine (work in progress).
#![deny(missing_docs)]

pub mod dcf;
pub mod error;
pub mod fixed;
pub mod prg;
pub mod ring;
pub mod share;
pub mod tensor;
pub mod transport;

pub use error::{CoreError, Result};

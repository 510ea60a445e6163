//! # sotto-core
//!
//! The secret-sharing engine of sotto: everything a private prediction needs except the
//! network and the model format. It has no tokio, axum or wasm dependency and builds for
//! `wasm32-unknown-unknown`, where the browser client reuses its encoding and sharing.
//!
//! ## Parties and threat model
//!
//! | party | holds | sees |
//! |---|---|---|
//! | client | its input `x`; adds the two output shares | only its own output |
//! | P0, P1 | an additive share of `x`, of every intermediate value and (private-weights mode) of the weights | uniformly random shares and masked values |
//! | helper | seeds; deals input-independent correlated randomness | nothing that depends on `x` or on the weights |
//!
//! The parties are **semi-honest and non-colluding**: each follows the protocol and no two pool
//! their views. Then any single one of P0, P1 and the helper learns nothing about `x`, the
//! output or private weights: everything a server receives is a share or a value masked by
//! fresh uniform randomness it does not know (the `tests/views.rs` test checks this
//! statistically). **If two parties collude the guarantee is gone**: P0 and P1 together
//! reconstruct everything; the helper with one server removes that server's masks. A
//! malicious *client* can send anything: every decoder here returns an error on malformed,
//! truncated or oversized input and never panics.
//!
//! ## Numbers
//!
//! Values live in the ring Z_2^64 ([`ring`], wrapping `u64`), as signed fixed point with `f`
//! fractional bits ([`fixed`], 16 by default). Encoding NaN, infinities or values whose
//! encoding reaches 2^62 is an error. Comparisons and truncation require |v| < 2^62 for the
//! encoded value; proving that for a whole model is the bit budget of `sotto-model`.
//!
//! ## Randomness
//!
//! Only from the OS ([`prg::Seed::random`], `getrandom`) or ChaCha20 streams seeded from it
//! ([`prg::Prg`]); no fallback. Every session draws fresh seeds. Shares, seeds and tensors
//! print without their contents.
//!
//! ## Protocols
//!
//! [`session`] explains how the helper's material reaches the servers (mostly as seeds).
//! [`protocols`] lists every protocol with its online rounds, bytes and helper material;
//! [`plain`] holds their plaintext twins. Comparisons use a distributed comparison function
//! ([`dcf`], Boyle et al., Eurocrypt 2021): one opening of `x + r` and a local key evaluation,
//! so ReLU costs one round and 64 bits per server per element, with the truncation after a
//! product fused into the same round.
//!
//! ## Example: a private ReLU in one process
//!
//! ```
//! use sotto_core::local::{no_client, run_local, LocalTransport};
//! use sotto_core::protocols::{deal_relu, relu};
//! use sotto_core::session::{Dealer, Server};
//! use sotto_core::{fixed::FixedPoint, prg::Prg, share};
//!
//! let fp = FixedPoint::default();
//! let x = fp.encode_slice(&[-1.5, 0.0, 2.25]).unwrap();
//! let (x0, x1) = share::share(&x, &mut Prg::from_os().unwrap());
//! let run = run_local(
//!     |mut d: Dealer<LocalTransport>| async move { deal_relu(&mut d, 3, 0, 64).await },
//!     |mut s: Server<LocalTransport>| {
//!         let mine = if s.is_p0() { x0.clone() } else { x1.clone() };
//!         async move { relu(&mut s, &mine, 0, 64).await }
//!     },
//!     no_client,
//!     false,
//! )
//! .unwrap();
//! let y = share::reveal(&run.p0, &run.p1).unwrap();
//! assert_eq!(fp.decode_slice(&y), vec![0.0, 0.0, 2.25]);
//! ```
#![deny(missing_docs)]

pub mod dcf;
pub mod dcf_bit;
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
mod simd;
pub mod tensor;
pub mod transport;

pub use error::{CoreError, Result, TransportError};

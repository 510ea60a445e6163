//! # sotto-client
//!
//! The client of a private prediction (DESIGN §2). The input never leaves the client in
//! clear: [`share_input`] encodes it in the model's fixed-point format and splits it with a
//! fresh OS seed `s` into `x − PRG(s)` for P0 and `s` alone for P1 (with private weights,
//! shares of the input's `k`-bit code modulo `2^k` and a XOR-shared wrap bit, so that the
//! servers enforce the input's range without a comparison); [`reconstruct`] adds the
//! two output shares and decodes logits, probabilities and labels. Neither server sees the
//! input or the output.
//!
//! With the default `native` feature, [`Client`] does the whole exchange over WebSockets:
//!
//! ```no_run
//! # async fn run() -> Result<(), sotto_client::ClientError> {
//! use sotto_client::{Client, ClientOptions};
//! let client = Client::connect("ws://127.0.0.1:8101", "ws://127.0.0.1:8102", ClientOptions::default()).await?;
//! let image = vec![0.0f32; client.manifest().input_shape.iter().product()];
//! let p = client.predict(&image, 1).await?;
//! println!("label {} logits {:?}", p.labels[0], p.logits);
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! Both clients drive one protocol core without IO, [`session::ClientSession`] (hello and
//! the role check, message order, routing, deadlines, reconstruction).
//!
//! With the `wasm` feature on `wasm32`, `WasmClient` does the same exchange from a browser or
//! Node through the JS `WebSocket`, exported with wasm-bindgen; `scripts/build-web.sh` builds
//! it and the `web/` npm package (`sotto-client`) that wraps it.
#![deny(missing_docs)]
// The workspace denies `unsafe`; only sotto-core allows it, for one call (`simd`).
#![forbid(unsafe_code)]

pub mod session;

#[cfg(feature = "native")]
mod native;
#[cfg(feature = "native")]
pub use native::{Client, ClientOptions};
#[cfg(all(feature = "wasm", target_arch = "wasm32"))]
mod wasm;
#[cfg(all(feature = "wasm", target_arch = "wasm32"))]
pub use wasm::WasmClient;

use sotto_core::fixed::{decode_with, FixedPoint};
use sotto_wire::Manifest;
use thiserror::Error;

pub use sotto_wire::Manifest as ModelManifest;

/// The one error type of `sotto-client`.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ClientError {
    /// The input does not fit the model.
    #[error("bad input: {0}")]
    Input(String),
    /// A server refused the request or failed it.
    #[error("{server} refused: {message} ({code})")]
    Server {
        /// "P0" or "P1".
        server: String,
        /// The server's error code.
        code: sotto_wire::ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The connection failed, closed or timed out.
    #[error("{0}")]
    Connection(String),
    /// A reply that does not follow the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The two servers are not P0 and P1 of one deployment (swapped, one server for both,
    /// two deployments, or two descriptions of the model): refused before any share or seed
    /// was sent.
    #[error("{0}")]
    BadDeployment(String),
    /// The caller gave up on the request (an abort).
    #[error("the request was aborted")]
    Aborted,
}

impl ClientError {
    /// The kind of error as the JavaScript package names it: `input`, `server`,
    /// `connection`, `protocol`, `bad_deployment` or `aborted`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientError::Input(_) => "input",
            ClientError::Server { .. } => "server",
            ClientError::Connection(_) => "connection",
            ClientError::Protocol(_) => "protocol",
            ClientError::BadDeployment(_) => "bad_deployment",
            ClientError::Aborted => "aborted",
        }
    }
}

/// Result alias of `sotto-client`.
pub type Result<T> = std::result::Result<T, ClientError>;

/// The result of one prediction of `batch` inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The model's outputs, `batch × output_len`, batch first (logits, or probabilities when
    /// the model ends with a sigmoid).
    pub logits: Vec<f64>,
    /// Softmax of each example's logits when the model ended with a softmax (applied here,
    /// on the client); otherwise `None`.
    pub probabilities: Option<Vec<f64>>,
    /// The index of each example's largest output.
    pub labels: Vec<usize>,
    /// Outputs per example.
    pub output_len: usize,
}

/// What a client sends for one request: P0's share (as the frame kind the deployment takes)
/// and the seed for P1.
pub struct Outgoing {
    /// [`sotto_wire::Kind::InputBits`] when the manifest sets `input_bits`, else
    /// [`sotto_wire::Kind::InputShare`].
    pub kind: sotto_wire::Kind,
    /// P0's payload: shares of the `k`-bit input codes with their wrap bits (`⌈(k+1)/8⌉`
    /// bytes each), or additive shares `x − PRG(s)` (8 bytes each).
    pub to_p0: Vec<u8>,
    /// The 32-byte seed `s` for P1.
    pub to_p1: [u8; 32],
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Outgoing({:?}, {} bytes)", self.kind, self.to_p0.len())
    }
}

/// Checks and encodes `x` (`batch` examples, batch first) for the model of `m`, then shares
/// it with a fresh seed from the OS, as the deployment takes it (`m.input_bits`).
pub fn share_input(m: &Manifest, x: &[f32], batch: usize) -> Result<Outgoing> {
    let per: usize = m.input_shape.iter().product();
    if batch == 0 || Some(x.len()) != per.checked_mul(batch) {
        return Err(ClientError::Input(format!(
            "{} values for {batch} inputs of model {} (each {:?} = {per} values)",
            x.len(),
            m.model_id,
            m.input_shape
        )));
    }
    if let Some((i, v)) = x
        .iter()
        .enumerate()
        .find(|(_, v)| !v.is_finite() || f64::from(v.abs()) > m.input_bound)
    {
        return Err(ClientError::Input(format!(
            "value {v} at index {i} is outside the model's input bound ±{} (the bound keeps the fixed-point computation exact; scale the input)",
            m.input_bound
        )));
    }
    let fp = FixedPoint::new(m.frac_bits).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let enc = fp
        .encode_f32(x)
        .map_err(|e| ClientError::Input(e.to_string()))?;
    let os = |e: sotto_core::CoreError| ClientError::Connection(e.to_string());
    Ok(match m.input_bits {
        Some(k) => {
            if sotto_core::protocols::check_lift(k).is_err() {
                return Err(ClientError::Protocol(format!(
                    "the manifest's input range of {k} bits is not 2 to {}",
                    sotto_core::protocols::MAX_LIFT_BITS
                )));
            }
            let (to_p0, seed) = sotto_core::share::share_input_bits(&enc, k).map_err(os)?;
            Outgoing {
                kind: sotto_wire::Kind::InputBits,
                to_p0,
                to_p1: seed.0,
            }
        }
        None => {
            let sh = sotto_core::share::share_input(&enc).map_err(os)?;
            Outgoing {
                kind: sotto_wire::Kind::InputShare,
                to_p0: sotto_core::ring::to_le_bytes(&sh.to_p0),
                to_p1: sh.to_p1.0,
            }
        }
    })
}

/// Adds the servers' output shares (`batch × output_len` ring elements each) and decodes them.
pub fn reconstruct(m: &Manifest, a: &[u64], b: &[u64], batch: usize) -> Result<Prediction> {
    let n = batch.saturating_mul(m.output_len);
    if a.len() != n || b.len() != n {
        return Err(ClientError::Protocol(format!(
            "output shares of {} and {} elements, expected {n}",
            a.len(),
            b.len()
        )));
    }
    let logits: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| decode_with(x.wrapping_add(*y), m.out_frac))
        .collect();
    let cols = m.output_len.max(1);
    let labels = logits
        .chunks(cols)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, v)| {
                    if *v > bv {
                        (i, *v)
                    } else {
                        (bi, bv)
                    }
                })
                .0
        })
        .collect();
    let probabilities = m.softmax_at_client.then(|| {
        logits
            .chunks(cols)
            .flat_map(|row| {
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = row.iter().map(|v| (v - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                e.into_iter().map(move |v| v / sum)
            })
            .collect()
    });
    Ok(Prediction {
        logits,
        probabilities,
        labels,
        output_len: m.output_len,
    })
}

/// Decodes `n` little-endian ring elements.
pub fn elements(bytes: &[u8], n: usize) -> Result<Vec<u64>> {
    sotto_core::ring::from_le_bytes(bytes, n).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// The [`ClientError`] for an `Error` frame from server `name` ("P0" or "P1").
pub(crate) fn server_error(name: &str, f: &sotto_wire::Frame) -> ClientError {
    match f.parse_json::<sotto_wire::ErrorPayload>(sotto_wire::Kind::Error) {
        Ok(e) => ClientError::Server {
            server: name.into(),
            code: e.error_code(),
            message: e.message,
        },
        Err(e) => ClientError::Protocol(format!("{name} sent an unreadable error: {e}")),
    }
}

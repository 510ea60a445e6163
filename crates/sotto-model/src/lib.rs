//! # sotto-model
//!
//! Model import for sotto: ONNX files (as tf2onnx exports Keras and TensorFlow models) become
//! a graph ([`graph::Graph`]: values and nodes, with a float evaluator and folding passes),
//! which is lowered to the chain of layers ([`ir::Model`]) that the private plan runs.
//! Unsupported operators are refused with the operator's name, the node and the list of
//! supported operators; a graph that imports but that the private plan cannot run yet is
//! refused naming the node; files that are not ONNX, or are truncated, are refused as such.
//!
//! ```
//! let err = sotto_model::import(b"definitely not onnx").unwrap_err();
//! assert!(err.to_string().contains("not an ONNX model"));
//! ```
#![deny(missing_docs)]
// The workspace denies `unsafe`; only sotto-core allows it, for one call (`simd`).
#![forbid(unsafe_code)]

pub mod error;
pub mod files;
pub mod graph;
pub mod import;
pub mod interp;
pub mod ir;
pub mod onnx;
pub mod plan;
pub mod private;

pub use error::{ModelError, Result};
pub use graph::Graph;
pub use import::{import, import_graph, supported_ops};
pub use ir::{Dim, Layer, Model};
pub use plan::{Calibration, Plan};

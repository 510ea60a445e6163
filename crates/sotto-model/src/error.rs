//! The one error type of `sotto-model`.

use thiserror::Error;

/// What can go wrong when importing or evaluating a model.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// The bytes are not an ONNX model (or are truncated).
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    /// The model uses an operator sotto does not support.
    #[error("unsupported operator {op} at node {node:?} (node {index} of the graph); supported operators: {supported}")]
    Unsupported {
        /// The operator type.
        op: String,
        /// The node's name.
        node: String,
        /// The node's position in the graph.
        index: usize,
        /// The supported operators, comma-separated.
        supported: String,
    },
    /// A node is valid ONNX but sotto cannot run it this way (an attribute, a shape, a layout).
    #[error("node {node:?} ({op}): {reason}")]
    Node {
        /// The node's name.
        node: String,
        /// Its operator.
        op: String,
        /// What is wrong.
        reason: String,
    },
    /// The graph as a whole does not fit (inputs, outputs, structure).
    #[error("model graph: {0}")]
    Graph(String),
    /// An input does not fit the model.
    #[error("input shape: {0}")]
    Input(String),
    /// A per-party model file (made by `sotto share-model`) cannot be used: not such a file,
    /// corrupted, another party's, or of another format version.
    #[error("not a usable sotto model file: {0}")]
    File(String),
}

/// Result alias of `sotto-model`.
pub type Result<T> = std::result::Result<T, ModelError>;

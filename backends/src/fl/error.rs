//! The error type of the federated-learning core.

use thiserror::Error;

/// Everything that can go wrong in `fl`: bad inputs, bad files, tensor math.
#[derive(Debug, Error)]
pub enum FlError {
    /// Two parameter sets (or a set and a model layout) do not have the same tensors.
    #[error("parameter layout mismatch: {0}")]
    LayoutMismatch(String),
    /// A tensor's data length does not match its shape.
    #[error("tensor {name}: shape {shape:?} needs {expected} values, got {actual}")]
    BadTensor {
        /// Tensor name.
        name: String,
        /// Declared shape.
        shape: Vec<usize>,
        /// Number of values the shape needs.
        expected: usize,
        /// Number of values supplied.
        actual: usize,
    },
    /// A safetensors file could not be read or written.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// Raw little-endian f32 bytes of the wrong size.
    #[error("raw parameter file has {actual} bytes, the layout needs {expected}")]
    RawSize {
        /// Bytes the layout needs.
        expected: usize,
        /// Bytes supplied.
        actual: usize,
    },
    /// An error from candle while building, running or training a model.
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// File-system or decompression failure, with the path involved.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A data file whose content is not what the loader expects.
    #[error("{path}: bad data format: {reason}")]
    DataFormat {
        /// The file involved.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// A partitions JSON file that cannot be parsed or is inconsistent.
    #[error("partitions: {0}")]
    Partitions(String),
    /// A configuration value that makes no sense (empty input, bad fraction...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

/// Result alias for the `fl` module.
pub type Result<T> = std::result::Result<T, FlError>;

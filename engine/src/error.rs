//! The engine's error type: every failure names what went wrong and, where it can, what to do.

use std::path::PathBuf;

/// Result alias used throughout the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Everything that can go wrong inside the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A tensor operation failed (shape mismatch, device error, …).
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A model file is malformed or of an unsupported kind.
    #[error("model file {path}: {msg}")]
    BadModel {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// The tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Obtaining the default model failed.
    #[error("fetching the default model failed: {0}")]
    Fetch(String),
    /// The request is invalid (bad argument, unknown hook point, …).
    #[error("{0}")]
    Invalid(String),
    /// The job was cancelled by the user.
    #[error("cancelled")]
    Cancelled,
    /// No model is loaded yet.
    #[error("no model is loaded: load or fetch a model first")]
    NoModel,
}

impl EngineError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A malformed-model error for `path`.
    pub fn bad_model(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::BadModel {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

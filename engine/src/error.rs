//! The engine's error type: every failure names what went wrong and, where it can, what to do.

use std::path::PathBuf;

use neoscope_api::{ApiError, ErrorKind};

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
    /// A file the user gave (an artifact, a dataset, a word list) is malformed or does not fit.
    #[error("{path}: {msg}")]
    BadFile {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it (field, line, tensor).
        msg: String,
    },
    /// The request is invalid (bad argument, unknown hook point, …).
    #[error("{0}")]
    Invalid(String),
    /// The job was cancelled by the user.
    #[error("cancelled")]
    Cancelled,
    /// No model is loaded yet.
    #[error("no model is loaded: load or fetch a model first")]
    NoModel,
    /// A model asks for math this engine does not implement (refused by name, never run).
    #[error("{path}: unsupported model: {msg}")]
    Unsupported {
        /// The file or folder involved.
        path: PathBuf,
        /// What is not supported.
        msg: String,
    },
    /// Tensors or vectors of the wrong shape were given.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// An error that already is protocol data (from the protocol crate's parsers, or a remote
    /// engine).
    #[error("{0}")]
    Api(#[from] ApiError),
}

impl From<&EngineError> for ApiError {
    fn from(e: &EngineError) -> Self {
        let kind = match e {
            EngineError::Api(a) => return a.clone(),
            EngineError::Candle(_) | EngineError::Shape(_) => ErrorKind::Shape,
            EngineError::Io { .. } => ErrorKind::Io,
            EngineError::BadModel { .. } | EngineError::Unsupported { .. } => {
                ErrorKind::UnsupportedModel
            }
            EngineError::Tokenizer(_) => ErrorKind::Tokenizer,
            EngineError::Fetch(_) => ErrorKind::Fetch,
            EngineError::Invalid(_) | EngineError::BadFile { .. } => ErrorKind::BadInput,
            EngineError::Cancelled => ErrorKind::Cancelled,
            EngineError::NoModel => ErrorKind::NoModel,
        };
        ApiError::new(kind, without_backtrace(&e.to_string()))
    }
}

/// The message without the backtrace candle appends to its errors when `RUST_BACKTRACE` is set
/// (its frames start with `   0: `): users get the message, not the library's stack.
fn without_backtrace(msg: &str) -> String {
    msg.split_once("\n   0: ")
        .map_or(msg, |(m, _)| m)
        .trim_end()
        .to_owned()
}

impl EngineError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A malformed or mismatched user file.
    pub fn bad_file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::BadFile {
            path: path.into(),
            msg: msg.into(),
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

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        Self::from(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_backtraces_stay_out_of_messages() {
        let e = EngineError::from(candle_core::Error::Msg("bad magic".into()));
        let with = format!("{e}\n   0: candle_core::error::Error::bt\n   1: main");
        assert_eq!(without_backtrace(&with), "tensor error: bad magic");
        assert_eq!(ApiError::from(&e).message, "tensor error: bad magic");
    }
}

//! Errors as data: what crosses the engine boundary when a job fails, and what the protocol
//! crate's own parsers return.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The class of a failure, for front ends that react differently (e.g. no error banner on a
/// cancel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// A file or value given by the user is malformed (the message names file, line, field).
    BadInput,
    /// Reading or writing a file failed.
    Io,
    /// A model file is malformed, or asks for math the engine does not implement.
    UnsupportedModel,
    /// Tensor shapes or a tensor operation did not fit.
    Shape,
    /// The tokenizer could not be built or used.
    Tokenizer,
    /// Obtaining the default model failed.
    Fetch,
    /// No model is loaded.
    NoModel,
    /// The user cancelled the job.
    Cancelled,
    /// The engine itself failed (a panic inside a job, a lost engine).
    Internal,
    /// A remote engine's connection or frame was bad.
    Protocol,
}

/// A failure, as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// Its class.
    pub kind: ErrorKind,
    /// What went wrong, for the user (names the file, line or field where it can).
    pub message: String,
}

impl ApiError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// Bad user input.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadInput, message)
    }

    /// An I/O failure on `path`.
    pub fn io(path: &Path, e: &std::io::Error) -> Self {
        Self::new(ErrorKind::Io, format!("{}: {e}", path.display()))
    }

    /// True when the user cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.kind == ErrorKind::Cancelled
    }
}

/// Result alias of the protocol crate.
pub type ApiResult<T> = Result<T, ApiError>;

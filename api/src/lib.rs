//! Neoscope's protocol crate: every type that crosses the engine boundary, as plain serde data.
//! The engine, the desktop app, the CLI and a remote client (`neoscope serve`) all speak it; it
//! depends on no tensor or GUI library. Each analysis has one module holding its command
//! sub-enum, its result type and the plain types they carry.

pub mod align;
pub mod bench;
pub mod dataset;
pub mod embed;
pub mod error;
pub mod files;
pub mod hooks;
pub mod inject;
pub mod lens;
pub mod lora;
pub mod mfa;
pub mod model;
pub mod protocol;
pub mod scratch;
pub mod steer;
pub mod text;
pub mod wire;
pub mod words;

pub use error::{ApiError, ApiResult, ErrorKind};
pub use protocol::{Command, Event, JobResult, Reply, RequestId};

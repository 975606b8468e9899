//! Neoscope's engine: loads language models, runs a hooked transformer on candle, and provides
//! the analyses the app and the CLI show. No GUI dependency; front ends talk to it through
//! the protocol crate `neoscope_api`, handled by the engine thread in [`worker`] (in process,
//! or out of process through [`serve`]).

pub mod artifact;
pub mod bench;
pub mod config;
pub mod embed;
pub mod error;
pub mod fetch;
pub mod hooks;
pub mod infer;
pub mod inject;
pub mod lens;
pub mod mfa;
pub mod model;
pub mod sampling;
pub mod scratch;
pub mod serve;
pub mod stats;
pub mod steer;
pub mod tiny;
pub mod tokenizer;
pub mod tuned;
pub mod worker;

pub use error::{EngineError, Result};
pub mod words;

//! Training datasets of new words: defined in the protocol crate (plain data and parsing).

pub use neoscope_api::dataset::*;

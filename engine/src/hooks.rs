//! Hook points, captures and interventions: defined in the protocol crate.

pub use neoscope_api::hooks::*;

//! Shared helpers for end-to-end tests: the real default model, fetched once into the model
//! cache (the same code path as `neoscope fetch`) and loaded once per test binary.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use neoscope_engine::fetch::{ensure_default_model, model_cache_dir, python_from_env};
use neoscope_engine::model::{LoadedModel, load_model};

/// Path of the default model, fetching it if needed.
pub fn default_model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        ensure_default_model(&model_cache_dir(), &python_from_env(), &mut |_| {}, &|| {
            false
        })
        .unwrap_or_else(|e| panic!("cannot obtain the default model: {e}"))
    })
    .clone()
}

/// The default model on the CPU, loaded once.
pub fn model() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        load_model(&default_model_path(), &Device::Cpu)
            .unwrap_or_else(|e| panic!("cannot load the default model: {e}"))
    })
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

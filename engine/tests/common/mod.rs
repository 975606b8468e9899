//! Helpers shared by the family tests: the fixtures `tests/fixtures/mkmodels.py` wrote and
//! comparisons with tolerances.
#![allow(dead_code, reason = "each test file uses a part")]
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

/// Logits and residuals here span about ±20 (Gemma's residual stream ±170, its embedding being
/// scaled by √d); f32 summation-order differences are ~1e-6 of that.
pub const TOL: f32 = 1e-4;

/// The tolerance for comparing with `want`: `TOL` on the ±20 scale, proportionally more on a
/// larger one.
pub fn tol(want: &Tensor) -> f32 {
    tol_at(TOL, want)
}

/// `base` on the ±20 scale, proportionally more when `want` spans more.
pub fn tol_at(base: f32, want: &Tensor) -> f32 {
    base * (max_abs(want) / 20.0).max(1.0)
}

/// Every family fixture `tests/fixtures/mkmodels.py` writes.
pub const FAMILIES: [&str; 14] = [
    "llama3",
    "llama_linear_head_dim",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3",
    "phi3",
    "gpt2",
    "gemma2_cpp",
    "gemma3_cpp",
    "qwen2_yarn",
    "llama_dynamic",
];

/// A fixture of `tests/fixtures/models`, under `NEOSCOPE_REPO` when the test binary runs away
/// from its build tree (`scripts/gpu-check.sh run` on a GPU machine without Rust).
pub fn fixture(name: &str) -> PathBuf {
    std::env::var_os("NEOSCOPE_REPO")
        .map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
            PathBuf::from,
        )
        .join("tests/fixtures/models")
        .join(name)
}

pub struct Expected {
    pub prompts: Vec<Vec<u32>>,
    pub tensors: HashMap<String, Tensor>,
}

pub fn expected(name: &str) -> Expected {
    let tensors = candle_core::safetensors::load(
        fixture(&format!("{name}.expected.safetensors")),
        &Device::Cpu,
    )
    .unwrap();
    let prompts = (0..)
        .map_while(|j| tensors.get(&format!("p{j}.ids")))
        .map(|t| {
            t.to_vec1::<i64>()
                .unwrap()
                .into_iter()
                .map(|x| u32::try_from(x).unwrap())
                .collect()
        })
        .collect();
    Expected { prompts, tensors }
}

/// Largest absolute difference (`b` moved to `a`'s device first).
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let b = b.to_device(a.device()).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest absolute value of `t`.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Asserts `got` equals `want` to `rel` of `want`'s largest magnitude (at least 1e-3).
pub fn assert_close(what: &str, got: &Tensor, want: &Tensor, rel: f32) {
    let (diff, scale) = (max_diff(got, want), max_abs(want));
    assert!(
        diff <= rel * scale.max(1e-3),
        "{what}: differs by {diff} (scale {scale})"
    );
}

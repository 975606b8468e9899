//! Our hooked model reproduces candle-transformers' `quantized_llama` on the real default model
//! with every weight dequantized (`CANDLE_DEQUANTIZE_ALL=1`; its default Q4 path quantizes
//! activations and differs by up to ~0.8). `quantized_llama` returns only the last position, so
//! each prompt (and each row of a padded batch) is compared at its last real token.
//!
//! Tolerance: max |Δlogit| < 2e-3 (logits here span about ±30; measured ~1e-4 to 5e-4, from
//! differing summation orders and interleaved vs rotate-half RoPE).
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use candle_core::{Device, IndexOp, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use neoscope_engine::hooks::HookSpec;
use neoscope_engine::model::{Batch, PadSide};

const TOL: f32 = 2e-3;

fn reference_last_logits(rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let path = common::default_model_path();
    let mut f = std::fs::File::open(&path).unwrap();
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let mut m = ModelWeights::from_gguf(ct, &mut f, &Device::Cpu).unwrap();
    rows.iter()
        .map(|ids| {
            // A fresh cache per prompt: index_pos 0 resets the model's KV cache.
            let x = Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            m.forward(&x, 0)
                .unwrap()
                .squeeze(0)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

#[test]
fn logits_match_dequantized_quantized_llama() {
    #[expect(unsafe_code, reason = "set before any thread reads the environment")]
    // SAFETY: this test binary has this single test, and no other thread runs yet.
    unsafe {
        std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    }
    let m = common::model();
    let tok = &m.tokenizer;
    let prompts = [
        "The capital of France is",
        "A pun is a joke that",
        "I used to be a banker, but I lost interest.",
    ];
    let mut rows: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p).unwrap()).collect();
    rows.push(tok.encode_prompt("What is a pun?", true).unwrap());
    let reference = reference_last_logits(&rows);

    // One prompt at a time.
    for (ids, want) in rows.iter().zip(&reference) {
        let b = Batch::new(std::slice::from_ref(ids), PadSide::Right, &Device::Cpu).unwrap();
        let out = m.llama.forward(&b, &HookSpec::default(), None).unwrap();
        let got = out
            .logits
            .i((0, ids.len() - 1))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let d = common::max_abs_diff(&got, want);
        eprintln!(
            "single prompt of {} tokens: max |Δlogit| = {d:e}",
            ids.len()
        );
        assert!(d < TOL, "max |Δlogit| {d} ≥ {TOL}");
    }
    // The same prompts as one padded batch, both padding sides.
    for side in [PadSide::Right, PadSide::Left] {
        let b = Batch::new(&rows, side, &Device::Cpu).unwrap();
        let out = m.llama.forward(&b, &HookSpec::default(), None).unwrap();
        for (r, want) in reference.iter().enumerate() {
            let got = out
                .logits
                .i((r, b.last_index(r)))
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let d = common::max_abs_diff(&got, want);
            eprintln!("padded batch ({side:?}) row {r}: max |Δlogit| = {d:e}");
            assert!(d < TOL, "row {r} ({side:?}): max |Δlogit| {d} ≥ {TOL}");
        }
    }
}

//! Every GGUF architecture against transformers' computation of the same checkpoint:
//! `tests/fixtures/mkgguf.py` writes the tiny Hugging Face fixtures as llama.cpp lays GGUF files
//! out (tensor names, permuted `llama` q/k rows, Gemma's (1 + w) norms, Phi-3's fused projections,
//! GPT-2's transposed Conv1D weights), and the GGUF must reproduce the folder's expected logits and
//! residual stream, and its tokenizer must be the folder's. Also: Phi-3 with Q8_0 matrices,
//! whose fused projections are split as quantized bytes, part by part against the same rows
//! dequantized.

mod common;

use candle_core::{Device, IndexOp};
use common::{TOL, expected, fixture, max_diff, tol};
use neoscope_engine::hooks::{HookPoint, HookSpec};
use neoscope_engine::model::{
    Batch, LoadOptions, PadSide, WeightDType, load_model, load_model_with,
};

/// Fixture name and the architecture its GGUF declares.
const CASES: [(&str, &str); 8] = [
    ("llama_linear_head_dim", "llama"),
    ("qwen2", "qwen2"),
    ("qwen3", "qwen3"),
    ("gemma", "gemma"),
    ("gemma2_cpp", "gemma2"),
    ("gemma3_cpp", "gemma3"),
    ("phi3", "phi3"),
    ("gpt2", "gpt2"),
];

#[test]
fn every_gguf_architecture_matches_transformers() {
    for (name, arch) in CASES {
        let m = load_model(&fixture(&format!("{name}.gguf")), &Device::Cpu).unwrap();
        assert_eq!(m.info.architecture, arch);
        assert_eq!(m.info.format, "gguf");
        let e = expected(name);
        let n = m.llama.cfg.num_hidden_layers;
        let hooks = HookSpec {
            capture: (0..n).map(HookPoint::ResidPost).collect(),
            interventions: Vec::new(),
        };
        for (j, ids) in e.prompts.iter().enumerate() {
            let b = Batch::new(std::slice::from_ref(ids), PadSide::Left, &Device::Cpu).unwrap();
            let want = &e.tensors[&format!("p{j}.logits")];
            for spec in [HookSpec::default(), hooks.clone()] {
                let out = m.llama.forward(&b, &spec, None).unwrap();
                let d = max_diff(&out.logits.i(0).unwrap(), want);
                assert!(d < TOL, "{name}.gguf prompt {j}: logits differ by {d}");
                for l in 0..n {
                    let Some(got) = out.captures.get(&HookPoint::ResidPost(l)) else {
                        continue;
                    };
                    let want = &e.tensors[&format!("p{j}.resid_post.{l}")];
                    let d = max_diff(&got.i(0).unwrap(), want);
                    assert!(d < tol(want), "{name}.gguf prompt {j} layer {l}: {d}");
                }
            }
        }
        // The GGUF's tokenizer is the folder's.
        let hf = load_model(&fixture(name), &Device::Cpu).unwrap();
        for text in ["the cat sat on the mat", "a pun is a joke <|endoftext|> ok"] {
            assert_eq!(
                m.tokenizer.encode(text).unwrap(),
                hf.tokenizer.encode(text).unwrap(),
                "{name}: {text}"
            );
        }
    }
}

#[test]
fn fused_quantized_projections_split_as_bytes() {
    let path = fixture("phi3.q8_0.gguf");
    let opts = |dtype| LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    let q = load_model_with(&path, &Device::Cpu, opts(WeightDType::Quantized)).unwrap();
    let f = load_model_with(&path, &Device::Cpu, opts(WeightDType::F32)).unwrap();
    assert_eq!(q.info.weights.dtype, WeightDType::Quantized);
    // Each quantized part (split from the fused q/k/v and gate/up rows as bytes) against the
    // same rows dequantized: candle's Q8_0 product also rounds the input to 8 bits, so the
    // products agree to ~1%; a wrong row range would be off by 100%.
    let x =
        candle_core::Tensor::randn(0f32, 1.0, (5, q.llama.cfg.hidden_size), &Device::Cpu).unwrap();
    for (bq, bf) in q.llama.blocks.iter().zip(&f.llama.blocks) {
        let gate = (bq.w_gate.as_ref().unwrap(), bf.w_gate.as_ref().unwrap());
        for (mq, mf) in [(&bq.wq, &bf.wq), (&bq.wk, &bf.wk), (&bq.wv, &bf.wv), gate] {
            assert!(!mq.is_dense(candle_core::DType::F32), "kept quantized");
            let (yq, yf) = (mq.forward(&x).unwrap(), mf.forward(&x).unwrap());
            let scale = yf
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let d = max_diff(&yq, &yf) / scale;
            assert!(d < 0.03, "quantized part vs its dequantized rows: {d}");
        }
    }
    // (Against transformers the Q8_0 model is not compared: these random tiny networks amplify
    // the 0.4% weight rounding chaotically; the f32 files above carry the layout check.)
}

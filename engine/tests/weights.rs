//! Weight types and memory: bf16/f16 blocks against transformers' f32 logits within a stated
//! tolerance; the memory a checkpoint needs, counted from its headers, and the refusal of a model
//! that does not fit (naming both numbers); `auto` falling back to bf16; a word's gradient and
//! the lens through bf16 weights against the f32 model.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use neoscope_engine::hooks::HookSpec;
use neoscope_engine::model::{
    Batch, LoadOptions, LoadedModel, PadSide, WeightDType, load_model_with,
};
use neoscope_engine::words::train::{ScoredSeq, scored_seq, seq_logprobs};
use neoscope_engine::words::{Init, Injection, Word};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
}

fn load(name: &str, dtype: WeightDType, memory_limit: Option<u64>) -> LoadedModel {
    load_model_with(
        &fixture(name),
        &Device::Cpu,
        LoadOptions {
            dtype,
            memory_limit,
        },
    )
    .unwrap()
}

fn logits(m: &LoadedModel, ids: &[u32]) -> Tensor {
    let b = Batch::new(&[ids.to_vec()], PadSide::Left, &Device::Cpu).unwrap();
    m.llama
        .forward(&b, &HookSpec::default(), None)
        .unwrap()
        .logits
        .i(0)
        .unwrap()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn half_precision_blocks_stay_close_to_transformers() {
    for name in ["llama3", "qwen2", "qwen3", "mistral"] {
        let t = candle_core::safetensors::load(
            fixture(&format!("{name}.expected.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let ids: Vec<u32> = t["p0.ids"]
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| u32::try_from(x).unwrap())
            .collect();
        let want = &t["p0.logits"];
        let scale = max_abs(want);
        for dtype in [WeightDType::Bf16, WeightDType::F16] {
            let m = load(name, dtype, None);
            assert_eq!(m.info.weights.dtype, dtype);
            assert_eq!(
                m.llama.blocks[0].wq.dense().unwrap().dtype(),
                dtype_of(dtype)
            );
            assert_eq!(m.llama.embed.dtype(), DType::F32, "embeddings stay f32");
            let got = logits(&m, &ids);
            assert_eq!(got.dtype(), DType::F32, "activations stay f32");
            // bf16 keeps 8 bits of mantissa, f16 11. Measured on these random models: bf16
            // 0.018–0.041 of the logits' range, f16 0.0018–0.0045; tolerances 1.5× that.
            let tol = if dtype == WeightDType::Bf16 {
                0.06
            } else {
                0.007
            };
            let d = max_abs(&(got - want).unwrap()) / scale;
            assert!(d < tol, "{name} {dtype:?}: relative difference {d}");
        }
    }
}

fn dtype_of(d: WeightDType) -> DType {
    neoscope_engine::model::weights::dtype_of(d)
}

#[test]
fn memory_is_counted_before_loading_and_a_model_that_does_not_fit_is_refused() {
    let f32m = load("qwen2", WeightDType::F32, None);
    let bf16 = load("qwen2", WeightDType::Bf16, None);
    let w32 = f32m.info.weights.bytes;
    // The header count equals what the loaded tensors take.
    assert_eq!(w32, neoscope_engine::model::weights::bytes_of(&f32m.llama));
    assert_eq!(
        bf16.info.weights.bytes,
        neoscope_engine::model::weights::bytes_of(&bf16.llama)
    );
    assert!(bf16.info.weights.bytes < w32);
    assert_eq!(f32m.info.weights.stored_as, "F32");
    // Too little memory for f32: refused with both numbers, and the bf16 hint.
    let limit = w32 * 8 / 10;
    let e = load_model_with(
        &fixture("qwen2"),
        &Device::Cpu,
        LoadOptions {
            dtype: WeightDType::F32,
            memory_limit: Some(limit),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("as f32") && e.contains("available") && e.contains("bf16"),
        "{e}"
    );
    // `auto` takes bf16 when f32 would not fit comfortably.
    let auto = load("qwen2", WeightDType::Auto, Some(limit));
    assert_eq!(auto.info.weights.dtype, WeightDType::Bf16);
    // And f32 when it does.
    let auto = load("qwen2", WeightDType::Auto, None);
    assert_eq!(auto.info.weights.dtype, WeightDType::F32);
    // Nothing fits in 1 kB.
    let e = load_model_with(
        &fixture("qwen2"),
        &Device::Cpu,
        LoadOptions {
            dtype: WeightDType::Auto,
            memory_limit: Some(1000),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("as bf16") && e.contains("1 kB"), "{e}");
}

fn word_grad(m: &LoadedModel, w: &Word, seqs: &[&ScoredSeq]) -> Vec<f32> {
    let var = Var::from_slice(&w.vector, w.vector.len(), &Device::Cpu).unwrap();
    let lp = seq_logprobs(m, std::slice::from_ref(w), &[var.as_tensor().clone()], seqs).unwrap();
    let grads = lp.sum_all().unwrap().backward().unwrap();
    grads
        .get(var.as_tensor())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn a_words_gradient_through_bf16_blocks_matches_the_f32_model() {
    let f32m = load("llama3", WeightDType::F32, None);
    let bf16 = load("llama3", WeightDType::Bf16, None);
    let data = [("the <w> sat on", " the mat"), ("a pun <w>", " is a joke")];
    let w = Word::create(
        &f32m,
        "<w>",
        Init::Random { std: 0.5, seed: 3 },
        Injection::Embedding,
    )
    .unwrap();
    let grad = |m: &LoadedModel| {
        let seqs: Vec<ScoredSeq> = data
            .iter()
            .map(|(p, c)| scored_seq(m, p, c, &["<w>"]).unwrap())
            .collect();
        word_grad(m, &w, &seqs.iter().collect::<Vec<_>>())
    };
    let (a, b) = (grad(&f32m), grad(&bf16));
    let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let cos = dot / (norm(&a) * norm(&b));
    assert!(norm(&a) > 1e-3, "zero gradient");
    // Stated tolerance: the bf16 gradient points the same way within cos ≥ 0.99.
    assert!(cos > 0.99, "cosine between f32 and bf16 gradients: {cos}");
}

//! The default model with its Q4_1/Q8_0 blocks kept quantized (`--dtype quantized`): against
//! candle-transformers' `quantized_llama` on its own quantized path (the same GGUF file, an
//! independent model implementation), and against the same file dequantized to f32: memory,
//! logits, greedy tokens and a word's gradient.
//!
//! Tolerances: Neoscope's quantized products multiply f32 activations by exactly the dequantized
//! weights (`model::qmatmul`), so against the f32 model the logits agree to summation order
//! (bound 2e-3; measured ~1e-4), greedy decoding gives the same tokens, and a word's gradient is
//! the same (cosine > 0.9999). `quantized_llama` rounds the activations to 8 bits per block and
//! multiplies the unembedding quantized, which moves its logits by up to ~0.7: that comparison
//! asserts max |Δlogit| < 1.5 and the same top-1 token.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use candle_core::{Device, IndexOp, Tensor, Var};
use candle_transformers::models::quantized_llama::ModelWeights;
use neoscope_engine::hooks::HookSpec;
use neoscope_engine::infer::{GenerateOptions, generate};
use neoscope_engine::model::{
    Batch, LoadOptions, LoadedModel, PadSide, WeightDType, load_model_with,
};
use neoscope_engine::sampling::Sampling;
use neoscope_engine::words::train::{ScoredSeq, scored_seq, seq_logprobs};
use neoscope_engine::words::{Init, Injection, Word};

fn load(dtype: WeightDType) -> LoadedModel {
    let opts = LoadOptions {
        dtype,
        memory_limit: None,
    };
    load_model_with(&common::default_model_path(), &Device::Cpu, opts).unwrap()
}

fn last_logits(m: &LoadedModel, ids: &[u32]) -> Vec<f32> {
    let b = Batch::new(&[ids.to_vec()], PadSide::Right, &Device::Cpu).unwrap();
    let out = m.llama.forward(&b, &HookSpec::default(), None).unwrap();
    out.logits
        .i((0, ids.len() - 1))
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, x)| if *x > b.1 { (i, *x) } else { b },
        )
        .0
}

fn word_grad(m: &LoadedModel, w: &Word) -> Vec<f32> {
    let data = [
        (
            "Here is <w>: Why do electricians make good swimmers?",
            " Because they know the current.",
        ),
        (
            "This is <w>: I used to be a banker, but I lost",
            " interest.",
        ),
    ];
    let seqs: Vec<ScoredSeq> = data
        .iter()
        .map(|(p, c)| scored_seq(m, p, c, &["<w>"]).unwrap())
        .collect();
    let refs: Vec<&ScoredSeq> = seqs.iter().collect();
    let var = Var::from_slice(&w.vector, w.vector.len(), &Device::Cpu).unwrap();
    let lp = seq_logprobs(
        m,
        std::slice::from_ref(w),
        &[var.as_tensor().clone()],
        &refs,
    )
    .unwrap();
    let g = lp.sum_all().unwrap().backward().unwrap();
    g.get(var.as_tensor()).unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn quantized_blocks_match_quantized_llama_and_track_the_f32_model() {
    let q = load(WeightDType::Quantized);
    let f = load(WeightDType::F32);
    assert_eq!(q.info.weights.dtype, WeightDType::Quantized);
    let (qb, fb) = (q.info.weights.bytes, f.info.weights.bytes);
    eprintln!("weights: quantized {qb} bytes, f32 {fb} bytes");
    assert!(
        qb * 5 < fb * 2,
        "quantized weights take {qb} bytes, f32 {fb}"
    );

    let prompts = [
        "The capital of France is",
        "A pun is a joke that",
        "I used to be a banker, but I lost interest.",
    ];
    let path = common::default_model_path();
    let mut file = std::fs::File::open(&path).unwrap();
    let ct = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let mut reference = ModelWeights::from_gguf(ct, &mut file, &Device::Cpu).unwrap();
    for p in prompts {
        let ids = q.tokenizer.encode(p).unwrap();
        let x = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want = reference
            .forward(&x, 0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let got = last_logits(&q, &ids);
        let d = common::max_abs_diff(&got, &want);
        let df = common::max_abs_diff(&got, &last_logits(&f, &ids));
        eprintln!("{p:?}: vs quantized_llama {d:.3}, vs f32 {df:.1e}");
        assert!(d < 1.5, "{p:?}: quantized vs quantized_llama differ by {d}");
        assert!(df < 2e-3, "{p:?}: quantized vs f32 differ by {df}");
        assert_eq!(
            argmax(&got),
            argmax(&want),
            "{p:?}: top-1 vs quantized_llama"
        );
        assert_eq!(
            argmax(&got),
            argmax(&last_logits(&f, &ids)),
            "{p:?}: top-1 vs f32"
        );
    }

    // Greedy decoding (the KV-cache path: the in-register kernels and the quantized head) gives
    // the f32 model's tokens, on a story and on a chat prompt.
    let opts = GenerateOptions {
        max_new_tokens: 50,
        sampling: Sampling::GREEDY,
        stop_at_eos: false,
    };
    for prompt in [
        "Once upon a time, in a small village by the sea, there lived",
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    ] {
        let ids = q.tokenizer.encode(prompt).unwrap();
        let gq = generate(&q, &ids, opts, &HookSpec::default(), &mut |_, _| true).unwrap();
        let gf = generate(&f, &ids, opts, &HookSpec::default(), &mut |_, _| true).unwrap();
        let same = gq.iter().zip(&gf).filter(|(a, b)| a == b).count();
        eprintln!("greedy {prompt:?}: {same} of {} tokens equal", gf.len());
        // The bound: at least 45 of 50 (only a near-tie that summation order tips may
        // differ); measured 50 of 50 on both.
        assert!(same >= 45, "{prompt:?}: greedy tokens {gq:?} vs {gf:?}");
    }

    // A word's gradient through the quantized blocks is the f32 one's (the backward multiplies
    // by the dequantized weights a tile at a time).
    let w = Word::create(
        &f,
        "<w>",
        Init::Random { std: 0.02, seed: 1 },
        Injection::Embedding,
    )
    .unwrap();
    let (a, b) = (word_grad(&f, &w), word_grad(&q, &w));
    let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let cos = dot / (norm(&a) * norm(&b));
    eprintln!("word gradient cosine quantized vs f32: {cos:.4}");
    assert!(cos > 0.9999, "word gradient cosine {cos}");
}

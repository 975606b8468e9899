//! Every supported quantization on a tiny Llama written as a GGUF file here (the tokenizer and
//! settings of the `llama_linear_head_dim` fixture, widths of 256 so k-quant blocks fit, random
//! seeded weights): the model with its blocks kept quantized (`--dtype quantized`) against the
//! same file dequantized to f32.
//!
//! Tolerances, from what the kernels compute: `qmatmul` multiplies f32 activations by exactly the
//! dequantized weights, so logits agree to summation order (1e-4 of their range) on the hooked and
//! the hand-written pass, and greedy decoding with Q4_0/Q4_1/Q8_0 (the in-register kernels) gives
//! the f32 model's tokens. k-quants on 1–8 rows run candle's kernels, which round activations to
//! 8 bits: a decode step's logits agree to 6% of their range there (2–4% measured). A word's training (the
//! hand-written pass's forward and input gradients through the quantized blocks, on short
//! sequences) follows the f32 run's losses to 1e-5 relative with the in-register kernels, 5e-3
//! with candle's. A tuned lens trained on either model has the same losses (1e-4 relative).

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, IndexOp, Tensor};
use common::fixture;
use neoscope_engine::hooks::{HookPoint, HookSpec};
use neoscope_engine::infer::{GenerateOptions, generate};
use neoscope_engine::model::{
    Batch, KvCache, LoadOptions, LoadedModel, PadSide, WeightDType, load_model_with,
};
use neoscope_engine::sampling::Sampling;
use neoscope_engine::tuned::{self, TunedConfig};
use neoscope_engine::words::dataset::Example;
use neoscope_engine::words::train::{TrainConfig, train};
use neoscope_engine::words::{Init, Injection, Word};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const D: usize = 256;
const MLP: usize = 512;
const HEADS: usize = 4;
const KV: usize = 2;
const HD: usize = 64;

/// Writes the tiny model with its matrices (and the tied embedding, or an untied output head) as
/// `t`.
fn write_model(t: GgmlDType, untied: bool, path: &std::path::Path) {
    let src = fixture("llama_linear_head_dim.gguf");
    let mut f = std::fs::File::open(&src).unwrap();
    let ct = gguf_file::Content::read(&mut f).unwrap();
    let vocab = ct.tensor_infos["token_embd.weight"].shape.dims()[0];
    let mut md: Vec<(String, Value)> = ct
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("llama.rope.scaling"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in [
        ("llama.embedding_length", D),
        ("llama.feed_forward_length", MLP),
        ("llama.attention.head_count", HEADS),
        ("llama.attention.head_count_kv", KV),
        ("llama.attention.key_length", HD),
        ("llama.attention.value_length", HD),
        ("llama.rope.dimension_count", HD),
    ] {
        md.retain(|(n, _)| n != k);
        md.push((k.to_owned(), Value::U32(u32::try_from(v).unwrap())));
    }
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(11);
    // Uniform values with standard deviation `std`.
    let mut mat = |rows: usize, cols: usize, std: f32| {
        let a = std * 3f32.sqrt();
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-a..a)).collect();
        let w = Tensor::from_vec(v, (rows, cols), &dev).unwrap();
        QTensor::quantize(&w, t).unwrap()
    };
    let ones = |n: usize| {
        QTensor::quantize(
            &Tensor::ones(n, candle_core::DType::F32, &dev).unwrap(),
            GgmlDType::F32,
        )
        .unwrap()
    };
    let mut tensors: Vec<(String, QTensor)> = vec![
        ("token_embd.weight".into(), mat(vocab, D, 0.5)),
        ("output_norm.weight".into(), ones(D)),
    ];
    if untied {
        tensors.push(("output.weight".into(), mat(vocab, D, 0.5)));
    }
    for l in 0..2 {
        let p = |n: &str| format!("blk.{l}.{n}");
        tensors.push((p("attn_norm.weight"), ones(D)));
        tensors.push((p("ffn_norm.weight"), ones(D)));
        tensors.push((p("attn_q.weight"), mat(HEADS * HD, D, 0.08)));
        tensors.push((p("attn_k.weight"), mat(KV * HD, D, 0.08)));
        tensors.push((p("attn_v.weight"), mat(KV * HD, D, 0.08)));
        tensors.push((p("attn_output.weight"), mat(D, HEADS * HD, 0.08)));
        tensors.push((p("ffn_gate.weight"), mat(MLP, D, 0.08)));
        tensors.push((p("ffn_up.weight"), mat(MLP, D, 0.08)));
        tensors.push((p("ffn_down.weight"), mat(D, MLP, 0.06)));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut out = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
}

fn load(path: &std::path::Path, dtype: WeightDType) -> LoadedModel {
    let opts = LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    load_model_with(path, &Device::Cpu, opts).unwrap()
}

/// Largest difference over the largest magnitude of `want`.
fn rel(got: &Tensor, want: &Tensor) -> f32 {
    common::max_diff(got, want) / common::max_abs(want)
}

/// Logits of one decode step after `ids` (the KV-cache path, one row).
fn decode_step(m: &LoadedModel, ids: &[u32], next: u32) -> Tensor {
    let mut cache = KvCache::new(m.llama.cfg.num_hidden_layers);
    let spec = HookSpec::default();
    let b = Batch::new(&[ids.to_vec()], PadSide::Left, &Device::Cpu).unwrap();
    m.llama.forward(&b, &spec, Some(&mut cache)).unwrap();
    let b = Batch::new(&[vec![next]], PadSide::Left, &Device::Cpu).unwrap();
    let out = m.llama.forward(&b, &spec, Some(&mut cache)).unwrap();
    out.logits.i((0, 0)).unwrap()
}

fn word_losses(m: &LoadedModel) -> Vec<f32> {
    let word = Word::create(
        m,
        "<w>",
        Init::Random { std: 0.3, seed: 7 },
        Injection::Embedding,
    )
    .unwrap();
    let data: Vec<Example> = [("the <w> sat on", " the mat"), ("a <w> is a", " cat")]
        .iter()
        .map(|(p, t)| Example::Completion {
            prompt: (*p).into(),
            target: (*t).into(),
        })
        .collect();
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 2,
        ..TrainConfig::default()
    };
    train(m, &[word], &data, &cfg, &mut |_| true)
        .unwrap()
        .losses
}

/// A tuned lens trained on the model: its step losses.
fn tuned_losses(m: &LoadedModel) -> Vec<f32> {
    let corpus = "the cat and the hat then the ant an ant and the cat ".repeat(20);
    let cfg = TunedConfig {
        lr: 1e-2,
        steps: 5,
        window: 16,
        positions: 16,
        ..TunedConfig::default()
    };
    tuned::train(m, &corpus, &cfg, &mut |_| true)
        .unwrap()
        .1
        .losses
}

#[test]
fn every_quantization_computes_the_dequantized_model() {
    let dir = tempfile::tempdir().unwrap();
    let types = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];
    // Every type with a tied head, and an untied head kept only quantized (no f32 copy).
    let cases = types
        .iter()
        .map(|t| (*t, false))
        .chain([(GgmlDType::Q8_0, true), (GgmlDType::Q4K, true)]);
    for (t, untied) in cases {
        let path = dir.path().join(format!("{t:?}-{untied}.gguf"));
        write_model(t, untied, &path);
        let q = load(&path, WeightDType::Quantized);
        let f = load(&path, WeightDType::F32);
        assert_eq!(q.info.weights.dtype, WeightDType::Quantized, "{t:?}");
        assert!(
            q.info.weights.bytes < f.info.weights.bytes,
            "{t:?}: weights not smaller"
        );
        assert!(
            q.llama.quantized_head().is_some(),
            "{t:?}: head kept quantized"
        );
        assert_eq!(q.llama.head_only_quantized(), untied, "{t:?}");
        assert!(q.llama.lm_head.is_none(), "{t:?}: no f32 head copy");
        assert_eq!(
            f.llama.lm_head.is_some(),
            untied,
            "{t:?}: the f32 model's head"
        );
        if untied {
            // What attaching a vocabulary or saving a folder appends to / writes.
            let want = f.llama.lm_head.as_ref().unwrap();
            assert_eq!(common::max_diff(&q.llama.dense_head().unwrap(), want), 0.0);
        }
        let ids = q
            .tokenizer
            .encode("the cat sat on the mat and the dog sat on")
            .unwrap();
        assert!(ids.len() > 8, "the prompt takes the many-row path");
        let b = Batch::new(std::slice::from_ref(&ids), PadSide::Left, &Device::Cpu).unwrap();
        // The unhooked (hand-written) pass and the hooked (candle) pass.
        let hooked = HookSpec {
            capture: vec![HookPoint::ResidPost(1)],
            interventions: Vec::new(),
        };
        for spec in [HookSpec::default(), hooked] {
            let (a, b) = (
                q.llama.forward(&b, &spec, None).unwrap().logits,
                f.llama.forward(&b, &spec, None).unwrap().logits,
            );
            let r = rel(&a, &b);
            assert!(r < 1e-4, "{t:?}: logits differ by {r} of their range");
        }
        // The types with in-register kernels; the others run candle's on 1–8 rows.
        let legacy = matches!(t, GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q8_0);
        let r = rel(
            &decode_step(&q, &ids, ids[0]),
            &decode_step(&f, &ids, ids[0]),
        );
        let bound = if legacy { 1e-4 } else { 0.06 };
        assert!(r < bound, "{t:?}: a decode step's logits differ by {r}");
        if legacy {
            let opts = GenerateOptions {
                max_new_tokens: 20,
                sampling: Sampling::GREEDY,
                stop_at_eos: false,
            };
            let none = HookSpec::default();
            let gq = generate(&q, &ids, opts, &none, &mut |_, _| true).unwrap();
            let gf = generate(&f, &ids, opts, &none, &mut |_, _| true).unwrap();
            assert_eq!(gq, gf, "{t:?}: greedy tokens");
        }
        let (lq, lf) = (word_losses(&q), word_losses(&f));
        // Relative: the short sequences take the few-row path.
        let d = lq
            .iter()
            .zip(&lf)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs() / b.abs()));
        let bound = if legacy { 1e-5 } else { 5e-3 };
        assert!(d < bound, "{t:?}: word training losses {lq:?} vs {lf:?}");
        // A tuned lens reads the residual stream of windows (many rows: the exact path).
        let (tq, tf) = (tuned_losses(&q), tuned_losses(&f));
        let dt = tq
            .iter()
            .zip(&tf)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs() / b.abs()));
        assert!(dt < 1e-4, "{t:?}: tuned lens losses {tq:?} vs {tf:?}");
        eprintln!(
            "{t:?} (untied head: {untied}): decode step {r:.1e}, word losses differ by {d:.1e}, tuned lens losses by \
             {dt:.1e} (relative)"
        );
    }
}

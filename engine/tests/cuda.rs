//! The GPU path, checked where it runs: built only with `--features cuda` and run by
//! `scripts/gpu-check.sh` on a machine with an NVIDIA GPU (it fails, not skips, without one).
//! Every family's logits and residual stream on the GPU against transformers' own (the same
//! fixtures as `families.rs`), KV-cache decoding, greedy generation, the logit lens, a word's
//! gradient and a short word training against the CPU run of the same thing.
#![cfg(feature = "cuda")]
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] functions"
)]

mod common;

use candle_core::{Device, IndexOp, Tensor, Var};
use common::{FAMILIES, fixture, max_diff, tol_at};
use neoscope_engine::hooks::{HookPoint, HookSpec};
use neoscope_engine::infer::{GenerateOptions, generate};
use neoscope_engine::model::{
    Batch, KvCache, LoadOptions, LoadedModel, PadSide, WeightDType, load_model, load_model_with,
};
use neoscope_engine::sampling::Sampling;
use neoscope_engine::words::dataset::Example;
use neoscope_engine::words::train::{ScoredSeq, TrainConfig, scored_seq, seq_logprobs, train};
use neoscope_engine::words::{Init, Injection, Word};

const CASES: [&str; 14] = FAMILIES;
/// cuBLAS sums in another order than the CPU; f32 differences stay ~1e-5 on logits of ±20.
const TOL: f32 = 2e-4;

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA GPU (run scripts/gpu-check.sh on one)")
}

fn expected(name: &str) -> (Vec<Vec<u32>>, std::collections::HashMap<String, Tensor>) {
    let e = common::expected(name);
    (e.prompts, e.tensors)
}

#[test]
fn every_family_on_the_gpu_matches_transformers() {
    let dev = gpu();
    for name in CASES {
        let m = load_model(&fixture(name), &dev).unwrap();
        assert!(
            m.llama.device().is_cuda(),
            "{name} was not placed on the GPU"
        );
        let (prompts, want) = expected(name);
        let hooks = HookSpec {
            capture: (0..m.llama.cfg.num_hidden_layers)
                .map(HookPoint::ResidPost)
                .collect(),
            interventions: Vec::new(),
        };
        for (j, ids) in prompts.iter().enumerate() {
            let b = Batch::new(std::slice::from_ref(ids), PadSide::Left, &dev).unwrap();
            let out = m.llama.forward(&b, &hooks, None).unwrap();
            assert!(out.logits.device().is_cuda());
            let d = max_diff(&out.logits.i(0).unwrap(), &want[&format!("p{j}.logits")]);
            assert!(d < TOL, "{name} prompt {j}: GPU logits differ by {d}");
            for l in 0..m.llama.cfg.num_hidden_layers {
                let got = out.captures[&HookPoint::ResidPost(l)].i(0).unwrap();
                let w = &want[&format!("p{j}.resid_post.{l}")];
                // Gemma's residual stream spans ±170, not ±20: the tolerance scales with it.
                let d = max_diff(&got, w);
                assert!(
                    d < tol_at(TOL, w),
                    "{name} prompt {j}: resid_post {l} differs by {d}"
                );
            }
        }
        // KV-cache decoding on the GPU, one token at a time after a prefix.
        let ids = &prompts[0];
        let logits = &want["p0.logits"];
        let mut cache = KvCache::new(m.llama.cfg.num_hidden_layers);
        let b = Batch::new(&[ids[..12].to_vec()], PadSide::Right, &dev).unwrap();
        let out = m
            .llama
            .forward(&b, &HookSpec::default(), Some(&mut cache))
            .unwrap();
        let d = max_diff(&out.logits.i(0).unwrap(), &logits.i(..12).unwrap());
        assert!(d < TOL, "{name}: cached prefix differs by {d}");
        for (t, id) in ids.iter().enumerate().skip(12) {
            let b = Batch::new(&[vec![*id]], PadSide::Right, &dev).unwrap();
            let out = m
                .llama
                .forward(&b, &HookSpec::default(), Some(&mut cache))
                .unwrap();
            let d = max_diff(&out.logits.i((0, 0)).unwrap(), &logits.i(t).unwrap());
            assert!(d < TOL, "{name}: cached step {t} differs by {d}");
        }
    }
}

fn greedy(m: &LoadedModel, prompt: &[u32]) -> Vec<u32> {
    let opts = GenerateOptions {
        max_new_tokens: 8,
        sampling: Sampling::GREEDY,
        stop_at_eos: false,
    };
    generate(m, prompt, opts, &HookSpec::default(), &mut |_, _| true).unwrap()
}

#[test]
fn generation_and_lens_on_the_gpu_equal_the_cpu() {
    use neoscope_engine::lens::{LensSpec, run};
    for name in ["llama3", "qwen2"] {
        let cpu = load_model(&fixture(name), &Device::Cpu).unwrap();
        let gpu = load_model(&fixture(name), &gpu()).unwrap();
        let (prompts, _) = expected(name);
        let prompt = &prompts[0][..10];
        assert_eq!(
            greedy(&cpu, prompt),
            greedy(&gpu, prompt),
            "{name}: greedy tokens"
        );
        let spec = LensSpec {
            kind: neoscope_engine::lens::LensKind::Logit,
            tuned: None,
            targets: &[],
            top_k: 3,
        };
        let pieces: Vec<String> = prompt.iter().map(|i| format!("t{i}")).collect();
        let a = run(&cpu, prompt, pieces.clone(), &HookSpec::default(), &spec).unwrap();
        let b = run(&gpu, prompt, pieces, &HookSpec::default(), &spec).unwrap();
        for (la, lb) in a.cells.iter().zip(&b.cells) {
            for (ca, cb) in la.iter().zip(lb) {
                assert_eq!(ca.top[0].id, cb.top[0].id, "{name}: lens top-1");
                assert!((ca.entropy - cb.entropy).abs() < 1e-3, "{name}: entropy");
                assert!((ca.kl_to_final - cb.kl_to_final).abs() < 1e-3, "{name}: KL");
            }
        }
    }
}

fn word_grad(m: &LoadedModel, w: &Word, seqs: &[&ScoredSeq]) -> Vec<f32> {
    let dev = m.llama.device();
    let var = Var::from_slice(&w.vector, w.vector.len(), dev).unwrap();
    let lp = seq_logprobs(m, std::slice::from_ref(w), &[var.as_tensor().clone()], seqs).unwrap();
    let grads = lp.sum_all().unwrap().backward().unwrap();
    grads
        .get(var.as_tensor())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn word_gradient_and_training_on_the_gpu_equal_the_cpu() {
    let cpu = load_model(&fixture("qwen2"), &Device::Cpu).unwrap();
    let gpu = load_model(&fixture("qwen2"), &gpu()).unwrap();
    let data = [("the <w> sat on", " the mat"), ("a pun <w>", " is a joke")];
    let w = Word::create(
        &cpu,
        "<w>",
        Init::Random { std: 0.5, seed: 3 },
        Injection::Embedding,
    )
    .unwrap();
    let seqs = |m: &LoadedModel| -> Vec<ScoredSeq> {
        data.iter()
            .map(|(p, c)| scored_seq(m, p, c, &["<w>"]).unwrap())
            .collect()
    };
    let (sc, sg) = (seqs(&cpu), seqs(&gpu));
    let a = word_grad(&cpu, &w, &sc.iter().collect::<Vec<_>>());
    let b = word_grad(&gpu, &w, &sg.iter().collect::<Vec<_>>());
    let scale = a.iter().fold(0f32, |s, v| s.max(v.abs()));
    assert!(scale > 1e-3, "zero gradient");
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        diff / scale < 1e-4,
        "GPU vs CPU word gradient: {}",
        diff / scale
    );

    let examples: Vec<Example> = data
        .iter()
        .map(|(p, c)| Example::Completion {
            prompt: (*p).to_owned(),
            target: (*c).to_owned(),
        })
        .collect();
    let cfg = TrainConfig {
        epochs: 5,
        batch_size: 2,
        ..TrainConfig::default()
    };
    let lc = train(&cpu, std::slice::from_ref(&w), &examples, &cfg, &mut |_| {
        true
    })
    .unwrap();
    let lg = train(&gpu, std::slice::from_ref(&w), &examples, &cfg, &mut |_| {
        true
    })
    .unwrap();
    assert_eq!(lc.losses.len(), lg.losses.len());
    for (s, (x, y)) in lc.losses.iter().zip(&lg.losses).enumerate() {
        assert!(
            (x - y).abs() < 1e-3 * x.abs().max(1.0),
            "step {s}: CPU {x} vs GPU {y}"
        );
    }
    assert!(
        lg.losses.last() < lg.losses.first(),
        "GPU training did not lower the loss"
    );
}

#[test]
fn bf16_blocks_on_the_gpu_stay_close_to_transformers() {
    let dev = gpu();
    for name in ["llama3", "qwen2", "mistral"] {
        let opts = LoadOptions {
            dtype: WeightDType::Bf16,
            memory_limit: None,
        };
        let m = load_model_with(&fixture(name), &dev, opts).unwrap();
        assert_eq!(
            m.llama.blocks[0].wq.dense().unwrap().dtype(),
            candle_core::DType::BF16
        );
        let (prompts, want) = expected(name);
        let b = Batch::new(&prompts[..1], PadSide::Left, &dev).unwrap();
        let out = m.llama.forward(&b, &HookSpec::default(), None).unwrap();
        let want = &want["p0.logits"];
        let scale = want
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let d = max_diff(&out.logits.i(0).unwrap(), want) / scale;
        // The CPU's bf16 test measured 0.018–0.041 of the logits' range on these models.
        assert!(
            d < 0.06,
            "{name}: bf16 logits on the GPU differ by {d} of their range"
        );
        let g = greedy(&m, &prompts[0][..10]);
        assert_eq!(g.len(), 8);
    }
}

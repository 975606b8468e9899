//! The from-scratch lab's training: gradients of every weight against finite differences,
//! losses step by step against PyTorch on the same weights and windows
//! (`tests/fixtures/mkscratch.py`), exact resume, and the saved model folder through the
//! normal model loader.
#![expect(clippy::unwrap_used, reason = "tests")]

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use neoscope_api::scratch::{
    CorpusSource, ScratchArch, ScratchModelConfig, ScratchSpec, ScratchTrainConfig, TokenizerKind,
};
use neoscope_engine::scratch::net::Net;
use neoscope_engine::scratch::run::Run;
use neoscope_engine::scratch::tokenize;
use neoscope_engine::scratch::train::{
    Data, ScratchHooks, TrainState, gradients, step_on, train, windows,
};

fn fixture(name: &str) -> PathBuf {
    let root = std::env::var("NEOSCOPE_REPO").map_or_else(
        |_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."),
        PathBuf::from,
    );
    root.join("tests/fixtures/scratch").join(name)
}

fn tiny(arch: ScratchArch) -> ScratchModelConfig {
    ScratchModelConfig {
        arch,
        n_layers: 2,
        n_heads: 2,
        d_model: 8,
        d_ff: 12,
        n_ctx: 6,
        dropout: 0.0,
    }
}

const TEXT: &str = "the cat sat on the mat; the dog sat on the log.\n";

#[test]
fn every_weight_gradient_matches_finite_differences() {
    for arch in [ScratchArch::Seed, ScratchArch::Modern] {
        let cfg = tiny(arch);
        let net = Net::init(&cfg, 11, 3, &Device::Cpu).unwrap();
        let ids: Vec<u32> = (0..40).map(|i| (i * 7 % 11) as u32).collect();
        let (inputs, targets) = windows(&ids, &[0, 9, 21], cfg.n_ctx);
        let batch = (inputs.as_slice(), targets.as_slice());
        let (grads, _) = gradients(&net, batch, 0).unwrap();
        let mut checked = 0;
        for (i, (name, var)) in net.params.iter().enumerate() {
            let orig: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            let n = orig.len();
            let g: Vec<f32> = grads[i].flatten_all().unwrap().to_vec1().unwrap();
            // Three entries of every parameter, spread over it.
            for k in [0, n / 2, n - 1] {
                let h = 1e-2f32;
                let loss_at = |delta: f32| {
                    let mut v = orig.clone();
                    v[k] += delta;
                    let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
                    var.set(&t).unwrap();
                    let (_, l) = gradients(&net, batch, 0).unwrap();
                    let back = Tensor::from_vec(orig.clone(), var.shape(), &Device::Cpu).unwrap();
                    var.set(&back).unwrap();
                    f64::from(l)
                };
                let fd = ((loss_at(h) - loss_at(-h)) / (2.0 * f64::from(h))) as f32;
                let err = (fd - g[k]).abs();
                assert!(
                    err < 2e-3 + 0.03 * g[k].abs(),
                    "{arch:?} {name}[{k}]: autograd {} vs finite differences {fd}",
                    g[k]
                );
                checked += 1;
            }
        }
        assert!(checked >= 30, "{checked} entries checked");
    }
}

/// The hand-written CPU pass that training uses (`pass::gradients`) against candle's autograd
/// on the same weights, batch and dropout masks: every parameter's gradient and the loss.
#[test]
fn the_hand_written_pass_matches_autograd() {
    for arch in [ScratchArch::Seed, ScratchArch::Modern] {
        for dropout in [0.0, 0.25] {
            let cfg = ScratchModelConfig {
                n_layers: 3,
                n_heads: 4,
                d_model: 32,
                d_ff: 48,
                n_ctx: 10,
                dropout,
                ..tiny(arch)
            };
            let net = Net::init(&cfg, 23, 5, &Device::Cpu).unwrap();
            let ids: Vec<u32> = (0..200).map(|i| (i * 13 % 23) as u32).collect();
            let (inputs, targets) = windows(&ids, &[0, 17, 40, 99, 150], cfg.n_ctx);
            let batch = (inputs.as_slice(), targets.as_slice());
            let (want, want_loss) = gradients(&net, batch, 77).unwrap();
            let (got, loss) = neoscope_engine::scratch::pass::gradients(&net, batch, 77).unwrap();
            assert!(
                (loss - want_loss).abs() < 1e-5,
                "{arch:?} dropout {dropout}: loss {loss} vs autograd {want_loss}"
            );
            for (i, (name, _)) in net.params.iter().enumerate() {
                let w: Vec<f32> = want[i].flatten_all().unwrap().to_vec1().unwrap();
                let scale = w.iter().fold(0f32, |a, b| a.max(b.abs())).max(1e-6);
                let err = w
                    .iter()
                    .zip(&got[i])
                    .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
                assert!(
                    err <= 1e-4 * scale,
                    "{arch:?} dropout {dropout} {name}: largest difference {err:e} (scale {scale:e})"
                );
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct RefStep {
    starts: Vec<usize>,
    lr: f64,
    loss: f32,
}

#[derive(serde::Deserialize)]
struct Reference {
    model: ScratchModelConfig,
    vocab: usize,
    ids: Vec<u32>,
    train: serde_json::Value,
    steps: Vec<RefStep>,
}

#[test]
fn losses_match_pytorch_step_by_step() {
    for name in ["seed", "modern"] {
        let r: Reference = serde_json::from_str(
            &std::fs::read_to_string(fixture(&format!("{name}.json"))).unwrap(),
        )
        .unwrap();
        let tensors = candle_core::safetensors::load(
            fixture(&format!("{name}.init.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let net = Net::from_tensors(&r.model, r.vocab, tensors, &fixture(name)).unwrap();
        let t = &r.train;
        let f = |k: &str| t[k].as_f64().unwrap();
        let cfg = ScratchTrainConfig {
            lr: f("lr"),
            min_lr: f("min_lr"),
            warmup_steps: f("warmup_steps") as usize,
            steps: f("steps") as usize,
            weight_decay: f("weight_decay"),
            beta2: f("beta2"),
            clip_norm: f("clip_norm"),
            ..ScratchTrainConfig::default()
        };
        let mut state = TrainState::new(net).unwrap();
        let mut worst = 0f32;
        for (s, want) in r.steps.iter().enumerate() {
            assert!(
                (neoscope_engine::scratch::train::lr_at(&cfg, s + 1) - want.lr).abs() < 1e-12,
                "learning rate schedule at step {}",
                s + 1
            );
            let (inputs, targets) = windows(&r.ids, &want.starts, r.model.n_ctx);
            let got = step_on(&mut state, &cfg, (&inputs, &targets)).unwrap();
            assert!(
                (got - want.loss).abs() < 1e-4,
                "{name} step {}: loss {got} vs PyTorch {}",
                s + 1,
                want.loss
            );
            worst = worst.max((got - want.loss).abs());
        }
        eprintln!(
            "{name}: {} steps, largest loss difference from PyTorch {worst:.2e}",
            r.steps.len()
        );
    }
}

/// Records checkpoints; asks to stop after `stop_at` steps.
struct Stop {
    run: Run,
    stop_at: Option<usize>,
}

impl ScratchHooks for Stop {
    fn event(&mut self, ev: neoscope_api::scratch::ScratchEvent) -> bool {
        match ev {
            neoscope_api::scratch::ScratchEvent::Step { step, .. } => {
                self.stop_at.is_none_or(|s| step < s)
            }
            _ => true,
        }
    }
    fn checkpoint(&mut self, state: &TrainState) -> neoscope_engine::Result<()> {
        self.run.checkpoint(state)
    }
    fn sample(&mut self, llama: &neoscope_engine::model::Llama) -> neoscope_engine::Result<String> {
        let cfg = neoscope_api::scratch::SampleConfig::default();
        Ok(neoscope_engine::scratch::inspect::sample(llama, &self.run, "", 5, cfg, &|| false)?.0)
    }
}

fn spec(arch: ScratchArch, dropout: f32) -> ScratchSpec {
    ScratchSpec {
        corpus: CorpusSource::Text {
            name: "test".into(),
            text: TEXT.repeat(8),
        },
        tokenizer: TokenizerKind::Char,
        model: ScratchModelConfig {
            dropout,
            ..tiny(arch)
        },
        train: ScratchTrainConfig {
            batch: 3,
            steps: 6,
            warmup_steps: 2,
            eval_every: 2,
            eval_windows: 4,
            sample_every: 3,
            sample_tokens: 5,
            checkpoint_every: 2,
            ..ScratchTrainConfig::default()
        },
    }
}

fn new_run(dir: &std::path::Path, spec: ScratchSpec) -> (Run, Data) {
    let CorpusSource::Text { text, .. } = &spec.corpus else {
        unreachable!()
    };
    let tok = tokenize::build(spec.tokenizer, text).unwrap();
    let ids = tokenize::encode_all(&tok, text).unwrap();
    let data = Data::split(&ids, spec.train.val_fraction, spec.model.n_ctx).unwrap();
    let chars = text.chars().count();
    (
        Run::create(dir, spec, "test".into(), chars, tok, ids).unwrap(),
        data,
    )
}

fn weights(state: &TrainState) -> HashMap<String, Vec<f32>> {
    state
        .net
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.flatten_all().unwrap().to_vec1().unwrap()))
        .collect()
}

#[test]
fn a_stopped_run_resumes_exactly_and_its_model_folder_loads() {
    for (arch, dropout) in [(ScratchArch::Seed, 0.1), (ScratchArch::Modern, 0.0)] {
        let tmp = tempfile::tempdir().unwrap();
        let spec = spec(arch, dropout);
        let dev = Device::Cpu;
        // Straight through.
        let (run_a, data) = new_run(&tmp.path().join("a"), spec.clone());
        let s = &run_a.file.spec.clone();
        let net = Net::init(&s.model, run_a.file.vocab_size, s.train.seed, &dev).unwrap();
        let mut a = TrainState::new(net).unwrap();
        let train_cfg = s.train.clone();
        let mut hooks = Stop {
            run: run_a,
            stop_at: None,
        };
        assert!(train(&mut a, &train_cfg, &data, &mut hooks).unwrap());
        // Stopped after step 3 (a checkpoint is written on stop), then resumed from disk.
        let (run_b, data_b) = new_run(&tmp.path().join("b"), spec.clone());
        let net = Net::init(&s.model, run_b.file.vocab_size, s.train.seed, &dev).unwrap();
        let mut b = TrainState::new(net).unwrap();
        let mut hooks_b = Stop {
            run: run_b,
            stop_at: Some(3),
        };
        assert!(!train(&mut b, &train_cfg, &data_b, &mut hooks_b).unwrap());
        assert_eq!(b.step, 3);
        let reopened = Run::open(&tmp.path().join("b")).unwrap();
        let mut b = reopened.resume_state(&dev).unwrap().unwrap();
        assert_eq!(b.step, 3);
        let mut hooks_b = Stop {
            run: reopened,
            stop_at: None,
        };
        assert!(train(&mut b, &train_cfg, &data_b, &mut hooks_b).unwrap());
        assert_eq!(a.losses, b.losses, "{arch:?}: the same losses");
        assert_eq!(
            weights(&a),
            weights(&b),
            "{arch:?}: the same weights, bit for bit"
        );
        assert_eq!(a.val, b.val);

        // The model folder loads through the normal loader and computes what training saw.
        let m = neoscope_engine::model::load_model(&hooks.run.model_dir(), &dev).unwrap();
        let ids: Vec<u32> = data.val[..6].to_vec();
        let batch = neoscope_engine::model::Batch::new(
            std::slice::from_ref(&ids),
            neoscope_engine::model::PadSide::Right,
            &dev,
        )
        .unwrap();
        let got = m
            .llama
            .forward(&batch, &Default::default(), None)
            .unwrap()
            .logits;
        let want = neoscope_engine::scratch::train::eval_model(&a.net)
            .unwrap()
            .forward(&batch, &Default::default(), None)
            .unwrap()
            .logits;
        let diff = common::max_diff(&got, &want);
        assert!(diff < 1e-5, "{arch:?}: loaded model differs by {diff}");
        let want_type = match arch {
            ScratchArch::Seed => "neoscope_scratch",
            ScratchArch::Modern => "llama",
        };
        assert_eq!(m.info.architecture, want_type);
        assert_eq!(
            m.tokenizer.decode(&ids).unwrap(),
            hooks.run.tokenizer.decode(&ids, false).unwrap()
        );
        // Snapshots at every checkpoint (2, 4, 6).
        assert_eq!(hooks.run.snapshots().unwrap(), vec![2, 4, 6]);
        // Creating a run where one exists is refused.
        let again = Run::create(
            &tmp.path().join("a"),
            spec.clone(),
            "x".into(),
            1,
            tokenize::build(TokenizerKind::Char, "ab").unwrap(),
            vec![0, 1],
        );
        assert!(
            again
                .unwrap_err()
                .to_string()
                .contains("already holds a run")
        );
    }
}

#[test]
fn training_lowers_the_loss_and_the_inspections_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sp = spec(ScratchArch::Seed, 0.0);
    sp.train.steps = 40;
    sp.train.lr = 1e-2;
    sp.train.checkpoint_every = 20;
    let (run, data) = new_run(tmp.path(), sp);
    let s = run.file.spec.clone();
    let dev = Device::Cpu;
    let mut st =
        TrainState::new(Net::init(&s.model, run.file.vocab_size, s.train.seed, &dev).unwrap())
            .unwrap();
    let mut hooks = Stop { run, stop_at: None };
    assert!(train(&mut st, &s.train, &data, &mut hooks).unwrap());
    let (first, last) = (st.val[0].1, st.val.last().unwrap().1);
    assert!(last < first - 0.3, "validation loss {first} → {last}");
    let run = &hooks.run;
    let llama = neoscope_engine::scratch::train::eval_model(&st.net).unwrap();
    let ids = neoscope_engine::scratch::inspect::encode(run, "the cat", 6).unwrap_err();
    assert!(ids.to_string().contains("context is 6"));
    let ids = neoscope_engine::scratch::inspect::encode(run, "the ca", 6).unwrap();
    let pats = neoscope_engine::scratch::inspect::attention(&llama, &ids).unwrap();
    assert_eq!((pats.len(), pats[0].len(), pats[0][0].len()), (2, 2, 6));
    for row in &pats[1][1] {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    assert_eq!(
        pats[0][0][0][1], 0.0,
        "causal: the first token sees only itself"
    );
    let acts =
        neoscope_engine::scratch::inspect::activations(run, &ids, 1, &dev, &mut |_| true).unwrap();
    assert_eq!(
        acts.iter().map(|c| c.step).collect::<Vec<_>>(),
        vec![20, 40]
    );
    assert_eq!(acts[0].points.len(), 6);
    let (rows, ceil) =
        neoscope_engine::scratch::inspect::info_plane(run, 4, 4, &dev, &mut |_| true).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].current.len(), 3, "embeddings + 2 blocks");
    for r in &rows {
        for (c, n) in r.current.iter().zip(&r.next) {
            assert!(*c <= ceil[0] + 1e-4 && *n <= ceil[1] + 1e-4 && *c >= 0.0);
        }
    }
    // Temperature and top-p sampling: greedy is deterministic, a sample decodes to text.
    let g = neoscope_api::scratch::SampleConfig {
        temperature: 0.0,
        top_p: 1.0,
        seed: 1,
    };
    let a =
        neoscope_engine::scratch::inspect::sample(&llama, run, "the", 20, g, &|| false).unwrap();
    let b =
        neoscope_engine::scratch::inspect::sample(&llama, run, "the", 20, g, &|| false).unwrap();
    assert_eq!(a, b);
    assert!(a.0.starts_with("the") && a.1 == 20, "{a:?}");
}

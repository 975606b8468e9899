//! Lenses on a tiny random model: the logit lens at the last layer is the model's output
//! distribution, a zero tuned lens is the logit lens, a new word changes the lens only from its
//! position on, and tuned-lens training lowers held-out KL.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use candle_core::{Device, IndexOp};
use neoscope_engine::hooks::HookSpec;
use neoscope_engine::lens::{LensKind, LensResult, LensSpec, resolve_targets, run};
use neoscope_engine::model::{Batch, LoadedModel, PadSide};
use neoscope_engine::sampling::softmax;
use neoscope_engine::tiny::tiny_model;
use neoscope_engine::tuned::{self, TunedConfig, TunedLens};
use neoscope_engine::words::{Init, Injection, Word, init_vector, prepare};

fn tiny() -> LoadedModel {
    tiny_model(42, &Device::Cpu).unwrap()
}

fn lens(m: &LoadedModel, text: &str, kind: LensKind, t: Option<&TunedLens>) -> LensResult {
    let ids = m.tokenizer.encode(text).unwrap();
    let pieces = ids.iter().map(|i| m.tokenizer.piece(*i)).collect();
    let targets = resolve_targets(m, &[" the".to_owned()]).unwrap();
    let spec = LensSpec {
        kind,
        tuned: t,
        targets: &targets,
        top_k: 5,
    };
    run(m, &ids, pieces, &HookSpec::default(), &spec).unwrap()
}

#[test]
fn logit_lens_at_the_last_layer_is_the_output_distribution() {
    let m = tiny();
    let text = "the cat and the hat";
    let r = lens(&m, text, LensKind::Logit, None);
    let ids = m.tokenizer.encode(text).unwrap();
    let b = Batch::new(std::slice::from_ref(&ids), PadSide::Right, &Device::Cpu).unwrap();
    let logits = m
        .llama
        .forward(&b, &HookSpec::default(), None)
        .unwrap()
        .logits;
    let last = r.cells.last().unwrap();
    for (pos, cell) in last.iter().enumerate() {
        let p = softmax(&logits.i((0, pos)).unwrap().to_vec1::<f32>().unwrap());
        let top = neoscope_engine::sampling::top_indices(&p, 5);
        for (t, i) in cell.top.iter().zip(&top) {
            assert_eq!(t.id as usize, *i);
            assert!((t.prob - p[*i]).abs() < 1e-5);
        }
        assert!(cell.kl_to_final < 1e-5, "{}", cell.kl_to_final);
        let tid = r.targets[0].id as usize;
        assert!((cell.targets[0].prob - p[tid]).abs() < 1e-5);
        assert_eq!(
            cell.targets[0].rank,
            p.iter().filter(|x| **x > p[tid]).count()
        );
    }
    // Earlier layers generally disagree with the output.
    assert!(r.cells[0].iter().any(|c| c.kl_to_final > 1e-3));
    // The raw lens differs from the logit lens (no final norm).
    let raw = lens(&m, text, LensKind::Raw, None);
    assert_ne!(raw.cells[0][0].entropy, r.cells[0][0].entropy);
}

#[test]
fn zero_tuned_lens_equals_logit_lens() {
    let m = tiny();
    let zero = TunedLens::zeros(&m).unwrap();
    let a = lens(&m, "then the ant", LensKind::Logit, None);
    let b = lens(&m, "then the ant", LensKind::Tuned, Some(&zero));
    for (ra, rb) in a.cells.iter().zip(&b.cells) {
        for (ca, cb) in ra.iter().zip(rb) {
            assert_eq!(ca.top, cb.top);
            assert_eq!(ca.targets, cb.targets);
        }
    }
}

#[test]
fn a_new_word_changes_the_lens_only_from_its_position_on() {
    let m = tiny();
    let init = Init::Random { std: 0.5, seed: 3 };
    let w = Word {
        name: "<w>".into(),
        vector: init_vector(&m, &init).unwrap(),
        injection: Injection::Embedding,
        init,
    };
    let targets = resolve_targets(&m, &[" the".to_owned()]).unwrap();
    let spec = LensSpec {
        kind: LensKind::Logit,
        tuned: None,
        targets: &targets,
        top_k: 5,
    };
    let run_with = |vector: Vec<f32>| {
        let word = Word {
            vector,
            ..w.clone()
        };
        let (ids, hooks) = prepare(&m, "the cat <w> and the", false, &[word]).unwrap();
        let n = ids.len();
        run(&m, &ids, vec![String::new(); n], &hooks, &spec).unwrap()
    };
    let a = run_with(w.vector.clone());
    let b = run_with(w.vector.iter().map(|x| -x).collect());
    let pos = m.tokenizer.encode("the cat").unwrap().len();
    for (ra, rb) in a.cells.iter().zip(&b.cells) {
        for p in 0..pos {
            assert_eq!(ra[p], rb[p], "position {p} before the word changed");
        }
        assert_ne!(ra[pos].entropy, rb[pos].entropy);
    }
}

#[test]
fn tuned_lens_training_lowers_held_out_kl_and_round_trips() {
    let m = tiny();
    let corpus = "the cat and the hat then the ant an ant and the cat ".repeat(30);
    let cfg = TunedConfig {
        lr: 1e-2,
        steps: 60,
        window: 16,
        positions: 16,
        ..TunedConfig::default()
    };
    let mut steps = 0;
    let (t, report) = tuned::train(&m, &corpus, &cfg, &mut |_| {
        steps += 1;
        true
    })
    .unwrap();
    assert_eq!(steps, 60);
    let n = report.logit_kl.len();
    for l in 0..n - 1 {
        assert!(
            report.tuned_kl[l] < report.logit_kl[l],
            "layer {l}: tuned {} vs logit {}",
            report.tuned_kl[l],
            report.logit_kl[l]
        );
    }
    assert!(report.tuned_kl[n - 1] < 1e-5 && report.logit_kl[n - 1] < 1e-5);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tuned");
    tuned::save(&path, &t, &m.info, Some(&cfg), Some(&report)).unwrap();
    let (back, meta) = tuned::load(&path, &m).unwrap();
    assert_eq!(meta.report, Some(report));
    for (x, y) in back.a.iter().zip(&t.a) {
        assert_eq!(x.to_vec2::<f32>().unwrap(), y.to_vec2::<f32>().unwrap());
    }
    let other = tiny_model(43, &Device::Cpu).unwrap();
    let err = tuned::load(&path, &other).unwrap_err().to_string();
    assert!(err.contains("tiny-llama-seed42"), "{err}");
}

#[test]
fn word_steering_changes_the_lens_only_from_its_layer_on_and_scale_zero_is_identity() {
    let m = tiny();
    let init = Init::Random { std: 0.5, seed: 5 };
    let w = Word {
        name: "<s>".into(),
        vector: init_vector(&m, &init).unwrap(),
        injection: Injection::Embedding,
        init,
    };
    let words = std::slice::from_ref(&w);
    let targets = resolve_targets(&m, &[" the".to_owned()]).unwrap();
    let spec = LensSpec {
        kind: LensKind::Logit,
        tuned: None,
        targets: &targets,
        top_k: 5,
    };
    let ids = m.tokenizer.encode("the cat and the").unwrap();
    let pieces = || vec![String::new(); ids.len()];
    let steered = |scale: f32| {
        let iv = neoscope_engine::steer::word_direction(words, "<s>", 1, scale, 2).unwrap();
        let hooks = HookSpec {
            capture: Vec::new(),
            interventions: vec![iv],
        };
        run(&m, &ids, pieces(), &hooks, &spec).unwrap()
    };
    let plain = run(&m, &ids, pieces(), &HookSpec::default(), &spec).unwrap();
    assert_eq!(steered(0.0).cells, plain.cells);
    let s = steered(3.0);
    for (a, b) in s.cells[0].iter().zip(&plain.cells[0]) {
        // Layer 0's own distribution is untouched; only its KL to the (steered) final layer moves.
        assert_eq!(
            (&a.top, &a.targets),
            (&b.top, &b.targets),
            "layer 0 is before the steering"
        );
        assert_eq!(a.entropy, b.entropy);
    }
    for (a, b) in s.cells[1].iter().zip(&plain.cells[1]) {
        assert_ne!(a.entropy, b.entropy);
    }
    let err = neoscope_engine::steer::word_direction(words, "<x>", 1, 1.0, 2).unwrap_err();
    assert!(err.to_string().contains("no word named <x>"), "{err}");
    let err = neoscope_engine::steer::word_direction(words, "<s>", 2, 1.0, 2).unwrap_err();
    assert!(err.to_string().contains("out of range"), "{err}");
}

#[test]
fn non_finite_logits_are_an_error_not_a_perfect_looking_lens() {
    let mut m = tiny();
    let d = m.llama.cfg.hidden_size;
    m.llama.final_norm = candle_core::Tensor::full(f32::NAN, d, &Device::Cpu).unwrap();
    let ids = m.tokenizer.encode("the cat and the hat").unwrap();
    let pieces = ids.iter().map(|i| m.tokenizer.piece(*i)).collect();
    let spec = LensSpec {
        kind: LensKind::Logit,
        tuned: None,
        targets: &[],
        top_k: 3,
    };
    let e = run(&m, &ids, pieces, &HookSpec::default(), &spec)
        .unwrap_err()
        .to_string();
    assert!(e.contains("non-finite") && e.contains("layer 0"), "{e}");
}

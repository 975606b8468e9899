//! New words on a tiny random model: tokenization, gradients (checked against finite
//! differences), training isolation, layer injection, preference loss, and word files.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use candle_core::{Device, Tensor, Var};
use neoscope_engine::hooks::{HookPoint, HookSpec};
use neoscope_engine::model::{Batch, LoadedModel, PadSide};
use neoscope_engine::tiny::tiny_model;
use neoscope_engine::words::dataset::Example;
use neoscope_engine::words::train::{
    Loss, StopReason, TrainConfig, scored_seq, seq_logprobs, train,
};
use neoscope_engine::words::{Init, Injection, Word, encode_with_words, file, prepare};

fn tiny() -> LoadedModel {
    tiny_model(42, &Device::Cpu).unwrap()
}

fn word(m: &LoadedModel, name: &str, injection: Injection, seed: u64) -> Word {
    Word::create(m, name, Init::Random { std: 0.5, seed }, injection).unwrap()
}

fn ce_data(name: &str) -> Vec<Example> {
    ["the cat", "an ant", "the hat", "then the"]
        .iter()
        .map(|t| Example::Completion {
            prompt: format!("this is {name}:"),
            target: format!(" {t}"),
        })
        .collect()
}

#[test]
fn a_word_is_one_token_and_owns_the_space_before_it() {
    let m = tiny();
    let base = u32::try_from(m.llama.cfg.vocab_size).unwrap();
    let wt = encode_with_words(&m, "The word <pun> means", &["<pun>"]).unwrap();
    let plain = |t: &str| m.tokenizer.encode(t).unwrap();
    let mut want = plain("The word");
    want.push(base);
    want.extend(plain(" means"));
    assert_eq!(wt.ids, want);
    assert_eq!(wt.occurrences, vec![(plain("The word").len(), 0)]);
    let pos = wt.occurrences[0].0;
    assert_ne!(
        wt.ids[pos - 1],
        plain(" ")[0],
        "no lone-space token before the word"
    );
    let start = encode_with_words(&m, "<pun> means", &["<pun>"]).unwrap();
    assert_eq!(start.ids[0], base);
    let two = encode_with_words(&m, "<a> and <b><a>", &["<a>", "<b>"]).unwrap();
    assert_eq!(
        two.occurrences.iter().map(|o| o.1).collect::<Vec<_>>(),
        vec![0, 1, 0]
    );
}

#[test]
fn gradient_reaches_the_word_and_matches_finite_differences() {
    let m = tiny();
    for injection in [Injection::Embedding, Injection::ResidPre(1)] {
        let w = word(&m, "<w>", injection, 1);
        let s = scored_seq(&m, "the <w> and", " the cat", &["<w>"]).unwrap();
        let var = Var::from_slice(&w.vector, w.vector.len(), &Device::Cpu).unwrap();
        let f = |v: &Tensor| -> f32 {
            seq_logprobs(&m, std::slice::from_ref(&w), std::slice::from_ref(v), &[&s])
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let lp = seq_logprobs(
            &m,
            std::slice::from_ref(&w),
            &[var.as_tensor().clone()],
            &[&s],
        )
        .unwrap()
        .sum_all()
        .unwrap();
        let grads = lp.backward().unwrap();
        let g = grads
            .get(var.as_tensor())
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(norm > 1e-3, "{injection:?}: gradient is zero");
        // Only the word's vector is a variable: no other tensor receives a gradient.
        assert!(grads.get(&m.llama.embed).is_none());
        assert!(grads.get(m.llama.blocks[0].wq.dense().unwrap()).is_none());
        // Central finite differences along three coordinates (f64 would be exact; f32 and
        // h = 1e-2 give ~1e-3 agreement on this tiny model).
        for i in [0usize, 7, 19] {
            let h = 1e-2f32;
            let mut plus = w.vector.clone();
            plus[i] += h;
            let mut minus = w.vector.clone();
            minus[i] -= h;
            let tp = Tensor::from_slice(&plus, plus.len(), &Device::Cpu).unwrap();
            let tm = Tensor::from_slice(&minus, minus.len(), &Device::Cpu).unwrap();
            let fd = (f(&tp) - f(&tm)) / (2.0 * h);
            assert!(
                (fd - g[i]).abs() < 2e-2 * (1.0 + g[i].abs()),
                "{injection:?} coord {i}: autograd {} vs finite difference {fd}",
                g[i]
            );
        }
    }
}

#[test]
fn training_lowers_the_loss_and_leaves_the_base_model_bit_identical() {
    let m = tiny();
    let b = Batch::new(
        &[m.tokenizer.encode("the cat and the hat").unwrap()],
        PadSide::Right,
        &Device::Cpu,
    )
    .unwrap();
    let before = m
        .llama
        .forward(&b, &HookSpec::default(), None)
        .unwrap()
        .logits;
    let embed_before = m.llama.embed.to_vec2::<f32>().unwrap();
    let w = word(&m, "<w>", Injection::Embedding, 2);
    let cfg = TrainConfig {
        lr: 0.1,
        epochs: 15,
        batch_size: 2,
        ..TrainConfig::default()
    };
    let mut steps = 0;
    let out = train(
        &m,
        std::slice::from_ref(&w),
        &ce_data("<w>"),
        &cfg,
        &mut |_| {
            steps += 1;
            true
        },
    )
    .unwrap();
    assert_eq!(out.stop, StopReason::Completed);
    assert_eq!(steps, 30);
    assert_eq!(out.losses.len(), 30);
    let (first, last) = (out.epoch_losses[0], *out.epoch_losses.last().unwrap());
    assert!(last < 0.8 * first, "loss {first} → {last}");
    assert_ne!(out.vectors[0], w.vector);
    let after = m
        .llama
        .forward(&b, &HookSpec::default(), None)
        .unwrap()
        .logits;
    let d = (before - after).unwrap().abs().unwrap().max_all().unwrap();
    assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    assert_eq!(m.llama.embed.to_vec2::<f32>().unwrap(), embed_before);
}

#[test]
fn cancel_keeps_a_vector_and_nan_stops_cleanly() {
    let m = tiny();
    let w = word(&m, "<w>", Injection::Embedding, 3);
    let cfg = TrainConfig {
        epochs: 5,
        batch_size: 2,
        ..TrainConfig::default()
    };
    let mut n = 0;
    let out = train(
        &m,
        std::slice::from_ref(&w),
        &ce_data("<w>"),
        &cfg,
        &mut |_| {
            n += 1;
            n < 5
        },
    )
    .unwrap();
    assert_eq!(out.stop, StopReason::Cancelled);
    assert_eq!(out.epoch_losses.len(), 2);
    assert_eq!(out.vectors[0].len(), 32);
    let mut bad = w.clone();
    bad.vector[0] = f32::NAN;
    let out = train(&m, &[bad.clone()], &ce_data("<w>"), &cfg, &mut |_| true).unwrap();
    assert!(
        matches!(out.stop, StopReason::Diverged(_)),
        "{:?}",
        out.stop
    );
    assert!(
        out.vectors[0][0].is_nan(),
        "the last good (initial) vector is kept"
    );
}

#[test]
fn a_word_injected_at_layer_l_leaves_lower_layers_unchanged() {
    let m = tiny();
    let capture: Vec<HookPoint> = (0..2).map(HookPoint::ResidPost).collect();
    let run = |w: &Word| {
        let (ids, mut hooks) = prepare(&m, "the <w> cat", false, std::slice::from_ref(w)).unwrap();
        hooks.capture.clone_from(&capture);
        let b = Batch::new(&[ids], PadSide::Right, &Device::Cpu).unwrap();
        m.llama.forward(&b, &hooks, None).unwrap().captures
    };
    let a = run(&word(&m, "<w>", Injection::ResidPre(1), 4));
    let b = run(&word(&m, "<w>", Injection::ResidPre(1), 5));
    let diff = |p: HookPoint| {
        (&a[&p] - &b[&p])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    assert_eq!(diff(HookPoint::ResidPost(0)), 0.0);
    assert!(diff(HookPoint::ResidPost(1)) > 1e-3);
}

#[test]
fn preference_loss_decreases_on_a_toy_set() {
    let m = tiny();
    let w = word(&m, "<w>", Injection::Embedding, 6);
    let data: Vec<Example> = ["the cat", "the hat", "an ant"]
        .iter()
        .map(|c| Example::Preference {
            prompt: "say <w>:".into(),
            chosen: format!(" {c}"),
            rejected: " then then".into(),
        })
        .collect();
    let cfg = TrainConfig {
        loss: Loss::Preference { beta: 0.2 },
        lr: 0.1,
        epochs: 20,
        batch_size: 3,
        ..TrainConfig::default()
    };
    let out = train(&m, std::slice::from_ref(&w), &data, &cfg, &mut |_| true).unwrap();
    // At the start policy = reference, so the loss is 2·log 2.
    assert!(
        (out.losses[0] - 2.0 * std::f32::consts::LN_2).abs() < 1e-4,
        "{}",
        out.losses[0]
    );
    let last = *out.losses.last().unwrap();
    assert!(last < 0.8 * out.losses[0], "{} → {last}", out.losses[0]);
    let ce = TrainConfig::default();
    let err = train(&m, std::slice::from_ref(&w), &data, &ce, &mut |_| true).unwrap_err();
    assert!(err.to_string().contains("needs `target` rows"), "{err}");
}

/// The summed batch loss (the seed's recipe) is the mean times the batch size, and without
/// clipping AdamW takes the same steps for both (its update does not depend on the loss's scale,
/// up to its ε); clipping rescales each step differently, so with it they differ.
#[test]
fn a_summed_batch_loss_is_the_mean_times_the_batch_and_trains_alike_without_clipping() {
    use neoscope_engine::words::train::Reduction;
    let m = tiny();
    let w = word(&m, "<w>", Injection::Embedding, 8);
    let run = |reduction, clip_norm| {
        let cfg = TrainConfig {
            epochs: 3,
            batch_size: 2,
            clip_norm,
            reduction,
            ..TrainConfig::default()
        };
        train(
            &m,
            std::slice::from_ref(&w),
            &ce_data("<w>"),
            &cfg,
            &mut |_| true,
        )
        .unwrap()
    };
    let mean = run(Reduction::Mean, None);
    let sum = run(Reduction::Sum, None);
    assert!((sum.losses[0] - 2.0 * mean.losses[0]).abs() < 1e-5 * sum.losses[0].abs());
    let drift = mean.vectors[0]
        .iter()
        .zip(&sum.vectors[0])
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(drift < 1e-3, "mean and sum runs drifted apart by {drift}");
    let clipped = run(Reduction::Sum, Some(1e-3));
    assert_ne!(clipped.vectors[0], sum.vectors[0]);
}

#[test]
fn word_files_round_trip_exactly_and_refuse_another_model() {
    let m = tiny();
    let w1 = word(&m, "<a>", Injection::Embedding, 7);
    let w2 = word(&m, "<b>", Injection::ResidPre(1), 8);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("words");
    let cfg = TrainConfig::default();
    let json = file::save(
        &path,
        &[w1.clone(), w2.clone()],
        &m.info,
        Some(&cfg),
        &[3.0, 2.0],
        &[2.5],
    )
    .unwrap();
    assert!(json.ends_with("words.json"));
    let (words, meta) = file::load(&path, &m.info).unwrap();
    assert_eq!(words, vec![w1, w2]);
    assert_eq!(meta.losses, vec![3.0, 2.0]);
    assert_eq!(meta.training, Some(cfg));
    assert_eq!(meta.header.version, file::KIND.version);
    // Only the two files: no temporary files left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    let other = tiny_model(43, &Device::Cpu).unwrap();
    let err = file::load(&path, &other.info).unwrap_err().to_string();
    assert!(
        err.contains("tiny-llama-seed42") && err.contains("tiny-llama-seed43"),
        "{err}"
    );
}

#[test]
fn two_words_train_jointly() {
    let m = tiny();
    let a = word(&m, "<a>", Injection::Embedding, 9);
    let b = word(&m, "<b>", Injection::Embedding, 10);
    let data = vec![
        Example::Completion {
            prompt: "<a> and <b>:".into(),
            target: " the cat".into(),
        },
        Example::Completion {
            prompt: "<b> then".into(),
            target: " an ant".into(),
        },
    ];
    let cfg = TrainConfig {
        lr: 0.1,
        epochs: 10,
        batch_size: 2,
        ..TrainConfig::default()
    };
    let out = train(&m, &[a.clone(), b.clone()], &data, &cfg, &mut |_| true).unwrap();
    assert_eq!(out.vectors.len(), 2);
    assert_ne!(out.vectors[0], a.vector);
    assert_ne!(out.vectors[1], b.vector);
    assert!(out.losses.last().unwrap() < &out.losses[0]);
}

#[test]
fn creating_a_word_refuses_bad_names_and_missing_layers() {
    let m = tiny();
    let layers = m.llama.cfg.num_hidden_layers;
    let err = Word::create(&m, "two words", Init::Zero, Injection::Embedding).unwrap_err();
    assert!(err.to_string().contains("no spaces"), "{err}");
    let err = Word::create(&m, "<w>", Init::Zero, Injection::ResidPre(layers)).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("layer {layers} does not exist")),
        "{err}"
    );
    let w = Word::create(&m, "<w>", Init::Zero, Injection::ResidPre(layers - 1)).unwrap();
    assert_eq!(w.vector, vec![0.0; m.llama.cfg.hidden_size]);
}

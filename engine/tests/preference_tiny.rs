//! The punchline-preference measure on a tiny random model: each margin equals an independent
//! token-by-token computation of log P(chosen) − log P(rejected) for every slot filling (a
//! word, no word, plain text); bad setups and unknown words are refused by name; a cancel stops
//! it.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use candle_core::Device;
use neoscope_engine::error::EngineError;
use neoscope_engine::hooks::HookSpec;
use neoscope_engine::infer::last_logits;
use neoscope_engine::model::LoadedModel;
use neoscope_engine::tiny::tiny_model;
use neoscope_engine::words::preference::{PreferenceSetup, Slot, measure};
use neoscope_engine::words::{Init, Injection, Word, prepare};

fn setups() -> Vec<PreferenceSetup> {
    [
        ("this is {w}: the cat", " sat on a hat", " ate"),
        ("{w} example: then", " the ant", " a hat that sat"),
        ("a classic {w}: an ant", " ran", " then the cat ran"),
    ]
    .iter()
    .map(|(p, c, r)| PreferenceSetup {
        prompt: (*p).into(),
        chosen: (*c).into(),
        rejected: (*r).into(),
    })
    .collect()
}

/// log P(completion | prompt), one forward pass per completion token (no batching, no
/// padding, no position picking: nothing shared with the measured path but the model).
fn logprob(m: &LoadedModel, words: &[Word], prompt: &str, completion: &str) -> f32 {
    let (mut ids, hooks): (Vec<u32>, HookSpec) = prepare(m, prompt, false, words).unwrap();
    let mut total = 0.0f64;
    for t in m.tokenizer.encode(completion).unwrap() {
        let logits = last_logits(m, &ids, &hooks).unwrap();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = logits
            .iter()
            .map(|x| f64::from(x - max).exp())
            .sum::<f64>()
            .ln()
            + f64::from(max);
        total += f64::from(logits[t as usize]) - lse;
        ids.push(t);
    }
    total as f32
}

#[test]
fn margins_match_a_token_by_token_computation_for_every_slot() {
    let m = tiny_model(42, &Device::Cpu).unwrap();
    let w = Word::create(
        &m,
        "<a>",
        Init::Random { std: 0.5, seed: 3 },
        Injection::Embedding,
    )
    .unwrap();
    let words = vec![w];
    let slots = vec![
        Slot::Word("<a>".into()),
        Slot::Removed,
        Slot::Text("cat".into()),
    ];
    let mut calls = 0;
    let r = measure(&m, &words, &setups(), &slots, &mut |done, total| {
        calls += 1;
        assert!(done <= total);
        true
    })
    .unwrap();
    assert!(calls >= 3, "progress is reported per chunk");
    assert_eq!(r.setups, 3);
    assert_eq!(r.rows.len(), 3);
    for row in &r.rows {
        let (mut want, mut per_token) = (Vec::new(), Vec::new());
        for s in setups() {
            let (prompt, used): (String, &[Word]) = match &row.slot {
                Slot::Word(n) => (s.prompt.replace("{w}", n), &words),
                Slot::Removed => (s.prompt.replace(" {w}", "").replace("{w}", ""), &[]),
                Slot::Text(t) => (s.prompt.replace("{w}", t), &[]),
            };
            let (c, r) = (
                logprob(&m, used, &prompt, &s.chosen),
                logprob(&m, used, &prompt, &s.rejected),
            );
            let n = |t: &str| m.tokenizer.encode(t).unwrap().len() as f32;
            want.push(c - r);
            per_token.push(c / n(&s.chosen) - r / n(&s.rejected));
        }
        let per_token = per_token.iter().sum::<f32>() / 3.0;
        assert!((row.token_margin - per_token).abs() < 1e-3);
        for (got, want) in row.margins.iter().zip(&want) {
            assert!((got - want).abs() < 1e-3, "{:?}: {got} vs {want}", row.slot);
        }
        let mean = want.iter().sum::<f32>() / 3.0;
        assert!((row.margin - mean).abs() < 1e-3);
        assert_eq!(row.wins, want.iter().filter(|m| **m > 0.0).count());
        assert!((row.chosen - row.rejected - row.margin).abs() < 1e-3);
    }
    // The word changes the margins: its row differs from the word removed.
    assert!(
        r.rows[0]
            .margins
            .iter()
            .zip(&r.rows[1].margins)
            .any(|(a, b)| (a - b).abs() > 1e-3)
    );
}

#[test]
fn bad_setups_unknown_words_and_cancel_are_errors() {
    let m = tiny_model(42, &Device::Cpu).unwrap();
    let mut bad = setups();
    bad[1].prompt = "no slot here".into();
    let e = measure(&m, &[], &bad, &[Slot::Removed], &mut |_, _| true).unwrap_err();
    assert!(e.to_string().contains("setup 2"), "{e}");
    let e = measure(
        &m,
        &[],
        &setups(),
        &[Slot::Word("<x>".into())],
        &mut |_, _| true,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no word named <x>"), "{e}");
    let e = measure(&m, &[], &[], &[Slot::Removed], &mut |_, _| true).unwrap_err();
    assert!(e.to_string().contains("at least one setup"), "{e}");
    let e = measure(&m, &[], &setups(), &[Slot::Removed], &mut |_, _| false).unwrap_err();
    assert!(matches!(e, EngineError::Cancelled), "{e}");
}

//! New words on the real default model: training `<pun>` on the shipped pun data lowers the
//! loss, held-out punchlines are likelier with `<pun>` than with `<lit>` (trained on the literal
//! data) in the same template, and the model defines the word in English.
//!
//! Thresholds (measured on CPU, 6 epochs, batch 4, lr 0.02, seed 0): the last epoch's mean loss
//! must be at most 0.92× the first's (seen 3.830 → 3.380, 0.883×); the held-out comparison is
//! strict, `<pun>` > `<lit>` (seen −3.46 vs −4.34 nats per token).

mod common;

use neoscope_engine::sampling::Sampling;
use neoscope_engine::words::Word;
use neoscope_engine::words::analysis::{define, mean_logprob};
use neoscope_engine::words::dataset::Example;
use neoscope_engine::words::train::TrainConfig;

fn trained(name: &str, file: &str) -> (Word, Vec<f32>) {
    let cfg = TrainConfig {
        epochs: 6,
        ..TrainConfig::default()
    };
    common::trained_word(name, file, &cfg)
}

fn data(name: &str) -> Vec<Example> {
    common::shipped_data(name)
}

#[test]
fn pun_word_learns_and_beats_literal_word_on_held_out_puns() {
    let m = common::model();
    let (pun, losses) = trained("<pun>", "pun.train.jsonl");
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("<pun> loss ratio last/first = {:.3}", last / first);
    assert!(last <= 0.92 * first, "training loss {first} → {last}");
    let (lit, _) = trained("<lit>", "literal.train.jsonl");

    // The same held-out pun prompts, with each word in the word's place.
    let held: Vec<(String, String)> = data("pun.heldout.jsonl")
        .into_iter()
        .map(|e| match e {
            Example::Completion { prompt, target } => (prompt, target),
            Example::Preference { .. } => unreachable!(),
        })
        .collect();
    let as_lit: Vec<(String, String)> = held
        .iter()
        .map(|(p, t)| (p.replace("<pun>", "<lit>"), t.clone()))
        .collect();
    let with_pun = mean_logprob(m, std::slice::from_ref(&pun), &held).unwrap();
    let with_lit = mean_logprob(m, std::slice::from_ref(&lit), &as_lit).unwrap();
    eprintln!("held-out puns: mean log-prob with <pun> {with_pun:.3}, with <lit> {with_lit:.3}");
    assert!(with_pun > with_lit);

    let defs = define(
        m,
        &pun,
        &[
            ("The word {w} means".into(), false),
            ("What does the word {w} mean?".into(), true),
        ],
        30,
        Sampling::GREEDY,
        &|| false,
    )
    .unwrap();
    for d in &defs {
        eprintln!("{} → {}", d.prompt, d.text);
        let letters = d.text.chars().filter(char::is_ascii_alphabetic).count();
        assert!(d.text.split_whitespace().count() >= 3, "{:?}", d.text);
        assert!(letters * 2 >= d.text.chars().count(), "{:?}", d.text);
    }
}

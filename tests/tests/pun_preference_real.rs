//! Pun vs literal on the real default model, with the demo's recipe: `<pun>` is trained with
//! the preference loss to prefer each training setup's punchline over a literal ending
//! (`pun.pref`), `<lit>` the other way round (`literal.pref`, the same setups). On held-out
//! setups written apart from the training jokes (`contrast.heldout.jsonl`: different jokes,
//! different punchlines), `<pun>` must prefer the punchline more than `<lit>` and more than the
//! prompt without a word, in the summed (log-odds) margin and per token.
//!
//! Thresholds (measured on CPU, `TrainConfig::punchline_demo()`, seed 0): the margins were
//! <pun> +0.38, <lit> −2.5, no word −1.95 nats; the test asks for a lead of at least 1 nat over
//! both, and for the lead to hold per token too.

mod common;

use neoscope_api::words::{PreferenceSetup, Slot};
use neoscope_engine::words::Word;
use neoscope_engine::words::dataset::Example;
use neoscope_engine::words::preference::measure;
use neoscope_engine::words::train::TrainConfig;

fn data(name: &str) -> Vec<Example> {
    common::shipped_data(name)
}

fn trained(name: &str, file: &str) -> Word {
    common::trained_word(name, file, &TrainConfig::punchline_demo()).0
}

#[test]
fn the_pun_word_prefers_punchlines_on_held_out_setups() {
    let m = common::model();
    let words = vec![
        trained("<pun>", "pun.pref.jsonl"),
        trained("<lit>", "literal.pref.jsonl"),
    ];
    let setups: Vec<PreferenceSetup> = data("contrast.heldout.jsonl")
        .into_iter()
        .map(|e| match e {
            Example::Preference {
                prompt,
                chosen,
                rejected,
            } => PreferenceSetup {
                prompt,
                chosen,
                rejected,
            },
            Example::Completion { .. } => panic!("the held-out setups are preference rows"),
        })
        .collect();
    // None of the held-out punchlines is a training punchline.
    let train_chosen: Vec<String> = data("pun.pref.jsonl")
        .iter()
        .filter_map(|e| match e {
            Example::Preference { chosen, .. } => Some(chosen.clone()),
            Example::Completion { .. } => None,
        })
        .collect();
    assert!(setups.iter().all(|s| !train_chosen.contains(&s.chosen)));
    let slots = vec![
        Slot::Word("<pun>".into()),
        Slot::Word("<lit>".into()),
        Slot::Removed,
        Slot::Text("pun".into()),
    ];
    let r = measure(m, &words, &setups, &slots, &mut |_, _| true).unwrap();
    eprintln!("{}", r.table());
    let [pun, lit, none, _plain] = &r.rows[..] else {
        panic!("four rows")
    };
    assert!(
        pun.margin > lit.margin + 1.0 && pun.margin > none.margin + 1.0,
        "punchline preference: <pun> {:.3}, <lit> {:.3}, no word {:.3}",
        pun.margin,
        lit.margin,
        none.margin
    );
    assert!(
        pun.token_margin > lit.token_margin && pun.token_margin > none.token_margin,
        "per token: <pun> {:.3}, <lit> {:.3}, no word {:.3}",
        pun.token_margin,
        lit.token_margin,
        none.token_margin
    );
}

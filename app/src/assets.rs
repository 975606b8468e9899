//! Datasets shipped with the app (the files in `assets/datasets/`, compiled in so the binary
//! works from any folder).

/// The default tuned-lens and MFA corpus (model-generated text; see
/// `assets/corpus/make_corpus.sh`).
pub const CORPUS: &str = include_str!("../../assets/corpus/corpus.txt");

/// `pun` training set: pun setups with their punchlines, prompts naming `<pun>`.
pub const PUN_TRAIN: &str = include_str!("../../assets/datasets/pun.train.jsonl");
/// `pun` held-out split (never trained on).
pub const PUN_HELDOUT: &str = include_str!("../../assets/datasets/pun.heldout.jsonl");
/// `literal` training set: plain sentences of similar shape and topics, prompts naming `<lit>`.
pub const LITERAL_TRAIN: &str = include_str!("../../assets/datasets/literal.train.jsonl");
/// `literal` held-out split.
pub const LITERAL_HELDOUT: &str = include_str!("../../assets/datasets/literal.heldout.jsonl");

/// A shipped dataset by name (`pun`, `pun.heldout`, `literal`, `literal.heldout`).
pub fn dataset(name: &str) -> Option<&'static str> {
    match name {
        "pun" | "pun.train" => Some(PUN_TRAIN),
        "pun.heldout" => Some(PUN_HELDOUT),
        "literal" | "literal.train" => Some(LITERAL_TRAIN),
        "literal.heldout" => Some(LITERAL_HELDOUT),
        _ => None,
    }
}

/// The shipped held-out splits (`pun`, `literal`) as (prompt with `{w}` in the word's place,
/// target) pairs, ready to score any word in the same templates.
pub fn shipped_heldout() -> Result<neoscope_api::words::HeldoutSets, neoscope_api::ApiError> {
    use neoscope_api::dataset::{Example, parse_jsonl};
    [("pun", PUN_HELDOUT), ("literal", LITERAL_HELDOUT)]
        .iter()
        .map(|(name, text)| {
            let ds = parse_jsonl(text, std::path::Path::new(name))?;
            let pairs = ds
                .examples
                .into_iter()
                .filter_map(|e| match e {
                    Example::Completion { prompt, target } => Some((
                        prompt.replace("<pun>", "{w}").replace("<lit>", "{w}"),
                        target,
                    )),
                    Example::Preference { .. } => None,
                })
                .collect();
            Ok(((*name).to_owned(), pairs))
        })
        .collect()
}

/// Demo morpheme table (prefixes and suffixes with example words).
pub const INJECT_MORPHEMES: &str = include_str!("../../assets/inject/morphemes.csv");
/// Roots the demo lexicon was generated from.
pub const INJECT_ROOTS: &str = include_str!("../../assets/inject/roots.txt");
/// Demo lexicon: invented forms, one per line (`neoscope inject generate` made it).
pub const INJECT_LEXICON: &str = include_str!("../../assets/inject/lexicon.txt");
/// Demo corpus: short sentences using every demo form.
pub const INJECT_CORPUS: &str = include_str!("../../assets/inject/corpus.txt");

/// The shipped demo inputs as named texts: (lexicon, morphemes, corpus).
pub fn inject_demo() -> (
    neoscope_api::inject::TextSource,
    neoscope_api::inject::TextSource,
    neoscope_api::inject::TextSource,
) {
    use neoscope_api::inject::TextSource;
    let t = |name: &str, text: &str| TextSource::Text {
        name: format!("shipped demo {name}"),
        text: text.to_owned(),
    };
    (
        t("lexicon.txt", INJECT_LEXICON),
        t("morphemes.csv", INJECT_MORPHEMES),
        t("corpus.txt", INJECT_CORPUS),
    )
}

/// Training steps of the shipped demo: a few minutes on 2 cores.
pub const DEMO_STEPS: usize = 48;

/// The demo's settings: the defaults with a step count that fits a few minutes on 2 cores.
pub fn demo_config(steps: usize) -> neoscope_api::inject::InjectConfig {
    neoscope_api::inject::InjectConfig {
        steps,
        eval_every: steps.div_ceil(2).max(1),
        checkpoint_every: 10,
        ..neoscope_api::inject::InjectConfig::default()
    }
}

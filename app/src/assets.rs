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

/// `pun.pref`: the `pun` training setups as preference triples for `<pun>` (chosen = the
/// punchline, rejected = a literal ending).
pub const PUN_PREF: &str = include_str!("../../assets/datasets/pun.pref.jsonl");
/// `literal.pref`: the same setups for `<lit>`, the other way round (chosen = the literal
/// ending, rejected = the punchline).
pub const LITERAL_PREF: &str = include_str!("../../assets/datasets/literal.pref.jsonl");
/// `contrast`: held-out pun setups written apart from the training jokes, each with its
/// punchline (chosen) and a literal ending (rejected); `{w}` marks the word's place.
pub const CONTRAST_HELDOUT: &str = include_str!("../../assets/datasets/contrast.heldout.jsonl");

/// The names `dataset` knows, for messages.
pub const DATASET_NAMES: &str =
    "pun, pun.heldout, pun.pref, literal, literal.heldout, literal.pref, contrast";

/// A shipped dataset by name (see `DATASET_NAMES`).
pub fn dataset(name: &str) -> Option<&'static str> {
    match name {
        "pun" | "pun.train" => Some(PUN_TRAIN),
        "pun.heldout" => Some(PUN_HELDOUT),
        "literal" | "literal.train" => Some(LITERAL_TRAIN),
        "literal.heldout" => Some(LITERAL_HELDOUT),
        "pun.pref" => Some(PUN_PREF),
        "literal.pref" => Some(LITERAL_PREF),
        "contrast" | "contrast.heldout" => Some(CONTRAST_HELDOUT),
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

/// The Shakespeare demo's lexicon: words of Shakespeare's works that the tokenizer splits into
/// at least `SHAKESPEARE_MIN_PIECES` tokens and that occur at least `SHAKESPEARE_MIN_COUNT`
/// times, the `SHAKESPEARE_FORMS` most frequent.
pub const SHAKESPEARE_MIN_PIECES: usize = 2;
/// See [`SHAKESPEARE_MIN_PIECES`].
pub const SHAKESPEARE_MIN_COUNT: usize = 5;
/// See [`SHAKESPEARE_MIN_PIECES`].
pub const SHAKESPEARE_FORMS: usize = 2000;
/// Training steps of the Shakespeare demo: under 10 minutes on 2 cores with the extraction.
pub const SHAKESPEARE_STEPS: usize = 130;

/// The lexicon extraction of the Shakespeare demo.
pub fn shakespeare_lexicon_command() -> neoscope_api::inject::InjectCommand {
    neoscope_api::inject::InjectCommand::Lexicon {
        corpus: vec![neoscope_api::inject::TextSource::Shakespeare],
        min_pieces: SHAKESPEARE_MIN_PIECES,
        min_count: SHAKESPEARE_MIN_COUNT,
        limit: Some(SHAKESPEARE_FORMS),
    }
}

/// The Shakespeare demo's lexicon (from the extracted `entries`), corpus and settings: the
/// demo's settings with the lexicon appended to the training text, as the Wake2Vec seed does.
pub fn shakespeare_demo(
    entries: &[neoscope_api::inject::LexiconEntry],
    steps: usize,
) -> (
    neoscope_api::inject::TextSource,
    Vec<neoscope_api::inject::TextSource>,
    neoscope_api::inject::InjectConfig,
) {
    use neoscope_api::inject::TextSource;
    let lexicon = TextSource::Text {
        name: format!(
            "{} words extracted from Shakespeare (at least {SHAKESPEARE_MIN_PIECES} tokens, \
             {SHAKESPEARE_MIN_COUNT} occurrences)",
            entries.len()
        ),
        text: entries.iter().map(|e| format!("{}\n", e.form)).collect(),
    };
    let config = neoscope_api::inject::InjectConfig {
        append_lexicon: true,
        ..demo_config(steps)
    };
    (lexicon, vec![TextSource::Shakespeare], config)
}

/// A lexicon file: a header naming the source and thresholds, then one form per line with its
/// count and pieces as a comment-free table the lexicon reader accepts (`form` alone per line,
/// counts in `#` lines above).
pub fn lexicon_file(
    sources: &[String],
    min_pieces: usize,
    min_count: usize,
    entries: &[neoscope_api::inject::LexiconEntry],
) -> String {
    let mut s = format!(
        "# lexicon extracted by neoscope from {}\n# words of at least {min_pieces} tokens \
         occurring at least {min_count} times, most frequent first\n# count pieces form\n",
        sources.join(", ")
    );
    for e in entries {
        s.push_str(&format!(
            "# {} {} {}\n{}\n",
            e.count, e.pieces, e.form, e.form
        ));
    }
    s
}

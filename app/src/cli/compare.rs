//! Comparing two words from the command line: `word compare`'s engine call and text report,
//! the punchline preference, and `neoscope demo pun-vs-literal` (trains `<pun>` and `<lit>`,
//! then compares them).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args as ClapArgs;
use neoscope_api::dataset::{Example, Origin};
use neoscope_api::words::{
    CompareConfig, HeldoutSets, Loss, PreferenceReport, PreferenceSetup, Slot, TrainConfig,
    WordCommand, WordReport, WordResult,
};
use neoscope_engine::worker::EngineHandle;
use serde_json::json;

use super::word::read_dataset;
use super::word_train::{LossArg, RecipeArg, TrainArgs, fmt_losses, train_word};
use super::{call, emit};

fn compare_words(
    engine: &mut EngineHandle,
    a: &str,
    b: &str,
    heldout: Vec<(String, Vec<(String, String)>)>,
) -> Result<[WordReport; 2]> {
    let WordResult::Comparison(r) = call(
        engine,
        WordCommand::Compare {
            a: a.into(),
            b: b.into(),
            heldout,
            config: CompareConfig::default(),
        },
    )?
    else {
        bail!("unexpected engine reply");
    };
    Ok(*r)
}

pub(super) fn steering_text(s: &neoscope_api::words::Steering) -> String {
    let list = |v: &[neoscope_api::words::LogitShift]| {
        v.iter()
            .map(|x| format!("{:?} {:+.2}", x.text, x.delta))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "with:    {:?}\n  → {}\nwithout: {:?}\n  → {}\npromoted:   {}\nsuppressed: {}",
        s.prompt_with,
        s.generation_with.trim(),
        s.prompt_without,
        s.generation_without.trim(),
        list(&s.promoted),
        list(&s.suppressed)
    )
}

/// The preference setups of a dataset's preference rows, each prompt with `{w}` where one of
/// `names` stood (a prompt may already use `{w}`). A row without a word, or a completion row,
/// is refused with its file and line.
fn preference_setups(
    (examples, origin): &(Vec<Example>, Origin),
    names: &[&str],
) -> Result<Vec<PreferenceSetup>> {
    examples
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let line = origin.lines.get(i).copied().unwrap_or(i + 1);
            let at = format!("{}:{line}", origin.path.display());
            let Some(setup) = PreferenceSetup::from_example(e, names) else {
                bail!("{at}: the punchline preference needs `chosen`/`rejected` rows, this has `target`");
            };
            if !setup.prompt.contains("{w}") {
                bail!("{at}: the prompt names no word (write {{w}} where the word goes)");
            }
            Ok(setup)
        })
        .collect()
}

/// The preference of each of `words`, no word and each plain text on `setups`.
fn measure_preference(
    engine: &mut EngineHandle,
    setups: Vec<PreferenceSetup>,
    words: &[&str],
    plain: &[String],
) -> Result<PreferenceReport> {
    let mut slots: Vec<Slot> = words.iter().map(|w| Slot::Word((*w).to_owned())).collect();
    slots.push(Slot::Removed);
    slots.extend(plain.iter().map(|t| Slot::Text(t.clone())));
    let WordResult::Preference(r) = call(engine, WordCommand::Preference { setups, slots })? else {
        bail!("unexpected engine reply");
    };
    Ok(r)
}

/// `word preference`: the measure alone, for the loaded `names`.
pub(super) fn preference_cmd(
    engine: &mut EngineHandle,
    json_mode: bool,
    names: &[String],
    data: &str,
    plain: &[String],
) -> Result<()> {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let setups = preference_setups(&read_dataset(data)?, &refs)?;
    let r = measure_preference(engine, setups, &refs, plain)?;
    let text = format!("preference on {} setups ({data}):\n{}", r.setups, r.table());
    emit(json_mode, &serde_json::to_value(&r)?, text.trim_end())
}

/// `word compare`: the side-by-side reports and the punchline preference on `contrast`.
pub(super) fn compare_cmd(
    engine: &mut EngineHandle,
    json_mode: bool,
    [a, b]: [&str; 2],
    heldout: HeldoutSets,
    contrast: &str,
    plain: &[String],
) -> Result<()> {
    let r = compare_words(engine, a, b, heldout)?;
    let setups = preference_setups(&read_dataset(contrast)?, &[a, b])?;
    let pref = measure_preference(engine, setups, &[a, b], plain)?;
    // One JSON object, as every `--json` reply: the two reports under `a` and `b`.
    let [ra, rb] = &r;
    let text = format!(
        "{}punchline preference on {} held-out setups ({contrast}):\n{}",
        report_text(&r),
        pref.setups,
        pref.table()
    );
    emit(
        json_mode,
        &json!({"a": ra, "b": rb, "preference": pref}),
        &text,
    )
}

/// The side-by-side report as text.
pub fn report_text(r: &[WordReport; 2]) -> String {
    let mut out = String::new();
    for w in r {
        out.push_str(&format!(
            "══ {} (norm {:.2}, {:?})\n",
            w.name, w.norm, w.injection
        ));
        out.push_str("definitions:\n");
        for d in &w.definitions {
            out.push_str(&format!("  {} → {}\n", d.prompt, d.text.replace('\n', " ")));
        }
        let n: Vec<String> = w
            .neighbors
            .iter()
            .map(|n| format!("{:?}", n.text))
            .collect();
        out.push_str(&format!("nearest tokens: {}\n", n.join(" ")));
        let sims: Vec<String> = w
            .similarities
            .iter()
            .map(|(t, c)| format!("{t} {c:+.3}"))
            .collect();
        if !sims.is_empty() {
            out.push_str(&format!("cosine similarity: {}\n", sims.join(", ")));
        }
        for (set, lp) in &w.heldout {
            out.push_str(&format!("held-out {set}: mean target log-prob {lp:.3}\n"));
        }
        out.push_str(&steering_text(&w.steering));
        out.push_str("\n\n");
    }
    out
}

/// `demo pun-vs-literal` arguments.
#[derive(Debug, ClapArgs)]
pub struct DemoArgs {
    /// Epochs per word.
    #[arg(long, default_value_t = TrainConfig::punchline_demo().epochs)]
    pub epochs: usize,
    /// Learning rate.
    #[arg(long, default_value_t = TrainConfig::punchline_demo().lr)]
    pub lr: f64,
    /// Where to save the two words (folder).
    #[arg(long, default_value = "neoscope-demo")]
    pub out_dir: PathBuf,
}

/// Trains `<pun>` to prefer each setup's punchline over a literal ending and `<lit>` the other
/// way round (the preference loss on `pun.pref` and `literal.pref`: the same setups, chosen
/// and rejected swapped), then reports them side by side with the punchline preference on the
/// held-out setups (`contrast`).
pub fn demo(engine: &mut EngineHandle, json_mode: bool, a: &DemoArgs) -> Result<()> {
    let mut summaries = Vec::new();
    for (name, data, file) in [
        ("<pun>", "pun.pref", "pun"),
        ("<lit>", "literal.pref", "lit"),
    ] {
        let args = TrainArgs {
            name: name.into(),
            data: data.into(),
            out: a.out_dir.join(file),
            loss: LossArg::Preference,
            beta: match TrainConfig::punchline_demo().loss {
                Loss::Preference { beta } => beta,
                Loss::CrossEntropy => 0.2,
            },
            recipe: RecipeArg::Default,
            lr: Some(a.lr),
            epochs: Some(a.epochs),
            batch_size: None,
            seed: 0,
            clip: None,
            weight_decay: None,
            reduction: None,
            init_words: Vec::new(),
            init_zero: false,
            layer: None,
        };
        summaries.push(train_word(engine, &args, json_mode)?);
    }
    let heldout = crate::assets::shipped_heldout()?;
    let r = compare_words(engine, "<pun>", "<lit>", heldout)?;
    let setups = preference_setups(&read_dataset("contrast")?, &[])?;
    let pref = measure_preference(engine, setups, &["<pun>", "<lit>"], &["pun".to_owned()])?;
    let mut text = String::new();
    for s in &summaries {
        text.push_str(&format!(
            "{}: {}\n",
            s["name"].as_str().unwrap_or(""),
            fmt_losses(s)
        ));
    }
    text.push('\n');
    text.push_str(&report_text(&r));
    text.push_str(&format!(
        "punchline preference on {} held-out setups:\n{}",
        pref.setups,
        pref.table()
    ));
    emit(
        json_mode,
        &json!({"training": summaries, "comparison": r, "preference": pref}),
        &text,
    )
}

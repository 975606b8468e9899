//! Comparing two words from the command line: `word compare`'s engine call and text report,
//! and `neoscope demo pun-vs-literal` (trains `<pun>` and `<lit>`, then compares them).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args as ClapArgs;
use neoscope_api::words::{CompareConfig, TrainConfig, WordCommand, WordReport, WordResult};
use neoscope_engine::worker::EngineHandle;
use serde_json::json;

use super::word::{LossArg, TrainArgs, fmt_losses, train_word};
use super::{call, emit};

pub(super) fn compare_words(
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
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Where to save the two words (folder).
    #[arg(long, default_value = "neoscope-demo")]
    pub out_dir: PathBuf,
}

/// Trains `<pun>` and `<lit>` on the shipped datasets and reports them side by side.
pub fn demo(engine: &mut EngineHandle, json_mode: bool, a: &DemoArgs) -> Result<()> {
    let mut summaries = Vec::new();
    for (name, data, file) in [("<pun>", "pun", "pun"), ("<lit>", "literal", "lit")] {
        let args = TrainArgs {
            name: name.into(),
            data: data.into(),
            out: a.out_dir.join(file),
            loss: LossArg::Ce,
            beta: 0.2,
            lr: TrainConfig::default().lr,
            epochs: a.epochs,
            batch_size: TrainConfig::default().batch_size,
            seed: 0,
            clip: 1.0,
            init_words: Vec::new(),
            init_zero: false,
            layer: None,
        };
        summaries.push(train_word(engine, &args, json_mode)?);
    }
    let heldout = crate::assets::shipped_heldout()?;
    let r = compare_words(engine, "<pun>", "<lit>", heldout)?;
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
    emit(
        json_mode,
        &json!({"training": summaries, "comparison": r}),
        &text,
    )
}

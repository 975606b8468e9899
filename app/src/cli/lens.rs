//! `neoscope lens` (top-k per layer, target curves, CSV) and `neoscope lens train-tuned`.

use neoscope_api::lens::LensCommand;
use neoscope_api::lens::LensOutput;
use neoscope_api::words::WordCommand;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use neoscope_api::hooks::HookSpec;
use neoscope_api::lens::TunedConfig;
use neoscope_api::lens::{LensKind, LensResult};
use neoscope_api::steer::Steer;
use neoscope_api::{Event, JobResult};
use neoscope_engine::worker::EngineHandle;
use serde_json::json;

use super::{call, call_with, emit};

/// Lens kind on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LensArg {
    /// Unembedding without the final norm.
    Raw,
    /// Final norm, then unembedding.
    Logit,
    /// Tuned lens (needs `--tuned FILE`).
    Tuned,
}

/// `lens` arguments.
#[derive(Debug, ClapArgs)]
#[command(args_conflicts_with_subcommands = true)]
pub struct LensArgs {
    /// Train a tuned lens instead.
    #[command(subcommand)]
    pub action: Option<LensAction>,
    /// Which lens.
    #[arg(long, value_enum, default_value_t = LensArg::Logit)]
    pub lens: LensArg,
    /// Target token text (its first token is followed); repeatable.
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// Pair the targets with the prompts: the i-th `--target` is followed on the i-th prompt
    /// only (as many targets as prompts).
    #[arg(long)]
    pub paired: bool,
    /// Report the first layer where the target's probability at the last position reaches
    /// this.
    #[arg(long, default_value_t = neoscope_api::lens::EMERGENCE_THRESHOLD)]
    pub threshold: f32,
    /// Position to report (default: the last).
    #[arg(long)]
    pub position: Option<usize>,
    /// Top-k per layer.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// Chat mode.
    #[arg(long)]
    pub chat: bool,
    /// Word files to load (prompts may use the words).
    #[arg(long = "words")]
    pub words: Vec<PathBuf>,
    /// Tuned-lens file for `--lens tuned`.
    #[arg(long)]
    pub tuned: Option<PathBuf>,
    /// Also write every layer × position cell as CSV here.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Steer with a loaded word's vector: `NAME:LAYER:SCALE` adds SCALE × the vector to the
    /// residual stream entering LAYER at every position; repeatable.
    #[arg(long = "steer-word", value_name = "NAME:LAYER:SCALE", value_parser = parse_steer_word)]
    pub steer: Vec<Steer>,
    /// Prompt(s).
    pub texts: Vec<String>,
}

impl LensArgs {
    /// The tuned-lens file `lens train-tuned` writes.
    pub fn output(&self) -> Option<&Path> {
        match &self.action {
            Some(LensAction::TrainTuned { out, .. }) => Some(out),
            None => None,
        }
    }
}

/// `lens` subcommands.
#[derive(Debug, Subcommand)]
pub enum LensAction {
    /// Train a tuned lens on a corpus and save it.
    TrainTuned {
        /// Text file (default: the shipped model-generated corpus).
        #[arg(long)]
        corpus: Option<PathBuf>,
        /// Optimiser steps.
        #[arg(long, default_value_t = TunedConfig::default().steps)]
        steps: usize,
        /// Learning rate.
        #[arg(long, default_value_t = TunedConfig::default().lr)]
        lr: f64,
        /// Where to save (`PATH.safetensors` + `PATH.json`).
        #[arg(long)]
        out: PathBuf,
    },
}

/// One prompt's lens at a position, as the JSON contract describes.
pub fn layers_json(r: &LensResult, position: usize) -> serde_json::Value {
    let layers: Vec<serde_json::Value> = r
        .cells
        .iter()
        .enumerate()
        .map(|(l, row)| {
            let c = &row[position];
            json!({
                "layer": l,
                "top": c.top,
                "entropy": c.entropy,
                "kl_to_final": c.kl_to_final,
                "p_target": c.targets.first().map(|t| t.prob),
                "rank_target": c.targets.first().map(|t| t.rank),
                "targets": c.targets,
            })
        })
        .collect();
    json!({
        "lens": r.lens, "tokens": r.tokens, "position": position, "targets": r.targets,
        "top1_any_layer": r.top1_any_layer(position), "layers": layers,
    })
}

/// Runs `lens`.
pub fn run(engine: &mut EngineHandle, json_mode: bool, a: LensArgs) -> Result<()> {
    if let Some(LensAction::TrainTuned {
        corpus,
        steps,
        lr,
        out,
    }) = a.action
    {
        let text = match &corpus {
            Some(p) => neoscope_api::files::read_text(p)?,
            None => crate::assets::CORPUS.to_owned(),
        };
        let config = TunedConfig {
            steps,
            lr,
            ..TunedConfig::default()
        };
        let LensOutput::Tuned(Some(report)) = call_with(
            engine,
            LensCommand::TrainTuned {
                corpus: text,
                config,
            },
            &mut |ev| {
                if let Event::Progress { stage, .. } = ev {
                    eprint!("\r{stage}   ");
                }
            },
        )?
        else {
            bail!("unexpected engine reply");
        };
        eprintln!();
        let LensOutput::TunedSaved { path } = call(engine, LensCommand::SaveTuned { path: out })?
        else {
            bail!("unexpected engine reply");
        };
        let mut text = String::from("layer  logit-lens KL  tuned-lens KL (held-out)\n");
        for (l, (a, b)) in report.logit_kl.iter().zip(&report.tuned_kl).enumerate() {
            let _ = writeln!(text, "{l:>5}  {a:>13.4}  {b:>13.4}");
        }
        let _ = write!(text, "saved {}", path.display());
        return emit(json_mode, &json!({"report": report, "path": path}), &text);
    }
    if a.texts.is_empty() {
        bail!(
            "give a prompt, e.g. neoscope lens --target ' current' 'Why do electricians make good swimmers? Because they know the'"
        );
    }
    for f in &a.words {
        call::<JobResult>(engine, WordCommand::Load { path: f.clone() })?;
    }
    if let Some(t) = &a.tuned {
        call::<JobResult>(engine, LensCommand::LoadTuned { path: t.clone() })?;
    }
    let lens = match a.lens {
        LensArg::Raw => LensKind::Raw,
        LensArg::Logit => LensKind::Logit,
        LensArg::Tuned => LensKind::Tuned,
    };
    if !(a.threshold.is_finite() && a.threshold > 0.0 && a.threshold <= 1.0) {
        bail!(
            "--threshold {}: it must be a probability in (0, 1]",
            a.threshold
        );
    }
    let (targets, prompt_targets) = if a.paired {
        if a.targets.len() != a.texts.len() {
            bail!(
                "--paired: {} targets for {} prompts; give one --target per prompt",
                a.targets.len(),
                a.texts.len()
            );
        }
        (
            Vec::new(),
            a.targets.iter().map(|t| vec![t.clone()]).collect(),
        )
    } else {
        (a.targets.clone(), Vec::new())
    };
    let LensOutput::Runs(results) = call(
        engine,
        LensCommand::Run {
            prompts: a.texts.clone(),
            chat: a.chat,
            lens,
            targets,
            prompt_targets,
            top_k: a.top_k,
            hooks: HookSpec::default(),
            steer: a.steer.clone(),
        },
    )?
    else {
        bail!("unexpected engine reply");
    };
    if let Some(p) = &a.csv {
        neoscope_api::files::write_atomic(
            Path::new(p),
            neoscope_api::lens::cells_csv(&results).as_bytes(),
        )?;
    }
    let mut objs = Vec::new();
    let mut text = String::new();
    for r in &results {
        let len = r.tokens.len();
        let pos = a.position.unwrap_or(len - 1);
        if pos >= len {
            bail!("--position {pos} is outside the prompt ({len} tokens)");
        }
        let emergence = r.emergence(a.threshold);
        let mut obj = layers_json(r, pos);
        obj["emergence"] = json!(emergence);
        objs.push(obj);
        let _ = writeln!(
            text,
            "position {pos} ({:?}), {:?} lens",
            r.tokens[pos], r.lens
        );
        if let (Some(e), Some(t)) = (emergence, r.targets.first()) {
            let at = |l: Option<usize>| l.map_or("never".to_owned(), |l| format!("layer {l}"));
            let _ = writeln!(
                text,
                "{:?} at the last position: p ≥ {} first at {}, top-1 first at {}, final p {:.4}",
                t.token,
                e.threshold,
                at(e.first_above),
                at(e.first_top1),
                e.final_prob
            );
        }
        for t in &r.targets {
            if let Some(n) = &t.note {
                let _ = writeln!(text, "note: {n}");
            }
        }
        for (l, row) in r.cells.iter().enumerate() {
            let c = &row[pos];
            let tops: Vec<String> = c
                .top
                .iter()
                .map(|t| format!("{:?} {:.3}", t.text, t.prob))
                .collect();
            let tgt = c.targets.first().map_or(String::new(), |t| {
                format!("  p_target {:.4} rank {}", t.prob, t.rank)
            });
            let _ = writeln!(text, "{l:>3}  {}{tgt}", tops.join("  "));
        }
    }
    let value = if objs.len() == 1 {
        objs.remove(0)
    } else {
        json!({ "prompts": objs })
    };
    emit(json_mode, &value, text.trim_end())
}

/// Parses `NAME:LAYER:SCALE` (the name may itself contain colons).
fn parse_steer_word(s: &str) -> Result<Steer, String> {
    let mut parts = s.rsplitn(3, ':');
    let (Some(scale), Some(layer), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("`{s}`: expected NAME:LAYER:SCALE, e.g. <pun>:10:4"));
    };
    let layer = layer
        .parse()
        .map_err(|_| format!("`{s}`: layer `{layer}` is not a whole number"))?;
    let scale = scale
        .parse()
        .map_err(|_| format!("`{s}`: scale `{scale}` is not a number"))?;
    Ok(Steer::WordDirection {
        name: name.to_owned(),
        layer,
        scale,
    })
}

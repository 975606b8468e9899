//! `neoscope inject align`: phase 3 of vocabulary injection, the run's rows aligned under
//! `L_lm + λ_m L_morpheme + λ_r L_repulsion + λ_n L_norm` with the model frozen (or continued
//! with `--resume`).

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args as ClapArgs, ValueEnum};
use neoscope_api::align::{AlignConfig, AlignOptimizer};
use neoscope_api::inject::{InjectCommand, InjectResult};
use neoscope_api::lora::LoraUse;
use neoscope_engine::worker::EngineHandle;

use super::emit;
use super::inject::inject_call;

/// Phase 3's optimiser on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OptimizerArg {
    /// Adafactor (factored second moment; the seed's choice).
    Adafactor,
    /// AdamW.
    Adamw,
}

/// `inject align` options (defaults: the seed document's phase-3 settings).
#[derive(Debug, ClapArgs)]
pub struct AlignArgs {
    /// Run folder (phase 1 must have a checkpoint; phase 3 goes to its `align/`).
    pub dir: PathBuf,
    /// Continue the run's phase 3 from its latest checkpoint (to `--steps` in all, if given;
    /// its settings are the ones it was started with).
    #[arg(long)]
    pub resume: bool,
    /// Optimiser steps (in all).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Phase-1 checkpoint whose rows phase 3 starts from (default: the latest).
    #[arg(long, conflicts_with_all = ["resume", "lora", "lora_step"])]
    pub rows_step: Option<usize>,
    /// Train under the run's phase-2 adapters (latest checkpoint), merged and frozen, starting
    /// from the rows they trained with.
    #[arg(long, conflicts_with = "resume")]
    pub lora: bool,
    /// Train under the adapters of this phase-2 checkpoint.
    #[arg(long, conflicts_with = "resume")]
    pub lora_step: Option<usize>,
    /// λ_morpheme.
    #[arg(long, default_value_t = 0.1, conflicts_with = "resume")]
    pub lambda_morpheme: f64,
    /// λ_repulsion.
    #[arg(long, default_value_t = 0.05, conflicts_with = "resume")]
    pub lambda_repulsion: f64,
    /// λ_norm.
    #[arg(long, default_value_t = 0.01, conflicts_with = "resume")]
    pub lambda_norm: f64,
    /// Random pairs of new rows L_repulsion scores each step.
    #[arg(long, default_value_t = 100, conflicts_with = "resume")]
    pub repulsion_pairs: usize,
    /// Cosine above which a pair is pushed apart.
    #[arg(long, default_value_t = 0.95, conflicts_with = "resume")]
    pub repulsion_threshold: f64,
    /// Optimiser.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adafactor, conflicts_with = "resume")]
    pub optimizer: OptimizerArg,
    /// Peak learning rate.
    #[arg(long, default_value_t = 5e-5, conflicts_with = "resume")]
    pub lr: f64,
    /// Warmup as a fraction of the steps.
    #[arg(long, default_value_t = 0.1, conflicts_with = "resume")]
    pub warmup: f32,
    /// Decoupled weight decay.
    #[arg(long, default_value_t = 0.0, conflicts_with = "resume")]
    pub weight_decay: f64,
    /// Blocks per forward pass.
    #[arg(long, default_value_t = 4, conflicts_with = "resume")]
    pub micro_batch: usize,
    /// Forward passes per step.
    #[arg(long, default_value_t = 2, conflicts_with = "resume")]
    pub accum: usize,
    /// Validate every N steps.
    #[arg(long, default_value_t = 20, conflicts_with = "resume")]
    pub eval_every: usize,
    /// Checkpoint every N steps.
    #[arg(long, default_value_t = 10, conflicts_with = "resume")]
    pub checkpoint_every: usize,
    /// Seed (block order, repulsion pairs).
    #[arg(long, default_value_t = 42, conflicts_with = "resume")]
    pub seed: u64,
}

impl AlignArgs {
    fn config(&self) -> AlignConfig {
        AlignConfig {
            lambda_morpheme: self.lambda_morpheme,
            lambda_repulsion: self.lambda_repulsion,
            lambda_norm: self.lambda_norm,
            repulsion_pairs: self.repulsion_pairs,
            repulsion_threshold: self.repulsion_threshold,
            optimizer: match self.optimizer {
                OptimizerArg::Adafactor => AlignOptimizer::Adafactor,
                OptimizerArg::Adamw => AlignOptimizer::AdamW,
            },
            lr: self.lr,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            micro_batch: self.micro_batch,
            accum: self.accum,
            steps: self.steps.unwrap_or(AlignConfig::default().steps),
            eval_every: self.eval_every,
            checkpoint_every: self.checkpoint_every,
            seed: self.seed,
            ..AlignConfig::default()
        }
    }
}

/// Runs `inject align`.
pub fn run(engine: &mut EngineHandle, json_mode: bool, a: AlignArgs) -> Result<()> {
    let cmd = if a.resume {
        InjectCommand::AlignResume {
            dir: a.dir.clone(),
            steps: a.steps,
        }
    } else {
        InjectCommand::Align {
            dir: a.dir.clone(),
            config: a.config(),
            rows_step: a.rows_step,
            lora: match (a.lora, a.lora_step) {
                (_, Some(s)) => LoraUse::Step(s),
                (true, None) => LoraUse::Latest,
                (false, None) => LoraUse::None,
            },
        }
    };
    let InjectResult::Align(r) = inject_call(engine, cmd)? else {
        bail!("unexpected engine reply");
    };
    let under = r.lora_step.map_or("the base weights".to_owned(), |s| {
        format!("the phase-2 adapters of step {s}")
    });
    let mut text = format!(
        "phase 3 (alignment) of {}: step {}/{} from the rows of phase-1 step {}, under {under}; \
         {} of {} forms have parts for L_morpheme",
        r.dir.display(),
        r.step,
        r.steps,
        r.rows_step,
        r.morpheme_forms,
        r.forms
    );
    if let (Some(f), Some(l)) = (r.terms.first(), r.terms.last()) {
        text.push_str(&format!(
            "\nterms (first -> last step): L_lm {:.4} -> {:.4}, L_morpheme {:.3e} -> {:.3e}, \
             L_repulsion {:.3e} -> {:.3e}, L_norm {:.3e} -> {:.3e}",
            f.lm, l.lm, f.morpheme, l.morpheme, f.repulsion, l.repulsion, f.norm, l.norm
        ));
    }
    if let (Some(a), Some(b)) = (r.val.first(), r.val.last()) {
        text.push_str(&format!(
            "\nvalidation loss {:.4} (step {}) -> {:.4} (step {})",
            a.1, a.0, b.1, b.0
        ));
    }
    text.push_str(&format!(
        "\nrows: {}; use them with --run {} --align",
        r.dir.join("align").display(),
        r.dir.display()
    ));
    emit(json_mode, &serde_json::to_value(&*r)?, &text)
}

//! `neoscope inject lora`: phase 2 of vocabulary injection, LoRA adapters trained with the
//! run's rows frozen (or continued with `--resume`).

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use clap::Args as ClapArgs;
use neoscope_api::inject::{InjectCommand, InjectResult};
use neoscope_api::lora::{LoraConfig, LoraTarget};
use neoscope_engine::worker::EngineHandle;

use super::emit;
use super::inject::inject_call;

/// `inject lora` options (defaults: the seed document's phase-2 settings).
#[derive(Debug, ClapArgs)]
pub struct LoraArgs {
    /// Run folder (phase 1 must have a checkpoint; the adapters go to its `lora/`).
    pub dir: PathBuf,
    /// Continue the run's phase 2 from its latest checkpoint (to `--steps` in all, if given;
    /// its settings are the ones it was started with).
    #[arg(long)]
    pub resume: bool,
    /// Optimiser steps (in all).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Phase-1 checkpoint whose rows phase 2 trains with (default: the latest).
    #[arg(long, conflicts_with = "resume")]
    pub rows_step: Option<usize>,
    /// Adapter rank r.
    #[arg(long, default_value_t = 8, conflicts_with = "resume")]
    pub rank: usize,
    /// α (the adapters' output is scaled by α / r).
    #[arg(long, default_value_t = 16.0, conflicts_with = "resume")]
    pub alpha: f64,
    /// Dropout on the adapters' inputs.
    #[arg(long, default_value_t = 0.1, conflicts_with = "resume")]
    pub dropout: f32,
    /// Projections with adapters, comma-separated (q,k,v,o,gate,up,down or q_proj,…).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "q,k,v,o,gate,up,down",
        conflicts_with = "resume"
    )]
    pub targets: Vec<String>,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-5, conflicts_with = "resume")]
    pub lr: f64,
    /// Warmup as a fraction of the steps.
    #[arg(long, default_value_t = 0.1, conflicts_with = "resume")]
    pub warmup: f32,
    /// Decoupled weight decay.
    #[arg(long, default_value_t = 0.01, conflicts_with = "resume")]
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
    /// Seed (adapter initialisation, block order, dropout masks).
    #[arg(long, default_value_t = 42, conflicts_with = "resume")]
    pub seed: u64,
}

impl LoraArgs {
    fn config(&self) -> Result<LoraConfig> {
        let targets = self
            .targets
            .iter()
            .map(|t| {
                LoraTarget::parse(t).ok_or_else(|| {
                    anyhow!("--targets: `{t}` is not a projection (q, k, v, o, gate, up, down)")
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LoraConfig {
            rank: self.rank,
            alpha: self.alpha,
            dropout: self.dropout,
            targets,
            lr: self.lr,
            warmup: self.warmup,
            weight_decay: self.weight_decay,
            micro_batch: self.micro_batch,
            accum: self.accum,
            steps: self.steps.unwrap_or(LoraConfig::default().steps),
            eval_every: self.eval_every,
            checkpoint_every: self.checkpoint_every,
            seed: self.seed,
            ..LoraConfig::default()
        })
    }
}

/// Runs `inject lora`.
pub fn run(engine: &mut EngineHandle, json_mode: bool, a: LoraArgs) -> Result<()> {
    let cmd = if a.resume {
        InjectCommand::LoraResume {
            dir: a.dir.clone(),
            steps: a.steps,
        }
    } else {
        InjectCommand::Lora {
            dir: a.dir.clone(),
            config: a.config()?,
            rows_step: a.rows_step,
        }
    };
    let InjectResult::Lora(r) = inject_call(engine, cmd)? else {
        bail!("unexpected engine reply");
    };
    let mut text = format!(
        "phase 2 (LoRA) of {}: step {}/{} with the rows of phase-1 step {}, {} adapter \
         parameters",
        r.dir.display(),
        r.step,
        r.steps,
        r.rows_step,
        r.parameters
    );
    if let (Some(a), Some(b)) = (r.val.first(), r.val.last()) {
        text.push_str(&format!(
            "\nvalidation loss {:.4} (step {}) -> {:.4} (step {})",
            a.1, a.0, b.1, b.0
        ));
    }
    text.push_str(&format!(
        "\nadapters: {}; use them with --run {} --lora",
        r.dir.join("lora").display(),
        r.dir.display()
    ));
    emit(json_mode, &serde_json::to_value(&*r)?, &text)
}

/// Runs `inject lora-bench`.
pub fn bench(engine: &mut EngineHandle, json_mode: bool, steps: usize) -> Result<()> {
    if steps == 0 {
        bail!("--steps: time at least one step");
    }
    let InjectResult::LoraBench(b) = inject_call(engine, InjectCommand::LoraBench { steps })?
    else {
        bail!("unexpected engine reply");
    };
    let text = format!(
        "LoRA training step, 8 × 64 tokens, r {} on {} projections ({} parameters), {} \
         threads: median {:.3} s over {} steps (warm-up {:.3} s)",
        b.config.rank,
        b.config.targets.len(),
        b.parameters,
        b.threads,
        b.median_step_s,
        steps,
        b.step_s[0]
    );
    emit(json_mode, &serde_json::to_value(&*b)?, &text)
}

//! `neoscope word train`'s arguments (recipe, loss, hyperparameters, initialisation) and the
//! one training call `word train` and the pun-vs-literal demo share.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args as ClapArgs, ValueEnum};
use neoscope_api::JobResult;
use neoscope_api::words::{Init, Injection, Loss, Reduction, StopReason, TrainConfig};
use neoscope_api::words::{WordCommand, WordResult};
use neoscope_engine::worker::EngineHandle;
use serde_json::json;

use super::call;
use super::word::read_dataset;

/// Loss on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LossArg {
    /// Cross-entropy on targets.
    Ce,
    /// DPO + APO-up on chosen/rejected.
    Preference,
}

/// A training recipe on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RecipeArg {
    /// Tuned for this app (`TrainConfig::default()`).
    Default,
    /// As in the neologism seed (`TrainConfig::seed_recipe()`).
    Seed,
}

/// A batch reduction on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReductionArg {
    /// Mean over the batch.
    Mean,
    /// Sum over the batch.
    Sum,
}

/// `word train` arguments.
#[derive(Debug, ClapArgs)]
pub struct TrainArgs {
    /// The word's name, e.g. `<pun>`.
    #[arg(long)]
    pub name: String,
    /// Dataset: a .jsonl/.csv file, or a shipped name (`pun`, `literal`).
    #[arg(long)]
    pub data: String,
    /// Where to save (`NAME.safetensors` + `NAME.json`).
    #[arg(long)]
    pub out: PathBuf,
    /// Loss.
    #[arg(long, value_enum, default_value_t = LossArg::Ce)]
    pub loss: LossArg,
    /// β of the preference loss.
    #[arg(long, default_value_t = 0.2)]
    pub beta: f64,
    /// Starting recipe: `default` (tuned for this app) or `seed` (the neologism notebook's:
    /// lr 0.5, weight decay 0.01, no clipping, summed loss, 20 epochs of 4); the flags below
    /// override its settings one by one.
    #[arg(long, value_enum, default_value_t = RecipeArg::Default)]
    pub recipe: RecipeArg,
    /// Learning rate (default: the recipe's, 0.02 in `default`).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Epochs (default: the recipe's, 20).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Batch size (default: the recipe's, 4).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Shuffling and initialisation seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Gradient clipping norm, 0 disables (default: the recipe's, 1.0 in `default`).
    #[arg(long)]
    pub clip: Option<f64>,
    /// AdamW weight decay (default: the recipe's, 0 in `default`).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// Mean or sum of the batch's losses (default: the recipe's, mean in `default`).
    #[arg(long, value_enum)]
    pub reduction: Option<ReductionArg>,
    /// Initialise from these words' embeddings (mean) instead of small random values;
    /// repeatable. `--init-zero` starts from zeros.
    #[arg(long = "init-word")]
    pub init_words: Vec<String>,
    /// Start from a zero vector.
    #[arg(long)]
    pub init_zero: bool,
    /// Inject into the residual stream before this layer instead of the embedding.
    #[arg(long)]
    pub layer: Option<usize>,
}

impl TrainArgs {
    fn init(&self) -> Init {
        if self.init_zero {
            Init::Zero
        } else if self.init_words.is_empty() {
            Init::Random {
                std: 0.02,
                seed: self.seed,
            }
        } else {
            Init::Words(self.init_words.clone())
        }
    }

    fn config(&self) -> TrainConfig {
        let base = match self.recipe {
            RecipeArg::Default => TrainConfig::default(),
            RecipeArg::Seed => TrainConfig::seed_recipe(),
        };
        TrainConfig {
            loss: match self.loss {
                LossArg::Ce => Loss::CrossEntropy,
                LossArg::Preference => Loss::Preference { beta: self.beta },
            },
            lr: self.lr.unwrap_or(base.lr),
            weight_decay: self.weight_decay.unwrap_or(base.weight_decay),
            epochs: self.epochs.unwrap_or(base.epochs),
            batch_size: self.batch_size.unwrap_or(base.batch_size),
            seed: self.seed,
            clip_norm: self
                .clip
                .map_or(base.clip_norm, |c| (c != 0.0).then_some(c)),
            reduction: self.reduction.map_or(base.reduction, |r| match r {
                ReductionArg::Mean => Reduction::Mean,
                ReductionArg::Sum => Reduction::Sum,
            }),
        }
    }
}

/// Trains one word and saves it; returns the JSON summary.
pub(super) fn train_word(
    engine: &mut EngineHandle,
    a: &TrainArgs,
    json_mode: bool,
) -> Result<serde_json::Value> {
    let (data, origin) = read_dataset(&a.data)?;
    let injection = a.layer.map_or(Injection::Embedding, Injection::ResidPre);
    call::<JobResult>(
        engine,
        WordCommand::Create {
            name: a.name.clone(),
            init: a.init(),
            injection,
        },
    )?;
    let n = data.len();
    let WordResult::Trained {
        losses,
        epoch_losses,
        stop,
        words,
    } = super::call_with(
        engine,
        WordCommand::Train {
            names: vec![a.name.clone()],
            data,
            origin: Some(origin),
            config: a.config(),
        },
        &mut |ev| {
            if let neoscope_api::Event::TrainStep { step, .. } = ev
                && (!json_mode || step.step == step.total_steps)
            {
                eprint!(
                    "\r{} step {}/{} epoch {} loss {:.3}   ",
                    a.name, step.step, step.total_steps, step.epoch, step.loss
                );
            }
        },
    )?
    else {
        bail!("unexpected engine reply");
    };
    eprintln!();
    if let StopReason::Diverged(msg) = &stop {
        eprintln!("warning: {msg}");
    }
    let WordResult::Saved { path } = call(
        engine,
        WordCommand::Save {
            names: vec![a.name.clone()],
            path: a.out.clone(),
        },
    )?
    else {
        bail!("unexpected engine reply");
    };
    let norm = words
        .iter()
        .find(|w| w.name == a.name)
        .map_or(0.0, |w| w.norm);
    Ok(json!({
        "name": a.name, "examples": n, "losses": losses, "epoch_losses": epoch_losses,
        "stop": stop, "path": path, "norm": norm,
    }))
}

pub(super) fn fmt_losses(v: &serde_json::Value) -> String {
    let e: Vec<f64> = v["epoch_losses"]
        .as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect())
        .unwrap_or_default();
    match (e.first(), e.last()) {
        (Some(f), Some(l)) => format!(
            "epoch loss {f:.3} → {l:.3} ({:+.1}%) over {} epochs",
            (l / f - 1.0) * 100.0,
            e.len()
        ),
        _ => "no complete epoch".into(),
    }
}

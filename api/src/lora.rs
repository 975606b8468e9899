//! LoRA adaptation of an injection run (Wake2Vec phase 2): low-rank adapters on a block's
//! projections learn while every model weight and the run's rows stay frozen.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::inject::{Schedule, Stopped};

/// A projection that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LoraTarget {
    /// Query projection.
    Q,
    /// Key projection.
    K,
    /// Value projection.
    V,
    /// Attention output projection.
    O,
    /// MLP gate projection.
    Gate,
    /// MLP up projection.
    Up,
    /// MLP down projection.
    Down,
}

impl LoraTarget {
    /// All seven, in block order.
    pub const ALL: [Self; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// Hugging Face's module name (`q_proj`, …), used in adapter files.
    pub fn module(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
        }
    }

    /// The target of a module name (`q_proj` or `q`).
    pub fn parse(name: &str) -> Option<Self> {
        let n = name.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|t| t.module() == n || t.module().trim_end_matches("_proj") == n)
    }
}

/// Phase-2 settings: the adapters and their optimiser (AdamW with decoupled weight decay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Adapter rank r.
    pub rank: usize,
    /// α: the adapters' output is scaled by α / r.
    pub alpha: f64,
    /// Dropout on each adapter's input while training.
    pub dropout: f32,
    /// Projections that get adapters.
    pub targets: Vec<LoraTarget>,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup as a fraction of the steps.
    pub warmup: f32,
    /// Learning-rate schedule after warmup.
    pub schedule: Schedule,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Adam ε.
    pub adam_eps: f64,
    /// Global gradient-norm clip.
    pub clip_norm: Option<f64>,
    /// Blocks per forward pass.
    pub micro_batch: usize,
    /// Micro-batches per optimiser step.
    pub accum: usize,
    /// Optimiser steps.
    pub steps: usize,
    /// Validate every N steps.
    pub eval_every: usize,
    /// Checkpoint every N steps.
    pub checkpoint_every: usize,
    /// Validation blocks used (0: all).
    pub max_val_blocks: usize,
    /// Seed of the adapters' initialisation, the block order and the dropout masks.
    pub seed: u64,
}

impl Default for LoraConfig {
    /// The seed document's phase-2 settings (r 8, α 16, dropout 0.1, lr 2e-5, warmup 10%,
    /// weight decay 0.01) on all seven projections.
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.1,
            targets: LoraTarget::ALL.to_vec(),
            lr: 2e-5,
            warmup: 0.1,
            schedule: Schedule::Cosine,
            weight_decay: 0.01,
            adam_eps: 1e-8,
            clip_norm: Some(1.0),
            micro_batch: 4,
            accum: 2,
            steps: 60,
            eval_every: 20,
            checkpoint_every: 10,
            max_val_blocks: 32,
            seed: 42,
        }
    }
}

/// Which adapters to use when a run is attached to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum LoraUse {
    /// None: the base weights.
    #[default]
    None,
    /// The latest phase-2 checkpoint.
    Latest,
    /// The phase-2 checkpoint of this step.
    Step(usize),
}

/// A phase-2 run's state (from training or opening it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraRun {
    /// The injection run's folder (the adapters live in its `lora/`).
    pub dir: PathBuf,
    /// How training ended.
    pub stopped: Option<Stopped>,
    /// Steps done.
    pub step: usize,
    /// Steps planned.
    pub steps: usize,
    /// The phase-1 checkpoint whose rows it trains with.
    pub rows_step: usize,
    /// Trainable parameters (all adapters).
    pub parameters: usize,
    /// Training losses.
    pub losses: Vec<f32>,
    /// (step, validation loss); step 0 is the phase-1 rows without adapters.
    pub val: Vec<(usize, f32)>,
}

/// The phase-2 training-step benchmark: what was run, and how long each step took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraBench {
    /// CPU threads used.
    pub threads: usize,
    /// The training blocks (each step trains on all of them, one forward pass).
    pub blocks: Vec<Vec<u32>>,
    /// The adapter settings (learning rate, rank, α, dropout, targets, AdamW).
    pub config: LoraConfig,
    /// Trainable parameters.
    pub parameters: usize,
    /// Seconds of each step (the first is a warm-up).
    pub step_s: Vec<f64>,
    /// Median of the steps after the first.
    pub median_step_s: f64,
    /// Loss of each step.
    pub losses: Vec<f32>,
}

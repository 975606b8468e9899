//! Morpheme-compositional alignment of an injection run (Wake2Vec phase 3): the new rows learn
//! again, under the language-modelling loss plus three regularisers, with every model weight
//! (and the phase-2 adapters, when used) frozen.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::inject::{Schedule, Stopped};

/// Phase 3's optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlignOptimizer {
    /// Adafactor as transformers' `Adafactor(lr, scale_parameter=False, relative_step=False)`
    /// (the Trainer's `adafactor` choice): factored second moment, no first moment, decay
    /// exponent −0.8, ε (1e-30, 1e-3), update RMS clipped to 1. The seed's choice.
    Adafactor,
    /// AdamW (β 0.9, 0.999, decoupled weight decay), as phases 1 and 2.
    AdamW,
}

/// Phase-3 settings. The loss is
/// `L_lm + λ_morpheme · L_morpheme + λ_repulsion · L_repulsion + λ_norm · L_norm`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlignConfig {
    /// λ_morpheme: weight of the pull of each split form toward the mean of its parts.
    pub lambda_morpheme: f64,
    /// λ_repulsion: weight of the penalty on pairs of new rows closer than the threshold.
    pub lambda_repulsion: f64,
    /// λ_norm: weight of the penalty on row norms outside the base vocabulary's band.
    pub lambda_norm: f64,
    /// Random pairs of new rows scored by L_repulsion each step.
    pub repulsion_pairs: usize,
    /// Cosine above which a pair is penalised.
    pub repulsion_threshold: f64,
    /// Optimiser.
    pub optimizer: AlignOptimizer,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup as a fraction of the steps.
    pub warmup: f32,
    /// Learning-rate schedule after warmup.
    pub schedule: Schedule,
    /// Decoupled weight decay (both optimisers).
    pub weight_decay: f64,
    /// Adam ε (AdamW only).
    pub adam_eps: f64,
    /// Global gradient-norm clip (of the whole objective's gradient).
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
    /// Seed of the block order and the repulsion pairs.
    pub seed: u64,
}

impl Default for AlignConfig {
    /// The seed document's phase-3 settings: λ 0.1 / 0.05 / 0.01, Adafactor, lr 5e-5, warmup
    /// 10%; pairs and threshold as the seed project's code (100 pairs, cosine 0.95).
    fn default() -> Self {
        Self {
            lambda_morpheme: 0.1,
            lambda_repulsion: 0.05,
            lambda_norm: 0.01,
            repulsion_pairs: 100,
            repulsion_threshold: 0.95,
            optimizer: AlignOptimizer::Adafactor,
            lr: 5e-5,
            warmup: 0.1,
            schedule: Schedule::Cosine,
            weight_decay: 0.0,
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

/// The four terms of phase 3's objective at one step (unweighted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AlignTerms {
    /// Token-mean next-token loss.
    pub lm: f32,
    /// Mean over split forms of the mean squared difference between the row and its parts' mean.
    pub morpheme: f32,
    /// Mean over the step's pairs of `max(0, cos − threshold)²`.
    pub repulsion: f32,
    /// Mean over new rows of `max(0, |‖e‖ − μ| − σ)²`.
    pub norm: f32,
}

/// A phase-3 run's state (from training or opening it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlignRun {
    /// The injection run's folder (phase 3 lives in its `align/`).
    pub dir: PathBuf,
    /// How training ended.
    pub stopped: Option<Stopped>,
    /// Steps done.
    pub step: usize,
    /// Steps planned.
    pub steps: usize,
    /// The phase-1 checkpoint whose rows it started from.
    pub rows_step: usize,
    /// The phase-2 checkpoint whose adapters it trains under (merged, frozen), if any.
    pub lora_step: Option<usize>,
    /// Split forms that L_morpheme pulls (of all new forms).
    pub morpheme_forms: usize,
    /// New forms.
    pub forms: usize,
    /// Total objective of every step.
    pub losses: Vec<f32>,
    /// Its terms, step by step.
    pub terms: Vec<AlignTerms>,
    /// (step, validation loss: L_lm alone on held-out blocks); step 0 is the starting rows.
    pub val: Vec<(usize, f32)>,
}

/// Phase 3 in the geometry report: its terms at the first and last step, and each split form
/// against the mean of its parts before (phase 3's starting rows) and after phase 3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlignedRows {
    /// Steps done.
    pub step: usize,
    /// The settings (λ weights, optimiser, …).
    pub config: AlignConfig,
    /// The phase-2 checkpoint it trained under, if any.
    pub lora_step: Option<usize>,
    /// The terms at step 1.
    pub first: AlignTerms,
    /// The terms at the last step.
    pub last: AlignTerms,
    /// Split forms against their parts: `before` is phase 3's start, `after` its rows.
    pub morphemes: Option<crate::inject::MorphemeComparison>,
}

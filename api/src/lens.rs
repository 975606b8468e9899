//! Lenses (raw, logit, tuned): per-layer predictions, tuned-lens training settings and reports, and the lens commands.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::hooks::HookSpec;
use crate::steer::Steer;

/// Which lens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LensKind {
    /// Unembedding without the final norm.
    Raw,
    /// Final norm, then unembedding.
    #[default]
    Logit,
    /// A trained per-layer translator, then final norm and unembedding.
    Tuned,
}

/// A token with its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenProb {
    /// Id.
    pub id: u32,
    /// Text.
    pub text: String,
    /// Probability.
    pub prob: f32,
}

/// A target token's statistics in one cell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TargetStat {
    /// Probability.
    pub prob: f32,
    /// Log-probability.
    pub logprob: f32,
    /// Number of tokens with a larger probability (0 = top-1).
    pub rank: usize,
}

/// One (layer, position) cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LensCell {
    /// Most likely tokens.
    pub top: Vec<TokenProb>,
    /// Entropy in nats.
    pub entropy: f32,
    /// KL(final ‖ this layer) in nats.
    pub kl_to_final: f32,
    /// One entry per target.
    pub targets: Vec<TargetStat>,
}

/// A target token, as resolved from the user's text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// What the user typed.
    pub text: String,
    /// The token used.
    pub id: u32,
    /// Its text.
    pub token: String,
    /// A note when the text is several tokens (the first is used).
    pub note: Option<String>,
}

/// The lens over a whole prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LensResult {
    /// Lens used.
    pub lens: LensKind,
    /// Token texts of the prompt (new words by name).
    pub tokens: Vec<String>,
    /// Targets.
    pub targets: Vec<Target>,
    /// `cells[layer][position]`.
    pub cells: Vec<Vec<LensCell>>,
}

/// When a prompt's first target emerges at its last position: the first layer where its
/// probability reaches the threshold and the first layer where it is the top-1 token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Emergence {
    /// The probability threshold.
    pub threshold: f32,
    /// First layer with p(target) ≥ threshold.
    pub first_above: Option<usize>,
    /// First layer where the target is the most likely token.
    pub first_top1: Option<usize>,
    /// p(target) at the last layer.
    pub final_prob: f32,
}

/// The default threshold of `Emergence` (the seed's 10%).
pub const EMERGENCE_THRESHOLD: f32 = 0.1;

impl LensResult {
    /// The first target's probability at the last position, one value per layer (empty
    /// without a target).
    pub fn target_curve(&self) -> Vec<f32> {
        self.cells
            .iter()
            .filter_map(|row| Some(row.last()?.targets.first()?.prob))
            .collect()
    }

    /// When the first target emerges at the last position (`None` without a target).
    pub fn emergence(&self, threshold: f32) -> Option<Emergence> {
        let stats: Vec<TargetStat> = self
            .cells
            .iter()
            .filter_map(|row| row.last()?.targets.first().copied())
            .collect();
        let last = stats.last()?;
        Some(Emergence {
            threshold,
            first_above: stats.iter().position(|t| t.prob >= threshold),
            first_top1: stats.iter().position(|t| t.rank == 0),
            final_prob: last.prob,
        })
    }

    /// Tokens that are top-1 at any layer at `position`, in order of first appearance.
    pub fn top1_any_layer(&self, position: usize) -> Vec<TokenProb> {
        let mut seen: Vec<TokenProb> = Vec::new();
        for layer in &self.cells {
            if let Some(t) = layer.get(position).and_then(|c| c.top.first())
                && !seen.iter().any(|s| s.id == t.id)
            {
                seen.push(t.clone());
            }
        }
        seen
    }
}

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunedConfig {
    /// Adam learning rate.
    pub lr: f64,
    /// Optimiser steps.
    pub steps: usize,
    /// Tokens per training sequence (the corpus is cut into windows of this length).
    pub window: usize,
    /// Positions per step (sampled from the windows).
    pub positions: usize,
    /// Fraction of windows held out for the KL report.
    pub heldout_fraction: f32,
    /// At most this many held-out windows are evaluated (the report's cost).
    #[serde(default = "default_max_heldout")]
    pub max_heldout_windows: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for TunedConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            steps: 200,
            window: 64,
            positions: 32,
            heldout_fraction: 0.2,
            max_heldout_windows: default_max_heldout(),
            seed: 0,
        }
    }
}

/// Progress of tuned-lens training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TunedStep {
    /// Step (from 1).
    pub step: usize,
    /// Steps planned.
    pub total: usize,
    /// Mean KL over layers of this step.
    pub loss: f32,
}

/// Held-out KL(final ‖ lens) per layer, for the logit lens and the tuned lens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunedReport {
    /// Logit lens, per layer.
    pub logit_kl: Vec<f32>,
    /// Tuned lens, per layer.
    pub tuned_kl: Vec<f32>,
    /// Loss of every step.
    pub losses: Vec<f32>,
    /// Whether the user stopped it early.
    pub cancelled: bool,
    /// Held-out positions the KL is averaged over.
    pub heldout_positions: usize,
}

/// Lens commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LensCommand {
    /// The lens over one or more prompts (new words and interventions allowed).
    Run {
        /// Prompts.
        prompts: Vec<String>,
        /// Chat mode.
        chat: bool,
        /// Which lens.
        lens: LensKind,
        /// Target texts (first token of each is followed), for every prompt.
        targets: Vec<String>,
        /// Each prompt's own targets, followed before the shared `targets` (so the first
        /// target of a result is its prompt's own): empty, or one list per prompt.
        #[serde(default)]
        prompt_targets: Vec<Vec<String>>,
        /// Top-k per cell.
        top_k: usize,
        /// Extra interventions given as vectors.
        hooks: HookSpec,
        /// Steering given by name (resolved by the engine thread).
        steer: Vec<Steer>,
    },
    /// Train a tuned lens on a corpus (progress as `Progress` events).
    TrainTuned {
        /// The text.
        corpus: String,
        /// Settings.
        config: TunedConfig,
    },
    /// Save the current tuned lens.
    SaveTuned {
        /// Path (extension replaced).
        path: PathBuf,
    },
    /// Load a tuned lens.
    LoadTuned {
        /// Path.
        path: PathBuf,
    },
}

/// Lens results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LensOutput {
    /// Lens results, one per prompt.
    Runs(Vec<LensResult>),
    /// A tuned lens is ready (trained or loaded); the held-out report when known.
    Tuned(Option<TunedReport>),
    /// The tuned lens was saved.
    TunedSaved {
        /// The JSON metadata file.
        path: PathBuf,
    },
}

fn default_max_heldout() -> usize {
    32
}

/// Every cell of every prompt as CSV, one row per (prompt, layer, position).
pub fn cells_csv(results: &[LensResult]) -> String {
    let mut out = String::from(
        "prompt,layer,position,token,top1,top1_prob,entropy,kl_to_final,p_target,rank_target\n",
    );
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    for (pi, r) in results.iter().enumerate() {
        for (l, row) in r.cells.iter().enumerate() {
            for (p, c) in row.iter().enumerate() {
                let top = c.top.first();
                let t = c.targets.first();
                let _ = writeln!(
                    out,
                    "{pi},{l},{p},{},{},{},{},{},{},{}",
                    q(&r.tokens[p]),
                    q(top.map_or("", |t| t.text.as_str())),
                    top.map_or(0.0, |t| t.prob),
                    c.entropy,
                    c.kl_to_final,
                    t.map_or(String::new(), |t| t.prob.to_string()),
                    t.map_or(String::new(), |t| t.rank.to_string()),
                );
            }
        }
    }
    out
}

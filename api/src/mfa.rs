//! Mixture of factor analyzers: fit settings and reports, component summaries, steering reports, and the MFA commands.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::hooks::HookPoint;
use crate::words::LogitShift;

/// How the means start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitKind {
    /// K-means (projected, restarts, refined on all data).
    Kmeans,
    /// Random data points.
    RandomPoints,
}

/// Fitting settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MfaConfig {
    /// Components K.
    pub k: usize,
    /// Latent rank R.
    pub rank: usize,
    /// Epochs.
    pub epochs: usize,
    /// Minibatch size.
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Fraction of activations held out for validation.
    pub val_fraction: f32,
    /// Initialisation.
    pub init: InitKind,
    /// Seed (split, shuffling, directions, k-means).
    pub seed: u64,
    /// Stop when the validation NLL has not improved for this many epochs (None: run them all).
    #[serde(default)]
    pub patience: Option<usize>,
}

impl MfaConfig {
    /// CPU default: small enough to fit in a few minutes on two cores.
    pub fn cpu_default() -> Self {
        Self {
            k: 64,
            rank: 8,
            epochs: 40,
            batch: 256,
            lr: 1e-2,
            val_fraction: 0.1,
            init: InitKind::Kmeans,
            seed: 0,
            patience: None,
        }
    }

    /// The reference notebook's scale (K=500, R=10, lr 1e-3, batch 128), for big machines.
    pub fn reference_scale() -> Self {
        Self {
            k: 500,
            rank: 10,
            epochs: 10,
            batch: 128,
            lr: 1e-3,
            ..Self::cpu_default()
        }
    }
}

/// Progress after an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MfaEpoch {
    /// Epoch (from 1).
    pub epoch: usize,
    /// Epochs planned.
    pub total: usize,
    /// Mean train NLL over the epoch's batches.
    pub train_nll: f64,
    /// Validation NLL after the epoch.
    pub val_nll: f64,
}

/// What a fit reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MfaReport {
    /// Per-epoch numbers.
    pub epochs: Vec<MfaEpoch>,
    /// Validation NLL right after initialisation.
    pub init_val_nll: f64,
    /// Epoch restored (1-based; 0 = the initialisation).
    pub best_epoch: usize,
    /// Its validation NLL.
    pub best_val_nll: f64,
    /// Train / validation counts.
    pub n_train: usize,
    /// Validation count.
    pub n_val: usize,
    /// Whether the user stopped it.
    pub cancelled: bool,
    /// Whether it stopped early because the validation NLL stopped improving.
    #[serde(default)]
    pub stopped_early: bool,
}

impl MfaReport {
    /// "stopped early after N epochs" when the fit stopped early, else nothing.
    pub fn early_stop(&self) -> Option<String> {
        self.stopped_early
            .then(|| format!("stopped early after {} epochs", self.epochs.len()))
    }
}

/// How the contexts shown for each component are chosen: `n` drawn at random (seeded, without
/// repeats) from its `pool` best, so that they do not all look alike (the MFA seed: 10 of 5,000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextSample {
    /// Contexts shown per component.
    pub n: usize,
    /// Drawn from this many top-scoring ones.
    pub pool: usize,
    /// Seed of the draw.
    pub seed: u64,
}

impl Default for ContextSample {
    fn default() -> Self {
        Self {
            n: 10,
            pool: 5000,
            seed: 0,
        }
    }
}

/// A context shown for a component: text before, the token itself, what follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// Row.
    pub row: usize,
    /// Text before the token.
    pub before: String,
    /// The token.
    pub token: String,
    /// The next token.
    pub after: String,
    /// Score.
    pub score: f32,
}

/// One component in words.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ComponentInfo {
    /// Index.
    pub index: usize,
    /// Rows assigned to it (hard).
    pub size: usize,
    /// Mixing weight π.
    pub weight: f32,
    /// Most common tokens among its rows, with counts.
    pub top_tokens: Vec<(String, usize)>,
    /// Most common next tokens among its rows, with counts.
    pub top_next: Vec<(String, usize)>,
    /// Contexts drawn from the top ones by likelihood, best first.
    pub by_likelihood: Vec<Context>,
    /// Contexts drawn from the top ones by responsibility, best first.
    pub by_responsibility: Vec<Context>,
}

/// A steered run next to the plain one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SteerReport {
    /// The prompt.
    pub prompt: String,
    /// Most promoted next tokens.
    pub promoted: Vec<LogitShift>,
    /// Most suppressed next tokens.
    pub suppressed: Vec<LogitShift>,
    /// Greedy generation, steered.
    pub steered: String,
    /// Greedy generation, plain.
    pub plain: String,
}

/// Which positions a steering run changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SteerPositions {
    /// Every position.
    All,
    /// The last prompt position and every generated one.
    Last,
}

/// An MFA request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MfaCommand {
    /// Collect activations at a hook point over texts (replaces the current set).
    Collect {
        /// Texts to run (each is cut into windows).
        texts: Vec<String>,
        /// Where.
        point: HookPoint,
        /// Tokens per window.
        window: usize,
        /// Keep at most this many (seeded sample).
        max: Option<usize>,
        /// Also save them here.
        save: Option<PathBuf>,
    },
    /// Load a saved activation set.
    LoadActivations {
        /// Path.
        path: PathBuf,
    },
    /// Save the current activations (`PATH.safetensors` + `PATH.json`).
    SaveActivations {
        /// Path.
        path: PathBuf,
    },
    /// Fit an MFA to the current activations.
    Fit {
        /// Settings.
        config: MfaConfig,
    },
    /// Save the current MFA.
    Save {
        /// Path.
        path: PathBuf,
    },
    /// Load an MFA (its components are described when activations are loaded).
    Load {
        /// Path.
        path: PathBuf,
    },
    /// Describe the components again, with contexts drawn as `sample` says (kept for later fits).
    Contexts {
        /// How contexts are drawn.
        sample: ContextSample,
    },
    /// Subspace coordinates of a component's points.
    Subspace {
        /// Component.
        component: usize,
        /// At most this many points.
        max_points: usize,
    },
    /// Steer a prompt toward a component.
    Steer {
        /// Prompt.
        prompt: String,
        /// Chat mode.
        chat: bool,
        /// Component.
        component: usize,
        /// Centroid weight α.
        alpha: f32,
        /// Latent offset z (empty: centroid steering only).
        z: Vec<f32>,
        /// Layers whose `hook_resid_post` is steered, all at once (empty: the point the MFA was
        /// fitted at).
        layers: Vec<usize>,
        /// Which positions.
        positions: SteerPositions,
        /// Tokens listed each way.
        top: usize,
        /// Tokens generated on each side.
        max_new_tokens: usize,
    },
}

/// A point in a component's subspace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubspacePoint {
    /// Latent coordinates.
    pub z: Vec<f32>,
    /// Its token.
    pub token: String,
    /// Its context (the token last).
    pub context: String,
}

/// An MFA result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MfaResult {
    /// Activations are ready.
    Activations {
        /// Rows.
        count: usize,
        /// Width.
        d: usize,
        /// Hook point.
        point: HookPoint,
        /// Saved here, if asked.
        saved: Option<PathBuf>,
    },
    /// A fitted or loaded MFA, described.
    Model {
        /// Hook point.
        point: HookPoint,
        /// Settings.
        config: Option<MfaConfig>,
        /// Fit report.
        report: Option<MfaReport>,
        /// Components (empty without activations).
        components: Vec<ComponentInfo>,
        /// Coherence (observed, chance): share of the most common token among each component's
        /// top-20 contexts, averaged.
        coherence: Option<(f64, f64)>,
    },
    /// Saved to this JSON file.
    Saved {
        /// Path.
        path: PathBuf,
    },
    /// Subspace points.
    Subspace {
        /// Component.
        component: usize,
        /// Points.
        points: Vec<SubspacePoint>,
    },
    /// Steering.
    Steering(SteerReport),
}

//! MFA requests and results exchanged with the engine thread (part of [`crate::api`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::interpret::ComponentInfo;
use super::steer::SteerReport;
use super::train::{MfaConfig, MfaReport};
use crate::hooks::HookPoint;

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
        /// Layer whose `hook_resid_post` is steered (None: the layer the MFA was fitted at).
        layer: Option<usize>,
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

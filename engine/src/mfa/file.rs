//! MFA files: parameters as safetensors plus JSON metadata (format, version, base model, hook
//! point, settings, fit report), written atomically and refused for another base model.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::model::Mfa;
use super::train::{MfaConfig, MfaReport};
use crate::artifact::{self, BaseModel, Header, Kind};
use crate::error::Result;
use crate::hooks::HookPoint;

/// The MFA artifact.
pub const KIND: Kind = Kind {
    format: "neoscope-mfa",
    version: 1,
    what: "MFA file",
};

const NAMES: [&str; 5] = ["mu", "dirs", "scale", "rho", "logits"];

/// The JSON half of an MFA file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MfaMeta {
    /// Format, version, and the model whose activations it was fitted to.
    #[serde(flatten)]
    pub header: Header,
    /// Hook point of those activations.
    pub point: HookPoint,
    /// Components, width, rank.
    pub k: usize,
    /// Width D.
    pub d: usize,
    /// Rank R.
    pub rank: usize,
    /// Settings used.
    pub config: Option<MfaConfig>,
    /// Fit report.
    pub report: Option<MfaReport>,
}

/// Saves an MFA (`PATH.safetensors` + `PATH.json`).
pub fn save(path: &Path, mfa: &Mfa, meta: &MfaMeta) -> Result<PathBuf> {
    let tensors = NAMES
        .iter()
        .zip(mfa.vars())
        .map(|(name, v)| ((*name).to_owned(), v.as_tensor().clone()))
        .collect::<Vec<_>>();
    artifact::save(path, &tensors, meta)
}

/// Loads an MFA, refusing one made for another model or with inconsistent shapes.
pub fn load(path: &Path, base: &BaseModel, device: &Device) -> Result<(Mfa, MfaMeta)> {
    let (meta, t): (MfaMeta, _) = artifact::load(path, &KIND, base, device)?;
    let (k, d, r) = (meta.k, meta.d, meta.rank);
    let var = |name: &str, shape: &[usize]| -> Result<candle_core::Var> {
        Ok(candle_core::Var::from_tensor(&t.get(name, Some(shape))?)?)
    };
    let mfa = Mfa {
        mu: var("mu", &[k, d])?,
        dirs: var("dirs", &[k, d, r])?,
        scale: var("scale", &[k, r])?,
        rho: var("rho", &[d])?,
        logits: var("logits", &[k])?,
    };
    Ok((mfa, meta))
}

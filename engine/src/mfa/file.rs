//! MFA files: parameters as safetensors plus JSON metadata (format, version, base model, hook
//! point, settings, fit report), written atomically and refused for another base model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::model::Mfa;
use super::train::{MfaConfig, MfaReport};
use crate::error::{EngineError, Result};
use crate::hooks::HookPoint;
use crate::words::file::{BaseModel, check_base, check_header, write_atomic};

/// Format name of MFA files.
pub const FORMAT: &str = "neoscope-mfa";
/// Current format version.
pub const VERSION: u32 = 1;

const NAMES: [&str; 5] = ["mu", "dirs", "scale", "rho", "logits"];

/// The JSON half of an MFA file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MfaMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version.
    pub version: u32,
    /// The model whose activations it was fitted to.
    pub base_model: BaseModel,
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
    let st = path.with_extension("safetensors");
    let json = path.with_extension("json");
    let mut t = HashMap::new();
    for (name, v) in NAMES.iter().zip(mfa.vars()) {
        t.insert((*name).to_owned(), v.as_tensor().to_device(&Device::Cpu)?);
    }
    let bytes = safetensors::serialize(
        t.iter().map(|(k, v)| (k.clone(), v)).collect::<Vec<_>>(),
        None,
    )
    .map_err(|e| EngineError::Invalid(format!("serialising {}: {e}", st.display())))?;
    write_atomic(&st, &bytes)?;
    let text = serde_json::to_vec_pretty(meta).map_err(|e| EngineError::Invalid(e.to_string()))?;
    write_atomic(&json, &text)?;
    Ok(json)
}

/// Loads an MFA, refusing one made for another model or with inconsistent shapes.
pub fn load(path: &Path, base: &BaseModel, device: &Device) -> Result<(Mfa, MfaMeta)> {
    let st = path.with_extension("safetensors");
    let json = path.with_extension("json");
    let text = std::fs::read_to_string(&json).map_err(|e| EngineError::io(&json, e))?;
    let meta: MfaMeta = serde_json::from_str(&text)
        .map_err(|e| EngineError::Invalid(format!("{}: {e}", json.display())))?;
    check_header(&json, &meta.format, meta.version, FORMAT, VERSION)?;
    check_base(&json, &meta.base_model, base)?;
    let t = candle_core::safetensors::load(&st, device)
        .map_err(|e| EngineError::Invalid(format!("{}: {e}", st.display())))?;
    let get = |k: &str, shape: &[usize]| -> Result<Tensor> {
        let v = t
            .get(k)
            .cloned()
            .ok_or_else(|| EngineError::Invalid(format!("{}: missing tensor {k}", st.display())))?;
        if v.dims() != shape {
            return Err(EngineError::Invalid(format!(
                "{}: tensor {k} has shape {:?}, expected {shape:?}",
                st.display(),
                v.dims()
            )));
        }
        Ok(v)
    };
    let (k, d, r) = (meta.k, meta.d, meta.rank);
    let mfa = Mfa {
        mu: candle_core::Var::from_tensor(&get("mu", &[k, d])?)?,
        dirs: candle_core::Var::from_tensor(&get("dirs", &[k, d, r])?)?,
        scale: candle_core::Var::from_tensor(&get("scale", &[k, r])?)?,
        rho: candle_core::Var::from_tensor(&get("rho", &[d])?)?,
        logits: candle_core::Var::from_tensor(&get("logits", &[k])?)?,
    };
    Ok((mfa, meta))
}

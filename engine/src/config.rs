//! Model configuration with Hugging Face field names, and the TransformerLens-named dimensions
//! a model reports.

pub use neoscope_api::model::Dims;
use serde::{Deserialize, Serialize};

/// A Llama-family configuration; field names as in Hugging Face's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Width of the residual stream (d_model).
    pub hidden_size: usize,
    /// Width of the MLP (d_mlp).
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Longest supported context.
    #[serde(default = "default_ctx")]
    pub max_position_embeddings: usize,
    /// Whether the output head shares the token embedding.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Model family as named in `config.json` (`llama`, `mistral`, `qwen2`, …).
    #[serde(default = "default_model_type")]
    pub model_type: String,
}

fn default_eps() -> f64 {
    1e-5
}
fn default_theta() -> f64 {
    10_000.0
}
fn default_ctx() -> usize {
    2048
}
fn default_model_type() -> String {
    "llama".to_owned()
}

impl LlamaConfig {
    /// Number of key/value heads (equal to query heads when unset).
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks the configuration for consistency.
    pub fn validate(&self) -> Result<(), String> {
        if self.hidden_size == 0 || self.num_attention_heads == 0 || self.num_hidden_layers == 0 {
            return Err(
                "hidden_size, num_attention_heads and num_hidden_layers must be > 0".into(),
            );
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(format!(
                "head dimension {} must be even for RoPE",
                self.head_dim()
            ));
        }
        if self.kv_heads() == 0 || !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        Ok(())
    }

    /// The dimensions under TransformerLens names.
    pub fn dims(&self) -> Dims {
        Dims {
            d_model: self.hidden_size,
            n_layers: self.num_hidden_layers,
            d_vocab: self.vocab_size,
            n_heads: self.num_attention_heads,
            n_kv_heads: self.kv_heads(),
            d_head: self.head_dim(),
            d_mlp: self.intermediate_size,
            n_ctx: self.max_position_embeddings,
        }
    }
}

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
    /// RoPE frequency scaling (Llama 3.x `llama3`, `linear`); `None` is plain RoPE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    /// Width of one head when it is not `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    /// Sliding-window attention span: a token sees at most this many tokens, itself included,
    /// in the layers `arch.sliding_layers` names (all of them when empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding_window: Option<usize>,
    /// How the family's blocks differ from Llama's (Gemma, Phi-3, GPT-2); set by the loaders
    /// from what they checked, never read raw from `config.json`.
    #[serde(default, skip_serializing_if = "Arch::is_llama")]
    pub arch: Arch,
}

/// Normalisation layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NormKind {
    /// RMSNorm `x / rms(x) · w` (Gemma's `(1 + w)` is folded into `w` when loading).
    #[default]
    Rms,
    /// LayerNorm `(x − mean) / std · w + b` (GPT-2).
    Layer,
}

/// MLP activations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Act {
    /// SiLU (Llama, Mistral, Qwen, Phi-3).
    #[default]
    Silu,
    /// GELU with the tanh approximation (Gemma's `gelu_pytorch_tanh`, GPT-2's `gelu_new`).
    GeluTanh,
    /// ReLU (PyTorch's `nn.TransformerEncoderLayer`, the from-scratch lab's seed model).
    Relu,
}

/// The ways a family's computation departs from Llama's; the default is Llama.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Arch {
    /// Normalisation layers.
    pub norm: NormKind,
    /// MLP activation.
    pub act: Act,
    /// A plain MLP `down(act(up(x)))` instead of the gated `down(act(gate(x)) · up(x))` (GPT-2).
    pub plain_mlp: bool,
    /// Biases on every projection and norm (GPT-2).
    pub biases: bool,
    /// Learned absolute position embeddings instead of RoPE (GPT-2).
    pub learned_positions: bool,
    /// Token embeddings multiplied by this (Gemma: √d_model, rounded to f32).
    pub embed_scale: Option<f64>,
    /// Attention scores scaled by `query_pre_attn_scalar^-½` instead of `d_head^-½` (Gemma 2/3).
    pub query_pre_attn_scalar: Option<f64>,
    /// Attention scores soft-capped: `c · tanh(s / c)` (Gemma 2).
    pub attn_softcap: Option<f64>,
    /// Logits soft-capped: `c · tanh(z / c)` (Gemma 2).
    pub final_softcap: Option<f64>,
    /// Norms after attention and after the MLP as well as before (Gemma 2/3).
    pub sandwich_norms: bool,
    /// Per layer, whether it attends through `sliding_window`; empty means every layer does
    /// when a window is set (Mistral, Phi-3), otherwise it alternates (Gemma 2/3).
    pub sliding_layers: Vec<bool>,
    /// RoPE base of the sliding-window layers, unscaled (Gemma 3); `None`: as the others.
    pub rope_local_theta: Option<f64>,
    /// Per-head q/k RMSNorm before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Biases on the q/k/v projections only (Qwen2).
    pub qkv_bias: bool,
    /// Norms after each residual addition instead of before each sub-layer:
    /// `x = norm(x + attn(x))`, `x = norm(x + mlp(x))` (PyTorch's `nn.TransformerEncoderLayer`
    /// default, the from-scratch lab's seed model).
    #[serde(default)]
    pub post_norm: bool,
    /// No final norm before the output head (the seed model; `final_norm` is then unused).
    #[serde(default)]
    pub no_final_norm: bool,
    /// A bias on the output head (the seed model's `nn.Linear` output layer).
    #[serde(default)]
    pub head_bias: bool,
}

impl Arch {
    /// The switches a family (transformers' `model_type`) always has, whatever file it comes
    /// from; what a checkpoint sets itself (soft-caps, windows, RoPE bases, the attention
    /// scale) is left for its loader.
    pub fn family(model_type: &str, d_model: usize) -> Self {
        let mut a = Self {
            qkv_bias: model_type == "qwen2",
            qk_norm: matches!(model_type, "qwen3" | "gemma3_text"),
            ..Self::default()
        };
        if model_type.starts_with("gemma") {
            a.act = Act::GeluTanh;
            a.embed_scale = Some((d_model as f64).sqrt());
            a.sandwich_norms = model_type != "gemma";
        }
        if model_type == "gpt2" {
            a.norm = NormKind::Layer;
            a.act = Act::GeluTanh;
            a.plain_mlp = true;
            a.biases = true;
            a.learned_positions = true;
        }
        a
    }

    /// Whether this is plain Llama's computation.
    pub fn is_llama(&self) -> bool {
        *self == Self::default()
    }
}

/// RoPE frequency scaling as transformers defines it (`rope_scaling.rope_type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Every inverse frequency divided by `factor` (positions interpolated).
    Linear {
        /// Divisor.
        factor: f64,
    },
    /// Llama 3.1/3.2: low frequencies divided by `factor`, high ones kept, a smooth ramp
    /// between the wavelengths `original_max_position_embeddings / {low,high}_freq_factor`.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original / low_freq_factor` are scaled.
        low_freq_factor: f64,
        /// Wavelengths below `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// The pre-training context.
        original_max_position_embeddings: usize,
    },
    /// YaRN: frequencies interpolated below a ramp of rotation counts, kept above it, and cos/sin
    /// multiplied by `attention_factor` (Qwen2.5 long context, DeepSeek).
    Yarn {
        /// Divisor of the interpolated frequencies.
        factor: f64,
        /// The pre-training context.
        original_max_position_embeddings: usize,
        /// Rotations where extrapolation ends (default 32).
        beta_fast: f64,
        /// Rotations where interpolation begins (default 1).
        beta_slow: f64,
        /// cos/sin multiplier (default from `factor`, `mscale`, `mscale_all_dim`).
        attention_factor: f64,
        /// Whether the ramp's ends are rounded to whole dimensions (default true).
        truncate: bool,
    },
    /// Dynamic NTK: transformers changes the base only for sequences longer than
    /// `max_position_embeddings`, which are refused here; within it, plain RoPE.
    Dynamic {
        /// The factor (used beyond the context only).
        factor: f64,
    },
}

impl RopeScaling {
    /// Finite positive factors; the Llama 3 band in the right order.
    pub fn validate(&self) -> Result<(), String> {
        let ok = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!(
                    "`rope_scaling.{name}` = {v} must be a finite number > 0"
                ))
            }
        };
        match *self {
            Self::Linear { factor } | Self::Dynamic { factor } => ok("factor", factor),
            Self::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                ..
            } => {
                for (k, v) in [
                    ("factor", factor),
                    ("beta_fast", beta_fast),
                    ("beta_slow", beta_slow),
                    ("attention_factor", attention_factor),
                ] {
                    ok(k, v)?;
                }
                if original_max_position_embeddings == 0 {
                    return Err(
                        "`rope_scaling.original_max_position_embeddings` must be > 0".into(),
                    );
                }
                Ok(())
            }
            Self::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                ok("factor", factor)?;
                ok("low_freq_factor", low_freq_factor)?;
                ok("high_freq_factor", high_freq_factor)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(format!(
                        "`rope_scaling.high_freq_factor` ({high_freq_factor}) must exceed \
                         `low_freq_factor` ({low_freq_factor})"
                    ));
                }
                if original_max_position_embeddings == 0 {
                    return Err(
                        "`rope_scaling.original_max_position_embeddings` must be > 0".into(),
                    );
                }
                Ok(())
            }
        }
    }

    /// The multiplier of the cos/sin tables (YaRN), when not 1.
    pub fn attention_factor(&self) -> Option<f32> {
        match *self {
            Self::Yarn {
                attention_factor, ..
            } => Some(attention_factor as f32),
            _ => None,
        }
    }

    /// Applies the scaling to RoPE's inverse frequencies `1 / base^(2i/dim)`, in f32 as
    /// transformers does.
    pub fn apply(&self, inv_freq: &mut [f32], base: f32, dim: usize) {
        match *self {
            Self::Dynamic { .. } => {}
            Self::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor as f32),
            Self::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                truncate,
                ..
            } => {
                // The dimension (of `dim`) where a frequency completes `rotations` turns over the
                // original context; in f64, as Python's math.
                let (d, b) = (dim as f64, f64::from(base));
                let old = original_max_position_embeddings as f64;
                let at = |rotations: f64| {
                    d * (old / (rotations * 2.0 * std::f64::consts::PI)).ln() / (2.0 * b.ln())
                };
                let (mut low, mut high) = (at(beta_fast), at(beta_slow));
                if truncate {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0) as f32, high.min(d - 1.0) as f32);
                if low == high {
                    high += 0.001;
                }
                for (i, f) in inv_freq.iter_mut().enumerate() {
                    let pos = base.powf((2 * i) as f32 / dim as f32);
                    let (extra, inter) = (1.0 / pos, 1.0 / (factor as f32 * pos));
                    let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    let keep = 1.0 - ramp;
                    *f = inter * (1.0 - keep) + extra * keep;
                }
            }
            Self::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, lo, hi) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                );
                let old = original_max_position_embeddings as f32;
                let (lo_wavelen, hi_wavelen) = (old / lo, old / hi);
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen > lo_wavelen {
                        *f /= factor;
                    } else if wavelen >= hi_wavelen {
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
    }
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
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// Whether the query/key/value projections carry biases (Qwen2, GPT-2).
    pub fn qkv_bias(&self) -> bool {
        self.arch.qkv_bias || self.arch.biases
    }

    /// Whether queries and keys are RMS-normalised per head before RoPE (Qwen3, Gemma 3).
    pub fn qk_norm(&self) -> bool {
        self.arch.qk_norm
    }

    /// The longest sequence: the model's context.
    pub fn n_ctx(&self) -> usize {
        self.max_position_embeddings
    }

    /// The attention span of layer `l` (itself included), when it is a sliding-window layer.
    pub fn window(&self, l: usize) -> Option<usize> {
        let w = self.sliding_window?;
        let sliding = &self.arch.sliding_layers;
        (sliding.is_empty() || sliding.get(l).copied().unwrap_or(false)).then_some(w)
    }

    /// Checks the configuration before any tensor is shaped by it: positive sizes, divisibility,
    /// finite positive RoPE base and norm epsilon, sane RoPE scaling, a context whose RoPE tables
    /// fit in memory. The message names the field and the value.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return Err(format!("`{name}` must be > 0"));
            }
        }
        if self.head_dim == Some(0) || self.sliding_window == Some(0) {
            return Err("`head_dim` and `sliding_window` must be > 0 when set".into());
        }
        for (name, v) in [
            ("rope_theta", self.rope_theta),
            ("rms_norm_eps", self.rms_norm_eps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("`{name}` = {v} must be a finite number > 0"));
            }
        }
        if let Some(s) = &self.rope_scaling {
            s.validate()?;
        }
        let a = &self.arch;
        for (name, v) in [
            ("embedding scale", a.embed_scale),
            ("query_pre_attn_scalar", a.query_pre_attn_scalar),
            ("attn_logit_softcapping", a.attn_softcap),
            ("final_logit_softcapping", a.final_softcap),
            ("rope_local_base_freq", a.rope_local_theta),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                return Err(format!("`{name}` = {v} must be a finite number > 0"));
            }
        }
        if !a.sliding_layers.is_empty() && a.sliding_layers.len() != self.num_hidden_layers {
            return Err(format!(
                "{} layer types given for {} layers",
                a.sliding_layers.len(),
                self.num_hidden_layers
            ));
        }
        // The RoPE tables hold n_ctx × d_head/2 numbers each.
        const MAX_TABLE: usize = 1 << 27;
        if self.n_ctx().saturating_mul(self.head_dim() / 2) > MAX_TABLE {
            return Err(format!(
                "context of {} positions × head width {} is beyond what is supported (RoPE tables \
                 of at most {MAX_TABLE} numbers)",
                self.n_ctx(),
                self.head_dim()
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
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
            n_ctx: self.n_ctx(),
        }
    }
}

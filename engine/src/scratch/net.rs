//! The lab's model as named parameters, and the engine model they assemble into. The seed
//! model's parameters carry the names of the PyTorch lesson's `state_dict` (`embedding.weight`,
//! `transformer_encoder.layers.L.self_attn.in_proj_weight`, …, `output_layer.bias`); the modern
//! model's those of a Hugging Face Llama. Training and every later use go through the same
//! [`Llama`] forward, so what was trained is what is analysed.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};

use crate::config::{Act, Arch, LlamaConfig, NormKind};
use crate::error::{EngineError, Result};
use crate::model::Llama;
use crate::model::llama::{Block, BlockExtra, ModelExtra};
use crate::model::mat::Mat;
pub use neoscope_api::scratch::{ScratchArch, ScratchModelConfig};

/// `model_type` of a saved seed model (the modern one is saved as `llama`).
pub const MODEL_TYPE: &str = "neoscope_scratch";
/// LayerNorm ε of the seed model (PyTorch's default).
const LN_EPS: f64 = 1e-5;

/// Checks sizes before anything is allocated.
pub fn check(cfg: &ScratchModelConfig, vocab: usize) -> Result<()> {
    let bad = |m: String| Err(EngineError::Invalid(format!("model settings: {m}")));
    if cfg.n_layers == 0 || cfg.n_heads == 0 || cfg.d_model == 0 || cfg.d_ff == 0 {
        return bad("layers, heads, width and feed-forward width must be positive".into());
    }
    if !cfg.d_model.is_multiple_of(cfg.n_heads) {
        return bad(format!(
            "width {} is not a multiple of {} heads",
            cfg.d_model, cfg.n_heads
        ));
    }
    if cfg.arch == ScratchArch::Modern && !(cfg.d_model / cfg.n_heads).is_multiple_of(2) {
        return bad("RoPE needs an even head width".into());
    }
    if cfg.arch == ScratchArch::Seed && !cfg.d_model.is_multiple_of(2) {
        return bad("sinusoidal positions need an even width".into());
    }
    if cfg.n_ctx < 2 || vocab < 2 {
        return bad("the context and the vocabulary need at least 2 tokens".into());
    }
    if !(0.0..1.0).contains(&cfg.dropout) {
        return bad(format!("dropout {} must be in [0, 1)", cfg.dropout));
    }
    Ok(())
}

/// Roughly the memory (bytes) training a model of `cfg` with `vocab` tokens on batches of
/// `batch` windows needs: weights, gradients and two Adam moments (4 × 4 bytes a parameter),
/// plus the activations autograd keeps (each block's inputs, attention scores and feed-forward
/// values, the logits). An estimate for refusing what cannot fit, not an exact figure.
pub fn training_bytes(cfg: &ScratchModelConfig, vocab: usize, batch: usize) -> f64 {
    let (l, d, ff, t, h) = (
        cfg.n_layers as f64,
        cfg.d_model as f64,
        cfg.d_ff as f64,
        cfg.n_ctx as f64,
        cfg.n_heads as f64,
    );
    let (v, b) = (vocab as f64, batch as f64);
    let params = 2.0 * v * d + t * d + l * (4.0 * d * d + 3.0 * d * ff + 10.0 * d);
    let acts = b * t * (l * (12.0 * d + 2.0 * h * t + 3.0 * ff) + 3.0 * v);
    4.0 * (4.0 * params + 2.0 * acts)
}

/// Refuses a model whose training would need more memory than `dev` has (both numbers in the
/// message).
pub fn check_memory(
    cfg: &ScratchModelConfig,
    vocab: usize,
    batch: usize,
    dev: &Device,
) -> Result<()> {
    let need = training_bytes(cfg, vocab, batch);
    if let Some(have) = crate::model::weights::available(dev, None)
        && need > have as f64
    {
        return Err(EngineError::Invalid(format!(
            "model settings: training this model needs about {:.1} GB ({} layers of width {}, \
             feed-forward {}, context {}, vocabulary {vocab}, batches of {batch}) but {:.1} GB \
             are available; make it smaller",
            need / 1e9,
            cfg.n_layers,
            cfg.d_model,
            cfg.d_ff,
            cfg.n_ctx,
            have as f64 / 1e9
        )));
    }
    Ok(())
}

/// The engine configuration of a lab model.
pub fn llama_config(cfg: &ScratchModelConfig, vocab: usize) -> LlamaConfig {
    let (seed, d) = (cfg.arch == ScratchArch::Seed, cfg.d_model);
    let arch = if seed {
        Arch {
            norm: NormKind::Layer,
            act: Act::Relu,
            plain_mlp: true,
            biases: true,
            learned_positions: true,
            embed_scale: Some(f64::from((d as f32).sqrt())),
            post_norm: true,
            no_final_norm: true,
            head_bias: true,
            ..Arch::default()
        }
    } else {
        Arch::default()
    };
    LlamaConfig {
        hidden_size: d,
        intermediate_size: cfg.d_ff,
        num_hidden_layers: cfg.n_layers,
        num_attention_heads: cfg.n_heads,
        num_key_value_heads: None,
        vocab_size: vocab,
        rms_norm_eps: if seed { LN_EPS } else { 1e-6 },
        rope_theta: 10_000.0,
        max_position_embeddings: cfg.n_ctx,
        tie_word_embeddings: false,
        model_type: if seed { MODEL_TYPE } else { "llama" }.to_owned(),
        rope_scaling: None,
        head_dim: None,
        sliding_window: None,
        arch,
    }
}

/// How a parameter starts.
#[derive(Clone, Copy)]
enum Init {
    Uniform(f64),
    Normal(f64),
    Const(f32),
}

/// Every parameter's name, shape and initialisation, in a fixed order. Seed: PyTorch's
/// defaults for `nn.TransformerEncoderLayer` (Xavier-uniform `in_proj_weight`, zero attention
/// biases, `nn.Linear`'s U(±1/√fan_in)) and the lesson's U(±0.1) embedding and output layer
/// with a zero bias. Modern: N(0, 0.02) matrices, unit norms, as transformers initialises Llama.
fn layout(cfg: &ScratchModelConfig, vocab: usize) -> Vec<(String, Vec<usize>, Init)> {
    let (d, f) = (cfg.d_model, cfg.d_ff);
    let mut v: Vec<(String, Vec<usize>, Init)> = Vec::new();
    let mut push = |n: String, s: &[usize], i: Init| v.push((n, s.to_vec(), i));
    match cfg.arch {
        ScratchArch::Seed => {
            push("embedding.weight".into(), &[vocab, d], Init::Uniform(0.1));
            let (bd, bf) = (1.0 / (d as f64).sqrt(), 1.0 / (f as f64).sqrt());
            for l in 0..cfg.n_layers {
                let p = format!("transformer_encoder.layers.{l}");
                let xavier = (6.0 / (d + 3 * d) as f64).sqrt();
                push(
                    format!("{p}.self_attn.in_proj_weight"),
                    &[3 * d, d],
                    Init::Uniform(xavier),
                );
                push(
                    format!("{p}.self_attn.in_proj_bias"),
                    &[3 * d],
                    Init::Const(0.0),
                );
                push(
                    format!("{p}.self_attn.out_proj.weight"),
                    &[d, d],
                    Init::Uniform(bd),
                );
                push(
                    format!("{p}.self_attn.out_proj.bias"),
                    &[d],
                    Init::Const(0.0),
                );
                push(format!("{p}.linear1.weight"), &[f, d], Init::Uniform(bd));
                push(format!("{p}.linear1.bias"), &[f], Init::Uniform(bd));
                push(format!("{p}.linear2.weight"), &[d, f], Init::Uniform(bf));
                push(format!("{p}.linear2.bias"), &[d], Init::Uniform(bf));
                for n in ["norm1", "norm2"] {
                    push(format!("{p}.{n}.weight"), &[d], Init::Const(1.0));
                    push(format!("{p}.{n}.bias"), &[d], Init::Const(0.0));
                }
            }
            push(
                "output_layer.weight".into(),
                &[vocab, d],
                Init::Uniform(0.1),
            );
            push("output_layer.bias".into(), &[vocab], Init::Const(0.0));
        }
        ScratchArch::Modern => {
            let n = Init::Normal(0.02);
            push("model.embed_tokens.weight".into(), &[vocab, d], n);
            for l in 0..cfg.n_layers {
                let p = format!("model.layers.{l}");
                push(
                    format!("{p}.input_layernorm.weight"),
                    &[d],
                    Init::Const(1.0),
                );
                for q in ["q", "k", "v", "o"] {
                    push(format!("{p}.self_attn.{q}_proj.weight"), &[d, d], n);
                }
                push(
                    format!("{p}.post_attention_layernorm.weight"),
                    &[d],
                    Init::Const(1.0),
                );
                push(format!("{p}.mlp.gate_proj.weight"), &[f, d], n);
                push(format!("{p}.mlp.up_proj.weight"), &[f, d], n);
                push(format!("{p}.mlp.down_proj.weight"), &[d, f], n);
            }
            push("model.norm.weight".into(), &[d], Init::Const(1.0));
            push("lm_head.weight".into(), &[vocab, d], n);
        }
    }
    v
}

/// The lab's model: its sizes and its named parameters.
#[derive(Debug, Clone)]
pub struct Net {
    /// Sizes.
    pub cfg: ScratchModelConfig,
    /// Vocabulary size.
    pub vocab: usize,
    /// Parameters in layout order.
    pub params: Vec<(String, Var)>,
}

impl Net {
    /// Fresh parameters drawn with `seed`.
    pub fn init(cfg: &ScratchModelConfig, vocab: usize, seed: u64, dev: &Device) -> Result<Self> {
        check(cfg, vocab)?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut params = Vec::new();
        for (name, shape, init) in layout(cfg, vocab) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = match init {
                Init::Const(c) => vec![c; n],
                Init::Uniform(b) => (0..n).map(|_| rng.random_range(-b..b) as f32).collect(),
                Init::Normal(s) => crate::sampling::normal_vec(&mut rng, n, s as f32),
            };
            let t = Tensor::from_vec(data, shape, dev)?;
            params.push((name, Var::from_tensor(&t)?));
        }
        Ok(Self {
            cfg: cfg.clone(),
            vocab,
            params,
        })
    }

    /// Parameters from saved tensors: every name of the layout, of its shape, and nothing else.
    pub fn from_tensors(
        cfg: &ScratchModelConfig,
        vocab: usize,
        mut map: HashMap<String, Tensor>,
        source: &Path,
    ) -> Result<Self> {
        check(cfg, vocab)?;
        let mut params = Vec::new();
        for (name, shape, _) in layout(cfg, vocab) {
            let t = map.remove(&name).ok_or_else(|| {
                EngineError::bad_model(source, format!("missing tensor `{name}`"))
            })?;
            if t.dims() != shape.as_slice() {
                return Err(EngineError::bad_model(
                    source,
                    format!(
                        "tensor `{name}` has shape {:?}, expected {shape:?}",
                        t.dims()
                    ),
                ));
            }
            params.push((name, Var::from_tensor(&t.to_dtype(DType::F32)?)?));
        }
        if let Some(extra) = map.keys().next() {
            return Err(EngineError::bad_model(
                source,
                format!("unexpected tensor `{extra}` for this model's settings"),
            ));
        }
        Ok(Self {
            cfg: cfg.clone(),
            vocab,
            params,
        })
    }

    /// The parameters as plain tensors (no gradient tracking).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// Number of parameters.
    pub fn count(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The engine model over these parameters; its tensors are the variables themselves, so
    /// a loss computed through it has gradients for every parameter.
    pub fn llama(&self) -> Result<Llama> {
        let map: HashMap<&str, &Tensor> = self
            .params
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_tensor()))
            .collect();
        assemble(&self.cfg, self.vocab, &map)
    }
}

/// Builds the engine model from named tensors.
pub fn assemble(
    cfg: &ScratchModelConfig,
    vocab: usize,
    t: &HashMap<&str, &Tensor>,
) -> Result<Llama> {
    let get = |n: &str| -> Result<Tensor> {
        t.get(n)
            .map(|x| (*x).clone())
            .ok_or_else(|| EngineError::Invalid(format!("missing parameter `{n}`")))
    };
    let lc = llama_config(cfg, vocab);
    let d = cfg.d_model;
    let dense = |x: Tensor| Mat::Dense(x);
    match cfg.arch {
        ScratchArch::Seed => {
            let mut blocks = Vec::with_capacity(cfg.n_layers);
            for l in 0..cfg.n_layers {
                let p = format!("transformer_encoder.layers.{l}");
                let w = get(&format!("{p}.self_attn.in_proj_weight"))?;
                blocks.push(Block {
                    attn_norm: get(&format!("{p}.norm1.weight"))?,
                    wq: dense(w.narrow(0, 0, d)?),
                    wk: dense(w.narrow(0, d, d)?),
                    wv: dense(w.narrow(0, 2 * d, d)?),
                    wo: dense(get(&format!("{p}.self_attn.out_proj.weight"))?),
                    mlp_norm: get(&format!("{p}.norm2.weight"))?,
                    w_gate: None,
                    w_up: dense(get(&format!("{p}.linear1.weight"))?),
                    w_down: dense(get(&format!("{p}.linear2.weight"))?),
                    qkv_bias: Some(get(&format!("{p}.self_attn.in_proj_bias"))?),
                    qk_norm: None,
                    extra: BlockExtra {
                        norm_biases: Some((
                            get(&format!("{p}.norm1.bias"))?,
                            get(&format!("{p}.norm2.bias"))?,
                        )),
                        o_bias: Some(get(&format!("{p}.self_attn.out_proj.bias"))?),
                        up_bias: Some(get(&format!("{p}.linear1.bias"))?),
                        down_bias: Some(get(&format!("{p}.linear2.bias"))?),
                        post_norms: None,
                    },
                });
            }
            let embed = get("embedding.weight")?;
            let dev = embed.device().clone();
            let extra = ModelExtra {
                pos_embed: Some(sinusoidal(cfg.n_ctx, d, &dev)?),
                final_norm_bias: None,
                head_bias: Some(get("output_layer.bias")?),
            };
            // No final norm: `final_norm` is a placeholder the forward never reads.
            let final_norm = Tensor::ones(d, DType::F32, &dev)?;
            Llama::with_extra(
                lc,
                embed,
                blocks,
                final_norm,
                Some(get("output_layer.weight")?),
                extra,
            )
        }
        ScratchArch::Modern => {
            let mut blocks = Vec::with_capacity(cfg.n_layers);
            for l in 0..cfg.n_layers {
                let p = format!("model.layers.{l}");
                let m = |n: &str| get(&format!("{p}.{n}.weight")).map(dense);
                blocks.push(Block {
                    attn_norm: get(&format!("{p}.input_layernorm.weight"))?,
                    wq: m("self_attn.q_proj")?,
                    wk: m("self_attn.k_proj")?,
                    wv: m("self_attn.v_proj")?,
                    wo: m("self_attn.o_proj")?,
                    mlp_norm: get(&format!("{p}.post_attention_layernorm.weight"))?,
                    w_gate: Some(m("mlp.gate_proj")?),
                    w_up: m("mlp.up_proj")?,
                    w_down: m("mlp.down_proj")?,
                    qkv_bias: None,
                    qk_norm: None,
                    extra: BlockExtra::default(),
                });
            }
            Llama::new(
                lc,
                get("model.embed_tokens.weight")?,
                blocks,
                get("model.norm.weight")?,
                Some(get("lm_head.weight")?),
            )
        }
    }
}

/// The lesson's sinusoidal position table (n_ctx, d): `sin(p·ω_i)` in even columns,
/// `cos(p·ω_i)` in odd ones, `ω_i = exp(−2i·ln(10000)/d)`, computed in f32 as PyTorch does.
pub fn sinusoidal(n_ctx: usize, d: usize, dev: &Device) -> Result<Tensor> {
    let k = -(10_000f32).ln() / d as f32;
    let mut pe = vec![0f32; n_ctx * d];
    for p in 0..n_ctx {
        for i in (0..d).step_by(2) {
            let a = p as f32 * (i as f32 * k).exp();
            pe[p * d + i] = a.sin();
            if i + 1 < d {
                pe[p * d + i + 1] = a.cos();
            }
        }
    }
    Ok(Tensor::from_vec(pe, (n_ctx, d), dev)?)
}

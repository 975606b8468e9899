//! Hugging Face folders: `config.json` (checked key by key in `hf_config`), `*.safetensors`
//! (sharded too) and `tokenizer.json`; each family's tensor names and layouts mapped onto the
//! block (Phi-3's fused projections split, GPT-2's `Conv1D` weights transposed, Gemma's
//! `(1 + w)` norms folded); and saving a Llama-layout model as such a folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::hf_config::norm_plus_one;
use super::llama::{Block, BlockExtra, Llama, ModelExtra};
use super::load::{LoadedModel, finish, layers_held, refuse_leftovers};
use super::mat::Mat;
use super::weights::{LoadOptions, WeightsInfo, available, census_safetensors, choose, dtype_of};
use crate::config::LlamaConfig;
use crate::error::{EngineError, Result};
use crate::tokenizer::ModelTokenizer;

/// The checkpoint's tensors, taken out one by one (what is left at the end is refused).
struct Tensors<'a> {
    map: HashMap<String, Tensor>,
    dir: &'a Path,
    /// config.json's `model_type`, which decides the tensors looked for.
    model_type: &'a str,
    mat_dtype: DType,
    plus_one: bool,
}

impl Tensors<'_> {
    fn f32(&mut self, name: &str) -> Result<Tensor> {
        let t = self.map.remove(name).ok_or_else(|| {
            EngineError::bad_model(
                self.dir,
                format!(
                    "missing tensor `{name}`, which config.json's model_type `{}` needs",
                    self.model_type
                ),
            )
        })?;
        Ok(t.to_dtype(DType::F32)?)
    }

    /// An RMSNorm weight, with Gemma's `1 +` folded in (computed in f32, as Gemma does).
    fn norm(&mut self, name: &str) -> Result<Tensor> {
        let w = self.f32(name)?;
        Ok(if self.plus_one { (w + 1.0)? } else { w })
    }

    fn mat(&mut self, name: &str) -> Result<Mat> {
        let t = self.f32(name)?;
        self.as_mat(t)
    }

    fn as_mat(&self, t: Tensor) -> Result<Mat> {
        Ok(Mat::Dense(t.contiguous()?.to_dtype(self.mat_dtype)?))
    }

    /// A fused projection `name` split into blocks of rows of the heights the config gives.
    fn split<const N: usize>(
        &self,
        name: &str,
        w: &Tensor,
        heights: [usize; N],
    ) -> Result<[Mat; N]> {
        let rows = w.dim(0)?;
        if heights.iter().sum::<usize>() != rows {
            return Err(EngineError::bad_model(
                self.dir,
                format!(
                    "weight `{name}` has {rows} rows, but config.json's sizes stack {heights:?} \
                     (heads, KV heads, head width or feed-forward width do not match the weights)"
                ),
            ));
        }
        let mut start = 0;
        let mats = heights
            .iter()
            .map(|h| {
                let m = self.as_mat(w.narrow(0, start, *h)?);
                start += h;
                m
            })
            .collect::<Result<Vec<Mat>>>()?;
        mats.try_into()
            .map_err(|_| EngineError::Invalid(format!("splitting `{name}`")))
    }
}

/// Loads a Hugging Face model directory (the blocks' matrices as `opts.dtype`, the rest f32).
pub(super) fn load_hf_dir(dir: &Path, dev: &Device, opts: LoadOptions) -> Result<LoadedModel> {
    let cfg_path = dir.join("config.json");
    let text = neoscope_api::files::read_text(&cfg_path)?;
    if super::hf_config::model_type_of(&text).as_deref() == Some(crate::scratch::net::MODEL_TYPE) {
        // A model trained in the from-scratch lab with the lesson's architecture.
        let (llama, st) = crate::scratch::run::load_seed_dir(dir, &text, dev, opts)?;
        let weights = WeightsInfo {
            dtype: super::weights::WeightDType::F32,
            bytes: super::weights::bytes_of(&llama),
            stored_as: "F32".into(),
        };
        let tokenizer = ModelTokenizer::from_hf_dir(dir)?;
        let arch = llama.cfg.model_type.clone();
        return finish(llama, tokenizer, dir, ("hf", &st, arch, weights), dev);
    }
    let cfg = super::hf_config::parse(&text).map_err(|msg| EngineError::Unsupported {
        path: cfg_path.clone(),
        msg,
    })?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| EngineError::io(dir, e))?
        .filter_map(std::result::Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    let first = files
        .first()
        .cloned()
        .ok_or_else(|| EngineError::bad_model(dir, "no *.safetensors file"))?;
    let census = census_safetensors(&files)?;
    let chosen = choose(opts.dtype, &census, available(dev, opts.memory_limit), dir)?;
    let weights = WeightsInfo {
        dtype: chosen,
        bytes: census.bytes_as(chosen),
        stored_as: census.stored_as,
    };
    let mut map = HashMap::new();
    for f in &files {
        let t = candle_core::safetensors::load(f, dev)
            .map_err(|e| EngineError::bad_model(f, e.to_string()))?;
        map.extend(t);
    }
    let held = layers_held(map.keys(), &["layers", "h"]);
    if held != cfg.num_hidden_layers {
        return Err(EngineError::bad_model(
            &cfg_path,
            format!(
                "`num_hidden_layers` is {}, but the weights hold the tensors of {held} layers",
                cfg.num_hidden_layers
            ),
        ));
    }
    let mut t = Tensors {
        map,
        dir,
        model_type: &cfg.model_type,
        mat_dtype: dtype_of(chosen),
        plus_one: norm_plus_one(&cfg.model_type),
    };
    let (embed, blocks, final_norm, extra) = if cfg.model_type == "gpt2" {
        gpt2(&mut t, &cfg)?
    } else {
        let embed = t.f32("model.embed_tokens.weight")?;
        let blocks = (0..cfg.num_hidden_layers)
            .map(|l| llama_block(&mut t, &cfg, l))
            .collect::<Result<Vec<_>>>()?;
        let final_norm = t.norm("model.norm.weight")?;
        (embed, blocks, final_norm, ModelExtra::default())
    };
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        Some(t.f32("lm_head.weight").map_err(|_| {
            EngineError::bad_model(
                &cfg_path,
                "`tie_word_embeddings` is false (the default when absent), but the weights have \
                 no `lm_head.weight`",
            )
        })?)
    };
    if cfg.tie_word_embeddings
        && let Some(head) = t.map.remove("lm_head.weight")
    {
        // Some tied checkpoints also store the head; it must be the embedding.
        let same = head.dims() == embed.dims()
            && (head.to_dtype(DType::F32)? - &embed)?
                .abs()?
                .max_all()?
                .to_scalar::<f32>()?
                == 0.0;
        if !same {
            return Err(EngineError::Unsupported {
                path: dir.to_path_buf(),
                msg: "`tie_word_embeddings` is true but `lm_head.weight` differs from the \
                      embedding"
                    .into(),
            });
        }
    }
    // Old checkpoints keep buffers that hold nothing the computation needs: RoPE's `inv_freq`,
    // GPT-2's causal-mask `attn.bias` / `attn.masked_bias`. Any other tensor left over is
    // refused by name.
    refuse_leftovers(
        dir,
        &format!("`{}` (config.json's model_type)", cfg.model_type),
        t.map.keys().filter(|k| {
            !(k.ends_with("rotary_emb.inv_freq")
                || k.ends_with("attn.bias")
                || k.ends_with("attn.masked_bias"))
        }),
        |_| "",
    )?;
    let tokenizer = ModelTokenizer::from_hf_dir(dir)?;
    let arch = cfg.model_type.clone();
    let llama = Llama::with_extra(cfg, embed, blocks, final_norm, lm_head, extra)
        .map_err(|e| EngineError::bad_model(dir, e.to_string()))?;
    finish(llama, tokenizer, dir, ("hf", &first, arch, weights), dev)
}

/// One block of the Llama-named families (Llama, Mistral, Qwen, Gemma, Phi-3).
fn llama_block(t: &mut Tensors, cfg: &LlamaConfig, l: usize) -> Result<Block> {
    let p = format!("model.layers.{l}");
    let (hd, m) = (cfg.head_dim(), cfg.intermediate_size);
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.kv_heads() * hd);
    let phi3 = cfg.model_type == "phi3";
    let (wq, wk, wv) = if phi3 {
        let name = format!("{p}.self_attn.qkv_proj.weight");
        let w = t.f32(&name)?;
        let [wq, wk, wv] = t.split(&name, &w, [q, kv, kv])?;
        (wq, wk, wv)
    } else {
        (
            t.mat(&format!("{p}.self_attn.q_proj.weight"))?,
            t.mat(&format!("{p}.self_attn.k_proj.weight"))?,
            t.mat(&format!("{p}.self_attn.v_proj.weight"))?,
        )
    };
    let (w_gate, w_up) = if phi3 {
        // Phi-3's fused projection holds the gate first, then the up projection.
        let name = format!("{p}.mlp.gate_up_proj.weight");
        let w = t.f32(&name)?;
        let [g, u] = t.split(&name, &w, [m, m])?;
        (g, u)
    } else {
        (
            t.mat(&format!("{p}.mlp.gate_proj.weight"))?,
            t.mat(&format!("{p}.mlp.up_proj.weight"))?,
        )
    };
    // Gemma 2/3 put a norm before and after both sublayers; Llama's post-attention norm is
    // its pre-MLP norm.
    let (mlp_norm, post_norms) = if cfg.arch.sandwich_norms {
        let post_attn = t.norm(&format!("{p}.post_attention_layernorm.weight"))?;
        let pre_mlp = t.norm(&format!("{p}.pre_feedforward_layernorm.weight"))?;
        let post_mlp = t.norm(&format!("{p}.post_feedforward_layernorm.weight"))?;
        (pre_mlp, Some((post_attn, post_mlp)))
    } else {
        (
            t.norm(&format!("{p}.post_attention_layernorm.weight"))?,
            None,
        )
    };
    Ok(Block {
        attn_norm: t.norm(&format!("{p}.input_layernorm.weight"))?,
        wq,
        wk,
        wv,
        wo: t.mat(&format!("{p}.self_attn.o_proj.weight"))?,
        mlp_norm,
        w_gate: Some(w_gate),
        w_up,
        w_down: t.mat(&format!("{p}.mlp.down_proj.weight"))?,
        qkv_bias: if cfg.qkv_bias() {
            let b = ["q", "k", "v"]
                .iter()
                .map(|n| t.f32(&format!("{p}.self_attn.{n}_proj.bias")))
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&b, 0)?)
        } else {
            None
        },
        qk_norm: if cfg.qk_norm() {
            Some((
                t.norm(&format!("{p}.self_attn.q_norm.weight"))?,
                t.norm(&format!("{p}.self_attn.k_norm.weight"))?,
            ))
        } else {
            None
        },
        extra: BlockExtra {
            post_norms,
            ..BlockExtra::default()
        },
    })
}

/// GPT-2: `transformer.`-prefixed names (or none, in old checkpoints), `Conv1D` weights stored
/// as (in, out), the query/key/value projection fused in `c_attn`, biases everywhere.
fn gpt2(t: &mut Tensors, cfg: &LlamaConfig) -> Result<(Tensor, Vec<Block>, Tensor, ModelExtra)> {
    let pre = if t.map.contains_key("wte.weight") {
        ""
    } else {
        "transformer."
    };
    let d = cfg.hidden_size;
    let conv = |t: &mut Tensors, name: &str| -> Result<Tensor> { Ok(t.f32(name)?.t()?) };
    let embed = t.f32(&format!("{pre}wte.weight"))?;
    let pos_embed = t.f32(&format!("{pre}wpe.weight"))?;
    let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("{pre}h.{l}");
        let name = format!("{p}.attn.c_attn.weight");
        let qkv = conv(t, &name)?;
        let [wq, wk, wv] = t.split(&name, &qkv, [d, d, d])?;
        blocks.push(Block {
            attn_norm: t.f32(&format!("{p}.ln_1.weight"))?,
            wq,
            wk,
            wv,
            wo: {
                let w = conv(t, &format!("{p}.attn.c_proj.weight"))?;
                t.as_mat(w)?
            },
            mlp_norm: t.f32(&format!("{p}.ln_2.weight"))?,
            w_gate: None,
            w_up: {
                let w = conv(t, &format!("{p}.mlp.c_fc.weight"))?;
                t.as_mat(w)?
            },
            w_down: {
                let w = conv(t, &format!("{p}.mlp.c_proj.weight"))?;
                t.as_mat(w)?
            },
            qkv_bias: Some(t.f32(&format!("{p}.attn.c_attn.bias"))?),
            qk_norm: None,
            extra: BlockExtra {
                norm_biases: Some((
                    t.f32(&format!("{p}.ln_1.bias"))?,
                    t.f32(&format!("{p}.ln_2.bias"))?,
                )),
                o_bias: Some(t.f32(&format!("{p}.attn.c_proj.bias"))?),
                up_bias: Some(t.f32(&format!("{p}.mlp.c_fc.bias"))?),
                down_bias: Some(t.f32(&format!("{p}.mlp.c_proj.bias"))?),
                post_norms: None,
            },
        });
    }
    let final_norm = t.f32(&format!("{pre}ln_f.weight"))?;
    let extra = ModelExtra {
        pos_embed: Some(pos_embed),
        final_norm_bias: Some(t.f32(&format!("{pre}ln_f.bias"))?),
        head_bias: None,
    };
    Ok((embed, blocks, final_norm, extra))
}

/// Saves a model as a Hugging Face directory (config, one safetensors file, tokenizer).
/// Only the Llama-named layouts are written (Llama, Mistral, Qwen2, Qwen3).
pub fn save_hf_dir(llama: &Llama, tokenizer: &ModelTokenizer, dir: &Path) -> Result<()> {
    let family = llama.cfg.model_type.as_str();
    if !matches!(family, "llama" | "mistral" | "qwen2" | "qwen3") {
        return Err(EngineError::Unsupported {
            path: dir.to_path_buf(),
            msg: format!("saving a `{family}` model as a Hugging Face folder is not implemented"),
        });
    }
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("model.embed_tokens.weight".into(), llama.embed.clone());
    t.insert("model.norm.weight".into(), llama.final_norm.clone());
    if llama.head_only_quantized() {
        t.insert("lm_head.weight".into(), llama.dense_head()?);
    } else if let Some(h) = &llama.lm_head {
        t.insert("lm_head.weight".into(), h.clone());
    }
    for (l, b) in llama.blocks.iter().enumerate() {
        let p = format!("model.layers.{l}");
        for (n, w) in [
            ("input_layernorm", &b.attn_norm),
            ("self_attn.q_proj", b.wq.dense()?),
            ("self_attn.k_proj", b.wk.dense()?),
            ("self_attn.v_proj", b.wv.dense()?),
            ("self_attn.o_proj", b.wo.dense()?),
            ("post_attention_layernorm", &b.mlp_norm),
            (
                "mlp.gate_proj",
                b.w_gate
                    .as_ref()
                    .ok_or_else(|| EngineError::Invalid("a gated MLP lacks its gate".into()))?
                    .dense()?,
            ),
            ("mlp.up_proj", b.w_up.dense()?),
            ("mlp.down_proj", b.w_down.dense()?),
        ] {
            t.insert(format!("{p}.{n}.weight"), w.clone());
        }
        if let Some((qn, kn)) = &b.qk_norm {
            t.insert(format!("{p}.self_attn.q_norm.weight"), qn.clone());
            t.insert(format!("{p}.self_attn.k_norm.weight"), kn.clone());
        }
        if let Some(bias) = &b.qkv_bias {
            let (q, kv) = (b.wq.dims()?.0, b.wk.dims()?.0);
            for (n, start, len) in [("q", 0, q), ("k", q, kv), ("v", q + kv, kv)] {
                t.insert(
                    format!("{p}.self_attn.{n}_proj.bias"),
                    bias.narrow(0, start, len)?.contiguous()?,
                );
            }
        }
    }
    let st = dir.join("model.safetensors");
    let mut t: Vec<(String, Tensor)> = t.into_iter().collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    crate::artifact::write_tensors(&st, &t, None)?;
    crate::artifact::write_json(&dir.join("config.json"), &llama.cfg)?;
    let tok_path = dir.join("tokenizer.json");
    let tok = tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
    crate::artifact::write_atomic(&tok_path, tok.as_bytes())?;
    Ok(())
}

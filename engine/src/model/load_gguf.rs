//! GGUF files as llama.cpp writes them, for the architectures whose conventions are
//! implemented here (`llama`, `qwen2`, `qwen3`, `gemma`, `gemma2`, `gemma3`, `phi3`, `gpt2`): the
//! configuration from `{arch}.*` metadata plus what llama.cpp fixes in code for each
//! architecture (Gemma 2's alternating windows, Gemma 3's one global layer in six and local RoPE
//! base 10000, the attention scale), the blocks' matrices kept quantized or converted, q/k rows
//! of `llama` files un-permuted to rotate-half order, fused projections split.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{QStorage, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};

use super::llama::{Block, BlockExtra, Llama, ModelExtra};
use super::load::{LoadedModel, finish, layers_held, refuse_leftovers};
use super::mat::{Mat, is_quantized};
use super::weights::{
    LoadOptions, WeightDType, WeightsInfo, available, census_gguf, choose, dtype_of,
};
use crate::config::{Arch, LlamaConfig, NormKind, RopeScaling};
use crate::error::{EngineError, Result};
use crate::tokenizer::ModelTokenizer;

/// Architectures read here.
const ARCHES: &[&str] = &[
    "llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2",
];

type Metadata = HashMap<String, gguf_file::Value>;

/// The non-negative integer at `key`, `None` when absent. Any other type is an error naming the
/// key (candle's own conversions would read `true` as 1).
fn md_opt_usize(md: &Metadata, key: &str, path: &Path) -> Result<Option<usize>> {
    use gguf_file::Value as V;
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    let n: Option<u64> = match v {
        V::U8(x) => Some(u64::from(*x)),
        V::U16(x) => Some(u64::from(*x)),
        V::U32(x) => Some(u64::from(*x)),
        V::U64(x) => Some(*x),
        V::I8(x) => u64::try_from(*x).ok(),
        V::I16(x) => u64::try_from(*x).ok(),
        V::I32(x) => u64::try_from(*x).ok(),
        V::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    };
    n.map(|x| Some(usize::try_from(x).unwrap_or(usize::MAX)))
        .ok_or_else(|| {
            EngineError::bad_model(
                path,
                format!("metadata `{key}` must be a non-negative integer, found {v:?}"),
            )
        })
}

fn md_usize(md: &Metadata, key: &str, path: &Path) -> Result<usize> {
    md_opt_usize(md, key, path)?
        .ok_or_else(|| EngineError::bad_model(path, format!("missing metadata `{key}`")))
}

/// The number at `key`, `None` when absent; a value that is not a number is an error.
fn md_f64(md: &Metadata, key: &str, path: &Path) -> Result<Option<f64>> {
    use gguf_file::Value as V;
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    match v {
        V::F32(x) => Ok(Some(f64::from(*x))),
        V::F64(x) => Ok(Some(*x)),
        _ => md_opt_usize(md, key, path)
            .map(|n| n.map(|n| n as f64))
            .map_err(|_| {
                EngineError::bad_model(
                    path,
                    format!("metadata `{key}` must be a number, found {v:?}"),
                )
            }),
    }
}

/// RoPE scaling from llama.cpp's metadata (`{arch}.rope.scaling.type`).
fn rope_scaling(
    md: &Metadata,
    a: &str,
    path: &Path,
) -> std::result::Result<Option<RopeScaling>, String> {
    let key = format!("{a}.rope.scaling.type");
    let kind = md
        .get(&key)
        .and_then(|v| v.to_string().ok())
        .map_or("none", String::as_str);
    match kind {
        "none" => Ok(None),
        "linear" => {
            let factor = md_f64(md, &format!("{a}.rope.scaling.factor"), path)
                .map_err(|e| e.to_string())?
                .ok_or(format!("`{key}` is linear but the factor is missing"))?;
            Ok((factor != 1.0).then_some(RopeScaling::Linear { factor }))
        }
        other => Err(format!(
            "`{key}` = \"{other}\" is not implemented (implemented: none, linear)"
        )),
    }
}

/// llama.cpp stores q/k rows of `llama` files permuted for interleaved RoPE; this undoes it,
/// giving the rotate-half layout of Hugging Face checkpoints.
fn unpermute_qk(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    let hd = rows / heads;
    Ok(w.reshape((heads, hd / 2, 2, cols))?
        .transpose(1, 2)?
        .reshape((rows, cols))?
        .contiguous()?)
}

/// A GGUF file's tensors by name (read on the CPU), remembering which were used.
struct GgufTensors<'a> {
    content: &'a gguf_file::Content,
    file: std::fs::File,
    path: &'a Path,
    dev: &'a Device,
    used: Vec<String>,
    keep: bool,
    mat_dtype: DType,
}

impl GgufTensors<'_> {
    fn q(&mut self, name: &str) -> Result<QTensor> {
        let q = self
            .content
            .tensor(&mut self.file, name, &Device::Cpu)
            .map_err(|e| EngineError::bad_model(self.path, format!("tensor `{name}`: {e}")))?;
        self.used.push(name.to_owned());
        Ok(q)
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn f32(&mut self, name: &str) -> Result<Tensor> {
        dense(&self.q(name)?, DType::F32, self.dev)
    }

    /// A block matrix; `heads` un-permutes q/k rows.
    fn mat(&mut self, name: &str, heads: Option<usize>) -> Result<Mat> {
        let q = self.q(name)?;
        block_mat(&q, heads, self.keep, self.mat_dtype, self.dev)
    }

    /// The output head's quantized blocks (from its tensor `q`) when the blocks stay quantized
    /// and the file stores the head quantized.
    fn quantized_head(&self, q: &QTensor) -> Result<Option<Mat>> {
        (self.keep && is_quantized(q.dtype()))
            .then(|| block_mat(q, None, true, self.mat_dtype, self.dev))
            .transpose()
    }

    /// A fused projection cut into consecutive row ranges of the given heights.
    fn split(&mut self, name: &str, heights: &[usize]) -> Result<Vec<Mat>> {
        let q = self.q(name)?;
        let (rows, cols) = q.shape().dims2()?;
        if heights.iter().sum::<usize>() != rows {
            return Err(EngineError::bad_model(
                self.path,
                format!("tensor `{name}` has {rows} rows, expected {heights:?} stacked"),
            ));
        }
        let t = q.dtype();
        let row = cols / t.block_size() * t.type_size();
        let data = q.data()?;
        let mut start = 0;
        let mut out = Vec::with_capacity(heights.len());
        for &h in heights {
            // Rows are whole blocks, so a range of rows is a range of bytes.
            let bytes = &data[start * row..(start + h) * row];
            let part = QTensor::new(
                QStorage::from_data(bytes.into(), &Device::Cpu, t)?,
                (h, cols),
            )?;
            out.push(block_mat(&part, None, self.keep, self.mat_dtype, self.dev)?);
            start += h;
        }
        Ok(out)
    }
}

fn dense(q: &QTensor, dtype: DType, dev: &Device) -> Result<Tensor> {
    Ok(q.dequantize(&Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(dev)?)
}

/// A block matrix from its GGUF tensor: its quantized blocks kept when `keep` (float tensors
/// are read dense), else dense of `dtype`; `heads` un-permutes q/k rows.
fn block_mat(
    q: &QTensor,
    heads: Option<usize>,
    keep: bool,
    dtype: DType,
    dev: &Device,
) -> Result<Mat> {
    if keep && is_quantized(q.dtype()) {
        let (rows, cols) = q.shape().dims2()?;
        let t = q.dtype();
        let data = q.data()?;
        let data = match heads {
            // Rows are whole blocks, so the permutation moves rows of bytes.
            Some(h) => {
                let row = cols / t.block_size() * t.type_size();
                let (hd, half) = (rows / h, rows / h / 2);
                let mut out = vec![0u8; data.len()];
                for new in 0..rows {
                    // New row (head, j, i) comes from old row (head, i, j) of (h, hd/2, 2).
                    let (head, r) = (new / hd, new % hd);
                    let old = head * hd + (r % half) * 2 + r / half;
                    out[new * row..(new + 1) * row]
                        .copy_from_slice(&data[old * row..(old + 1) * row]);
                }
                std::borrow::Cow::Owned(out)
            }
            None => data,
        };
        let storage = QStorage::from_data(data, dev, t)?;
        return Ok(Mat::Quant(Arc::new(QTensor::new(storage, (rows, cols))?)));
    }
    let w = dense(q, DType::F32, dev)?;
    let w = match heads {
        Some(h) => unpermute_qk(&w, h)?,
        None => w,
    };
    Ok(Mat::Dense(w.to_dtype(dtype)?))
}

/// The configuration of a GGUF file: its metadata, and what llama.cpp fixes in code for the
/// architecture.
/// The model's config from the metadata of architecture `a`; `blocks` is the number of blocks the
/// file's tensors hold, checked against `block_count` before anything is sized by it.
fn config(
    md: &Metadata,
    a: &str,
    (vocab, blocks): (usize, usize),
    tied: bool,
    path: &Path,
) -> Result<LlamaConfig> {
    let unsupported = |msg: String| EngineError::Unsupported {
        path: path.to_path_buf(),
        msg,
    };
    let key = |k: &str| format!("{a}.{k}");
    let n_layers = md_usize(md, &key("block_count"), path)?;
    if n_layers != blocks {
        return Err(EngineError::bad_model(
            path,
            format!(
                "metadata `{a}.block_count` is {n_layers}, but the file holds the tensors of \
                 {blocks} blocks"
            ),
        ));
    }
    let d = md_usize(md, &key("embedding_length"), path)?;
    let heads = md_usize(md, &key("attention.head_count"), path)?;
    let kv_heads = md_opt_usize(md, &key("attention.head_count_kv"), path)?.unwrap_or(heads);
    let head_dim = md_opt_usize(md, &key("attention.key_length"), path)?;
    if let (Some(k), Some(v)) = (
        head_dim,
        md_opt_usize(md, &key("attention.value_length"), path)?,
    ) && k != v
    {
        return Err(unsupported(format!(
            "`{a}.attention.key_length` {k} differs from `value_length` {v}"
        )));
    }
    let hd = head_dim.unwrap_or(d / heads.max(1));
    if let Some(r) = md_opt_usize(md, &key("rope.dimension_count"), path)?
        && r != hd
        && a != "gpt2"
    {
        return Err(unsupported(format!(
            "`{a}.rope.dimension_count` = {r}: partial rotary embeddings are not implemented"
        )));
    }
    let eps = md_f64(md, &key("attention.layer_norm_rms_epsilon"), path)?
        .or(md_f64(md, &key("attention.layer_norm_epsilon"), path)?)
        .unwrap_or(1e-5);
    let window = md_opt_usize(md, &key("attention.sliding_window"), path)?;
    let model_type = match a {
        "gemma3" => "gemma3_text",
        other => other,
    };
    let mut arch = Arch::family(model_type, d);
    if matches!(a, "gemma2" | "gemma3") {
        // llama.cpp scales by the head width, except the 27B models (d_model / n_heads).
        let big = (a == "gemma2" && n_layers == 46) || (a == "gemma3" && n_layers == 62);
        arch.query_pre_attn_scalar = Some(if big { d / heads } else { hd } as f64);
        let pattern = if a == "gemma2" { 2 } else { 6 };
        arch.sliding_layers = (0..n_layers).map(|i| (i + 1) % pattern != 0).collect();
    }
    if a == "gemma2" {
        arch.attn_softcap = md_f64(md, &key("attn_logit_softcapping"), path)?;
        arch.final_softcap = md_f64(md, &key("final_logit_softcapping"), path)?;
    }
    if a == "gemma3" {
        arch.rope_local_theta = Some(10_000.0);
    }
    let cfg = LlamaConfig {
        hidden_size: d,
        intermediate_size: md_usize(md, &key("feed_forward_length"), path)?,
        num_hidden_layers: n_layers,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv_heads),
        vocab_size: vocab,
        rms_norm_eps: eps,
        rope_theta: md_f64(md, &key("rope.freq_base"), path)?.unwrap_or(10_000.0),
        max_position_embeddings: md_opt_usize(md, &key("context_length"), path)?.unwrap_or(2048),
        tie_word_embeddings: tied,
        model_type: model_type.into(),
        rope_scaling: rope_scaling(md, a, path).map_err(unsupported)?,
        head_dim: head_dim.filter(|h| *h != d / heads.max(1)),
        sliding_window: window.filter(|_| matches!(a, "gemma2" | "gemma3" | "phi3")),
        arch,
    };
    cfg.validate()
        .map_err(|e| EngineError::bad_model(path, format!("metadata: {e}")))?;
    Ok(cfg)
}

/// Every tensor's shape must count its values without overflow, in whole blocks of its type,
/// and its bytes must lie inside the file: a damaged header would otherwise size buffers by
/// wrapped-around products.
fn check_tensor_infos(content: &gguf_file::Content, f: &std::fs::File, path: &Path) -> Result<()> {
    let len = f.metadata().map_err(|e| EngineError::io(path, e))?.len();
    for (name, info) in &content.tensor_infos {
        let t = info.ggml_dtype;
        let dims = info.shape.dims();
        let elems = dims.iter().try_fold(1_usize, |a, d| a.checked_mul(*d));
        let bytes = elems
            .filter(|n| n % t.block_size() == 0)
            .and_then(|n| (n / t.block_size()).checked_mul(t.type_size()))
            .and_then(|b| u64::try_from(b).ok());
        let end = bytes.and_then(|b| {
            content
                .tensor_data_offset
                .checked_add(info.offset)?
                .checked_add(b)
        });
        if end.is_none_or(|e| e > len) {
            return Err(EngineError::bad_model(
                path,
                format!(
                    "tensor `{name}` of shape {dims:?} and type {t:?} does not fit in the file \
                     ({len} bytes): the file is damaged"
                ),
            ));
        }
    }
    Ok(())
}

/// Loads a GGUF file: the blocks' matrices as `opts.dtype` (kept quantized for `quantized`), the
/// rest dequantized to f32.
pub(super) fn load_gguf(path: &Path, dev: &Device, opts: LoadOptions) -> Result<LoadedModel> {
    let mut f = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let content = gguf_file::Content::read(&mut f)
        .map_err(|e| EngineError::bad_model(path, format!("not a readable GGUF file: {e}")))?;
    check_tensor_infos(&content, &f, path)?;
    let census = census_gguf(&content);
    let chosen = choose(opts.dtype, &census, available(dev, opts.memory_limit), path)?;
    let weights = WeightsInfo {
        dtype: chosen,
        bytes: census.bytes_as(chosen),
        stored_as: census.stored_as,
    };
    let md = &content.metadata;
    let a = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if !ARCHES.contains(&a.as_str()) {
        return Err(EngineError::Unsupported {
            path: path.to_path_buf(),
            msg: format!(
                "GGUF architecture `{a}` is not implemented; supported: {}",
                ARCHES.join(", ")
            ),
        });
    }
    let mut r = GgufTensors {
        content: &content,
        file: f,
        path,
        dev,
        used: Vec::new(),
        keep: chosen == WeightDType::Quantized,
        mat_dtype: dtype_of(chosen),
    };
    let embed_q = r.q("token_embd.weight")?;
    let embed = dense(&embed_q, DType::F32, dev)?;
    let tied = !r.has("output.weight");
    // A tied head's quantized blocks are the embedding's (read once).
    let tied_head_q = if tied {
        r.quantized_head(&embed_q)?
    } else {
        None
    };
    drop(embed_q);
    let cfg = config(
        md,
        &a,
        (
            embed.dim(0)?,
            layers_held(content.tensor_infos.keys(), &["blk"]),
        ),
        tied,
        path,
    )?;
    let (hd, m) = (cfg.head_dim(), cfg.intermediate_size);
    let (heads, kv_heads) = (cfg.num_attention_heads, cfg.kv_heads());
    let (q, kv) = (heads * hd, kv_heads * hd);
    let layer_norm = cfg.arch.norm == NormKind::Layer;
    // Only `llama` files have their q/k rows permuted by the converter.
    let permuted = a == "llama";
    let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
    for l in 0..cfg.num_hidden_layers {
        let p = format!("blk.{l}");
        let name = |n: &str| format!("{p}.{n}");
        let (wq, wk, wv) = if r.has(&name("attn_qkv.weight")) {
            let mut parts = r.split(&name("attn_qkv.weight"), &[q, kv, kv])?.into_iter();
            let mut next = || {
                parts
                    .next()
                    .ok_or_else(|| EngineError::Invalid("split lost a part".into()))
            };
            (next()?, next()?, next()?)
        } else {
            (
                r.mat(&name("attn_q.weight"), permuted.then_some(heads))?,
                r.mat(&name("attn_k.weight"), permuted.then_some(kv_heads))?,
                r.mat(&name("attn_v.weight"), None)?,
            )
        };
        let (w_gate, w_up) = if cfg.arch.plain_mlp {
            (None, r.mat(&name("ffn_up.weight"), None)?)
        } else if a == "phi3" {
            // Phi-3's `ffn_up` holds the gate and up projections stacked.
            let mut parts = r.split(&name("ffn_up.weight"), &[m, m])?.into_iter();
            let gate = parts.next();
            let up = parts.next();
            match (gate, up) {
                (Some(g), Some(u)) => (Some(g), u),
                _ => return Err(EngineError::Invalid("split lost a part".into())),
            }
        } else {
            (
                Some(r.mat(&name("ffn_gate.weight"), None)?),
                r.mat(&name("ffn_up.weight"), None)?,
            )
        };
        let qkv_bias = if cfg.arch.biases {
            Some(r.f32(&name("attn_qkv.bias"))?)
        } else if cfg.qkv_bias() {
            let b = ["q", "k", "v"]
                .iter()
                .map(|n| r.f32(&name(&format!("attn_{n}.bias"))))
                .collect::<Result<Vec<_>>>()?;
            Some(Tensor::cat(&b, 0)?)
        } else {
            None
        };
        // Gemma's norms are stored with the 1 of (1 + w) already added by the converter.
        let qk_norm = if cfg.qk_norm() {
            Some((
                r.f32(&name("attn_q_norm.weight"))?,
                r.f32(&name("attn_k_norm.weight"))?,
            ))
        } else {
            None
        };
        let post_norms = if cfg.arch.sandwich_norms {
            Some((
                r.f32(&name("post_attention_norm.weight"))?,
                r.f32(&name("post_ffw_norm.weight"))?,
            ))
        } else {
            None
        };
        let mut extra = BlockExtra {
            post_norms,
            ..BlockExtra::default()
        };
        if cfg.arch.biases {
            extra.norm_biases = Some((
                r.f32(&name("attn_norm.bias"))?,
                r.f32(&name("ffn_norm.bias"))?,
            ));
            extra.o_bias = Some(r.f32(&name("attn_output.bias"))?);
            extra.up_bias = Some(r.f32(&name("ffn_up.bias"))?);
            extra.down_bias = Some(r.f32(&name("ffn_down.bias"))?);
        }
        blocks.push(Block {
            attn_norm: r.f32(&name("attn_norm.weight"))?,
            wq,
            wk,
            wv,
            wo: r.mat(&name("attn_output.weight"), None)?,
            mlp_norm: r.f32(&name("ffn_norm.weight"))?,
            w_gate,
            w_up,
            w_down: r.mat(&name("ffn_down.weight"), None)?,
            qkv_bias,
            qk_norm,
            extra,
        });
    }
    let final_norm = r.f32("output_norm.weight")?;
    let extra = ModelExtra {
        pos_embed: if cfg.arch.learned_positions {
            Some(r.f32("position_embd.weight")?)
        } else {
            None
        },
        final_norm_bias: if layer_norm {
            Some(r.f32("output_norm.bias")?)
        } else {
            None
        },
        head_bias: None,
    };
    // An untied head kept quantized has no f32 copy (for an 8B model's 128k vocabulary the copy
    // would take 2 GB); a tied one is the embedding, which lookups need as f32 anyway.
    let (head_q, lm_head) = if tied {
        (tied_head_q, None)
    } else {
        let q = r.q("output.weight")?;
        match r.quantized_head(&q)? {
            Some(h) => (Some(h), None),
            None => (None, Some(dense(&q, DType::F32, dev)?)),
        }
    };
    let used = r.used;
    refuse_leftovers(
        path,
        &format!("`{a}` (general.architecture)"),
        content.tensor_infos.keys().filter(|k| !used.contains(k)),
        |name| {
            if name == "rope_freqs.weight" {
                " (Llama 3.1-style RoPE frequency factors; load the Hugging Face folder instead)"
            } else {
                ""
            }
        },
    )?;
    let tokenizer = ModelTokenizer::from_gguf(md, path)?;
    let mut llama = Llama::with_extra(cfg, embed, blocks, final_norm, lm_head, extra)
        .map_err(|e| EngineError::bad_model(path, e.to_string()))?;
    if let Some(h) = head_q {
        llama = if tied {
            llama.with_quantized_head(h)
        } else {
            llama.with_only_quantized_head(h)
        }
        .map_err(|e| EngineError::bad_model(path, e.to_string()))?;
    }
    finish(llama, tokenizer, path, ("gguf", path, a, weights), dev)
}

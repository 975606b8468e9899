//! Loading models: the entry point, GGUF files (blocks kept quantized or converted), and what
//! every loader shares (the model's identity, the refusal of leftover tensors). Hugging Face
//! folders are in `load_hf`.

use std::collections::HashMap;
use std::path::Path;

use std::sync::Arc;

use candle_core::quantized::{QStorage, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};

use super::llama::{Block, BlockExtra, Llama};
use super::mat::{Mat, is_quantized};
use super::weights::{
    LoadOptions, WeightDType, WeightsInfo, available, census_gguf, choose, dtype_of,
};
use crate::config::{LlamaConfig, RopeScaling};
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
        load_gguf(path, dev, opts)
    }
}

fn md_usize(md: &HashMap<String, gguf_file::Value>, key: &str, path: &Path) -> Result<usize> {
    let v = md
        .get(key)
        .ok_or_else(|| EngineError::bad_model(path, format!("missing metadata `{key}`")))?;
    v.to_u32()
        .map(|x| x as usize)
        .or_else(|_| v.to_u64().map(|x| usize::try_from(x).unwrap_or(usize::MAX)))
        .map_err(|e| EngineError::bad_model(path, format!("`{key}`: {e}")))
}

fn md_f64(md: &HashMap<String, gguf_file::Value>, key: &str) -> Option<f64> {
    md.get(key)
        .and_then(|v| v.to_f32().map(f64::from).or_else(|_| v.to_f64()).ok())
}

/// RoPE scaling from llama.cpp's metadata (`llama.rope.scaling.type`).
fn gguf_rope_scaling(
    md: &HashMap<String, gguf_file::Value>,
) -> std::result::Result<Option<RopeScaling>, String> {
    let kind = md
        .get("llama.rope.scaling.type")
        .and_then(|v| v.to_string().ok())
        .map_or("none", String::as_str);
    match kind {
        "none" => Ok(None),
        "linear" => {
            let factor = md_f64(md, "llama.rope.scaling.factor")
                .ok_or("`llama.rope.scaling.type` is linear but the factor is missing")?;
            Ok((factor != 1.0).then_some(RopeScaling::Linear { factor }))
        }
        other => Err(format!(
            "`llama.rope.scaling.type` = \"{other}\" is not implemented (implemented: none, linear)"
        )),
    }
}

/// Refuses a checkpoint with tensors the computation does not use: they mean its math differs
/// from ours (biases, extra norms, …). `note` explains a known name.
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
                "tensor `{first}`{} is not used by the `{family}` computation ({} such tensors); \
                 the model's math differs from what is implemented",
                note(first),
                left.len()
            ),
        }),
    }
}

/// llama.cpp stores q/k rows permuted for interleaved RoPE; this undoes it, giving the
/// rotate-half layout of Hugging Face checkpoints.
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

    fn f32(&mut self, name: &str) -> Result<Tensor> {
        dense(&self.q(name)?, DType::F32, self.dev)
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

/// Loads a GGUF file: the blocks' matrices as `opts.dtype` (kept quantized for `quantized`), the
/// rest dequantized to f32.
fn load_gguf(path: &Path, dev: &Device, opts: LoadOptions) -> Result<LoadedModel> {
    let mut f = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let content = gguf_file::Content::read(&mut f)
        .map_err(|e| EngineError::bad_model(path, format!("not a readable GGUF file: {e}")))?;
    let census = census_gguf(&content);
    let chosen = choose(opts.dtype, &census, available(dev, opts.memory_limit), path)?;
    let mat_dtype = dtype_of(chosen);
    let weights = WeightsInfo {
        dtype: chosen,
        bytes: census.bytes_as(chosen),
        stored_as: census.stored_as,
    };
    let keep = chosen == WeightDType::Quantized;
    let md = &content.metadata;
    let arch = md
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if arch != "llama" {
        return Err(EngineError::bad_model(
            path,
            format!("architecture `{arch}` is not supported yet (Llama family only)"),
        ));
    }
    let mut r = GgufTensors {
        content: &content,
        file: f,
        path,
        dev,
        used: Vec::new(),
    };
    let embed = r.f32("token_embd.weight")?;
    let n_layers = md_usize(md, "llama.block_count", path)?;
    let heads = md_usize(md, "llama.attention.head_count", path)?;
    let kv_heads = md_usize(md, "llama.attention.head_count_kv", path).unwrap_or(heads);
    let cfg = LlamaConfig {
        hidden_size: md_usize(md, "llama.embedding_length", path)?,
        intermediate_size: md_usize(md, "llama.feed_forward_length", path)?,
        num_hidden_layers: n_layers,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv_heads),
        vocab_size: embed.dim(0)?,
        rms_norm_eps: md_f64(md, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: md_f64(md, "llama.rope.freq_base").unwrap_or(10_000.0),
        max_position_embeddings: md_usize(md, "llama.context_length", path).unwrap_or(2048),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        model_type: "llama".into(),
        rope_scaling: gguf_rope_scaling(md).map_err(|msg| EngineError::Unsupported {
            path: path.to_path_buf(),
            msg,
        })?,
        head_dim: None,
        sliding_window: None,
        arch: Default::default(),
    };
    cfg.validate()
        .map_err(|e| EngineError::bad_model(path, format!("metadata: {e}")))?;
    let unsupported = |msg: String| EngineError::Unsupported {
        path: path.to_path_buf(),
        msg,
    };
    let embd = cfg.head_dim();
    if let Ok(k) = md_usize(md, "llama.attention.key_length", path)
        && k != embd
    {
        return Err(unsupported(format!(
            "`llama.attention.key_length` = {k} differs from embedding_length / head_count = {embd}"
        )));
    }
    if let Ok(r) = md_usize(md, "llama.rope.dimension_count", path)
        && r != embd
    {
        return Err(unsupported(format!(
            "`llama.rope.dimension_count` = {r}: partial rotary embeddings are not implemented"
        )));
    }
    let mat = |q: &QTensor, heads| block_mat(q, heads, keep, mat_dtype, dev);
    let mut blocks = Vec::with_capacity(n_layers);
    for l in 0..n_layers {
        let p = format!("blk.{l}");
        blocks.push(Block {
            attn_norm: r.f32(&format!("{p}.attn_norm.weight"))?,
            wq: mat(&r.q(&format!("{p}.attn_q.weight"))?, Some(heads))?,
            wk: mat(&r.q(&format!("{p}.attn_k.weight"))?, Some(kv_heads))?,
            wv: mat(&r.q(&format!("{p}.attn_v.weight"))?, None)?,
            wo: mat(&r.q(&format!("{p}.attn_output.weight"))?, None)?,
            mlp_norm: r.f32(&format!("{p}.ffn_norm.weight"))?,
            w_gate: Some(mat(&r.q(&format!("{p}.ffn_gate.weight"))?, None)?),
            w_up: mat(&r.q(&format!("{p}.ffn_up.weight"))?, None)?,
            w_down: mat(&r.q(&format!("{p}.ffn_down.weight"))?, None)?,
            qkv_bias: None,
            qk_norm: None,
            extra: BlockExtra::default(),
        });
    }
    let final_norm = r.f32("output_norm.weight")?;
    let lm_head = if cfg.tie_word_embeddings {
        None
    } else {
        Some(r.f32("output.weight")?)
    };
    let used = r.used;
    refuse_leftovers(
        path,
        "llama",
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
    let llama = Llama::new(cfg, embed, blocks, final_norm, lm_head)
        .map_err(|e| EngineError::bad_model(path, e.to_string()))?;
    finish(llama, tokenizer, path, ("gguf", path, arch, weights), dev)
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
    };
    Ok(LoadedModel {
        llama,
        tokenizer,
        info,
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

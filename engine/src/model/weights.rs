//! How weights are held: the memory a checkpoint needs, counted from its headers before any
//! tensor is read; the memory the device has; and the type `auto` picks. A model that would
//! not fit is refused with both numbers instead of being killed halfway through loading.
//!
//! Only the blocks' matrices change type (bf16/f16 halve them). Embeddings, unembedding and
//! norms stay f32: the analyses read and train embedding rows and project through the
//! unembedding in f32, and every activation stays f32 whatever the weights are.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};

use crate::error::{EngineError, Result};
pub use neoscope_api::model::{LoadOptions, WeightDType, WeightsInfo, human_bytes};

/// Element counts of a checkpoint, from its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Census {
    /// Elements in the blocks' matrices (attention and MLP projections).
    pub block_matrices: u64,
    /// Every other element (embeddings, unembedding, norms, biases).
    pub other: u64,
    /// Bytes of the blocks' matrices kept as the file stores them (quantized blocks as they
    /// are, float ones as f32); none for files that hold no quantized blocks.
    pub block_quantized_bytes: Option<u64>,
    /// Bytes of the output head's quantized blocks (kept when the blocks stay quantized: the
    /// head's products then read them); 0 when the head is stored as floats.
    pub head_quantized_bytes: u64,
    /// Elements of an untied output head stored quantized: no f32 copy of it is made when the
    /// blocks stay quantized.
    pub untied_quantized_head: u64,
    /// The file's storage types, most common first (`Q4_1`, `F32+BF16`, …).
    pub stored_as: String,
}

impl Census {
    /// Bytes on the device with the blocks' matrices as `dtype` and the rest f32.
    pub fn bytes(&self, dtype: DType) -> u64 {
        self.block_matrices * dtype.size_in_bytes() as u64 + self.other * 4
    }

    /// Bytes on the device with the blocks' matrices as `w` (`auto` as f32; quantized as the
    /// file stores them, or as f32 when it holds no quantized blocks).
    pub fn bytes_as(&self, w: WeightDType) -> u64 {
        match (w, self.block_quantized_bytes) {
            (WeightDType::Quantized, Some(q)) => {
                q + self.head_quantized_bytes + (self.other - self.untied_quantized_head) * 4
            }
            _ => self.bytes(dtype_of(w)),
        }
    }

    fn add(&mut self, name: &str, elems: u64, kinds: &mut BTreeMap<String, u64>, kind: String) {
        if is_block_matrix(name) {
            self.block_matrices += elems;
        } else {
            self.other += elems;
        }
        *kinds.entry(kind).or_default() += elems;
    }

    fn finish(mut self, kinds: BTreeMap<String, u64>) -> Self {
        let mut k: Vec<(String, u64)> = kinds.into_iter().collect();
        k.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        self.stored_as = k.into_iter().map(|(n, _)| n).collect::<Vec<_>>().join("+");
        self
    }
}

/// A projection matrix inside a block, by its GGUF or Hugging Face name.
fn is_block_matrix(name: &str) -> bool {
    const GGUF: [&str; 7] = [
        "attn_q.weight",
        "attn_k.weight",
        "attn_v.weight",
        "attn_output.weight",
        "ffn_gate.weight",
        "ffn_up.weight",
        "ffn_down.weight",
    ];
    (name.starts_with("blk.") && GGUF.iter().any(|s| name.ends_with(s)))
        || (name.starts_with("model.layers.") && name.ends_with("_proj.weight"))
}

/// The census of a GGUF file's tensors.
pub fn census_gguf(content: &gguf_file::Content) -> Census {
    let mut c = Census {
        block_matrices: 0,
        other: 0,
        block_quantized_bytes: None,
        head_quantized_bytes: 0,
        untied_quantized_head: 0,
        stored_as: String::new(),
    };
    let head = if content.tensor_infos.contains_key("output.weight") {
        "output.weight"
    } else {
        "token_embd.weight"
    };
    let mut kinds = BTreeMap::new();
    let mut quantized = 0u64;
    let mut any = false;
    for (name, info) in &content.tensor_infos {
        let t = info.ggml_dtype;
        let elems = info.shape.elem_count();
        if is_block_matrix(name) {
            quantized += if super::mat::is_quantized(t) {
                any = true;
                (elems / t.block_size() * t.type_size()) as u64
            } else {
                elems as u64 * 4
            };
        }
        if name == head && super::mat::is_quantized(t) {
            c.head_quantized_bytes = (elems / t.block_size() * t.type_size()) as u64;
            if name == "output.weight" {
                c.untied_quantized_head = elems as u64;
            }
        }
        let kind = format!("{t:?}").to_uppercase();
        c.add(name, elems as u64, &mut kinds, kind);
    }
    c.block_quantized_bytes = any.then_some(quantized);
    c.finish(kinds)
}

/// The census of safetensors files, from their JSON headers alone.
pub fn census_safetensors(files: &[PathBuf]) -> Result<Census> {
    let mut c = Census {
        block_matrices: 0,
        other: 0,
        block_quantized_bytes: None,
        head_quantized_bytes: 0,
        untied_quantized_head: 0,
        stored_as: String::new(),
    };
    let mut kinds = BTreeMap::new();
    for f in files {
        let bad = |msg: String| EngineError::bad_model(f, msg);
        let mut file = std::fs::File::open(f).map_err(|e| EngineError::io(f, e))?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .map_err(|e| bad(format!("no safetensors header: {e}")))?;
        let len = u64::from_le_bytes(len);
        let size = file.metadata().map_err(|e| EngineError::io(f, e))?.len();
        if len > size.saturating_sub(8) || len > 100 << 20 {
            return Err(bad(format!("header length {len} is past the file's end")));
        }
        let mut header = vec![0u8; usize::try_from(len).unwrap_or(0)];
        file.read_exact(&mut header)
            .map_err(|e| bad(format!("truncated header: {e}")))?;
        let header: BTreeMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header is not JSON: {e}")))?;
        for (name, v) in header.iter().filter(|(n, _)| *n != "__metadata__") {
            let shape = v["shape"]
                .as_array()
                .ok_or_else(|| bad(format!("tensor `{name}` has no shape")))?;
            let elems = shape
                .iter()
                .map(|d| {
                    d.as_u64()
                        .ok_or_else(|| bad(format!("tensor `{name}`: bad shape")))
                })
                .try_fold(1u64, |a, d| Ok::<u64, EngineError>(a.saturating_mul(d?)))?;
            let kind = v["dtype"].as_str().unwrap_or("?").to_uppercase();
            c.add(name, elems, &mut kinds, kind);
        }
    }
    Ok(c.finish(kinds))
}

/// Bytes free for weights on `dev` (the system's available memory on the CPU, the GPU's free
/// memory on CUDA), capped by `limit`; none when it cannot be told.
pub fn available(dev: &Device, limit: Option<u64>) -> Option<u64> {
    let free = match dev {
        Device::Cpu => std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kb| kb * 1024)
        }),
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => d
            .cuda_stream()
            .context()
            .mem_get_info()
            .ok()
            .map(|(free, _)| free as u64),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => None,
        Device::Metal(_) => None,
    };
    match (free, limit) {
        (Some(f), Some(l)) => Some(f.min(l)),
        (f, l) => f.or(l),
    }
}

/// The candle type of a weight type (`auto` as f32).
pub fn dtype_of(d: WeightDType) -> DType {
    match d {
        WeightDType::Auto | WeightDType::F32 | WeightDType::Quantized => DType::F32,
        WeightDType::Bf16 => DType::BF16,
        WeightDType::F16 => DType::F16,
    }
}

/// The blocks' type for `requested`, or a refusal naming what is needed and what is available.
/// `auto` takes f32 when it needs at most 60% of what is available, else bf16; an explicit type
/// must fit in 90% of it (activations and the system need the rest).
pub fn choose(
    requested: WeightDType,
    census: &Census,
    avail: Option<u64>,
    path: &Path,
) -> Result<WeightDType> {
    let fits = |d: WeightDType, share: f64| {
        avail.is_none_or(|a| census.bytes_as(d) as f64 <= share * a as f64)
    };
    let quantized = census.block_quantized_bytes.is_some();
    let chosen = match requested {
        WeightDType::Auto if fits(WeightDType::F32, 0.6) => WeightDType::F32,
        WeightDType::Auto if quantized => WeightDType::Quantized,
        WeightDType::Auto => WeightDType::Bf16,
        WeightDType::Quantized if !quantized => {
            return Err(EngineError::Invalid(format!(
                "{}: --dtype quantized keeps a GGUF file's quantized blocks, and this model has \
                 none (use f32, bf16 or f16)",
                path.display()
            )));
        }
        d => d,
    };
    if fits(chosen, 0.9) {
        return Ok(chosen);
    }
    let need = census.bytes_as(chosen);
    let smaller = [WeightDType::Quantized, WeightDType::Bf16]
        .into_iter()
        .filter(|d| *d != chosen && (quantized || *d != WeightDType::Quantized))
        .find(|d| census.bytes_as(*d) < need && fits(*d, 0.9));
    let hint = smaller.map_or_else(String::new, |d| {
        format!(
            "; with --dtype {} they need {}",
            d.name(),
            human_bytes(census.bytes_as(d))
        )
    });
    Err(EngineError::Invalid(format!(
        "{}: the weights need {} as {} but only {} of memory is available for them{hint}",
        path.display(),
        human_bytes(need),
        chosen.name(),
        human_bytes(avail.unwrap_or(0)),
    )))
}

/// Bytes the weights of an assembled model take.
pub fn bytes_of(llama: &super::Llama) -> u64 {
    let size = |t: &candle_core::Tensor| (t.elem_count() * t.dtype().size_in_bytes()) as u64;
    let blocks: u64 = llama
        .blocks
        .iter()
        .map(|b| {
            [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_up, &b.w_down]
                .into_iter()
                .chain(&b.w_gate)
                .map(super::mat::Mat::bytes)
                .sum::<u64>()
                + size(&b.attn_norm)
                + size(&b.mlp_norm)
                + b.qkv_bias.as_ref().map_or(0, size)
                + b.qk_norm.as_ref().map_or(0, |(q, k)| size(q) + size(k))
                + [&b.extra.o_bias, &b.extra.up_bias, &b.extra.down_bias]
                    .into_iter()
                    .flatten()
                    .map(size)
                    .sum::<u64>()
                + [&b.extra.norm_biases, &b.extra.post_norms]
                    .into_iter()
                    .flatten()
                    .map(|(a, c)| size(a) + size(c))
                    .sum::<u64>()
        })
        .sum();
    let x = &llama.extra;
    blocks
        + size(&llama.embed)
        + size(&llama.final_norm)
        + llama.lm_head.as_ref().map_or(0, size)
        + llama.quantized_head().map_or(0, super::mat::Mat::bytes)
        + x.pos_embed.as_ref().map_or(0, size)
        + x.final_norm_bias.as_ref().map_or(0, size)
        + x.head_bias.as_ref().map_or(0, size)
}

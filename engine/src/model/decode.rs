//! Decoding on the hand-written CPU pass: a KV cache of plain f32 rows per layer and one step
//! that runs new tokens after the cached ones through `fast::layer_forward`, returning the last
//! row's logits. Generation takes it when nothing is hooked or steered and `fast::supported`
//! holds; the candle pass with its tensor cache does everything else.
//!
//! Why by hand: one decoding step through candle's ops costs ~40 small tensors per layer and
//! several hundred short parallel regions; here a step is a handful of products per layer on
//! buffers that are reused, and only the last row is unembedded.

use super::Llama;
use super::cpu::rms_norm_rows;
use super::fast::{self, Dims, Packed, Weights, embed_rows, kv_rows, layer_forward};
use super::proj::Proj;
use crate::error::{EngineError, Result};

/// A sequence being decoded: the model and every layer's cached keys and values.
pub struct Decoder<'a> {
    m: &'a Llama,
    dims: Dims,
    /// Per layer: cached positions × (rotated keys, values).
    kv: Vec<Vec<f32>>,
    /// Cached positions.
    len: usize,
}

impl<'a> Decoder<'a> {
    /// An empty cache for `m`; fails where the hand-written pass does not run `m`.
    pub fn new(m: &'a Llama) -> Result<Self> {
        if !fast::supported(m) {
            return Err(EngineError::Invalid(
                "this model's settings take the candle pass, not the hand-written decoder".into(),
            ));
        }
        Ok(Self {
            m,
            dims: Dims::of(m),
            kv: vec![Vec::new(); m.cfg.num_hidden_layers],
            len: 0,
        })
    }

    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first step.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Runs `ids` after the cached positions, caches their keys and values, and returns the
    /// logits of the last of them.
    pub fn step(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(EngineError::Invalid("a decoding step needs a token".into()));
        }
        let (m, dims, len) = (self.m, self.dims, self.len);
        let kv = &mut self.kv;
        // The whole step runs on one of rayon's threads: each of its ~200 parallel loops then
        // starts from inside the pool instead of handing the caller's work to it and sleeping.
        let logits = rayon::scope(|_| step_in_pool(m, dims, kv, len, ids))?;
        self.len += ids.len();
        Ok(logits)
    }
}

/// [`Decoder::step`] on a pool thread (the weights' views are taken there: they cannot move
/// between threads).
fn step_in_pool(
    m: &Llama,
    dims: Dims,
    kv: &mut [Vec<f32>],
    len: usize,
    ids: &[u32],
) -> Result<Vec<f32>> {
    let mut w = Weights::new(m)?;
    // One row at a time: the head's quantized blocks (read at ~1 byte per weight) beat its f32
    // copy (4 bytes); the many-row passes keep the f32 one for `gemm`.
    if let Some(q) = m.quantized_head() {
        w.unembed = Proj::of_mat(q)?;
    }
    let n = ids.len();
    let pk = Packed::with_prefix([(len, n)], m.cfg.n_ctx())?;
    let mut x = embed_rows(&w, dims.d, ids)?;
    let rope = (w.cos.data(), w.sin.data());
    let mut new_kv = Vec::with_capacity(kv.len());
    for (lw, cache) in w.layers.iter().zip(kv.iter()) {
        let past = [&cache[..]];
        let (tape, next) = layer_forward(dims, lw, &pk, x, rope, &past, None)?;
        new_kv.push(kv_rows(dims, &tape.qkv));
        x = next;
    }
    // Cached only once every layer has run (an error leaves the cache as it was).
    for (cache, rows) in kv.iter_mut().zip(new_kv) {
        cache.extend_from_slice(&rows);
    }
    let d = dims.d;
    let last = &x[(n - 1) * d..];
    let mut normed = vec![0f32; d];
    rms_norm_rows(last, w.final_norm.data(), dims.eps, &mut normed);
    let mut logits = vec![0f32; dims.vocab];
    w.unembed
        .forward(&mut logits, &normed, (1, d, dims.vocab), false)?;
    Ok(logits)
}

//! LoRA adapters on a block's projections: `W x + (α/r) · B A dropout(x)` with `A` (r, in) and
//! `B` (out, r), as PEFT computes them. The hooked forward pass adds them when a model carries
//! them ([`Llama::with_adapters`]), so gradients reach `A` and `B` through candle's autograd;
//! [`merge`] folds them into dense weights, giving an ordinary model for every other analysis.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor};
use neoscope_api::lora::LoraTarget;
use rand::{Rng, SeedableRng};

use super::Llama;
use super::llama::Block;
use super::mat::Mat;
use crate::error::{EngineError, Result};

/// One projection's adapter.
#[derive(Debug, Clone)]
pub struct Adapter {
    /// Down-projection (r, in).
    pub a: Tensor,
    /// Up-projection (out, r).
    pub b: Tensor,
}

/// Training dropout on the adapters' inputs: masks are drawn from `seed` and the projection,
/// so a forward pass is a pure function of its inputs and the seed (exact resume).
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    /// Probability of dropping an input element.
    pub p: f32,
    /// Seed of this pass's masks.
    pub seed: u64,
}

/// A model's adapters: per layer, per projection.
#[derive(Debug, Clone)]
pub struct Adapters {
    /// α / r.
    pub scale: f64,
    /// Per layer.
    pub layers: Vec<BTreeMap<LoraTarget, Adapter>>,
    /// Dropout while training (`None`: inference).
    pub dropout: Option<Dropout>,
}

/// The (out, in) shape of projection `t` in a model, or why it has none.
pub fn shape(m: &Llama, t: LoraTarget) -> Result<(usize, usize)> {
    let c = &m.cfg;
    let (d, dm, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
    let (q, kv) = (c.num_attention_heads * hd, c.kv_heads() * hd);
    Ok(match t {
        LoraTarget::Q => (q, d),
        LoraTarget::K | LoraTarget::V => (kv, d),
        LoraTarget::O => (d, q),
        LoraTarget::Gate if m.blocks.first().is_some_and(|b| b.w_gate.is_none()) => {
            return Err(EngineError::Invalid(
                "this model's MLP has no gate projection: leave gate_proj out of the LoRA \
                 targets"
                    .into(),
            ));
        }
        LoraTarget::Gate | LoraTarget::Up => (dm, d),
        LoraTarget::Down => (d, dm),
    })
}

impl Adapters {
    /// Fresh adapters as PEFT starts them: `A` uniform in ±1/√in (Kaiming-uniform with a = √5),
    /// `B` zero, so the model is unchanged until training moves `B`.
    pub fn init(
        m: &Llama,
        targets: &[LoraTarget],
        rank: usize,
        alpha: f64,
        seed: u64,
    ) -> Result<Self> {
        if rank == 0 || targets.is_empty() {
            return Err(EngineError::Invalid(
                "LoRA needs a rank of at least 1 and at least one target projection".into(),
            ));
        }
        // A rank at or above a projection's smaller side is no longer low-rank (and a damaged
        // settings file might ask for more memory than there is).
        for &t in targets {
            let (out, inp) = shape(m, t)?;
            if rank >= out.min(inp) {
                return Err(EngineError::Invalid(format!(
                    "LoRA settings: rank {rank} is not below {}'s smaller side ({} × {})",
                    t.module(),
                    out,
                    inp
                )));
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let dev = m.device();
        let mut layers = Vec::with_capacity(m.blocks.len());
        for _ in &m.blocks {
            let mut map = BTreeMap::new();
            for &t in targets {
                let (out, inp) = shape(m, t)?;
                let bound = 1.0 / (inp as f32).sqrt();
                let a: Vec<f32> = (0..rank * inp)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Tensor::from_vec(a, (rank, inp), dev)?;
                let b = Tensor::zeros((out, rank), DType::F32, dev)?;
                map.insert(t, Adapter { a, b });
            }
            layers.push(map);
        }
        Ok(Self {
            scale: alpha / rank as f64,
            layers,
            dropout: None,
        })
    }

    /// Every tensor by its file name (`layers.L.q_proj.lora_A`, …), in a fixed order.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (l, map) in self.layers.iter().enumerate() {
            for (t, ad) in map {
                let base = format!("layers.{l}.{}", t.module());
                out.push((format!("{base}.lora_A"), ad.a.clone()));
                out.push((format!("{base}.lora_B"), ad.b.clone()));
            }
        }
        out
    }

    /// The same adapters with `tensors` (in [`Adapters::named`] order) in place of theirs.
    pub fn with_tensors(&self, tensors: &[Tensor]) -> Result<Self> {
        let mut it = tensors.iter();
        let mut layers = self.layers.clone();
        for map in &mut layers {
            for ad in map.values_mut() {
                let (Some(a), Some(b)) = (it.next(), it.next()) else {
                    return Err(EngineError::Invalid(
                        "internal: too few adapter tensors".into(),
                    ));
                };
                if a.dims() != ad.a.dims() || b.dims() != ad.b.dims() {
                    return Err(EngineError::Invalid(format!(
                        "adapter tensors of shapes {:?} and {:?}, expected {:?} and {:?}",
                        a.dims(),
                        b.dims(),
                        ad.a.dims(),
                        ad.b.dims()
                    )));
                }
                ad.a = a.clone();
                ad.b = b.clone();
            }
        }
        Ok(Self {
            scale: self.scale,
            layers,
            dropout: self.dropout,
        })
    }

    /// Trainable numbers in all adapters.
    pub fn parameters(&self) -> usize {
        self.named().iter().map(|(_, t)| t.elem_count()).sum()
    }

    /// `(α/r) · B A dropout(x)` of projection `t` in layer `l`, for `x` of shape (…, in).
    pub fn delta(&self, l: usize, t: LoraTarget, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(ad) = self.layers.get(l).and_then(|m| m.get(&t)) else {
            return Ok(None);
        };
        let dims = x.dims().to_vec();
        let inp = dims[dims.len() - 1];
        let rows = x.elem_count() / inp.max(1);
        let mut x2 = x.reshape((rows, inp))?;
        if let Some(d) = self.dropout.filter(|d| d.p > 0.0) {
            x2 = (x2 * dropout_mask(d, l, t, (rows, inp), x.device())?)?;
        }
        let y = (x2.matmul(&ad.a.t()?)?.matmul(&ad.b.t()?)? * self.scale)?;
        let mut out = dims;
        let last = out.len() - 1;
        out[last] = ad.b.dim(0)?;
        Ok(Some(y.reshape(out)?))
    }

    /// `y` plus the deltas of the projections stacked along its last axis (`parts`: each
    /// projection with its width), for their common input `x`.
    pub fn add_stacked(
        &self,
        l: usize,
        parts: &[(LoraTarget, usize)],
        x: &Tensor,
        y: Tensor,
    ) -> Result<Tensor> {
        let mut pieces = Vec::with_capacity(parts.len());
        let mut any = false;
        for &(t, width) in parts {
            match self.delta(l, t, x)? {
                Some(d) => {
                    any = true;
                    pieces.push(d);
                }
                None => {
                    let mut shape = y.dims().to_vec();
                    let last = shape.len() - 1;
                    shape[last] = width;
                    pieces.push(Tensor::zeros(shape, y.dtype(), y.device())?);
                }
            }
        }
        if !any {
            return Ok(y);
        }
        Ok((y + Tensor::cat(&pieces, D::Minus1)?)?)
    }
}

/// The inverted-dropout mask values (0 or 1/(1−p)) of projection `t` of layer `l`, `len` of
/// them: the candle pass and the hand-written pass draw the same masks.
pub(crate) fn mask_values(d: Dropout, l: usize, t: LoraTarget, len: usize) -> Vec<f32> {
    let key = (l as u64) * 8 + t as u64;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(
        d.seed ^ key.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let keep = 1.0 / (1.0 - d.p);
    (0..len)
        .map(|_| if rng.random::<f32>() < d.p { 0.0 } else { keep })
        .collect()
}

/// [`mask_values`] as a tensor.
fn dropout_mask(
    d: Dropout,
    l: usize,
    t: LoraTarget,
    shape: (usize, usize),
    dev: &Device,
) -> Result<Tensor> {
    Ok(Tensor::from_vec(
        mask_values(d, l, t, shape.0 * shape.1),
        shape,
        dev,
    )?)
}

/// Adds `scale · B A` to a dense projection matrix (in its own type).
fn merged(w: &Mat, ad: &Adapter, scale: f64, what: &str) -> Result<Mat> {
    let w = w.dense().map_err(|_| {
        EngineError::Invalid(format!(
            "merging LoRA adapters needs dense weights, and {what} is quantized (load the \
             model with --dtype f32, bf16 or f16)"
        ))
    })?;
    let delta = (ad.b.matmul(&ad.a)? * scale)?.to_dtype(w.dtype())?;
    Ok(Mat::Dense((w + delta.to_device(w.device())?)?))
}

/// The model with the adapters folded into its weights (`W + (α/r) · B A`): the same outputs
/// as carrying them, at no cost per token.
pub fn merge(m: &Llama, ad: &Adapters) -> Result<Llama> {
    if ad.layers.len() != m.blocks.len() {
        return Err(EngineError::Invalid(format!(
            "adapters for {} layers, the model has {}",
            ad.layers.len(),
            m.blocks.len()
        )));
    }
    let mut blocks: Vec<Block> = m.blocks.clone();
    for (l, (blk, map)) in blocks.iter_mut().zip(&ad.layers).enumerate() {
        for (t, a) in map {
            let what = format!("layer {l}'s {}", t.module());
            let s = ad.scale;
            match t {
                LoraTarget::Q => blk.wq = merged(&blk.wq, a, s, &what)?,
                LoraTarget::K => blk.wk = merged(&blk.wk, a, s, &what)?,
                LoraTarget::V => blk.wv = merged(&blk.wv, a, s, &what)?,
                LoraTarget::O => blk.wo = merged(&blk.wo, a, s, &what)?,
                LoraTarget::Up => blk.w_up = merged(&blk.w_up, a, s, &what)?,
                LoraTarget::Down => blk.w_down = merged(&blk.w_down, a, s, &what)?,
                LoraTarget::Gate => {
                    let g = blk.w_gate.as_ref().ok_or_else(|| {
                        EngineError::Invalid(format!("{what}: the model has no gate projection"))
                    })?;
                    blk.w_gate = Some(merged(g, a, s, &what)?);
                }
            }
        }
    }
    Llama::with_extra(
        m.cfg.clone(),
        m.embed.clone(),
        blocks,
        m.final_norm.clone(),
        m.lm_head.clone(),
        m.extra.clone(),
    )?
    .with_head_of(m)
}

/// Shared adapters for a model (see [`Llama::with_adapters`]).
pub type SharedAdapters = Arc<Adapters>;

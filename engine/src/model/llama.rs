//! Our hooked Llama-family transformer: logits at every position, captures and interventions at
//! TransformerLens-named hook points, padded batches, and a KV cache for generation.
//!
//! Weights are plain f32 tensors in Hugging Face layout (q/k rows in rotate-half order). All
//! ops are differentiable compositions (see `ops`), so a trainable input gets real gradients.

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Tensor};

use super::batch::Batch;
use super::cache::KvCache;
use super::mat::{Mat, Stack};
use super::ops::{linear, rms_norm, rope, softmax_last};
use crate::config::LlamaConfig;
use crate::error::{EngineError, Result};
use crate::hooks::{HookPoint, HookSpec, InterventionOp, Positions};

/// Added to attention scores of masked keys (finite so that fully masked padding rows stay
/// finite; `exp` of it underflows to exactly zero).
const MASKED: f32 = -1e9;

/// Weights of one transformer block.
#[derive(Debug, Clone)]
pub struct Block {
    /// RMSNorm before attention.
    pub attn_norm: Tensor,
    /// Query projection (n_heads·d_head, d_model).
    pub wq: Mat,
    /// Key projection (n_kv_heads·d_head, d_model).
    pub wk: Mat,
    /// Value projection (n_kv_heads·d_head, d_model).
    pub wv: Mat,
    /// Output projection (d_model, n_heads·d_head).
    pub wo: Mat,
    /// RMSNorm before the MLP.
    pub mlp_norm: Tensor,
    /// Gate projection (d_mlp, d_model).
    pub w_gate: Mat,
    /// Up projection (d_mlp, d_model).
    pub w_up: Mat,
    /// Down projection (d_model, d_mlp).
    pub w_down: Mat,
    /// Biases of the stacked query/key/value projection (n_heads·d_head + 2·n_kv_heads·d_head),
    /// present exactly when the configuration asks for them (Qwen2).
    pub qkv_bias: Option<Tensor>,
    /// Per-head RMSNorm weights (d_head each) of queries and keys before RoPE (Qwen3).
    pub qk_norm: Option<(Tensor, Tensor)>,
}

/// The whole model.
#[derive(Debug, Clone)]
pub struct Llama {
    /// Configuration.
    pub cfg: LlamaConfig,
    /// Token embedding (d_vocab, d_model).
    pub embed: Tensor,
    /// Blocks.
    pub blocks: Vec<Block>,
    /// Final RMSNorm weight.
    pub final_norm: Tensor,
    /// Output head (d_vocab, d_model); `None` when tied to the embedding.
    pub lm_head: Option<Tensor>,
    /// Per block: the query, key and value projections stacked, (q + 2·kv, d_model), and the
    /// gate and up projections stacked, (2·d_mlp, d_model): one matmul each instead of three
    /// and two. The blocks' own weights are views into these (no second copy).
    fused: Vec<(Stack, Stack)>,
    cos: Tensor,
    sin: Tensor,
}

/// An intervention resolved into tensors for one batch.
#[derive(Debug, Clone)]
pub struct ResolvedIntervention {
    /// Where.
    pub point: HookPoint,
    /// (B, T, 1) selection, u8.
    pub mask: Tensor,
    /// What.
    pub op: ResolvedOp,
}

/// The tensor form of an [`InterventionOp`]; vectors broadcast to (B, T, d_model).
#[derive(Debug, Clone)]
pub enum ResolvedOp {
    /// `x ← v`.
    Replace(Tensor),
    /// `x ← x + v` (scale already applied).
    Add(Tensor),
    /// `x ← (1−α)x + αt`.
    Interpolate(Tensor, f64),
}

/// Result of a forward pass.
#[derive(Debug, Clone)]
pub struct ForwardOutput {
    /// Logits (B, T, d_vocab) for every position (padding positions carry no prediction: zero
    /// on the unhooked CPU pass, unspecified otherwise).
    pub logits: Tensor,
    /// Captured activations (B, T, d_model) by hook point.
    pub captures: BTreeMap<HookPoint, Tensor>,
}

impl Llama {
    /// Assembles a model from weights, checking every shape against the configuration.
    pub fn new(
        cfg: LlamaConfig,
        embed: Tensor,
        blocks: Vec<Block>,
        final_norm: Tensor,
        lm_head: Option<Tensor>,
    ) -> Result<Self> {
        cfg.validate().map_err(EngineError::Invalid)?;
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let (q, kv, m) = (
            cfg.num_attention_heads * hd,
            cfg.kv_heads() * hd,
            cfg.intermediate_size,
        );
        let check = |name: String, t: &Tensor, want: &[usize]| -> Result<()> {
            if t.dims() == want {
                Ok(())
            } else {
                Err(EngineError::Invalid(format!(
                    "weight {name} has shape {:?}, expected {want:?}",
                    t.dims()
                )))
            }
        };
        check("embedding".into(), &embed, &[cfg.vocab_size, d])?;
        check("final norm".into(), &final_norm, &[d])?;
        if let Some(h) = &lm_head {
            check("output head".into(), h, &[cfg.vocab_size, d])?;
        }
        if blocks.len() != cfg.num_hidden_layers {
            return Err(EngineError::Invalid(format!(
                "{} blocks given, config says {}",
                blocks.len(),
                cfg.num_hidden_layers
            )));
        }
        for (l, b) in blocks.iter().enumerate() {
            check(format!("blocks.{l}.attn_norm"), &b.attn_norm, &[d])?;
            let check_mat = |name: &str, w: &Mat, want: (usize, usize)| -> Result<()> {
                let got = w.dims()?;
                if got == want {
                    Ok(())
                } else {
                    Err(EngineError::Invalid(format!(
                        "weight blocks.{l}.{name} has shape {got:?}, expected {want:?}"
                    )))
                }
            };
            check_mat("wq", &b.wq, (q, d))?;
            check_mat("wk", &b.wk, (kv, d))?;
            check_mat("wv", &b.wv, (kv, d))?;
            check_mat("wo", &b.wo, (d, q))?;
            check(format!("blocks.{l}.mlp_norm"), &b.mlp_norm, &[d])?;
            check_mat("w_gate", &b.w_gate, (m, d))?;
            check_mat("w_up", &b.w_up, (m, d))?;
            check_mat("w_down", &b.w_down, (d, m))?;
            match (&b.qkv_bias, cfg.qkv_bias()) {
                (Some(bias), true) => check(format!("blocks.{l}.qkv_bias"), bias, &[q + 2 * kv])?,
                (None, false) => {}
                (Some(_), false) => {
                    return Err(EngineError::Invalid(format!(
                        "blocks.{l} has q/k/v biases but model_type `{}` has none",
                        cfg.model_type
                    )));
                }
                (None, true) => {
                    return Err(EngineError::Invalid(format!(
                        "blocks.{l} lacks the q/k/v biases model_type `{}` needs",
                        cfg.model_type
                    )));
                }
            }
            match (&b.qk_norm, cfg.qk_norm()) {
                (Some((qn, kn)), true) => {
                    check(format!("blocks.{l}.q_norm"), qn, &[hd])?;
                    check(format!("blocks.{l}.k_norm"), kn, &[hd])?;
                }
                (None, false) => {}
                _ => {
                    return Err(EngineError::Invalid(format!(
                        "blocks.{l}: q/k norms present exactly when model_type `{}` has them",
                        cfg.model_type
                    )));
                }
            }
        }
        let mut blocks = blocks;
        let mut fused = Vec::with_capacity(blocks.len());
        for b in &mut blocks {
            // Dense matrices of one type become one matrix each (the blocks keep views of
            // it); quantized ones stay apart.
            let fuse = |parts: &[&Mat]| -> Result<Option<Tensor>> {
                let dense: Vec<&Tensor> = parts.iter().filter_map(|p| p.dense().ok()).collect();
                let one_type = dense.windows(2).all(|w| w[0].dtype() == w[1].dtype());
                Ok(if dense.len() == parts.len() && one_type {
                    Some(Tensor::cat(&dense, 0)?)
                } else {
                    None
                })
            };
            let qkv = match fuse(&[&b.wq, &b.wk, &b.wv])? {
                Some(w) => {
                    b.wq = Mat::Dense(w.narrow(0, 0, q)?);
                    b.wk = Mat::Dense(w.narrow(0, q, kv)?);
                    b.wv = Mat::Dense(w.narrow(0, q + kv, kv)?);
                    Stack::Fused(w)
                }
                None => Stack::Parts(vec![b.wq.clone(), b.wk.clone(), b.wv.clone()]),
            };
            let gate_up = match fuse(&[&b.w_gate, &b.w_up])? {
                Some(w) => {
                    b.w_gate = Mat::Dense(w.narrow(0, 0, m)?);
                    b.w_up = Mat::Dense(w.narrow(0, m, m)?);
                    Stack::Fused(w)
                }
                None => Stack::Parts(vec![b.w_gate.clone(), b.w_up.clone()]),
            };
            fused.push((qkv, gate_up));
        }
        let (cos, sin) = rope_tables(&cfg, embed.device())?;
        Ok(Self {
            cfg,
            embed,
            blocks,
            final_norm,
            lm_head,
            fused,
            cos,
            sin,
        })
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// Block `l`'s stacked query/key/value projection (q + 2·kv, d_model) and stacked
    /// gate/up projection (2·d_mlp, d_model).
    pub fn fused(&self, l: usize) -> Result<(&Tensor, &Tensor)> {
        let (qkv, gu) = &self.fused[l];
        Ok((qkv.dense()?, gu.dense()?))
    }

    /// Whether every block matrix is dense and of `dtype`.
    pub fn blocks_are(&self, dtype: DType) -> bool {
        self.blocks.iter().all(|b| {
            [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_gate, &b.w_up, &b.w_down]
                .iter()
                .all(|m| m.is_dense(dtype))
        })
    }

    /// RoPE cos and sin tables, (n_ctx, d_head/2) each.
    pub fn rope_tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// Output head weight (the embedding when tied).
    pub fn unembed(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Final norm followed by the unembedding: residual (…, d_model) → logits (…, d_vocab).
    pub fn project(&self, resid: &Tensor) -> Result<Tensor> {
        let n = rms_norm(resid, &self.final_norm, self.cfg.rms_norm_eps)?;
        Ok(linear(&n, self.unembed())?)
    }

    /// Turns plain-data hook interventions into tensors for a batch of shape (rows, width).
    pub fn resolve(
        &self,
        spec: &HookSpec,
        rows: usize,
        width: usize,
    ) -> Result<Vec<ResolvedIntervention>> {
        let d = self.cfg.hidden_size;
        let dev = self.device();
        for p in &spec.capture {
            self.check_point(*p)?;
        }
        spec.interventions
            .iter()
            .map(|iv| {
                self.check_point(iv.point)?;
                iv.op.check_finite().map_err(EngineError::Invalid)?;
                let mut mask = vec![0u8; rows * width];
                let mut set = |r: usize, c: usize| -> Result<()> {
                    if r >= rows || c >= width {
                        return Err(EngineError::Invalid(format!(
                            "intervention at {} touches row {r}, position {c}, outside the \
                             {rows}×{width} batch",
                            iv.point
                        )));
                    }
                    mask[r * width + c] = 1;
                    Ok(())
                };
                match &iv.positions {
                    Positions::All => {
                        (0..rows * width).try_for_each(|i| set(i / width, i % width))?
                    }
                    Positions::Columns(cs) => {
                        for r in 0..rows {
                            cs.iter().try_for_each(|c| set(r, *c))?;
                        }
                    }
                    Positions::Cells(cells) => cells.iter().try_for_each(|(r, c)| set(*r, *c))?,
                }
                let vec_t = |v: &[f32]| -> Result<Tensor> {
                    if v.len() == d {
                        Ok(Tensor::from_slice(v, d, dev)?)
                    } else {
                        Err(EngineError::Invalid(format!(
                            "intervention vector at {} has {} values, d_model is {d}",
                            iv.point,
                            v.len()
                        )))
                    }
                };
                let op = match &iv.op {
                    InterventionOp::Replace(v) => ResolvedOp::Replace(vec_t(v)?),
                    InterventionOp::Add { vector, scale } => {
                        ResolvedOp::Add(vec_t(vector)?.affine(f64::from(*scale), 0.0)?)
                    }
                    InterventionOp::Interpolate { target, alpha } => {
                        ResolvedOp::Interpolate(vec_t(target)?, f64::from(*alpha))
                    }
                };
                Ok(ResolvedIntervention {
                    point: iv.point,
                    mask: Tensor::from_vec(mask, (rows, width, 1), dev)?,
                    op,
                })
            })
            .collect()
    }

    fn check_point(&self, p: HookPoint) -> Result<()> {
        match p.layer() {
            Some(l) if l >= self.cfg.num_hidden_layers => Err(EngineError::Invalid(format!(
                "hook point {p}: the model has layers 0..{}",
                self.cfg.num_hidden_layers - 1
            ))),
            _ => Ok(()),
        }
    }

    /// Forward pass with plain-data hooks.
    pub fn forward(
        &self,
        batch: &Batch,
        hooks: &HookSpec,
        cache: Option<&mut KvCache>,
    ) -> Result<ForwardOutput> {
        let ivs = self.resolve(hooks, batch.rows(), batch.width())?;
        let x = self.embed_ids(batch)?;
        self.forward_embeds(x, batch, &hooks.capture, &ivs, cache)
    }

    /// Forward pass from input embeddings (B, T, d_model) with resolved interventions, logits
    /// at every position.
    pub fn forward_embeds(
        &self,
        embeds: Tensor,
        batch: &Batch,
        capture: &[HookPoint],
        ivs: &[ResolvedIntervention],
        cache: Option<&mut KvCache>,
    ) -> Result<ForwardOutput> {
        // Nothing hooked, no cache, no gradient: the hand-written packed pass (same values,
        // less overhead; see `fast`).
        if capture.is_empty()
            && ivs.is_empty()
            && cache.is_none()
            && !embeds.track_op()
            && super::fast::supported(self)
        {
            return Ok(ForwardOutput {
                logits: super::fast::forward_logits(self, &embeds, batch)?,
                captures: BTreeMap::new(),
            });
        }
        let (normed, captures) = self.hidden_embeds(embeds, batch, capture, ivs, cache)?;
        let logits = linear(&normed, self.unembed())?;
        Ok(ForwardOutput { logits, captures })
    }

    /// Embeds token ids (B, T) into (B, T, d_model).
    pub fn embed_ids(&self, batch: &Batch) -> Result<Tensor> {
        Ok(self.embed.embedding(&batch.ids.flatten_all()?)?.reshape((
            batch.rows(),
            batch.width(),
            self.cfg.hidden_size,
        ))?)
    }

    /// The final-normed residual stream (B, T, d_model) and the captures, without the
    /// unembedding; training unembeds only the positions it scores. Interventions may hold
    /// trainable tensors, so gradients flow into them.
    pub fn hidden_embeds(
        &self,
        embeds: Tensor,
        batch: &Batch,
        capture: &[HookPoint],
        ivs: &[ResolvedIntervention],
        mut cache: Option<&mut KvCache>,
    ) -> Result<(Tensor, BTreeMap<HookPoint, Tensor>)> {
        let (b, t) = (batch.rows(), batch.width());
        let mut captures = BTreeMap::new();
        let mut hook = |p: HookPoint, x: Tensor| -> Result<Tensor> {
            let mut x = x;
            for iv in ivs.iter().filter(|iv| iv.point == p) {
                x = apply(&x, iv)?;
            }
            if capture.contains(&p) {
                captures.insert(p, x.clone());
            }
            Ok(x)
        };
        let past = cache.as_ref().map_or(0, |c| c.len());
        let (key_valid, positions) = match cache.as_deref_mut() {
            Some(c) => {
                if c.valid.is_empty() {
                    c.valid = vec![Vec::new(); b];
                    c.next_pos = vec![0; b];
                } else if c.valid.len() != b {
                    return Err(EngineError::Invalid("cache batch size differs".into()));
                }
                let mut positions = Vec::with_capacity(b);
                for r in 0..b {
                    let mut p = c.next_pos[r];
                    let row: Vec<u32> = batch.valid[r]
                        .iter()
                        .map(|v| {
                            let here = p;
                            if *v {
                                p += 1;
                            }
                            here
                        })
                        .collect();
                    c.next_pos[r] = p;
                    c.valid[r].extend_from_slice(&batch.valid[r]);
                    positions.push(row);
                }
                (c.valid.clone(), positions)
            }
            None => (batch.valid.clone(), batch.positions.clone()),
        };
        let s = past + t;
        let mut mask = vec![MASKED; b * t * s];
        for r in 0..b {
            for i in 0..t {
                for j in 0..=(past + i) {
                    if key_valid[r][j] {
                        mask[(r * t + i) * s + j] = 0.0;
                    }
                }
            }
        }
        let dev = embeds.device().clone();
        let mask = Tensor::from_vec(mask, (b, 1, t, s), &dev)?;
        let pos: Vec<u32> = positions.concat();
        let max_pos = self.cos.dim(0)?;
        if let Some(p) = pos.iter().find(|p| **p as usize >= max_pos) {
            let why = if self.cfg.sliding_window.is_some_and(|w| w == max_pos) {
                " (its sliding-window attention span; longer sequences need sliding-window \
                 attention, which is not implemented)"
            } else {
                ""
            };
            return Err(EngineError::Invalid(format!(
                "position {p} exceeds the model's context of {max_pos} tokens{why}"
            )));
        }
        let pos = Tensor::from_vec(pos, b * t, &dev)?;
        let half = self.cfg.head_dim() / 2;
        let cos = self.cos.index_select(&pos, 0)?.reshape((b, 1, t, half))?;
        let sin = self.sin.index_select(&pos, 0)?.reshape((b, 1, t, half))?;
        let cos = Tensor::cat(&[&cos, &cos], 3)?;
        let sin = Tensor::cat(&[&sin, &sin], 3)?;

        let mut x = hook(HookPoint::Embed, embeds)?;
        for (l, blk) in self.blocks.iter().enumerate() {
            x = hook(HookPoint::ResidPre(l), x)?;
            let kv = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            let (w_qkv, w_gate_up) = &self.fused[l];
            let a = self.attention(blk, w_qkv, &x, &mask, &cos, &sin, kv)?;
            x = hook(HookPoint::ResidMid(l), (x + a)?)?;
            let h = rms_norm(&x, &blk.mlp_norm, self.cfg.rms_norm_eps)?;
            let d_mlp = self.cfg.intermediate_size;
            let gu = w_gate_up.forward(&h)?;
            let gate = gu.narrow(D::Minus1, 0, d_mlp)?.silu()?;
            let up = gu.narrow(D::Minus1, d_mlp, d_mlp)?;
            let m = blk.w_down.forward(&(gate * up)?)?;
            x = hook(HookPoint::ResidPost(l), (x + m)?)?;
        }
        let n = hook(
            HookPoint::LnFinal,
            rms_norm(&x, &self.final_norm, self.cfg.rms_norm_eps)?,
        )?;
        Ok((n, captures))
    }

    #[expect(clippy::too_many_arguments, reason = "one block's attention inputs")]
    fn attention(
        &self,
        blk: &Block,
        w_qkv: &Stack,
        x: &Tensor,
        mask: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        kv: Option<&mut Option<(Tensor, Tensor)>>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.kv_heads(),
            self.cfg.head_dim(),
        );
        let rep = nh / nkv;
        let h = rms_norm(x, &blk.attn_norm, self.cfg.rms_norm_eps)?;
        let mut qkv = w_qkv.forward(&h)?;
        if let Some(bias) = &blk.qkv_bias {
            qkv = qkv.broadcast_add(bias)?;
        }
        let q = qkv
            .narrow(D::Minus1, 0, nh * hd)?
            .reshape((b, t, nh, hd))?
            .transpose(1, 2)?;
        let k = qkv
            .narrow(D::Minus1, nh * hd, nkv * hd)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?;
        let v = qkv
            .narrow(D::Minus1, (nh + nkv) * hd, nkv * hd)?
            .reshape((b, t, nkv, hd))?
            .transpose(1, 2)?;
        let (q, k) = match &blk.qk_norm {
            Some((qn, kn)) => {
                let eps = self.cfg.rms_norm_eps;
                (rms_norm(&q, qn, eps)?, rms_norm(&k, kn, eps)?)
            }
            None => (q, k),
        };
        let q = rope(&q.contiguous()?, cos, sin)?;
        let mut k = rope(&k.contiguous()?, cos, sin)?;
        let mut v = v.contiguous()?;
        if let Some(slot) = kv {
            if let Some((pk, pv)) = slot.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let s = k.dim(2)?;
        // Query heads that share a key/value head are folded into the row dimension, so keys and
        // values are never copied per head.
        let q = q.reshape((b, nkv, rep * t, hd))?;
        let scale = 1.0 / (hd as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?
            .reshape((b, nh, t, s))?
            .broadcast_add(mask)?;
        let p = softmax_last(&scores)?.reshape((b, nkv, rep * t, s))?;
        let o = p
            .matmul(&v)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        blk.wo.forward(&o)
    }
}

fn apply(x: &Tensor, iv: &ResolvedIntervention) -> Result<Tensor> {
    let shape = x.shape();
    let m = iv.mask.broadcast_as(shape)?;
    Ok(match &iv.op {
        ResolvedOp::Replace(v) => m.where_cond(&v.broadcast_as(shape)?, x)?,
        ResolvedOp::Add(v) => {
            let mf = iv.mask.to_dtype(DType::F32)?;
            x.broadcast_add(&mf.broadcast_mul(v)?)?
        }
        ResolvedOp::Interpolate(t, a) => {
            let mixed = ((x * (1.0 - a))? + t.broadcast_as(shape)?.affine(*a, 0.0)?)?;
            m.where_cond(&mixed, x)?
        }
    })
}

/// RoPE cos/sin tables (n_ctx, d_head/2), computed in f32 as the reference implementations do,
/// with the configuration's frequency scaling. Only `n_ctx` positions get a row, so a longer
/// sequence is refused (`forward_embeds`) rather than computed wrongly.
fn rope_tables(cfg: &LlamaConfig, dev: &Device) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let base = cfg.rope_theta as f32;
    let mut inv: Vec<f32> = (0..hd)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / hd as f32))
        .collect();
    if let Some(s) = &cfg.rope_scaling {
        s.apply(&mut inv);
    }
    let n = cfg.n_ctx();
    let mut angles = Vec::with_capacity(n * inv.len());
    for p in 0..n {
        let pf = p as f32;
        angles.extend(inv.iter().map(|f| pf * f));
    }
    let ang = Tensor::from_vec(angles, (n, inv.len()), dev)?;
    Ok((ang.cos()?, ang.sin()?))
}

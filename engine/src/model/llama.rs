//! Our hooked decoder-only transformer: logits at every position, captures and interventions at
//! TransformerLens-named hook points, padded batches, and a KV cache for generation. The block
//! is Llama's; what other families change (`config::Arch`: Gemma's scaled embedding, sandwich
//! norms, GeGLU, soft-capping and alternating sliding windows, GPT-2's LayerNorm, biases and
//! learned positions, Qwen's biases and q/k norms) is switched on per model.
//!
//! Weights are in Hugging Face layout (q/k rows in rotate-half order). All ops are
//! differentiable compositions (see `ops`), so a trainable input gets real gradients.

use std::collections::BTreeMap;

use candle_core::{D, DType, Device, Tensor};

use super::batch::Batch;
use super::cache::KvCache;
use super::intervene::{ResolvedIntervention, apply};
use super::lora::{Adapters, SharedAdapters};
use super::mat::{Mat, Stack};
use super::ops::{add_vec, layer_norm, linear, mul_vec, rms_norm, rope, softcap, softmax_last};
use crate::config::{Act, LlamaConfig, NormKind, RopeScaling};
use crate::error::{EngineError, Result};
use crate::hooks::{HookPoint, HookSpec};
use neoscope_api::lora::LoraTarget;

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
    /// Gate projection (d_mlp, d_model); `None` for a plain MLP (GPT-2).
    pub w_gate: Option<Mat>,
    /// Up projection (d_mlp, d_model) (GPT-2's `c_fc`).
    pub w_up: Mat,
    /// Down projection (d_model, d_mlp).
    pub w_down: Mat,
    /// Biases of the stacked query/key/value projection (n_heads·d_head + 2·n_kv_heads·d_head),
    /// present exactly when the configuration asks for them (Qwen2).
    pub qkv_bias: Option<Tensor>,
    /// Per-head RMSNorm weights (d_head each) of queries and keys before RoPE (Qwen3, Gemma 3).
    pub qk_norm: Option<(Tensor, Tensor)>,
    /// What other families add to the block.
    pub extra: BlockExtra,
}

/// Parts of a block that only some families have; each is present exactly when the
/// configuration's `arch` asks for it (checked in `shapes`).
#[derive(Debug, Clone, Default)]
pub struct BlockExtra {
    /// LayerNorm biases of the attention and MLP norms (GPT-2).
    pub norm_biases: Option<(Tensor, Tensor)>,
    /// Output-projection bias (GPT-2).
    pub o_bias: Option<Tensor>,
    /// Up-projection bias (GPT-2's `c_fc`).
    pub up_bias: Option<Tensor>,
    /// Down-projection bias (GPT-2's MLP `c_proj`).
    pub down_bias: Option<Tensor>,
    /// RMSNorms of the attention output and of the MLP output, before each joins the residual
    /// stream (Gemma 2/3's `post_attention_layernorm`, `post_feedforward_layernorm`).
    pub post_norms: Option<(Tensor, Tensor)>,
}

/// Model-level parts that only some families have.
#[derive(Debug, Clone, Default)]
pub struct ModelExtra {
    /// Learned position embeddings (n_ctx, d_model) (GPT-2).
    pub pos_embed: Option<Tensor>,
    /// The final LayerNorm's bias (GPT-2).
    pub final_norm_bias: Option<Tensor>,
    /// The output head's bias (d_vocab) (the from-scratch seed model).
    pub head_bias: Option<Tensor>,
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
    /// Model-level parts of other families.
    pub extra: ModelExtra,
    /// Per block: the query, key and value projections stacked, (q + 2·kv, d_model), and the
    /// gate and up projections stacked, (2·d_mlp, d_model): one matmul each instead of three
    /// and two. The blocks' own weights are views into these (no second copy).
    fused: Vec<(Stack, Stack)>,
    cos: Tensor,
    sin: Tensor,
    /// RoPE tables of the sliding-window layers when their base differs (Gemma 3).
    local_rope: Option<(Tensor, Tensor)>,
    /// LoRA adapters the hooked pass adds (training and evaluating them; inference merges).
    adapters: Option<SharedAdapters>,
    /// The output head's quantized blocks as the GGUF file stores them, when the blocks stay
    /// quantized: the same weights as [`Llama::unembed`], read by the head's products at a
    /// quarter of the bytes. Used only while its shape is the unembedding's (an attached
    /// vocabulary appends rows it does not have).
    head_q: Option<Mat>,
    /// An untied head kept only as `head_q` (no f32 copy in `lm_head`, which then is `None`
    /// without meaning a tied head): big vocabularies, where the copy would take gigabytes.
    head_only_quantized: bool,
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
    /// Assembles a Llama-style model from weights, checking every shape against the
    /// configuration.
    pub fn new(
        cfg: LlamaConfig,
        embed: Tensor,
        blocks: Vec<Block>,
        final_norm: Tensor,
        lm_head: Option<Tensor>,
    ) -> Result<Self> {
        Self::with_extra(
            cfg,
            embed,
            blocks,
            final_norm,
            lm_head,
            ModelExtra::default(),
        )
    }

    /// Assembles a model of any family from weights, checking every shape and part against
    /// the configuration.
    pub fn with_extra(
        cfg: LlamaConfig,
        embed: Tensor,
        blocks: Vec<Block>,
        final_norm: Tensor,
        lm_head: Option<Tensor>,
        extra: ModelExtra,
    ) -> Result<Self> {
        cfg.validate().map_err(EngineError::Invalid)?;
        super::shapes::check(&cfg, &embed, &blocks, &final_norm, lm_head.as_ref(), &extra)
            .map_err(|e| super::shapes::explain(e, &cfg))?;
        let (hd, m) = (cfg.head_dim(), cfg.intermediate_size);
        let (q, kv) = (cfg.num_attention_heads * hd, cfg.kv_heads() * hd);
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
            let gate_up = match &b.w_gate {
                None => Stack::Parts(vec![b.w_up.clone()]),
                Some(gate) => match fuse(&[gate, &b.w_up])? {
                    Some(w) => {
                        b.w_gate = Some(Mat::Dense(w.narrow(0, 0, m)?));
                        b.w_up = Mat::Dense(w.narrow(0, m, m)?);
                        Stack::Fused(w)
                    }
                    None => Stack::Parts(vec![gate.clone(), b.w_up.clone()]),
                },
            };
            fused.push((qkv, gate_up));
        }
        let dev = embed.device();
        let (cos, sin) = rope_tables(&cfg, cfg.rope_theta, cfg.rope_scaling.as_ref(), dev)?;
        let local_rope = match cfg.arch.rope_local_theta {
            Some(base) => Some(rope_tables(&cfg, base, None, dev)?),
            None => None,
        };
        Ok(Self {
            cfg,
            embed,
            blocks,
            final_norm,
            lm_head,
            extra,
            fused,
            cos,
            sin,
            local_rope,
            adapters: None,
            head_q: None,
            head_only_quantized: false,
        })
    }

    /// The model with its output head's quantized blocks (see [`Llama::quantized_head`]) beside
    /// its f32 copy; they must have the unembedding's shape.
    pub fn with_quantized_head(mut self, head: Mat) -> Result<Self> {
        let want = (self.cfg.vocab_size, self.cfg.hidden_size);
        if head.dims()? != want {
            return Err(EngineError::Invalid(format!(
                "quantized output head of shape {:?}, the unembedding is {want:?}",
                head.dims()?
            )));
        }
        self.head_q = Some(head);
        Ok(self)
    }

    /// An untied model whose output head is kept only as quantized blocks (`lm_head` must be
    /// `None` here; the f32 copy is not made).
    pub fn with_only_quantized_head(mut self, head: Mat) -> Result<Self> {
        if self.lm_head.is_some() || self.cfg.tie_word_embeddings {
            return Err(EngineError::Invalid(
                "only an untied model without an f32 head keeps its head only quantized".into(),
            ));
        }
        self = self.with_quantized_head(head)?;
        self.head_only_quantized = true;
        Ok(self)
    }

    /// `self` with `from`'s quantized output head (a model rebuilt from another's parts).
    pub fn with_head_of(mut self, from: &Llama) -> Result<Self> {
        if let Some(h) = &from.head_q {
            self = if from.head_only_quantized {
                self.with_only_quantized_head(h.clone())?
            } else {
                self.with_quantized_head(h.clone())?
            };
        }
        Ok(self)
    }

    /// The output head's quantized blocks, while they hold the unembedding's weights.
    pub fn quantized_head(&self) -> Option<&Mat> {
        let rows = self.cfg.vocab_size;
        self.head_q
            .as_ref()
            .filter(|h| h.dims().is_ok_and(|(r, _)| r == rows))
    }

    /// Whether the (untied) output head is kept only as quantized blocks.
    pub fn head_only_quantized(&self) -> bool {
        self.head_only_quantized
    }

    /// The output head as f32, dequantized when it is kept only quantized (for the few
    /// computations that change the head's rows).
    pub fn dense_head(&self) -> Result<Tensor> {
        match (&self.head_q, self.head_only_quantized) {
            (Some(Mat::Quant(q)), true) => Ok(q.dequantize(self.embed.device())?),
            _ => Ok(self.unembed()?.clone()),
        }
    }

    /// `self` with an f32 output head (untied) instead of one kept only quantized.
    pub fn with_dense_head(mut self, head: Tensor) -> Self {
        self.lm_head = Some(head);
        self.head_only_quantized = false;
        self
    }

    /// The same model carrying `adapters` (its weights shared, not copied); only the hooked
    /// pass runs it.
    pub fn with_adapters(&self, adapters: Option<SharedAdapters>) -> Self {
        Self {
            adapters,
            ..self.clone()
        }
    }

    /// The adapters it carries.
    pub fn adapters(&self) -> Option<&Adapters> {
        self.adapters.as_deref()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.embed.device()
    }

    /// Block `l`'s stacked query/key/value and gate/up projections, dense or quantized.
    pub fn stacks(&self, l: usize) -> (&Stack, &Stack) {
        let (qkv, gu) = &self.fused[l];
        (qkv, gu)
    }

    /// Whether every block matrix keeps a GGUF file's quantized blocks.
    pub fn blocks_quantized(&self) -> bool {
        self.every_block_matrix(|m| matches!(m, Mat::Quant(_)))
    }

    /// Whether every block matrix is dense and of `dtype`.
    pub fn blocks_are(&self, dtype: DType) -> bool {
        self.every_block_matrix(|m| m.is_dense(dtype))
    }

    fn every_block_matrix(&self, f: impl Fn(&Mat) -> bool) -> bool {
        self.blocks.iter().all(|b| {
            [&b.wq, &b.wk, &b.wv, &b.wo, &b.w_up, &b.w_down]
                .into_iter()
                .chain(&b.w_gate)
                .all(&f)
        })
    }

    /// RoPE cos and sin tables, (n_ctx, d_head/2) each.
    pub fn rope_tables(&self) -> (&Tensor, &Tensor) {
        (&self.cos, &self.sin)
    }

    /// What token embeddings are multiplied by before the first block (Gemma: √d_model rounded
    /// to f32; 1 elsewhere). A word injected as an embedding is a raw embedding row, so its
    /// vector is scaled the same way.
    pub fn embed_scale(&self) -> f32 {
        self.cfg.arch.embed_scale.map_or(1.0, |s| s as f32)
    }

    /// Output head weight as f32 (the embedding when tied); an error when the head is kept only
    /// as quantized blocks ([`Llama::quantized_head`] has it).
    pub fn unembed(&self) -> Result<&Tensor> {
        match (&self.lm_head, self.head_only_quantized) {
            (Some(h), _) => Ok(h),
            (None, false) => Ok(&self.embed),
            (None, true) => Err(EngineError::Invalid(
                "this computation needs the output head as f32, and the model keeps it only as \
                 quantized blocks (load it with --dtype f32, bf16 or f16)"
                    .into(),
            )),
        }
    }

    /// The family's final norm followed by its output head: residual (…, d_model) → logits
    /// (…, d_vocab).
    pub fn project(&self, resid: &Tensor) -> Result<Tensor> {
        let n = self.final_scale(&self.final_normalize(resid)?)?;
        self.logits(&n)
    }

    /// The final norm's first step, what TransformerLens hooks as `ln_final.hook_normalized`:
    /// the residual stream normalized (RMS, or centred and divided by its standard deviation),
    /// before the norm's weight and bias.
    pub fn final_normalize(&self, resid: &Tensor) -> Result<Tensor> {
        if self.cfg.arch.no_final_norm {
            return Ok(resid.clone());
        }
        let eps = self.cfg.rms_norm_eps;
        let ones = Tensor::ones(self.cfg.hidden_size, DType::F32, resid.device())?;
        Ok(match self.cfg.arch.norm {
            NormKind::Rms => rms_norm(resid, &ones, eps)?,
            NormKind::Layer => layer_norm(resid, &ones, &ones.zeros_like()?, eps)?,
        })
    }

    /// The final norm's second step: its weight and, for LayerNorm, its bias.
    pub fn final_scale(&self, normalized: &Tensor) -> Result<Tensor> {
        if self.cfg.arch.no_final_norm {
            return Ok(normalized.clone());
        }
        let n = mul_vec(normalized, &self.final_norm)?;
        Ok(match &self.extra.final_norm_bias {
            Some(b) => add_vec(&n, b)?,
            None => n,
        })
    }

    /// The output head on final-normed residuals (…, d_model) → logits (…, d_vocab), with the
    /// family's logit soft-capping.
    pub fn logits(&self, normed: &Tensor) -> Result<Tensor> {
        self.cap_logits(self.head(normed)?)
    }

    /// The output head alone, with its bias when it has one, before any soft-capping.
    pub fn head(&self, normed: &Tensor) -> Result<Tensor> {
        // The quantized head for a few rows (decoding: a quarter of the bytes to read); many
        // rows take the f32 copy (dequantizing the head would cost more than reading it).
        let rows = normed.elem_count() / self.cfg.hidden_size.max(1);
        let z = match self.quantized_head() {
            Some(q) if rows <= super::qmatmul::DIRECT_ROWS || self.head_only_quantized => {
                q.forward(normed)?
            }
            _ => linear(normed, self.unembed()?)?,
        };
        Ok(match &self.extra.head_bias {
            Some(b) => add_vec(&z, b)?,
            None => z,
        })
    }

    /// The family's logit soft-capping (Gemma 2) applied to raw logits; the identity elsewhere.
    pub fn cap_logits(&self, z: Tensor) -> Result<Tensor> {
        Ok(match self.cfg.arch.final_softcap {
            Some(c) => softcap(&z, c)?,
            None => z,
        })
    }

    /// The family's norm (RMSNorm or LayerNorm) with weight `w` and, for LayerNorm, bias `b`.
    pub fn norm(&self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let eps = self.cfg.rms_norm_eps;
        Ok(match (self.cfg.arch.norm, b) {
            (NormKind::Rms, _) => rms_norm(x, w, eps)?,
            (NormKind::Layer, Some(b)) => layer_norm(x, w, b, eps)?,
            (NormKind::Layer, None) => {
                return Err(EngineError::Invalid("LayerNorm without a bias".into()));
            }
        })
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
        let logits = self.logits(&normed)?;
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
        let dev = embeds.device().clone();
        // One mask per distinct attention span: causal, valid keys only, and within a sliding
        // window measured in token positions (so padding never counts against the window).
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        for l in 0..self.cfg.num_hidden_layers {
            let w = self.cfg.window(l);
            if !masks.iter().any(|(span, _)| *span == w) {
                masks.push((w, attention_mask(&key_valid, &positions, past, w, &dev)?));
            }
        }
        let pos: Vec<u32> = positions.concat();
        let max_pos = self.cfg.n_ctx();
        if let Some(p) = pos.iter().find(|p| **p as usize >= max_pos) {
            return Err(EngineError::Invalid(format!(
                "position {p} exceeds the model's context of {max_pos} tokens"
            )));
        }
        let pos = Tensor::from_vec(pos, b * t, &dev)?;
        let half = self.cfg.head_dim() / 2;
        let gather = |(cos, sin): (&Tensor, &Tensor)| -> Result<(Tensor, Tensor)> {
            let c = cos.index_select(&pos, 0)?.reshape((b, 1, t, half))?;
            let s = sin.index_select(&pos, 0)?.reshape((b, 1, t, half))?;
            Ok((Tensor::cat(&[&c, &c], 3)?, Tensor::cat(&[&s, &s], 3)?))
        };
        let learned = self.cfg.arch.learned_positions;
        let global = if learned {
            None
        } else {
            Some(gather((&self.cos, &self.sin))?)
        };
        let local = match &self.local_rope {
            Some((c, s)) if !learned => Some(gather((c, s))?),
            _ => None,
        };

        // The scale is rounded to the activations' type first, as transformers does.
        let scale = self.embed_scale();
        let mut x = if scale == 1.0 {
            embeds
        } else {
            (embeds * f64::from(scale))?
        };
        x = hook(HookPoint::Embed, x)?;
        if let Some(pe) = &self.extra.pos_embed {
            let p = pe
                .index_select(&pos, 0)?
                .reshape((b, t, self.cfg.hidden_size))?;
            x = (x + hook(HookPoint::PosEmbed, p)?)?;
        }
        let d_mlp = self.cfg.intermediate_size;
        let mut patterns = Vec::new();
        for (l, blk) in self.blocks.iter().enumerate() {
            x = hook(HookPoint::ResidPre(l), x)?;
            let kv = cache.as_deref_mut().map(|c| &mut c.layers[l]);
            let (w_qkv, w_gate_up) = &self.fused[l];
            let span = self.cfg.window(l);
            let mask = masks
                .iter()
                .find(|(w, _)| *w == span)
                .map(|(_, m)| m)
                .ok_or_else(|| EngineError::Invalid("attention mask missing".into()))?;
            let rope = match (&local, span) {
                (Some(loc), Some(_)) => Some(loc),
                _ => global.as_ref(),
            };
            let want_pattern = capture.contains(&HookPoint::Pattern(l));
            let nb = blk.extra.norm_biases.as_ref();
            let post = self.cfg.arch.post_norm;
            let h = if post {
                x.clone()
            } else {
                self.norm(&x, &blk.attn_norm, nb.map(|b| &b.0))?
            };
            let (mut a, pattern) =
                self.attention((l, blk), w_qkv, &h, mask, rope, kv, want_pattern)?;
            if let Some(p) = pattern {
                patterns.push((HookPoint::Pattern(l), p));
            }
            if let Some((post_attn, _)) = &blk.extra.post_norms {
                a = rms_norm(&a, post_attn, self.cfg.rms_norm_eps)?;
            }
            let a = hook(HookPoint::AttnOut(l), a)?;
            x = (x + a)?;
            if post {
                x = self.norm(&x, &blk.attn_norm, nb.map(|b| &b.0))?;
            }
            x = hook(HookPoint::ResidMid(l), x)?;
            let h = if post {
                x.clone()
            } else {
                self.norm(&x, &blk.mlp_norm, nb.map(|b| &b.1))?
            };
            let mut gu = w_gate_up.forward(&h)?;
            if let Some(ad) = &self.adapters {
                gu = match blk.w_gate {
                    Some(_) => ad.add_stacked(
                        l,
                        &[(LoraTarget::Gate, d_mlp), (LoraTarget::Up, d_mlp)],
                        &h,
                        gu,
                    )?,
                    None => ad.add_stacked(l, &[(LoraTarget::Up, d_mlp)], &h, gu)?,
                };
            }
            let inner = if blk.w_gate.is_some() {
                let gate = activate(&gu.narrow(D::Minus1, 0, d_mlp)?, self.cfg.arch.act)?;
                (gate * gu.narrow(D::Minus1, d_mlp, d_mlp)?)?
            } else {
                let up = match &blk.extra.up_bias {
                    Some(bias) => add_vec(&gu, bias)?,
                    None => gu,
                };
                activate(&up, self.cfg.arch.act)?
            };
            let mut m = blk.w_down.forward(&inner)?;
            if let Some(d) = self.lora(l, LoraTarget::Down, &inner)? {
                m = (m + d)?;
            }
            if let Some(bias) = &blk.extra.down_bias {
                m = add_vec(&m, bias)?;
            }
            if let Some((_, post_mlp)) = &blk.extra.post_norms {
                m = rms_norm(&m, post_mlp, self.cfg.rms_norm_eps)?;
            }
            let m = hook(HookPoint::MlpOut(l), m)?;
            x = (x + m)?;
            if post {
                x = self.norm(&x, &blk.mlp_norm, nb.map(|b| &b.1))?;
            }
            x = hook(HookPoint::ResidPost(l), x)?;
        }
        let n = hook(HookPoint::LnFinal, self.final_normalize(&x)?)?;
        captures.extend(patterns);
        Ok((self.final_scale(&n)?, captures))
    }

    /// One block's attention output from its (already normed) input `h`, and its pattern
    /// (B, H, T, S) when asked for.
    #[expect(clippy::too_many_arguments, reason = "one block's attention inputs")]
    fn attention(
        &self,
        (l, blk): (usize, &Block),
        w_qkv: &Stack,
        h: &Tensor,
        mask: &Tensor,
        rope_cs: Option<&(Tensor, Tensor)>,
        kv: Option<&mut Option<(Tensor, Tensor)>>,
        want_pattern: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (b, t, _) = h.dims3()?;
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.kv_heads(),
            self.cfg.head_dim(),
        );
        let rep = nh / nkv;
        let mut qkv = w_qkv.forward(h)?;
        if let Some(ad) = &self.adapters {
            let (q, kv) = (nh * hd, nkv * hd);
            let parts = [(LoraTarget::Q, q), (LoraTarget::K, kv), (LoraTarget::V, kv)];
            qkv = ad.add_stacked(l, &parts, h, qkv)?;
        }
        if let Some(bias) = &blk.qkv_bias {
            qkv = add_vec(&qkv, bias)?;
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
        let (q, mut k) = match rope_cs {
            Some((cos, sin)) => (
                rope(&q.contiguous()?, cos, sin)?,
                rope(&k.contiguous()?, cos, sin)?,
            ),
            None => (q.contiguous()?, k.contiguous()?),
        };
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
        let scale = 1.0
            / self
                .cfg
                .arch
                .query_pre_attn_scalar
                .unwrap_or(hd as f64)
                .sqrt();
        let mut scores = (q.matmul(&k.t()?)? * scale)?.reshape((b, nh, t, s))?;
        if let Some(c) = self.cfg.arch.attn_softcap {
            scores = softcap(&scores, c)?;
        }
        let scores = scores.broadcast_add(mask)?;
        let p = softmax_last(&scores)?;
        let pattern = if want_pattern { Some(p.clone()) } else { None };
        let p = p.reshape((b, nkv, rep * t, s))?;
        let o = p
            .matmul(&v)?
            .reshape((b, nh, t, hd))?
            .transpose(1, 2)?
            .reshape((b, t, nh * hd))?;
        let mut out = blk.wo.forward(&o)?;
        if let Some(d) = self.lora(l, LoraTarget::O, &o)? {
            out = (out + d)?;
        }
        let out = match &blk.extra.o_bias {
            Some(bias) => add_vec(&out, bias)?,
            None => out,
        };
        Ok((out, pattern))
    }
}

impl Llama {
    /// Adapter `t` of layer `l` applied to `x`, when the model carries one.
    fn lora(&self, l: usize, t: LoraTarget, x: &Tensor) -> Result<Option<Tensor>> {
        match &self.adapters {
            Some(ad) => ad.delta(l, t, x),
            None => Ok(None),
        }
    }
}

fn activate(x: &Tensor, act: Act) -> Result<Tensor> {
    Ok(match act {
        Act::Silu => x.silu()?,
        // candle's `gelu` is the tanh approximation.
        Act::GeluTanh => x.gelu()?,
        Act::Relu => x.relu()?,
    })
}

/// The additive attention mask (B, 1, T, S) for queries at cache offset `past`: a key is seen
/// when it is valid, not in the future, and (for a sliding window `span`) fewer than `span`
/// token positions back.
fn attention_mask(
    key_valid: &[Vec<bool>],
    positions: &[Vec<u32>],
    past: usize,
    span: Option<usize>,
    dev: &Device,
) -> Result<Tensor> {
    let (b, t) = (positions.len(), positions.first().map_or(0, Vec::len));
    let s = past + t;
    let mut mask = vec![MASKED; b * t * s];
    for r in 0..b {
        // A key's position is the number of valid keys before it.
        let mut key_pos = Vec::with_capacity(s);
        let mut count = 0usize;
        for v in &key_valid[r] {
            key_pos.push(count);
            count += usize::from(*v);
        }
        for i in 0..t {
            let qp = positions[r][i] as usize;
            for j in 0..=(past + i) {
                let near = span.is_none_or(|w| qp < key_pos[j] + w);
                if key_valid[r][j] && near {
                    mask[(r * t + i) * s + j] = 0.0;
                }
            }
        }
    }
    Ok(Tensor::from_vec(mask, (b, 1, t, s), dev)?)
}

/// RoPE cos/sin tables (n_ctx, d_head/2), computed in f32 as the reference implementations do,
/// with the configuration's frequency scaling. Only `n_ctx` positions get a row, so a longer
/// sequence is refused (`forward_embeds`) rather than computed wrongly.
pub(crate) fn rope_tables(
    cfg: &LlamaConfig,
    base: f64,
    scaling: Option<&RopeScaling>,
    dev: &Device,
) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let base = base as f32;
    let mut inv: Vec<f32> = (0..hd)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / hd as f32))
        .collect();
    if let Some(s) = scaling {
        s.apply(&mut inv, base, hd);
    }
    let n = cfg.n_ctx();
    let mut angles = Vec::with_capacity(n * inv.len());
    for p in 0..n {
        let pf = p as f32;
        angles.extend(inv.iter().map(|f| pf * f));
    }
    let ang = Tensor::from_vec(angles, (n, inv.len()), dev)?;
    let (cos, sin) = (ang.cos()?, ang.sin()?);
    Ok(match scaling.and_then(RopeScaling::attention_factor) {
        Some(a) => ((cos * f64::from(a))?, (sin * f64::from(a))?),
        None => (cos, sin),
    })
}

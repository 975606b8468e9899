//! A hand-written forward pass of the Llama block on the CPU over packed sequences (no
//! padding), on plain f32 buffers: the inference forward pass when nothing is hooked, and the
//! forward half of the word-gradient pass (`words::grad`), which keeps each block's
//! [`LayerTape`] for its backward pass.
//!
//! Why by hand: candle's composed ops allocate a tensor per op (RoPE alone is five), pad every
//! sequence to the longest and add a mask; here attention runs per sequence on its own length
//! and the products use `cpu::matmul`. Tests check it against the candle forward pass.

use candle_core::{DType, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use super::Llama;
use super::batch::Batch;
use super::cpu::{CpuView, rms_norm_rows, rope_head};
use super::lora_cpu::{LayerLora, LoraTape};
use super::proj::Proj;
use crate::config::Arch;
use crate::error::{EngineError, Result};
use neoscope_api::lora::LoraTarget;

#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub(crate) d: usize,
    pub(crate) nh: usize,
    pub(crate) nkv: usize,
    pub(crate) hd: usize,
    pub(crate) dm: usize,
    pub(crate) eps: f32,
    pub(crate) scale: f32,
    pub(crate) vocab: usize,
}

impl Dims {
    pub(crate) fn of(m: &Llama) -> Self {
        let hd = m.cfg.head_dim();
        let eps = m.cfg.rms_norm_eps as f32;
        let scale = 1.0 / (hd as f32).sqrt();
        Self {
            d: m.cfg.hidden_size,
            nh: m.cfg.num_attention_heads,
            nkv: m.cfg.kv_heads(),
            hd,
            dm: m.cfg.intermediate_size,
            eps,
            scale,
            vocab: m.cfg.vocab_size,
        }
    }
    pub(crate) fn nq(self) -> usize {
        self.nh * self.hd
    }
    pub(crate) fn nk(self) -> usize {
        self.nkv * self.hd
    }
    /// Width of a fused q/k/v row.
    pub(crate) fn w(self) -> usize {
        self.nq() + 2 * self.nk()
    }
    pub(crate) fn rep(self) -> usize {
        self.nh / self.nkv
    }
}

pub(crate) struct LayerWeights<'a> {
    pub(crate) attn_norm: CpuView<'a>,
    pub(crate) qkv: Proj<'a>,
    pub(crate) qkv_bias: Option<CpuView<'a>>,
    pub(crate) wo: Proj<'a>,
    pub(crate) mlp_norm: CpuView<'a>,
    pub(crate) gate_up: Proj<'a>,
    pub(crate) down: Proj<'a>,
}

pub(crate) struct Weights<'a> {
    pub(crate) embed: CpuView<'a>,
    pub(crate) layers: Vec<LayerWeights<'a>>,
    pub(crate) final_norm: CpuView<'a>,
    pub(crate) unembed: Proj<'a>,
    pub(crate) cos: CpuView<'a>,
    pub(crate) sin: CpuView<'a>,
}

impl<'a> Weights<'a> {
    pub(crate) fn new(m: &'a Llama) -> Result<Self> {
        let layers = m
            .blocks
            .iter()
            .enumerate()
            .map(|(l, b)| {
                let (qkv, gate_up) = m.stacks(l);
                Ok(LayerWeights {
                    attn_norm: CpuView::new(&b.attn_norm)?,
                    qkv: Proj::of_stack(qkv)?,
                    qkv_bias: b.qkv_bias.as_ref().map(CpuView::new).transpose()?,
                    wo: Proj::of_mat(&b.wo)?,
                    mlp_norm: CpuView::new(&b.mlp_norm)?,
                    gate_up: Proj::of_stack(gate_up)?,
                    down: Proj::of_mat(&b.w_down)?,
                })
            })
            .collect::<Result<_>>()?;
        let (cos, sin) = m.rope_tables();
        Ok(Self {
            embed: CpuView::new(&m.embed)?,
            layers,
            final_norm: CpuView::new(&m.final_norm)?,
            unembed: match (m.unembed(), m.quantized_head()) {
                (Ok(t), _) => Proj::Dense(CpuView::new(t)?),
                (Err(_), Some(q)) => Proj::of_mat(q)?,
                (Err(e), None) => return Err(e),
            },
            cos: CpuView::new(cos)?,
            sin: CpuView::new(sin)?,
        })
    }
}

/// Input embeddings of `ids`, rows × d.
pub(crate) fn embed_rows(w: &Weights<'_>, d: usize, ids: &[u32]) -> Result<Vec<f32>> {
    let emb = w.embed.data();
    let mut x = vec![0f32; ids.len() * d];
    for (row, id) in x.chunks_mut(d).zip(ids) {
        let id = *id as usize;
        let src = emb
            .get(id * d..(id + 1) * d)
            .ok_or_else(|| EngineError::Invalid(format!("token id {id} outside the vocabulary")))?;
        row.copy_from_slice(src);
    }
    Ok(x)
}

/// The rotated keys and values of layer-input rows `qkv` (rows × (q + 2·kv), as `layer_forward`
/// keeps them), as a cache holds them: rows × 2·kv.
pub(crate) fn kv_rows(dims: Dims, qkv: &[f32]) -> Vec<f32> {
    let (nq, nk) = (dims.nq(), dims.nk());
    qkv.chunks_exact(dims.w())
        .flat_map(|row| row[nq..nq + 2 * nk].iter().copied())
        .collect()
}

/// Sequences packed one after another, no padding.
pub(crate) struct Packed {
    /// First packed row of each sequence.
    pub(crate) start: Vec<usize>,
    /// Length of each sequence.
    pub(crate) len: Vec<usize>,
    /// Position of each packed row within its sequence.
    pub(crate) pos: Vec<usize>,
    /// Leading positions of each sequence that are not packed: their keys and values come
    /// from a cache (see `layer_forward`'s `past`).
    pub(crate) prefix: Vec<usize>,
    /// Total rows.
    pub(crate) rows: usize,
}

impl Packed {
    /// Packs sequences of the given lengths; fails past the model's context.
    pub(crate) fn new(lens: impl IntoIterator<Item = usize>, max_pos: usize) -> Result<Self> {
        Self::with_prefix(lens.into_iter().map(|n| (0, n)), max_pos)
    }

    /// Packs the rows after a cached prefix of each sequence: `(prefix, rows)` per sequence.
    pub(crate) fn with_prefix(
        spans: impl IntoIterator<Item = (usize, usize)>,
        max_pos: usize,
    ) -> Result<Self> {
        let mut p = Self {
            start: Vec::new(),
            len: Vec::new(),
            pos: Vec::new(),
            prefix: Vec::new(),
            rows: 0,
        };
        for (pre, n) in spans {
            if pre + n > max_pos {
                return Err(EngineError::Invalid(format!(
                    "a sequence has {} tokens, the model's context is {max_pos}",
                    pre + n
                )));
            }
            p.start.push(p.rows);
            p.len.push(n);
            p.prefix.push(pre);
            p.pos.extend(pre..pre + n);
            p.rows += n;
        }
        Ok(p)
    }

    /// Keys attended to by sequence `s`: its prefix and its packed rows.
    pub(crate) fn total(&self, s: usize) -> usize {
        self.prefix[s] + self.len[s]
    }
}

/// Where attention finds key `j` (a position in its sequence) of sequence `s` at one layer: in
/// the cached prefix (rows × 2·kv: rotated keys, then values) or in the packed rows.
pub(crate) struct KeySource<'a> {
    pub(crate) dims: Dims,
    pub(crate) pk: &'a Packed,
    pub(crate) qkv: &'a [f32],
    pub(crate) past: &'a [&'a [f32]],
}

impl KeySource<'_> {
    /// Rotated key of position `j` of sequence `s`, KV head `g`.
    #[inline]
    pub(crate) fn key(&self, s: usize, g: usize, j: usize) -> &[f32] {
        let (hd, pre) = (self.dims.hd, self.pk.prefix[s]);
        if j < pre {
            &self.past[s][j * 2 * self.dims.nk() + g * hd..][..hd]
        } else {
            let row = self.pk.start[s] + j - pre;
            &self.qkv[row * self.dims.w() + self.dims.nq() + g * hd..][..hd]
        }
    }

    /// Value of position `j` of sequence `s`, KV head `g`.
    #[inline]
    pub(crate) fn value(&self, s: usize, g: usize, j: usize) -> &[f32] {
        let (hd, nk, pre) = (self.dims.hd, self.dims.nk(), self.pk.prefix[s]);
        if j < pre {
            &self.past[s][j * 2 * nk + nk + g * hd..][..hd]
        } else {
            let row = self.pk.start[s] + j - pre;
            &self.qkv[row * self.dims.w() + self.dims.nq() + nk + g * hd..][..hd]
        }
    }
}

/// Whether the hand-written pass can run this model: f32 or quantized block weights on the CPU.
pub fn supported(m: &Llama) -> bool {
    // Written here: Llama's block and Qwen2's q/k/v biases, full causal attention. Everything
    // else (q/k norms, other families' parts, sliding windows shorter than the context) takes
    // the candle pass.
    let arch = Arch {
        qkv_bias: m.cfg.arch.qkv_bias,
        ..Arch::default()
    };
    m.device().is_cpu()
        && m.adapters().is_none()
        && m.embed.dtype() == DType::F32
        && (m.blocks_are(DType::F32) || m.blocks_quantized())
        && m.cfg.arch == arch
        && m.cfg.sliding_window.is_none_or(|w| w >= m.cfg.n_ctx())
}

/// Logits (B, T, vocab) of a batch from its input embeddings (B, T, d_model), no hooks, no
/// cache. Each row's real tokens are packed and attend only to each other (what the masked
/// candle pass computes); padded positions get logits of zero.
pub fn forward_logits(m: &Llama, embeds: &Tensor, batch: &Batch) -> Result<Tensor> {
    let dims = Dims::of(m);
    let (b, t, d) = embeds.dims3()?;
    let w = Weights::new(m)?;
    // Real tokens of a row are contiguous (padding is all on one side).
    let spans: Vec<(usize, usize)> = batch
        .valid
        .iter()
        .map(|v| {
            (
                v.iter().position(|x| *x).unwrap_or(0),
                v.iter().filter(|x| **x).count(),
            )
        })
        .collect();
    let pk = Packed::new(spans.iter().map(|s| s.1), m.cfg.n_ctx())?;
    let embeds = embeds.contiguous()?;
    let view = CpuView::new(&embeds)?;
    let e = view.data();
    let mut x = Vec::with_capacity(pk.rows * d);
    for (r, (off, len)) in spans.iter().enumerate() {
        x.extend_from_slice(&e[(r * t + off) * d..(r * t + off + len) * d]);
    }
    drop(view);
    let past = vec![&[][..]; pk.len.len()];
    for lw in &w.layers {
        x = layer_forward(dims, lw, &pk, x, (w.cos.data(), w.sin.data()), &past, None)?.1;
    }
    // Final norm and the vocabulary product on the real rows only, then the logits are placed
    // into the padded layout (zero at padding).
    let mut normed = vec![0f32; pk.rows * d];
    rms_norm_rows(&x, w.final_norm.data(), dims.eps, &mut normed);
    drop(x);
    let v = dims.vocab;
    let mut packed = vec![0f32; pk.rows * v];
    w.unembed
        .forward(&mut packed, &normed, (pk.rows, d, v), false)?;
    let logits = if pk.rows == b * t {
        // No padding: the packed rows already are the (B, T) layout.
        packed
    } else {
        let mut logits = vec![0f32; b * t * v];
        for (r, (off, len)) in spans.iter().enumerate() {
            let src = &packed[pk.start[r] * v..(pk.start[r] + len) * v];
            logits[(r * t + off) * v..(r * t + off + len) * v].copy_from_slice(src);
        }
        logits
    };
    Ok(Tensor::from_vec(logits, (b, t, v), m.device())?)
}

/// What one block's backward pass reads from its forward pass.
pub(crate) struct LayerTape {
    /// Block input (rows × d).
    pub(crate) x: Vec<f32>,
    /// `1/rms` of `x` per row.
    pub(crate) r1: Vec<f32>,
    /// Rotated queries and keys, and values (rows × (q + 2·kv)).
    pub(crate) qkv: Vec<f32>,
    /// Attention weights per (sequence, head): packed rows × (prefix + rows), row-major, zero
    /// past each row's own position.
    pub(crate) att: Vec<Vec<f32>>,
    /// Residual after attention.
    pub(crate) xm: Vec<f32>,
    /// `1/rms` of `xm` per row.
    pub(crate) r2: Vec<f32>,
    /// Gate and up pre-activations (rows × 2·d_mlp).
    pub(crate) gu: Vec<f32>,
    /// What the layer's LoRA adapters keep, if it has any.
    pub(crate) lora: LoraTape,
}

pub(crate) fn layer_forward(
    dims: Dims,
    lw: &LayerWeights<'_>,
    pk: &Packed,
    x: Vec<f32>,
    (cos, sin): (&[f32], &[f32]),
    past: &[&[f32]],
    lora: Option<&LayerLora>,
) -> Result<(LayerTape, Vec<f32>)> {
    let (n, d, dm, w) = (pk.rows, dims.d, dims.dm, dims.w());
    let (nq, nk) = (dims.nq(), dims.nk());
    let mut lt = LoraTape::default();
    let mut h = vec![0f32; n * d];
    let r1 = rms_norm_rows(&x, lw.attn_norm.data(), dims.eps, &mut h);
    let mut qkv = vec![0f32; n * w];
    lw.qkv.forward(&mut qkv, &h, (n, d, w), false)?;
    if let Some(lo) = lora {
        lo.add(LoraTarget::Q, &h, n, &mut qkv, w, 0, &mut lt);
        lo.add(LoraTarget::K, &h, n, &mut qkv, w, nq, &mut lt);
        lo.add(LoraTarget::V, &h, n, &mut qkv, w, nq + nk, &mut lt);
    }
    let (hd, half) = (dims.hd, dims.hd / 2);
    let bias = lw.qkv_bias.as_ref().map(CpuView::data);
    qkv.par_chunks_mut(w).enumerate().for_each(|(row, r)| {
        if let Some(b) = bias {
            r.iter_mut().zip(b).for_each(|(x, b)| *x += b);
        }
        let p = pk.pos[row];
        let (c, s) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        for head in r[..(dims.nh + dims.nkv) * hd].chunks_mut(hd) {
            rope_head(head, c, s, false);
        }
    });
    let (o, att) = attention_forward(&KeySource {
        dims,
        pk,
        qkv: &qkv,
        past,
    });
    let mut xm = x.clone();
    lw.wo.forward(&mut xm, &o, (n, dims.nq(), d), true)?;
    if let Some(lo) = lora {
        lo.add(LoraTarget::O, &o, n, &mut xm, d, 0, &mut lt);
    }
    let r2 = rms_norm_rows(&xm, lw.mlp_norm.data(), dims.eps, &mut h);
    let mut gu = vec![0f32; n * 2 * dm];
    lw.gate_up.forward(&mut gu, &h, (n, d, 2 * dm), false)?;
    if let Some(lo) = lora {
        lo.add(LoraTarget::Gate, &h, n, &mut gu, 2 * dm, 0, &mut lt);
        lo.add(LoraTarget::Up, &h, n, &mut gu, 2 * dm, dm, &mut lt);
    }
    let mut act = vec![0f32; n * dm];
    act.par_chunks_mut(dm)
        .zip(gu.par_chunks(2 * dm))
        .for_each(|(a, g)| silu_mul_row(a, g));
    let mut next = xm.clone();
    lw.down.forward(&mut next, &act, (n, dm, d), true)?;
    if let Some(lo) = lora {
        lo.add(LoraTarget::Down, &act, n, &mut next, d, 0, &mut lt);
    }
    Ok((
        LayerTape {
            x,
            r1,
            qkv,
            att,
            xm,
            r2,
            gu,
            lora: lt,
        },
        next,
    ))
}

/// Dot product with eight independent partial sums, so that the compiler vectorizes it (a
/// single running sum is a serial dependency chain it must keep in order).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline]
pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Causal attention within each packed sequence: the heads' outputs (rows × q) and the
/// attention weights per (sequence, head).
pub(crate) fn attention_forward(src: &KeySource<'_>) -> (Vec<f32>, Vec<Vec<f32>>) {
    let (dims, pk) = (src.dims, src.pk);
    let (hd, nq) = (dims.hd, dims.nq());
    let tasks: Vec<(usize, usize)> = (0..pk.len.len())
        .flat_map(|s| (0..dims.nh).map(move |h| (s, h)))
        .collect();
    let done: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(s, h)| attend_head(src, s, h))
        .collect();
    let mut out = vec![0f32; pk.rows * nq];
    let mut att = Vec::with_capacity(tasks.len());
    for (&(s, h), (o, p)) in tasks.iter().zip(done) {
        for (i, oi) in o.chunks(hd).enumerate() {
            let row = pk.start[s] + i;
            out[row * nq + h * hd..][..hd].copy_from_slice(oi);
        }
        att.push(p);
    }
    (out, att)
}

/// One head of causal attention for sequence `s`: its output rows (rows × d_head) and
/// attention weights (rows × keys).
#[multiversion(targets = "simd")]
fn attend_head(src: &KeySource<'_>, s: usize, h: usize) -> (Vec<f32>, Vec<f32>) {
    let (dims, pk, qkv) = (src.dims, src.pk, src.qkv);
    let (w, hd) = (dims.w(), dims.hd);
    let (start, len, pre, total) = (pk.start[s], pk.len[s], pk.prefix[s], pk.total(s));
    let g = h / dims.rep();
    let mut p = vec![0f32; len * total];
    let mut o = vec![0f32; len * hd];
    for i in 0..len {
        let row = &mut p[i * total..=i * total + pre + i];
        let q = &qkv[(start + i) * w + h * hd..][..hd];
        let mut mx = f32::NEG_INFINITY;
        for (j, e) in row.iter_mut().enumerate() {
            *e = dot(q, src.key(s, g, j)) * dims.scale;
            mx = mx.max(*e);
        }
        let mut sum = 0f32;
        for e in row.iter_mut() {
            *e = (*e - mx).exp();
            sum += *e;
        }
        let oi = &mut o[i * hd..(i + 1) * hd];
        for (j, e) in row.iter_mut().enumerate() {
            *e /= sum;
            axpy(oi, *e, src.value(s, g, j));
        }
    }
    (o, p)
}

/// `a = silu(gate) · up` for one row of stacked (gate, up).
#[multiversion(targets = "simd")]
fn silu_mul_row(a: &mut [f32], gu: &[f32]) {
    let (gate, up) = gu.split_at(a.len());
    for ((a, g), u) in a.iter_mut().zip(gate).zip(up) {
        *a = g / (1.0 + (-g).exp()) * u;
    }
}

//! The backward pass of a transformer block on the CPU, beside its forward pass (`fast.rs`):
//! input gradients only (no weight gradients), over each packed sequence's rows from the first
//! one whose gradient is wanted. Word training (`words::grad`) builds its loss gradient on it.
//! Hand-written because candle's autograd records every intermediate and forms weight
//! gradients that this use never reads (see `words::grad` for the measured difference).

use multiversion::multiversion;
use rayon::prelude::*;

use super::cpu::{rms_norm_backward_row, rope_head};
use super::fast::{Dims, KeySource, LayerTape, LayerWeights, Packed, axpy, dot};
use super::lora_cpu::{LayerGrads, LayerLora};
use crate::error::Result;
use neoscope_api::lora::LoraTarget;

/// The rows a backward pass runs over: each packed sequence's rows from its first row whose
/// gradient is wanted (rows before it are constant: nothing upstream of them changes).
pub(crate) struct Active {
    /// Packed row of each active row.
    pub(crate) rows: Vec<usize>,
    /// Offset of each sequence's first active row.
    pub(crate) offset: Vec<usize>,
}

impl Active {
    /// `first[s]`: the first packed position of sequence `s` that gets a gradient.
    pub(crate) fn new(seq: &Packed, first: &[usize]) -> Self {
        let mut rows = Vec::new();
        let mut offset = Vec::with_capacity(seq.len.len());
        for ((&f, &len), &start) in first.iter().zip(&seq.len).zip(&seq.start) {
            offset.push(rows.len());
            rows.extend((f..len).map(|p| start + p));
        }
        Self { rows, offset }
    }

    /// The active index of packed row `row` (which must be active).
    pub(crate) fn index(&self, seq: &Packed, first: &[usize], row: usize) -> usize {
        let s = seq.start.partition_point(|st| *st <= row) - 1;
        self.offset[s] + (row - seq.start[s] - first[s])
    }
}

/// What every block's backward pass shares.
pub(crate) struct Backward<'a> {
    /// Model dimensions.
    pub(crate) dims: Dims,
    /// The packed sequences.
    pub(crate) seq: &'a Packed,
    /// Per sequence, its first packed position that gets a gradient.
    pub(crate) first: &'a [usize],
    /// The rows that get one.
    pub(crate) active: &'a Active,
    /// RoPE cosines and sines, position × half head.
    pub(crate) rope: (&'a [f32], &'a [f32]),
    /// Per sequence, the cached prefix's keys and values at this layer.
    pub(crate) past: &'a [&'a [f32]],
}

/// One block backward over the active rows: `dx` at the block's output → at its input.
pub(crate) fn layer_backward(
    ctx: &Backward<'_>,
    lw: &LayerWeights<'_>,
    tape: &LayerTape,
    dx: Vec<f32>,
    mut lora: Option<(&LayerLora, &mut LayerGrads)>,
) -> Result<Vec<f32>> {
    let (dims, active) = (ctx.dims, ctx.active);
    let (d, dm, na) = (dims.d, dims.dm, active.rows.len());
    // Adapters see every row: their caller makes every row active (packed row = active row).
    let lt = &tape.lora;
    // MLP: next = xm + down(silu(gate) · up).
    let mut dact = vec![0f32; na * dm];
    lw.down.backward(&mut dact, &dx, (na, d, dm), false)?;
    if let Some((lo, g)) = lora.as_mut() {
        lo.back(LoraTarget::Down, &dx, na, d, 0, lt, g, &mut dact);
    }
    let mut dgu = vec![0f32; na * 2 * dm];
    dgu.par_chunks_mut(2 * dm)
        .zip(dact.par_chunks(dm))
        .zip(&active.rows)
        .for_each(|((dg, da), row)| {
            silu_mul_backward_row(dg, da, &tape.gu[row * 2 * dm..(row + 1) * 2 * dm]);
        });
    drop(dact);
    let mut dh = vec![0f32; na * d];
    lw.gate_up.backward(&mut dh, &dgu, (na, 2 * dm, d), false)?;
    if let Some((lo, g)) = lora.as_mut() {
        lo.back(LoraTarget::Gate, &dgu, na, 2 * dm, 0, lt, g, &mut dh);
        lo.back(LoraTarget::Up, &dgu, na, 2 * dm, dm, lt, g, &mut dh);
    }
    drop(dgu);
    let mut dxm = dx;
    norm_backward_rows(
        &mut dxm,
        &dh,
        &tape.xm,
        &tape.r2,
        lw.mlp_norm.data(),
        active,
    );
    // Attention: xm = x + wo(attn(rope(q), rope(k), v)).
    let mut d_o = vec![0f32; na * dims.nq()];
    lw.wo.backward(&mut d_o, &dxm, (na, d, dims.nq()), false)?;
    if let Some((lo, g)) = lora.as_mut() {
        lo.back(LoraTarget::O, &dxm, na, d, 0, lt, g, &mut d_o);
    }
    let dqkv = attention_backward(ctx, tape, &d_o);
    lw.qkv.backward(&mut dh, &dqkv, (na, dims.w(), d), false)?;
    if let Some((lo, g)) = lora.as_mut() {
        let (w, nq, nk) = (dims.w(), dims.nq(), dims.nk());
        lo.back(LoraTarget::Q, &dqkv, na, w, 0, lt, g, &mut dh);
        lo.back(LoraTarget::K, &dqkv, na, w, nq, lt, g, &mut dh);
        lo.back(LoraTarget::V, &dqkv, na, w, nq + nk, lt, g, &mut dh);
    }
    norm_backward_rows(
        &mut dxm,
        &dh,
        &tape.x,
        &tape.r1,
        lw.attn_norm.data(),
        active,
    );
    Ok(dxm)
}

/// `dx[a] += RMSNorm backward` of the active rows, given the norm output gradients `dy`.
fn norm_backward_rows(
    dx: &mut [f32],
    dy: &[f32],
    x: &[f32],
    r: &[f32],
    w: &[f32],
    active: &Active,
) {
    let d = w.len();
    dx.par_chunks_mut(d)
        .zip(dy.par_chunks(d))
        .zip(&active.rows)
        .for_each(|((o, g), row)| {
            rms_norm_backward_row(&x[row * d..(row + 1) * d], r[*row], w, g, o);
        });
}

/// Attention backward over the active rows: gradients of the (unrotated) queries, keys and
/// values, as active rows × (q + 2·kv). Keys and values before a sequence's first active row
/// are constant and get none.
fn attention_backward(ctx: &Backward<'_>, tape: &LayerTape, d_o: &[f32]) -> Vec<f32> {
    let (dims, seq, first, active) = (ctx.dims, ctx.seq, ctx.first, ctx.active);
    let (w, hd, nq, nk, rep) = (dims.w(), dims.hd, dims.nq(), dims.nk(), dims.rep());
    let src = KeySource {
        dims,
        pk: seq,
        qkv: &tape.qkv,
        past: ctx.past,
    };
    let tasks: Vec<(usize, usize)> = (0..seq.len.len())
        .filter(|s| first[*s] < seq.len[*s])
        .flat_map(|s| (0..dims.nkv).map(move |g| (s, g)))
        .collect();
    let done: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(s, g)| attend_back(ctx, &src, tape, d_o, s, g))
        .collect();
    let mut out = vec![0f32; active.rows.len() * w];
    for (&(s, g), (dq, dk, dv)) in tasks.iter().zip(done) {
        let off = active.offset[s];
        for ai in 0..seq.len[s] - first[s] {
            let row = &mut out[(off + ai) * w..(off + ai + 1) * w];
            row[g * rep * hd..(g + 1) * rep * hd]
                .copy_from_slice(&dq[ai * rep * hd..(ai + 1) * rep * hd]);
            row[nq + g * hd..nq + (g + 1) * hd].copy_from_slice(&dk[ai * hd..(ai + 1) * hd]);
            row[nq + nk + g * hd..nq + nk + (g + 1) * hd]
                .copy_from_slice(&dv[ai * hd..(ai + 1) * hd]);
        }
    }
    out
}

/// Attention backward for sequence `s`, KV head `g`: the gradients of its query heads, key and
/// value at the sequence's active rows (each active rows × width).
#[multiversion(targets = "simd")]
fn attend_back(
    ctx: &Backward<'_>,
    src: &KeySource<'_>,
    tape: &LayerTape,
    d_o: &[f32],
    s: usize,
    g: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let (dims, seq, active) = (ctx.dims, ctx.seq, ctx.active);
    let (cos, sin) = ctx.rope;
    let (w, hd, nq, rep, half) = (dims.w(), dims.hd, dims.nq(), dims.rep(), dims.hd / 2);
    let (start, len, first) = (seq.start[s], seq.len[s], ctx.first[s]);
    let (pre, total) = (seq.prefix[s], seq.total(s));
    let off = active.offset[s];
    let na = len - first;
    let mut dq = vec![0f32; na * rep * hd];
    let mut dk = vec![0f32; na * hd];
    let mut dv = vec![0f32; na * hd];
    let mut dp = vec![0f32; total];
    for r in 0..rep {
        let h = g * rep + r;
        let p = &tape.att[s * dims.nh + h];
        for i in first..len {
            let ai = i - first;
            let doi = &d_o[(off + ai) * nq + h * hd..][..hd];
            let q = &tape.qkv[(start + i) * w + h * hd..][..hd];
            let prow = &p[i * total..=i * total + pre + i];
            let mut mean = 0f32;
            for (j, (e, pij)) in dp.iter_mut().zip(prow).enumerate() {
                *e = dot(doi, src.value(s, g, j));
                mean += pij * *e;
            }
            let dqi = &mut dq[(ai * rep + r) * hd..][..hd];
            for (j, pij) in prow.iter().enumerate() {
                let ds = pij * (dp[j] - mean) * dims.scale;
                axpy(dqi, ds, src.key(s, g, j));
                // Keys and values before the first active row are constant.
                if j >= pre + first {
                    let aj = j - pre - first;
                    axpy(&mut dk[aj * hd..(aj + 1) * hd], ds, q);
                    axpy(&mut dv[aj * hd..(aj + 1) * hd], *pij, doi);
                }
            }
        }
    }
    // Undo the rotation (its transpose is the rotation by minus the angle).
    for ai in 0..na {
        let p = seq.pos[start + first + ai];
        let (c, sn) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        for head in dq[ai * rep * hd..(ai + 1) * rep * hd].chunks_mut(hd) {
            rope_head(head, c, sn, true);
        }
        rope_head(&mut dk[ai * hd..(ai + 1) * hd], c, sn, true);
    }
    (dq, dk, dv)
}

/// Backward of `a = silu(gate) · up` for one row: `∂/∂(gate, up)` from `∂/∂a`.
#[multiversion(targets = "simd")]
fn silu_mul_backward_row(dgu: &mut [f32], da: &[f32], gu: &[f32]) {
    let dm = da.len();
    let (gate, up) = gu.split_at(dm);
    let (dgate, dup) = dgu.split_at_mut(dm);
    for j in 0..dm {
        let (g, u) = (gate[j], up[j]);
        let sg = 1.0 / (1.0 + (-g).exp());
        dgate[j] = da[j] * u * sg * (1.0 + g * (1.0 - sg));
        dup[j] = da[j] * g * sg;
    }
}

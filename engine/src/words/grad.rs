//! The gradient of new words' vectors, by hand, on the CPU.
//!
//! Training a word needs `∂loss/∂v` for its vector alone. candle's autograd (the general path,
//! still used on CUDA and checked against this one in tests) records every intermediate of the
//! forward pass and differentiates op by op. This pass does less work for the same gradient:
//! - sequences are packed without padding;
//! - the forward pass keeps only what the backward pass reads (block inputs, norms' scales,
//!   rotated queries/keys and values, attention weights, the MLP's pre-activations);
//! - nothing before a sequence's first word occurrence depends on the vectors, so the backward
//!   pass runs over the rows from there on only (exact, not an approximation);
//! - it stops at the lowest layer a word enters;
//! - no weight gradient is formed (the matmuls give input gradients only), and the vocabulary
//!   projection is done at scored positions only.
//!
//! The loss is any weighted sum of target log-probabilities: [`Tape::backward`] takes
//! `∂loss/∂ log p(target)` per target, so cross-entropy and the preference loss share it.

use multiversion::multiversion;
use rayon::prelude::*;

use super::train::ScoredSeq;
use super::{Injection, Word};
use crate::error::{EngineError, Result};
use crate::model::Llama;
use crate::model::cpu::{matmul, rms_norm_backward_row, rms_norm_rows, rope_head};
use crate::model::fast::{
    self, Dims, KeySource, LayerTape, LayerWeights, Weights, axpy, dot, layer_forward,
};

/// Whether the hand-written pass applies: f32 weights on the CPU, and every word entering as an
/// embedding or into the residual stream of an existing layer.
pub fn supported(m: &Llama, words: &[Word]) -> bool {
    fast::supported(m)
        && words.iter().all(|w| match w.injection {
            Injection::Embedding => true,
            Injection::ResidPre(l) => l < m.cfg.num_hidden_layers,
        })
}

/// The batch's sequences packed (after their cached prefixes), with where the words and the
/// scored positions are, as packed rows.
struct Packed {
    seq: fast::Packed,
    /// Per sequence, the first packed position that depends on a word (its length when none
    /// does).
    first: Vec<usize>,
    /// (packed row, word index) of every occurrence.
    occ: Vec<(usize, usize)>,
    /// (packed row, target id, sequence) of every scored position.
    targets: Vec<(usize, u32, usize)>,
}

impl Packed {
    fn new(seqs: &[&ScoredSeq], prefix: &[usize], n_words: usize, max_pos: usize) -> Result<Self> {
        let spans = seqs.iter().zip(prefix).map(|(s, p)| (*p, s.ids.len() - p));
        let seq = fast::Packed::with_prefix(spans, max_pos)?;
        let mut p = Self {
            seq,
            first: Vec::new(),
            occ: Vec::new(),
            targets: Vec::new(),
        };
        for (si, s) in seqs.iter().enumerate() {
            let (start, n, pre) = (p.seq.start[si], s.ids.len(), prefix[si]);
            let mut first = n;
            for &(pos, wi) in &s.occ {
                if pos >= n || wi >= n_words {
                    return Err(EngineError::Invalid(format!(
                        "word occurrence ({pos}, word {wi}) outside a {n}-token sequence"
                    )));
                }
                first = first.min(pos);
                p.occ.push((start + pos - pre, wi));
            }
            p.first.push(first - pre);
            for &(pos, t) in &s.targets {
                if pos >= n {
                    return Err(EngineError::Invalid(format!(
                        "target position {pos} outside a {n}-token sequence"
                    )));
                }
                p.targets.push((start + pos - pre, t, si));
            }
        }
        Ok(p)
    }
}

/// How many leading positions of `s` never depend on the words: those before its first word
/// occurrence and before its first scored position (none when it has no word).
fn constant_prefix(s: &ScoredSeq) -> usize {
    let Some(first) = s.occ.iter().map(|o| o.0).min() else {
        return 0;
    };
    s.targets.iter().map(|t| t.0).fold(first, usize::min)
}

/// Keys and values of a sequence's rows before its first word, at every layer. They do not
/// change while only the words' vectors train, so a training run computes them once per
/// sequence and each step runs the model from the first word on.
#[derive(Debug, Clone)]
pub struct PrefixKv {
    /// The prefix's token ids.
    ids: Vec<u32>,
    /// Per layer, rows × (rotated keys, values).
    layers: Vec<Vec<f32>>,
}

/// The constant prefixes of `seqs` (see [`PrefixKv`]), computed in one packed pass.
pub fn prefix_kv(m: &Llama, seqs: &[&ScoredSeq]) -> Result<Vec<PrefixKv>> {
    let dims = Dims::of(m);
    let w = Weights::new(m)?;
    let lens: Vec<usize> = seqs.iter().map(|s| constant_prefix(s)).collect();
    let pk = fast::Packed::new(lens.iter().copied(), m.cfg.max_position_embeddings)?;
    let ids: Vec<u32> = seqs
        .iter()
        .zip(&lens)
        .flat_map(|(s, n)| s.ids[..*n].iter().copied())
        .collect();
    let mut x = embed_rows(&w, dims.d, &ids)?;
    let mut out: Vec<PrefixKv> = seqs
        .iter()
        .zip(&lens)
        .map(|(s, n)| PrefixKv {
            ids: s.ids[..*n].to_vec(),
            layers: Vec::with_capacity(w.layers.len()),
        })
        .collect();
    let past = vec![&[][..]; seqs.len()];
    let (nq, nk, width) = (dims.nq(), dims.nk(), dims.w());
    for lw in &w.layers {
        let (tape, next) = layer_forward(dims, lw, &pk, x, (w.cos.data(), w.sin.data()), &past);
        for (si, p) in out.iter_mut().enumerate() {
            let rows = tape.qkv[pk.start[si] * width..(pk.start[si] + pk.len[si]) * width]
                .chunks(width)
                .flat_map(|r| r[nq..nq + 2 * nk].iter().copied())
                .collect();
            p.layers.push(rows);
        }
        x = next;
    }
    Ok(out)
}

/// Input embeddings of `ids`, rows × d.
fn embed_rows(w: &Weights<'_>, d: usize, ids: &[u32]) -> Result<Vec<f32>> {
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

/// A forward pass kept for [`Tape::backward`].
pub struct Tape<'a> {
    dims: Dims,
    packed: Packed,
    prefixes: Vec<Option<&'a PrefixKv>>,
    layer_of: Vec<usize>,
    layers: Vec<LayerTape>,
    /// Final residual at the scored rows (targets × d) and its `1/rms`.
    x_final: Vec<f32>,
    r_final: Vec<f32>,
    /// Softmax over the vocabulary at the scored rows (targets × vocab).
    probs: Vec<f32>,
    logprobs: Vec<f32>,
    n_seqs: usize,
}

/// Per sequence, its cached prefix's keys and values at layer `l` (empty without a cache).
fn past_at<'a>(prefixes: &[Option<&'a PrefixKv>], l: usize) -> Vec<&'a [f32]> {
    prefixes
        .iter()
        .map(|p| p.map_or(&[][..], |p| p.layers[l].as_slice()))
        .collect()
}

/// Runs the model on `seqs` with each word's vector at its occurrences. `prefixes` holds, per
/// sequence, its [`PrefixKv`] from [`prefix_kv`] (or `None`; an empty slice: none at all).
pub fn forward<'a>(
    m: &Llama,
    words: &[Word],
    vectors: &[&[f32]],
    seqs: &[&ScoredSeq],
    prefixes: &[Option<&'a PrefixKv>],
) -> Result<Tape<'a>> {
    let dims = Dims::of(m);
    let d = dims.d;
    if vectors.len() != words.len() || vectors.iter().any(|v| v.len() != d) {
        return Err(EngineError::Invalid(format!(
            "{} vectors for {} words, each must have d_model = {d} values",
            vectors.len(),
            words.len()
        )));
    }
    let prefixes: Vec<Option<&PrefixKv>> = if prefixes.is_empty() {
        vec![None; seqs.len()]
    } else {
        prefixes.to_vec()
    };
    if prefixes.len() != seqs.len() {
        return Err(EngineError::Invalid(format!(
            "{} cached prefixes for {} sequences",
            prefixes.len(),
            seqs.len()
        )));
    }
    let mut lens = Vec::with_capacity(seqs.len());
    for (s, p) in seqs.iter().zip(&prefixes) {
        let n = p.map_or(0, |p| p.ids.len());
        if n > constant_prefix(s) || !s.ids.starts_with(p.map_or(&[], |p| p.ids.as_slice())) {
            return Err(EngineError::Invalid(
                "a cached prefix does not belong to its sequence".into(),
            ));
        }
        if p.is_some_and(|p| p.layers.len() != m.blocks.len()) {
            return Err(EngineError::Invalid(
                "a cached prefix was made for another model".into(),
            ));
        }
        lens.push(n);
    }
    let w = Weights::new(m)?;
    let packed = Packed::new(seqs, &lens, words.len(), m.cfg.max_position_embeddings)?;
    let layer_of: Vec<usize> = words
        .iter()
        .map(|w| match w.injection {
            Injection::Embedding => 0,
            Injection::ResidPre(l) => l,
        })
        .collect();
    let ids: Vec<u32> = seqs
        .iter()
        .zip(&lens)
        .flat_map(|(s, n)| s.ids[*n..].iter().copied())
        .collect();
    let mut x = embed_rows(&w, d, &ids)?;
    // A word's position sees zeros below the layer it enters (as the hooked forward does).
    for &(row, _) in &packed.occ {
        x[row * d..(row + 1) * d].fill(0.0);
    }
    let mut layers = Vec::with_capacity(w.layers.len());
    for (l, lw) in w.layers.iter().enumerate() {
        for &(row, wi) in &packed.occ {
            if layer_of[wi] == l {
                x[row * d..(row + 1) * d].copy_from_slice(vectors[wi]);
            }
        }
        let past = past_at(&prefixes, l);
        let (tape, next) = layer_forward(
            dims,
            lw,
            &packed.seq,
            x,
            (w.cos.data(), w.sin.data()),
            &past,
        );
        layers.push(tape);
        x = next;
    }
    let nt = packed.targets.len();
    let mut x_final = vec![0f32; nt * d];
    for (dst, (row, _, _)) in x_final.chunks_mut(d).zip(&packed.targets) {
        dst.copy_from_slice(&x[row * d..(row + 1) * d]);
    }
    let mut h = vec![0f32; nt * d];
    let r_final = rms_norm_rows(&x_final, w.final_norm.data(), dims.eps, &mut h);
    let v = dims.vocab;
    let mut probs = vec![0f32; nt * v];
    matmul(&mut probs, &h, w.unembed.data(), (nt, d, v), true, false);
    let mut logprobs = vec![0f32; nt];
    probs
        .par_chunks_mut(v)
        .zip(logprobs.par_iter_mut())
        .zip(&packed.targets)
        .for_each(|((z, lp), (_, t, _))| *lp = log_softmax_at(z, *t as usize));
    Ok(Tape {
        dims,
        packed,
        prefixes,
        layer_of,
        layers,
        x_final,
        r_final,
        probs,
        logprobs,
        n_seqs: seqs.len(),
    })
}

/// The rows the backward pass runs over: each sequence's rows from its first word occurrence.
struct Active {
    /// Packed row of each active row.
    rows: Vec<usize>,
    /// Offset of each sequence's first active row.
    offset: Vec<usize>,
}

impl Active {
    fn new(pk: &Packed) -> Self {
        let mut rows = Vec::new();
        let mut offset = Vec::with_capacity(pk.seq.len.len());
        for s in 0..pk.seq.len.len() {
            offset.push(rows.len());
            rows.extend((pk.first[s]..pk.seq.len[s]).map(|p| pk.seq.start[s] + p));
        }
        Self { rows, offset }
    }

    /// The active index of packed row `row` (which must be active).
    fn index(&self, pk: &Packed, row: usize) -> usize {
        let s = pk.seq.start.partition_point(|st| *st <= row) - 1;
        self.offset[s] + (row - pk.seq.start[s] - pk.first[s])
    }
}

impl Tape<'_> {
    /// `log p(target)` of every scored position, sequence by sequence, in the order of each
    /// sequence's `targets`.
    pub fn logprobs(&self) -> &[f32] {
        &self.logprobs
    }

    /// Summed target log-probabilities of each sequence.
    pub fn seq_logprobs(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.n_seqs];
        for ((_, _, s), lp) in self.packed.targets.iter().zip(&self.logprobs) {
            out[*s] += lp;
        }
        out
    }

    /// Number of scored positions of each sequence.
    pub fn target_counts(&self) -> Vec<usize> {
        let mut out = vec![0; self.n_seqs];
        for (_, _, s) in &self.packed.targets {
            out[*s] += 1;
        }
        out
    }

    /// The sequence each log-probability belongs to.
    pub fn target_seqs(&self) -> impl Iterator<Item = usize> + '_ {
        self.packed.targets.iter().map(|t| t.2)
    }

    /// Gradient of `Σ coef[t] · logprobs[t]` with respect to each word's vector.
    pub fn backward(&self, m: &Llama, coef: &[f32]) -> Result<Vec<Vec<f32>>> {
        let dims = self.dims;
        let (d, v) = (dims.d, dims.vocab);
        let pk = &self.packed;
        if coef.len() != pk.targets.len() {
            return Err(EngineError::Invalid(format!(
                "{} coefficients for {} targets",
                coef.len(),
                pk.targets.len()
            )));
        }
        let w = Weights::new(m)?;
        let n_words = self.layer_of.len();
        let mut grads = vec![vec![0f32; d]; n_words];
        let Some(&lowest) = self.layer_of.iter().min() else {
            return Ok(grads);
        };
        let active = Active::new(pk);
        let nt = pk.targets.len();
        // ∂/∂z of c·log softmax(z)[t] = c·(onehot(t) − softmax(z)).
        let mut dz = self.probs.clone();
        dz.par_chunks_mut(v)
            .zip(coef)
            .zip(&pk.targets)
            .for_each(|((z, c), (_, t, _))| {
                for e in z.iter_mut() {
                    *e *= -c;
                }
                z[*t as usize] += c;
            });
        let mut dh = vec![0f32; nt * d];
        matmul(&mut dh, &dz, w.unembed.data(), (nt, v, d), false, false);
        drop(dz);
        let mut dx = vec![0f32; active.rows.len() * d];
        for (t, (row, _, s)) in pk.targets.iter().enumerate() {
            if *row < pk.seq.start[*s] + pk.first[*s] {
                continue; // a position before any word: its gradient never reaches a vector
            }
            let a = active.index(pk, *row);
            rms_norm_backward_row(
                &self.x_final[t * d..(t + 1) * d],
                self.r_final[t],
                w.final_norm.data(),
                &dh[t * d..(t + 1) * d],
                &mut dx[a * d..(a + 1) * d],
            );
        }
        for l in (lowest..self.layers.len()).rev() {
            let past = past_at(&self.prefixes, l);
            let ctx = Backward {
                dims,
                pk,
                active: &active,
                rope: (w.cos.data(), w.sin.data()),
                past: &past,
            };
            dx = layer_backward(&ctx, &w.layers[l], &self.layers[l], dx);
            // A word entering here replaced this row: its gradient is the vector's, and nothing
            // flows further down from it.
            for &(row, wi) in &pk.occ {
                if self.layer_of[wi] == l {
                    let a = active.index(pk, row);
                    let g = &mut dx[a * d..(a + 1) * d];
                    for (acc, gv) in grads[wi].iter_mut().zip(g.iter_mut()) {
                        *acc += *gv;
                        *gv = 0.0;
                    }
                }
            }
        }
        Ok(grads)
    }
}

/// What every block's backward pass shares.
struct Backward<'a> {
    dims: Dims,
    pk: &'a Packed,
    active: &'a Active,
    rope: (&'a [f32], &'a [f32]),
    /// Per sequence, the cached prefix's keys and values at this layer.
    past: &'a [&'a [f32]],
}

/// One block backward over the active rows: `dx` at the block's output → at its input.
fn layer_backward(
    ctx: &Backward<'_>,
    lw: &LayerWeights<'_>,
    tape: &LayerTape,
    dx: Vec<f32>,
) -> Vec<f32> {
    let (dims, active) = (ctx.dims, ctx.active);
    let (d, dm, na) = (dims.d, dims.dm, active.rows.len());
    // MLP: next = xm + down(silu(gate) · up).
    let mut dact = vec![0f32; na * dm];
    matmul(&mut dact, &dx, lw.down.data(), (na, d, dm), false, false);
    let mut dgu = vec![0f32; na * 2 * dm];
    dgu.par_chunks_mut(2 * dm)
        .zip(dact.par_chunks(dm))
        .zip(&active.rows)
        .for_each(|((dg, da), row)| {
            silu_mul_backward_row(dg, da, &tape.gu[row * 2 * dm..(row + 1) * 2 * dm]);
        });
    drop(dact);
    let mut dh = vec![0f32; na * d];
    matmul(
        &mut dh,
        &dgu,
        lw.gate_up.data(),
        (na, 2 * dm, d),
        false,
        false,
    );
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
    matmul(
        &mut d_o,
        &dxm,
        lw.wo.data(),
        (na, d, dims.nq()),
        false,
        false,
    );
    let dqkv = attention_backward(ctx, tape, &d_o);
    matmul(
        &mut dh,
        &dqkv,
        lw.qkv.data(),
        (na, dims.w(), d),
        false,
        false,
    );
    norm_backward_rows(
        &mut dxm,
        &dh,
        &tape.x,
        &tape.r1,
        lw.attn_norm.data(),
        active,
    );
    dxm
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
/// values, as active rows × (q + 2·kv). Keys and values before a sequence's first word are
/// constant and get none.
fn attention_backward(ctx: &Backward<'_>, tape: &LayerTape, d_o: &[f32]) -> Vec<f32> {
    let (dims, pk, active) = (ctx.dims, ctx.pk, ctx.active);
    let (w, hd, nq, nk, rep) = (dims.w(), dims.hd, dims.nq(), dims.nk(), dims.rep());
    let src = KeySource {
        dims,
        pk: &pk.seq,
        qkv: &tape.qkv,
        past: ctx.past,
    };
    let tasks: Vec<(usize, usize)> = (0..pk.seq.len.len())
        .filter(|s| pk.first[*s] < pk.seq.len[*s])
        .flat_map(|s| (0..dims.nkv).map(move |g| (s, g)))
        .collect();
    let done: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(s, g)| attend_back(ctx, &src, tape, d_o, s, g))
        .collect();
    let mut out = vec![0f32; active.rows.len() * w];
    for (&(s, g), (dq, dk, dv)) in tasks.iter().zip(done) {
        let off = active.offset[s];
        for ai in 0..pk.seq.len[s] - pk.first[s] {
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

/// `softplus(x) = log(1 + eˣ)`, stable.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Cross-entropy loss (mean over sequences of each one's mean target negative log-probability)
/// and `∂loss/∂ log p` per target.
pub fn cross_entropy(tape: &Tape) -> (f32, Vec<f32>) {
    let counts = tape.target_counts();
    let sums = tape.seq_logprobs();
    let b = sums.len() as f32;
    let loss = -sums
        .iter()
        .zip(&counts)
        .map(|(s, c)| s / (*c).max(1) as f32)
        .sum::<f32>()
        / b;
    let coef = tape
        .target_seqs()
        .map(|s| -1.0 / (b * counts[s] as f32))
        .collect();
    (loss, coef)
}

/// The preference loss (DPO + APO-up, mean over pairs) on sequences ordered chosen, rejected,
/// chosen, …, with the reference log-probabilities in the same order, and `∂loss/∂ log p` per
/// target.
pub fn preference(tape: &Tape, refs: &[f32], beta: f64) -> (f32, Vec<f32>) {
    let lp = tape.seq_logprobs();
    let pairs = lp.len() / 2;
    let n = pairs as f64;
    let mut loss = 0f64;
    let mut dseq = vec![0f64; lp.len()];
    for i in 0..pairs {
        let dc = f64::from(lp[2 * i] - refs[2 * i]);
        let dr = f64::from(lp[2 * i + 1] - refs[2 * i + 1]);
        loss += softplus(-beta * (dc - dr)) + softplus(-beta * dc);
        let s_dpo = sigmoid(-beta * (dc - dr));
        dseq[2 * i] = (-beta * s_dpo - beta * sigmoid(-beta * dc)) / n;
        dseq[2 * i + 1] = beta * s_dpo / n;
    }
    let coef = tape.target_seqs().map(|s| dseq[s] as f32).collect();
    ((loss / n) as f32, coef)
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
    let (dims, pk, active) = (ctx.dims, ctx.pk, ctx.active);
    let (cos, sin) = ctx.rope;
    let (w, hd, nq, rep, half) = (dims.w(), dims.hd, dims.nq(), dims.rep(), dims.hd / 2);
    let (start, len, first) = (pk.seq.start[s], pk.seq.len[s], pk.first[s]);
    let (pre, total) = (pk.seq.prefix[s], pk.seq.total(s));
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
                // Keys and values before the first word are constant.
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
        let p = pk.seq.pos[start + first + ai];
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

/// Turns logits `z` into probabilities in place; returns `log p[t]`.
#[multiversion(targets = "simd")]
fn log_softmax_at(z: &mut [f32], t: usize) -> f32 {
    let mx = z.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
    let target = z[t];
    // The normaliser sums ~50k terms: accumulate in f64 (an f32 running sum loses ~1e-5).
    let mut sum = 0f64;
    for e in z.iter_mut() {
        *e = (*e - mx).exp();
        sum += f64::from(*e);
    }
    let inv = (1.0 / sum) as f32;
    for e in z.iter_mut() {
        *e *= inv;
    }
    let ln = sum.ln() as f32;
    target - mx - ln
}

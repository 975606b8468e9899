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
use crate::model::backward::{Active, Backward, layer_backward};
use crate::model::cpu::{rms_norm_backward_row, rms_norm_rows};
use crate::model::fast::{self, Dims, LayerTape, Weights, embed_rows, kv_rows, layer_forward};

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
    let pk = fast::Packed::new(lens.iter().copied(), m.cfg.n_ctx())?;
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
    let width = dims.w();
    for lw in &w.layers {
        let (tape, next) =
            layer_forward(dims, lw, &pk, x, (w.cos.data(), w.sin.data()), &past, None)?;
        for (si, p) in out.iter_mut().enumerate() {
            let rows = &tape.qkv[pk.start[si] * width..(pk.start[si] + pk.len[si]) * width];
            p.layers.push(kv_rows(dims, rows));
        }
        x = next;
    }
    Ok(out)
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
    let packed = Packed::new(seqs, &lens, words.len(), m.cfg.n_ctx())?;
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
            None,
        )?;
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
    w.unembed.forward(&mut probs, &h, (nt, d, v), false)?;
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
        let active = Active::new(&pk.seq, &pk.first);
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
        w.unembed.backward(&mut dh, &dz, (nt, v, d), false)?;
        drop(dz);
        let mut dx = vec![0f32; active.rows.len() * d];
        for (t, (row, _, s)) in pk.targets.iter().enumerate() {
            if *row < pk.seq.start[*s] + pk.first[*s] {
                continue; // a position before any word: its gradient never reaches a vector
            }
            let a = active.index(&pk.seq, &pk.first, *row);
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
                seq: &pk.seq,
                first: &pk.first,
                active: &active,
                rope: (w.cos.data(), w.sin.data()),
                past: &past,
            };
            dx = layer_backward(&ctx, &w.layers[l], &self.layers[l], dx, None)?;
            // A word entering here replaced this row: its gradient is the vector's, and nothing
            // flows further down from it.
            for &(row, wi) in &pk.occ {
                if self.layer_of[wi] == l {
                    let a = active.index(&pk.seq, &pk.first, row);
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

//! Row-wise pieces of the lab's hand-written training pass ([`super::pass`]) with their
//! backward: linear layers with weight and bias gradients, LayerNorm, causal attention over
//! windows of equal length, cross-entropy. Plain f32 slices; the matrix products are
//! `cpu::matmul` / `cpu::gemm_strided` (the `gemm` crate), the rest is written here because
//! candle offers these only as separately allocated tensor ops (see `pass` for why that
//! matters at the lab's sizes).

use multiversion::multiversion;
use rayon::prelude::*;

use crate::model::cpu::{gemm_into, matmul};
use crate::model::fast::{axpy, dot};

/// Windows of a batch: `b` windows of `t` rows each, packed one after another.
#[derive(Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) b: usize,
    pub(crate) t: usize,
    pub(crate) heads: usize,
    pub(crate) hd: usize,
}

impl Shape {
    pub(crate) fn rows(self) -> usize {
        self.b * self.t
    }
    pub(crate) fn d(self) -> usize {
        self.heads * self.hd
    }
}

/// `y (n×out) = x (n×inp) · wᵀ (+ bias)`, `w` in (out, inp) layout.
pub(crate) fn linear(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    (n, inp, out): (usize, usize, usize),
) {
    matmul(y, x, w, (n, inp, out), true, false);
    if let Some(b) = bias {
        y.par_chunks_mut(out).for_each(|r| {
            r.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        });
    }
}

/// `dw (out×inp) = dyᵀ · x`: the weight gradient of [`linear`], on the kernel's own threads.
pub(crate) fn weight_grad(
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    (n, inp, out): (usize, usize, usize),
) {
    assert!(
        dw.len() >= out * inp && dy.len() >= n * out && x.len() >= n * inp,
        "weight_grad: slices shorter than their shapes"
    );
    let threads = candle_core::utils::get_num_threads().max(1);
    // `dw` is borrowed mutably for the call and holds out·inp elements (asserted).
    gemm_into(
        (out, n, inp),
        (dw.as_mut_ptr() as usize, 0, (inp, 1)),
        (dy, 0, (1, out)),
        (x, 0, (inp, 1)),
        (false, threads),
    );
}

/// `db = Σ_rows dy`: a bias's gradient.
pub(crate) fn col_sums(db: &mut [f32], dy: &[f32]) {
    db.fill(0.0);
    for r in dy.chunks(db.len()) {
        r.iter().zip(db.iter_mut()).for_each(|(v, d)| *d += v);
    }
}

/// `dx (n×inp) (+)= dy (n×out) · w`: the input gradient of [`linear`].
pub(crate) fn input_grad(
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    (n, inp, out): (usize, usize, usize),
    accumulate: bool,
) {
    matmul(dx, dy, w, (n, out, inp), false, accumulate);
}

/// LayerNorm of each row of `x` into `y` (`x̂ · w + b`, `x̂ = (x − mean) / √(var + eps)` with the
/// biased variance, as PyTorch); keeps `x̂` and `1/√(var + eps)` per row for the backward.
pub(crate) fn layer_norm(
    x: &[f32],
    (w, b): (&[f32], &[f32]),
    eps: f32,
    y: &mut [f32],
) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut xhat = vec![0f32; x.len()];
    let mut rstd = vec![0f32; x.len() / d];
    xhat.par_chunks_mut(d)
        .zip(y.par_chunks_mut(d))
        .zip(x.par_chunks(d))
        .zip(rstd.par_iter_mut())
        .for_each(|(((xh, yr), xr), r)| {
            let mean = xr.iter().sum::<f32>() / d as f32;
            let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            *r = 1.0 / (var + eps).sqrt();
            for (((h, o), v), (wv, bv)) in xh
                .iter_mut()
                .zip(yr.iter_mut())
                .zip(xr)
                .zip(w.iter().zip(b))
            {
                *h = (v - mean) * *r;
                *o = *h * wv + bv;
            }
        });
    (xhat, rstd)
}

/// Backward of [`layer_norm`]: `dx = rstd · (g − mean(g) − x̂ · mean(g ⊙ x̂))` with `g = dy ⊙ w`
/// (written into `dx`), and the weight and bias gradients `Σ dy ⊙ x̂`, `Σ dy`.
pub(crate) fn layer_norm_back(
    dy: &[f32],
    (xhat, rstd): (&[f32], &[f32]),
    w: &[f32],
    (dw, db): (&mut [f32], &mut [f32]),
    dx: &mut [f32],
) {
    let d = w.len();
    dx.par_chunks_mut(d)
        .zip(dy.par_chunks(d))
        .zip(xhat.par_chunks(d))
        .zip(rstd.par_iter())
        .for_each(|(((o, g), xh), r)| {
            let (mut mg, mut mgx) = (0f32, 0f32);
            for ((gv, wv), h) in g.iter().zip(w).zip(xh) {
                mg += gv * wv;
                mgx += gv * wv * h;
            }
            let (mg, mgx) = (mg / d as f32, mgx / d as f32);
            for (((ov, gv), wv), h) in o.iter_mut().zip(g).zip(w).zip(xh) {
                *ov = r * (gv * wv - mg - h * mgx);
            }
        });
    dw.fill(0.0);
    db.fill(0.0);
    for (g, xh) in dy.chunks(d).zip(xhat.chunks(d)) {
        for (((a, b), gv), h) in dw.iter_mut().zip(db.iter_mut()).zip(g).zip(xh) {
            *a += gv * h;
            *b += gv;
        }
    }
}

/// `dw += Σ_rows dy ⊙ x · r`: the weight gradient of RMSNorm (`y = x · r · w`).
pub(crate) fn rms_weight_grad(dw: &mut [f32], dy: &[f32], x: &[f32], r: &[f32]) {
    let d = dw.len();
    dw.fill(0.0);
    for ((g, xr), rv) in dy.chunks(d).zip(x.chunks(d)).zip(r) {
        for ((a, gv), xv) in dw.iter_mut().zip(g).zip(xr) {
            *a += gv * xv * rv;
        }
    }
}

/// Causal attention of every (window, head) over `qkv` (rows × 3d: queries, keys, values, heads
/// side by side): the heads' outputs (rows × d) and the attention weights per (window, head),
/// t × t row-major, zero above the diagonal.
pub(crate) fn attention(qkv: &[f32], sh: Shape, scale: f32) -> (Vec<f32>, Vec<Vec<f32>>) {
    let tasks: Vec<(usize, usize)> = (0..sh.b)
        .flat_map(|w| (0..sh.heads).map(move |h| (w, h)))
        .collect();
    let done: Vec<(Vec<f32>, Vec<f32>)> = tasks
        .par_iter()
        .map(|&(w, h)| attend(qkv, sh, scale, w, h))
        .collect();
    let (d, hd) = (sh.d(), sh.hd);
    let mut out = vec![0f32; sh.rows() * d];
    let mut probs = Vec::with_capacity(tasks.len());
    for (&(w, h), (o, p)) in tasks.iter().zip(done) {
        for (i, oi) in o.chunks(hd).enumerate() {
            out[(w * sh.t + i) * d + h * hd..][..hd].copy_from_slice(oi);
        }
        probs.push(p);
    }
    (out, probs)
}

/// Query `i`, key `j` and value `j` of window `w`, head `h`.
fn qkv_row(qkv: &[f32], sh: Shape, w: usize, i: usize, part: usize, h: usize) -> &[f32] {
    let d = sh.d();
    &qkv[(w * sh.t + i) * 3 * d + part * d + h * sh.hd..][..sh.hd]
}

#[multiversion(targets = "simd")]
fn attend(qkv: &[f32], sh: Shape, scale: f32, w: usize, h: usize) -> (Vec<f32>, Vec<f32>) {
    let (t, hd) = (sh.t, sh.hd);
    let mut p = vec![0f32; t * t];
    let mut o = vec![0f32; t * hd];
    for i in 0..t {
        let q = qkv_row(qkv, sh, w, i, 0, h);
        let row = &mut p[i * t..=i * t + i];
        let mut mx = f32::NEG_INFINITY;
        for (j, e) in row.iter_mut().enumerate() {
            *e = dot(q, qkv_row(qkv, sh, w, j, 1, h)) * scale;
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
            axpy(oi, *e, qkv_row(qkv, sh, w, j, 2, h));
        }
    }
    (o, p)
}

/// Backward of [`attention`]: the gradients of the queries, keys and values (rows × 3d, the
/// layout of `qkv`) from those of the heads' outputs `dout` (rows × d).
pub(crate) fn attention_back(
    qkv: &[f32],
    probs: &[Vec<f32>],
    dout: &[f32],
    sh: Shape,
    scale: f32,
) -> Vec<f32> {
    let tasks: Vec<(usize, usize)> = (0..sh.b)
        .flat_map(|w| (0..sh.heads).map(move |h| (w, h)))
        .collect();
    let done: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(w, h)| attend_back(qkv, &probs[w * sh.heads + h], dout, sh, scale, (w, h)))
        .collect();
    let (d, hd) = (sh.d(), sh.hd);
    let mut out = vec![0f32; sh.rows() * 3 * d];
    for (&(w, h), g) in tasks.iter().zip(done) {
        // g: per part (q, k, v), t rows × hd.
        for part in 0..3 {
            for i in 0..sh.t {
                out[(w * sh.t + i) * 3 * d + part * d + h * hd..][..hd]
                    .copy_from_slice(&g[(part * sh.t + i) * hd..][..hd]);
            }
        }
    }
    out
}

#[multiversion(targets = "simd")]
fn attend_back(
    qkv: &[f32],
    p: &[f32],
    dout: &[f32],
    sh: Shape,
    scale: f32,
    (w, h): (usize, usize),
) -> Vec<f32> {
    let (t, hd, d) = (sh.t, sh.hd, sh.d());
    let mut g = vec![0f32; 3 * t * hd];
    let (dq, rest) = g.split_at_mut(t * hd);
    let (dk, dv) = rest.split_at_mut(t * hd);
    let mut dp = vec![0f32; t];
    for i in 0..t {
        let doi = &dout[(w * t + i) * d + h * hd..][..hd];
        let q = qkv_row(qkv, sh, w, i, 0, h);
        let prow = &p[i * t..=i * t + i];
        let mut mean = 0f32;
        for (j, (e, pij)) in dp.iter_mut().zip(prow).enumerate() {
            *e = dot(doi, qkv_row(qkv, sh, w, j, 2, h));
            mean += pij * *e;
        }
        let dqi = &mut dq[i * hd..(i + 1) * hd];
        for (j, pij) in prow.iter().enumerate() {
            let ds = pij * (dp[j] - mean) * scale;
            axpy(dqi, ds, qkv_row(qkv, sh, w, j, 1, h));
            axpy(&mut dk[j * hd..(j + 1) * hd], ds, q);
            axpy(&mut dv[j * hd..(j + 1) * hd], *pij, doi);
        }
    }
    g
}

/// Mean cross-entropy of `logits` (rows × vocab) against `targets`, and its gradient with
/// respect to the logits written over them (`(softmax − onehot) / rows`). The loss is summed in
/// f64.
pub(crate) fn cross_entropy(logits: &mut [f32], targets: &[u32], vocab: usize) -> f32 {
    let n = targets.len();
    let losses: Vec<f64> = logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .map(|(row, &tg)| softmax_grad_row(row, tg as usize, n as f32))
        .collect();
    (losses.iter().sum::<f64>() / n as f64) as f32
}

#[multiversion(targets = "simd")]
fn softmax_grad_row(row: &mut [f32], tg: usize, n: f32) -> f64 {
    let mx = row.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
    let mut sum = 0f32;
    let picked = row[tg];
    for v in row.iter_mut() {
        *v = (*v - mx).exp();
        sum += *v;
    }
    let loss = f64::from(sum.ln() + mx - picked);
    for v in row.iter_mut() {
        *v /= sum * n;
    }
    row[tg] -= 1.0 / n;
    loss
}

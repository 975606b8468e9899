//! Row-wise pieces of the lab's hand-written training pass ([`super::pass`]) with their
//! backward: linear layers with weight and bias gradients, LayerNorm, causal attention over
//! windows of equal length, cross-entropy. Plain f32 slices; the matrix products are
//! `cpu::matmul` / `cpu::gemm_strided` (the `gemm` crate), the rest is written here because
//! candle offers these only as separately allocated tensor ops (see `pass` for why that
//! matters at the lab's sizes).

use multiversion::multiversion;
use rayon::prelude::*;

use crate::model::cpu::{gemm_into, gemm_strided, matmul};

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
    for (g, xh) in dy.chunks(d).zip(xhat.chunks(d)) {
        dw.iter_mut()
            .zip(g)
            .zip(xh)
            .for_each(|((a, gv), h)| *a += gv * h);
    }
    col_sums(db, dy);
}

/// `dw = Σ_rows dy ⊙ x · r`: the weight gradient of RMSNorm (`y = x · r · w`).
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

/// Offset of window `w`'s first query (`part` 0), key (1) or value (2) of head `h` in `qkv`.
fn offset(sh: Shape, w: usize, part: usize, h: usize) -> usize {
    w * sh.t * 3 * sh.d() + part * sh.d() + h * sh.hd
}

/// One (window, head): scores `Q Kᵀ` and `P V` as matrix products (the upper triangle is
/// computed and then masked: at these sizes a full product is faster than a triangle of dot
/// products), the softmax per row in between.
#[multiversion(targets = "simd")]
fn attend(qkv: &[f32], sh: Shape, scale: f32, w: usize, h: usize) -> (Vec<f32>, Vec<f32>) {
    let (t, hd, s3) = (sh.t, sh.hd, 3 * sh.d());
    let mut p = vec![0f32; t * t];
    gemm_strided(
        (t, hd, t),
        (&mut p, 0, (t, 1)),
        (qkv, offset(sh, w, 0, h), (s3, 1)),
        (qkv, offset(sh, w, 1, h), (1, s3)),
        false,
    );
    for (i, row) in p.chunks_mut(t).enumerate() {
        let (keep, masked) = row.split_at_mut(i + 1);
        masked.fill(0.0);
        let mut mx = f32::NEG_INFINITY;
        for e in keep.iter_mut() {
            *e *= scale;
            mx = mx.max(*e);
        }
        let mut sum = 0f32;
        for e in keep.iter_mut() {
            *e = (*e - mx).exp();
            sum += *e;
        }
        keep.iter_mut().for_each(|e| *e /= sum);
    }
    let mut o = vec![0f32; t * hd];
    gemm_strided(
        (t, t, hd),
        (&mut o, 0, (hd, 1)),
        (&p, 0, (t, 1)),
        (qkv, offset(sh, w, 2, h), (s3, 1)),
        false,
    );
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

/// Backward of one (window, head) as matrix products: `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(P ⊙
/// dP)) · scale`, `dQ = dS K`, `dK = dSᵀ Q`, `dV = Pᵀ dO`; returns dQ, dK, dV (each t × hd).
#[multiversion(targets = "simd")]
fn attend_back(
    qkv: &[f32],
    p: &[f32],
    dout: &[f32],
    sh: Shape,
    scale: f32,
    (w, h): (usize, usize),
) -> Vec<f32> {
    let (t, hd, d, s3) = (sh.t, sh.hd, sh.d(), 3 * sh.d());
    let o0 = w * t * d + h * hd;
    let mut ds = vec![0f32; t * t];
    gemm_strided(
        (t, hd, t),
        (&mut ds, 0, (t, 1)),
        (dout, o0, (d, 1)),
        (qkv, offset(sh, w, 2, h), (1, s3)),
        false,
    );
    for (dr, pr) in ds.chunks_mut(t).zip(p.chunks(t)) {
        let mean: f32 = dr.iter().zip(pr).map(|(a, b)| a * b).sum();
        dr.iter_mut()
            .zip(pr)
            .for_each(|(e, pv)| *e = pv * (*e - mean) * scale);
    }
    let mut g = vec![0f32; 3 * t * hd];
    let (dq, rest) = g.split_at_mut(t * hd);
    let (dk, dv) = rest.split_at_mut(t * hd);
    let k0 = offset(sh, w, 1, h);
    gemm_strided(
        (t, t, hd),
        (dq, 0, (hd, 1)),
        (&ds, 0, (t, 1)),
        (qkv, k0, (s3, 1)),
        false,
    );
    let q0 = offset(sh, w, 0, h);
    gemm_strided(
        (t, t, hd),
        (dk, 0, (hd, 1)),
        (&ds, 0, (1, t)),
        (qkv, q0, (s3, 1)),
        false,
    );
    gemm_strided(
        (t, t, hd),
        (dv, 0, (hd, 1)),
        (p, 0, (1, t)),
        (dout, o0, (d, 1)),
        false,
    );
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

/// `eˣ` by range reduction (`x = n·ln 2 + r`, |r| ≤ ln 2 / 2) and a degree-6 Taylor polynomial
/// (relative error below 2e-7), branch-free so that a loop over it is vectorized; libm's `expf`
/// is a call per element, and in SwiGLU it took a tenth of the lab's training step.
#[inline(always)]
fn exp_vec(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    #[expect(
        clippy::cast_sign_loss,
        reason = "n + 127 lies in 1..=254 after the clamp"
    )]
    let bits = ((n as i32 + 127) as u32) << 23;
    p * f32::from_bits(bits)
}

/// `act = silu(gate) · up` for every row of stacked (gate, up) pre-activations (rows × 2ff).
pub(crate) fn silu_mul(act: &mut [f32], gu: &[f32], ff: usize) {
    act.par_chunks_mut(ff)
        .zip(gu.par_chunks(2 * ff))
        .for_each(|(a, g)| silu_mul_row(a, g));
}

#[multiversion(targets = "simd")]
fn silu_mul_row(a: &mut [f32], gu: &[f32]) {
    let (gate, up) = gu.split_at(a.len());
    for ((o, g), u) in a.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + exp_vec(-g)) * u;
    }
}

/// Backward of [`silu_mul`]: `∂/∂(gate, up)` (rows × 2ff) from `∂/∂act`.
pub(crate) fn silu_mul_back(dgu: &mut [f32], dact: &[f32], gu: &[f32], ff: usize) {
    dgu.par_chunks_mut(2 * ff)
        .zip(dact.par_chunks(ff).zip(gu.par_chunks(2 * ff)))
        .for_each(|(o, (da, g))| silu_mul_back_row(o, da, g));
}

#[multiversion(targets = "simd")]
fn silu_mul_back_row(o: &mut [f32], da: &[f32], gu: &[f32]) {
    let ff = da.len();
    let (gate, up) = gu.split_at(ff);
    let (dg, du) = o.split_at_mut(ff);
    for j in 0..ff {
        let (gv, uv) = (gate[j], up[j]);
        let sg = 1.0 / (1.0 + exp_vec(-gv));
        dg[j] = da[j] * uv * sg * (1.0 + gv * (1.0 - sg));
        du[j] = da[j] * gv * sg;
    }
}

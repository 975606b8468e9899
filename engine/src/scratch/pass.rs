//! The lab's training step written by hand for the CPU: the forward and backward pass of the
//! whole model with every weight's gradient (both block kinds, dropout included) and AdamW on
//! plain slices. It computes what `train::gradients` (candle's autograd through the engine's
//! forward, which CUDA keeps using) computes; tests hold the two together and check both
//! against finite differences and PyTorch's losses.
//!
//! Why by hand: at the lab's sizes (12 windows × 64 tokens, width 128) a step is ~4 GFLOP of
//! small products, and candle's per-op tensors (allocated, mostly single-threaded, each kept by
//! the autograd graph) took four fifths of it: 0.107 s a step for the lesson's model against
//! PyTorch's 0.05 s. Here each layer is a few `gemm` calls and row-parallel loops over plain
//! buffers.

use candle_core::Tensor;

use super::kernels::{
    Shape, attention, attention_back, col_sums, cross_entropy, input_grad, layer_norm,
    layer_norm_back, linear, rms_weight_grad, silu_mul, silu_mul_back, weight_grad,
};
use super::net::{Net, ScratchArch, llama_config, sinusoidal};
use crate::error::{EngineError, Result};
use crate::model::cpu::{CpuView, rms_norm_backward_row, rms_norm_rows, rope_head};
use rayon::prelude::*;

/// Whether the hand-written step runs this model (its weights live on the CPU).
pub fn supported(net: &Net) -> bool {
    net.params.first().is_some_and(|(_, v)| v.device().is_cpu())
}

/// Parameters per block in the layout of `net::layout`.
fn per_block(arch: ScratchArch) -> usize {
    match arch {
        ScratchArch::Seed => 12,
        ScratchArch::Modern => 9,
    }
}

/// What the pass reads: the sizes and every parameter's values.
struct Ctx<'a> {
    sh: Shape,
    ff: usize,
    eps: f32,
    scale: f32,
    params: Vec<&'a [f32]>,
    /// Dropout masks: block `l`'s attention output, then its MLP output.
    masks: Vec<Vec<f32>>,
    /// RoPE tables (modern block), n_ctx × d_head/2.
    rope: (Vec<f32>, Vec<f32>),
}

impl Ctx<'_> {
    fn p(&self, i: usize) -> &[f32] {
        self.params[i]
    }
    fn mask(&self, l: usize, k: usize) -> Option<&[f32]> {
        self.masks.get(2 * l + k).map(Vec::as_slice)
    }
}

/// What a block's backward reads from its forward.
struct Tape {
    x: Vec<f32>,
    /// Modern: the normed input of q/k/v and its `1/rms`.
    h1: Vec<f32>,
    r1: Vec<f32>,
    /// q, k, v after RoPE, rows × 3d.
    qkv: Vec<f32>,
    probs: Vec<Vec<f32>>,
    a: Vec<f32>,
    /// Seed: LayerNorm 1's x̂ and 1/σ; modern: the residual after attention and its `1/rms`.
    n1: (Vec<f32>, Vec<f32>),
    /// The MLP's input (seed: LayerNorm 1's output; modern: the normed residual).
    h2: Vec<f32>,
    /// Pre-activations: seed rows × ff, modern rows × 2ff (gate, up).
    u: Vec<f32>,
    act: Vec<f32>,
    /// Seed: LayerNorm 2's x̂ and 1/σ.
    n2: (Vec<f32>, Vec<f32>),
    /// Modern: the q/k/v weights stacked (3d × d) and the gate/up ones (2ff × d), as the
    /// forward multiplied by them; the backward multiplies by them again.
    stacked: (Vec<f32>, Vec<f32>),
}

fn apply_mask(v: &mut [f32], m: Option<&[f32]>) {
    if let Some(m) = m {
        v.iter_mut().zip(m).for_each(|(x, k)| *x *= k);
    }
}

fn two(g: &mut [Vec<f32>], i: usize) -> (&mut [f32], &mut [f32]) {
    let (a, b) = g.split_at_mut(i + 1);
    (&mut a[i], &mut b[0])
}

/// Gradients of the mean next-token loss on `(inputs, targets)` for every parameter (in
/// `net.params` order) and the loss; dropout as `train::dropout_masks(…, dropout_seed, …)`.
pub fn gradients(
    net: &Net,
    (inputs, targets): (&[Vec<u32>], &[u32]),
    dropout_seed: u64,
) -> Result<(Vec<Vec<f32>>, f32)> {
    let cfg = &net.cfg;
    let t = inputs.first().map_or(0, Vec::len);
    if t == 0 || inputs.iter().any(|w| w.len() != t) || targets.len() != inputs.len() * t {
        return Err(EngineError::Invalid(
            "training batch: windows of unequal length or targets that do not match".into(),
        ));
    }
    let (d, v) = (cfg.d_model, net.vocab);
    let sh = Shape {
        b: inputs.len(),
        t,
        heads: cfg.n_heads,
        hd: d / cfg.n_heads,
    };
    let n = sh.rows();
    let ids: Vec<usize> = inputs.iter().flatten().map(|&i| i as usize).collect();
    if let Some(bad) = ids.iter().find(|&&i| i >= v) {
        return Err(EngineError::Invalid(format!(
            "training batch: token id {bad} outside the vocabulary of {v}"
        )));
    }
    if let Some(bad) = targets.iter().find(|&&i| i as usize >= v) {
        return Err(EngineError::Invalid(format!(
            "training batch: target id {bad} outside the vocabulary of {v}"
        )));
    }
    let views = net
        .params
        .iter()
        .map(|(_, p)| CpuView::new(p.as_tensor()))
        .collect::<Result<Vec<_>>>()?;
    let lc = llama_config(cfg, v);
    let rope = if cfg.arch == ScratchArch::Modern {
        let (c, s) =
            crate::model::llama::rope_tables(&lc, lc.rope_theta, None, &candle_core::Device::Cpu)?;
        (
            c.flatten_all()?.to_vec1::<f32>()?,
            s.flatten_all()?.to_vec1::<f32>()?,
        )
    } else {
        (Vec::new(), Vec::new())
    };
    let ctx = Ctx {
        sh,
        ff: cfg.d_ff,
        eps: lc.rms_norm_eps as f32,
        scale: 1.0 / (sh.hd as f32).sqrt(),
        params: views.iter().map(CpuView::data).collect(),
        masks: if cfg.dropout > 0.0 {
            super::train::dropout_masks(cfg.dropout, dropout_seed, cfg.n_layers, n * d)
        } else {
            Vec::new()
        },
        rope,
    };
    // Embedding (× √d and + sinusoidal positions for the lesson's model).
    let seed = cfg.arch == ScratchArch::Seed;
    let emb_scale = lc.arch.embed_scale.map_or(1.0, |s| s as f32);
    let pe = if seed {
        sinusoidal(cfg.n_ctx, d, &candle_core::Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?
    } else {
        Vec::new()
    };
    let e = ctx.p(0);
    let mut x = vec![0f32; n * d];
    for (r, (row, &id)) in x.chunks_mut(d).zip(&ids).enumerate() {
        let src = &e[id * d..(id + 1) * d];
        if seed {
            let p = &pe[(r % t) * d..(r % t + 1) * d];
            row.iter_mut()
                .zip(src.iter().zip(p))
                .for_each(|(o, (a, b))| *o = a * emb_scale + b);
        } else {
            row.copy_from_slice(src);
        }
    }
    let pb = per_block(cfg.arch);
    let mut tapes = Vec::with_capacity(cfg.n_layers);
    for l in 0..cfg.n_layers {
        let (tape, next) = if seed {
            seed_forward(&ctx, 1 + pb * l, l, x)
        } else {
            modern_forward(&ctx, 1 + pb * l, l, x)
        };
        tapes.push(tape);
        x = next;
    }
    let mut grads: Vec<Vec<f32>> = ctx.params.iter().map(|p| vec![0f32; p.len()]).collect();
    // Head: seed `x Wᵀ + b`; modern RMSNorm then `Wᵀ`.
    let head = 1 + pb * cfg.n_layers;
    let (hf, rf) = if seed {
        (Vec::new(), Vec::new())
    } else {
        let mut h = vec![0f32; n * d];
        let r = rms_norm_rows(&x, ctx.p(head), ctx.eps, &mut h);
        (h, r)
    };
    let hin: &[f32] = if seed { &x } else { &hf };
    let w_out = if seed { head } else { head + 1 };
    let mut logits = vec![0f32; n * v];
    let bias = seed.then(|| ctx.p(head + 1));
    linear(&mut logits, hin, ctx.p(w_out), bias, (n, d, v));
    let loss = cross_entropy(&mut logits, targets, v);
    weight_grad(&mut grads[w_out], &logits, hin, (n, d, v));
    if seed {
        col_sums(&mut grads[head + 1], &logits);
    }
    let mut dx = vec![0f32; n * d];
    input_grad(&mut dx, &logits, ctx.p(w_out), (n, d, v), false);
    drop(logits);
    if !seed {
        let mut dxl = vec![0f32; n * d];
        rms_back(&mut dxl, &dx, (&x, &rf), ctx.p(head), &mut grads[head]);
        dx = dxl;
    }
    for (l, tape) in tapes.iter().enumerate().rev() {
        dx = if seed {
            seed_backward(&ctx, 1 + pb * l, l, tape, dx, &mut grads)
        } else {
            modern_backward(&ctx, 1 + pb * l, l, tape, dx, &mut grads)
        };
    }
    let ge = &mut grads[0];
    for (row, &id) in dx.chunks(d).zip(&ids) {
        ge[id * d..(id + 1) * d]
            .iter_mut()
            .zip(row)
            .for_each(|(g, v)| *g += v * emb_scale);
    }
    Ok((grads, loss))
}

fn seed_forward(ctx: &Ctx<'_>, base: usize, l: usize, x: Vec<f32>) -> (Tape, Vec<f32>) {
    let (sh, ff) = (ctx.sh, ctx.ff);
    let (n, d) = (sh.rows(), sh.d());
    let mut qkv = vec![0f32; n * 3 * d];
    linear(
        &mut qkv,
        &x,
        ctx.p(base),
        Some(ctx.p(base + 1)),
        (n, d, 3 * d),
    );
    let (a, probs) = attention(&qkv, sh, ctx.scale);
    let mut y = vec![0f32; n * d];
    linear(
        &mut y,
        &a,
        ctx.p(base + 2),
        Some(ctx.p(base + 3)),
        (n, d, d),
    );
    apply_mask(&mut y, ctx.mask(l, 0));
    y.iter_mut().zip(&x).for_each(|(o, xv)| *o += xv);
    let mut h = vec![0f32; n * d];
    let n1 = layer_norm(&y, (ctx.p(base + 8), ctx.p(base + 9)), ctx.eps, &mut h);
    let mut u = vec![0f32; n * ff];
    linear(
        &mut u,
        &h,
        ctx.p(base + 4),
        Some(ctx.p(base + 5)),
        (n, d, ff),
    );
    let act: Vec<f32> = u.iter().map(|v| v.max(0.0)).collect();
    linear(
        &mut y,
        &act,
        ctx.p(base + 6),
        Some(ctx.p(base + 7)),
        (n, ff, d),
    );
    apply_mask(&mut y, ctx.mask(l, 1));
    y.iter_mut().zip(&h).for_each(|(o, hv)| *o += hv);
    let mut out = vec![0f32; n * d];
    let n2 = layer_norm(&y, (ctx.p(base + 10), ctx.p(base + 11)), ctx.eps, &mut out);
    let tape = Tape {
        x,
        h1: Vec::new(),
        r1: Vec::new(),
        qkv,
        probs,
        a,
        n1,
        h2: h,
        u,
        act,
        n2,
        stacked: (Vec::new(), Vec::new()),
    };
    (tape, out)
}

/// LayerNorm `idx` (weight, then bias) backward: its input's gradient, and its parameters'
/// gradients into `g`.
fn ln_back(
    ctx: &Ctx<'_>,
    g: &mut [Vec<f32>],
    idx: usize,
    dy: &[f32],
    n: &(Vec<f32>, Vec<f32>),
) -> Vec<f32> {
    let mut dx = vec![0f32; dy.len()];
    let (gw, gb) = two(g, idx);
    layer_norm_back(dy, (&n.0, &n.1), ctx.p(idx), (gw, gb), &mut dx);
    dx
}

/// Linear layer `idx` (weight, then bias when `bias`) backward from the output gradient `dy`
/// and its input `x`: the parameters' gradients into `g`, and `dx (+)= dy · W`.
fn linear_back(
    ctx: &Ctx<'_>,
    g: &mut [Vec<f32>],
    (idx, bias): (usize, bool),
    (dy, x): (&[f32], &[f32]),
    dims: (usize, usize, usize),
    (dx, accumulate): (&mut [f32], bool),
) {
    weight_grad(&mut g[idx], dy, x, dims);
    if bias {
        col_sums(&mut g[idx + 1], dy);
    }
    input_grad(dx, dy, ctx.p(idx), dims, accumulate);
}

fn seed_backward(
    ctx: &Ctx<'_>,
    base: usize,
    l: usize,
    tp: &Tape,
    dy: Vec<f32>,
    g: &mut [Vec<f32>],
) -> Vec<f32> {
    let (sh, ff) = (ctx.sh, ctx.ff);
    let (n, d) = (sh.rows(), sh.d());
    let dy2 = ln_back(ctx, g, base + 10, &dy, &tp.n2);
    let mut df = dy2.clone();
    apply_mask(&mut df, ctx.mask(l, 1));
    let mut du = vec![0f32; n * ff];
    linear_back(
        ctx,
        g,
        (base + 6, true),
        (&df, &tp.act),
        (n, ff, d),
        (&mut du, false),
    );
    du.iter_mut()
        .zip(&tp.u)
        .for_each(|(g, u)| *g = if *u > 0.0 { *g } else { 0.0 });
    let mut dh = dy2;
    linear_back(
        ctx,
        g,
        (base + 4, true),
        (&du, &tp.h2),
        (n, d, ff),
        (&mut dh, true),
    );
    let dy1 = ln_back(ctx, g, base + 8, &dh, &tp.n1);
    let mut dout = dy1.clone();
    apply_mask(&mut dout, ctx.mask(l, 0));
    let mut da = vec![0f32; n * d];
    linear_back(
        ctx,
        g,
        (base + 2, true),
        (&dout, &tp.a),
        (n, d, d),
        (&mut da, false),
    );
    let dqkv = attention_back(&tp.qkv, &tp.probs, &da, sh, ctx.scale);
    let mut dx = dy1;
    linear_back(
        ctx,
        g,
        (base, true),
        (&dqkv, &tp.x),
        (n, d, 3 * d),
        (&mut dx, true),
    );
    dx
}

/// RoPE on the query and key heads of every row of `qkv` (`inverse`: the backward).
fn rope_rows(ctx: &Ctx<'_>, qkv: &mut [f32], inverse: bool) {
    let (sh, (cos, sin)) = (ctx.sh, &ctx.rope);
    let (d, hd, half) = (sh.d(), sh.hd, sh.hd / 2);
    qkv.par_chunks_mut(3 * d).enumerate().for_each(|(r, row)| {
        let p = r % sh.t;
        let (c, s) = (
            &cos[p * half..(p + 1) * half],
            &sin[p * half..(p + 1) * half],
        );
        for head in row[..2 * d].chunks_mut(hd) {
            rope_head(head, c, s, inverse);
        }
    });
}

fn modern_forward(ctx: &Ctx<'_>, base: usize, l: usize, x: Vec<f32>) -> (Tape, Vec<f32>) {
    let (sh, ff) = (ctx.sh, ctx.ff);
    let (n, d) = (sh.rows(), sh.d());
    let mut h1 = vec![0f32; n * d];
    let r1 = rms_norm_rows(&x, ctx.p(base), ctx.eps, &mut h1);
    let wqkv = [ctx.p(base + 1), ctx.p(base + 2), ctx.p(base + 3)].concat();
    let mut qkv = vec![0f32; n * 3 * d];
    linear(&mut qkv, &h1, &wqkv, None, (n, d, 3 * d));
    rope_rows(ctx, &mut qkv, false);
    let (a, probs) = attention(&qkv, sh, ctx.scale);
    let mut xm = vec![0f32; n * d];
    linear(&mut xm, &a, ctx.p(base + 4), None, (n, d, d));
    apply_mask(&mut xm, ctx.mask(l, 0));
    xm.iter_mut().zip(&x).for_each(|(o, xv)| *o += xv);
    let mut h2 = vec![0f32; n * d];
    let r2 = rms_norm_rows(&xm, ctx.p(base + 5), ctx.eps, &mut h2);
    let wgu = [ctx.p(base + 6), ctx.p(base + 7)].concat();
    let mut u = vec![0f32; n * 2 * ff];
    linear(&mut u, &h2, &wgu, None, (n, d, 2 * ff));
    let mut act = vec![0f32; n * ff];
    silu_mul(&mut act, &u, ff);
    let mut out = vec![0f32; n * d];
    linear(&mut out, &act, ctx.p(base + 8), None, (n, ff, d));
    apply_mask(&mut out, ctx.mask(l, 1));
    out.iter_mut().zip(&xm).for_each(|(o, v)| *o += v);
    let tape = Tape {
        x,
        h1,
        r1,
        qkv,
        probs,
        a,
        n1: (xm, r2),
        h2,
        u,
        act,
        n2: (Vec::new(), Vec::new()),
        stacked: (wqkv, wgu),
    };
    (tape, out)
}

/// `dx[r] += RMSNorm backward` for every row, and the norm weight's gradient into `gw`.
fn rms_back(dx: &mut [f32], dy: &[f32], (x, r): (&[f32], &[f32]), w: &[f32], gw: &mut [f32]) {
    let d = w.len();
    rms_weight_grad(gw, dy, x, r);
    dx.par_chunks_mut(d)
        .zip(dy.par_chunks(d))
        .zip(x.par_chunks(d).zip(r.par_iter()))
        .for_each(|((o, g), (xr, rv))| rms_norm_backward_row(xr, *rv, w, g, o));
}

fn modern_backward(
    ctx: &Ctx<'_>,
    base: usize,
    l: usize,
    tp: &Tape,
    dy: Vec<f32>,
    g: &mut [Vec<f32>],
) -> Vec<f32> {
    let (sh, ff) = (ctx.sh, ctx.ff);
    let (n, d) = (sh.rows(), sh.d());
    let mut df = dy.clone();
    apply_mask(&mut df, ctx.mask(l, 1));
    let mut dact = vec![0f32; n * ff];
    linear_back(
        ctx,
        g,
        (base + 8, false),
        (&df, &tp.act),
        (n, ff, d),
        (&mut dact, false),
    );
    drop(df);
    let mut dgu = vec![0f32; n * 2 * ff];
    silu_mul_back(&mut dgu, &dact, &tp.u, ff);
    let mut dwgu = vec![0f32; 2 * ff * d];
    weight_grad(&mut dwgu, &dgu, &tp.h2, (n, d, 2 * ff));
    g[base + 6].copy_from_slice(&dwgu[..ff * d]);
    g[base + 7].copy_from_slice(&dwgu[ff * d..]);
    let mut dh2 = vec![0f32; n * d];
    input_grad(&mut dh2, &dgu, &tp.stacked.1, (n, d, 2 * ff), false);
    let mut dxm = dy;
    rms_back(
        &mut dxm,
        &dh2,
        (&tp.n1.0, &tp.n1.1),
        ctx.p(base + 5),
        &mut g[base + 5],
    );
    let mut dout = dxm.clone();
    apply_mask(&mut dout, ctx.mask(l, 0));
    let mut da = vec![0f32; n * d];
    linear_back(
        ctx,
        g,
        (base + 4, false),
        (&dout, &tp.a),
        (n, d, d),
        (&mut da, false),
    );
    let mut dqkv = attention_back(&tp.qkv, &tp.probs, &da, sh, ctx.scale);
    rope_rows(ctx, &mut dqkv, true);
    let mut dw = vec![0f32; 3 * d * d];
    weight_grad(&mut dw, &dqkv, &tp.h1, (n, d, 3 * d));
    for (k, part) in dw.chunks(d * d).enumerate() {
        g[base + 1 + k].copy_from_slice(part);
    }
    let mut dh1 = vec![0f32; n * d];
    input_grad(&mut dh1, &dqkv, &tp.stacked.0, (n, d, 3 * d), false);
    let mut dx = dxm;
    rms_back(&mut dx, &dh1, (&tp.x, &tp.r1), ctx.p(base), &mut g[base]);
    dx
}

/// One AdamW step on plain slices (the same update as `train::step_on`'s tensor version):
/// global-norm clipping as PyTorch's `clip_grad_norm_`, weight decay on matrices only.
pub fn adamw(
    state: &mut super::train::TrainState,
    cfg: &super::train::ScratchTrainConfig,
    s: usize,
    mut grads: Vec<Vec<f32>>,
) -> Result<()> {
    if cfg.clip_norm > 0.0 {
        let sq: f64 = grads
            .iter()
            .flatten()
            .map(|g| f64::from(*g) * f64::from(*g))
            .sum();
        let coef = cfg.clip_norm / (sq.sqrt() + 1e-6);
        if coef < 1.0 {
            let c = coef as f32;
            grads.iter_mut().flatten().for_each(|g| *g *= c);
        }
    }
    let lr = super::train::lr_at(cfg, s);
    let t = i32::try_from(s).unwrap_or(i32::MAX);
    let (b1, b2) = (super::train::BETA1, cfg.beta2);
    let (bc1, bc2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
    let (b1f, b2f, eps) = (b1 as f32, b2 as f32, super::train::EPS as f32);
    let (step, sq_bc2) = ((lr / bc1) as f32, bc2.sqrt() as f32);
    let updated = state
        .net
        .params
        .par_iter()
        .zip(grads.par_iter())
        .zip(state.m.par_iter().zip(state.v.par_iter()))
        .map(|(((_, p), g), (m, v))| -> Result<[Tensor; 3]> {
            let mut m = m.flatten_all()?.to_vec1::<f32>()?;
            let mut v = v.flatten_all()?.to_vec1::<f32>()?;
            let mut w = p.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let decay = if p.rank() >= 2 && cfg.weight_decay > 0.0 {
                (1.0 - lr * cfg.weight_decay) as f32
            } else {
                1.0
            };
            for (((wv, mv), vv), gv) in w.iter_mut().zip(&mut m).zip(&mut v).zip(g) {
                *mv = *mv * b1f + gv * (1.0 - b1f);
                *vv = *vv * b2f + gv * gv * (1.0 - b2f);
                *wv = *wv * decay - *mv / (vv.sqrt() / sq_bc2 + eps) * step;
            }
            let (shape, dev) = (p.shape(), p.device());
            Ok([
                Tensor::from_vec(m, shape, dev)?,
                Tensor::from_vec(v, shape, dev)?,
                Tensor::from_vec(w, shape, dev)?,
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    for (i, [m, v, w]) in updated.into_iter().enumerate() {
        state.m[i] = m;
        state.v[i] = v;
        state.net.params[i].1.set(&w)?;
    }
    Ok(())
}

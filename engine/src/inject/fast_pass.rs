//! The training passes of both phases by the hand-written CPU pass: phase 2's loss and adapter
//! gradients, phase 1's loss and new-row gradients (`model::fast` forward with
//! each block's tape, `model::backward` input gradients, `model::lora_cpu` adapters): the same
//! numbers as candle's autograd on the hooked pass (tests compare them, dropout masks
//! included), at a fraction of the time and memory. Sequences are packed without padding, and
//! the vocabulary product and the cross-entropy's gradient are done in chunks of rows, so the
//! (tokens × vocabulary) logits are never held whole.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use crate::error::{EngineError, Result};
use crate::model::Llama;
use crate::model::backward::{Active, Backward, layer_backward};
use crate::model::cpu::{CpuView, matmul, rms_norm_backward_row, rms_norm_rows};
use crate::model::fast::{self, Dims, Packed, Weights, layer_forward};
use crate::model::lora::Adapters;
use crate::model::lora_cpu::{CpuAdapter, LayerLora};

/// Rows of the vocabulary product per chunk.
const CHUNK: usize = 64;

/// Whether the hand-written pass can run phase 2 on this model.
pub fn supported(m: &Llama) -> bool {
    fast::supported(m)
}

fn layer_adapters(ad: &Adapters) -> Result<Vec<LayerLora>> {
    ad.layers
        .iter()
        .enumerate()
        .map(|(layer, map)| {
            let mut out: [Option<CpuAdapter>; 7] = Default::default();
            for (t, a) in map {
                let (r, inp) = a.a.dims2()?;
                let out_dim = a.b.dim(0)?;
                out[*t as usize] = Some(CpuAdapter {
                    a: a.a.flatten_all()?.to_vec1()?,
                    b: a.b.flatten_all()?.to_vec1()?,
                    r,
                    inp,
                    out: out_dim,
                });
            }
            Ok(LayerLora {
                layer,
                scale: ad.scale as f32,
                dropout: ad.dropout.filter(|d| d.p > 0.0),
                ad: out,
            })
        })
        .collect()
}

/// `scale ·` the summed next-token negative log-likelihood of equal-length `blocks` (ids from
/// the base vocabulary on are `rows`, tied to the output), and its gradient with respect to
/// every adapter tensor in [`Adapters::named`] order. `m` carries no adapters of its own.
pub fn loss_and_grads(
    m: &Llama,
    rows: &Tensor,
    adapters: &Adapters,
    blocks: &[&[u32]],
    scale: f64,
) -> Result<(f32, Vec<Tensor>)> {
    let (loss, grads, _) = pass(m, rows, Some(adapters), blocks, scale, Want::AdapterGrads)?;
    Ok((loss, grads))
}

/// Phase 1: the same loss of the model without adapters, and its gradient with respect to the
/// new rows (n_new, d) — through their inputs and through the output they are tied to.
pub fn loss_and_row_grads(
    m: &Llama,
    rows: &Tensor,
    blocks: &[&[u32]],
    scale: f64,
) -> Result<(f32, Tensor)> {
    let (loss, _, g) = pass(m, rows, None, blocks, scale, Want::RowGrads)?;
    let g = g.ok_or_else(|| EngineError::Invalid("internal: row gradient missing".into()))?;
    Ok((loss, Tensor::from_vec(g, rows.dims(), m.device())?))
}

/// The summed next-token NLL of `blocks` (forward only), with `adapters` if given.
pub fn nll(
    m: &Llama,
    rows: &Tensor,
    adapters: Option<&Adapters>,
    blocks: &[&[u32]],
) -> Result<f32> {
    Ok(pass(m, rows, adapters, blocks, 1.0, Want::Loss)?.0)
}

/// What a pass computes beyond the loss.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The loss alone (forward only).
    Loss,
    /// The adapters' gradients.
    AdapterGrads,
    /// The adapters' gradients (if any) and the new rows' gradient.
    RowGrads,
}

/// The pass behind them: the loss, and the gradients `want` asks for.
fn pass(
    m: &Llama,
    rows: &Tensor,
    adapters: Option<&Adapters>,
    blocks: &[&[u32]],
    scale: f64,
    want: Want,
) -> Result<(f32, Vec<Tensor>, Option<Vec<f32>>)> {
    let backward = want != Want::Loss;
    let dims = Dims::of(m);
    let (d, v) = (dims.d, dims.vocab);
    let w = Weights::new(m)?;
    let rows = rows.to_dtype(DType::F32)?.contiguous()?;
    let rv = CpuView::new(&rows)?;
    let new = rv.data();
    let n_new = new.len() / d;
    let pk = Packed::new(blocks.iter().map(|b| b.len()), m.cfg.n_ctx())?;
    let n = pk.rows;
    // Input rows: base ids from the embedding, new ids from the run's rows.
    let emb = w.embed.data();
    let mut x = vec![0f32; n * d];
    for (xr, id) in x.chunks_mut(d).zip(blocks.iter().flat_map(|b| b.iter())) {
        let i = *id as usize;
        let src = if i < v {
            &emb[i * d..(i + 1) * d]
        } else {
            new.get((i - v) * d..(i - v + 1) * d).ok_or_else(|| {
                EngineError::Invalid(format!("token id {i} is beyond base + new vocabulary"))
            })?
        };
        xr.copy_from_slice(src);
    }
    let lora = match adapters {
        Some(a) => layer_adapters(a)?,
        None => Vec::new(),
    };
    let past = vec![&[][..]; blocks.len()];
    let rope = (w.cos.data(), w.sin.data());
    let mut tapes = Vec::with_capacity(w.layers.len());
    for (l, lw) in w.layers.iter().enumerate() {
        let (tape, next) = layer_forward(dims, lw, &pk, x, rope, &past, lora.get(l))?;
        tapes.push(tape);
        x = next;
    }
    let mut normed = vec![0f32; n * d];
    let r_final = rms_norm_rows(&x, w.final_norm.data(), dims.eps, &mut normed);
    // Each position but a block's last predicts the next id.
    let targets: Vec<(usize, u32)> = blocks
        .iter()
        .enumerate()
        .flat_map(|(s, b)| {
            let start = pk.start[s];
            b[1..].iter().enumerate().map(move |(i, t)| (start + i, *t))
        })
        .collect();
    let mut dnormed = vec![0f32; n * d];
    let mut drows = if want == Want::RowGrads {
        Some(vec![0f32; n_new * d])
    } else {
        None
    };
    let mut loss = 0f64;
    let sc = scale as f32;
    for chunk in targets.chunks(CHUNK) {
        let c = chunk.len();
        let mut hc = vec![0f32; c * d];
        for (hr, (row, _)) in hc.chunks_mut(d).zip(chunk) {
            hr.copy_from_slice(&normed[row * d..(row + 1) * d]);
        }
        let mut zb = vec![0f32; c * v];
        w.unembed.forward(&mut zb, &hc, (c, d, v), false)?;
        // (At least one column, so that the rows pair up below even with no new rows.)
        let mut zn = vec![0f32; c * n_new.max(1)];
        matmul(&mut zn, &hc, new, (c, d, n_new), true, false);
        // Softmax over base + new, the target's NLL, and dz = scale · (softmax − onehot).
        let nll: Vec<f32> = zb
            .par_chunks_mut(v)
            .zip(zn.par_chunks_mut(n_new.max(1)))
            .zip(chunk)
            .map(|((b, nw), (_, t))| {
                let nw = &mut nw[..n_new];
                let mx = b.iter().chain(nw.iter()).copied().fold(f32::MIN, f32::max);
                let sum: f32 = b.iter().chain(nw.iter()).map(|z| (z - mx).exp()).sum();
                let lse = mx + sum.ln();
                let t = *t as usize;
                let zt = if t < v { b[t] } else { nw[t - v] };
                if !backward {
                    return lse - zt;
                }
                for z in b.iter_mut().chain(nw.iter_mut()) {
                    *z = sc * (*z - lse).exp();
                }
                if t < v {
                    b[t] -= sc;
                } else {
                    nw[t - v] -= sc;
                }
                lse - zt
            })
            .collect();
        loss += nll.iter().map(|x| f64::from(*x)).sum::<f64>();
        if !backward {
            continue;
        }
        let mut dh = vec![0f32; c * d];
        w.unembed.backward(&mut dh, &zb, (c, v, d), false)?;
        matmul(&mut dh, &zn, new, (c, n_new, d), false, true);
        if let Some(dr) = &mut drows {
            // Output side: the rows are the new columns' weights, d rows += dzᵀ h.
            let mut znt = vec![0f32; n_new * c];
            for (i, zr) in zn.chunks(n_new.max(1)).enumerate() {
                for (j, z) in zr[..n_new].iter().enumerate() {
                    znt[j * c + i] = *z;
                }
            }
            matmul(dr, &znt, &hc, (n_new, c, d), false, true);
        }
        for (g, (row, _)) in dh.chunks(d).zip(chunk) {
            dnormed[row * d..(row + 1) * d].copy_from_slice(g);
        }
    }
    if !backward {
        return Ok(((loss * scale) as f32, Vec::new(), None));
    }
    let mut dx = vec![0f32; n * d];
    dx.par_chunks_mut(d)
        .zip(dnormed.par_chunks(d))
        .enumerate()
        .for_each(|(row, (o, g))| {
            rms_norm_backward_row(
                &x[row * d..(row + 1) * d],
                r_final[row],
                w.final_norm.data(),
                g,
                o,
            );
        });
    drop((x, normed, dnormed));
    // Every row gets a gradient: the adapters act on every position.
    let first = vec![0; blocks.len()];
    let active = Active::new(&pk, &first);
    let mut grads: Vec<_> = lora.iter().map(LayerLora::zero_grads).collect();
    for l in (0..w.layers.len()).rev() {
        let tape = tapes
            .pop()
            .ok_or_else(|| EngineError::Invalid("tape missing".into()))?;
        let ctx = Backward {
            dims,
            seq: &pk,
            first: &first,
            active: &active,
            rope,
            past: &past,
        };
        let lg = lora.get(l).zip(grads.get_mut(l));
        dx = layer_backward(&ctx, &w.layers[l], &tape, dx, lg)?;
    }
    if let Some(dr) = &mut drows {
        // Input side: each position holding a new id adds its input gradient to that row.
        for (g, id) in dx.chunks(d).zip(blocks.iter().flat_map(|b| b.iter())) {
            if let Some(i) = (*id as usize).checked_sub(v) {
                for (o, gv) in dr[i * d..(i + 1) * d].iter_mut().zip(g) {
                    *o += gv;
                }
            }
        }
    }
    let dev = m.device();
    let mut out = Vec::new();
    let layers = adapters.map_or(&[][..], |a| a.layers.as_slice());
    for (l, map) in layers.iter().enumerate() {
        for (t, a) in map {
            let Some((ga, gb)) = grads[l].g[*t as usize].take() else {
                return Err(EngineError::Invalid(
                    "internal: adapter gradient missing".into(),
                ));
            };
            out.push(Tensor::from_vec(ga, a.a.dims(), dev)?);
            out.push(Tensor::from_vec(gb, a.b.dims(), dev)?);
        }
    }
    Ok(((loss * scale) as f32, out, drows))
}

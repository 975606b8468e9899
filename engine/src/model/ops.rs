//! Differentiable building blocks. candle-nn's fused `rms_norm`, `softmax_last_dim` and `rope`
//! kernels have no backward pass, so a trainable input behind them would silently get no
//! gradient; these compositions of primitive ops are differentiable end to end. When the input
//! tracks no gradient (inference, lenses, generation) the fused kernels are used instead: same
//! values within float rounding, fewer passes over memory.

use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Result, Shape, Tensor};

/// RMSNorm over the last dimension: `x / sqrt(mean(x²) + eps) · w`.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if !x.track_op() && !w.track_op() {
        return candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32);
    }
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    mul_vec(&x.broadcast_mul(&inv)?, w)
}

/// LayerNorm over the last dimension: `(x − mean) / sqrt(var + eps) · w + b` (biased variance,
/// as torch computes it). Composed of primitive ops, so it is differentiable.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    add_vec(&mul_vec(&normed, w)?, b)
}

/// `v` (d) repeated over the leading dimensions of `like` (…, d), as a product with a column
/// of ones: the gradient of a trained `v` (a sum over every row) is then a matrix product as
/// well. Hand-written because candle's sum over leading dimensions, which a broadcast's
/// backward uses, is ~70× slower than over the last one (a bias's backward cost as much as a
/// whole linear layer's when training every weight).
fn rows_of(v: &Tensor, like: &Tensor) -> Result<Tensor> {
    let d = v.elem_count();
    let n = like.elem_count() / d.max(1);
    let ones = Tensor::ones((n, 1), v.dtype(), v.device())?;
    ones.matmul(&v.reshape((1, d))?)?.reshape(like.shape())
}

/// `x + v` for a vector `v` over the last dimension of `x` (a bias).
pub fn add_vec(x: &Tensor, v: &Tensor) -> Result<Tensor> {
    if v.track_op() {
        x + rows_of(v, x)?
    } else {
        x.broadcast_add(v)
    }
}

/// `x · v` for a vector `v` over the last dimension of `x` (a norm's weight).
pub fn mul_vec(x: &Tensor, v: &Tensor) -> Result<Tensor> {
    if v.track_op() {
        x * rows_of(v, x)?
    } else {
        x.broadcast_mul(v)
    }
}

/// Soft-capping `c · tanh(x / c)` (Gemma 2's attention scores and logits).
pub fn softcap(x: &Tensor, c: f64) -> Result<Tensor> {
    (x / c)?.tanh()? * c
}

/// Numerically stable softmax over the last dimension.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if !x.track_op() {
        return candle_nn::ops::softmax_last_dim(&x.contiguous()?);
    }
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&s)
}

/// Log-softmax over the last dimension.
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// `x @ wᵀ` with a frozen `w`: candle's stock matmul backward also computes the gradient of the
/// weight (a full (out, in) matrix per layer per step, thrown away when only a word's vector
/// trains). This op's backward returns the input gradient alone. Written by hand because no
/// crate offers a partial-gradient matmul for candle.
struct FrozenMatmul {
    w: Tensor,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("frozen matmul: input not contiguous".into()))?;
        let x = &storage.as_slice::<f32>()?[start..end];
        let (rows, inner) = layout.shape().dims2()?;
        let w = super::cpu::CpuView::new(&self.w)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let out = self.w.dim(0)?;
        // Straight into the result's buffer: no copy of the input or of the product.
        let mut y = vec![0f32; rows * out];
        super::cpu::matmul(&mut y, x, w.data(), (rows, inner, out), true, false);
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.w)?))
    }
}

/// Per-row negative log-likelihood of `targets` under logits (n, V), as one op: candle's
/// composed log-softmax and gather allocate about ten (n, V) tensors between forward and
/// backward, which dominates a training step at a 49k vocabulary; this one allocates the output
/// and, backward, the gradient `g · (softmax − onehot)` only. Hand-written because candle has
/// no fused cross-entropy with a backward pass.
struct NllRows {
    targets: Vec<u32>,
}

impl NllRows {
    fn check(&self, layout: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("nll: logits not contiguous".into()))?;
        let (n, v) = layout.shape().dims2()?;
        if n != self.targets.len() || self.targets.iter().any(|t| *t as usize >= v) {
            return Err(candle_core::Error::Msg(format!(
                "nll: {} targets for {n} rows of {v} logits",
                self.targets.len()
            )));
        }
        Ok((start, end, n, v))
    }
}

/// `log Σ exp(z)` of one row, stably.
fn log_sum_exp(z: &[f32]) -> f32 {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = z.iter().map(|x| (x - max).exp()).sum();
    max + sum.ln()
}

impl CustomOp1 for NllRows {
    fn name(&self) -> &'static str {
        "nll-rows"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (start, end, n, v) = self.check(layout)?;
        let z = &storage.as_slice::<f32>()?[start..end];
        let out: Vec<f32> = z
            .par_chunks(v)
            .zip(&self.targets)
            .map(|(row, t)| log_sum_exp(row) - row[*t as usize])
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        use rayon::prelude::*;
        let (n, v) = arg.dims2()?;
        let z = arg.contiguous()?;
        let z = super::cpu::CpuView::new(&z).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let g: Vec<f32> = grad.to_vec1()?;
        let mut dz = vec![0f32; n * v];
        dz.par_chunks_mut(v)
            .zip(z.data().par_chunks(v))
            .zip(self.targets.par_iter().zip(&g))
            .for_each(|((d, row), (t, gi))| {
                let lse = log_sum_exp(row);
                for (di, zi) in d.iter_mut().zip(row) {
                    *di = gi * (zi - lse).exp();
                }
                d[*t as usize] -= gi;
            });
        Ok(Some(Tensor::from_vec(dz, (n, v), arg.device())?))
    }
}

/// Negative log-likelihood of `targets` per row of `logits` (n, V): fused on the CPU in f32,
/// composed elsewhere.
pub fn nll_rows(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    if logits.device().is_cpu() && logits.dtype() == DType::F32 {
        return logits.contiguous()?.apply_op1(NllRows {
            targets: targets.to_vec(),
        });
    }
    let n = targets.len();
    let tg = Tensor::from_vec(targets.to_vec(), (n, 1), logits.device())?;
    log_softmax_last(logits)?.gather(&tg, 1)?.squeeze(1)?.neg()
}

/// `x @ wᵀ` for `x` of shape (…, in) and `w` of shape (out, in), done as one flattened matmul.
/// When `x` carries a gradient and `w` does not (training new words), the backward pass skips
/// the weight gradient.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let inner = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let x2 = x.reshape((rows, inner))?;
    let frozen_path = x2.track_op()
        && !w.track_op()
        && x2.device().is_cpu()
        && x2.dtype() == DType::F32
        && w.dtype() == DType::F32;
    let y = if frozen_path {
        x2.contiguous()?.apply_op1(FrozenMatmul { w: w.clone() })?
    } else if w.dtype() != x2.dtype() {
        // bf16/f16 weights: the product in their type, the activations back to f32.
        x2.to_dtype(w.dtype())?
            .matmul(&w.t()?)?
            .to_dtype(x2.dtype())?
    } else {
        x2.matmul(&w.t()?)?
    };
    let mut out = dims[..dims.len() - 1].to_vec();
    out.push(w.dim(0)?);
    y.reshape(out)
}

/// Rotate-half RoPE: `x·cos + rotate_half(x)·sin`, with `cos`/`sin` of shape (B, 1, T, d_head)
/// broadcast over heads; `x` is (B, H, T, d_head).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// `softplus(x) = log(1 + eˣ)`, computed stably as `relu(x) + log(1 + e^{−|x|})`.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + ((x.abs()?.neg()?.exp()? + 1.0)?.log()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn softmax_matches_fused_kernel_and_has_gradient() {
        let dev = Device::Cpu;
        let x = Var::new(&[[1.0f32, 2.0, 3.0], [0.5, -1.0, 4.0]], &dev).unwrap();
        let ours = softmax_last(x.as_tensor()).unwrap();
        let fused = candle_nn::ops::softmax_last_dim(x.as_tensor()).unwrap();
        let diff = (ours.clone() - fused)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6);
        // d/dx of p[0][2]: p2(δ − p). Checked against a central finite difference.
        let g = ours.get(0).unwrap().get(2).unwrap().backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let f = |v: [f32; 3]| {
            let m = v.iter().cloned().fold(f32::MIN, f32::max);
            let s: f32 = v.iter().map(|a| (a - m).exp()).sum();
            (v[2] - m).exp() / s
        };
        let h = 1e-3;
        let fd0 = (f([1.0 + h, 2.0, 3.0]) - f([1.0 - h, 2.0, 3.0])) / (2.0 * h);
        assert!((g[0][0] - fd0).abs() < 1e-3, "{} vs {fd0}", g[0][0]);
        assert!(g[0][0].abs() > 1e-3);
        assert!(g[1].iter().all(|v| *v == 0.0));
    }

    #[test]
    fn fused_nll_matches_log_softmax_and_gather_in_value_and_gradient() {
        let dev = Device::Cpu;
        let zv: Vec<f32> = (0..3 * 7).map(|i| (i as f32 * 0.53).sin() * 4.0).collect();
        let z = Var::from_vec(zv, (3, 7), &dev).unwrap();
        let targets = [2u32, 0, 6];
        let weights = Tensor::new(&[1.0f32, -0.5, 2.0], &dev).unwrap();
        let ours = nll_rows(z.as_tensor(), &targets).unwrap();
        let tg = Tensor::new(&[[2u32], [0], [6]], &dev).unwrap();
        let plain = log_softmax_last(z.as_tensor())
            .unwrap()
            .gather(&tg, 1)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .neg()
            .unwrap();
        let d = (&ours - &plain).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        let loss = |t: &Tensor| (t * &weights).unwrap().sum_all().unwrap();
        let (g1, g2) = (
            loss(&ours).backward().unwrap(),
            loss(&plain).backward().unwrap(),
        );
        let (a, b) = (
            g1.get(z.as_tensor()).unwrap(),
            g2.get(z.as_tensor()).unwrap(),
        );
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        assert!(
            a.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.1
        );
        // Out-of-range targets are an error, not a wrong answer.
        assert!(nll_rows(z.as_tensor(), &[2, 0, 7]).is_err());
    }

    #[test]
    fn frozen_linear_matches_plain_matmul_in_value_and_input_gradient() {
        let dev = Device::Cpu;
        let xv: Vec<f32> = (0..24).map(|i| (i as f32 * 0.37).sin()).collect();
        let wv: Vec<f32> = (0..20).map(|i| (i as f32 * 0.11).cos()).collect();
        let w = Tensor::from_vec(wv, (5, 4), &dev).unwrap();
        let x = Var::from_vec(xv, (2, 3, 4), &dev).unwrap();
        let ours = linear(x.as_tensor(), &w).unwrap();
        let plain = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap();
        let d = (&ours - &plain).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
        let g1 = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = plain.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (
            g1.get(x.as_tensor()).unwrap(),
            g2.get(x.as_tensor()).unwrap(),
        );
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-5);
        assert!(
            a.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.1
        );
        // The frozen weight gets no gradient.
        assert!(g1.get(&w).is_none());
    }

    #[test]
    fn layer_norm_matches_its_definition_and_finite_differences() {
        let dev = Device::Cpu;
        let v = [1.0f32, -2.0, 3.0, 0.5];
        let (wv, bv) = ([1.0f32, 0.5, 2.0, -1.0], [0.1f32, -0.2, 0.0, 0.3]);
        let x = Var::new(&[v], &dev).unwrap();
        let w = Tensor::new(&wv, &dev).unwrap();
        let b = Tensor::new(&bv, &dev).unwrap();
        let ours = layer_norm(x.as_tensor(), &w, &b, 1e-5).unwrap();
        let f = |v: [f32; 4]| -> Vec<f32> {
            let mean = v.iter().sum::<f32>() / 4.0;
            let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f32>() / 4.0;
            let inv = 1.0 / (var + 1e-5).sqrt();
            (0..4)
                .map(|i| (v[i] - mean) * inv * wv[i] + bv[i])
                .collect()
        };
        let got = ours.to_vec2::<f32>().unwrap();
        for (a, e) in got[0].iter().zip(f(v)) {
            assert!((a - e).abs() < 1e-5, "{a} vs {e}");
        }
        // d/dx0 of Σ y_i²: central finite difference.
        let g = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g = g.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        let loss = |x0: f32| f([x0, -2.0, 3.0, 0.5]).iter().map(|y| y * y).sum::<f32>();
        let fd = (loss(1.0 + 1e-3) - loss(1.0 - 1e-3)) / 2e-3;
        assert!(
            (g[0][0] - fd).abs() < 1e-2 * fd.abs().max(1.0),
            "{} vs {fd}",
            g[0][0]
        );
    }

    #[test]
    fn rms_norm_matches_fused_kernel_and_has_gradient() {
        let dev = Device::Cpu;
        let x = Var::new(&[[1.0f32, -2.0, 3.0, 0.5]], &dev).unwrap();
        let w = Tensor::new(&[1.0f32, 0.5, 2.0, -1.0], &dev).unwrap();
        let ours = rms_norm(x.as_tensor(), &w, 1e-5).unwrap();
        let fused = candle_nn::ops::rms_norm(x.as_tensor(), &w, 1e-5).unwrap();
        let diff = (ours.clone() - fused)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-6);
        let grads = ours.sum_all().unwrap().backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        // Central finite difference of sum(rms_norm(x)·w) in x[0].
        let f = |x0: f32| {
            let v = [x0, -2.0, 3.0, 0.5];
            let ms = v.iter().map(|a| a * a).sum::<f32>() / 4.0;
            let inv = 1.0 / (ms + 1e-5).sqrt();
            v.iter()
                .zip([1.0, 0.5, 2.0, -1.0])
                .map(|(a, w)| a * inv * w)
                .sum::<f32>()
        };
        let fd = (f(1.0 + 1e-3) - f(1.0 - 1e-3)) / 2e-3;
        assert!((g[0][0] - fd).abs() < 1e-3, "{} vs {fd}", g[0][0]);
        assert!(g[0][0].abs() > 1e-3);
    }
}

//! The optimisers of the injection phases, written out because their state must be saved and
//! restored exactly (candle's `AdamW` does not expose its moments, and candle has no Adafactor).
//!
//! - AdamW: PyTorch's `AdamW` (bias-corrected moments, decoupled weight decay).
//! - Adafactor: transformers' `Adafactor` with `scale_parameter=False, relative_step=False,
//!   warmup_init=False, beta1=None` (what its Trainer builds for `optim="adafactor"`), for a
//!   2-D parameter: the second moment is kept as a row and a column mean of `g² + ε₁`, decayed
//!   by `β₂(t) = 1 − t^−0.8`; the update `g / √(R C / mean R)` has its RMS clipped to 1, is
//!   scaled by the learning rate, and weight decay is applied as `p −= wd · lr · p` first.

use candle_core::{D, Tensor};

use crate::error::Result;

/// Adafactor's ε₁ (added to the squared gradient).
const EPS1: f64 = 1e-30;
/// Adafactor's decay exponent: `β₂(t) = 1 − t^DECAY`.
const DECAY: f64 = -0.8;
/// Adafactor's clip on the update's root mean square.
const CLIP: f64 = 1.0;

/// One AdamW step of `p` at step `t` (1-based); `m` and `v` are updated in place.
#[expect(
    clippy::too_many_arguments,
    reason = "the parameter, its gradient, two moments and the step settings"
)]
pub fn adamw(
    p: &Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    t: usize,
    lr: f64,
    eps: f64,
    weight_decay: f64,
) -> Result<Tensor> {
    let (b1, b2) = (0.9f64, 0.999f64);
    let t = i32::try_from(t).unwrap_or(i32::MAX);
    *m = ((&*m * b1)? + (g * (1.0 - b1))?)?;
    *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
    let mhat = (&*m / (1.0 - b1.powi(t)))?;
    let vhat = (&*v / (1.0 - b2.powi(t)))?;
    let upd = ((mhat / (vhat.sqrt()? + eps)?)? + (p * weight_decay)?)?;
    Ok((p - (upd * lr)?)?.detach())
}

/// Adafactor's factored second moment of an (n, d) parameter: row means (n) and column means (d).
#[derive(Debug, Clone)]
pub struct Factored {
    /// Running mean over each row of `g² + ε₁`.
    pub row: Tensor,
    /// Running mean over each column.
    pub col: Tensor,
}

impl Factored {
    /// Zero statistics for a parameter like `p` (n, d).
    pub fn zeros(p: &Tensor) -> Result<Self> {
        let (n, d) = p.dims2()?;
        Ok(Self {
            row: Tensor::zeros(n, p.dtype(), p.device())?,
            col: Tensor::zeros(d, p.dtype(), p.device())?,
        })
    }
}

/// One Adafactor step of the (n, d) parameter `p` at step `t` (1-based); `st` is updated.
pub fn adafactor(
    p: &Tensor,
    g: &Tensor,
    st: &mut Factored,
    t: usize,
    lr: f64,
    weight_decay: f64,
) -> Result<Tensor> {
    let beta2 = 1.0 - (t as f64).powf(DECAY);
    let sq = (g.sqr()? + EPS1)?;
    st.row = ((&st.row * beta2)? + (sq.mean(D::Minus1)? * (1.0 - beta2))?)?;
    st.col = ((&st.col * beta2)? + (sq.mean(0)? * (1.0 - beta2))?)?;
    // 1 / √(R_i C_j / mean R) = rsqrt(R_i / mean R) · rsqrt(C_j).
    let r = st
        .row
        .broadcast_div(&st.row.mean_keepdim(0)?)?
        .sqrt()?
        .recip()?
        .unsqueeze(1)?;
    let c = st.col.sqrt()?.recip()?.unsqueeze(0)?;
    let u = g.broadcast_mul(&r)?.broadcast_mul(&c)?;
    let rms = f64::from(u.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?);
    let u = (u / (rms / CLIP).max(1.0))?;
    let p = if weight_decay != 0.0 {
        (p - (p * (weight_decay * lr))?)?
    } else {
        p.clone()
    };
    Ok((p - (u * lr)?)?.detach())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Adafactor's first step written out by hand: β₂(1) = 0, so R and C are the plain means.
    #[test]
    fn first_adafactor_step_is_the_normalised_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let p = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &dev)?;
        let g = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25]], &dev)?;
        let mut st = Factored::zeros(&p)?;
        let out = adafactor(&p, &g, &mut st, 1, 0.1, 0.0)?.to_vec2::<f32>()?;
        let gv = [[0.5f64, -1.0], [2.0, 0.25]];
        let row = [0.625f64, 2.03125];
        let col = [2.125f64, 0.53125];
        let rm = (row[0] + row[1]) / 2.0;
        let mut u = [[0.0f64; 2]; 2];
        for i in 0..2 {
            for j in 0..2 {
                u[i][j] = gv[i][j] / ((row[i] / rm) * col[j]).sqrt();
            }
        }
        let rms = (u.iter().flatten().map(|x| x * x).sum::<f64>() / 4.0).sqrt();
        let pv = [[1.0f64, 2.0], [3.0, 4.0]];
        for i in 0..2 {
            for j in 0..2 {
                let want = pv[i][j] - 0.1 * u[i][j] / rms.max(1.0);
                assert!((f64::from(out[i][j]) - want).abs() < 1e-6, "{i},{j}");
            }
        }
        Ok(())
    }
}

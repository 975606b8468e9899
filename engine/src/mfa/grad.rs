//! Analytic gradient of the mean negative log-likelihood of an MFA. Written by hand because the
//! Woodbury form needs M⁻¹ and log|M|, which candle cannot differentiate; every term is a matmul
//! over the batch, so no (B, K, D) tensor is ever built.
//!
//! With g = ∂L/∂ll = −r/B (r the responsibilities), G_k = Σ_n g_nk, a = C⁻¹(x−μ) and the identity
//! W_kᵀa = u = M⁻¹v:
//! - ∂L/∂μ_k = P(Σ g x − G_k μ_k) − P W_k Σ g u
//! - ∂L/∂W_k = −G_k P W_k M⁻¹ + P(Σ g x uᵀ − μ_k (Σ g u)ᵀ) − P W_k Σ g u uᵀ
//! - ∂L/∂ψ_i = −½ Σ_k G_k (C_k⁻¹)_ii + ½ Σ g a_i²
//! - ∂L/∂logit_k = G_k + π_k
//!
//! then through softplus and the column normalisation of the directions.

use candle_core::Tensor;
use candle_core::backprop::GradStore;
use candle_nn::ops::{sigmoid, softmax};

use super::model::{Derived, Forward, Mfa};
use crate::error::Result;

/// Mean NLL of the batch and the gradients of every parameter.
pub fn nll_and_grads(mfa: &Mfa, der: &Derived, x: &Tensor) -> Result<(f64, GradStore)> {
    let fwd = der.forward(x)?;
    let grads = grads_from(mfa, der, x, &fwd)?;
    let loss = fwd
        .logp
        .mean_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_scalar::<f64>()?;
    Ok((-loss, grads))
}

fn grads_from(mfa: &Mfa, der: &Derived, x: &Tensor, fwd: &Forward) -> Result<GradStore> {
    let (b, d) = x.dims2()?;
    let (k, _, r) = der.w.dims3()?;
    let inv_b = 1.0 / b as f64;
    let resp = softmax(&fwd.joint, 1)?;
    let g = (resp * -inv_b)?; // (B, K)
    let big_g = g.sum(0)?; // (K)
    let gx = g.t()?.matmul(x)?; // (K, D)
    let gu = fwd.u.broadcast_mul(&g.unsqueeze(2)?)?; // (B, K, R)
    let s1 = x
        .t()?
        .matmul(&gu.reshape((b, k * r))?)?
        .reshape((d, k, r))?
        .permute((1, 0, 2))?
        .contiguous()?; // Σ g x uᵀ, (K, D, R)
    let su = gu.sum(0)?; // (K, R)
    let suu = gu
        .permute((1, 2, 0))?
        .contiguous()?
        .matmul(&fwd.u.transpose(0, 1)?.contiguous()?)?; // (K, R, R)
    let w = &der.w;
    let mu = mfa.mu.as_tensor();
    let p_row = der.p.reshape((1, d))?;
    let p_col = der.p.reshape((1, d, 1))?;
    let w_su = w.matmul(&su.unsqueeze(2)?)?.squeeze(2)?; // (K, D)
    let w_suu = w.matmul(&suu)?; // (K, D, R)

    // Means.
    let d_mu =
        ((gx.clone() - mu.broadcast_mul(&big_g.unsqueeze(1)?)?)? - &w_su)?.broadcast_mul(&p_row)?;

    // Loadings.
    let w_minv = w.matmul(&der.minv)?; // (K, D, R)
    let term_const = w_minv
        .broadcast_mul(&p_col)?
        .broadcast_mul(&big_g.reshape((k, 1, 1))?)?
        .neg()?;
    let mu_su = mu.unsqueeze(2)?.matmul(&su.unsqueeze(1)?)?; // (K, D, R)
    let term_data = ((&s1 - mu_su)? - &w_suu)?.broadcast_mul(&p_col)?;
    let d_w = (term_const + term_data)?;

    // Noise: diag(C_k⁻¹) = p − p² Σ_r (W M⁻¹)_ir W_ir.
    let diag_wmw = (&w_minv * w)?.sum(2)?; // (K, D)
    let p2 = der.p.sqr()?.reshape((1, d))?;
    let diag_cinv = (p_row.broadcast_sub(&diag_wmw.broadcast_mul(&p2)?))?;
    let first = (diag_cinv.broadcast_mul(&big_g.unsqueeze(1)?)?.sum(0)? * -0.5)?;
    // Σ_nk g (d_i − (W u)_i)², expanded into batch sums.
    let g_row = g.sum(1)?; // (B)
    let x2 = x.sqr()?.broadcast_mul(&g_row.unsqueeze(1)?)?.sum(0)?;
    let xmu = (&gx * mu)?.sum(0)?;
    let mu2 = mu.sqr()?.broadcast_mul(&big_g.unsqueeze(1)?)?.sum(0)?;
    let xwu = (w * &s1)?.sum(2)?.sum(0)?;
    let muwu = (mu * &w_su)?.sum(0)?;
    let wuwu = (w * &w_suu)?.sum(2)?.sum(0)?;
    let sq = ((((x2 - (xmu * 2.0)?)? + mu2)? - (xwu * 2.0)?)? + (muwu * 2.0)?)? + wuwu;
    let second = ((sq? * der.p.sqr()?)? * 0.5)?;
    let d_psi = (first + second)?;

    // Mixing.
    let pi = der.log_pi.exp()?;
    let d_logits = (big_g + pi)?;

    // Through the parameterisation.
    let d_rho = (d_psi * sigmoid(mfa.rho.as_tensor())?)?;
    let d_sigma = (&d_w * &der.unit)?.sum(1)?; // (K, R)
    let d_scale = (d_sigma * sigmoid(mfa.scale.as_tensor())?)?;
    let d_unit = d_w.broadcast_mul(&der.sigma.unsqueeze(1)?)?;
    let proj = (&d_unit * &der.unit)?.sum_keepdim(1)?; // (K, 1, R)
    let d_dirs = (d_unit - der.unit.broadcast_mul(&proj)?)?.broadcast_div(&der.norms)?;

    let mut store = GradStore::default();
    store.insert(mfa.mu.as_tensor(), d_mu);
    store.insert(mfa.dirs.as_tensor(), d_dirs);
    store.insert(mfa.scale.as_tensor(), d_scale);
    store.insert(mfa.rho.as_tensor(), d_rho);
    store.insert(mfa.logits.as_tensor(), d_logits);
    Ok(store)
}

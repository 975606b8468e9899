//! The MFA parameterisation and its Woodbury log-likelihood (never a D×D matrix).
//!
//! Means μ_k (K×D); loadings W_k = U_k diag(softplus(s_k)) with U_k the column-normalised raw
//! directions V_k (D×R); shared diagonal noise Ψ = softplus(ρ) + ε; mixing π = softmax(logits).
//! With P = Ψ⁻¹, M_k = I + W_kᵀPW_k and v = W_kᵀP(x−μ_k):
//! log|C_k| = Σ log Ψ + log|M_k|, quad = (x−μ_k)ᵀP(x−μ_k) − vᵀM_k⁻¹v,
//! ll_k = −½(D log 2π + log|C_k| + quad), log p(x) = logsumexp_k(ll_k + log π_k).

use candle_core::{D, DType, Device, Tensor, Var};

use super::linalg::spd_inverse_logdet;
use crate::error::{EngineError, Result};
use crate::model::ops::softplus;

/// Floor added to the noise variances.
pub const PSI_EPS: f64 = 1e-4;

/// The trainable parameters.
#[derive(Debug, Clone)]
pub struct Mfa {
    /// Means, (K, D).
    pub mu: Var,
    /// Raw loading directions, (K, D, R); columns are normalised in use.
    pub dirs: Var,
    /// Loading scales before softplus, (K, R).
    pub scale: Var,
    /// Noise variances before softplus, (D).
    pub rho: Var,
    /// Mixing logits, (K).
    pub logits: Var,
}

/// Quantities derived from the parameters once per step (the per-component R×R work).
#[derive(Debug, Clone)]
pub struct Derived {
    /// Unit loading columns U, (K, D, R).
    pub unit: Tensor,
    /// Column norms of the raw directions, (K, 1, R).
    pub norms: Tensor,
    /// softplus(scale), (K, R).
    pub sigma: Tensor,
    /// Loadings W, (K, D, R).
    pub w: Tensor,
    /// Ψ, (D).
    pub psi: Tensor,
    /// P = Ψ⁻¹, (D).
    pub p: Tensor,
    /// P W stacked as (D, K·R) for one matmul with the data.
    pub pw_flat: Tensor,
    /// M⁻¹, (K, R, R).
    pub minv: Tensor,
    /// log|C_k|, (K).
    pub logdet: Tensor,
    /// log π, (K).
    pub log_pi: Tensor,
    /// (PW_k)ᵀ μ_k, (K, R).
    pub c: Tensor,
    /// P ∘ μ, (K, D).
    pub pmu: Tensor,
    /// μᵀPμ, (K).
    pub mu_p_mu: Tensor,
}

/// The per-batch intermediate values the gradient needs.
#[derive(Debug, Clone)]
pub struct Forward {
    /// ll_k + log π_k, (B, K).
    pub joint: Tensor,
    /// log p(x), (B).
    pub logp: Tensor,
    /// u = M⁻¹ v, (B, K, R).
    pub u: Tensor,
}

/// The inverse of softplus, for initialisation (`y > 0`).
pub fn softplus_inv(y: f64) -> f64 {
    if y > 20.0 { y } else { y.exp_m1().ln() }
}

impl Mfa {
    /// Parameters from initial values: means (K, D), directions (K, D, R), loading scales σ
    /// (after softplus, K×R), noise Ψ (D, after softplus), uniform mixing.
    pub fn new(mu: Tensor, dirs: Tensor, sigma: &Tensor, psi: &Tensor) -> Result<Self> {
        let (k, d) = mu.dims2()?;
        let (k2, d2, _) = dirs.dims3()?;
        if k != k2 || d != d2 || psi.dims1()? != d {
            return Err(EngineError::Invalid(format!(
                "MFA: inconsistent shapes: means {:?}, directions {:?}, noise {:?}",
                mu.dims(),
                dirs.dims(),
                psi.dims()
            )));
        }
        let inv = |t: &Tensor, eps: f64| -> Result<Tensor> {
            let v: Vec<f64> = t.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
            let v: Vec<f64> = v
                .into_iter()
                .map(|y| softplus_inv((y - eps).max(1e-6)))
                .collect();
            Ok(Tensor::from_vec(v, t.shape(), t.device())?.to_dtype(mu.dtype())?)
        };
        let logits = Tensor::zeros(k, mu.dtype(), mu.device())?;
        Ok(Self {
            scale: Var::from_tensor(&inv(sigma, 0.0)?)?,
            rho: Var::from_tensor(&inv(psi, PSI_EPS)?)?,
            mu: Var::from_tensor(&mu)?,
            dirs: Var::from_tensor(&dirs)?,
            logits: Var::from_tensor(&logits)?,
        })
    }

    /// (K, D, R).
    pub fn dims(&self) -> Result<(usize, usize, usize)> {
        Ok(self.dirs.dims3()?)
    }

    /// Device of the parameters.
    pub fn device(&self) -> &Device {
        self.mu.device()
    }

    /// The parameters in a fixed order (for the optimiser and files).
    pub fn vars(&self) -> [&Var; 5] {
        [&self.mu, &self.dirs, &self.scale, &self.rho, &self.logits]
    }

    /// Computes the derived per-component quantities.
    pub fn derive(&self) -> Result<Derived> {
        let (k, d, r) = self.dims()?;
        let dirs = self.dirs.as_tensor();
        let norms = (dirs.sqr()?.sum_keepdim(1)? + 1e-24)?.sqrt()?;
        let unit = dirs.broadcast_div(&norms)?;
        let sigma = softplus(self.scale.as_tensor())?;
        let w = unit.broadcast_mul(&sigma.unsqueeze(1)?)?;
        let psi = (softplus(self.rho.as_tensor())? + PSI_EPS)?;
        let p = psi.recip()?;
        let pw = w.broadcast_mul(&p.reshape((1, d, 1))?)?;
        let pw_flat = pw.permute((1, 0, 2))?.reshape((d, k * r))?.contiguous()?;
        // M_k = I + W_kᵀ P W_k, then its inverse and log-determinant in f64 on the CPU.
        let m = w.transpose(1, 2)?.contiguous()?.matmul(&pw.contiguous()?)?;
        let m64: Vec<f64> = m
            .to_dtype(DType::F64)?
            .to_device(&Device::Cpu)?
            .flatten_all()?
            .to_vec1()?;
        let mut minv = Vec::with_capacity(k * r * r);
        let mut logdet_m = Vec::with_capacity(k);
        for c in 0..k {
            let mut a = m64[c * r * r..(c + 1) * r * r].to_vec();
            for i in 0..r {
                a[i * r + i] += 1.0;
            }
            let (inv, ld) = spd_inverse_logdet(&a, r)?;
            minv.extend(inv);
            logdet_m.push(ld);
        }
        let dt = self.mu.dtype();
        let dev = self.device();
        let minv = Tensor::from_vec(minv, (k, r, r), dev)?.to_dtype(dt)?;
        let sum_log_psi = psi.log()?.sum_all()?;
        let logdet = Tensor::from_vec(logdet_m, k, dev)?
            .to_dtype(dt)?
            .broadcast_add(&sum_log_psi)?;
        let log_pi = candle_nn::ops::log_softmax(self.logits.as_tensor(), 0)?;
        let mu = self.mu.as_tensor();
        let c = pw
            .transpose(1, 2)?
            .contiguous()?
            .matmul(&mu.unsqueeze(2)?)?
            .squeeze(2)?;
        let pmu = mu.broadcast_mul(&p.unsqueeze(0)?)?;
        let mu_p_mu = (&pmu * mu)?.sum(1)?;
        Ok(Derived {
            unit,
            norms,
            sigma,
            w,
            psi,
            p,
            pw_flat,
            minv,
            logdet,
            log_pi,
            c,
            pmu,
            mu_p_mu,
        })
    }
}

impl Derived {
    /// The joint log-densities of a batch `x` (B, D) under every component, and log p(x).
    pub fn forward(&self, x: &Tensor) -> Result<Forward> {
        let (b, d) = x.dims2()?;
        let (k, r, _) = self.minv.dims3()?;
        let v = x
            .matmul(&self.pw_flat)?
            .reshape((b, k, r))?
            .broadcast_sub(&self.c.unsqueeze(0)?)?;
        // u = M⁻¹ v per component: (K, B, R) @ (K, R, R); M⁻¹ is symmetric.
        let u = v
            .transpose(0, 1)?
            .contiguous()?
            .matmul(&self.minv)?
            .transpose(0, 1)?
            .contiguous()?;
        let vmv = (&v * &u)?.sum(2)?;
        let xpx = x
            .sqr()?
            .broadcast_mul(&self.p.unsqueeze(0)?)?
            .sum_keepdim(1)?;
        let xpm = x.matmul(&self.pmu.t()?)?;
        let dpd =
            ((xpm * -2.0)?.broadcast_add(&xpx)?).broadcast_add(&self.mu_p_mu.unsqueeze(0)?)?;
        let quad = (dpd - vmv)?;
        let konst = d as f64 * (2.0 * std::f64::consts::PI).ln();
        let ll = ((quad.broadcast_add(&self.logdet.unsqueeze(0)?)? + konst)? * -0.5)?;
        let joint = ll.broadcast_add(&self.log_pi.unsqueeze(0)?)?;
        let logp = logsumexp_rows(&joint)?;
        Ok(Forward { joint, logp, u })
    }
}

/// Row-wise log-sum-exp of a (B, K) tensor.
pub fn logsumexp_rows(t: &Tensor) -> Result<Tensor> {
    let m = t.max_keepdim(D::Minus1)?;
    Ok((t.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()? + m)?.squeeze(1)?)
}

//! Phase 3's regularisers on the new rows E (n, d), with their gradients (candle's autograd):
//!
//! - `L_morpheme = (1/|S|) Σ_{f∈S} (1/d) ‖E_f − c_f‖²` over the split forms S, `c_f` the mean of
//!   the vectors of f's parts (prefix, root, suffix; each the mean token embedding of the part):
//!   the seed's "E[allbust] ≈ mean(E[all], E[bust])".
//! - `L_repulsion = (1/P) Σ_{(i,j)} max(0, cos(E_i, E_j) − τ)²` over P random pairs of distinct
//!   new rows drawn afresh each step: only near-duplicates (cosine above τ, 0.95) are pushed
//!   apart, so the term prevents collapse without spreading the rows.
//! - `L_norm = (1/n) Σ_i max(0, |‖E_i‖ − μ| − σ)²`, μ and σ the mean and standard deviation of
//!   the base rows' norms: rows whose norm leaves the base vocabulary's band are pulled back.

use candle_core::{DType, Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use neoscope_api::align::{AlignConfig, AlignTerms};

/// What the regularisers need besides the rows.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Indices of the split forms (k).
    pub morph_idx: Option<Tensor>,
    /// The mean of each split form's parts (k, d).
    pub morph_mean: Option<Tensor>,
    /// The norm band.
    pub norms: NormBand,
}

/// Mean and standard deviation (N − 1) of the base rows' norms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NormBand {
    /// μ.
    pub mean: f64,
    /// σ.
    pub std: f64,
}

impl NormBand {
    /// The band of the rows of `emb` (vocab, d).
    pub fn of(emb: &Tensor) -> Result<Self> {
        let norms: Vec<f32> = emb.to_dtype(DType::F32)?.sqr()?.sum(1)?.sqrt()?.to_vec1()?;
        let n = norms.len() as f64;
        if n < 2.0 {
            return Err(EngineError::Invalid(
                "the base vocabulary needs at least two rows".into(),
            ));
        }
        let mean = norms.iter().map(|x| f64::from(*x)).sum::<f64>() / n;
        let var = norms
            .iter()
            .map(|x| (f64::from(*x) - mean).powi(2))
            .sum::<f64>()
            / (n - 1.0);
        Ok(Self {
            mean,
            std: var.sqrt(),
        })
    }
}

/// `count` pairs of distinct rows among `n`, a function of (seed, step).
pub fn pairs(seed: u64, step: usize, n: usize, count: usize) -> Vec<(u32, u32)> {
    if n < 2 {
        return Vec::new();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed ^ 0xA11C_0000_0000_0000 ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    (0..count)
        .map(|_| {
            let i = rng.random_range(0..n);
            // The second of a pair is drawn among the other n − 1 rows.
            let j = (i + 1 + rng.random_range(0..n - 1)) % n;
            (i as u32, j as u32)
        })
        .collect()
}

/// The three regularisers at `rows` (unweighted, in `AlignTerms` with `lm` 0) and the gradient
/// of their weighted sum with respect to `rows`.
pub fn terms_and_grad(
    rows: &Tensor,
    t: &Targets,
    cfg: &AlignConfig,
    pairs: &[(u32, u32)],
) -> Result<(AlignTerms, Tensor)> {
    let var = Var::from_tensor(rows)?;
    let e = var.as_tensor();
    let dev = e.device();
    let zero = || Tensor::zeros((), DType::F32, dev);
    let morph = match (&t.morph_idx, &t.morph_mean) {
        (Some(idx), Some(mean)) => (e.index_select(idx, 0)? - mean)?.sqr()?.mean_all()?,
        _ => zero()?,
    };
    let rep = if pairs.is_empty() {
        zero()?
    } else {
        let ia: Vec<u32> = pairs.iter().map(|p| p.0).collect();
        let ib: Vec<u32> = pairs.iter().map(|p| p.1).collect();
        let a = e.index_select(&Tensor::new(ia, dev)?, 0)?;
        let b = e.index_select(&Tensor::new(ib, dev)?, 0)?;
        let na = a.sqr()?.sum(1)?.sqrt()?;
        let nb = b.sqr()?.sum(1)?.sqrt()?;
        let cos = ((&a * &b)?.sum(1)? / (na * nb)?)?;
        (cos - cfg.repulsion_threshold)?.relu()?.sqr()?.mean_all()?
    };
    let norm = {
        let n = e.sqr()?.sum(1)?.sqrt()?;
        ((n - t.norms.mean)?.abs()? - t.norms.std)?
            .relu()?
            .sqr()?
            .mean_all()?
    };
    let total = (((&morph * cfg.lambda_morpheme)? + (&rep * cfg.lambda_repulsion)?)?
        + (&norm * cfg.lambda_norm)?)?;
    let grads = total.backward()?;
    let g = match grads.get(e) {
        Some(g) => g.clone(),
        None => e.zeros_like()?,
    };
    let terms = AlignTerms {
        lm: 0.0,
        morpheme: morph.to_scalar()?,
        repulsion: rep.to_scalar()?,
        norm: norm.to_scalar()?,
    };
    Ok((terms, g))
}

/// The weighted sum of the terms: the objective phase 3 minimises.
pub fn total(t: &AlignTerms, cfg: &AlignConfig) -> f32 {
    (f64::from(t.lm)
        + cfg.lambda_morpheme * f64::from(t.morpheme)
        + cfg.lambda_repulsion * f64::from(t.repulsion)
        + cfg.lambda_norm * f64::from(t.norm)) as f32
}

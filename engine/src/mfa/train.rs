//! Fitting an MFA: initialisation (k-means or random points), Adam on the mean NLL over shuffled
//! minibatches, a held-out validation split, per-epoch progress, cancel, optional early stopping
//! when the validation NLL stops improving, and the best epoch (by validation NLL) restored at
//! the end.

use candle_core::{DType, IndexOp, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::grad::nll_and_grads;
use super::kmeans::{KmeansConfig, kmeans, random_points};
use super::model::Mfa;
use crate::error::{EngineError, Result};
use crate::sampling::normal_vec;
pub use neoscope_api::mfa::{InitKind, MfaConfig, MfaEpoch, MfaReport};

/// What the fit calls back with.
pub enum FitEvent<'a> {
    /// A stage with a fraction (initialisation, batches).
    Stage(&'a str, f32),
    /// An epoch ended.
    Epoch(MfaEpoch),
}

/// Builds the initial MFA from centroids: random unit directions, loading scales and noise from
/// the data's per-dimension variance.
pub fn init_from_centroids(x: &Tensor, centroids: Tensor, rank: usize, seed: u64) -> Result<Mfa> {
    let (k, d) = centroids.dims2()?;
    let var = x.broadcast_sub(&x.mean_keepdim(0)?)?.sqr()?.mean(0)?;
    let mean_var = var.mean_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6d66_6100);
    let dirs = Tensor::from_vec(
        normal_vec(&mut rng, k * d * rank, 1.0),
        (k, d, rank),
        x.device(),
    )?
    .to_dtype(x.dtype())?;
    let sigma = (Tensor::ones((k, rank), x.dtype(), x.device())? * (2.0 * mean_var.sqrt()))?;
    let psi = ((var * 0.5)? + 1e-3)?;
    Mfa::new(centroids, dirs, &sigma, &psi)
}

/// Mean NLL of `x` in batches.
pub fn mean_nll(mfa: &Mfa, x: &Tensor, batch: usize) -> Result<f64> {
    let der = mfa.derive()?;
    let n = x.dim(0)?;
    let mut total = 0.0;
    for s in (0..n).step_by(batch.max(1)) {
        let xb = x.i(s..(s + batch).min(n))?;
        let lp = der
            .forward(&xb)?
            .logp
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        total -= lp;
    }
    Ok(total / n.max(1) as f64)
}

/// Splits rows into (train, validation) by a seeded permutation.
pub fn split(x: &Tensor, frac: f32, seed: u64) -> Result<(Tensor, Tensor)> {
    let n = x.dim(0)?;
    let mut idx: Vec<u32> = (0..u32::try_from(n).unwrap_or(u32::MAX)).collect();
    idx.shuffle(&mut StdRng::seed_from_u64(seed));
    let n_val = ((n as f32 * frac).round() as usize).min(n.saturating_sub(1));
    let take = |v: &[u32]| -> Result<Tensor> {
        Ok(x.index_select(&Tensor::from_vec(v.to_vec(), v.len(), x.device())?, 0)?)
    };
    Ok((take(&idx[n_val..])?, take(&idx[..n_val])?))
}

/// Fits an MFA to the rows of `x` (N, D).
pub fn fit(
    x: &Tensor,
    cfg: &MfaConfig,
    on: &mut dyn FnMut(FitEvent<'_>) -> bool,
) -> Result<(Mfa, MfaReport)> {
    let (n, d) = x.dims2()?;
    if cfg.rank == 0 || cfg.k == 0 {
        return Err(EngineError::Invalid(
            "MFA needs at least one component and rank ≥ 1".into(),
        ));
    }
    if cfg.rank >= d {
        return Err(EngineError::Invalid(format!(
            "rank {} must be below the activations' width {d}",
            cfg.rank
        )));
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) || cfg.epochs == 0 {
        return Err(EngineError::Invalid(format!(
            "learning rate {} must be a finite number > 0 and epochs ({}) at least 1",
            cfg.lr, cfg.epochs
        )));
    }
    let (train, val) = split(x, cfg.val_fraction, cfg.seed)?;
    let n_train = train.dim(0)?;
    if n_train < cfg.k * 2 {
        return Err(EngineError::Invalid(format!(
            "{n} activations are too few for {} components: collect more text or lower K",
            cfg.k
        )));
    }
    let centroids = match cfg.init {
        InitKind::Kmeans => kmeans(
            &train,
            &KmeansConfig::for_k(cfg.k, cfg.seed),
            &mut |s, f| on(FitEvent::Stage(s, f)),
        )?,
        InitKind::RandomPoints => random_points(&train, cfg.k, cfg.seed)?,
    };
    let mfa = init_from_centroids(&train, centroids, cfg.rank, cfg.seed)?;
    let eval = |m: &Mfa| -> Result<f64> {
        if val.dim(0)? == 0 {
            mean_nll(m, &train, 1024)
        } else {
            mean_nll(m, &val, 1024)
        }
    };
    let init_val = eval(&mfa)?;
    let mut best = (0usize, init_val, snapshot(&mfa)?);
    let mut opt = AdamW::new(
        mfa.vars().iter().map(|v| (*v).clone()).collect(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let mut rng = StdRng::seed_from_u64(cfg.seed.wrapping_add(7));
    let mut order: Vec<u32> = (0..u32::try_from(n_train).unwrap_or(u32::MAX)).collect();
    let mut epochs = Vec::new();
    let (mut cancelled, mut stopped_early) = (false, false);
    'outer: for e in 1..=cfg.epochs {
        order.shuffle(&mut rng);
        let (mut sum, mut count) = (0.0, 0usize);
        let n_batches = n_train.div_ceil(cfg.batch.max(1));
        for (bi, chunk) in order.chunks(cfg.batch.max(1)).enumerate() {
            let xb = train.index_select(
                &Tensor::from_vec(chunk.to_vec(), chunk.len(), x.device())?,
                0,
            )?;
            let der = mfa.derive()?;
            let (loss, grads) = nll_and_grads(&mfa, &der, &xb)?;
            if !loss.is_finite() {
                break 'outer;
            }
            opt.step(&grads)?;
            sum += loss * chunk.len() as f64;
            count += chunk.len();
            let f = ((e - 1) as f32 + (bi + 1) as f32 / n_batches as f32) / cfg.epochs as f32;
            if bi % 8 == 0
                && !on(FitEvent::Stage(
                    &format!("epoch {e}/{} · NLL {loss:.1}", cfg.epochs),
                    f,
                ))
            {
                cancelled = true;
                break 'outer;
            }
        }
        let ep = MfaEpoch {
            epoch: e,
            total: cfg.epochs,
            train_nll: sum / count.max(1) as f64,
            val_nll: eval(&mfa)?,
        };
        if ep.val_nll.is_finite() && ep.val_nll < best.1 {
            best = (e, ep.val_nll, snapshot(&mfa)?);
        }
        epochs.push(ep);
        if !on(FitEvent::Epoch(ep)) {
            cancelled = true;
            break;
        }
        if let Some(p) = cfg.patience
            && e >= best.0 + p.max(1)
            && e < cfg.epochs
        {
            stopped_early = true;
            break;
        }
    }
    restore(&mfa, &best.2)?;
    Ok((
        mfa,
        MfaReport {
            epochs,
            init_val_nll: init_val,
            best_epoch: best.0,
            best_val_nll: best.1,
            n_train,
            n_val: val.dim(0)?,
            cancelled,
            stopped_early,
        },
    ))
}

fn snapshot(m: &Mfa) -> Result<Vec<Tensor>> {
    Ok(m.vars()
        .iter()
        .map(|v| v.as_tensor().copy())
        .collect::<candle_core::Result<_>>()?)
}

fn restore(m: &Mfa, s: &[Tensor]) -> Result<()> {
    for (v, t) in m.vars().iter().zip(s) {
        v.set(t)?;
    }
    Ok(())
}

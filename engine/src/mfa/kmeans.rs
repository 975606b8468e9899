//! K-means initialisation for the MFA: a reservoir sample projected to a few random dimensions,
//! k-means++ seeding and Lloyd iterations there (best of several restarts), then refinement in
//! the full space on all data. Empty clusters are reseeded with the point farthest from its
//! centroid. Hand-written: linfa's k-means works on ndarray and f64 copies of all data, while this
//! keeps the data as one candle tensor and its distance step as one matmul.

use candle_core::{DType, Device, IndexOp, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::sampling::normal_vec;

/// K-means settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KmeansConfig {
    /// Clusters.
    pub k: usize,
    /// Points sampled for the projected phase.
    pub pool: usize,
    /// Random projection dimension.
    pub proj_dim: usize,
    /// Restarts of the projected phase.
    pub restarts: usize,
    /// Lloyd iterations per restart.
    pub iters: usize,
    /// Lloyd iterations on all data in the full space.
    pub refine_iters: usize,
    /// Seed.
    pub seed: u64,
}

impl KmeansConfig {
    /// Defaults for `k` clusters.
    pub fn for_k(k: usize, seed: u64) -> Self {
        Self {
            k,
            pool: 50_000,
            proj_dim: 32,
            restarts: 3,
            iters: 25,
            refine_iters: 5,
            seed,
        }
    }
}

/// Indices of a uniform sample of `m` out of `n` items (Algorithm R), sorted.
pub fn reservoir(n: usize, m: usize, rng: &mut StdRng) -> Vec<usize> {
    let mut res: Vec<usize> = (0..n.min(m)).collect();
    for i in m..n {
        let j = rng.random_range(0..=i);
        if j < m {
            res[j] = i;
        }
    }
    res.sort_unstable();
    res
}

fn sqdist(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Lloyd's algorithm on row-major points (n × d) from k-means++ seeds; returns centroids,
/// assignments and inertia.
fn lloyd(
    pts: &[f32],
    d: usize,
    k: usize,
    iters: usize,
    rng: &mut StdRng,
) -> (Vec<f32>, Vec<usize>, f32) {
    let n = pts.len() / d;
    let row = |i: usize| &pts[i * d..(i + 1) * d];
    // k-means++ seeding.
    let mut cents: Vec<f32> = Vec::with_capacity(k * d);
    cents.extend_from_slice(row(rng.random_range(0..n)));
    let mut best: Vec<f32> = (0..n).map(|i| sqdist(row(i), &cents[0..d])).collect();
    for c in 1..k {
        let total: f32 = best.iter().sum();
        let pick = if total > 0.0 {
            let mut t = rng.random::<f32>() * total;
            let mut idx = n - 1;
            for (i, b) in best.iter().enumerate() {
                t -= b;
                if t <= 0.0 {
                    idx = i;
                    break;
                }
            }
            idx
        } else {
            rng.random_range(0..n)
        };
        cents.extend_from_slice(row(pick));
        let new = &cents[c * d..(c + 1) * d];
        for (i, b) in best.iter_mut().enumerate() {
            *b = b.min(sqdist(row(i), new));
        }
    }
    let mut assign = vec![0usize; n];
    let mut inertia = 0.0;
    for _ in 0..iters.max(1) {
        inertia = 0.0;
        let mut dist = vec![0f32; n];
        for i in 0..n {
            let (mut bi, mut bd) = (0, f32::INFINITY);
            for c in 0..k {
                let dd = sqdist(row(i), &cents[c * d..(c + 1) * d]);
                if dd < bd {
                    (bi, bd) = (c, dd);
                }
            }
            assign[i] = bi;
            dist[i] = bd;
            inertia += bd;
        }
        let mut sums = vec![0f32; k * d];
        let mut counts = vec![0usize; k];
        for i in 0..n {
            counts[assign[i]] += 1;
            for (s, x) in sums[assign[i] * d..(assign[i] + 1) * d]
                .iter_mut()
                .zip(row(i))
            {
                *s += x;
            }
        }
        for c in 0..k {
            if counts[c] == 0 {
                // Reseed an empty cluster with the worst-served point.
                let far = (0..n)
                    .max_by(|a, b| dist[*a].total_cmp(&dist[*b]))
                    .unwrap_or(0);
                cents[c * d..(c + 1) * d].copy_from_slice(row(far));
                dist[far] = 0.0;
            } else {
                let inv = 1.0 / counts[c] as f32;
                for (cv, s) in cents[c * d..(c + 1) * d]
                    .iter_mut()
                    .zip(&sums[c * d..(c + 1) * d])
                {
                    *cv = s * inv;
                }
            }
        }
    }
    (cents, assign, inertia)
}

/// Nearest centroid of every row of `x` (N, D) among `c` (K, D), in batches; with squared distances.
pub fn assign(x: &Tensor, c: &Tensor) -> Result<(Vec<u32>, Vec<f32>)> {
    let n = x.dim(0)?;
    let c2 = c.sqr()?.sum(1)?.unsqueeze(0)?;
    let mut ids = Vec::with_capacity(n);
    let mut dists = Vec::with_capacity(n);
    let step = 4096;
    for s in (0..n).step_by(step) {
        let xb = x.i(s..(s + step).min(n))?;
        let x2 = xb.sqr()?.sum_keepdim(1)?;
        let dd = x2
            .broadcast_add(&c2)?
            .broadcast_sub(&(xb.matmul(&c.t()?)? * 2.0)?)?;
        ids.extend(dd.argmin(1)?.to_vec1::<u32>()?);
        dists.extend(dd.min(1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
    }
    Ok((ids, dists))
}

/// Means of the rows of `x` per assigned cluster; empty clusters take the farthest points.
fn means(x: &Tensor, ids: &[u32], dists: &mut [f32], k: usize) -> Result<Tensor> {
    let (n, d) = x.dims2()?;
    let idx = Tensor::from_vec(ids.to_vec(), n, x.device())?;
    let zeros = Tensor::zeros((k, d), x.dtype(), x.device())?;
    let sums = zeros.index_add(&idx, x, 0)?;
    let mut counts = vec![0f32; k];
    for i in ids {
        counts[*i as usize] += 1.0;
    }
    let cnt = Tensor::from_vec(
        counts.iter().map(|c| c.max(1.0)).collect::<Vec<_>>(),
        (k, 1),
        x.device(),
    )?
    .to_dtype(x.dtype())?;
    let mut c = sums.broadcast_div(&cnt)?;
    for (ci, cnt) in counts.iter().enumerate() {
        if *cnt == 0.0 {
            let far = (0..n)
                .max_by(|a, b| dists[*a].total_cmp(&dists[*b]))
                .unwrap_or(0);
            dists[far] = 0.0;
            c = c.slice_assign(&[ci..ci + 1, 0..d], &x.i(far..far + 1)?)?;
        }
    }
    Ok(c)
}

/// K-means centroids (K, D) of the rows of `x`, with progress `(stage, fraction)` and cancel.
pub fn kmeans(
    x: &Tensor,
    cfg: &KmeansConfig,
    progress: &mut dyn FnMut(&str, f32) -> bool,
) -> Result<Tensor> {
    let (n, d) = x.dims2()?;
    if cfg.k == 0 || n < cfg.k {
        return Err(EngineError::Invalid(format!(
            "k-means needs at least as many points ({n}) as clusters ({}) and at least one cluster",
            cfg.k
        )));
    }
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    let pool = reservoir(n, cfg.pool.max(cfg.k), &mut rng);
    let pool_t = x.index_select(
        &Tensor::from_vec(
            pool.iter()
                .map(|i| u32::try_from(*i).unwrap_or(0))
                .collect::<Vec<_>>(),
            pool.len(),
            x.device(),
        )?,
        0,
    )?;
    let scale = 1.0 / (cfg.proj_dim as f32).sqrt();
    let proj = normal_vec(&mut rng, d * cfg.proj_dim, scale);
    let proj = Tensor::from_vec(proj, (d, cfg.proj_dim), x.device())?.to_dtype(x.dtype())?;
    let pts: Vec<f32> = pool_t
        .matmul(&proj)?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    let mut best: Option<(Vec<usize>, f32)> = None;
    for r in 0..cfg.restarts.max(1) {
        let f = r as f32 / (cfg.restarts.max(1) + cfg.refine_iters) as f32;
        if !progress(
            &format!("k-means restart {}/{}", r + 1, cfg.restarts.max(1)),
            f,
        ) {
            return Err(EngineError::Cancelled);
        }
        let (_, assign_p, inertia) = lloyd(&pts, cfg.proj_dim, cfg.k, cfg.iters, &mut rng);
        if best.as_ref().is_none_or(|b| inertia < b.1) {
            best = Some((assign_p, inertia));
        }
    }
    let Some((assign_p, _)) = best else {
        return Err(EngineError::Invalid("k-means found no solution".into()));
    };
    // Lift to the full space: means of the pool points per projected cluster.
    let ids: Vec<u32> = assign_p
        .iter()
        .map(|a| u32::try_from(*a).unwrap_or(0))
        .collect();
    let mut dists = vec![0f32; pool.len()];
    let mut c = means(&pool_t, &ids, &mut dists, cfg.k)?;
    for it in 0..cfg.refine_iters {
        let f = (cfg.restarts.max(1) + it) as f32 / (cfg.restarts.max(1) + cfg.refine_iters) as f32;
        if !progress(
            &format!("k-means refinement {}/{}", it + 1, cfg.refine_iters),
            f,
        ) {
            return Err(EngineError::Cancelled);
        }
        let (ids, mut dists) = assign(x, &c)?;
        c = means(x, &ids, &mut dists, cfg.k)?;
    }
    Ok(c)
}

/// `k` distinct random data points as centroids.
pub fn random_points(x: &Tensor, k: usize, seed: u64) -> Result<Tensor> {
    let n = x.dim(0)?;
    if n < k {
        return Err(EngineError::Invalid(format!(
            "{k} components need at least {k} points, got {n}"
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let idx = reservoir(n, k, &mut rng);
    let idx: Vec<u32> = idx.iter().map(|i| u32::try_from(*i).unwrap_or(0)).collect();
    Ok(x.index_select(&Tensor::from_vec(idx, k, x.device())?, 0)?)
}

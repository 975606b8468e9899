//! t-SNE of a set of vectors with the `bhtsne` crate: its FFT-interpolated gradient (FIt-SNE,
//! linear in the number of points, so the whole 49k vocabulary fits), or Barnes-Hut for a few
//! thousand points or fewer. The neighbour graph comes
//! from our exact cosine search (a matmul; the crate's vantage-point tree is slow in 576
//! dimensions), the start from the PCA coordinates (deterministic, preserves global layout).

use candle_core::Tensor;

use super::neighbors::CosineIndex;
use super::pca::Pca;
use crate::error::{EngineError, Result};
pub use neoscope_api::embed::TsneConfig;

/// Up to this many points, Barnes-Hut; above, FIt-SNE.
const BARNES_HUT_MAX: usize = 2_000;

/// Panic payload used to leave the crate's epoch loop when the user cancels (the crate's
/// callback cannot stop the loop; `resume_unwind` skips the panic hook, so nothing is printed).
struct Stop;

/// 2-D t-SNE coordinates of the rows of `x` (n, d). `progress(stage, fraction)` is called
/// during the neighbour search and every few epochs; returning false cancels.
pub fn tsne(
    x: &Tensor,
    cfg: &TsneConfig,
    progress: &mut dyn FnMut(&str, f32) -> bool,
) -> Result<Vec<[f32; 2]>> {
    let n = x.dims2()?.0;
    let max_perp = (n as f32 - 1.0) / 3.0;
    if n < 4 || cfg.perplexity <= 0.0 || cfg.perplexity > max_perp {
        return Err(EngineError::Invalid(format!(
            "t-SNE of {n} points needs 0 < perplexity ≤ {max_perp:.1} (got {})",
            cfg.perplexity
        )));
    }
    let k = ((3.0 * cfg.perplexity) as usize).clamp(1, n - 1);
    let index = CosineIndex::new(x)?;
    let found = index
        .search(x, k, true, &mut |f| progress("neighbours", f))?
        .ok_or(EngineError::Cancelled)?;
    let neighbors: Vec<Vec<bhtsne::Neighbor<f32>>> = found
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|(j, c)| bhtsne::Neighbor {
                    index: j,
                    // Euclidean distance between unit vectors: a metric, monotone in cosine.
                    distance: (2.0 - 2.0 * c).max(0.0).sqrt(),
                })
                .collect()
        })
        .collect();
    // PCA start scaled to standard deviation 1e-4 in the first coordinate, as openTSNE does.
    let pca = Pca::fit(x)?;
    let start = pca.project(x, 2)?;
    let scale = 1e-4 / pca.variances[0].sqrt().max(1e-12) as f32;
    let init: Vec<f32> = start
        .iter()
        .flat_map(|r| [r[0] * scale, r[1] * scale])
        .collect();
    let points: Vec<usize> = (0..n).collect();
    let epochs = cfg.epochs;
    let mut cancelled = false;
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut t: bhtsne::tSNE<f32, usize> = bhtsne::tSNE::new(&points);
        t.perplexity(cfg.perplexity)
            .epochs(epochs)
            .initial_embedding(init)
            .epoch_callback(|e, _| {
                let f = (e + 1) as f32 / epochs.max(1) as f32;
                if (e % 10 == 0 || e + 1 == epochs) && !progress("t-SNE", f) {
                    cancelled = true;
                    std::panic::resume_unwind(Box::new(Stop));
                }
            });
        // FIt-SNE's interpolation grid has a fixed cost per epoch that dominates for a few
        // thousand points or fewer; Barnes-Hut (θ 0.5) is faster there.
        if n <= BARNES_HUT_MAX {
            t.barnes_hut_with_neighbors(0.5, &neighbors);
        } else {
            t.fit_sne_with_neighbors(&neighbors);
        }
        t.embedding()
    }));
    match run {
        Ok(flat) => Ok(flat.chunks(2).map(|c| [c[0], c[1]]).collect()),
        Err(_) if cancelled => Err(EngineError::Cancelled),
        Err(_) => Err(EngineError::Invalid(
            "t-SNE failed inside the bhtsne crate".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn separates_clusters_and_cancels() {
        // Three tight clusters in 10-d around orthogonal directions: t-SNE must keep each
        // cluster's points closer to each other than to any other cluster's.
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (per, d) = (40usize, 10usize);
        let mut data = Vec::new();
        for c in 0..3 {
            for _ in 0..per {
                let noise = crate::sampling::normal_vec(&mut rng, d, 0.05);
                for (j, z) in noise.iter().enumerate() {
                    data.push(if j == c { 1.0 } else { 0.0 } + z);
                }
            }
        }
        let x = Tensor::from_vec(data, (3 * per, d), &Device::Cpu).unwrap();
        let cfg = TsneConfig {
            perplexity: 10.0,
            epochs: 300,
        };
        let y = tsne(&x, &cfg, &mut |_, _| true).unwrap();
        let centre = |c: usize| {
            let pts = &y[c * per..(c + 1) * per];
            let n = per as f32;
            [
                pts.iter().map(|p| p[0]).sum::<f32>() / n,
                pts.iter().map(|p| p[1]).sum::<f32>() / n,
            ]
        };
        let cs: Vec<[f32; 2]> = (0..3).map(centre).collect();
        for (i, p) in y.iter().enumerate() {
            let dist = |c: &[f32; 2]| (p[0] - c[0]).hypot(p[1] - c[1]);
            let own = i / per;
            for (c, cc) in cs.iter().enumerate() {
                if c != own {
                    assert!(dist(&cs[own]) < dist(cc), "point {i} closer to cluster {c}");
                }
            }
        }
        // A real 2-D layout, not points on a line.
        let n = y.len() as f32;
        let (mx, my) = (
            y.iter().map(|p| p[0]).sum::<f32>() / n,
            y.iter().map(|p| p[1]).sum::<f32>() / n,
        );
        let (mut sxy, mut sxx, mut syy) = (0f32, 0f32, 0f32);
        for p in &y {
            sxy += (p[0] - mx) * (p[1] - my);
            sxx += (p[0] - mx).powi(2);
            syy += (p[1] - my).powi(2);
        }
        let corr = sxy / (sxx * syy).sqrt();
        assert!(
            corr.abs() < 0.99,
            "the layout is a line (correlation {corr})"
        );
        let mut calls = 0;
        let r = tsne(&x, &cfg, &mut |stage, _| {
            calls += 1;
            stage != "t-SNE" || calls < 5
        });
        assert!(matches!(r, Err(EngineError::Cancelled)));
        assert!(
            tsne(
                &x,
                &TsneConfig {
                    perplexity: 60.0,
                    epochs: 10
                },
                &mut |_, _| true
            )
            .is_err()
        );
    }
}

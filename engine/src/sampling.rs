//! Next-token distributions: top-k tables and sampling (greedy, temperature, top-p), seeded.

pub use neoscope_api::text::{Sampling, TokenScore};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Softmax of a logit row, in f64 for accuracy.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|l| f64::from(l - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|e| (e / sum) as f32).collect()
}

/// Indices of the `k` largest values, largest first; ties go to the lower index.
pub fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let cmp = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(a.cmp(b));
    let k = k.min(idx.len());
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, cmp);
        idx.truncate(k);
    }
    idx.sort_by(cmp);
    idx.truncate(k);
    idx
}

/// The arg-max, lowest id on ties.
pub fn argmax(values: &[f32]) -> u32 {
    let i = top_indices(values, 1).first().copied().unwrap_or(0);
    u32::try_from(i).unwrap_or(0)
}

/// `n` normal samples with standard deviation `std` (Box–Muller on the generator's uniform
/// draws; `rand` itself has no normal distribution without `rand_distr`).
pub fn normal_vec(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random::<f32>().max(1e-7);
            let u2: f32 = rng.random::<f32>();
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

/// A stateful sampler.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: Sampling,
    rng: StdRng,
}

impl Sampler {
    /// A sampler seeded from `cfg.seed`.
    pub fn new(cfg: Sampling) -> Self {
        Self {
            cfg,
            rng: StdRng::seed_from_u64(cfg.seed),
        }
    }

    /// Picks the next token from a logit row.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.cfg.is_greedy() {
            return argmax(logits);
        }
        let t = self.cfg.temperature;
        let scaled: Vec<f32> = logits.iter().map(|l| l / t).collect();
        let probs = softmax(&scaled);
        let order = top_indices(&probs, probs.len());
        let mut kept = Vec::new();
        let mut mass = 0.0f32;
        for i in order {
            kept.push(i);
            mass += probs[i];
            if mass >= self.cfg.top_p {
                break;
            }
        }
        let total: f32 = kept.iter().map(|i| probs[*i]).sum();
        let mut u: f32 = self.rng.random::<f32>() * total;
        for i in &kept {
            u -= probs[*i];
            if u <= 0.0 {
                return u32::try_from(*i).unwrap_or(0);
            }
        }
        kept.last()
            .and_then(|i| u32::try_from(*i).ok())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_breaks_ties_by_id() {
        assert_eq!(top_indices(&[1.0, 3.0, 3.0, 2.0], 3), vec![1, 2, 3]);
        assert_eq!(argmax(&[5.0, 5.0]), 0);
    }

    #[test]
    fn softmax_sums_to_one() {
        let p = softmax(&[1.0, 2.0, 3.0]);
        // numpy: np.exp([1,2,3]) / np.exp([1,2,3]).sum() = [0.09003057, 0.24472847, 0.66524096]
        assert!((p[0] - 0.090_030_57).abs() < 1e-6 && (p[2] - 0.665_240_96).abs() < 1e-6);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_respects_top_p() {
        let logits = [2.0, 1.9, -5.0, -6.0];
        let cfg = Sampling {
            temperature: 1.0,
            top_p: 0.9,
            seed: 7,
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(cfg);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(cfg);
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        assert!(
            a.iter().all(|t| *t < 2),
            "top-p keeps only the two likely tokens"
        );
        assert!(a.contains(&0) && a.contains(&1));
    }
}

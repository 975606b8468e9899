//! What each Gaussian means: sizes by hard assignment, most common tokens, contexts drawn from
//! the top ones by likelihood or responsibility, a coherence measure against chance, and
//! subspace coordinates (least squares on the unit loading columns).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use candle_core::{DType, IndexOp, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use serde::{Deserialize, Serialize};

use super::activations::Activations;
use super::linalg::spd_inverse_logdet;
use super::model::Mfa;
use crate::error::{EngineError, Result};
use crate::tokenizer::ModelTokenizer;
pub use neoscope_api::mfa::{ComponentInfo, Context, ContextSample};

/// Rows per scoring batch.
const BATCH: usize = 1024;

/// A scored row.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    /// Row of the activation set.
    pub row: usize,
    /// Its score (log-likelihood or responsibility).
    pub score: f32,
}

/// Per-component results of scanning all activations once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scan {
    /// Hard assignment of every row.
    pub assign: Vec<u32>,
    /// Top rows per component by component log-likelihood, best first.
    pub by_likelihood: Vec<Vec<Scored>>,
    /// Top rows per component by responsibility, best first.
    pub by_responsibility: Vec<Vec<Scored>>,
    /// How many rows per component were kept.
    pub pool: usize,
}

/// A heap entry ordered so that the lowest score is on top (the one to drop).
#[derive(Clone, Copy)]
struct Lowest(Scored);

impl PartialEq for Lowest {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Lowest {}
impl PartialOrd for Lowest {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Lowest {
    fn cmp(&self, o: &Self) -> Ordering {
        o.0.score
            .total_cmp(&self.0.score)
            .then(self.0.row.cmp(&o.0.row))
    }
}

fn push_top(heap: &mut BinaryHeap<Lowest>, s: Scored, n: usize) {
    if heap.len() < n {
        heap.push(Lowest(s));
    } else if let Some(min) = heap.peek()
        && s.score > min.0.score
    {
        heap.pop();
        heap.push(Lowest(s));
    }
}

/// Scores every row under every component, keeping the top `n` per component.
pub fn scan(mfa: &Mfa, x: &Tensor, n: usize, cancel: &dyn Fn() -> bool) -> Result<Scan> {
    let der = mfa.derive()?;
    let (rows, _) = x.dims2()?;
    let k = mfa.dims()?.0;
    let log_pi: Vec<f32> = der.log_pi.to_dtype(DType::F32)?.to_vec1()?;
    let mut assign = Vec::with_capacity(rows);
    let mut by_l = vec![BinaryHeap::with_capacity(n.min(rows)); k];
    let mut by_r = by_l.clone();
    for s in (0..rows).step_by(BATCH) {
        if cancel() {
            return Err(EngineError::Cancelled);
        }
        let f = der.forward(&x.i(s..(s + BATCH).min(rows))?)?;
        let joint: Vec<Vec<f32>> = f.joint.to_dtype(DType::F32)?.to_vec2()?;
        let logp: Vec<f32> = f.logp.to_dtype(DType::F32)?.to_vec1()?;
        for (j, (row, lp)) in joint.iter().zip(&logp).enumerate() {
            let r = s + j;
            let best = row
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i);
            assign.push(u32::try_from(best).unwrap_or(0));
            for c in 0..k {
                let ll = row[c] - log_pi[c];
                push_top(&mut by_l[c], Scored { row: r, score: ll }, n);
                push_top(
                    &mut by_r[c],
                    Scored {
                        row: r,
                        score: (row[c] - lp).exp(),
                    },
                    n,
                );
            }
        }
    }
    // Ascending in `Lowest`'s order is best first.
    let sorted = |v: Vec<BinaryHeap<Lowest>>| -> Vec<Vec<Scored>> {
        v.into_iter()
            .map(|h| h.into_sorted_vec().into_iter().map(|l| l.0).collect())
            .collect()
    };
    Ok(Scan {
        assign,
        by_likelihood: sorted(by_l),
        by_responsibility: sorted(by_r),
        pool: n,
    })
}

fn counts(ids: impl Iterator<Item = u32>, tok: &ModelTokenizer, n: usize) -> Vec<(String, usize)> {
    let mut c: HashMap<u32, usize> = HashMap::new();
    for i in ids {
        *c.entry(i).or_default() += 1;
    }
    let mut v: Vec<(u32, usize)> = c.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.into_iter()
        .take(n)
        .map(|(i, c)| (tok.piece(i), c))
        .collect()
}

/// `how.n` of the first `how.pool` rows of `top` (best first), drawn without repeats with a seed
/// of its own per component and list, kept in best-first order.
pub fn draw(top: &[Scored], how: &ContextSample, salt: u64) -> Vec<Scored> {
    let pool = &top[..top.len().min(how.pool)];
    let n = how.n.min(pool.len());
    let mut rng = StdRng::seed_from_u64(how.seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut picked = sample(&mut rng, pool.len(), n).into_vec();
    picked.sort_unstable();
    picked.into_iter().map(|i| pool[i]).collect()
}

/// Describes every component: sizes, common tokens and contexts each way, drawn as `how` says
/// from the scan's top rows.
pub fn components(
    mfa: &Mfa,
    acts: &Activations,
    scan: &Scan,
    tok: &ModelTokenizer,
    how: &ContextSample,
) -> Result<Vec<ComponentInfo>> {
    let k = mfa.dims()?.0;
    let pi: Vec<f32> = candle_nn::ops::softmax(mfa.logits.as_tensor(), 0)?
        .to_dtype(DType::F32)?
        .to_vec1()?;
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); k];
    for (r, a) in scan.assign.iter().enumerate() {
        members[*a as usize].push(r);
    }
    let ctx = |s: &Scored| Context {
        row: s.row,
        before: tok
            .decode(
                acts.context(s.row, 12)
                    .split_last()
                    .map_or(&[][..], |(_, before)| before),
            )
            .unwrap_or_default(),
        token: tok.piece(acts.token(s.row)),
        after: acts
            .next_token(s.row)
            .map(|t| tok.piece(t))
            .unwrap_or_default(),
        score: s.score,
    };
    Ok((0..k)
        .map(|c| ComponentInfo {
            index: c,
            size: members[c].len(),
            weight: pi[c],
            top_tokens: counts(members[c].iter().map(|r| acts.token(*r)), tok, 8),
            top_next: counts(
                members[c].iter().filter_map(|r| acts.next_token(*r)),
                tok,
                8,
            ),
            by_likelihood: draw(&scan.by_likelihood[c], how, 2 * c as u64)
                .iter()
                .map(ctx)
                .collect(),
            by_responsibility: draw(&scan.by_responsibility[c], how, 2 * c as u64 + 1)
                .iter()
                .map(ctx)
                .collect(),
        })
        .collect())
}

/// Share of the most common token among `rows`.
fn purity(rows: &[usize], acts: &Activations) -> f64 {
    let mut c: HashMap<u32, usize> = HashMap::new();
    for r in rows {
        *c.entry(acts.token(*r)).or_default() += 1;
    }
    c.values().max().copied().unwrap_or(0) as f64 / rows.len().max(1) as f64
}

/// Coherence: mean over components of the share of the most common token among their top `n`
/// contexts by likelihood, and the same statistic for `n` rows drawn at random (chance).
pub fn coherence(scan: &Scan, acts: &Activations, n: usize, seed: u64) -> (f64, f64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut obs, mut chance, mut count) = (0.0, 0.0, 0usize);
    for top in &scan.by_likelihood {
        if top.len() < n {
            continue;
        }
        let rows: Vec<usize> = top.iter().take(n).map(|s| s.row).collect();
        obs += purity(&rows, acts);
        let rand_rows = sample(&mut rng, acts.len(), n).into_vec();
        chance += purity(&rand_rows, acts);
        count += 1;
    }
    let c = count.max(1) as f64;
    (obs / c, chance / c)
}

/// Coordinates of rows in component `k`'s subspace: z = (UᵀU)⁻¹Uᵀ(x − μ_k) on the unit loading
/// columns U.
pub fn subspace_coords(mfa: &Mfa, k: usize, x: &Tensor) -> Result<Vec<Vec<f32>>> {
    let der = mfa.derive()?;
    let (kk, _, r) = mfa.dims()?;
    if k >= kk {
        return Err(EngineError::Invalid(format!(
            "component {k} does not exist (K = {kk})"
        )));
    }
    let u = der.unit.i(k)?; // (D, R)
    let gram: Vec<f64> = u
        .t()?
        .matmul(&u)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    let (ginv, _) = spd_inverse_logdet(&gram, r)?;
    let ginv = Tensor::from_vec(ginv, (r, r), x.device())?.to_dtype(x.dtype())?;
    let d = x.broadcast_sub(&mfa.mu.as_tensor().i(k)?.unsqueeze(0)?)?;
    let z = d.matmul(&u)?.matmul(&ginv)?;
    Ok(z.to_dtype(DType::F32)?.to_vec2()?)
}

//! Lenses: what each layer would predict. For every layer's residual stream (`resid_post`) and
//! position, the raw lens (unembedding alone), the logit lens (final norm, then unembedding) or a
//! tuned lens (a per-layer affine translator first) gives a distribution over the vocabulary;
//! from it come top-k tokens, entropy, KL divergence to the model's final distribution, and the
//! probability, log-probability and rank of chosen target tokens.

use candle_core::{IndexOp, Tensor};

use crate::error::{EngineError, Result};
use crate::hooks::{HookPoint, HookSpec};
use crate::model::{Batch, LoadedModel, PadSide};
use crate::tuned::TunedLens;
pub use neoscope_api::lens::{LensCell, LensKind, LensResult, Target, TargetStat, TokenProb};
use rayon::prelude::*;

mod device;

/// Resolves target texts to tokens: the first token of each, with a note if there are more.
pub fn resolve_targets(m: &LoadedModel, texts: &[String]) -> Result<Vec<Target>> {
    texts
        .iter()
        .map(|t| {
            let ids = m.tokenizer.encode(t)?;
            let id = *ids
                .first()
                .ok_or_else(|| EngineError::Invalid(format!("target `{t}` has no tokens")))?;
            let token = m.tokenizer.piece(id);
            let note = (ids.len() > 1).then(|| {
                format!(
                    "`{t}` is {} tokens; the lens follows its first token {token:?}",
                    ids.len()
                )
            });
            Ok(Target {
                text: t.clone(),
                id,
                token,
                note,
            })
        })
        .collect()
}

/// Distribution statistics of one layer's log-probabilities (T, V) against the final ones.
/// Per-position facts about the final distribution, for KL(final ‖ lens) in one pass:
/// KL = Σ pf·log pf − Σ pf·x + lse(x) for lens logits x.
struct FinalDist {
    /// Final probabilities, one row per position.
    pf: Vec<Vec<f32>>,
    /// Σ pf·log pf per position.
    neg_entropy: Vec<f64>,
}

impl FinalDist {
    fn new(final_logits: &[Vec<f32>]) -> Self {
        let (pf, neg_entropy) = final_logits
            .iter()
            .map(|x| {
                let lse = log_sum_exp(x);
                let p: Vec<f32> = x
                    .iter()
                    .map(|v| (f64::from(*v) - lse).exp() as f32)
                    .collect();
                let ne: f64 = x
                    .iter()
                    .zip(&p)
                    .map(|(v, q)| f64::from(*q) * (f64::from(*v) - lse))
                    .sum();
                (p, ne)
            })
            .unzip();
        Self { pf, neg_entropy }
    }
}

fn log_sum_exp(x: &[f32]) -> f64 {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s: f64 = x.iter().map(|v| f64::from(v - m).exp()).sum();
    f64::from(m) + s.ln()
}

/// One lens cell from a row of logits: log-sum-exp, entropy, KL to the final distribution, top-k
/// and target statistics, in two passes over the vocabulary without building probability rows.
/// Written out by hand because a tensor version made ~15 full passes per row and dominated the
/// lens's time.
fn cell(
    m: &LoadedModel,
    x: &[f32],
    fin: &FinalDist,
    pos: usize,
    targets: &[Target],
    top_k: usize,
) -> LensCell {
    let mx = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let pf = &fin.pf[pos];
    let (mut s, mut sx, mut dot) = (0f64, 0f64, 0f64);
    // Top-k by logit (the softmax is monotone); ties keep the lower id.
    let mut top: Vec<(f32, usize)> = Vec::with_capacity(top_k + 1);
    for (i, (v, q)) in x.iter().zip(pf).enumerate() {
        let e = f64::from(v - mx).exp();
        s += e;
        sx += e * f64::from(*v);
        dot += f64::from(*q) * f64::from(*v);
        if top_k > 0 && (top.len() < top_k || *v > top[top.len() - 1].0) {
            let at = top.partition_point(|(tv, _)| *tv >= *v);
            top.insert(at, (*v, i));
            top.truncate(top_k);
        }
    }
    let lse = f64::from(mx) + s.ln();
    let prob = |v: f32| (f64::from(v) - lse).exp() as f32;
    LensCell {
        top: top
            .into_iter()
            .map(|(v, i)| {
                let id = u32::try_from(i).unwrap_or(0);
                TokenProb {
                    id,
                    text: m.tokenizer.piece(id),
                    prob: prob(v),
                }
            })
            .collect(),
        entropy: (lse - sx / s) as f32,
        kl_to_final: ((fin.neg_entropy[pos] - dot + lse) as f32).max(0.0),
        targets: targets
            .iter()
            .map(|tg| {
                let xt = x.get(tg.id as usize).copied().unwrap_or(f32::NEG_INFINITY);
                TargetStat {
                    prob: prob(xt),
                    logprob: (f64::from(xt) - lse) as f32,
                    rank: x.iter().filter(|v| **v > xt).count(),
                }
            })
            .collect(),
    }
}

/// What to compute.
#[derive(Debug, Clone, Copy)]
pub struct LensSpec<'a> {
    /// Which lens.
    pub kind: LensKind,
    /// The tuned lens, for `LensKind::Tuned`.
    pub tuned: Option<&'a TunedLens>,
    /// Targets to follow.
    pub targets: &'a [Target],
    /// Top-k per cell.
    pub top_k: usize,
}

/// Runs the lens on one prompt: `ids` and `hooks` as prepared for the model (new words and
/// interventions included), `pieces` the token texts to report.
pub fn run(
    m: &LoadedModel,
    ids: &[u32],
    pieces: Vec<String>,
    hooks: &HookSpec,
    spec_: &LensSpec<'_>,
) -> Result<LensResult> {
    let on_device = !m.llama.device().is_cpu();
    run_with(m, ids, pieces, hooks, spec_, on_device)
}

/// `run`, with the per-cell reductions done by tensor ops where the logits are
/// (`reduce_on_device`) or by the hand-written host pass.
fn run_with(
    m: &LoadedModel,
    ids: &[u32],
    pieces: Vec<String>,
    hooks: &HookSpec,
    spec_: &LensSpec<'_>,
    reduce_on_device: bool,
) -> Result<LensResult> {
    let LensSpec {
        kind,
        tuned,
        targets,
        top_k,
    } = *spec_;
    let n = m.llama.cfg.num_hidden_layers;
    let tuned = match (kind, tuned) {
        (LensKind::Tuned, None) => {
            return Err(EngineError::Invalid(
                "no tuned lens is loaded: train one or load a tuned-lens file".into(),
            ));
        }
        (LensKind::Tuned, Some(t)) => Some(t),
        _ => None,
    };
    let batch = Batch::new(&[ids.to_vec()], PadSide::Right, m.llama.device())?;
    let mut spec = hooks.clone();
    spec.capture = (0..n).map(HookPoint::ResidPost).collect();
    let out = m.llama.forward(&batch, &spec, None)?;
    // The CPU reads rows in one hand-written pass; a GPU reduces them where they are.
    enum Final {
        Host(FinalDist),
        Device(device::FinalOnDevice),
    }
    let fin = if !reduce_on_device {
        Final::Host(FinalDist::new(&out.logits.i(0)?.to_vec2::<f32>()?))
    } else {
        Final::Device(device::FinalOnDevice::new(&out.logits.i(0)?)?)
    };
    let t = ids.len();
    // Several layers share one projection matmul; chunks bound the logits held at once
    // (about 512 rows × the vocabulary).
    let per_chunk = (512 / t.max(1)).max(1);
    let mut cells = Vec::with_capacity(n);
    for first in (0..n).step_by(per_chunk) {
        let layers: Vec<usize> = (first..(first + per_chunk).min(n)).collect();
        let hs = layers
            .iter()
            .map(|l| {
                let h = out.captures[&HookPoint::ResidPost(*l)].i(0)?;
                match kind {
                    LensKind::Tuned => {
                        let tl =
                            tuned.ok_or_else(|| EngineError::Invalid("no tuned lens".into()))?;
                        tl.translate(*l, &h)
                    }
                    LensKind::Raw | LensKind::Logit => Ok(h),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let h = Tensor::cat(&hs, 0)?;
        let logits = match kind {
            LensKind::Raw => m.llama.logits(&h)?,
            LensKind::Logit | LensKind::Tuned => m.llama.project(&h)?,
        };
        let mut chunk: Vec<LensCell> = match &fin {
            Final::Host(fin) => logits
                .to_vec2::<f32>()?
                .par_iter()
                .enumerate()
                .map(|(r, x)| cell(m, x, fin, r % t, targets, top_k))
                .collect(),
            Final::Device(fin) => device::cells(m, &logits, fin, t, targets, top_k)?,
        };
        for _ in &layers {
            let rest = chunk.split_off(t);
            cells.push(chunk);
            chunk = rest;
        }
    }
    // NaN or infinite logits make every statistic meaningless (a NaN KL even clamps to 0 and
    // would look perfect): report where, instead of numbers.
    for (l, row) in cells.iter().enumerate() {
        if let Some(p) = row
            .iter()
            .position(|c| !(c.entropy.is_finite() && c.kl_to_final.is_finite()))
        {
            return Err(EngineError::Invalid(format!(
                "the lens met non-finite logits (NaN or infinity) at layer {l}, position {p}: \
                 the model's weights or an intervention produce them"
            )));
        }
    }
    Ok(LensResult {
        lens: kind,
        tokens: pieces,
        targets: targets.to_vec(),
        cells,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The GPU's tensor reductions, run here on the CPU, against the hand-written host pass.
    #[test]
    fn device_reductions_equal_the_host_pass() -> Result<()> {
        let m = crate::tiny::tiny_model(7, &Device::Cpu)?;
        let ids = m.tokenizer.encode("the cat and the hat sat")?;
        let pieces: Vec<String> = ids.iter().map(|i| m.tokenizer.piece(*i)).collect();
        let targets = resolve_targets(&m, &[" the".to_owned(), " cat".to_owned()])?;
        for kind in [LensKind::Logit, LensKind::Raw] {
            let spec = LensSpec {
                kind,
                tuned: None,
                targets: &targets,
                top_k: 4,
            };
            let host = run_with(&m, &ids, pieces.clone(), &HookSpec::default(), &spec, false)?;
            let dev = run_with(&m, &ids, pieces.clone(), &HookSpec::default(), &spec, true)?;
            for (lh, ld) in host.cells.iter().zip(&dev.cells) {
                for (a, b) in lh.iter().zip(ld) {
                    let ids_a: Vec<u32> = a.top.iter().map(|t| t.id).collect();
                    let ids_b: Vec<u32> = b.top.iter().map(|t| t.id).collect();
                    assert_eq!(ids_a, ids_b);
                    for (x, y) in a.top.iter().zip(&b.top) {
                        assert!((x.prob - y.prob).abs() < 1e-5);
                    }
                    assert!((a.entropy - b.entropy).abs() < 1e-4, "{a:?} {b:?}");
                    assert!((a.kl_to_final - b.kl_to_final).abs() < 1e-4, "{a:?} {b:?}");
                    for (x, y) in a.targets.iter().zip(&b.targets) {
                        assert_eq!(x.rank, y.rank);
                        assert!((x.logprob - y.logprob).abs() < 1e-4);
                    }
                }
            }
        }
        Ok(())
    }
}

//! The lens's per-cell statistics computed where the logits are, on a GPU: only the top-k,
//! entropies, KL divergences and target statistics (a few numbers per cell) cross to the host,
//! never the rows × vocabulary logits. The CPU keeps the hand-written single pass in `mod.rs`.

use candle_core::{DType, Tensor};

use super::{LensCell, Target, TargetStat, TokenProb};
use crate::error::Result;
use crate::model::LoadedModel;
use crate::model::ops::log_softmax_last;

/// The final distribution, one row per position, kept on the device.
pub(super) struct FinalOnDevice {
    logp: Tensor,
    p: Tensor,
}

impl FinalOnDevice {
    /// From the final logits (T, V).
    pub(super) fn new(final_logits: &Tensor) -> Result<Self> {
        let logp = log_softmax_last(final_logits)?;
        Ok(Self {
            p: logp.exp()?,
            logp,
        })
    }
}

/// Cells for `logits` (layers·T, V), rows ordered layer by layer, `t` positions a layer.
pub(super) fn cells(
    m: &LoadedModel,
    logits: &Tensor,
    fin: &FinalOnDevice,
    t: usize,
    targets: &[Target],
    top_k: usize,
) -> Result<Vec<LensCell>> {
    let dev = logits.device();
    let (rows, v) = logits.dims2()?;
    let layers = rows / t.max(1);
    let logp = log_softmax_last(logits)?;
    let entropy = (logp.exp()? * &logp)?.sum(1)?.neg()?.to_vec1::<f32>()?;
    // KL(final ‖ lens) = Σ pf·(log pf − log p), each layer's rows against the final rows.
    let gap = fin
        .logp
        .unsqueeze(0)?
        .broadcast_sub(&logp.reshape((layers, t, v))?)?;
    let kl = fin
        .p
        .unsqueeze(0)?
        .broadcast_mul(&gap)?
        .sum(2)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    // Top-k: k rounds of a row argmax, each masking the token it found.
    let k = top_k.min(v);
    let (mut ids, mut lps) = (Vec::with_capacity(k), Vec::with_capacity(k));
    if k > 0 {
        let col = Tensor::arange(0u32, u32::try_from(v).unwrap_or(u32::MAX), dev)?.unsqueeze(0)?;
        let masked = Tensor::full(f32::NEG_INFINITY, (rows, v), dev)?;
        let mut x = logits.clone();
        for round in 0..k {
            let idx = x.argmax_keepdim(1)?;
            lps.push(logp.gather(&idx, 1)?);
            if round + 1 < k {
                x = col.broadcast_eq(&idx)?.where_cond(&masked, &x)?;
            }
            ids.push(idx);
        }
    }
    let top_ids: Vec<Vec<u32>> = if k > 0 {
        Tensor::cat(&ids, 1)?.to_vec2()?
    } else {
        vec![Vec::new(); rows]
    };
    let top_lp: Vec<Vec<f32>> = if k > 0 {
        Tensor::cat(&lps, 1)?.to_vec2()?
    } else {
        vec![Vec::new(); rows]
    };
    // Targets: log-probability and rank (how many logits are strictly larger). An id past the
    // unembedding has probability 0, as on the CPU.
    let mut target_stats: Vec<Vec<TargetStat>> = vec![Vec::with_capacity(targets.len()); rows];
    for tg in targets {
        let (lp, rank): (Vec<f32>, Vec<f32>) = if (tg.id as usize) < v {
            let id = Tensor::new(&[tg.id], dev)?;
            let xt = logits.index_select(&id, 1)?;
            let rank = logits.broadcast_gt(&xt)?.to_dtype(DType::F32)?.sum(1)?;
            (
                logp.index_select(&id, 1)?.flatten_all()?.to_vec1()?,
                rank.to_vec1()?,
            )
        } else {
            (vec![f32::NEG_INFINITY; rows], vec![v as f32; rows])
        };
        for (r, stats) in target_stats.iter_mut().enumerate() {
            stats.push(TargetStat {
                prob: lp[r].exp(),
                logprob: lp[r],
                rank: rank[r] as usize,
            });
        }
    }
    Ok(target_stats
        .into_iter()
        .enumerate()
        .map(|(r, targets)| LensCell {
            top: top_ids[r]
                .iter()
                .zip(&top_lp[r])
                .map(|(id, lp)| TokenProb {
                    id: *id,
                    text: m.tokenizer.piece(*id),
                    prob: lp.exp(),
                })
                .collect(),
            entropy: entropy[r],
            kl_to_final: kl[r].max(0.0),
            targets,
        })
        .collect())
}

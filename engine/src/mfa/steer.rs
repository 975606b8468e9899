//! Steering with an MFA component: centroid steering `(1−α)x + αμ_k`, and two-stage latent
//! steering `x + α(μ_k − x) + W_k z`, at the hook point the MFA was fitted at.

use candle_core::{DType, IndexOp};

use super::model::Mfa;
use crate::error::{EngineError, Result};
use crate::hooks::{HookPoint, HookSpec, Intervention, InterventionOp, Positions};
use crate::infer::{GenerateOptions, generate, last_logits};
use crate::model::LoadedModel;
use crate::sampling::Sampling;
use crate::words::analysis::LogitShift;
pub use neoscope_api::mfa::SteerReport;

/// The interventions for component `k` with weight `alpha` and latent offset `z` (empty: none).
pub fn interventions(
    mfa: &Mfa,
    point: HookPoint,
    k: usize,
    alpha: f32,
    z: &[f32],
    positions: Positions,
) -> Result<Vec<Intervention>> {
    let (kk, _, r) = mfa.dims()?;
    if k >= kk {
        return Err(EngineError::Invalid(format!(
            "component {k} does not exist (K = {kk})"
        )));
    }
    if !z.is_empty() && z.len() != r {
        return Err(EngineError::Invalid(format!(
            "the latent offset has {} values but the MFA has rank {r}",
            z.len()
        )));
    }
    let mu: Vec<f32> = mfa.mu.as_tensor().i(k)?.to_dtype(DType::F32)?.to_vec1()?;
    let mut out = vec![Intervention {
        point,
        positions: positions.clone(),
        op: InterventionOp::Interpolate { target: mu, alpha },
    }];
    if z.iter().any(|v| *v != 0.0) {
        let w = mfa.derive()?.w.i(k)?;
        let zt =
            candle_core::Tensor::from_vec(z.to_vec(), (r, 1), w.device())?.to_dtype(w.dtype())?;
        let offset: Vec<f32> = w.matmul(&zt)?.squeeze(1)?.to_dtype(DType::F32)?.to_vec1()?;
        out.push(Intervention {
            point,
            positions,
            op: InterventionOp::Add {
                vector: offset,
                scale: 1.0,
            },
        });
    }
    Ok(out)
}

/// Tokens most promoted and suppressed when going from `before` to `after` logits.
pub fn logit_shift(
    m: &LoadedModel,
    before: &[f32],
    after: &[f32],
    top: usize,
) -> (Vec<LogitShift>, Vec<LogitShift>) {
    let delta: Vec<f32> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let neg: Vec<f32> = delta.iter().map(|d| -d).collect();
    let shift = |i: usize| {
        let id = u32::try_from(i).unwrap_or(0);
        LogitShift {
            id,
            text: m.tokenizer.piece(id),
            delta: delta[i],
        }
    };
    (
        crate::sampling::top_indices(&delta, top)
            .into_iter()
            .map(shift)
            .collect(),
        crate::sampling::top_indices(&neg, top)
            .into_iter()
            .map(shift)
            .collect(),
    )
}

/// Next-token logit differences and greedy generations with and without `hooks`.
pub fn compare(
    m: &LoadedModel,
    prompt: &str,
    chat: bool,
    hooks: &HookSpec,
    top: usize,
    max_new_tokens: usize,
    cancel: &dyn Fn() -> bool,
) -> Result<SteerReport> {
    let ids = m.tokenizer.encode_prompt(prompt, chat)?;
    let plain_spec = HookSpec::default();
    let before = last_logits(m, &ids, &plain_spec)?;
    let after = last_logits(m, &ids, hooks)?;
    let (promoted, suppressed) = logit_shift(m, &before, &after, top);
    let opts = GenerateOptions {
        max_new_tokens,
        sampling: Sampling::GREEDY,
        stop_at_eos: true,
    };
    let gen_with = |spec: &HookSpec| -> Result<String> {
        let out = generate(m, &ids, opts, spec, &mut |_, _| !cancel())?;
        m.tokenizer.decode(&out)
    };
    Ok(SteerReport {
        prompt: prompt.to_owned(),
        promoted,
        suppressed,
        steered: gen_with(hooks)?,
        plain: gen_with(&plain_spec)?,
    })
}

//! Lenses: what each layer would predict. For every layer's residual stream (`resid_post`) and
//! position, the raw lens (unembedding alone), the logit lens (final norm, then unembedding) or a
//! tuned lens (a per-layer affine translator first) gives a distribution over the vocabulary;
//! from it come top-k tokens, entropy, KL divergence to the model's final distribution, and the
//! probability, log-probability and rank of chosen target tokens.

use candle_core::{D, IndexOp, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::hooks::{HookPoint, HookSpec};
use crate::model::ops::{linear, log_softmax_last};
use crate::model::{Batch, LoadedModel, PadSide};
use crate::sampling::top_indices;
use crate::tuned::TunedLens;

/// Which lens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum LensKind {
    /// Unembedding without the final norm.
    Raw,
    /// Final norm, then unembedding.
    #[default]
    Logit,
    /// A trained per-layer translator, then final norm and unembedding.
    Tuned,
}

/// A token with its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenProb {
    /// Id.
    pub id: u32,
    /// Text.
    pub text: String,
    /// Probability.
    pub prob: f32,
}

/// A target token's statistics in one cell.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TargetStat {
    /// Probability.
    pub prob: f32,
    /// Log-probability.
    pub logprob: f32,
    /// Number of tokens with a larger probability (0 = top-1).
    pub rank: usize,
}

/// One (layer, position) cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LensCell {
    /// Most likely tokens.
    pub top: Vec<TokenProb>,
    /// Entropy in nats.
    pub entropy: f32,
    /// KL(final ‖ this layer) in nats.
    pub kl_to_final: f32,
    /// One entry per target.
    pub targets: Vec<TargetStat>,
}

/// A target token, as resolved from the user's text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// What the user typed.
    pub text: String,
    /// The token used.
    pub id: u32,
    /// Its text.
    pub token: String,
    /// A note when the text is several tokens (the first is used).
    pub note: Option<String>,
}

/// The lens over a whole prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LensResult {
    /// Lens used.
    pub lens: LensKind,
    /// Token texts of the prompt (new words by name).
    pub tokens: Vec<String>,
    /// Targets.
    pub targets: Vec<Target>,
    /// `cells[layer][position]`.
    pub cells: Vec<Vec<LensCell>>,
}

impl LensResult {
    /// Tokens that are top-1 at any layer at `position`, in order of first appearance.
    pub fn top1_any_layer(&self, position: usize) -> Vec<TokenProb> {
        let mut seen: Vec<TokenProb> = Vec::new();
        for layer in &self.cells {
            if let Some(t) = layer.get(position).and_then(|c| c.top.first())
                && !seen.iter().any(|s| s.id == t.id)
            {
                seen.push(t.clone());
            }
        }
        seen
    }
}

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
fn cells_of(
    m: &LoadedModel,
    logp: &Tensor,
    final_logp: &Tensor,
    targets: &[Target],
    top_k: usize,
) -> Result<Vec<LensCell>> {
    let p = logp.exp()?;
    let entropy = (&p * logp)?.sum(D::Minus1)?.neg()?.to_vec1::<f32>()?;
    let pf = final_logp.exp()?;
    let kl = (&pf * (final_logp - logp)?)?
        .sum(D::Minus1)?
        .to_vec1::<f32>()?;
    let rows = p.to_vec2::<f32>()?;
    Ok(rows
        .iter()
        .enumerate()
        .map(|(t, row)| {
            let top = top_indices(row, top_k)
                .into_iter()
                .map(|i| {
                    let id = u32::try_from(i).unwrap_or(0);
                    TokenProb {
                        id,
                        text: m.tokenizer.piece(id),
                        prob: row[i],
                    }
                })
                .collect();
            let targets = targets
                .iter()
                .map(|tg| {
                    let pr = row.get(tg.id as usize).copied().unwrap_or(0.0);
                    TargetStat {
                        prob: pr,
                        logprob: pr.max(f32::MIN_POSITIVE).ln(),
                        rank: row.iter().filter(|x| **x > pr).count(),
                    }
                })
                .collect();
            LensCell {
                top,
                entropy: entropy[t],
                kl_to_final: kl[t].max(0.0),
                targets,
            }
        })
        .collect())
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
    let final_logp = log_softmax_last(&out.logits.i(0)?)?;
    let mut cells = Vec::with_capacity(n);
    for l in 0..n {
        let h = out.captures[&HookPoint::ResidPost(l)].i(0)?;
        let logits = match kind {
            LensKind::Raw => linear(&h, m.llama.unembed())?,
            LensKind::Logit => m.llama.project(&h)?,
            LensKind::Tuned => {
                let t = tuned.ok_or_else(|| EngineError::Invalid("no tuned lens".into()))?;
                m.llama.project(&t.translate(l, &h)?)?
            }
        };
        cells.push(cells_of(
            m,
            &log_softmax_last(&logits)?,
            &final_logp,
            targets,
            top_k,
        )?);
    }
    Ok(LensResult {
        lens: kind,
        tokens: pieces,
        targets: targets.to_vec(),
        cells,
    })
}

//! Hook interventions resolved into tensors for one batch, and their application at a hook point.

use candle_core::{DType, Tensor};

use super::llama::Llama;
use crate::error::{EngineError, Result};
use crate::hooks::{HookPoint, HookSpec, InterventionOp, Positions};

/// An intervention resolved into tensors for one batch.
#[derive(Debug, Clone)]
pub struct ResolvedIntervention {
    /// Where.
    pub point: HookPoint,
    /// (B, T, 1) selection, u8.
    pub mask: Tensor,
    /// What.
    pub op: ResolvedOp,
}

/// The tensor form of an [`InterventionOp`]; vectors broadcast to (B, T, d_model).
#[derive(Debug, Clone)]
pub enum ResolvedOp {
    /// `x ← v`.
    Replace(Tensor),
    /// `x ← x + v` (scale already applied).
    Add(Tensor),
    /// `x ← (1−α)x + αt`.
    Interpolate(Tensor, f64),
    /// `x ← x ⊙ s`, elementwise with `s` (B, T, d_model): training-time dropout masks.
    Scale(Tensor),
}

impl Llama {
    /// Turns plain-data hook interventions into tensors for a batch of shape (rows, width).
    pub fn resolve(
        &self,
        spec: &HookSpec,
        rows: usize,
        width: usize,
    ) -> Result<Vec<ResolvedIntervention>> {
        let d = self.cfg.hidden_size;
        let dev = self.device();
        for p in &spec.capture {
            self.check_point(*p)?;
        }
        spec.interventions
            .iter()
            .map(|iv| {
                self.check_point(iv.point)?;
                if let HookPoint::Pattern(_) = iv.point {
                    return Err(EngineError::Invalid(format!(
                        "hook point {}: attention patterns can be captured, not changed",
                        iv.point
                    )));
                }
                iv.op.check_finite().map_err(EngineError::Invalid)?;
                let mut mask = vec![0u8; rows * width];
                let mut set = |r: usize, c: usize| -> Result<()> {
                    if r >= rows || c >= width {
                        return Err(EngineError::Invalid(format!(
                            "intervention at {} touches row {r}, position {c}, outside the \
                             {rows}×{width} batch",
                            iv.point
                        )));
                    }
                    mask[r * width + c] = 1;
                    Ok(())
                };
                match &iv.positions {
                    Positions::All => {
                        (0..rows * width).try_for_each(|i| set(i / width, i % width))?
                    }
                    Positions::Columns(cs) => {
                        for r in 0..rows {
                            cs.iter().try_for_each(|c| set(r, *c))?;
                        }
                    }
                    Positions::Cells(cells) => cells.iter().try_for_each(|(r, c)| set(*r, *c))?,
                }
                let vec_t = |v: &[f32]| -> Result<Tensor> {
                    if v.len() == d {
                        Ok(Tensor::from_slice(v, d, dev)?)
                    } else {
                        Err(EngineError::Invalid(format!(
                            "intervention vector at {} has {} values, d_model is {d}",
                            iv.point,
                            v.len()
                        )))
                    }
                };
                let op = match &iv.op {
                    InterventionOp::Replace(v) => ResolvedOp::Replace(vec_t(v)?),
                    InterventionOp::Add { vector, scale } => {
                        ResolvedOp::Add(vec_t(vector)?.affine(f64::from(*scale), 0.0)?)
                    }
                    InterventionOp::Interpolate { target, alpha } => {
                        ResolvedOp::Interpolate(vec_t(target)?, f64::from(*alpha))
                    }
                };
                Ok(ResolvedIntervention {
                    point: iv.point,
                    mask: Tensor::from_vec(mask, (rows, width, 1), dev)?,
                    op,
                })
            })
            .collect()
    }

    fn check_point(&self, p: HookPoint) -> Result<()> {
        match p.layer() {
            Some(l) if l >= self.cfg.num_hidden_layers => Err(EngineError::Invalid(format!(
                "hook point {p}: the model has layers 0..{}",
                self.cfg.num_hidden_layers - 1
            ))),
            _ if p == HookPoint::PosEmbed && self.extra.pos_embed.is_none() => {
                Err(EngineError::Invalid(format!(
                    "hook point {p}: model_type `{}` has no learned position embeddings (it \
                     uses RoPE)",
                    self.cfg.model_type
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Applies one resolved intervention to the activation `x` (B, T, d_model).
pub(crate) fn apply(x: &Tensor, iv: &ResolvedIntervention) -> Result<Tensor> {
    let shape = x.shape();
    let m = iv.mask.broadcast_as(shape)?;
    Ok(match &iv.op {
        ResolvedOp::Replace(v) => m.where_cond(&v.broadcast_as(shape)?, x)?,
        ResolvedOp::Add(v) => {
            let mf = iv.mask.to_dtype(DType::F32)?;
            x.broadcast_add(&mf.broadcast_mul(v)?)?
        }
        ResolvedOp::Interpolate(t, a) => {
            let mixed = ((x * (1.0 - a))? + t.broadcast_as(shape)?.affine(*a, 0.0)?)?;
            m.where_cond(&mixed, x)?
        }
        ResolvedOp::Scale(s) => m.where_cond(&(x * s)?, x)?,
    })
}

//! A block projection's weights as the hand-written CPU pass reads them: a dense f32 matrix, or
//! quantized blocks (parts stacked along the output, as q/k/v and gate/up are), with the
//! product and the input gradient of either.

use candle_core::quantized::QTensor;

use super::cpu::{CpuView, matmul};
use super::mat::{Mat, Stack};
use super::qmatmul;
use crate::error::{EngineError, Result};

/// A projection (out × in) for the hand-written pass.
pub(crate) enum Proj<'a> {
    /// Dense f32 rows.
    Dense(CpuView<'a>),
    /// Quantized parts whose rows are stacked in this order.
    Quant(Vec<&'a QTensor>),
}

impl<'a> Proj<'a> {
    /// From one block matrix.
    pub(crate) fn of_mat(m: &'a Mat) -> Result<Self> {
        match m {
            Mat::Dense(t) => Ok(Self::Dense(CpuView::new(t)?)),
            Mat::Quant(q) => Ok(Self::Quant(vec![q.as_ref()])),
        }
    }

    /// From stacked matrices (dense ones are one fused matrix).
    pub(crate) fn of_stack(s: &'a Stack) -> Result<Self> {
        match s {
            Stack::Fused(t) => Ok(Self::Dense(CpuView::new(t)?)),
            Stack::Parts(parts) => {
                let mut qs = Vec::with_capacity(parts.len());
                for p in parts {
                    match p {
                        Mat::Quant(q) => qs.push(q.as_ref()),
                        Mat::Dense(_) => {
                            return Err(EngineError::Invalid(
                                "hand-written pass: a stack mixes dense and quantized parts".into(),
                            ));
                        }
                    }
                }
                Ok(Self::Quant(qs))
            }
        }
    }

    /// `dst (n×out) = a (n×inner) · Wᵀ`, or `+=` when `accumulate`.
    pub(crate) fn forward(
        &self,
        dst: &mut [f32],
        a: &[f32],
        (n, inner, out): (usize, usize, usize),
        accumulate: bool,
    ) -> Result<()> {
        match self {
            Self::Dense(w) => matmul(dst, a, w.data(), (n, inner, out), true, accumulate),
            Self::Quant(parts) => {
                let y = qmatmul::forward_stacked(parts, &a[..n * inner], n)?;
                check_width(y.len(), n, out)?;
                let d = &mut dst[..n * out];
                if accumulate {
                    d.iter_mut().zip(&y).for_each(|(d, s)| *d += s);
                } else {
                    d.copy_from_slice(&y);
                }
            }
        }
        Ok(())
    }

    /// The input gradient: `dst (n×inner) = g (n×out) · W`, or `+=` when `accumulate`.
    pub(crate) fn backward(
        &self,
        dst: &mut [f32],
        g: &[f32],
        (n, out, inner): (usize, usize, usize),
        accumulate: bool,
    ) -> Result<()> {
        match self {
            Self::Dense(w) => matmul(dst, g, w.data(), (n, out, inner), false, accumulate),
            Self::Quant(parts) => {
                let dx = qmatmul::backward_stacked(parts, &g[..n * out], n)?;
                check_width(dx.len(), n, inner)?;
                let d = &mut dst[..n * inner];
                if accumulate {
                    d.iter_mut().zip(&dx).for_each(|(d, s)| *d += s);
                } else {
                    d.copy_from_slice(&dx);
                }
            }
        }
        Ok(())
    }
}

/// `len` values must be `n` rows of `width`.
fn check_width(len: usize, n: usize, width: usize) -> Result<()> {
    if len == n * width {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "hand-written pass: the quantized parts give {len} values for {n} rows of {width}"
        )))
    }
}

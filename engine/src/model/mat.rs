//! A block's projection matrix: dense (f32, bf16, f16) or kept in a GGUF file's quantized
//! blocks, whose products run straight from the blocks (no full dequantization): on the CPU
//! through `qmatmul` (f32 activations; candle's kernels for k-quants on a few rows), on a GPU
//! through candle's `QMatMul`. A quantized product has a backward pass for the input alone: a
//! new word's gradient needs `grad · W`, computed a dequantized tile at a time.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::ops::linear;
use super::qmatmul;
use crate::error::{EngineError, Result};

/// A projection matrix (out, in).
#[derive(Debug, Clone)]
pub enum Mat {
    /// A dense tensor.
    Dense(Tensor),
    /// Quantized blocks as stored in the GGUF file.
    Quant(Arc<QTensor>),
}

impl Mat {
    /// (out, in).
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(match self {
            Self::Dense(t) => t.dims2()?,
            Self::Quant(q) => q.shape().dims2()?,
        })
    }

    /// The dense tensor; an error for quantized blocks (a pass that needs dense weights).
    pub fn dense(&self) -> Result<&Tensor> {
        match self {
            Self::Dense(t) => Ok(t),
            Self::Quant(q) => Err(EngineError::Invalid(format!(
                "this computation needs dense weights, the model holds {:?} blocks (load it \
                 with --dtype f32, bf16 or f16)",
                q.dtype()
            ))),
        }
    }

    /// Bytes it takes.
    pub fn bytes(&self) -> u64 {
        match self {
            Self::Dense(t) => (t.elem_count() * t.dtype().size_in_bytes()) as u64,
            Self::Quant(q) => q.storage_size_in_bytes() as u64,
        }
    }

    /// Whether it is dense and of `dtype`.
    pub fn is_dense(&self, dtype: DType) -> bool {
        matches!(self, Self::Dense(t) if t.dtype() == dtype)
    }

    /// `x @ Wᵀ` for `x` of shape (…, in), in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(w) => Ok(linear(x, w)?),
            Self::Quant(q) => quant_forward(x, vec![q.clone()]),
        }
    }
}

/// `x @ [W₁; W₂; …]ᵀ` for quantized parts, `x` of shape (…, in).
fn quant_forward(x: &Tensor, parts: Vec<Arc<QTensor>>) -> Result<Tensor> {
    let dims = x.dims();
    let inner = dims[dims.len() - 1];
    let rows: usize = dims[..dims.len() - 1].iter().product();
    let op = QuantLinear { parts };
    let mut out = dims[..dims.len() - 1].to_vec();
    out.push(op.rows()?);
    let y = x.reshape((rows, inner))?.contiguous()?.apply_op1(op)?;
    Ok(y.reshape(out)?)
}

/// Whether a GGUF tensor type stays quantized (float types are read as dense tensors).
pub fn is_quantized(t: GgmlDType) -> bool {
    !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// The product with quantized blocks (parts stacked along the output: one pass for all on the
/// CPU), with a backward pass for the input, summed over the parts. Written here because
/// candle's quantized product has none (it is an inference-only op).
struct QuantLinear {
    parts: Vec<Arc<QTensor>>,
}

impl CustomOp1 for QuantLinear {
    fn name(&self) -> &'static str {
        "quantized-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (m, _) = layout.shape().dims2()?;
        let x = match (storage, layout.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("quantized product: input must be contiguous f32"),
        };
        let y = qmatmul::forward_stacked(&self.refs(), x, m).map_err(candle_core::Error::wrap)?;
        Ok((CpuStorage::F32(y), Shape::from((m, self.rows()?))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        match self.parts.as_slice() {
            [q] => q.cuda_fwd(storage, layout),
            _ => candle_core::bail!("stacked quantized parts run one by one on a GPU"),
        }
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let (m, k) = arg.dims2()?;
        if grad.device().is_cpu() {
            // A tile of each matrix dequantized at a time.
            let g = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
            let dx =
                qmatmul::backward_stacked(&self.refs(), &g, m).map_err(candle_core::Error::wrap)?;
            return Ok(Some(Tensor::from_vec(dx, (m, k), grad.device())?));
        }
        // On a GPU (one part: stacks run part by part there) the matrix is dequantized for this
        // product and dropped right after.
        let mut total: Option<Tensor> = None;
        let mut off = 0;
        for q in &self.parts {
            let rows = q.shape().dims2()?.0;
            let dx = grad
                .narrow(1, off, rows)?
                .matmul(&q.dequantize(grad.device())?)?;
            total = Some(match total {
                Some(t) => (t + dx)?,
                None => dx,
            });
            off += rows;
        }
        Ok(total)
    }
}

impl QuantLinear {
    fn refs(&self) -> Vec<&QTensor> {
        self.parts.iter().map(AsRef::as_ref).collect()
    }

    /// Output rows of the parts together.
    fn rows(&self) -> candle_core::Result<usize> {
        self.parts
            .iter()
            .map(|q| q.shape().dims2().map(|d| d.0))
            .sum()
    }
}

/// Several matrices applied to one input with their outputs side by side: the stacked q/k/v and
/// gate/up projections. Dense ones are one concatenated matrix (one product); quantized ones
/// stay separate (their blocks cannot be concatenated across types).
#[derive(Debug, Clone)]
pub enum Stack {
    /// One dense matrix, the parts' rows concatenated.
    Fused(Tensor),
    /// The parts.
    Parts(Vec<Mat>),
}

impl Stack {
    /// `x @ [W₁; W₂; …]ᵀ`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Fused(w) => Ok(linear(x, w)?),
            Self::Parts(parts) => {
                let quant: Option<Vec<Arc<QTensor>>> = parts
                    .iter()
                    .map(|p| match p {
                        Mat::Quant(q) => Some(q.clone()),
                        Mat::Dense(_) => None,
                    })
                    .collect();
                match quant {
                    // On the CPU, quantized parts in one pass.
                    Some(parts) if x.device().is_cpu() && parts.len() > 1 => {
                        quant_forward(x, parts)
                    }
                    _ => {
                        let ys = parts
                            .iter()
                            .map(|m| m.forward(x))
                            .collect::<Result<Vec<_>>>()?;
                        Ok(Tensor::cat(&ys, candle_core::D::Minus1)?)
                    }
                }
            }
        }
    }

    /// The fused dense matrix; an error for quantized parts.
    pub fn dense(&self) -> Result<&Tensor> {
        match self {
            Self::Fused(w) => Ok(w),
            Self::Parts(p) => Err(p
                .iter()
                .find_map(|m| m.dense().err())
                .unwrap_or_else(|| EngineError::Invalid("unfused dense projections".into()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).and_then(|d| d.abs()?.max_all()?.to_scalar::<f32>());
        let s = b.abs().and_then(|s| s.max_all()?.to_scalar::<f32>());
        d.unwrap_or(f32::NAN) / s.unwrap_or(f32::NAN)
    }

    /// Every supported quantization: the product straight from the blocks against the dense
    /// product with the same (dequantized) weights, and the input gradient against autograd's.
    #[test]
    fn quantized_products_and_gradients_match_the_dequantized_weights() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (64, 256), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (3, 5, 256), &dev)?;
        for t in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let q = Arc::new(QTensor::quantize(&w, t)?);
            let deq = Mat::Dense(q.dequantize(&dev)?);
            let quant = Mat::Quant(q);
            let (a, b) = (quant.forward(&x)?, deq.forward(&x)?);
            assert_eq!(a.dims(), &[3, 5, 64]);
            // The kernels quantize the activations to 8 bits per block too.
            let r = rel(&a, &b);
            assert!(r < 0.02, "{t:?}: product differs by {r} of its range");
            let v = Var::from_tensor(&x)?;
            let ga = quant.forward(v.as_tensor())?.sqr()?.sum_all()?.backward()?;
            let gb = deq.forward(v.as_tensor())?.sqr()?.sum_all()?.backward()?;
            let (ga, gb) = (
                ga.get(v.as_tensor())
                    .ok_or_else(|| EngineError::Invalid("no grad".into()))?,
                gb.get(v.as_tensor())
                    .ok_or_else(|| EngineError::Invalid("no grad".into()))?,
            );
            let r = rel(ga, gb);
            assert!(
                r < 0.04,
                "{t:?}: input gradient differs by {r} of its range"
            );
        }
        Ok(())
    }
}

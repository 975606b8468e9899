//! Principal component analysis of a set of vectors: the d×d covariance by one matmul (candle),
//! its eigen-decomposition by nalgebra's symmetric eigensolver (f64), components sorted by
//! explained variance. Also Mu et al.'s isotropy, which needs the same kind of eigenvectors.

use candle_core::{DType, Tensor};
use nalgebra::{DMatrix, SymmetricEigen};

use crate::error::{EngineError, Result};
pub use neoscope_api::embed::IsotropyKind;

/// A fitted PCA.
#[derive(Debug, Clone, PartialEq)]
pub struct Pca {
    /// Mean of the data (d).
    pub mean: Vec<f32>,
    /// Eigenvalues of the covariance (variances along the components), descending.
    pub variances: Vec<f64>,
    /// Unit components, one row of d values per eigenvalue, same order.
    pub components: Vec<Vec<f32>>,
}

/// Symmetric eigen-decomposition of a d×d matrix given as a tensor, eigenpairs sorted by
/// descending eigenvalue: (values, vectors as rows).
fn eigh_desc(m: &Tensor) -> Result<(Vec<f64>, Vec<Vec<f32>>)> {
    let d = m.dim(0)?;
    let vals: Vec<f64> = m.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let eig = SymmetricEigen::new(DMatrix::from_row_slice(d, d, &vals));
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|a, b| eig.eigenvalues[*b].total_cmp(&eig.eigenvalues[*a]));
    let values = order.iter().map(|i| eig.eigenvalues[*i]).collect();
    let vectors = order
        .iter()
        .map(|i| {
            eig.eigenvectors
                .column(*i)
                .iter()
                .map(|v| *v as f32)
                .collect()
        })
        .collect();
    Ok((values, vectors))
}

impl Pca {
    /// Fits a PCA to the rows of `x` (n, d), n ≥ 2.
    pub fn fit(x: &Tensor) -> Result<Self> {
        let (n, _) = x.dims2()?;
        if n < 2 {
            return Err(EngineError::Invalid(format!(
                "PCA needs at least 2 vectors, got {n}"
            )));
        }
        let x = x.to_dtype(DType::F32)?;
        let mean = x.mean_keepdim(0)?;
        let xc = x.broadcast_sub(&mean)?;
        let cov = (xc.t()?.matmul(&xc)? / (n as f64 - 1.0))?;
        let (variances, components) = eigh_desc(&cov)?;
        Ok(Self {
            mean: mean.flatten_all()?.to_vec1()?,
            variances: variances.into_iter().map(|v| v.max(0.0)).collect(),
            components,
        })
    }

    /// Share of the total variance explained by each component, descending.
    pub fn explained_ratio(&self) -> Vec<f64> {
        let total: f64 = self.variances.iter().sum();
        self.variances.iter().map(|v| v / total).collect()
    }

    /// The fewest components whose explained variance reaches `fraction` (e.g. 0.9).
    pub fn dims_for(&self, fraction: f64) -> usize {
        let mut acc = 0.0;
        for (i, r) in self.explained_ratio().iter().enumerate() {
            acc += r;
            if acc >= fraction - 1e-12 {
                return i + 1;
            }
        }
        self.variances.len()
    }

    /// Coordinates of the rows of `x` (n, d) on the first `k` components: n rows of k values.
    pub fn project(&self, x: &Tensor, k: usize) -> Result<Vec<Vec<f32>>> {
        let d = self.mean.len();
        let k = k.min(self.components.len());
        let dev = x.device();
        let mean = Tensor::from_slice(&self.mean, (1, d), dev)?;
        let comps: Vec<f32> = self.components[..k].iter().flatten().copied().collect();
        let comps = Tensor::from_vec(comps, (k, d), dev)?;
        let y = x
            .to_dtype(DType::F32)?
            .broadcast_sub(&mean)?
            .matmul(&comps.t()?)?;
        Ok(y.to_vec2()?)
    }
}

/// Mu et al.'s isotropy of the rows of `w` (n, d), computed in log space (the partition
/// function overflows f32 for real embeddings).
pub fn isotropy_mu(w: &Tensor) -> Result<f64> {
    let w = w.to_dtype(DType::F32)?;
    let gram = w.t()?.matmul(&w)?;
    let (_, vecs) = eigh_desc(&gram)?;
    let d = vecs.len();
    let flat: Vec<f32> = vecs.into_iter().flatten().collect();
    let c = Tensor::from_vec(flat, (d, d), w.device())?; // rows are eigenvectors
    let c = Tensor::cat(&[&c, &c.neg()?], 0)?; // ±c
    let scores = w.matmul(&c.t()?)?.to_dtype(DType::F64)?; // (n, 2d)
    let max = scores.max_keepdim(0)?;
    let log_z = (scores.broadcast_sub(&max)?.exp()?.sum_keepdim(0)?.log()? + max)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let lo = log_z.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = log_z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Ok((lo - hi).exp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn recovers_known_variances() {
        // Independent Gaussians with standard deviations 3, 2, 1, 0.5 along a rotated basis:
        // the covariance eigenvalues must come back as 9, 4, 1, 0.25 (sampling error only).
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 20_000;
        let stds = [3.0f32, 2.0, 1.0, 0.5];
        // A rotation: orthonormal rows (Hadamard / 2).
        let q = [
            [0.5f32, 0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5, -0.5],
            [0.5, 0.5, -0.5, -0.5],
            [0.5, -0.5, -0.5, 0.5],
        ];
        let mut data = Vec::with_capacity(n * 4);
        for _ in 0..n {
            let z = crate::sampling::normal_vec(&mut rng, 4, 1.0);
            let point = (0..4).map(|j| (0..4).map(|k| z[k] * stds[k] * q[k][j]).sum::<f32>() + 5.0);
            data.extend(point);
        }
        let x = Tensor::from_vec(data, (n, 4), &Device::Cpu).unwrap();
        let p = Pca::fit(&x).unwrap();
        for (got, want) in p.variances.iter().zip([9.0, 4.0, 1.0, 0.25]) {
            assert!((got / want - 1.0).abs() < 0.04, "{got} vs {want}");
        }
        // The first component is ±q[0].
        let dot: f32 = p.components[0].iter().zip(q[0]).map(|(a, b)| a * b).sum();
        assert!(dot.abs() > 0.999, "{dot}");
        // 9/(14.25) = 0.63 < 0.9 ≤ 13/14.25 = 0.912: two components reach 90%, three 95%.
        assert_eq!(p.dims_for(0.9), 2);
        assert_eq!(p.dims_for(0.95), 3);
        let y = p.project(&x, 2).unwrap();
        let v0 = crate::stats::mean_var(&y.iter().map(|r| f64::from(r[0])).collect::<Vec<_>>());
        assert!(
            v0.0.abs() < 0.1 && (v0.1 / 9.0 - 1.0).abs() < 0.04,
            "{v0:?}"
        );
    }

    #[test]
    fn isotropy_matches_numpy() {
        // numpy: W[i,j] = sin(7i+3j)*0.5 + 0.1j (40×5); ev,V = eigh(W.T@W);
        // Z = [exp(s*W@V[:,k]).sum() for k in range(5) for s in (1,-1)];
        // min(Z)/max(Z) -> 0.36767630249068617
        let (n, d) = (40usize, 5usize);
        let mut w = Vec::new();
        for i in 0..n {
            for j in 0..d {
                let (fi, fj) = (i as f64, j as f64);
                w.push(((fi * 7.0 + fj * 3.0).sin() * 0.5 + 0.1 * fj) as f32);
            }
        }
        let w = Tensor::from_vec(w, (n, d), &Device::Cpu).unwrap();
        let iso = isotropy_mu(&w).unwrap();
        assert!((iso - 0.367_676_302_490_686_17).abs() < 1e-5, "{iso}");
    }
}

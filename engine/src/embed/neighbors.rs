//! Cosine nearest neighbours over a whole matrix of vectors (the vocabulary, 49k rows): rows are
//! normalised once, similarities come from matmuls over chunks of queries (bounded memory), and
//! each query's top-k is a partial sort (ties by index), rows in parallel.

use candle_core::{D, Tensor};
use rayon::prelude::*;

use crate::error::Result;
use crate::sampling::top_indices;

/// Queries per similarity matmul: 256 × 49k f32 is 50 MB.
const CHUNK: usize = 256;

/// Rows scaled to unit length (zero rows stay zero).
pub fn normalize_rows(x: &Tensor) -> Result<Tensor> {
    let norms = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norms)?)
}

/// Per query, (row, cosine) best first.
pub type Hits = Vec<Vec<(usize, f32)>>;

/// A matrix of unit rows to search.
#[derive(Debug, Clone)]
pub struct CosineIndex {
    normed: Tensor,
}

impl CosineIndex {
    /// Indexes the rows of `x` (n, d).
    pub fn new(x: &Tensor) -> Result<Self> {
        Ok(Self {
            normed: normalize_rows(&x.to_dtype(candle_core::DType::F32)?)?,
        })
    }

    /// The indexed rows, scaled to unit length.
    pub fn normed(&self) -> &Tensor {
        &self.normed
    }

    /// Number of indexed rows.
    pub fn len(&self) -> usize {
        self.normed.dims()[0]
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` most similar rows to each query row of `q` (m, d), as (row, cosine), best first.
    /// With `exclude_self`, query `i` is row `i` of the index and never its own neighbour.
    /// `progress` gets the done fraction after each chunk and stops the search by returning
    /// false (then `None`).
    pub fn search(
        &self,
        q: &Tensor,
        k: usize,
        exclude_self: bool,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Option<Hits>> {
        let qn = normalize_rows(&q.to_dtype(candle_core::DType::F32)?)?;
        let m = qn.dims()[0];
        let mut out = Vec::with_capacity(m);
        let mut start = 0;
        while start < m {
            let len = CHUNK.min(m - start);
            let sims = qn.narrow(0, start, len)?.matmul(&self.normed.t()?)?;
            let rows: Vec<Vec<f32>> = sims.to_vec2()?;
            let found: Vec<Vec<(usize, f32)>> = rows
                .into_par_iter()
                .enumerate()
                .map(|(i, mut row)| {
                    if exclude_self && let Some(v) = row.get_mut(start + i) {
                        *v = f32::NEG_INFINITY;
                    }
                    top_indices(&row, k)
                        .into_iter()
                        .filter(|j| row[*j].is_finite())
                        .map(|j| (j, row[j]))
                        .collect()
                })
                .collect();
            out.extend(found);
            start += len;
            if !progress(start as f32 / m as f32) {
                return Ok(None);
            }
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn finds_the_most_similar_rows() {
        // Rows: e0, e1, (1,1)/√2, −e0. Query e0: itself (1), the diagonal (0.707), e1 (0).
        let x = Tensor::from_vec(
            vec![1.0f32, 0.0, 0.0, 2.0, 3.0, 3.0, -1.0, 0.0],
            (4, 2),
            &Device::Cpu,
        )
        .unwrap();
        let idx = CosineIndex::new(&x).unwrap();
        let q = Tensor::from_vec(vec![5.0f32, 0.0], (1, 2), &Device::Cpu).unwrap();
        let r = idx.search(&q, 3, false, &mut |_| true).unwrap().unwrap();
        let ids: Vec<usize> = r[0].iter().map(|(j, _)| *j).collect();
        assert_eq!(ids, vec![0, 2, 1]);
        assert!((r[0][1].1 - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        // Skipping the query itself.
        let r = idx.search(&x, 1, true, &mut |_| true).unwrap().unwrap();
        assert_eq!(r[0][0].0, 2);
        assert_eq!(r[3][0].0, 1); // −e0: e1 and the diagonal… e1 has cosine 0 > −0.707
    }
}

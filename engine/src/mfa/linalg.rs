//! Small dense linear algebra on R×R matrices (R ≈ 10), in f64. Hand-written because candle has
//! no Cholesky or inverse and these matrices are tiny: a crate would add weight for 40 lines.

use crate::error::{EngineError, Result};

/// Cholesky factor `L` (row-major, lower) of a symmetric positive-definite `n×n` matrix.
pub fn cholesky(a: &[f64], n: usize) -> Result<Vec<f64>> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return Err(EngineError::Invalid(
                        "MFA: a component's matrix is not positive definite (diverged fit)".into(),
                    ));
                }
                l[i * n + i] = s.sqrt();
            } else {
                l[i * n + j] = s / l[j * n + j];
            }
        }
    }
    Ok(l)
}

/// Inverse and log-determinant of a symmetric positive-definite matrix via Cholesky.
pub fn spd_inverse_logdet(a: &[f64], n: usize) -> Result<(Vec<f64>, f64)> {
    let l = cholesky(a, n)?;
    let logdet = 2.0 * (0..n).map(|i| l[i * n + i].ln()).sum::<f64>();
    // Solve L Y = I, then Lᵀ X = Y, column by column.
    let mut inv = vec![0.0; n * n];
    for c in 0..n {
        let mut y = vec![0.0; n];
        for i in 0..n {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for k in 0..i {
                s -= l[i * n + k] * y[k];
            }
            y[i] = s / l[i * n + i];
        }
        for i in (0..n).rev() {
            let mut s = y[i];
            for k in i + 1..n {
                s -= l[k * n + i] * inv[k * n + c];
            }
            inv[i * n + c] = s / l[i * n + i];
        }
    }
    Ok((inv, logdet))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_and_logdet_of_a_known_matrix() {
        // det by cofactors: 4·(5·3−1·1) − 2·(2·3−1·0) = 44; inv checked as inv(a)·a = I
        let a = [4.0, 2.0, 0.0, 2.0, 5.0, 1.0, 0.0, 1.0, 3.0];
        let (inv, ld) = spd_inverse_logdet(&a, 3).unwrap();
        assert!((ld - 44f64.ln()).abs() < 1e-12);
        for i in 0..3 {
            for j in 0..3 {
                let s: f64 = (0..3).map(|k| inv[i * 3 + k] * a[k * 3 + j]).sum();
                assert!((s - f64::from(u8::from(i == j))).abs() < 1e-12);
            }
        }
        assert!(cholesky(&[1.0, 2.0, 2.0, 1.0], 2).is_err());
    }
}

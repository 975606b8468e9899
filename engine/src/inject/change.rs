//! How each new row changed in training (Wake2Vec's evaluation): the overlap of its k nearest
//! base rows before and after, its norm change, the two against each other, and the PIP loss
//! (Yin & Shen 2018) between the initial and the trained rows.

use candle_core::{D, DType, Tensor};
pub use neoscope_api::inject::{Change, MorphemeComparison};

use crate::embed::neighbors::CosineIndex;
use crate::error::{EngineError, Result};
use crate::inject::report::Histogram;
use crate::stats;

/// Neighbours compared per form.
pub const K: usize = 10;

/// `‖A Aᵀ − B Bᵀ‖_F` through the d × d products (`‖AᵀA‖² + ‖BᵀB‖² − 2‖AᵀB‖²`), so the
/// n × n Gram matrices are never formed; and `‖A Aᵀ‖_F`.
pub fn pip_loss(a: &Tensor, b: &Tensor) -> Result<(f64, f64)> {
    let f = |x: &Tensor, y: &Tensor| -> Result<f64> {
        let p = x.t()?.matmul(y)?.to_dtype(DType::F64)?;
        Ok(p.sqr()?.sum_all()?.to_scalar::<f64>()?)
    };
    let (aa, bb, ab) = (f(a, a)?, f(b, b)?, f(a, b)?);
    Ok(((aa + bb - 2.0 * ab).max(0.0).sqrt(), aa.sqrt()))
}

/// The change report of `forms` from `init` to `new` (both n × d), neighbours among `index`.
pub fn compute(
    index: &CosineIndex,
    init: &Tensor,
    new: &Tensor,
    forms: &[String],
) -> Result<Change> {
    let k = K.min(index.len());
    let search = |q: &Tensor| -> Result<Vec<Vec<usize>>> {
        let hits = index
            .search(q, k, false, &mut |_| true)?
            .ok_or(EngineError::Cancelled)?;
        Ok(hits
            .into_iter()
            .map(|h| h.into_iter().map(|(j, _)| j).collect())
            .collect())
    };
    let (before, after) = (search(init)?, search(new)?);
    let overlap: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| b.iter().filter(|j| a.contains(j)).count() as f64 / k.max(1) as f64)
        .collect();
    let norms = |t: &Tensor| -> Result<Vec<f64>> {
        Ok(t.sqr()?
            .sum(D::Minus1)?
            .sqrt()?
            .to_dtype(DType::F64)?
            .to_vec1()?)
    };
    let change: Vec<f64> = norms(new)?
        .iter()
        .zip(norms(init)?)
        .map(|(n, i)| n - i)
        .collect();
    let step = 1.0 / k.max(1) as f64;
    let overlap_hist = Histogram {
        lo: -step / 2.0,
        hi: 1.0 + step / 2.0,
        series: vec![(
            "forms".to_owned(),
            stats::histogram(&overlap, -step / 2.0, 1.0 + step / 2.0, k + 1),
        )],
    };
    let lo = change.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = change.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, lo + 0.5)
    };
    let mut order: Vec<usize> = (0..overlap.len()).collect();
    order.sort_by(|a, b| overlap[*a].total_cmp(&overlap[*b]).then(a.cmp(b)));
    let (pip, norm) = pip_loss(init, new)?;
    Ok(Change {
        k,
        overlap: stats::summary(&overlap),
        overlap_hist,
        norm_change: stats::summary(&change),
        norm_change_hist: Histogram {
            lo,
            hi,
            series: vec![("forms".to_owned(), stats::histogram(&change, lo, hi, 40))],
        },
        scatter: change
            .iter()
            .zip(&overlap)
            .map(|(c, o)| [*c as f32, *o as f32])
            .collect(),
        least_overlap: order
            .iter()
            .take(10)
            .map(|i| (forms[*i].clone(), overlap[*i]))
            .collect(),
        pip_loss: pip,
        pip_relative: if norm > 0.0 { pip / norm } else { 0.0 },
    })
}

/// A split form's parts and the mean of their vectors.
#[derive(Debug, Clone)]
pub struct PartMean {
    /// The form's index among the new forms.
    pub form: usize,
    /// Its parts joined by `+` (`un+bust+ly`).
    pub parts: String,
    /// The mean of the parts' vectors (each the mean token embedding of ` part`).
    pub mean: Vec<f32>,
}

/// The parts' means of every form that was split into prefix/root/suffix (compositional init;
/// none for spherical init). What the report compares and phase 3's L_morpheme pulls toward.
pub fn part_means(
    m: &crate::model::LoadedModel,
    inits: &[super::vocab::FormInit],
) -> Result<Vec<PartMean>> {
    let mut out = Vec::new();
    for (i, fi) in inits.iter().enumerate() {
        let Some(p) = fi
            .parts
            .as_ref()
            .filter(|p| p.prefix.is_some() || p.suffix.is_some())
        else {
            continue;
        };
        let texts: Vec<&str> = [
            p.prefix.as_deref(),
            Some(p.root.as_str()),
            p.suffix.as_deref(),
        ]
        .into_iter()
        .flatten()
        .collect();
        let vs: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| super::vocab::mean_embedding(m, t))
            .collect::<Result<_>>()?;
        let mean: Vec<f32> = (0..vs[0].len())
            .map(|j| vs.iter().map(|v| v[j]).sum::<f32>() / vs.len() as f32)
            .collect();
        out.push(PartMean {
            form: i,
            parts: texts.join("+"),
            mean,
        });
    }
    Ok(out)
}

/// Split forms against the mean of their parts (see [`MorphemeComparison`]); `None` when no
/// form was split (spherical init).
pub fn morphemes(
    m: &crate::model::LoadedModel,
    inits: &[super::vocab::FormInit],
    init: &Tensor,
    new: &Tensor,
) -> Result<Option<MorphemeComparison>> {
    let cos = |a: &[f32], b: &[f32]| -> f64 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        f64::from(dot / (na * nb).max(f32::MIN_POSITIVE))
    };
    let (init, new) = (init.to_vec2::<f32>()?, new.to_vec2::<f32>()?);
    let (mut before, mut after, mut examples) = (Vec::new(), Vec::new(), Vec::new());
    for pm in part_means(m, inits)? {
        let (b, a) = (cos(&init[pm.form], &pm.mean), cos(&new[pm.form], &pm.mean));
        before.push(b);
        after.push(a);
        if examples.len() < 12 {
            examples.push((inits[pm.form].form.clone(), pm.parts, b, a));
        }
    }
    if before.is_empty() {
        return Ok(None);
    }
    Ok(Some(MorphemeComparison {
        forms: before.len(),
        before: stats::summary(&before),
        after: stats::summary(&after),
        examples,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn pip_loss_equals_the_gram_matrices_difference() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::from_vec(
            (0..15).map(|i| (i as f32 * 0.7).sin()).collect(),
            (5, 3),
            &dev,
        )?;
        let b = Tensor::from_vec(
            (0..15).map(|i| (i as f32 * 0.3).cos()).collect(),
            (5, 3),
            &dev,
        )?;
        let (pip, norm) = pip_loss(&a, &b)?;
        let ga = a.matmul(&a.t()?)?;
        let gb = b.matmul(&b.t()?)?;
        let direct = f64::from((&ga - &gb)?.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?);
        let na = f64::from(ga.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?);
        assert!((pip - direct).abs() < 1e-4 * direct, "{pip} vs {direct}");
        assert!((norm - na).abs() < 1e-4 * na);
        assert!(pip_loss(&a, &a)?.0 < 1e-3);
        Ok(())
    }
}

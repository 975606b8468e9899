//! The geometry report of an injection run: base vs new rows. Norms (Welch t, Mann-Whitney U,
//! Cohen's d), isotropy (Mu et al.'s partition ratio), drift of each new row from its initial
//! vector, nearest base neighbours of sampled forms before and after training, PCA dimensions
//! for 90/95% of the variance, pairwise cosine distributions with KS tests, the loss curves,
//! and a PCA scatter for the figure. Written as JSON and as a self-contained HTML page.

use candle_core::{D, DType, Tensor};
use rand::SeedableRng;
use rand::seq::index::sample;

use super::session::Session;
use super::train::TrainState;
use crate::embed::neighbors::{CosineIndex, normalize_rows};
use crate::embed::pca::{IsotropyKind, Pca, isotropy_mu};
use crate::error::Result;
use crate::model::LoadedModel;
use crate::stats::{self};
pub use neoscope_api::inject::{
    Drift, FormNeighbors, GeometryReport, Histogram, Isotropy, Norms, Pairwise, PcaDims, PhaseScore,
};

/// The geometry report (`report.json`; JSON only, no tensors).
pub const KIND: crate::artifact::Kind = crate::artifact::Kind {
    format: "neoscope-geometry-report",
    version: 1,
    what: "geometry report",
};
/// Pairs sampled per pairwise-cosine distribution.
const PAIRS: usize = 20_000;
/// Forms whose neighbours are listed.
const NEIGHBOR_FORMS: usize = 12;
/// Base points in the scatter figure.
const SCATTER_BASE: usize = 3_000;
/// Histogram bins.
const BINS: usize = 40;
/// Forms in the t-SNE of initial against trained rows.
const TSNE_FORMS: usize = 400;

fn hist(series: &[(&str, &[f64])], lo: f64, hi: f64) -> Histogram {
    Histogram {
        lo,
        hi,
        series: series
            .iter()
            .map(|(n, x)| ((*n).to_owned(), stats::histogram(x, lo, hi, BINS)))
            .collect(),
    }
}

fn span(xs: &[&[f64]]) -> (f64, f64) {
    let it = || xs.iter().flat_map(|x| x.iter().copied());
    let lo = it().fold(f64::INFINITY, f64::min);
    let hi = it().fold(f64::NEG_INFINITY, f64::max);
    (lo, if hi > lo { hi } else { lo + 1.0 })
}

/// Reports a stage; `Cancelled` when the caller asks to stop.
fn step(progress: &mut dyn FnMut(&str, f32) -> bool, stage: &str, f: f32) -> Result<()> {
    if progress(stage, f) {
        Ok(())
    } else {
        Err(crate::EngineError::Cancelled)
    }
}

fn row_norms(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.sqr()?
        .sum(D::Minus1)?
        .sqrt()?
        .to_dtype(DType::F64)?
        .to_vec1()?)
}

/// Cosines of `pairs` seeded random pairs (a row of `a`, a row of `b`; distinct rows when
/// `a` and `b` are the same matrix).
fn pair_cosines(a: &Tensor, b: &Tensor, same: bool, pairs: usize, seed: u64) -> Result<Vec<f64>> {
    use rand::Rng;
    let (na, nb) = (a.dim(0)?, b.dim(0)?);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (mut ia, mut ib) = (Vec::with_capacity(pairs), Vec::with_capacity(pairs));
    while ia.len() < pairs {
        let (i, j) = (rng.random_range(0..na), rng.random_range(0..nb));
        if same && i == j {
            continue;
        }
        ia.push(u32::try_from(i).unwrap_or(0));
        ib.push(u32::try_from(j).unwrap_or(0));
    }
    let dev = a.device();
    let ra = a.index_select(&Tensor::from_vec(ia, pairs, dev)?, 0)?;
    let rb = b.index_select(&Tensor::from_vec(ib, pairs, dev)?, 0)?;
    Ok((ra * rb)?.sum(D::Minus1)?.to_dtype(DType::F64)?.to_vec1()?)
}

fn labelled(hits: &[(usize, f32)], m: &LoadedModel) -> Vec<(String, f32)> {
    hits.iter()
        .map(|(j, c)| (m.tokenizer.piece(u32::try_from(*j).unwrap_or(0)), *c))
        .collect()
}

/// Computes the report of `session` at `state` (the base matrix is checked against the hash
/// recorded in the run at its start). `progress(stage, fraction)` returns false to cancel.
pub fn compute(
    m: &LoadedModel,
    session: &Session,
    state: &TrainState,
    progress: &mut dyn FnMut(&str, f32) -> bool,
) -> Result<GeometryReport> {
    let seed = session.meta.config.seed;
    let base = m.llama.embed.to_dtype(DType::F32)?;
    let new = state.rows.to_dtype(DType::F32)?;
    let init = session.init.to_dtype(DType::F32)?;
    let (n_base, n_new) = (base.dim(0)?, new.dim(0)?);

    step(progress, "norms", 0.0)?;
    let (nb, nn) = (row_norms(&base)?, row_norms(&new)?);
    let (lo, hi) = span(&[&nb, &nn]);
    let norms = Norms {
        base: stats::summary(&nb),
        new: stats::summary(&nn),
        welch: stats::welch_t(&nb, &nn),
        mann_whitney: stats::mann_whitney(&nb, &nn),
        cohen_d: stats::cohen_d(&nb, &nn),
        hist: hist(&[("base", &nb), ("new", &nn)], lo, hi),
    };

    step(progress, "isotropy", 0.15)?;
    let isotropy = Isotropy {
        kind: IsotropyKind::MuPartition,
        base: isotropy_mu(&base)?,
        new: isotropy_mu(&new)?,
        new_initial: isotropy_mu(&init)?,
    };

    step(progress, "drift", 0.35)?;
    let (ni, nf) = (normalize_rows(&init)?, normalize_rows(&new)?);
    let drift_cos: Vec<f64> = (ni * &nf)?
        .sum(D::Minus1)?
        .to_dtype(DType::F64)?
        .to_vec1()?;
    let mut order: Vec<usize> = (0..n_new).collect();
    order.sort_by(|a, b| drift_cos[*a].total_cmp(&drift_cos[*b]).then(a.cmp(b)));
    let pick = |it: &mut dyn Iterator<Item = &usize>| -> Vec<(String, f64)> {
        it.take(10)
            .map(|i| (session.vocab.forms[*i].clone(), drift_cos[*i]))
            .collect()
    };
    let drift = Drift {
        base_identical: crate::artifact::tensor_sha256(&m.llama.embed)?
            == session.meta.base_rows_sha256,
        new: stats::summary(&drift_cos),
        hist: hist(&[("new", &drift_cos)], -1.0, 1.0),
        most: pick(&mut order.iter()),
        least: pick(&mut order.iter().rev()),
        per_form: session
            .vocab
            .forms
            .iter()
            .cloned()
            .zip(drift_cos.iter().copied())
            .collect(),
    };

    step(progress, "neighbours", 0.45)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut chosen: Vec<usize> = sample(&mut rng, n_new, NEIGHBOR_FORMS.min(n_new)).into_vec();
    chosen.sort_unstable();
    let idx = Tensor::from_vec(
        chosen
            .iter()
            .map(|i| u32::try_from(*i).unwrap_or(0))
            .collect::<Vec<_>>(),
        chosen.len(),
        new.device(),
    )?;
    let index = CosineIndex::new(&base)?;
    let before = index
        .search(&init.index_select(&idx, 0)?, 5, false, &mut |_| true)?
        .unwrap_or_default();
    let after = index
        .search(&new.index_select(&idx, 0)?, 5, false, &mut |_| true)?
        .unwrap_or_default();
    let neighbors = chosen
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(i, (b, a))| FormNeighbors {
            form: session.vocab.forms[*i].clone(),
            before: labelled(b, m),
            after: labelled(a, m),
        })
        .collect();

    step(progress, "change per form", 0.5)?;
    let change = super::change::compute(&index, &init, &new, &session.vocab.forms)?;
    let morphemes = super::change::morphemes(m, &session.meta.inits, &init, &new)?;

    step(progress, "PCA", 0.6)?;
    let pb = Pca::fit(&base)?;
    let pn = Pca::fit(&new)?;
    let pca = PcaDims {
        base_90: pb.dims_for(0.9),
        base_95: pb.dims_for(0.95),
        new_90: pn.dims_for(0.9),
        new_95: pn.dims_for(0.95),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 1);
    let sample_ids: Vec<u32> = sample(&mut rng, n_base, SCATTER_BASE.min(n_base))
        .into_iter()
        .map(|i| u32::try_from(i).unwrap_or(0))
        .collect();
    let sb = base.index_select(
        &Tensor::from_vec(sample_ids, SCATTER_BASE.min(n_base), base.device())?,
        0,
    )?;
    let to2 = |v: Vec<Vec<f32>>| v.into_iter().map(|r| [r[0], r[1]]).collect::<Vec<_>>();
    let scatter_base = to2(pb.project(&sb, 2)?);
    let scatter_new = to2(pb.project(&new, 2)?);

    step(progress, "t-SNE of initial and trained rows", 0.7)?;
    let (tsne_initial, tsne_trained) = initial_vs_trained(&init, &new, seed, progress)?;

    step(progress, "pairwise cosines", 0.8)?;
    // Unit rows: the search index's copy of the base, the drift step's of the new rows.
    let (bn_, nn_) = (index.normed(), &nf);
    let bb = pair_cosines(bn_, bn_, true, PAIRS, seed ^ 2)?;
    let nnc = pair_cosines(nn_, nn_, true, PAIRS, seed ^ 3)?;
    let bnc = pair_cosines(bn_, nn_, false, PAIRS, seed ^ 4)?;
    let pairwise = Pairwise {
        pairs: PAIRS,
        base_base: stats::summary(&bb),
        new_new: stats::summary(&nnc),
        base_new: stats::summary(&bnc),
        ks_bb_nn: stats::ks_2samp(&bb, &nnc),
        ks_bb_bn: stats::ks_2samp(&bb, &bnc),
        ks_nn_bn: stats::ks_2samp(&nnc, &bnc),
        hist: hist(
            &[("base-base", &bb), ("new-new", &nnc), ("base-new", &bnc)],
            -1.0,
            1.0,
        ),
    };
    step(progress, "done", 1.0)?;
    Ok(GeometryReport {
        header: KIND.header(&session.meta.header.base_model),
        n_base,
        n_new,
        n_known: session.meta.known.len(),
        steps: state.step,
        losses: state.losses.clone(),
        val: state.val.clone(),
        norms,
        isotropy,
        drift,
        neighbors,
        pca,
        pairwise,
        scatter_base,
        scatter_new,
        phases: match (state.val.first(), state.val.last()) {
            (Some(a), Some(b)) => vec![
                PhaseScore::new("initial rows", a.0, a.1),
                PhaseScore::new("phase 1 (rows)", b.0, b.1),
            ],
            _ => Vec::new(),
        },
        change: Some(change),
        morphemes,
        tsne_initial,
        tsne_trained,
        aligned: None,
    })
}

/// 2-D points.
type Points = Vec<[f32; 2]>;

/// A joint t-SNE of up to [`TSNE_FORMS`] sampled forms' initial and trained rows (too few forms:
/// empty).
fn initial_vs_trained(
    init: &Tensor,
    new: &Tensor,
    seed: u64,
    progress: &mut dyn FnMut(&str, f32) -> bool,
) -> Result<(Points, Points)> {
    let n = new.dim(0)?;
    let k = TSNE_FORMS.min(n);
    if k < 4 {
        return Ok((Vec::new(), Vec::new()));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 5);
    let mut ids: Vec<usize> = sample(&mut rng, n, k).into_vec();
    ids.sort_unstable();
    let ids: Vec<u32> = ids
        .into_iter()
        .map(|i| u32::try_from(i).unwrap_or(0))
        .collect();
    let idx = Tensor::from_vec(ids, k, new.device())?;
    let joint = Tensor::cat(
        &[init.index_select(&idx, 0)?, new.index_select(&idx, 0)?],
        0,
    )?;
    // Perplexity 10, not the usual 30: each form's two rows are near-twins, and at 30 the
    // demo's 400 pairs collapsed onto a line (correlation of the axes −0.98; 10 gives −0.04).
    let cfg = crate::embed::tsne::TsneConfig {
        perplexity: ((2 * k - 1) as f32 / 3.0).min(10.0),
        epochs: 500,
    };
    let mut pts = crate::embed::tsne::tsne(&joint, &cfg, &mut |_, f| {
        progress("t-SNE of initial and trained rows", 0.7 + 0.1 * f)
    })?;
    let trained = pts.split_off(k);
    Ok((pts, trained))
}

/// Writes `report.json` and `report.html` into `dir` (atomically); returns the HTML path.
pub fn write(dir: &std::path::Path, r: &GeometryReport) -> Result<std::path::PathBuf> {
    crate::artifact::write_json(&dir.join("report.json"), r)?;
    let html = dir.join("report.html");
    crate::artifact::write_atomic(&html, super::html::render(r).as_bytes())?;
    Ok(html)
}

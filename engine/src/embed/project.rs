//! 2-D projections of a chosen set of vectors: the base vocabulary (all of it, a seeded sample
//! or the tokens containing a string), injected rows and trained words, by PCA or t-SNE.

use candle_core::Tensor;
use rand::SeedableRng;
use rand::seq::index::sample;

use super::pca::Pca;
use super::tsne::tsne;
use crate::error::{EngineError, Result};
pub use neoscope_api::embed::{BaseSelection, Method, PointKind, Projection};

/// Picks the base rows a [`BaseSelection`] names (the selection is protocol data).
pub trait SelectBase {
    /// The selected ids among `vocab` base tokens, given each token's text.
    fn select(&self, vocab: usize, text: &dyn Fn(u32) -> String) -> Vec<u32>;
}

impl SelectBase for BaseSelection {
    /// The selected ids among `vocab` base tokens, given each token's text.
    fn select(&self, vocab: usize, text: &dyn Fn(u32) -> String) -> Vec<u32> {
        let all = || (0..vocab).filter_map(|i| u32::try_from(i).ok());
        match self {
            Self::All => all().collect(),
            Self::None => Vec::new(),
            Self::Sample { n, seed } => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(*seed);
                let mut ids: Vec<u32> = sample(&mut rng, vocab, (*n).min(vocab))
                    .into_iter()
                    .filter_map(|i| u32::try_from(i).ok())
                    .collect();
                ids.sort_unstable();
                ids
            }
            Self::Containing(s) => {
                let s = s.to_lowercase();
                all()
                    .filter(|i| text(*i).to_lowercase().contains(&s))
                    .collect()
            }
        }
    }
}

/// Projects `set` with `method`; `progress(stage, fraction)` returns false to cancel.
pub fn project(
    set: PointSet,
    method: &Method,
    progress: &mut dyn FnMut(&str, f32) -> bool,
) -> Result<Projection> {
    let n = set.ids.len();
    if n < 4 {
        return Err(EngineError::Invalid(format!(
            "a projection needs at least 4 vectors, the selection has {n}"
        )));
    }
    let (points, explained, name) = match method {
        Method::Pca => {
            progress("PCA", 0.0);
            let p = Pca::fit(&set.vectors)?;
            let r = p.explained_ratio();
            let pts = p
                .project(&set.vectors, 2)?
                .into_iter()
                .map(|v| [v[0], v[1]])
                .collect();
            (pts, Some([r[0], r[1]]), "PCA".to_owned())
        }
        Method::Tsne(cfg) => (
            tsne(&set.vectors, cfg, progress)?,
            None,
            format!(
                "t-SNE (perplexity {}, {} epochs)",
                cfg.perplexity, cfg.epochs
            ),
        ),
    };
    Ok(Projection {
        method: name,
        points,
        ids: set.ids,
        labels: set.labels,
        kinds: set.kinds,
        explained,
    })
}

/// The vectors to project and what each is.
#[derive(Debug, Clone)]
pub struct PointSet {
    /// Vectors (n, d).
    pub vectors: Tensor,
    /// Token id of each point (base or injected id; words get `u32::MAX`).
    pub ids: Vec<u32>,
    /// Label of each point.
    pub labels: Vec<String>,
    /// Kind of each point.
    pub kinds: Vec<PointKind>,
}

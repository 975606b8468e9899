//! The embedding space: which vectors to project, how, the projection, neighbours, and the embedding commands.

use serde::{Deserialize, Serialize};

/// Which base-vocabulary rows to include.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BaseSelection {
    /// Every row (no cap).
    All,
    /// A seeded uniform sample of `n` rows (chosen by the user, stated in the result).
    Sample {
        /// Rows to keep.
        n: usize,
        /// Seed.
        seed: u64,
    },
    /// Rows whose token text contains this string (case-insensitive).
    Containing(String),
    /// No base rows (only new words).
    None,
}

/// Projection method.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Method {
    /// First two principal components (exact, instant).
    Pca,
    /// t-SNE (neighbourhoods; minutes at the full vocabulary).
    Tsne(TsneConfig),
}

/// What a point is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PointKind {
    /// A base-vocabulary token.
    Base,
    /// An injected lexicon row.
    New,
    /// A trained neologism.
    Word,
    /// A residual-stream activation (collected in the MFA panel).
    Activation,
}

/// A 2-D projection, ready to plot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Projection {
    /// "PCA" or "t-SNE (perplexity …)".
    pub method: String,
    /// Coordinates.
    pub points: Vec<[f32; 2]>,
    /// Token id of each point.
    pub ids: Vec<u32>,
    /// Label of each point.
    pub labels: Vec<String>,
    /// Kind of each point.
    pub kinds: Vec<PointKind>,
    /// Share of variance on the two axes (PCA only).
    pub explained: Option<[f64; 2]>,
}

/// t-SNE settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TsneConfig {
    /// Perplexity (effective neighbours per point; 30 is usual).
    pub perplexity: f32,
    /// Gradient-descent iterations (the first 250 with early exaggeration).
    pub epochs: usize,
}

impl Default for TsneConfig {
    fn default() -> Self {
        Self {
            perplexity: 30.0,
            epochs: 750,
        }
    }
}

/// Which isotropy measure a report uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IsotropyKind {
    /// Mu, Bhat & Viswanath (2018), "All-but-the-Top": `min_c Z(c) / max_c Z(c)` with
    /// `Z(c) = Σ_w exp(cᵀw)` over the eigenvectors `c` of `WᵀW` (uncentred), each taken with
    /// both signs (an eigenvector's sign is arbitrary, so ±c makes the measure well defined).
    /// 1 = isotropic, near 0 = a dominant direction.
    MuPartition,
}

/// Embedding-space commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EmbedCommand {
    /// Projects base rows (chosen), injected rows and trained words to 2-D.
    Project {
        /// Which base rows.
        base: BaseSelection,
        /// Include the open run's new rows and the trained words.
        include_new: bool,
        /// Include the activations collected for the MFA (labelled by their token).
        include_activations: bool,
        /// PCA or t-SNE.
        method: Method,
    },
    /// Nearest tokens (base and new) to a token, form, word or arithmetic expression.
    Neighbors {
        /// What to look up: a token id (`#123`), a form, a word or `a - b + c`.
        query: String,
        /// How many.
        k: usize,
    },
}

/// A neighbour in the whole (base + new) vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Token id (base or new).
    pub id: u32,
    /// Its text.
    pub text: String,
    /// Cosine similarity.
    pub cosine: f32,
    /// Base or new.
    pub kind: PointKind,
}

/// Embedding-space results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EmbedResult {
    /// A projection.
    Projection(Box<Projection>),
    /// Neighbours of a query.
    Neighbors {
        /// The query as given.
        query: String,
        /// Best first.
        hits: Vec<Hit>,
    },
}

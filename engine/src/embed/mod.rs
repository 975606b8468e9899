//! The embedding space: PCA and t-SNE projections of token vectors, cosine nearest neighbours
//! over the whole vocabulary, and the geometry measures the injection report uses.

pub mod neighbors;
pub mod pca;
pub mod project;
pub mod tsne;

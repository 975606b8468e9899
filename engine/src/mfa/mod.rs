//! Mixture of factor analyzers (MFA) on the residual stream: activations, k-means
//! initialisation, the Woodbury likelihood with analytic gradients, training, interpretation and
//! steering. DESIGN §5 holds the parameterisation.

pub mod activations;
pub mod file;
pub mod grad;
pub mod interpret;
pub mod kmeans;
pub mod linalg;
pub mod model;
pub mod steer;
pub mod train;

pub use model::Mfa;

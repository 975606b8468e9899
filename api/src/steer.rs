//! Steering named by what it uses (a word's vector, an MFA component); the engine resolves it.

use serde::{Deserialize, Serialize};

/// A steering intervention described by what it uses rather than by its vectors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Steer {
    /// Add `scale ×` a new word's vector to the residual stream entering `layer`, at every position.
    WordDirection {
        /// Word name.
        name: String,
        /// Layer whose input is changed.
        layer: usize,
        /// Multiplier of the word's vector.
        scale: f32,
    },
    /// Move every position toward a fitted MFA component, at the MFA's hook point:
    /// `x + α(μ_k − x) + W_k z`.
    MfaComponent {
        /// Component.
        component: usize,
        /// Centroid weight α.
        alpha: f32,
        /// Latent offset (empty: none).
        z: Vec<f32>,
    },
}

impl Steer {
    /// Short human description, e.g. for legends.
    pub fn describe(&self) -> String {
        match self {
            Self::WordDirection { name, layer, scale } => {
                format!("{scale:+.1} x {name} at layer {layer}")
            }
            Self::MfaComponent {
                component,
                alpha,
                z,
            } => {
                let latent = if z.iter().any(|v| *v != 0.0) {
                    " + latent"
                } else {
                    ""
                };
                format!("MFA component {component}, alpha {alpha:.2}{latent}")
            }
        }
    }
}

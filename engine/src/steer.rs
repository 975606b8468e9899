//! Steering chosen by name in one panel and applied in another: a `Steer` is plain data that the
//! engine thread turns into interventions using the state it holds (word vectors, a fitted MFA).

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::hooks::{HookPoint, Intervention, InterventionOp, Positions};
use crate::words::Word;

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

/// Turns word steering into interventions; `n_layers` bounds the layer.
pub fn word_direction(
    words: &[Word],
    name: &str,
    layer: usize,
    scale: f32,
    n_layers: usize,
) -> Result<Intervention> {
    let w = words.iter().find(|w| w.name == name).ok_or_else(|| {
        EngineError::Invalid(format!(
            "no word named {name} to steer with: create or load it in the Words panel"
        ))
    })?;
    if layer >= n_layers {
        return Err(EngineError::Invalid(format!(
            "steering layer {layer} is out of range: the model has layers 0..{}",
            n_layers - 1
        )));
    }
    Ok(Intervention {
        point: HookPoint::ResidPre(layer),
        positions: Positions::All,
        op: InterventionOp::Add {
            vector: w.vector.clone(),
            scale,
        },
    })
}

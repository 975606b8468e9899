//! Steering chosen by name in one panel and applied in another: a `Steer` is plain data that the
//! engine thread turns into interventions using the state it holds (word vectors, a fitted MFA).

use crate::error::{EngineError, Result};
use crate::hooks::{HookPoint, Intervention, InterventionOp, Positions};
use crate::words::Word;
pub use neoscope_api::steer::Steer;

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
    check_layer(layer, n_layers)?;
    Ok(Intervention {
        point: HookPoint::ResidPre(layer),
        positions: Positions::All,
        op: InterventionOp::Add {
            vector: w.vector.clone(),
            scale,
        },
    })
}

/// Refuses a steering layer the model does not have (`n_layers` layers).
pub fn check_layer(layer: usize, n_layers: usize) -> Result<()> {
    if layer >= n_layers {
        return Err(EngineError::Invalid(format!(
            "steering layer {layer} is out of range: the model has layers 0..{}",
            n_layers.saturating_sub(1)
        )));
    }
    Ok(())
}

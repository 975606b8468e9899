//! Hook points (named as in TransformerLens), captures and interventions, all as plain data.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A place in the forward pass where activations can be captured or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum HookPoint {
    /// `hook_embed`: token embeddings (Gemma: already scaled by √d_model).
    Embed,
    /// `hook_pos_embed`: learned position embeddings (GPT-2 only).
    PosEmbed,
    /// `blocks.{l}.hook_resid_pre`: residual stream entering block `l`.
    ResidPre(usize),
    /// `blocks.{l}.hook_resid_mid`: after attention, before the MLP of block `l`.
    ResidMid(usize),
    /// `blocks.{l}.hook_resid_post`: residual stream leaving block `l`.
    ResidPost(usize),
    /// `blocks.{l}.hook_attn_out`: what block `l`'s attention adds to the residual stream
    /// (after its output projection and bias, and Gemma 2/3's post-attention norm).
    AttnOut(usize),
    /// `blocks.{l}.hook_mlp_out`: what block `l`'s MLP adds to the residual stream.
    MlpOut(usize),
    /// `blocks.{l}.attn.hook_pattern`: block `l`'s attention probabilities, (batch, head, query,
    /// key); captured only (an intervention there is refused).
    Pattern(usize),
    /// `ln_final.hook_normalized`: the final residual stream normalized, before the final
    /// norm's weight and bias (as TransformerLens places it).
    LnFinal,
}

impl HookPoint {
    /// Layer index for per-block points.
    pub fn layer(self) -> Option<usize> {
        match self {
            Self::ResidPre(l)
            | Self::ResidMid(l)
            | Self::ResidPost(l)
            | Self::AttnOut(l)
            | Self::MlpOut(l)
            | Self::Pattern(l) => Some(l),
            Self::Embed | Self::PosEmbed | Self::LnFinal => None,
        }
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embed => write!(f, "hook_embed"),
            Self::ResidPre(l) => write!(f, "blocks.{l}.hook_resid_pre"),
            Self::ResidMid(l) => write!(f, "blocks.{l}.hook_resid_mid"),
            Self::ResidPost(l) => write!(f, "blocks.{l}.hook_resid_post"),
            Self::AttnOut(l) => write!(f, "blocks.{l}.hook_attn_out"),
            Self::MlpOut(l) => write!(f, "blocks.{l}.hook_mlp_out"),
            Self::Pattern(l) => write!(f, "blocks.{l}.attn.hook_pattern"),
            Self::PosEmbed => write!(f, "hook_pos_embed"),
            Self::LnFinal => write!(f, "ln_final.hook_normalized"),
        }
    }
}

impl FromStr for HookPoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hook_embed" => return Ok(Self::Embed),
            "hook_pos_embed" => return Ok(Self::PosEmbed),
            "ln_final.hook_normalized" => return Ok(Self::LnFinal),
            _ => {}
        }
        let bad = || {
            format!(
                "unknown hook point `{s}`: expected hook_embed, hook_pos_embed, \
                 blocks.L.hook_resid_pre, blocks.L.hook_resid_mid, blocks.L.hook_resid_post, \
                 blocks.L.hook_attn_out, blocks.L.hook_mlp_out, blocks.L.attn.hook_pattern or \
                 ln_final.hook_normalized"
            )
        };
        let rest = s.strip_prefix("blocks.").ok_or_else(bad)?;
        let (l, name) = rest.split_once('.').ok_or_else(bad)?;
        let l: usize = l.parse().map_err(|_| bad())?;
        match name {
            "hook_resid_pre" => Ok(Self::ResidPre(l)),
            "hook_resid_mid" => Ok(Self::ResidMid(l)),
            "hook_resid_post" => Ok(Self::ResidPost(l)),
            "hook_attn_out" => Ok(Self::AttnOut(l)),
            "hook_mlp_out" => Ok(Self::MlpOut(l)),
            "attn.hook_pattern" => Ok(Self::Pattern(l)),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for HookPoint {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<HookPoint> for String {
    fn from(h: HookPoint) -> Self {
        h.to_string()
    }
}

/// Which (batch row, position) pairs an intervention touches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Positions {
    /// Every position of every row.
    All,
    /// These positions in every row.
    Columns(Vec<usize>),
    /// These (row, position) pairs.
    Cells(Vec<(usize, usize)>),
}

/// What an intervention does to the selected vectors `x`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InterventionOp {
    /// `x ← v`.
    Replace(Vec<f32>),
    /// `x ← x + scale·v`.
    Add {
        /// The direction.
        vector: Vec<f32>,
        /// Its scale.
        scale: f32,
    },
    /// `x ← (1−α)·x + α·t`.
    Interpolate {
        /// The target `t`.
        target: Vec<f32>,
        /// The weight α.
        alpha: f32,
    },
}

impl InterventionOp {
    /// Refuses NaN and infinities in the vector and the scale or weight (they would turn every
    /// later activation into NaN without a word).
    pub fn check_finite(&self) -> Result<(), String> {
        let (v, s, what) = match self {
            Self::Replace(v) => (v, 0.0, "replacement"),
            Self::Add { vector, scale } => (vector, *scale, "steering scale"),
            Self::Interpolate { target, alpha } => (target, *alpha, "interpolation weight α"),
        };
        if !s.is_finite() {
            return Err(format!("{what} {s} is not a finite number"));
        }
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(format!("intervention vector holds {} at index {i}", v[i]));
        }
        Ok(())
    }
}

/// One intervention: at a hook point, on some positions, an operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intervention {
    /// Where.
    pub point: HookPoint,
    /// Which vectors.
    pub positions: Positions,
    /// What to do.
    pub op: InterventionOp,
}

/// What a forward pass should capture and change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HookSpec {
    /// Points whose activations are returned.
    pub capture: Vec<HookPoint>,
    /// Interventions, applied in order at their points.
    pub interventions: Vec<Intervention>,
}

impl HookSpec {
    /// True when nothing is captured or changed.
    pub fn is_empty(&self) -> bool {
        self.capture.is_empty() && self.interventions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for h in [
            HookPoint::Embed,
            HookPoint::ResidPre(0),
            HookPoint::ResidMid(7),
            HookPoint::ResidPost(29),
            HookPoint::AttnOut(2),
            HookPoint::MlpOut(5),
            HookPoint::Pattern(3),
            HookPoint::PosEmbed,
            HookPoint::LnFinal,
        ] {
            assert_eq!(h.to_string().parse::<HookPoint>().unwrap(), h);
        }
        assert_eq!(
            HookPoint::ResidPost(3).to_string(),
            "blocks.3.hook_resid_post"
        );
        assert!("blocks.x.hook_resid_pre".parse::<HookPoint>().is_err());
        assert!("blocks.1.hook_attn".parse::<HookPoint>().is_err());
    }
}

//! Initial vectors for injected forms. Compositional (Wake2Vec): split a form greedily into its
//! longest known prefix, a root and its longest known suffix, then
//! `E(w) = α·E(p) + (1 − 2α)·E(r) + α·E(s) + ε`. A missing prefix or suffix gives its weight
//! to the root; a morpheme's vector is its own token embedding when it is one token, else the
//! mean embedding of its example words; a root is the mean of its token embeddings, and a root
//! shorter than two letters falls back to a random vector at the embedding's scale. Spherical:
//! a random direction with radius `1.5 · std(E) · √d`.

use serde::{Deserialize, Serialize};

use super::lexicon::{Affix, Morpheme};
pub use neoscope_api::inject::InitKind;

/// A form split into prefix, root and suffix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parts {
    /// Longest matching prefix, if any.
    pub prefix: Option<String>,
    /// What is left.
    pub root: String,
    /// Longest matching suffix, if any.
    pub suffix: Option<String>,
}

/// Shortest root a split may leave.
const MIN_ROOT: usize = 2;

/// Greedy longest prefix and suffix match (case-insensitive) leaving a root of at least two
/// letters; the prefix is taken first.
pub fn decompose(form: &str, morphemes: &[Morpheme]) -> Parts {
    let lower = form.to_lowercase();
    let longest = |affix: Affix, rest: &str| -> Option<String> {
        morphemes
            .iter()
            .filter(|m| m.affix == affix)
            .filter(|m| {
                let fits = match affix {
                    Affix::Prefix => rest.starts_with(&m.text),
                    Affix::Suffix => rest.ends_with(&m.text),
                };
                fits && rest.chars().count() >= m.text.chars().count() + MIN_ROOT
            })
            .max_by_key(|m| m.text.chars().count())
            .map(|m| m.text.clone())
    };
    let prefix = longest(Affix::Prefix, &lower);
    let rest = prefix
        .as_ref()
        .map_or(lower.as_str(), |p| &lower[p.len()..]);
    let suffix = longest(Affix::Suffix, rest);
    let root = suffix
        .as_ref()
        .map_or(rest, |s| &rest[..rest.len() - s.len()])
        .to_owned();
    Parts {
        prefix,
        root,
        suffix,
    }
}

/// `α·p + (1 − 2α)·r + α·s + noise`, a missing affix replaced by the root.
pub fn compose(
    alpha: f32,
    prefix: Option<&[f32]>,
    root: &[f32],
    suffix: Option<&[f32]>,
    noise: &[f32],
) -> Vec<f32> {
    let p = prefix.unwrap_or(root);
    let s = suffix.unwrap_or(root);
    (0..root.len())
        .map(|i| alpha * p[i] + (1.0 - 2.0 * alpha) * root[i] + alpha * s[i] + noise[i])
        .collect()
}

/// Whether a root is long enough to have a meaningful embedding.
pub fn root_usable(root: &str) -> bool {
    root.chars().count() >= MIN_ROOT
}

/// Scales `direction` (any nonzero vector) to length `1.5 · std · √d`.
pub fn spherical(direction: &[f32], std: f32) -> Vec<f32> {
    let radius = 1.5 * std * (direction.len() as f32).sqrt();
    let n = direction
        .iter()
        .map(|v| v * v)
        .sum::<f32>()
        .sqrt()
        .max(1e-12);
    direction.iter().map(|v| v * radius / n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(affix: Affix, t: &str) -> Morpheme {
        Morpheme {
            affix,
            text: t.into(),
            examples: vec![],
        }
    }

    #[test]
    fn decomposes_by_longest_match() {
        let ms = [
            m(Affix::Prefix, "re"),
            m(Affix::Prefix, "river"),
            m(Affix::Suffix, "ation"),
            m(Affix::Suffix, "on"),
        ];
        let p = decompose("Riverbendation", &ms);
        assert_eq!(p.prefix.as_deref(), Some("river"));
        assert_eq!(p.root, "bend");
        assert_eq!(p.suffix.as_deref(), Some("ation"));
        // A match that would leave less than two letters of root is not taken.
        let p = decompose("reon", &ms);
        assert_eq!((p.prefix.as_deref(), p.root.as_str()), (Some("re"), "on"));
        assert_eq!(p.suffix, None);
        let p = decompose("plain", &ms);
        assert_eq!((p.prefix, p.root.as_str(), p.suffix), (None, "plain", None));
    }

    #[test]
    fn composition_follows_the_formula() {
        // Hand-made: α = 0.25, p = (4, 0), r = (0, 2), s = (0, -4), ε = (0.1, 0):
        // 0.25·(4,0) + 0.5·(0,2) + 0.25·(0,−4) + (0.1,0) = (1.1, 0).
        let v = compose(
            0.25,
            Some(&[4.0, 0.0]),
            &[0.0, 2.0],
            Some(&[0.0, -4.0]),
            &[0.1, 0.0],
        );
        assert!((v[0] - 1.1).abs() < 1e-6 && v[1].abs() < 1e-6, "{v:?}");
        // No prefix: its weight goes to the root: 0.75·(0,2) + 0.25·(0,−4) = (0, 0.5).
        let v = compose(0.25, None, &[0.0, 2.0], Some(&[0.0, -4.0]), &[0.0, 0.0]);
        assert!((v[1] - 0.5).abs() < 1e-6 && v[0].abs() < 1e-6, "{v:?}");
        // α = 0 is the root alone.
        let v = compose(0.0, Some(&[9.0]), &[3.0], Some(&[9.0]), &[0.0]);
        assert!((v[0] - 3.0).abs() < 1e-6);
    }

    #[test]
    fn spherical_radius() {
        let v = spherical(&[3.0, 4.0, 0.0, 0.0], 0.5);
        let r: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((r - 1.5 * 0.5 * 2.0).abs() < 1e-6, "{r}");
        assert!((v[0] / v[1] - 0.75).abs() < 1e-6);
    }
}

//! The injected vocabulary (`tokenizer::forms`: each form, as a whole word, one id after the
//! base vocabulary) read against the loaded model, and the initial rows.

use std::collections::HashMap;

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::init::{self, InitKind, Parts};
use super::lexicon::{Affix, Morpheme};
use crate::error::{EngineError, Result};
use crate::model::LoadedModel;
use crate::sampling::normal_vec;
pub use crate::tokenizer::forms::Forms;

impl Forms {
    /// Text of any id: a base token's piece or a new form (with its space).
    pub fn text(&self, m: &LoadedModel, id: u32) -> String {
        match self.form_of(id) {
            Some(f) => format!(" {f}"),
            None if id as usize >= self.base => format!("<{id}>"),
            None => m.tokenizer.piece(id),
        }
    }

    /// Encodes `text` with the base tokenizer and these forms.
    pub fn encode(&self, m: &LoadedModel, text: &str) -> Result<Vec<u32>> {
        if m.tokenizer.forms().is_some() {
            return Err(EngineError::Invalid(
                "internal: an injection run's text was encoded with a run's vocabulary attached"
                    .into(),
            ));
        }
        self.encode_with(text, &mut |t| m.tokenizer.encode(t))
    }
}

/// How one form was initialised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormInit {
    /// The form.
    pub form: String,
    /// Its split (compositional init only).
    pub parts: Option<Parts>,
    /// Whether the root had no usable embedding and a random vector stood in.
    pub random_root: bool,
}

/// Mean token embedding of `text` read as a word (` text`).
pub(crate) fn mean_embedding(m: &LoadedModel, text: &str) -> Result<Vec<f32>> {
    crate::words::init_vector(m, &crate::words::Init::Words(vec![format!(" {text}")]))
}

/// A morpheme's vector: its own token when ` morpheme` is one token, else the mean over its
/// example words (or over its own tokens when it has no examples).
fn morpheme_vector(m: &LoadedModel, mo: &Morpheme) -> Result<Vec<f32>> {
    let ids = m.tokenizer.encode(&format!(" {}", mo.text))?;
    if ids.len() == 1 || mo.examples.is_empty() {
        return mean_embedding(m, &mo.text);
    }
    let vs: Vec<Vec<f32>> = mo
        .examples
        .iter()
        .map(|e| mean_embedding(m, e))
        .collect::<Result<_>>()?;
    let n = vs.len() as f32;
    Ok((0..vs[0].len())
        .map(|i| vs.iter().map(|v| v[i]).sum::<f32>() / n)
        .collect())
}

/// Standard deviation of all entries of the base embedding matrix.
pub fn embedding_std(m: &LoadedModel) -> Result<f32> {
    let e = &m.llama.embed;
    let mean = e.mean_all()?.to_scalar::<f32>()?;
    Ok(e.affine(1.0, f64::from(-mean))?
        .sqr()?
        .mean_all()?
        .to_scalar::<f32>()?
        .sqrt())
}

/// Initial rows (n_new × d, row-major) for `vocab`, and how each was made; seeded.
pub fn initial_rows(
    m: &LoadedModel,
    vocab: &Forms,
    morphemes: &[Morpheme],
    kind: InitKind,
    seed: u64,
) -> Result<(Vec<f32>, Vec<FormInit>)> {
    let d = m.llama.cfg.hidden_size;
    let std = embedding_std(m)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut rows = Vec::with_capacity(vocab.len() * d);
    let mut info = Vec::with_capacity(vocab.len());
    let mut cache: HashMap<(Affix, String), Vec<f32>> = HashMap::new();
    let mut affix_vec = |affix: Affix, text: &str| -> Result<Vec<f32>> {
        if let Some(v) = cache.get(&(affix, text.to_owned())) {
            return Ok(v.clone());
        }
        let mo = morphemes
            .iter()
            .find(|mo| mo.affix == affix && mo.text == text)
            .ok_or_else(|| EngineError::Invalid(format!("unknown morpheme `{text}`")))?;
        let v = morpheme_vector(m, mo)?;
        cache.insert((affix, text.to_owned()), v.clone());
        Ok(v)
    };
    for form in &vocab.forms {
        match kind {
            InitKind::Spherical => {
                let dir = normal_vec(&mut rng, d, 1.0);
                rows.extend(init::spherical(&dir, std));
                info.push(FormInit {
                    form: form.clone(),
                    parts: None,
                    random_root: false,
                });
            }
            InitKind::Compositional { alpha, noise } => {
                let parts = init::decompose(form, morphemes);
                let random_root = !init::root_usable(&parts.root);
                let root = if random_root {
                    normal_vec(&mut rng, d, std)
                } else {
                    mean_embedding(m, &parts.root)?
                };
                let p = parts
                    .prefix
                    .as_deref()
                    .map(|t| affix_vec(Affix::Prefix, t))
                    .transpose()?;
                let s = parts
                    .suffix
                    .as_deref()
                    .map(|t| affix_vec(Affix::Suffix, t))
                    .transpose()?;
                let eps = normal_vec(&mut rng, d, noise * std);
                rows.extend(init::compose(
                    alpha,
                    p.as_deref(),
                    &root,
                    s.as_deref(),
                    &eps,
                ));
                info.push(FormInit {
                    form: form.clone(),
                    parts: Some(parts),
                    random_root,
                });
            }
        }
    }
    Ok((rows, info))
}

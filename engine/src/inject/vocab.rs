//! The injected vocabulary: forms with ids after the base vocabulary, text encoding that maps
//! each form (as a whole word) to its id, and the initial rows.
//!
//! A form has one id, used wherever the form stands as a word; the space before it belongs to
//! it (as `Ġword` tokens do in the base vocabulary). Words are maximal runs of characters that
//! are neither whitespace nor ASCII punctuation; case matters.

use std::collections::HashMap;

use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use super::init::{self, InitKind, Parts};
use super::lexicon::{Affix, Morpheme};
use crate::error::{EngineError, Result};
use crate::model::LoadedModel;
use crate::sampling::normal_vec;

/// Injected forms and their ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewVocab {
    /// The forms; form `i` has id `base + i`.
    pub forms: Vec<String>,
    /// Size of the base vocabulary (first new id).
    pub base: usize,
    index: HashMap<String, usize>,
}

fn is_word_char(c: char) -> bool {
    !c.is_whitespace() && !c.is_ascii_punctuation()
}

impl NewVocab {
    /// A vocabulary of `forms` after `base` base ids.
    pub fn new(forms: Vec<String>, base: usize) -> Self {
        let index = forms
            .iter()
            .enumerate()
            .map(|(i, f)| (f.clone(), i))
            .collect();
        Self { forms, base, index }
    }

    /// Number of new forms.
    pub fn len(&self) -> usize {
        self.forms.len()
    }

    /// Whether there are no forms.
    pub fn is_empty(&self) -> bool {
        self.forms.is_empty()
    }

    /// Id of form `i`.
    pub fn id(&self, i: usize) -> u32 {
        u32::try_from(self.base + i).unwrap_or(u32::MAX)
    }

    /// Index of a form, if it is one.
    pub fn find(&self, form: &str) -> Option<usize> {
        self.index.get(form).copied()
    }

    /// Text of any id: a base token's piece or a new form (with its space).
    pub fn text(&self, m: &LoadedModel, id: u32) -> String {
        let i = id as usize;
        if i >= self.base {
            self.forms
                .get(i - self.base)
                .map_or_else(|| format!("<{id}>"), |f| format!(" {f}"))
        } else {
            m.tokenizer.piece(id)
        }
    }

    /// Encodes `text`: forms become their ids, the rest goes through the base tokenizer.
    pub fn encode(&self, m: &LoadedModel, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut plain_start = 0;
        let mut chars = text.char_indices().peekable();
        while let Some((start, c)) = chars.next() {
            if !is_word_char(c) {
                continue;
            }
            let mut end = start + c.len_utf8();
            while let Some((i, c)) = chars.peek().copied() {
                if !is_word_char(c) {
                    break;
                }
                end = i + c.len_utf8();
                chars.next();
            }
            let Some(fi) = self.find(&text[start..end]) else {
                continue;
            };
            let before = &text[plain_start..start];
            let before = before.strip_suffix(' ').unwrap_or(before);
            if !before.is_empty() {
                ids.extend(m.tokenizer.encode(before)?);
            }
            ids.push(self.id(fi));
            plain_start = end;
        }
        if plain_start < text.len() {
            ids.extend(m.tokenizer.encode(&text[plain_start..])?);
        }
        Ok(ids)
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
fn mean_embedding(m: &LoadedModel, text: &str) -> Result<Vec<f32>> {
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
    vocab: &NewVocab,
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

//! Neologisms: named new tokens (`<pun>`) with their own vectors, kept apart from the base
//! embedding matrix, injected at the embedding or the residual stream before a chosen layer.
//!
//! A word never changes the base model: its id lies after the base vocabulary, the model sees a
//! carrier token there, and an intervention puts the word's vector at that position. So a
//! prompt with words is an ordinary prompt plus plain-data interventions, and every analysis
//! (generation, next-token tables, lens) works on it unchanged.

pub mod analysis;
pub mod dataset;
pub mod file;
pub mod grad;
pub mod preference;
pub mod train;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::hooks::{HookPoint, HookSpec, Intervention, InterventionOp, Positions};
use crate::model::LoadedModel;
use crate::tokenizer::ChatMessage;
pub use neoscope_api::words::{Init, Injection};

/// The token the model sees at a word's position before the word's vector is put there (its
/// embedding is replaced, so which id does not matter; 0 is always valid).
pub const CARRIER_ID: u32 = 0;

/// A new word: its name as written in prompts, and its vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Word {
    /// The name, e.g. `<pun>`; prompts refer to the word by it.
    pub name: String,
    /// The vector (d_model values).
    pub vector: Vec<f32>,
    /// Where it enters the model.
    pub injection: Injection,
    /// How it was initialised.
    pub init: Init,
}

impl Word {
    /// A new word for `m`: checks the name and the injection layer, then draws the vector.
    pub fn create(m: &LoadedModel, name: &str, init: Init, injection: Injection) -> Result<Self> {
        check_name(name)?;
        if let Injection::ResidPre(l) = injection
            && l >= m.llama.cfg.num_hidden_layers
        {
            return Err(EngineError::Invalid(format!(
                "layer {l} does not exist (the model has {})",
                m.llama.cfg.num_hidden_layers
            )));
        }
        Ok(Self {
            name: name.to_owned(),
            vector: init_vector(m, &init)?,
            injection,
            init,
        })
    }
}

/// Checks a word name: non-empty, no whitespace.
pub fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err(EngineError::Invalid(format!(
            "word name `{name}` must be non-empty and contain no spaces (e.g. `<pun>`)"
        )));
    }
    Ok(())
}

/// Draws an initial vector for a new word.
pub fn init_vector(m: &LoadedModel, init: &Init) -> Result<Vec<f32>> {
    use rand::SeedableRng;
    let d = m.llama.cfg.hidden_size;
    match init {
        Init::Zero => Ok(vec![0.0; d]),
        Init::Random { std, seed } => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(*seed);
            Ok(crate::sampling::normal_vec(&mut rng, d, *std))
        }
        Init::Words(words) => {
            if words.is_empty() {
                return Err(EngineError::Invalid("initialise from which words?".into()));
            }
            let mut sum = vec![0.0f32; d];
            let mut n = 0usize;
            for w in words {
                let ids = m.tokenizer.encode(w)?;
                if ids.is_empty() {
                    return Err(EngineError::Invalid(format!("`{w}` has no tokens")));
                }
                for id in ids {
                    let row = m.llama.embed.get(id as usize)?.to_vec1::<f32>()?;
                    sum.iter_mut().zip(row).for_each(|(s, r)| *s += r);
                    n += 1;
                }
            }
            let inv = 1.0 / n as f32;
            Ok(sum.into_iter().map(|s| s * inv).collect())
        }
    }
}

/// A text tokenized with new words: ids (words get ids after the base vocabulary) and where
/// each word occurs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordTokens {
    /// Ids; a word's id is `base_vocab + index`.
    pub ids: Vec<u32>,
    /// (position, index into the word list) of every word occurrence.
    pub occurrences: Vec<(usize, usize)>,
}

impl WordTokens {
    /// The ids the model sees: words replaced by the carrier token.
    pub fn model_ids(&self) -> Vec<u32> {
        let mut ids = self.ids.clone();
        for (p, _) in &self.occurrences {
            ids[*p] = CARRIER_ID;
        }
        ids
    }
}

/// Tokenizes plain `text` (after the BOS the model expects, if any), treating each word name as
/// one token. The space before a word belongs to the word (no stray lone-space token), so
/// `"a <pun> b"` and `"<pun> b"` give the word the same single position and vector.
pub fn encode_with_words(m: &LoadedModel, text: &str, names: &[&str]) -> Result<WordTokens> {
    encode_after(m, m.tokenizer.bos_prefix(), text, names)
}

/// `encode_with_words` after the ids `start`.
fn encode_after(
    m: &LoadedModel,
    start: Vec<u32>,
    text: &str,
    names: &[&str],
) -> Result<WordTokens> {
    let base = u32::try_from(m.llama.cfg.vocab_size)
        .map_err(|_| EngineError::Invalid("vocabulary too large".into()))?;
    let mut ids = start;
    let mut occurrences = Vec::new();
    let mut rest = text;
    loop {
        // The earliest occurrence of any name (longest name first on ties).
        let hit = names
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.is_empty())
            .filter_map(|(i, n)| rest.find(n).map(|at| (at, std::cmp::Reverse(n.len()), i)))
            .min();
        let Some((at, _, wi)) = hit else {
            ids.extend(m.tokenizer.encode(rest)?);
            break;
        };
        let before = &rest[..at];
        let before = before.strip_suffix(' ').unwrap_or(before);
        ids.extend(m.tokenizer.encode(before)?);
        occurrences.push((ids.len(), wi));
        ids.push(base + u32::try_from(wi).unwrap_or(0));
        rest = &rest[at + names[wi].len()..];
    }
    Ok(WordTokens { ids, occurrences })
}

/// Tokenizes a prompt with words, in chat mode (user turn + generation prompt) or plain.
pub fn encode_prompt_with_words(
    m: &LoadedModel,
    text: &str,
    chat: bool,
    names: &[&str],
) -> Result<WordTokens> {
    if chat {
        // The chat template writes any BOS itself.
        let rendered = m
            .tokenizer
            .apply_chat_template(&[ChatMessage::user(text)], true)?;
        encode_after(m, Vec::new(), &rendered, names)
    } else {
        encode_with_words(m, text, names)
    }
}

/// Interventions that put each word's vector at its occurrences in row `row` of a batch.
/// `embed_scale` is the model's (`Llama::embed_scale`): a word injected as an embedding enters
/// `hook_embed` scaled like the token rows it stands beside.
pub fn word_interventions(
    words: &[Word],
    occ: &[(usize, usize)],
    row: usize,
    embed_scale: f32,
) -> Vec<Intervention> {
    let mut out = Vec::new();
    for (wi, w) in words.iter().enumerate() {
        let cells: Vec<(usize, usize)> = occ
            .iter()
            .filter(|(_, i)| *i == wi)
            .map(|(p, _)| (row, *p))
            .collect();
        if cells.is_empty() {
            continue;
        }
        if let Injection::ResidPre(_) = w.injection {
            // Below the injection layer the word's position carries a zero vector.
            out.push(Intervention {
                point: HookPoint::Embed,
                positions: Positions::Cells(cells.clone()),
                op: InterventionOp::Replace(vec![0.0; w.vector.len()]),
            });
        }
        let vector = match w.injection {
            Injection::Embedding if embed_scale != 1.0 => {
                w.vector.iter().map(|x| x * embed_scale).collect()
            }
            _ => w.vector.clone(),
        };
        out.push(Intervention {
            point: w.injection.point(),
            positions: Positions::Cells(cells),
            op: InterventionOp::Replace(vector),
        });
    }
    out
}

/// A prompt with words, ready to run: the model's ids and the hooks that inject the words.
pub fn prepare(
    m: &LoadedModel,
    text: &str,
    chat: bool,
    words: &[Word],
) -> Result<(Vec<u32>, HookSpec)> {
    let names: Vec<&str> = words.iter().map(|w| w.name.as_str()).collect();
    let wt = encode_prompt_with_words(m, text, chat, &names)?;
    let hooks = HookSpec {
        capture: Vec::new(),
        interventions: word_interventions(words, &wt.occurrences, 0, m.llama.embed_scale()),
    };
    Ok((wt.model_ids(), hooks))
}

//! SentencePiece vocabularies stored in GGUF (`tokenizer.ggml.model = "llama"`: Gemma, Llama 2):
//! tokens and scores but no merges. They run as byte-fallback BPE, with the merges recovered from
//! the vocabulary: every way of cutting a token into two tokens of the vocabulary is a merge,
//! ranked by the token it makes (Gemma: by the token's position in the file, which is its merge
//! order; others: by its score, best first). Spaces are spelled `▁`. Written here because the
//! `tokenizers` crate builds BPE only from explicit merges and no crate reads GGUF vocabularies.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::Tokenizer;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence};

use crate::error::{EngineError, Result};

const SPACE: &str = "\u{2581}";

/// The tokenizer of a SentencePiece vocabulary, and the tokens as it spells them. `by_position` ranks merges by token position
/// (Gemma) instead of score; `space_prefix` prepends `▁` to the text (SentencePiece's
/// `add_dummy_prefix`).
pub(super) fn build(
    tokens: &[String],
    scores: &[f32],
    unk: Option<&str>,
    by_position: bool,
    space_prefix: bool,
    path: &Path,
) -> Result<(Tokenizer, Vec<String>)> {
    if !by_position && scores.len() != tokens.len() {
        return Err(EngineError::bad_model(
            path,
            format!(
                "{} tokens but {} scores in `tokenizer.ggml.scores`",
                tokens.len(),
                scores.len()
            ),
        ));
    }
    // Gemma files store tokens of several spaces as real spaces; the text is spelled with `▁`.
    let tokens: Vec<String> = tokens
        .iter()
        .map(|t| {
            if !t.is_empty() && t.chars().all(char::is_whitespace) && t.contains(' ') {
                SPACE.repeat(t.chars().count())
            } else {
                t.clone()
            }
        })
        .collect();
    // A spelling that occurs twice keeps its last id (and rank), and its first place in the
    // order merges are collected in, as a Python dict built from the list does.
    let mut vocab: HashMap<String, u32> = HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), u32::try_from(i).unwrap_or(u32::MAX));
    }
    let rank = |i: usize| -> f64 {
        if by_position {
            -(i as f64)
        } else {
            f64::from(scores[i])
        }
    };
    // (rank of the merged token, chars of left, chars of right, left id, right id, left, right)
    let mut merges: Vec<(f64, usize, usize, u32, u32, &str, &str)> = Vec::new();
    let mut seen = std::collections::HashSet::with_capacity(tokens.len());
    for t in &tokens {
        if !seen.insert(t.as_str()) {
            continue;
        }
        let i = vocab[t] as usize;
        let mut local = Vec::new();
        for (at, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(at);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                local.push((rank(i), l.chars().count(), r.chars().count(), li, ri, l, r));
            }
        }
        local.sort_by_key(|m| (m.3, m.4));
        merges.extend(local);
    }
    // Best rank first, then longer left and right pieces; stable for the rest.
    merges.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| b.1.cmp(&a.1))
            .then_with(|| b.2.cmp(&a.2))
    });
    let merges: Vec<(String, String)> = merges
        .into_iter()
        .map(|m| (m.5.to_owned(), m.6.to_owned()))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(
            vocab
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
            merges,
        )
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(u) = unk {
        builder = builder.unk_token(u.to_owned());
    }
    let bpe = builder
        .build()
        .map_err(|e| EngineError::bad_model(path, format!("SentencePiece vocabulary: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let replace = Replace::new(" ", SPACE).map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    let normalizer: NormalizerWrapper = if space_prefix {
        Sequence::new(vec![Prepend::new(SPACE.into()).into(), replace.into()]).into()
    } else {
        replace.into()
    };
    tok.with_normalizer(Some(normalizer))
        .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPACE, " ")
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok((tok, tokens))
}

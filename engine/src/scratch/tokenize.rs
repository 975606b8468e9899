//! The lab's tokenizers, built from the corpus as ordinary `tokenizers` objects (so the saved
//! `tokenizer.json` loads like any model's): one token per character that occurs, or a
//! byte-level BPE trained with the `tokenizers` crate's own trainer.

use std::collections::{BTreeSet, HashSet};

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::ModelWrapper;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainer};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{EngineError, Result};
pub use neoscope_api::scratch::TokenizerKind;

/// The token a character-level model gives characters its corpus never had.
pub const UNK: &str = "<unk>";

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

/// Builds the tokenizer of `kind` from `corpus`.
pub fn build(kind: TokenizerKind, corpus: &str) -> Result<Tokenizer> {
    match kind {
        TokenizerKind::Char => char_level(corpus),
        TokenizerKind::Bpe { vocab_size } => byte_bpe(corpus, vocab_size),
    }
}

/// Characters in code-point order, then `<unk>`: a BPE model without merges, so each character
/// is one token; decoding joins them back.
fn char_level(corpus: &str) -> Result<Tokenizer> {
    let chars: BTreeSet<char> = corpus.chars().collect();
    if chars.is_empty() {
        return Err(EngineError::Invalid("the corpus is empty".into()));
    }
    let mut vocab: Vec<(String, u32)> = Vec::with_capacity(chars.len() + 1);
    for (i, c) in chars.iter().enumerate() {
        vocab.push((c.to_string(), i as u32));
    }
    vocab.push((UNK.to_owned(), chars.len() as u32));
    let bpe = BPE::builder()
        .vocab_and_merges(
            vocab
                .into_iter()
                .collect::<tokenizers::models::bpe::Vocab>(),
            Vec::new(),
        )
        .unk_token(UNK.to_owned())
        .build()
        .map_err(tok_err)?;
    let mut t = Tokenizer::new(ModelWrapper::BPE(bpe));
    t.with_decoder(Some(DecoderWrapper::Fuse(Fuse::new())));
    t.add_special_tokens([AddedToken::from(UNK, true)])
        .map_err(tok_err)?;
    Ok(t)
}

/// The largest BPE vocabulary the lab trains (larger ones exceed the trainer's tables).
const MAX_BPE_VOCAB: usize = 1 << 20;

/// Byte-level BPE of `vocab_size` tokens trained on `corpus` (split into lines for the trainer).
fn byte_bpe(corpus: &str, vocab_size: usize) -> Result<Tokenizer> {
    let alphabet: HashSet<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    if vocab_size > MAX_BPE_VOCAB {
        return Err(EngineError::Invalid(format!(
            "a BPE vocabulary of {vocab_size} tokens: at most {MAX_BPE_VOCAB}"
        )));
    }
    if vocab_size <= alphabet.len() {
        return Err(EngineError::Invalid(format!(
            "a byte-level BPE needs more than {} tokens (the 256 bytes); got {vocab_size}",
            alphabet.len()
        )));
    }
    let byte_level = tokenizers::pre_tokenizers::byte_level::ByteLevel::new(false, true, false);
    let mut t = Tokenizer::new(ModelWrapper::BPE(BPE::default()));
    t.with_pre_tokenizer(Some(PreTokenizerWrapper::ByteLevel(byte_level)));
    t.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    let trainer = BpeTrainer::builder()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(alphabet)
        .build();
    let mut trainer = TrainerWrapper::BpeTrainer(trainer);
    t.train(&mut trainer, corpus.split_inclusive('\n'))
        .map_err(tok_err)?;
    Ok(t)
}

/// Token ids of `text`, encoded in pieces of about 64 KiB cut after a newline (character level:
/// the same ids as one call; byte-level BPE: a newline followed by spaces at a cut is two
/// pre-tokens instead of one, once per 64 KiB).
pub fn encode_all(t: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    let mut ids = Vec::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = rest.len().min(1 << 16);
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        if cut < rest.len()
            && let Some(nl) = rest[..cut].rfind('\n')
        {
            cut = nl + 1;
        }
        let enc = t.encode(&rest[..cut], false).map_err(tok_err)?;
        ids.extend_from_slice(enc.get_ids());
        rest = &rest[cut..];
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_round_trip_and_unknowns_are_unk() {
        let t = build(TokenizerKind::Char, "abc ab\nca").expect("tokenizer");
        assert_eq!(t.get_vocab_size(true), 6, "\\n, space, a, b, c, <unk>");
        let ids = encode_all(&t, "cab a\n").expect("ids");
        assert_eq!(ids.len(), 6);
        assert_eq!(t.decode(&ids, false).expect("decode"), "cab a\n");
        let unk = t.token_to_id(UNK).expect("unk id");
        assert_eq!(encode_all(&t, "z").expect("ids"), vec![unk]);
    }

    #[test]
    fn byte_bpe_learns_merges_and_round_trips() {
        let text = "the cat sat on the mat\nthe hat\n".repeat(50);
        let t = build(TokenizerKind::Bpe { vocab_size: 300 }, &text).expect("bpe");
        assert!(t.get_vocab_size(true) > 256 && t.get_vocab_size(true) <= 300);
        let ids = encode_all(&t, &text).expect("ids");
        assert!(
            ids.len() < text.len() / 2,
            "merges shorten the text: {}",
            ids.len()
        );
        assert_eq!(t.decode(&ids, false).expect("decode"), text);
        let odd = "naïve ☃\n";
        assert_eq!(
            t.decode(&encode_all(&t, odd).expect("ids"), false)
                .expect("d"),
            odd
        );
        assert!(build(TokenizerKind::Bpe { vocab_size: 100 }, &text).is_err());
    }
}

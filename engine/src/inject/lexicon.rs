//! Reading a lexicon (one form per line) and a morpheme table (CSV `type,morpheme,examples…`),
//! and sorting a lexicon's forms into new ones and ones the base tokenizer already has as a
//! single token; extracting a lexicon from any text (the words the tokenizer splits most that
//! occur often enough). Errors name the file, line and field.

use std::collections::{HashMap, HashSet};

pub use neoscope_api::inject::LexiconEntry;

use serde::{Deserialize, Serialize};

use crate::error::{EngineError, Result};
use crate::tokenizer::ModelTokenizer;

/// Parses a lexicon: one form per line; blank lines and `#` comments are skipped; a form may not
/// contain whitespace. Duplicates are dropped (first kept); `source` names the file in errors.
pub fn parse_lexicon(text: &str, source: &str) -> Result<Vec<String>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let form = line.trim();
        if form.is_empty() || form.starts_with('#') {
            continue;
        }
        if form.chars().any(char::is_whitespace) {
            return Err(EngineError::Invalid(format!(
                "{source}, line {}: `{form}` contains whitespace; a lexicon has one form per line",
                i + 1
            )));
        }
        if seen.insert(form.to_owned()) {
            out.push(form.to_owned());
        }
    }
    if out.is_empty() {
        return Err(EngineError::Invalid(format!(
            "{source}: the lexicon has no forms"
        )));
    }
    Ok(out)
}

/// Prefix or suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Affix {
    /// Comes before the root.
    Prefix,
    /// Comes after the root.
    Suffix,
}

/// One row of a morpheme table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Morpheme {
    /// Prefix or suffix.
    pub affix: Affix,
    /// The morpheme without its hyphen (`pre-` → `pre`, `-ment` → `ment`).
    pub text: String,
    /// Example words that contain it.
    pub examples: Vec<String>,
}

/// Parses a morpheme table: CSV rows `type,morpheme,example1,…` with `type` `prefix` or
/// `suffix`; an optional header row starting with `type`; empty trailing fields are ignored.
pub fn parse_morphemes(text: &str, source: &str) -> Result<Vec<Morpheme>> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut out = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let line = i + 1;
        let rec = rec.map_err(|e| EngineError::Invalid(format!("{source}, line {line}: {e}")))?;
        let kind = rec.get(0).unwrap_or("").to_lowercase();
        if kind.is_empty() || kind.starts_with('#') || (line == 1 && kind == "type") {
            continue;
        }
        let affix = match kind.as_str() {
            "prefix" => Affix::Prefix,
            "suffix" => Affix::Suffix,
            other => {
                return Err(EngineError::Invalid(format!(
                    "{source}, line {line}, field `type`: `{other}` is neither `prefix` nor `suffix`"
                )));
            }
        };
        let text = rec.get(1).unwrap_or("").trim_matches('-').to_lowercase();
        if text.is_empty() || text.chars().any(|c| !c.is_alphabetic()) {
            return Err(EngineError::Invalid(format!(
                "{source}, line {line}, field `morpheme`: `{}` must be letters (with an optional \
                 hyphen, e.g. `pre-` or `-ment`)",
                rec.get(1).unwrap_or("")
            )));
        }
        let examples = rec
            .iter()
            .skip(2)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        out.push(Morpheme {
            affix,
            text,
            examples,
        });
    }
    if out.is_empty() {
        return Err(EngineError::Invalid(format!("{source}: no morphemes")));
    }
    Ok(out)
}

/// How the forms of a lexicon relate to the base vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sorted {
    /// Forms that need a new token.
    pub new: Vec<String>,
    /// Forms the base tokenizer already has as one token (as a word in running text).
    pub known: Vec<String>,
}

/// Splits forms into new ones and ones that are already a single token when they appear as a
/// word in running text (` form`, with the leading space).
pub fn sort_forms(tok: &ModelTokenizer, forms: &[String]) -> Result<Sorted> {
    let mut new = Vec::new();
    let mut known = Vec::new();
    for f in forms {
        if tok.encode(&format!(" {f}"))?.len() == 1 {
            known.push(f.clone());
        } else {
            new.push(f.clone());
        }
    }
    Ok(Sorted { new, known })
}

/// Words of `text`, by the rule a form is matched by (`tokenizer::forms::word_spans`), that
/// occur at least `min_count` times and that `tok` splits into at least `min_pieces` tokens as a
/// word in running text (` word`). Words of digits alone and words written wholly in capitals
/// (headings, speaker names in plays: `SCENE`, `FALSTAFF`) are left out. Most frequent first
/// (ties by the word). Returns the entries, the number of words and of distinct words.
pub fn extract(
    tok: &ModelTokenizer,
    text: &str,
    min_pieces: usize,
    min_count: usize,
) -> Result<(Vec<LexiconEntry>, usize, usize)> {
    if min_pieces < 2 || min_count == 0 {
        return Err(EngineError::Invalid(format!(
            "lexicon extraction: a word must take at least 2 tokens (got {min_pieces}) and occur \
             at least once (got {min_count})"
        )));
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut words = 0;
    for (a, b) in crate::tokenizer::forms::word_spans(text) {
        *counts.entry(&text[a..b]).or_default() += 1;
        words += 1;
    }
    let distinct = counts.len();
    let mut entries = Vec::new();
    for (w, count) in counts {
        let caps = w.chars().filter(|c| c.is_alphabetic()).count() >= 2
            && !w.chars().any(char::is_lowercase);
        if count < min_count || caps || w.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let pieces = tok.encode(&format!(" {w}"))?.len();
        if pieces >= min_pieces {
            entries.push(LexiconEntry {
                form: w.to_owned(),
                count,
                pieces,
            });
        }
    }
    entries.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.form.cmp(&b.form)));
    Ok((entries, words, distinct))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extraction_keeps_split_frequent_words_most_frequent_first() {
        let m = crate::tiny::tiny_model(1, &candle_core::Device::Cpu).unwrap();
        let text =
            "the zorblax met a zorblax; quimbly, the zorblax said 42 42 42. quimbly! QUIM QUIM";
        let (e, words, distinct) = extract(&m.tokenizer, text, 2, 2).unwrap();
        assert_eq!((words, distinct), (15, 8));
        let forms: Vec<(&str, usize)> = e.iter().map(|e| (e.form.as_str(), e.count)).collect();
        // `the` is one token of the tiny vocabulary; `42` is digits; `met` occurs once; `QUIM`
        // is in capitals.
        assert_eq!(forms, [("zorblax", 3), ("quimbly", 2)]);
        assert!(e.iter().all(|e| e.pieces >= 2));
        assert!(extract(&m.tokenizer, text, 1, 2).is_err());
    }

    #[test]
    fn lexicon_errors_name_the_line() {
        let ok = parse_lexicon("# c\nfoo\n\nbar\nfoo\n", "lex.txt").unwrap();
        assert_eq!(ok, vec!["foo", "bar"]);
        let e = parse_lexicon("foo\nbad form\n", "lex.txt")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lex.txt, line 2"), "{e}");
        assert!(parse_lexicon("\n# only\n", "lex.txt").is_err());
    }

    #[test]
    fn morpheme_table_parses_and_reports_bad_fields() {
        let t = "type,morpheme,example1,example2\nprefix,pre-,prepare,preview\nsuffix,-ment,government,\n";
        let m = parse_morphemes(t, "m.csv").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].text, "pre");
        assert_eq!(m[0].examples, vec!["prepare", "preview"]);
        assert_eq!(m[1].affix, Affix::Suffix);
        assert_eq!(m[1].examples, vec!["government"]);
        let e = parse_morphemes("prefix,pre-,a\ninfix,x,b\n", "m.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2, field `type`"), "{e}");
        let e = parse_morphemes("suffix,-m3nt,a\n", "m.csv")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1, field `morpheme`"), "{e}");
    }
}

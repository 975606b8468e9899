//! Whole-word forms with ids after a base vocabulary (an injection run's vocabulary): text
//! encoding that gives each form, as a whole word, its one id, and the text of those ids.
//!
//! The space before a form belongs to it (as `Ġword` tokens do in byte-level vocabularies).
//! Words are maximal runs of characters that are neither whitespace nor ASCII punctuation; case
//! matters. The base tokenizer encodes everything between forms.

use std::collections::HashMap;

use crate::error::Result;

/// Forms and their ids (`base + index`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forms {
    /// The forms; form `i` has id `base + i`.
    pub forms: Vec<String>,
    /// Size of the base vocabulary (first new id).
    pub base: usize,
    index: HashMap<String, usize>,
}

fn is_word_char(c: char) -> bool {
    !c.is_whitespace() && !c.is_ascii_punctuation()
}

/// Byte ranges of the words of `text` (the units a form can stand for).
pub fn word_spans(text: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut chars = text.char_indices().peekable();
    std::iter::from_fn(move || {
        let (start, c) = chars.find(|(_, c)| is_word_char(*c))?;
        let mut end = start + c.len_utf8();
        while let Some((i, c)) = chars.peek().copied() {
            if !is_word_char(c) {
                break;
            }
            end = i + c.len_utf8();
            chars.next();
        }
        Some((start, end))
    })
}

impl Forms {
    /// `forms` after `base` base ids.
    pub fn new(forms: Vec<String>, base: usize) -> Self {
        let index = forms
            .iter()
            .enumerate()
            .map(|(i, f)| (f.clone(), i))
            .collect();
        Self { forms, base, index }
    }

    /// Number of forms.
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

    /// The form an id stands for (`None` for a base id or one past the forms).
    pub fn form_of(&self, id: u32) -> Option<&str> {
        (id as usize)
            .checked_sub(self.base)
            .and_then(|i| self.forms.get(i))
            .map(String::as_str)
    }

    /// Encodes `text`: forms become their ids, the text between them goes through `plain`.
    pub fn encode_with(
        &self,
        text: &str,
        plain: &mut dyn FnMut(&str) -> Result<Vec<u32>>,
    ) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut plain_start = 0;
        for (start, end) in word_spans(text) {
            let Some(fi) = self.find(&text[start..end]) else {
                continue;
            };
            let before = &text[plain_start..start];
            let before = before.strip_suffix(' ').unwrap_or(before);
            if !before.is_empty() {
                ids.extend(plain(before)?);
            }
            ids.push(self.id(fi));
            plain_start = end;
        }
        if plain_start < text.len() {
            ids.extend(plain(&text[plain_start..])?);
        }
        Ok(ids)
    }

    /// Decodes `ids`: each form as ` form`, each run of other ids through `plain`.
    pub fn decode_with(
        &self,
        ids: &[u32],
        plain: &mut dyn FnMut(&[u32]) -> Result<String>,
    ) -> Result<String> {
        Ok(self.decode_marked(ids, plain)?.0)
    }

    /// `decode_with`, and the byte range of each form (without its space) in the text.
    pub fn decode_marked(
        &self,
        ids: &[u32],
        plain: &mut dyn FnMut(&[u32]) -> Result<String>,
    ) -> Result<(String, Vec<(usize, usize)>)> {
        let mut out = String::new();
        let mut spans = Vec::new();
        let mut run_start = 0;
        for (i, &id) in ids.iter().enumerate() {
            if let Some(f) = self.form_of(id) {
                if run_start < i {
                    out.push_str(&plain(&ids[run_start..i])?);
                }
                out.push(' ');
                spans.push((out.len(), out.len() + f.len()));
                out.push_str(f);
                run_start = i + 1;
            }
        }
        if run_start < ids.len() {
            out.push_str(&plain(&ids[run_start..])?);
        }
        Ok((out, spans))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy base tokenizer: one id per byte.
    fn bytes(t: &str) -> Result<Vec<u32>> {
        Ok(t.bytes().map(u32::from).collect())
    }

    fn unbytes(ids: &[u32]) -> Result<String> {
        Ok(ids.iter().map(|&i| char::from(i as u8)).collect())
    }

    #[test]
    fn forms_are_whole_words_and_own_their_space() -> Result<()> {
        let f = Forms::new(vec!["blorf".into(), "zan".into()], 1000);
        let ids = f.encode_with("a blorf, zanzan zan.", &mut bytes)?;
        assert_eq!(ids[..1], [u32::from(b'a')]);
        assert_eq!(ids[1], 1000);
        // `zanzan` is not the form `zan`: bytes, with its space.
        let (text, spans) = f.decode_marked(&ids, &mut unbytes)?;
        assert_eq!(text, "a blorf, zanzan zan.");
        let marked: Vec<&str> = spans.iter().map(|&(a, b)| &text[a..b]).collect();
        assert_eq!(marked, ["blorf", "zan"]);
        assert_eq!(ids.iter().filter(|&&i| i == 1001).count(), 1);
        assert_eq!(f.form_of(1001), Some("zan"));
        assert_eq!(f.form_of(1002), None);
        assert_eq!(f.form_of(999), None);
        Ok(())
    }
}

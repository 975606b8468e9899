//! Tokenizers: built from GGUF metadata (byte-level BPE with the model's pre-tokenizer, or a
//! SentencePiece vocabulary: `spm`) or read from a Hugging Face `tokenizer.json`, plus
//! chat-template rendering.

pub mod forms;
mod spm;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

use crate::error::{EngineError, Result};
pub use forms::Forms;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: "user".into(),
            content: content.into(),
        }
    }
}

/// A tokenizer with the model's special tokens and chat template.
#[derive(Clone)]
pub struct ModelTokenizer {
    inner: Tokenizer,
    chat_template: Option<String>,
    /// End-of-sequence token (generation stops on it).
    pub eos_id: Option<u32>,
    /// Beginning-of-sequence token, if the model has one.
    pub bos_id: Option<u32>,
    /// Whether a prompt starts with the beginning-of-sequence token (Gemma).
    pub add_bos: bool,
    /// An injection run's forms, when its vocabulary is attached to the model.
    forms: Option<Arc<Forms>>,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("vocab", &self.vocab_size())
            .field("eos_id", &self.eos_id)
            .finish_non_exhaustive()
    }
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

fn meta_str<'a>(md: &'a HashMap<String, gguf_file::Value>, key: &str) -> Option<&'a str> {
    md.get(key)
        .and_then(|v| v.to_string().ok())
        .map(String::as_str)
}

fn meta_u32(md: &HashMap<String, gguf_file::Value>, key: &str) -> Option<u32> {
    md.get(key).and_then(|v| v.to_u32().ok())
}

fn meta_strings(
    md: &HashMap<String, gguf_file::Value>,
    key: &str,
    path: &Path,
) -> Result<Vec<String>> {
    let v = md
        .get(key)
        .ok_or_else(|| EngineError::bad_model(path, format!("missing metadata `{key}`")))?
        .to_vec()
        .map_err(|e| EngineError::bad_model(path, format!("`{key}`: {e}")))?;
    v.iter()
        .map(|x| {
            x.to_string()
                .cloned()
                .map_err(|e| EngineError::bad_model(path, format!("`{key}`: {e}")))
        })
        .collect()
}

/// The byte-level BPE tokenizer of a `gpt2` GGUF vocabulary, with the pre-tokenizer
/// `tokenizer.ggml.pre` names.
fn byte_level_bpe(
    md: &HashMap<String, gguf_file::Value>,
    tokens: &[String],
    path: &Path,
) -> Result<Tokenizer> {
    let merges = meta_strings(md, "tokenizer.ggml.merges", path)?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), u32::try_from(i).unwrap_or(u32::MAX)))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| EngineError::bad_model(path, format!("merge {i} `{m}` malformed")))
        })
        .collect::<Result<_>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(tok_err)?;
    let mut tok = Tokenizer::new(bpe);
    let pre = meta_str(md, "tokenizer.ggml.pre").unwrap_or("gpt2");
    // `smollm` (and the plain GPT-2 family) split digits one by one before byte-level BPE
    // with the GPT-2 regex; `gpt2` uses the regex alone.
    let byte_level = ByteLevel::new(false, true, true);
    match pre {
        "smollm" | "starcoder" | "refact" => {
            tok.with_pre_tokenizer(Some(Sequence::new(vec![
                Digits::new(true).into(),
                byte_level.into(),
            ])));
        }
        "gpt2" | "default" => {
            tok.with_pre_tokenizer(Some(byte_level));
        }
        other => {
            return Err(EngineError::bad_model(
                path,
                format!("pre-tokenizer `{other}` is not supported yet"),
            ));
        }
    }
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tok)
}

impl ModelTokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata: the `gpt2`
    /// model (byte-level BPE; the pre-tokenizer follows `tokenizer.ggml.pre`) or the `llama`
    /// model (a SentencePiece vocabulary, see `spm`).
    pub fn from_gguf(md: &HashMap<String, gguf_file::Value>, path: &Path) -> Result<Self> {
        // The tokenizers crate's own errors ("Token `a` out of vocabulary") say nothing of where
        // the vocabulary came from: they are reported against the file's metadata.
        Self::build_gguf(md, path).map_err(|e| match e {
            EngineError::Tokenizer(msg) => EngineError::bad_model(
                path,
                format!("tokenizer metadata (tokenizer.ggml.*): {msg}"),
            ),
            other => other,
        })
    }

    fn build_gguf(md: &HashMap<String, gguf_file::Value>, path: &Path) -> Result<Self> {
        let model = meta_str(md, "tokenizer.ggml.model").unwrap_or("");
        let tokens = meta_strings(md, "tokenizer.ggml.tokens", path)?;
        let types: Vec<i32> = md
            .get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|v| v.iter().map(|x| x.to_i32().unwrap_or(1)).collect())
            .unwrap_or_default();
        let (mut tok, tokens) = match model {
            "gpt2" => (byte_level_bpe(md, &tokens, path)?, tokens),
            "llama" => {
                let scores: Vec<f32> = md
                    .get("tokenizer.ggml.scores")
                    .and_then(|v| v.to_vec().ok())
                    .map(|v| v.iter().map(|x| x.to_f32().unwrap_or(0.0)).collect())
                    .unwrap_or_default();
                let arch = meta_str(md, "general.architecture").unwrap_or("");
                let unk = meta_u32(md, "tokenizer.ggml.unknown_token_id")
                    .and_then(|i| tokens.get(i as usize))
                    .map(String::as_str);
                let prefix = md
                    .get("tokenizer.ggml.add_space_prefix")
                    .and_then(|v| v.to_bool().ok())
                    .unwrap_or(true);
                spm::build(
                    &tokens,
                    &scores,
                    unk,
                    arch.starts_with("gemma"),
                    prefix,
                    path,
                )?
            }
            other => {
                return Err(EngineError::bad_model(
                    path,
                    format!(
                        "tokenizer model `{other}` is not supported (byte-level BPE `gpt2` and \
                         SentencePiece `llama`)"
                    ),
                ));
            }
        };
        // Control (3) and user-defined (4) tokens are matched whole in the text, as the model's
        // own tokenizer does.
        let specials: Vec<AddedToken> = types
            .iter()
            .enumerate()
            .filter(|(_, t)| **t == 3 || **t == 4)
            .filter_map(|(i, t)| tokens.get(i).map(|s| AddedToken::from(s.clone(), *t == 3)))
            .collect();
        tok.add_special_tokens(specials).map_err(tok_err)?;
        Ok(Self {
            inner: tok,
            chat_template: meta_str(md, "tokenizer.chat_template").map(str::to_owned),
            eos_id: meta_u32(md, "tokenizer.ggml.eos_token_id"),
            bos_id: meta_u32(md, "tokenizer.ggml.bos_token_id"),
            add_bos: md
                .get("tokenizer.ggml.add_bos_token")
                .and_then(|v| v.to_bool().ok())
                .unwrap_or(false),
            forms: None,
        })
    }

    /// Reads a Hugging Face `tokenizer.json`, with the chat template and special ids from a
    /// `tokenizer_config.json` beside it when present.
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = Tokenizer::from_file(&path)
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", path.display())))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = match std::fs::read_to_string(&cfg_path) {
            Ok(s) => serde_json::from_str(&s)
                .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", cfg_path.display())))?,
            Err(_) => serde_json::Value::Null,
        };
        let id_of = |key: &str| {
            cfg.get(key)
                .and_then(|v| {
                    v.as_str()
                        .or_else(|| v.get("content").and_then(|c| c.as_str()))
                })
                .and_then(|s| inner.token_to_id(s))
        };
        let eos_id = id_of("eos_token");
        let bos_id = id_of("bos_token");
        Ok(Self {
            chat_template: cfg
                .get("chat_template")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            inner,
            eos_id,
            add_bos: bos_id.is_some()
                && cfg
                    .get("add_bos_token")
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false),
            bos_id,
            forms: None,
        })
    }

    /// Wraps a tokenizer that was built in code.
    pub fn from_tokenizer(inner: Tokenizer, eos_id: Option<u32>) -> Self {
        Self {
            inner,
            chat_template: None,
            eos_id,
            bos_id: None,
            add_bos: false,
            forms: None,
        }
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// Number of ids, added tokens and attached forms included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true) + self.forms.as_ref().map_or(0, |f| f.len())
    }

    /// The attached forms (ids after the base vocabulary), if any.
    pub fn forms(&self) -> Option<&Forms> {
        self.forms.as_deref()
    }

    /// Attaches `forms` (their ids must follow the base vocabulary), or detaches with `None`.
    pub fn set_forms(&mut self, forms: Option<Arc<Forms>>) {
        self.forms = forms;
    }

    /// Token ids of `text`; no BOS/EOS is added, special tokens written in the text are matched;
    /// attached forms, as whole words, are their own ids.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.forms {
            Some(f) => f.encode_with(text, &mut |t| self.encode_base(t)),
            None => self.encode_base(text),
        }
    }

    fn encode_base(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`, special tokens and attached forms included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let base = |ids: &[u32]| self.inner.decode(ids, false).map_err(tok_err);
        match &self.forms {
            Some(f) => f.decode_with(ids, &mut |ids| base(ids)),
            None => base(ids),
        }
    }

    /// Text of `ids` and the byte range of each attached form in it (none without forms).
    pub fn decode_marked(&self, ids: &[u32]) -> Result<(String, Vec<(usize, usize)>)> {
        let base = |ids: &[u32]| self.inner.decode(ids, false).map_err(tok_err);
        match &self.forms {
            Some(f) => f.decode_marked(ids, &mut |ids| base(ids)),
            None => Ok((base(ids)?, Vec::new())),
        }
    }

    /// The readable text of one token (bytes decoded; invalid UTF-8 shown as U+FFFD).
    pub fn piece(&self, id: u32) -> String {
        self.decode(&[id]).unwrap_or_default()
    }

    /// Whether the model has a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat_template.is_some()
    }

    /// Renders the chat template (Jinja, as Hugging Face does) for `messages`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tpl = self.chat_template.as_deref().ok_or_else(|| {
            EngineError::Invalid("this model has no chat template; use plain mode".into())
        })?;
        let mut env = minijinja::Environment::new();
        env.add_template("chat", tpl)
            .map_err(|e| EngineError::Tokenizer(format!("chat template: {e}")))?;
        let t = env
            .get_template("chat")
            .map_err(|e| EngineError::Tokenizer(format!("chat template: {e}")))?;
        let bos = self.bos_id.map(|i| self.piece(i)).unwrap_or_default();
        let eos = self.eos_id.map(|i| self.piece(i)).unwrap_or_default();
        t.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos,
            eos_token => eos,
        })
        .map_err(|e| EngineError::Tokenizer(format!("chat template: {e}")))
    }

    /// Ids of `text` as a single user turn with the generation prompt (chat mode; the template
    /// writes any BOS itself), or of the plain text after the BOS the model expects.
    pub fn encode_prompt(&self, text: &str, chat: bool) -> Result<Vec<u32>> {
        if chat {
            self.encode(&self.apply_chat_template(&[ChatMessage::user(text)], true)?)
        } else {
            let mut ids = self.bos_prefix();
            ids.extend(self.encode(text)?);
            Ok(ids)
        }
    }

    /// What a plain prompt starts with: the BOS token when the model expects one, else nothing.
    pub fn bos_prefix(&self) -> Vec<u32> {
        match self.bos_id {
            Some(b) if self.add_bos => vec![b],
            _ => Vec::new(),
        }
    }
}

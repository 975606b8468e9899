//! What a trained word does: self-verbalization (ask the model what it means), plug-in
//! evaluation (does its verbalization recover its effect?), nearest tokens, similarity,
//! arithmetic, steering (logit differences and generations with and without the word), and a
//! side-by-side comparison of two words.

use super::train::{ScoredSeq, scored_seq, seq_logprobs};
use super::{Word, prepare};
use crate::error::{EngineError, Result};
use crate::infer::{GenerateOptions, generate, last_logits};
use crate::model::LoadedModel;
use crate::sampling::{Sampling, top_indices};
pub use neoscope_api::words::{
    CHAT_DEFINITION_PROMPT, CompareConfig, Definition, HeldoutSets, LogitShift, Neighbor,
    PLAIN_DEFINITION_PROMPTS, PlugIn, Steering, WordReport, default_definition_prompts,
};

fn generate_with(
    m: &LoadedModel,
    words: &[Word],
    prompt: &str,
    chat: bool,
    max_new_tokens: usize,
    sampling: Sampling,
    cancel: &dyn Fn() -> bool,
) -> Result<String> {
    let (ids, hooks) = prepare(m, prompt, chat, words)?;
    let opts = GenerateOptions {
        max_new_tokens,
        sampling,
        stop_at_eos: true,
    };
    let out = generate(m, &ids, opts, &hooks, &mut |_, _| !cancel())?;
    m.tokenizer.decode(&out)
}

/// Asks the model what `word` means, with each prompt (plain and chat).
pub fn define(
    m: &LoadedModel,
    word: &Word,
    prompts: &[(String, bool)],
    max_new_tokens: usize,
    sampling: Sampling,
    cancel: &dyn Fn() -> bool,
) -> Result<Vec<Definition>> {
    prompts
        .iter()
        .map(|(p, chat)| {
            let prompt = p.replace("{w}", &word.name);
            let text = generate_with(
                m,
                std::slice::from_ref(word),
                &prompt,
                *chat,
                max_new_tokens,
                sampling,
                cancel,
            )?;
            Ok(Definition {
                prompt,
                chat: *chat,
                text: text.trim().to_owned(),
            })
        })
        .collect()
}

/// Mean over examples of the completion's mean token log-probability.
pub fn mean_logprob(m: &LoadedModel, words: &[Word], pairs: &[(String, String)]) -> Result<f32> {
    let names: Vec<&str> = words.iter().map(|w| w.name.as_str()).collect();
    let seqs: Vec<ScoredSeq> = pairs
        .iter()
        .map(|(p, t)| scored_seq(m, p, t, &names))
        .collect::<Result<_>>()?;
    let vectors = words
        .iter()
        .map(|w| candle_core::Tensor::from_slice(&w.vector, w.vector.len(), m.llama.device()))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mut total = 0.0f32;
    for chunk in seqs.chunks(8) {
        let refs: Vec<&ScoredSeq> = chunk.iter().collect();
        let lp = seq_logprobs(m, words, &vectors, &refs)?.to_vec1::<f32>()?;
        for (s, l) in chunk.iter().zip(lp) {
            let n = s.targets.len() as f32;
            total += l / n;
        }
    }
    Ok(total / pairs.len().max(1) as f32)
}

/// `prompt` with every occurrence of the word `name` (and the space before it) removed.
pub fn remove_word(prompt: &str, name: &str) -> String {
    prompt.replace(&format!(" {name}"), "").replace(name, "")
}

/// Replaces the word by `text` (e.g. its verbalization) and measures how much of the word's
/// effect on the held-out targets it recovers.
pub fn plug_in(
    m: &LoadedModel,
    word: &Word,
    heldout: &[(String, String)],
    text: &str,
) -> Result<PlugIn> {
    if heldout.is_empty() {
        return Err(EngineError::Invalid("no held-out examples".into()));
    }
    let swap = |with: &str| -> Vec<(String, String)> {
        heldout
            .iter()
            .map(|(p, t)| {
                let p = if with.is_empty() {
                    remove_word(p, &word.name)
                } else {
                    p.replace(&word.name, with)
                };
                (p, t.clone())
            })
            .collect()
    };
    let with_word = mean_logprob(m, std::slice::from_ref(word), heldout)?;
    let with_text = mean_logprob(m, &[], &swap(text))?;
    let without_word = mean_logprob(m, &[], &swap(""))?;
    let denom = with_word - without_word;
    Ok(PlugIn {
        with_word,
        with_text,
        without_word,
        text: text.to_owned(),
        recovered: if denom.abs() > 1e-6 {
            (with_text - without_word) / denom
        } else {
            0.0
        },
    })
}

/// Cosine similarity of `v` to every base token embedding.
pub fn cosines(m: &LoadedModel, v: &[f32]) -> Result<Vec<f32>> {
    let e = &m.llama.embed;
    let dev = e.device();
    let q = candle_core::Tensor::from_slice(v, v.len(), dev)?;
    let qn = q.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?.max(1e-12);
    let dots = e.matmul(&q.unsqueeze(1)?)?.squeeze(1)?;
    let norms = e.sqr()?.sum(1)?.sqrt()?;
    let c = (dots / (norms * f64::from(qn))?)?;
    Ok(c.to_vec1::<f32>()?)
}

/// The `k` base tokens closest to `v` by cosine similarity (ties by id).
pub fn nearest(m: &LoadedModel, v: &[f32], k: usize) -> Result<Vec<Neighbor>> {
    let c = cosines(m, v)?;
    Ok(top_indices(&c, k)
        .into_iter()
        .map(|i| {
            let id = u32::try_from(i).unwrap_or(0);
            Neighbor {
                id,
                text: m.tokenizer.piece(id),
                cosine: c[i],
            }
        })
        .collect())
}

/// Vector of a term in word arithmetic: a trained word by name, or an ordinary word (mean of
/// its token embeddings).
pub fn term_vector(m: &LoadedModel, words: &[Word], term: &str) -> Result<Vec<f32>> {
    if let Some(w) = words.iter().find(|w| w.name == term) {
        return Ok(w.vector.clone());
    }
    super::init_vector(m, &super::Init::Words(vec![term.to_owned()]))
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

/// Evaluates `a - b + c …`: terms joined by `+`/`-`, each a trained word or an ordinary word.
pub fn arithmetic(m: &LoadedModel, words: &[Word], expr: &str) -> Result<Vec<f32>> {
    arithmetic_with(expr, m.llama.cfg.hidden_size, &mut |t| {
        term_vector(m, words, t)
    })
}

/// `a - b + c` over vectors of length `d`, each term resolved by `term`.
pub fn arithmetic_with(
    expr: &str,
    d: usize,
    term: &mut dyn FnMut(&str) -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    let mut out = vec![0.0f32; d];
    let mut sign = 1.0f32;
    let mut any = false;
    let spaced = expr.replace('+', " + ").replace(" - ", " − ");
    for tok in spaced.split_whitespace() {
        match tok {
            "+" => sign = 1.0,
            "−" | "-" => sign = -1.0,
            t => {
                let v = term(t)?;
                out.iter_mut().zip(v).for_each(|(o, x)| *o += sign * x);
                sign = 1.0;
                any = true;
            }
        }
    }
    if any {
        Ok(out)
    } else {
        Err(EngineError::Invalid(format!("`{expr}` has no terms")))
    }
}

/// How to run a steering comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SteerOptions {
    /// Chat mode.
    pub chat: bool,
    /// Promoted/suppressed tokens to list.
    pub top: usize,
    /// Tokens to generate on each side.
    pub max_new_tokens: usize,
}

/// Compares a prompt containing the word with the same prompt where the word is replaced by
/// `baseline` (empty: removed).
pub fn steer(
    m: &LoadedModel,
    word: &Word,
    prompt: &str,
    baseline: &str,
    opts: SteerOptions,
    cancel: &dyn Fn() -> bool,
) -> Result<Steering> {
    let SteerOptions {
        chat,
        top,
        max_new_tokens,
    } = opts;
    if !prompt.contains(&word.name) {
        return Err(EngineError::Invalid(format!(
            "the steering prompt must contain {}",
            word.name
        )));
    }
    let without = if baseline.is_empty() {
        remove_word(prompt, &word.name)
    } else {
        prompt.replace(&word.name, baseline)
    };
    let words = std::slice::from_ref(word);
    let (ids_w, hooks_w) = prepare(m, prompt, chat, words)?;
    let (ids_o, hooks_o) = prepare(m, &without, chat, &[])?;
    let lw = last_logits(m, &ids_w, &hooks_w)?;
    let lo = last_logits(m, &ids_o, &hooks_o)?;
    let (promoted, suppressed) = crate::mfa::steer::logit_shift(m, &lo, &lw, top);
    let greedy = Sampling::GREEDY;
    Ok(Steering {
        promoted,
        suppressed,
        generation_with: generate_with(m, words, prompt, chat, max_new_tokens, greedy, cancel)?,
        generation_without: generate_with(m, &[], &without, chat, max_new_tokens, greedy, cancel)?,
        prompt_with: prompt.to_owned(),
        prompt_without: without,
    })
}

/// Reports on two words side by side. `heldout` holds named held-out sets of (prompt with the
/// placeholder `{w}`, target); each word is scored on each set. Chat definition prompts are
/// left out for a model without a chat template.
pub fn compare(
    m: &LoadedModel,
    a: &Word,
    b: &Word,
    heldout: &[(String, Vec<(String, String)>)],
    cfg: &CompareConfig,
    cancel: &dyn Fn() -> bool,
) -> Result<[WordReport; 2]> {
    let prompts: Vec<(String, bool)> = cfg
        .definition_prompts
        .iter()
        .filter(|(_, chat)| !chat || m.tokenizer.has_chat_template())
        .cloned()
        .collect();
    let report = |w: &Word| -> Result<WordReport> {
        let held = heldout
            .iter()
            .map(|(name, pairs)| {
                let pairs: Vec<(String, String)> = pairs
                    .iter()
                    .map(|(p, t)| (p.replace("{w}", &w.name), t.clone()))
                    .collect();
                Ok((
                    name.clone(),
                    mean_logprob(m, std::slice::from_ref(w), &pairs)?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(WordReport {
            name: w.name.clone(),
            injection: w.injection,
            norm: w.vector.iter().map(|x| x * x).sum::<f32>().sqrt(),
            definitions: define(m, w, &prompts, cfg.max_new_tokens, Sampling::GREEDY, cancel)?,
            neighbors: nearest(m, &w.vector, cfg.neighbors)?,
            similarities: cfg
                .similar
                .iter()
                .map(|o| Ok((o.clone(), cosine(&w.vector, &term_vector(m, &[], o)?))))
                .collect::<Result<_>>()?,
            heldout: held,
            steering: steer(
                m,
                w,
                &cfg.steer_prompt.replace("{w}", &w.name),
                "",
                SteerOptions {
                    chat: false,
                    top: 10,
                    max_new_tokens: cfg.max_new_tokens,
                },
                cancel,
            )?,
        })
    };
    Ok([report(a)?, report(b)?])
}

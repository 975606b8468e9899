//! Inference on a loaded model: next-token tables and generation with a KV cache and streaming.

use candle_core::IndexOp;

use crate::error::{EngineError, Result};
use crate::hooks::{HookSpec, Positions};
use crate::model::decode::Decoder;
use crate::model::{Batch, KvCache, LoadedModel, PadSide, fast};
use crate::sampling::{Sampler, Sampling, TokenScore, softmax, top_indices};

/// Logit row of the last position of a single prompt.
pub fn last_logits(m: &LoadedModel, ids: &[u32], hooks: &HookSpec) -> Result<Vec<f32>> {
    let batch = Batch::new(&[ids.to_vec()], PadSide::Right, m.llama.device())?;
    let out = m.llama.forward(&batch, hooks, None)?;
    let last = batch.last_index(0);
    Ok(out.logits.i((0, last))?.to_vec1::<f32>()?)
}

/// The `k` most likely next tokens after `ids`.
pub fn next_token_top_k(
    m: &LoadedModel,
    ids: &[u32],
    k: usize,
    hooks: &HookSpec,
) -> Result<Vec<TokenScore>> {
    let logits = last_logits(m, ids, hooks)?;
    Ok(top_k_table(m, &logits, k))
}

/// A top-k table for one logit row.
pub fn top_k_table(m: &LoadedModel, logits: &[f32], k: usize) -> Vec<TokenScore> {
    let probs = softmax(logits);
    top_indices(logits, k)
        .into_iter()
        .map(|i| {
            let id = u32::try_from(i).unwrap_or(0);
            TokenScore {
                id,
                text: m.tokenizer.piece(id),
                logit: logits[i],
                prob: probs[i],
            }
        })
        .collect()
}

/// Generation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GenerateOptions {
    /// How many tokens at most.
    pub max_new_tokens: usize,
    /// How to pick each token.
    pub sampling: Sampling,
    /// Stop at the end-of-sequence token.
    pub stop_at_eos: bool,
}

/// Generates from `prompt`, calling `on_token(id, text_so_far_delta)` after each new token;
/// `on_token` returns `false` to stop early (cancel). Interventions apply to the prompt as
/// given; during decoding only those on `Positions::All` (steering) stay active.
pub fn generate(
    m: &LoadedModel,
    prompt: &[u32],
    opts: GenerateOptions,
    hooks: &HookSpec,
    on_token: &mut dyn FnMut(u32, &str) -> bool,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        return Err(EngineError::Invalid("the prompt is empty".into()));
    }
    opts.sampling.validate().map_err(EngineError::Invalid)?;
    let n_ctx = m.llama.cfg.n_ctx();
    if prompt.len().saturating_add(opts.max_new_tokens) > n_ctx {
        return Err(EngineError::Invalid(format!(
            "prompt ({} tokens) plus {} new tokens exceeds the context of {n_ctx}",
            prompt.len(),
            opts.max_new_tokens
        )));
    }
    let dev = m.llama.device();
    let mut cache = KvCache::new(m.llama.cfg.num_hidden_layers);
    let mut sampler = Sampler::new(opts.sampling);
    let step_hooks = HookSpec {
        capture: Vec::new(),
        interventions: hooks
            .interventions
            .iter()
            .filter(|iv| iv.positions == Positions::All)
            .cloned()
            .collect(),
    };
    // Nothing hooked or steered: the hand-written decoder (same values, far less overhead).
    let mut decoder = if hooks.capture.is_empty()
        && hooks.interventions.is_empty()
        && fast::supported(&m.llama)
    {
        Some(Decoder::new(&m.llama)?)
    } else {
        None
    };
    let mut new_ids = Vec::new();
    let mut emitted = String::new();
    let mut input = prompt.to_vec();
    let mut spec = hooks;
    for _ in 0..opts.max_new_tokens {
        let next = if let Some(dec) = decoder.as_mut() {
            sampler.sample(&dec.step(&input)?)
        } else {
            let batch = Batch::new(&[input.clone()], PadSide::Right, dev)?;
            let out = m.llama.forward(&batch, spec, Some(&mut cache))?;
            let last = out.logits.i((0, input.len() - 1))?;
            if opts.sampling.is_greedy() && !dev.is_cpu() {
                // Greedy on a GPU: only the chosen id crosses to the host, not the vocabulary
                // row.
                last.argmax(0)?.to_scalar::<u32>()?
            } else {
                sampler.sample(&last.to_vec1::<f32>()?)
            }
        };
        if opts.stop_at_eos && Some(next) == m.tokenizer.eos_id {
            break;
        }
        new_ids.push(next);
        let text = m.tokenizer.decode(&new_ids)?;
        // Hold back a trailing partial UTF-8 sequence until it completes.
        let delta = if text.ends_with('\u{FFFD}') {
            String::new()
        } else {
            let d = text.get(emitted.len()..).unwrap_or("").to_owned();
            emitted = text;
            d
        };
        if !on_token(next, &delta) {
            break;
        }
        input = vec![next];
        spec = &step_hooks;
    }
    Ok(new_ids)
}

//! Embedding-only training of new words: everything in the model is frozen, only the words'
//! vectors are `Var`s. Loss (a): cross-entropy on target completions (mean over each example's
//! target tokens, then over the batch), as in the seed. Loss (b): preference — DPO plus an
//! APO-up term, `−log σ(β(Δc − Δr)) − log σ(βΔc)` with `Δ = log π − log π_ref` summed over the
//! completion, the reference being the same model with the initial vectors. The batch's loss
//! is the mean over its examples, or their sum (`Reduction::Sum`, the seed's recipe).

use candle_core::backprop::GradStore;
use candle_core::{D, DType, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::dataset::Example;
use super::{Injection, Word, encode_with_words, grad};
use crate::error::{EngineError, Result};
use crate::hooks::HookPoint;
use crate::model::LoadedModel;
use crate::model::batch::{Batch, PadSide};
use crate::model::intervene::{ResolvedIntervention, ResolvedOp};
use crate::model::ops::log_softmax_last;
pub use neoscope_api::words::{Loss, Reduction, StopReason, TrainConfig, TrainStep};

/// The result of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// Trained vectors, one per word.
    pub vectors: Vec<Vec<f32>>,
    /// Loss of every step.
    pub losses: Vec<f32>,
    /// Mean loss of every completed epoch.
    pub epoch_losses: Vec<f32>,
    /// How it ended.
    pub stop: StopReason,
}

/// A tokenized sequence to score: model ids, word occurrences, and (position, target id) pairs
/// where the logits at `position` should predict `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScoredSeq {
    /// Ids the model sees (words replaced by the carrier).
    pub ids: Vec<u32>,
    /// (position, word index) of word occurrences.
    pub occ: Vec<(usize, usize)>,
    /// (position, target id) pairs.
    pub targets: Vec<(usize, u32)>,
}

/// Tokenizes `prompt` (with words) followed by `completion` for scoring the completion.
pub fn scored_seq(
    m: &LoadedModel,
    prompt: &str,
    completion: &str,
    names: &[&str],
) -> Result<ScoredSeq> {
    let wt = encode_with_words(m, prompt, names)?;
    let comp = m.tokenizer.encode(completion)?;
    if comp.is_empty() {
        return Err(EngineError::Invalid(format!(
            "the completion of `{prompt}` is empty"
        )));
    }
    if wt.ids.is_empty() {
        return Err(EngineError::Invalid("empty prompt".into()));
    }
    let mut ids = wt.model_ids();
    let p = ids.len();
    let targets = comp
        .iter()
        .enumerate()
        .map(|(i, t)| (p - 1 + i, *t))
        .collect();
    ids.extend(&comp);
    Ok(ScoredSeq {
        ids,
        occ: wt.occurrences,
        targets,
    })
}

/// Interventions placing `vectors` (one (d_model) tensor per word, trainable or not) at the word
/// occurrences of a batch made from `seqs`; `embed_scale` as in `word_interventions`.
pub fn word_tensor_interventions(
    words: &[Word],
    vectors: &[Tensor],
    seqs: &[&ScoredSeq],
    width: usize,
    embed_scale: f32,
) -> Result<Vec<ResolvedIntervention>> {
    let rows = seqs.len();
    let mut out = Vec::new();
    let Some(first) = vectors.first() else {
        return Ok(out);
    };
    let dev = first.device();
    for (wi, (w, v)) in words.iter().zip(vectors).enumerate() {
        let mut mask = vec![0u8; rows * width];
        let mut any = false;
        for (r, s) in seqs.iter().enumerate() {
            for (p, i) in &s.occ {
                if *i == wi {
                    mask[r * width + p] = 1;
                    any = true;
                }
            }
        }
        if !any {
            continue;
        }
        let mask = Tensor::from_vec(mask, (rows, width, 1), dev)?;
        if let Injection::ResidPre(_) = w.injection {
            out.push(ResolvedIntervention {
                point: HookPoint::Embed,
                mask: mask.clone(),
                op: ResolvedOp::Replace(v.zeros_like()?.detach()),
            });
        }
        // An embedding-injected word is a raw embedding row: scaled like the token rows.
        let v = match w.injection {
            Injection::Embedding if embed_scale != 1.0 => (v * f64::from(embed_scale))?,
            _ => v.clone(),
        };
        out.push(ResolvedIntervention {
            point: w.injection.point(),
            mask,
            op: ResolvedOp::Replace(v),
        });
    }
    Ok(out)
}

/// Summed log-probabilities of each sequence's targets (n_seqs,), differentiable in `vectors`.
pub fn seq_logprobs(
    m: &LoadedModel,
    words: &[Word],
    vectors: &[Tensor],
    seqs: &[&ScoredSeq],
) -> Result<Tensor> {
    let rows: Vec<Vec<u32>> = seqs.iter().map(|s| s.ids.clone()).collect();
    let dev = m.llama.device();
    let batch = Batch::new(&rows, PadSide::Right, dev)?;
    let width = batch.width();
    let ivs = word_tensor_interventions(words, vectors, seqs, width, m.llama.embed_scale())?;
    let embeds = m.llama.embed_ids(&batch)?;
    let (h, _) = m.llama.hidden_embeds(embeds, &batch, &[], &ivs, None)?;
    let d = m.llama.cfg.hidden_size;
    let mut flat = Vec::new();
    let mut tgt = Vec::new();
    let mut owner = Vec::new();
    for (r, s) in seqs.iter().enumerate() {
        for (p, t) in &s.targets {
            flat.push(u32::try_from(r * width + p).unwrap_or(0));
            tgt.push(*t);
            owner.push(r);
        }
    }
    let n = flat.len();
    let flat = Tensor::from_vec(flat, n, dev)?;
    // Unembed only the scored positions: the vocabulary projection dominates otherwise.
    let hs = h.reshape((rows.len() * width, d))?.index_select(&flat, 0)?;
    let lp = log_softmax_last(&m.llama.logits(&hs)?)?;
    let tgt = Tensor::from_vec(tgt, (n, 1), dev)?;
    let picked = lp.gather(&tgt, 1)?; // (n, 1)
    let mut sel = vec![0f32; seqs.len() * n];
    for (j, r) in owner.iter().enumerate() {
        sel[r * n + j] = 1.0;
    }
    let sel = Tensor::from_vec(sel, (seqs.len(), n), dev)?;
    Ok(sel.matmul(&picked)?.squeeze(D::Minus1)?)
}

fn token_counts(seqs: &[&ScoredSeq], dev: &candle_core::Device) -> Result<Tensor> {
    let c: Vec<f32> = seqs.iter().map(|s| s.targets.len() as f32).collect();
    Ok(Tensor::from_vec(c, seqs.len(), dev)?)
}

/// Prepared training items.
enum Item {
    Ce(ScoredSeq),
    Pref {
        chosen: ScoredSeq,
        rejected: ScoredSeq,
        ref_chosen: f32,
        ref_rejected: f32,
    },
}

fn prepare(m: &LoadedModel, words: &[Word], data: &[Example], loss: Loss) -> Result<Vec<Item>> {
    let names: Vec<&str> = words.iter().map(|w| w.name.as_str()).collect();
    let init: Vec<Tensor> = words
        .iter()
        .map(|w| Tensor::from_slice(&w.vector, w.vector.len(), m.llama.device()))
        .collect::<candle_core::Result<_>>()?;
    let mut items = Vec::with_capacity(data.len());
    for ex in data {
        match (ex, loss) {
            (Example::Completion { prompt, target }, Loss::CrossEntropy) => {
                items.push(Item::Ce(scored_seq(m, prompt, target, &names)?));
            }
            (
                Example::Preference {
                    prompt,
                    chosen,
                    rejected,
                },
                Loss::Preference { .. },
            ) => {
                let c = scored_seq(m, prompt, chosen, &names)?;
                let r = scored_seq(m, prompt, rejected, &names)?;
                let refs = seq_logprobs(m, words, &init, &[&c, &r])?.to_vec1::<f32>()?;
                items.push(Item::Pref {
                    chosen: c,
                    rejected: r,
                    ref_chosen: refs[0],
                    ref_rejected: refs[1],
                });
            }
            (Example::Completion { .. }, Loss::Preference { .. }) => {
                return Err(EngineError::Invalid(
                    "the preference loss needs `chosen`/`rejected` rows, the data has `target`"
                        .into(),
                ));
            }
            (Example::Preference { .. }, Loss::CrossEntropy) => {
                return Err(EngineError::Invalid(
                    "the cross-entropy loss needs `target` rows, the data has `chosen`/`rejected`"
                        .into(),
                ));
            }
        }
    }
    Ok(items)
}

impl Item {
    /// The sequences this item scores (chosen before rejected).
    fn seqs(&self) -> Vec<&ScoredSeq> {
        match self {
            Item::Ce(s) => vec![s],
            Item::Pref {
                chosen, rejected, ..
            } => vec![chosen, rejected],
        }
    }
}

/// The sequences a batch scores (chosen, rejected, chosen, … for the preference loss) and, for
/// the preference loss, their reference log-probabilities in the same order.
fn batch_seqs<'a>(batch: &[&'a Item]) -> (Vec<&'a ScoredSeq>, Vec<f32>) {
    let mut refs = Vec::new();
    for i in batch {
        if let Item::Pref {
            ref_chosen,
            ref_rejected,
            ..
        } = i
        {
            refs.push(*ref_chosen);
            refs.push(*ref_rejected);
        }
    }
    (batch.iter().flat_map(|i| i.seqs()).collect(), refs)
}

/// The batch loss as a candle graph (the autograd path).
fn batch_loss(
    m: &LoadedModel,
    words: &[Word],
    vars: &[Tensor],
    batch: &[&Item],
    loss: Loss,
) -> Result<Tensor> {
    let dev = m.llama.device();
    let (seqs, refs) = batch_seqs(batch);
    let lp = seq_logprobs(m, words, vars, &seqs)?;
    match loss {
        Loss::CrossEntropy => {
            let per_example = (lp / token_counts(&seqs, dev)?)?;
            Ok(per_example.mean_all()?.neg()?)
        }
        Loss::Preference { beta } => {
            let n = refs.len() / 2;
            let delta = (lp - Tensor::from_vec(refs, 2 * n, dev)?)?.reshape((n, 2))?;
            let dc = delta.narrow(1, 0, 1)?.squeeze(1)?;
            let dr = delta.narrow(1, 1, 1)?.squeeze(1)?;
            let dpo = crate::model::ops::softplus(&((&dc - &dr)? * (-beta))?)?;
            let apo_up = crate::model::ops::softplus(&(&dc * (-beta))?)?;
            Ok((dpo + apo_up)?.mean_all()?)
        }
    }
}

/// A batch's forward pass, kept for its gradient: the hand-written CPU pass (see `grad`) or a
/// candle graph.
enum Pass<'a> {
    Hand(Box<grad::Tape<'a>>, Vec<f32>),
    Graph(Tensor),
}

/// The batch loss at the vectors' current values (`current`, the same values the `vars` hold).
/// `prefixes` are the batch's cached prefixes for the hand-written pass (empty on the autograd
/// path).
fn forward_pass<'a>(
    m: &LoadedModel,
    words: &[Word],
    vars: &[Var],
    current: &[Vec<f32>],
    batch: &[&Item],
    prefixes: &[Option<&'a grad::PrefixKv>],
    loss: Loss,
) -> Result<(f32, Pass<'a>)> {
    if grad::supported(&m.llama, words) {
        let (seqs, refs) = batch_seqs(batch);
        let vectors: Vec<&[f32]> = current.iter().map(Vec::as_slice).collect();
        let tape = grad::forward(&m.llama, words, &vectors, &seqs, prefixes)?;
        let (value, coef) = match loss {
            Loss::CrossEntropy => grad::cross_entropy(&tape),
            Loss::Preference { beta } => grad::preference(&tape, &refs, beta),
        };
        return Ok((value, Pass::Hand(Box::new(tape), coef)));
    }
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let t = batch_loss(m, words, &tensors, batch, loss)?;
    Ok((t.to_dtype(DType::F32)?.to_scalar::<f32>()?, Pass::Graph(t)))
}

/// The gradients of a pass's loss with respect to the vectors.
fn pass_gradients(m: &LoadedModel, vars: &[Var], pass: Pass<'_>) -> Result<GradStore> {
    match pass {
        Pass::Graph(t) => Ok(t.backward()?),
        Pass::Hand(tape, coef) => {
            let mut store = GradStore::default();
            for (v, g) in vars.iter().zip(tape.backward(&m.llama, &coef)?) {
                let n = g.len();
                store.insert(v.as_tensor(), Tensor::from_vec(g, n, m.llama.device())?);
            }
            Ok(store)
        }
    }
}

/// The example order of every epoch: a seeded shuffle per epoch (exported by the benchmark so
/// other implementations can replay the same batches).
pub fn epoch_orders(n: usize, cfg: &TrainConfig) -> Vec<Vec<usize>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..n).collect();
    (0..cfg.epochs)
        .map(|_| {
            order.shuffle(&mut rng);
            order.clone()
        })
        .collect()
}

/// Trains the vectors of `words` on `data`. `on_step` sees every step and returns `false` to
/// cancel. Gradients reach only the words' vectors (they are the only `Var`s).
pub fn train(
    m: &LoadedModel,
    words: &[Word],
    data: &[Example],
    cfg: &TrainConfig,
    on_step: &mut dyn FnMut(&TrainStep) -> bool,
) -> Result<TrainOutcome> {
    if words.is_empty() {
        return Err(EngineError::Invalid("no word to train".into()));
    }
    if data.is_empty() {
        return Err(EngineError::Invalid("no training examples".into()));
    }
    if cfg.batch_size == 0 || cfg.epochs == 0 || !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(EngineError::Invalid(format!(
            "batch size ({}) and epochs ({}) must be ≥ 1 and the learning rate ({}) a finite \
             number > 0",
            cfg.batch_size, cfg.epochs, cfg.lr
        )));
    }
    if !(cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0) {
        return Err(EngineError::Invalid(format!(
            "weight decay {} must be a finite number ≥ 0",
            cfg.weight_decay
        )));
    }
    if let Some(c) = cfg.clip_norm
        && !(c.is_finite() && c > 0.0)
    {
        return Err(EngineError::Invalid(format!(
            "gradient clipping at {c}: it must be a finite number > 0 (or none)"
        )));
    }
    if let Loss::Preference { beta } = cfg.loss
        && !(beta.is_finite() && beta > 0.0)
    {
        return Err(EngineError::Invalid(format!(
            "β {beta} of the preference loss must be a finite number > 0"
        )));
    }
    let items = prepare(m, words, data, cfg.loss)?;
    let dev = m.llama.device();
    let vars: Vec<Var> = words
        .iter()
        .map(|w| Var::from_slice(&w.vector, w.vector.len(), dev))
        .collect::<candle_core::Result<_>>()?;
    let mut opt = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let snapshot = |vars: &[Var]| -> Result<Vec<Vec<f32>>> {
        vars.iter()
            .map(|v| Ok(v.as_tensor().to_vec1::<f32>()?))
            .collect()
    };
    // Positions before a sequence's first word never change: the hand-written pass computes
    // their keys and values once for the whole run (worth it when sequences come back).
    let prefixes = if grad::supported(&m.llama, words) && cfg.epochs > 1 {
        let all: Vec<&ScoredSeq> = items.iter().flat_map(Item::seqs).collect();
        grad::prefix_kv(&m.llama, &all)?
    } else {
        Vec::new()
    };
    // Each item's sequences' cached prefixes (`None` throughout without a cache).
    let mut cached = prefixes.iter();
    let item_prefixes: Vec<Vec<Option<&grad::PrefixKv>>> = items
        .iter()
        .map(|it| it.seqs().iter().map(|_| cached.next()).collect())
        .collect();
    let orders = epoch_orders(items.len(), cfg);
    let steps_per_epoch = items.len().div_ceil(cfg.batch_size);
    let total_steps = steps_per_epoch * cfg.epochs;
    let mut losses = Vec::with_capacity(total_steps);
    let mut epoch_losses = Vec::with_capacity(cfg.epochs);
    let mut last_good = snapshot(&vars)?;
    let mut best: Option<(f32, Vec<Vec<f32>>)> = None;
    let mut step = 0;
    for (epoch, order) in (1..=cfg.epochs).zip(&orders) {
        let mut sum = 0.0f32;
        for chunk in order.chunks(cfg.batch_size) {
            step += 1;
            let batch: Vec<&Item> = chunk.iter().map(|i| &items[*i]).collect();
            let batch_prefixes: Vec<Option<&grad::PrefixKv>> = chunk
                .iter()
                .flat_map(|i| item_prefixes[*i].iter().copied())
                .collect();
            let (loss, pass) = forward_pass(
                m,
                words,
                &vars,
                &last_good,
                &batch,
                &batch_prefixes,
                cfg.loss,
            )?;
            if !loss.is_finite() || loss > 1e4 {
                return Ok(TrainOutcome {
                    vectors: last_good,
                    losses,
                    epoch_losses,
                    stop: StopReason::Diverged(format!(
                        "the loss became {loss} at step {step}; try a lower learning rate. The \
                         last good vectors were kept."
                    )),
                });
            }
            let mut grads = pass_gradients(m, &vars, pass)?;
            // The passes compute the batch mean; the summed loss is it times the batch size.
            let loss = match cfg.reduction {
                Reduction::Mean => loss,
                Reduction::Sum => {
                    let k = batch.len() as f64;
                    for v in &vars {
                        if let Some(g) = grads.remove(v.as_tensor()) {
                            grads.insert(v.as_tensor(), (g * k)?);
                        }
                    }
                    loss * k as f32
                }
            };
            if let Some(clip) = cfg.clip_norm {
                let mut sq = 0.0f64;
                for v in &vars {
                    if let Some(g) = grads.get(v.as_tensor()) {
                        sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
                    }
                }
                let norm = sq.sqrt();
                if !norm.is_finite() {
                    return Ok(TrainOutcome {
                        vectors: last_good,
                        losses,
                        epoch_losses,
                        stop: StopReason::Diverged(format!(
                            "the gradient became {norm} at step {step}; the last good vectors \
                             were kept."
                        )),
                    });
                }
                if norm > clip {
                    for v in &vars {
                        if let Some(g) = grads.remove(v.as_tensor()) {
                            grads.insert(v.as_tensor(), (g * (clip / norm))?);
                        }
                    }
                }
            }
            opt.step(&grads)?;
            losses.push(loss);
            sum += loss;
            last_good = snapshot(&vars)?;
            let report = TrainStep {
                step,
                total_steps,
                epoch,
                loss,
            };
            if !on_step(&report) {
                let vectors = best.map_or(last_good, |(_, v)| v);
                return Ok(TrainOutcome {
                    vectors,
                    losses,
                    epoch_losses,
                    stop: StopReason::Cancelled,
                });
            }
        }
        let mean = sum / steps_per_epoch as f32;
        epoch_losses.push(mean);
        if best.as_ref().is_none_or(|(b, _)| mean < *b) {
            best = Some((mean, last_good.clone()));
        }
    }
    Ok(TrainOutcome {
        vectors: last_good,
        losses,
        epoch_losses,
        stop: StopReason::Completed,
    })
}

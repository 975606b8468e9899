//! Training a whole model by next-token prediction: batches of random windows, cross-entropy
//! (mean over every position), gradients of every weight (on the CPU by the hand-written pass
//! in `pass`, elsewhere by candle's autograd through the engine's own forward), global-norm
//! clipping, AdamW (weight decay on matrices and embeddings, not on biases or norms) with linear
//! warmup and cosine decay, validation on fixed held-out windows, samples on schedule.
//!
//! Exact resume: the windows (and dropout masks) of step `s` are a pure function of
//! (seed, s), and the optimiser's moments are saved with the weights, so a run stopped at a
//! checkpoint and resumed takes the same steps as one that never stopped. AdamW is written
//! out because candle's `AdamW` does not expose its moments for saving.

use candle_core::{D, DType, Tensor};
use rand::{Rng, SeedableRng};

use super::net::Net;
use crate::error::{EngineError, Result};
use crate::hooks::HookPoint;
use crate::model::Llama;
use crate::model::batch::{Batch, PadSide};
use crate::model::intervene::{ResolvedIntervention, ResolvedOp};
pub use neoscope_api::scratch::{ScratchEvent, ScratchTrainConfig};

/// Seed salt of the validation windows (fixed for a run, so validations compare).
const VAL_SALT: u64 = 0x5EED_0000_0000_0001;
/// Adam's β₁ and ε (PyTorch's defaults).
pub(crate) const BETA1: f64 = 0.9;
pub(crate) const EPS: f64 = 1e-8;

/// Checks training settings against the corpus size.
pub fn check(cfg: &ScratchTrainConfig) -> Result<()> {
    let bad = |m: &str| Err(EngineError::Invalid(format!("training settings: {m}")));
    if cfg.batch == 0 || cfg.steps == 0 || cfg.eval_every == 0 || cfg.checkpoint_every == 0 {
        return bad("batch, steps and the evaluation and checkpoint intervals must be positive");
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0 && cfg.min_lr >= 0.0 && cfg.min_lr <= cfg.lr) {
        return bad("the learning rate must be positive and the minimum at most the peak");
    }
    if !(0.0..1.0).contains(&cfg.beta2) || cfg.weight_decay < 0.0 || cfg.clip_norm < 0.0 {
        return bad("β₂ must be in [0, 1), weight decay and clipping at least 0");
    }
    if !(cfg.val_fraction > 0.0 && cfg.val_fraction < 0.5) || cfg.eval_windows == 0 {
        return bad("the held-out share must be in (0, 0.5) and some windows scored");
    }
    if !(cfg.temperature.is_finite() && cfg.temperature >= 0.0) {
        return bad("the temperature must be at least 0");
    }
    Ok(())
}

/// Learning rate at step `s` (1-based): linear warmup from 0, then cosine to `min_lr` at the
/// last step.
pub fn lr_at(cfg: &ScratchTrainConfig, s: usize) -> f64 {
    if s <= cfg.warmup_steps {
        return cfg.lr * s as f64 / cfg.warmup_steps.max(1) as f64;
    }
    let span = cfg.steps.saturating_sub(cfg.warmup_steps).max(1) as f64;
    let t = ((s - cfg.warmup_steps) as f64 / span).min(1.0);
    cfg.min_lr + 0.5 * (1.0 + (std::f64::consts::PI * t).cos()) * (cfg.lr - cfg.min_lr)
}

/// The corpus's tokens: the first part for training, the last `val_fraction` held out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// Training tokens.
    pub train: Vec<u32>,
    /// Held-out tokens.
    pub val: Vec<u32>,
}

impl Data {
    /// Where a corpus of `len` tokens is split (its training part's length); each part must
    /// hold at least one window and its next token.
    pub fn split_point(len: usize, val_fraction: f32, n_ctx: usize) -> Result<usize> {
        let n_val = (len as f64 * f64::from(val_fraction)).round() as usize;
        let n_train = len - n_val.min(len);
        if n_val <= n_ctx || n_train <= n_ctx {
            return Err(EngineError::Invalid(format!(
                "the corpus has {len} tokens: too few for a training and a held-out window of {} \
                 tokens",
                n_ctx + 1
            )));
        }
        Ok(n_train)
    }

    /// Splits `ids`; each part must hold at least one window and its next token.
    pub fn split(ids: &[u32], val_fraction: f32, n_ctx: usize) -> Result<Self> {
        let n_train = Self::split_point(ids.len(), val_fraction, n_ctx)?;
        Ok(Self {
            train: ids[..n_train].to_vec(),
            val: ids[n_train..].to_vec(),
        })
    }
}

/// `n` window starts in `len` tokens drawn from `seed`.
pub fn starts(len: usize, n_ctx: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(0..len - n_ctx)).collect()
}

/// The seed of step `s`'s draws.
fn step_seed(seed: u64, s: usize) -> u64 {
    seed ^ (s as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Training window starts of step `s` (1-based).
pub fn step_starts(cfg: &ScratchTrainConfig, data: &Data, n_ctx: usize, s: usize) -> Vec<usize> {
    starts(data.train.len(), n_ctx, cfg.batch, step_seed(cfg.seed, s))
}

/// Inputs (windows of `n_ctx`) and flat next-token targets at `starts`.
pub fn windows(ids: &[u32], starts: &[usize], n_ctx: usize) -> (Vec<Vec<u32>>, Vec<u32>) {
    let inputs = starts.iter().map(|&i| ids[i..i + n_ctx].to_vec()).collect();
    let targets = starts
        .iter()
        .flat_map(|&i| ids[i + 1..=i + n_ctx].iter().copied())
        .collect();
    (inputs, targets)
}

/// Dropout masks (scaled by 1/(1−p)) of `n` values each for every block's attention output
/// and then its MLP output, drawn from `seed`: the same masks for both training passes.
pub(crate) fn dropout_masks(p: f32, seed: u64, layers: usize, n: usize) -> Vec<Vec<f32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let keep = 1.0 / (1.0 - p);
    (0..2 * layers)
        .map(|_| {
            (0..n)
                .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
                .collect()
        })
        .collect()
}

/// [`dropout_masks`] as interventions at every block's attention and MLP outputs.
fn dropout(
    llama: &Llama,
    p: f32,
    seed: u64,
    (b, t): (usize, usize),
) -> Result<Vec<ResolvedIntervention>> {
    let dev = llama.device();
    let (d, layers) = (llama.cfg.hidden_size, llama.cfg.num_hidden_layers);
    let ones = Tensor::ones((b, t, 1), DType::U8, dev)?;
    let masks = dropout_masks(p, seed, layers, b * t * d);
    let points = (0..layers).flat_map(|l| [HookPoint::AttnOut(l), HookPoint::MlpOut(l)]);
    points
        .zip(masks)
        .map(|(point, m)| {
            Ok(ResolvedIntervention {
                point,
                mask: ones.clone(),
                op: ResolvedOp::Scale(Tensor::from_vec(m, (b, t, d), dev)?),
            })
        })
        .collect()
}

/// Mean next-token cross-entropy (nats) of `inputs` against `targets`.
pub fn loss(
    llama: &Llama,
    inputs: &[Vec<u32>],
    targets: &[u32],
    ivs: &[ResolvedIntervention],
) -> Result<Tensor> {
    let dev = llama.device();
    let batch = Batch::new(inputs, PadSide::Right, dev)?;
    let x = llama.embed_ids(&batch)?;
    let logits = llama.forward_embeds(x, &batch, &[], ivs, None)?.logits;
    let (b, t, v) = logits.dims3()?;
    let logits = logits.reshape((b * t, v))?;
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let tg = Tensor::from_vec(targets.to_vec(), (b * t, 1), dev)?;
    Ok(lp.gather(&tg, 1)?.mean_all()?.neg()?)
}

/// Weights, optimiser moments and curves: everything a run needs to go on.
#[derive(Debug, Clone)]
pub struct TrainState {
    /// The model.
    pub net: Net,
    /// AdamW first moments, one per parameter.
    pub m: Vec<Tensor>,
    /// AdamW second moments.
    pub v: Vec<Tensor>,
    /// Steps done.
    pub step: usize,
    /// Training loss per step.
    pub losses: Vec<f32>,
    /// (step, validation loss).
    pub val: Vec<(usize, f32)>,
    /// (step, sample).
    pub samples: Vec<(usize, String)>,
}

impl TrainState {
    /// A fresh state at `net`.
    pub fn new(net: Net) -> Result<Self> {
        let zeros = |net: &Net| -> Result<Vec<Tensor>> {
            net.params
                .iter()
                .map(|(_, p)| Ok(p.as_tensor().zeros_like()?))
                .collect()
        };
        Ok(Self {
            m: zeros(&net)?,
            v: zeros(&net)?,
            net,
            step: 0,
            losses: Vec::new(),
            val: Vec::new(),
            samples: Vec::new(),
        })
    }
}

/// The windows of step `s` (1-based): inputs and flat next-token targets.
pub fn step_batch(
    cfg: &ScratchTrainConfig,
    data: &Data,
    n_ctx: usize,
    s: usize,
) -> (Vec<Vec<u32>>, Vec<u32>) {
    windows(&data.train, &step_starts(cfg, data, n_ctx, s), n_ctx)
}

/// Gradients of the mean loss on `(inputs, targets)` by candle's autograd, one per parameter,
/// and the loss; with dropout drawn from `dropout_seed` when the model has it. Training on the
/// CPU takes the hand-written pass instead (`pass::gradients`, the same values); this one runs
/// on CUDA and is the reference the tests hold it to.
pub fn gradients(
    net: &Net,
    (inputs, targets): (&[Vec<u32>], &[u32]),
    dropout_seed: u64,
) -> Result<(Vec<Tensor>, f32)> {
    let n_ctx = inputs.first().map_or(0, Vec::len);
    let llama = net.llama()?;
    let ivs = if net.cfg.dropout > 0.0 {
        dropout(&llama, net.cfg.dropout, dropout_seed, (inputs.len(), n_ctx))?
    } else {
        Vec::new()
    };
    let l = loss(&llama, inputs, targets, &ivs)?;
    let value = l.to_scalar::<f32>()?;
    let grads = l.backward()?;
    let g = net
        .params
        .iter()
        .map(|(name, p)| match grads.get(p.as_tensor()) {
            Some(g) => Ok(g.clone()),
            None => Err(EngineError::Invalid(format!(
                "no gradient reached `{name}`"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((g, value))
}

/// One optimiser step at `state.step + 1` on `batch`; returns the step's training loss.
pub fn step_on(
    state: &mut TrainState,
    cfg: &ScratchTrainConfig,
    batch: (&[Vec<u32>], &[u32]),
) -> Result<f32> {
    let s = state.step + 1;
    let dropout_seed = step_seed(cfg.seed ^ 0xD0, s);
    let not_finite = |loss: f32| {
        EngineError::Invalid(format!(
            "the loss became {loss} at step {s}; training stopped and the last checkpoint \
             on disk is kept (resume from it, or start again with a lower learning rate)"
        ))
    };
    let loss = if super::pass::supported(&state.net) {
        let (grads, loss) = super::pass::gradients(&state.net, batch, dropout_seed)?;
        if !loss.is_finite() {
            return Err(not_finite(loss));
        }
        super::pass::adamw(state, cfg, s, grads)?;
        loss
    } else {
        let (grads, loss) = gradients(&state.net, batch, dropout_seed)?;
        if !loss.is_finite() {
            return Err(not_finite(loss));
        }
        adamw(state, cfg, s, grads)?;
        loss
    };
    state.step = s;
    state.losses.push(loss);
    Ok(loss)
}

/// AdamW step `s` on tensors (any device), with global-norm clipping as PyTorch's
/// `clip_grad_norm_`; `pass::adamw` is the same update on CPU slices.
fn adamw(
    state: &mut TrainState,
    cfg: &ScratchTrainConfig,
    s: usize,
    mut grads: Vec<Tensor>,
) -> Result<()> {
    if cfg.clip_norm > 0.0 {
        let mut sq = 0f64;
        for g in &grads {
            sq += f64::from(g.sqr()?.sum_all()?.to_scalar::<f32>()?);
        }
        let norm = sq.sqrt();
        // Scale by max_norm / (norm + 1e-6) when that is below 1.
        let coef = cfg.clip_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in &mut grads {
                *g = (&*g * coef)?;
            }
        }
    }
    let lr = lr_at(cfg, s);
    let t = i32::try_from(s).unwrap_or(i32::MAX);
    let (bc1, bc2) = (1.0 - BETA1.powi(t), 1.0 - cfg.beta2.powi(t));
    for (i, (_, p)) in state.net.params.iter().enumerate() {
        let g = &grads[i];
        state.m[i] = ((&state.m[i] * BETA1)? + (g * (1.0 - BETA1))?)?;
        state.v[i] = ((&state.v[i] * cfg.beta2)? + (g.sqr()? * (1.0 - cfg.beta2))?)?;
        let mut w = p.as_tensor().detach();
        if p.rank() >= 2 && cfg.weight_decay > 0.0 {
            w = (w * (1.0 - lr * cfg.weight_decay))?;
        }
        let denom = ((state.v[i].sqrt()? / bc2.sqrt())? + EPS)?;
        let w = (w - ((&state.m[i] / denom)? * (lr / bc1))?)?;
        p.set(&w)?;
    }
    Ok(())
}

/// Mean loss over the run's fixed held-out windows (`cfg.eval_windows` of them).
pub fn val_loss(llama: &Llama, cfg: &ScratchTrainConfig, data: &Data) -> Result<f32> {
    let n_ctx = llama.cfg.n_ctx();
    let st = starts(data.val.len(), n_ctx, cfg.eval_windows, cfg.seed ^ VAL_SALT);
    let mut sum = 0f64;
    for chunk in st.chunks(cfg.batch) {
        let (inputs, targets) = windows(&data.val, chunk, n_ctx);
        let l = loss(llama, &inputs, &targets, &[])?.to_scalar::<f32>()?;
        sum += f64::from(l) * chunk.len() as f64;
    }
    Ok((sum / st.len() as f64) as f32)
}

/// What a training run reports to and asks of its caller.
pub trait ScratchHooks {
    /// Reports an event; false asks the run to stop.
    fn event(&mut self, ev: ScratchEvent) -> bool;
    /// Saves a checkpoint of `state`.
    fn checkpoint(&mut self, state: &TrainState) -> Result<()>;
    /// A sample from the model as it is now.
    fn sample(&mut self, llama: &Llama) -> Result<String>;
}

/// Trains until `cfg.steps` or a stop request, validating, sampling and checkpointing on
/// schedule (and checkpointing when stopped). Returns whether it ran to the end.
pub fn train(
    state: &mut TrainState,
    cfg: &ScratchTrainConfig,
    data: &Data,
    hooks: &mut dyn ScratchHooks,
) -> Result<bool> {
    check(cfg)?;
    let observe = |state: &mut TrainState, hooks: &mut dyn ScratchHooks| -> Result<bool> {
        let s = state.step;
        let due_val = (s.is_multiple_of(cfg.eval_every) || s == cfg.steps)
            && state.val.last().is_none_or(|(vs, _)| *vs != s);
        let due_sample = cfg.sample_every > 0
            && (s.is_multiple_of(cfg.sample_every) || s == cfg.steps)
            && state.samples.last().is_none_or(|(ss, _)| *ss != s);
        if !due_val && !due_sample {
            return Ok(true);
        }
        let llama = eval_model(&state.net)?;
        let mut go = true;
        if due_val {
            let l = val_loss(&llama, cfg, data)?;
            state.val.push((s, l));
            go &= hooks.event(ScratchEvent::Val { step: s, loss: l });
        }
        if due_sample {
            let text = hooks.sample(&llama)?;
            state.samples.push((s, text.clone()));
            go &= hooks.event(ScratchEvent::Sample { step: s, text });
        }
        Ok(go)
    };
    if state.step == 0 && !observe(state, hooks)? {
        return Ok(false);
    }
    while state.step < cfg.steps {
        let (inputs, targets) = step_batch(cfg, data, state.net.cfg.n_ctx, state.step + 1);
        let loss = step_on(state, cfg, (&inputs, &targets))?;
        let s = state.step;
        let mut go = hooks.event(ScratchEvent::Step {
            step: s,
            total: cfg.steps,
            loss,
            lr: lr_at(cfg, s),
        });
        go = go && observe(state, hooks)?;
        if s.is_multiple_of(cfg.checkpoint_every) || s == cfg.steps || !go {
            hooks.checkpoint(state)?;
        }
        if !go {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The model of `net` for evaluation: the same weights, detached (no gradient tracking, so
/// the forward may take the engine's fastest path).
pub fn eval_model(net: &Net) -> Result<Llama> {
    let t = net.tensors();
    let map = t.iter().map(|(n, x)| (n.as_str(), x)).collect();
    super::net::assemble(&net.cfg, net.vocab, &map)
}

/// Seconds of each of `b.steps` training steps (after 3 untimed ones) on random tokens.
pub fn bench(
    b: &neoscope_api::scratch::ScratchBench,
    dev: &candle_core::Device,
) -> Result<(Vec<f64>, usize)> {
    let net = Net::init(&b.model, b.vocab, 0, dev)?;
    let params = net.count();
    let cfg = ScratchTrainConfig {
        batch: b.batch,
        ..ScratchTrainConfig::default()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let ids: Vec<u32> = (0..20_000)
        .map(|_| rng.random_range(0..b.vocab as u32))
        .collect();
    let data = Data {
        train: ids.clone(),
        val: ids,
    };
    let mut state = TrainState::new(net)?;
    let mut times = Vec::new();
    for i in 0..b.steps + 3 {
        let t0 = std::time::Instant::now();
        let (x, y) = step_batch(&cfg, &data, b.model.n_ctx, state.step + 1);
        step_on(&mut state, &cfg, (&x, &y))?;
        if i >= 3 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok((times, params))
}

//! Embedding-only training of injected rows (Wake2Vec phase 1): the corpus is cut into blocks
//! of equal length, split 90/10 with a seed, and only the new rows learn (every position
//! predicts the next token over base + new vocabulary). AdamW, linear warmup then cosine or
//! constant learning rate, gradient accumulation, global-norm clipping, validation every N
//! steps, checkpoints every N steps.
//!
//! Exact resume: the blocks of step `s` are a pure function of (seed, s) (each epoch a seeded
//! permutation of the training blocks, read as one stream), and the optimiser state is saved
//! with the rows, so stopping at any checkpoint and resuming replays the same steps bit for
//! bit. Adam is written out here because candle's `AdamW` does not expose its moments for
//! saving.

use candle_core::{Tensor, Var};
use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::forward::nll_sum;
use crate::error::{EngineError, Result};
use crate::model::Llama;
use crate::model::lora::Adapters;
pub use neoscope_api::inject::{InjectConfig, InjectEvent, Schedule, Stopped};

/// The most blocks one optimiser step may take.
pub const MAX_STEP_BLOCKS: usize = 1 << 20;

/// The engine's computations on injection settings (the settings are protocol data).
pub trait InjectConfigExt {
    /// Checks the settings.
    fn check(&self) -> Result<()>;
    /// Learning rate at step `s` (1-based).
    fn lr_at(&self, s: usize) -> f64;
    /// Training-block indices of step `s` (1-based), `micro_batch · accum` of them.
    fn step_blocks(&self, n_train: usize, s: usize) -> Vec<usize>;
}

impl InjectConfigExt for InjectConfig {
    /// Checks the settings.
    fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(EngineError::Invalid(format!("injection settings: {m}")));
        if self.block_len < 2 {
            return bad("block length must be at least 2 tokens");
        }
        if !(0.0..1.0).contains(&self.val_fraction) || self.val_fraction == 0.0 {
            return bad("validation fraction must be in (0, 1)");
        }
        if self.micro_batch == 0 || self.accum == 0 || self.steps == 0 {
            return bad("micro-batch, accumulation and steps must be positive");
        }
        // Bounded so that a step's list of blocks can be held (a damaged run.json might ask for
        // more than memory has).
        if self
            .micro_batch
            .checked_mul(self.accum)
            .is_none_or(|b| b > MAX_STEP_BLOCKS)
        {
            return bad(&format!(
                "micro-batch {} × accumulation {} is more than {MAX_STEP_BLOCKS} blocks per step",
                self.micro_batch, self.accum
            ));
        }
        if self
            .micro_batch
            .checked_mul(self.accum)
            .and_then(|b| b.checked_mul(self.steps))
            .is_none()
        {
            return bad(&format!(
                "micro-batch {} × accumulation {} × steps {} blocks is more than can be counted",
                self.micro_batch, self.accum, self.steps
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && (0.0..1.0).contains(&self.warmup)) {
            return bad("learning rate must be positive and warmup in [0, 1)");
        }
        if self.eval_every == 0 || self.checkpoint_every == 0 {
            return bad("evaluation and checkpoint intervals must be positive");
        }
        Ok(())
    }

    /// Learning rate at step `s` (1-based).
    fn lr_at(&self, s: usize) -> f64 {
        let (s, total) = (s as f64, self.steps as f64);
        let warm = (f64::from(self.warmup) * total).ceil();
        if s <= warm {
            return self.lr * s / warm.max(1.0);
        }
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let t = ((s - warm) / (total - warm).max(1.0)).min(1.0);
                self.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))
            }
        }
    }

    /// Training-block indices of step `s` (1-based), `micro_batch · accum` of them.
    fn step_blocks(&self, n_train: usize, s: usize) -> Vec<usize> {
        let per = self.micro_batch * self.accum;
        let mut out = Vec::with_capacity(per);
        let mut cached: Option<(usize, Vec<usize>)> = None;
        for k in 0..per {
            let pos = (s - 1) * per + k;
            let (epoch, within) = (pos / n_train, pos % n_train);
            if cached.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let mut perm: Vec<usize> = (0..n_train).collect();
                let mut rng = rand::rngs::StdRng::seed_from_u64(
                    self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                perm.shuffle(&mut rng);
                cached = Some((epoch, perm));
            }
            if let Some((_, perm)) = &cached {
                out.push(perm[within]);
            }
        }
        out
    }
}

/// The corpus cut into blocks and split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocks {
    /// Training blocks.
    pub train: Vec<Vec<u32>>,
    /// Validation blocks.
    pub val: Vec<Vec<u32>>,
}

/// Non-overlapping blocks of `len` ids (the remainder is dropped), split with a seed.
pub fn make_blocks(ids: &[u32], len: usize, val_fraction: f32, seed: u64) -> Result<Blocks> {
    let mut blocks: Vec<Vec<u32>> = ids.chunks_exact(len).map(<[u32]>::to_vec).collect();
    if blocks.len() < 2 {
        return Err(EngineError::Invalid(format!(
            "the corpus has {} tokens: too few for two blocks of {len}",
            ids.len()
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    blocks.shuffle(&mut rng);
    let n_val = ((blocks.len() as f32 * val_fraction).round() as usize).clamp(1, blocks.len() - 1);
    let train = blocks.split_off(n_val);
    Ok(Blocks { train, val: blocks })
}

/// Everything training needs to continue: rows, Adam moments, step, curves.
#[derive(Debug, Clone)]
pub struct TrainState {
    /// Steps done.
    pub step: usize,
    /// Current rows (n_new, d).
    pub rows: Tensor,
    /// Adam first moment.
    pub m: Tensor,
    /// Adam second moment.
    pub v: Tensor,
    /// Training loss of every step (token mean).
    pub losses: Vec<f32>,
    /// (step, validation loss).
    pub val: Vec<(usize, f32)>,
}

impl TrainState {
    /// A fresh state at `rows`.
    pub fn new(rows: Tensor) -> Result<Self> {
        Ok(Self {
            step: 0,
            m: rows.zeros_like()?,
            v: rows.zeros_like()?,
            rows,
            losses: Vec::new(),
            val: Vec::new(),
        })
    }
}

/// Token-mean validation loss of `rows` over `val` (forward only), with `adapters` if given:
/// the hand-written pass where it applies, the hooked pass elsewhere.
pub fn val_loss(
    m: &Llama,
    rows: &Tensor,
    adapters: Option<&Adapters>,
    val: &[Vec<u32>],
    micro_batch: usize,
    progress: &mut dyn FnMut(f32) -> bool,
) -> Result<Option<f32>> {
    let mut sum = 0.0f64;
    let mut count = 0usize;
    for (i, chunk) in val.chunks(micro_batch.max(1)).enumerate() {
        let refs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        sum += f64::from(if super::fast_pass::supported(m) {
            super::fast_pass::nll(m, rows, adapters, &refs)?
        } else {
            let carried = m.with_adapters(adapters.map(|a| std::sync::Arc::new(a.clone())));
            nll_sum(&carried, rows, &refs)?.0.to_scalar::<f32>()?
        });
        count += refs
            .iter()
            .map(|b| b.len().saturating_sub(1))
            .sum::<usize>();
        if !progress(((i + 1) * micro_batch) as f32 / val.len() as f32) {
            return Ok(None);
        }
    }
    Ok(Some((sum / count.max(1) as f64) as f32))
}

/// `scale ·` the summed next-token loss of `blocks` and its gradient with respect to `rows`:
/// the hand-written CPU pass where it applies, candle's autograd elsewhere.
pub fn row_grads(m: &Llama, rows: &Tensor, blocks: &[&[u32]], scale: f64) -> Result<(f32, Tensor)> {
    if super::fast_pass::supported(m) {
        return super::fast_pass::loss_and_row_grads(m, rows, blocks, scale);
    }
    let var = Var::from_tensor(rows)?;
    let (nll, _) = nll_sum(m, var.as_tensor(), blocks)?;
    let l = (nll * scale)?;
    let g = l
        .backward()?
        .remove(var.as_tensor())
        .ok_or_else(|| EngineError::Invalid("no gradient reached the new rows".into()))?;
    Ok((l.to_scalar::<f32>()?, g))
}

/// One optimiser step at `state.step + 1`; returns the step's loss.
fn step(m: &Llama, state: &mut TrainState, blocks: &Blocks, cfg: &InjectConfig) -> Result<f32> {
    let s = state.step + 1;
    let idx = cfg.step_blocks(blocks.train.len(), s);
    let total = idx.len() * (cfg.block_len - 1);
    let scale = 1.0 / total as f64;
    let mut grad: Option<Tensor> = None;
    let mut loss = 0.0f64;
    for mb in idx.chunks(cfg.micro_batch) {
        let refs: Vec<&[u32]> = mb.iter().map(|i| blocks.train[*i].as_slice()).collect();
        let (l, g) = row_grads(m, &state.rows, &refs, scale)?;
        loss += f64::from(l);
        grad = Some(match grad {
            Some(acc) => (acc + g)?,
            None => g,
        });
    }
    let g = grad.ok_or_else(|| EngineError::Invalid("empty step".into()))?;
    let g = clip_grads(vec![g], cfg.clip_norm)?.remove(0);
    // With `lazy`, only rows whose form occurs in the step's blocks move and only their
    // moments change (LazyAdam); by default every row follows its full gradient, which includes
    // the softmax push-down of forms that were predicted but absent. ε (1e-4 by default) keeps
    // near-zero gradients from being scaled up to full steps.
    let n_new = state.rows.dim(0)?;
    let mut present = vec![if cfg.lazy { 0f32 } else { 1.0 }; n_new];
    let base = u32::try_from(m.cfg.vocab_size).unwrap_or(u32::MAX);
    for i in &idx {
        for t in &blocks.train[*i] {
            if let Some(r) = t.checked_sub(base) {
                present[r as usize] = 1.0;
            }
        }
    }
    let mask = Tensor::from_vec(present, (n_new, 1), state.rows.device())?;
    let keep = mask.affine(-1.0, 1.0)?;
    let (b1, b2, eps) = (0.9f64, 0.999f64, cfg.adam_eps);
    let lr = cfg.lr_at(s);
    let t = i32::try_from(s).unwrap_or(i32::MAX);
    let mix = |old: &Tensor, new: Tensor| -> Result<Tensor> {
        Ok((old.broadcast_mul(&keep)? + new.broadcast_mul(&mask)?)?)
    };
    state.m = mix(&state.m, ((&state.m * b1)? + (&g * (1.0 - b1))?)?)?;
    state.v = mix(&state.v, ((&state.v * b2)? + (g.sqr()? * (1.0 - b2))?)?)?;
    let mhat = (&state.m / (1.0 - b1.powi(t)))?;
    let vhat = (&state.v / (1.0 - b2.powi(t)))?;
    let upd = (mhat / (vhat.sqrt()? + eps)?)?;
    let upd = (upd + (&state.rows * cfg.weight_decay)?)?.broadcast_mul(&mask)?;
    state.rows = (&state.rows - (upd * lr)?)?.detach();
    state.step = s;
    let loss = check_finite(loss as f32, s)?;
    state.losses.push(loss);
    Ok(loss)
}

/// What a training loop trains: one phase's parameters, optimiser state and curves.
pub trait Trainee {
    /// Steps done.
    fn done(&self) -> usize;
    /// The validation curve, (step, loss).
    fn val_curve(&mut self) -> &mut Vec<(usize, f32)>;
    /// One optimiser step at `done() + 1`, recorded; returns its loss.
    fn step(&mut self, blocks: &Blocks, cfg: &InjectConfig) -> Result<f32>;
    /// Token-mean validation loss over `val` (`None`: stopped by `progress`).
    fn val_loss(
        &self,
        val: &[Vec<u32>],
        micro_batch: usize,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Option<f32>>;
}

/// Phase 1: the new rows of `state` on model `m`.
pub struct RowTraining<'a> {
    /// The model (base weights, never changed).
    pub m: &'a Llama,
    /// Rows, moments, curves.
    pub state: &'a mut TrainState,
}

impl Trainee for RowTraining<'_> {
    fn done(&self) -> usize {
        self.state.step
    }
    fn val_curve(&mut self) -> &mut Vec<(usize, f32)> {
        &mut self.state.val
    }
    fn step(&mut self, blocks: &Blocks, cfg: &InjectConfig) -> Result<f32> {
        step(self.m, self.state, blocks, cfg)
    }
    fn val_loss(
        &self,
        val: &[Vec<u32>],
        micro_batch: usize,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Option<f32>> {
        val_loss(self.m, &self.state.rows, None, val, micro_batch, progress)
    }
}

/// Callbacks of a run: events (return false to stop) and checkpoint writing.
pub trait TrainHooks<T: ?Sized> {
    /// Reports an event; false asks the run to stop.
    fn event(&mut self, ev: InjectEvent) -> bool;
    /// Saves a checkpoint of what is trained.
    fn checkpoint(&mut self, t: &T) -> Result<()>;
}

/// The hooks every phase uses: events go to `on_event`, checkpoints are written by `save`.
pub struct Hooks<'a, T: ?Sized> {
    /// Receives events; false asks the run to stop.
    pub on_event: &'a mut dyn FnMut(InjectEvent) -> bool,
    /// Writes a checkpoint of what is trained.
    pub save: &'a dyn Fn(&T) -> Result<()>,
}

impl<T: ?Sized> TrainHooks<T> for Hooks<'_, T> {
    fn event(&mut self, ev: InjectEvent) -> bool {
        (self.on_event)(ev)
    }
    fn checkpoint(&mut self, t: &T) -> Result<()> {
        (self.save)(t)
    }
}

/// Refuses a new total step count for `what` (already at `done` steps) that is not more.
pub fn check_more_steps(what: &str, done: usize, want: usize) -> Result<()> {
    if want <= done {
        return Err(EngineError::Invalid(format!(
            "{what} is already at step {done}; ask for more steps than that (got {want})"
        )));
    }
    Ok(())
}

/// Scales `grads` (one or several tensors) down to global norm `clip`, if given and exceeded.
pub fn clip_grads(grads: Vec<Tensor>, clip: Option<f64>) -> Result<Vec<Tensor>> {
    let Some(c) = clip else {
        return Ok(grads);
    };
    let mut sq = 0.0f64;
    for t in &grads {
        sq += f64::from(t.sqr()?.sum_all()?.to_scalar::<f32>()?);
    }
    let norm = sq.sqrt();
    if norm <= c {
        return Ok(grads);
    }
    Ok(grads
        .iter()
        .map(|t| t * (c / norm))
        .collect::<candle_core::Result<_>>()?)
}

/// Stops training on a non-finite loss at step `s`, keeping the checkpoint on disk.
pub fn check_finite(loss: f32, s: usize) -> Result<f32> {
    if loss.is_finite() {
        return Ok(loss);
    }
    Err(EngineError::Invalid(format!(
        "the loss became {loss} at step {s}; training stopped and the last checkpoint on disk is \
         kept (resume from it, or start again with a lower learning rate)"
    )))
}

/// Trains until `cfg.steps` or a stop request, validating and checkpointing on schedule.
pub fn train<T: Trainee>(
    t: &mut T,
    blocks: &Blocks,
    cfg: &InjectConfig,
    hooks: &mut dyn TrainHooks<T>,
) -> Result<Stopped> {
    cfg.check()?;
    let val: &[Vec<u32>] = if cfg.max_val_blocks > 0 && blocks.val.len() > cfg.max_val_blocks {
        &blocks.val[..cfg.max_val_blocks]
    } else {
        &blocks.val
    };
    let validate = |t: &mut T, hooks: &mut dyn TrainHooks<T>| -> Result<bool> {
        let step = t.done();
        if t.val_curve().last().is_some_and(|(s, _)| *s == step) {
            return Ok(true);
        }
        match t.val_loss(val, cfg.micro_batch, &mut |f| {
            hooks.event(InjectEvent::Evaluating(f))
        })? {
            Some(l) => {
                t.val_curve().push((step, l));
                Ok(hooks.event(InjectEvent::Val { step, loss: l }))
            }
            None => Ok(false),
        }
    };
    if t.done() == 0 && !validate(t, hooks)? {
        return Ok(Stopped::Cancelled);
    }
    while t.done() < cfg.steps {
        let loss = t.step(blocks, cfg)?;
        let s = t.done();
        let go = hooks.event(InjectEvent::Step {
            step: s,
            total: cfg.steps,
            loss,
            lr: cfg.lr_at(s),
        });
        let go = go && (!s.is_multiple_of(cfg.eval_every) || validate(t, hooks)?);
        if (s.is_multiple_of(cfg.checkpoint_every) && s != cfg.steps) || !go {
            hooks.checkpoint(t)?;
        }
        if !go {
            return Ok(Stopped::Cancelled);
        }
    }
    if !validate(t, hooks)? {
        return Ok(Stopped::Cancelled);
    }
    hooks.checkpoint(t)?;
    Ok(Stopped::Completed)
}

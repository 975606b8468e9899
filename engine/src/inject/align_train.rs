//! Phase 3's training: the trainee (rows under the full objective on a frozen model), its
//! objective and gradient, one optimiser step, and the loop with checkpoints into `align/`.

use std::path::Path;

use candle_core::Tensor;
use neoscope_api::align::{AlignConfig, AlignTerms};

use super::align::{AlignPhase, AlignState, OptState, check, folder, save, schedule};
use super::align_terms::{self, Targets};
use super::optim;
use super::train::{self, Blocks, InjectConfig, InjectConfigExt, InjectEvent, Stopped, Trainee};
use crate::artifact;
use crate::error::Result;
use crate::model::Llama;

impl AlignPhase {
    /// Trains from `state` to `steps` in all (the settings' count when `None`), checkpointing
    /// into `align/`; `on_event` returns false to stop (a checkpoint is written first).
    pub fn train(
        &self,
        dir: &Path,
        state: &mut AlignState,
        steps: Option<usize>,
        on_event: &mut dyn FnMut(InjectEvent) -> bool,
    ) -> Result<Stopped> {
        let mut meta = self.meta.clone();
        if let Some(s) = steps.filter(|s| *s != meta.config.steps) {
            train::check_more_steps("phase 3", state.step, s)?;
            meta.config.steps = s;
            check(&meta.config)?;
            artifact::write_json(&folder(dir).join("align.json"), &meta)?;
        }
        let cfg = schedule(&meta.config, self.block_len);
        let model = match &self.adapters {
            Some(a) => crate::model::lora::merge(&self.base, a)?,
            None => self.base.clone(),
        };
        let mut t = AlignTraining {
            m: &model,
            targets: &self.targets,
            config: &meta.config,
            state,
        };
        let af = folder(dir);
        let save = |t: &AlignTraining<'_>| save(&af, t.state).map(drop);
        let mut hooks = train::Hooks {
            on_event,
            save: &save,
        };
        train::train(&mut t, &self.blocks, &cfg, &mut hooks)
    }
}

/// Phase 3's trainee: the rows under the full objective, on a frozen model.
pub struct AlignTraining<'a> {
    /// The model (base weights, adapters merged when used).
    pub m: &'a Llama,
    /// The regularisers' targets.
    pub targets: &'a Targets,
    /// Settings.
    pub config: &'a AlignConfig,
    /// Rows, optimiser state, curves.
    pub state: &'a mut AlignState,
}

impl Trainee for AlignTraining<'_> {
    fn done(&self) -> usize {
        self.state.step
    }
    fn val_curve(&mut self) -> &mut Vec<(usize, f32)> {
        &mut self.state.val
    }
    fn step(&mut self, blocks: &Blocks, cfg: &InjectConfig) -> Result<f32> {
        step(self.m, self.targets, self.config, self.state, blocks, cfg)
    }
    fn val_loss(
        &self,
        val: &[Vec<u32>],
        micro_batch: usize,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Option<f32>> {
        train::val_loss(self.m, &self.state.rows, None, val, micro_batch, progress)
    }
}

/// The objective's terms at `rows` on `blocks` (token-mean L_lm over all of them) and its
/// gradient with respect to `rows`, before clipping.
pub fn objective(
    m: &Llama,
    targets: &Targets,
    config: &AlignConfig,
    rows: &Tensor,
    blocks: &[&[u32]],
    micro_batch: usize,
    pairs: &[(u32, u32)],
) -> Result<(AlignTerms, Tensor)> {
    let tokens: usize = blocks.iter().map(|b| b.len().saturating_sub(1)).sum();
    let scale = 1.0 / tokens.max(1) as f64;
    let (mut terms, mut grad) = align_terms::terms_and_grad(rows, targets, config, pairs)?;
    let mut lm = 0.0f64;
    for mb in blocks.chunks(micro_batch.max(1)) {
        let (l, g) = train::row_grads(m, rows, mb, scale)?;
        lm += f64::from(l);
        grad = (grad + g)?;
    }
    terms.lm = lm as f32;
    Ok((terms, grad))
}

/// One optimiser step at `state.step + 1`; returns the step's objective.
fn step(
    m: &Llama,
    targets: &Targets,
    config: &AlignConfig,
    st: &mut AlignState,
    blocks: &Blocks,
    cfg: &InjectConfig,
) -> Result<f32> {
    let s = st.step + 1;
    let idx = cfg.step_blocks(blocks.train.len(), s);
    let refs: Vec<&[u32]> = idx.iter().map(|i| blocks.train[*i].as_slice()).collect();
    let n = st.rows.dim(0)?;
    let pairs = align_terms::pairs(config.seed, s, n, config.repulsion_pairs);
    let (terms, g) = objective(m, targets, config, &st.rows, &refs, cfg.micro_batch, &pairs)?;
    let g = train::clip_grads(vec![g], cfg.clip_norm)?.remove(0);
    let lr = cfg.lr_at(s);
    st.rows = match &mut st.opt {
        OptState::AdamW { m, v } => {
            optim::adamw(&st.rows, &g, m, v, s, lr, cfg.adam_eps, cfg.weight_decay)?
        }
        OptState::Adafactor(f) => optim::adafactor(&st.rows, &g, f, s, lr, cfg.weight_decay)?,
    };
    st.step = s;
    let loss = train::check_finite(align_terms::total(&terms, config), s)?;
    st.losses.push(loss);
    st.terms.push(terms);
    Ok(loss)
}

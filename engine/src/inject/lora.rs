//! Phase 2 of the protocol (Wake2Vec): LoRA adapters on the block projections learn to use the
//! injected vocabulary while every model weight and the run's rows stay frozen. It trains on the
//! run's own blocks with the same schedule machinery, checkpoints and exact resume as phase 1.
//!
//! On disk, in the run folder's `lora/`:
//! - `lora.json`: format, version, base model, settings, the phase-1 step whose rows it uses;
//! - `rows.safetensors`: those rows (frozen), so pruning phase-1 checkpoints loses nothing;
//! - `checkpoints/step-NNNNNN.safetensors`: the adapters under PEFT's names
//!   (`layers.L.q_proj.lora_A`), their Adam moments and the curves.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Tensor, Var};
use neoscope_api::lora::{LoraConfig, LoraRun};
use serde::{Deserialize, Serialize};

use super::forward::nll_sum;
use super::run::{self, Curves};
use super::session;
use super::train::{
    self, Blocks, InjectConfig, InjectConfigExt, InjectEvent, Stopped, Trainee, val_loss,
};
use crate::artifact::{self, BaseModel, Header, Kind};
use crate::error::{EngineError, Result};
use crate::model::lora::{Adapters, Dropout};
use crate::model::{Llama, LoadedModel};

/// The phase-2 artifact.
pub const KIND: Kind = Kind {
    format: "neoscope-lora",
    version: 1,
    what: "LoRA phase",
};

/// `lora.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraMeta {
    /// Format, version, base model.
    #[serde(flatten)]
    pub header: Header,
    /// Settings.
    pub config: LoraConfig,
    /// The phase-1 checkpoint whose rows it trains with.
    pub rows_step: usize,
    /// SHA-256 of `rows.safetensors`.
    pub rows_sha256: String,
}

/// The phase-2 folder of a run.
pub fn folder(run: &Path) -> PathBuf {
    run.join("lora")
}

/// Adapters, their Adam moments and the curves.
#[derive(Debug, Clone)]
pub struct LoraState {
    /// Steps done.
    pub step: usize,
    /// Current adapters (no dropout).
    pub adapters: Adapters,
    /// Adam first moments, in [`Adapters::named`] order.
    pub m: Vec<Tensor>,
    /// Adam second moments.
    pub v: Vec<Tensor>,
    /// Training loss of every step.
    pub losses: Vec<f32>,
    /// (step, validation loss).
    pub val: Vec<(usize, f32)>,
}

impl LoraState {
    /// Step 0 at `adapters`, zero moments, no curves.
    pub fn fresh(adapters: Adapters) -> Result<Self> {
        let zeros = |t: &(String, Tensor)| t.1.zeros_like();
        let named = adapters.named();
        Ok(Self {
            step: 0,
            m: named
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
            v: named
                .iter()
                .map(zeros)
                .collect::<candle_core::Result<_>>()?,
            adapters,
            losses: Vec::new(),
            val: Vec::new(),
        })
    }
}

/// An open phase 2: settings, frozen rows, the run's blocks.
#[derive(Debug, Clone)]
pub struct LoraPhase {
    /// `lora.json`.
    pub meta: LoraMeta,
    /// The frozen rows (n_new, d).
    pub rows: Tensor,
    /// The run's blocks.
    pub blocks: Blocks,
    /// The run's block length.
    pub block_len: usize,
}

/// The phase-1 schedule settings that phase 2's loop reads (learning rate, steps, batches,
/// intervals, seed) from the LoRA settings.
pub fn schedule(c: &LoraConfig, block_len: usize) -> InjectConfig {
    InjectConfig {
        seed: c.seed,
        block_len,
        lr: c.lr,
        warmup: c.warmup,
        schedule: c.schedule,
        micro_batch: c.micro_batch,
        accum: c.accum,
        steps: c.steps,
        weight_decay: c.weight_decay,
        clip_norm: c.clip_norm,
        eval_every: c.eval_every,
        checkpoint_every: c.checkpoint_every,
        max_val_blocks: c.max_val_blocks,
        adam_eps: c.adam_eps,
        ..InjectConfig::default()
    }
}

fn check(c: &LoraConfig) -> Result<()> {
    if c.rank == 0 || c.targets.is_empty() {
        return Err(EngineError::Invalid(
            "LoRA settings: the rank must be at least 1, with at least one target projection"
                .into(),
        ));
    }
    if !(0.0..1.0).contains(&c.dropout) {
        return Err(EngineError::Invalid(format!(
            "LoRA settings: dropout must be in [0, 1), got {}",
            c.dropout
        )));
    }
    if !(c.alpha.is_finite() && c.alpha > 0.0) {
        return Err(EngineError::Invalid(
            "LoRA settings: α must be positive".into(),
        ));
    }
    schedule(c, 2).check()
}

/// Starts phase 2 of the run in `dir` with the rows of its checkpoint `rows_step` (default:
/// the latest), refusing a run that already has one.
pub fn create(
    m: &LoadedModel,
    dir: &Path,
    config: LoraConfig,
    rows_step: Option<usize>,
) -> Result<LoraPhase> {
    check(&config)?;
    let s = session::open(m, dir)?;
    let lf = folder(dir);
    if lf.join("lora.json").exists() {
        return Err(EngineError::Invalid(format!(
            "{} already has a LoRA phase: resume it, or delete {} to start it again",
            dir.display(),
            lf.display()
        )));
    }
    let state = match rows_step {
        Some(0) => {
            return Err(EngineError::Invalid(
                "phase 2 trains on rows from phase 1: pick a checkpoint step after 0".into(),
            ));
        }
        Some(st) => run::load_checkpoint(dir, s.meta.hashed(), Some(st), m.llama.device())?,
        None => run::load_checkpoint(dir, s.meta.hashed(), None, m.llama.device())?,
    };
    // Adapters that do not fit the model are refused before anything is written.
    Adapters::init(
        &m.llama,
        &config.targets,
        config.rank,
        config.alpha,
        config.seed,
    )?;
    let rows_sha256 = artifact::write_tensors(
        &lf.join("rows.safetensors"),
        &[("rows".to_owned(), state.rows.clone())],
        None,
    )?;
    let meta = LoraMeta {
        header: KIND.header(&BaseModel::of(&m.info)),
        config,
        rows_step: state.step,
        rows_sha256,
    };
    artifact::write_json(&lf.join("lora.json"), &meta)?;
    Ok(LoraPhase {
        meta,
        rows: state.rows,
        block_len: s.meta.config.block_len,
        blocks: s.blocks,
    })
}

/// Opens phase 2 of the run in `dir` for the loaded model.
pub fn open(m: &LoadedModel, dir: &Path) -> Result<LoraPhase> {
    open_with(m, dir, &session::open(m, dir)?)
}

/// [`open`] with the run's session already open (its data read and checked once).
pub fn open_with(m: &LoadedModel, dir: &Path, s: &session::Session) -> Result<LoraPhase> {
    let lf = folder(dir);
    if !lf.join("lora.json").exists() {
        return Err(EngineError::Invalid(format!(
            "{} has no LoRA phase yet (train one with `inject lora`)",
            dir.display()
        )));
    }
    let base = BaseModel::of(&m.info);
    let meta: LoraMeta = artifact::read_json(&lf.join("lora.json"), &KIND, &base)?;
    check(&meta.config).map_err(|e| EngineError::bad_file(lf.join("lora.json"), e.to_string()))?;
    let path = lf.join("rows.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| EngineError::io(&path, e))?;
    if artifact::sha256_hex(&bytes) != meta.rows_sha256 {
        return Err(EngineError::bad_file(
            &path,
            "does not match lora.json (its SHA-256 differs): the phase's rows were changed",
        ));
    }
    let rows = artifact::parse_tensors(&path, &bytes, m.llama.device())?
        .get("rows", Some(&[s.meta.forms.len(), base.d_model]))?;
    Ok(LoraPhase {
        meta,
        rows,
        block_len: s.meta.config.block_len,
        blocks: s.blocks.clone(),
    })
}

impl LoraPhase {
    /// Fresh adapters for these settings (the template of every checkpoint's tensors).
    fn fresh(&self, m: &Llama) -> Result<Adapters> {
        let c = &self.meta.config;
        Adapters::init(m, &c.targets, c.rank, c.alpha, c.seed)
    }

    /// The state at checkpoint `step` (`None`: the latest; with no checkpoint yet, fresh
    /// adapters at step 0).
    pub fn state(&self, m: &Llama, dir: &Path, step: Option<usize>) -> Result<LoraState> {
        let fresh = self.fresh(m)?;
        let lf = folder(dir);
        if (step.is_none() && run::checkpoints(&lf)?.is_empty()) || step == Some(0) {
            return LoraState::fresh(fresh);
        }
        let names: Vec<String> = fresh.named().into_iter().map(|(n, _)| n).collect();
        let n = names.len();
        let all: Vec<String> = names
            .iter()
            .cloned()
            .chain(names.iter().map(|k| format!("adam_m.{k}")))
            .chain(names.iter().map(|k| format!("adam_v.{k}")))
            .collect();
        let (c, mut t) = run::load_state(&lf, step, &all, true, m.device())?;
        let v = t.split_off(2 * n);
        let mo = t.split_off(n);
        Ok(LoraState {
            step: c.step,
            adapters: fresh.with_tensors(&t)?,
            m: mo,
            v,
            losses: c.losses,
            val: c.val,
        })
    }

    /// Trains from `state` to `steps` in all (the settings' count when `None`), checkpointing
    /// into `lora/`; `on_event` returns false to stop (a checkpoint is written first).
    pub fn train(
        &self,
        m: &Llama,
        dir: &Path,
        state: &mut LoraState,
        steps: Option<usize>,
        on_event: &mut dyn FnMut(InjectEvent) -> bool,
    ) -> Result<Stopped> {
        let mut meta = self.meta.clone();
        if let Some(s) = steps.filter(|s| *s != meta.config.steps) {
            train::check_more_steps("phase 2", state.step, s)?;
            meta.config.steps = s;
            check(&meta.config)?;
            artifact::write_json(&folder(dir).join("lora.json"), &meta)?;
        }
        let cfg = schedule(&meta.config, self.block_len);
        let mut t = LoraTraining {
            m,
            rows: &self.rows,
            dropout: meta.config.dropout,
            state,
        };
        let lf = folder(dir);
        let save = |t: &LoraTraining<'_>| save(&lf, t.state).map(drop);
        let mut hooks = train::Hooks {
            on_event,
            save: &save,
        };
        train::train(&mut t, &self.blocks, &cfg, &mut hooks)
    }

    /// What phase 2 reports.
    pub fn summary(&self, dir: &Path, state: &LoraState, stopped: Option<Stopped>) -> LoraRun {
        LoraRun {
            dir: dir.to_path_buf(),
            stopped,
            step: state.step,
            steps: self.meta.config.steps,
            rows_step: self.meta.rows_step,
            parameters: state.adapters.parameters(),
            losses: state.losses.clone(),
            val: state.val.clone(),
        }
    }
}

/// Writes a phase-2 checkpoint.
fn save(lora_dir: &Path, st: &LoraState) -> Result<PathBuf> {
    let named = st.adapters.named();
    let mut tensors = named.clone();
    for (prefix, moments) in [("adam_m", &st.m), ("adam_v", &st.v)] {
        for ((n, _), t) in named.iter().zip(moments) {
            tensors.push((format!("{prefix}.{n}"), t.clone()));
        }
    }
    let curves = Curves {
        step: st.step,
        losses: st.losses.clone(),
        val: st.val.clone(),
    };
    run::save_state(lora_dir, &curves, &tensors)
}

/// Phase 2's trainee: adapters on a frozen model with frozen rows.
pub struct LoraTraining<'a> {
    /// The model (base weights).
    pub m: &'a Llama,
    /// The frozen rows.
    pub rows: &'a Tensor,
    /// Training dropout.
    pub dropout: f32,
    /// Adapters, moments, curves.
    pub state: &'a mut LoraState,
}

impl Trainee for LoraTraining<'_> {
    fn done(&self) -> usize {
        self.state.step
    }
    fn val_curve(&mut self) -> &mut Vec<(usize, f32)> {
        &mut self.state.val
    }
    fn step(&mut self, blocks: &Blocks, cfg: &InjectConfig) -> Result<f32> {
        step(self.m, self.rows, self.state, self.dropout, blocks, cfg)
    }
    fn val_loss(
        &self,
        val: &[Vec<u32>],
        micro_batch: usize,
        progress: &mut dyn FnMut(f32) -> bool,
    ) -> Result<Option<f32>> {
        let ad = Some(&self.state.adapters);
        val_loss(self.m, self.rows, ad, val, micro_batch, progress)
    }
}

/// `scale ·` the summed next-token loss over `blocks` of model `m` carrying `adapters`, and its
/// gradient with respect to every adapter tensor (in [`Adapters::named`] order); `rows`
/// frozen. The hand-written CPU pass where it applies, candle's autograd elsewhere.
pub fn loss_and_grads(
    m: &Llama,
    rows: &Tensor,
    adapters: &Adapters,
    blocks: &[&[u32]],
    scale: f64,
) -> Result<(f32, Vec<Tensor>)> {
    if super::fast_pass::supported(m) {
        return super::fast_pass::loss_and_grads(m, rows, adapters, blocks, scale);
    }
    loss_and_grads_autograd(m, rows, adapters, blocks, scale)
}

/// [`loss_and_grads`] by candle's autograd on the hooked pass (any device, any family).
pub fn loss_and_grads_autograd(
    m: &Llama,
    rows: &Tensor,
    adapters: &Adapters,
    blocks: &[&[u32]],
    scale: f64,
) -> Result<(f32, Vec<Tensor>)> {
    let vars: Vec<Var> = adapters
        .named()
        .iter()
        .map(|(_, t)| Var::from_tensor(t))
        .collect::<candle_core::Result<_>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let model = m.with_adapters(Some(Arc::new(adapters.with_tensors(&tensors)?)));
    let (nll, _) = nll_sum(&model, rows, blocks)?;
    let l = (nll * scale)?;
    let g = l.backward()?;
    let grads = tensors
        .iter()
        .map(|t| match g.get(t) {
            Some(x) => Ok(x.clone()),
            None => Ok(t.zeros_like()?),
        })
        .collect::<Result<_>>()?;
    Ok((l.to_scalar::<f32>()?, grads))
}

/// One AdamW step (decoupled weight decay, as PyTorch's `AdamW`) at `state.step + 1`.
fn step(
    m: &Llama,
    rows: &Tensor,
    st: &mut LoraState,
    dropout: f32,
    blocks: &Blocks,
    cfg: &InjectConfig,
) -> Result<f32> {
    let s = st.step + 1;
    let idx = cfg.step_blocks(blocks.train.len(), s);
    let scale = 1.0 / (idx.len() * (cfg.block_len - 1)) as f64;
    let mut grads: Option<Vec<Tensor>> = None;
    let mut loss = 0.0f64;
    for (k, mb) in idx.chunks(cfg.micro_batch).enumerate() {
        let refs: Vec<&[u32]> = mb.iter().map(|i| blocks.train[*i].as_slice()).collect();
        let mut ad = st.adapters.clone();
        ad.dropout = Some(Dropout {
            p: dropout,
            seed: cfg.seed ^ ((s as u64) << 20 | k as u64).wrapping_mul(0xD1B5_4A32_D192_ED03),
        });
        let (l, g) = loss_and_grads(m, rows, &ad, &refs, scale)?;
        loss += f64::from(l);
        grads = Some(match grads {
            Some(acc) => acc
                .iter()
                .zip(&g)
                .map(|(a, b)| a + b)
                .collect::<candle_core::Result<_>>()?,
            None => g,
        });
    }
    let g = grads.ok_or_else(|| EngineError::Invalid("empty step".into()))?;
    let g = train::clip_grads(g, cfg.clip_norm)?;
    let lr = cfg.lr_at(s);
    let params: Vec<Tensor> = st.adapters.named().into_iter().map(|(_, t)| t).collect();
    let mut new = Vec::with_capacity(params.len());
    for (i, (p, g)) in params.iter().zip(&g).enumerate() {
        let (m, v) = (&mut st.m[i], &mut st.v[i]);
        new.push(super::optim::adamw(
            p,
            g,
            m,
            v,
            s,
            lr,
            cfg.adam_eps,
            cfg.weight_decay,
        )?);
    }
    st.adapters = st.adapters.with_tensors(&new)?;
    st.step = s;
    let loss = train::check_finite(loss as f32, s)?;
    st.losses.push(loss);
    Ok(loss)
}

/// The held-out score of the run's phase 2 at its latest checkpoint, if it has one.
pub fn phase_score(
    m: &LoadedModel,
    dir: &Path,
    s: &session::Session,
) -> Result<Option<neoscope_api::inject::PhaseScore>> {
    if !folder(dir).join("lora.json").exists() || run::checkpoints(&folder(dir))?.is_empty() {
        return Ok(None);
    }
    let phase = open_with(m, dir, s)?;
    let st = phase.state(&m.llama, dir, None)?;
    Ok(st
        .val
        .last()
        .map(|(s, l)| neoscope_api::inject::PhaseScore::new("phase 2 (LoRA)", *s, *l)))
}

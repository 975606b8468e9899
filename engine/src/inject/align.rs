//! Phase 3 of the protocol (Wake2Vec): morpheme-compositional alignment. The new rows learn again
//! under `L_lm + λ_m L_morpheme + λ_r L_repulsion + λ_n L_norm` (the terms in `align_terms`),
//! with every model weight frozen: the base weights, or the base weights with the phase-2
//! adapters merged in. Only the new rows get gradients (the seed's "gradient masking: new tokens
//! only"). It trains on the run's own blocks with the loop, checkpoints and exact resume of
//! phases 1 and 2, with Adafactor (the seed's choice) or AdamW.
//!
//! On disk, in the run folder's `align/`:
//! - `align.json`: format, version, base model, settings, where the rows and adapters came from,
//!   the base norm band;
//! - `start.safetensors`: the starting rows and L_morpheme's targets (indices and parts' means);
//! - `checkpoints/step-NNNNNN.safetensors`: rows, optimiser state, the terms of every step and
//!   the curves.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use neoscope_api::align::{AlignConfig, AlignOptimizer, AlignRun, AlignTerms, AlignedRows};
use neoscope_api::inject::PhaseScore;
use neoscope_api::lora::LoraUse;
use serde::{Deserialize, Serialize};

use super::align_terms::{NormBand, Targets};
use super::optim::Factored;
use super::run::{self, Curves};
use super::session::{self, Session};
use super::train::{Blocks, InjectConfig, InjectConfigExt, Stopped};
use crate::artifact::{self, BaseModel, Header, Kind};
use crate::error::{EngineError, Result};
use crate::model::lora::Adapters;
use crate::model::{Llama, LoadedModel};

/// The phase-3 artifact.
pub const KIND: Kind = Kind {
    format: "neoscope-align",
    version: 1,
    what: "alignment phase",
};

/// `align.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlignMeta {
    /// Format, version, base model.
    #[serde(flatten)]
    pub header: Header,
    /// Settings.
    pub config: AlignConfig,
    /// The phase-1 checkpoint whose rows it started from.
    pub rows_step: usize,
    /// The phase-2 checkpoint whose adapters it trains under, if any.
    pub lora_step: Option<usize>,
    /// L_norm's band (the base rows' norms).
    pub norms: NormBand,
    /// Split forms L_morpheme pulls.
    pub morpheme_forms: usize,
    /// SHA-256 of `start.safetensors`.
    pub start_sha256: String,
}

/// The phase-3 folder of a run.
pub fn folder(run: &Path) -> PathBuf {
    run.join("align")
}

/// The optimiser's state.
#[derive(Debug, Clone)]
pub enum OptState {
    /// AdamW's moments.
    AdamW {
        /// First moment.
        m: Tensor,
        /// Second moment.
        v: Tensor,
    },
    /// Adafactor's factored second moment.
    Adafactor(Factored),
}

impl OptState {
    fn fresh(opt: AlignOptimizer, rows: &Tensor) -> Result<Self> {
        Ok(match opt {
            AlignOptimizer::AdamW => Self::AdamW {
                m: rows.zeros_like()?,
                v: rows.zeros_like()?,
            },
            AlignOptimizer::Adafactor => Self::Adafactor(Factored::zeros(rows)?),
        })
    }

    fn names(opt: AlignOptimizer) -> [&'static str; 2] {
        match opt {
            AlignOptimizer::AdamW => ["adam_m", "adam_v"],
            AlignOptimizer::Adafactor => ["adafactor_row", "adafactor_col"],
        }
    }

    fn tensors(&self) -> [Tensor; 2] {
        match self {
            Self::AdamW { m, v } => [m.clone(), v.clone()],
            Self::Adafactor(f) => [f.row.clone(), f.col.clone()],
        }
    }
}

/// Rows, optimiser state and curves.
#[derive(Debug, Clone)]
pub struct AlignState {
    /// Steps done.
    pub step: usize,
    /// Current rows (n_new, d).
    pub rows: Tensor,
    /// Optimiser state.
    pub opt: OptState,
    /// Objective of every step.
    pub losses: Vec<f32>,
    /// Its terms.
    pub terms: Vec<AlignTerms>,
    /// (step, validation loss).
    pub val: Vec<(usize, f32)>,
}

/// An open phase 3: settings, targets, the model it trains under, the run's blocks.
#[derive(Debug)]
pub struct AlignPhase {
    /// `align.json`.
    pub meta: AlignMeta,
    /// The starting rows.
    pub start: Tensor,
    /// The regularisers' targets.
    pub targets: Targets,
    /// The base model.
    pub base: Llama,
    /// The phase-2 adapters it trains under, if any (merged only when training).
    pub adapters: Option<Adapters>,
    /// The run's blocks.
    pub blocks: Blocks,
    /// The run's block length.
    pub block_len: usize,
    /// New forms.
    pub forms: usize,
}

/// The loop settings phase 3 reads from its own.
pub fn schedule(c: &AlignConfig, block_len: usize) -> InjectConfig {
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

pub(crate) fn check(c: &AlignConfig) -> Result<()> {
    let ok = |x: f64| x.is_finite() && x >= 0.0;
    if !(ok(c.lambda_morpheme) && ok(c.lambda_repulsion) && ok(c.lambda_norm)) {
        return Err(EngineError::Invalid(
            "alignment settings: the λ weights must be finite and not negative".into(),
        ));
    }
    if !(c.repulsion_threshold.is_finite() && (-1.0..1.0).contains(&c.repulsion_threshold)) {
        return Err(EngineError::Invalid(format!(
            "alignment settings: the repulsion threshold is a cosine in [-1, 1), got {}",
            c.repulsion_threshold
        )));
    }
    if c.repulsion_pairs > MAX_PAIRS {
        return Err(EngineError::Invalid(format!(
            "alignment settings: at most {MAX_PAIRS} repulsion pairs per step, got {}",
            c.repulsion_pairs
        )));
    }
    schedule(c, 2).check()
}

/// The most repulsion pairs one step may score.
const MAX_PAIRS: usize = 1 << 20;

/// The phase-2 adapters of `dir` at checkpoint `lora`, with the rows and phase-1 step they
/// trained with (`None` without adapters).
fn lora_adapters(
    m: &LoadedModel,
    dir: &Path,
    s: &Session,
    lora: Option<usize>,
) -> Result<Option<(Adapters, Tensor, usize)>> {
    let Some(at) = lora else {
        return Ok(None);
    };
    let phase = super::lora::open_with(m, dir, s)?;
    let st = phase.state(&m.llama, dir, Some(at))?;
    Ok(Some((st.adapters, phase.rows, phase.meta.rows_step)))
}

/// Starts phase 3 of the run in `dir`: from its phase-1 checkpoint `rows_step` (default: the
/// latest), or with `lora` from phase 2's rows under its adapters. Refuses a run that already
/// has a phase 3.
pub fn create(
    m: &LoadedModel,
    dir: &Path,
    config: AlignConfig,
    rows_step: Option<usize>,
    lora: LoraUse,
) -> Result<AlignPhase> {
    check(&config)?;
    let s = session::open(m, dir)?;
    let af = folder(dir);
    if af.join("align.json").exists() {
        return Err(EngineError::Invalid(format!(
            "{} already has an alignment phase: resume it, or delete {} to start it again",
            dir.display(),
            af.display()
        )));
    }
    let lora_step = match lora {
        LoraUse::None => None,
        LoraUse::Step(st) => Some(st),
        LoraUse::Latest => Some(
            *run::checkpoints(&super::lora::folder(dir))?
                .last()
                .ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "{} has no phase-2 checkpoint to align under (train `inject lora` first, \
                         or align without adapters)",
                        dir.display()
                    ))
                })?,
        ),
    };
    if lora_step.is_some() && rows_step.is_some() {
        return Err(EngineError::Invalid(
            "with phase-2 adapters, phase 3 starts from the rows they trained with: leave the \
             rows step out"
                .into(),
        ));
    }
    let (rows, rows_step) = match lora_adapters(m, dir, &s, lora_step)? {
        Some((_, rows, at)) => (rows, at),
        None => match rows_step {
            Some(0) => (s.init.clone(), 0),
            st => {
                let c = run::load_checkpoint(dir, s.meta.hashed(), st, m.llama.device())?;
                (c.rows, c.step)
            }
        },
    };
    let parts = super::change::part_means(m, &s.meta.inits)?;
    let mut tensors = vec![("rows".to_owned(), rows.clone())];
    if !parts.is_empty() {
        let idx: Vec<u32> = parts.iter().map(|p| p.form as u32).collect();
        let d = rows.dim(1)?;
        let means: Vec<f32> = parts.iter().flat_map(|p| p.mean.clone()).collect();
        tensors.push((
            "morph_idx".to_owned(),
            Tensor::new(idx, rows.device())?.to_dtype(DType::I64)?,
        ));
        tensors.push((
            "morph_mean".to_owned(),
            Tensor::from_vec(means, (parts.len(), d), rows.device())?,
        ));
    }
    let start_sha256 = artifact::write_tensors(&af.join("start.safetensors"), &tensors, None)?;
    let meta = AlignMeta {
        header: KIND.header(&BaseModel::of(&m.info)),
        config,
        rows_step,
        lora_step,
        norms: NormBand::of(&m.llama.embed)?,
        morpheme_forms: parts.len(),
        start_sha256,
    };
    artifact::write_json(&af.join("align.json"), &meta)?;
    open_with(m, dir, &s)
}

/// Opens phase 3 of the run in `dir` for the loaded model.
pub fn open(m: &LoadedModel, dir: &Path) -> Result<AlignPhase> {
    open_with(m, dir, &session::open(m, dir)?)
}

/// [`open`] with the run's session already open.
pub fn open_with(m: &LoadedModel, dir: &Path, s: &Session) -> Result<AlignPhase> {
    let af = folder(dir);
    if !af.join("align.json").exists() {
        return Err(EngineError::Invalid(format!(
            "{} has no alignment phase yet (train one with `inject align`)",
            dir.display()
        )));
    }
    let base = BaseModel::of(&m.info);
    let meta: AlignMeta = artifact::read_json(&af.join("align.json"), &KIND, &base)?;
    check(&meta.config).map_err(|e| EngineError::bad_file(af.join("align.json"), e.to_string()))?;
    let path = af.join("start.safetensors");
    let bytes = std::fs::read(&path).map_err(|e| EngineError::io(&path, e))?;
    if artifact::sha256_hex(&bytes) != meta.start_sha256 {
        return Err(EngineError::bad_file(
            &path,
            "does not match align.json (its SHA-256 differs): the phase's start was changed",
        ));
    }
    let t = artifact::parse_tensors(&path, &bytes, m.llama.device())?;
    let (n, d) = (s.meta.forms.len(), base.d_model);
    let start = t.get("rows", Some(&[n, d]))?;
    let k = meta.morpheme_forms;
    let (morph_idx, morph_mean) = if k == 0 {
        (None, None)
    } else {
        let idx = t.get("morph_idx", Some(&[k]))?;
        let ids: Vec<i64> = idx.to_vec1()?;
        if ids.iter().any(|i| !(0..n as i64).contains(i)) {
            return Err(EngineError::bad_file(
                &path,
                format!("`morph_idx` names a row outside the run's {n} forms"),
            ));
        }
        (
            Some(idx.to_dtype(DType::U32)?),
            Some(t.get("morph_mean", Some(&[k, d]))?),
        )
    };
    let adapters = lora_adapters(m, dir, s, meta.lora_step)?.map(|(a, _, _)| a);
    Ok(AlignPhase {
        targets: Targets {
            morph_idx,
            morph_mean,
            norms: meta.norms,
        },
        meta,
        start,
        base: m.llama.clone(),
        adapters,
        blocks: s.blocks.clone(),
        block_len: s.meta.config.block_len,
        forms: n,
    })
}

impl AlignPhase {
    /// The state at checkpoint `step` (`None`: the latest; with none yet, the start at step 0).
    pub fn state(&self, dir: &Path, step: Option<usize>) -> Result<AlignState> {
        let af = folder(dir);
        let opt = self.meta.config.optimizer;
        if (step.is_none() && run::checkpoints(&af)?.is_empty()) || step == Some(0) {
            return Ok(AlignState {
                step: 0,
                opt: OptState::fresh(opt, &self.start)?,
                rows: self.start.clone(),
                losses: Vec::new(),
                terms: Vec::new(),
                val: Vec::new(),
            });
        }
        let [a, b] = OptState::names(opt);
        let names = ["rows", a, b, "terms"].map(str::to_owned).to_vec();
        let (c, t) = run::load_state(&af, step, &names, true, self.start.device())?;
        let path = af.join("checkpoints");
        let [rows, x, y, terms]: [Tensor; 4] = t
            .try_into()
            .map_err(|_| EngineError::Invalid("internal: four tensors expected".into()))?;
        let (n, d) = self.start.dims2()?;
        let shaped = |t: &Tensor, want: &[usize], what: &str| -> Result<()> {
            if t.dims() == want {
                Ok(())
            } else {
                Err(EngineError::bad_file(
                    &path,
                    format!(
                        "step {}: `{what}` has shape {:?}, not {want:?}",
                        c.step,
                        t.dims()
                    ),
                ))
            }
        };
        shaped(&rows, &[n, d], "rows")?;
        let opt = match opt {
            AlignOptimizer::AdamW => {
                shaped(&x, &[n, d], a)?;
                shaped(&y, &[n, d], b)?;
                OptState::AdamW { m: x, v: y }
            }
            AlignOptimizer::Adafactor => {
                shaped(&x, &[n], a)?;
                shaped(&y, &[d], b)?;
                OptState::Adafactor(Factored { row: x, col: y })
            }
        };
        shaped(&terms, &[c.step, 4], "terms")?;
        let terms: Vec<AlignTerms> = terms
            .to_vec2::<f32>()?
            .into_iter()
            .map(|r| AlignTerms {
                lm: r[0],
                morpheme: r[1],
                repulsion: r[2],
                norm: r[3],
            })
            .collect();
        if c.losses.len() != c.step {
            return Err(EngineError::bad_file(
                &path,
                format!("step {}: {} losses recorded", c.step, c.losses.len()),
            ));
        }
        Ok(AlignState {
            step: c.step,
            rows,
            opt,
            losses: c.losses,
            terms,
            val: c.val,
        })
    }

    /// What phase 3 reports.
    pub fn summary(&self, dir: &Path, state: &AlignState, stopped: Option<Stopped>) -> AlignRun {
        AlignRun {
            dir: dir.to_path_buf(),
            stopped,
            step: state.step,
            steps: self.meta.config.steps,
            rows_step: self.meta.rows_step,
            lora_step: self.meta.lora_step,
            morpheme_forms: self.meta.morpheme_forms,
            forms: self.forms,
            losses: state.losses.clone(),
            terms: state.terms.clone(),
            val: state.val.clone(),
        }
    }
}

/// Writes a phase-3 checkpoint.
pub(crate) fn save(align_dir: &Path, st: &AlignState) -> Result<PathBuf> {
    let opt = match st.opt {
        OptState::AdamW { .. } => AlignOptimizer::AdamW,
        OptState::Adafactor(_) => AlignOptimizer::Adafactor,
    };
    let [a, b] = OptState::names(opt);
    let [x, y] = st.opt.tensors();
    let flat: Vec<f32> = st
        .terms
        .iter()
        .flat_map(|t| [t.lm, t.morpheme, t.repulsion, t.norm])
        .collect();
    let terms = Tensor::from_vec(flat, (st.terms.len(), 4), st.rows.device())?;
    let tensors = vec![
        ("rows".to_owned(), st.rows.clone()),
        (a.to_owned(), x),
        (b.to_owned(), y),
        ("terms".to_owned(), terms),
    ];
    let curves = Curves {
        step: st.step,
        losses: st.losses.clone(),
        val: st.val.clone(),
    };
    run::save_state(align_dir, &curves, &tensors)
}

/// Phase 3's score and report section for the run in `dir`, if it has a phase-3 checkpoint.
pub fn report(
    m: &LoadedModel,
    dir: &Path,
    s: &Session,
) -> Result<Option<(Option<PhaseScore>, AlignedRows)>> {
    if !folder(dir).join("align.json").exists() || run::checkpoints(&folder(dir))?.is_empty() {
        return Ok(None);
    }
    let phase = open_with(m, dir, s)?;
    let st = phase.state(dir, None)?;
    let (Some(first), Some(last)) = (st.terms.first(), st.terms.last()) else {
        return Ok(None);
    };
    let score = st
        .val
        .last()
        .map(|(s, l)| PhaseScore::new("phase 3 (alignment)", *s, *l));
    let morphemes = super::change::morphemes(m, &s.meta.inits, &phase.start, &st.rows)?;
    Ok(Some((
        score,
        AlignedRows {
            step: st.step,
            config: phase.meta.config.clone(),
            lora_step: phase.meta.lora_step,
            first: *first,
            last: *last,
            morphemes,
        },
    )))
}

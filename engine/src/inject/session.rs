//! Starting and continuing an injection run: sort the lexicon, make the rows, tokenize and split
//! the corpus, create the run folder, and train with checkpoints into it.

use crate::inject::train::InjectConfigExt;
use std::path::Path;

use candle_core::Tensor;

use super::lexicon::{Morpheme, sort_forms};
use super::run::{self, RunMeta};
use super::train::{self, Blocks, InjectConfig, InjectEvent, RowTraining, Stopped, TrainState};
use super::vocab::{Forms, initial_rows};
use crate::artifact::BaseModel;
use crate::error::{EngineError, Result};
use crate::model::LoadedModel;

/// What a run starts from.
#[derive(Debug, Clone, PartialEq)]
pub struct Inputs {
    /// Lexicon forms.
    pub forms: Vec<String>,
    /// Morpheme table (may be empty for spherical init).
    pub morphemes: Vec<Morpheme>,
    /// Training text.
    pub corpus: String,
    /// Where the inputs came from (recorded in `run.json`).
    pub sources: Vec<String>,
}

/// An open run: its metadata, vocabulary, initial rows and blocks.
#[derive(Debug, Clone)]
pub struct Session {
    /// `run.json`.
    pub meta: RunMeta,
    /// The new forms.
    pub vocab: Forms,
    /// Rows before training (n_new, d).
    pub init: Tensor,
    /// Train/validation blocks.
    pub blocks: Blocks,
}

/// Creates a run in `dir` from `inputs`.
pub fn start(m: &LoadedModel, inputs: &Inputs, cfg: &InjectConfig, dir: &Path) -> Result<Session> {
    cfg.check()?;
    let context = m.llama.cfg.max_position_embeddings;
    if cfg.block_len > context {
        return Err(EngineError::Invalid(format!(
            "injection settings: block length {} exceeds the model's context of {context} tokens",
            cfg.block_len
        )));
    }
    let sorted = sort_forms(&m.tokenizer, &inputs.forms)?;
    if sorted.new.is_empty() {
        return Err(EngineError::Invalid(format!(
            "all {} forms are already single tokens: nothing to inject",
            inputs.forms.len()
        )));
    }
    if matches!(cfg.init, super::init::InitKind::Compositional { .. })
        && inputs.morphemes.is_empty()
    {
        return Err(EngineError::Invalid(
            "compositional initialisation needs a morpheme table (or choose spherical)".into(),
        ));
    }
    let vocab = Forms::new(sorted.new, m.llama.cfg.vocab_size);
    let (rows, inits) = initial_rows(m, &vocab, &inputs.morphemes, cfg.init, cfg.seed)?;
    let d = m.llama.cfg.hidden_size;
    let init = Tensor::from_vec(rows, (vocab.len(), d), m.llama.device())?;
    let ids = vocab.encode(m, &inputs.corpus)?;
    let mut blocks = train::make_blocks(&ids, cfg.block_len, cfg.val_fraction, cfg.seed)?;
    if cfg.append_lexicon {
        // The forms one per line, as training blocks only: over an epoch every form is seen,
        // and the held-out blocks stay the corpus's own text.
        // The last block wraps round to the first forms, so none is left out.
        let ids = vocab.encode(m, &vocab.forms.join("\n"))?;
        for start in (0..ids.len()).step_by(cfg.block_len) {
            let block = (0..cfg.block_len).map(|k| ids[(start + k) % ids.len()]);
            blocks.train.push(block.collect());
        }
    }
    if cfg.micro_batch > blocks.train.len() {
        return Err(EngineError::Invalid(format!(
            "injection settings: a micro-batch of {} blocks, but the corpus gives {} training \
             blocks of {} tokens",
            cfg.micro_batch,
            blocks.train.len(),
            cfg.block_len
        )));
    }
    let mut meta = RunMeta {
        header: run::KIND.header(&BaseModel::of(&m.info)),
        config: cfg.clone(),
        forms: vocab.forms.clone(),
        known: sorted.known,
        inits,
        sources: inputs.sources.clone(),
        corpus_tokens: ids.len(),
        // The report checks the base matrix never changed against this.
        base_rows_sha256: crate::artifact::tensor_sha256(&m.llama.embed)?,
        data_sha256: None,
    };
    run::create(dir, &mut meta, &init, &blocks)?;
    Ok(Session {
        meta,
        vocab,
        init,
        blocks,
    })
}

/// Opens the run in `dir` for the loaded model.
pub fn open(m: &LoadedModel, dir: &Path) -> Result<Session> {
    let (meta, init, blocks) = run::open(dir, &BaseModel::of(&m.info), m.llama.device())?;
    let vocab = Forms::new(meta.forms.clone(), m.llama.cfg.vocab_size);
    // Every token id must be a base token or one of the run's new forms.
    let limit = m.llama.cfg.vocab_size + meta.forms.len();
    if let Some(id) = blocks
        .train
        .iter()
        .chain(&blocks.val)
        .flatten()
        .find(|id| **id as usize >= limit)
    {
        return Err(EngineError::bad_file(
            dir.join("data.safetensors"),
            format!("token id {id} is beyond the model's {limit} tokens (base + new forms)"),
        ));
    }
    Ok(Session {
        meta,
        vocab,
        init,
        blocks,
    })
}

impl Session {
    /// The state to continue from: the latest checkpoint, or a fresh start at the initial rows.
    pub fn state(&self, dir: &Path) -> Result<TrainState> {
        if run::checkpoints(dir)?.is_empty() {
            TrainState::new(self.init.clone())
        } else {
            run::load_checkpoint(dir, self.meta.hashed(), None, self.init.device())
        }
    }

    /// Trains from `state` to `steps` total (the run's setting when `None`), checkpointing into
    /// `dir`; `on_event` returns false to stop (a checkpoint is written first).
    pub fn train(
        &self,
        m: &LoadedModel,
        dir: &Path,
        state: &mut TrainState,
        steps: Option<usize>,
        on_event: &mut dyn FnMut(InjectEvent) -> bool,
    ) -> Result<Stopped> {
        let mut cfg = self.meta.config.clone();
        if let Some(s) = steps.filter(|s| *s != cfg.steps) {
            // A longer (or shorter) run from here on: record the new total in `run.json`
            // (the learning-rate schedule follows it from the next step), but only once the new
            // total is known to be valid: a refused resume leaves the run as it was.
            cfg.steps = s;
            cfg.check()?;
            train::check_more_steps("the run", state.step, s)?;
            let mut meta = self.meta.clone();
            meta.config.steps = s;
            run::write_meta(dir, &meta)?;
        }
        let mut t = RowTraining { m: &m.llama, state };
        let save = |t: &RowTraining<'_>| run::save_checkpoint(dir, t.state).map(drop);
        let mut hooks = train::Hooks {
            on_event,
            save: &save,
        };
        train::train(&mut t, &self.blocks, &cfg, &mut hooks)
    }
}

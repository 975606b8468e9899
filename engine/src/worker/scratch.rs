//! The engine thread's from-scratch lab commands. A run lives in its folder; nothing of it is
//! kept in the worker, so the loaded model (if any) is untouched by training.

use std::path::Path;
use std::time::Instant;

use neoscope_api::Event;
use neoscope_api::scratch::{
    SampleConfig, ScratchCommand, ScratchEvent, ScratchResult, ScratchRun, ScratchSpec,
    TokenizerKind,
};

use super::{Job, Worker};
use crate::error::{EngineError, Result};
use crate::fetch::FetchStage;
use crate::model::Llama;
use crate::scratch::run::Run;
use crate::scratch::train::{Data, ScratchHooks, TrainState, eval_model};
use crate::scratch::{corpus, inspect, tokenize};

/// Events to the front end, checkpoints to the run folder, samples from the run's tokenizer.
struct Hooks<'a> {
    job: &'a Job,
    run: &'a Run,
    spec: &'a ScratchSpec,
}

impl ScratchHooks for Hooks<'_> {
    fn event(&mut self, event: ScratchEvent) -> bool {
        if let ScratchEvent::Step { step, total, .. } = &event {
            self.job
                .progress("Training", Some(*step as f32 / (*total).max(1) as f32));
        }
        self.job.emit(Event::ScratchStep {
            id: self.job.id,
            event,
        });
        !self.job.cancelled()
    }

    fn checkpoint(&mut self, state: &TrainState) -> Result<()> {
        self.run.checkpoint(state)
    }

    fn sample(&mut self, llama: &Llama) -> Result<String> {
        let t = &self.spec.train;
        let cfg = SampleConfig {
            temperature: t.temperature,
            top_p: 1.0,
            seed: t.seed,
        };
        let (text, _) = inspect::sample(llama, self.run, "", t.sample_tokens, cfg, &|| {
            self.job.cancelled()
        })?;
        Ok(text)
    }
}

/// The corpus fetch's stages as the job's progress.
fn corpus_progress(job: &Job) -> impl FnMut(FetchStage) + '_ {
    |s| match s {
        FetchStage::Downloading(f) => job.progress("Downloading Shakespeare", f),
        FetchStage::Verifying(f) => job.progress("Checking and unpacking", Some(f)),
    }
}

impl Worker {
    pub(super) fn fetch_corpus(&self, job: &Job) -> Result<(std::path::PathBuf, usize, usize)> {
        corpus::ensure_shakespeare(
            &self.opts.model_dir,
            &self.opts.python,
            &mut corpus_progress(job),
            &|| job.cancelled(),
        )
    }

    /// Trains `state` to `run`'s step count and reports how it ended.
    fn train_scratch(&self, job: &Job, run: &Run, mut state: TrainState) -> Result<ScratchRun> {
        let spec = &run.file.spec;
        let data = Data::split(&run.ids, spec.train.val_fraction, spec.model.n_ctx)?;
        let t0 = Instant::now();
        let mut hooks = Hooks { job, run, spec };
        let done = crate::scratch::train::train(&mut state, &spec.train, &data, &mut hooks)?;
        Ok(run.report(state, !done, t0.elapsed().as_secs_f64()))
    }

    fn new_run(&self, job: &Job, dir: &Path, spec: ScratchSpec) -> Result<ScratchRun> {
        crate::scratch::train::check(&spec.train)?;
        // The sizes are checked before the corpus is read (with the vocabulary the tokenizer
        // can reach at most), and again once the vocabulary is known.
        let most = match spec.tokenizer {
            TokenizerKind::Bpe { vocab_size } => vocab_size,
            TokenizerKind::Char => 256,
        };
        crate::scratch::net::check(&spec.model, most)?;
        crate::scratch::net::check_memory(&spec.model, most, spec.train.batch, &self.dev)?;
        Run::refuse_occupied(dir)?;
        job.progress("Reading the corpus", None);
        let (name, text) = corpus::load(
            &spec.corpus,
            &self.opts.model_dir,
            &self.opts.python,
            &mut corpus_progress(job),
            &|| job.cancelled(),
        )?;
        job.check()?;
        job.progress("Building the tokenizer", None);
        let tok = tokenize::build(spec.tokenizer, &text)?;
        job.progress("Tokenizing the corpus", None);
        let ids = tokenize::encode_all(&tok, &text)?;
        job.check()?;
        let vocab = tok.get_vocab_size(true);
        crate::scratch::net::check(&spec.model, vocab)?;
        crate::scratch::net::check_memory(&spec.model, vocab, spec.train.batch, &self.dev)?;
        Data::split_point(ids.len(), spec.train.val_fraction, spec.model.n_ctx)?;
        let run = Run::create(dir, spec, name, text.chars().count(), tok, ids)?;
        let state = run.start_state(&self.dev)?;
        self.train_scratch(job, &run, state)
    }

    fn open_run(dir: &Path, dev: &candle_core::Device) -> Result<ScratchRun> {
        let run = Run::open(dir)?;
        let st = run.resume_state(dev)?.ok_or_else(|| {
            EngineError::Invalid(format!("{} has no checkpoint yet", dir.display()))
        })?;
        let cancelled = st.step < run.file.spec.train.steps;
        Ok(run.report(st, cancelled, 0.0))
    }

    fn resume_run(&self, job: &Job, dir: &Path, steps: Option<usize>) -> Result<ScratchRun> {
        let mut run = Run::open(dir)?;
        let state = run.start_state(&self.dev)?;
        if let Some(n) = steps.filter(|n| *n != run.file.spec.train.steps) {
            // The new total is checked before run.json is rewritten: a refused resume leaves
            // the run as it was.
            run.file.spec.train.steps = n;
            crate::scratch::train::check(&run.file.spec.train)?;
            if n <= state.step {
                return Err(EngineError::Invalid(format!(
                    "the run is already at step {}; ask for more steps than that (got {n})",
                    state.step
                )));
            }
            crate::artifact::write_json(&dir.join("run.json"), &run.file)?;
        }
        self.train_scratch(job, &run, state)
    }

    pub(super) fn execute_scratch(
        &mut self,
        job: &Job,
        cmd: ScratchCommand,
    ) -> Result<ScratchResult> {
        let dev = self.dev.clone();
        match cmd {
            ScratchCommand::Bench(b) => {
                job.progress("Timing training steps", None);
                let (mut all_s, params) = crate::scratch::train::bench(&b, &dev)?;
                let timed = all_s.clone();
                all_s.sort_by(f64::total_cmp);
                Ok(ScratchResult::Bench {
                    step_s: all_s.get(all_s.len() / 2).copied().unwrap_or(0.0),
                    all_s: timed,
                    params,
                    threads: candle_core::utils::get_num_threads(),
                    device: crate::model::load::device_name(&dev),
                })
            }
            ScratchCommand::FetchCorpus => {
                let (path, files, chars) = self.fetch_corpus(job)?;
                Ok(ScratchResult::Corpus { path, files, chars })
            }
            ScratchCommand::Train { dir, spec } => Ok(ScratchResult::Trained(Box::new(
                self.new_run(job, &dir, *spec)?,
            ))),
            ScratchCommand::Open { dir } => Ok(ScratchResult::Trained(Box::new(Self::open_run(
                &dir, &dev,
            )?))),
            ScratchCommand::Resume { dir, steps } => Ok(ScratchResult::Trained(Box::new(
                self.resume_run(job, &dir, steps)?,
            ))),
            ScratchCommand::Sample {
                dir,
                prompt,
                max_new_tokens,
                sampling,
            } => {
                let run = Run::open(&dir)?;
                let llama = eval_model(&run.latest(&dev)?)?;
                job.progress("Sampling", None);
                let (text, new_tokens) =
                    inspect::sample(&llama, &run, &prompt, max_new_tokens, sampling, &|| {
                        job.cancelled()
                    })?;
                Ok(ScratchResult::Sample { text, new_tokens })
            }
            ScratchCommand::Attention { dir, text } => {
                let run = Run::open(&dir)?;
                let llama = eval_model(&run.latest(&dev)?)?;
                let ids = inspect::encode(&run, &text, llama.cfg.n_ctx())?;
                let patterns = inspect::attention(&llama, &ids)?;
                Ok(ScratchResult::Attention {
                    tokens: inspect::pieces(&run, &ids),
                    patterns,
                })
            }
            ScratchCommand::Activations { dir, text, layer } => {
                let run = Run::open(&dir)?;
                let ids = inspect::encode(&run, &text, run.file.spec.model.n_ctx)?;
                let checkpoints = inspect::activations(&run, &ids, layer, &dev, &mut |f| {
                    job.progress("Projecting checkpoints", Some(f));
                    !job.cancelled()
                })?;
                Ok(ScratchResult::Activations {
                    tokens: inspect::pieces(&run, &ids),
                    layer,
                    checkpoints,
                })
            }
            ScratchCommand::InfoPlane {
                dir,
                windows,
                clusters,
            } => {
                let run = Run::open(&dir)?;
                let (rows, entropy) =
                    inspect::info_plane(&run, windows, clusters, &dev, &mut |f| {
                        job.progress("Estimating mutual information", Some(f));
                        !job.cancelled()
                    })?;
                Ok(ScratchResult::InfoPlane {
                    estimator: format!(
                        "plug-in estimate on k-means clusters (k = {clusters}) of each layer's \
                         vectors at {} held-out positions: I(C; X) = H(X) − H(X | C), in bits; \
                         a lower bound of the representation's information up to the plug-in \
                         bias, never above H(X)",
                        windows * run.file.spec.model.n_ctx
                    ),
                    rows,
                    entropy,
                })
            }
        }
    }
}

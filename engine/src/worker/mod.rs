//! The engine thread: owns the model and every tensor, runs `Command`s one at a time, and
//! answers with `Event`s. Each job gets a [`Job`] (id, throttled progress, cancel check) and runs
//! inside a panic boundary: a panic becomes a `Failed` event and the engine goes on. Every job
//! ends with exactly one `Finished` or `Failed`. Each analysis has one worker arm (a method in
//! this folder's file of the same name) that matches its command sub-enum exhaustively.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::Device;
use neoscope_api::model::{ModelCommand, ModelResult};
use neoscope_api::text::{TextCommand, TextResult};
use neoscope_api::{ApiError, Command, ErrorKind, Event, JobResult};

use crate::error::{EngineError, Result};
use crate::fetch::{
    CatalogModel, FetchStage, GEMMA3_270M, ensure_chunked_model, ensure_default_model,
    ensure_terms, terms_text,
};
use crate::infer::{GenerateOptions, generate, next_token_top_k};
use crate::model::{LoadOptions, LoadedModel, load_model_with};
use crate::words::Word;
use crate::words::train::TrainConfig;

mod handle;
mod inject;
mod job;
mod lens;
mod mfa;
mod scratch;
mod vocab;
mod words;

pub use handle::EngineHandle;
pub(crate) use handle::start_engine;
pub use job::{Job, PROGRESS_EVERY};

/// Wakes the front end when events are waiting (built from `ctx.request_repaint()` in the app).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// Which device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA when built with it and a GPU is present, else CPU.
    #[default]
    Auto,
    /// Always the CPU.
    Cpu,
    /// CUDA GPU 0 (fails if unavailable).
    Cuda,
}

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Model cache folder.
    pub model_dir: PathBuf,
    /// Python used for `pip download`.
    pub python: String,
    /// Device.
    pub device: DeviceChoice,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            model_dir: crate::fetch::model_cache_dir(),
            python: crate::fetch::python_from_env(),
            device: DeviceChoice::Auto,
        }
    }
}

/// Picks the device.
pub fn select_device(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Auto => Ok(Device::cuda_if_available(0).unwrap_or(Device::Cpu)),
        DeviceChoice::Cuda => Device::new_cuda(0).map_err(|e| {
            EngineError::Invalid(format!(
                "CUDA is not available ({e}); build with `--features cuda` on a machine with \
                 an NVIDIA GPU, or choose the CPU"
            ))
        }),
    }
}

/// A word's last training: settings, per-step and per-epoch losses.
#[derive(Debug, Clone)]
struct TrainRecord {
    config: TrainConfig,
    losses: Vec<f32>,
    epoch_losses: Vec<f32>,
}

/// The tuned lens of the loaded model, with its training record when known.
struct TunedState {
    lens: crate::tuned::TunedLens,
    config: Option<crate::tuned::TunedConfig>,
    report: Option<crate::tuned::TunedReport>,
}

/// The engine thread's state.
struct Worker {
    opts: EngineOptions,
    dev: Device,
    model: Option<LoadedModel>,
    /// New words, in creation order (a word's id is base vocabulary + its index).
    words: Vec<Word>,
    records: HashMap<String, TrainRecord>,
    tuned: Option<TunedState>,
    /// Activations and the fitted MFA.
    mfa: mfa::MfaState,
    /// The open injection run.
    inject: inject::InjectState,
    /// A run's vocabulary attached to the model.
    attached: Option<crate::inject::attach::Attached>,
}

/// What a panic inside a job carried, in words.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Worker {
    fn new(opts: EngineOptions, dev: Device) -> Self {
        Self {
            opts,
            dev,
            model: None,
            words: Vec::new(),
            records: HashMap::new(),
            tuned: None,
            mfa: mfa::MfaState::default(),
            inject: inject::InjectState::default(),
            attached: None,
        }
    }

    /// Runs one job to its one `Finished` or `Failed` event.
    fn run(&mut self, job: &Job, cmd: Command) {
        let outcome = if job.cancelled() {
            Err(ApiError::from(&EngineError::Cancelled))
        } else {
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.execute(job, cmd)))
            {
                Ok(r) => r.map_err(|e| ApiError::from(&e)),
                Err(p) => Err(ApiError::new(
                    ErrorKind::Internal,
                    format!(
                        "internal error: the job panicked ({}); the engine is still running",
                        panic_message(p.as_ref())
                    ),
                )),
            }
        };
        let id = job.id;
        job.emit(match outcome {
            Ok(result) => Event::Finished { id, result },
            Err(error) => Event::Failed { id, error },
        });
    }

    fn model(&self) -> Result<&LoadedModel> {
        self.model.as_ref().ok_or(EngineError::NoModel)
    }

    /// A prompt tokenized with the known words, and the text of every token (words by name).
    fn word_tokens(
        &self,
        text: &str,
        chat: bool,
    ) -> Result<(crate::words::WordTokens, Vec<String>)> {
        let m = self.model()?;
        let names: Vec<&str> = self.words.iter().map(|w| w.name.as_str()).collect();
        let wt = crate::words::encode_prompt_with_words(m, text, chat, &names)?;
        let base = m.llama.cfg.vocab_size;
        let pieces = wt
            .ids
            .iter()
            .map(|i| match (*i as usize).checked_sub(base) {
                Some(w) => names.get(w).map_or_else(String::new, |n| (*n).to_owned()),
                None => m.tokenizer.piece(*i),
            })
            .collect();
        Ok((wt, pieces))
    }

    fn fetch(&self, job: &Job, model: CatalogModel, accept_terms: bool) -> Result<PathBuf> {
        let mut progress = |s: FetchStage| {
            let (stage, fraction) = match s {
                FetchStage::Downloading(f) => (format!("Downloading {}", model.title()), f),
                FetchStage::Verifying(f) => ("Verifying SHA-256".to_owned(), Some(f)),
            };
            job.progress(stage, fraction);
        };
        let (dir, py) = (&self.opts.model_dir, &self.opts.python);
        match model {
            CatalogModel::SmolLm2 => {
                ensure_default_model(dir, py, &mut progress, &|| job.cancelled())
            }
            CatalogModel::Gemma3_270m => {
                ensure_chunked_model(&GEMMA3_270M, dir, py, accept_terms, &mut progress, &|| {
                    job.cancelled()
                })
            }
        }
    }

    fn terms(&self, job: &Job, model: CatalogModel) -> Result<ModelResult> {
        let CatalogModel::Gemma3_270m = model else {
            return Err(EngineError::Invalid(format!(
                "{} has no terms to accept",
                model.title()
            )));
        };
        job.progress("Fetching the Gemma terms", None);
        let path = ensure_terms(
            &GEMMA3_270M,
            &self.opts.model_dir,
            &self.opts.python,
            &mut |_| {},
            &|| job.cancelled(),
        )?;
        let text = terms_text(&path)?;
        Ok(ModelResult::Terms { path, text })
    }

    fn load(&mut self, job: &Job, path: PathBuf, options: LoadOptions) -> Result<ModelResult> {
        job.progress(format!("Loading {}", path.display()), None);
        let m = load_model_with(&path, &self.dev, options)?;
        let info = m.info.clone();
        if self
            .model
            .as_ref()
            .is_some_and(|old| old.info.sha256 != info.sha256)
        {
            // Words, lenses, MFAs and runs belong to the model they were made for.
            let (opts, dev) = (self.opts.clone(), self.dev.clone());
            *self = Self::new(opts, dev);
        }
        // The new model object has its base vocabulary.
        self.attached = None;
        self.model = Some(m);
        Ok(ModelResult::Loaded(Box::new(info)))
    }

    fn execute(&mut self, job: &Job, cmd: Command) -> Result<JobResult> {
        Ok(match cmd {
            Command::Model(c) => JobResult::Model(Box::new(self.execute_model(job, c)?)),
            Command::Text(c) => JobResult::Text(Box::new(self.execute_text(job, c)?)),
            Command::Bench => {
                let m = self.model()?;
                let report = crate::bench::run(m, &mut |stage, f| {
                    job.progress(stage, Some(f));
                    !job.cancelled()
                })?;
                JobResult::Bench(Box::new(report))
            }
            Command::Words(c) => JobResult::Words(Box::new(self.execute_word(job, c)?)),
            Command::Lens(c) => JobResult::Lens(Box::new(self.execute_lens(job, c)?)),
            Command::Mfa(c) => JobResult::Mfa(Box::new(self.execute_mfa(job, c)?)),
            Command::Inject(c) => JobResult::Inject(Box::new(self.execute_inject(job, c)?)),
            Command::Embed(c) => JobResult::Embed(Box::new(self.execute_embed(job, c)?)),
            Command::Scratch(c) => JobResult::Scratch(Box::new(self.execute_scratch(job, c)?)),
        })
    }

    fn execute_model(&mut self, job: &Job, cmd: ModelCommand) -> Result<ModelResult> {
        match cmd {
            ModelCommand::Fetch {
                model,
                accept_terms,
            } => {
                let path = self.fetch(job, model, accept_terms)?;
                let sha256 = crate::fetch::sha256_file(&path)?;
                Ok(ModelResult::Fetched { path, sha256 })
            }
            ModelCommand::Terms { model } => self.terms(job, model),
            ModelCommand::LoadDefault { options } => {
                let path = self.fetch(job, CatalogModel::SmolLm2, false)?;
                self.load(job, path, options)
            }
            ModelCommand::Load { path, options } => self.load(job, path, options),
        }
    }

    fn execute_text(&mut self, job: &Job, cmd: TextCommand) -> Result<TextResult> {
        match cmd {
            TextCommand::Tokenize { text, chat } => {
                let (wt, pieces) = self.word_tokens(&text, chat)?;
                Ok(TextResult::Tokens {
                    ids: wt.ids,
                    pieces,
                })
            }
            TextCommand::NextToken {
                text,
                chat,
                top_k,
                hooks,
            } => {
                let m = self.model()?;
                let (ids, mut spec) = crate::words::prepare(m, &text, chat, &self.words)?;
                spec.interventions.extend(hooks.interventions);
                spec.capture = hooks.capture;
                let top = next_token_top_k(m, &ids, top_k, &spec)?;
                Ok(TextResult::NextToken { ids, top })
            }
            TextCommand::Generate {
                text,
                chat,
                max_new_tokens,
                sampling,
                hooks,
            } => {
                let m = self.model()?;
                let (prompt_ids, mut spec) = crate::words::prepare(m, &text, chat, &self.words)?;
                spec.interventions.extend(hooks.interventions);
                let mut stopped = false;
                let opts = GenerateOptions {
                    max_new_tokens,
                    sampling,
                    stop_at_eos: true,
                };
                let new_ids = generate(m, &prompt_ids, opts, &spec, &mut |token, text| {
                    if job.cancelled() {
                        stopped = true;
                        return false;
                    }
                    job.emit(Event::Token {
                        id: job.id,
                        token,
                        text: text.to_owned(),
                    });
                    true
                })?;
                let text = m.tokenizer.decode(&new_ids)?;
                Ok(TextResult::Generated {
                    prompt_ids,
                    new_ids,
                    text,
                    stopped,
                })
            }
        }
    }
}

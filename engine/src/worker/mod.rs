//! The engine thread: owns the model and every tensor, runs `Command`s one at a time, and
//! answers with `Event`s. Starts with a handshake, checks a cancel flag between steps, throttles
//! progress, and ends every job with exactly one `Finished` or `Failed`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use candle_core::Device;

use crate::api::{Command, Event, JobResult, RequestId};
use crate::error::{EngineError, Result};
use crate::fetch::{FetchStage, ensure_default_model};
use crate::infer::{GenerateOptions, generate, next_token_top_k};
use crate::model::{LoadedModel, load_model};
use crate::words::Word;
use crate::words::train::TrainConfig;

mod inject;
mod lens;
mod mfa;
mod words;

/// Wakes the front end when events are waiting (built from `ctx.request_repaint()` in the app).
pub type Waker = Box<dyn Fn() + Send>;

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

/// The front end's side of the engine.
pub struct EngineHandle {
    tx: Sender<(RequestId, Command)>,
    rx: Receiver<Event>,
    cancel: Arc<AtomicU64>,
    next_id: RequestId,
    /// Device in words, from the handshake.
    pub device: String,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EngineHandle {
    /// Starts the engine thread and waits for its handshake.
    pub fn spawn(opts: EngineOptions, waker: Waker) -> Result<Self> {
        let (tx, cmd_rx) = channel::<(RequestId, Command)>();
        let (ev_tx, rx) = channel::<Event>();
        let cancel = Arc::new(AtomicU64::new(0));
        let cancel2 = Arc::clone(&cancel);
        let thread = std::thread::Builder::new()
            .name("neoscope-engine".into())
            .spawn(move || {
                let dev = match select_device(opts.device) {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = ev_tx.send(Event::Failed {
                            id: 0,
                            error: e.to_string(),
                            cancelled: false,
                        });
                        return;
                    }
                };
                let mut w = Worker {
                    opts,
                    dev,
                    model: None,
                    words: Vec::new(),
                    records: std::collections::HashMap::new(),
                    tuned: None,
                    mfa: mfa::MfaState::default(),
                    inject: inject::InjectState::default(),
                    events: ev_tx,
                    waker,
                    cancel: cancel2,
                };
                w.send(Event::Ready {
                    device: crate::model::load::device_name(&w.dev),
                });
                while let Ok((id, cmd)) = cmd_rx.recv() {
                    w.run(id, cmd);
                }
            })
            .map_err(|e| EngineError::Invalid(format!("could not start the engine thread: {e}")))?;
        match rx.recv() {
            Ok(Event::Ready { device }) => Ok(Self {
                tx,
                rx,
                cancel,
                next_id: 1,
                device,
                thread: Some(thread),
            }),
            Ok(Event::Failed { error, .. }) => Err(EngineError::Invalid(error)),
            _ => Err(EngineError::Invalid(
                "the engine thread stopped during startup".into(),
            )),
        }
    }

    /// Queues a command; returns its request id.
    pub fn send(&mut self, cmd: Command) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        // A closed channel means the engine thread ended; `try_recv` then reports it.
        let _ = self.tx.send((id, cmd));
        id
    }

    /// Asks the engine to stop request `id` (running or queued).
    pub fn cancel(&self, id: RequestId) {
        self.cancel.store(id, Ordering::SeqCst);
    }

    /// The next waiting event, if any.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Waits for the next event.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Sends `cmd` and waits for its result, passing every other event to `on_event`.
    pub fn call(
        &mut self,
        cmd: Command,
        on_event: &mut dyn FnMut(&Event),
    ) -> std::result::Result<JobResult, String> {
        let id = self.send(cmd);
        while let Some(ev) = self.recv() {
            match ev {
                Event::Finished { id: i, result } if i == id => return Ok(*result),
                Event::Failed { id: i, error, .. } if i == id => return Err(error),
                other => on_event(&other),
            }
        }
        Err("the engine thread stopped".into())
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        // Closing the command channel ends the worker loop after the current job.
        let (dead_tx, _) = channel();
        drop(std::mem::replace(&mut self.tx, dead_tx));
        self.cancel.store(u64::MAX, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends progress at most every 100 ms (and always the final 100%).
struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    fn ready(&mut self, fraction: Option<f32>) -> bool {
        let now = Instant::now();
        let due = self
            .last
            .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(100));
        if due || fraction.is_some_and(|f| f >= 1.0) {
            self.last = Some(now);
            true
        } else {
            false
        }
    }
}

/// A word's last training: settings, per-step and per-epoch losses.
type TrainRecord = (TrainConfig, Vec<f32>, Vec<f32>);

struct Worker {
    opts: EngineOptions,
    dev: Device,
    model: Option<LoadedModel>,
    /// New words, in creation order (a word's id is base vocabulary + its index).
    words: Vec<Word>,
    records: std::collections::HashMap<String, TrainRecord>,
    /// The tuned lens for the loaded model, with its training record.
    tuned: Option<(
        crate::tuned::TunedLens,
        Option<crate::tuned::TunedConfig>,
        Option<crate::tuned::TunedReport>,
    )>,
    /// Activations and the fitted MFA.
    mfa: mfa::MfaState,
    /// The open injection run.
    inject: inject::InjectState,
    events: Sender<Event>,
    waker: Waker,
    cancel: Arc<AtomicU64>,
}

impl Worker {
    fn send(&self, ev: Event) {
        let _ = self.events.send(ev);
        (self.waker)();
    }

    fn cancelled(&self, id: RequestId) -> bool {
        let c = self.cancel.load(Ordering::SeqCst);
        c == id || c == u64::MAX
    }

    fn run(&mut self, id: RequestId, cmd: Command) {
        let result = if self.cancelled(id) {
            Err(EngineError::Cancelled)
        } else {
            self.execute(id, cmd)
        };
        match result {
            Ok(r) => self.send(Event::Finished {
                id,
                result: Box::new(r),
            }),
            Err(e) => self.send(Event::Failed {
                id,
                cancelled: matches!(e, EngineError::Cancelled),
                error: e.to_string(),
            }),
        }
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

    fn fetch(&self, id: RequestId) -> Result<PathBuf> {
        let mut throttle = Throttle { last: None };
        let events = self.events.clone();
        let waker = &self.waker;
        let mut progress = |s: FetchStage| {
            let (stage, fraction) = match s {
                FetchStage::Downloading(f) => ("Downloading SmolLM2-135M-Instruct", f),
                FetchStage::Verifying(f) => ("Verifying SHA-256", Some(f)),
            };
            if throttle.ready(fraction) {
                let _ = events.send(Event::Progress {
                    id,
                    stage: stage.into(),
                    fraction,
                });
                waker();
            }
        };
        ensure_default_model(
            &self.opts.model_dir,
            &self.opts.python,
            &mut progress,
            &|| self.cancelled(id),
        )
    }

    fn load(&mut self, id: RequestId, path: PathBuf) -> Result<JobResult> {
        self.send(Event::Progress {
            id,
            stage: format!("Loading {}", path.display()),
            fraction: None,
        });
        let m = load_model(&path, &self.dev)?;
        let info = m.info.clone();
        if self
            .model
            .as_ref()
            .is_some_and(|old| old.info.sha256 != info.sha256)
        {
            // Words belong to the model they were made for.
            self.words.clear();
            self.records.clear();
            self.tuned = None;
            self.mfa = mfa::MfaState::default();
            self.inject = inject::InjectState::default();
        }
        self.model = Some(m);
        Ok(JobResult::Loaded(info))
    }

    fn execute(&mut self, id: RequestId, cmd: Command) -> Result<JobResult> {
        match cmd {
            Command::Fetch => Ok(JobResult::Fetched {
                path: self.fetch(id)?,
            }),
            Command::LoadDefault => {
                let path = self.fetch(id)?;
                self.load(id, path)
            }
            Command::Load { path } => self.load(id, path),
            Command::Tokenize { text, chat } => {
                let (wt, pieces) = self.word_tokens(&text, chat)?;
                Ok(JobResult::Tokens {
                    ids: wt.ids,
                    pieces,
                })
            }
            Command::NextToken {
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
                Ok(JobResult::NextToken { ids, top })
            }
            Command::Generate {
                text,
                chat,
                max_new_tokens,
                sampling,
                hooks,
            } => {
                let m = self.model()?;
                let (prompt_ids, mut spec) = crate::words::prepare(m, &text, chat, &self.words)?;
                spec.interventions.extend(hooks.interventions);
                let hooks = spec;
                let mut stopped = false;
                let opts = GenerateOptions {
                    max_new_tokens,
                    sampling,
                    stop_at_eos: true,
                };
                let new_ids = generate(m, &prompt_ids, opts, &hooks, &mut |token, text| {
                    if self.cancelled(id) {
                        stopped = true;
                        return false;
                    }
                    self.send(Event::Token {
                        id,
                        token,
                        text: text.to_owned(),
                    });
                    true
                })?;
                let text = m.tokenizer.decode(&new_ids)?;
                Ok(JobResult::Generated {
                    prompt_ids,
                    new_ids,
                    text,
                    stopped,
                })
            }
            Command::Bench => {
                let m = self.model()?;
                let report = crate::bench::run(m, &mut |stage, f| {
                    self.send(Event::Progress {
                        id,
                        stage: stage.into(),
                        fraction: Some(f),
                    });
                    !self.cancelled(id)
                })?;
                Ok(JobResult::Bench(Box::new(report)))
            }
            lens @ (Command::Lens { .. }
            | Command::TrainTunedLens { .. }
            | Command::SaveTunedLens { .. }
            | Command::LoadTunedLens { .. }) => self.execute_lens(id, lens),
            Command::Mfa(c) => self.execute_mfa(id, c),
            Command::Inject(c) => self.execute_inject(id, c),
            Command::Embed(c) => self.execute_embed(id, c),
            other => self.execute_word(id, other),
        }
    }
}

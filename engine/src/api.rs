//! The one message protocol between front ends (app, CLI) and the engine thread: `Command`s in,
//! `Event`s out, each tagged with the request id it belongs to. Everything here is plain data.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bench::BenchReport;
use crate::hooks::HookSpec;
use crate::inject::messages::{EmbedCommand, EmbedResult, InjectCommand, InjectResult};
use crate::inject::train::InjectEvent;
use crate::lens::{LensKind, LensResult};
use crate::mfa::messages::{MfaCommand, MfaResult};
use crate::mfa::train::MfaEpoch;
use crate::model::ModelInfo;
use crate::sampling::{Sampling, TokenScore};
use crate::steer::Steer;
use crate::tuned::{TunedConfig, TunedReport};
use crate::words::analysis::{CompareConfig, Definition, Neighbor, PlugIn, Steering, WordReport};
use crate::words::dataset::Example;
use crate::words::train::{StopReason, TrainConfig, TrainStep};
use crate::words::{Init, Injection};

/// Identifies one request and every event it causes.
pub type RequestId = u64;

/// A unit of work for the engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Make sure the default model is in the cache (download and verify if needed).
    Fetch,
    /// Fetch the default model if needed, then load it.
    LoadDefault,
    /// Load a `.gguf` file or a Hugging Face directory.
    Load {
        /// Where.
        path: PathBuf,
    },
    /// Token ids and pieces of a text.
    Tokenize {
        /// The text.
        text: String,
        /// Render the chat template (user turn + generation prompt) first.
        chat: bool,
    },
    /// The most likely next tokens after a prompt.
    NextToken {
        /// The prompt.
        text: String,
        /// Chat mode.
        chat: bool,
        /// How many rows.
        top_k: usize,
        /// Interventions to apply.
        hooks: HookSpec,
    },
    /// Generate a continuation, streaming tokens.
    Generate {
        /// The prompt.
        text: String,
        /// Chat mode.
        chat: bool,
        /// Token budget.
        max_new_tokens: usize,
        /// Sampling settings.
        sampling: Sampling,
        /// Interventions to apply.
        hooks: HookSpec,
    },
    /// Run the benchmark workloads.
    Bench,
    /// Create (or reset) a new word.
    CreateWord {
        /// Name, e.g. `<pun>`.
        name: String,
        /// Initial vector.
        init: Init,
        /// Injection point.
        injection: Injection,
    },
    /// Forget a word.
    RemoveWord {
        /// Name.
        name: String,
    },
    /// Train words jointly on examples (progress comes as `TrainStep` events).
    TrainWords {
        /// Names of the words to train (all must exist).
        names: Vec<String>,
        /// Training data.
        data: Vec<Example>,
        /// Settings.
        config: TrainConfig,
    },
    /// Save words to a file pair (`.safetensors` + `.json`).
    SaveWords {
        /// Names.
        names: Vec<String>,
        /// Path (extension replaced).
        path: PathBuf,
    },
    /// Load words from a file pair.
    LoadWords {
        /// Path.
        path: PathBuf,
    },
    /// Ask the model what a word means.
    DefineWord {
        /// Name.
        name: String,
        /// Prompts (`{w}` = the word) and chat flags.
        prompts: Vec<(String, bool)>,
        /// Tokens per answer.
        max_new_tokens: usize,
        /// Sampling.
        sampling: Sampling,
    },
    /// Nearest base tokens of a word or of an arithmetic expression (`<pun> - <lit> + joke`).
    Neighbors {
        /// Word name or expression.
        expr: String,
        /// How many.
        k: usize,
        /// Ordinary words to report similarity to.
        others: Vec<String>,
        /// Save the result as a new word with this name.
        save_as: Option<String>,
    },
    /// Next-token logit differences and generations with and without the word.
    Steer {
        /// Name.
        name: String,
        /// Prompt containing the word.
        prompt: String,
        /// Text replacing the word in the baseline (empty: removed).
        baseline: String,
        /// Chat mode.
        chat: bool,
        /// Tokens generated.
        max_new_tokens: usize,
    },
    /// Plug-in evaluation on held-out pairs.
    Evaluate {
        /// Name.
        name: String,
        /// Held-out (prompt with the word, target) pairs.
        heldout: Vec<(String, String)>,
        /// Text put in place of the word (e.g. its verbalization).
        text: String,
    },
    /// The lens over one or more prompts (new words and interventions allowed).
    Lens {
        /// Prompts.
        prompts: Vec<String>,
        /// Chat mode.
        chat: bool,
        /// Which lens.
        lens: LensKind,
        /// Target texts (first token of each is followed).
        targets: Vec<String>,
        /// Top-k per cell.
        top_k: usize,
        /// Extra interventions given as vectors.
        hooks: HookSpec,
        /// Steering given by name (resolved by the engine thread).
        steer: Vec<Steer>,
    },
    /// Train a tuned lens on a corpus (progress as `Progress` events).
    TrainTunedLens {
        /// The text.
        corpus: String,
        /// Settings.
        config: TunedConfig,
    },
    /// Save the current tuned lens.
    SaveTunedLens {
        /// Path (extension replaced).
        path: PathBuf,
    },
    /// Load a tuned lens.
    LoadTunedLens {
        /// Path.
        path: PathBuf,
    },
    /// Everything about two words side by side.
    Compare {
        /// First word.
        a: String,
        /// Second word.
        b: String,
        /// Named held-out sets of (prompt with `{w}`, target).
        heldout: Vec<(String, Vec<(String, String)>)>,
        /// Settings.
        config: CompareConfig,
    },
    /// Mixture of factor analyzers.
    Mfa(MfaCommand),
    /// Vocabulary injection: inspect, train, resume, open, report.
    Inject(InjectCommand),
    /// The embedding space: projections and neighbours.
    Embed(EmbedCommand),
}

/// A word as the front end sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WordInfo {
    /// Name.
    pub name: String,
    /// Injection point.
    pub injection: Injection,
    /// Vector norm.
    pub norm: f32,
    /// Per-step losses of its last training (empty if untrained).
    pub losses: Vec<f32>,
}

/// The successful result of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobResult {
    /// The default model file is at `path`.
    Fetched {
        /// Where.
        path: PathBuf,
    },
    /// A model was loaded.
    Loaded(ModelInfo),
    /// Tokenization.
    Tokens {
        /// Ids.
        ids: Vec<u32>,
        /// Their texts.
        pieces: Vec<String>,
    },
    /// Next-token table.
    NextToken {
        /// Prompt ids.
        ids: Vec<u32>,
        /// The table.
        top: Vec<TokenScore>,
    },
    /// Generation finished (or was stopped).
    Generated {
        /// Prompt ids.
        prompt_ids: Vec<u32>,
        /// New ids.
        new_ids: Vec<u32>,
        /// New text.
        text: String,
        /// Whether the user stopped it.
        stopped: bool,
    },
    /// Benchmark numbers.
    Bench(Box<BenchReport>),
    /// The words the engine knows now (after create, remove, load).
    Words(Vec<WordInfo>),
    /// Training ended.
    Trained {
        /// Per-step losses.
        losses: Vec<f32>,
        /// Per-epoch mean losses.
        epoch_losses: Vec<f32>,
        /// How it ended.
        stop: StopReason,
        /// The words after training.
        words: Vec<WordInfo>,
    },
    /// Words were saved.
    Saved {
        /// The JSON metadata file.
        path: PathBuf,
    },
    /// Definitions.
    Definitions(Vec<Definition>),
    /// Neighbours.
    Neighbors {
        /// Nearest tokens.
        nearest: Vec<Neighbor>,
        /// Similarity to the requested words.
        similarities: Vec<(String, f32)>,
    },
    /// Steering.
    Steering(Box<Steering>),
    /// Plug-in evaluation.
    Evaluation(PlugIn),
    /// Comparison.
    Comparison(Box<[WordReport; 2]>),
    /// Lens results, one per prompt.
    Lens(Vec<LensResult>),
    /// A tuned lens is ready (trained or loaded); the held-out report when known.
    TunedLens(Option<TunedReport>),
    /// MFA results.
    Mfa(Box<MfaResult>),
    /// An injection result.
    Inject(Box<InjectResult>),
    /// An embedding-space result.
    Embed(Box<EmbedResult>),
}

/// What the engine tells the front end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// Startup handshake: the engine runs on this device.
    Ready {
        /// Device in words.
        device: String,
    },
    /// Throttled progress of a long job.
    Progress {
        /// Request.
        id: RequestId,
        /// What is happening.
        stage: String,
        /// Fraction done, when known.
        fraction: Option<f32>,
    },
    /// A streamed token of a generation.
    Token {
        /// Request.
        id: RequestId,
        /// Token id.
        token: u32,
        /// Text it adds.
        text: String,
    },
    /// One training step finished.
    TrainStep {
        /// Request.
        id: RequestId,
        /// The step.
        step: TrainStep,
    },
    /// One MFA epoch finished.
    MfaEpoch {
        /// Request.
        id: RequestId,
        /// The epoch.
        epoch: MfaEpoch,
    },
    /// An injection training step or validation score.
    InjectStep {
        /// Request.
        id: RequestId,
        /// What happened.
        event: InjectEvent,
    },
    /// The job succeeded (exactly one `Finished` or `Failed` per request).
    Finished {
        /// Request.
        id: RequestId,
        /// Result.
        result: Box<JobResult>,
    },
    /// The job failed or was cancelled.
    Failed {
        /// Request.
        id: RequestId,
        /// What went wrong, for the user.
        error: String,
        /// True when the user cancelled.
        cancelled: bool,
    },
}

impl Event {
    /// The request this event belongs to (`None` for the handshake).
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Self::Ready { .. } => None,
            Self::Progress { id, .. }
            | Self::Token { id, .. }
            | Self::TrainStep { id, .. }
            | Self::MfaEpoch { id, .. }
            | Self::InjectStep { id, .. }
            | Self::Finished { id, .. }
            | Self::Failed { id, .. } => Some(*id),
        }
    }
}

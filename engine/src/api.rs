//! The one message protocol between front ends (app, CLI) and the engine thread: `Command`s in,
//! `Event`s out, each tagged with the request id it belongs to. Everything here is plain data.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bench::BenchReport;
use crate::hooks::HookSpec;
use crate::model::ModelInfo;
use crate::sampling::{Sampling, TokenScore};

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
    Bench(BenchReport),
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
            | Self::Finished { id, .. }
            | Self::Failed { id, .. } => Some(*id),
        }
    }
}

//! The message protocol between front ends (app, CLI, a remote client) and the engine:
//! [`Command`]s in, [`Event`]s out, each tagged with the request id it belongs to. A command is
//! one analysis's sub-command, a result is that analysis's result type; everything is plain data.

use serde::{Deserialize, Serialize};

use crate::bench::BenchReport;
use crate::embed::{EmbedCommand, EmbedResult};
use crate::error::ApiError;
use crate::inject::{InjectCommand, InjectEvent, InjectResult};
use crate::lens::{LensCommand, LensOutput};
use crate::mfa::{MfaCommand, MfaEpoch, MfaResult};
use crate::model::{ModelCommand, ModelResult};
use crate::scratch::{ScratchCommand, ScratchEvent, ScratchResult};
use crate::text::{TextCommand, TextResult};
use crate::words::{TrainStep, WordCommand, WordResult};

/// Identifies one request and every event it causes.
pub type RequestId = u64;

/// A unit of work for the engine: one analysis's command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Fetch and load models.
    Model(ModelCommand),
    /// Tokenize, next-token tables, generation.
    Text(TextCommand),
    /// Run the benchmark workloads.
    Bench,
    /// New words: create, train, save, load, define, steer, evaluate, compare.
    Words(WordCommand),
    /// Logit, raw and tuned lens.
    Lens(LensCommand),
    /// Mixture of factor analyzers.
    Mfa(MfaCommand),
    /// Vocabulary injection: inspect, train, resume, open, report.
    Inject(InjectCommand),
    /// The embedding space: projections and neighbours.
    Embed(EmbedCommand),
    /// The from-scratch lab: train a small model, look inside it.
    Scratch(ScratchCommand),
}

/// The successful result of a request: the result type of the command's analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobResult {
    /// Model results.
    Model(Box<ModelResult>),
    /// Text results.
    Text(Box<TextResult>),
    /// Benchmark numbers.
    Bench(Box<BenchReport>),
    /// Word results.
    Words(Box<WordResult>),
    /// Lens results.
    Lens(Box<LensOutput>),
    /// MFA results.
    Mfa(Box<MfaResult>),
    /// An injection result.
    Inject(Box<InjectResult>),
    /// An embedding-space result.
    Embed(Box<EmbedResult>),
    /// A from-scratch lab result.
    Scratch(Box<ScratchResult>),
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
    /// One word-training step finished.
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
    /// A from-scratch training step, validation or sample.
    ScratchStep {
        /// Request.
        id: RequestId,
        /// What happened.
        event: ScratchEvent,
    },
    /// The job succeeded (exactly one `Finished` or `Failed` per request).
    Finished {
        /// Request.
        id: RequestId,
        /// Result.
        result: JobResult,
    },
    /// The job failed or was cancelled (`error.kind` says which).
    Failed {
        /// Request.
        id: RequestId,
        /// What went wrong, for the user.
        error: ApiError,
    },
}

impl Event {
    /// The same event under another request id (a server maps its ids to each client's).
    pub fn with_id(mut self, new: RequestId) -> Self {
        match &mut self {
            Self::Ready { .. } => {}
            Self::Progress { id, .. }
            | Self::Token { id, .. }
            | Self::TrainStep { id, .. }
            | Self::MfaEpoch { id, .. }
            | Self::InjectStep { id, .. }
            | Self::ScratchStep { id, .. }
            | Self::Finished { id, .. }
            | Self::Failed { id, .. } => *id = new,
        }
        self
    }

    /// The request this event belongs to (`None` for the handshake).
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Self::Ready { .. } => None,
            Self::Progress { id, .. }
            | Self::Token { id, .. }
            | Self::TrainStep { id, .. }
            | Self::MfaEpoch { id, .. }
            | Self::InjectStep { id, .. }
            | Self::ScratchStep { id, .. }
            | Self::Finished { id, .. }
            | Self::Failed { id, .. } => Some(*id),
        }
    }
}

/// A result type that a [`JobResult`] may hold: lets a caller wait for "the `TextResult` of this
/// command" without matching the outer enum.
pub trait Reply: Sized {
    /// The inner result, if `r` is of this type.
    fn from_result(r: JobResult) -> Option<Self>;
}

impl Reply for JobResult {
    fn from_result(r: JobResult) -> Option<Self> {
        Some(r)
    }
}

macro_rules! analysis {
    ($variant:ident, $cmd:ty, $res:ty) => {
        impl From<$cmd> for Command {
            fn from(c: $cmd) -> Self {
                Self::$variant(c)
            }
        }
        impl Reply for $res {
            fn from_result(r: JobResult) -> Option<Self> {
                match r {
                    JobResult::$variant(b) => Some(*b),
                    _ => None,
                }
            }
        }
    };
}

analysis!(Model, ModelCommand, ModelResult);
analysis!(Text, TextCommand, TextResult);
analysis!(Words, WordCommand, WordResult);
analysis!(Lens, LensCommand, LensOutput);
analysis!(Mfa, MfaCommand, MfaResult);
analysis!(Inject, InjectCommand, InjectResult);
analysis!(Embed, EmbedCommand, EmbedResult);
analysis!(Scratch, ScratchCommand, ScratchResult);

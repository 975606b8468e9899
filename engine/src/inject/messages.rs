//! Plain-data messages of the injection and embedding-space features (`Command::Inject`,
//! `Command::Embed` and their results).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::report::GeometryReport;
use super::train::{InjectConfig, Stopped};
use crate::embed::project::{BaseSelection, Method, PointKind, Projection};
use crate::error::{EngineError, Result};

/// An input text: a file (read by the engine thread, never the UI thread) or a text in memory
/// (the shipped demo), with the name shown in errors and recorded in the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TextSource {
    /// A file, named by its path.
    File(PathBuf),
    /// A text already in memory.
    Text {
        /// Where it came from.
        name: String,
        /// Contents.
        text: String,
    },
}

impl TextSource {
    /// The name (path or given name).
    pub fn name(&self) -> String {
        match self {
            Self::File(p) => p.display().to_string(),
            Self::Text { name, .. } => name.clone(),
        }
    }

    /// The contents, reading the file if it is one.
    pub fn load(&self) -> Result<String> {
        match self {
            Self::File(p) => std::fs::read_to_string(p).map_err(|e| EngineError::io(p, e)),
            Self::Text { text, .. } => Ok(text.clone()),
        }
    }
}

/// Injection commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InjectCommand {
    /// Counts a lexicon's forms: new vs already single tokens, and their uses in a corpus.
    Inspect {
        /// The lexicon.
        lexicon: TextSource,
        /// Optional morpheme table (checked and counted).
        morphemes: Option<TextSource>,
        /// Corpus texts.
        corpus: Vec<TextSource>,
    },
    /// Creates a run in `dir` and trains it.
    Start {
        /// The lexicon.
        lexicon: TextSource,
        /// Morpheme table (needed for compositional init).
        morphemes: Option<TextSource>,
        /// Corpus texts (joined by blank lines).
        corpus: Vec<TextSource>,
        /// Settings.
        config: InjectConfig,
        /// Run folder.
        dir: PathBuf,
    },
    /// Continues the run in `dir` from its latest checkpoint (to `steps` in all, if given).
    Resume {
        /// Run folder.
        dir: PathBuf,
        /// New total step count.
        steps: Option<usize>,
    },
    /// Opens the run in `dir` (latest checkpoint) so its rows show in the embedding space.
    Open {
        /// Run folder.
        dir: PathBuf,
    },
    /// Computes and writes the geometry report of the open run (or of `dir`).
    Report {
        /// Run folder (default: the open run).
        dir: Option<PathBuf>,
    },
}

/// Counts from `Inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LexiconCounts {
    /// Distinct forms in the lexicon.
    pub forms: usize,
    /// Forms that need a new token.
    pub new: usize,
    /// Forms already one token.
    pub known: usize,
    /// A few known forms (for display).
    pub known_examples: Vec<String>,
    /// A few new forms.
    pub new_examples: Vec<String>,
    /// Morpheme table rows (prefixes, suffixes).
    pub morphemes: Option<(usize, usize)>,
    /// Corpus tokens with the new forms injected, and how many of them are new forms.
    pub corpus_tokens: usize,
    /// Occurrences of new forms in the corpus.
    pub corpus_new_tokens: usize,
    /// New forms that occur at least once in the corpus.
    pub forms_in_corpus: usize,
}

/// Injection results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InjectResult {
    /// From `Inspect`.
    Counts(LexiconCounts),
    /// From `Start`/`Resume`/`Open`: the run's state.
    Run {
        /// Run folder.
        dir: PathBuf,
        /// How training ended (`None` for `Open`).
        stopped: Option<Stopped>,
        /// Steps done.
        step: usize,
        /// Steps planned.
        steps: usize,
        /// New forms.
        forms: usize,
        /// Training losses.
        losses: Vec<f32>,
        /// (step, validation loss).
        val: Vec<(usize, f32)>,
    },
    /// From `Report`: where the HTML went and the report itself.
    Report {
        /// `report.html`.
        html: PathBuf,
        /// The report.
        report: Box<GeometryReport>,
    },
}

/// Embedding-space commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EmbedCommand {
    /// Projects base rows (chosen), injected rows and trained words to 2-D.
    Project {
        /// Which base rows.
        base: BaseSelection,
        /// Include the open run's new rows and the trained words.
        include_new: bool,
        /// Include the activations collected for the MFA (labelled by their token).
        include_activations: bool,
        /// PCA or t-SNE.
        method: Method,
    },
    /// Nearest tokens (base and new) to a token, form, word or arithmetic expression.
    Neighbors {
        /// What to look up: a token id (`#123`), a form, a word or `a - b + c`.
        query: String,
        /// How many.
        k: usize,
    },
}

/// A neighbour in the whole (base + new) vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Token id (base or new).
    pub id: u32,
    /// Its text.
    pub text: String,
    /// Cosine similarity.
    pub cosine: f32,
    /// Base or new.
    pub kind: PointKind,
}

/// Embedding-space results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EmbedResult {
    /// A projection.
    Projection(Box<Projection>),
    /// Neighbours of a query.
    Neighbors {
        /// The query as given.
        query: String,
        /// Best first.
        hits: Vec<Hit>,
    },
}

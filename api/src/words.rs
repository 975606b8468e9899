//! New words: how a vector is made and injected, training settings and steps, the analyses of a trained word, and the word commands.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dataset::Example;
use crate::hooks::HookPoint;
use crate::text::Sampling;

/// Where a word's vector enters the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Injection {
    /// As the token embedding (`hook_embed`).
    #[default]
    Embedding,
    /// Into the residual stream before block `L` (`blocks.L.hook_resid_pre`); layers below
    /// see a zero vector at the word's position.
    ResidPre(usize),
}

impl Injection {
    /// The hook point the vector replaces.
    pub fn point(self) -> HookPoint {
        match self {
            Self::Embedding => HookPoint::Embed,
            Self::ResidPre(l) => HookPoint::ResidPre(l),
        }
    }
}

/// How a new word's vector starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Init {
    /// Normal noise with this standard deviation, from a seed (the seed recipe uses 0.02).
    Random {
        /// Standard deviation.
        std: f32,
        /// Seed.
        seed: u64,
    },
    /// The mean of these existing words' token embeddings (one word copies it).
    Words(Vec<String>),
    /// All zeros.
    Zero,
}

impl Default for Init {
    fn default() -> Self {
        Self::Random { std: 0.02, seed: 0 }
    }
}

/// Which loss to train with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Loss {
    /// Cross-entropy on `target` completions.
    CrossEntropy,
    /// DPO + APO-up on `chosen`/`rejected` triples.
    Preference {
        /// Inverse temperature β (default 0.2).
        beta: f64,
    },
}

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Loss.
    pub loss: Loss,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW weight decay (on the trained vectors only; nothing else is trained).
    pub weight_decay: f64,
    /// Passes over the data.
    pub epochs: usize,
    /// Examples per step.
    pub batch_size: usize,
    /// Shuffling seed.
    pub seed: u64,
    /// Clip the gradient's global norm to this, if set.
    pub clip_norm: Option<f64>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            loss: Loss::CrossEntropy,
            lr: 0.02,
            weight_decay: 0.0,
            epochs: 20,
            batch_size: 4,
            seed: 0,
            clip_norm: Some(1.0),
        }
    }
}

/// One optimiser step, reported as progress.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TrainStep {
    /// Step number (from 1).
    pub step: usize,
    /// Total steps planned.
    pub total_steps: usize,
    /// Epoch (from 1).
    pub epoch: usize,
    /// Loss of this step's batch.
    pub loss: f32,
}

/// Why training ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StopReason {
    /// All epochs ran.
    Completed,
    /// The user cancelled; the best vectors so far were kept.
    Cancelled,
    /// The loss became NaN or exploded; the last good vectors were kept.
    Diverged(String),
}

/// The plain definition prompts (`{w}` stands for the word).
pub const PLAIN_DEFINITION_PROMPTS: [&str; 3] = [
    "The word {w} means",
    "A {w} is defined as",
    "When someone says {w}, they mean",
];

/// The chat definition prompt.
pub const CHAT_DEFINITION_PROMPT: &str = "What does the word {w} mean?";

/// One definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    /// The prompt as asked (with the word's name).
    pub prompt: String,
    /// Chat mode.
    pub chat: bool,
    /// The model's answer.
    pub text: String,
}

/// The default definition prompts: the plain ones, and the chat one when `chat` (the model
/// has a chat template).
pub fn default_definition_prompts(chat: bool) -> Vec<(String, bool)> {
    PLAIN_DEFINITION_PROMPTS
        .iter()
        .map(|p| ((*p).to_owned(), false))
        .chain(chat.then(|| (CHAT_DEFINITION_PROMPT.to_owned(), true)))
        .collect()
}

/// Plug-in evaluation of a word on held-out (prompt, target) pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlugIn {
    /// Mean target log-prob with the word.
    pub with_word: f32,
    /// With the word's name replaced by the replacement text.
    pub with_text: f32,
    /// With the word removed.
    pub without_word: f32,
    /// The replacement text.
    pub text: String,
    /// (with_text − without) / (with_word − without): how much of the word's effect the text
    /// recovers (1 = all of it).
    pub recovered: f32,
}

/// A token and its similarity to a vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Neighbor {
    /// Token id.
    pub id: u32,
    /// Token text.
    pub text: String,
    /// Cosine similarity.
    pub cosine: f32,
}

/// A token whose logit the word moves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogitShift {
    /// Token id.
    pub id: u32,
    /// Token text.
    pub text: String,
    /// Logit with the word minus logit without it.
    pub delta: f32,
}

/// Steering: next-token logit differences and generations, with and without the word.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Steering {
    /// The prompt with the word.
    pub prompt_with: String,
    /// The prompt without it.
    pub prompt_without: String,
    /// Tokens the word promotes most.
    pub promoted: Vec<LogitShift>,
    /// Tokens the word suppresses most.
    pub suppressed: Vec<LogitShift>,
    /// Generation with the word.
    pub generation_with: String,
    /// Generation without it.
    pub generation_without: String,
}

/// Everything about one word, for side-by-side comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WordReport {
    /// Name.
    pub name: String,
    /// Injection point.
    pub injection: Injection,
    /// L2 norm of the vector.
    pub norm: f32,
    /// Definitions.
    pub definitions: Vec<Definition>,
    /// Nearest base tokens.
    pub neighbors: Vec<Neighbor>,
    /// Held-out mean log-prob of the targets with this word, per held-out set (by name).
    pub heldout: Vec<(String, f32)>,
    /// Steering on the shared prompt.
    pub steering: Steering,
}

/// Named held-out sets of (prompt with `{w}` in the word's place, target) pairs.
pub type HeldoutSets = Vec<(String, Vec<(String, String)>)>;

/// Settings of a comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareConfig {
    /// Definition prompts (`{w}` = the word) and whether each is a chat prompt.
    pub definition_prompts: Vec<(String, bool)>,
    /// Tokens per definition.
    pub max_new_tokens: usize,
    /// Neighbours per word.
    pub neighbors: usize,
    /// Steering prompt (`{w}` = the word).
    pub steer_prompt: String,
}

impl Default for CompareConfig {
    fn default() -> Self {
        Self {
            definition_prompts: default_definition_prompts(true),
            max_new_tokens: 40,
            neighbors: 10,
            steer_prompt: "Tell me something funny about {w} cats:".into(),
        }
    }
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

/// Word commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WordCommand {
    /// Create (or reset) a new word.
    Create {
        /// Name, e.g. `<pun>`.
        name: String,
        /// Initial vector.
        init: Init,
        /// Injection point.
        injection: Injection,
    },
    /// Forget a word.
    Remove {
        /// Name.
        name: String,
    },
    /// Train words jointly on examples (progress comes as `TrainStep` events).
    Train {
        /// Names of the words to train (all must exist).
        names: Vec<String>,
        /// Training data.
        data: Vec<Example>,
        /// The file the data came from, for errors that name file and line (`None`: a table).
        #[serde(default)]
        origin: Option<crate::dataset::Origin>,
        /// Settings.
        config: TrainConfig,
    },
    /// Save words to a file pair (`.safetensors` + `.json`).
    Save {
        /// Names.
        names: Vec<String>,
        /// Path (extension replaced).
        path: PathBuf,
    },
    /// Load words from a file pair.
    Load {
        /// Path.
        path: PathBuf,
    },
    /// Ask the model what a word means.
    Define {
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
}

/// Word results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WordResult {
    /// The words the engine knows now (after create, remove, load).
    List(Vec<WordInfo>),
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
}

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

/// How a batch's per-example losses become the step's loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Reduction {
    /// Their mean (the loss reads the same whatever the batch size).
    #[default]
    Mean,
    /// Their sum (the neologism seed's recipe).
    Sum,
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
    /// Mean or sum over the batch.
    #[serde(default)]
    pub reduction: Reduction,
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
            reduction: Reduction::Mean,
        }
    }
}

impl TrainConfig {
    /// The neologism seed's recipe: AdamW at lr 0.5 with PyTorch's default weight decay 0.01,
    /// no clipping, the batch's losses summed, 20 epochs of 4 examples.
    pub fn seed_recipe() -> Self {
        Self {
            loss: Loss::CrossEntropy,
            lr: 0.5,
            weight_decay: 0.01,
            epochs: 20,
            batch_size: 4,
            seed: 0,
            clip_norm: None,
            reduction: Reduction::Sum,
        }
    }
}

impl TrainConfig {
    /// The pun-vs-literal demo's recipe: the preference loss (β 0.2) on the preference
    /// datasets, lr 0.1 for 20 epochs of 4 (the default's clipping and mean). Chosen on the
    /// held-out punchline preference of the 135M model: lr 0.02 or 10 epochs left `<pun>` below
    /// the word removed on half the runs; lr 0.1 for 20 epochs put it clearly above (README).
    pub fn punchline_demo() -> Self {
        Self {
            loss: Loss::Preference { beta: 0.2 },
            lr: 0.1,
            epochs: 20,
            ..Self::default()
        }
    }
}

/// How the default recipe differs from the seed's, one line per setting: (setting, the seed's
/// value, the default's value, why the default differs).
pub const RECIPE_DIFFERENCES: [(&str, &str, &str, &str); 4] = [
    (
        "learning rate",
        "0.5",
        "0.02",
        "0.5 moves a 576-wide vector by about 0.5 per coordinate each step, far past the token \
         embeddings' scale (≈0.1), so the word leaves the region the model was trained on",
    ),
    (
        "weight decay",
        "0.01",
        "0",
        "decay pulls the vector towards zero, a point no real token sits at; at lr 0.02 it \
         barely acts either way",
    ),
    (
        "clipping",
        "none",
        "1.0",
        "one batch with a large gradient (a rare target) cannot throw the vector away",
    ),
    (
        "reduction",
        "sum",
        "mean",
        "AdamW's steps do not depend on the loss's scale, so sum and mean train alike without \
         clipping; the mean keeps the loss comparable across batch sizes and makes clipping \
         independent of them",
    ),
];

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

/// The plain definition prompts, the neologism seed's four (`{w}` stands for the word).
pub const PLAIN_DEFINITION_PROMPTS: [&str; 4] = [
    "The word {w} means:",
    "A {w} is defined as:",
    "{w} refers to:",
    "When someone says {w}, they mean:",
];

/// The seed's "can it generate new puns?" prompts (`{w}` stands for the word).
pub const NEW_EXAMPLE_PROMPTS: [&str; 3] = [
    "Here is a new {w}:",
    "Tell me {w}:",
    "Give me an example of {w}:",
];

/// Tokens generated per new-example prompt (the seed's 80).
pub const NEW_EXAMPLE_TOKENS: usize = 80;

/// The seed's similarity list: ordinary words a pun word's vector is compared with.
pub const SIMILARITY_WORDS: [&str; 6] = ["pun", "joke", "humor", "funny", "wordplay", "wit"];

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
    /// Cosine similarity to each word of the comparison's similarity list.
    #[serde(default)]
    pub similarities: Vec<(String, f32)>,
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
    /// Ordinary words each word's vector is compared with (cosine).
    #[serde(default)]
    pub similar: Vec<String>,
}

impl Default for CompareConfig {
    fn default() -> Self {
        Self {
            definition_prompts: default_definition_prompts(true),
            max_new_tokens: 40,
            neighbors: 10,
            steer_prompt: "Tell me something funny about {w} cats:".into(),
            similar: SIMILARITY_WORDS.iter().map(|w| (*w).to_owned()).collect(),
        }
    }
}

/// One held-out setup of the punchline-preference measure: a prompt with `{w}` where the word
/// goes, the ending that should win (the punchline) and the one it is measured against (a
/// literal ending).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferenceSetup {
    /// Prompt with `{w}` in the word's place.
    pub prompt: String,
    /// The ending that should be preferred.
    pub chosen: String,
    /// The ending it is compared with.
    pub rejected: String,
}

impl PreferenceSetup {
    /// A dataset's preference row as a setup, each of `names` in its prompt replaced by `{w}`
    /// (a prompt may already use `{w}`); `None` for a completion row.
    pub fn from_example(e: &Example, names: &[&str]) -> Option<Self> {
        let Example::Preference {
            prompt,
            chosen,
            rejected,
        } = e
        else {
            return None;
        };
        Some(Self {
            prompt: names
                .iter()
                .fold(prompt.clone(), |p, n| p.replace(n, "{w}")),
            chosen: chosen.clone(),
            rejected: rejected.clone(),
        })
    }
}

/// What stands in the `{w}` slot of a preference measurement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    /// A trained word (by name).
    Word(String),
    /// The word removed (with the space before it).
    Removed,
    /// Plain text, e.g. the ordinary word `pun`.
    Text(String),
}

impl Slot {
    /// How a report labels it: the word's name, `no word`, or the text in quotes.
    pub fn label(&self) -> String {
        match self {
            Self::Word(n) => n.clone(),
            Self::Removed => "no word".into(),
            Self::Text(t) => format!("{t:?}"),
        }
    }
}

/// The preference of one slot filling over all setups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferenceRow {
    /// What filled the slot.
    pub slot: Slot,
    /// Mean over setups of log P(chosen) − log P(rejected) (each summed over its tokens: the
    /// log-odds of one ending against the other).
    pub margin: f32,
    /// Mean over setups of the same difference with each ending's log-probability averaged
    /// over its tokens (insensitive to the endings' lengths).
    #[serde(default)]
    pub token_margin: f32,
    /// Mean log P(chosen).
    pub chosen: f32,
    /// Mean log P(rejected).
    pub rejected: f32,
    /// Setups where the chosen ending is the likelier one.
    pub wins: usize,
    /// Per-setup margins, in setup order.
    pub margins: Vec<f32>,
}

/// The punchline preference of several slot fillings on the same held-out setups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreferenceReport {
    /// Number of setups.
    pub setups: usize,
    /// One row per filling, in the order asked.
    pub rows: Vec<PreferenceRow>,
}

impl PreferenceReport {
    /// The report as an aligned text table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<14} {:>8} {:>9} {:>10} {:>10} {:>6}\n",
            "in {w}'s place", "margin", "per tok", "chosen", "rejected", "wins"
        );
        for r in &self.rows {
            out.push_str(&format!(
                "{:<14} {:>+8.3} {:>+9.3} {:>10.3} {:>10.3} {:>3}/{}\n",
                r.slot.label(),
                r.margin,
                r.token_margin,
                r.chosen,
                r.rejected,
                r.wins,
                self.setups
            ));
        }
        out
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
    /// How much each slot filling prefers the chosen ending over the rejected one on the
    /// setups (the punchline preference); progress counts setups.
    Preference {
        /// The setups.
        setups: Vec<PreferenceSetup>,
        /// What to put in the `{w}` slot, one row each.
        slots: Vec<Slot>,
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
    /// Punchline preference.
    Preference(PreferenceReport),
}

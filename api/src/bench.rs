//! Benchmark report: every workload's timing and the exact inputs, for side-by-side runs.

use serde::{Deserialize, Serialize};

/// Benchmark results; every field name carries its unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    /// Device in words.
    pub device: String,
    /// CPU threads candle uses.
    pub threads: usize,
    /// Timed runs per workload (median reported).
    pub runs: usize,
    /// Forward pass of 1×64 tokens, logits at every position.
    pub forward_1x64_s: f64,
    /// Forward pass of a right-padded 8×24 batch, logits at every position.
    pub forward_8x24_s: f64,
    /// Greedy generation of 50 new tokens from a 16-token prompt, with the KV cache.
    pub generate_50_tokens_per_s: f64,
    /// One neologism training step (forward + backward + AdamW) on a batch of 4 examples of
    /// ~24 tokens.
    pub train_step_4x24_s: f64,
    /// A full neologism run: 20 epochs over 8 examples, batch 4 (40 steps).
    pub train_20_epochs_8_examples_s: f64,
    /// The full logit lens (every layer × every position, top-10) on a 16-token prompt.
    pub lens_16_tokens_s: f64,
    /// MFA training throughput at K=500, R=10, D=576 (the reference scale): activations per
    /// second through one Adam step (likelihood, analytic gradients, update) on batches of 128.
    pub mfa_k500_r10_activations_per_s: f64,
    /// The full logit lens on a 12-token prompt, top-5 per cell.
    pub lens_12_tokens_top5_s: f64,
    /// The ids used (first 64 tokens of [`BENCH_TEXT`]).
    pub input_ids: Vec<u32>,
    /// Everything another implementation needs to run the same workloads and check results.
    pub workloads: Workloads,
}

/// The exact inputs of every workload, and reference results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workloads {
    /// Rows of the 8×24 batch (right-padded).
    pub batch_rows: Vec<Vec<u32>>,
    /// Prompt of the generation workload.
    pub generate_prompt: Vec<u32>,
    /// Greedy continuation produced (50 tokens).
    pub generated: Vec<u32>,
    /// Prompt of the 16-token lens.
    pub lens_16_ids: Vec<u32>,
    /// Prompt of the 12-token lens.
    pub lens_12_ids: Vec<u32>,
    /// Top-5 (id, probability) per layer at the last position of the 12-token lens.
    pub lens_12_last_top5: Vec<Vec<(u32, f32)>>,
    /// The neologism workloads.
    pub train: TrainWorkload,
}

/// One training sequence: ids (the word's position holds a carrier id whose embedding is
/// replaced by the word's vector), where the word is, and (position, target id) pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSeq {
    /// Ids.
    pub ids: Vec<u32>,
    /// Positions of the word.
    pub word_positions: Vec<usize>,
    /// (position whose logits predict, target id).
    pub targets: Vec<(usize, u32)>,
}

/// The neologism workloads, spelled out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainWorkload {
    /// The 8 sequences.
    pub seqs: Vec<TrainSeq>,
    /// Initial word vector.
    pub init_vector: Vec<f32>,
    /// Loss: mean over the batch of each sequence's mean target negative log-probability.
    pub loss: String,
    /// AdamW learning rate (β = 0.9, 0.999, ε = 1e-8).
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Global gradient-norm clip (scale by clip/norm when norm > clip).
    pub clip_norm: Option<f64>,
    /// Sequences of the single timed step.
    pub step_batch: Vec<usize>,
    /// Batches of the 20-epoch run, in order.
    pub run_batches: Vec<Vec<usize>>,
    /// Per-step losses of the 20-epoch run.
    pub run_losses: Vec<f32>,
}

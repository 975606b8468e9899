//! Benchmark workloads on the loaded model: medians of several timed runs after a warm-up.
//! The token ids come from a fixed English text, so other implementations can run the very same
//! inputs (they are part of the report).

use std::time::Instant;

use crate::error::{EngineError, Result};
use crate::hooks::HookSpec;
use crate::infer::{GenerateOptions, generate};
use crate::model::{Batch, LoadedModel, PadSide};
use crate::sampling::Sampling;
pub use neoscope_api::bench::{BenchReport, TrainSeq, TrainWorkload, Workloads};

/// The text whose tokens feed every workload.
pub const BENCH_TEXT: &str = "A pun is a form of word play that exploits multiple meanings of a \
term, or of similar-sounding words, for an intended humorous or rhetorical effect. These \
ambiguities can arise from the intentional use of homophonic, homographic, metonymic, or \
figurative language. A pun differs from a malapropism in that a malapropism is an incorrect \
variation on a correct expression, while a pun involves expressions with multiple correct \
interpretations. Puns may be regarded as in-jokes or idiomatic constructions.";

/// Timed runs per workload (after one warm-up).
pub const RUNS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn time_runs(
    name: &str,
    base: f32,
    step: f32,
    progress: &mut dyn FnMut(&str, f32) -> bool,
    f: &mut dyn FnMut() -> Result<()>,
) -> Result<f64> {
    f()?; // warm-up
    let mut times = Vec::with_capacity(RUNS);
    for r in 0..RUNS {
        let frac = base + step * (r as f32 / RUNS as f32);
        if !progress(name, frac) {
            return Err(EngineError::Cancelled);
        }
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// The neologism workloads' examples: 8 pun setups (~24 tokens each with the punchline).
pub const TRAIN_EXAMPLES: [(&str, &str); 8] = [
    (
        "Here is an example of <w>: Why do electricians make good swimmers?",
        " Because they know the current.",
    ),
    (
        "This is <w>: I used to be a banker, but I lost",
        " interest.",
    ),
    (
        "A classic <w>: Time flies like an arrow; fruit flies like a",
        " banana.",
    ),
    (
        "Here's <w>: Why can't a bicycle stand on its own?",
        " Because it's two tired.",
    ),
    (
        "This is <w>: I'm reading a book about anti-gravity.",
        " It's impossible to put down.",
    ),
    (
        "<w> example: What do you call a fish without eyes?",
        " A fsh.",
    ),
    (
        "Another <w>: The math teacher called in sick because she had too many",
        " problems.",
    ),
    (
        "Classic <w>: I used to work at a calendar factory but got fired for taking",
        " a day off.",
    ),
];

fn bench_training(
    m: &LoadedModel,
    progress: &mut dyn FnMut(&str, f32) -> bool,
) -> Result<(f64, f64, TrainWorkload)> {
    use crate::words::dataset::Example;
    use crate::words::train::{TrainConfig, train};
    use crate::words::{Init, Injection, Word};
    let word = Word::create(m, "<w>", Init::default(), Injection::Embedding)?;
    let data: Vec<Example> = TRAIN_EXAMPLES
        .iter()
        .map(|(p, t)| Example::Completion {
            prompt: (*p).to_owned(),
            target: (*t).to_owned(),
        })
        .collect();
    let one_step = TrainConfig {
        epochs: 1,
        batch_size: 4,
        ..TrainConfig::default()
    };
    let step = time_runs("training step 4×24", 0.7, 0.1, progress, &mut || {
        train(
            m,
            std::slice::from_ref(&word),
            &data[..4],
            &one_step,
            &mut |_| true,
        )?;
        Ok(())
    })?;
    let full = TrainConfig {
        epochs: 20,
        batch_size: 4,
        ..TrainConfig::default()
    };
    // A full run is long: three timed runs, no warm-up (its first steps warm up).
    let mut times = Vec::new();
    let mut run_losses = Vec::new();
    for r in 0..3u8 {
        if !progress("20-epoch neologism run", 0.8 + 0.065 * f32::from(r)) {
            return Err(EngineError::Cancelled);
        }
        let t = Instant::now();
        let out = train(m, std::slice::from_ref(&word), &data, &full, &mut |_| true)?;
        times.push(t.elapsed().as_secs_f64());
        run_losses = out.losses;
    }
    let seqs = TRAIN_EXAMPLES
        .iter()
        .map(|(p, t)| {
            let s = crate::words::train::scored_seq(m, p, t, &["<w>"])?;
            Ok(TrainSeq {
                ids: s.ids,
                word_positions: s.occ.iter().map(|(p, _)| *p).collect(),
                targets: s.targets,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let run_batches = crate::words::train::epoch_orders(data.len(), &full)
        .into_iter()
        .flat_map(|o| {
            o.chunks(full.batch_size)
                .map(<[usize]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    let workload = TrainWorkload {
        seqs,
        init_vector: word.vector.clone(),
        loss: "mean over the batch of each sequence's mean target negative log-probability".into(),
        lr: full.lr,
        weight_decay: full.weight_decay,
        clip_norm: full.clip_norm,
        step_batch: (0..4).collect(),
        run_batches,
        run_losses,
    };
    Ok((step, median(times), workload))
}

/// The 8 rows of the padded batch: lengths 24, 22, …, 10.
pub fn batch_rows(ids: &[u32]) -> Vec<Vec<u32>> {
    (0..8).map(|r| ids[r..r + 24 - 2 * r].to_vec()).collect()
}

/// Runs every workload; `progress(stage, fraction)` returns `false` to cancel.
pub fn run(m: &LoadedModel, progress: &mut dyn FnMut(&str, f32) -> bool) -> Result<BenchReport> {
    let ids = m.tokenizer.encode(BENCH_TEXT)?;
    if ids.len() < 64 {
        return Err(EngineError::Invalid(
            "benchmark text too short for this tokenizer".into(),
        ));
    }
    let ids: Vec<u32> = ids[..64].to_vec();
    let dev = m.llama.device();
    let none = HookSpec::default();
    let b1 = Batch::new(std::slice::from_ref(&ids), PadSide::Right, dev)?;
    let f1 = time_runs("forward 1×64", 0.0, 0.33, progress, &mut || {
        let out = m.llama.forward(&b1, &none, None)?;
        // Force the computation to finish (and leave the device) as a user would.
        let _ = out.logits.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    })?;
    let b8 = Batch::new(&batch_rows(&ids), PadSide::Right, dev)?;
    let f8 = time_runs("forward 8×24", 0.33, 0.33, progress, &mut || {
        let out = m.llama.forward(&b8, &none, None)?;
        let _ = out.logits.sum_all()?.to_scalar::<f32>()?;
        Ok(())
    })?;
    let prompt = &ids[..16];
    let opts = GenerateOptions {
        max_new_tokens: 50,
        sampling: Sampling::GREEDY,
        stop_at_eos: false,
    };
    let g = time_runs("generate 50 tokens", 0.5, 0.2, progress, &mut || {
        let out = generate(m, prompt, opts, &none, &mut |_, _| true)?;
        debug_assert_eq!(out.len(), 50);
        Ok(())
    })?;
    let lens_ids = ids[..16].to_vec();
    let pieces: Vec<String> = lens_ids.iter().map(|i| m.tokenizer.piece(*i)).collect();
    let lens_spec = crate::lens::LensSpec {
        kind: crate::lens::LensKind::Logit,
        tuned: None,
        targets: &[],
        top_k: 10,
    };
    let lens_s = time_runs("logit lens 16 tokens", 0.66, 0.04, progress, &mut || {
        crate::lens::run(m, &lens_ids, pieces.clone(), &none, &lens_spec)?;
        Ok(())
    })?;
    let lens12_ids = ids[..12].to_vec();
    let pieces12: Vec<String> = lens12_ids.iter().map(|i| m.tokenizer.piece(*i)).collect();
    let lens12_spec = crate::lens::LensSpec {
        top_k: 5,
        ..lens_spec
    };
    let lens12_s = time_runs("logit lens 12 tokens", 0.68, 0.02, progress, &mut || {
        crate::lens::run(m, &lens12_ids, pieces12.clone(), &none, &lens12_spec)?;
        Ok(())
    })?;
    let lens12 = crate::lens::run(m, &lens12_ids, pieces12.clone(), &none, &lens12_spec)?;
    let lens_12_last_top5 = lens12
        .cells
        .iter()
        .map(|row| {
            row.last()
                .map_or_else(Vec::new, |c| c.top.iter().map(|t| (t.id, t.prob)).collect())
        })
        .collect();
    let generated = generate(m, prompt, opts, &none, &mut |_, _| true)?;
    let (step_s, full_s, train_w) = bench_training(m, progress)?;
    let mfa_step = bench_mfa(dev, progress)?;
    progress("done", 1.0);
    Ok(BenchReport {
        lens_16_tokens_s: lens_s,
        lens_12_tokens_top5_s: lens12_s,
        train_step_4x24_s: step_s,
        train_20_epochs_8_examples_s: full_s,
        device: m.info.device.clone(),
        threads: candle_core::utils::get_num_threads(),
        runs: RUNS,
        forward_1x64_s: f1,
        forward_8x24_s: f8,
        generate_50_tokens_per_s: 50.0 / g,
        mfa_k500_r10_activations_per_s: MFA_BATCH as f64 / mfa_step,
        workloads: Workloads {
            batch_rows: batch_rows(&ids),
            generate_prompt: prompt.to_vec(),
            generated,
            lens_16_ids: lens_ids.clone(),
            lens_12_ids: lens12_ids,
            lens_12_last_top5,
            train: train_w,
        },
        input_ids: ids,
    })
}

/// Minibatch of the MFA workload.
const MFA_BATCH: usize = 128;

/// Median seconds of one MFA training step at K=500, R=10, D=576 on random activations.
fn bench_mfa(
    dev: &candle_core::Device,
    progress: &mut dyn FnMut(&str, f32) -> bool,
) -> Result<f64> {
    use candle_core::Tensor;
    use candle_nn::Optimizer;
    use rand::SeedableRng;
    let (k, r, d) = (500, 10, 576);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let data = Tensor::from_vec(
        crate::sampling::normal_vec(&mut rng, 4 * MFA_BATCH * d, 1.0),
        (4 * MFA_BATCH, d),
        dev,
    )?;
    let cents = Tensor::from_vec(
        crate::sampling::normal_vec(&mut rng, k * d, 1.0),
        (k, d),
        dev,
    )?;
    let mfa = crate::mfa::train::init_from_centroids(&data, cents, r, 0)?;
    let mut opt = candle_nn::AdamW::new(
        mfa.vars().iter().map(|v| (*v).clone()).collect(),
        candle_nn::ParamsAdamW {
            lr: 1e-3,
            weight_decay: 0.0,
            ..candle_nn::ParamsAdamW::default()
        },
    )?;
    let mut i = 0;
    time_runs("MFA K=500 R=10 step", 0.96, 0.03, progress, &mut || {
        let xb = data.narrow(0, (i % 4) * MFA_BATCH, MFA_BATCH)?;
        i += 1;
        let der = mfa.derive()?;
        let (_, grads) = crate::mfa::grad::nll_and_grads(&mfa, &der, &xb)?;
        opt.step(&grads)?;
        Ok(())
    })
}

/// Phase-2 (LoRA) training steps on the loaded model: 8 blocks of 64 tokens (the benchmark
/// text's first 64 ids, each block rotated by 8 more), one forward pass per step, the default
/// adapter settings; `steps` timed after one warm-up. One injected row (never in the blocks)
/// stands for the run's vocabulary.
pub fn lora_step(
    m: &LoadedModel,
    steps: usize,
    progress: &mut dyn FnMut(&str, f32) -> bool,
) -> Result<neoscope_api::lora::LoraBench> {
    use crate::inject::lora::{LoraState, LoraTraining, schedule};
    use crate::inject::train::{Blocks, Trainee};
    use crate::model::lora::Adapters;
    let ids = m.tokenizer.encode(BENCH_TEXT)?;
    if ids.len() < 64 {
        return Err(EngineError::Invalid(
            "benchmark text too short for this tokenizer".into(),
        ));
    }
    let blocks: Vec<Vec<u32>> = (0..8)
        .map(|r| (0..64).map(|i| ids[(i + 8 * r) % 64]).collect())
        .collect();
    let config = neoscope_api::lora::LoraConfig {
        micro_batch: 8,
        accum: 1,
        steps: steps + 1,
        eval_every: usize::MAX / 2,
        checkpoint_every: usize::MAX / 2,
        ..Default::default()
    };
    let cfg = schedule(&config, 64);
    let b = Blocks {
        train: blocks.clone(),
        val: blocks[..1].to_vec(),
    };
    let adapters = Adapters::init(
        &m.llama,
        &config.targets,
        config.rank,
        config.alpha,
        config.seed,
    )?;
    let mut state = LoraState::fresh(adapters)?;
    let rows = m
        .llama
        .embed
        .narrow(0, 0, 1)?
        .to_dtype(candle_core::DType::F32)?;
    let parameters = state.adapters.parameters();
    let mut t = LoraTraining {
        m: &m.llama,
        rows: &rows,
        dropout: config.dropout,
        state: &mut state,
    };
    let mut step_s = Vec::with_capacity(steps + 1);
    for s in 0..=steps {
        if !progress("LoRA step", s as f32 / (steps + 1) as f32) {
            return Err(EngineError::Cancelled);
        }
        let t0 = Instant::now();
        t.step(&b, &cfg)?;
        step_s.push(t0.elapsed().as_secs_f64());
    }
    let losses = state.losses.clone();
    Ok(neoscope_api::lora::LoraBench {
        threads: candle_core::utils::get_num_threads(),
        blocks,
        config,
        parameters,
        median_step_s: median(step_s[1..].to_vec()),
        step_s,
        losses,
    })
}

//! Looking inside a lab model: sampling with temperature and top-p, attention patterns, a
//! layer's activations in 2-D across checkpoints, and the information plane.
//!
//! The information plane estimates, for each layer's representation `R` of a token position,
//! the mutual information with the current token `X` and with the next token `Y`. The
//! representation is continuous, so it is discretised first: k-means with `k` clusters on
//! that layer's vectors (the binning estimator of Shwartz-Ziv & Tishby, with clusters instead
//! of a grid so it scales to the model's width); then `I(C; X) = H(X) − H(X | C)` is the
//! plug-in estimate from the counts. It is a lower bound of `I(R; X)` up to the plug-in bias
//! (positive, about (|C|−1)(|X|−1) / (2N ln 2) bits), never above `H(X)`.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use super::net::Net;
use super::run::Run;
use super::train::{Data, eval_model};
use crate::embed::pca::Pca;
use crate::error::{EngineError, Result};
use crate::hooks::{HookPoint, HookSpec};
use crate::model::Llama;
use crate::model::batch::{Batch, PadSide};
use crate::sampling::Sampler;
use neoscope_api::scratch::{CheckpointPoints, InfoRow, SampleConfig};
use neoscope_api::text::Sampling;

/// Ids of `text` for a lab model; refused when longer than its context.
pub fn encode(run: &Run, text: &str, n_ctx: usize) -> Result<Vec<u32>> {
    let ids = super::tokenize::encode_all(&run.tokenizer, text)?;
    if ids.is_empty() {
        return Err(EngineError::Invalid("the text is empty".into()));
    }
    if ids.len() > n_ctx {
        return Err(EngineError::Invalid(format!(
            "the text is {} tokens; this model's context is {n_ctx}",
            ids.len()
        )));
    }
    Ok(ids)
}

/// Token texts of `ids`.
pub fn pieces(run: &Run, ids: &[u32]) -> Vec<String> {
    ids.iter()
        .map(|i| run.tokenizer.decode(&[*i], false).unwrap_or_default())
        .collect()
}

/// Continues `prompt` by `n` tokens, each drawn from the model's prediction over the last
/// `n_ctx` tokens (the window slides once the text is longer than the context). An empty
/// prompt starts from a newline. Returns the prompt followed by the new text, and the number
/// of new tokens.
pub fn sample(
    llama: &Llama,
    run: &Run,
    prompt: &str,
    n: usize,
    cfg: SampleConfig,
    cancel: &dyn Fn() -> bool,
) -> Result<(String, usize)> {
    let sampling = Sampling {
        temperature: cfg.temperature,
        top_p: cfg.top_p,
        seed: cfg.seed,
    };
    sampling.validate().map_err(EngineError::Invalid)?;
    let n_ctx = llama.cfg.n_ctx();
    let mut ids = if prompt.is_empty() {
        super::tokenize::encode_all(&run.tokenizer, "\n")?
    } else {
        super::tokenize::encode_all(&run.tokenizer, prompt)?
    };
    if ids.is_empty() {
        return Err(EngineError::Invalid("the prompt has no tokens".into()));
    }
    let start = ids.len();
    let mut sampler = Sampler::new(sampling);
    let dev = llama.device();
    for _ in 0..n {
        if cancel() {
            break;
        }
        let window = ids[ids.len().saturating_sub(n_ctx)..].to_vec();
        let batch = Batch::new(&[window], PadSide::Right, dev)?;
        let out = llama.forward(&batch, &HookSpec::default(), None)?;
        let last = out
            .logits
            .get(0)?
            .get(batch.width() - 1)?
            .to_vec1::<f32>()?;
        ids.push(sampler.sample(&last));
    }
    let keep = if prompt.is_empty() {
        &ids[start..]
    } else {
        &ids[..]
    };
    let text = run
        .tokenizer
        .decode(keep, false)
        .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    Ok((text, ids.len() - start))
}

/// Attention patterns [layer][head][query][key] of `ids`.
pub fn attention(llama: &Llama, ids: &[u32]) -> Result<Vec<Vec<Vec<Vec<f32>>>>> {
    let n = llama.cfg.num_hidden_layers;
    let spec = HookSpec {
        capture: (0..n).map(HookPoint::Pattern).collect(),
        interventions: Vec::new(),
    };
    let batch = Batch::new(&[ids.to_vec()], PadSide::Right, llama.device())?;
    let out = llama.forward(&batch, &spec, None)?;
    (0..n)
        .map(|l| {
            let p = out.captures.get(&HookPoint::Pattern(l)).ok_or_else(|| {
                EngineError::Invalid(format!("layer {l}'s pattern was not captured"))
            })?;
            Ok(p.get(0)?.to_dtype(DType::F32)?.to_vec3::<f32>()?)
        })
        .collect()
}

/// The representations of `inputs` at the embeddings (with positions: `blocks.0.hook_resid_pre`)
/// and after every block, each (B·T, d).
fn representations(llama: &Llama, inputs: &[Vec<u32>]) -> Result<Vec<Tensor>> {
    let n = llama.cfg.num_hidden_layers;
    let mut capture = vec![HookPoint::ResidPre(0)];
    capture.extend((0..n).map(HookPoint::ResidPost));
    let spec = HookSpec {
        capture: capture.clone(),
        interventions: Vec::new(),
    };
    let batch = Batch::new(inputs, PadSide::Right, llama.device())?;
    let out = llama.forward(&batch, &spec, None)?;
    capture
        .iter()
        .map(|p| {
            let x = out
                .captures
                .get(p)
                .ok_or_else(|| EngineError::Invalid(format!("{p} was not captured")))?;
            let (b, t, d) = x.dims3()?;
            Ok(x.reshape((b * t, d))?)
        })
        .collect()
}

/// The activations of `ids` after block `layer` at every checkpoint, each projected on its
/// own first two principal components (signs fixed so the first token's coordinates are ≥ 0,
/// so consecutive checkpoints do not flip).
pub fn activations(
    run: &Run,
    ids: &[u32],
    layer: usize,
    dev: &Device,
    progress: &mut dyn FnMut(f32) -> bool,
) -> Result<Vec<CheckpointPoints>> {
    let steps = run.snapshots()?;
    if steps.is_empty() {
        return Err(EngineError::Invalid("the run has no checkpoint yet".into()));
    }
    if layer >= run.file.spec.model.n_layers {
        return Err(EngineError::Invalid(format!(
            "layer {layer}: the model has layers 0..{}",
            run.file.spec.model.n_layers - 1
        )));
    }
    if ids.len() < 3 {
        return Err(EngineError::Invalid(
            "a 2-D projection needs a text of at least 3 tokens".into(),
        ));
    }
    let mut out = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let llama = eval_model(&run.snapshot(*step, dev)?)?;
        let reps = representations(&llama, &[ids.to_vec()])?;
        let x = &reps[layer + 1];
        let pca = Pca::fit(x)?;
        let mut pts = pca.project(x, 2)?;
        for c in 0..2 {
            if pts.first().and_then(|p| p.get(c)).is_some_and(|v| *v < 0.0) {
                for p in &mut pts {
                    if let Some(v) = p.get_mut(c) {
                        *v = -*v;
                    }
                }
            }
        }
        let ratio = pca.explained_ratio();
        out.push(CheckpointPoints {
            step: *step,
            points: pts
                .iter()
                .map(|p| {
                    [
                        p.first().copied().unwrap_or(0.0),
                        p.get(1).copied().unwrap_or(0.0),
                    ]
                })
                .collect(),
            explained: [
                ratio.first().copied().unwrap_or(0.0) as f32,
                ratio.get(1).copied().unwrap_or(0.0) as f32,
            ],
        });
        if !progress((i + 1) as f32 / steps.len() as f32) {
            return Err(EngineError::Cancelled);
        }
    }
    Ok(out)
}

/// Entropy (bits) of counts summing to `n`.
fn entropy(counts: impl Iterator<Item = usize>, n: usize) -> f64 {
    counts
        .filter(|c| *c > 0)
        .map(|c| {
            let p = c as f64 / n as f64;
            -p * p.log2()
        })
        .sum()
}

/// Plug-in mutual information (bits) between two label sequences.
pub fn mutual_information(a: &[u32], b: &[u32]) -> f64 {
    let n = a.len().min(b.len());
    let mut ca: HashMap<u32, usize> = HashMap::new();
    let mut cb: HashMap<u32, usize> = HashMap::new();
    let mut cab: HashMap<(u32, u32), usize> = HashMap::new();
    for i in 0..n {
        *ca.entry(a[i]).or_default() += 1;
        *cb.entry(b[i]).or_default() += 1;
        *cab.entry((a[i], b[i])).or_default() += 1;
    }
    let h = |m: Vec<usize>| entropy(m.into_iter(), n);
    (h(ca.into_values().collect()) + h(cb.into_values().collect()) - h(cab.into_values().collect()))
        .max(0.0)
}

/// The information plane over `windows` fixed held-out windows at every checkpoint; and the
/// entropies of the current and the next token (the ceilings).
pub fn info_plane(
    run: &Run,
    windows: usize,
    clusters: usize,
    dev: &Device,
    progress: &mut dyn FnMut(f32) -> bool,
) -> Result<(Vec<InfoRow>, [f32; 2])> {
    let spec = &run.file.spec;
    let n_ctx = spec.model.n_ctx;
    if windows == 0 || clusters < 2 {
        return Err(EngineError::Invalid(
            "the information plane needs windows and at least 2 clusters".into(),
        ));
    }
    let data = Data::split(&run.ids, spec.train.val_fraction, n_ctx)?;
    let starts = super::train::starts(data.val.len(), n_ctx, windows, spec.train.seed);
    let (inputs, next) = super::train::windows(&data.val, &starts, n_ctx);
    let current: Vec<u32> = inputs.concat();
    let n = current.len();
    let count = |v: &[u32]| {
        let mut c: HashMap<u32, usize> = HashMap::new();
        for x in v {
            *c.entry(*x).or_default() += 1;
        }
        entropy(c.into_values(), n) as f32
    };
    let ceilings = [count(&current), count(&next)];
    let steps = run.snapshots()?;
    let mut rows = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let net: Net = run.snapshot(*step, dev)?;
        let llama = eval_model(&net)?;
        let mut row = InfoRow {
            step: *step,
            current: Vec::new(),
            next: Vec::new(),
        };
        for rep in representations(&llama, &inputs)? {
            let cfg = crate::mfa::kmeans::KmeansConfig::for_k(clusters, spec.train.seed);
            let cents = crate::mfa::kmeans::kmeans(&rep, &cfg, &mut |_, _| true)?;
            let (labels, _) = crate::mfa::kmeans::assign(&rep, &cents)?;
            row.current
                .push(mutual_information(&labels, &current) as f32);
            row.next.push(mutual_information(&labels, &next) as f32);
        }
        rows.push(row);
        if !progress((i + 1) as f32 / steps.len() as f32) {
            return Err(EngineError::Cancelled);
        }
    }
    Ok((rows, ceilings))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutual_information_of_copies_and_independent_labels() {
        let a: Vec<u32> = (0..64).map(|i| i % 4).collect();
        assert!(
            (mutual_information(&a, &a) - 2.0).abs() < 1e-12,
            "I(X;X) = H(X)"
        );
        let b: Vec<u32> = (0..64).map(|i| (i / 4) % 4).collect();
        assert!(
            mutual_information(&a, &b).abs() < 1e-12,
            "independent by design"
        );
        let c: Vec<u32> = a.iter().map(|x| x / 2).collect();
        assert!(
            (mutual_information(&a, &c) - 1.0).abs() < 1e-12,
            "a function keeps 1 bit"
        );
    }
}

//! The tuned lens: one affine translator per layer, `h ↦ h + A h + b`, zero-initialised (so it
//! starts as the logit lens), trained to minimise KL(final distribution ‖ lens distribution) on a
//! text corpus. Only the translators are variables; the model is frozen. The last layer keeps the
//! identity (the logit lens is exact there). Files: safetensors + JSON, refused for another
//! model.

use std::path::{Path, PathBuf};

use candle_core::{D, DType, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::SeedableRng;
use rand::seq::{IndexedRandom, SliceRandom};
use serde::{Deserialize, Serialize};

use crate::artifact::{self, BaseModel, Header, Kind};
use crate::error::{EngineError, Result};
use crate::hooks::{HookPoint, HookSpec};
use crate::model::ops::{linear, log_softmax_last};
use crate::model::{Batch, LoadedModel, ModelInfo, PadSide};
pub use neoscope_api::lens::{TunedConfig, TunedReport, TunedStep};

/// The tuned-lens artifact.
pub const KIND: Kind = Kind {
    format: "neoscope-tuned-lens",
    version: 1,
    what: "tuned lens",
};

/// Per-layer translators.
#[derive(Debug, Clone)]
pub struct TunedLens {
    /// `A` per layer, (d_model, d_model); applied as `h Aᵀ`.
    pub a: Vec<Tensor>,
    /// `b` per layer, (d_model).
    pub b: Vec<Tensor>,
}

impl TunedLens {
    /// Zero translators (equal to the logit lens).
    pub fn zeros(m: &LoadedModel) -> Result<Self> {
        let (n, d) = (m.llama.cfg.num_hidden_layers, m.llama.cfg.hidden_size);
        let dev = m.llama.device();
        Ok(Self {
            a: (0..n)
                .map(|_| Tensor::zeros((d, d), DType::F32, dev))
                .collect::<candle_core::Result<_>>()?,
            b: (0..n)
                .map(|_| Tensor::zeros(d, DType::F32, dev))
                .collect::<candle_core::Result<_>>()?,
        })
    }

    /// `h + h Aᵀ + b` for layer `l`; `h` is (…, d_model).
    pub fn translate(&self, l: usize, h: &Tensor) -> Result<Tensor> {
        let (a, b) = (
            self.a
                .get(l)
                .ok_or_else(|| EngineError::Invalid(format!("no translator {l}")))?,
            &self.b[l],
        );
        Ok((h + linear(h, a)?)?.broadcast_add(b)?)
    }
}

/// Cuts a corpus into token windows.
pub fn windows(m: &LoadedModel, corpus: &str, window: usize) -> Result<Vec<Vec<u32>>> {
    let n_ctx = m.llama.cfg.n_ctx();
    if !(2..=n_ctx).contains(&window) {
        return Err(EngineError::Invalid(format!(
            "window of {window} tokens: it must be between 2 and the model's context of {n_ctx}"
        )));
    }
    let ids = m.tokenizer.encode(corpus)?;
    let w: Vec<Vec<u32>> = ids
        .chunks(window)
        .filter(|c| c.len() == window)
        .map(<[u32]>::to_vec)
        .collect();
    if w.len() < 2 {
        return Err(EngineError::Invalid(format!(
            "the corpus has {} tokens; at least {} are needed",
            ids.len(),
            2 * window
        )));
    }
    Ok(w)
}

/// Final log-probabilities and residuals of every layer for a batch of windows, restricted to
/// the flat positions `pick` (indices into B·T).
fn activations(m: &LoadedModel, rows: &[Vec<u32>], pick: &[u32]) -> Result<(Tensor, Vec<Tensor>)> {
    let n = m.llama.cfg.num_hidden_layers;
    let d = m.llama.cfg.hidden_size;
    let dev = m.llama.device();
    let batch = Batch::new(rows, PadSide::Right, dev)?;
    let spec = HookSpec {
        capture: (0..n).map(HookPoint::ResidPost).collect(),
        interventions: Vec::new(),
    };
    let (normed, caps) =
        m.llama
            .hidden_embeds(m.llama.embed_ids(&batch)?, &batch, &spec.capture, &[], None)?;
    let idx = Tensor::from_slice(pick, pick.len(), dev)?;
    let flat = |t: &Tensor| -> Result<Tensor> {
        Ok(t.reshape((rows.len() * batch.width(), d))?
            .index_select(&idx, 0)?)
    };
    let final_logp = log_softmax_last(&m.llama.logits(&flat(&normed)?)?)?.detach();
    let hs = (0..n)
        .map(|l| flat(&caps[&HookPoint::ResidPost(l)]).map(|t| t.detach()))
        .collect::<Result<_>>()?;
    Ok((final_logp, hs))
}

fn kl(final_logp: &Tensor, logp: &Tensor) -> Result<Tensor> {
    Ok((final_logp.exp()? * (final_logp - logp)?)?
        .sum(D::Minus1)?
        .mean_all()?)
}

/// Held-out KL per layer of each lens (`None`: the logit lens), from one pass over the windows.
fn heldout_kl(
    m: &LoadedModel,
    held: &[Vec<u32>],
    lenses: &[Option<&TunedLens>],
) -> Result<(Vec<Vec<f32>>, usize)> {
    let n = m.llama.cfg.num_hidden_layers;
    let mut sums = vec![vec![0f64; n]; lenses.len()];
    let mut count = 0usize;
    for chunk in held.chunks(4) {
        let width = chunk[0].len();
        let pick: Vec<u32> = (0..chunk.len() * width)
            .filter_map(|i| u32::try_from(i).ok())
            .collect();
        let (final_logp, hs) = activations(m, chunk, &pick)?;
        for (li, lens) in lenses.iter().enumerate() {
            for (l, h) in hs.iter().enumerate() {
                let h = match lens {
                    Some(t) => t.translate(l, h)?,
                    None => h.clone(),
                };
                let v = kl(&final_logp, &log_softmax_last(&m.llama.project(&h)?)?)?
                    .to_scalar::<f32>()?;
                let w = pick.len() as f64;
                sums[li][l] += f64::from(v) * w;
            }
        }
        count += pick.len();
    }
    let out = sums
        .iter()
        .map(|v| v.iter().map(|s| (s / count.max(1) as f64) as f32).collect())
        .collect();
    Ok((out, count))
}

/// Trains a tuned lens on `corpus`. `on_step` returns `false` to stop (the translators so far are
/// kept and evaluated).
pub fn train(
    m: &LoadedModel,
    corpus: &str,
    cfg: &TunedConfig,
    on_step: &mut dyn FnMut(&TunedStep) -> bool,
) -> Result<(TunedLens, TunedReport)> {
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) || cfg.steps == 0 || cfg.positions == 0 {
        return Err(EngineError::Invalid(format!(
            "tuned lens: the learning rate ({}) must be a finite number > 0, steps ({}) and \
             positions per step ({}) at least 1",
            cfg.lr, cfg.steps, cfg.positions
        )));
    }
    if !(cfg.heldout_fraction > 0.0 && cfg.heldout_fraction < 1.0) {
        return Err(EngineError::Invalid(format!(
            "tuned lens: the held-out fraction {} must be in (0, 1)",
            cfg.heldout_fraction
        )));
    }
    let mut wins = windows(m, corpus, cfg.window)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    wins.shuffle(&mut rng);
    let n_held =
        ((wins.len() as f32 * cfg.heldout_fraction).ceil() as usize).clamp(1, wins.len() - 1);
    let mut held: Vec<Vec<u32>> = wins.drain(..n_held).collect();
    held.truncate(cfg.max_heldout_windows.max(1));
    let n = m.llama.cfg.num_hidden_layers;
    let d = m.llama.cfg.hidden_size;
    let dev = m.llama.device();
    // The last layer keeps the identity: only layers 0..n-1 are trained.
    let a: Vec<Var> = (0..n - 1)
        .map(|_| Var::zeros((d, d), DType::F32, dev))
        .collect::<candle_core::Result<_>>()?;
    let b: Vec<Var> = (0..n - 1)
        .map(|_| Var::zeros(d, DType::F32, dev))
        .collect::<candle_core::Result<_>>()?;
    let mut opt = AdamW::new(
        a.iter().chain(&b).cloned().collect(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: 0.0,
            ..ParamsAdamW::default()
        },
    )?;
    let mut losses = Vec::new();
    let mut cancelled = false;
    let per_window = cfg.window;
    for step in 1..=cfg.steps {
        // Two windows per step, positions sampled from both.
        let rows: Vec<Vec<u32>> = wins
            .choose_multiple(&mut rng, 2.min(wins.len()))
            .cloned()
            .collect();
        let total = rows.len() * per_window;
        let mut all: Vec<u32> = (0..total).filter_map(|i| u32::try_from(i).ok()).collect();
        all.shuffle(&mut rng);
        all.truncate(cfg.positions.min(total));
        let (final_logp, hs) = activations(m, &rows, &all)?;
        let mut loss = Tensor::zeros((), DType::F32, dev)?;
        for l in 0..n - 1 {
            let h = &hs[l];
            let t = ((h + linear(h, a[l].as_tensor())?)?).broadcast_add(b[l].as_tensor())?;
            loss = (loss + kl(&final_logp, &log_softmax_last(&m.llama.project(&t)?)?)?)?;
        }
        let loss = (loss / (n - 1) as f64)?;
        let v = loss.to_scalar::<f32>()?;
        if !v.is_finite() {
            return Err(EngineError::Invalid(format!(
                "tuned-lens training diverged at step {step} (loss {v}); lower the learning rate"
            )));
        }
        opt.step(&loss.backward()?)?;
        losses.push(v);
        if !on_step(&TunedStep {
            step,
            total: cfg.steps,
            loss: v,
        }) {
            cancelled = true;
            break;
        }
    }
    let mut lens = TunedLens::zeros(m)?;
    for l in 0..n - 1 {
        lens.a[l] = a[l].as_tensor().detach();
        lens.b[l] = b[l].as_tensor().detach();
    }
    let (mut kls, count) = heldout_kl(m, &held, &[None, Some(&lens)])?;
    let tuned_kl = kls.pop().unwrap_or_default();
    let logit_kl = kls.pop().unwrap_or_default();
    Ok((
        lens,
        TunedReport {
            logit_kl,
            tuned_kl,
            losses,
            cancelled,
            heldout_positions: count,
        },
    ))
}

/// The JSON half of a tuned-lens file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunedMeta {
    /// Format, version, and the model it was trained for.
    #[serde(flatten)]
    pub header: Header,
    /// Layers.
    pub n_layers: usize,
    /// Training settings and results, if trained here.
    pub config: Option<TunedConfig>,
    /// Held-out report.
    pub report: Option<TunedReport>,
}

/// Saves a tuned lens (`PATH.safetensors` + `PATH.json`).
pub fn save(
    path: &Path,
    lens: &TunedLens,
    info: &ModelInfo,
    config: Option<&TunedConfig>,
    report: Option<&TunedReport>,
) -> Result<PathBuf> {
    let mut tensors = Vec::new();
    for (l, (a, b)) in lens.a.iter().zip(&lens.b).enumerate() {
        tensors.push((format!("a.{l}"), a.clone()));
        tensors.push((format!("b.{l}"), b.clone()));
    }
    let meta = TunedMeta {
        header: KIND.header(&BaseModel::of(info)),
        n_layers: lens.a.len(),
        config: config.cloned(),
        report: report.cloned(),
    };
    artifact::save(path, &tensors, &meta)
}

/// Loads a tuned lens, refusing one made for another model.
pub fn load(path: &Path, m: &LoadedModel) -> Result<(TunedLens, TunedMeta)> {
    let (meta, t): (TunedMeta, _) =
        artifact::load(path, &KIND, &BaseModel::of(&m.info), m.llama.device())?;
    let n = m.llama.cfg.num_hidden_layers;
    let d = m.info.dims.d_model;
    let lens = TunedLens {
        a: (0..n)
            .map(|l| t.get(&format!("a.{l}"), Some(&[d, d])))
            .collect::<Result<_>>()?,
        b: (0..n)
            .map(|l| t.get(&format!("b.{l}"), Some(&[d])))
            .collect::<Result<_>>()?,
    };
    Ok((lens, meta))
}

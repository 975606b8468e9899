//! Activations at one hook point over a corpus, with the token and context of each, stored as
//! safetensors (`x`, `window`, `pos`) plus a JSON index (the token windows, the hook point and the
//! base model) so they can be reused and interpreted later.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::kmeans::reservoir;
use crate::artifact::{self, BaseModel, Header, Kind};
use crate::error::{EngineError, Result};
use crate::hooks::HookPoint;
use crate::model::{Batch, LoadedModel, PadSide};

/// The activations artifact.
pub const KIND: Kind = Kind {
    format: "neoscope-activations",
    version: 1,
    what: "activation file",
};

/// How to collect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectConfig {
    /// Where in the model.
    pub point: HookPoint,
    /// Tokens per window the corpus is cut into.
    pub window: usize,
    /// Windows per forward pass.
    pub batch: usize,
    /// Keep at most this many activations (a seeded uniform sample).
    pub max: Option<usize>,
    /// Seed of that sample.
    pub seed: u64,
}

/// Activations with where each came from.
#[derive(Debug, Clone)]
pub struct Activations {
    /// Hook point.
    pub point: HookPoint,
    /// (N, D), f32.
    pub x: Tensor,
    /// Token windows of the corpus.
    pub windows: Vec<Vec<u32>>,
    /// (window, position) of every row.
    pub index: Vec<(u32, u32)>,
}

impl Activations {
    /// Token id of row `i`.
    pub fn token(&self, i: usize) -> u32 {
        let (w, p) = self.index[i];
        self.windows[w as usize][p as usize]
    }

    /// Token id following row `i`, if any in its window.
    pub fn next_token(&self, i: usize) -> Option<u32> {
        let (w, p) = self.index[i];
        self.windows[w as usize].get(p as usize + 1).copied()
    }

    /// Up to `before` tokens of context ending at row `i`'s token (inclusive).
    pub fn context(&self, i: usize, before: usize) -> &[u32] {
        let (w, p) = self.index[i];
        let p = p as usize;
        &self.windows[w as usize][p.saturating_sub(before)..=p]
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// Runs the model over the corpus and keeps the activations at `cfg.point`, skipping a BOS token.
pub fn collect(
    m: &LoadedModel,
    corpus: &str,
    cfg: &CollectConfig,
    progress: &mut dyn FnMut(f32) -> bool,
) -> Result<Activations> {
    m.llama.resolve(
        &crate::hooks::HookSpec {
            capture: vec![cfg.point],
            interventions: Vec::new(),
        },
        1,
        1,
    )?;
    let windows = crate::tuned::windows(m, corpus, cfg.window)?;
    let bos = m.tokenizer.bos_id;
    let dev = m.llama.device();
    let mut parts = Vec::new();
    let mut index = Vec::new();
    for (bi, chunk) in windows.chunks(cfg.batch.max(1)).enumerate() {
        let f = (bi * cfg.batch.max(1)) as f32 / windows.len() as f32;
        if !progress(f) {
            return Err(EngineError::Cancelled);
        }
        let batch = Batch::new(chunk, PadSide::Right, dev)?;
        let (_, caps) =
            m.llama
                .hidden_embeds(m.llama.embed_ids(&batch)?, &batch, &[cfg.point], &[], None)?;
        let h = caps
            .get(&cfg.point)
            .ok_or_else(|| EngineError::Invalid(format!("nothing captured at {}", cfg.point)))?;
        let d = h.dim(2)?;
        let mut pick = Vec::new();
        for (r, row) in chunk.iter().enumerate() {
            for (p, t) in row.iter().enumerate() {
                if Some(*t) == bos {
                    continue;
                }
                pick.push(u32::try_from(r * batch.width() + p).unwrap_or(0));
                let w = bi * cfg.batch.max(1) + r;
                index.push((u32::try_from(w).unwrap_or(0), u32::try_from(p).unwrap_or(0)));
            }
        }
        let flat = h.reshape((chunk.len() * batch.width(), d))?;
        parts.push(flat.index_select(&Tensor::from_vec(pick.clone(), pick.len(), dev)?, 0)?);
    }
    let mut x = Tensor::cat(&parts, 0)?.to_dtype(DType::F32)?;
    if let Some(max) = cfg.max
        && max < index.len()
    {
        let keep = reservoir(index.len(), max, &mut StdRng::seed_from_u64(cfg.seed));
        let ids: Vec<u32> = keep
            .iter()
            .map(|i| u32::try_from(*i).unwrap_or(0))
            .collect();
        x = x.index_select(&Tensor::from_vec(ids, keep.len(), dev)?, 0)?;
        index = keep.iter().map(|i| index[*i]).collect();
    }
    progress(1.0);
    Ok(Activations {
        point: cfg.point,
        x,
        windows,
        index,
    })
}

/// The JSON half of an activation file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationsMeta {
    /// Format, version, base model.
    #[serde(flatten)]
    pub header: Header,
    /// Hook point.
    pub point: HookPoint,
    /// Rows.
    pub count: usize,
    /// Width.
    pub d_model: usize,
    /// The token windows (contexts).
    pub windows: Vec<Vec<u32>>,
}

/// Saves activations (`PATH.safetensors` + `PATH.json`), atomically.
pub fn save(path: &Path, a: &Activations, base: &BaseModel) -> Result<PathBuf> {
    let cpu = Device::Cpu;
    let n = a.len();
    let (w, p): (Vec<u32>, Vec<u32>) = a.index.iter().copied().unzip();
    let tensors = [
        ("x".to_owned(), a.x.clone()),
        ("window".to_owned(), Tensor::from_vec(w, n, &cpu)?),
        ("pos".to_owned(), Tensor::from_vec(p, n, &cpu)?),
    ];
    let meta = ActivationsMeta {
        header: KIND.header(base),
        point: a.point,
        count: n,
        d_model: a.x.dim(1)?,
        windows: a.windows.clone(),
    };
    artifact::save(path, &tensors, &meta)
}

/// Loads activations, refusing a file made from another model.
pub fn load(path: &Path, base: &BaseModel, device: &Device) -> Result<Activations> {
    let (meta, t): (ActivationsMeta, _) = artifact::load(path, &KIND, base, device)?;
    let n = meta.count;
    let x = t.get("x", Some(&[n, meta.d_model]))?;
    let w: Vec<u32> = t.get("window", Some(&[n]))?.to_vec1()?;
    let p: Vec<u32> = t.get("pos", Some(&[n]))?.to_vec1()?;
    let index: Vec<(u32, u32)> = w.into_iter().zip(p).collect();
    for (i, (wi, pi)) in index.iter().enumerate() {
        if meta
            .windows
            .get(*wi as usize)
            .is_none_or(|win| *pi as usize >= win.len())
        {
            return Err(EngineError::bad_file(
                t.path(),
                format!("row {i} points outside the stored windows"),
            ));
        }
    }
    Ok(Activations {
        point: meta.point,
        x,
        windows: meta.windows,
        index,
    })
}

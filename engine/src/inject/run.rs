//! An injection run on disk, a folder that holds everything needed to resume or report:
//!
//! - `run.json`: format, version, base model, settings, the new and the already-known forms,
//!   how each form was initialised, where the inputs came from;
//! - `data.safetensors`: the initial rows and the tokenized train/validation blocks (so a resume
//!   needs none of the input files);
//! - `checkpoints/step-NNNNNN.safetensors`: rows, Adam moments and, in the file's metadata, the
//!   step and loss curves — one file per checkpoint, written atomically, the last three kept.
//!
//! Opening a run made for another base model is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::train::{Blocks, InjectConfig, TrainState};
use super::vocab::FormInit;
use crate::error::{EngineError, Result};
use crate::words::file::{BaseModel, check_base, check_header, write_atomic};

/// Format name of `run.json`.
pub const FORMAT: &str = "neoscope-injection";
/// Current version.
pub const VERSION: u32 = 1;
/// Checkpoints kept.
const KEEP: usize = 3;

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Format name.
    pub format: String,
    /// Version.
    pub version: u32,
    /// The base model.
    pub base_model: BaseModel,
    /// Settings.
    pub config: InjectConfig,
    /// Forms given new rows, in id order.
    pub forms: Vec<String>,
    /// Forms left out because the base vocabulary has them as one token.
    pub known: Vec<String>,
    /// How each new form was initialised.
    pub inits: Vec<FormInit>,
    /// Input files (for the record).
    pub sources: Vec<String>,
    /// Tokens in the corpus.
    pub corpus_tokens: usize,
    /// SHA-256 of the base embedding matrix at the start (the report checks it is unchanged).
    pub base_rows_sha256: String,
}

fn serr(path: &Path, e: impl std::fmt::Display) -> EngineError {
    EngineError::Invalid(format!("{}: {e}", path.display()))
}

fn save_tensors(path: &Path, t: &[(&str, &Tensor)], meta: Option<String>) -> Result<()> {
    let cpu: Vec<(String, Tensor)> = t
        .iter()
        .map(|(k, v)| Ok(((*k).to_owned(), v.to_device(&Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let info = meta.map(|m| HashMap::from([("state".to_owned(), m)]));
    let bytes = safetensors::serialize(cpu.iter().map(|(k, v)| (k.clone(), v)), info)
        .map_err(|e| serr(path, e))?;
    Ok(write_atomic(path, &bytes)?)
}

fn load_tensors(path: &Path, dev: &Device) -> Result<(HashMap<String, Tensor>, Option<String>)> {
    let bytes = std::fs::read(path).map_err(|e| EngineError::io(path, e))?;
    let (_, md) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| serr(path, e))?;
    let state = md.metadata().as_ref().and_then(|m| m.get("state").cloned());
    let t = candle_core::safetensors::load_buffer(&bytes, dev).map_err(|e| serr(path, e))?;
    Ok((t, state))
}

fn take(t: &mut HashMap<String, Tensor>, path: &Path, k: &str) -> Result<Tensor> {
    t.remove(k)
        .ok_or_else(|| serr(path, format!("missing tensor `{k}`")))
}

fn blocks_tensor(b: &[Vec<u32>], len: usize) -> Result<Tensor> {
    let flat: Vec<u32> = b.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (b.len(), len), &Device::Cpu)?)
}

/// Creates a run folder (refusing one that already holds a run).
pub fn create(dir: &Path, meta: &RunMeta, init: &Tensor, blocks: &Blocks) -> Result<()> {
    let json = dir.join("run.json");
    if json.exists() {
        return Err(EngineError::Invalid(format!(
            "{} already holds a run: resume it, or choose another folder",
            dir.display()
        )));
    }
    let len = meta.config.block_len;
    save_tensors(
        &dir.join("data.safetensors"),
        &[
            ("init", init),
            ("train", &blocks_tensor(&blocks.train, len)?),
            ("val", &blocks_tensor(&blocks.val, len)?),
        ],
        None,
    )?;
    write_meta(dir, meta)
}

/// Writes `run.json` (atomically).
pub fn write_meta(dir: &Path, meta: &RunMeta) -> Result<()> {
    let json = dir.join("run.json");
    let text = serde_json::to_vec_pretty(meta).map_err(|e| serr(&json, e))?;
    Ok(write_atomic(&json, &text)?)
}

/// Opens a run: metadata, initial rows and blocks.
pub fn open(dir: &Path, base: &BaseModel, dev: &Device) -> Result<(RunMeta, Tensor, Blocks)> {
    let json = dir.join("run.json");
    let text = std::fs::read_to_string(&json).map_err(|e| EngineError::io(&json, e))?;
    let meta: RunMeta = serde_json::from_str(&text).map_err(|e| serr(&json, e))?;
    check_header(&json, &meta.format, meta.version, FORMAT, VERSION)?;
    check_base(&json, &meta.base_model, base)?;
    let data = dir.join("data.safetensors");
    let (mut t, _) = load_tensors(&data, dev)?;
    let init = take(&mut t, &data, "init")?;
    if init.dims() != [meta.forms.len(), base.d_model] {
        return Err(serr(
            &data,
            format!(
                "initial rows have shape {:?}, expected [{}, {}]",
                init.dims(),
                meta.forms.len(),
                base.d_model
            ),
        ));
    }
    let rows = |k: &str, t: &mut HashMap<String, Tensor>| -> Result<Vec<Vec<u32>>> {
        Ok(take(t, &data, k)?.to_dtype(DType::U32)?.to_vec2()?)
    };
    let blocks = Blocks {
        train: rows("train", &mut t)?,
        val: rows("val", &mut t)?,
    };
    Ok((meta, init, blocks))
}

/// The step numbers of the checkpoints in a run, ascending.
pub fn checkpoints(dir: &Path) -> Result<Vec<usize>> {
    let cdir = dir.join("checkpoints");
    let Ok(rd) = std::fs::read_dir(&cdir) else {
        return Ok(Vec::new());
    };
    let mut steps: Vec<usize> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("step-")?
                .strip_suffix(".safetensors")?
                .parse()
                .ok()
        })
        .collect();
    steps.sort_unstable();
    Ok(steps)
}

fn checkpoint_path(dir: &Path, step: usize) -> PathBuf {
    dir.join("checkpoints")
        .join(format!("step-{step:06}.safetensors"))
}

#[derive(Serialize, Deserialize)]
struct Curves {
    step: usize,
    losses: Vec<f32>,
    val: Vec<(usize, f32)>,
}

/// Writes a checkpoint of `state` and prunes old ones.
pub fn save_checkpoint(dir: &Path, state: &TrainState) -> Result<PathBuf> {
    let path = checkpoint_path(dir, state.step);
    let curves = Curves {
        step: state.step,
        losses: state.losses.clone(),
        val: state.val.clone(),
    };
    let meta = serde_json::to_string(&curves).map_err(|e| serr(&path, e))?;
    save_tensors(
        &path,
        &[
            ("rows", &state.rows),
            ("adam_m", &state.m),
            ("adam_v", &state.v),
        ],
        Some(meta),
    )?;
    let all = checkpoints(dir)?;
    for old in all.iter().take(all.len().saturating_sub(KEEP)) {
        // Pruning is best effort: a left-over old checkpoint loses nothing.
        let _ = std::fs::remove_file(checkpoint_path(dir, *old));
    }
    Ok(path)
}

/// Loads the checkpoint of `step` (the latest when `None`).
pub fn load_checkpoint(dir: &Path, step: Option<usize>, dev: &Device) -> Result<TrainState> {
    let step = match step {
        Some(s) => s,
        None => *checkpoints(dir)?.last().ok_or_else(|| {
            EngineError::Invalid(format!("{} has no checkpoint yet", dir.display()))
        })?,
    };
    let path = checkpoint_path(dir, step);
    let (mut t, meta) = load_tensors(&path, dev)?;
    let meta = meta.ok_or_else(|| serr(&path, "no training state in the metadata"))?;
    let c: Curves = serde_json::from_str(&meta).map_err(|e| serr(&path, e))?;
    Ok(TrainState {
        step: c.step,
        rows: take(&mut t, &path, "rows")?,
        m: take(&mut t, &path, "adam_m")?,
        v: take(&mut t, &path, "adam_v")?,
        losses: c.losses,
        val: c.val,
    })
}

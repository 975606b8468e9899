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
use crate::artifact::{self, BaseModel, Header, Kind};
use crate::error::{EngineError, Result};

/// The injection-run artifact (`run.json` + `data.safetensors`).
pub const KIND: Kind = Kind {
    format: "neoscope-injection",
    version: 1,
    what: "injection run",
};
/// Checkpoints kept.
const KEEP: usize = 3;

/// The metadata key of a checkpoint's content hash.
const CONTENT_SHA256: &str = "content_sha256";

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMeta {
    /// Format, version, base model.
    #[serde(flatten)]
    pub header: Header,
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
    /// SHA-256 of `data.safetensors` (initial rows and token blocks), checked when the run is
    /// opened; absent in runs written before it was recorded.
    #[serde(default)]
    pub data_sha256: Option<String>,
}

fn blocks_tensor(b: &[Vec<u32>], len: usize) -> Result<Tensor> {
    let flat: Vec<u32> = b.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (b.len(), len), &Device::Cpu)?)
}

/// Creates a run folder (refusing one that already holds a run).
pub fn create(dir: &Path, meta: &mut RunMeta, init: &Tensor, blocks: &Blocks) -> Result<()> {
    let json = dir.join("run.json");
    if json.exists() {
        return Err(EngineError::Invalid(format!(
            "{} already holds a run: resume it, or choose another folder",
            dir.display()
        )));
    }
    let len = meta.config.block_len;
    let sha = artifact::write_tensors(
        &dir.join("data.safetensors"),
        &[
            ("init".to_owned(), init.clone()),
            ("train".to_owned(), blocks_tensor(&blocks.train, len)?),
            ("val".to_owned(), blocks_tensor(&blocks.val, len)?),
        ],
        None,
    )?;
    meta.data_sha256 = Some(sha);
    write_meta(dir, meta)
}

/// Writes `run.json` (atomically).
pub fn write_meta(dir: &Path, meta: &RunMeta) -> Result<()> {
    artifact::write_json(&dir.join("run.json"), meta)
}

/// Opens a run: metadata, initial rows and blocks.
pub fn open(dir: &Path, base: &BaseModel, dev: &Device) -> Result<(RunMeta, Tensor, Blocks)> {
    let meta: RunMeta = artifact::read_json(&dir.join("run.json"), &KIND, base)?;
    let data = dir.join("data.safetensors");
    let bytes = std::fs::read(&data).map_err(|e| EngineError::io(&data, e))?;
    if let Some(want) = &meta.data_sha256
        && artifact::sha256_hex(&bytes) != *want
    {
        return Err(EngineError::bad_file(
            &data,
            "does not match run.json (its SHA-256 differs): the run's data was changed",
        ));
    }
    let t = artifact::parse_tensors(&data, &bytes, dev)?;
    let init = t.get("init", None)?;
    if init.dims() != [meta.forms.len(), base.d_model] {
        return Err(EngineError::bad_file(
            dir.join("run.json"),
            format!(
                "lists {} forms of width {}, but data.safetensors holds initial rows of shape {:?}",
                meta.forms.len(),
                base.d_model,
                init.dims()
            ),
        ));
    }
    let len = meta.config.block_len;
    let rows = |k: &str| -> Result<Vec<Vec<u32>>> {
        let b = t.get(k, None)?;
        if b.rank() != 2 || b.dim(1)? != len {
            return Err(EngineError::bad_file(
                &data,
                format!("`{k}` has shape {:?}, not blocks of {len} tokens", b.dims()),
            ));
        }
        Ok(b.to_dtype(DType::U32)?.to_vec2()?)
    };
    let blocks = Blocks {
        train: rows("train")?,
        val: rows("val")?,
    };
    Ok((meta, init, blocks))
}

/// The step numbers of the checkpoints in a run, ascending.
pub fn checkpoints(dir: &Path) -> Result<Vec<usize>> {
    let steps = crate::artifact::numbered(&dir.join("checkpoints"), "step-", ".safetensors");
    Ok(steps)
}

fn checkpoint_path(dir: &Path, step: usize) -> PathBuf {
    dir.join("checkpoints")
        .join(format!("step-{step:06}.safetensors"))
}

/// The checkpoint metadata key that holds [`Curves`].
const STATE: &str = "state";

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
    let curves = serde_json::to_string(&curves)
        .map_err(|e| EngineError::bad_file(&path, format!("serialising: {e}")))?;
    artifact::write_tensors(
        &path,
        &[
            ("rows".to_owned(), state.rows.clone()),
            ("adam_m".to_owned(), state.m.clone()),
            ("adam_v".to_owned(), state.v.clone()),
        ],
        Some(HashMap::from([
            (STATE.to_owned(), curves),
            (
                CONTENT_SHA256.to_owned(),
                artifact::content_sha256(&[
                    ("rows", &state.rows),
                    ("adam_m", &state.m),
                    ("adam_v", &state.v),
                ])?,
            ),
        ])),
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
    let t = artifact::read_tensors(&path, dev)?;
    let c: Curves = serde_json::from_str(t.metadata(STATE)?)
        .map_err(|e| EngineError::bad_file(&path, format!("training state: {e}")))?;
    let (rows, m, v) = (
        t.get("rows", None)?,
        t.get("adam_m", None)?,
        t.get("adam_v", None)?,
    );
    if let Ok(want) = t.metadata(CONTENT_SHA256)
        && artifact::content_sha256(&[("rows", &rows), ("adam_m", &m), ("adam_v", &v)])? != want
    {
        return Err(EngineError::bad_file(
            &path,
            "is damaged (its contents differ from the SHA-256 recorded in it); delete it to \
             resume from the checkpoint before",
        ));
    }
    if rows.dims() != m.dims() || rows.dims() != v.dims() {
        return Err(EngineError::bad_file(
            &path,
            "rows and optimiser moments differ in shape",
        ));
    }
    Ok(TrainState {
        step: c.step,
        rows,
        m,
        v,
        losses: c.losses,
        val: c.val,
    })
}

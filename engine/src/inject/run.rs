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

use super::train::{Blocks, InjectConfig, InjectConfigExt, TrainState};
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

impl RunMeta {
    /// Whether the run's checkpoints record a content hash. It came in with the data hash, so a
    /// run that records one records the other.
    pub fn hashed(&self) -> bool {
        self.data_sha256.is_some()
    }
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
    meta.config
        .check()
        .map_err(|e| EngineError::bad_file(dir.join("run.json"), e.to_string()))?;
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
                format!(
                    "`{k}` has shape {:?}, not blocks of the {len} tokens run.json gives",
                    b.dims()
                ),
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

/// A checkpoint's step and curves (its metadata).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Curves {
    /// Steps done.
    pub step: usize,
    /// Training loss of every step.
    pub losses: Vec<f32>,
    /// (step, validation loss).
    pub val: Vec<(usize, f32)>,
}

/// Writes the checkpoint `checkpoints/step-N.safetensors` of `dir` (tensors, curves and a
/// content hash) and prunes all but the last three. Every phase's checkpoints are written here.
pub fn save_state(dir: &Path, curves: &Curves, tensors: &[(String, Tensor)]) -> Result<PathBuf> {
    let path = checkpoint_path(dir, curves.step);
    let json = serde_json::to_string(curves)
        .map_err(|e| EngineError::bad_file(&path, format!("serialising: {e}")))?;
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    artifact::write_tensors(
        &path,
        tensors,
        Some(HashMap::from([
            (STATE.to_owned(), json),
            (CONTENT_SHA256.to_owned(), artifact::content_sha256(&named)?),
        ])),
    )?;
    let all = checkpoints(dir)?;
    for old in all.iter().take(all.len().saturating_sub(KEEP)) {
        // Pruning is best effort: a left-over old checkpoint loses nothing.
        let _ = std::fs::remove_file(checkpoint_path(dir, *old));
    }
    Ok(path)
}

/// Reads the checkpoint of `step` (the latest when `None`) of `dir`: its curves and the tensors
/// `names`, checked against the content hash recorded in it. `hashed`: the run was written by a
/// version that records the hash, so a checkpoint without one is damaged (its key was hit);
/// only runs from before the hash existed may lack it.
pub fn load_state(
    dir: &Path,
    step: Option<usize>,
    names: &[String],
    hashed: bool,
    dev: &Device,
) -> Result<(Curves, Vec<Tensor>)> {
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
    let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
    want.sort_unstable();
    if t.names() != want {
        return Err(EngineError::bad_file(
            &path,
            format!(
                "holds {} tensors where the phase's settings describe {}: the checkpoint or the \
                 settings file beside it was changed",
                t.names().len(),
                want.len()
            ),
        ));
    }
    let tensors: Vec<Tensor> = names
        .iter()
        .map(|n| t.get(n, None))
        .collect::<Result<_>>()?;
    let named: Vec<(&str, &Tensor)> = names.iter().map(String::as_str).zip(&tensors).collect();
    let damaged = match t.metadata(CONTENT_SHA256) {
        Ok(want) => artifact::content_sha256(&named)? != want,
        Err(_) => hashed,
    };
    if damaged {
        return Err(EngineError::bad_file(
            &path,
            "is damaged (its contents differ from the SHA-256 recorded in it, or that record is \
             gone); delete it to resume from the checkpoint before",
        ));
    }
    Ok((c, tensors))
}

/// The names of a phase-1 checkpoint's tensors.
fn row_names() -> Vec<String> {
    ["rows", "adam_m", "adam_v"].map(str::to_owned).to_vec()
}

/// Writes a checkpoint of `state` and prunes old ones.
pub fn save_checkpoint(dir: &Path, state: &TrainState) -> Result<PathBuf> {
    let curves = Curves {
        step: state.step,
        losses: state.losses.clone(),
        val: state.val.clone(),
    };
    let tensors: Vec<(String, Tensor)> = row_names()
        .into_iter()
        .zip([state.rows.clone(), state.m.clone(), state.v.clone()])
        .collect();
    save_state(dir, &curves, &tensors)
}

/// Loads the checkpoint of `step` (the latest when `None`); `hashed` says whether the run's
/// checkpoints record a content hash ([`RunMeta::hashed`]), a missing one then counting as damage.
pub fn load_checkpoint(
    dir: &Path,
    hashed: bool,
    step: Option<usize>,
    dev: &Device,
) -> Result<TrainState> {
    let (c, t) = load_state(dir, step, &row_names(), hashed, dev)?;
    let [rows, m, v]: [Tensor; 3] = t
        .try_into()
        .map_err(|_| EngineError::Invalid("internal: three tensors expected".into()))?;
    if rows.dims() != m.dims() || rows.dims() != v.dims() {
        return Err(EngineError::bad_file(
            checkpoint_path(dir, c.step),
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

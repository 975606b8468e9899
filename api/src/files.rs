//! Atomic file writes, shared by the engine (artifacts) and the front ends (exports).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{ApiError, ApiResult};

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> ApiResult<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| ApiError::io(&dir, &e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".neoscope-")
        .suffix(".tmp")
        .tempfile_in(&dir)
        .map_err(|e| ApiError::io(&dir, &e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| ApiError::io(tmp.path(), &e))?;
    tmp.persist(path)
        .map_err(|e| ApiError::io(path, &e.error))?;
    Ok(())
}

/// The header every Neoscope artifact's JSON begins with: which format, which version of it,
/// and the base model it belongs to. Artifact metadata structs embed it with `#[serde(flatten)]`,
/// so the three fields sit at the top level of the JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Header {
    /// Format name, e.g. `neoscope-words`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// The model the artifact was made for.
    pub base_model: crate::model::BaseModel,
}

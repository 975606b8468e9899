//! Atomic file writes, shared by the engine (artifacts) and the front ends (exports).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{ApiError, ApiResult, ErrorKind};

/// A temporary file older than this was left by a save that was killed; it is removed.
const STALE_TEMPORARY: Duration = Duration::from_secs(3600);

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temporary_in(dir: &Path) -> ApiResult<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(".neoscope-")
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| ApiError::io(dir, &e))
}

/// Removes this program's temporary files in `dir` that are older than an hour (a killed save
/// leaves one behind); younger ones may belong to a save in progress and stay.
fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let stale = name.starts_with(".neoscope-")
            && name.ends_with(".tmp")
            && e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMPORARY);
        if stale {
            // Best effort: a file another process removes first is no error.
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The two files of an artifact named by `path`: the stem is kept as given (`words/base.v2` →
/// `words/base.v2.json`), only a trailing `.json` or `.safetensors` naming one of the pair is
/// taken off. Returns (tensors, JSON).
pub fn artifact_paths(path: &Path) -> (PathBuf, PathBuf) {
    let stem = match path.extension().and_then(|e| e.to_str()) {
        Some("json" | "safetensors") => path.with_extension(""),
        _ => path.to_path_buf(),
    };
    let with = |ext: &str| {
        let mut s = stem.clone().into_os_string();
        s.push(".");
        s.push(ext);
        PathBuf::from(s)
    };
    (with("safetensors"), with("json"))
}

/// Before a job that ends by writing `path` (an artifact's stem when `pair`): refuses to replace
/// an existing file unless `force`, and checks that its folder can be written, so that no work
/// is done only to be lost at the save.
pub fn check_output(path: &Path, pair: bool, force: bool) -> ApiResult<()> {
    let files = if pair {
        let (t, j) = artifact_paths(path);
        vec![t, j]
    } else {
        vec![path.to_path_buf()]
    };
    if !force && let Some(f) = files.iter().find(|f| f.exists()) {
        return Err(ApiError::new(
            ErrorKind::BadInput,
            format!("{} exists; pass --force to replace it", f.display()),
        ));
    }
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(|e| ApiError::io(&dir, &e))?;
    temporary_in(&dir).map(drop)
}

/// Reads a UTF-8 text file. Bytes that are not UTF-8 are reported with the file, line and
/// column of the first one (`corpus.txt:12:7: not UTF-8 text (byte 0xff) …`).
pub fn read_text(path: &Path) -> ApiResult<String> {
    let bytes = std::fs::read(path).map_err(|e| ApiError::io(path, &e))?;
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let at = e.utf8_error().valid_up_to();
        let before = &bytes[..at];
        let line = before.iter().filter(|b| **b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        // The column counts characters, as editors do (the line so far is valid UTF-8).
        let col = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        ApiError::new(
            ErrorKind::BadInput,
            format!(
                "{}:{line}:{col}: not UTF-8 text (byte 0x{:02x}); save the file as UTF-8",
                path.display(),
                bytes[at]
            ),
        )
    })
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, synced, renamed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> ApiResult<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(&dir).map_err(|e| ApiError::io(&dir, &e))?;
    remove_stale_temporaries(&dir);
    let mut tmp = temporary_in(&dir)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_output_is_refused_without_force_and_an_unwritable_one_always() -> ApiResult<()> {
        let dir = tempfile::tempdir().map_err(|e| ApiError::io(Path::new("."), &e))?;
        let stem = dir.path().join("words/base.v2");
        check_output(&stem, true, false)?;
        write_atomic(&stem.with_extension("v2.json"), b"{}")?;
        let e = check_output(&stem, true, false).unwrap_err().message;
        assert!(
            e.contains("base.v2.json exists") && e.contains("--force"),
            "{e}"
        );
        check_output(&stem, true, true)?;
        // A folder that cannot be made: its "parent" is a file.
        let file = dir.path().join("plain");
        write_atomic(&file, b"x")?;
        let e = check_output(&file.join("out.csv"), false, true).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Io, "{e}");
        Ok(())
    }

    #[test]
    fn text_that_is_not_utf8_is_reported_with_file_line_and_column() -> ApiResult<()> {
        let dir = tempfile::tempdir().map_err(|e| ApiError::io(Path::new("."), &e))?;
        let f = dir.path().join("c.txt");
        write_atomic(&f, b"first line\nsecond \xc3\xa9t\xff\n")?;
        let e = read_text(&f).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadInput);
        assert!(
            e.message
                .ends_with("c.txt:2:10: not UTF-8 text (byte 0xff); save the file as UTF-8"),
            "{e}"
        );
        write_atomic(&f, "ok é\n".as_bytes())?;
        assert_eq!(read_text(&f)?, "ok é\n");
        Ok(())
    }

    #[test]
    fn a_save_removes_temporaries_left_by_killed_saves_but_not_young_ones() -> ApiResult<()> {
        let dir = tempfile::tempdir().map_err(|e| ApiError::io(Path::new("."), &e))?;
        let old = dir.path().join(".neoscope-killed.tmp");
        let young = dir.path().join(".neoscope-running.tmp");
        let other = dir.path().join("notes.tmp");
        for f in [&old, &young, &other] {
            std::fs::write(f, b"partial").map_err(|e| ApiError::io(f, &e))?;
        }
        let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
        for f in [&old, &other] {
            std::fs::File::options()
                .write(true)
                .open(f)
                .and_then(|h| h.set_modified(two_hours_ago))
                .map_err(|e| ApiError::io(f, &e))?;
        }
        write_atomic(&dir.path().join("result.json"), b"{}")?;
        assert!(!old.exists(), "a stale temporary stays");
        assert!(young.exists() && other.exists());
        Ok(())
    }
}

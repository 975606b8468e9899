//! `neoscope inject compare`: runs side by side in one table, from their reports (no model
//! needed); the table itself is `crate::runs`, which the Injection panel shows too.

use std::path::PathBuf;

use anyhow::{Result, bail};
use serde_json::json;

use super::emit;
use crate::runs;

/// Runs `inject compare`.
pub fn run(json_mode: bool, dirs: &[PathBuf]) -> Result<()> {
    if dirs.len() < 2 {
        bail!("inject compare: name at least two run folders");
    }
    let rows: Vec<runs::RunRow> = dirs.iter().map(|d| runs::row(d)).collect::<Result<_>>()?;
    let t = runs::markdown(&rows);
    emit(json_mode, &json!({"runs": rows, "table": t}), t.trim_end())
}

//! `neoscope inject compare`: runs side by side in one table, from their reports (no model
//! needed): initialisation, forms, steps, held-out loss and perplexity before training and after
//! each phase, drift, norms and isotropy of the new rows.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use neoscope_api::inject::GeometryReport;
use serde_json::json;

use super::emit;

/// One run's row of the table.
fn row(dir: &Path) -> Result<serde_json::Value> {
    let rp = dir.join("report.json");
    let text = std::fs::read_to_string(&rp).with_context(|| {
        format!(
            "{}: no report (write it with `neoscope inject report {}`)",
            rp.display(),
            dir.display()
        )
    })?;
    let r: GeometryReport =
        serde_json::from_str(&text).with_context(|| format!("{}: not a report", rp.display()))?;
    let run: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("run.json"))
            .with_context(|| format!("{}: not a run folder", dir.display()))?,
    )
    .with_context(|| format!("{}: run.json is not JSON", dir.display()))?;
    let init = match &run["config"]["init"] {
        serde_json::Value::String(s) => s.to_lowercase(),
        v if v.get("Compositional").is_some() => "compositional".to_owned(),
        _ => "?".to_owned(),
    };
    let score = |name: &str| r.phases.iter().find(|p| p.phase.starts_with(name));
    Ok(json!({
        "run": dir.display().to_string(),
        "base_model": r.header.base_model.name,
        "init": init,
        "forms": r.n_new,
        "steps": r.steps,
        "initial": score("initial"),
        "phase1": score("phase 1"),
        "phase2": score("phase 2"),
        "phase3": score("phase 3"),
        "drift_cos_mean": r.drift.new.mean,
        "norm_new_mean": r.norms.new.mean,
        "norm_base_mean": r.norms.base.mean,
        "isotropy_new": r.isotropy.new,
    }))
}

/// Runs `inject compare`.
pub fn run(json_mode: bool, dirs: &[PathBuf]) -> Result<()> {
    if dirs.len() < 2 {
        bail!("inject compare: name at least two run folders");
    }
    let rows: Vec<serde_json::Value> = dirs.iter().map(|d| row(d)).collect::<Result<_>>()?;
    let cell = |v: &serde_json::Value| match (v["val_loss"].as_f64(), v["perplexity"].as_f64()) {
        (Some(l), Some(p)) => format!("{l:.3} ({p:.1})"),
        _ => "–".to_owned(),
    };
    let mut t = String::from(
        "| run | init | forms | steps | held-out loss (ppl): start | phase 1 | phase 2 | phase 3 | drift \
         cos | norm new / base | isotropy new |\n| --- | --- | --- | --- | --- | --- | --- | --- \
         | --- | --- | --- |\n",
    );
    for r in &rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.3} / {:.3} | {:.3} |",
            r["run"].as_str().unwrap_or("?"),
            r["init"].as_str().unwrap_or("?"),
            r["forms"],
            r["steps"],
            cell(&r["initial"]),
            cell(&r["phase1"]),
            cell(&r["phase2"]),
            cell(&r["phase3"]),
            r["drift_cos_mean"].as_f64().unwrap_or(f64::NAN),
            r["norm_new_mean"].as_f64().unwrap_or(f64::NAN),
            r["norm_base_mean"].as_f64().unwrap_or(f64::NAN),
            r["isotropy_new"].as_f64().unwrap_or(f64::NAN),
        );
    }
    emit(json_mode, &json!({"runs": rows, "table": t}), t.trim_end())
}

//! Injection runs side by side, from their reports (no model needed): initialisation, forms,
//! steps, held-out loss and perplexity before training and after each phase, drift, norms and
//! isotropy of the new rows. `inject compare` prints it; the Injection panel shows it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use neoscope_api::inject::{GeometryReport, InitKind, PhaseScore};
use neoscope_engine::inject::run::RunMeta;
use serde::{Deserialize, Serialize};

/// One run's row of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRow {
    /// The run folder.
    pub run: String,
    /// The model it was trained on.
    pub base_model: String,
    /// Initialisation (compositional, spherical, …).
    pub init: String,
    /// New forms.
    pub forms: usize,
    /// Phase-1 steps.
    pub steps: usize,
    /// Held-out score before training.
    pub initial: Option<PhaseScore>,
    /// After phase 1 (embeddings).
    pub phase1: Option<PhaseScore>,
    /// After phase 2 (LoRA).
    pub phase2: Option<PhaseScore>,
    /// After phase 3 (alignment).
    pub phase3: Option<PhaseScore>,
    /// Mean cosine between each new row and its initial one.
    pub drift_cos_mean: f64,
    /// Mean norm of the new rows.
    pub norm_new_mean: f64,
    /// Mean norm of the base rows.
    pub norm_base_mean: f64,
    /// Isotropy of the new rows.
    pub isotropy_new: f64,
}

/// Reads a run folder's `report.json` and `run.json` into its row, naming the file at fault.
pub fn row(dir: &Path) -> Result<RunRow> {
    let rp = dir.join("report.json");
    let text = std::fs::read_to_string(&rp).with_context(|| {
        format!(
            "{}: no report (write it with `neoscope inject report {}` or \"Write report\")",
            rp.display(),
            dir.display()
        )
    })?;
    let r: GeometryReport =
        serde_json::from_str(&text).with_context(|| format!("{}: not a report", rp.display()))?;
    let run: RunMeta = serde_json::from_str(
        &std::fs::read_to_string(dir.join("run.json"))
            .with_context(|| format!("{}: not a run folder", dir.display()))?,
    )
    .with_context(|| format!("{}: run.json is not an injection run", dir.display()))?;
    let init = match run.config.init {
        InitKind::Compositional { .. } => "compositional",
        InitKind::Spherical => "spherical",
    }
    .to_owned();
    let score = |name: &str| r.phases.iter().find(|p| p.phase.starts_with(name)).cloned();
    Ok(RunRow {
        run: dir.display().to_string(),
        base_model: r.header.base_model.name.clone(),
        init,
        forms: r.n_new,
        steps: r.steps,
        initial: score("initial"),
        phase1: score("phase 1"),
        phase2: score("phase 2"),
        phase3: score("phase 3"),
        drift_cos_mean: r.drift.new.mean,
        norm_new_mean: r.norms.new.mean,
        norm_base_mean: r.norms.base.mean,
        isotropy_new: r.isotropy.new,
    })
}

/// A score as "loss (perplexity)", or a dash when the phase was not run.
pub fn cell(s: Option<&PhaseScore>) -> String {
    s.map_or_else(
        || "–".to_owned(),
        |p| format!("{:.3} ({:.1})", p.val_loss, p.perplexity),
    )
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[RunRow]) -> String {
    let mut t = String::from(
        "| run | init | forms | steps | held-out loss (ppl): start | phase 1 | phase 2 | phase 3 | drift \
         cos | norm new / base | isotropy new |\n| --- | --- | --- | --- | --- | --- | --- | --- \
         | --- | --- | --- |\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.3} / {:.3} | {:.3} |",
            r.run,
            r.init,
            r.forms,
            r.steps,
            cell(r.initial.as_ref()),
            cell(r.phase1.as_ref()),
            cell(r.phase2.as_ref()),
            cell(r.phase3.as_ref()),
            r.drift_cos_mean,
            r.norm_new_mean,
            r.norm_base_mean,
            r.isotropy_new,
        );
    }
    t
}

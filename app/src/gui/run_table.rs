//! The Injection panel's table of runs side by side (e.g. compositional vs spherical init, or
//! phase 1 vs 1+2 vs 1+2+3): each run's row comes from its report, as in `inject compare`.

use std::path::Path;

use super::inject_panel::{InjectFile, InjectPanel, dialog};
use super::panel::Shared;
use crate::runs::{self, RunRow};

/// Adds (or refreshes) the run in `dir`; a folder without a report is named in the error.
pub fn add_run(p: &mut InjectPanel, s: &mut Shared, dir: &Path) {
    match runs::row(dir) {
        Ok(r) => {
            if let Some(old) = p.compared.iter_mut().find(|o| o.run == r.run) {
                *old = r;
            } else {
                p.compared.push(r);
            }
        }
        Err(e) => s.error = Some(format!("{e:#}")),
    }
}

/// The collapsible table with its buttons.
pub(super) fn runs_table(p: &mut InjectPanel, s: &mut Shared, ui: &mut egui::Ui) {
    egui::CollapsingHeader::new(format!("Compare runs ({})", p.compared.len()))
        .id_salt("inject_compare_runs")
        .default_open(!p.compared.is_empty())
        .show(ui, |ui| {
            ui.horizontal_wrapped(|ui| {
                let current = p.run.clone().filter(|d| d.join("report.json").exists());
                if ui
                    .add_enabled(current.is_some(), egui::Button::new("Add this run"))
                    .on_disabled_hover_text("Open or train a run and write its report first")
                    .clicked()
                    && let Some(dir) = current
                {
                    add_run(p, s, &dir);
                }
                if ui
                    .button("Add run…")
                    .on_hover_text("Pick another run's run.json (its report must be written)")
                    .clicked()
                {
                    dialog(p, InjectFile::CompareRun);
                }
                if !p.compared.is_empty() {
                    if ui.button("Copy as Markdown").clicked() {
                        ui.ctx().copy_text(runs::markdown(&p.compared));
                        s.notice = Some("Copied the table".into());
                    }
                    if ui.button("Clear").clicked() {
                        p.compared.clear();
                    }
                }
            });
            if p.compared.is_empty() {
                ui.weak("Add runs to see them side by side: held-out loss (perplexity) before training and after each phase, drift, norms, isotropy.");
                return;
            }
            egui::ScrollArea::horizontal()
                .id_salt("inject_compare_scroll")
                .show(ui, |ui| grid(ui, &p.compared));
        });
}

fn grid(ui: &mut egui::Ui, rows: &[RunRow]) {
    egui::Grid::new("inject_compare_grid")
        .striped(true)
        .show(ui, |ui| {
            for h in [
                "run",
                "init",
                "forms",
                "steps",
                "start",
                "phase 1",
                "phase 2",
                "phase 3",
                "drift cos",
                "norm new / base",
                "isotropy new",
            ] {
                ui.strong(h);
            }
            ui.end_row();
            for r in rows {
                let name = Path::new(&r.run)
                    .file_name()
                    .map_or_else(|| r.run.clone(), |n| n.to_string_lossy().into_owned());
                ui.label(name).on_hover_text(&r.run);
                ui.label(&r.init);
                ui.label(r.forms.to_string());
                ui.label(r.steps.to_string());
                for ph in [&r.initial, &r.phase1, &r.phase2, &r.phase3] {
                    ui.label(runs::cell(ph.as_ref()));
                }
                ui.label(format!("{:.3}", r.drift_cos_mean));
                ui.label(format!("{:.3} / {:.3}", r.norm_new_mean, r.norm_base_mean));
                ui.label(format!("{:.3}", r.isotropy_new));
                ui.end_row();
            }
        });
}

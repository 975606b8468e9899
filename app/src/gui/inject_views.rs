//! The Injection panel's lower half: live loss curves and the geometry report's key numbers.

use super::inject_panel::{InjectFile, InjectPanel, dialog};
use super::panel::Shared;
use neoscope_api::inject::DriftEnd;

pub(super) fn curves(p: &mut InjectPanel, ui: &mut egui::Ui) {
    let has = !p.losses.is_empty();
    ui.horizontal(|ui| {
        ui.strong("Loss");
        if has && ui.small_button("CSV…").clicked() {
            dialog(p, InjectFile::SaveCurves);
        }
    });
    if p.losses.is_empty() && p.val.is_empty() {
        ui.weak("Training and validation loss appear here as the run goes.");
        return;
    }
    super::widgets::train_val_plot(
        ui,
        "inject_loss",
        &p.losses,
        ("validation", &p.val),
        "loss (nats/token)",
        220.0,
    );
    if let (Some(a), Some(b)) = (p.val.first(), p.val.last()) {
        ui.label(format!(
            "Validation loss {:.4} (step {}) to {:.4} (step {})",
            a.1, a.0, b.1, b.0
        ));
    }
}

pub(super) fn report_view(p: &mut InjectPanel, s: &mut Shared, ui: &mut egui::Ui) {
    ui.strong("Geometry report");
    let Some((html, r)) = &p.report else {
        ui.weak("Write the report after training: norms, isotropy, drift, neighbours, PCA dimensions, pairwise cosines.");
        return;
    };
    let html = html.clone();
    egui::Grid::new("inject_report")
        .striped(true)
        .show(ui, |ui| {
            let n = &r.norms;
            ui.label("norm base / new");
            ui.label(format!("{:.3} / {:.3}", n.base.mean, n.new.mean));
            ui.end_row();
            ui.label("Welch t (p)");
            ui.label(format!(
                "{:.2} ({:.2e})",
                n.welch.statistic, n.welch.p_value
            ));
            ui.end_row();
            ui.label("Mann-Whitney U (p)");
            ui.label(format!(
                "{:.0} ({:.2e})",
                n.mann_whitney.statistic, n.mann_whitney.p_value
            ));
            ui.end_row();
            ui.label("Cohen's d");
            ui.label(format!("{:.3}", n.cohen_d));
            ui.end_row();
            ui.label("isotropy (Mu et al.) base / new");
            ui.label(format!("{:.2e} / {:.2e}", r.isotropy.base, r.isotropy.new));
            ui.end_row();
            ui.label("drift cos mean (min)");
            ui.label(format!("{:.3} ({:.3})", r.drift.new.mean, r.drift.new.min));
            ui.end_row();
            ui.label("base rows unchanged");
            ui.label(if r.drift.base_identical { "yes" } else { "NO" });
            ui.end_row();
            ui.label("PCA dims 90/95% base; new");
            ui.label(format!(
                "{} / {}; {} / {}",
                r.pca.base_90, r.pca.base_95, r.pca.new_90, r.pca.new_95
            ));
            ui.end_row();
            if !r.phases.is_empty() {
                ui.label("held-out perplexity").on_hover_text(
                    "Initial rows, after phase 1, after phase 2 (LoRA), after phase 3 (alignment)",
                );
                let ppl: Vec<String> = r
                    .phases
                    .iter()
                    .map(|p| format!("{:.1}", p.perplexity))
                    .collect();
                ui.label(ppl.join(" to "));
                ui.end_row();
            }
            if let Some(a) = &r.aligned {
                ui.label("phase 3: L_morpheme, L_norm")
                    .on_hover_text("At the first and the last step of the alignment phase");
                ui.label(format!(
                    "{:.2e} to {:.2e}; {:.2e} to {:.2e}",
                    a.first.morpheme, a.last.morpheme, a.first.norm, a.last.norm
                ));
                ui.end_row();
                if let Some(mc) = &a.morphemes {
                    ui.label("phase 3: cos to parts' mean");
                    ui.label(format!(
                        "{:.3} to {:.3} ({} forms)",
                        mc.before.mean, mc.after.mean, mc.forms
                    ));
                    ui.end_row();
                }
            }
            if let Some(c) = &r.change {
                ui.label(format!("top-{} neighbours kept, PIP", c.k));
                ui.label(format!(
                    "{:.2} (mean); PIP {:.3} (relative)",
                    c.overlap.mean, c.pip_relative
                ));
                ui.end_row();
            }
            let pw = &r.pairwise;
            ui.label("cosine bb / nn / bn");
            ui.label(format!(
                "{:.3} / {:.3} / {:.3}",
                pw.base_base.mean, pw.new_new.mean, pw.base_new.mean
            ));
            ui.end_row();
            ui.label("KS bb vs nn (p)");
            ui.label(format!(
                "{:.3} ({:.2e})",
                pw.ks_bb_nn.statistic, pw.ks_bb_nn.p_value
            ));
            ui.end_row();
        });
    if let Some(nb) = r.neighbors.first() {
        let list = |v: &[(String, f32)]| {
            v.iter()
                .map(|(t, _)| format!("{t:?}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        ui.label(format!(
            "{}: before {} · after {}",
            nb.form,
            list(&nb.before),
            list(&nb.after)
        ));
    }
    ui.horizontal(|ui| {
        ui.weak(html.display().to_string());
        if ui.button("Save JSON…").clicked() {
            dialog(p, InjectFile::SaveReport);
        }
        if ui.button("Open report").clicked() {
            let opener = if cfg!(target_os = "macos") {
                "open"
            } else {
                "xdg-open"
            };
            if let Err(e) = std::process::Command::new(opener).arg(&html).spawn() {
                s.error = Some(format!(
                    "could not open {}: {e}; open it in a browser",
                    html.display()
                ));
            }
        }
    });
}

/// Behaviour probes: each form's continuation with the run's vocabulary (forms underlined)
/// beside the base model's.
pub(super) fn probes_view(p: &InjectPanel, ui: &mut egui::Ui) {
    let Some((dir, step, probes)) = &p.probes else {
        return;
    };
    ui.separator();
    ui.strong(format!(
        "Behaviour probes: {} at step {} (greedy; the prompt is the form alone)",
        dir.display(),
        step
    ));
    let col = ((ui.available_width() - 280.0) / 2.0).max(160.0);
    egui::ScrollArea::vertical()
        .id_salt("inject_probes")
        .auto_shrink([false, true])
        .show(ui, |ui| {
            egui::Grid::new("inject_probes_grid")
                .striped(true)
                .num_columns(4)
                .min_col_width(60.0)
                .max_col_width(col)
                .show(ui, |ui| {
                    ui.strong("form");
                    ui.strong("cosine to its start");
                    ui.strong("with the run's vocabulary");
                    ui.strong("base model");
                    ui.end_row();
                    for pr in probes {
                        let end = match pr.end {
                            DriftEnd::Most => "moved most",
                            DriftEnd::Least => "moved least",
                        };
                        ui.label(&pr.form).on_hover_text(end);
                        ui.label(format!("{:.3} ({end})", pr.cosine));
                        // The form (one token) then what the model wrote, forms underlined;
                        // line breaks shown as spaces (same byte length, so the spans hold), and
                        // each cell as tall as its wrapped text.
                        let text = format!("{}{}", pr.form, pr.with_run).replace('\n', " ");
                        let shift = pr.form.len();
                        let spans: Vec<(usize, usize)> = std::iter::once((0, shift))
                            .chain(
                                pr.with_run_forms
                                    .iter()
                                    .map(|&(a, b)| (a + shift, b + shift)),
                            )
                            .collect();
                        let mut job = super::widgets::marked_text(ui, &text, &spans);
                        job.wrap.max_width = col;
                        let cell = |ui: &mut egui::Ui, label: egui::Label| {
                            ui.allocate_ui(egui::vec2(col, 0.0), |ui| {
                                ui.set_width(col);
                                ui.add(label.wrap());
                            });
                        };
                        cell(ui, egui::Label::new(job));
                        let base = format!("{}{}", pr.form, pr.base).replace('\n', " ");
                        cell(ui, egui::Label::new(base));
                        ui.end_row();
                    }
                });
        });
}

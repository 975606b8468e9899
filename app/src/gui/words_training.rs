//! The Words panel's training controls: the recipe (the tuned default or the neologism seed's,
//! with why they differ), loss, hyperparameters, the run with its live loss plot and cancel.

use neoscope_api::words::{RECIPE_DIFFERENCES, Reduction, TrainConfig};

use super::panel::Shared;
use super::widgets::loss_plot;
use super::words_panel::{FileAction, WordsPanel, dialog, start_training};

/// Whether two configurations share every setting a recipe fixes (not the seed or the loss).
fn same_recipe(a: &TrainConfig, b: &TrainConfig) -> bool {
    a.lr == b.lr
        && a.weight_decay == b.weight_decay
        && a.clip_norm == b.clip_norm
        && a.reduction == b.reduction
        && a.epochs == b.epochs
        && a.batch_size == b.batch_size
}

/// The recipe controls: the two presets, weight decay, clipping and reduction, and the
/// differences between the presets with their reasons.
fn recipe(p: &mut WordsPanel, ui: &mut egui::Ui) {
    ui.horizontal_wrapped(|ui| {
        ui.label("recipe");
        for (label, preset, hover) in [
            (
                "tuned default",
                TrainConfig::default(),
                "lr 0.02, no weight decay, clipping at 1.0, mean over the batch, 20 epochs of 4",
            ),
            (
                "as in the seed",
                TrainConfig::seed_recipe(),
                "The neologism notebook's AdamW: lr 0.5, weight decay 0.01, no clipping, summed \
                 loss, 20 epochs of 4",
            ),
        ] {
            if ui
                .selectable_label(same_recipe(&p.config, &preset), label)
                .on_hover_text(hover)
                .clicked()
            {
                p.config = TrainConfig {
                    seed: p.config.seed,
                    loss: p.config.loss,
                    ..preset
                };
            }
        }
        ui.separator();
        ui.label("weight decay");
        ui.add(
            egui::DragValue::new(&mut p.config.weight_decay)
                .speed(0.001)
                .range(0.0..=1.0),
        );
        let mut clip = p.config.clip_norm.is_some();
        ui.checkbox(&mut clip, "clip at");
        let mut norm = p.config.clip_norm.unwrap_or(1.0);
        ui.add_enabled(
            clip,
            egui::DragValue::new(&mut norm)
                .speed(0.05)
                .range(0.01..=100.0),
        );
        p.config.clip_norm = clip.then_some(norm);
        ui.label("batch loss");
        ui.selectable_value(&mut p.config.reduction, Reduction::Mean, "mean");
        ui.selectable_value(&mut p.config.reduction, Reduction::Sum, "sum");
    });
    egui::CollapsingHeader::new("Why the tuned default differs from the seed")
        .id_salt("recipe_why")
        .show(ui, |ui| {
            egui::Grid::new("recipe_differences")
                .striped(true)
                .show(ui, |ui| {
                    for h in ["setting", "seed", "default", "why"] {
                        ui.strong(h);
                    }
                    ui.end_row();
                    for (what, seed, ours, why) in RECIPE_DIFFERENCES {
                        ui.label(what);
                        ui.monospace(seed);
                        ui.monospace(ours);
                        ui.label(why);
                        ui.end_row();
                    }
                });
        });
}

pub(super) fn training(p: &mut WordsPanel, s: &mut Shared, ui: &mut egui::Ui, name: &str) {
    ui.strong("Training");
    recipe(p, ui);
    ui.horizontal_wrapped(|ui| {
        ui.label("loss");
        ui.selectable_value(&mut p.preference, false, "cross-entropy");
        ui.selectable_value(&mut p.preference, true, "preference (DPO + APO-up)");
        ui.separator();
        ui.label("lr");
        ui.add(
            egui::DragValue::new(&mut p.config.lr)
                .speed(0.001)
                .range(1e-5..=5.0),
        );
        ui.label("epochs");
        ui.add(egui::DragValue::new(&mut p.config.epochs).range(1..=500));
        ui.label("batch");
        ui.add(egui::DragValue::new(&mut p.config.batch_size).range(1..=64));
        ui.label("seed");
        ui.add(egui::DragValue::new(&mut p.config.seed));
    });
    let rows = p.datasets.get(name).map_or(0, Vec::len);
    ui.horizontal(|ui| match p.training {
        Some(id) => {
            if ui.button("Cancel").clicked() {
                s.cancel(id);
            }
            let done = p.live.len();
            let total = p.total_steps.max(1);
            let frac = done as f32 / total as f32;
            ui.add(
                egui::ProgressBar::new(frac)
                    .text(format!("step {done}/{total}"))
                    .desired_width(240.0),
            );
        }
        None => {
            if ui
                .add_enabled(rows > 0, egui::Button::new("Train"))
                .clicked()
            {
                start_training(p, s);
            }
            if !p.live.is_empty() && ui.button("Export losses…").clicked() {
                dialog(p, FileAction::ExportLosses);
            }
            if let Some(r) = &p.last_result {
                ui.weak(r);
            }
        }
    });
    let rect = loss_plot(ui, &[(name, &p.live)], 180.0);
    if !p.live.is_empty() && s.png.is_none() && ui.small_button("Save plot as PNG…").clicked() {
        let file = format!("{}-loss.png", name.trim_matches(|c| c == '<' || c == '>'));
        s.png = Some(super::png_export::PngExport::start(rect, &file));
    }
}

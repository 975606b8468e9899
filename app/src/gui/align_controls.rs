//! The Injection panel's phase-3 row: the run's rows aligned under the language-modelling loss
//! plus the morpheme, repulsion and norm terms (λ weights, optimiser, learning rate, steps,
//! with or without the phase-2 adapters), continued, and shown term by term.

use neoscope_api::align::{AlignOptimizer, AlignRun};
use neoscope_api::inject::InjectCommand;
use neoscope_api::lora::LoraUse;

use super::inject_panel::{InjectPanel, send_job};
use super::panel::Shared;

/// Phase 3: morpheme-compositional alignment of the rows.
pub(super) fn align_row(p: &mut InjectPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let busy = p.job.is_some();
    ui.horizontal_wrapped(|ui| {
        ui.strong("2c. Align").on_hover_text(
            "Phase 3: the new rows learn again under L_lm + λm·L_morpheme (each split form \
             pulled toward the mean of its parts) + λr·L_repulsion (near-duplicate rows pushed \
             apart) + λn·L_norm (row norms kept in the base vocabulary's band); every weight \
             stays frozen",
        );
        let c = &mut p.align;
        for (v, name) in [
            (&mut c.lambda_morpheme, "λm "),
            (&mut c.lambda_repulsion, "λr "),
            (&mut c.lambda_norm, "λn "),
        ] {
            ui.add(
                egui::DragValue::new(v)
                    .range(0.0..=100.0)
                    .speed(0.01)
                    .prefix(name),
            );
        }
        egui::ComboBox::from_id_salt("align-optimizer")
            .selected_text(match c.optimizer {
                AlignOptimizer::Adafactor => "Adafactor",
                AlignOptimizer::AdamW => "AdamW",
            })
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut c.optimizer, AlignOptimizer::Adafactor, "Adafactor")
                    .on_hover_text("Factored second moment, as the seed (transformers' Adafactor)");
                ui.selectable_value(&mut c.optimizer, AlignOptimizer::AdamW, "AdamW");
            });
        ui.add(
            egui::DragValue::new(&mut c.lr)
                .range(1e-7..=1.0)
                .speed(1e-5)
                .prefix("lr "),
        );
        ui.add(
            egui::DragValue::new(&mut c.steps)
                .range(1..=100_000)
                .prefix("steps "),
        );
        ui.checkbox(&mut p.align_lora, "under adapters")
            .on_hover_text(
                "Train under the run's phase-2 adapters (latest checkpoint), merged and frozen, \
             from the rows they trained with",
            );
        let ready = !busy && p.run.is_some();
        if ui
            .add_enabled(ready, egui::Button::new("Align rows"))
            .on_hover_text("Start phase 3 of the open run (its latest rows)")
            .clicked()
            && let Some(dir) = p.run.clone()
        {
            p.losses.clear();
            p.val.clear();
            p.steps = p.align.steps;
            let c = InjectCommand::Align {
                dir,
                config: p.align.clone(),
                rows_step: None,
                lora: if p.align_lora {
                    LoraUse::Latest
                } else {
                    LoraUse::None
                },
            };
            send_job(p, s, c, "aligning");
        }
        if ui
            .add_enabled(ready, egui::Button::new("Resume alignment"))
            .on_hover_text("Continue phase 3 from its latest checkpoint (to the steps set here)")
            .clicked()
            && let Some(dir) = p.run.clone()
        {
            p.steps = p.align.steps;
            let steps = Some(p.align.steps);
            send_job(p, s, InjectCommand::AlignResume { dir, steps }, "aligning");
        }
        if let Some(r) = &p.align_run {
            ui.label(summary(r));
        }
    });
}

/// One line on a phase-3 run: the terms at its last step and the validation loss.
pub(super) fn summary(r: &AlignRun) -> String {
    let val = match (r.val.first(), r.val.last()) {
        (Some(a), Some(b)) => format!(", validation {:.3} to {:.3}", a.1, b.1),
        _ => String::new(),
    };
    let terms = r.terms.last().map_or(String::new(), |t| {
        format!(
            "; L_lm {:.3}, L_morpheme {:.2e}, L_repulsion {:.2e}, L_norm {:.2e}",
            t.lm, t.morpheme, t.repulsion, t.norm
        )
    });
    format!(
        "Aligned: step {}/{} ({} of {} forms with parts{}){terms}{val}",
        r.step,
        r.steps,
        r.morpheme_forms,
        r.forms,
        r.lora_step
            .map_or(String::new(), |s| format!(", under adapters of step {s}"))
    )
}

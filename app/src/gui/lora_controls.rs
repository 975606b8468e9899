//! The Injection panel's phase-2 row: LoRA adapters trained on the open run with its rows
//! frozen (rank, α, dropout, targets, learning rate, steps), continued, and shown.

use neoscope_api::inject::InjectCommand;
use neoscope_api::lora::{LoraRun, LoraTarget};

use super::inject_panel::{InjectPanel, send_job};
use super::panel::Shared;

/// Phase 2: adapters on the block projections learn to use the run's forms.
pub(super) fn lora_row(p: &mut InjectPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let busy = p.job.is_some();
    ui.horizontal_wrapped(|ui| {
        ui.strong("2b. Adapt (LoRA)").on_hover_text(
            "Phase 2: low-rank adapters on the attention and MLP projections learn to use \
                 the new forms; the rows, the embedding and every weight stay frozen",
        );
        let c = &mut p.lora;
        ui.add(
            egui::DragValue::new(&mut c.rank)
                .range(1..=256)
                .prefix("r "),
        );
        ui.add(
            egui::DragValue::new(&mut c.alpha)
                .range(0.1..=1024.0)
                .prefix("α "),
        );
        ui.add(
            egui::DragValue::new(&mut c.dropout)
                .range(0.0..=0.9)
                .speed(0.01)
                .prefix("dropout "),
        );
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
        for t in LoraTarget::ALL {
            let mut on = c.targets.contains(&t);
            if ui.toggle_value(&mut on, t.module()).changed() {
                if on {
                    c.targets.push(t);
                    c.targets.sort();
                } else {
                    c.targets.retain(|x| *x != t);
                }
            }
        }
        let ready = !busy && p.run.is_some() && !p.lora.targets.is_empty();
        if ui
            .add_enabled(ready, egui::Button::new("Train adapters"))
            .on_hover_text("Start phase 2 of the open run (its latest rows)")
            .clicked()
            && let Some(dir) = p.run.clone()
        {
            p.losses.clear();
            p.val.clear();
            p.steps = p.lora.steps;
            let c = InjectCommand::Lora {
                dir,
                config: p.lora.clone(),
                rows_step: None,
            };
            send_job(p, s, c, "adapting");
        }
        if ui
            .add_enabled(
                !busy && p.run.is_some(),
                egui::Button::new("Resume adapters"),
            )
            .on_hover_text("Continue phase 2 from its latest checkpoint (to the steps set here)")
            .clicked()
            && let Some(dir) = p.run.clone()
        {
            p.steps = p.lora.steps;
            let steps = Some(p.lora.steps);
            send_job(p, s, InjectCommand::LoraResume { dir, steps }, "adapting");
        }
        if let Some(r) = &p.lora_run {
            ui.label(summary(r));
        }
    });
}

/// One line on a phase-2 run.
pub(super) fn summary(r: &LoraRun) -> String {
    let val = match (r.val.first(), r.val.last()) {
        (Some(a), Some(b)) => format!(", validation {:.3} to {:.3}", a.1, b.1),
        _ => String::new(),
    };
    format!(
        "Adapters: step {}/{} ({} parameters, rows of step {}){val}",
        r.step, r.steps, r.parameters, r.rows_step
    )
}

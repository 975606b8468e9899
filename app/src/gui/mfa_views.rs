//! Plots of the MFA panel: the NLL curve, a component's subspace scatter, and steering (controls,
//! promoted/suppressed bar chart, steered and plain generations side by side).

use egui::text::LayoutJob;
use egui::{Color32, TextFormat};
use egui_plot::{Legend, Line, Plot, PlotPoints, Points};
use neoscope_api::Command;
use neoscope_api::mfa::{Context, MfaEpoch};
use neoscope_api::mfa::{MfaCommand, SteerPositions};
use neoscope_api::steer::Steer;

use super::mfa_panel::MfaPanel;
use super::panel::{Message, Shared};
use super::widgets::{ragged, shift_bars};

/// Train and validation NLL per epoch.
pub fn nll_plot(ui: &mut egui::Ui, epochs: &[MfaEpoch], height: f32) {
    let pts = |f: fn(&MfaEpoch) -> f64| -> PlotPoints<'static> {
        epochs.iter().map(|e| [e.epoch as f64, f(e)]).collect()
    };
    Plot::new("mfa_nll")
        .height(height)
        .legend(Legend::default())
        .x_axis_label("epoch")
        .y_axis_label("NLL")
        .show(ui, |p| {
            p.line(Line::new("train", pts(|e| e.train_nll)));
            p.line(Line::new("validation", pts(|e| e.val_nll)));
        });
}

/// The right column: subspace scatter and steering; returns the area drawn (for PNG export).
pub fn subspace_and_steering(p: &mut MfaPanel, s: &mut Shared, ui: &mut egui::Ui) -> egui::Rect {
    let top = ui.cursor().min;
    scatter(p, ui);
    ui.separator();
    steering(p, s, ui);
    egui::Rect::from_min_max(top, ui.min_rect().max)
}

fn scatter(p: &mut MfaPanel, ui: &mut egui::Ui) {
    let rank = p.z.len();
    ui.horizontal(|ui| {
        ui.strong("Subspace");
        if rank > 1 {
            ui.add(
                egui::DragValue::new(&mut p.dims.0)
                    .range(0..=rank - 1)
                    .prefix("x: z"),
            );
            ui.add(
                egui::DragValue::new(&mut p.dims.1)
                    .range(0..=rank - 1)
                    .prefix("y: z"),
            );
        }
        if p.subspace_running.is_some() {
            ui.spinner();
        }
    });
    let Some((k, pts)) = &p.subspace else {
        ui.weak("Select a component to see its points in its own latent coordinates.");
        return;
    };
    let (a, b) = p.dims;
    let xy: Vec<[f64; 2]> = pts
        .iter()
        .map(|s| {
            [
                f64::from(s.z.get(a).copied().unwrap_or(0.0)),
                f64::from(s.z.get(b).copied().unwrap_or(0.0)),
            ]
        })
        .collect();
    let labels: Vec<(String, String)> = pts
        .iter()
        .map(|s| (s.token.clone(), s.context.clone()))
        .collect();
    Plot::new("mfa_subspace")
        .height(170.0)
        .x_axis_label(format!("z{a}"))
        .y_axis_label(format!("z{b}"))
        .label_formatter(move |hover| match hover {
            egui_plot::HoverPosition::NearDataPoint { index, .. } => labels
                .get(*index)
                .map(|(t, c)| format!("{t:?}\n{}", c.replace('\n', " "))),
            egui_plot::HoverPosition::Elsewhere { .. } => None,
        })
        .show(ui, |plot| {
            plot.points(Points::new(format!("component {k}"), xy).radius(2.5));
        });
}

fn steering(p: &mut MfaPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let Some(k) = p.selected else { return };
    ui.strong(format!("Steer toward component {k}"));
    let n_layers = s.model_info().map_or(1, |i| i.dims.n_layers);
    let fitted_layer = p.fitted.as_ref().and_then(|f| f.point.layer());
    ui.add(
        egui::TextEdit::singleline(&mut p.prompt)
            .desired_width(f32::INFINITY)
            .hint_text("prompt"),
    );
    ui.add(egui::Slider::new(&mut p.alpha, 0.0..=1.0).text("alpha (centroid)"));
    ui.horizontal(|ui| {
        let mut layer = p.steer_layer.or(fitted_layer).unwrap_or(0);
        ui.add(egui::Slider::new(&mut layer, 0..=n_layers.saturating_sub(1)).text("layer"))
            .on_hover_text("The component lives in the space of the layer it was fitted at; other layers are an experiment");
        p.steer_layer = (Some(layer) != fitted_layer).then_some(layer);
        ui.checkbox(&mut p.last_only, "last position only");
    });
    ui.collapsing("latent offset z", |ui| {
        for (i, z) in p.z.iter_mut().enumerate() {
            ui.add(egui::Slider::new(z, -30.0..=30.0).text(format!("z{i}")));
        }
        if ui.small_button("reset z").clicked() {
            p.z.iter_mut().for_each(|z| *z = 0.0);
        }
    });
    let mut go = false;
    let mut to_lens = false;
    ui.horizontal(|ui| {
        if p.steering.is_some() {
            ui.spinner();
        } else {
            go = ui.button("Steer").clicked();
        }
        to_lens = ui
            .button("Use in Lens")
            .on_hover_text("Apply this steering to lens runs")
            .clicked();
    });
    if go {
        let c = MfaCommand::Steer {
            prompt: p.prompt.clone(),
            chat: false,
            component: k,
            alpha: p.alpha,
            z: p.z.clone(),
            layer: p.steer_layer,
            positions: if p.last_only {
                SteerPositions::Last
            } else {
                SteerPositions::All
            },
            top: 10,
            max_new_tokens: 20,
        };
        p.steering = s.send(Command::Mfa(c));
    }
    if to_lens {
        s.post(Message::SteerLens(Steer::MfaComponent {
            component: k,
            alpha: p.alpha,
            z: p.z.clone(),
        }));
        s.goto("Lens");
    }
    let Some(r) = &p.steer else { return };
    shift_bars(ui, "mfa_steer", &r.promoted, &r.suppressed, 110.0);
    ui.columns(2, |cols| {
        cols[0].strong("steered");
        ragged(&mut cols[0], format!("{}{}", r.prompt, r.steered));
        cols[1].strong("plain");
        ragged(&mut cols[1], format!("{}{}", r.prompt, r.plain));
    });
}

/// A context with its token highlighted.
fn context_job(c: &Context, ui: &egui::Ui) -> LayoutJob {
    let mut job = LayoutJob::default();
    let normal = TextFormat {
        color: ui.visuals().text_color(),
        ..Default::default()
    };
    let mark = TextFormat {
        color: Color32::BLACK,
        background: Color32::from_rgb(250, 210, 90),
        ..Default::default()
    };
    let clean = |s: &str| s.replace('\n', " ");
    job.append(&clean(&c.before), 0.0, normal.clone());
    job.append(&clean(&c.token), 0.0, mark);
    job.append(
        &clean(&c.after),
        0.0,
        TextFormat {
            color: ui.visuals().weak_text_color(),
            ..normal
        },
    );
    job
}

pub(super) fn component_detail(p: &mut MfaPanel, ui: &mut egui::Ui) {
    let (Some(f), Some(k)) = (&p.fitted, p.selected) else {
        return;
    };
    let Some(c) = f.components.get(k) else { return };
    ui.strong(format!(
        "Component {} · {} points · weight {:.3}",
        c.index, c.size, c.weight
    ));
    let list = |v: &[(String, usize)]| {
        v.iter()
            .map(|(t, n)| format!("{t:?} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    ui.label(format!("tokens: {}", list(&c.top_tokens)));
    ui.label(format!("next: {}", list(&c.top_next)));
    ui.horizontal(|ui| {
        ui.label("top contexts by");
        ui.selectable_value(&mut p.by_responsibility, false, "likelihood");
        ui.selectable_value(&mut p.by_responsibility, true, "responsibility");
    });
    let ctxs = if p.by_responsibility {
        &c.by_responsibility
    } else {
        &c.by_likelihood
    };
    egui::ScrollArea::vertical()
        .id_salt("mfa_contexts")
        .show(ui, |ui| {
            for x in ctxs {
                let job = context_job(x, ui);
                super::widgets::ragged(ui, job);
            }
        });
}

//! Plots of the MFA panel: the NLL curve, a component's subspace scatter, and steering (controls,
//! promoted/suppressed bar chart, steered and plain generations side by side).

use egui_plot::{Bar, BarChart, Legend, Line, Plot, PlotPoints, Points};
use neoscope_api::Command;
use neoscope_api::mfa::MfaEpoch;
use neoscope_api::mfa::{MfaCommand, SteerPositions};
use neoscope_api::steer::Steer;

use super::{NeoApp, Owner};

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
pub fn subspace_and_steering(app: &mut NeoApp, ui: &mut egui::Ui) -> egui::Rect {
    let top = ui.cursor().min;
    scatter(app, ui);
    ui.separator();
    steering(app, ui);
    egui::Rect::from_min_max(top, ui.min_rect().max)
}

fn scatter(app: &mut NeoApp, ui: &mut egui::Ui) {
    let rank = app.mfa.z.len();
    let p = &mut app.mfa;
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

fn steering(app: &mut NeoApp, ui: &mut egui::Ui) {
    let Some(k) = app.mfa.selected else { return };
    ui.strong(format!("Steer toward component {k}"));
    let n_layers = app.model_info().map_or(1, |i| i.dims.n_layers);
    let fitted_layer = app.mfa.fitted.as_ref().and_then(|f| f.point.layer());
    let p = &mut app.mfa;
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
        app.mfa.steering = app.send(Command::Mfa(c), Owner::MfaSteer);
    }
    if to_lens {
        app.lens.external = Some(Steer::MfaComponent {
            component: k,
            alpha: app.mfa.alpha,
            z: app.mfa.z.clone(),
        });
        app.panel = super::PanelKind::Lens;
    }
    let Some(r) = &app.mfa.steer else { return };
    let mut bars = Vec::new();
    for (i, s) in r.promoted.iter().enumerate() {
        bars.push(
            Bar::new(i as f64, f64::from(s.delta))
                .name(format!("{:?}", s.text))
                .fill(egui::Color32::from_rgb(80, 160, 90)),
        );
    }
    for (i, s) in r.suppressed.iter().enumerate() {
        let x = (r.promoted.len() + 1 + i) as f64;
        bars.push(
            Bar::new(x, f64::from(s.delta))
                .name(format!("{:?}", s.text))
                .fill(egui::Color32::from_rgb(200, 80, 70)),
        );
    }
    let names: Vec<String> = r
        .promoted
        .iter()
        .chain(&r.suppressed)
        .map(|s| s.text.clone())
        .collect();
    let n_prom = r.promoted.len();
    Plot::new("mfa_steer_bars")
        .height(110.0)
        .y_axis_label("logit change")
        .x_axis_formatter(move |m, _| {
            let i = m.value.round() as usize;
            let j = if i < n_prom {
                Some(i)
            } else {
                i.checked_sub(n_prom + 1).map(|j| j + n_prom)
            };
            j.and_then(|j| names.get(j))
                .map_or_else(String::new, |s| s.trim().chars().take(8).collect())
        })
        .show(ui, |plot| {
            plot.bar_chart(BarChart::new("logit change", bars))
        });
    ui.columns(2, |cols| {
        cols[0].strong("steered");
        ragged(&mut cols[0], format!("{}{}", r.prompt, r.steered));
        cols[1].strong("plain");
        ragged(&mut cols[1], format!("{}{}", r.prompt, r.plain));
    });
}

/// A wrapped label in a non-justified layout (columns justify text by default, which spreads
/// short lines letter by letter).
pub fn ragged(ui: &mut egui::Ui, text: impl Into<egui::WidgetText>) {
    ui.with_layout(egui::Layout::top_down(egui::Align::LEFT), |ui| {
        ui.label(text);
    });
}

//! Views of the MFA panel: the NLL curve, a component's subspace scatter with token labels, and
//! a component's contexts drawn from its top ones (steering is in `mfa_steering`).

use egui::text::LayoutJob;
use egui::{Color32, TextFormat};
use egui_plot::{Legend, Line, Plot, PlotPoints, Points};
use egui_plot::{PlotPoint, Text};
use neoscope_api::mfa::{Context, MfaEpoch};

use super::mfa_panel::MfaPanel;
use super::panel::Shared;

/// A scatter label's height and width per character on screen (the plot's small text style),
/// for keeping labels from covering each other.
const LABEL_H: f32 = 11.0;
const LABEL_CHAR_W: f32 = 6.0;

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
    super::mfa_steering::steering(p, s, ui);
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
        ui.add(
            egui::DragValue::new(&mut p.max_labels)
                .range(0..=1000)
                .prefix("labels ≤ "),
        )
        .on_hover_text("Write the token beside up to this many points (the seed: 250), leaving out labels that would cover another; zoom in for more; hover any point for its context");
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
    let tokens: Vec<String> = pts.iter().map(|s| s.token.trim().to_owned()).collect();
    let max_labels = p.max_labels;
    let label_color = ui.visuals().text_color();
    let labels: Vec<(String, String)> = pts
        .iter()
        .map(|s| (s.token.clone(), s.context.clone()))
        .collect();
    Plot::new("mfa_subspace")
        .height(220.0)
        .x_axis_label(format!("z{a}"))
        .y_axis_label(format!("z{b}"))
        .label_formatter(move |hover| match hover {
            egui_plot::HoverPosition::NearDataPoint { index, .. } => labels
                .get(*index)
                .map(|(t, c)| format!("{t:?}\n{}", c.replace('\n', " "))),
            egui_plot::HoverPosition::Elsewhere { .. } => None,
        })
        .show(ui, |plot| {
            // Up to `max_labels` tokens, skipping any that would cover one already written (in
            // the last frame's screen coordinates), so the labels stay legible; zooming in
            // makes room for more.
            let mut placed: Vec<egui::Rect> = Vec::new();
            for (pt, t) in xy.iter().zip(&tokens) {
                if placed.len() >= max_labels {
                    break;
                }
                let at = PlotPoint::new(pt[0], pt[1]);
                let s = plot.screen_from_plot(at);
                let r = egui::Rect::from_min_size(
                    egui::pos2(s.x, s.y - LABEL_H),
                    egui::vec2(LABEL_CHAR_W * t.chars().count() as f32 + 2.0, LABEL_H),
                );
                if placed.iter().any(|p| p.intersects(r)) {
                    continue;
                }
                placed.push(r);
                plot.text(
                    Text::new("labels", at, t.as_str())
                        .anchor(egui::Align2::LEFT_BOTTOM)
                        .color(label_color),
                );
            }
            plot.points(Points::new(format!("component {k}"), xy).radius(2.5));
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

pub(super) fn component_detail(p: &mut MfaPanel, s: &mut Shared, ui: &mut egui::Ui) {
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
        ui.label("contexts by");
        ui.selectable_value(&mut p.by_responsibility, false, "likelihood");
        ui.selectable_value(&mut p.by_responsibility, true, "responsibility");
    });
    let mut draw = false;
    ui.horizontal_wrapped(|ui| {
        ui.add(egui::DragValue::new(&mut p.sample.n).range(1..=200).prefix("show "));
        ui.add(
            egui::DragValue::new(&mut p.sample.pool)
                .range(1..=100_000)
                .prefix("drawn from top "),
        )
        .on_hover_text("Contexts are drawn at random from this many best ones so they do not all look alike (the seed: 10 of 5,000)");
        p.sample.pool = p.sample.pool.max(p.sample.n);
        if p.drawing.is_some() {
            ui.spinner();
        } else if ui.button("Draw again").clicked() {
            p.sample.seed += 1;
            draw = true;
        }
    });
    if draw {
        super::mfa_panel::redraw_contexts(p, s);
    }
    let (Some(f), Some(k)) = (&p.fitted, p.selected) else {
        return;
    };
    let Some(c) = f.components.get(k) else { return };
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

//! The Lens panel's views: the layer × position heatmap with its colour bar, each prompt's
//! target probability across layers, when each target emerges, and the per-layer top-k table
//! of a position.

use egui::{Color32, Rect, Sense, Stroke, pos2, vec2};
use egui_plot::{Corner, HLine, Legend, Line, Plot, PlotPoints};
use neoscope_api::lens::LensResult;

use super::lens_panel::{LensPanel, strided_layers};

/// A perceptually ordered dark-to-bright colour ramp (viridis-like, hand-made stops).
pub(super) fn ramp(t: f32) -> Color32 {
    const STOPS: [(f32, [u8; 3]); 5] = [
        (0.0, [35, 20, 60]),
        (0.25, [59, 82, 139]),
        (0.5, [33, 145, 140]),
        (0.75, [94, 201, 98]),
        (1.0, [253, 231, 37]),
    ];
    let t = t.clamp(0.0, 1.0);
    let i = STOPS
        .iter()
        .rposition(|(s, _)| *s <= t)
        .unwrap_or(0)
        .min(STOPS.len() - 2);
    let (s0, c0) = STOPS[i];
    let (s1, c1) = STOPS[i + 1];
    let f = (t - s0) / (s1 - s0);
    let mix = |a: u8, b: u8| (f32::from(a) + f * (f32::from(b) - f32::from(a))) as u8;
    Color32::from_rgb(mix(c0[0], c1[0]), mix(c0[1], c1[1]), mix(c0[2], c1[2]))
}

pub(super) fn heatmap(p: &mut LensPanel, ui: &mut egui::Ui, r: &LensResult) {
    let stat = p.stat;
    let layers = strided_layers(r.cells.len(), p.stride);
    let cols = r.tokens.len();
    let label_w = 40.0;
    let header_h = 18.0;
    let bar_w = 70.0;
    let cell_w = ((ui.available_width() - label_w - bar_w) / cols as f32).clamp(18.0, 110.0);
    let cell_h = if layers.len() > 20 { 15.0 } else { 20.0 };
    let size = vec2(
        label_w + cell_w * cols as f32,
        header_h + cell_h * layers.len() as f32,
    );
    let (rect, resp) = ui.allocate_exact_size(size + vec2(bar_w, 0.0), Sense::click());
    colour_bar(
        ui,
        Rect::from_min_max(
            pos2(rect.right() - bar_w + 8.0, rect.top() + header_h),
            pos2(rect.right() - bar_w + 20.0, rect.bottom()),
        ),
        p.stat,
    );
    let rect = Rect::from_min_size(rect.min, size);
    let painter = ui.painter_at(rect);
    let font = egui::FontId::proportional(10.0);
    let text_color = ui.visuals().text_color();
    for (j, tok) in r.tokens.iter().enumerate() {
        let x = rect.left() + label_w + cell_w * j as f32;
        let cell = Rect::from_min_size(pos2(x, rect.top()), vec2(cell_w, header_h));
        let shown: String = tok.chars().take((cell_w / 6.0) as usize).collect();
        painter.text(
            cell.center(),
            egui::Align2::CENTER_CENTER,
            shown,
            font.clone(),
            text_color,
        );
    }
    // Layers top to bottom from the last (as the model's output is on top).
    for (row, &l) in layers.iter().rev().enumerate() {
        let y = rect.top() + header_h + cell_h * row as f32;
        painter.text(
            pos2(rect.left() + label_w - 4.0, y + cell_h / 2.0),
            egui::Align2::RIGHT_CENTER,
            format!("L{l}"),
            font.clone(),
            text_color,
        );
        for (j, c) in r.cells[l].iter().enumerate() {
            let x = rect.left() + label_w + cell_w * j as f32;
            let cell = Rect::from_min_size(pos2(x, y), vec2(cell_w, cell_h)).shrink(0.5);
            let v = stat.shade(c);
            painter.rect_filled(cell, 0.0, ramp(v));
            if let Some(t) = c.top.first() {
                let max_chars = (cell_w / 5.5) as usize;
                if max_chars >= 2 {
                    let s: String = t.text.chars().take(max_chars).collect();
                    let fg = if v > 0.6 {
                        Color32::BLACK
                    } else {
                        Color32::WHITE
                    };
                    painter.text(
                        cell.center(),
                        egui::Align2::CENTER_CENTER,
                        s,
                        font.clone(),
                        fg,
                    );
                }
            }
        }
    }
    if let Some(pos) = resp.hover_pos() {
        let j = ((pos.x - rect.left() - label_w) / cell_w).floor();
        let row = ((pos.y - rect.top() - header_h) / cell_h).floor();
        if j >= 0.0 && row >= 0.0 {
            let (j, row) = (j as usize, row as usize);
            let rev: Vec<usize> = layers.iter().rev().copied().collect();
            if let (Some(&l), true) = (rev.get(row), j < cols) {
                let c = &r.cells[l][j];
                let cell = Rect::from_min_size(
                    pos2(
                        rect.left() + label_w + cell_w * j as f32,
                        rect.top() + header_h + cell_h * row as f32,
                    ),
                    vec2(cell_w, cell_h),
                );
                painter.rect_stroke(
                    cell,
                    0.0,
                    Stroke::new(1.5, Color32::WHITE),
                    egui::StrokeKind::Inside,
                );
                resp.clone().on_hover_ui_at_pointer(|ui| {
                    ui.strong(format!("layer {l}, position {j} ({:?})", r.tokens[j]));
                    for t in &c.top {
                        ui.monospace(format!("{:>6.2}%  {:?}", t.prob * 100.0, t.text));
                    }
                    ui.label(format!(
                        "entropy {:.2} nats · KL to final {:.3}",
                        c.entropy, c.kl_to_final
                    ));
                    if let Some(t) = c.targets.first() {
                        ui.label(format!("target p {:.4}, rank {}", t.prob, t.rank));
                    }
                });
                if resp.clicked() {
                    p.position = Some(j);
                }
            }
        }
    }
}

/// A vertical colour bar of `stat` in `rect`, labelled at its ends and middle.
fn colour_bar(ui: &egui::Ui, rect: Rect, stat: super::lens_panel::Stat) {
    let painter = ui.painter();
    let steps = 48;
    let h = rect.height() / steps as f32;
    for i in 0..steps {
        let t = 1.0 - (i as f32 + 0.5) / steps as f32;
        let y = rect.top() + h * i as f32;
        painter.rect_filled(
            Rect::from_min_size(pos2(rect.left(), y), vec2(rect.width(), h + 0.5)),
            0.0,
            ramp(t),
        );
    }
    let font = egui::FontId::proportional(10.0);
    let color = ui.visuals().text_color();
    for t in [1.0f32, 0.5, 0.0] {
        let y = rect.bottom() - t * rect.height();
        painter.text(
            pos2(rect.right() + 3.0, y),
            egui::Align2::LEFT_CENTER,
            stat.value_at(t),
            font.clone(),
            color,
        );
    }
}

/// Each prompt's own first target at its last position, across layers, with the threshold as a
/// dashed line. Returns where it was drawn.
pub(super) fn target_plot(ui: &mut egui::Ui, results: &[LensResult], threshold: f32) -> Rect {
    let header = ui.strong("p(target) at the last position, by layer").rect;
    let plot = Plot::new("target_curves")
        .height(190.0)
        .legend(Legend::default().position(Corner::LeftTop))
        .x_axis_label("layer")
        .include_y(0.0)
        .include_y(1.0)
        .allow_scroll(false)
        .show(ui, |plot| {
            plot.hline(
                HLine::new("threshold", f64::from(threshold))
                    .style(egui_plot::LineStyle::dashed_loose())
                    .color(Color32::GRAY),
            );
            for (i, r) in results.iter().enumerate() {
                let pts: Vec<[f64; 2]> = r
                    .target_curve()
                    .into_iter()
                    .enumerate()
                    .map(|(l, p)| [l as f64, f64::from(p)])
                    .collect();
                if pts.is_empty() {
                    continue;
                }
                plot.line(Line::new(curve_label(i, r), PlotPoints::from(pts)));
            }
        });
    header.union(plot.response.rect)
}

/// `i: "target" · prompt…`, short enough for a legend.
fn curve_label(i: usize, r: &LensResult) -> String {
    let prompt: String = r.tokens.concat().chars().take(26).collect();
    match r.targets.first() {
        Some(t) => format!("{i}: {:?} · {}…", t.token, prompt.trim()),
        None => format!("{i}: {}…", prompt.trim()),
    }
}

/// Per prompt: its target, the first layer where p(target) reaches the threshold, the first
/// layer where it is top-1, and its final probability (the prompt whose heatmap shows is bold).
pub(super) fn emergence_table(
    ui: &mut egui::Ui,
    results: &[LensResult],
    threshold: f32,
    shown: usize,
) {
    if results.iter().all(|r| r.targets.is_empty()) {
        return;
    }
    let at = |l: Option<usize>| l.map_or("never".to_owned(), |l| format!("L{l}"));
    egui::Grid::new("lens_emergence")
        .striped(true)
        .show(ui, |ui| {
            for h in [
                "#".to_owned(),
                "target".to_owned(),
                format!("first p ≥ {threshold:.2}"),
                "first top-1".to_owned(),
                "final p".to_owned(),
            ] {
                ui.strong(h);
            }
            ui.end_row();
            for (i, r) in results.iter().enumerate() {
                let (Some(t), Some(e)) = (r.targets.first(), r.emergence(threshold)) else {
                    continue;
                };
                let cell = |s: String| {
                    let text = egui::RichText::new(s).monospace();
                    if i == shown { text.strong() } else { text }
                };
                ui.label(cell(i.to_string()));
                ui.label(cell(format!("{:?}", t.token)));
                ui.label(cell(at(e.first_above)));
                ui.label(cell(at(e.first_top1)));
                ui.label(cell(format!("{:.3}", e.final_prob)));
                ui.end_row();
            }
        });
}

pub(super) fn top_table(ui: &mut egui::Ui, r: &LensResult, position: Option<usize>) {
    let pos = position
        .unwrap_or(r.tokens.len() - 1)
        .min(r.tokens.len() - 1);
    ui.strong(format!(
        "Top tokens at position {pos} ({:?}); click a cell to change",
        r.tokens[pos]
    ));
    egui::ScrollArea::both()
        .id_salt("lens_top")
        .max_height(200.0)
        .show(ui, |ui| {
            egui::Grid::new("lens_top_grid")
                .striped(true)
                .show(ui, |ui| {
                    for (l, row) in r.cells.iter().enumerate().rev() {
                        ui.monospace(format!("L{l}"));
                        for t in row[pos].top.iter().take(5) {
                            ui.monospace(format!("{:?} {:.2}", t.text, t.prob));
                        }
                        ui.end_row();
                    }
                });
        });
}

//! Widgets more than one panel draws: the running-job row, loss plots, logit-shift bars,
//! word chips in text and ragged labels.

use egui_plot::{Legend, Line, Plot, PlotPoints};
use neoscope_api::words::LogitShift;

use super::panel::{JobView, Shared};

/// A running job's row: a Cancel button and a progress bar showing `fraction` (the job's own
/// when `None`).
pub fn job_row(s: &Shared, ui: &mut egui::Ui, job: &JobView, fraction: Option<f32>) {
    ui.horizontal(|ui| {
        if ui.button("Cancel").clicked() {
            s.cancel(job.id);
        }
        ui.add(
            egui::ProgressBar::new(fraction.or(job.fraction).unwrap_or(0.0))
                .text(job.stage.as_str())
                .desired_width(360.0),
        );
    });
}

/// A loss plot of one or more runs (per-step losses); returns where it was drawn.
pub fn loss_plot(ui: &mut egui::Ui, runs: &[(&str, &[f32])], height: f32) -> egui::Rect {
    Plot::new(("loss", runs.len()))
        .height(height)
        .legend(Legend::default())
        .x_axis_label("step")
        .y_axis_label("loss")
        .include_y(0.0)
        .allow_scroll(false)
        .show(ui, |plot| {
            for (name, losses) in runs {
                let pts: Vec<[f64; 2]> = losses
                    .iter()
                    .enumerate()
                    .map(|(i, l)| [(i + 1) as f64, f64::from(*l)])
                    .collect();
                plot.line(Line::new(*name, PlotPoints::from(pts)));
            }
        })
        .response
        .rect
}

/// A training curve (every step) and a held-out curve (points joined) against the step, as
/// training runs report them.
pub fn train_val_plot(
    ui: &mut egui::Ui,
    id: &str,
    train: &[(usize, f32)],
    (val_name, val): (&str, &[(usize, f32)]),
    y_label: &str,
    height: f32,
) {
    let pts = |v: &[(usize, f32)]| -> Vec<[f64; 2]> {
        v.iter().map(|(s, l)| [*s as f64, f64::from(*l)]).collect()
    };
    Plot::new(id)
        .height(height)
        .legend(Legend::default())
        .x_axis_label("step")
        .y_axis_label(y_label)
        .include_y(0.0)
        .allow_scroll(false)
        .show(ui, |plot| {
            let val_color = egui::Color32::from_rgb(90, 170, 250);
            plot.line(
                Line::new("train", PlotPoints::from(pts(train)))
                    .color(egui::Color32::from_rgb(230, 120, 80)),
            );
            plot.line(Line::new(val_name, PlotPoints::from(pts(val))).color(val_color));
            plot.points(
                egui_plot::Points::new(val_name, pts(val))
                    .radius(3.0)
                    .color(val_color),
            );
        });
}

/// The tokens a change promoted and suppressed most, as labelled bars: two columns (promoted in
/// green, suppressed in red), each row the token, a bar scaled to the largest change, and the
/// logit change. Drawn by hand because a plot's axis labels skip bars when they crowd.
pub fn shift_bars(ui: &mut egui::Ui, promoted: &[LogitShift], suppressed: &[LogitShift]) {
    let promoted = &promoted[..promoted.len().min(10)];
    let suppressed = &suppressed[..suppressed.len().min(10)];
    let max = promoted
        .iter()
        .chain(suppressed)
        .map(|s| s.delta.abs())
        .fold(1e-6_f32, f32::max);
    ui.columns(2, |cols| {
        let sides = [
            ("promoted", promoted, egui::Color32::from_rgb(80, 160, 90)),
            (
                "suppressed",
                suppressed,
                egui::Color32::from_rgb(200, 80, 70),
            ),
        ];
        for (ui, (title, rows, color)) in cols.iter_mut().zip(sides) {
            ui.label(egui::RichText::new(title).small().strong());
            for r in rows {
                bar_row(ui, r, max, color);
            }
        }
    });
}

/// One labelled bar: token, bar, value (the token and value are labels, so they can be read
/// out and found by tests).
fn bar_row(ui: &mut egui::Ui, r: &LogitShift, max: f32, color: egui::Color32) {
    let label: String = {
        let t = format!("{:?}", r.text);
        if t.chars().count() > 11 {
            t.chars().take(10).chain(['…']).collect()
        } else {
            t
        }
    };
    let full = ui.available_width();
    let text_w = (full * 0.42).min(96.0);
    ui.horizontal(|ui| {
        ui.spacing_mut().item_spacing.x = 4.0;
        let h = ui.text_style_height(&egui::TextStyle::Monospace);
        ui.add_sized(
            [text_w, h],
            egui::Label::new(egui::RichText::new(label).monospace()).truncate(),
        )
        .on_hover_text(format!("{:?}: logit change {:+.3}", r.text, r.delta));
        let bar_w = (full - text_w - 48.0).max(4.0) * r.delta.abs() / max;
        let (rect, _) = ui.allocate_exact_size(egui::vec2(bar_w, h - 2.0), egui::Sense::hover());
        ui.painter().rect_filled(rect, 2.0, color);
        ui.label(
            egui::RichText::new(format!("{:+.1}", r.delta))
                .small()
                .color(ui.visuals().weak_text_color()),
        );
    });
}

/// Lays out `text` with every occurrence of a new word's name drawn as a highlighted chip.
pub fn word_chips(ui: &egui::Ui, text: &str, names: &[String]) -> egui::text::LayoutJob {
    let style = ui.style();
    let font = egui::TextStyle::Body.resolve(style);
    let plain = egui::TextFormat::simple(font.clone(), style.visuals.text_color());
    let chip = egui::TextFormat {
        background: style.visuals.selection.bg_fill,
        color: style.visuals.strong_text_color(),
        ..egui::TextFormat::simple(font, style.visuals.strong_text_color())
    };
    let mut job = egui::text::LayoutJob::default();
    let mut rest = text;
    loop {
        let hit = names
            .iter()
            .filter(|n| !n.is_empty())
            .filter_map(|n| rest.find(n.as_str()).map(|at| (at, n.len())))
            .min_by_key(|(at, len)| (*at, std::cmp::Reverse(*len)));
        let Some((at, len)) = hit else {
            job.append(rest, 0.0, plain);
            break;
        };
        job.append(&rest[..at], 0.0, plain.clone());
        job.append(&rest[at..at + len], 0.0, chip.clone());
        rest = &rest[at + len..];
    }
    job
}

/// A wrapped label in a non-justified layout (columns justify text by default, which spreads
/// short lines letter by letter).
pub fn ragged(ui: &mut egui::Ui, text: impl Into<egui::WidgetText>) {
    ui.with_layout(egui::Layout::top_down(egui::Align::LEFT), |ui| {
        ui.label(text);
    });
}

/// `text` with the byte ranges `spans` (an injection run's forms) marked.
pub fn marked_text(ui: &egui::Ui, text: &str, spans: &[(usize, usize)]) -> egui::text::LayoutJob {
    let style = ui.style();
    let font = egui::TextStyle::Body.resolve(style);
    let plain = egui::TextFormat::simple(font.clone(), style.visuals.text_color());
    let form = egui::TextFormat {
        underline: egui::Stroke::new(1.5, style.visuals.warn_fg_color),
        ..egui::TextFormat::simple(font, style.visuals.warn_fg_color)
    };
    let mut job = egui::text::LayoutJob::default();
    let mut at = 0;
    for &(a, b) in spans {
        let (Some(before), Some(marked)) = (text.get(at..a), text.get(a..b)) else {
            continue;
        };
        job.append(before, 0.0, plain.clone());
        job.append(marked, 0.0, form.clone());
        at = b;
    }
    job.append(text.get(at..).unwrap_or_default(), 0.0, plain);
    job.wrap.max_width = ui.available_width();
    job
}

/// A distinct colour for series `i` (bars of one chart that stand for different things).
pub fn series_color(i: usize) -> egui::Color32 {
    const PALETTE: [egui::Color32; 6] = [
        egui::Color32::from_rgb(230, 120, 80),
        egui::Color32::from_rgb(90, 170, 250),
        egui::Color32::from_rgb(150, 150, 150),
        egui::Color32::from_rgb(120, 200, 120),
        egui::Color32::from_rgb(200, 140, 220),
        egui::Color32::from_rgb(230, 200, 90),
    ];
    PALETTE[i % PALETTE.len()]
}

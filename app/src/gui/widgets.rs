//! Widgets more than one panel draws: the running-job row, loss plots, logit-shift bars,
//! word chips in text and ragged labels.

use egui_plot::{Bar, BarChart, Legend, Line, Plot, PlotPoints};
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

/// Bars of the most promoted (green) and suppressed (red) next tokens, the tokens under the
/// bars, then the values as text.
pub fn shift_bars(
    ui: &mut egui::Ui,
    id: &str,
    promoted: &[LogitShift],
    suppressed: &[LogitShift],
    height: f32,
) {
    let promoted = &promoted[..promoted.len().min(8)];
    let suppressed = &suppressed[..suppressed.len().min(8)];
    let mut bars = Vec::new();
    for (i, s) in promoted.iter().enumerate() {
        bars.push(
            Bar::new(i as f64, f64::from(s.delta))
                .name(format!("{:?}", s.text))
                .fill(egui::Color32::from_rgb(80, 160, 90)),
        );
    }
    for (i, s) in suppressed.iter().enumerate() {
        let x = (promoted.len() + 1 + i) as f64;
        bars.push(
            Bar::new(x, f64::from(s.delta))
                .name(format!("{:?}", s.text))
                .fill(egui::Color32::from_rgb(200, 80, 70)),
        );
    }
    let names: Vec<String> = promoted
        .iter()
        .chain(suppressed)
        .map(|s| s.text.clone())
        .collect();
    let n_prom = promoted.len();
    Plot::new(("shift_bars", id))
        .height(height)
        .allow_scroll(false)
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
            plot.bar_chart(BarChart::new("logit change", bars));
        });
    ui.horizontal_wrapped(|ui| {
        for s in promoted.iter().chain(suppressed) {
            ui.monospace(format!("{:?} {:+.1}", s.text, s.delta));
        }
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

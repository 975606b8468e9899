//! The Compare panel: two words side by side — loss curves on one plot, definitions, nearest
//! tokens, held-out evaluation, steering logit differences and generations for one prompt.
//! The comparison can be exported as JSON.

use egui_plot::{Bar, BarChart, Plot};
use neoscope_api::words::WordCommand;
use neoscope_api::words::WordResult;
use neoscope_api::words::{CompareConfig, WordReport};
use neoscope_api::{JobResult, RequestId};

use super::dialogs::{Mode, Pending};
use super::panel::{Panel, Shared, clear_id};
use super::widgets::{loss_plot, shift_bars};

/// State of the Compare panel.
pub struct ComparePanel {
    /// First word.
    pub a: String,
    /// Second word.
    pub b: String,
    /// Steering prompt (`{w}` = the word).
    pub steer_prompt: String,
    /// Running comparison.
    pub running: Option<RequestId>,
    /// The last comparison.
    pub result: Option<Box<[WordReport; 2]>>,
    /// Export dialog in flight.
    pub dialog: Option<Pending<()>>,
    /// Where the comparison was drawn last frame (for PNG export).
    pub view_rect: Option<egui::Rect>,
}

impl Default for ComparePanel {
    fn default() -> Self {
        Self {
            a: "<pun>".into(),
            b: "<lit>".into(),
            steer_prompt: CompareConfig::default().steer_prompt,
            running: None,
            result: None,
            dialog: None,
            view_rect: None,
        }
    }
}

impl Panel for ComparePanel {
    fn title(&self) -> &'static str {
        "Compare"
    }

    fn show(&mut self, s: &mut Shared, ui: &mut egui::Ui) {
        show(self, s, ui);
    }

    fn finished(&mut self, _s: &mut Shared, id: RequestId, result: JobResult) {
        clear_id(&mut self.running, id);
        if let JobResult::Words(r) = result
            && let WordResult::Comparison(r) = *r
        {
            self.result = Some(r);
        }
    }

    fn failed(&mut self, id: RequestId) {
        clear_id(&mut self.running, id);
    }
}

/// Starts a comparison of the two chosen words.
pub fn start(p: &mut ComparePanel, s: &mut Shared) {
    let config = CompareConfig {
        steer_prompt: p.steer_prompt.clone(),
        ..CompareConfig::default()
    };
    let heldout = match crate::assets::shipped_heldout() {
        Ok(h) => h,
        Err(e) => {
            s.error = Some(e.to_string());
            return;
        }
    };
    let cmd = WordCommand::Compare {
        a: p.a.clone(),
        b: p.b.clone(),
        heldout,
        config,
    };
    p.running = s.send(cmd);
}

/// Draws the Compare panel.
fn show(p: &mut ComparePanel, s: &mut Shared, ui: &mut egui::Ui) {
    if let Some(d) = &p.dialog
        && let Some(answer) = d.poll()
    {
        p.dialog = None;
        if let (Some(path), Some(r)) = (answer, &p.result) {
            let written = serde_json::to_vec_pretty(&**r)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    neoscope_api::files::write_atomic(&path.with_extension("json"), &bytes)
                        .map_err(|e| e.to_string())
                });
            if let Err(e) = written {
                s.error = Some(e);
            }
        }
    }
    ui.heading("Compare");
    let names: Vec<String> = s.words.iter().map(|w| w.name.clone()).collect();
    if names.len() < 2 {
        ui.label("Create and train two words in the Words panel (for example <pun> and <lit>).");
        return;
    }
    // Wrapped so that a narrow window moves the buttons to a second line instead of widening
    // the panel (which would push the right-hand column off screen).
    ui.horizontal_wrapped(|ui| {
        for (label, slot) in [("A", &mut p.a), ("B", &mut p.b)] {
            ui.label(label);
            egui::ComboBox::from_id_salt(label)
                .selected_text(slot.as_str())
                .show_ui(ui, |ui| {
                    for n in &names {
                        ui.selectable_value(slot, n.clone(), n);
                    }
                });
        }
        ui.label("steering prompt");
        ui.add(egui::TextEdit::singleline(&mut p.steer_prompt).desired_width(260.0));
        let ok = names.contains(&p.a) && names.contains(&p.b);
        match p.running {
            Some(id) => {
                if ui.button("Cancel").clicked() {
                    s.cancel(id);
                }
                ui.spinner();
            }
            None => {
                if ui
                    .add_enabled(ok, egui::Button::new("Run comparison"))
                    .clicked()
                {
                    start(p, s);
                }
            }
        }
        if let Some(rect) = p.view_rect
            && p.result.is_some()
            && s.png.is_none()
            && ui.button("Save as PNG…").clicked()
        {
            s.png = Some(super::png_export::PngExport::start(rect, "comparison.png"));
        }
        if p.result.is_some() && ui.button("Export JSON…").clicked() {
            p.dialog = Some(Pending::new(
                (),
                Mode::Save,
                "Export the comparison",
                ("JSON", &["json"]),
                "comparison.json",
            ));
        }
    });
    let losses: Vec<(String, Vec<f32>)> = [&p.a, &p.b]
        .iter()
        .filter_map(|n| s.words.iter().find(|w| &w.name == *n))
        .map(|w| (w.name.clone(), w.losses.clone()))
        .collect();
    let runs: Vec<(&str, &[f32])> = losses
        .iter()
        .map(|(n, l)| (n.as_str(), l.as_slice()))
        .collect();
    let plot_rect = loss_plot(ui, &runs, 110.0);
    ui.add_space(4.0);
    let Some(result) = p.result.as_deref() else {
        ui.weak("Press “Run comparison” to see both words side by side.");
        return;
    };
    let view = egui::ScrollArea::vertical().show(ui, |ui| {
        ui.columns(2, |cols| {
            for (ui, r) in cols.iter_mut().zip(result.iter()) {
                report(ui, r);
            }
        });
    });
    p.view_rect = Some(plot_rect.union(view.inner_rect));
}

fn report(ui: &mut egui::Ui, r: &WordReport) {
    ui.heading(&r.name);
    ui.weak(format!("norm {:.2} · {:?}", r.norm, r.injection));
    ui.strong("Held-out mean log-prob of targets (higher is better)");
    let bars: Vec<Bar> = r
        .heldout
        .iter()
        .enumerate()
        .map(|(i, (name, lp))| Bar::new(i as f64, f64::from(*lp)).name(name).width(0.6))
        .collect();
    Plot::new(("heldout", r.name.as_str()))
        .height(70.0)
        .allow_scroll(false)
        .show_axes([false, true])
        .show(ui, |p| p.bar_chart(BarChart::new("held-out", bars)));
    ui.horizontal_wrapped(|ui| {
        for (name, lp) in &r.heldout {
            ui.monospace(format!("{name}: {lp:.3}"));
        }
    });
    ui.strong(format!("Steering: {}", r.steering.prompt_with));
    shift_bars(
        ui,
        &r.name,
        &r.steering.promoted,
        &r.steering.suppressed,
        110.0,
    );
    ui.label(egui::RichText::new("generation with the word").italics());
    ui.label(r.steering.generation_with.trim());
    ui.label(egui::RichText::new("without").italics());
    ui.label(r.steering.generation_without.trim());
    ui.strong("Nearest tokens");
    ui.horizontal_wrapped(|ui| {
        for n in &r.neighbors {
            ui.monospace(format!("{:?} {:.2}", n.text, n.cosine));
        }
    });
    ui.strong("Definitions");
    for d in &r.definitions {
        ui.label(egui::RichText::new(&d.prompt).italics());
        ui.label(&d.text);
    }
}

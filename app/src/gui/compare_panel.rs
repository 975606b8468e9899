//! The Compare panel: two words side by side — loss curves on one plot, definitions, nearest
//! tokens, held-out evaluation, steering logit differences and generations for one prompt.
//! The punchline preference (held-out setups: log P(punchline) − log P(literal ending) with each
//! word, no word and a plain word) is measured with every comparison, or on its own. The
//! comparison can be exported as JSON.

use egui_plot::{Bar, BarChart, Plot};
use neoscope_api::words::WordCommand;
use neoscope_api::words::WordResult;
use neoscope_api::words::{CompareConfig, PreferenceReport, PreferenceSetup, Slot, WordReport};
use neoscope_api::{JobResult, RequestId};

use super::dialogs::{Mode, Pending};
use super::lessons::Do;
use super::panel::{Message, Panel, Shared, clear_id};
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
    /// Ordinary words each word is compared with (cosine), space-separated.
    pub similar: String,
    /// Plain text measured in the word's place (the preference's fourth row).
    pub plain: String,
    /// Running preference measurement.
    pub measuring: Option<RequestId>,
    /// The last punchline preference.
    pub preference: Option<PreferenceReport>,
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
            plain: "pun".into(),
            similar: neoscope_api::words::SIMILARITY_WORDS.join(" "),
            measuring: None,
            preference: None,
            dialog: None,
            view_rect: None,
        }
    }
}

impl Panel for ComparePanel {
    super::panel::panel_settings!(a, b, steer_prompt, similar, plain);

    fn title(&self) -> &'static str {
        "Compare"
    }

    fn show(&mut self, s: &mut Shared, ui: &mut egui::Ui) {
        show(self, s, ui);
    }

    fn finished(&mut self, _s: &mut Shared, id: RequestId, result: JobResult) {
        clear_id(&mut self.running, id);
        clear_id(&mut self.measuring, id);
        if let JobResult::Words(r) = result {
            match *r {
                WordResult::Comparison(r) => self.result = Some(r),
                WordResult::Preference(r) => self.preference = Some(r),
                _ => {}
            }
        }
    }

    fn failed(&mut self, id: RequestId) {
        clear_id(&mut self.running, id);
        clear_id(&mut self.measuring, id);
    }

    fn receive(&mut self, s: &mut Shared, msg: &Message) {
        if let Message::Lesson(Do::Compare(a, b)) = msg {
            (*a).clone_into(&mut self.a);
            (*b).clone_into(&mut self.b);
            start(self, s);
        }
    }
}

/// Starts a comparison of the two chosen words.
pub fn start(p: &mut ComparePanel, s: &mut Shared) {
    let config = CompareConfig {
        steer_prompt: p.steer_prompt.clone(),
        similar: p.similar.split_whitespace().map(str::to_owned).collect(),
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
    measure(p, s);
}

/// The shipped held-out preference setups (`assets/datasets/contrast.heldout.jsonl`).
pub fn shipped_setups() -> Result<Vec<PreferenceSetup>, neoscope_api::ApiError> {
    let ds = neoscope_api::dataset::parse_jsonl(
        crate::assets::CONTRAST_HELDOUT,
        std::path::Path::new("contrast"),
    )?;
    Ok(ds
        .examples
        .iter()
        .filter_map(|e| PreferenceSetup::from_example(e, &[]))
        .collect())
}

/// Starts the punchline preference of the two words, no word and the plain text.
pub fn measure(p: &mut ComparePanel, s: &mut Shared) {
    let setups = match shipped_setups() {
        Ok(v) => v,
        Err(e) => {
            s.error = Some(e.to_string());
            return;
        }
    };
    let mut slots = vec![
        Slot::Word(p.a.clone()),
        Slot::Word(p.b.clone()),
        Slot::Removed,
    ];
    if !p.plain.trim().is_empty() {
        slots.push(Slot::Text(p.plain.trim().to_owned()));
    }
    p.measuring = s.send(WordCommand::Preference { setups, slots });
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
        ui.label("similar to").on_hover_text(
            "Ordinary words each word's vector is compared with (cosine), space-separated",
        );
        ui.add(egui::TextEdit::singleline(&mut p.similar).desired_width(180.0));
        ui.label("plain word").on_hover_text(
            "Measured in the word's place besides the two words and no word (empty: left out)",
        );
        ui.add(egui::TextEdit::singleline(&mut p.plain).desired_width(60.0));
        let ok = names.contains(&p.a) && names.contains(&p.b);
        let busy: Vec<RequestId> = p.running.iter().chain(&p.measuring).copied().collect();
        if busy.is_empty() {
            if ui
                .add_enabled(ok, egui::Button::new("Run comparison"))
                .clicked()
            {
                start(p, s);
            }
            if ui
                .add_enabled(ok, egui::Button::new("Preference only"))
                .on_hover_text("Only the punchline preference on the held-out setups (seconds)")
                .clicked()
            {
                measure(p, s);
            }
        } else {
            if ui.button("Cancel").clicked() {
                busy.iter().for_each(|id| s.cancel(*id));
            }
            ui.spinner();
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
    let mut top_rect = loss_plot(ui, &runs, 110.0);
    if let Some(pref) = &p.preference {
        top_rect = top_rect.union(preference_view(ui, pref));
    }
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
    p.view_rect = Some(top_rect.union(view.inner_rect));
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
    shift_bars(ui, &r.steering.promoted, &r.steering.suppressed);
    ui.label(egui::RichText::new("generation with the word").italics());
    ui.label(r.steering.generation_with.trim());
    ui.label(egui::RichText::new("without").italics());
    ui.label(r.steering.generation_without.trim());
    if !r.similarities.is_empty() {
        ui.strong("Cosine similarity to");
        ui.horizontal_wrapped(|ui| {
            for (w, c) in &r.similarities {
                ui.monospace(format!("{w} {c:+.3}"));
            }
        });
    }
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

/// The punchline preference: a bar per slot filling (mean margin) and its numbers. Returns the
/// rectangle it used.
fn preference_view(ui: &mut egui::Ui, r: &PreferenceReport) -> egui::Rect {
    ui.scope(|ui| {
        ui.strong(format!(
            "Punchline preference on {} held-out setups: mean log P(punchline) − log P(literal ending)",
            r.setups
        ));
        ui.horizontal(|ui| {
            let bars: Vec<Bar> = r
                .rows
                .iter()
                .enumerate()
                .map(|(i, row)| {
                    Bar::new(i as f64, f64::from(row.margin))
                        .name(row.slot.label())
                        .width(0.6)
                        .fill(super::widgets::series_color(i))
                })
                .collect();
            let labels: Vec<String> = r.rows.iter().map(|row| row.slot.label()).collect();
            Plot::new("preference")
                .height(90.0)
                .width(ui.available_width().min(420.0) * 0.6)
                .allow_scroll(false)
                .allow_drag(false)
                .show_axes([true, true])
                .x_axis_formatter(move |m, _| {
                    let i = m.value.round();
                    if (m.value - i).abs() < 1e-6 && i >= 0.0 {
                        labels.get(i as usize).cloned().unwrap_or_default()
                    } else {
                        String::new()
                    }
                })
                .show(ui, |p| p.bar_chart(BarChart::new("margin", bars)));
            egui::Grid::new("preference-table")
                .striped(true)
                .show(ui, |ui| {
                    for h in [
                        "in {w}'s place",
                        "margin",
                        "per token",
                        "punchline",
                        "literal",
                        "wins",
                    ] {
                        ui.strong(h);
                    }
                    ui.end_row();
                    // Each label in its bar's colour: the table is the chart's legend.
                    for (i, row) in r.rows.iter().enumerate() {
                        ui.label(
                            egui::RichText::new(row.slot.label())
                                .color(super::widgets::series_color(i))
                                .strong(),
                        );
                        ui.monospace(format!("{:+.3}", row.margin));
                        ui.monospace(format!("{:+.3}", row.token_margin));
                        ui.monospace(format!("{:.3}", row.chosen));
                        ui.monospace(format!("{:.3}", row.rejected));
                        ui.monospace(format!("{}/{}", row.wins, r.setups));
                        ui.end_row();
                    }
                });
        });
    })
    .response
    .rect
}

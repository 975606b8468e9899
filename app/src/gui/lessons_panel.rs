//! The Lessons panel: pick a lesson, read each step, press "Do it" to have the panels filled in
//! and run, answer the question. While a lesson is open a bar above every panel shows the
//! current step, so a class can follow it from panel to panel.

use neoscope_api::{JobResult, RequestId};

use super::lessons::{Lesson, Step, lessons};
use super::panel::{Message, Panel, Shared};

/// State of the Lessons panel.
pub struct LessonsPanel {
    /// Every lesson.
    pub lessons: Vec<Lesson>,
    /// The lesson shown.
    pub shown: usize,
    /// The lesson being followed and its current step (the bar above the panels).
    pub active: Option<(usize, usize)>,
}

impl Default for LessonsPanel {
    fn default() -> Self {
        Self {
            lessons: lessons(),
            shown: 0,
            active: None,
        }
    }
}

impl Panel for LessonsPanel {
    fn title(&self) -> &'static str {
        "Lessons"
    }

    fn show(&mut self, s: &mut Shared, ui: &mut egui::Ui) {
        show(self, s, ui);
    }

    fn finished(&mut self, _s: &mut Shared, _id: RequestId, _result: JobResult) {}

    fn failed(&mut self, _id: RequestId) {}
}

/// Carries out step `step` of lesson `lesson`: posts its action and shows its panel.
pub fn do_step(p: &mut LessonsPanel, s: &mut Shared, lesson: usize, step: usize) {
    let Some(st) = p.lessons.get(lesson).and_then(|l| l.steps.get(step)) else {
        return;
    };
    p.active = Some((lesson, step));
    if let Some(action) = &st.action {
        s.post(Message::Lesson(action.clone()));
    }
    if !st.look_at.is_empty() {
        s.goto(st.look_at);
    }
}

fn show(p: &mut LessonsPanel, s: &mut Shared, ui: &mut egui::Ui) {
    ui.heading("Lessons");
    ui.weak(
        "One walkthrough per source document. “Do it” fills in the panels and runs them; the \
         bar above the panels keeps the step and its question in view.",
    );
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            ui.set_width(250.0);
            for (i, l) in p.lessons.iter().enumerate() {
                let label = format!("{} (~{:.0} min)", l.title, l.minutes);
                ui.selectable_value(&mut p.shown, i, label)
                    .on_hover_text(format!("Follows: {}", l.source));
            }
        });
        ui.separator();
        ui.vertical(|ui| lesson_view(p, s, ui));
    });
}

fn lesson_view(p: &mut LessonsPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let Some(l) = p.lessons.get(p.shown) else {
        return;
    };
    let i = p.shown;
    ui.heading(l.title);
    let minutes = l.minutes.round().max(1.0);
    ui.weak(format!(
        "Follows: {} · about {minutes:.0} minute{}",
        l.source,
        if minutes > 1.0 { "s" } else { "" }
    ));
    if l.needs_model && s.model_info().is_none() {
        ui.colored_label(
            ui.visuals().warn_fg_color,
            "Load a model in the Model panel first (the default one is fine).",
        );
    }
    let mut go = None;
    egui::ScrollArea::vertical().show(ui, |ui| {
        for (k, st) in l.steps.iter().enumerate() {
            let current = p.active == Some((i, k));
            egui::Frame::group(ui.style()).show(ui, |ui| {
                ui.set_width(ui.available_width());
                ui.horizontal(|ui| {
                    let title = format!("{}. {}", k + 1, st.title);
                    if current {
                        ui.strong(format!("▶ {title}"));
                    } else {
                        ui.strong(title);
                    }
                });
                ui.label(st.text);
                ui.horizontal_wrapped(|ui| {
                    if step_button(ui, s, l, st).clicked() {
                        go = Some(k);
                    }
                    ui.label(egui::RichText::new(st.question).italics());
                });
            });
        }
    });
    if let Some(k) = go {
        do_step(p, s, i, k);
    }
}

/// The "Do it" (or "Show me") button of a step, disabled while the engine is busy or without
/// the model the lesson needs.
fn step_button(ui: &mut egui::Ui, s: &Shared, l: &Lesson, st: &Step) -> egui::Response {
    let label = if st.action.is_some() {
        "Do it"
    } else {
        "Show me"
    };
    let ready = !s.busy() && (!l.needs_model || s.model_info().is_some());
    ui.add_enabled(ready, egui::Button::new(label))
        .on_hover_text(format!("In the {} panel", st.look_at))
        .on_disabled_hover_text("Wait for the running job, or load a model first")
}

/// The lesson bar above the panels while a lesson is followed: the step, its question, and
/// buttons for the next step and back to the lesson.
pub fn bar(p: &mut LessonsPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let Some((i, k)) = p.active else { return };
    let Some(l) = p.lessons.get(i) else { return };
    let Some(st) = l.steps.get(k) else { return };
    let mut next = false;
    let mut end = false;
    ui.horizontal_wrapped(|ui| {
        ui.strong(format!(
            "{} · step {}/{}: {}",
            l.title,
            k + 1,
            l.steps.len(),
            st.title
        ));
        ui.label(egui::RichText::new(st.question).italics());
        if k + 1 < l.steps.len() {
            let ready = !s.busy();
            next = ui
                .add_enabled(ready, egui::Button::new("Next step"))
                .on_disabled_hover_text("Wait for the running job")
                .clicked();
        }
        if ui.button("Lesson").clicked() {
            p.shown = i;
            s.goto("Lessons");
        }
        end = ui.button("End lesson").clicked();
    });
    if next {
        do_step(p, s, i, k + 1);
    }
    if end {
        p.active = None;
    }
}

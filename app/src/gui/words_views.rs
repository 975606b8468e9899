//! The Words panel's dataset table, definition views, and the seed's further probes: new
//! examples made with the word, and its cosine with an editable list of ordinary words (split
//! from `words_panel`, which owns the state and the word list).

use std::path::Path;

use neoscope_api::dataset;
use neoscope_api::text::Sampling;
use neoscope_api::words::{
    NEW_EXAMPLE_PROMPTS, NEW_EXAMPLE_TOKENS, WordCommand, default_definition_prompts,
};

use super::panel::Shared;
use super::words_panel::{FileAction, Row, WordsPanel, dialog};

pub(super) fn dataset_table(p: &mut WordsPanel, s: &mut Shared, ui: &mut egui::Ui, name: &str) {
    ui.horizontal(|ui| {
        ui.strong("Dataset");
        egui::ComboBox::from_id_salt("shipped")
            .selected_text("Use a shipped dataset")
            .show_ui(ui, |ui| {
                for (label, key) in [
                    ("pun (40 rows)", "pun"),
                    ("literal (40 rows)", "literal"),
                    ("pun preference: punchline over literal (40)", "pun.pref"),
                    (
                        "literal preference: literal over punchline (40)",
                        "literal.pref",
                    ),
                ] {
                    if ui.selectable_label(false, label).clicked()
                        && let Some(text) = crate::assets::dataset(key)
                    {
                        match dataset::parse_jsonl(text, Path::new(key)) {
                            Ok(ds) => p.set_rows(name, &ds.examples),
                            Err(e) => s.error = Some(e.to_string()),
                        }
                    }
                }
            });
        if ui.button("Import…").clicked() {
            dialog(p, FileAction::Import);
        }
        if ui.button("Export…").clicked() {
            dialog(p, FileAction::Export);
        }
    });
    let rows = p.datasets.entry(name.to_owned()).or_default();
    ui.weak(format!(
        "{} rows. Prompts must contain {name}; leave “rejected” empty for completion rows.",
        rows.len()
    ));
    let mut delete = None;
    egui::ScrollArea::vertical()
        .id_salt("rows")
        .max_height(200.0)
        .show(ui, |ui| {
            egui::Grid::new("dataset_rows")
                .num_columns(4)
                .striped(true)
                .show(ui, |ui| {
                    ui.strong("prompt");
                    ui.strong("target / chosen");
                    ui.strong("rejected");
                    ui.label("");
                    ui.end_row();
                    for (i, r) in rows.iter_mut().enumerate() {
                        let w = ui.available_width().max(400.0);
                        ui.add_sized([w * 0.5, 20.0], egui::TextEdit::singleline(&mut r.prompt));
                        ui.add_sized([w * 0.28, 20.0], egui::TextEdit::singleline(&mut r.target));
                        ui.add_sized(
                            [w * 0.12, 20.0],
                            egui::TextEdit::singleline(&mut r.rejected),
                        );
                        if ui.small_button("Delete").clicked() {
                            delete = Some(i);
                        }
                        ui.end_row();
                    }
                });
        });
    if let Some(i) = delete {
        rows.remove(i);
    }
    if ui.button("Add row").clicked() {
        rows.push(Row {
            prompt: format!("This is {name}: "),
            ..Row::default()
        });
    }
}

/// Asks the model what `name` means (the plain prompts, and the chat one when `chat`).
pub fn ask(p: &mut WordsPanel, s: &mut Shared, name: &str, chat: bool) {
    p.definitions.clear();
    p.plugins.clear();
    p.defining = s.send(WordCommand::Define {
        name: name.to_owned(),
        prompts: default_definition_prompts(chat),
        max_new_tokens: 40,
        sampling: Sampling::GREEDY,
    });
}

/// Answers to the seed's new-example prompts with `name`.
pub fn new_examples(p: &mut WordsPanel, s: &mut Shared, name: &str) {
    p.new_examples.clear();
    p.generating = s.send(WordCommand::Define {
        name: name.to_owned(),
        prompts: NEW_EXAMPLE_PROMPTS
            .iter()
            .map(|t| ((*t).to_owned(), false))
            .collect(),
        max_new_tokens: NEW_EXAMPLE_TOKENS,
        sampling: Sampling::GREEDY,
    });
}

/// Cosines of `name` with the panel's similarity list.
pub fn cosines(p: &mut WordsPanel, s: &mut Shared, name: &str) {
    let words: Vec<String> = p.similar.split_whitespace().map(str::to_owned).collect();
    p.measuring = s.send(WordCommand::Neighbors {
        expr: name.to_owned(),
        k: 0,
        others: words,
        save_as: None,
    });
}

pub(super) fn definitions(p: &mut WordsPanel, s: &mut Shared, ui: &mut egui::Ui, name: &str) {
    ui.horizontal(|ui| {
        ui.strong("What does it mean?");
        let busy = p.defining.is_some() || p.training.is_some();
        let chat = s.model_info().is_some_and(|i| i.has_chat_template);
        if ui
            .add_enabled(!busy, egui::Button::new("Ask the model"))
            .clicked()
        {
            ask(p, s, name, chat);
        }
        if p.defining.is_some() {
            ui.spinner();
        }
    });
    let mut evaluate = None;
    let busy = p.evaluating.is_some();
    for d in &p.definitions {
        ui.horizontal_wrapped(|ui| {
            ui.monospace(if d.chat { "chat " } else { "plain" });
            ui.strong(&d.prompt);
            ui.label(&d.text);
            if ui
                .add_enabled(
                    !busy && !d.text.trim().is_empty(),
                    egui::Button::new("plug in").small(),
                )
                .on_hover_text(
                    "Put this definition in place of the word on held-out examples and measure how \
                     much of the word's effect on their targets it recovers",
                )
                .clicked()
            {
                evaluate = Some(d.text.trim().to_owned());
            }
        });
    }
    if !p.definitions.is_empty() {
        ui.horizontal(|ui| {
            ui.label("held-out set for plug-in");
            ui.selectable_value(&mut p.heldout_set, "pun".to_owned(), "puns");
            ui.selectable_value(&mut p.heldout_set, "literal".to_owned(), "literal");
            if busy {
                ui.spinner();
            }
        });
    }
    for (set, r) in &p.plugins {
        ui.label(format!(
            "{:.0}% recovered on {set}: mean target log-prob {:.2} with the word, {:.2} with \"{}\", {:.2} without",
            r.recovered * 100.0,
            r.with_word,
            r.with_text,
            r.text.chars().take(40).collect::<String>(),
            r.without_word
        ));
    }
    if let Some(text) = evaluate {
        start_plugin(p, s, name, text);
    }
}

/// Plug-in evaluation of `text` in place of word `name` on the chosen shipped held-out set.
fn start_plugin(p: &mut WordsPanel, s: &mut Shared, name: &str, text: String) {
    let sets = match crate::assets::shipped_heldout() {
        Ok(s) => s,
        Err(e) => {
            s.error = Some(e.to_string());
            return;
        }
    };
    let Some((_, pairs)) = sets.into_iter().find(|(n, _)| *n == p.heldout_set) else {
        return;
    };
    let heldout = pairs
        .into_iter()
        .map(|(p, t)| (p.replace("{w}", name), t))
        .collect();
    p.evaluating = s.send(WordCommand::Evaluate {
        name: name.to_owned(),
        heldout,
        text,
    });
}

/// "Can it make new ones?" (the seed's new-example prompts) and the similarity list.
pub(super) fn explore(p: &mut WordsPanel, s: &mut Shared, ui: &mut egui::Ui, name: &str) {
    ui.horizontal(|ui| {
        ui.strong("Can it make new ones?");
        let busy = p.generating.is_some() || p.training.is_some();
        if ui
            .add_enabled(!busy, egui::Button::new("Generate"))
            .on_hover_text("Greedy answers to the seed's prompts: “Here is a new {w}:”, …")
            .clicked()
        {
            new_examples(p, s, name);
        }
        if p.generating.is_some() {
            ui.spinner();
        }
    });
    for d in &p.new_examples {
        ui.horizontal_wrapped(|ui| {
            ui.strong(&d.prompt);
            ui.label(&d.text);
        });
    }
    ui.horizontal_wrapped(|ui| {
        ui.strong("Similar to");
        ui.add(
            egui::TextEdit::singleline(&mut p.similar)
                .desired_width(240.0)
                .hint_text("ordinary words, space-separated"),
        );
        if ui
            .add_enabled(
                p.measuring.is_none() && !p.similar.trim().is_empty(),
                egui::Button::new("Cosines"),
            )
            .on_hover_text("Cosine similarity of the word's vector with each word's embedding")
            .clicked()
        {
            cosines(p, s, name);
        }
        for (w, c) in &p.similarities {
            ui.monospace(format!("{w} {c:+.3}"));
        }
    });
}

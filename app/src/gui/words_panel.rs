//! The Words panel: create a word, edit its dataset in a table (add, edit, delete; import and
//! export JSONL/CSV), pick loss, initialisation, injection point and hyperparameters, train
//! with a live loss plot and a cancel button, save and load words, ask what a word means.

use neoscope_api::words::WordCommand;
use std::collections::HashMap;
use std::path::Path;

use egui_plot::{Legend, Line, Plot, PlotPoints};
use neoscope_api::RequestId;
use neoscope_api::dataset::{self, Example};
use neoscope_api::text::Sampling;
use neoscope_api::words::WordInfo;
use neoscope_api::words::{Definition, PlugIn, default_definition_prompts};
use neoscope_api::words::{Init, Injection};
use neoscope_api::words::{Loss, TrainConfig};

use super::dialogs::{Mode, Pending};
use super::{NeoApp, Owner};

/// How a new word starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitKind {
    /// Small random values.
    Random,
    /// Mean of existing words' embeddings.
    Words,
    /// Zeros.
    Zero,
}

/// What a file dialog's answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    /// Import a dataset.
    Import,
    /// Export the dataset.
    Export,
    /// Save the selected word.
    SaveWord,
    /// Load a word file.
    LoadWord,
    /// Export the loss history as CSV.
    ExportLosses,
}

/// One editable dataset row. `rejected` empty means a completion row (`target` = `chosen`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    /// Prompt naming the word.
    pub prompt: String,
    /// Target (or chosen) completion.
    pub target: String,
    /// Rejected completion (preference rows only).
    pub rejected: String,
}

impl Row {
    fn to_example(&self) -> Example {
        if self.rejected.trim().is_empty() {
            Example::Completion {
                prompt: self.prompt.clone(),
                target: self.target.clone(),
            }
        } else {
            Example::Preference {
                prompt: self.prompt.clone(),
                chosen: self.target.clone(),
                rejected: self.rejected.clone(),
            }
        }
    }

    fn from_example(e: &Example) -> Self {
        match e {
            Example::Completion { prompt, target } => Self {
                prompt: prompt.clone(),
                target: target.clone(),
                rejected: String::new(),
            },
            Example::Preference {
                prompt,
                chosen,
                rejected,
            } => Self {
                prompt: prompt.clone(),
                target: chosen.clone(),
                rejected: rejected.clone(),
            },
        }
    }
}

/// State of the Words panel.
pub struct WordsPanel {
    /// Words the engine knows.
    pub words: Vec<WordInfo>,
    /// The word being edited.
    pub selected: Option<String>,
    /// New word's name.
    pub new_name: String,
    /// New word's initialisation.
    pub init_kind: InitKind,
    /// Words to average for `InitKind::Words`.
    pub init_words: String,
    /// Seed for random initialisation.
    pub init_seed: u64,
    /// Inject at the residual stream before this layer (None: embedding).
    pub layer: Option<usize>,
    /// Dataset rows per word.
    pub datasets: HashMap<String, Vec<Row>>,
    /// Training settings.
    pub config: TrainConfig,
    /// Use the preference loss.
    pub preference: bool,
    /// Running training.
    pub training: Option<RequestId>,
    /// Live per-step losses of the current or last run.
    pub live: Vec<f32>,
    /// Steps planned in the current run.
    pub total_steps: usize,
    /// How the last run ended.
    pub last_result: Option<String>,
    /// Definitions of the selected word.
    pub definitions: Vec<Definition>,
    /// Running definition request.
    pub defining: Option<RequestId>,
    /// Plug-in evaluations of definitions (shipped held-out set name, result).
    pub plugins: Vec<(String, PlugIn)>,
    /// Running plug-in evaluation.
    pub evaluating: Option<RequestId>,
    /// Which shipped held-out set plug-in evaluation uses.
    pub heldout_set: String,
    /// File dialog in flight.
    pub dialog: Option<Pending<FileAction>>,
}

impl Default for WordsPanel {
    fn default() -> Self {
        Self {
            words: Vec::new(),
            selected: None,
            new_name: "<pun>".into(),
            init_kind: InitKind::Random,
            init_words: "joke".into(),
            init_seed: 0,
            layer: None,
            datasets: HashMap::new(),
            config: TrainConfig::default(),
            preference: false,
            training: None,
            live: Vec::new(),
            total_steps: 0,
            last_result: None,
            definitions: Vec::new(),
            defining: None,
            plugins: Vec::new(),
            evaluating: None,
            heldout_set: "pun".into(),
            dialog: None,
        }
    }
}

impl WordsPanel {
    /// Loads a shipped or file dataset into the selected word's table, replacing the word
    /// placeholder of the file (`<pun>`, `<lit>`) with the selected name.
    pub fn set_rows(&mut self, word: &str, examples: &[Example]) {
        let rows = examples
            .iter()
            .map(|e| {
                let mut r = Row::from_example(e);
                for placeholder in ["<pun>", "<lit>"] {
                    r.prompt = r.prompt.replace(placeholder, word);
                }
                r
            })
            .collect();
        self.datasets.insert(word.to_owned(), rows);
    }
}

/// Starts training the selected word on its table.
pub fn start_training(app: &mut NeoApp) {
    let p = &mut app.words;
    let Some(name) = p.selected.clone() else {
        return;
    };
    let data: Vec<Example> = p
        .datasets
        .get(&name)
        .map(|rows| rows.iter().map(Row::to_example).collect())
        .unwrap_or_default();
    let mut config = p.config.clone();
    config.loss = if p.preference {
        Loss::Preference { beta: 0.2 }
    } else {
        Loss::CrossEntropy
    };
    p.live.clear();
    p.total_steps = 0;
    p.last_result = None;
    app.words.training = app.send(
        WordCommand::Train {
            names: vec![name],
            data,
            config,
        },
        Owner::Train,
    );
}

fn create_word(app: &mut NeoApp) {
    let p = &app.words;
    let init = match p.init_kind {
        InitKind::Random => Init::Random {
            std: 0.02,
            seed: p.init_seed,
        },
        InitKind::Words => {
            Init::Words(p.init_words.split_whitespace().map(str::to_owned).collect())
        }
        InitKind::Zero => Init::Zero,
    };
    let injection = p.layer.map_or(Injection::Embedding, Injection::ResidPre);
    let name = p.new_name.trim().to_owned();
    app.words.selected = Some(name.clone());
    app.words.datasets.entry(name.clone()).or_default();
    app.send(
        WordCommand::Create {
            name,
            init,
            injection,
        },
        Owner::Words,
    );
}

fn handle_dialog(app: &mut NeoApp) {
    let Some(d) = &app.words.dialog else { return };
    let Some(answer) = d.poll() else { return };
    let action = d.purpose;
    app.words.dialog = None;
    let Some(path) = answer else { return };
    let Some(name) = app.words.selected.clone() else {
        if action == FileAction::LoadWord {
            app.send(WordCommand::Load { path }, Owner::Words);
        }
        return;
    };
    match action {
        FileAction::Import => match dataset::load(&path) {
            Ok(ds) => app.words.set_rows(&name, &ds.examples),
            Err(e) => app.error = Some(e.to_string()),
        },
        FileAction::Export => {
            let examples: Vec<Example> = app
                .words
                .datasets
                .get(&name)
                .map(|r| r.iter().map(Row::to_example).collect())
                .unwrap_or_default();
            if let Err(e) = dataset::save_jsonl(&examples, &path.with_extension("jsonl")) {
                app.error = Some(e.to_string());
            }
        }
        FileAction::SaveWord => {
            app.send(
                WordCommand::Save {
                    names: vec![name],
                    path,
                },
                Owner::Words,
            );
        }
        FileAction::LoadWord => {
            app.send(WordCommand::Load { path }, Owner::Words);
        }
        FileAction::ExportLosses => {
            let csv = losses_csv(&app.words.live);
            let path = path.with_extension("csv");
            if let Err(e) = neoscope_api::files::write_atomic(&path, csv.as_bytes()) {
                app.error = Some(e.to_string());
            }
        }
    }
}

/// The per-step losses as CSV (`step,loss`).
pub fn losses_csv(losses: &[f32]) -> String {
    let mut out = String::from("step,loss\n");
    for (i, l) in losses.iter().enumerate() {
        out.push_str(&format!("{},{l}\n", i + 1));
    }
    out
}

fn dialog(app: &mut NeoApp, action: FileAction) {
    let name = app
        .words
        .selected
        .clone()
        .unwrap_or_default()
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned();
    app.words.dialog = Some(match action {
        FileAction::Import => Pending::new(
            action,
            Mode::Open,
            "Import a dataset",
            ("Dataset", &["jsonl", "csv"]),
            "",
        ),
        FileAction::Export => Pending::new(
            action,
            Mode::Save,
            "Export the dataset",
            ("JSONL", &["jsonl"]),
            &format!("{name}.jsonl"),
        ),
        FileAction::SaveWord => Pending::new(
            action,
            Mode::Save,
            "Save the word",
            ("Word file", &["json"]),
            &format!("{name}.json"),
        ),
        FileAction::LoadWord => Pending::new(
            action,
            Mode::Open,
            "Load a word file",
            ("Word file", &["json"]),
            "",
        ),
        FileAction::ExportLosses => Pending::new(
            action,
            Mode::Save,
            "Export the losses",
            ("CSV", &["csv"]),
            &format!("{name}-losses.csv"),
        ),
    });
}

/// Draws the Words panel.
pub fn show(app: &mut NeoApp, ui: &mut egui::Ui) {
    handle_dialog(app);
    ui.heading("Words");
    if app.model_info().is_none() {
        ui.label("Load a model in the Model panel first.");
        return;
    }
    egui::Panel::left("words_list")
        .resizable(false)
        .exact_size(230.0)
        .show(ui, |ui| word_list(app, ui));
    egui::CentralPanel::default().show(ui, |ui| {
        let Some(name) = app.words.selected.clone() else {
            ui.label("Create a word on the left, or load a word file.");
            return;
        };
        if !app.words.words.iter().any(|w| w.name == name) {
            ui.label(format!("Creating {name}…"));
            return;
        }
        egui::ScrollArea::vertical().show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading(&name);
                if let Some(w) = app.words.words.iter().find(|w| w.name == name) {
                    ui.weak(format!("norm {:.3} · {:?}", w.norm, w.injection));
                }
            });
            dataset_table(app, ui, &name);
            ui.separator();
            training(app, ui, &name);
            ui.separator();
            definitions(app, ui, &name);
        });
    });
}

fn word_list(app: &mut NeoApp, ui: &mut egui::Ui) {
    ui.strong("Words");
    let names: Vec<String> = app.words.words.iter().map(|w| w.name.clone()).collect();
    for n in &names {
        let sel = app.words.selected.as_deref() == Some(n);
        if ui.selectable_label(sel, n).clicked() {
            app.words.selected = Some(n.clone());
            app.words.definitions.clear();
            app.words.plugins.clear();
            app.words.live = app
                .words
                .words
                .iter()
                .find(|w| &w.name == n)
                .map(|w| w.losses.clone())
                .unwrap_or_default();
        }
    }
    if names.is_empty() {
        ui.weak("No words yet.");
    }
    ui.separator();
    ui.strong("New word");
    let p = &mut app.words;
    ui.horizontal(|ui| {
        ui.label("name");
        ui.add(egui::TextEdit::singleline(&mut p.new_name).desired_width(120.0));
    });
    ui.horizontal(|ui| {
        ui.label("init");
        ui.selectable_value(&mut p.init_kind, InitKind::Random, "random");
        ui.selectable_value(&mut p.init_kind, InitKind::Words, "words");
        ui.selectable_value(&mut p.init_kind, InitKind::Zero, "zero");
    });
    match p.init_kind {
        InitKind::Random => {
            ui.horizontal(|ui| {
                ui.label("seed");
                ui.add(egui::DragValue::new(&mut p.init_seed));
            });
        }
        InitKind::Words => {
            ui.add(egui::TextEdit::singleline(&mut p.init_words).hint_text("words to average"));
        }
        InitKind::Zero => {}
    }
    let mut at_layer = p.layer.is_some();
    ui.checkbox(&mut at_layer, "inject at a layer")
        .on_hover_text(
            "Put the vector into the residual stream before a layer instead of the embedding",
        );
    if at_layer {
        let mut l = p.layer.unwrap_or(0);
        let n = app.model.info.as_ref().map_or(1, |i| i.dims.n_layers);
        ui.add(egui::Slider::new(&mut l, 0..=n.saturating_sub(1)).text("layer"));
        app.words.layer = Some(l);
    } else {
        app.words.layer = None;
    }
    let valid = !app.words.new_name.trim().is_empty() && !app.words.new_name.contains(' ');
    if ui.add_enabled(valid, egui::Button::new("Create")).clicked() {
        create_word(app);
    }
    ui.separator();
    ui.horizontal(|ui| {
        if ui.button("Load word…").clicked() {
            dialog(app, FileAction::LoadWord);
        }
        let has = app.words.selected.is_some();
        if ui
            .add_enabled(has, egui::Button::new("Save word…"))
            .clicked()
        {
            dialog(app, FileAction::SaveWord);
        }
    });
    if let Some(name) = app.words.selected.clone()
        && ui
            .button("Steer the lens with it")
            .on_hover_text("Add this word's vector to the residual stream in the Lens panel")
            .clicked()
    {
        app.lens.steer_word = Some(name);
        app.panel = super::PanelKind::Lens;
    }
}

fn dataset_table(app: &mut NeoApp, ui: &mut egui::Ui, name: &str) {
    ui.horizontal(|ui| {
        ui.strong("Dataset");
        egui::ComboBox::from_id_salt("shipped")
            .selected_text("Use a shipped dataset")
            .show_ui(ui, |ui| {
                for (label, key) in [("pun (40 rows)", "pun"), ("literal (40 rows)", "literal")] {
                    if ui.selectable_label(false, label).clicked()
                        && let Some(text) = crate::assets::dataset(key)
                    {
                        match dataset::parse_jsonl(text, Path::new(key)) {
                            Ok(ds) => app.words.set_rows(name, &ds.examples),
                            Err(e) => app.error = Some(e.to_string()),
                        }
                    }
                }
            });
        if ui.button("Import…").clicked() {
            dialog(app, FileAction::Import);
        }
        if ui.button("Export…").clicked() {
            dialog(app, FileAction::Export);
        }
    });
    let rows = app.words.datasets.entry(name.to_owned()).or_default();
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

fn training(app: &mut NeoApp, ui: &mut egui::Ui, name: &str) {
    ui.strong("Training");
    let p = &mut app.words;
    ui.horizontal_wrapped(|ui| {
        ui.label("loss");
        ui.selectable_value(&mut p.preference, false, "cross-entropy");
        ui.selectable_value(&mut p.preference, true, "preference (DPO + APO-up)");
        ui.separator();
        ui.label("lr");
        ui.add(
            egui::DragValue::new(&mut p.config.lr)
                .speed(0.001)
                .range(1e-5..=5.0),
        );
        ui.label("epochs");
        ui.add(egui::DragValue::new(&mut p.config.epochs).range(1..=500));
        ui.label("batch");
        ui.add(egui::DragValue::new(&mut p.config.batch_size).range(1..=64));
        ui.label("seed");
        ui.add(egui::DragValue::new(&mut p.config.seed));
    });
    let rows = p.datasets.get(name).map_or(0, Vec::len);
    ui.horizontal(|ui| match app.words.training {
        Some(id) => {
            if ui.button("Cancel").clicked() {
                app.cancel(id);
            }
            let done = app.words.live.len();
            let total = app.words.total_steps.max(1);
            let frac = done as f32 / total as f32;
            ui.add(
                egui::ProgressBar::new(frac)
                    .text(format!("step {done}/{total}"))
                    .desired_width(240.0),
            );
        }
        None => {
            if ui
                .add_enabled(rows > 0, egui::Button::new("Train"))
                .clicked()
            {
                start_training(app);
            }
            if !app.words.live.is_empty() && ui.button("Export losses…").clicked() {
                dialog(app, FileAction::ExportLosses);
            }
            if let Some(r) = &app.words.last_result {
                ui.weak(r);
            }
        }
    });
    let rect = loss_plot(ui, &[(name, &app.words.live)], 180.0);
    if !app.words.live.is_empty()
        && app.png.is_none()
        && ui.small_button("Save plot as PNG…").clicked()
    {
        let file = format!("{}-loss.png", name.trim_matches(|c| c == '<' || c == '>'));
        app.png = Some(super::png_export::PngExport::start(rect, &file));
    }
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

fn definitions(app: &mut NeoApp, ui: &mut egui::Ui, name: &str) {
    ui.horizontal(|ui| {
        ui.strong("What does it mean?");
        let busy = app.words.defining.is_some() || app.words.training.is_some();
        let chat = app.model_info().is_some_and(|i| i.has_chat_template);
        if ui
            .add_enabled(!busy, egui::Button::new("Ask the model"))
            .clicked()
        {
            app.words.definitions.clear();
            app.words.plugins.clear();
            app.words.defining = app.send(
                WordCommand::Define {
                    name: name.to_owned(),
                    prompts: default_definition_prompts(chat),
                    max_new_tokens: 40,
                    sampling: Sampling::GREEDY,
                },
                Owner::Define,
            );
        }
        if app.words.defining.is_some() {
            ui.spinner();
        }
    });
    let mut evaluate = None;
    let busy = app.words.evaluating.is_some();
    for d in &app.words.definitions {
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
    if !app.words.definitions.is_empty() {
        ui.horizontal(|ui| {
            ui.label("held-out set for plug-in");
            ui.selectable_value(&mut app.words.heldout_set, "pun".to_owned(), "puns");
            ui.selectable_value(&mut app.words.heldout_set, "literal".to_owned(), "literal");
            if busy {
                ui.spinner();
            }
        });
    }
    for (set, r) in &app.words.plugins {
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
        start_plugin(app, name, text);
    }
}

/// Plug-in evaluation of `text` in place of word `name` on the chosen shipped held-out set.
fn start_plugin(app: &mut NeoApp, name: &str, text: String) {
    let sets = match crate::assets::shipped_heldout() {
        Ok(s) => s,
        Err(e) => {
            app.error = Some(e.to_string());
            return;
        }
    };
    let Some((_, pairs)) = sets.into_iter().find(|(n, _)| *n == app.words.heldout_set) else {
        return;
    };
    let heldout = pairs
        .into_iter()
        .map(|(p, t)| (p.replace("{w}", name), t))
        .collect();
    app.words.evaluating = app.send(
        WordCommand::Evaluate {
            name: name.to_owned(),
            heldout,
            text,
        },
        Owner::Evaluate,
    );
}

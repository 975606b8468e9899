//! The Words panel: create a word, edit its dataset in a table (add, edit, delete; import and
//! export JSONL/CSV), pick loss, initialisation, injection point and hyperparameters, train
//! with a live loss plot and a cancel button, save and load words, ask what a word means.

use neoscope_api::words::WordCommand;
use std::collections::HashMap;

use neoscope_api::dataset::{self, Example};
use neoscope_api::words::{Definition, PlugIn, StopReason, WordResult};
use neoscope_api::words::{Init, Injection};
use neoscope_api::words::{Loss, TrainConfig};
use neoscope_api::{Event, JobResult, RequestId};

use super::dialogs::{Mode, Pending};
use super::lessons::Do;
use super::panel::{Message, Panel, Shared, clear_id};
use super::words_training::training;
use super::words_views::{ask, cosines, dataset_table, definitions, explore, new_examples};

/// How a new word starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// Answers to the new-example prompts ("can it make new ones?").
    pub new_examples: Vec<Definition>,
    /// Running new-example request.
    pub generating: Option<RequestId>,
    /// Ordinary words the selected word is compared with (cosine), space-separated.
    pub similar: String,
    /// The selected word's cosine with each of them.
    pub similarities: Vec<(String, f32)>,
    /// Running similarity request.
    pub measuring: Option<RequestId>,
}

impl Default for WordsPanel {
    fn default() -> Self {
        Self {
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
            new_examples: Vec::new(),
            generating: None,
            similar: neoscope_api::words::SIMILARITY_WORDS.join(" "),
            similarities: Vec::new(),
            measuring: None,
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

impl Panel for WordsPanel {
    super::panel::panel_settings!(
        new_name,
        init_kind,
        init_words,
        init_seed,
        layer,
        datasets,
        config,
        preference,
        heldout_set,
        similar
    );

    fn title(&self) -> &'static str {
        "Words"
    }

    fn show(&mut self, s: &mut Shared, ui: &mut egui::Ui) {
        show(self, s, ui);
    }

    fn stream(&mut self, _s: &mut Shared, ev: Event) {
        if let Event::TrainStep { step, .. } = ev {
            self.live.push(step.loss);
            self.total_steps = step.total_steps;
        }
    }

    fn finished(&mut self, s: &mut Shared, id: RequestId, result: JobResult) {
        let new_examples = self.generating == Some(id);
        self.failed(id);
        let JobResult::Words(r) = result else { return };
        match *r {
            WordResult::List(words) => s.words = words,
            WordResult::Saved { path } => s.notice = Some(format!("Saved {}", path.display())),
            WordResult::Trained {
                losses,
                epoch_losses,
                stop,
                words,
            } => {
                self.live = losses;
                s.words = words;
                let trend = match (epoch_losses.first(), epoch_losses.last()) {
                    (Some(f), Some(l)) => format!("epoch loss {f:.3} to {l:.3}"),
                    _ => "no full epoch".into(),
                };
                self.last_result = Some(match stop {
                    StopReason::Completed => format!("Done: {trend}"),
                    StopReason::Cancelled => format!("Cancelled; best vector kept ({trend})"),
                    StopReason::Diverged(msg) => msg,
                });
            }
            WordResult::Evaluation(r) => self.plugins.push((self.heldout_set.clone(), r)),
            WordResult::Definitions(defs) if new_examples => self.new_examples = defs,
            WordResult::Definitions(defs) => self.definitions = defs,
            WordResult::Neighbors { similarities, .. } => self.similarities = similarities,
            // Comparisons and preferences belong to the Compare panel; steering to the CLI.
            WordResult::Comparison(_) | WordResult::Preference(_) | WordResult::Steering(_) => {}
        }
    }

    fn receive(&mut self, s: &mut Shared, msg: &Message) {
        let Message::Lesson(action) = msg else { return };
        match action {
            Do::Word { name, data, config } => lesson_word(self, s, name, data, config),
            Do::Define(name) => {
                self.selected = Some((*name).to_owned());
                let chat = s.model_info().is_some_and(|i| i.has_chat_template);
                ask(self, s, name, chat);
            }
            Do::NewExamples(name) => {
                self.selected = Some((*name).to_owned());
                new_examples(self, s, name);
            }
            Do::Similar(name) => {
                self.selected = Some((*name).to_owned());
                cosines(self, s, name);
            }
            _ => {}
        }
    }

    fn failed(&mut self, id: RequestId) {
        clear_id(&mut self.training, id);
        clear_id(&mut self.defining, id);
        clear_id(&mut self.evaluating, id);
        clear_id(&mut self.generating, id);
        clear_id(&mut self.measuring, id);
    }
}

/// A lesson's word: created afresh (small random vector), the shipped dataset `data` in its
/// table, trained with `config` (the engine runs the two requests in order).
fn lesson_word(p: &mut WordsPanel, s: &mut Shared, name: &str, data: &str, config: &TrainConfig) {
    let examples = crate::assets::dataset(data)
        .ok_or_else(|| format!("no shipped dataset {data}"))
        .and_then(|t| {
            dataset::parse_jsonl(t, std::path::Path::new(data)).map_err(|e| e.to_string())
        });
    let examples = match examples {
        Ok(ds) => ds.examples,
        Err(e) => {
            s.error = Some(e);
            return;
        }
    };
    name.clone_into(&mut p.new_name);
    p.init_kind = InitKind::Random;
    p.layer = None;
    create_word(p, s);
    p.set_rows(name, &examples);
    p.config = config.clone();
    p.preference = matches!(config.loss, Loss::Preference { .. });
    start_training(p, s);
}

/// Starts training the selected word on its table.
pub fn start_training(p: &mut WordsPanel, s: &mut Shared) {
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
    p.training = s.send(WordCommand::Train {
        origin: None,
        names: vec![name],
        data,
        config,
    });
}

fn create_word(p: &mut WordsPanel, s: &mut Shared) {
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
    p.selected = Some(name.clone());
    p.datasets.entry(name.clone()).or_default();
    s.send(WordCommand::Create {
        name,
        init,
        injection,
    });
}

fn handle_dialog(p: &mut WordsPanel, s: &mut Shared) {
    let Some(d) = &p.dialog else { return };
    let Some(answer) = d.poll() else { return };
    let action = d.purpose;
    p.dialog = None;
    let Some(path) = answer else { return };
    let Some(name) = p.selected.clone() else {
        if action == FileAction::LoadWord {
            s.send(WordCommand::Load { path });
        }
        return;
    };
    match action {
        FileAction::Import => match dataset::load(&path) {
            Ok(ds) => p.set_rows(&name, &ds.examples),
            Err(e) => s.error = Some(e.to_string()),
        },
        FileAction::Export => {
            let examples: Vec<Example> = p
                .datasets
                .get(&name)
                .map(|r| r.iter().map(Row::to_example).collect())
                .unwrap_or_default();
            if let Err(e) = dataset::save_jsonl(&examples, &path.with_extension("jsonl")) {
                s.error = Some(e.to_string());
            }
        }
        FileAction::SaveWord => {
            s.send(WordCommand::Save {
                names: vec![name],
                path,
            });
        }
        FileAction::LoadWord => {
            s.send(WordCommand::Load { path });
        }
        FileAction::ExportLosses => {
            let csv = losses_csv(&p.live);
            let path = path.with_extension("csv");
            if let Err(e) = neoscope_api::files::write_atomic(&path, csv.as_bytes()) {
                s.error = Some(e.to_string());
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

pub(super) fn dialog(p: &mut WordsPanel, action: FileAction) {
    let name = p
        .selected
        .clone()
        .unwrap_or_default()
        .trim_matches(|c| c == '<' || c == '>')
        .to_owned();
    p.dialog = Some(match action {
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
fn show(p: &mut WordsPanel, s: &mut Shared, ui: &mut egui::Ui) {
    handle_dialog(p, s);
    ui.heading("Words");
    if s.model_info().is_none() {
        ui.label("Load a model in the Model panel first.");
        return;
    }
    egui::Panel::left("words_list")
        .resizable(false)
        .exact_size(230.0)
        .show(ui, |ui| word_list(p, s, ui));
    egui::CentralPanel::default().show(ui, |ui| {
        let Some(name) = p.selected.clone() else {
            ui.label("Create a word on the left, or load a word file.");
            return;
        };
        if !s.words.iter().any(|w| w.name == name) {
            ui.label(format!("Creating {name}…"));
            return;
        }
        egui::ScrollArea::vertical().show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading(&name);
                if let Some(w) = s.words.iter().find(|w| w.name == name) {
                    ui.weak(format!("norm {:.3} · {:?}", w.norm, w.injection));
                }
            });
            dataset_table(p, s, ui, &name);
            ui.separator();
            training(p, s, ui, &name);
            ui.separator();
            definitions(p, s, ui, &name);
            ui.separator();
            explore(p, s, ui, &name);
        });
    });
}

fn word_list(p: &mut WordsPanel, s: &mut Shared, ui: &mut egui::Ui) {
    ui.strong("Words");
    let names: Vec<String> = s.words.iter().map(|w| w.name.clone()).collect();
    for n in &names {
        let sel = p.selected.as_deref() == Some(n);
        if ui.selectable_label(sel, n).clicked() {
            p.selected = Some(n.clone());
            p.definitions.clear();
            p.plugins.clear();
            p.new_examples.clear();
            p.similarities.clear();
            p.live = s
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
        let n = s.model.as_ref().map_or(1, |i| i.dims.n_layers);
        ui.add(egui::Slider::new(&mut l, 0..=n.saturating_sub(1)).text("layer"));
        p.layer = Some(l);
    } else {
        p.layer = None;
    }
    let valid = !p.new_name.trim().is_empty() && !p.new_name.contains(' ');
    if ui.add_enabled(valid, egui::Button::new("Create")).clicked() {
        create_word(p, s);
    }
    ui.separator();
    ui.horizontal(|ui| {
        if ui.button("Load word…").clicked() {
            dialog(p, FileAction::LoadWord);
        }
        let has = p.selected.is_some();
        if ui
            .add_enabled(has, egui::Button::new("Save word…"))
            .clicked()
        {
            dialog(p, FileAction::SaveWord);
        }
    });
    if let Some(name) = p.selected.clone()
        && ui
            .button("Steer the lens with it")
            .on_hover_text("Add this word's vector to the residual stream in the Lens panel")
            .clicked()
    {
        s.post(Message::SteerLensWithWord(name));
        s.goto("Lens");
    }
}

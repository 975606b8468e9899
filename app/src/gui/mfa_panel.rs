//! The MFA panel: collect activations and fit a mixture of factor analyzers (live NLL curve,
//! cancel), browse components and their top contexts, and look inside one component's subspace
//! and steer toward it (in `mfa_views`).

use neoscope_api::hooks::HookPoint;
use neoscope_api::mfa::MfaResult;
use neoscope_api::mfa::SteerReport;
use neoscope_api::mfa::{ComponentInfo, ContextSample};
use neoscope_api::mfa::{InitKind, MfaConfig, MfaEpoch, MfaReport};
use neoscope_api::mfa::{MfaCommand, SubspacePoint};
use neoscope_api::{Command, Event, JobResult, RequestId};

use super::dialogs::Pending;
use super::lessons::Do;
pub use super::mfa_files::{MfaFile, components_csv};
use super::mfa_files::{dialog, handle_dialog};
use super::panel::{JobView, Message, Panel, Shared, clear_id};

/// A fitted (or loaded) MFA as the panel shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FittedView {
    /// Hook point.
    pub point: HookPoint,
    /// Settings.
    pub config: Option<MfaConfig>,
    /// Fit report.
    pub report: Option<MfaReport>,
    /// Components.
    pub components: Vec<ComponentInfo>,
    /// Coherence (observed, chance).
    pub coherence: Option<(f64, f64)>,
}

/// State of the MFA panel.
pub struct MfaPanel {
    /// Layer whose `hook_resid_post` is collected (None: the middle layer).
    pub layer: Option<usize>,
    /// Tokens per window.
    pub window: usize,
    /// Extra text files (the shipped corpus is always used unless disabled).
    pub texts: Vec<std::path::PathBuf>,
    /// Use the shipped corpus.
    pub shipped: bool,
    /// Keep at most this many activations (seeded sample); 0 keeps all.
    pub max: usize,
    /// Fit settings.
    pub config: MfaConfig,
    /// Running collect/fit/load job.
    pub job: Option<JobView>,
    /// Epochs of the running or last fit.
    pub epochs: Vec<MfaEpoch>,
    /// Activations ready: (count, width, point).
    pub acts: Option<(usize, usize, HookPoint)>,
    /// The fitted MFA.
    pub fitted: Option<FittedView>,
    /// Selected component.
    pub selected: Option<usize>,
    /// Show contexts by responsibility instead of likelihood.
    pub by_responsibility: bool,
    /// How the shown contexts are drawn from the top ones.
    pub sample: ContextSample,
    /// A new draw of contexts in flight.
    pub drawing: Option<RequestId>,
    /// Scatter points labelled with their token (at most).
    pub max_labels: usize,
    /// Counts changes of the engine's activations or MFA (the session keeps them on change).
    pub generation: u64,
    /// Subspace points of the selected component.
    pub subspace: Option<(usize, Vec<SubspacePoint>)>,
    /// Subspace request in flight.
    pub subspace_running: Option<RequestId>,
    /// Latent dimensions plotted.
    pub dims: (usize, usize),
    /// Steering prompt.
    pub prompt: String,
    /// Centroid weight.
    pub alpha: f32,
    /// Latent offset.
    pub z: Vec<f32>,
    /// Steered layers, comma-separated (empty: the fitted one).
    pub steer_layers: String,
    /// Steer only the last position (and generated ones).
    pub last_only: bool,
    /// Steering request in flight.
    pub steering: Option<RequestId>,
    /// Last steering result.
    pub steer: Option<SteerReport>,
    /// File dialog in flight.
    pub dialog: Option<Pending<MfaFile>>,
    /// Where the plots were drawn (PNG export).
    pub plots_rect: Option<egui::Rect>,
}

impl Default for MfaPanel {
    fn default() -> Self {
        Self {
            layer: None,
            window: 64,
            texts: Vec::new(),
            shipped: true,
            max: 0,
            config: MfaConfig::cpu_default(),
            job: None,
            epochs: Vec::new(),
            acts: None,
            fitted: None,
            selected: None,
            by_responsibility: false,
            sample: ContextSample::default(),
            drawing: None,
            max_labels: 250,
            generation: 0,
            subspace: None,
            subspace_running: None,
            dims: (0, 1),
            prompt: "I think that".into(),
            alpha: 0.6,
            z: Vec::new(),
            steer_layers: String::new(),
            last_only: false,
            steering: None,
            steer: None,
            dialog: None,
            plots_rect: None,
        }
    }
}

impl Panel for MfaPanel {
    super::panel::panel_settings!(
        layer,
        window,
        texts,
        shipped,
        max,
        config,
        by_responsibility,
        sample,
        max_labels,
        prompt,
        alpha,
        steer_layers,
        last_only
    );

    fn title(&self) -> &'static str {
        "MFA"
    }

    fn show(&mut self, s: &mut Shared, ui: &mut egui::Ui) {
        show(self, s, ui);
    }

    fn progress(&mut self, id: RequestId, stage: String, fraction: Option<f32>) {
        JobView::update(&mut self.job, id, stage, fraction);
    }

    fn stream(&mut self, _s: &mut Shared, ev: Event) {
        if let Event::MfaEpoch { epoch, .. } = ev {
            self.epochs.push(epoch);
        }
    }

    fn finished(&mut self, s: &mut Shared, id: RequestId, result: JobResult) {
        let redraw = self.drawing == Some(id);
        self.failed(id);
        let JobResult::Mfa(r) = result else { return };
        match *r {
            MfaResult::Model { components, .. } if redraw => {
                if let Some(f) = &mut self.fitted {
                    f.components = components;
                }
            }
            MfaResult::Activations {
                count, d, point, ..
            } => {
                self.generation += 1;
                self.acts = Some((count, d, point));
                s.notice = Some(format!("{count} activations collected at {point}"));
            }
            MfaResult::Model {
                point,
                config,
                report,
                components,
                coherence,
            } => {
                let v = FittedView {
                    point,
                    config,
                    report,
                    components,
                    coherence,
                };
                self.generation += 1;
                fitted(self, s, v);
            }
            MfaResult::Saved { path } => s.notice = Some(format!("Saved {}", path.display())),
            MfaResult::Subspace { component, points } => {
                self.subspace = Some((component, points));
            }
            MfaResult::Steering(r) => self.steer = Some(r),
        }
    }

    fn failed(&mut self, id: RequestId) {
        JobView::clear(&mut self.job, id);
        clear_id(&mut self.subspace_running, id);
        clear_id(&mut self.steering, id);
        clear_id(&mut self.drawing, id);
    }

    fn receive(&mut self, s: &mut Shared, msg: &Message) {
        match msg {
            Message::Lesson(Do::MfaCollect) => collect(self, s),
            Message::Lesson(Do::MfaFit { epochs }) => {
                self.config.epochs = *epochs;
                fit(self, s);
            }
            _ => {}
        }
    }
}

/// Sends an MFA command owned by this panel's main job slot.
pub(super) fn send_job(p: &mut MfaPanel, s: &mut Shared, c: MfaCommand, stage: &str) {
    if let Some(id) = s.send(Command::Mfa(c)) {
        p.job = Some(JobView {
            id,
            stage: stage.into(),
            fraction: None,
        });
    }
}

/// Collects activations with the panel's settings.
pub fn collect(p: &mut MfaPanel, s: &mut Shared) {
    let n_layers = s.model_info().map_or(1, |i| i.dims.n_layers);
    let mut texts: Vec<String> = Vec::new();
    if p.shipped {
        texts.push(crate::assets::CORPUS.to_owned());
    }
    for f in &p.texts {
        match neoscope_api::files::read_text(f) {
            Ok(t) => texts.push(t),
            Err(e) => {
                s.error = Some(e.message);
                return;
            }
        }
    }
    if texts.is_empty() {
        s.error =
            Some("No text to collect from: keep the shipped corpus or add a text file.".into());
        return;
    }
    let point = HookPoint::ResidPost(p.layer.unwrap_or(n_layers / 2));
    let max = (p.max > 0).then_some(p.max);
    let c = MfaCommand::Collect {
        texts,
        point,
        window: p.window,
        max,
        save: None,
    };
    send_job(p, s, c, "collecting");
}

/// Fits with the panel's settings.
pub fn fit(p: &mut MfaPanel, s: &mut Shared) {
    p.epochs.clear();
    let c = MfaCommand::Fit {
        config: p.config.clone(),
    };
    send_job(p, s, c, "fitting");
}

/// Applies a fitted (or loaded) MFA.
fn fitted(p: &mut MfaPanel, s: &mut Shared, v: FittedView) {
    let rank = v.config.as_ref().map_or(0, |c| c.rank);
    p.z = vec![0.0; rank];
    p.dims = (0, 1.min(rank.saturating_sub(1)));
    p.selected = v.components.iter().max_by_key(|c| c.size).map(|c| c.index);
    p.subspace = None;
    p.steer = None;
    if let Some(r) = &v.report {
        p.epochs.clone_from(&r.epochs);
    }
    p.fitted = Some(v);
    request_subspace(p, s);
}

/// Draws the shown contexts again with the panel's sampling settings.
pub fn redraw_contexts(p: &mut MfaPanel, s: &mut Shared) {
    p.drawing = s.send(Command::Mfa(MfaCommand::Contexts { sample: p.sample }));
}

/// Asks for the selected component's subspace points.
pub fn request_subspace(p: &mut MfaPanel, s: &mut Shared) {
    let Some(k) = p.selected else { return };
    if p.fitted.as_ref().is_none_or(|f| f.components.is_empty()) {
        return;
    }
    let c = Command::Mfa(MfaCommand::Subspace {
        component: k,
        max_points: 400,
    });
    p.subspace_running = s.send(c);
}

/// Draws the MFA panel.
fn show(p: &mut MfaPanel, s: &mut Shared, ui: &mut egui::Ui) {
    handle_dialog(p, s);
    ui.heading("Mixture of factor analyzers");
    if s.model_info().is_none() {
        ui.label("Load a model in the Model panel first.");
        return;
    }
    controls(p, s, ui);
    ui.separator();
    if p.fitted.is_none() {
        if !p.epochs.is_empty() {
            super::mfa_views::nll_plot(ui, &p.epochs, 160.0);
        }
        ui.weak("Collect activations, then fit: each Gaussian is a region of the residual stream with its own low-rank subspace.");
        return;
    }
    ui.columns(3, |cols| {
        component_list(p, s, &mut cols[0]);
        super::mfa_views::component_detail(p, s, &mut cols[1]);
        egui::ScrollArea::vertical()
            .id_salt("mfa_right")
            .show(&mut cols[2], |ui| {
                let r = super::mfa_views::subspace_and_steering(p, s, ui);
                p.plots_rect = Some(r);
            });
    });
}

fn controls(p: &mut MfaPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let n_layers = s.model_info().map_or(1, |i| i.dims.n_layers);
    let busy = p.job.is_some();
    ui.horizontal_wrapped(|ui| {
        ui.strong("1. Activations");
        let mut layer = p.layer.unwrap_or(n_layers / 2);
        ui.add(
            egui::Slider::new(&mut layer, 0..=n_layers.saturating_sub(1))
                .text("layer (resid_post)"),
        );
        p.layer = Some(layer);
        ui.checkbox(&mut p.shipped, "shipped corpus");
        ui.add(
            egui::DragValue::new(&mut p.max)
                .range(0..=10_000_000)
                .prefix("max "),
        )
        .on_hover_text("Keep at most this many activations (a seeded uniform sample); 0 keeps all");
        if !p.texts.is_empty() {
            ui.label(format!("+ {} file(s)", p.texts.len()));
        }
        let add = ui.add_enabled(!busy, egui::Button::new("Add text…"));
        let collect_btn = ui.add_enabled(!busy, egui::Button::new("Collect"));
        let load_acts = ui.add_enabled(!busy, egui::Button::new("Load activations…"));
        if let Some((n, d, point)) = &p.acts {
            ui.label(format!("{n} × {d} at {point}"));
        }
        if add.clicked() {
            dialog(p, MfaFile::AddText);
        }
        if collect_btn.clicked() {
            collect(p, s);
        }
        if load_acts.clicked() {
            dialog(p, MfaFile::LoadActivations);
        }
    });
    ui.horizontal_wrapped(|ui| {
        ui.strong("2. Fit");
        if ui
            .small_button("CPU preset")
            .on_hover_text("K=64, R=8, 40 epochs, lr 0.01: a few minutes on two cores")
            .clicked()
        {
            p.config = MfaConfig::cpu_default();
        }
        if ui
            .small_button("paper preset")
            .on_hover_text(
                "K=500, R=10, lr 0.001 (the reference scale; for big machines and big corpora)",
            )
            .clicked()
        {
            p.config = MfaConfig::reference_scale();
        }
        ui.add(
            egui::DragValue::new(&mut p.config.k)
                .range(1..=2000)
                .prefix("K "),
        );
        ui.add(
            egui::DragValue::new(&mut p.config.rank)
                .range(1..=64)
                .prefix("R "),
        );
        ui.add(
            egui::DragValue::new(&mut p.config.epochs)
                .range(1..=500)
                .prefix("epochs "),
        );
        ui.add(
            egui::DragValue::new(&mut p.config.lr)
                .range(1e-5..=1.0)
                .speed(0.001)
                .prefix("lr "),
        );
        let mut early = p.config.patience.is_some();
        ui.checkbox(&mut early, "stop early")
            .on_hover_text("Stop when the validation NLL has not improved for this many epochs; the best epoch is kept either way");
        if early {
            let mut n = p.config.patience.unwrap_or(3);
            ui.add(
                egui::DragValue::new(&mut n)
                    .range(1..=100)
                    .suffix(" epochs"),
            );
            p.config.patience = Some(n);
        } else {
            p.config.patience = None;
        }
        ui.selectable_value(&mut p.config.init, InitKind::Kmeans, "k-means");
        ui.selectable_value(&mut p.config.init, InitKind::RandomPoints, "random points");
        let can_fit = p.acts.is_some() && !busy;
        let fit_btn = ui
            .add_enabled(can_fit, egui::Button::new("Fit"))
            .on_disabled_hover_text("Collect activations first");
        let has = p.fitted.is_some();
        let save = ui.add_enabled(has && !busy, egui::Button::new("Save…"));
        let load = ui.add_enabled(!busy, egui::Button::new("Load…"));
        if fit_btn.clicked() {
            fit(p, s);
        }
        if save.clicked() {
            dialog(p, MfaFile::Save);
        }
        if load.clicked() {
            dialog(p, MfaFile::Load);
        }
        if has {
            if ui.button("CSV…").clicked() {
                dialog(p, MfaFile::Csv);
            }
            if ui.button("JSON…").clicked() {
                dialog(p, MfaFile::Json);
            }
            if let Some(rect) = p.plots_rect
                && s.png.is_none()
                && ui.button("PNG…").clicked()
            {
                s.png = Some(super::png_export::PngExport::start(rect, "mfa.png"));
            }
        }
    });
    if let Some(job) = p.job.clone() {
        super::widgets::job_row(s, ui, &job, None);
    }
}

fn component_list(p: &mut MfaPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let Some(f) = &p.fitted else { return };
    if let Some(r) = &f.report {
        ui.label(format!(
            "Validation NLL {:.1} (best epoch {}, init {:.1}){}",
            r.best_val_nll,
            r.best_epoch,
            r.init_val_nll,
            r.early_stop()
                .map_or_else(String::new, |t| format!(" · {t}"))
        ));
    }
    if let Some((o, c)) = f.coherence {
        ui.label(format!("Coherence {o:.2} vs chance {c:.2}"))
            .on_hover_text("Share of each component's top-20 contexts whose token is its most common one, averaged; chance: the same for random contexts");
    }
    if !p.epochs.is_empty() {
        super::mfa_views::nll_plot(ui, &p.epochs, 110.0);
    }
    ui.strong("Components (by size)");
    let mut order: Vec<&ComponentInfo> = f.components.iter().collect();
    order.sort_by(|a, b| b.size.cmp(&a.size).then(a.index.cmp(&b.index)));
    let mut clicked = None;
    egui::ScrollArea::vertical()
        .id_salt("mfa_components")
        .max_height(ui.available_height() - 10.0)
        .show(ui, |ui| {
            for c in order {
                let toks: Vec<String> = c
                    .top_tokens
                    .iter()
                    .take(3)
                    .map(|(t, _)| format!("{t:?}"))
                    .collect();
                let text = format!("#{:<3} {:>5}  {}", c.index, c.size, toks.join(" "));
                let sel = p.selected == Some(c.index);
                if ui
                    .selectable_label(sel, egui::RichText::new(text).monospace())
                    .clicked()
                {
                    clicked = Some(c.index);
                }
            }
        });
    if let Some(k) = clicked {
        p.selected = Some(k);
        request_subspace(p, s);
    }
}

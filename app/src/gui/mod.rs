//! The desktop app: one `NeoApp` that owns the engine handle, drains engine events in `logic`
//! on a small time budget, and draws the navigation and the active panel in `ui`.

pub mod compare_panel;
mod dialogs;
pub mod embed_panel;
pub mod inject_panel;
mod inject_views;
pub mod lens_panel;
pub mod mfa_panel;
mod mfa_views;
mod model_panel;
pub mod playground;
pub mod png_export;
pub mod words_panel;

use neoscope_api::lens::LensOutput;
use neoscope_api::model::ModelResult;
use neoscope_api::text::TextResult;
use neoscope_api::words::WordResult;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use neoscope_api::embed::EmbedResult;
use neoscope_api::inject::InjectResult;
use neoscope_api::inject::{InjectEvent, Stopped};
use neoscope_api::mfa::MfaResult;
use neoscope_api::model::ModelInfo;
use neoscope_api::words::StopReason;
use neoscope_api::{Command, Event, JobResult, RequestId};
use neoscope_engine::worker::{EngineHandle, EngineOptions, Waker};

pub use compare_panel::ComparePanel;
pub use model_panel::ModelPanel;
pub use playground::Playground;
pub use words_panel::WordsPanel;

use crate::options::Global;

/// Opens the app window.
pub fn run(g: &Global) -> anyhow::Result<()> {
    let g = g.clone();
    let load = g.load_command();
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1180.0, 760.0])
            .with_min_inner_size([720.0, 480.0])
            .with_title("Neoscope"),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native(
        "Neoscope",
        options,
        Box::new(move |cc| {
            let ctx = cc.egui_ctx.clone();
            let waker: Waker = std::sync::Arc::new(move || ctx.request_repaint());
            let model_dir = g.engine_options().model_dir;
            let mut app = NeoApp::with_engine(g.open_engine(waker), model_dir);
            app.send(load, Owner::Model);
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("could not open the window: {e}"))
}

/// The panels of the navigation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanelKind {
    /// Load a model, see its dimensions.
    Model,
    /// Prompt, generate, next-token table.
    Playground,
    /// Teach the model new words.
    Words,
    /// Two words side by side.
    Compare,
    /// Logit lens and tuned lens.
    Lens,
    /// Mixture of factor analyzers.
    Mfa,
    /// The embedding space.
    Embeddings,
    /// Vocabulary injection.
    Injection,
}

/// Which part of the app a request belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// Model panel (fetch, load).
    Model,
    /// Playground generation.
    Generate,
    /// Playground next-token table.
    NextToken,
    /// Word list changes (create, remove, load, save).
    Words,
    /// Word training.
    Train,
    /// Word definitions.
    Define,
    /// Plug-in evaluation of a definition.
    Evaluate,
    /// Comparison of two words.
    Compare,
    /// Lens runs.
    Lens,
    /// Tuned-lens training and loading.
    Tuned,
    /// MFA collect, fit, save, load.
    Mfa,
    /// MFA subspace points.
    MfaSubspace,
    /// MFA steering.
    MfaSteer,
    /// Embedding projections.
    Embed,
    /// Embedding neighbours.
    EmbedNeighbors,
    /// Injection runs.
    Inject,
}

/// A running job as the UI shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobView {
    /// Request id (for cancel).
    pub id: RequestId,
    /// Stage text.
    pub stage: String,
    /// Fraction done, when known.
    pub fraction: Option<f32>,
}

/// The application state.
pub struct NeoApp {
    engine: Option<EngineHandle>,
    /// Device in words (from the engine handshake).
    pub device: String,
    /// Active panel.
    pub panel: PanelKind,
    /// Model panel state.
    pub model: ModelPanel,
    /// Playground state.
    pub playground: Playground,
    /// Words panel state.
    pub words: WordsPanel,
    /// Compare panel state.
    pub compare: ComparePanel,
    /// Lens panel state.
    pub lens: lens_panel::LensPanel,
    /// MFA panel.
    pub mfa: mfa_panel::MfaPanel,
    /// Embeddings panel.
    pub embed: embed_panel::EmbedPanel,
    /// Injection panel.
    pub inject: inject_panel::InjectPanel,
    pending: HashMap<RequestId, Owner>,
    /// The last error, shown in the status bar until dismissed.
    pub error: Option<String>,
    /// Model cache folder in use.
    pub model_dir: std::path::PathBuf,
    /// A passing message (e.g. "Saved …") for the status bar.
    pub notice: Option<String>,
    /// A PNG export in progress.
    pub png: Option<png_export::PngExport>,
}

impl NeoApp {
    /// Starts the engine thread; a failure to start is shown in the app, not a panic.
    pub fn new(opts: EngineOptions, waker: Waker) -> Self {
        let model_dir = opts.model_dir.clone();
        Self::with_engine(
            EngineHandle::spawn(opts, waker).map_err(Into::into),
            model_dir,
        )
    }

    /// The app on an engine already started or connected (or the reason it could not be).
    pub fn with_engine(
        engine: anyhow::Result<EngineHandle>,
        model_dir: std::path::PathBuf,
    ) -> Self {
        let (engine, device, error) = match engine {
            Ok(h) => {
                let d = h.device.clone();
                (Some(h), d, None)
            }
            Err(e) => (
                None,
                "none".into(),
                Some(format!("The engine could not start: {e:#}")),
            ),
        };
        Self {
            engine,
            device,
            panel: PanelKind::Model,
            model: ModelPanel::default(),
            playground: Playground::default(),
            words: WordsPanel::default(),
            compare: ComparePanel::default(),
            lens: lens_panel::LensPanel::default(),
            mfa: mfa_panel::MfaPanel::default(),
            embed: embed_panel::EmbedPanel::default(),
            inject: inject_panel::InjectPanel::default(),
            pending: HashMap::new(),
            error,
            model_dir,
            notice: None,
            png: None,
        }
    }

    /// The loaded model, if any.
    pub fn model_info(&self) -> Option<&ModelInfo> {
        self.model.info.as_ref()
    }

    /// Sends a command on behalf of `owner`.
    pub fn send(&mut self, cmd: impl Into<Command>, owner: Owner) -> Option<RequestId> {
        let engine = self.engine.as_mut()?;
        let id = engine.send(cmd);
        self.pending.insert(id, owner);
        Some(id)
    }

    /// Asks the engine to stop a request.
    pub fn cancel(&self, id: RequestId) {
        if let Some(e) = &self.engine {
            e.cancel(id);
        }
    }

    /// True while any request is outstanding.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Drains engine events for at most a few milliseconds (the rest waits for the next frame).
    pub fn poll(&mut self, ctx: &egui::Context) {
        if let Some(p) = &mut self.png
            && let Some(outcome) = p.poll(ctx)
        {
            self.png = None;
            match outcome {
                Ok(Some(path)) => self.notice = Some(format!("Saved {}", path.display())),
                Ok(None) => {}
                Err(e) => self.error = Some(e),
            }
        }
        let start = Instant::now();
        let budget = Duration::from_millis(4);
        while start.elapsed() < budget {
            let Some(ev) = self.engine.as_ref().and_then(EngineHandle::try_recv) else {
                return;
            };
            self.handle(ev);
        }
        ctx.request_repaint();
    }

    fn handle(&mut self, ev: Event) {
        let Some(id) = ev.request_id() else { return };
        let Some(owner) = self.pending.get(&id).copied() else {
            if let Event::Failed { error, .. } = ev {
                // Not a request's answer: the engine connection itself failed.
                self.error = Some(error.message);
                self.pending.clear();
            }
            return;
        };
        match ev {
            Event::Ready { .. } => {}
            Event::Progress {
                stage, fraction, ..
            } => {
                let job = Some(JobView {
                    id,
                    stage,
                    fraction,
                });
                match owner {
                    Owner::Model => self.model.job = job,
                    Owner::Tuned => self.lens.training = job,
                    Owner::Mfa => self.mfa.job = job,
                    Owner::Embed => self.embed.job = job,
                    Owner::Inject => self.inject.job = job,
                    _ => {}
                }
            }
            Event::Token { text, .. } => self.playground.output.push_str(&text),
            Event::MfaEpoch { epoch, .. } => self.mfa.epochs.push(epoch),
            Event::InjectStep { event, .. } => inject_step(&mut self.inject, event),
            Event::TrainStep { step, .. } => {
                self.words.live.push(step.loss);
                self.words.total_steps = step.total_steps;
            }
            Event::Finished { result, .. } => {
                self.pending.remove(&id);
                self.finished(result);
            }
            Event::Failed { error, .. } => {
                self.pending.remove(&id);
                match owner {
                    Owner::Model => self.model.job = None,
                    Owner::Generate => self.playground.generating = None,
                    Owner::NextToken => self.playground.predicting = None,
                    Owner::Words => {}
                    Owner::Train => self.words.training = None,
                    Owner::Define => self.words.defining = None,
                    Owner::Evaluate => self.words.evaluating = None,
                    Owner::Compare => self.compare.running = None,
                    Owner::Lens => self.lens.running = None,
                    Owner::Tuned => self.lens.training = None,
                    Owner::Mfa => self.mfa.job = None,
                    Owner::MfaSubspace => self.mfa.subspace_running = None,
                    Owner::MfaSteer => self.mfa.steering = None,
                    Owner::Embed => self.embed.job = None,
                    Owner::EmbedNeighbors => self.embed.neighbors_running = None,
                    Owner::Inject => self.inject.job = None,
                }
                if !error.is_cancelled() {
                    self.error = Some(error.message);
                }
            }
        }
    }

    fn finished(&mut self, result: JobResult) {
        match result {
            JobResult::Model(r) => match *r {
                ModelResult::Loaded(info) => {
                    self.model.job = None;
                    self.model.info = Some(info);
                    self.error = None;
                }
                ModelResult::Fetched { path, .. } => {
                    self.model.job = None;
                    self.model.fetched = Some(path);
                }
            },
            JobResult::Text(r) => match *r {
                TextResult::Generated { new_ids, text, .. } => {
                    self.playground.generating = None;
                    self.playground.output = text;
                    self.playground.new_tokens = new_ids.len();
                }
                TextResult::NextToken { ids, top } => {
                    self.playground.predicting = None;
                    self.playground.prompt_tokens = ids.len();
                    self.playground.top = top;
                }
                TextResult::Tokens { .. } => {}
            },
            JobResult::Words(r) => self.words_finished(*r),
            JobResult::Lens(r) => match *r {
                LensOutput::Runs(results) => {
                    self.lens.running = None;
                    self.lens.shown = self.lens.shown.min(results.len().saturating_sub(1));
                    self.lens.results = results;
                }
                LensOutput::Tuned(report) => {
                    self.lens.training = None;
                    self.lens.tuned_ready = true;
                    self.lens.report = report;
                }
                LensOutput::TunedSaved { path } => {
                    self.notice = Some(format!("Saved {}", path.display()));
                }
            },
            JobResult::Mfa(r) => self.mfa_finished(*r),
            JobResult::Embed(r) => match *r {
                EmbedResult::Projection(p) => {
                    self.embed.job = None;
                    embed_panel::set_projection(&mut self.embed, *p);
                }
                EmbedResult::Neighbors { hits, .. } => {
                    self.embed.neighbors_running = None;
                    let label = std::mem::take(&mut self.embed.neighbors_label);
                    self.embed.neighbors = Some((label, hits));
                }
            },
            JobResult::Inject(r) => self.inject_finished(*r),
            JobResult::Bench(_) => {}
        }
    }

    fn words_finished(&mut self, r: WordResult) {
        match r {
            WordResult::List(words) => self.words.words = words,
            WordResult::Saved { path } => {
                self.notice = Some(format!("Saved {}", path.display()));
            }
            WordResult::Trained {
                losses,
                epoch_losses,
                stop,
                words,
            } => {
                self.words.training = None;
                self.words.live = losses;
                self.words.words = words;
                let trend = match (epoch_losses.first(), epoch_losses.last()) {
                    (Some(f), Some(l)) => format!("epoch loss {f:.3} to {l:.3}"),
                    _ => "no full epoch".into(),
                };
                self.words.last_result = Some(match stop {
                    StopReason::Completed => format!("Done: {trend}"),
                    StopReason::Cancelled => format!("Cancelled; best vector kept ({trend})"),
                    StopReason::Diverged(msg) => msg,
                });
            }
            WordResult::Evaluation(r) => {
                self.words.evaluating = None;
                let set = self.words.heldout_set.clone();
                self.words.plugins.push((set, r));
            }
            WordResult::Definitions(defs) => {
                self.words.defining = None;
                self.words.definitions = defs;
            }
            WordResult::Comparison(r) => {
                self.compare.running = None;
                self.compare.result = Some(r);
            }
            // Neighbours and steering are asked for by the CLI, not by a panel.
            WordResult::Neighbors { .. } | WordResult::Steering(_) => {}
        }
    }

    fn inject_finished(&mut self, r: InjectResult) {
        self.inject.job = None;
        match r {
            InjectResult::Counts(c) => self.inject.counts = Some(c),
            InjectResult::Run {
                dir,
                stopped,
                step,
                steps,
                forms,
                losses,
                val,
            } => {
                self.inject.losses = losses
                    .into_iter()
                    .enumerate()
                    .map(|(i, l)| (i + 1, l))
                    .collect();
                self.inject.val = val;
                self.inject.steps = steps;
                // Resume continues with the run's own step count unless the user changes it.
                self.inject.config.steps = steps;
                self.inject.status = Some(match stopped {
                    Some(Stopped::Completed) => format!(
                        "Done: {forms} new rows, {step} steps; run in {}",
                        dir.display()
                    ),
                    Some(Stopped::Cancelled) => {
                        format!("Stopped at step {step} (checkpoint saved): Resume continues")
                    }
                    None => format!("Opened {} at step {step} ({forms} new rows)", dir.display()),
                });
                self.inject.run = Some(dir);
                // Projections now include the new rows: refresh on the next Project.
                self.embed.neighbors = None;
            }
            InjectResult::Synthesized { out_dir, .. } => {
                self.notice = Some(format!(
                    "Wrote a synthetic lexicon to {}",
                    out_dir.display()
                ));
            }
            InjectResult::Report { html, report } => {
                self.notice = Some(format!("Report written to {}", html.display()));
                self.inject.report = Some((html, report));
            }
        }
    }

    fn mfa_finished(&mut self, r: MfaResult) {
        match r {
            MfaResult::Activations {
                count, d, point, ..
            } => {
                self.mfa.job = None;
                self.mfa.acts = Some((count, d, point));
                self.notice = Some(format!("{count} activations collected at {point}"));
            }
            MfaResult::Model {
                point,
                config,
                report,
                components,
                coherence,
            } => {
                let v = mfa_panel::FittedView {
                    point,
                    config,
                    report,
                    components,
                    coherence,
                };
                mfa_panel::fitted(self, v);
            }
            MfaResult::Saved { path } => {
                self.mfa.job = None;
                self.notice = Some(format!("Saved {}", path.display()));
            }
            MfaResult::Subspace { component, points } => {
                self.mfa.subspace_running = None;
                self.mfa.subspace = Some((component, points));
            }
            MfaResult::Steering(r) => {
                self.mfa.steering = None;
                self.mfa.steer = Some(r);
            }
        }
    }

    /// Draws the whole window.
    pub fn draw(&mut self, ui: &mut egui::Ui) {
        egui::Panel::top("top_bar").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("Neoscope");
                ui.separator();
                match self.model_info() {
                    Some(i) => ui.label(format!("{} · {}", i.name, i.device)),
                    None => ui.weak("no model loaded"),
                };
                if self.busy() {
                    ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                        ui.spinner();
                    });
                }
            });
        });
        egui::Panel::bottom("status_bar").show(ui, |ui| {
            ui.horizontal(|ui| {
                if let Some(err) = self.error.clone() {
                    ui.colored_label(ui.visuals().error_fg_color, format!("Error: {err}"));
                    if ui.small_button("Dismiss").clicked() {
                        self.error = None;
                    }
                } else if let Some(n) = &self.notice {
                    ui.label(n);
                } else {
                    ui.weak(format!("Engine on {}", self.device));
                }
            });
        });
        egui::Panel::left("nav")
            .resizable(false)
            .exact_size(150.0)
            .show(ui, |ui| {
                ui.add_space(6.0);
                ui.selectable_value(&mut self.panel, PanelKind::Model, "Model");
                ui.selectable_value(&mut self.panel, PanelKind::Playground, "Playground");
                ui.selectable_value(&mut self.panel, PanelKind::Words, "Words");
                ui.selectable_value(&mut self.panel, PanelKind::Compare, "Compare");
                ui.selectable_value(&mut self.panel, PanelKind::Lens, "Lens");
                ui.selectable_value(&mut self.panel, PanelKind::Mfa, "MFA");
                ui.selectable_value(&mut self.panel, PanelKind::Embeddings, "Embeddings");
                ui.selectable_value(&mut self.panel, PanelKind::Injection, "Injection");
            });
        egui::CentralPanel::default().show(ui, |ui| match self.panel {
            PanelKind::Model => model_panel::show(self, ui),
            PanelKind::Playground => playground::show(self, ui),
            PanelKind::Words => words_panel::show(self, ui),
            PanelKind::Compare => compare_panel::show(self, ui),
            PanelKind::Lens => lens_panel::show(self, ui),
            PanelKind::Mfa => mfa_panel::show(self, ui),
            PanelKind::Embeddings => embed_panel::show(self, ui),
            PanelKind::Injection => inject_panel::show(self, ui),
        });
    }
}

impl eframe::App for NeoApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.poll(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.draw(ui);
    }
}

/// Applies a live training event to the Injection panel.
fn inject_step(p: &mut inject_panel::InjectPanel, ev: InjectEvent) {
    match ev {
        InjectEvent::Step {
            step, total, loss, ..
        } => {
            p.losses.push((step, loss));
            p.steps = total;
            if let Some(j) = &mut p.job {
                j.stage = format!("step {step}/{total}");
                j.fraction = None;
            }
        }
        InjectEvent::Val { step, loss } => p.val.push((step, loss)),
        InjectEvent::Evaluating(_) => {}
    }
}

/// A running job's row: a Cancel button and a progress bar showing `fraction` (the job's own
/// when `None`).
pub fn job_row(app: &NeoApp, ui: &mut egui::Ui, job: &JobView, fraction: Option<f32>) {
    ui.horizontal(|ui| {
        if ui.button("Cancel").clicked() {
            app.cancel(job.id);
        }
        ui.add(
            egui::ProgressBar::new(fraction.or(job.fraction).unwrap_or(0.0))
                .text(job.stage.as_str())
                .desired_width(360.0),
        );
    });
}

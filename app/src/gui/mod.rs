//! The desktop app: `NeoApp` hosts the navigation, the status bar and the panel registry. It
//! drains engine events on a small time budget and hands each one to the panel that sent the
//! request; panels live in their own files and implement `panel::Panel`.

mod align_controls;
pub mod compare_panel;
mod dialogs;
pub mod embed_panel;
mod inject_controls;
pub mod inject_panel;
mod inject_views;
pub mod lens_panel;
mod lens_views;
pub mod lessons;
pub mod lessons_panel;
mod lora_controls;
mod mfa_files;
pub mod mfa_panel;
mod mfa_steering;
mod mfa_views;
pub mod model_panel;
pub mod panel;
pub mod playground;
pub mod png_export;
mod run_table;
pub mod scratch_panel;
mod scratch_views;
pub mod session;
pub mod widgets;
mod window;
pub mod words_panel;
mod words_training;
mod words_views;
pub mod workspace;

use std::time::{Duration, Instant};

use neoscope_api::{Command, Event, RequestId};
use neoscope_engine::worker::{EngineHandle, EngineOptions, Waker};

pub use compare_panel::ComparePanel;
pub use embed_panel::EmbedPanel;
pub use inject_panel::InjectPanel;
pub use lens_panel::LensPanel;
pub use lessons_panel::LessonsPanel;
pub use mfa_panel::MfaPanel;
pub use model_panel::ModelPanel;
pub use panel::{JobView, Message, Panel, Shared};
pub use playground::Playground;
pub use scratch_panel::ScratchPanel;
pub use window::run;
pub use words_panel::WordsPanel;

/// The panels in navigation order. Adding a panel is one line here.
fn registry() -> Vec<Box<dyn Panel>> {
    vec![
        Box::new(ModelPanel::default()),
        Box::new(LessonsPanel::default()),
        Box::new(ScratchPanel::default()),
        Box::new(Playground::default()),
        Box::new(WordsPanel::default()),
        Box::new(ComparePanel::default()),
        Box::new(LensPanel::default()),
        Box::new(MfaPanel::default()),
        Box::new(EmbedPanel::default()),
        Box::new(InjectPanel::default()),
    ]
}

/// The application: shared state, the panels and which one is shown.
pub struct NeoApp {
    /// State every panel may read and write (engine, model, words, status line).
    pub shared: Shared,
    panels: Vec<Box<dyn Panel>>,
    active: usize,
    /// The last session kept in the data folder (the window keeps one; tests do not).
    session: Option<session::LastSession>,
    /// A workspace folder dialog in flight.
    workspace_dialog: Option<dialogs::Pending<workspace::Action>>,
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
        Self {
            shared: Shared::new(engine, model_dir),
            panels: registry(),
            active: 0,
            session: None,
            workspace_dialog: None,
        }
    }

    fn index_of<P: Panel>(&self) -> Option<usize> {
        self.panels
            .iter()
            .position(|p| panel::downcast::<P>(p.as_ref()).is_some())
    }

    /// The registered panel of type `P` (panics if `P` is not registered: a programming error).
    #[expect(clippy::expect_used, reason = "every panel type is registered once")]
    pub fn panel<P: Panel>(&self) -> &P {
        self.panels
            .iter()
            .find_map(|p| panel::downcast::<P>(p.as_ref()))
            .expect("panel registered")
    }

    /// The registered panel of type `P`, mutably (panics as `panel`).
    #[expect(clippy::expect_used, reason = "every panel type is registered once")]
    pub fn panel_mut<P: Panel>(&mut self) -> &mut P {
        self.panels
            .iter_mut()
            .find_map(|p| panel::downcast_mut::<P>(p.as_mut()))
            .expect("panel registered")
    }

    /// Sends a command on behalf of panel `P` (its events go to that panel).
    pub fn send_as<P: Panel>(&mut self, cmd: impl Into<Command>) -> Option<RequestId> {
        let i = self.index_of::<P>()?;
        self.shared.set_current(i);
        self.shared.send(cmd)
    }

    /// The title of the panel shown.
    pub fn active(&self) -> &'static str {
        self.panels[self.active].title()
    }

    /// Shows the panel titled `title` (no change for an unknown title).
    pub fn open(&mut self, title: &str) {
        if let Some(i) = self.panels.iter().position(|p| p.title() == title) {
            self.active = i;
        }
    }

    /// True while any request is outstanding.
    pub fn busy(&self) -> bool {
        self.shared.busy()
    }

    /// Drains engine events for at most a few milliseconds (the rest waits for the next frame).
    pub fn poll(&mut self, ctx: &egui::Context) {
        self.shared.poll_png(ctx);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(4) {
            let Some(ev) = self.shared.next_event() else {
                self.deliver();
                return;
            };
            self.handle(ev);
        }
        self.deliver();
        ctx.request_repaint();
    }

    fn handle(&mut self, ev: Event) {
        let Some(id) = ev.request_id() else { return };
        let s = &mut self.shared;
        let Some(owner) = s.owner(id) else {
            if let Event::Failed { error, .. } = ev {
                // Not a request's answer: the engine connection itself failed.
                s.connection_lost(error.message);
            }
            return;
        };
        s.set_current(owner);
        let p = &mut self.panels[owner];
        match ev {
            Event::Ready { .. } => {}
            Event::Progress {
                stage, fraction, ..
            } => p.progress(id, stage, fraction),
            Event::Finished { result, .. } => {
                s.done(id);
                p.finished(s, id, result);
            }
            Event::Failed { error, .. } => {
                s.done(id);
                p.failed(id);
                if !error.is_cancelled() {
                    s.error = Some(error.message);
                }
            }
            streamed => p.stream(s, streamed),
        }
    }

    /// Delivers the messages panels posted and applies a requested panel switch.
    fn deliver(&mut self) {
        let messages = self.shared.take_messages();
        for msg in &messages {
            for (i, p) in self.panels.iter_mut().enumerate() {
                self.shared.set_current(i);
                p.receive(&mut self.shared, msg);
            }
        }
        if let Some(title) = self.shared.take_goto() {
            self.open(title);
        }
        self.save_session_changes();
    }

    /// Draws the whole window.
    pub fn draw(&mut self, ui: &mut egui::Ui) {
        self.poll_workspace_dialog();
        let s = &mut self.shared;
        egui::Panel::top("top_bar").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("Neoscope");
                ui.menu_button("File", |ui| workspace::menu(&mut self.workspace_dialog, ui));
                ui.separator();
                match s.model_info() {
                    Some(i) => ui.label(format!("{} · {}", i.name, i.device)),
                    None => ui.weak("no model loaded"),
                };
                if s.busy() {
                    ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                        ui.spinner();
                    });
                }
            });
        });
        egui::Panel::bottom("status_bar").show(ui, |ui| {
            ui.horizontal(|ui| {
                if let Some(err) = s.error.clone() {
                    ui.colored_label(ui.visuals().error_fg_color, format!("Error: {err}"));
                    if ui.small_button("Dismiss").clicked() {
                        s.error = None;
                    }
                } else if let Some(n) = &s.notice {
                    ui.label(n);
                } else {
                    ui.weak(format!("Engine on {}", s.device));
                }
            });
        });
        if let Some(lp) = self
            .panels
            .iter_mut()
            .find_map(|p| panel::downcast_mut::<LessonsPanel>(p.as_mut()))
            && lp.active.is_some()
        {
            egui::Panel::top("lesson_bar").show(ui, |ui| lessons_panel::bar(lp, s, ui));
        }
        let active = &mut self.active;
        let panels = &mut self.panels;
        egui::Panel::left("nav")
            .resizable(false)
            .exact_size(150.0)
            .show(ui, |ui| {
                ui.add_space(6.0);
                for (i, p) in panels.iter().enumerate() {
                    ui.selectable_value(active, i, p.title());
                }
            });
        s.set_current(*active);
        let shown = &mut panels[*active];
        egui::CentralPanel::default().show(ui, |ui| shown.show(s, ui));
        self.deliver();
    }
}

//! What a panel is: the `Panel` trait (title, draw, handle its own requests' events) and
//! `Shared`, the state every panel may read and write: the engine connection, the loaded model,
//! the word list, the status line and messages to other panels.
//!
//! A panel sends commands through `Shared::send`; the answer (progress, streamed steps, the
//! result or the failure) comes back to the same panel, so no central routing table exists.

use std::any::Any;
use std::collections::HashMap;
use std::path::PathBuf;

use neoscope_api::model::ModelInfo;
use neoscope_api::steer::Steer;
use neoscope_api::words::WordInfo;
use neoscope_api::{Command, Event, JobResult, RequestId};
use neoscope_engine::worker::EngineHandle;

use super::png_export::PngExport;

/// One panel of the app. Adding a panel is one file implementing this trait and one line in
/// `gui::registry`.
pub trait Panel: Any {
    /// The name in the navigation (also used to switch to it: `Shared::goto`).
    fn title(&self) -> &'static str;

    /// Draws the panel into the central area.
    fn show(&mut self, s: &mut Shared, ui: &mut egui::Ui);

    /// Progress of one of this panel's requests.
    fn progress(&mut self, _id: RequestId, _stage: String, _fraction: Option<f32>) {}

    /// A streamed event of one of this panel's requests (a token, a training step, an epoch).
    fn stream(&mut self, _s: &mut Shared, _ev: Event) {}

    /// The result of one of this panel's requests.
    fn finished(&mut self, s: &mut Shared, id: RequestId, result: JobResult);

    /// One of this panel's requests failed or was cancelled (the app shows the error): forget
    /// it. Panels keep the id of what they run, so they know which one it was.
    fn failed(&mut self, id: RequestId);

    /// A message another panel posted (`Shared::post`).
    fn receive(&mut self, _s: &mut Shared, _msg: &Message) {}

    /// The settings worth keeping between sessions (prompts, choices), as JSON; results and
    /// running jobs are not settings. Written with `panel_settings!`.
    fn settings(&self) -> Option<serde_json::Value> {
        None
    }

    /// Takes back what `settings` wrote; returns the fields it could not read (they keep their
    /// current values).
    fn restore(&mut self, _v: &serde_json::Value) -> Vec<String> {
        Vec::new()
    }
}

/// Implements `Panel::settings` and `Panel::restore` for the named fields of a panel: each is
/// written under its own name and read back on its own, so a field a newer or older version
/// does not know is skipped, not fatal.
macro_rules! panel_settings {
    ($($field:ident),+ $(,)?) => {
        fn settings(&self) -> Option<serde_json::Value> {
            let mut m = serde_json::Map::new();
            $(
                if let Ok(v) = serde_json::to_value(&self.$field) {
                    m.insert(stringify!($field).to_owned(), v);
                }
            )+
            Some(serde_json::Value::Object(m))
        }

        fn restore(&mut self, v: &serde_json::Value) -> Vec<String> {
            let mut bad = Vec::new();
            $(
                if let Some(x) = v.get(stringify!($field)) {
                    match serde_json::from_value(x.clone()) {
                        Ok(y) => self.$field = y,
                        Err(e) => bad.push(format!("{}: {e}", stringify!($field))),
                    }
                }
            )+
            bad
        }
    };
}
pub(crate) use panel_settings;

/// What panels tell each other.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Steer the lens with this word's vector (Words panel → Lens).
    SteerLensWithWord(String),
    /// Steer the lens with this steering (MFA panel → Lens).
    SteerLens(Steer),
    /// The vocabulary of projections changed (an injection run opened or trained).
    VocabularyChanged,
    /// A lesson step's action (Lessons → the panel that carries it out).
    Lesson(super::lessons::Do),
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

impl JobView {
    /// A job just sent, at `stage`.
    pub fn new(id: RequestId, stage: &str) -> Self {
        Self {
            id,
            stage: stage.into(),
            fraction: None,
        }
    }

    /// Applies a progress event to `slot` when it shows request `id`.
    pub fn update(slot: &mut Option<Self>, id: RequestId, stage: String, fraction: Option<f32>) {
        if let Some(j) = slot
            && j.id == id
        {
            j.stage = stage;
            j.fraction = fraction;
        }
    }

    /// Clears `slot` when it shows request `id`.
    pub fn clear(slot: &mut Option<Self>, id: RequestId) {
        if slot.as_ref().is_some_and(|j| j.id == id) {
            *slot = None;
        }
    }
}

/// Clears a running-request slot when it holds `id`.
pub fn clear_id(slot: &mut Option<RequestId>, id: RequestId) {
    if *slot == Some(id) {
        *slot = None;
    }
}

/// State shared by all panels.
pub struct Shared {
    engine: Option<EngineHandle>,
    /// Which panel (registry index) sent each outstanding request.
    pending: HashMap<RequestId, usize>,
    /// The panel being drawn or handling an event: the owner of what it sends.
    current: usize,
    goto: Option<&'static str>,
    messages: Vec<Message>,
    /// Device in words (from the engine handshake).
    pub device: String,
    /// Model cache folder in use.
    pub model_dir: PathBuf,
    /// The loaded model.
    pub model: Option<ModelInfo>,
    /// The engine's new words (kept by the Words panel, read by the others).
    pub words: Vec<WordInfo>,
    /// The last error, shown in the status bar until dismissed.
    pub error: Option<String>,
    /// A passing message (e.g. "Saved …") for the status bar.
    pub notice: Option<String>,
    /// A PNG export in progress.
    pub png: Option<PngExport>,
}

impl Shared {
    /// Shared state on an engine (or the reason it could not start).
    pub fn new(engine: anyhow::Result<EngineHandle>, model_dir: PathBuf) -> Self {
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
            pending: HashMap::new(),
            current: 0,
            goto: None,
            messages: Vec::new(),
            device,
            model_dir,
            model: None,
            words: Vec::new(),
            error,
            notice: None,
            png: None,
        }
    }

    /// The loaded model, if any.
    pub fn model_info(&self) -> Option<&ModelInfo> {
        self.model.as_ref()
    }

    /// Sends a command on behalf of the current panel; `None` without an engine.
    pub fn send(&mut self, cmd: impl Into<Command>) -> Option<RequestId> {
        let engine = self.engine.as_mut()?;
        let id = engine.send(cmd);
        self.pending.insert(id, self.current);
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

    /// Switches to the panel titled `title` after this frame.
    pub fn goto(&mut self, title: &'static str) {
        self.goto = Some(title);
    }

    /// Posts a message to every other panel (delivered after this frame).
    pub fn post(&mut self, msg: Message) {
        self.messages.push(msg);
    }

    /// Advances a PNG export; its outcome goes to the status line.
    pub(super) fn poll_png(&mut self, ctx: &egui::Context) {
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
    }

    pub(super) fn set_current(&mut self, index: usize) {
        self.current = index;
    }

    pub(super) fn next_event(&self) -> Option<Event> {
        self.engine.as_ref().and_then(EngineHandle::try_recv)
    }

    pub(super) fn owner(&self, id: RequestId) -> Option<usize> {
        self.pending.get(&id).copied()
    }

    pub(super) fn done(&mut self, id: RequestId) {
        self.pending.remove(&id);
    }

    pub(super) fn connection_lost(&mut self, message: String) {
        self.error = Some(message);
        self.pending.clear();
    }

    pub(super) fn take_goto(&mut self) -> Option<&'static str> {
        self.goto.take()
    }

    pub(super) fn take_messages(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.messages)
    }
}

/// Downcasts a registry entry.
pub(super) fn downcast<P: Panel>(p: &dyn Panel) -> Option<&P> {
    (p as &dyn Any).downcast_ref::<P>()
}

/// Downcasts a registry entry mutably.
pub(super) fn downcast_mut<P: Panel>(p: &mut dyn Panel) -> Option<&mut P> {
    (p as &mut dyn Any).downcast_mut::<P>()
}

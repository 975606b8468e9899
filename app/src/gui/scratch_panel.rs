//! The From scratch panel: the first lesson. Pick a corpus and a tokenizer, build a small
//! transformer, train it by next-token prediction while the loss falls and the samples turn
//! from gibberish into words, then look inside (attention, activations across checkpoints,
//! the information plane) and open it in the other panels as a model like any other.

use std::path::PathBuf;

use neoscope_api::model::{LoadOptions, ModelCommand, ModelResult};
use neoscope_api::scratch::{
    CorpusSource, SampleConfig, ScratchCommand, ScratchEvent, ScratchResult, ScratchRun,
    ScratchSpec, TokenizerKind,
};
use neoscope_api::{Command, Event, JobResult, RequestId};

use super::dialogs::{Mode, Pending};
use super::lessons::Do;
use super::panel::{JobView, Message, Panel, Shared};

/// Where the training text comes from, as the panel offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CorpusChoice {
    /// Shakespeare (fetched).
    Shakespeare,
    /// The app's shipped model-generated corpus.
    Shipped,
    /// Files the user picked.
    Files,
}

/// What a file dialog of this panel is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScratchFile {
    /// A corpus file.
    Corpus,
    /// A run's `run.json`.
    OpenRun,
}

/// State of the From scratch panel.
pub struct ScratchPanel {
    /// Corpus choice.
    pub corpus: CorpusChoice,
    /// Picked files.
    pub files: Vec<PathBuf>,
    /// Settings of a new run.
    pub spec: ScratchSpec,
    /// BPE vocabulary size when BPE is chosen.
    pub bpe_vocab: usize,
    /// Run folder of a new run.
    pub dir: String,
    /// Running job.
    pub job: Option<JobView>,
    /// Live training losses (step, loss).
    pub losses: Vec<(usize, f32)>,
    /// Validation points.
    pub val: Vec<(usize, f32)>,
    /// Samples (step, text), oldest first.
    pub samples: Vec<(usize, String)>,
    /// Steps planned.
    pub steps: usize,
    /// The run last trained or opened.
    pub run: Option<ScratchRun>,
    /// Corpus status ("42 texts, 5.1 M characters") and where it is.
    pub corpus_status: Option<(String, String)>,
    /// Text typed for the inside views.
    pub probe: String,
    /// Block for activations.
    pub layer: usize,
    /// Sampling settings.
    pub sampling: SampleConfig,
    /// Last generated text.
    pub generated: Option<String>,
    /// What the inside area shows: the last attention, activations or information-plane
    /// result.
    pub inside: Option<ScratchResult>,
    /// Attention layer and head shown.
    pub head: (usize, usize),
    /// Checkpoint shown in the activations view.
    pub checkpoint: usize,
    /// File dialog in flight.
    pub dialog: Option<Pending<ScratchFile>>,
    /// Set while loading the run's model, to switch to the Lens when it is loaded.
    pub opening: Option<RequestId>,
    /// The lower half shows training (false) or the inside views (true).
    pub inside_tab: bool,
}

impl Default for ScratchPanel {
    fn default() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            corpus: CorpusChoice::Shakespeare,
            files: Vec::new(),
            spec: ScratchSpec::default(),
            bpe_vocab: 1024,
            dir: format!("neoscope-runs/scratch-{t}"),
            job: None,
            losses: Vec::new(),
            val: Vec::new(),
            samples: Vec::new(),
            steps: 0,
            run: None,
            corpus_status: None,
            probe: "ROMEO: What light through yonder".into(),
            layer: 0,
            sampling: SampleConfig::default(),
            generated: None,
            inside: None,
            head: (0, 0),
            checkpoint: usize::MAX,
            dialog: None,
            opening: None,
            inside_tab: false,
        }
    }
}

impl Panel for ScratchPanel {
    super::panel::panel_settings!(corpus, files, spec, bpe_vocab, dir, probe, layer, sampling);

    fn title(&self) -> &'static str {
        "From scratch"
    }

    fn show(&mut self, s: &mut Shared, ui: &mut egui::Ui) {
        show(self, s, ui);
    }

    fn progress(&mut self, id: RequestId, stage: String, fraction: Option<f32>) {
        JobView::update(&mut self.job, id, stage, fraction);
    }

    fn stream(&mut self, _s: &mut Shared, ev: Event) {
        let Event::ScratchStep { event, .. } = ev else {
            return;
        };
        match event {
            ScratchEvent::Step { step, total, .. } if step <= self.losses.len() => {
                self.steps = total;
            }
            ScratchEvent::Step {
                step, total, loss, ..
            } => {
                self.losses.push((step, loss));
                self.steps = total;
            }
            ScratchEvent::Val { step, loss } => self.val.push((step, loss)),
            ScratchEvent::Sample { step, text } => self.samples.push((step, text)),
        }
    }

    fn finished(&mut self, s: &mut Shared, id: RequestId, result: JobResult) {
        self.failed(id);
        if let JobResult::Model(m) = result {
            if let ModelResult::Loaded(info) = *m {
                s.notice = Some(format!("Opened {} in Neoscope", info.name));
                s.model = Some(*info);
                s.error = None;
                if self.opening.take() == Some(id) {
                    s.goto("Lens");
                }
            }
            return;
        }
        let JobResult::Scratch(r) = result else {
            return;
        };
        match *r {
            ScratchResult::Corpus { path, files, chars } => {
                self.corpus_status = Some((
                    format!("{files} texts, {:.1} M characters", chars as f64 / 1e6),
                    path.display().to_string(),
                ));
            }
            ScratchResult::Trained(run) => {
                self.losses = (1..).zip(run.losses.iter().copied()).collect();
                self.val.clone_from(&run.val);
                self.samples.clone_from(&run.samples);
                self.steps = run.total;
                self.spec.train.steps = run.total;
                s.notice = Some(if run.cancelled {
                    format!(
                        "Stopped at step {} (checkpoint saved): Resume continues",
                        run.step
                    )
                } else {
                    format!("Trained {} steps in {:.0} s", run.step, run.seconds)
                });
                self.run = Some(*run);
            }
            ScratchResult::Sample { text, .. } => {
                self.generated = Some(text);
                self.inside_tab = true;
            }
            ScratchResult::Attention { .. } => {
                self.head = (0, 0);
                self.inside = Some(*r);
                self.inside_tab = true;
            }
            ScratchResult::Activations {
                ref checkpoints, ..
            } => {
                self.checkpoint = checkpoints.len().saturating_sub(1);
                self.inside = Some(*r);
                self.inside_tab = true;
            }
            ScratchResult::InfoPlane { .. } => {
                self.inside = Some(*r);
                self.inside_tab = true;
            }
            ScratchResult::Bench { .. } => {}
        }
    }

    fn failed(&mut self, id: RequestId) {
        JobView::clear(&mut self.job, id);
    }

    fn receive(&mut self, s: &mut Shared, msg: &Message) {
        if let Message::Lesson(Do::Scratch { steps }) = msg {
            self.spec.train.steps = *steps;
            start(self, s);
        }
    }
}

/// Sends a lab command as this panel's running job.
pub fn send(p: &mut ScratchPanel, s: &mut Shared, c: ScratchCommand, stage: &str) {
    if let Some(id) = s.send(Command::Scratch(c)) {
        p.job = Some(JobView::new(id, stage));
    }
}

/// The settings of a new run from the panel.
pub fn spec(p: &ScratchPanel) -> ScratchSpec {
    let mut spec = p.spec.clone();
    spec.corpus = match p.corpus {
        CorpusChoice::Shakespeare => CorpusSource::Shakespeare,
        CorpusChoice::Shipped => CorpusSource::Text {
            name: "shipped model-generated corpus".into(),
            text: crate::assets::CORPUS.into(),
        },
        CorpusChoice::Files => CorpusSource::Files(p.files.clone()),
    };
    if let TokenizerKind::Bpe { .. } = spec.tokenizer {
        spec.tokenizer = TokenizerKind::Bpe {
            vocab_size: p.bpe_vocab,
        };
    }
    spec
}

/// Starts a new run with the panel's settings.
pub fn start(p: &mut ScratchPanel, s: &mut Shared) {
    p.losses.clear();
    p.val.clear();
    p.samples.clear();
    p.inside = None;
    p.inside_tab = false;
    p.steps = p.spec.train.steps;
    let c = ScratchCommand::Train {
        dir: PathBuf::from(&p.dir),
        spec: Box::new(spec(p)),
    };
    send(p, s, c, "starting");
}

/// Loads the run's model folder as the app's model and goes to the Lens.
pub fn open_in_neoscope(p: &mut ScratchPanel, s: &mut Shared) {
    let Some(run) = &p.run else { return };
    let cmd = ModelCommand::Load {
        path: run.model_dir.clone(),
        options: LoadOptions::default(),
    };
    if let Some(id) = s.send(cmd) {
        p.opening = Some(id);
        p.job = Some(JobView::new(id, "opening the model"));
    }
}

fn handle_dialog(p: &mut ScratchPanel, s: &mut Shared) {
    let Some(d) = &p.dialog else { return };
    let Some(answer) = d.poll() else { return };
    let what = d.purpose;
    p.dialog = None;
    let Some(path) = answer else { return };
    match what {
        ScratchFile::Corpus => {
            p.files.push(path);
            p.corpus = CorpusChoice::Files;
        }
        ScratchFile::OpenRun => {
            let dir = path
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            p.dir = dir.display().to_string();
            send(p, s, ScratchCommand::Open { dir }, "opening");
        }
    }
}

/// Starts a file dialog.
pub fn dialog(p: &mut ScratchPanel, what: ScratchFile) {
    let (title, filter): (&str, (&str, &[&str])) = match what {
        ScratchFile::Corpus => ("Add a text file to the corpus", ("Text", &["txt", "md"])),
        ScratchFile::OpenRun => ("Open a from-scratch run (run.json)", ("Run", &["json"])),
    };
    p.dialog = Some(Pending::new(what, Mode::Open, title, filter, ""));
}

const EXPLAIN: &str = "A language model reads a text one token at a time and, at every \
position, predicts a probability for each possible next token. Training shows it windows of \
real text and nudges every weight so that the token that really came next gets a higher \
probability: the loss is the average of −log(probability of the true next token), in nats. \
A model that guesses uniformly among V tokens scores ln V; every nat below that is structure it \
has learned (bits per character = nats ÷ ln 2 ÷ characters per token; perplexity = e^loss, \
\"as unsure as a choice among that many tokens\"). The samples are drawn from the model's own \
predictions: temperature divides the scores before the softmax, so below 1 the likely tokens \
dominate (safer, repetitive text), above 1 the distribution flattens (more surprising, more \
mistakes).";

/// Draws the panel.
fn show(p: &mut ScratchPanel, s: &mut Shared, ui: &mut egui::Ui) {
    handle_dialog(p, s);
    ui.heading("Train a language model from scratch");
    egui::CollapsingHeader::new("What is happening here?")
        .default_open(p.run.is_none() && p.job.is_none())
        .show(ui, |ui| super::widgets::ragged(ui, EXPLAIN));
    super::scratch_views::settings(p, s, ui);
    ui.separator();
    ui.horizontal(|ui| {
        ui.selectable_value(&mut p.inside_tab, false, "Training");
        ui.selectable_value(&mut p.inside_tab, true, "Look inside");
    });
    egui::ScrollArea::vertical()
        .id_salt("scratch_lower")
        .show(ui, |ui| {
            if p.inside_tab {
                super::scratch_views::inside(p, s, ui);
            } else {
                ui.columns(2, |cols| {
                    super::scratch_views::curves(p, &mut cols[0]);
                    super::scratch_views::samples(p, &mut cols[1]);
                });
            }
        });
}

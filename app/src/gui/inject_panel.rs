//! The Injection panel: choose a lexicon, morpheme table and corpus (or the shipped demo), see
//! how many forms are new, train the new rows with live loss curves, cancel (a checkpoint is
//! written) and resume, open a run, write and open the geometry report.

use std::path::PathBuf;

use neoscope_api::inject::GeometryReport;
use neoscope_api::inject::InitKind;
use neoscope_api::inject::InjectConfig;
use neoscope_api::inject::{InjectCommand, LexiconCounts, TextSource};
use neoscope_api::inject::{InjectEvent, InjectResult, Probe, Stopped};
use neoscope_api::{Command, Event, JobResult, RequestId};

use super::dialogs::{Mode, Pending};
use super::panel::{JobView, Message, Panel, Shared};

/// What a file dialog of this panel is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectFile {
    /// The lexicon.
    Lexicon,
    /// The morpheme table.
    Morphemes,
    /// A corpus file.
    Corpus,
    /// A run's `run.json`.
    OpenRun,
    /// Save the report (JSON) elsewhere.
    SaveReport,
    /// Save the loss curves (CSV).
    SaveCurves,
}

/// State of the Injection panel.
pub struct InjectPanel {
    /// Lexicon file (None: the shipped demo's).
    pub lexicon: Option<PathBuf>,
    /// Morpheme table (None: the shipped one).
    pub morphemes: Option<PathBuf>,
    /// Corpus files (empty: the shipped demo corpus).
    pub corpus: Vec<PathBuf>,
    /// Settings.
    pub config: InjectConfig,
    /// Run folder.
    pub dir: String,
    /// Counts of the chosen inputs.
    pub counts: Option<LexiconCounts>,
    /// Running job.
    pub job: Option<JobView>,
    /// Live training losses (step, loss).
    pub losses: Vec<(usize, f32)>,
    /// Validation points.
    pub val: Vec<(usize, f32)>,
    /// Steps planned.
    pub steps: usize,
    /// The run last trained or opened.
    pub run: Option<PathBuf>,
    /// Last status line.
    pub status: Option<String>,
    /// Last report and its HTML file.
    pub report: Option<(PathBuf, Box<GeometryReport>)>,
    /// File dialog in flight.
    pub dialog: Option<Pending<InjectFile>>,
    /// Checkpoint step to attach (None: the open run's current rows).
    pub attach_step: Option<usize>,
    /// Forms of each kind in behaviour probes.
    pub probe_count: usize,
    /// Tokens per probe.
    pub probe_tokens: usize,
    /// The last probes: run folder, step, probes.
    pub probes: Option<(PathBuf, usize, Vec<Probe>)>,
}

impl Default for InjectPanel {
    fn default() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            lexicon: None,
            morphemes: None,
            corpus: Vec::new(),
            config: crate::assets::demo_config(crate::assets::DEMO_STEPS),
            dir: format!("neoscope-runs/inject-{t}"),
            counts: None,
            job: None,
            losses: Vec::new(),
            val: Vec::new(),
            steps: 0,
            run: None,
            status: None,
            report: None,
            dialog: None,
            attach_step: None,
            probe_count: 3,
            probe_tokens: 24,
            probes: None,
        }
    }
}

/// The chosen inputs (shipped demo files where none was chosen).
/// Files are sent by path: the engine thread reads them.
fn inputs(p: &InjectPanel) -> (TextSource, Option<TextSource>, Vec<TextSource>) {
    let (lex, morph, corpus) = crate::assets::inject_demo();
    let file = |p: &PathBuf| TextSource::File(p.clone());
    let lexicon = p.lexicon.as_ref().map_or(lex, file);
    let morphemes = match (&p.morphemes, p.config.init) {
        (Some(m), _) => Some(file(m)),
        (None, InitKind::Compositional { .. }) => Some(morph),
        (None, InitKind::Spherical) => None,
    };
    let corpus = if p.corpus.is_empty() {
        vec![corpus]
    } else {
        p.corpus.iter().map(file).collect()
    };
    (lexicon, morphemes, corpus)
}

impl Panel for InjectPanel {
    fn title(&self) -> &'static str {
        "Injection"
    }

    fn show(&mut self, s: &mut Shared, ui: &mut egui::Ui) {
        show(self, s, ui);
    }

    fn progress(&mut self, id: RequestId, stage: String, fraction: Option<f32>) {
        JobView::update(&mut self.job, id, stage, fraction);
    }

    fn stream(&mut self, _s: &mut Shared, ev: Event) {
        let Event::InjectStep { event, .. } = ev else {
            return;
        };
        match event {
            InjectEvent::Step {
                step, total, loss, ..
            } => {
                self.losses.push((step, loss));
                self.steps = total;
                if let Some(j) = &mut self.job {
                    j.stage = format!("step {step}/{total}");
                    j.fraction = None;
                }
            }
            InjectEvent::Val { step, loss } => self.val.push((step, loss)),
            InjectEvent::Evaluating(_) => {}
        }
    }

    fn finished(&mut self, s: &mut Shared, id: RequestId, result: JobResult) {
        self.failed(id);
        let JobResult::Inject(r) = result else { return };
        match *r {
            InjectResult::Counts(c) => self.counts = Some(c),
            InjectResult::Run {
                dir,
                stopped,
                step,
                steps,
                forms,
                losses,
                val,
            } => {
                self.losses = (1..).zip(losses).collect();
                self.val = val;
                self.steps = steps;
                // Resume continues with the run's own step count unless the user changes it.
                self.config.steps = steps;
                self.status = Some(match stopped {
                    Some(Stopped::Completed) => format!(
                        "Done: {forms} new rows, {step} steps; run in {}",
                        dir.display()
                    ),
                    Some(Stopped::Cancelled) => {
                        format!("Stopped at step {step} (checkpoint saved): Resume continues")
                    }
                    None => format!("Opened {} at step {step} ({forms} new rows)", dir.display()),
                });
                self.run = Some(dir);
                s.post(Message::VocabularyChanged);
            }
            InjectResult::Synthesized { out_dir, .. } => {
                s.notice = Some(format!(
                    "Wrote a synthetic lexicon to {}",
                    out_dir.display()
                ));
            }
            InjectResult::Report { html, report } => {
                s.notice = Some(format!("Report written to {}", html.display()));
                self.report = Some((html, report));
            }
            InjectResult::Model(info) => {
                s.notice = Some(match &info.injected {
                    Some(v) => format!(
                        "The model's vocabulary now has {} injected forms (step {}): use them \
                         in the Playground, Lens and Words panels",
                        v.forms.len(),
                        v.step
                    ),
                    None => "The model has its base vocabulary again".to_owned(),
                });
                s.model = Some(*info);
            }
            InjectResult::Probes {
                dir, step, probes, ..
            } => self.probes = Some((dir, step, probes)),
        }
    }

    fn failed(&mut self, id: RequestId) {
        JobView::clear(&mut self.job, id);
    }
}

fn send_job(p: &mut InjectPanel, s: &mut Shared, c: InjectCommand, stage: &str) {
    if let Some(id) = s.send(Command::Inject(c)) {
        p.job = Some(JobView::new(id, stage));
    }
}

/// Counts new vs known forms of the chosen inputs.
pub fn inspect(p: &mut InjectPanel, s: &mut Shared) {
    let (lexicon, morphemes, corpus) = inputs(p);
    let c = InjectCommand::Inspect {
        lexicon,
        morphemes,
        corpus,
    };
    send_job(p, s, c, "counting");
}

/// Starts a run with the panel's settings.
pub fn start(p: &mut InjectPanel, s: &mut Shared) {
    let (lexicon, morphemes, corpus) = inputs(p);
    p.losses.clear();
    p.val.clear();
    p.steps = p.config.steps;
    let c = InjectCommand::Start {
        lexicon,
        morphemes,
        corpus,
        config: p.config.clone(),
        dir: PathBuf::from(&p.dir),
    };
    send_job(p, s, c, "starting");
}

fn handle_dialog(p: &mut InjectPanel, s: &mut Shared) {
    let Some(d) = &p.dialog else { return };
    let Some(answer) = d.poll() else { return };
    let what = d.purpose;
    p.dialog = None;
    let Some(path) = answer else { return };
    match what {
        InjectFile::Lexicon => p.lexicon = Some(path),
        InjectFile::Morphemes => p.morphemes = Some(path),
        InjectFile::Corpus => p.corpus.push(path),
        InjectFile::OpenRun => {
            let dir = path
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            p.dir = dir.display().to_string();
            send_job(p, s, InjectCommand::Open { dir }, "opening");
        }
        InjectFile::SaveReport => {
            let bytes = p
                .report
                .as_ref()
                .map(|(_, r)| serde_json::to_vec_pretty(r))
                .transpose();
            save(
                s,
                &path.with_extension("json"),
                bytes.map_err(|e| e.to_string()),
            );
            return;
        }
        InjectFile::SaveCurves => {
            let csv = curves_csv(p);
            save(s, &path.with_extension("csv"), Ok(Some(csv.into_bytes())));
            return;
        }
    }
    p.counts = None;
}

fn save(s: &mut Shared, path: &std::path::Path, bytes: Result<Option<Vec<u8>>, String>) {
    match bytes.map(|b| b.map(|b| neoscope_api::files::write_atomic(path, &b))) {
        Ok(Some(Ok(()))) => s.notice = Some(format!("Saved {}", path.display())),
        Ok(Some(Err(e))) => s.error = Some(e.to_string()),
        Ok(None) => {}
        Err(e) => s.error = Some(e),
    }
}

/// The loss curves as CSV: `step,train,validation` (empty cells where a value is missing).
pub fn curves_csv(p: &InjectPanel) -> String {
    let mut out = String::from("step,train,validation\n");
    let last = p
        .losses
        .last()
        .map_or(0, |l| l.0)
        .max(p.val.last().map_or(0, |v| v.0));
    for s in 0..=last {
        let t = p.losses.iter().find(|l| l.0 == s).map(|l| l.1.to_string());
        let v = p.val.iter().find(|l| l.0 == s).map(|l| l.1.to_string());
        if t.is_some() || v.is_some() {
            out.push_str(&format!(
                "{s},{},{}\n",
                t.unwrap_or_default(),
                v.unwrap_or_default()
            ));
        }
    }
    out
}

pub(super) fn dialog(p: &mut InjectPanel, what: InjectFile) {
    let mode = match what {
        InjectFile::SaveReport | InjectFile::SaveCurves => Mode::Save,
        _ => Mode::Open,
    };
    let (title, filter): (&str, (&str, &[&str])) = match what {
        InjectFile::Lexicon => ("Choose a lexicon (one form per line)", ("Text", &["txt"])),
        InjectFile::Morphemes => ("Choose a morpheme table", ("CSV", &["csv"])),
        InjectFile::Corpus => ("Add a corpus file", ("Text", &["txt", "md"])),
        InjectFile::OpenRun => ("Open an injection run (run.json)", ("Run", &["json"])),
        InjectFile::SaveReport => ("Save the report as JSON", ("JSON", &["json"])),
        InjectFile::SaveCurves => ("Save the loss curves as CSV", ("CSV", &["csv"])),
    };
    let name = match what {
        InjectFile::SaveReport => "report.json",
        InjectFile::SaveCurves => "losses.csv",
        _ => "",
    };
    p.dialog = Some(Pending::new(what, mode, title, filter, name));
}

fn name(p: Option<&PathBuf>, shipped: &str) -> String {
    p.and_then(|p| p.file_name())
        .map_or_else(|| shipped.to_owned(), |n| n.to_string_lossy().into_owned())
}

/// Draws the Injection panel.
fn show(p: &mut InjectPanel, s: &mut Shared, ui: &mut egui::Ui) {
    handle_dialog(p, s);
    ui.heading("Vocabulary injection");
    if s.model_info().is_none() {
        ui.label("Load a model in the Model panel first.");
        return;
    }
    inputs_row(p, s, ui);
    settings_row(p, s, ui);
    use_row(p, s, ui);
    ui.separator();
    ui.columns(2, |cols| {
        super::inject_views::curves(p, &mut cols[0]);
        super::inject_views::report_view(p, s, &mut cols[1]);
    });
    super::inject_views::probes_view(p, ui);
}

/// Step 3: the run's forms as tokens of the model, and behaviour probes.
fn use_row(p: &mut InjectPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let busy = p.job.is_some();
    let attached = s.model_info().and_then(|m| m.injected.clone());
    ui.horizontal_wrapped(|ui| {
        ui.strong("3. Use");
        let mut latest = p.attach_step.is_none();
        if ui
            .checkbox(&mut latest, "current rows")
            .on_hover_text("Off: choose a checkpoint step (0: the initial rows)")
            .changed()
        {
            p.attach_step = if latest { None } else { Some(0) };
        }
        if let Some(step) = &mut p.attach_step {
            ui.add(egui::DragValue::new(step).prefix("step "));
        }
        let ready = !busy && p.run.is_some();
        if ui
            .add_enabled(ready, egui::Button::new("Use in the model"))
            .on_hover_text(
                "Make the run's forms tokens of the loaded model: prompts, predictions, \
                 generation, the Lens and the Words panel then know them",
            )
            .clicked()
        {
            let c = InjectCommand::Attach {
                dir: p.run.clone(),
                step: p.attach_step,
            };
            send_job(p, s, c, "attaching");
        }
        if ui
            .add_enabled(
                !busy && attached.is_some(),
                egui::Button::new("Base vocabulary"),
            )
            .on_hover_text("Give the model back its own vocabulary")
            .clicked()
        {
            send_job(p, s, InjectCommand::Detach, "detaching");
        }
        ui.add(
            egui::DragValue::new(&mut p.probe_count)
                .range(1..=20)
                .prefix("probe forms "),
        );
        ui.add(
            egui::DragValue::new(&mut p.probe_tokens)
                .range(1..=128)
                .prefix("tokens "),
        );
        if ui
            .add_enabled(ready, egui::Button::new("Probe"))
            .on_hover_text(
                "Greedy continuations of the forms that moved most and least in training, \
                 with the run's vocabulary and by the base model",
            )
            .clicked()
        {
            let c = InjectCommand::Probe {
                dir: p.run.clone(),
                step: p.attach_step,
                count: p.probe_count,
                max_new_tokens: p.probe_tokens,
            };
            send_job(p, s, c, "probing");
        }
        match &attached {
            Some(v) => ui.label(format!(
                "Attached: {} forms from {} at step {}",
                v.forms.len(),
                v.run.display(),
                v.step
            )),
            None => ui.weak("The model has its base vocabulary."),
        };
    });
}

fn inputs_row(p: &mut InjectPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let busy = p.job.is_some();
    ui.horizontal_wrapped(|ui| {
        ui.strong("1. Inputs");
        let lex = name(p.lexicon.as_ref(), "demo lexicon");
        let mor = name(p.morphemes.as_ref(), "demo morphemes");
        let cor = if p.corpus.is_empty() {
            "demo corpus".to_owned()
        } else {
            format!("{} corpus file(s)", p.corpus.len())
        };
        if ui.button(format!("Lexicon: {lex}…")).clicked() {
            dialog(p, InjectFile::Lexicon);
        }
        if ui.button(format!("Morphemes: {mor}…")).clicked() {
            dialog(p, InjectFile::Morphemes);
        }
        if ui.button(format!("Corpus: {cor} (add…)")).clicked() {
            dialog(p, InjectFile::Corpus);
        }
        if (p.lexicon.is_some() || p.morphemes.is_some() || !p.corpus.is_empty())
            && ui.small_button("use the shipped demo").clicked()
        {
            let keep = std::mem::take(&mut p.dir);
            *p = InjectPanel {
                dir: keep,
                ..InjectPanel::default()
            };
        }
        if ui.add_enabled(!busy, egui::Button::new("Count")).clicked() {
            inspect(p, s);
        }
    });
    if let Some(c) = &p.counts {
        let morph = c.morphemes.map_or(String::new(), |(p, s)| {
            format!("; {p} prefixes, {s} suffixes")
        });
        ui.label(format!(
            "{} forms: {} new, {} already single tokens (e.g. {}){morph}. Corpus: {} tokens, {} uses of new forms, {} of {} new forms occur.",
            c.forms,
            c.new,
            c.known,
            c.known_examples.join(", "),
            c.corpus_tokens,
            c.corpus_new_tokens,
            c.forms_in_corpus,
            c.new
        ));
    }
}

fn settings_row(p: &mut InjectPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let busy = p.job.is_some();
    ui.horizontal_wrapped(|ui| {
        ui.strong("2. Train");
        let comp = matches!(p.config.init, InitKind::Compositional { .. });
        if ui.selectable_label(comp, "compositional").clicked() {
            p.config.init = InitKind::default();
        }
        if ui.selectable_label(!comp, "spherical").clicked() {
            p.config.init = InitKind::Spherical;
        }
        let c = &mut p.config;
        ui.add(
            egui::DragValue::new(&mut c.steps)
                .range(1..=100_000)
                .prefix("steps "),
        );
        ui.add(
            egui::DragValue::new(&mut c.lr)
                .range(1e-5..=1.0)
                .speed(0.0005)
                .prefix("lr "),
        );
        ui.add(
            egui::DragValue::new(&mut c.block_len)
                .range(8..=2048)
                .prefix("block "),
        );
        ui.add(
            egui::DragValue::new(&mut c.micro_batch)
                .range(1..=64)
                .prefix("batch "),
        );
        ui.add(
            egui::DragValue::new(&mut c.accum)
                .range(1..=64)
                .prefix("accum "),
        )
        .on_hover_text("Gradient accumulation: forward passes per optimiser step");
        ui.add(
            egui::DragValue::new(&mut c.eval_every)
                .range(1..=100_000)
                .prefix("validate every "),
        );
        ui.add(
            egui::DragValue::new(&mut c.checkpoint_every)
                .range(1..=100_000)
                .prefix("checkpoint every "),
        );
        ui.label("run folder");
        ui.add(egui::TextEdit::singleline(&mut p.dir).desired_width(200.0));
    });
    ui.horizontal(|ui| {
        if ui.add_enabled(!busy, egui::Button::new("Train")).clicked() {
            start(p, s);
        }
        let run = p.run.clone();
        if ui
            .add_enabled(!busy && run.is_some(), egui::Button::new("Resume"))
            .on_hover_text("Continue the run from its latest checkpoint")
            .clicked()
            && let Some(dir) = run
        {
            p.steps = p.config.steps;
            let steps = Some(p.config.steps);
            send_job(p, s, InjectCommand::Resume { dir, steps }, "resuming");
        }
        if ui
            .add_enabled(!busy, egui::Button::new("Open run…"))
            .clicked()
        {
            dialog(p, InjectFile::OpenRun);
        }
        if ui
            .add_enabled(!busy && p.run.is_some(), egui::Button::new("Write report"))
            .clicked()
        {
            send_job(p, s, InjectCommand::Report { dir: None }, "report");
        }
        if let Some(job) = p.job.clone() {
            let step = p.losses.last().map_or(0, |l| l.0);
            let by_steps = step as f32 / p.steps.max(1) as f32;
            super::widgets::job_row(s, ui, &job, job.fraction.or(Some(by_steps)));
        } else if let Some(s) = &p.status {
            ui.label(s);
        }
    });
}

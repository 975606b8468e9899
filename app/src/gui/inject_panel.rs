//! The Injection panel: choose a lexicon, morpheme table and corpus (or the shipped demo), see
//! how many forms are new, train the new rows with live loss curves, cancel (a checkpoint is
//! written) and resume, open a run, write and open the geometry report.

use std::path::PathBuf;

use neoscope_api::Command;
use neoscope_api::inject::GeometryReport;
use neoscope_api::inject::InitKind;
use neoscope_api::inject::InjectConfig;
use neoscope_api::inject::{InjectCommand, LexiconCounts, TextSource};

use super::dialogs::{Mode, Pending};
use super::{JobView, NeoApp, Owner};

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

fn send_job(app: &mut NeoApp, c: InjectCommand, stage: &str) {
    if let Some(id) = app.send(Command::Inject(c), Owner::Inject) {
        app.inject.job = Some(JobView {
            id,
            stage: stage.into(),
            fraction: None,
        });
    }
}

/// Counts new vs known forms of the chosen inputs.
pub fn inspect(app: &mut NeoApp) {
    let (lexicon, morphemes, corpus) = inputs(&app.inject);
    let c = InjectCommand::Inspect {
        lexicon,
        morphemes,
        corpus,
    };
    send_job(app, c, "counting");
}

/// Starts a run with the panel's settings.
pub fn start(app: &mut NeoApp) {
    let (lexicon, morphemes, corpus) = inputs(&app.inject);
    app.inject.losses.clear();
    app.inject.val.clear();
    app.inject.steps = app.inject.config.steps;
    let c = InjectCommand::Start {
        lexicon,
        morphemes,
        corpus,
        config: app.inject.config.clone(),
        dir: PathBuf::from(&app.inject.dir),
    };
    send_job(app, c, "starting");
}

fn handle_dialog(app: &mut NeoApp) {
    let Some(d) = &app.inject.dialog else { return };
    let Some(answer) = d.poll() else { return };
    let what = d.purpose;
    app.inject.dialog = None;
    let Some(path) = answer else { return };
    match what {
        InjectFile::Lexicon => app.inject.lexicon = Some(path),
        InjectFile::Morphemes => app.inject.morphemes = Some(path),
        InjectFile::Corpus => app.inject.corpus.push(path),
        InjectFile::OpenRun => {
            let dir = path
                .parent()
                .map(std::path::Path::to_path_buf)
                .unwrap_or_default();
            app.inject.dir = dir.display().to_string();
            send_job(app, InjectCommand::Open { dir }, "opening");
        }
        InjectFile::SaveReport => {
            let bytes = app
                .inject
                .report
                .as_ref()
                .map(|(_, r)| serde_json::to_vec_pretty(r))
                .transpose();
            save(
                app,
                &path.with_extension("json"),
                bytes.map_err(|e| e.to_string()),
            );
            return;
        }
        InjectFile::SaveCurves => {
            let csv = curves_csv(&app.inject);
            save(app, &path.with_extension("csv"), Ok(Some(csv.into_bytes())));
            return;
        }
    }
    app.inject.counts = None;
}

fn save(app: &mut NeoApp, path: &std::path::Path, bytes: Result<Option<Vec<u8>>, String>) {
    match bytes.map(|b| b.map(|b| neoscope_api::files::write_atomic(path, &b))) {
        Ok(Some(Ok(()))) => app.notice = Some(format!("Saved {}", path.display())),
        Ok(Some(Err(e))) => app.error = Some(e.to_string()),
        Ok(None) => {}
        Err(e) => app.error = Some(e),
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

pub(super) fn dialog(app: &mut NeoApp, what: InjectFile) {
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
    app.inject.dialog = Some(Pending::new(what, mode, title, filter, name));
}

fn name(p: Option<&PathBuf>, shipped: &str) -> String {
    p.and_then(|p| p.file_name())
        .map_or_else(|| shipped.to_owned(), |n| n.to_string_lossy().into_owned())
}

/// Draws the Injection panel.
pub fn show(app: &mut NeoApp, ui: &mut egui::Ui) {
    handle_dialog(app);
    ui.heading("Vocabulary injection");
    if app.model_info().is_none() {
        ui.label("Load a model in the Model panel first.");
        return;
    }
    inputs_row(app, ui);
    settings_row(app, ui);
    ui.separator();
    ui.columns(2, |cols| {
        super::inject_views::curves(app, &mut cols[0]);
        super::inject_views::report_view(app, &mut cols[1]);
    });
}

fn inputs_row(app: &mut NeoApp, ui: &mut egui::Ui) {
    let busy = app.inject.job.is_some();
    ui.horizontal_wrapped(|ui| {
        ui.strong("1. Inputs");
        let p = &app.inject;
        let lex = name(p.lexicon.as_ref(), "demo lexicon");
        let mor = name(p.morphemes.as_ref(), "demo morphemes");
        let cor = if p.corpus.is_empty() {
            "demo corpus".to_owned()
        } else {
            format!("{} corpus file(s)", p.corpus.len())
        };
        if ui.button(format!("Lexicon: {lex}…")).clicked() {
            dialog(app, InjectFile::Lexicon);
        }
        if ui.button(format!("Morphemes: {mor}…")).clicked() {
            dialog(app, InjectFile::Morphemes);
        }
        if ui.button(format!("Corpus: {cor} (add…)")).clicked() {
            dialog(app, InjectFile::Corpus);
        }
        if (app.inject.lexicon.is_some()
            || app.inject.morphemes.is_some()
            || !app.inject.corpus.is_empty())
            && ui.small_button("use the shipped demo").clicked()
        {
            let keep = std::mem::take(&mut app.inject.dir);
            app.inject = InjectPanel {
                dir: keep,
                ..InjectPanel::default()
            };
        }
        if ui.add_enabled(!busy, egui::Button::new("Count")).clicked() {
            inspect(app);
        }
    });
    if let Some(c) = &app.inject.counts {
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

fn settings_row(app: &mut NeoApp, ui: &mut egui::Ui) {
    let busy = app.inject.job.is_some();
    ui.horizontal_wrapped(|ui| {
        let p = &mut app.inject;
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
            start(app);
        }
        let run = app.inject.run.clone();
        if ui
            .add_enabled(!busy && run.is_some(), egui::Button::new("Resume"))
            .on_hover_text("Continue the run from its latest checkpoint")
            .clicked()
            && let Some(dir) = run
        {
            app.inject.steps = app.inject.config.steps;
            let steps = Some(app.inject.config.steps);
            send_job(app, InjectCommand::Resume { dir, steps }, "resuming");
        }
        if ui
            .add_enabled(!busy, egui::Button::new("Open run…"))
            .clicked()
        {
            dialog(app, InjectFile::OpenRun);
        }
        if ui
            .add_enabled(
                !busy && app.inject.run.is_some(),
                egui::Button::new("Write report"),
            )
            .clicked()
        {
            send_job(app, InjectCommand::Report { dir: None }, "report");
        }
        if let Some(job) = app.inject.job.clone() {
            let step = app.inject.losses.last().map_or(0, |l| l.0);
            let by_steps = step as f32 / app.inject.steps.max(1) as f32;
            super::job_row(app, ui, &job, job.fraction.or(Some(by_steps)));
        } else if let Some(s) = &app.inject.status {
            ui.label(s);
        }
    });
}

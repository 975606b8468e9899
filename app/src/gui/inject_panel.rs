//! The Injection panel: choose a lexicon, morpheme table and corpus (or the shipped demo), see
//! how many forms are new, train the new rows with live loss curves, cancel (a checkpoint is
//! written) and resume, open a run, write and open the geometry report.

use std::path::PathBuf;

use neoscope_api::align::{AlignConfig, AlignRun};
use neoscope_api::inject::GeometryReport;
use neoscope_api::inject::InitKind;
use neoscope_api::inject::InjectConfig;
use neoscope_api::inject::{InjectCommand, LexiconCounts, LexiconEntry, TextSource};
use neoscope_api::inject::{InjectEvent, InjectResult, Probe, Stopped};
use neoscope_api::lora::{LoraConfig, LoraRun};
use neoscope_api::{Command, Event, JobResult, RequestId};

use super::dialogs::{Mode, Pending};
use super::lessons::Do;
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
    /// Another run's `run.json`, for the comparison table.
    CompareRun,
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
    /// Runs side by side (from their reports).
    pub compared: Vec<crate::runs::RunRow>,
    /// Last status line.
    pub status: Option<String>,
    /// Last report and its HTML file.
    pub report: Option<(PathBuf, Box<GeometryReport>)>,
    /// File dialog in flight.
    pub dialog: Option<Pending<InjectFile>>,
    /// Shakespeare's works as the corpus (fetched by the engine).
    pub shakespeare: bool,
    /// A lexicon extracted from the corpus (replaces the lexicon file): its description and
    /// entries.
    pub extracted: Option<(String, Vec<LexiconEntry>)>,
    /// Extraction: fewest tokens per word.
    pub min_pieces: usize,
    /// Extraction: fewest occurrences.
    pub min_count: usize,
    /// Extraction: most forms kept.
    pub max_forms: usize,
    /// Checkpoint step to attach (None: the open run's current rows).
    pub attach_step: Option<usize>,
    /// Forms of each kind in behaviour probes.
    pub probe_count: usize,
    /// Tokens per probe.
    pub probe_tokens: usize,
    /// The last probes: run folder, step, probes.
    pub probes: Option<(PathBuf, usize, Vec<Probe>)>,
    /// Phase-2 settings.
    pub lora: LoraConfig,
    /// The last phase-2 result.
    pub lora_run: Option<LoraRun>,
    /// Merge the run's adapters when using its forms in the model.
    pub lora_attach: bool,
    /// Phase-3 settings.
    pub align: AlignConfig,
    /// Phase 3 under the phase-2 adapters.
    pub align_lora: bool,
    /// The last phase-3 result.
    pub align_run: Option<AlignRun>,
    /// Use phase 3's rows when using the run's forms in the model.
    pub align_attach: bool,
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
            compared: Vec::new(),
            status: None,
            report: None,
            dialog: None,
            shakespeare: false,
            extracted: None,
            min_pieces: crate::assets::SHAKESPEARE_MIN_PIECES,
            min_count: crate::assets::SHAKESPEARE_MIN_COUNT,
            max_forms: crate::assets::SHAKESPEARE_FORMS,
            attach_step: None,
            probe_count: 3,
            probe_tokens: 24,
            probes: None,
            lora: LoraConfig::default(),
            lora_run: None,
            lora_attach: false,
            align: AlignConfig::default(),
            align_lora: false,
            align_run: None,
            align_attach: false,
        }
    }
}

/// The chosen inputs (shipped demo files where none was chosen).
/// Files are sent by path: the engine thread reads them.
fn inputs(p: &InjectPanel) -> (TextSource, Option<TextSource>, Vec<TextSource>) {
    let (lex, morph, corpus) = crate::assets::inject_demo();
    let file = |p: &PathBuf| TextSource::File(p.clone());
    let lexicon = match &p.extracted {
        Some((name, entries)) => TextSource::Text {
            name: name.clone(),
            text: entries.iter().map(|e| format!("{}\n", e.form)).collect(),
        },
        None => p.lexicon.as_ref().map_or(lex, file),
    };
    let morphemes = match (&p.morphemes, p.config.init) {
        (Some(m), _) => Some(file(m)),
        (None, InitKind::Compositional { .. }) => Some(morph),
        (None, InitKind::Spherical) => None,
    };
    (lexicon, morphemes, corpus_sources(p, corpus))
}

/// The chosen corpus: Shakespeare, the picked files, or the shipped demo corpus.
fn corpus_sources(p: &InjectPanel, demo: TextSource) -> Vec<TextSource> {
    if p.shakespeare {
        vec![TextSource::Shakespeare]
    } else if p.corpus.is_empty() {
        vec![demo]
    } else {
        p.corpus
            .iter()
            .map(|f| TextSource::File(f.clone()))
            .collect()
    }
}

/// Extracts a lexicon from the chosen corpus with the panel's thresholds.
pub fn extract(p: &mut InjectPanel, s: &mut Shared) {
    let corpus = corpus_sources(p, crate::assets::inject_demo().2);
    let c = InjectCommand::Lexicon {
        corpus,
        min_pieces: p.min_pieces,
        min_count: p.min_count,
        limit: Some(p.max_forms),
    };
    send_job(p, s, c, "extracting the lexicon");
}

/// The Shakespeare demo: Shakespeare's works as corpus, their rare words as lexicon (appended
/// to the training text), the demo's settings.
pub fn shakespeare(p: &mut InjectPanel, s: &mut Shared) {
    p.shakespeare = true;
    p.corpus.clear();
    p.min_pieces = crate::assets::SHAKESPEARE_MIN_PIECES;
    p.min_count = crate::assets::SHAKESPEARE_MIN_COUNT;
    p.max_forms = crate::assets::SHAKESPEARE_FORMS;
    p.config = crate::assets::shakespeare_demo(&[], crate::assets::SHAKESPEARE_STEPS).2;
    extract(p, s);
}

impl Panel for InjectPanel {
    super::panel::panel_settings!(
        lexicon,
        morphemes,
        corpus,
        config,
        dir,
        shakespeare,
        min_pieces,
        min_count,
        max_forms,
        probe_count,
        probe_tokens,
        lora,
        align
    );

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
                        "The model's vocabulary now has {} injected forms (step {}{}): use \
                         them in the Playground, Lens and Words panels",
                        v.forms.len(),
                        v.step,
                        v.phases()
                    ),
                    None => "The model has its base vocabulary again".to_owned(),
                });
                s.model = Some(*info);
            }
            InjectResult::Lora(r) => {
                self.losses = (1..).zip(r.losses.iter().copied()).collect();
                self.val = r.val.clone();
                self.steps = r.steps;
                self.lora.steps = r.steps;
                // The phase-2 row shows the summary; the status line only a stop.
                self.status = match r.stopped {
                    Some(Stopped::Cancelled) => Some(format!(
                        "Adapters stopped at step {} (checkpoint saved): Resume adapters \
                         continues",
                        r.step
                    )),
                    _ => None,
                };
                self.lora_attach = true;
                self.lora_run = Some(*r);
            }
            InjectResult::Align(r) => {
                self.losses = (1..).zip(r.losses.iter().copied()).collect();
                self.val = r.val.clone();
                self.steps = r.steps;
                self.align.steps = r.steps;
                self.status = match r.stopped {
                    Some(Stopped::Cancelled) => Some(format!(
                        "Alignment stopped at step {} (checkpoint saved): Resume alignment \
                         continues",
                        r.step
                    )),
                    _ => None,
                };
                self.align_attach = true;
                self.align_run = Some(*r);
            }
            InjectResult::LoraBench(b) => {
                s.notice = Some(format!("LoRA step: {:.2} s (median)", b.median_step_s));
            }
            InjectResult::Probes {
                dir, step, probes, ..
            } => self.probes = Some((dir, step, probes)),
            InjectResult::Lexicon {
                sources, entries, ..
            } => {
                let name = format!(
                    "{} words extracted from {} (at least {} tokens, {} occurrences)",
                    entries.len(),
                    sources.join(", "),
                    self.min_pieces,
                    self.min_count
                );
                self.counts = None;
                self.extracted = Some((name, entries));
            }
        }
    }

    fn failed(&mut self, id: RequestId) {
        JobView::clear(&mut self.job, id);
    }

    fn receive(&mut self, s: &mut Shared, msg: &Message) {
        if let Message::Lesson(Do::Inject) = msg {
            start(self, s);
        }
    }
}

pub(super) fn send_job(p: &mut InjectPanel, s: &mut Shared, c: InjectCommand, stage: &str) {
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
        InjectFile::CompareRun => {
            if let Some(dir) = path.parent() {
                super::run_table::add_run(p, s, dir);
            }
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
        InjectFile::CompareRun => ("Add a run to the table (its run.json)", ("Run", &["json"])),
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

pub(super) fn name(p: Option<&PathBuf>, shipped: &str) -> String {
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
    super::inject_controls::inputs_row(p, s, ui);
    super::inject_controls::settings_row(p, s, ui);
    super::lora_controls::lora_row(p, s, ui);
    super::align_controls::align_row(p, s, ui);
    super::inject_controls::use_row(p, s, ui);
    ui.separator();
    // Results scroll under the controls, so the run table below the probes is reachable.
    egui::ScrollArea::vertical()
        .id_salt("inject_results")
        .show(ui, |ui| {
            ui.columns(2, |cols| {
                super::inject_views::curves(p, &mut cols[0]);
                super::inject_views::report_view(p, s, &mut cols[1]);
            });
            super::inject_views::probes_view(p, ui);
            super::run_table::runs_table(p, s, ui);
        });
}

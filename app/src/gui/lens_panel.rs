//! The Lens panel: a layer × position heatmap of a chosen statistic (target probability, rank,
//! entropy, KL to the final layer) with the top token printed where it fits and the top-k on
//! hover; target probability across layers for several prompts; the per-layer top-k table for
//! one position; raw / logit / tuned lens switch and tuned-lens training; CSV/JSON/PNG export.

use egui::Rect;
use neoscope_api::hooks::HookSpec;
use neoscope_api::lens::LensCommand;
use neoscope_api::lens::LensOutput;
use neoscope_api::lens::{LensCell, LensKind, LensResult};
use neoscope_api::lens::{TunedConfig, TunedReport};
use neoscope_api::steer::Steer;
use neoscope_api::{JobResult, RequestId};

use super::dialogs::{Mode, Pending};
use super::lens_views::{emergence_table, heatmap, target_plot, top_table};
use super::lessons::Do;
use super::panel::{JobView, Message, Panel, Shared, clear_id};

/// The statistic the heatmap shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Stat {
    /// Probability of the target token.
    TargetProb,
    /// Log-probability of the target token (shows the small probabilities of early layers).
    TargetLogProb,
    /// Probability of the cell's own top-1 token (how sure the layer is).
    Top1Prob,
    /// Rank of the target token (log scale).
    TargetRank,
    /// Entropy.
    Entropy,
    /// KL to the final layer.
    Kl,
}

/// The lowest log-probability the log scale shows (≈ 10⁻⁶; anything below is the darkest).
const LOGP_FLOOR: f32 = -13.8;
/// Ranks run up to about the vocabulary size on the rank scale.
const RANK_CEIL: f32 = 49152.0;
/// The entropy that shows as the darkest (ln of the vocabulary size is about 10.8).
const ENTROPY_CEIL: f32 = 10.8;
/// The KL that shows as the darkest.
const KL_CEIL: f32 = 10.0;

impl Stat {
    /// Every statistic, in menu order.
    pub const ALL: [Stat; 6] = [
        Self::TargetProb,
        Self::TargetLogProb,
        Self::Top1Prob,
        Self::TargetRank,
        Self::Entropy,
        Self::Kl,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::TargetProb => "target p",
            Self::TargetLogProb => "target log p",
            Self::Top1Prob => "top-1 p",
            Self::TargetRank => "target rank",
            Self::Entropy => "entropy",
            Self::Kl => "KL to final",
        }
    }

    /// The value of a cell, scaled to 0..1 for colouring (1 = "the model has it").
    pub(super) fn shade(self, c: &LensCell) -> f32 {
        match self {
            Self::TargetProb => c.targets.first().map_or(0.0, |t| t.prob),
            Self::TargetLogProb => c
                .targets
                .first()
                .map_or(0.0, |t| 1.0 - (t.logprob / LOGP_FLOOR).clamp(0.0, 1.0)),
            Self::Top1Prob => c.top.first().map_or(0.0, |t| t.prob),
            Self::TargetRank => c.targets.first().map_or(0.0, |t| {
                1.0 - ((t.rank as f32 + 1.0).ln() / RANK_CEIL.ln()).min(1.0)
            }),
            Self::Entropy => 1.0 - (c.entropy / ENTROPY_CEIL).min(1.0),
            Self::Kl => 1.0 - (c.kl_to_final / KL_CEIL).min(1.0),
        }
    }

    /// The statistic's value at shade `t` (the inverse of `shade`), for the colour bar.
    pub(super) fn value_at(self, t: f32) -> String {
        match self {
            Self::TargetProb | Self::Top1Prob => format!("{t:.1}"),
            Self::TargetLogProb => {
                let p = ((1.0 - t) * LOGP_FLOOR).exp();
                if p >= 0.1 {
                    format!("{p:.1}")
                } else {
                    format!("{p:.0e}")
                }
            }
            Self::TargetRank => format!("rank {:.0}", ((1.0 - t) * RANK_CEIL.ln()).exp() - 1.0),
            Self::Entropy => format!("{:.1} nats", (1.0 - t) * ENTROPY_CEIL),
            Self::Kl => format!("{:.1} nats", (1.0 - t) * KL_CEIL),
        }
    }
}

/// A prompt line of the panel: `PROMPT => TARGET` gives the prompt its own target (everything
/// after `=>`, spaces included, so `… the => current` follows `" current"`); a line without
/// `=>` uses the shared target.
pub fn split_prompt_line(line: &str) -> (String, Option<String>) {
    match line.split_once("=>") {
        Some((p, t)) if !t.trim().is_empty() => (p.trim_end().to_owned(), Some(t.to_owned())),
        Some((p, _)) => (p.trim_end().to_owned(), None),
        None => (line.trim_end().to_owned(), None),
    }
}

/// What an export dialog is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Export {
    /// Every cell as CSV.
    Csv,
    /// The results as JSON.
    Json,
}

/// State of the Lens panel.
pub struct LensPanel {
    /// Prompts, one per line.
    pub prompts: String,
    /// Target token text.
    pub target: String,
    /// Chat mode.
    pub chat: bool,
    /// Which lens.
    pub lens: LensKind,
    /// Heatmap statistic.
    pub stat: Stat,
    /// Probability threshold of the "first layer above p" column.
    pub threshold: f32,
    /// Which prompt the heatmap and table show.
    pub shown: usize,
    /// Position of the top-k table (None: last).
    pub position: Option<usize>,
    /// Show every n-th layer (the last is always shown).
    pub stride: usize,
    /// Running lens request.
    pub running: Option<RequestId>,
    /// Results, one per prompt.
    pub results: Vec<LensResult>,
    /// Tuned-lens training in progress.
    pub training: Option<JobView>,
    /// Whether a tuned lens is ready.
    pub tuned_ready: bool,
    /// Its held-out report.
    pub report: Option<TunedReport>,
    /// Export dialog in flight.
    pub dialog: Option<Pending<Export>>,
    /// What the PNG export captures: the heatmap, its colour bar and the curves.
    pub export_rect: Option<Rect>,
    /// Steer with this word's vector (None: no word steering).
    pub steer_word: Option<String>,
    /// Layer whose input the word steering changes.
    pub steer_layer: usize,
    /// Multiplier of the word's vector.
    pub steer_scale: f32,
    /// Steering chosen in another panel (e.g. an MFA component), applied while set.
    pub external: Option<Steer>,
}

impl LensPanel {
    /// The steering this panel applies to its runs.
    pub fn steering(&self) -> Vec<Steer> {
        let mut v: Vec<Steer> = self.external.iter().cloned().collect();
        if let Some(name) = &self.steer_word {
            v.push(Steer::WordDirection {
                name: name.clone(),
                layer: self.steer_layer,
                scale: self.steer_scale,
            });
        }
        v
    }
}

impl Default for LensPanel {
    fn default() -> Self {
        Self {
            prompts: "Why do electricians make good swimmers? Because they know the\nThe electrician measured the flow of electric".into(),
            target: " current".into(),
            chat: false,
            lens: LensKind::Logit,
            stat: Stat::TargetLogProb,
            threshold: neoscope_api::lens::EMERGENCE_THRESHOLD,
            shown: 0,
            position: None,
            stride: 1,
            running: None,
            results: Vec::new(),
            training: None,
            tuned_ready: false,
            report: None,
            dialog: None,
            export_rect: None,
            steer_word: None,
            steer_layer: 10,
            steer_scale: 4.0,
            external: None,
        }
    }
}

impl Panel for LensPanel {
    super::panel::panel_settings!(
        prompts,
        target,
        chat,
        lens,
        stat,
        threshold,
        stride,
        steer_layer,
        steer_scale
    );

    fn title(&self) -> &'static str {
        "Lens"
    }

    fn show(&mut self, s: &mut Shared, ui: &mut egui::Ui) {
        show(self, s, ui);
    }

    fn progress(&mut self, id: RequestId, stage: String, fraction: Option<f32>) {
        JobView::update(&mut self.training, id, stage, fraction);
    }

    fn finished(&mut self, s: &mut Shared, id: RequestId, result: JobResult) {
        self.failed(id);
        let JobResult::Lens(r) = result else { return };
        match *r {
            LensOutput::Runs(results) => {
                self.shown = self.shown.min(results.len().saturating_sub(1));
                self.results = results;
            }
            LensOutput::Tuned(report) => {
                self.tuned_ready = true;
                self.report = report;
            }
            LensOutput::TunedSaved { path } => {
                s.notice = Some(format!("Saved {}", path.display()));
            }
        }
    }

    fn failed(&mut self, id: RequestId) {
        clear_id(&mut self.running, id);
        JobView::clear(&mut self.training, id);
    }

    fn receive(&mut self, s: &mut Shared, msg: &Message) {
        match msg {
            Message::SteerLensWithWord(name) => self.steer_word = Some(name.clone()),
            Message::SteerLens(steer) => self.external = Some(steer.clone()),
            Message::Lesson(Do::Lens {
                prompts,
                target,
                stat,
            }) => {
                (*prompts).clone_into(&mut self.prompts);
                (*target).clone_into(&mut self.target);
                self.stat = *stat;
                self.lens = LensKind::Logit;
                self.shown = 0;
                self.position = None;
                start(self, s);
            }
            Message::Lesson(Do::TunedLens { steps }) => train_tuned(self, s, *steps),
            Message::Lesson(_) | Message::VocabularyChanged => {}
        }
    }
}

/// Trains a tuned lens on the shipped corpus for `steps` steps.
pub fn train_tuned(p: &mut LensPanel, s: &mut Shared, steps: usize) {
    let cmd = LensCommand::TrainTuned {
        corpus: crate::assets::CORPUS.to_owned(),
        config: TunedConfig {
            steps,
            ..TunedConfig::default()
        },
    };
    if let Some(id) = s.send(cmd) {
        p.training = Some(JobView {
            id,
            stage: "starting".into(),
            fraction: Some(0.0),
        });
    }
}

/// Runs the lens on the panel's prompts.
pub fn start(p: &mut LensPanel, s: &mut Shared) {
    let lines: Vec<(String, Option<String>)> = p
        .prompts
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(split_prompt_line)
        .collect();
    let own = lines.iter().any(|(_, t)| t.is_some());
    // A prompt with its own target follows it alone; the others follow the shared one.
    let shared = (!p.target.is_empty()).then(|| p.target.clone());
    let prompt_targets: Vec<Vec<String>> = if own {
        lines
            .iter()
            .map(|(_, t)| t.clone().or_else(|| shared.clone()).into_iter().collect())
            .collect()
    } else {
        Vec::new()
    };
    let targets = if own {
        Vec::new()
    } else {
        shared.into_iter().collect()
    };
    let cmd = LensCommand::Run {
        prompts: lines.into_iter().map(|(p, _)| p).collect(),
        chat: p.chat,
        lens: p.lens,
        targets,
        prompt_targets,
        top_k: 10,
        hooks: HookSpec::default(),
        steer: p.steering(),
    };
    p.running = s.send(cmd);
}

fn handle_dialog(p: &mut LensPanel, s: &mut Shared) {
    let Some(d) = &p.dialog else { return };
    let Some(answer) = d.poll() else { return };
    let what = d.purpose;
    p.dialog = None;
    let Some(path) = answer else { return };
    let (path, bytes) = match what {
        Export::Csv => (
            path.with_extension("csv"),
            neoscope_api::lens::cells_csv(&p.results).into_bytes(),
        ),
        Export::Json => match serde_json::to_vec_pretty(&p.results) {
            Ok(b) => (path.with_extension("json"), b),
            Err(e) => {
                s.error = Some(e.to_string());
                return;
            }
        },
    };
    if let Err(e) = neoscope_api::files::write_atomic(&path, &bytes) {
        s.error = Some(e.to_string());
    }
}

/// Draws the Lens panel.
fn show(p: &mut LensPanel, s: &mut Shared, ui: &mut egui::Ui) {
    handle_dialog(p, s);
    ui.heading("Lens");
    if s.model_info().is_none() {
        ui.label("Load a model in the Model panel first.");
        return;
    }
    controls(p, s, ui);
    let Some(r) = p.results.get(p.shown).cloned() else {
        ui.weak("Run the lens to see what every layer predicts.");
        return;
    };
    if let Some(note) = r.targets.first().and_then(|t| t.note.clone()) {
        ui.weak(note);
    }
    // The heatmap (with its colour bar) on the left, the curves, the emergence table and the
    // top-k table on the right, so that all of it shows at the default window size.
    let left_w = (ui.available_width() * 0.6).max(320.0);
    ui.horizontal_top(|ui| {
        let left = ui
            .allocate_ui(egui::vec2(left_w, ui.available_height()), |ui| {
                ui.set_max_width(left_w);
                // A long prompt scrolls sideways instead of pushing the curves off screen.
                egui::ScrollArea::both()
                    .id_salt("lens_heatmap")
                    .max_width(left_w)
                    .show(ui, |ui| heatmap(p, ui, &r));
            })
            .response
            .rect;
        ui.separator();
        let right = ui
            .vertical(|ui| {
                let curves = target_plot(ui, &p.results, p.threshold);
                emergence_table(ui, &p.results, p.threshold, p.shown);
                ui.add_space(4.0);
                top_table(ui, &r, p.position);
                curves
            })
            .inner;
        p.export_rect = Some(left.union(right));
    });
}

fn controls(p: &mut LensPanel, s: &mut Shared, ui: &mut egui::Ui) {
    ui.horizontal(|ui| {
        ui.add(
            egui::TextEdit::multiline(&mut p.prompts)
                .desired_rows(2)
                .desired_width(ui.available_width() - 260.0)
                .hint_text("One prompt per line; `PROMPT => TARGET` gives a prompt its own target"),
        );
        ui.vertical(|ui| {
            ui.horizontal(|ui| {
                ui.label("target");
                ui.add(egui::TextEdit::singleline(&mut p.target).desired_width(110.0));
            });
            ui.checkbox(&mut p.chat, "chat template");
        });
    });
    ui.horizontal_wrapped(|ui| {
        ui.label("lens");
        ui.selectable_value(&mut p.lens, LensKind::Raw, "raw");
        ui.selectable_value(&mut p.lens, LensKind::Logit, "logit");
        let tuned_ok = p.tuned_ready;
        ui.add_enabled_ui(tuned_ok, |ui| {
            ui.selectable_value(&mut p.lens, LensKind::Tuned, "tuned")
                .on_disabled_hover_text("Train a tuned lens first");
        });
        ui.separator();
        ui.label("show");
        for s in Stat::ALL {
            ui.selectable_value(&mut p.stat, s, s.label());
        }
        ui.separator();
        ui.label("every");
        ui.add(egui::DragValue::new(&mut p.stride).range(1..=10));
        ui.label("layers");
        ui.separator();
        ui.label("first p ≥");
        ui.add(
            egui::DragValue::new(&mut p.threshold)
                .range(0.01..=1.0)
                .speed(0.01),
        );
    });
    steering_row(p, s, ui);
    ui.horizontal(|ui| {
        match p.running {
            Some(_) => {
                ui.spinner();
            }
            None => {
                if ui.button("Run lens").clicked() {
                    start(p, s);
                }
            }
        }
        if p.results.len() > 1 {
            ui.label("heatmap of prompt");
            let n = p.results.len();
            ui.add(egui::DragValue::new(&mut p.shown).range(0..=n - 1));
        }
        ui.separator();
        match p.training.clone() {
            Some(job) => {
                if ui.button("Cancel training").clicked() {
                    s.cancel(job.id);
                }
                ui.add(
                    egui::ProgressBar::new(job.fraction.unwrap_or(0.0))
                        .text(job.stage)
                        .desired_width(260.0),
                );
            }
            None => {
                if ui
                    .button("Train tuned lens")
                    .on_hover_text("Per-layer affine translators trained on the shipped corpus")
                    .clicked()
                {
                    train_tuned(p, s, TunedConfig::default().steps);
                }
            }
        }
        if !p.results.is_empty() {
            ui.separator();
            if ui.button("CSV…").clicked() {
                p.dialog = Some(Pending::new(
                    Export::Csv,
                    Mode::Save,
                    "Export lens cells",
                    ("CSV", &["csv"]),
                    "lens.csv",
                ));
            }
            if ui.button("JSON…").clicked() {
                p.dialog = Some(Pending::new(
                    Export::Json,
                    Mode::Save,
                    "Export lens results",
                    ("JSON", &["json"]),
                    "lens.json",
                ));
            }
            if let Some(rect) = p.export_rect
                && s.png.is_none()
                && ui.button("PNG…").clicked()
            {
                s.png = Some(super::png_export::PngExport::start(rect, "lens.png"));
            }
        }
    });
    if let Some(r) = &p.report {
        let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
        ui.weak(format!(
            "Tuned lens: held-out KL {:.3} (logit lens {:.3}), mean over layers",
            mean(&r.tuned_kl),
            mean(&r.logit_kl)
        ));
    }
}

fn steering_row(p: &mut LensPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let names: Vec<String> = s.words.iter().map(|w| w.name.clone()).collect();
    let n_layers = s.model_info().map_or(1, |i| i.dims.n_layers);
    let mut chosen = None;
    ui.horizontal_wrapped(|ui| {
        ui.label("steer");
        let shown = p.steer_word.clone().unwrap_or_else(|| "none".into());
        egui::ComboBox::from_id_salt("lens_steer_word")
            .selected_text(shown)
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut p.steer_word, None, "none");
                for n in &names {
                    ui.selectable_value(&mut p.steer_word, Some(n.clone()), n);
                }
            })
            .response
            .on_hover_text("Add a new word's vector to the residual stream at every position");
        if p.steer_word.is_some() {
            ui.add(
                egui::Slider::new(&mut p.steer_layer, 0..=n_layers.saturating_sub(1)).text("layer"),
            );
            ui.add(egui::Slider::new(&mut p.steer_scale, -20.0..=20.0).text("scale"));
        }
        if let Some(ext) = &p.external {
            ui.separator();
            ui.label(format!("also: {}", ext.describe()));
            if ui.small_button("remove").clicked() {
                p.external = None;
            }
        }
        if let Some(r) = p.results.get(p.shown) {
            let pos = p.position.unwrap_or(r.tokens.len().saturating_sub(1));
            let picks = r.top1_any_layer(pos);
            ui.separator();
            egui::ComboBox::from_id_salt("lens_target_pick")
                .selected_text("pick target")
                .show_ui(ui, |ui| {
                    for t in &picks {
                        if ui
                            .selectable_label(false, format!("{:?}", t.text))
                            .clicked()
                        {
                            chosen = Some(t.text.clone());
                        }
                    }
                })
                .response
                .on_hover_text("Tokens that are top-1 at some layer at this position");
        }
    });
    if let Some(t) = chosen {
        p.target = t;
        start(p, s);
    }
}

/// Layers shown with stride `s`, always including the last.
pub fn strided_layers(n: usize, s: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).step_by(s.max(1)).collect();
    if v.last() != Some(&(n - 1)) {
        v.push(n - 1);
    }
    v
}

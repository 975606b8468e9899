//! The Embeddings panel: a 2-D projection (PCA or t-SNE) of the whole vocabulary with injected
//! forms and trained words highlighted, hover labels, a search box that finds and centres a
//! token, click-to-list nearest neighbours, and word arithmetic over base + new rows. The
//! panel's own CPU time per frame is measured and shown (49k points stay interactive).

use std::time::Instant;

use egui::Color32;
use egui_plot::{Plot, PlotPoint, PlotPoints, Points};
use neoscope_api::embed::EmbedResult;
use neoscope_api::embed::TsneConfig;
use neoscope_api::embed::{BaseSelection, Method, PointKind, Projection};
use neoscope_api::embed::{EmbedCommand, Hit};
use neoscope_api::{Command, JobResult, RequestId};

use super::panel::{JobView, Message, Panel, Shared, clear_id};

/// Which base rows the panel projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BaseChoice {
    /// All of them.
    All,
    /// A seeded sample.
    Sample,
    /// Those containing a text.
    Containing,
    /// None (only new forms, words, activations).
    Nothing,
}

/// State of the Embeddings panel.
pub struct EmbedPanel {
    /// t-SNE instead of PCA.
    pub tsne: bool,
    /// t-SNE settings.
    pub tsne_cfg: TsneConfig,
    /// Base rows.
    pub base: BaseChoice,
    /// Sample size.
    pub sample: usize,
    /// Filter text.
    pub containing: String,
    /// Include injected forms and words.
    pub include_new: bool,
    /// Include the MFA panel's activations.
    pub include_activations: bool,
    /// Running projection.
    pub job: Option<JobView>,
    /// The projection shown.
    pub projection: Option<Projection>,
    /// Its points split by kind, built once when it arrives (not every frame).
    pub series: Vec<Series>,
    /// Search text.
    pub search: String,
    /// Index of the found/selected point.
    pub selected: Option<usize>,
    /// Plot window around a found token (x0, x1, y0, y1); `None` fits all points.
    pub view: Option<[f64; 4]>,
    /// Bumped whenever `view` changes, so the plot starts from it.
    pub view_gen: u64,
    /// Arithmetic / neighbour query.
    pub query: String,
    /// Neighbour request in flight.
    pub neighbors_running: Option<RequestId>,
    /// Last neighbours: (what was looked up, hits).
    pub neighbors: Option<(String, Vec<Hit>)>,
    /// How the pending neighbour query is shown.
    pub neighbors_label: String,
    /// The panel's CPU time per frame (ms), smoothed.
    pub frame_ms: f32,
}

impl Default for EmbedPanel {
    fn default() -> Self {
        Self {
            tsne: false,
            tsne_cfg: TsneConfig::default(),
            base: BaseChoice::All,
            sample: 5000,
            containing: String::new(),
            include_new: true,
            include_activations: false,
            job: None,
            projection: None,
            series: Vec::new(),
            search: String::new(),
            selected: None,
            view: None,
            view_gen: 0,
            query: "king - man + woman".into(),
            neighbors_running: None,
            neighbors: None,
            neighbors_label: String::new(),
            frame_ms: 0.0,
        }
    }
}

/// One kind of point as the plot draws it.
pub struct Series {
    /// Legend name.
    pub name: &'static str,
    /// Kind.
    pub kind: PointKind,
    /// Coordinates.
    pub points: Vec<PlotPoint>,
    /// Index of each point in the projection (for its label).
    pub index: Vec<usize>,
}

const KINDS: [(&str, PointKind); 4] = [
    ("base", PointKind::Base),
    ("new forms", PointKind::New),
    ("words", PointKind::Word),
    ("activations", PointKind::Activation),
];

impl Panel for EmbedPanel {
    super::panel::panel_settings!(
        tsne,
        tsne_cfg,
        base,
        sample,
        containing,
        include_new,
        include_activations
    );

    fn title(&self) -> &'static str {
        "Embeddings"
    }

    fn show(&mut self, s: &mut Shared, ui: &mut egui::Ui) {
        show(self, s, ui);
    }

    fn progress(&mut self, id: RequestId, stage: String, fraction: Option<f32>) {
        JobView::update(&mut self.job, id, stage, fraction);
    }

    fn finished(&mut self, _s: &mut Shared, id: RequestId, result: JobResult) {
        self.failed(id);
        let JobResult::Embed(r) = result else { return };
        match *r {
            EmbedResult::Projection(proj) => set_projection(self, *proj),
            EmbedResult::Neighbors { hits, .. } => {
                let label = std::mem::take(&mut self.neighbors_label);
                self.neighbors = Some((label, hits));
            }
        }
    }

    fn failed(&mut self, id: RequestId) {
        JobView::clear(&mut self.job, id);
        clear_id(&mut self.neighbors_running, id);
    }

    fn receive(&mut self, _s: &mut Shared, msg: &Message) {
        if *msg == Message::VocabularyChanged {
            // Neighbour lists were computed over the old rows.
            self.neighbors = None;
        }
    }
}

/// Shows a projection: keeps it and splits its points by kind once.
pub fn set_projection(p: &mut EmbedPanel, proj: Projection) {
    p.series = KINDS
        .iter()
        .map(|(name, kind)| {
            let index: Vec<usize> = (0..proj.kinds.len())
                .filter(|i| proj.kinds[*i] == *kind)
                .collect();
            let points = index
                .iter()
                .map(|i| PlotPoint::new(proj.points[*i][0], proj.points[*i][1]))
                .collect();
            Series {
                name,
                kind: *kind,
                points,
                index,
            }
        })
        .collect();
    p.selected = None;
    p.projection = Some(proj);
}

fn style(kind: PointKind) -> (f32, Color32) {
    match kind {
        PointKind::Base => (1.0, BASE),
        PointKind::New => (2.0, NEW),
        PointKind::Word => (5.0, WORD),
        PointKind::Activation => (1.5, ACT),
    }
}

/// Asks for a projection with the panel's settings.
pub fn project(p: &mut EmbedPanel, s: &mut Shared) {
    let base = match p.base {
        BaseChoice::All => BaseSelection::All,
        BaseChoice::Sample => BaseSelection::Sample {
            n: p.sample,
            seed: 0,
        },
        BaseChoice::Containing => BaseSelection::Containing(p.containing.clone()),
        BaseChoice::Nothing => BaseSelection::None,
    };
    let method = if p.tsne {
        Method::Tsne(p.tsne_cfg)
    } else {
        Method::Pca
    };
    let cmd = Command::Embed(EmbedCommand::Project {
        base,
        include_new: p.include_new,
        include_activations: p.include_activations,
        method,
    });
    if let Some(id) = s.send(cmd) {
        p.job = Some(JobView::new(id, "projecting"));
    }
}

/// Asks for the neighbours of `query` (a token `#id`, a form, a word or arithmetic), shown
/// as `label`.
pub fn neighbors(p: &mut EmbedPanel, s: &mut Shared, query: String, label: String) {
    p.neighbors_label = label;
    let cmd = Command::Embed(EmbedCommand::Neighbors { query, k: 12 });
    p.neighbors_running = s.send(cmd);
}

/// The query that looks up point `i` of the projection, and how it is shown.
fn point_query(p: &Projection, i: usize) -> (String, String) {
    let q = match p.kinds[i] {
        PointKind::Word => p.labels[i].clone(),
        _ => format!("#{}", p.ids[i]),
    };
    (q, format!("{:?}", p.labels[i]))
}

/// Zooms the plot to a window around point `i` (a fifth of the data's extent).
fn focus(p: &mut EmbedPanel, i: usize) {
    let Some(proj) = &p.projection else {
        return;
    };
    let span = |k: usize| {
        let (lo, hi) = proj
            .points
            .iter()
            .fold((f32::MAX, f32::MIN), |(lo, hi), q| {
                (lo.min(q[k]), hi.max(q[k]))
            });
        f64::from(hi - lo)
    };
    let half = 0.1 * span(0).max(span(1));
    let c = proj.points[i];
    let (x, y) = (f64::from(c[0]), f64::from(c[1]));
    p.view = Some([x - half, x + half, y - half, y + half]);
    p.view_gen += 1;
}

/// Finds the point whose label matches `text`: exact (ignoring surrounding spaces) first,
/// then the shortest label containing it.
pub fn find(p: &Projection, text: &str) -> Option<usize> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    p.labels.iter().position(|l| l.trim() == t).or_else(|| {
        p.labels
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains(t))
            .min_by_key(|(i, l)| (l.len(), *i))
            .map(|(i, _)| i)
    })
}

/// Draws the Embeddings panel.
fn show(p: &mut EmbedPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let start = Instant::now();
    ui.heading("Embedding space");
    if s.model_info().is_none() {
        ui.label("Load a model in the Model panel first.");
        return;
    }
    controls(p, s, ui);
    ui.separator();
    if p.projection.is_none() {
        ui.weak("Project the vocabulary: PCA is instant; t-SNE shows neighbourhoods and takes minutes at the full vocabulary (a sample is quicker). Injected forms and trained words are highlighted.");
    } else {
        egui::Panel::right("embed_side")
            .resizable(true)
            .default_size(260.0)
            .show(ui, |ui| side(p, s, ui));
        egui::CentralPanel::default().show(ui, |ui| scatter(p, s, ui));
    }
    let ms = start.elapsed().as_secs_f32() * 1000.0;
    p.frame_ms = if p.frame_ms == 0.0 {
        ms
    } else {
        0.9 * p.frame_ms + 0.1 * ms
    };
}

fn controls(p: &mut EmbedPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let busy = p.job.is_some();
    ui.horizontal_wrapped(|ui| {
        ui.selectable_value(&mut p.tsne, false, "PCA");
        ui.selectable_value(&mut p.tsne, true, "t-SNE");
        if p.tsne {
            ui.add(
                egui::DragValue::new(&mut p.tsne_cfg.perplexity)
                    .range(2.0..=100.0)
                    .prefix("perplexity "),
            );
            ui.add(
                egui::DragValue::new(&mut p.tsne_cfg.epochs)
                    .range(50..=5000)
                    .prefix("iterations "),
            );
        }
        ui.separator();
        ui.label("base tokens:");
        ui.selectable_value(&mut p.base, BaseChoice::All, "all");
        ui.selectable_value(&mut p.base, BaseChoice::Sample, "sample");
        ui.selectable_value(&mut p.base, BaseChoice::Containing, "containing");
        ui.selectable_value(&mut p.base, BaseChoice::Nothing, "none");
        match p.base {
            BaseChoice::Sample => {
                ui.add(
                    egui::DragValue::new(&mut p.sample)
                        .range(10..=200_000)
                        .suffix(" tokens"),
                )
                .on_hover_text("A seeded uniform sample of the base vocabulary");
            }
            BaseChoice::Containing => {
                ui.add(egui::TextEdit::singleline(&mut p.containing).desired_width(80.0));
            }
            BaseChoice::All | BaseChoice::Nothing => {}
        }
        ui.checkbox(&mut p.include_new, "new forms and words");
        ui.checkbox(&mut p.include_activations, "MFA activations")
            .on_hover_text("The residual-stream activations collected in the MFA panel");
        if ui
            .add_enabled(!busy, egui::Button::new("Project"))
            .clicked()
        {
            project(p, s);
        }
    });
    if let Some(job) = p.job.clone() {
        super::widgets::job_row(s, ui, &job, None);
    }
}

const BASE: Color32 = Color32::from_rgb(120, 140, 170);
const NEW: Color32 = Color32::from_rgb(235, 130, 40);
const WORD: Color32 = Color32::from_rgb(210, 40, 60);
const ACT: Color32 = Color32::from_rgb(80, 190, 120);

fn scatter(p: &mut EmbedPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let Some(proj) = &p.projection else {
        return;
    };
    let series = &p.series;
    let count = |k: PointKind| {
        series
            .iter()
            .find(|s| s.kind == k)
            .map_or(0, |s| s.index.len())
    };
    let n_base = count(PointKind::Base);
    let n_new = proj.points.len() - n_base;
    ui.horizontal(|ui| {
        ui.label(format!(
            "{}: {n_base} base tokens, {n_new} new",
            proj.method
        ));
        if let Some(e) = proj.explained {
            ui.weak(format!(
                "(axes explain {:.1}% and {:.1}% of the variance)",
                e[0] * 100.0,
                e[1] * 100.0
            ));
        }
        ui.weak(format!("panel {:.1} ms/frame", p.frame_ms));
    });
    let selected = p.selected;
    let ui_ring_color = ui.visuals().strong_text_color();
    let sel_label = selected
        .and_then(|i| proj.labels.get(i))
        .map(|l| format!("  {}", l.trim()));
    let sel_xy = selected
        .and_then(|i| proj.points.get(i))
        .map(|q| [f64::from(q[0]), f64::from(q[1])]);
    let mut plot = Plot::new(format!("embed_scatter_{}", p.view_gen));
    if let Some([x0, x1, y0, y1]) = p.view {
        plot = plot.default_x_bounds(x0, x1).default_y_bounds(y0, y1);
    }
    let resp = plot
        .data_aspect(1.0)
        .legend(egui_plot::Legend::default())
        // Hover labels: egui_plot reports the hovered point's index within its series.
        .label_formatter(|hover| match hover {
            egui_plot::HoverPosition::NearDataPoint {
                plot_name, index, ..
            } => series
                .iter()
                .find(|s| s.name == *plot_name)
                .and_then(|s| s.index.get(*index))
                .map(|i| format!("{:?}", proj.labels[*i])),
            egui_plot::HoverPosition::Elsewhere { .. } => None,
        })
        .show(ui, |plot| {
            for s in series {
                let (radius, color) = style(s.kind);
                plot.points(
                    Points::new(s.name, PlotPoints::Borrowed(&s.points))
                        .radius(radius)
                        .color(color),
                );
            }
            if let Some(xy) = sel_xy {
                let ring = ui_ring_color;
                plot.points(
                    Points::new("selected", vec![xy])
                        .radius(8.0)
                        .filled(false)
                        .color(ring),
                );
                if let Some(label) = &sel_label {
                    plot.text(
                        egui_plot::Text::new("", [xy[0], xy[1]].into(), label.clone())
                            .anchor(egui::Align2::LEFT_BOTTOM)
                            .color(ring),
                    );
                }
            }
            if plot.response().clicked() {
                plot.pointer_coordinate()
                    .map(|c| (c, plot.transform().dpos_dvalue()))
            } else {
                None
            }
        });
    // A click selects the nearest point on screen and lists its neighbours.
    if let Some((c, scale)) = resp.inner {
        let nearest = proj
            .points
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let dx = (f64::from(q[0]) - c.x) * scale[0];
                let dy = (f64::from(q[1]) - c.y) * scale[1];
                (i, dx * dx + dy * dy)
            })
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((i, d2)) = nearest
            && d2 < 12.0 * 12.0
        {
            let (q, label) = point_query(proj, i);
            p.selected = Some(i);
            neighbors(p, s, q, label);
        }
    }
}

fn side(p: &mut EmbedPanel, s: &mut Shared, ui: &mut egui::Ui) {
    ui.strong("Find a token");
    let find_now = ui
        .horizontal(|ui| {
            let r = ui.add(egui::TextEdit::singleline(&mut p.search).desired_width(150.0));
            let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            ui.button("Find").clicked() || enter
        })
        .inner;
    if find_now && let Some(proj) = &p.projection {
        match find(proj, &p.search) {
            Some(i) => {
                let (q, label) = point_query(proj, i);
                p.selected = Some(i);
                focus(p, i);
                neighbors(p, s, q, label);
            }
            None => s.notice = Some(format!("`{}` is not in this projection", p.search)),
        }
    }
    ui.add_space(6.0);
    ui.strong("Word arithmetic");
    let run = ui
        .horizontal(|ui| {
            let r = ui
                .add(egui::TextEdit::singleline(&mut p.query).desired_width(150.0))
                .on_hover_text("Tokens, injected forms, trained words or #id, joined by + and -");
            let enter = r.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
            ui.button("Nearest").clicked() || enter
        })
        .inner;
    if run {
        let q = p.query.clone();
        neighbors(p, s, q.clone(), q);
    }
    if p.view.is_some() && ui.button("Show all points").clicked() {
        p.view = None;
        p.view_gen += 1;
    }
    ui.separator();
    if p.neighbors_running.is_some() {
        ui.spinner();
    }
    if let Some((q, hits)) = &p.neighbors {
        ui.label(format!("Nearest to {q}:"));
        egui::Grid::new("embed_hits").striped(true).show(ui, |ui| {
            for h in hits {
                let text = format!("{:?}", h.text);
                match h.kind {
                    PointKind::Base => ui.label(text),
                    _ => ui.colored_label(NEW, text),
                };
                ui.label(format!("{:.3}", h.cosine));
                ui.end_row();
            }
        });
    }
}

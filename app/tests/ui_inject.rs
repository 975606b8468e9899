//! The Injection panel in the app (egui_kittest, headless, the real engine thread, a tiny
//! model): count, train, resume, report, the new rows in the Embeddings panel; then the run's
//! forms used in the model: the Playground and the Lens see them, probes compare with the base.

mod common;

use common::ui::{loaded_tiny, settle, settle_ok};
use egui_kittest::kittest::Queryable;
use neoscope::gui::{EmbedPanel, InjectPanel, LensPanel, MfaPanel, Playground};
use neoscope_api::inject::DriftEnd;

#[test]
fn injection_panel_counts_trains_resumes_and_reports_then_embeddings_show_new_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = loaded_tiny(9, dir.path());
    h.get_by_label("Injection").click();
    h.step();
    let run = dir.path().join("run");
    {
        let p = h.state_mut().panel_mut::<InjectPanel>();
        p.dir = run.display().to_string();
        p.config.steps = 6;
        p.config.eval_every = 3;
        p.config.checkpoint_every = 2;
        p.config.block_len = 32;
        p.config.max_val_blocks = 4;
    }
    h.step();
    // The shipped demo inputs: 2,000 forms, all new to the tiny byte-level vocabulary.
    h.get_by_label("Count").click();
    settle_ok(&mut h);
    let c = h.state().panel::<InjectPanel>().counts.clone().unwrap();
    assert_eq!(c.forms, 2000);
    assert_eq!(c.new + c.known, 2000);
    assert_eq!(c.forms_in_corpus, c.new);
    assert_eq!(c.morphemes, Some((24, 24)));
    h.get_by_label("Train").click();
    settle_ok(&mut h);
    let p = h.state().panel::<InjectPanel>();
    assert_eq!(p.losses.len(), 6);
    assert_eq!(p.val.iter().map(|v| v.0).collect::<Vec<_>>(), vec![0, 3, 6]);
    assert!(
        p.status.as_ref().unwrap().starts_with("Done"),
        "{:?}",
        p.status
    );
    // Resume to more steps continues from the last checkpoint.
    h.state_mut().panel_mut::<InjectPanel>().config.steps = 8;
    h.step();
    h.get_by_label("Resume").click();
    settle(&mut h);
    assert_eq!(h.state().panel::<InjectPanel>().losses.len(), 8);
    h.get_by_label("Write report").click();
    settle_ok(&mut h);
    let (html, r) = h.state().panel::<InjectPanel>().report.clone().unwrap();
    assert!(html.exists() && r.drift.base_identical);
    assert_eq!(r.steps, 8);

    // The run joins the panel's comparison table, read from its report as `inject compare` does.
    h.get_by_label("Compare runs (0)").scroll_to_me();
    h.run_steps(20); // the scroll animation
    h.get_by_label("Compare runs (0)").click();
    h.run_steps(20); // the header's opening animation
    h.get_by_label("Add this run").scroll_to_me();
    h.run_steps(20);
    h.get_by_label("Add this run").click();
    h.run_steps(2);
    let rows = h.state().panel::<InjectPanel>().compared.clone();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0], neoscope::runs::row(&run).unwrap());
    assert_eq!((rows[0].steps, rows[0].forms), (8, c.new));
    // (The table reads the report's JSON: equal to the last bit or so.)
    assert!((rows[0].drift_cos_mean - r.drift.new.mean).abs() < 1e-12);
    assert_eq!(
        rows[0].phase1.as_ref().map(|p| p.step),
        r.phases
            .iter()
            .find(|p| p.phase.starts_with("phase 1"))
            .map(|p| p.step)
    );
    h.get_by_label("Compare runs (1)");
    h.get_by_label("drift cos");
    if std::env::var("NEOSCOPE_DEBUG_PNG").is_ok() {
        h.render().unwrap().save("/tmp/inj.png").unwrap();
    }
    // Adding it again refreshes its row instead of doubling it.
    h.get_by_label("Add this run").click();
    h.run_steps(2);
    assert_eq!(h.state().panel::<InjectPanel>().compared.len(), 1);
    // A folder without a report is refused, naming the file.
    let e = format!("{:#}", neoscope::runs::row(dir.path()).unwrap_err());
    assert!(e.contains("report.json"), "{e}");

    // The Embeddings panel projects base + new rows, finds a form and lists neighbours.
    h.get_by_label("Embeddings").click();
    h.step();
    h.get_by_label("Project").click();
    settle_ok(&mut h);
    let proj = h.state().panel::<EmbedPanel>().projection.clone().unwrap();
    let n_new = proj
        .kinds
        .iter()
        .filter(|k| **k == neoscope_engine::embed::project::PointKind::New)
        .count();
    assert_eq!(n_new, c.new);
    assert_eq!(
        proj.points.len(),
        h.state().shared.model_info().unwrap().dims.d_vocab + c.new
    );
    let form = r.neighbors[0].form.clone();
    h.state_mut().panel_mut::<EmbedPanel>().search = form.clone();
    h.step();
    h.get_by_label("Find").click();
    settle(&mut h);
    let sel = h.state().panel::<EmbedPanel>().selected.unwrap();
    assert_eq!(proj.labels[sel].trim(), form);
    let (_, hits) = h.state().panel::<EmbedPanel>().neighbors.clone().unwrap();
    assert_eq!(hits[0].text.trim(), form); // a row is its own nearest neighbour
    assert!((hits[0].cosine - 1.0).abs() < 1e-4);
    h.state_mut().panel_mut::<EmbedPanel>().query = format!("{form} - the + an");
    h.step();
    h.get_by_label("Nearest").click();
    settle_ok(&mut h);
    assert_eq!(
        h.state()
            .panel::<EmbedPanel>()
            .neighbors
            .as_ref()
            .unwrap()
            .1
            .len(),
        12
    );
    let csv = neoscope::gui::inject_panel::curves_csv(h.state().panel::<InjectPanel>());
    assert_eq!(csv.lines().count(), 1 + 9, "{csv}"); // steps 0..=8 (0: validation only)

    // Activations collected in the MFA panel can be projected on their own.
    h.get_by_label("MFA").click();
    h.step();
    h.state_mut().panel_mut::<MfaPanel>().max = 300;
    h.step();
    h.get_by_label("Collect").click();
    settle(&mut h);
    h.get_by_label("Embeddings").click();
    h.step();
    {
        let p = h.state_mut().panel_mut::<EmbedPanel>();
        p.base = neoscope::gui::embed_panel::BaseChoice::Nothing;
        p.include_new = false;
        p.include_activations = true;
    }
    h.step();
    h.get_by_label("Project").click();
    settle_ok(&mut h);
    let proj = h.state().panel::<EmbedPanel>().projection.clone().unwrap();
    assert_eq!(proj.points.len(), 300);
    assert!(
        proj.kinds
            .iter()
            .all(|k| *k == neoscope_engine::embed::project::PointKind::Activation)
    );
}

/// A trained run's forms attached to the model: the Playground writes and marks them, the Lens
/// follows one as its target, probes set the run beside the base model, and "Base vocabulary"
/// gives the model its own vocabulary back.
#[test]
fn run_forms_in_the_playground_and_lens_then_probes_and_detach() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = loaded_tiny(5, dir.path());
    let base_vocab = h.state().shared.model_info().unwrap().dims.d_vocab;
    h.get_by_label("Injection").click();
    h.step();
    {
        let p = h.state_mut().panel_mut::<InjectPanel>();
        p.dir = dir.path().join("run").display().to_string();
        p.config.steps = 4;
        p.config.eval_every = 2;
        p.config.checkpoint_every = 2;
        p.config.block_len = 32;
        p.config.max_val_blocks = 2;
    }
    h.step();
    h.get_by_label("Train").click();
    settle_ok(&mut h);
    h.get_by_label("Use in the model").click();
    settle_ok(&mut h);
    let info = h.state().shared.model_info().unwrap().clone();
    let v = info.injected.clone().unwrap();
    assert_eq!(v.step, 4);
    assert_eq!(v.base_vocab, base_vocab);
    assert_eq!(info.dims.d_vocab, base_vocab + v.forms.len());

    // The Playground: a prompt of forms; whatever forms it writes are marked where they are.
    h.get_by_label("Playground").click();
    h.step();
    let prompt = format!("{} {} {}", v.forms[0], v.forms[1], v.forms[2]);
    {
        let p = h.state_mut().panel_mut::<Playground>();
        p.chat = false;
        p.prompt = prompt.clone();
        p.max_new_tokens = 12;
    }
    h.step();
    h.get_by_label("Generate").click();
    settle_ok(&mut h);
    let p = h.state().panel::<Playground>();
    for &(a, b) in &p.output_forms {
        assert!(
            v.forms.iter().any(|f| f == &p.output[a..b]),
            "{:?}",
            &p.output
        );
    }
    // Three forms, three tokens (the tiny model has no BOS).
    assert_eq!(p.prompt_tokens, 3);

    // The Lens follows a form as its target: one token, no note.
    h.get_by_label("Lens").click();
    h.step();
    {
        let l = h.state_mut().panel_mut::<LensPanel>();
        l.prompts = prompt;
        l.target = format!(" {}", v.forms[1]);
    }
    h.step();
    h.get_by_label("Run lens").click();
    settle_ok(&mut h);
    let r = h.state().panel::<LensPanel>().results[0].clone();
    let t = &r.targets[0];
    assert_eq!(t.id as usize, base_vocab + 1);
    assert!(t.note.is_none(), "{:?}", t.note);

    // Probes: most-drifted forms first, each with a continuation from both models.
    h.get_by_label("Injection").click();
    h.step();
    {
        let p = h.state_mut().panel_mut::<InjectPanel>();
        p.probe_count = 2;
        p.probe_tokens = 4;
    }
    h.step();
    h.get_by_label("Probe").click();
    settle_ok(&mut h);
    let (_, step, probes) = h.state().panel::<InjectPanel>().probes.clone().unwrap();
    assert_eq!(step, 4);
    let ends: Vec<DriftEnd> = probes.iter().map(|p| p.end).collect();
    assert_eq!(
        ends,
        [
            DriftEnd::Most,
            DriftEnd::Most,
            DriftEnd::Least,
            DriftEnd::Least
        ]
    );
    assert!(probes[0].cosine <= probes[3].cosine);
    // Probing leaves the attachment as it was.
    assert!(h.state().shared.model_info().unwrap().injected.is_some());
    h.get_by_label("Base vocabulary").click();
    settle_ok(&mut h);
    let info = h.state().shared.model_info().unwrap();
    assert!(info.injected.is_none());
    assert_eq!(info.dims.d_vocab, base_vocab);
}

/// Lexicon extraction from a corpus file in the panel: the extracted words become the lexicon
/// that Count (and Train) use.
#[test]
fn extracted_lexicon_becomes_the_runs_lexicon() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    let text: String = (0..30)
        .map(|i| {
            format!(
                "the {} sat near a cat. ",
                ["blorf", "zinter", "quaxle"][i % 3]
            )
        })
        .collect();
    std::fs::write(&corpus, text).unwrap();
    let mut h = loaded_tiny(7, dir.path());
    h.get_by_label("Injection").click();
    h.step();
    {
        let p = h.state_mut().panel_mut::<InjectPanel>();
        p.corpus = vec![corpus];
        p.min_count = 10;
        p.max_forms = 4;
    }
    h.step();
    h.get_by_label("Extract").click();
    settle_ok(&mut h);
    let (name, entries) = h.state().panel::<InjectPanel>().extracted.clone().unwrap();
    assert!(name.starts_with("4 words extracted from"), "{name}");
    assert_eq!(entries.len(), 4);
    assert!(entries.windows(2).all(|w| w[0].count >= w[1].count));
    assert!(entries.iter().all(|e| e.count >= 10 && e.pieces >= 2));
    h.get_by_label("Count").click();
    settle_ok(&mut h);
    assert_eq!(
        h.state()
            .panel::<InjectPanel>()
            .counts
            .clone()
            .unwrap()
            .forms,
        4
    );
}

/// Phase 2 in the panel: adapters trained on the run (curves shown, a summary line), resumed to
/// more steps, then merged into the model with the run's forms ("with adapters").
#[test]
fn lora_adapters_train_resume_and_merge_into_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = loaded_tiny(6, dir.path());
    h.get_by_label("Injection").click();
    h.step();
    {
        let p = h.state_mut().panel_mut::<InjectPanel>();
        p.dir = dir.path().join("run").display().to_string();
        p.config.steps = 2;
        p.config.eval_every = 2;
        p.config.block_len = 32;
        p.config.max_val_blocks = 2;
        p.lora.steps = 3;
        p.lora.rank = 2;
        p.lora.lr = 1e-2;
        p.lora.eval_every = 3;
        p.lora.checkpoint_every = 2;
        p.lora.max_val_blocks = 2;
    }
    h.step();
    h.get_by_label("Train").click();
    settle_ok(&mut h);
    h.get_by_label("Train adapters").click();
    settle_ok(&mut h);
    let p = h.state().panel::<InjectPanel>();
    let r = p.lora_run.clone().unwrap();
    assert_eq!((r.step, r.rows_step), (3, 2));
    assert_eq!(p.losses.len(), 3);
    assert_eq!(r.val.iter().map(|v| v.0).collect::<Vec<_>>(), vec![0, 3]);
    assert!(p.lora_attach);
    h.state_mut().panel_mut::<InjectPanel>().lora.steps = 4;
    h.step();
    h.get_by_label("Resume adapters").click();
    settle_ok(&mut h);
    assert_eq!(
        h.state()
            .panel::<InjectPanel>()
            .lora_run
            .as_ref()
            .unwrap()
            .step,
        4
    );
    h.get_by_label("Use in the model").click();
    settle_ok(&mut h);
    let v = h
        .state()
        .shared
        .model_info()
        .unwrap()
        .injected
        .clone()
        .unwrap();
    assert_eq!((v.step, v.lora_step), (2, Some(4)));
    // Starting phase 2 again on the same run is refused with what to do instead.
    h.get_by_label("Train adapters").click();
    settle(&mut h);
    let e = h.state().shared.error.clone().unwrap_or_default();
    assert!(e.contains("already has a LoRA phase"), "{e}");
}

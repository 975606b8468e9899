//! App interaction tests with egui_kittest (headless, no GPU, no display): a tiny random model
//! saved as a Hugging Face folder is loaded through the real engine thread and the Model panel,
//! then the Playground generates and shows the next-token table.

mod common;

use common::ui::{harness, loaded_tiny, settle, settle_ok};

use candle_core::Device;
use egui_kittest::kittest::Queryable;
use neoscope::gui::scratch_panel::{CorpusChoice, ScratchPanel};
use neoscope::gui::{LensPanel, MfaPanel, ModelPanel, Playground, WordsPanel};
use neoscope_api::scratch::{ScratchArch, ScratchResult};
use neoscope_engine::model::save_hf_dir;
use neoscope_engine::tiny::tiny_model;

#[test]
fn load_a_model_by_path_then_generate_in_the_playground() {
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny");
    let m = tiny_model(3, &Device::Cpu).unwrap();
    save_hf_dir(&m.llama, &m.tokenizer, &model_dir).unwrap();

    let mut h = harness(dir.path(), true);
    h.step();
    h.get_by_label("Load default model");
    h.state_mut().panel_mut::<ModelPanel>().path_input = model_dir.display().to_string();
    h.step();
    h.get_by_label("Load").click();
    settle(&mut h);
    let info = h
        .state()
        .shared
        .model_info()
        .cloned()
        .expect("model loaded");
    assert_eq!(info.format, "hf");
    h.get_by_label("d_model");
    h.get_by_label("32");

    h.get_by_label("Playground").click();
    h.step();
    assert_eq!(h.state().active(), "Playground");
    {
        let p = h.state_mut().panel_mut::<Playground>();
        p.chat = false; // the tiny model has no chat template
        p.prompt = "the cat".into();
        p.max_new_tokens = 8;
    }
    h.step();
    h.get_by_label("Generate").click();
    settle(&mut h);
    let p = h.state().panel::<Playground>();
    assert_eq!(p.new_tokens, 8, "error: {:?}", h.state().shared.error);
    assert!(!p.output.is_empty());
    assert_eq!(p.top.len(), p.top_k);
    let first = format!("{:?}", p.top[0].text);
    h.get_by_label(&first);
}

#[test]
fn chat_mode_on_a_model_without_template_shows_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = loaded_tiny(4, dir.path());
    h.state_mut().open("Playground");
    h.state_mut().panel_mut::<Playground>().chat = true;
    h.step();
    h.get_by_label("Generate").click();
    settle(&mut h);
    let err = h.state().shared.error.clone().expect("an error is shown");
    assert!(err.contains("chat template"), "{err}");
    h.get_by_label_contains("chat template");
}

#[test]
fn loading_a_missing_file_reports_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), false);
    h.state_mut().panel_mut::<ModelPanel>().path_input = "/no/such/model.gguf".into();
    h.step();
    h.get_by_label("Load").click();
    settle(&mut h);
    let err = h.state().shared.error.clone().expect("an error is shown");
    assert!(err.contains("/no/such/model.gguf"), "{err}");
    assert!(h.state().shared.model_info().is_none());
}

#[test]
fn words_panel_creates_trains_defines_and_validates_a_word() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = loaded_tiny(5, dir.path());
    h.get_by_label("Words").click();
    h.step();
    h.state_mut().panel_mut::<WordsPanel>().new_name = "<w>".into();
    h.step();
    h.get_by_label("Create").click();
    settle(&mut h);
    assert_eq!(h.state().shared.words.len(), 1);
    // Add two rows through the table, then fill them.
    h.get_by_label("Add row").click();
    h.run_steps(3);
    h.get_by_label("Add row").click();
    h.run_steps(3);
    {
        let rows = h
            .state_mut()
            .panel_mut::<WordsPanel>()
            .datasets
            .get_mut("<w>")
            .unwrap();
        assert_eq!(rows.len(), 2);
        rows[0].target = " the cat".into();
        rows[1].target = " an ant".into();
    }
    h.state_mut().panel_mut::<WordsPanel>().config.epochs = 3;
    h.state_mut().panel_mut::<WordsPanel>().config.batch_size = 1;
    h.step();
    h.get_by_label("Train").click();
    settle(&mut h);
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    assert_eq!(h.state().panel::<WordsPanel>().live.len(), 6);
    assert!(
        h.state()
            .panel::<WordsPanel>()
            .last_result
            .as_deref()
            .unwrap()
            .starts_with("Done")
    );
    h.get_by_label("Ask the model").click();
    settle(&mut h);
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    // The tiny model has no chat template: the seed's four plain prompts are asked.
    assert_eq!(h.state().panel::<WordsPanel>().definitions.len(), 4);
    assert!(
        h.state().panel::<WordsPanel>().definitions[2]
            .prompt
            .starts_with("<w> refers to:")
    );
    // The seed's new-example prompts and its similarity list.
    h.get_by_label("Generate").scroll_to_me();
    h.run_steps(3);
    h.get_by_label("Generate").click();
    settle_ok(&mut h);
    let gens = &h.state().panel::<WordsPanel>().new_examples;
    assert_eq!(gens.len(), 3);
    assert_eq!(gens[0].prompt, "Here is a new <w>:");
    h.get_by_label("Cosines").scroll_to_me();
    h.run_steps(3);
    h.get_by_label("Cosines").click();
    settle_ok(&mut h);
    let sims = &h.state().panel::<WordsPanel>().similarities;
    assert_eq!(
        sims.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>(),
        ["pun", "joke", "humor", "funny", "wordplay", "wit"]
    );
    assert!(sims.iter().all(|(_, c)| c.abs() <= 1.0 + 1e-5));
    // The seed's recipe in one click, and back.
    h.get_by_label("as in the seed").scroll_to_me();
    h.run_steps(3);
    h.get_by_label("as in the seed").click();
    h.run_steps(2);
    let cfg = h.state().panel::<WordsPanel>().config.clone();
    assert_eq!(
        (cfg.lr, cfg.weight_decay, cfg.clip_norm, cfg.reduction),
        (0.5, 0.01, None, neoscope_api::words::Reduction::Sum)
    );
    h.get_by_label("tuned default").scroll_to_me();
    h.run_steps(3);
    h.get_by_label("tuned default").click();
    h.run_steps(2);
    assert_eq!(
        h.state().panel::<WordsPanel>().config.lr,
        neoscope_api::words::TrainConfig::default().lr
    );
    // Plug a definition in place of the word on the shipped held-out puns.
    h.state_mut().panel_mut::<WordsPanel>().definitions[0].text = "a small animal".into();
    h.run_steps(3);
    h.get_all_by_label("plug in").next().unwrap().click();
    settle(&mut h);
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    let (set, r) = &h.state().panel::<WordsPanel>().plugins[0];
    assert_eq!(set, "pun");
    assert_eq!(r.text, "a small animal");
    assert!(r.with_word.is_finite() && r.with_text.is_finite() && r.without_word.is_finite());
    // A row without the word is refused with its line number, and nothing is trained.
    h.state_mut()
        .panel_mut::<WordsPanel>()
        .datasets
        .get_mut("<w>")
        .unwrap()[1]
        .prompt = "no word".into();
    h.step();
    h.get_by_label("Train").click();
    settle(&mut h);
    let err = h.state().shared.error.clone().unwrap();
    assert!(
        err.contains("dataset table, row 2: the prompt does not contain the word"),
        "{err}"
    );
}

#[test]
fn playground_highlights_new_words_as_chips() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = loaded_tiny(6, dir.path());
    h.state_mut().open("Words");
    h.state_mut().panel_mut::<WordsPanel>().new_name = "<w>".into();
    h.step();
    h.get_by_label("Create").click();
    settle(&mut h);
    h.state_mut().open("Playground");
    h.state_mut().panel_mut::<Playground>().chat = false;
    h.state_mut().panel_mut::<Playground>().prompt = "the".into();
    h.step();
    // The chip button inserts the word into the prompt; generation uses it.
    h.get_by_label("<w>").click();
    h.step();
    assert_eq!(h.state().panel::<Playground>().prompt, "the <w>");
    let job = {
        let names = vec!["<w>".to_owned()];
        let ctx = egui::Context::default();
        let mut out = None;
        let mut full = ctx.run_ui(egui::RawInput::default(), |ui| {
            out = Some(neoscope::gui::widgets::word_chips(ui, "a <w> b", &names));
        });
        // Nothing renders this context: drop its font texture upload on purpose.
        full.textures_delta.clear();
        out.unwrap()
    };
    assert_eq!(job.sections.len(), 3);
    assert_ne!(
        job.sections[1].format.background,
        job.sections[0].format.background
    );
    h.state_mut().panel_mut::<Playground>().max_new_tokens = 3;
    h.step();
    h.get_by_label("Generate").click();
    settle(&mut h);
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    assert_eq!(h.state().panel::<Playground>().new_tokens, 3);
}

#[test]
fn mfa_panel_collects_fits_lists_components_and_steers() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = loaded_tiny(8, dir.path());
    h.get_by_label("MFA").click();
    h.step();
    // Fitting is disabled until there are activations.
    h.get_by_label("Collect").click();
    settle(&mut h);
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    let (n, _, point) = h.state().panel::<MfaPanel>().acts.unwrap();
    assert!(n > 1000, "{n} activations");
    assert_eq!(point.to_string(), "blocks.1.hook_resid_post");
    // A cap keeps a seeded sample of that size.
    h.state_mut().panel_mut::<MfaPanel>().max = 500;
    h.step();
    h.get_by_label("Collect").click();
    settle(&mut h);
    assert_eq!(h.state().panel::<MfaPanel>().acts.unwrap().0, 500);
    let cfg = &mut h.state_mut().panel_mut::<MfaPanel>().config;
    cfg.k = 6;
    cfg.rank = 2;
    cfg.epochs = 3;
    h.step();
    h.get_by_label("Fit").click();
    settle(&mut h);
    settle(&mut h);
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    let p = h.state().panel::<MfaPanel>();
    assert_eq!(p.epochs.len(), 3);
    let f = p.fitted.as_ref().unwrap();
    assert_eq!(f.components.len(), 6);
    assert_eq!(
        f.components.iter().map(|c| c.size).sum::<usize>(),
        f.report.as_ref().unwrap().n_train + f.report.as_ref().unwrap().n_val
    );
    assert!(p.subspace.as_ref().is_some_and(|(_, pts)| !pts.is_empty()));
    h.get_by_label("Steer").click();
    settle(&mut h);
    let s = h.state().panel::<MfaPanel>().steer.as_ref().unwrap();
    assert_eq!(s.promoted.len(), 10);
    assert!(s.promoted[0].delta >= s.suppressed[0].delta);
    let csv = neoscope::gui::mfa_panel::components_csv(
        &h.state()
            .panel::<MfaPanel>()
            .fitted
            .as_ref()
            .unwrap()
            .components,
    );
    assert_eq!(csv.lines().count(), 7);
}

/// The From scratch panel end to end (tiny settings, the shipped corpus): train with live
/// curves and samples, resume to more steps, look inside, open the model in the Lens.
#[test]
fn train_resume_look_inside_and_open_in_the_lens() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), true);
    h.get_by_label("From scratch").click();
    h.step();
    h.get_by_label("What is happening here?");
    {
        let p = h.state_mut().panel_mut::<ScratchPanel>();
        p.corpus = CorpusChoice::Shipped;
        let m = &mut p.spec.model;
        (m.arch, m.n_layers, m.n_heads, m.d_model, m.d_ff, m.n_ctx) =
            (ScratchArch::Seed, 2, 2, 32, 64, 24);
        let t = &mut p.spec.train;
        (t.steps, t.batch, t.lr, t.warmup_steps) = (60, 8, 3e-3, 5);
        (
            t.eval_every,
            t.sample_every,
            t.checkpoint_every,
            t.sample_tokens,
        ) = (20, 20, 20, 40);
        p.dir = dir.path().join("run").display().to_string();
    }
    h.step();
    h.get_by_label("Train").click();
    settle_ok(&mut h);
    let p = h.state().panel::<ScratchPanel>();
    assert_eq!(p.losses.len(), 60);
    assert_eq!(p.samples.len(), 4, "steps 0, 20, 40, 60");
    let (first, last) = (p.val[0].1, p.val.last().unwrap().1);
    assert!(last < first - 0.5, "held-out loss {first} → {last}");
    assert!(p.run.as_ref().is_some_and(|r| !r.cancelled && r.step == 60));

    // Resume to 80 steps: the curves continue from the checkpoint.
    h.state_mut().panel_mut::<ScratchPanel>().spec.train.steps = 80;
    h.step();
    h.get_by_label("Resume").click();
    settle_ok(&mut h);
    let p = h.state().panel::<ScratchPanel>();
    assert_eq!(p.losses.len(), 80);
    assert_eq!(p.losses[79].0, 80);

    // Look inside.
    h.get_by_label("Look inside").click();
    h.step();
    h.state_mut().panel_mut::<ScratchPanel>().probe = "the model".into();
    h.step();
    h.get_by_label("Attention").click();
    settle_ok(&mut h);
    let Some(ScratchResult::Attention { tokens, patterns }) =
        &h.state().panel::<ScratchPanel>().inside
    else {
        panic!("no attention view")
    };
    assert_eq!((tokens.len(), patterns.len(), patterns[0].len()), (9, 2, 2));
    h.get_by_label("Activations").click();
    settle_ok(&mut h);
    let Some(ScratchResult::Activations { checkpoints, .. }) =
        &h.state().panel::<ScratchPanel>().inside
    else {
        panic!("no activations view")
    };
    let steps: Vec<usize> = checkpoints.iter().map(|c| c.step).collect();
    assert_eq!(steps, vec![20, 40, 60, 80]);
    h.get_by_label("Information plane").click();
    settle_ok(&mut h);
    let Some(ScratchResult::InfoPlane { rows, .. }) = &h.state().panel::<ScratchPanel>().inside
    else {
        panic!("no information plane")
    };
    assert_eq!((rows.len(), rows[0].current.len()), (4, 3));
    h.get_by_label("Continue the text").click();
    settle_ok(&mut h);
    let g = h.state().panel::<ScratchPanel>().generated.clone().unwrap();
    assert!(g.starts_with("the model") && g.len() > 20, "{g}");

    // Open in Neoscope: the model loads and the Lens runs on it.
    h.get_by_label("Open in Neoscope").click();
    settle_ok(&mut h);
    assert_eq!(h.state().active(), "Lens");
    let info = h.state().shared.model.clone().unwrap();
    assert_eq!(info.architecture, "neoscope_scratch");
    h.state_mut().panel_mut::<LensPanel>().prompts = "the model is".into();
    h.step();
    h.get_by_label("Run lens").click();
    settle_ok(&mut h);
    assert_eq!(h.state().panel::<LensPanel>().results.len(), 1);
}

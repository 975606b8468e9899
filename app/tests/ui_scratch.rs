//! The From scratch panel end to end (headless, tiny settings, the shipped corpus): train with
//! live curves and samples, resume to more steps, look inside (attention, activations across
//! checkpoints, information plane, a continuation), then open the trained model in Neoscope
//! and run the Lens on it.

use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use neoscope::gui::scratch_panel::{CorpusChoice, Inside, ScratchPanel};
use neoscope::gui::{LensPanel, NeoApp};
use neoscope_api::scratch::ScratchArch;
use neoscope_engine::worker::{DeviceChoice, EngineOptions};

fn settle(h: &mut Harness<'static, NeoApp>) {
    let start = Instant::now();
    h.step();
    while h.state().busy() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "engine did not finish"
        );
        std::thread::sleep(Duration::from_millis(5));
        h.step();
    }
    h.step();
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
}

#[test]
fn train_resume_look_inside_and_open_in_the_lens() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        model_dir: dir.path().join("cache"),
        python: "python3".into(),
        device: DeviceChoice::Cpu,
    };
    let app = NeoApp::new(opts, std::sync::Arc::new(|| {}));
    let mut h = Harness::builder()
        .with_size([1100.0, 800.0])
        .allow_missing_glyphs()
        .build_ui_state(
            |ui, app: &mut NeoApp| {
                app.poll(ui.ctx());
                app.draw(ui);
            },
            app,
        );
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
    settle(&mut h);
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
    settle(&mut h);
    let p = h.state().panel::<ScratchPanel>();
    assert_eq!(p.losses.len(), 80);
    assert_eq!(p.losses[79].0, 80);

    // Look inside.
    h.get_by_label("Look inside").click();
    h.step();
    h.state_mut().panel_mut::<ScratchPanel>().probe = "the model".into();
    h.step();
    h.get_by_label("Attention").click();
    settle(&mut h);
    let Inside::Attention { tokens, patterns } = &h.state().panel::<ScratchPanel>().inside else {
        panic!("no attention view")
    };
    assert_eq!((tokens.len(), patterns.len(), patterns[0].len()), (9, 2, 2));
    h.get_by_label("Activations").click();
    settle(&mut h);
    let Inside::Activations { checkpoints, .. } = &h.state().panel::<ScratchPanel>().inside else {
        panic!("no activations view")
    };
    let steps: Vec<usize> = checkpoints.iter().map(|c| c.step).collect();
    assert_eq!(steps, vec![20, 40, 60, 80]);
    h.get_by_label("Information plane").click();
    settle(&mut h);
    let Inside::Info { rows, .. } = &h.state().panel::<ScratchPanel>().inside else {
        panic!("no information plane")
    };
    assert_eq!((rows.len(), rows[0].current.len()), (4, 3));
    h.get_by_label("Continue the text").click();
    settle(&mut h);
    let g = h.state().panel::<ScratchPanel>().generated.clone().unwrap();
    assert!(g.starts_with("the model") && g.len() > 20, "{g}");

    // Open in Neoscope: the model loads and the Lens runs on it.
    h.get_by_label("Open in Neoscope").click();
    settle(&mut h);
    assert_eq!(h.state().active(), "Lens");
    let info = h.state().shared.model.clone().unwrap();
    assert_eq!(info.architecture, "neoscope_scratch");
    h.state_mut().panel_mut::<LensPanel>().prompts = "the model is".into();
    h.step();
    h.get_by_label("Run lens").click();
    settle(&mut h);
    assert_eq!(h.state().panel::<LensPanel>().results.len(), 1);
}

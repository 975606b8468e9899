//! The from-scratch lab's real run, all from the app: fetch Shakespeare with the panel's Fetch
//! button, train the default model (nanoGPT's CPU recipe, character level, ~4 minutes on two
//! cores), see the held-out loss fall below nanoGPT's documented 1.88 and the samples turn into
//! words, look inside, open the model in the Lens. Screenshots go to `screenshots/`.

mod common;

use common::save;
use std::time::{Duration, Instant};

use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use neoscope::gui::scratch_panel::ScratchPanel;
use neoscope::gui::{LensPanel, NeoApp};
use neoscope_api::scratch::ScratchResult;
use neoscope_engine::fetch::model_cache_dir;
use neoscope_engine::worker::{DeviceChoice, EngineOptions};

/// `common::settle`, then no error may be showing.
fn settle(h: &mut Harness<'static, NeoApp>, limit: Duration) {
    common::settle(h, limit);
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
}

#[test]
fn shakespeare_from_scratch_in_the_app() {
    let runs = tempfile::tempdir().unwrap();
    let opts = EngineOptions {
        model_dir: model_cache_dir(),
        python: "python3".into(),
        device: DeviceChoice::Cpu,
    };
    let app = NeoApp::new(opts, std::sync::Arc::new(|| {}));
    let mut h = Harness::builder()
        .with_size([1100.0, 860.0])
        .wgpu()
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
    h.get_by_label("Fetch").click();
    settle(&mut h, Duration::from_secs(300));
    let status = h.state().panel::<ScratchPanel>().corpus_status.clone();
    assert!(
        status.as_ref().is_some_and(|s| s.0.starts_with("42 texts")),
        "{status:?}"
    );
    h.state_mut().panel_mut::<ScratchPanel>().dir =
        runs.path().join("shakespeare").display().to_string();
    h.step();
    h.get_by_label("Train").click();
    // A screenshot while it trains (the curve and the first samples).
    let start = Instant::now();
    while h.state().panel::<ScratchPanel>().samples.len() < 3 {
        assert!(start.elapsed() < Duration::from_secs(300));
        std::thread::sleep(Duration::from_millis(100));
        h.step();
    }
    h.run_steps(2);
    save(&mut h, "scratch-training.png");
    settle(&mut h, Duration::from_secs(900));
    let p = h.state().panel::<ScratchPanel>();
    let run = p.run.clone().unwrap();
    let (first, last) = (run.val[0].1, run.val.last().unwrap().1);
    eprintln!(
        "Shakespeare, {} steps in {:.0} s: held-out loss {first:.3} -> {last:.3} nats/char",
        run.step, run.seconds
    );
    assert!(
        last < 1.88,
        "held-out loss {last} (nanoGPT's CPU recipe reaches 1.88)"
    );
    // Samples improve: the last one is mostly real words, the first mostly not.
    let words = |t: &str| {
        let common = [
            "the", "and", "I", "to", "of", "you", "my", "a", "that", "in", "is", "not",
        ];
        t.split_whitespace()
            .filter(|w| common.contains(&w.trim_matches(|c: char| !c.is_alphabetic())))
            .count()
    };
    let (s0, s1) = (&run.samples[0].1, &run.samples.last().unwrap().1);
    assert!(
        words(s1) >= 5 && words(s1) > 3 * words(s0),
        "{s0:?} -> {s1:?}"
    );
    save(&mut h, "scratch.png");

    h.get_by_label("Look inside").click();
    h.step();
    h.state_mut().panel_mut::<ScratchPanel>().probe = "ROMEO: What light through yonder".into();
    h.step();
    h.get_by_label("Attention").click();
    settle(&mut h, Duration::from_secs(60));
    h.state_mut().panel_mut::<ScratchPanel>().head = (1, 0);
    h.run_steps(2);
    save(&mut h, "scratch-attention.png");
    h.state_mut().panel_mut::<ScratchPanel>().layer = 3;
    h.step();
    h.get_by_label("Activations").click();
    settle(&mut h, Duration::from_secs(60));
    save(&mut h, "scratch-activations.png");
    h.get_by_label("Information plane").click();
    settle(&mut h, Duration::from_secs(300));
    let Some(ScratchResult::InfoPlane { rows, entropy, .. }) =
        &h.state().panel::<ScratchPanel>().inside
    else {
        panic!("no information plane")
    };
    let last = rows.last().unwrap();
    eprintln!(
        "information plane at step {}: current {:?}, next {:?}, ceilings {entropy:?}",
        last.step, last.current, last.next
    );
    // After training the last layer knows more about the next character than the embeddings.
    assert!(last.next[4] > last.next[0], "{:?}", last.next);
    save(&mut h, "scratch-info-plane.png");

    h.get_by_label("Open in Neoscope").click();
    settle(&mut h, Duration::from_secs(60));
    assert_eq!(h.state().active(), "Lens");
    h.state_mut().panel_mut::<LensPanel>().prompts =
        "ROMEO: What light through yonder window".into();
    h.step();
    h.get_by_label("Run lens").click();
    settle(&mut h, Duration::from_secs(60));
    save(&mut h, "scratch-lens.png");
}

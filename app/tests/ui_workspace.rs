//! The MFA panel as in the seed (contexts drawn from the top ones, early stopping, steering at
//! several layers at once) and workspaces: saving one folder and opening it in a fresh app
//! brings back words, MFA and panel settings; the last session is kept as words change and
//! restored on start; a broken workspace file is refused with the file and field named.

mod common;

use common::ui::{loaded_tiny, settle, settle_ok};

use egui_kittest::kittest::{NodeT, Queryable};
use neoscope::gui::workspace::{FILE, Workspace};
use neoscope::gui::{LensPanel, MfaPanel, Playground, WordsPanel};
use neoscope_api::mfa::ContextSample;
use neoscope_api::words::{Init, Injection, WordCommand};

fn create_word(
    h: &mut egui_kittest::Harness<'static, neoscope::gui::NeoApp>,
    name: &str,
    seed: u64,
) {
    h.state_mut().send_as::<WordsPanel>(WordCommand::Create {
        name: name.into(),
        init: Init::Random { std: 0.5, seed },
        injection: Injection::Embedding,
    });
    settle_ok(h);
}

fn collect_and_fit(
    h: &mut egui_kittest::Harness<'static, neoscope::gui::NeoApp>,
    patience: Option<usize>,
) {
    h.state_mut().open("MFA");
    {
        let p = h.state_mut().panel_mut::<MfaPanel>();
        p.max = 600;
        p.config.k = 4;
        p.config.rank = 2;
        p.config.epochs = 40;
        p.config.lr = 0.05;
        p.config.patience = patience;
    }
    h.step();
    h.get_by_label("Collect").click();
    settle_ok(h);
    h.get_by_label("Fit").click();
    settle_ok(h);
    settle_ok(h);
}

#[test]
fn mfa_contexts_are_drawn_from_the_top_and_steering_takes_several_layers() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = loaded_tiny(21, dir.path());
    collect_and_fit(&mut h, Some(2));
    let p = h.state().panel::<MfaPanel>();
    let f = p.fitted.as_ref().unwrap();
    let r = f.report.as_ref().unwrap();
    // Early stopping, when it happened, left the best epoch `patience` epochs before the end.
    if r.stopped_early {
        assert_eq!(r.best_epoch + 2, r.epochs.len());
        h.get_by_label_contains("stopped early after");
    }
    assert_eq!(p.sample, ContextSample::default());
    let big = f.components.iter().max_by_key(|c| c.size).unwrap().clone();
    assert!(big.size > 10);
    assert_eq!(big.by_likelihood.len(), 10, "10 drawn by default");
    let before: Vec<usize> = big.by_likelihood.iter().map(|c| c.row).collect();
    // "Draw again" draws another 10 from the same pool; the selection stays.
    let selected = p.selected;
    h.get_by_label("Draw again").click();
    settle_ok(&mut h);
    let p = h.state().panel::<MfaPanel>();
    assert_eq!(p.selected, selected);
    assert_eq!(p.sample.seed, 1);
    let again = &p.fitted.as_ref().unwrap().components[big.index];
    let after: Vec<usize> = again.by_likelihood.iter().map(|c| c.row).collect();
    assert_eq!(after.len(), 10);
    assert_ne!(after, before);
    // Scores come best first.
    assert!(
        again
            .by_likelihood
            .windows(2)
            .all(|w| w[0].score >= w[1].score)
    );

    // Steering at the fitted layer, then at layers 0 and 1 at once: a different result.
    h.get_by_label("Steer").click();
    settle_ok(&mut h);
    let one = h.state().panel::<MfaPanel>().steer.clone().unwrap();
    h.state_mut().panel_mut::<MfaPanel>().steer_layers = "0, 1".into();
    h.step();
    h.get_by_label("Steer").click();
    settle_ok(&mut h);
    let two = h.state().panel::<MfaPanel>().steer.clone().unwrap();
    assert_ne!(one.promoted, two.promoted);
    // The bars are labelled with their tokens.
    h.get_by_label(&format!("{:?}", two.promoted[0].text));
    // A layer the model does not have is named, and Steer is disabled.
    h.state_mut().panel_mut::<MfaPanel>().steer_layers = "0, 9".into();
    h.step();
    h.get_by_label_contains("layer 9 is out of range");
    assert!(h.get_by_label("Steer").accesskit_node().is_disabled());
}

#[test]
fn a_saved_workspace_opens_in_a_fresh_app_with_words_mfa_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let ws_dir = dir.path().join("demo");
    let mut h = loaded_tiny(22, dir.path());
    create_word(&mut h, "<pun>", 1);
    create_word(&mut h, "<lit>", 2);
    collect_and_fit(&mut h, None);
    {
        let a = h.state_mut();
        a.panel_mut::<Playground>().prompt = "the dog and".into();
        a.panel_mut::<LensPanel>().prompts = "a pun => current\nsave => interest".into();
        a.panel_mut::<MfaPanel>().steer_layers = "1".into();
        a.panel_mut::<MfaPanel>().alpha = 0.3;
    }
    let words = h.state().shared.words.clone();
    let components = h
        .state()
        .panel::<MfaPanel>()
        .fitted
        .as_ref()
        .unwrap()
        .components
        .clone();
    h.state_mut().save_workspace(&ws_dir).unwrap();
    settle_ok(&mut h);
    let ws = Workspace::read(&ws_dir).unwrap();
    assert_eq!(ws.words.len(), 2);
    assert!(ws.mfa && ws.activations);
    for f in [
        "word-0.safetensors",
        "word-1.json",
        "mfa.json",
        "activations.safetensors",
    ] {
        assert!(ws_dir.join(f).exists(), "{f} missing");
    }

    // A fresh app on the same model opens it.
    let dir2 = tempfile::tempdir().unwrap();
    let mut h2 = loaded_tiny(22, dir2.path());
    let own_path = h2.state().shared.model_info().unwrap().path.clone();
    // The same model from another folder (same SHA-256) is not loaded again.
    h2.state_mut().open_workspace(&ws_dir, true).unwrap();
    settle_ok(&mut h2);
    settle_ok(&mut h2);
    let a = h2.state();
    assert_eq!(a.shared.model_info().unwrap().path, own_path);
    assert_eq!(a.shared.words, words);
    assert_eq!(a.panel::<Playground>().prompt, "the dog and");
    assert_eq!(
        a.panel::<LensPanel>().prompts,
        "a pun => current\nsave => interest"
    );
    let m = a.panel::<MfaPanel>();
    assert_eq!(m.steer_layers, "1");
    assert!((m.alpha - 0.3).abs() < 1e-6);
    assert_eq!(m.fitted.as_ref().unwrap().components, components);
    assert_eq!(a.active(), "MFA");

    // Another model's app refuses the words and the MFA, by name, instead of using them.
    let dir3 = tempfile::tempdir().unwrap();
    let mut h3 = loaded_tiny(23, dir3.path());
    h3.state_mut().open_workspace(&ws_dir, false).unwrap();
    settle(&mut h3);
    assert!(h3.state().shared.words.is_empty());
    assert!(h3.state().shared.error.is_some());

    // A broken or foreign workspace file is refused, naming the file and the field.
    std::fs::write(
        ws_dir.join(FILE),
        r#"{"format": "neoscope-workspace", "version": 9}"#,
    )
    .unwrap();
    let e = format!("{:#}", Workspace::read(&ws_dir).unwrap_err());
    assert!(
        e.contains("workspace.json") && e.contains("\"version\""),
        "{e}"
    );
    std::fs::write(ws_dir.join(FILE), "{ not json").unwrap();
    let e = format!(
        "{:#}",
        h2.state_mut().open_workspace(&ws_dir, false).unwrap_err()
    );
    assert!(e.contains("workspace.json"), "{e}");
}

#[test]
fn the_last_session_keeps_words_as_they_change_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let session = dir.path().join("last-session");
    let mut h = loaded_tiny(24, dir.path());
    h.state_mut().keep_session(session.clone());
    create_word(&mut h, "<w>", 5);
    // Written on change, with no explicit save: a crash now loses nothing.
    settle_ok(&mut h);
    assert!(session.join("word-0.safetensors").exists());
    assert_eq!(Workspace::read(&session).unwrap().words[0].name, "<w>");
    h.state_mut().panel_mut::<Playground>().prompt = "kept prompt".into();
    h.state_mut().save_session_settings(false);
    let words = h.state().shared.words.clone();
    drop(h);

    let dir2 = tempfile::tempdir().unwrap();
    let mut h2 = loaded_tiny(24, dir2.path());
    h2.state_mut().keep_session(session.clone());
    h2.state_mut().restore_session(false);
    settle_ok(&mut h2);
    assert_eq!(h2.state().shared.words, words);
    assert_eq!(h2.state().panel::<Playground>().prompt, "kept prompt");
}

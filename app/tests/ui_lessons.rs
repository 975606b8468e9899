//! Every lesson run through the Lessons panel on a tiny model (egui_kittest, headless, the real
//! engine thread): pick it, press the first step's "Do it", then "Next step" in the lesson bar
//! until the end, letting each job finish; nothing may fail, and each lesson leaves its panels
//! with the results its steps promise. Long settings (steps, epochs) are shortened for the tiny
//! model; everything else is the lessons' own.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use common::ui::{harness, loaded_tiny, settle_ok};
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use neoscope::gui::NeoApp;
use neoscope::gui::lessons::Do;
use neoscope::gui::scratch_panel::{CorpusChoice, ScratchPanel};
use neoscope::gui::{ComparePanel, InjectPanel, LensPanel, LessonsPanel, MfaPanel, WordsPanel};
use neoscope_api::scratch::ScratchArch;

/// Shortens the long actions of lesson `i` for the tiny model.
fn shorten(h: &mut Harness<'static, NeoApp>, i: usize) {
    let l = &mut h.state_mut().panel_mut::<LessonsPanel>().lessons[i];
    for st in &mut l.steps {
        match &mut st.action {
            Some(Do::Scratch { steps }) => *steps = 30,
            Some(Do::Word { config, .. }) => config.epochs = 1,
            Some(Do::MfaFit { epochs }) => *epochs = 2,
            Some(Do::TunedLens { steps }) => *steps = 5,
            _ => {}
        }
    }
}

/// Runs lesson `i` from its list entry to its last step; returns the steps done.
fn run_lesson(h: &mut Harness<'static, NeoApp>, i: usize) -> usize {
    shorten(h, i);
    h.get_by_label("Lessons").click();
    h.step();
    let (title, n) = {
        let l = &h.state().panel::<LessonsPanel>().lessons[i];
        (
            format!("{} (~{:.0} min)", l.title, l.minutes),
            l.steps.len(),
        )
    };
    h.get_by_label(&title).click();
    h.step();
    // Every lesson starts with a step that does something.
    h.get_all_by_label("Do it").next().unwrap().click();
    settle_ok(h);
    let mut done = 1;
    assert_eq!(h.state().panel::<LessonsPanel>().active, Some((i, 0)));
    while done < n {
        h.get_by_label("Next step").click();
        settle_ok(h);
        assert_eq!(h.state().panel::<LessonsPanel>().active, Some((i, done)));
        done += 1;
    }
    h.get_by_label("End lesson").click();
    h.step();
    assert!(h.state().panel::<LessonsPanel>().active.is_none());
    done
}

#[test]
fn the_from_scratch_lesson_runs_without_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(dir.path(), true);
    {
        let p = h.state_mut().panel_mut::<ScratchPanel>();
        p.corpus = CorpusChoice::Shipped;
        let m = &mut p.spec.model;
        (m.arch, m.n_layers, m.n_heads, m.d_model, m.d_ff, m.n_ctx) =
            (ScratchArch::Seed, 2, 2, 32, 64, 24);
        p.spec.train.batch = 8;
        p.dir = dir.path().join("run").display().to_string();
    }
    assert_eq!(run_lesson(&mut h, 0), 3);
    assert_eq!(h.state().panel::<ScratchPanel>().losses.len(), 30);
}

#[test]
fn the_lens_lesson_runs_each_exercise() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = loaded_tiny(21, dir.path());
    let i = 1;
    shorten(&mut h, i);
    assert_eq!(run_lesson(&mut h, i), 4);
    let p = h.state().panel::<LensPanel>();
    // The last lens run was the heatmap exercise; the tuned lens is ready.
    assert_eq!(p.results.len(), 1);
    assert!(p.tuned_ready);
}

#[test]
fn the_lens_lesson_gives_each_pun_its_own_target() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = loaded_tiny(22, dir.path());
    h.get_by_label("Lessons").click();
    h.step();
    let title = {
        let l = &h.state().panel::<LessonsPanel>().lessons[1];
        format!("{} (~{:.0} min)", l.title, l.minutes)
    };
    h.get_by_label(&title).click();
    h.step();
    h.get_all_by_label("Do it").nth(1).unwrap().click();
    settle_ok(&mut h);
    assert_eq!(h.state().active(), "Lens");
    let p = h.state().panel::<LensPanel>();
    let targets: Vec<String> = p
        .results
        .iter()
        .map(|r| r.targets[0].text.clone())
        .collect();
    assert_eq!(targets, [" current", " interest", " work", " f"]);
    assert!(p.results.iter().all(|r| r.emergence(0.1).is_some()));
}

#[test]
fn the_word_lesson_trains_defines_generates_and_compares_similarity() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = loaded_tiny(23, dir.path());
    assert_eq!(run_lesson(&mut h, 2), 4);
    let p = h.state().panel::<WordsPanel>();
    assert_eq!(p.live.len(), 10, "one epoch of 40 rows in batches of 4");
    assert_eq!(p.definitions.len(), 4);
    assert_eq!(p.new_examples.len(), 3);
    assert_eq!(p.similarities.len(), 6);
}

#[test]
fn the_pun_vs_literal_lesson_trains_both_and_measures_the_preference() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = loaded_tiny(24, dir.path());
    assert_eq!(run_lesson(&mut h, 3), 3);
    let names: Vec<String> = h
        .state()
        .shared
        .words
        .iter()
        .map(|w| w.name.clone())
        .collect();
    assert_eq!(names, ["<pun>", "<lit>"]);
    let c = h.state().panel::<ComparePanel>();
    assert!(c.result.is_some());
    let pref = c.preference.as_ref().unwrap();
    assert_eq!(pref.setups, 32);
    assert_eq!(pref.rows.len(), 4);
}

#[test]
fn the_mfa_lesson_collects_and_fits() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = loaded_tiny(25, dir.path());
    assert_eq!(run_lesson(&mut h, 4), 3);
    let p = h.state().panel::<MfaPanel>();
    assert_eq!(p.epochs.len(), 2);
    assert!(p.fitted.is_some());
    assert_eq!(h.state().active(), "MFA");
}

#[test]
fn the_injection_lesson_trains_the_new_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = loaded_tiny(26, dir.path());
    {
        let p = h.state_mut().panel_mut::<InjectPanel>();
        p.dir = dir.path().join("run").display().to_string();
        p.config.steps = 4;
        p.config.eval_every = 2;
        p.config.block_len = 32;
        p.config.max_val_blocks = 2;
    }
    assert_eq!(run_lesson(&mut h, 5), 2);
    let p = h.state().panel::<InjectPanel>();
    assert_eq!(p.losses.len(), 4);
    assert_eq!(h.state().active(), "Embeddings");
}

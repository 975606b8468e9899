//! Phase 3 in the Injection panel (egui_kittest, headless, the real engine thread, a tiny
//! model): phase 1, phase 2, then the rows aligned under the adapters (curves shown, a summary
//! line with the terms), resumed to more steps, used in the model ("aligned rows"), and shown in
//! the report.

mod common;

use common::ui::{loaded_tiny, settle, settle_ok};
use egui_kittest::kittest::Queryable;
use neoscope::gui::InjectPanel;

#[test]
fn alignment_trains_resumes_and_its_rows_are_used_and_reported() {
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
        p.lora.steps = 2;
        p.lora.rank = 2;
        p.lora.eval_every = 2;
        p.lora.max_val_blocks = 2;
        p.align.steps = 3;
        p.align.lr = 1e-2;
        p.align.eval_every = 3;
        p.align.checkpoint_every = 2;
        p.align.max_val_blocks = 2;
        p.align_lora = true;
    }
    h.step();
    h.get_by_label("Train").click();
    settle_ok(&mut h);
    h.get_by_label("Train adapters").click();
    settle_ok(&mut h);
    h.get_by_label("Align rows").click();
    settle_ok(&mut h);
    let p = h.state().panel::<InjectPanel>();
    let r = p.align_run.clone().unwrap();
    assert_eq!((r.step, r.rows_step, r.lora_step), (3, 2, Some(2)));
    assert_eq!((p.losses.len(), r.terms.len()), (3, 3));
    assert_eq!(r.val.iter().map(|v| v.0).collect::<Vec<_>>(), vec![0, 3]);
    assert!(p.align_attach);
    h.state_mut().panel_mut::<InjectPanel>().align.steps = 4;
    h.step();
    h.get_by_label("Resume alignment").click();
    settle_ok(&mut h);
    let step = |h: &egui_kittest::Harness<'static, neoscope::gui::NeoApp>| {
        h.state()
            .panel::<InjectPanel>()
            .align_run
            .as_ref()
            .unwrap()
            .step
    };
    assert_eq!(step(&h), 4);
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
    assert_eq!((v.step, v.lora_step, v.align_step), (2, Some(2), Some(4)));
    h.get_by_label("Write report").click();
    settle_ok(&mut h);
    let (_, report) = h.state().panel::<InjectPanel>().report.clone().unwrap();
    let a = report.aligned.clone().unwrap();
    assert_eq!((a.step, a.lora_step), (4, Some(2)));
    assert_eq!(
        report.phases.last().map(|p| p.phase.as_str()),
        Some("phase 3 (alignment)")
    );
    // Starting phase 3 again on the same run is refused with what to do instead.
    h.get_by_label("Align rows").click();
    settle(&mut h);
    let e = h.state().shared.error.clone().unwrap_or_default();
    assert!(e.contains("already has an alignment phase"), "{e}");
}

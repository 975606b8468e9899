//! The shipped vocabulary-injection demo end to end on the real default model, through the CLI
//! code path (`neoscope inject demo`): 2,000 invented forms injected with compositional init,
//! trained for the demo's steps on the shipped corpus; validation loss on held-out blocks must
//! fall, the base matrix must be unchanged, and the report must be written as JSON and HTML.
//! Then the run is used as a user would in the app: its forms attached to the model, generated
//! and marked in the Playground, followed as a Lens target, probed beside the base model. The
//! real-text demo (Shakespeare, its lexicon extracted and appended) must lower validation loss.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use neoscope::assets::DEMO_STEPS;
use neoscope::cli::inject::InjectCmd;
use neoscope::cli::{Cmd, DeviceArg, Global};
use neoscope::gui::{InjectPanel, LensPanel, Playground};
use std::time::Duration;

use common::settle;
use egui_kittest::kittest::Queryable;

#[test]
fn shipped_demo_lowers_validation_loss_and_writes_the_report() {
    let dir = tempfile_dir("synthetic");
    let out = dir.join("demo");
    let g = global();
    let cmd = Cmd::Inject(InjectCmd::Demo {
        out: Some(out.clone()),
        steps: Some(DEMO_STEPS),
        shakespeare: false,
    });
    neoscope::cli::run(&g, cmd).unwrap();

    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let val = r["val"].as_array().unwrap();
    let first = val.first().unwrap()[1].as_f64().unwrap();
    let last = val.last().unwrap()[1].as_f64().unwrap();
    eprintln!("validation loss {first:.4} -> {last:.4} over {DEMO_STEPS} steps");
    assert_eq!(
        val.last().unwrap()[0].as_u64().unwrap() as usize,
        DEMO_STEPS
    );
    assert!(last < first - 0.02, "validation loss {first} -> {last}");
    assert_eq!(r["drift"]["base_identical"], true);
    let (n_new, n_known) = (r["n_new"].as_u64().unwrap(), r["n_known"].as_u64().unwrap());
    assert_eq!(n_new + n_known, 2000);
    assert!(n_new > 1900, "{n_new} new forms");
    let iso = r["isotropy"]["base"].as_f64().unwrap();
    assert!(iso > 0.0 && iso < 1.0);

    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert_eq!(
        html.matches("<svg").count(),
        9,
        "loss, neighbour overlap, norm change, change scatter, norms, drift, PCA scatter, t-SNE, \
         cosines"
    );
    // The t-SNE of initial against trained rows is a 2-D layout, not a line.
    let corr = |k: &str| {
        let p: Vec<(f64, f64)> = r[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v[0].as_f64().unwrap(), v[1].as_f64().unwrap()))
            .collect();
        let n = p.len() as f64;
        let (mx, my) = (
            p.iter().map(|v| v.0).sum::<f64>() / n,
            p.iter().map(|v| v.1).sum::<f64>() / n,
        );
        let sxy: f64 = p.iter().map(|v| (v.0 - mx) * (v.1 - my)).sum();
        let sxx: f64 = p.iter().map(|v| (v.0 - mx).powi(2)).sum();
        let syy: f64 = p.iter().map(|v| (v.1 - my).powi(2)).sum();
        sxy / (sxx * syy).sqrt()
    };
    assert_eq!(r["tsne_trained"].as_array().unwrap().len(), 400);
    assert!(
        corr("tsne_trained").abs() < 0.8,
        "t-SNE on a line: {}",
        corr("tsne_trained")
    );
    // Checkpoints of the run are there to resume from.
    assert!(out.join("checkpoints").read_dir().unwrap().count() >= 1);
    the_run_in_use_as_a_user_would(&out);
    lora_phase_on_the_demo_run(&out);
    align_phase_on_the_demo_run(&out);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The trained run's forms used in the app: the Playground writes and marks them, the Lens
/// follows one as its target, the probes set the run beside the base model (screenshots of
/// each).
fn the_run_in_use_as_a_user_would(run: &std::path::Path) {
    let mut h = common::loaded_app();
    let base_vocab = h.state().shared.model_info().unwrap().dims.d_vocab;
    h.get_by_label("Injection").click();
    h.step();
    h.state_mut().panel_mut::<InjectPanel>().run = Some(run.to_path_buf());
    h.step();
    h.get_by_label("Use in the model").click();
    settle(&mut h, Duration::from_secs(120));
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    let v = h
        .state()
        .shared
        .model_info()
        .unwrap()
        .injected
        .clone()
        .unwrap();
    assert_eq!((v.step, v.base_vocab), (DEMO_STEPS, base_vocab));
    h.state_mut().panel_mut::<InjectPanel>().probe_tokens = 16;
    h.step();
    h.get_by_label("Probe").click();
    settle(&mut h, Duration::from_secs(300));
    let (_, _, probes) = h.state().panel::<InjectPanel>().probes.clone().unwrap();
    assert_eq!(probes.len(), 6);
    assert!(probes[0].cosine < probes[5].cosine);
    for p in &probes {
        eprintln!(
            "probe {} ({:.3}): run `{}` | base `{}`",
            p.form, p.cosine, p.with_run, p.base
        );
    }
    common::save(&mut h, "injection_probes.png");

    // The Playground: a sentence like the corpus's; the model writes forms of the run.
    generate_in_playground(&mut h, "A pregarden is a kind of");
    let p = h.state().panel::<Playground>();
    eprintln!("generated with the run's forms: {}", p.output);
    assert!(
        !p.output_forms.is_empty(),
        "no form generated: {}",
        p.output
    );
    for &(a, b) in &p.output_forms {
        assert!(v.forms.iter().any(|f| f == &p.output[a..b]));
    }
    common::save(&mut h, "playground_injected.png");

    // The Lens: a form as the target, one token.
    h.get_by_label("Lens").click();
    h.step();
    {
        let l = h.state_mut().panel_mut::<LensPanel>();
        l.prompts = "A pregarden is a kind of garden. Every".into();
        l.target = " pregarden".into();
    }
    h.step();
    h.get_by_label("Run lens").click();
    settle(&mut h, Duration::from_secs(120));
    let r = h.state().panel::<LensPanel>().results[0].clone();
    let i = v.forms.iter().position(|f| f == "pregarden").unwrap();
    assert_eq!(r.targets[0].id as usize, base_vocab + i);
    assert!(r.targets[0].note.is_none());
    common::save(&mut h, "lens_injected.png");
}

/// Phase 2 on the trained demo run: adapters (r 8, all seven projections) lower validation loss
/// from the phase-1 rows' own; merged with the forms, the model writes and marks them
/// (screenshot of the panel after training, and of the Playground).
fn lora_phase_on_the_demo_run(run: &std::path::Path) {
    let args = neoscope::cli::inject_lora::LoraArgs {
        dir: run.to_path_buf(),
        resume: false,
        steps: Some(6),
        rows_step: None,
        rank: 8,
        alpha: 16.0,
        dropout: 0.1,
        targets: ["q", "k", "v", "o", "gate", "up", "down"]
            .map(str::to_owned)
            .to_vec(),
        lr: 1e-3,
        warmup: 0.1,
        weight_decay: 0.01,
        micro_batch: 4,
        accum: 1,
        eval_every: 6,
        checkpoint_every: 3,
        seed: 42,
    };
    let start = std::time::Instant::now();
    neoscope::cli::run(&global(), Cmd::Inject(InjectCmd::Lora(args))).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let ckpt: Vec<_> = run.join("lora/checkpoints").read_dir().unwrap().collect();
    assert_eq!(ckpt.len(), 2, "checkpoints at steps 3 and 6");

    let mut h = common::loaded_app();
    h.get_by_label("Injection").click();
    h.step();
    {
        let p = h.state_mut().panel_mut::<InjectPanel>();
        p.run = Some(run.to_path_buf());
        p.lora.steps = 8;
    }
    h.step();
    // Resumed to 8 steps in the panel: the curve and the summary line show it.
    h.get_by_label("Resume adapters").click();
    settle(&mut h, Duration::from_secs(600));
    let r = h.state().panel::<InjectPanel>().lora_run.clone().unwrap();
    let (first, last) = (r.val[0].1, r.val.last().unwrap().1);
    eprintln!(
        "LoRA phase: {} parameters, validation {first:.4} -> {last:.4} over {} steps (6 by the \
         CLI in {secs:.0} s)",
        r.parameters, r.step
    );
    assert_eq!((r.step, r.val[0].0), (8, 0));
    assert!(last < first - 0.01, "validation loss {first} -> {last}");
    common::save(&mut h, "injection_lora.png");
    h.get_by_label("Use in the model").click();
    settle(&mut h, Duration::from_secs(120));
    let v = h
        .state()
        .shared
        .model_info()
        .unwrap()
        .injected
        .clone()
        .unwrap();
    assert_eq!(v.lora_step, Some(8));
    generate_in_playground(&mut h, "A pregarden is a kind of");
    let p = h.state().panel::<Playground>();
    eprintln!("generated with the run's forms and adapters: {}", p.output);
    assert!(!p.output.trim().is_empty());
    common::save(&mut h, "playground_lora.png");
}

/// Phase 3 on the demo run, under the phase-2 adapters: it starts where phase 2 ended (the same
/// held-out loss at step 0), its terms are recorded step by step; the panel resumes it, its rows are used in the model and the
/// report has its section (screenshots of the panel and of the Playground).
fn align_phase_on_the_demo_run(run: &std::path::Path) {
    use neoscope::cli::inject_align::{AlignArgs, OptimizerArg};
    let args = AlignArgs {
        dir: run.to_path_buf(),
        resume: false,
        steps: Some(6),
        rows_step: None,
        lora: true,
        lora_step: None,
        lambda_morpheme: 0.1,
        lambda_repulsion: 0.05,
        lambda_norm: 0.01,
        repulsion_pairs: 100,
        repulsion_threshold: 0.95,
        optimizer: OptimizerArg::Adafactor,
        lr: 5e-5,
        warmup: 0.1,
        weight_decay: 0.0,
        micro_batch: 4,
        accum: 1,
        eval_every: 6,
        checkpoint_every: 3,
        seed: 42,
    };
    let start = std::time::Instant::now();
    neoscope::cli::run(&global(), Cmd::Inject(InjectCmd::Align(args))).unwrap();
    let secs = start.elapsed().as_secs_f64();

    let mut h = common::loaded_app();
    h.get_by_label("Injection").click();
    h.step();
    {
        let p = h.state_mut().panel_mut::<InjectPanel>();
        p.run = Some(run.to_path_buf());
        p.align.steps = 8;
    }
    h.step();
    h.get_by_label("Resume alignment").click();
    settle(&mut h, Duration::from_secs(600));
    let r = h.state().panel::<InjectPanel>().align_run.clone().unwrap();
    let (first, last) = (r.val[0].1, r.val.last().unwrap().1);
    let (t0, t1) = (r.terms[0], *r.terms.last().unwrap());
    eprintln!(
        "alignment phase: {} of {} forms with parts, validation {first:.4} -> {last:.4} over {} \
         steps (6 by the CLI in {secs:.0} s); L_lm {:.4} -> {:.4}, L_morpheme {:.3e} -> {:.3e}, \
         L_repulsion {:.3e} -> {:.3e}, L_norm {:.3e} -> {:.3e}",
        r.morpheme_forms,
        r.forms,
        r.step,
        t0.lm,
        t1.lm,
        t0.morpheme,
        t1.morpheme,
        t0.repulsion,
        t1.repulsion,
        t0.norm,
        t1.norm
    );
    assert_eq!((r.step, r.lora_step, r.val[0].0), (8, Some(8), 0));
    assert!(r.morpheme_forms > 0, "no form has parts");
    // The seed's weights leave the regularisers tiny next to L_lm (as the seed project found):
    // their values are reported, not asserted to fall.
    assert!(t1.morpheme > 0.0 && t1.norm.is_finite() && t1.repulsion.is_finite());
    // At the seed's learning rate the rows move little: the held-out loss stays where phase 2
    // left it (at 1e-3, 20 times more, 8 steps raised it 3.238 -> 3.292).
    assert!((last - first).abs() < 0.02, "validation {first} -> {last}");
    common::save(&mut h, "injection_align.png");
    h.get_by_label("Write report").click();
    settle(&mut h, Duration::from_secs(600));
    let (_, report) = h.state().panel::<InjectPanel>().report.clone().unwrap();
    let a = report.aligned.clone().unwrap();
    let mc = a.morphemes.clone().unwrap();
    eprintln!(
        "phase 3: split forms' cosine to their parts' mean {:.4} -> {:.4}; perplexity per stage: {}",
        mc.before.mean,
        mc.after.mean,
        report
            .phases
            .iter()
            .map(|p| format!("{} {:.2}", p.phase, p.perplexity))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Phase 2's score at its last step is phase 3's at step 0: the same rows and adapters.
    let p2 = report
        .phases
        .iter()
        .find(|p| p.phase.starts_with("phase 2"))
        .unwrap();
    let p3 = report
        .phases
        .iter()
        .find(|p| p.phase.starts_with("phase 3"))
        .unwrap();
    assert_eq!(p3.step, 8);
    assert!(
        (f64::from(p2.val_loss) - f64::from(first)).abs() < 1e-3,
        "{p2:?} vs {first}"
    );
    h.get_by_label("Use in the model").click();
    settle(&mut h, Duration::from_secs(120));
    let v = h
        .state()
        .shared
        .model_info()
        .unwrap()
        .injected
        .clone()
        .unwrap();
    assert_eq!((v.lora_step, v.align_step), (Some(8), Some(8)));
    generate_in_playground(&mut h, "A pregarden is a kind of");
    let p = h.state().panel::<Playground>();
    eprintln!("generated with the aligned rows and adapters: {}", p.output);
    assert!(!p.output.trim().is_empty());
    common::save(&mut h, "playground_align.png");
}

/// The real-text demo: Shakespeare's works, the lexicon extracted from them and appended to the
/// training text; validation loss on held-out Shakespeare must fall, in the demo's time.
#[test]
fn shakespeare_demo_extracts_a_lexicon_and_lowers_validation_loss() {
    let dir = tempfile_dir("shakespeare");
    let out = dir.join("demo");
    let g = global();
    let start = std::time::Instant::now();
    let cmd = Cmd::Inject(InjectCmd::Demo {
        out: Some(out.clone()),
        steps: None,
        shakespeare: true,
    });
    neoscope::cli::run(&g, cmd).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let forms = meta["forms"].as_array().unwrap();
    assert!(forms.len() > 1500, "{} forms", forms.len());
    assert!(forms.iter().any(|f| f == "doth") && forms.iter().any(|f| f == "beseech"));
    assert_eq!(meta["config"]["append_lexicon"], true);
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let val = r["val"].as_array().unwrap();
    let first = val.first().unwrap()[1].as_f64().unwrap();
    let last = val.last().unwrap()[1].as_f64().unwrap();
    eprintln!(
        "Shakespeare demo: {} forms, validation loss {first:.4} -> {last:.4}, {secs:.0} s end to end",
        forms.len()
    );
    assert!(last < first - 0.05, "validation loss {first} -> {last}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CLI's options for the default model on the CPU, with JSON output.
fn global() -> Global {
    Global {
        model: Some(common::default_model_path()),
        model_dir: None,
        device: DeviceArg::Cpu,
        dtype: neoscope::options::DTypeArg::Auto,
        max_memory: None,
        json: true,
        fresh: false,
        force: false,
        engine: None,
        engine_token: None,
        run: None,
        run_step: None,
        lora: false,
        lora_step: None,
        align: false,
    }
}

/// Greedy generation of 40 tokens after `prompt` in the Playground (plain mode).
fn generate_in_playground(
    h: &mut egui_kittest::Harness<'static, neoscope::gui::NeoApp>,
    prompt: &str,
) {
    h.get_by_label("Playground").click();
    h.step();
    {
        let p = h.state_mut().panel_mut::<Playground>();
        p.chat = false;
        p.prompt = prompt.into();
        p.max_new_tokens = 40;
    }
    h.step();
    h.get_by_label("Generate").click();
    settle(h, Duration::from_secs(120));
}

/// A folder of this test process's own for the test `name` (the tests run in parallel).
fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "neoscope-inject-real-{}-{name}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

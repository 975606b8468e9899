//! The shipped vocabulary-injection demo end to end on the real default model, through the CLI
//! code path (`neoscope inject demo`): 2,000 invented forms injected with compositional init,
//! trained for the demo's steps on the shipped corpus; validation loss on held-out blocks must
//! fall, the base matrix must be unchanged, and the report must be written as JSON and HTML.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use neoscope::assets::DEMO_STEPS;
use neoscope::cli::inject::InjectCmd;
use neoscope::cli::{Cmd, DeviceArg, Global};

#[test]
fn shipped_demo_lowers_validation_loss_and_writes_the_report() {
    let dir = tempfile_dir();
    let out = dir.join("demo");
    let g = Global {
        model: Some(common::default_model_path()),
        model_dir: None,
        device: DeviceArg::Cpu,
        dtype: neoscope::options::DTypeArg::Auto,
        max_memory: None,
        json: true,
        force: false,
        engine: None,
        engine_token: None,
        run: None,
        run_step: None,
    };
    let cmd = Cmd::Inject(InjectCmd::Demo {
        out: Some(out.clone()),
        steps: DEMO_STEPS,
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
        5,
        "loss, norms, drift, scatter, cosines"
    );
    // Checkpoints of the run are there to resume from.
    assert!(out.join("checkpoints").read_dir().unwrap().count() >= 1);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("neoscope-inject-real-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

//! The CLI's phase 2 and run comparison on a tiny model saved as a Hugging Face folder:
//! `inject lora` (and `--resume`), `--lora` merging the adapters for any command, the report's
//! per-phase perplexity, `inject compare`'s table; bad input named.

mod common;

use common::neoscope;

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn lora_phase_merge_report_phases_and_compare_runs() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_inject_inputs(dir.path(), 13, "blorf\nzinter\n");
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let model_dir = p("model");
    let model = model_dir.as_str();
    let (lex, cor) = (p("lex.txt"), p("corpus.txt"));
    let start = |out: &str, seed: &str| {
        let (ok, _, err) = neoscope(&[
            "inject",
            "run",
            "--json",
            "--model",
            model,
            "--lexicon",
            &lex,
            "--corpus",
            &cor,
            "--init",
            "spherical",
            "--out",
            out,
            "--block-len",
            "16",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--seed",
            seed,
        ]);
        assert!(ok, "{err}");
    };
    let (run, run2) = (p("run"), p("run2"));
    start(&run, "1");
    start(&run2, "2");
    let lora = |extra: &[&str]| {
        let args = [
            &["inject", "lora", "--json", "--model", model, &run][..],
            &[
                "--rank",
                "2",
                "--lr",
                "0.01",
                "--micro-batch",
                "2",
                "--accum",
                "1",
            ],
            &["--eval-every", "2", "--checkpoint-every", "2"],
            extra,
        ]
        .concat();
        neoscope(&args)
    };
    let (ok, out, err) = lora(&["--steps", "4"]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(
        (v["step"].as_u64(), v["rows_step"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(v["val"].as_array().unwrap().len(), 3, "{v}");
    let resume = |extra: &[&str]| {
        let args = [
            &[
                "inject", "lora", "--json", "--model", model, &run, "--resume",
            ][..],
            extra,
        ]
        .concat();
        neoscope(&args)
    };
    let (ok, out, err) = resume(&["--steps", "6"]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["step"], 6);
    let (ok, _, err) = lora(&["--steps", "4"]);
    assert!(!ok && err.contains("already has a LoRA phase"), "{err}");
    let (ok, _, err) = resume(&["--rank", "4"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    let (ok, _, err) = neoscope(&[
        "inject",
        "lora",
        "--model",
        model,
        &run2,
        "--targets",
        "q,nope",
    ]);
    assert!(!ok && err.contains("`nope` is not a projection"), "{err}");

    // Any command with the forms and the merged adapters.
    let (ok, out, err) = neoscope(&["info", "--json", "--model", model, "--run", &run, "--lora"]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["injected"]["lora_step"], 6, "{v}");
    let generated = |extra: &[&str]| {
        let args = [
            &["generate", "--json", "--model", model, "--run", &run][..],
            extra,
            &["--max-new-tokens", "4", "the blorf"],
        ]
        .concat();
        let (ok, out, err) = neoscope(&args);
        assert!(ok, "{err}");
        json(&out)["new_ids"].clone()
    };
    assert_eq!(generated(&["--lora"]), generated(&["--lora-step", "6"]));
    let (ok, out, err) = neoscope(&["info", "--model", model, "--run", &run2, "--lora"]);
    assert!(!ok && err.contains("has no LoRA phase"), "{out} {err}");

    // Reports: held-out loss and perplexity per stage; the comparison table of both runs.
    for r in [&run, &run2] {
        let (ok, out, err) = neoscope(&["inject", "report", "--json", "--model", model, r]);
        assert!(ok, "{err}");
        let phases = json(&out)["report"]["phases"].as_array().unwrap().len();
        assert_eq!(phases, if r == &run { 3 } else { 2 });
    }
    let (ok, out, err) = neoscope(&["inject", "compare", "--json", &run, &run2]);
    assert!(ok, "{err}");
    let v = json(&out);
    let rows = v["runs"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["init"], "spherical");
    assert!(
        rows[0]["phase2"]["perplexity"].as_f64().unwrap() > 1.0,
        "{v}"
    );
    assert!(rows[1]["phase2"].is_null());
    assert!(v["table"].as_str().unwrap().contains("| phase 2 |"));
    let (ok, _, err) = neoscope(&["inject", "compare", &run]);
    assert!(!ok && err.contains("at least two"), "{err}");
    let (ok, _, err) = neoscope(&["inject", "compare", &run, &p("model")]);
    assert!(!ok && err.contains("no report"), "{err}");
}

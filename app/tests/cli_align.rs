//! The CLI's phase 3 on a tiny model saved as a Hugging Face folder: `inject align` (and
//! `--resume`, `--lora`), `--align` using the aligned rows for any command, the report's phase-3
//! section and score, `inject compare`'s phase-3 column; conflicting flags refused.

mod common;

use common::neoscope;

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn align_phase_resume_attach_report_and_compare() {
    let dir = tempfile::tempdir().unwrap();
    common::tiny_inject_inputs(dir.path(), 13, "unblorf\nzinterment\n");
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    std::fs::write(
        dir.path().join("morphemes.csv"),
        "type,morpheme,example1\nprefix,un-,undo\nsuffix,-ment,payment\n",
    )
    .unwrap();
    let corpus: String = (0..80)
        .map(|i| format!("the {} sat near a cat. ", ["unblorf", "zinterment"][i % 2]))
        .collect();
    std::fs::write(dir.path().join("corpus.txt"), corpus).unwrap();
    let model_dir = p("model");
    let model = model_dir.as_str();
    let (lex, cor, mor, run) = (p("lex.txt"), p("corpus.txt"), p("morphemes.csv"), p("run"));
    let (ok, _, err) = neoscope(&[
        "inject",
        "run",
        "--json",
        "--model",
        model,
        "--lexicon",
        &lex,
        "--morphemes",
        &mor,
        "--corpus",
        &cor,
        "--out",
        &run,
        "--block-len",
        "16",
        "--steps",
        "4",
        "--eval-every",
        "2",
    ]);
    assert!(ok, "{err}");
    let align = |extra: &[&str]| {
        let args = [
            &["inject", "align", "--json", "--model", model, &run][..],
            &["--lr", "0.01", "--micro-batch", "2", "--accum", "1"],
            &["--eval-every", "2", "--checkpoint-every", "2"],
            extra,
        ]
        .concat();
        neoscope(&args)
    };
    let (ok, _, err) = align(&["--lora"]);
    assert!(!ok && err.contains("no phase-2 checkpoint"), "{err}");
    let (ok, _, err) = align(&["--lora", "--rows-step", "2"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    let (ok, out, err) = align(&["--steps", "4", "--optimizer", "adamw"]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(
        (v["step"].as_u64(), v["rows_step"].as_u64()),
        (Some(4), Some(4))
    );
    assert_eq!(v["morpheme_forms"], 2, "{v}");
    assert_eq!(v["terms"].as_array().unwrap().len(), 4, "{v}");
    assert!(v["terms"][0]["morpheme"].as_f64().unwrap() > 0.0, "{v}");
    let (ok, out, err) = neoscope(&[
        "inject", "align", "--json", "--model", model, &run, "--resume", "--steps", "6",
    ]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["step"], 6);
    let (ok, _, err) = neoscope(&[
        "inject",
        "align",
        "--model",
        model,
        &run,
        "--resume",
        "--lambda-norm",
        "1",
    ]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    let (ok, _, err) = align(&["--steps", "4"]);
    assert!(
        !ok && err.contains("already has an alignment phase"),
        "{err}"
    );

    // Any command with the aligned rows.
    let (ok, out, err) = neoscope(&["info", "--json", "--model", model, "--run", &run, "--align"]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["injected"]["align_step"], 6, "{out}");
    let (ok, _, err) = neoscope(&[
        "info",
        "--model",
        model,
        "--run",
        &run,
        "--align",
        "--run-step",
        "2",
    ]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    let generated = |extra: &[&str]| {
        let args = [
            &["generate", "--json", "--model", model, "--run", &run][..],
            extra,
            &["--max-new-tokens", "3", "the unblorf"],
        ]
        .concat();
        let (ok, out, err) = neoscope(&args);
        assert!(ok, "{err}");
        json(&out)["new_ids"].clone()
    };
    assert!(generated(&["--align"]).is_array());

    // The report has phase 3's score and section; the comparison table a phase-3 column.
    let (ok, out, err) = neoscope(&["inject", "report", "--json", "--model", model, &run]);
    assert!(ok, "{err}");
    let r = &json(&out)["report"];
    let phases: Vec<&str> = r["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(phases.last(), Some(&"phase 3 (alignment)"), "{phases:?}");
    assert_eq!(r["aligned"]["step"], 6);
    assert_eq!(r["aligned"]["morphemes"]["forms"], 2);
    let html = std::fs::read_to_string(dir.path().join("run").join("report.html")).unwrap();
    assert!(html.contains("Phase 3: morpheme-compositional alignment"));
    let (ok, out, err) = neoscope(&["inject", "compare", "--json", &run, &run]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert!(
        v["runs"][0]["phase3"]["perplexity"].as_f64().unwrap() > 1.0,
        "{v}"
    );
    assert!(v["table"].as_str().unwrap().contains("| phase 3 |"));
}

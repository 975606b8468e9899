//! `neoscope scratch …` on a tiny run: every subcommand's JSON, a BPE run, a stopped-then-resumed
//! run, and the clear errors users meet (an occupied folder, a missing run, a text longer than
//! the context, a bad tokenizer name).

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use common::neoscope;

fn json(args: &[&str]) -> serde_json::Value {
    let (ok, out, err) = neoscope(args);
    assert!(ok, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap()
}

fn refused(args: &[&str], needle: &str) {
    let (ok, out, err) = neoscope(args);
    assert!(!ok && out.is_empty(), "{args:?} should fail");
    assert!(err.contains(needle), "{args:?}: {err}");
}

const TINY: [&str; 22] = [
    "--layers",
    "2",
    "--heads",
    "2",
    "--width",
    "16",
    "--ff",
    "32",
    "--ctx",
    "16",
    "--batch",
    "4",
    "--lr",
    "5e-3",
    "--warmup",
    "2",
    "--eval-every",
    "5",
    "--sample-every",
    "5",
    "--checkpoint-every",
    "5",
];

#[test]
fn every_subcommand_answers_in_json_and_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    std::fs::write(
        &corpus,
        "to be or not to be, that is the question.\n".repeat(30),
    )
    .unwrap();
    let c = corpus.to_str().unwrap();
    let run = dir.path().join("run");
    let r = run.to_str().unwrap();
    let mut args = vec![
        "scratch", "train", "--json", "--out", r, "--corpus", c, "--steps", "10",
    ];
    args.extend(TINY);
    let v = json(&args);
    let t = &v["Trained"];
    assert_eq!(t["step"], 10);
    assert_eq!(t["losses"].as_array().unwrap().len(), 10);
    assert_eq!(t["samples"].as_array().unwrap().len(), 3, "steps 0, 5, 10");
    assert!((t["chars_per_token"].as_f64().unwrap() - 1.0).abs() < 1e-12);

    // A folder that holds a run is refused, not overwritten.
    refused(&args[..], "already holds a run");
    // Resume to more steps continues the curves.
    let v = json(&["scratch", "resume", r, "--steps", "15", "--json"]);
    assert_eq!(v["Trained"]["losses"].as_array().unwrap().len(), 15);
    // A refused total leaves run.json as it was.
    let meta = std::fs::read(run.join("run.json")).unwrap();
    refused(&["scratch", "resume", r, "--steps", "0"], "steps");
    refused(
        &["scratch", "resume", r, "--steps", "12"],
        "already at step 15",
    );
    assert_eq!(std::fs::read(run.join("run.json")).unwrap(), meta);

    let v = json(&[
        "scratch", "sample", r, "--json", "--prompt", "to be", "--tokens", "30", "--top-p", "0.9",
        "--seed", "3",
    ]);
    assert!(v["Sample"]["text"].as_str().unwrap().starts_with("to be"));
    assert_eq!(v["Sample"]["new_tokens"], 30);
    let v = json(&["scratch", "attention", r, "--json", "--text", "to be or"]);
    let p = v["Attention"]["patterns"].as_array().unwrap();
    assert_eq!((p.len(), p[0].as_array().unwrap().len()), (2, 2));
    let v = json(&[
        "scratch",
        "activations",
        r,
        "--json",
        "--text",
        "to be or",
        "--layer",
        "1",
    ]);
    assert_eq!(v["Activations"]["checkpoints"].as_array().unwrap().len(), 3);
    let v = json(&[
        "scratch",
        "info-plane",
        r,
        "--json",
        "--windows",
        "4",
        "--clusters",
        "4",
    ]);
    assert!(
        v["InfoPlane"]["estimator"]
            .as_str()
            .unwrap()
            .contains("k-means")
    );
    assert_eq!(v["InfoPlane"]["rows"].as_array().unwrap().len(), 3);

    refused(
        &[
            "scratch",
            "attention",
            r,
            "--text",
            "to be or not to be, that is",
        ],
        "this model's context is 16",
    );
    let missing = dir.path().join("nothing");
    refused(
        &["scratch", "sample", missing.to_str().unwrap()],
        "run.json",
    );
    refused(
        &["scratch", "train", "--out", "x", "--tokenizer", "words"],
        "--tokenizer words",
    );
    refused(
        &[
            "scratch",
            "train",
            "--out",
            dir.path().join("y").to_str().unwrap(),
            "--corpus",
            c,
            "--width",
            "10",
            "--heads",
            "4",
        ],
        "not a multiple of 4 heads",
    );

    // A byte-level BPE run.
    let bpe = dir.path().join("bpe");
    let mut args = vec![
        "scratch",
        "train",
        "--json",
        "--out",
        bpe.to_str().unwrap(),
        "--corpus",
        c,
        "--steps",
        "5",
        "--tokenizer",
        "bpe",
        "--vocab-size",
        "280",
        "--arch",
        "modern",
    ];
    args.extend(TINY);
    let v = json(&args);
    let t = &v["Trained"];
    assert!(t["vocab_size"].as_u64().unwrap() > 256);
    assert!(t["chars_per_token"].as_f64().unwrap() > 1.5, "{t}");
}

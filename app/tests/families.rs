//! Every analysis runs end to end on each supported family's tiny transformers-written checkpoint
//! (`tests/fixtures/models`, matched to transformers in `engine/tests/families.rs`): logits,
//! generation over the KV cache, the logit lens, training a word and steering with it, and
//! collecting activations, fitting an MFA and steering toward a component.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use common::neoscope;

fn json(args: &[&str]) -> serde_json::Value {
    let (ok, out, err) = neoscope(args);
    assert!(ok, "{args:?}: {err}");
    serde_json::from_str(&out).unwrap()
}

fn fixture(name: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
        .display()
        .to_string()
}

/// Runs every analysis on fixture `name`; `lr` is the words' learning rate (Gemma's embedding
/// is scaled by √d, so the same step in embedding units moves its residual stream further).
fn analyses_run(name: &str, n_layers: usize, lr: &str) {
    analyses_run_at(&fixture(name), name, n_layers, lr);
}

/// Runs every analysis on the model at `model`.
fn analyses_run_at(model: &str, name: &str, n_layers: usize, lr: &str) {
    let dir = tempfile::tempdir().unwrap();
    let m = ["--model", model, "--device", "cpu"];
    let with = |cmd: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = cmd.iter().map(ToString::to_string).collect();
        v.extend(m.iter().map(ToString::to_string));
        v
    };
    let run = |cmd: &[&str]| {
        let args = with(cmd);
        json(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let v = run(&["generate", "--json", "--max-new-tokens", "5", "the cat"]);
    assert_eq!(v["new_ids"].as_array().unwrap().len(), 5, "{name}");

    let v = run(&["lens", "--json", "--target", " the", "the cat sat on"]);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), n_layers, "{name}");
    for layer in layers {
        assert!(layer["p_target"].as_f64().unwrap() > 0.0, "{name}: {layer}");
    }

    let data = dir.path().join("d.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\":\"the <w> sat on\",\"target\":\" the mat\"}\n{\"prompt\":\"a pun <w>\",\"target\":\" is a joke\"}\n",
    )
    .unwrap();
    let word = dir.path().join("w");
    let v = run(&[
        "word",
        "train",
        "--json",
        "--name",
        "<w>",
        "--data",
        data.to_str().unwrap(),
        "--out",
        word.to_str().unwrap(),
        "--epochs",
        "4",
        "--lr",
        lr,
    ]);
    let losses: Vec<f64> = v["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_f64().unwrap())
        .collect();
    assert!(
        losses.last().unwrap() < losses.first().unwrap(),
        "{name}: {losses:?}"
    );
    let v = run(&[
        "word",
        "steer",
        "--json",
        "--words",
        word.to_str().unwrap(),
        "--name",
        "<w>",
        "--prompt",
        "the <w> is",
        "--max-new-tokens",
        "3",
    ]);
    assert_eq!(v["promoted"].as_array().unwrap().len(), 10, "{name}");
    // The same word injected into the residual stream before block 1.
    let word1 = dir.path().join("w1");
    let v = run(&[
        "word",
        "train",
        "--json",
        "--name",
        "<w>",
        "--data",
        data.to_str().unwrap(),
        "--out",
        word1.to_str().unwrap(),
        "--epochs",
        "2",
        "--lr",
        lr,
        "--layer",
        "1",
    ]);
    assert_eq!(v["losses"].as_array().unwrap().len(), 2, "{name}");

    let corpus = dir.path().join("c.txt");
    std::fs::write(
        &corpus,
        "the cat sat on the mat and the dog ate the cake. a pun is a joke that plays on words. "
            .repeat(6),
    )
    .unwrap();
    let acts = dir.path().join("acts");
    let v = run(&[
        "mfa",
        "collect",
        "--json",
        "--corpus",
        corpus.to_str().unwrap(),
        "--window",
        "16",
        "--out",
        acts.to_str().unwrap(),
    ]);
    assert!(v["count"].as_u64().unwrap() > 100, "{name}: {v}");
    let mfa = dir.path().join("mfa");
    run(&[
        "mfa",
        "fit",
        "--json",
        "--acts",
        acts.to_str().unwrap(),
        "--k",
        "3",
        "--rank",
        "2",
        "--epochs",
        "3",
        "--patience",
        "1",
        "--out",
        mfa.to_str().unwrap(),
    ]);
    let v = run(&[
        "mfa",
        "components",
        "--json",
        "--acts",
        acts.to_str().unwrap(),
        "--mfa",
        mfa.to_str().unwrap(),
        "--sample",
        "3",
        "--pool",
        "20",
    ]);
    for c in v["components"].as_array().unwrap() {
        assert_eq!(
            c["by_likelihood"].as_array().unwrap().len(),
            3,
            "{name}: {c}"
        );
    }
    let v = run(&[
        "mfa",
        "steer",
        "--json",
        "--mfa",
        mfa.to_str().unwrap(),
        "--component",
        "0",
        "--layer",
        "0,1",
        "--max-new-tokens",
        "3",
        "the cat",
    ]);
    assert!(v["steered"].is_string(), "{name}: {v}");

    // A tuned lens, trained briefly, then used.
    let tuned = dir.path().join("tuned");
    let v = run(&[
        "lens",
        "train-tuned",
        "--json",
        "--corpus",
        corpus.to_str().unwrap(),
        "--steps",
        "3",
        "--out",
        tuned.to_str().unwrap(),
    ]);
    assert_eq!(
        v["report"]["tuned_kl"].as_array().unwrap().len(),
        n_layers,
        "{name}"
    );
    let v = run(&[
        "lens",
        "--json",
        "--lens",
        "tuned",
        "--tuned",
        tuned.to_str().unwrap(),
        "the cat sat",
    ]);
    assert_eq!(v["layers"].as_array().unwrap().len(), n_layers, "{name}");
    // Vocabulary injection: two new words learned from a corpus for a few steps.
    let lex = dir.path().join("lex.txt");
    std::fs::write(&lex, "blorf\nzinter\n").unwrap();
    let inj_corpus = dir.path().join("inj.txt");
    let text: String = (0..80)
        .map(|i| format!("the {} sat near a cat. ", ["blorf", "zinter"][i % 2]))
        .collect();
    std::fs::write(&inj_corpus, text).unwrap();
    let inj = dir.path().join("inj");
    let v = run(&[
        "inject",
        "run",
        "--json",
        "--lexicon",
        lex.to_str().unwrap(),
        "--corpus",
        inj_corpus.to_str().unwrap(),
        "--init",
        "spherical",
        "--out",
        inj.to_str().unwrap(),
        "--block-len",
        "16",
        "--steps",
        "2",
        "--eval-every",
        "2",
    ]);
    assert_eq!(v["report"]["n_new"], 2, "{name}");
    assert_eq!(v["report"]["drift"]["base_identical"], true, "{name}");

    // Out-of-range numbers are refused with the value and the range, before any work.
    let refused = |cmd: &[&str], needle: &str| {
        let args = with(cmd);
        let (ok, out, err) = neoscope(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(!ok && out.is_empty(), "{cmd:?} should fail");
        assert!(err.contains(needle), "{cmd:?}: {err}");
    };
    refused(&["generate", "--temperature", "NaN", "the"], "temperature");
    refused(
        &["generate", "--temperature", "0.5", "--top-p", "2", "the"],
        "top-p",
    );
    refused(
        &[
            "generate",
            "--max-new-tokens",
            "18446744073709551615",
            "the",
        ],
        "exceeds the context",
    );
    let c = corpus.to_str().unwrap();
    let o = dir.path().join("x");
    let o = o.to_str().unwrap();
    refused(
        &["mfa", "collect", "--corpus", c, "--window", "0", "--out", o],
        "window",
    );
    let a = acts.to_str().unwrap();
    refused(
        &["mfa", "fit", "--acts", a, "--rank", "999", "--out", o],
        "rank",
    );
    refused(
        &["mfa", "fit", "--acts", a, "--lr", "NaN", "--out", o],
        "learning rate",
    );
    let m = mfa.to_str().unwrap();
    refused(
        &[
            "mfa",
            "steer",
            "--mfa",
            m,
            "--component",
            "0",
            "--layer",
            "0,99",
            "hi",
        ],
        "steering layer 99 is out of range",
    );
    refused(
        &[
            "mfa",
            "components",
            "--acts",
            a,
            "--mfa",
            m,
            "--sample",
            "5",
            "--pool",
            "2",
        ],
        "from a pool at least as large",
    );
    // Rows the engine refuses name the user's file and line, not a row number.
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"prompt\":\"the <w> sat\",\"target\":\" on\"}\n\n{\"prompt\":\"no word here\",\"target\":\" x\"}\n",
    )
    .unwrap();
    let b = bad.to_str().unwrap();
    refused(
        &["word", "train", "--name", "<w>", "--data", b, "--out", o],
        "bad.jsonl:3: the prompt does not contain the word",
    );
    let w = word.to_str().unwrap();
    refused(
        &["lens", "--words", w, "--steer-word", "<w>:1:NaN", "the cat"],
        "steering scale",
    );
    let f = mfa.to_str().unwrap();
    refused(
        &[
            "mfa",
            "steer",
            "--mfa",
            f,
            "--component",
            "0",
            "--alpha",
            "NaN",
            "the cat",
        ],
        "not a finite number",
    );
}

#[test]
fn analyses_run_on_llama3() {
    analyses_run("llama3", 2, "0.1");
}

#[test]
fn analyses_run_on_qwen2() {
    analyses_run("qwen2", 2, "0.1");
}

#[test]
fn analyses_run_on_mistral() {
    analyses_run("mistral", 2, "0.1");
}

#[test]
fn analyses_run_on_qwen3() {
    analyses_run("qwen3", 2, "0.1");
}

#[test]
fn analyses_run_on_gemma2() {
    analyses_run("gemma2", 3, "0.01");
}

#[test]
fn analyses_run_on_gemma3() {
    analyses_run("gemma3", 3, "0.01");
}

#[test]
fn analyses_run_on_gpt2() {
    analyses_run("gpt2", 2, "0.1");
}

#[test]
fn analyses_run_on_phi3() {
    analyses_run("phi3", 2, "0.1");
}

#[test]
fn outputs_are_not_replaced_without_force_and_unwritable_ones_fail_before_any_work() {
    let model = fixture("qwen2");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("points.csv");
    std::fs::write(&csv, "keep me").unwrap();
    let csv_s = csv.to_str().unwrap();
    let project = ["--model", &model, "embed", "project", "--out", csv_s];
    let (ok, _, err) = neoscope(&project);
    assert!(
        !ok && err.contains("exists") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), "keep me");
    let (ok, _, err) = neoscope(&[&project[..], &["--force"]].concat());
    assert!(ok, "{err}");
    assert!(std::fs::read_to_string(&csv).unwrap().starts_with("id,"));
    // A word file's pair: either file existing is enough to refuse.
    let stem = dir.path().join("w.v2");
    std::fs::write(dir.path().join("w.v2.safetensors"), "old").unwrap();
    let (ok, _, err) = neoscope(&[
        "--model",
        &model,
        "word",
        "train",
        "--name",
        "<w>",
        "--data",
        "pun",
        "--out",
        stem.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("w.v2.safetensors exists"), "{err}");
    // A destination under a plain file cannot be written: said before training, not after.
    let (ok, _, err) = neoscope(&[
        "--model",
        &model,
        "word",
        "train",
        "--name",
        "<w>",
        "--data",
        "pun",
        "--out",
        &format!("{csv_s}/w"),
    ]);
    assert!(!ok && err.contains("points.csv"), "{err}");
    assert!(
        !err.contains("step"),
        "training ran before the check: {err}"
    );
}

/// A small model trained from scratch with `neoscope scratch train` (character level, on a
/// text holding every character the analyses type), and its model folder.
fn scratch_model(arch: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(
        &corpus,
        "the cat sat on the mat and the dog ate the cake. a pun is a joke that plays on words. \
         the blorf and the zinter sat near a cat. <w> is a word.\n"
            .repeat(40),
    )
    .unwrap();
    let run = dir.path().join("run");
    let v = json(&[
        "scratch",
        "train",
        "--json",
        "--out",
        run.to_str().unwrap(),
        "--corpus",
        corpus.to_str().unwrap(),
        "--arch",
        arch,
        "--layers",
        "2",
        "--heads",
        "2",
        "--width",
        "32",
        "--ff",
        "64",
        "--ctx",
        "64",
        "--steps",
        "80",
        "--batch",
        "4",
        "--lr",
        "3e-3",
        "--warmup",
        "3",
        "--eval-every",
        "10",
        "--sample-every",
        "0",
        "--checkpoint-every",
        "10",
    ]);
    let r = &v["Trained"];
    let val = r["val"].as_array().unwrap();
    let loss = |i: usize| val[i][1].as_f64().unwrap();
    assert!(loss(val.len() - 1) < loss(0) - 1.0, "{arch}: {val:?}");
    let model = r["model_dir"].as_str().unwrap().to_owned();
    (dir, model)
}

#[test]
fn analyses_run_on_a_model_trained_from_scratch_with_the_lessons_block() {
    let (_dir, model) = scratch_model("seed");
    analyses_run_at(&model, "scratch seed", 2, "0.1");
}

#[test]
fn analyses_run_on_a_model_trained_from_scratch_with_the_modern_block() {
    let (_dir, model) = scratch_model("modern");
    analyses_run_at(&model, "scratch modern", 2, "0.1");
}

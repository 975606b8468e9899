//! The CLI contract: with `--json`, exactly one JSON object on stdout. Runs the real binary on a
//! tiny random model saved as a Hugging Face folder (fast), and checks error reporting. Every
//! test runs twice: with the engine in process, and against `neoscope serve` via `--engine`.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use candle_core::Device;
use neoscope_engine::model::save_hf_dir;
use neoscope_engine::tiny::tiny_model;

use common::{neoscope, served, with_served_engine};

fn json(stdout: &str) -> serde_json::Value {
    assert_eq!(
        stdout.lines().count(),
        1,
        "one line of JSON expected: {stdout}"
    );
    serde_json::from_str(stdout).unwrap()
}

fn json_subcommands_print_one_object() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(9, &Device::Cpu).unwrap();
    save_hf_dir(&m.llama, &m.tokenizer, dir.path()).unwrap();
    let model = dir.path().to_str().unwrap();

    let (ok, out, err) = neoscope(&["info", "--json", "--model", model, "--device", "cpu"]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["d_model"], 32);
    assert_eq!(v["n_layers"], 2);
    assert_eq!(v["n_kv_heads"], 2);
    assert_eq!(v["device"], "cpu");
    assert_eq!(v["sha256"].as_str().unwrap().len(), 64);

    let (ok, out, err) = neoscope(&["tokenize", "--json", "--model", model, "the cat"]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(
        v["ids"].as_array().unwrap().len(),
        v["pieces"].as_array().unwrap().len()
    );
    let pieces: String = v["pieces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(pieces, "the cat");

    let (ok, out, err) = neoscope(&["logits", "--json", "--top-k", "4", "--model", model, "the"]);
    assert!(ok, "{err}");
    let v = json(&out);
    let top = v["top"].as_array().unwrap();
    assert_eq!(top.len(), 4);
    let probs: Vec<f64> = top.iter().map(|t| t["prob"].as_f64().unwrap()).collect();
    assert!(probs.windows(2).all(|w| w[0] >= w[1]));

    let args = [
        "generate",
        "--json",
        "--max-new-tokens",
        "6",
        "--temperature",
        "1.0",
    ];
    let run = |seed: &str| {
        let mut a = args.to_vec();
        a.extend(["--seed", seed, "--model", model, "the cat"]);
        let (ok, out, err) = neoscope(&a);
        assert!(ok, "{err}");
        json(&out)
    };
    let a = run("5");
    assert_eq!(a["new_ids"].as_array().unwrap().len(), 6);
    assert_eq!(a, run("5"));
}

fn errors_name_the_problem_and_exit_non_zero() {
    let (ok, out, err) = neoscope(&["info", "--json", "--model", "/no/such/file.gguf"]);
    assert!(!ok);
    assert!(out.is_empty());
    assert!(err.contains("/no/such/file.gguf"), "{err}");
    let (ok, _, err) = neoscope(&["info", "--device", "cuda"]);
    if !ok {
        assert!(err.contains("CUDA"), "{err}");
    }
}

fn word_train_define_neighbors_steer_evaluate_compare_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(10, &Device::Cpu).unwrap();
    let model_dir = dir.path().join("model");
    save_hf_dir(&m.llama, &m.tokenizer, &model_dir).unwrap();
    let model = model_dir.to_str().unwrap();
    let data = dir.path().join("d.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\":\"this is <a>:\",\"target\":\" the cat\"}\n{\"prompt\":\"<a> is\",\"target\":\" an ant\"}\n",
    )
    .unwrap();
    let out_a = dir.path().join("a");
    let (ok, out, err) = neoscope(&[
        "word",
        "train",
        "--json",
        "--model",
        model,
        "--name",
        "<a>",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out_a.to_str().unwrap(),
        "--epochs",
        "3",
        "--batch-size",
        "1",
        "--lr",
        "0.1",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["losses"].as_array().unwrap().len(), 6);
    assert!(v["path"].as_str().unwrap().ends_with("a.json"));
    assert!(dir.path().join("a.safetensors").exists());
    // Train a second word on the same data (prompts name <a>, so rename it).
    std::fs::write(
        &data,
        std::fs::read_to_string(&data)
            .unwrap()
            .replace("<a>", "<b>"),
    )
    .unwrap();
    let out_b = dir.path().join("b");
    let (ok, _, err) = neoscope(&[
        "word",
        "train",
        "--json",
        "--model",
        model,
        "--name",
        "<b>",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out_b.to_str().unwrap(),
        "--epochs",
        "1",
    ]);
    assert!(ok, "{err}");
    let words = [
        "--words",
        out_a.to_str().unwrap(),
        "--words",
        out_b.to_str().unwrap(),
    ];

    let mut args = vec![
        "word", "define", "--json", "--model", model, "--name", "<a>",
    ];
    args.extend(["--prompt", "The word {w} means", "--max-new-tokens", "4"]);
    args.extend(words);
    let (ok, out, err) = neoscope(&args);
    assert!(ok, "{err}");
    let v = json(&out);
    assert!(v["text"].is_string());
    assert_eq!(v["definitions"].as_array().unwrap().len(), 1);

    let mut args = vec![
        "word",
        "neighbors",
        "--json",
        "--model",
        model,
        "<a> - <b> + the",
    ];
    args.extend(words);
    let (ok, out, err) = neoscope(&args);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["nearest"].as_array().unwrap().len(), 10);

    let mut args = vec!["word", "steer", "--json", "--model", model, "--name", "<a>"];
    args.extend(["--prompt", "this is <a>:", "--max-new-tokens", "3"]);
    args.extend(words);
    let (ok, out, err) = neoscope(&args);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["promoted"].as_array().unwrap().len(), 10);

    let held = dir.path().join("held.jsonl");
    std::fs::write(
        &held,
        "{\"prompt\":\"this is <a>:\",\"target\":\" the hat\"}\n",
    )
    .unwrap();
    let mut args = vec![
        "word", "evaluate", "--json", "--model", model, "--name", "<a>",
    ];
    args.extend(["--heldout", held.to_str().unwrap(), "--text", "a cat"]);
    args.extend(words);
    let (ok, out, err) = neoscope(&args);
    assert!(ok, "{err}");
    assert!(json(&out)["recovered"].is_number());

    let spec = format!("h={}", held.display());
    let mut args = vec![
        "word", "compare", "--json", "--model", model, "--a", "<a>", "--b", "<b>",
    ];
    args.extend(["--heldout", spec.as_str()]);
    args.extend(words);
    let (ok, out, err) = neoscope(&args);
    assert!(ok, "{err}");
    let v = json(&out);
    assert!(v.is_object(), "{v}");
    assert_eq!(v["a"]["name"], "<a>");
    assert_eq!(v["b"]["name"], "<b>");
    assert_eq!(v["b"]["heldout"][0][0], "h");
    // The punchline preference on the shipped held-out setups: the two words, no word, "pun".
    let rows = v["preference"]["rows"].as_array().unwrap();
    assert_eq!(v["preference"]["setups"], 32);
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[0]["slot"]["Word"], "<a>");
    assert_eq!(rows[2]["slot"], "Removed");
    assert_eq!(rows[3]["slot"]["Text"], "pun");
    for r in rows {
        assert_eq!(r["margins"].as_array().unwrap().len(), 32);
        assert!(r["margin"].as_f64().unwrap().is_finite());
    }
    assert_eq!(v["a"]["similarities"].as_array().unwrap().len(), 6);

    // A word file for another model is refused, naming both models.
    let other = dir.path().join("other");
    let m2 = tiny_model(11, &Device::Cpu).unwrap();
    save_hf_dir(&m2.llama, &m2.tokenizer, &other).unwrap();
    let (ok, _, err) = neoscope(&[
        "word",
        "define",
        "--model",
        other.to_str().unwrap(),
        "--name",
        "<a>",
        "--words",
        out_a.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("was made for the model"), "{err}");
}

fn lens_json_has_every_layer_and_tuned_lens_trains_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(12, &Device::Cpu).unwrap();
    let model_dir = dir.path().join("model");
    save_hf_dir(&m.llama, &m.tokenizer, &model_dir).unwrap();
    let model = model_dir.to_str().unwrap();
    let csv = dir.path().join("cells.csv");
    let (ok, out, err) = neoscope(&[
        "lens",
        "--json",
        "--model",
        model,
        "--target",
        " the",
        "--top-k",
        "3",
        "--csv",
        csv.to_str().unwrap(),
        "the cat and the",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for (l, layer) in layers.iter().enumerate() {
        assert_eq!(layer["layer"], l);
        assert_eq!(layer["top"].as_array().unwrap().len(), 3);
        assert!(layer["p_target"].as_f64().unwrap() > 0.0);
        assert!(layer["rank_target"].is_u64());
    }
    let n_tokens = v["tokens"].as_array().unwrap().len();
    assert_eq!(v["position"], n_tokens - 1);
    let rows = std::fs::read_to_string(&csv).unwrap().lines().count();
    assert_eq!(rows, 1 + 2 * n_tokens);

    // Paired targets: each prompt follows its own, and says when it emerges.
    let (ok, out, err) = neoscope(&[
        "lens",
        "--json",
        "--model",
        model,
        "--paired",
        "--threshold",
        "0.01",
        "--target",
        " the",
        "--target",
        " cat",
        "the cat and the",
        "then the",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    let prompts = v["prompts"].as_array().unwrap();
    for (p, want) in prompts.iter().zip([" the", " cat"]) {
        let targets = p["targets"].as_array().unwrap();
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0]["text"], want);
        let probs: Vec<f64> = p["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["p_target"].as_f64().unwrap())
            .collect();
        let first = probs.iter().position(|x| *x >= 0.01);
        assert_eq!(
            p["emergence"]["first_above"].as_u64().map(|x| x as usize),
            first
        );
        assert!((p["emergence"]["final_prob"].as_f64().unwrap() - probs[1]).abs() < 1e-6);
    }
    let (ok, _, err) = neoscope(&[
        "lens", "--model", model, "--paired", "--target", " the", "a", "b",
    ]);
    assert!(!ok);
    assert!(err.contains("1 targets for 2 prompts"), "{err}");

    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "the cat and the hat then the ant ".repeat(200)).unwrap();
    let tuned = dir.path().join("tuned");
    let (ok, out, err) = neoscope(&[
        "lens",
        "train-tuned",
        "--json",
        "--model",
        model,
        "--corpus",
        corpus.to_str().unwrap(),
        "--steps",
        "5",
        "--out",
        tuned.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["report"]["tuned_kl"].as_array().unwrap().len(), 2);
    let (ok, out, err) = neoscope(&[
        "lens",
        "--json",
        "--model",
        model,
        "--lens",
        "tuned",
        "--tuned",
        tuned.to_str().unwrap(),
        "--position",
        "1",
        "the cat and",
    ]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["position"], 1);
    let (ok, _, err) = neoscope(&["lens", "--model", model, "--lens", "tuned", "the cat"]);
    if served() {
        // A served engine is one session: the tuned lens the last client loaded is still there.
        assert!(ok, "{err}");
    } else {
        assert!(!ok);
        assert!(err.contains("no tuned lens"), "{err}");
    }
    let (ok, _, err) = neoscope(&[
        "lens",
        "--model",
        model,
        "--steer-word",
        "<nope>:1:2",
        "the cat",
    ]);
    assert!(!ok);
    assert!(err.contains("no word named <nope>"), "{err}");
    let (ok, _, err) = neoscope(&["lens", "--model", model, "--steer-word", "<w>:x:2", "a"]);
    assert!(!ok);
    assert!(err.contains("layer `x` is not a whole number"), "{err}");
}

fn inject_run_resume_report_and_embed_project_neighbors_on_a_tiny_model() {
    let dir = tempfile::tempdir().unwrap();
    let m = common::tiny_inject_inputs(dir.path(), 12, "blorf\nzinter\nthe\n");
    let model_dir = dir.path().join("model");
    let model = model_dir.to_str().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let run = p("run");
    let base = [
        "inject",
        "run",
        "--json",
        "--model",
        model,
        "--lexicon",
        &p("lex.txt"),
        "--corpus",
        &p("corpus.txt"),
        "--init",
        "spherical",
        "--out",
        &run,
        "--block-len",
        "16",
    ];
    let (ok, out, err) = neoscope(&[&base[..], &["--steps", "4", "--eval-every", "2"]].concat());
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["step"], 4);
    assert_eq!(v["report"]["n_new"], 2);
    assert_eq!(v["report"]["n_known"], 1);
    assert_eq!(v["report"]["drift"]["base_identical"], true);
    assert!(std::path::Path::new(&run).join("report.html").exists());
    // The same folder again is refused; compositional init without a table is refused.
    let (ok, _, err) = neoscope(&[&base[..], &["--steps", "4"]].concat());
    assert!(!ok && err.contains("already holds a run"), "{err}");
    let run2 = p("run2");
    let mut comp = base.to_vec();
    comp[10] = "compositional";
    comp[12] = &run2;
    let (ok, _, err) = neoscope(&comp);
    assert!(!ok && err.contains("morpheme table"), "{err}");

    let (ok, out, err) = neoscope(&[
        "inject", "resume", "--json", "--model", model, &run, "--steps", "6",
    ]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["step"], 6);
    let (ok, out, err) = neoscope(&["inject", "report", "--json", "--model", model, &run]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["report"]["steps"], 6);

    let csv_path = p("points.csv");
    let (ok, out, err) = neoscope(&[
        "embed", "project", "--json", "--model", model, "--run", &run, "--out", &csv_path,
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    let vocab = m.llama.cfg.vocab_size;
    assert_eq!(v["points"], vocab + 2);
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    // Records, not lines: a token such as "\n" is a quoted multi-line field.
    let records = csv::Reader::from_reader(csv.as_bytes()).records().count();
    assert_eq!(records, vocab + 2);
    assert!(
        csv.lines().any(|l| l.contains(",new, blorf,")),
        "{}",
        &csv[..200]
    );
    let (ok, out, err) = neoscope(&[
        "embed",
        "neighbors",
        "--json",
        "--model",
        model,
        "--run",
        &run,
        "blorf",
        "-k",
        "3",
    ]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["hits"][0]["text"], " blorf");
    assert_eq!(v["hits"].as_array().unwrap().len(), 3);
    let (ok, _, err) = neoscope(&["embed", "neighbors", "--model", model, "#999999"]);
    assert!(!ok && err.contains("no token #999999"), "{err}");

    // `--run`: the run's forms are tokens of the model for any command.
    let (ok, out, err) = neoscope(&["info", "--json", "--model", model, "--run", &run]);
    assert!(ok, "{err}");
    let v = json(&out);
    assert_eq!(v["d_vocab"], vocab + 2);
    assert_eq!(v["injected"]["forms"], 2);
    assert_eq!(v["injected"]["step"], 6);
    let with_run = |args: &[&str]| {
        let all = [&["--json", "--model", model, "--run", &run][..], args].concat();
        let (ok, out, err) = neoscope(&all);
        assert!(ok, "{args:?}: {err}");
        json(&out)
    };
    let v = with_run(&["tokenize", "the zinter sat"]);
    assert!(
        v["pieces"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(" zinter")),
        "{v}"
    );
    let form_ids: Vec<u64> = v["ids"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .filter(|&i| i >= vocab as u64)
        .collect();
    assert_eq!(form_ids.len(), 1, "{v}");
    let v = with_run(&["lens", "--target", " zinter", "the zinter sat"]);
    assert_eq!(v["targets"][0]["id"], form_ids[0], "{v}");
    let v = with_run(&["generate", "--max-new-tokens", "3", "the blorf"]);
    assert!(
        v["forms"].is_array() && v["new_ids"].as_array().unwrap().len() <= 3,
        "{v}"
    );
    let v = with_run(&[
        "inject",
        "probe",
        &run,
        "--count",
        "1",
        "--max-new-tokens",
        "3",
    ]);
    let probes = v["probes"].as_array().unwrap();
    assert_eq!(probes.len(), 2, "{v}");
    assert_eq!(
        (probes[0]["end"].as_str(), probes[1]["end"].as_str()),
        (Some("Most"), Some("Least"))
    );
    assert!(probes[0]["cosine"].as_f64() <= probes[1]["cosine"].as_f64());
    // Lexicon extraction: split words seen often enough, written as a lexicon file that a run
    // takes (appended to the training text).
    let lex2 = p("extracted.txt");
    let v = with_run(&[
        "inject",
        "lexicon",
        "--corpus",
        &p("corpus.txt"),
        "--min-count",
        "3",
        "--out",
        &lex2,
    ]);
    let forms: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["form"].as_str().unwrap())
        .collect();
    assert!(forms.contains(&"blorf") && forms.contains(&"zinter"), "{v}");
    assert_eq!(v["entries"][0]["count"], 80, "{v}"); // `sat`, `near`, `cat`: 80 each
    let (ok, out, err) = neoscope(&[
        "inject",
        "run",
        "--json",
        "--model",
        model,
        "--lexicon",
        &lex2,
        "--corpus",
        &p("corpus.txt"),
        "--init",
        "spherical",
        "--out",
        &p("run3"),
        "--block-len",
        "16",
        "--steps",
        "2",
        "--append-lexicon",
    ]);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["report"]["n_new"], forms.len());
    // A step without a checkpoint is refused by name, listing the ones there are.
    let (ok, _, err) = neoscope(&[
        "generate",
        "--model",
        model,
        "--run",
        &run,
        "--run-step",
        "3",
        "a",
    ]);
    assert!(
        !ok && err.contains("no checkpoint at step 3") && err.contains(", 6"),
        "{err}"
    );
}

#[test]
fn json_subcommands_print_one_object_in_process() {
    json_subcommands_print_one_object();
}

#[test]
fn json_subcommands_print_one_object_served() {
    with_served_engine(json_subcommands_print_one_object);
}

#[test]
fn errors_name_the_problem_and_exit_non_zero_in_process() {
    errors_name_the_problem_and_exit_non_zero();
}

#[test]
fn errors_name_the_problem_and_exit_non_zero_served() {
    with_served_engine(errors_name_the_problem_and_exit_non_zero);
}

#[test]
fn word_train_define_neighbors_steer_evaluate_compare_on_a_tiny_model_in_process() {
    word_train_define_neighbors_steer_evaluate_compare_on_a_tiny_model();
}

#[test]
fn word_train_define_neighbors_steer_evaluate_compare_on_a_tiny_model_served() {
    with_served_engine(word_train_define_neighbors_steer_evaluate_compare_on_a_tiny_model);
}

#[test]
fn lens_json_has_every_layer_and_tuned_lens_trains_and_loads_in_process() {
    lens_json_has_every_layer_and_tuned_lens_trains_and_loads();
}

#[test]
fn lens_json_has_every_layer_and_tuned_lens_trains_and_loads_served() {
    with_served_engine(lens_json_has_every_layer_and_tuned_lens_trains_and_loads);
}

#[test]
fn inject_run_resume_report_and_embed_project_neighbors_on_a_tiny_model_in_process() {
    inject_run_resume_report_and_embed_project_neighbors_on_a_tiny_model();
}

#[test]
fn inject_run_resume_report_and_embed_project_neighbors_on_a_tiny_model_served() {
    with_served_engine(inject_run_resume_report_and_embed_project_neighbors_on_a_tiny_model);
}

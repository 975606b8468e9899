//! The CLI contract: with `--json`, exactly one JSON object on stdout. Runs the real binary on a
//! tiny random model saved as a Hugging Face folder (fast), and checks error reporting.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use std::process::Command;

use candle_core::Device;
use neoscope_engine::model::load::save_hf_dir;
use neoscope_engine::tiny::tiny_model;

fn neoscope(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_neoscope"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(stdout: &str) -> serde_json::Value {
    assert_eq!(
        stdout.lines().count(),
        1,
        "one line of JSON expected: {stdout}"
    );
    serde_json::from_str(stdout).unwrap()
}

#[test]
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

#[test]
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

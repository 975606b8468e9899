//! Bad input through the real binary on a tiny model: each case exits non-zero with a message
//! naming the problem (the value and its range, or the file and line), without a panic, and
//! leaves no output behind.

mod common;

use candle_core::Device;
use neoscope_engine::model::save_hf_dir;
use neoscope_engine::tiny::tiny_model;

use common::neoscope;

const HUGE: &str = "18446744073709551615";

#[test]
fn bad_numbers_sizes_and_files_are_refused_by_name_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(10, &Device::Cpu).unwrap();
    let model_dir = dir.path().join("model");
    save_hf_dir(&m.llama, &m.tokenizer, &model_dir).unwrap();
    let model = model_dir.to_str().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let data = p("d.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\":\"this is <a>:\",\"target\":\" the cat\"}\n",
    )
    .unwrap();
    let bad_utf8 = p("bad.jsonl");
    std::fs::write(&bad_utf8, b"{\"prompt\":\"<a> \xff\",\"target\":\" x\"}\n").unwrap();
    let corpus = p("c.txt");
    std::fs::write(&corpus, "the cat sat on the mat. ".repeat(200)).unwrap();
    let lexicon = p("lex.txt");
    std::fs::write(&lexicon, "blorfish\nsnarkle\n").unwrap();
    let existing = p("taken");
    std::fs::write(format!("{existing}.json"), "{}").unwrap();
    let (words, tuned, acts, run, lab) = (p("w"), p("t"), p("acts"), p("run"), p("lab"));
    let word = |extra: &[&'static str], out: &str| -> Vec<String> {
        let mut a: Vec<String> = [
            "word", "train", "--model", model, "--name", "<a>", "--data", &data, "--out", out,
        ]
        .map(str::to_owned)
        .to_vec();
        a.extend(extra.iter().map(|s| (*s).to_owned()));
        a
    };
    let own = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<String>>();
    let scratch = |extra: &[&str]| -> Vec<String> {
        let mut a = own(&["scratch", "train", "--corpus", &corpus, "--out", &lab]);
        a.extend(own(extra));
        a
    };
    let inject = |extra: &[&str]| -> Vec<String> {
        let mut a = own(&[
            "inject",
            "run",
            "--model",
            model,
            "--lexicon",
            &lexicon,
            "--corpus",
            &corpus,
            "--out",
            &run,
            "--init",
            "spherical",
        ]);
        a.extend(own(extra));
        a
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            own(&["generate", "--model", model, "--top-p", "2", "hi"]),
            "top-p 2 must be in (0, 1]",
        ),
        (
            own(&["generate", "--model", model, "--temperature", "NaN", "hi"]),
            "temperature NaN must be a finite number",
        ),
        (
            own(&["generate", "--model", model, "--max-new-tokens", HUGE, "hi"]),
            "exceeds the context of 128",
        ),
        (word(&["--lr", "NaN"], &words), "learning rate (NaN)"),
        (word(&["--lr", "inf"], &words), "learning rate (inf)"),
        (word(&[], &existing), "exists; pass --force"),
        (word(&["--clip", "NaN"], &words), "gradient clipping at NaN"),
        (word(&["--clip=-1"], &words), "gradient clipping at -1"),
        (word(&["--weight-decay", "NaN"], &words), "weight decay NaN"),
        (
            own(&["lens", "--model", model, "--threshold", "2", "hi"]),
            "--threshold 2: it must be a probability in (0, 1]",
        ),
        (
            own(&["word", "preference", "--model", model, "--data", &data]),
            "d.jsonl:1: the punchline preference needs `chosen`/`rejected` rows",
        ),
        (
            own(&["info", "--model", model, "--max-memory", "NaN"]),
            "NaN GB: it must be a finite number > 0",
        ),
        (
            own(&[
                "word", "train", "--model", model, "--name", "<a>", "--data", &bad_utf8, "--out",
                &words,
            ]),
            "bad.jsonl:1:16: not UTF-8 text (byte 0xff)",
        ),
        (
            own(&[
                "lens",
                "train-tuned",
                "--model",
                model,
                "--corpus",
                &corpus,
                "--out",
                &tuned,
                "--lr",
                "inf",
            ]),
            "learning rate (inf) must be a finite number > 0",
        ),
        (
            own(&[
                "mfa", "collect", "--model", model, "--corpus", &corpus, "--window", "0", "--out",
                &acts,
            ]),
            "window of 0 tokens: it must be between 2 and the model's context of 128",
        ),
        (inject(&["--micro-batch", HUGE]), "blocks per step"),
        (
            inject(&["--block-len", "129"]),
            "block length 129 exceeds the model's context of 128 tokens",
        ),
        (
            inject(&["--micro-batch", "100000"]),
            "a micro-batch of 100000 blocks",
        ),
        (
            own(&[
                "inject",
                "lexicon",
                "--model",
                model,
                "--corpus",
                &corpus,
                "--min-pieces",
                "1",
            ]),
            "at least 2 tokens (got 1)",
        ),
        (
            own(&["inject", "probe", "--model", model, &run, "--count", "0"]),
            "probes need at least one form of each kind",
        ),
        (
            own(&["generate", "--model", model, "--run", &run, "hi"]),
            "run.json",
        ),
        (
            own(&["generate", "--model", model, "--run-step", "3", "hi"]),
            "--run",
        ),
        (
            scratch(&["--layers", "100000000"]),
            "GB are available; make it smaller",
        ),
        (
            scratch(&["--tokenizer", "bpe", "--vocab-size", HUGE]),
            "GB are available",
        ),
    ];
    for (args, needle) in &cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = neoscope(&a);
        assert!(!ok, "{a:?} succeeded");
        assert!(!err.contains("panicked"), "{a:?}: {err}");
        assert!(err.contains(needle), "{a:?}: {err}");
    }
    // A bad dataset is reported before the model loads, not after.
    let (_, _, err) = neoscope(&[
        "word", "train", "--model", model, "--name", "<a>", "--data", &bad_utf8, "--out", &words,
    ]);
    assert!(
        err.contains("not UTF-8") && !err.contains("Loading"),
        "{err}"
    );
    // Nothing was written by the refused commands.
    for out in [&words, &tuned, &acts, &run, &lab] {
        for f in [
            out.clone(),
            format!("{out}.json"),
            format!("{out}.safetensors"),
        ] {
            assert!(!std::path::Path::new(&f).exists(), "{f} was written");
        }
    }
}

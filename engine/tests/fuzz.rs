//! Property tests over everything Neoscope reads: datasets, lexicons, morpheme tables, word and
//! MFA files, run folders, Hugging Face configs and GGUF files, fed random and mutated inputs.
//! Each must give a value that works or an error that names the file (and the field or line),
//! never a panic, a hang or an abort; what loads must then also run.

#![expect(clippy::expect_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use neoscope_engine::artifact::BaseModel;
use neoscope_engine::model::{LoadedModel, load_model};
use neoscope_engine::words::{self, Init, Injection, Word};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use serde_json::Value;

/// `n` cases per property (`NEOSCOPE_FUZZ_CASES` sets another number, for a longer search).
fn cases(n: u32) -> Config {
    Config {
        cases: std::env::var("NEOSCOPE_FUZZ_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(n),
        failure_persistence: None,
        ..Config::default()
    }
}

/// A JSON value of any kind, with the numbers that break code: zero, negatives, huge, fractional.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        prop_oneof![
            Just(0_i64),
            Just(-1),
            Just(1),
            Just(7),
            Just(i64::MAX),
            Just(1 << 40),
            any::<i64>(),
        ]
        .prop_map(Value::from),
        prop_oneof![
            Just(0.0_f64),
            Just(-1.5),
            Just(1e-30),
            Just(1e30),
            any::<f64>()
        ]
        .prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        "[a-z_<>. ]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every JSON pointer in `v` (objects' keys and arrays' items, recursively).
fn pointers(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(x, &p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(x, &p, out);
            }
        }
        _ => {}
    }
}

/// One edit of a JSON document: a value replaced, a key removed, or a key added.
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, Value),
    Remove(usize),
    Add(String, Value),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<usize>(), json_value()).prop_map(|(i, v)| Edit::Replace(i, v)),
        1 => any::<usize>().prop_map(Edit::Remove),
        1 => ("[a-z_]{1,24}", json_value()).prop_map(|(k, v)| Edit::Add(k, v)),
    ]
}

/// Applies `e` to `doc`; returns the pointer it touched.
fn apply(doc: &mut Value, e: &Edit) -> String {
    let mut all = Vec::new();
    pointers(doc, "", &mut all);
    let pick = |i: usize| all.get(i % all.len().max(1)).cloned();
    match e {
        Edit::Replace(i, v) => {
            let Some(p) = pick(*i) else {
                return String::new();
            };
            if let Some(slot) = doc.pointer_mut(&p) {
                *slot = v.clone();
            }
            p
        }
        Edit::Remove(i) => {
            let Some(p) = pick(*i) else {
                return String::new();
            };
            let (parent, key) = p.rsplit_once('/').unwrap_or(("", &p));
            match doc.pointer_mut(parent) {
                Some(Value::Object(m)) => {
                    m.remove(key);
                }
                Some(Value::Array(a)) => {
                    if let Ok(i) = key.parse::<usize>() {
                        a.remove(i);
                    }
                }
                _ => {}
            }
            p
        }
        Edit::Add(k, v) => {
            if let Value::Object(m) = doc {
                m.insert(k.clone(), v.clone());
            }
            format!("/{k}")
        }
    }
}

/// One edit of a binary file: bytes overwritten, or the file cut short.
#[derive(Debug, Clone)]
enum ByteEdit {
    Flip(Vec<(usize, u8)>),
    Truncate(usize),
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        3 => prop::collection::vec((any::<usize>(), any::<u8>()), 1..6).prop_map(ByteEdit::Flip),
        1 => any::<usize>().prop_map(ByteEdit::Truncate),
    ]
}

/// Applies `e`; `head` limits flips to the first bytes (where headers live), 0 for anywhere.
fn apply_bytes(bytes: &mut Vec<u8>, e: &ByteEdit, head: usize) {
    let span = if head == 0 {
        bytes.len()
    } else {
        head.min(bytes.len())
    };
    match e {
        ByteEdit::Flip(fs) => {
            for (at, b) in fs {
                let i = at % span;
                bytes[i] = bytes[i].wrapping_add(*b | 1);
            }
        }
        ByteEdit::Truncate(at) => bytes.truncate(at % bytes.len()),
    }
}

fn tiny() -> LoadedModel {
    neoscope_engine::tiny::tiny_model(11, &Device::Cpu).expect("tiny model")
}

/// An error must name the file it is about (or one of the files of its pair).
fn names_file(msg: &str, files: &[&Path]) -> bool {
    files.iter().any(|f| {
        f.file_name()
            .is_some_and(|n| msg.contains(n.to_string_lossy().as_ref()))
    })
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn datasets_give_examples_or_errors_with_file_and_line(
        lines in prop::collection::vec(prop_oneof![
            Just(r#"{"prompt": "a <w> b", "target": " c"}"#.to_owned()),
            Just(r#"{"prompt": "a <w>", "chosen": " x", "rejected": " y"}"#.to_owned()),
            Just("prompt,target".to_owned()),
            Just("\"a <w>\", c".to_owned()),
            "[{}\\[\\]\",:a-z<> ]{0,40}",
            json_value().prop_map(|v| v.to_string()),
        ], 0..8),
    ) {
        let text = lines.join("\n");
        for (parse, file) in [
            (neoscope_api::dataset::parse_jsonl as fn(&str, &Path) -> _, "d.jsonl"),
            (neoscope_api::dataset::parse_csv, "d.csv"),
        ] {
            if let Err(e) = parse(&text, Path::new(file)) {
                prop_assert!(e.message.contains(&format!("{file}:")), "{}", e.message);
            }
        }
    }

    #[test]
    fn lexicons_and_morpheme_tables_give_entries_or_errors_naming_the_file(
        text in "[a-z#,\\- \n\t\u{e9}\u{300}]{0,80}",
    ) {
        use neoscope_engine::inject::lexicon::{parse_lexicon, parse_morphemes};
        if let Err(e) = parse_lexicon(&text, "lex.txt") {
            prop_assert!(e.to_string().contains("lex.txt"), "{e}");
        }
        if let Err(e) = parse_morphemes(&text, "m.csv") {
            prop_assert!(e.to_string().contains("m.csv"), "{e}");
        }
    }
}

/// A word file of the tiny model, saved for the fuzzing below.
fn word_file(m: &LoadedModel, dir: &Path) -> PathBuf {
    let w = Word::create(
        m,
        "<w>",
        Init::Random { std: 0.5, seed: 1 },
        Injection::ResidPre(1),
    )
    .expect("word");
    let path = dir.join("w");
    words::file::save(&path, &[w], &m.info, None, &[1.0, 0.5], &[0.7]).expect("save word");
    path
}

/// Damages `file`: a JSON file by the edit `e`, any other by the byte edit `b`.
fn damage(file: &Path, e: &Edit, b: &ByteEdit) {
    let bytes = std::fs::read(file).expect("read");
    let out = if file.extension().is_some_and(|x| x == "json") {
        let mut doc: Value = serde_json::from_slice(&bytes).expect("json");
        apply(&mut doc, e);
        doc.to_string().into_bytes()
    } else {
        let mut bytes = bytes;
        apply_bytes(&mut bytes, b, 0);
        bytes
    };
    std::fs::write(file, out).expect("write");
}

/// Damages the artifact `stem`: its JSON (`which` 0 or 2), its tensors (`which` 1 or 2).
/// Returns the pair's paths (tensors, JSON).
fn damage_pair(stem: &Path, e: &Edit, b: &ByteEdit, which: u8) -> (PathBuf, PathBuf) {
    let (st, js) = neoscope_api::files::artifact_paths(stem);
    if which != 1 {
        damage(&js, e, b);
    }
    if which != 0 {
        damage(&st, e, b);
    }
    (st, js)
}

proptest! {
    #![proptest_config(cases(192))]

    #[test]
    fn word_files_load_and_work_or_are_refused_by_name(e in edit(), b in byte_edit(), which in 0..3_u8) {
        let m = tiny();
        let dir = tempfile::tempdir().expect("tempdir");
        let stem = word_file(&m, dir.path());
        let (st, js) = damage_pair(&stem, &e, &b, which);
        match words::file::load(&stem, &m.info) {
            Ok((ws, _)) => {
                // What loads must work: a forward pass with the words in a prompt.
                let names: Vec<String> = ws.iter().map(|w| w.name.clone()).collect();
                let pairs: Vec<(String, String)> =
                    names.iter().map(|n| (format!("a {n} b"), " c".to_owned())).collect();
                if let Err(err) = words::analysis::mean_logprob(&m, &ws, &pairs) {
                    prop_assert!(!err.to_string().is_empty());
                }
            }
            Err(err) => {
                let msg = err.to_string();
                prop_assert!(names_file(&msg, &[&st, &js]), "{msg}");
            }
        }
    }

    #[test]
    fn mfa_files_load_or_are_refused_by_name(e in edit(), b in byte_edit(), which in 0..3_u8) {
        use neoscope_engine::mfa::{file, model::Mfa};
        let m = tiny();
        let base = BaseModel::of(&m.info);
        let dev = Device::Cpu;
        let (k, d, r) = (2, m.llama.cfg.hidden_size, 1);
        let mfa = Mfa::new(
            Tensor::randn(0f32, 1., (k, d), &dev).expect("mu"),
            Tensor::randn(0f32, 1., (k, d, r), &dev).expect("dirs"),
            &Tensor::ones((k, r), candle_core::DType::F32, &dev).expect("sigma"),
            &Tensor::ones(d, candle_core::DType::F32, &dev).expect("psi"),
        ).expect("mfa");
        let meta = file::MfaMeta {
            header: file::KIND.header(&base),
            point: neoscope_engine::hooks::HookPoint::ResidPost(1),
            k, d, rank: r, config: None, report: None,
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let stem = dir.path().join("m");
        file::save(&stem, &mfa, &meta).expect("save");
        let (st, js) = damage_pair(&stem, &e, &b, which);
        match file::load(&stem, &base, &dev) {
            Ok((mfa, meta)) => {
                // What loads must work: the fit's derived quantities and a forward pass.
                let x = Tensor::randn(0f32, 1., (3, meta.d), &dev).expect("x");
                if let Err(err) = mfa.derive().and_then(|dv| dv.forward(&x)) {
                    prop_assert!(!err.to_string().is_empty());
                }
            }
            Err(err) => {
                let msg = err.to_string();
                prop_assert!(names_file(&msg, &[&st, &js]), "{msg}");
            }
        }
    }
}

/// A copy of the family fixture `name` in a fresh folder.
fn fixture_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(common::fixture(name).join(f), dir.path().join(f)).expect("copy");
    }
    dir
}

/// What a loaded model must be able to do: a forward pass over a short prompt.
fn runs(m: &LoadedModel) -> Result<(), String> {
    let ids = m
        .tokenizer
        .encode("hello there")
        .map_err(|e| e.to_string())?;
    let b = neoscope_engine::model::Batch::new(
        &[ids],
        neoscope_engine::model::PadSide::Right,
        &Device::Cpu,
    )
    .map_err(|e| e.to_string())?;
    m.llama
        .forward(&b, &neoscope_engine::hooks::HookSpec::default(), None)
        .map(drop)
        .map_err(|e| e.to_string())
}

proptest! {
    #![proptest_config(cases(160))]

    #[test]
    fn hf_configs_load_and_run_or_are_refused_naming_the_field(
        family in prop::sample::select(common::FAMILIES[..10].to_vec()),
        e in edit(),
    ) {
        let dir = fixture_copy(family);
        let cfg = dir.path().join("config.json");
        let mut doc: Value = serde_json::from_slice(&std::fs::read(&cfg).expect("read")).expect("json");
        let touched = apply(&mut doc, &e);
        std::fs::write(&cfg, doc.to_string()).expect("write");
        match load_model(dir.path(), &Device::Cpu) {
            // What loads runs, or stops with an error (e.g. a context of one token).
            Ok(m) => {
                if let Err(err) = runs(&m) {
                    prop_assert!(!err.is_empty());
                }
            }
            Err(err) => {
                let msg = err.to_string();
                let key = touched.trim_start_matches('/').split('/').next().unwrap_or("");
                prop_assert!(
                    msg.contains("config.json") || msg.contains(key) || msg.contains("the config gives"),
                    "{family} {touched}: {msg}"
                );
            }
        }
    }
}

/// Rewrites the GGUF fixture `name` with one metadata value replaced (or removed).
fn gguf_with(name: &str, key_pick: usize, value: Option<gguf_file::Value>, out: &Path) -> String {
    let src = common::fixture(&format!("{name}.gguf"));
    let mut f = std::fs::File::open(&src).expect("open");
    let content = gguf_file::Content::read(&mut f).expect("read gguf");
    let mut keys: Vec<&String> = content.metadata.keys().collect();
    keys.sort();
    let key = keys[key_pick % keys.len()].clone();
    let mut md: Vec<(String, gguf_file::Value)> = content
        .metadata
        .iter()
        .filter(|(k, _)| **k != key)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if let Some(v) = value {
        md.push((key.clone(), v));
    }
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = names
        .iter()
        .map(|n| {
            (
                (*n).clone(),
                content.tensor(&mut f, n, &Device::Cpu).expect("tensor"),
            )
        })
        .collect();
    let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut w = std::fs::File::create(out).expect("create");
    gguf_file::write(&mut w, &md_refs, &t_refs).expect("write gguf");
    key
}

/// The GGUF file `path` (named `m.gguf`) loads and runs, or stops with an error (e.g. a
/// context of one token); a refusal names the file. `case` describes the input in failures.
fn gguf_loads_and_runs_or_is_refused(path: &Path, case: &str) -> Result<(), TestCaseError> {
    match load_model(path, &Device::Cpu) {
        Ok(m) => {
            if let Err(err) = runs(&m) {
                prop_assert!(!err.is_empty());
            }
        }
        Err(err) => {
            let msg = err.to_string();
            prop_assert!(msg.contains("m.gguf"), "{case}: {msg}");
        }
    }
    Ok(())
}

fn gguf_value() -> impl Strategy<Value = Option<gguf_file::Value>> {
    use gguf_file::Value as V;
    prop::option::weighted(
        0.85,
        prop_oneof![
            prop_oneof![Just(0_u32), Just(1), Just(7), Just(u32::MAX), any::<u32>()]
                .prop_map(V::U32),
            prop_oneof![Just(0_u64), Just(u64::MAX), any::<u64>()].prop_map(V::U64),
            prop_oneof![Just(-1_i32), any::<i32>()].prop_map(V::I32),
            prop_oneof![
                Just(0.0_f32),
                Just(-1.0),
                Just(f32::NAN),
                Just(f32::INFINITY),
                Just(1e30),
                any::<f32>()
            ]
            .prop_map(V::F32),
            any::<bool>().prop_map(V::Bool),
            "[a-z0-9_]{0,10}".prop_map(V::String),
            prop::collection::vec(any::<u32>().prop_map(V::U32), 0..3).prop_map(V::Array),
        ],
    )
}

proptest! {
    #![proptest_config(cases(160))]

    #[test]
    fn gguf_metadata_loads_and_runs_or_is_refused_naming_the_file(
        family in prop::sample::select(vec!["gemma", "gpt2", "gemma2_cpp", "gemma3_cpp"]),
        key_pick in any::<usize>(),
        value in gguf_value(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.gguf");
        let key = gguf_with(family, key_pick, value.clone(), &path);
        gguf_loads_and_runs_or_is_refused(&path, &format!("{family} {key}={value:?}"))?;
    }

    #[test]
    fn damaged_gguf_files_are_refused_or_load_and_run(
        family in prop::sample::select(vec!["gemma", "gpt2"]),
        b in byte_edit(),
        header_only in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.gguf");
        let mut bytes = std::fs::read(common::fixture(&format!("{family}.gguf"))).expect("read");
        apply_bytes(&mut bytes, &b, if header_only { 4096 } else { 0 });
        std::fs::write(&path, &bytes).expect("write");
        gguf_loads_and_runs_or_is_refused(&path, family)?;
    }
}

/// An injection run on the tiny model with checkpoints after steps 1 and 2.
fn injection_run(m: &LoadedModel, dir: &Path) {
    use neoscope_engine::inject::session::{self, Inputs};
    use neoscope_engine::inject::train::InjectConfig;
    let forms = ["blorf", "zinter", "quaxle"];
    let corpus: String = (0..40)
        .map(|i| format!("the {} sat by the cat. ", forms[i % 3]))
        .collect();
    let inputs = Inputs {
        forms: forms.iter().map(|s| (*s).to_owned()).collect(),
        morphemes: Vec::new(),
        corpus,
        sources: vec!["test".into()],
    };
    let cfg = InjectConfig {
        init: neoscope_engine::inject::init::InitKind::Spherical,
        block_len: 8,
        steps: 2,
        micro_batch: 2,
        accum: 1,
        eval_every: 1,
        checkpoint_every: 1,
        ..InjectConfig::default()
    };
    let s = session::start(m, &inputs, &cfg, dir).expect("start");
    let mut st = s.state(dir).expect("state");
    s.train(m, dir, &mut st, None, &mut |_| true)
        .expect("train");
}

/// A from-scratch lab run folder (no checkpoint yet) on a tiny character model.
fn lab_run(dir: &Path) {
    use neoscope_api::scratch::{ScratchModelConfig, ScratchSpec, ScratchTrainConfig};
    use neoscope_engine::scratch::{run::Run, tokenize};
    let text = "to be or not to be, that is the question. ".repeat(20);
    let tok = tokenize::build(neoscope_api::scratch::TokenizerKind::Char, &text).expect("tok");
    let ids = tokenize::encode_all(&tok, &text).expect("ids");
    let spec = ScratchSpec {
        model: ScratchModelConfig {
            n_layers: 1,
            n_heads: 2,
            d_model: 8,
            d_ff: 16,
            n_ctx: 8,
            ..ScratchModelConfig::default()
        },
        train: ScratchTrainConfig {
            batch: 2,
            steps: 2,
            ..ScratchTrainConfig::default()
        },
        ..ScratchSpec::default()
    };
    Run::create(dir, spec, "test".into(), text.len(), tok, ids).expect("create");
}

proptest! {
    #![proptest_config(cases(96))]

    #[test]
    fn run_folders_open_and_continue_or_are_refused_by_name(
        e in edit(),
        b in byte_edit(),
        target in 0..4_u8,
    ) {
        use neoscope_engine::inject::session;
        let m = tiny();
        let dir = tempfile::tempdir().expect("tempdir");
        let (inj, lab) = (dir.path().join("inj"), dir.path().join("lab"));
        injection_run(&m, &inj);
        lab_run(&lab);
        // One file damaged: an injection run's run.json, its data, its last checkpoint, or a
        // lab run's run.json.
        let file = match target {
            0 => inj.join("run.json"),
            1 => inj.join("data.safetensors"),
            2 => inj.join("checkpoints/step-000002.safetensors"),
            _ => lab.join("run.json"),
        };
        damage(&file, &e, &b);
        let opened = if target < 3 {
            // What opens must continue: one more step.
            session::open(&m, &inj).and_then(|s| {
                let mut st = s.state(&inj)?;
                let next = st.step + 1;
                s.train(&m, &inj, &mut st, Some(next), &mut |_| true).map(drop)
            })
        } else {
            neoscope_engine::scratch::run::Run::open(&lab)
                .and_then(|r| r.start_state(&Device::Cpu).map(drop))
        };
        if let Err(err) = opened {
            let msg = err.to_string();
            let name = file.file_name().expect("name").to_string_lossy().into_owned();
            prop_assert!(
                msg.contains(&name) || msg.contains("steps") || msg.contains("settings"),
                "{}: {msg}",
                file.display()
            );
        }
    }
}

/// Phases 2 and 3 of the injection run in `dir` (two steps each, a checkpoint each step).
fn phases_2_and_3(m: &LoadedModel, dir: &Path) {
    use neoscope_api::align::AlignConfig;
    use neoscope_api::lora::{LoraConfig, LoraUse};
    use neoscope_engine::inject::{align, lora};
    let lc = LoraConfig {
        rank: 2,
        steps: 2,
        micro_batch: 2,
        accum: 1,
        eval_every: 1,
        checkpoint_every: 1,
        ..LoraConfig::default()
    };
    let p = lora::create(m, dir, lc, None).expect("lora");
    let mut st = p.state(&m.llama, dir, None).expect("lora state");
    p.train(&m.llama, dir, &mut st, None, &mut |_| true)
        .expect("lora train");
    let ac = AlignConfig {
        steps: 2,
        micro_batch: 2,
        accum: 1,
        eval_every: 1,
        checkpoint_every: 1,
        ..AlignConfig::default()
    };
    let p = align::create(m, dir, ac, None, LoraUse::Latest).expect("align");
    let mut st = p.state(dir, None).expect("align state");
    p.train(dir, &mut st, None, &mut |_| true)
        .expect("align train");
}

proptest! {
    #![proptest_config(cases(64))]

    #[test]
    fn phase_folders_open_and_continue_or_are_refused_by_name(
        e in edit(),
        b in byte_edit(),
        target in 0..6_u8,
    ) {
        use neoscope_engine::inject::{align, lora};
        let m = tiny();
        let dir = tempfile::tempdir().expect("tempdir");
        let inj = dir.path().join("inj");
        injection_run(&m, &inj);
        phases_2_and_3(&m, &inj);
        let file = inj.join(match target {
            0 => "lora/lora.json",
            1 => "lora/rows.safetensors",
            2 => "lora/checkpoints/step-000002.safetensors",
            3 => "align/align.json",
            4 => "align/start.safetensors",
            _ => "align/checkpoints/step-000002.safetensors",
        });
        damage(&file, &e, &b);
        // What opens must continue: one more step of each phase (phase 3 opens phase 2's
        // adapters too, so a damaged phase-2 file may be named by either).
        let opened = lora::open(&m, &inj)
            .and_then(|p| {
                let mut st = p.state(&m.llama, &inj, None)?;
                let next = st.step + 1;
                p.train(&m.llama, &inj, &mut st, Some(next), &mut |_| true).map(drop)
            })
            .and_then(|()| align::open(&m, &inj))
            .and_then(|p| {
                let mut st = p.state(&inj, None)?;
                let next = st.step + 1;
                p.train(&inj, &mut st, Some(next), &mut |_| true).map(drop)
            });
        if let Err(err) = opened {
            let msg = err.to_string();
            let name = file.file_name().expect("name").to_string_lossy().into_owned();
            prop_assert!(
                msg.contains(&name) || msg.contains("steps") || msg.contains("settings"),
                "{}: {msg}",
                file.display()
            );
        }
    }
}

/// Found by the fuzz test above on CI: a checkpoint whose hash record's key was hit and whose
/// rows hold a huge (finite) number was trained on until the next save refused the overflow.
#[test]
fn a_checkpoint_that_lost_its_hash_record_is_refused_by_name() {
    let m = tiny();
    let dir = tempfile::tempdir().expect("tempdir");
    let inj = dir.path().join("inj");
    injection_run(&m, &inj);
    let file = inj.join("checkpoints/step-000002.safetensors");
    let mut bytes = std::fs::read(&file).expect("read");
    let key = b"content_sha256";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("hash key");
    bytes[at] = b'k';
    // The last row value's exponent byte: a huge but finite number.
    let last = bytes.len() - 1;
    bytes[last] = 0x7e;
    std::fs::write(&file, &bytes).expect("write");
    let r = neoscope_engine::inject::session::open(&m, &inj).and_then(|s| {
        let mut st = s.state(&inj)?;
        let next = st.step + 1;
        s.train(&m, &inj, &mut st, Some(next), &mut |_| true)
            .map(drop)
    });
    let msg = r
        .expect_err("a damaged checkpoint must be refused")
        .to_string();
    assert!(msg.contains("step-000002.safetensors"), "{msg}");
}

//! Test helpers shared by the CLI and serve tests: running the real binary, in process or
//! against an engine served by `neoscope serve` on an ephemeral port.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]
#![allow(dead_code, reason = "each test binary uses a different part")]

pub mod ui;

use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A served engine, killed when dropped.
pub struct Server {
    child: Child,
    /// HOST:PORT it listens on.
    pub address: String,
    /// The token clients must present.
    pub token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `neoscope serve` on 127.0.0.1 with an ephemeral port; returns once it listens.
pub fn serve() -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_neoscope"))
        .args([
            "serve",
            "--json",
            "--listen",
            "127.0.0.1:0",
            "--device",
            "cpu",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    Server {
        child,
        address: v["address"].as_str().unwrap().to_owned(),
        token: v["token"].as_str().unwrap().to_owned(),
    }
}

thread_local! {
    /// The served engine this test thread's CLI calls go to (none: an engine in process).
    static SERVED: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// Runs `body` with every [`neoscope`] call of this thread going to a fresh served engine.
pub fn with_served_engine(body: impl FnOnce()) {
    let server = serve();
    SERVED.with(|s| *s.borrow_mut() = Some((server.address.clone(), server.token.clone())));
    body();
    SERVED.with(|s| *s.borrow_mut() = None);
    drop(server);
}

/// Whether this thread's CLI calls go to a served engine.
pub fn served() -> bool {
    SERVED.with(|s| s.borrow().is_some())
}

/// Runs the CLI (on this thread's served engine, if any): (success, stdout, stderr).
pub fn neoscope(args: &[&str]) -> (bool, String, String) {
    let engine = SERVED.with(|s| s.borrow().clone());
    neoscope_on(args, engine.as_ref().map(|(a, t)| (a.as_str(), t.as_str())))
}

/// Runs the CLI; `engine` is (address, token) of a served engine.
pub fn neoscope_on(args: &[&str], engine: Option<(&str, &str)>) -> (bool, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_neoscope"));
    cmd.args(args).env_remove("NEOSCOPE_ENGINE_TOKEN");
    if let Some((addr, token)) = engine {
        cmd.args(["--engine", addr])
            .env("NEOSCOPE_ENGINE_TOKEN", token);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A tiny model (seed `seed`) saved as a Hugging Face folder `dir/model`, the lexicon
/// `dir/lex.txt` (`lexicon`) and the corpus `dir/corpus.txt` (80 sentences with `blorf` and
/// `zinter`); returns the model.
pub fn tiny_inject_inputs(
    dir: &std::path::Path,
    seed: u64,
    lexicon: &str,
) -> neoscope_engine::model::LoadedModel {
    let m = neoscope_engine::tiny::tiny_model(seed, &candle_core::Device::Cpu).unwrap();
    neoscope_engine::model::save_hf_dir(&m.llama, &m.tokenizer, &dir.join("model")).unwrap();
    std::fs::write(dir.join("lex.txt"), lexicon).unwrap();
    let corpus: String = (0..80)
        .map(|i| format!("the {} sat near a cat. ", ["blorf", "zinter"][i % 2]))
        .collect();
    std::fs::write(dir.join("corpus.txt"), corpus).unwrap();
    m
}

//! The engine in another process: `neoscope serve` on an ephemeral port, the CLI connected to
//! it with `--engine`, on a tiny random model. Remote answers must equal local ones; a wrong
//! token and a garbage frame are refused with an error while other clients keep being served.

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use candle_core::Device;
use neoscope_api::wire::{self, Hello, ServerFrame, WIRE_VERSION};
use neoscope_engine::model::save_hf_dir;
use neoscope_engine::tiny::tiny_model;

use common::{neoscope_on as neoscope, serve};

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap()
}

#[test]
fn served_engine_answers_like_a_local_one_and_refuses_bad_clients() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny_model(9, &Device::Cpu).unwrap();
    save_hf_dir(&m.llama, &m.tokenizer, dir.path()).unwrap();
    let model = dir.path().to_str().unwrap();
    let server = serve();
    let remote = Some((server.address.as_str(), server.token.as_str()));

    // The same commands, locally and remotely, give the same numbers.
    let logits = [
        "logits", "--json", "--top-k", "5", "--model", model, "the cat",
    ];
    let (ok, local_out, err) = neoscope(&logits, None);
    assert!(ok, "{err}");
    let (ok, remote_out, err) = neoscope(&logits, remote);
    assert!(ok, "remote logits failed: {err}");
    assert_eq!(json(&local_out), json(&remote_out));

    let generate = [
        "generate",
        "--json",
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
        "--model",
        model,
        "the",
    ];
    let (ok, local_out, err) = neoscope(&generate, None);
    assert!(ok, "{err}");
    let (ok, remote_out, err) = neoscope(&generate, remote);
    assert!(ok, "remote generate failed: {err}");
    assert_eq!(json(&local_out)["text"], json(&remote_out)["text"]);

    // An error inside a job comes back as an error, and the engine goes on serving.
    let (ok, _, err) = neoscope(
        &["info", "--json", "--model", "/no/such/model/folder"],
        remote,
    );
    assert!(!ok);
    assert!(err.contains("/no/such/model/folder"), "{err}");

    // A wrong token is refused by name.
    let (ok, _, err) = neoscope(
        &["info", "--json", "--model", model],
        Some((&server.address, "not-the-token")),
    );
    assert!(!ok);
    assert!(err.contains("wrong engine token"), "{err}");

    // A garbage frame after a good handshake gets an error frame, then the connection closes.
    let mut raw = TcpStream::connect(&server.address).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    wire::write_frame(
        &mut raw,
        &Hello {
            version: WIRE_VERSION,
            token: server.token.clone(),
        },
    )
    .unwrap();
    let mut reader = BufReader::new(raw.try_clone().unwrap());
    let welcome: serde_json::Value = wire::read_frame(&mut reader).unwrap().unwrap();
    assert_eq!(welcome["version"], WIRE_VERSION);
    let junk = b"{not json at all";
    raw.write_all(&u32::try_from(junk.len()).unwrap().to_be_bytes())
        .unwrap();
    raw.write_all(junk).unwrap();
    match wire::read_frame::<ServerFrame>(&mut reader).unwrap() {
        Some(ServerFrame::Error(e)) => assert!(e.message.contains("malformed"), "{e}"),
        other => panic!("expected an error frame, got {other:?}"),
    }
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the connection should be closed");

    // Other clients are still served.
    let (ok, out, err) = neoscope(&["info", "--json", "--model", model], remote);
    assert!(ok, "{err}");
    assert_eq!(json(&out)["d_model"], 32);
}

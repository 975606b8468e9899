//! The tokenizer built from the GGUF metadata gives the same ids as the model's own tokenizer.
//! Expected ids in `fixtures/tokenizer_ids.json` were produced independently with
//! `python3 tests/fixtures/mkfix.py` (Hugging Face transformers' GGUF tokenizer conversion,
//! `encode(add_special_tokens=False)`), never by this code.

mod common;

#[test]
fn gguf_tokenizer_matches_reference_ids() {
    let fx: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/tokenizer_ids.json")).unwrap();
    let tok = &common::model().tokenizer;
    let cases = fx["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| u32::try_from(v.as_u64().unwrap()).unwrap())
            .collect();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, want, "ids differ for {text:?}");
        assert_eq!(
            tok.decode(&got).unwrap(),
            text,
            "decode does not round-trip {text:?}"
        );
    }
}

#[test]
fn chat_template_matches_reference() {
    let fx: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/tokenizer_ids.json")).unwrap();
    let tok = &common::model().tokenizer;
    let rendered = tok
        .apply_chat_template(
            &[neoscope_engine::tokenizer::ChatMessage::user(
                "What is a pun?",
            )],
            true,
        )
        .unwrap();
    assert_eq!(rendered, fx["chat_what_is_a_pun"].as_str().unwrap());
    let want: Vec<u64> = fx["chat_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let got: Vec<u64> = tok
        .encode_prompt("What is a pun?", true)
        .unwrap()
        .into_iter()
        .map(u64::from)
        .collect();
    assert_eq!(got, want);
    assert_eq!(tok.eos_id, Some(2));
}

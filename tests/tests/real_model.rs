//! End-to-end checks on the real default model: hooks leave logits unchanged, the lens identity
//! holds at the last layer, and generation is deterministic and sensible.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use candle_core::{Device, IndexOp, Tensor};
use neoscope_engine::hooks::{HookPoint, HookSpec, Intervention, InterventionOp, Positions};
use neoscope_engine::infer::{GenerateOptions, generate};
use neoscope_engine::model::{Batch, PadSide};
use neoscope_engine::sampling::Sampling;

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn dimensions_are_reported_with_transformer_lens_names() {
    let d = common::model().info.dims;
    assert_eq!(
        (
            d.d_model,
            d.n_layers,
            d.d_vocab,
            d.n_heads,
            d.n_kv_heads,
            d.d_head,
            d.d_mlp
        ),
        (576, 30, 49152, 9, 3, 64, 1536)
    );
    assert_eq!(
        common::model().info.sha256,
        neoscope_engine::fetch::DEFAULT_MODEL_SHA256
    );
}

#[test]
fn hooks_do_not_change_logits_and_last_layer_lens_equals_logits() {
    let m = common::model();
    let rows: Vec<Vec<u32>> = [
        "Why did the scarecrow win an award?",
        "Time flies like an arrow",
    ]
    .iter()
    .map(|t| m.tokenizer.encode(t).unwrap())
    .collect();
    let b = Batch::new(&rows, PadSide::Right, &Device::Cpu).unwrap();
    let plain = m.llama.forward(&b, &HookSpec::default(), None).unwrap();
    let last = HookPoint::ResidPost(29);
    let capture = HookSpec {
        capture: vec![
            HookPoint::Embed,
            HookPoint::ResidMid(10),
            last,
            HookPoint::LnFinal,
        ],
        interventions: vec![],
    };
    let captured = m.llama.forward(&b, &capture, None).unwrap();
    // The unhooked pass takes the hand-written CPU path: same numbers up to rounding at every
    // real position (padding positions are zero there, so only real ones are compared).
    for (row, tokens) in rows.iter().enumerate() {
        let real = |t: &Tensor| t.i(row).unwrap().narrow(0, 0, tokens.len()).unwrap();
        let diff = max_diff(&real(&plain.logits), &real(&captured.logits));
        assert!(
            diff < 2e-3,
            "row {row}: unhooked vs hooked logits differ by {diff}"
        );
    }
    let lens = m.llama.project(&captured.captures[&last]).unwrap();
    assert_eq!(max_diff(&lens, &captured.logits), 0.0);
    let zero = HookSpec {
        capture: vec![],
        interventions: vec![Intervention {
            point: HookPoint::ResidPre(12),
            positions: Positions::All,
            op: InterventionOp::Add {
                vector: vec![0.0; 576],
                scale: 10.0,
            },
        }],
    };
    let added = m.llama.forward(&b, &zero, None).unwrap();
    assert_eq!(max_diff(&captured.logits, &added.logits), 0.0);
    // Logits come for every position, not just the last.
    assert_eq!(plain.logits.dims(), &[2, b.width(), 49152]);
    assert!(
        max_diff(
            &plain.logits.i((0, 0)).unwrap(),
            &plain.logits.i((0, 1)).unwrap()
        ) > 1.0
    );
}

#[test]
fn greedy_chat_answer_is_sensible_english_and_sampling_is_seeded() {
    let m = common::model();
    let prompt = m.tokenizer.encode_prompt("What is a pun?", true).unwrap();
    let greedy = GenerateOptions {
        max_new_tokens: 40,
        sampling: Sampling::GREEDY,
        stop_at_eos: true,
    };
    let mut streamed = String::new();
    let ids = generate(m, &prompt, greedy, &HookSpec::default(), &mut |_, t| {
        streamed.push_str(t);
        true
    })
    .unwrap();
    let text = m.tokenizer.decode(&ids).unwrap();
    eprintln!("greedy answer: {text:?}");
    assert_eq!(streamed, text);
    let lower = text.to_lowercase();
    assert!(
        lower.contains("pun") || lower.contains("word") || lower.contains("joke"),
        "{text}"
    );
    let words = text.split_whitespace().count();
    let ascii = text.chars().filter(char::is_ascii).count();
    assert!(
        words >= 10 && ascii * 10 >= text.chars().count() * 9,
        "{text}"
    );

    let sampled = |seed| {
        let opts = GenerateOptions {
            max_new_tokens: 20,
            sampling: Sampling {
                temperature: 0.8,
                top_p: 0.9,
                seed,
            },
            stop_at_eos: false,
        };
        generate(m, &prompt, opts, &HookSpec::default(), &mut |_, _| true).unwrap()
    };
    assert_eq!(sampled(3), sampled(3));
}

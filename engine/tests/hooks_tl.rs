//! Hook placement against TransformerLens: `tests/fixtures/mktl.py` ran TransformerLens (its
//! TransformerBridge over the same Hugging Face checkpoints) on each family's first prompt and
//! recorded every hook Neoscope also names. Each of Neoscope's captures must equal
//! TransformerLens's value at the same name.

mod common;

use candle_core::{Device, IndexOp};
use common::{expected, fixture, max_diff, tol};
use neoscope_engine::hooks::{HookPoint, HookSpec};
use neoscope_engine::model::{Batch, PadSide, load_model};

const CASES: [&str; 9] = [
    "llama3", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2",
];

#[test]
fn hook_points_sit_where_transformer_lens_puts_them() {
    for name in CASES {
        let tl = candle_core::safetensors::load(
            fixture(&format!("{name}.tl.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let m = load_model(&fixture(name), &Device::Cpu).unwrap();
        let e = expected(name);
        let points: Vec<HookPoint> = tl.keys().map(|k| k.parse().unwrap()).collect();
        assert!(
            points.len() >= 14,
            "{name}: {} hooks recorded",
            points.len()
        );
        let spec = HookSpec {
            capture: points.clone(),
            interventions: Vec::new(),
        };
        let b = Batch::new(&e.prompts[..1], PadSide::Left, &Device::Cpu).unwrap();
        let c = m.llama.forward(&b, &spec, None).unwrap().captures;
        for p in points {
            let want = &tl[&p.to_string()];
            let got = c[&p].i(0).unwrap();
            let d = max_diff(&got, want);
            assert!(
                d < tol(want),
                "{name} {p}: differs from TransformerLens by {d}"
            );
        }
    }
}

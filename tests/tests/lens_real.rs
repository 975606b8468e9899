//! Lenses on the real default model: the logit lens at the last layer is the model's output
//! distribution on the pun prompt, and a briefly trained tuned lens (4 steps on the shipped
//! model-generated corpus, held-out KL over 32 windows) has lower held-out KL than the logit lens
//! at every layer but the last (where both are exact). Measured (printed by the test): layer 15
//! 19.71 nats (logit lens) vs 9.98 (tuned), layer 28 1.94 vs 1.56. A 200-step lens
//! (`neoscope lens train-tuned`, 13 min on 2 cores) reaches 4.85 at layer 0, 3.26 at layer 15
//! and 0.75 at layer 28.

mod common;

use candle_core::{Device, IndexOp};
use neoscope_engine::hooks::HookSpec;
use neoscope_engine::lens::{LensKind, LensSpec, resolve_targets, run};
use neoscope_engine::model::{Batch, PadSide};
use neoscope_engine::sampling::softmax;
use neoscope_engine::tuned::{self, TunedConfig};

const PUN: &str = "Why do electricians make good swimmers? Because they know the";

#[test]
fn logit_lens_last_layer_is_the_output_and_tuned_lens_lowers_kl() {
    let m = common::model();
    let ids = m.tokenizer.encode(PUN).unwrap();
    let pieces = ids.iter().map(|i| m.tokenizer.piece(*i)).collect();
    let targets = resolve_targets(m, &[" current".to_owned()]).unwrap();
    let spec = LensSpec {
        kind: LensKind::Logit,
        tuned: None,
        targets: &targets,
        top_k: 10,
    };
    let r = run(m, &ids, pieces, &HookSpec::default(), &spec).unwrap();
    assert_eq!(r.cells.len(), 30);
    let b = Batch::new(std::slice::from_ref(&ids), PadSide::Right, &Device::Cpu).unwrap();
    let logits = m
        .llama
        .forward(&b, &HookSpec::default(), None)
        .unwrap()
        .logits;
    let last = ids.len() - 1;
    let p = softmax(&logits.i((0, last)).unwrap().to_vec1::<f32>().unwrap());
    let cell = &r.cells[29][last];
    assert!(cell.kl_to_final < 1e-4);
    for t in &cell.top {
        assert!((t.prob - p[t.id as usize]).abs() < 1e-5);
    }
    let curve: Vec<f32> = r
        .cells
        .iter()
        .map(|row| row[last].targets[0].prob)
        .collect();
    eprintln!("p(' current') by layer: {curve:?}");

    let corpus = include_str!("../../assets/corpus/corpus.txt");
    let cfg = TunedConfig {
        steps: 4,
        ..TunedConfig::default()
    };
    let (_, report) = tuned::train(m, corpus, &cfg, &mut |_| true).unwrap();
    for (l, (a, b)) in report.logit_kl.iter().zip(&report.tuned_kl).enumerate() {
        eprintln!("layer {l:>2}: logit-lens KL {a:.4}  tuned-lens KL {b:.4}");
        if l < 29 {
            assert!(b < a, "layer {l}: tuned {b} ≥ logit {a}");
        }
    }
}

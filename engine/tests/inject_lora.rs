//! Phase 2 (LoRA) on the tiny model: gradients reach only the adapters and match finite
//! differences, merging gives the same logits as carrying the adapters, training lowers the
//! validation loss, resuming replays the uninterrupted run bit for bit, and another base model
//! is refused. On the `llama3` and `qwen2` fixtures, the loss and every adapter gradient match
//! PEFT's (`tests/fixtures/mklora.py`).
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::sync::Arc;

use candle_core::{Device, Tensor};
use neoscope_api::lora::{LoraConfig, LoraTarget};
use neoscope_engine::inject::lora::{self, loss_and_grads};
use neoscope_engine::inject::session::{self, Inputs};
use neoscope_engine::inject::train::{InjectConfig, InjectEvent, Stopped};
use neoscope_engine::model::lora::{Adapters, merge};
use neoscope_engine::model::{Batch, LoadedModel, PadSide, load_model};
use neoscope_engine::tiny::tiny_model;

fn inputs() -> Inputs {
    let mut corpus = String::new();
    for i in 0..60 {
        let f = ["blorf", "zinter", "quaxle", "thrum"][i % 4];
        corpus.push_str(&format!("the {f} sat by the {f} and the cat. "));
    }
    Inputs {
        forms: ["blorf", "zinter", "quaxle", "thrum"]
            .map(str::to_owned)
            .to_vec(),
        morphemes: Vec::new(),
        corpus,
        sources: vec!["test".into()],
    }
}

/// A phase-1 run of a few steps in `dir`.
fn phase1(m: &LoadedModel, dir: &std::path::Path) {
    let cfg = InjectConfig {
        init: neoscope_engine::inject::init::InitKind::Spherical,
        block_len: 16,
        steps: 4,
        micro_batch: 2,
        accum: 1,
        lr: 0.05,
        eval_every: 4,
        checkpoint_every: 2,
        ..InjectConfig::default()
    };
    let s = session::start(m, &inputs(), &cfg, dir).unwrap();
    let mut st = s.state(dir).unwrap();
    s.train(m, dir, &mut st, None, &mut |_| true).unwrap();
}

fn lora_cfg() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        lr: 1e-2,
        steps: 8,
        micro_batch: 2,
        accum: 2,
        eval_every: 4,
        checkpoint_every: 2,
        ..LoraConfig::default()
    }
}

/// Adapters with every `B` drawn too (fresh ones have `B = 0`, where `A` gets no gradient).
fn random_adapters(m: &LoadedModel) -> Adapters {
    let ad = Adapters::init(&m.llama, &LoraTarget::ALL, 3, 6.0, 7).unwrap();
    let t: Vec<Tensor> = ad
        .named()
        .iter()
        .enumerate()
        .map(|(i, (_, t))| {
            let n = t.elem_count();
            let v: Vec<f32> = (0..n)
                .map(|j| ((j * 7 + i * 13) as f32 * 0.61).sin() * 0.2)
                .collect();
            Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
        })
        .collect();
    ad.with_tensors(&t).unwrap()
}

/// Three new rows and two blocks of seven ids that use them.
fn rows_and_blocks(m: &LoadedModel, seed: f32) -> (Tensor, Vec<Vec<u32>>) {
    let d = m.llama.cfg.hidden_size;
    let rows = Tensor::from_vec(
        (0..3 * d).map(|i| (i as f32 * seed).cos() * 0.3).collect(),
        (3, d),
        &Device::Cpu,
    )
    .unwrap();
    let base = m.llama.cfg.vocab_size as u32;
    let blocks = vec![
        vec![3, base, 7, 9, base + 2, 4, base],
        vec![base + 1, 5, 2, base, 8, 6, 1],
    ];
    (rows, blocks)
}

#[test]
fn adapter_gradients_match_finite_differences() {
    let m = tiny_model(5, &Device::Cpu).unwrap();
    let (rows, blocks) = rows_and_blocks(&m, 0.3);
    let refs: Vec<&[u32]> = blocks.iter().map(Vec::as_slice).collect();
    let ad = random_adapters(&m);
    let (_, grads) = loss_and_grads(&m.llama, &rows, &ad, &refs, 1.0 / 10.0).unwrap();
    let named = ad.named();
    assert_eq!(grads.len(), named.len());
    let loss_at = |ad: &Adapters| -> f64 {
        let model = m.llama.with_adapters(Some(Arc::new(ad.clone())));
        let (nll, _) = neoscope_engine::inject::forward::nll_sum(&model, &rows, &refs).unwrap();
        f64::from(nll.to_scalar::<f32>().unwrap()) / 10.0
    };
    // A few coordinates of A and B of several projections and layers.
    let mut checked = 0;
    for (k, (name, t)) in named.iter().enumerate().step_by(2) {
        let flat: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let g: Vec<f32> = grads[k].flatten_all().unwrap().to_vec1().unwrap();
        let i = (k * 11) % flat.len();
        let h = 1e-2f32;
        let shifted = |delta: f32| {
            let mut v = flat.clone();
            v[i] += delta;
            let mut all: Vec<Tensor> = named.iter().map(|(_, t)| t.clone()).collect();
            all[k] = Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap();
            loss_at(&ad.with_tensors(&all).unwrap())
        };
        let fd = ((shifted(h) - shifted(-h)) / (2.0 * f64::from(h))) as f32;
        let an = g[i];
        assert!(
            (fd - an).abs() <= 3e-2 * an.abs().max(0.02),
            "{name}[{i}]: analytic {an} vs finite difference {fd}"
        );
        checked += 1;
    }
    assert!(checked >= 8, "{checked}");
}

#[test]
fn merged_weights_give_the_logits_of_carried_adapters() {
    let m = tiny_model(6, &Device::Cpu).unwrap();
    let ad = random_adapters(&m);
    let carried = m.llama.with_adapters(Some(Arc::new(ad.clone())));
    let merged = merge(&m.llama, &ad).unwrap();
    let batch = Batch::new(&[vec![1, 5, 9, 2, 7]], PadSide::Right, &Device::Cpu).unwrap();
    let logits = |l: &neoscope_engine::model::Llama| {
        l.forward(&batch, &Default::default(), None)
            .unwrap()
            .logits
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (a, b, base) = (logits(&carried), logits(&merged), logits(&m.llama));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "merged vs carried: {diff}");
    let moved = a
        .iter()
        .zip(&base)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(moved > 1e-2, "the adapters change nothing: {moved}");
}

#[test]
fn phase2_trains_resumes_exactly_and_refuses_another_model() {
    let m = tiny_model(3, &Device::Cpu).unwrap();
    let before: Vec<f32> = m.llama.blocks[0]
        .wq
        .dense()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();

    // Uninterrupted.
    let a = tempfile::tempdir().unwrap();
    phase1(&m, a.path());
    let p = lora::create(&m, a.path(), lora_cfg(), None).unwrap();
    assert_eq!(p.meta.rows_step, 4);
    let mut st = p.state(&m.llama, a.path(), None).unwrap();
    assert_eq!(
        p.train(&m.llama, a.path(), &mut st, None, &mut |_| true)
            .unwrap(),
        Stopped::Completed
    );
    assert_eq!(st.losses.len(), 8);
    let (v0, v1) = (st.val[0].1, st.val.last().unwrap().1);
    assert!(v1 < v0 - 0.02, "validation loss {v0} -> {v1}");
    let after: Vec<f32> = m.llama.blocks[0]
        .wq
        .dense()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(before, after, "phase 2 changed a frozen weight");
    let e = lora::create(&m, a.path(), lora_cfg(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already has a LoRA phase"), "{e}");

    // Stopped after step 3, resumed from disk.
    let b = tempfile::tempdir().unwrap();
    phase1(&m, b.path());
    let p = lora::create(&m, b.path(), lora_cfg(), None).unwrap();
    let mut sb = p.state(&m.llama, b.path(), None).unwrap();
    let stop = p
        .train(&m.llama, b.path(), &mut sb, None, &mut |e| {
            !matches!(e, InjectEvent::Step { step: 3, .. })
        })
        .unwrap();
    assert_eq!(stop, Stopped::Cancelled);
    let p = lora::open(&m, b.path()).unwrap();
    let mut resumed = p.state(&m.llama, b.path(), None).unwrap();
    assert_eq!(resumed.step, 3);
    p.train(&m.llama, b.path(), &mut resumed, None, &mut |_| true)
        .unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&resumed.losses),
        bits(&st.losses),
        "loss curves differ"
    );
    assert_eq!(resumed.val, st.val);
    for ((n, x), (_, y)) in st.adapters.named().iter().zip(resumed.adapters.named()) {
        let (x, y): (Vec<f32>, Vec<f32>) = (
            x.flatten_all().unwrap().to_vec1().unwrap(),
            y.flatten_all().unwrap().to_vec1().unwrap(),
        );
        assert_eq!(bits(&x), bits(&y), "{n} differs after resume");
    }

    // Another base model is refused, and so are settings that cannot work.
    let other = tiny_model(4, &Device::Cpu).unwrap();
    let e = lora::open(&other, a.path()).unwrap_err().to_string();
    assert!(e.contains("was made for the model"), "{e}");
    let c = tempfile::tempdir().unwrap();
    phase1(&m, c.path());
    for (bad, want) in [
        (
            LoraConfig {
                dropout: 1.0,
                ..lora_cfg()
            },
            "dropout",
        ),
        (
            LoraConfig {
                rank: 0,
                ..lora_cfg()
            },
            "rank",
        ),
        (
            LoraConfig {
                steps: 0,
                ..lora_cfg()
            },
            "steps",
        ),
    ] {
        let e = lora::create(&m, c.path(), bad, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
    let e = lora::create(&m, c.path(), lora_cfg(), Some(3))
        .unwrap_err()
        .to_string();
    assert!(e.contains("step"), "{e}");
    assert!(!lora::folder(c.path()).join("lora.json").exists());
}

#[test]
fn loss_and_adapter_gradients_match_peft() {
    for name in ["llama3", "qwen2"] {
        let m = load_model(&common::fixture(name), &Device::Cpu).unwrap();
        let f = candle_core::safetensors::load(
            common::fixture(&format!("{name}.lora.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let rows = f["row"].unsqueeze(0).unwrap();
        let ids: Vec<Vec<u32>> = f["ids"]
            .to_vec2::<i64>()
            .unwrap()
            .into_iter()
            .map(|r| r.into_iter().map(|x| u32::try_from(x).unwrap()).collect())
            .collect();
        let refs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let template = Adapters::init(&m.llama, &LoraTarget::ALL, 4, 8.0, 0).unwrap();
        let names: Vec<String> = template.named().into_iter().map(|(n, _)| n).collect();
        let tensors: Vec<Tensor> = names.iter().map(|n| f[n.as_str()].clone()).collect();
        let ad = template.with_tensors(&tensors).unwrap();
        let n = ids.len() * (ids[0].len() - 1);
        let (loss, grads) = loss_and_grads(&m.llama, &rows, &ad, &refs, 1.0 / n as f64).unwrap();
        let want = f["loss"].to_vec1::<f32>().unwrap()[0];
        assert!(
            (loss - want).abs() < 1e-4,
            "{name}: loss {loss} vs PEFT {want}"
        );
        for (n, g) in names.iter().zip(&grads) {
            let w = &f[format!("grad.{n}").as_str()];
            common::assert_close(&format!("{name} {n}"), g, w, 1e-4);
        }
    }
}

#[test]
fn hand_written_pass_matches_autograd_dropout_included() {
    let m = tiny_model(8, &Device::Cpu).unwrap();
    assert!(neoscope_engine::inject::fast_pass::supported(&m.llama));
    let (rows, blocks) = rows_and_blocks(&m, 0.7);
    let refs: Vec<&[u32]> = blocks.iter().map(Vec::as_slice).collect();
    for p in [0.0, 0.3] {
        let mut ad = random_adapters(&m);
        ad.dropout = Some(neoscope_engine::model::lora::Dropout { p, seed: 99 });
        let (l1, g1) = loss_and_grads(&m.llama, &rows, &ad, &refs, 0.1).unwrap();
        let (l2, g2) = lora::loss_and_grads_autograd(&m.llama, &rows, &ad, &refs, 0.1).unwrap();
        assert!(
            (l1 - l2).abs() < 1e-4 * l2.abs(),
            "p {p}: loss {l1} vs {l2}"
        );
        for ((n, _), (a, b)) in ad.named().iter().zip(g1.iter().zip(&g2)) {
            common::assert_close(&format!("p {p}, {n}"), a, b, 1e-4);
        }
    }
}

#[test]
fn hand_written_row_gradient_matches_autograd() {
    let m = tiny_model(9, &Device::Cpu).unwrap();
    let (rows, blocks) = rows_and_blocks(&m, 0.41);
    let refs: Vec<&[u32]> = blocks.iter().map(Vec::as_slice).collect();
    let (l1, g1) =
        neoscope_engine::inject::fast_pass::loss_and_row_grads(&m.llama, &rows, &refs, 0.1)
            .unwrap();
    let var = candle_core::Var::from_tensor(&rows).unwrap();
    let (nll, _) =
        neoscope_engine::inject::forward::nll_sum(&m.llama, var.as_tensor(), &refs).unwrap();
    let l = (nll * 0.1).unwrap();
    let g2 = l.backward().unwrap().remove(var.as_tensor()).unwrap();
    let l2 = l.to_scalar::<f32>().unwrap();
    assert!((l1 - l2).abs() < 1e-4 * l2.abs(), "loss {l1} vs {l2}");
    // The forward-only pass (validation) gives the same loss.
    let l3 = neoscope_engine::inject::fast_pass::nll(&m.llama, &rows, None, &refs).unwrap() * 0.1;
    assert!((l3 - l2).abs() < 1e-4 * l2.abs(), "loss {l3} vs {l2}");
    assert!(common::max_abs(&g2) > 1e-3);
    common::assert_close("row gradient", &g1, &g2, 1e-4);
}

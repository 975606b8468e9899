//! Engine integration tests on a tiny random-weight Llama built in code (fixed seed): the real
//! Hugging Face loader, hooks, interventions, the KV cache and generation.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use candle_core::{Device, IndexOp, Tensor};
use neoscope_engine::hooks::{HookPoint, HookSpec, Intervention, InterventionOp, Positions};
use neoscope_engine::infer::{GenerateOptions, generate};
use neoscope_engine::model::decode::Decoder;
use neoscope_engine::model::save_hf_dir;
use neoscope_engine::model::{Batch, KvCache, LoadedModel, PadSide, load_model};
use neoscope_engine::sampling::Sampling;
use neoscope_engine::tiny::tiny_model;

mod common;
use common::max_diff;

fn tiny() -> LoadedModel {
    tiny_model(42, &Device::Cpu).unwrap()
}

fn batch(m: &LoadedModel, texts: &[&str]) -> Batch {
    let rows: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| m.tokenizer.encode(t).unwrap())
        .collect();
    Batch::new(&rows, PadSide::Right, &Device::Cpu).unwrap()
}

#[test]
fn saved_hf_directory_reloads_with_identical_logits() {
    let m = tiny();
    let dir = tempfile::tempdir().unwrap();
    save_hf_dir(&m.llama, &m.tokenizer, dir.path()).unwrap();
    let r = load_model(dir.path(), &Device::Cpu).unwrap();
    assert_eq!(r.info.format, "hf");
    assert_eq!(r.info.dims, m.info.dims);
    let text = "the cat and the hat";
    assert_eq!(
        r.tokenizer.encode(text).unwrap(),
        m.tokenizer.encode(text).unwrap()
    );
    let b = batch(&m, &[text, "an ant"]);
    let a = m
        .llama
        .forward(&b, &HookSpec::default(), None)
        .unwrap()
        .logits;
    let c = r
        .llama
        .forward(&b, &HookSpec::default(), None)
        .unwrap()
        .logits;
    assert_eq!(max_diff(&a, &c), 0.0);
}

#[test]
fn bad_hf_directory_is_reported_with_its_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 8}").unwrap();
    let err = load_model(dir.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    let err = load_model(&dir.path().join("missing.gguf"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.gguf"), "{err}");
}

#[test]
fn captures_and_zero_additions_leave_logits_bit_identical() {
    let m = tiny();
    let b = batch(&m, &["the then", "and an ant the"]);
    // A capture alone keeps the forward pass on candle's hooked path (an unhooked pass takes
    // the hand-written one, compared separately below).
    let capture_only = HookSpec {
        capture: vec![HookPoint::LnFinal],
        interventions: vec![],
    };
    let plain = m.llama.forward(&b, &capture_only, None).unwrap();
    let all_points: Vec<HookPoint> = std::iter::once(HookPoint::Embed)
        .chain((0..2).flat_map(|l| {
            [
                HookPoint::ResidPre(l),
                HookPoint::ResidMid(l),
                HookPoint::ResidPost(l),
            ]
        }))
        .chain(std::iter::once(HookPoint::LnFinal))
        .collect();
    let spec = HookSpec {
        capture: all_points.clone(),
        interventions: vec![Intervention {
            point: HookPoint::ResidMid(0),
            positions: Positions::All,
            op: InterventionOp::Add {
                vector: vec![0.0; 32],
                scale: 3.0,
            },
        }],
    };
    let hooked = m.llama.forward(&b, &spec, None).unwrap();
    assert_eq!(max_diff(&plain.logits, &hooked.logits), 0.0);
    assert_eq!(hooked.captures.len(), all_points.len());
    // resid_pre(l+1) is resid_post(l); the last resid_post projected is the logits.
    assert_eq!(
        max_diff(
            &hooked.captures[&HookPoint::ResidPost(0)],
            &hooked.captures[&HookPoint::ResidPre(1)]
        ),
        0.0
    );
    let projected = m
        .llama
        .project(&hooked.captures[&HookPoint::ResidPost(1)])
        .unwrap();
    assert_eq!(max_diff(&projected, &plain.logits), 0.0);
}

#[test]
fn unhooked_pass_matches_the_hooked_pass_at_every_real_position() {
    let m = tiny();
    let capture_only = HookSpec {
        capture: vec![HookPoint::LnFinal],
        interventions: vec![],
    };
    let texts = ["the then", "and an ant the cat sat", "a"];
    let rows: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| m.tokenizer.encode(t).unwrap())
        .collect();
    for side in [PadSide::Right, PadSide::Left] {
        let b = Batch::new(&rows, side, &Device::Cpu).unwrap();
        let fast = m
            .llama
            .forward(&b, &HookSpec::default(), None)
            .unwrap()
            .logits;
        let hooked = m.llama.forward(&b, &capture_only, None).unwrap().logits;
        assert_eq!(fast.dims(), hooked.dims());
        let mut compared = 0;
        for (r, valid) in b.valid.iter().enumerate() {
            for (c, v) in valid.iter().enumerate() {
                let f = fast.i((r, c)).unwrap();
                if *v {
                    let d = max_diff(&f, &hooked.i((r, c)).unwrap());
                    assert!(d < 1e-4, "{side:?} row {r} position {c}: differs by {d}");
                    compared += 1;
                } else {
                    let z = f
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert_eq!(z, 0.0, "padding carries logits of zero");
                }
            }
        }
        assert_eq!(compared, rows.iter().map(Vec::len).sum::<usize>());
    }
}

#[test]
fn intervention_at_layer_leaves_earlier_layers_and_other_positions_unchanged() {
    let m = tiny();
    let b = batch(&m, &["the cat sat on the mat"]);
    let capture: Vec<HookPoint> = (0..2).map(HookPoint::ResidPost).collect();
    let base = m
        .llama
        .forward(
            &b,
            &HookSpec {
                capture: capture.clone(),
                interventions: vec![],
            },
            None,
        )
        .unwrap();
    let v: Vec<f32> = (0..32)
        .map(|i| if i % 3 == 0 { 1.5 } else { -0.5 })
        .collect();
    let spec = HookSpec {
        capture,
        interventions: vec![Intervention {
            point: HookPoint::ResidPre(1),
            positions: Positions::Columns(vec![3]),
            op: InterventionOp::Replace(v.clone()),
        }],
    };
    let hooked = m.llama.forward(&b, &spec, None).unwrap();
    let p0 = HookPoint::ResidPost(0);
    let p1 = HookPoint::ResidPost(1);
    assert_eq!(max_diff(&base.captures[&p0], &hooked.captures[&p0]), 0.0);
    // Causal: positions before 3 are untouched at every layer; 3 and later change.
    let before = |t: &Tensor| t.i((0, 0..3)).unwrap();
    assert_eq!(
        max_diff(&before(&base.captures[&p1]), &before(&hooked.captures[&p1])),
        0.0
    );
    assert!(max_diff(&base.captures[&p1], &hooked.captures[&p1]) > 1e-3);
    // Interpolation with α = 1 equals replacement; α = 0 is the identity.
    let interp = |alpha: f32| HookSpec {
        capture: vec![],
        interventions: vec![Intervention {
            point: HookPoint::ResidPre(1),
            positions: Positions::Columns(vec![3]),
            op: InterventionOp::Interpolate {
                target: v.clone(),
                alpha,
            },
        }],
    };
    let one = m.llama.forward(&b, &interp(1.0), None).unwrap().logits;
    assert!(max_diff(&one, &hooked.logits) < 1e-5);
    let zero = m.llama.forward(&b, &interp(0.0), None).unwrap().logits;
    assert_eq!(max_diff(&zero, &base.logits), 0.0);
}

#[test]
fn bad_interventions_are_refused_with_a_reason() {
    let m = tiny();
    let b = batch(&m, &["the"]);
    let spec = HookSpec {
        capture: vec![HookPoint::ResidPost(5)],
        interventions: vec![],
    };
    let err = m.llama.forward(&b, &spec, None).unwrap_err().to_string();
    assert!(err.contains("blocks.5.hook_resid_post"), "{err}");
    let spec = HookSpec {
        capture: vec![],
        interventions: vec![Intervention {
            point: HookPoint::Embed,
            positions: Positions::All,
            op: InterventionOp::Replace(vec![1.0; 7]),
        }],
    };
    let err = m.llama.forward(&b, &spec, None).unwrap_err().to_string();
    assert!(err.contains("7 values"), "{err}");
}

#[test]
fn kv_cache_matches_full_forward() {
    let m = tiny();
    let ids = m.tokenizer.encode("the cat and the ant then").unwrap();
    let full = Batch::new(std::slice::from_ref(&ids), PadSide::Right, &Device::Cpu).unwrap();
    let want = m
        .llama
        .forward(&full, &HookSpec::default(), None)
        .unwrap()
        .logits;
    let mut cache = KvCache::new(2);
    let split = 4;
    let first = Batch::new(&[ids[..split].to_vec()], PadSide::Right, &Device::Cpu).unwrap();
    m.llama
        .forward(&first, &HookSpec::default(), Some(&mut cache))
        .unwrap();
    for (i, id) in ids.iter().enumerate().skip(split) {
        let step = Batch::new(&[vec![*id]], PadSide::Right, &Device::Cpu).unwrap();
        let got = m
            .llama
            .forward(&step, &HookSpec::default(), Some(&mut cache))
            .unwrap();
        let d = max_diff(&got.logits.i((0, 0)).unwrap(), &want.i((0, i)).unwrap());
        assert!(d < 1e-5, "position {i}: {d}");
    }
}

/// The hand-written decoder (generation's path when nothing is hooked) gives the candle
/// cache's logits at every step: a 4-token prompt, then one token at a time.
#[test]
fn hand_written_decoder_matches_the_candle_cache() {
    let m = tiny();
    let ids = m.tokenizer.encode("the cat and the ant then").unwrap();
    let mut cache = KvCache::new(2);
    let mut dec = Decoder::new(&m.llama).unwrap();
    let split = 4;
    let mut steps = vec![ids[..split].to_vec()];
    steps.extend(ids[split..].iter().map(|id| vec![*id]));
    for step in &steps {
        let b = Batch::new(std::slice::from_ref(step), PadSide::Right, &Device::Cpu).unwrap();
        let want = m
            .llama
            .forward(&b, &HookSpec::default(), Some(&mut cache))
            .unwrap()
            .logits
            .i((0, step.len() - 1))
            .unwrap();
        let got = Tensor::new(dec.step(step).unwrap(), &Device::Cpu).unwrap();
        let d = max_diff(&got, &want);
        assert!(d < 1e-5, "after {} positions: {d}", dec.len());
    }
    assert_eq!(dec.len(), ids.len());
    assert!(dec.step(&[]).is_err(), "an empty step is refused");
}

#[test]
fn left_and_right_padding_give_the_same_logits_per_row() {
    let m = tiny();
    let rows: Vec<Vec<u32>> = ["the cat", "and the ant then and"]
        .iter()
        .map(|t| m.tokenizer.encode(t).unwrap())
        .collect();
    let r = Batch::new(&rows, PadSide::Right, &Device::Cpu).unwrap();
    let l = Batch::new(&rows, PadSide::Left, &Device::Cpu).unwrap();
    let lr = m
        .llama
        .forward(&r, &HookSpec::default(), None)
        .unwrap()
        .logits;
    let ll = m
        .llama
        .forward(&l, &HookSpec::default(), None)
        .unwrap()
        .logits;
    for (row, ids) in rows.iter().enumerate() {
        let pad = l.width() - ids.len();
        for t in 0..ids.len() {
            let d = max_diff(&lr.i((row, t)).unwrap(), &ll.i((row, pad + t)).unwrap());
            assert!(d < 1e-5, "row {row} pos {t}: {d}");
        }
    }
}

#[test]
fn seeded_generation_is_deterministic_and_greedy_matches_argmax() {
    let m = tiny();
    let prompt = m.tokenizer.encode("the cat").unwrap();
    let sampled = |seed| {
        let opts = GenerateOptions {
            max_new_tokens: 12,
            sampling: Sampling {
                temperature: 1.0,
                top_p: 0.95,
                seed,
            },
            stop_at_eos: false,
        };
        generate(&m, &prompt, opts, &HookSpec::default(), &mut |_, _| true).unwrap()
    };
    assert_eq!(sampled(1), sampled(1));
    assert_ne!(sampled(1), sampled(2));
    let opts = GenerateOptions {
        max_new_tokens: 5,
        sampling: Sampling::GREEDY,
        stop_at_eos: false,
    };
    let mut streamed = Vec::new();
    let greedy = generate(&m, &prompt, opts, &HookSpec::default(), &mut |id, _| {
        streamed.push(id);
        true
    })
    .unwrap();
    assert_eq!(greedy, streamed);
    // Each greedy token is the arg-max of a full (cache-free) forward over the sequence so far.
    let mut seq = prompt.clone();
    for id in &greedy {
        let b = Batch::new(std::slice::from_ref(&seq), PadSide::Right, &Device::Cpu).unwrap();
        let logits = m
            .llama
            .forward(&b, &HookSpec::default(), None)
            .unwrap()
            .logits;
        let row = logits
            .i((0, seq.len() - 1))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(neoscope_engine::sampling::argmax(&row), *id);
        seq.push(*id);
    }
    // Stopping from the callback ends generation early.
    let stopped = generate(&m, &prompt, opts, &HookSpec::default(), &mut |_, _| false).unwrap();
    assert_eq!(stopped.len(), 1);
}

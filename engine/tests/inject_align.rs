//! Phase 3 (alignment): on the `llama3` and `qwen2` fixtures the objective, its four terms, the
//! gradient and three steps of Adafactor and of AdamW match PyTorch + transformers
//! (`tests/fixtures/mkalign.py`); on the tiny model the regularisers' gradient matches finite
//! differences, training lowers the objective with the model frozen, resuming replays the
//! uninterrupted run bit for bit, adapters from phase 2 are used, and another base model and
//! bad settings are refused.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use candle_core::{DType, Device, Tensor};
use neoscope_api::align::{AlignConfig, AlignOptimizer};
use neoscope_api::lora::{LoraConfig, LoraUse};
use neoscope_engine::inject::align;
use neoscope_engine::inject::align_terms::{NormBand, Targets, pairs, terms_and_grad};
use neoscope_engine::inject::align_train::objective;
use neoscope_engine::inject::lexicon::{Affix, Morpheme};
use neoscope_engine::inject::optim::{self, Factored};
use neoscope_engine::inject::session::{self, Inputs};
use neoscope_engine::inject::train::{InjectConfig, InjectEvent, Stopped};
use neoscope_engine::model::{LoadedModel, load_model};
use neoscope_engine::tiny::tiny_model;

fn vec2(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2().unwrap()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn objective_and_both_optimisers_match_pytorch() {
    for name in ["llama3", "qwen2"] {
        let m = load_model(&common::fixture(name), &Device::Cpu).unwrap();
        let f = candle_core::safetensors::load(
            common::fixture(&format!("{name}.align.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let g = |k: &str| f.get(k).unwrap().clone();
        let f64s = |k: &str| -> Vec<f64> { g(k).to_vec1().unwrap() };
        let (lambdas, band) = (f64s("lambdas"), f64s("band"));
        let cfg = AlignConfig {
            lambda_morpheme: lambdas[0],
            lambda_repulsion: lambdas[1],
            lambda_norm: lambdas[2],
            repulsion_threshold: f64s("threshold")[0],
            ..AlignConfig::default()
        };
        let targets = Targets {
            morph_idx: Some(g("morph_idx").to_dtype(DType::U32).unwrap()),
            morph_mean: Some(g("morph_mean")),
            norms: NormBand {
                mean: band[0],
                std: band[1],
            },
        };
        let p: Vec<(u32, u32)> = g("pairs")
            .to_vec2::<i64>()
            .unwrap()
            .iter()
            .map(|r| (r[0] as u32, r[1] as u32))
            .collect();
        let ids: Vec<Vec<u32>> = g("ids")
            .to_vec2::<i64>()
            .unwrap()
            .iter()
            .map(|r| r.iter().map(|x| *x as u32).collect())
            .collect();
        let blocks: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
        let (lrs, wd) = (f64s("lrs"), f64s("weight_decay")[0]);
        for opt in ["adafactor", "adamw"] {
            let totals: Vec<f32> = g(&format!("{opt}.total")).to_vec1().unwrap();
            let terms = vec2(&g(&format!("{opt}.terms")));
            let after = g(&format!("{opt}.rows"));
            let mut rows = g("start");
            let mut fac = Factored::zeros(&rows).unwrap();
            let (mut am, mut av) = (rows.zeros_like().unwrap(), rows.zeros_like().unwrap());
            for (k, lr) in lrs.iter().enumerate() {
                let (t, grad) = objective(&m.llama, &targets, &cfg, &rows, &blocks, 1, &p).unwrap();
                let mine = [t.lm, t.morpheme, t.repulsion, t.norm];
                for (j, (a, b)) in mine.iter().zip(&terms[k]).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                        "{name} {opt} step {k} term {j}: {a} vs PyTorch {b}"
                    );
                }
                let total = neoscope_engine::inject::align_terms::total(&t, &cfg);
                assert!((total - totals[k]).abs() < 1e-4, "{name} {opt} step {k}");
                if k == 0 {
                    let want = vec2(&g(&format!("{opt}.grad")));
                    let d = max_diff(&vec2(&grad), &want);
                    assert!(d < 1e-5, "{name} {opt}: gradient differs by {d}");
                }
                let norm = f64::from(
                    grad.sqr()
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .sqrt()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap(),
                );
                let grad = if norm > 1.0 {
                    (grad / norm).unwrap()
                } else {
                    grad
                };
                rows = if opt == "adafactor" {
                    optim::adafactor(&rows, &grad, &mut fac, k + 1, *lr, wd).unwrap()
                } else {
                    optim::adamw(&rows, &grad, &mut am, &mut av, k + 1, *lr, 1e-8, wd).unwrap()
                };
                let want = vec2(&after.get(k).unwrap());
                let d = max_diff(&vec2(&rows), &want);
                assert!(d < 1e-5, "{name} {opt} step {k}: rows differ by {d}");
            }
        }
    }
}

fn tiny_targets(m: &LoadedModel, n: usize) -> Targets {
    let d = m.llama.cfg.hidden_size;
    Targets {
        morph_idx: Some(Tensor::new(&[0u32, 2], &Device::Cpu).unwrap()),
        morph_mean: Some(
            Tensor::from_vec(
                (0..2 * d).map(|i| (i as f32 * 0.37).sin() * 0.2).collect(),
                (2, d),
                &Device::Cpu,
            )
            .unwrap(),
        ),
        norms: NormBand {
            mean: 0.5 * (n as f64).sqrt(),
            std: 0.1,
        },
    }
}

#[test]
fn regulariser_gradients_match_finite_differences() {
    let m = tiny_model(5, &Device::Cpu).unwrap();
    let d = m.llama.cfg.hidden_size;
    let n = 4;
    let rows: Vec<f32> = (0..n * d).map(|i| (i as f32 * 0.23).cos() * 0.4).collect();
    // Rows 1 and 3 nearly parallel, so the repulsion hinge is active for that pair.
    let mut rows = rows;
    for j in 0..d {
        rows[3 * d + j] = rows[d + j] * 1.1 + 0.01 * (j as f32).sin();
    }
    let t = tiny_targets(&m, d);
    let cfg = AlignConfig {
        lambda_morpheme: 1.0,
        lambda_repulsion: 2.0,
        lambda_norm: 0.5,
        repulsion_threshold: 0.9,
        ..AlignConfig::default()
    };
    let p = vec![(1, 3), (0, 2), (3, 1)];
    let at = |v: &[f32]| Tensor::from_vec(v.to_vec(), (n, d), &Device::Cpu).unwrap();
    let (terms, g) = terms_and_grad(&at(&rows), &t, &cfg, &p).unwrap();
    assert!(
        terms.morpheme > 0.0 && terms.repulsion > 0.0 && terms.norm > 0.0,
        "{terms:?}"
    );
    let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
    let value = |v: &[f32]| -> f64 {
        let (t, _) = terms_and_grad(&at(v), &tiny_targets(&m, d), &cfg, &p).unwrap();
        f64::from(neoscope_engine::inject::align_terms::total(&t, &cfg))
    };
    for i in (0..n * d).step_by(7) {
        let h = 1e-3f32;
        let mut up = rows.clone();
        up[i] += h;
        let mut down = rows.clone();
        down[i] -= h;
        let fd = ((value(&up) - value(&down)) / (2.0 * f64::from(h))) as f32;
        assert!(
            (fd - g[i]).abs() <= 2e-2 * g[i].abs().max(0.01),
            "row {} dim {}: analytic {} vs finite difference {fd}",
            i / d,
            i % d,
            g[i]
        );
    }
    // Pairs are distinct rows, and a function of (seed, step).
    let a = pairs(7, 3, 5, 50);
    assert!(a.iter().all(|(i, j)| i != j && *i < 5 && *j < 5));
    assert_eq!(a, pairs(7, 3, 5, 50));
    assert_ne!(a, pairs(7, 4, 5, 50));
}

fn inputs() -> Inputs {
    let forms = ["unblorf", "zinterment", "quaxle", "unthrumment"];
    let mut corpus = String::new();
    for i in 0..60 {
        let f = forms[i % 4];
        corpus.push_str(&format!("the {f} sat by the {f} and the cat. "));
    }
    let morph = |affix, text: &str| Morpheme {
        affix,
        text: text.into(),
        examples: Vec::new(),
    };
    Inputs {
        forms: forms.map(str::to_owned).to_vec(),
        morphemes: vec![morph(Affix::Prefix, "un"), morph(Affix::Suffix, "ment")],
        corpus,
        sources: vec!["test".into()],
    }
}

fn phase1(m: &LoadedModel, dir: &std::path::Path) {
    let cfg = InjectConfig {
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

fn align_cfg(optimizer: AlignOptimizer) -> AlignConfig {
    AlignConfig {
        optimizer,
        lambda_morpheme: 100.0,
        lr: 0.02,
        steps: 8,
        micro_batch: 2,
        accum: 2,
        eval_every: 4,
        checkpoint_every: 2,
        ..AlignConfig::default()
    }
}

#[test]
fn phase3_trains_resumes_exactly_and_refuses_another_model() {
    let m = tiny_model(3, &Device::Cpu).unwrap();
    let embed_before: Vec<f32> = m.llama.embed.flatten_all().unwrap().to_vec1().unwrap();
    for opt in [AlignOptimizer::Adafactor, AlignOptimizer::AdamW] {
        // Uninterrupted.
        let a = tempfile::tempdir().unwrap();
        phase1(&m, a.path());
        let p = align::create(&m, a.path(), align_cfg(opt), None, LoraUse::None).unwrap();
        assert_eq!((p.meta.rows_step, p.meta.lora_step), (4, None));
        assert!(p.meta.morpheme_forms >= 2, "{}", p.meta.morpheme_forms);
        let mut st = p.state(a.path(), None).unwrap();
        let stopped = p.train(a.path(), &mut st, None, &mut |_| true).unwrap();
        assert_eq!(stopped, Stopped::Completed);
        assert_eq!((st.losses.len(), st.terms.len()), (8, 8));
        let (l0, l1) = (st.losses[0], st.losses[7]);
        assert!(l1 < l0, "{opt:?}: objective {l0} -> {l1}");
        // The morpheme term pulls the split forms toward their parts: without it they end
        // farther away.
        let z = tempfile::tempdir().unwrap();
        phase1(&m, z.path());
        let free = AlignConfig {
            lambda_morpheme: 0.0,
            ..align_cfg(opt)
        };
        let pz = align::create(&m, z.path(), free, None, LoraUse::None).unwrap();
        let mut sz = pz.state(z.path(), None).unwrap();
        pz.train(z.path(), &mut sz, None, &mut |_| true).unwrap();
        let (with, without) = (st.terms[7].morpheme, sz.terms[7].morpheme);
        assert!(
            with < 0.9 * without,
            "{opt:?}: L_morpheme at the end {with} with the term, {without} without"
        );

        // Stopped after step 3, resumed from disk: the same run bit for bit.
        let b = tempfile::tempdir().unwrap();
        phase1(&m, b.path());
        let p = align::create(&m, b.path(), align_cfg(opt), None, LoraUse::None).unwrap();
        let mut sb = p.state(b.path(), None).unwrap();
        let stop = p
            .train(b.path(), &mut sb, None, &mut |e| {
                !matches!(e, InjectEvent::Step { step: 3, .. })
            })
            .unwrap();
        assert_eq!(stop, Stopped::Cancelled);
        let p = align::open(&m, b.path()).unwrap();
        let mut resumed = p.state(b.path(), None).unwrap();
        assert_eq!(resumed.step, 3);
        p.train(b.path(), &mut resumed, None, &mut |_| true)
            .unwrap();
        let bits = |t: &Tensor| -> Vec<u32> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect()
        };
        assert_eq!(
            bits(&resumed.rows),
            bits(&st.rows),
            "{opt:?}: rows after resume"
        );
        assert_eq!(resumed.losses, st.losses);
        assert_eq!(resumed.terms, st.terms);
        assert_eq!(resumed.val, st.val);

        // Another base model is refused.
        let other = tiny_model(4, &Device::Cpu).unwrap();
        let e = align::open(&other, a.path()).unwrap_err().to_string();
        assert!(e.contains("was made for the model"), "{e}");
        let e = align::create(&m, a.path(), align_cfg(opt), None, LoraUse::None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("already has an alignment phase"), "{e}");
    }
    let after: Vec<f32> = m.llama.embed.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(embed_before, after, "phase 3 changed the base embedding");

    // Bad settings are refused before anything is written.
    let c = tempfile::tempdir().unwrap();
    phase1(&m, c.path());
    for (bad, want) in [
        (
            AlignConfig {
                lambda_norm: -1.0,
                ..AlignConfig::default()
            },
            "λ",
        ),
        (
            AlignConfig {
                repulsion_threshold: 1.5,
                ..AlignConfig::default()
            },
            "threshold",
        ),
    ] {
        let e = align::create(&m, c.path(), bad, None, LoraUse::None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{e}");
    }
    assert!(!c.path().join("align").join("align.json").exists());
    let e = align::create(&m, c.path(), AlignConfig::default(), None, LoraUse::Latest)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no phase-2 checkpoint"), "{e}");
}

#[test]
fn phase3_under_phase2_adapters_starts_from_their_rows() {
    let m = tiny_model(3, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    phase1(&m, dir.path());
    let lc = LoraConfig {
        rank: 2,
        alpha: 4.0,
        lr: 1e-2,
        steps: 2,
        micro_batch: 2,
        accum: 1,
        eval_every: 2,
        checkpoint_every: 2,
        ..LoraConfig::default()
    };
    let lp = neoscope_engine::inject::lora::create(&m, dir.path(), lc, Some(2)).unwrap();
    let mut ls = lp.state(&m.llama, dir.path(), None).unwrap();
    lp.train(&m.llama, dir.path(), &mut ls, None, &mut |_| true)
        .unwrap();
    let e = align::create(
        &m,
        dir.path(),
        align_cfg(AlignOptimizer::Adafactor),
        Some(4),
        LoraUse::Latest,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("leave the rows step out"), "{e}");
    let p = align::create(
        &m,
        dir.path(),
        align_cfg(AlignOptimizer::Adafactor),
        None,
        LoraUse::Latest,
    )
    .unwrap();
    assert_eq!((p.meta.rows_step, p.meta.lora_step), (2, Some(2)));
    let st = p.state(dir.path(), None).unwrap();
    let same = st
        .rows
        .sub(&lp.rows)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(same, 0.0, "phase 3 must start from phase 2's rows");
    // The model it trains under is the merged one: its validation loss at step 0 is phase 2's.
    let mut st = st;
    p.train(dir.path(), &mut st, Some(2), &mut |_| true)
        .unwrap();
    let v0 = st.val[0].1;
    let want = ls.val.last().unwrap().1;
    assert!((v0 - want).abs() < 1e-4, "{v0} vs phase 2's {want}");
}

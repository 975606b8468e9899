//! Vocabulary injection on the tiny model: gradients into the new rows are right, training
//! leaves the base matrix bit-identical, lowers validation loss, and resuming from a checkpoint
//! replays the uninterrupted run exactly.

use candle_core::{Device, Tensor, Var};
use neoscope_engine::inject::forward::nll_sum;
use neoscope_engine::inject::init::InitKind;
use neoscope_engine::inject::lexicon::{Affix, Morpheme};
use neoscope_engine::inject::run;
use neoscope_engine::inject::session::{self, Inputs};
use neoscope_engine::inject::train::{InjectConfig, InjectEvent, Stopped};
use neoscope_engine::inject::vocab::Forms;
use neoscope_engine::tiny::tiny_model;

fn inputs() -> Inputs {
    let forms: Vec<String> = ["blorf", "zinter", "quaxle", "thrum", "the"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut corpus = String::new();
    for i in 0..60 {
        let f = ["blorf", "zinter", "quaxle", "thrum"][i % 4];
        corpus.push_str(&format!("the {f} sat by the {f} and the cat. "));
    }
    Inputs {
        forms,
        morphemes: vec![Morpheme {
            affix: Affix::Suffix,
            text: "le".into(),
            examples: vec!["table".into()],
        }],
        corpus,
        sources: vec!["test".into()],
    }
}

fn cfg() -> InjectConfig {
    InjectConfig {
        block_len: 16,
        steps: 8,
        micro_batch: 2,
        accum: 2,
        lr: 0.05,
        eval_every: 4,
        checkpoint_every: 2,
        ..InjectConfig::default()
    }
}

#[test]
fn encoding_maps_whole_words_to_new_ids() {
    let m = tiny_model(1, &Device::Cpu).unwrap();
    let v = Forms::new(vec!["blorf".into()], m.llama.cfg.vocab_size);
    let ids = v.encode(&m, "a blorf, blorfy blorf").unwrap();
    let new: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, t)| **t as usize >= v.base)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(new.len(), 2, "{ids:?}"); // "blorfy" is not the form
    // The space before a form belongs to it: decoding the plain parts gives the text back.
    let plain: Vec<u32> = ids
        .iter()
        .copied()
        .filter(|t| (*t as usize) < v.base)
        .collect();
    assert_eq!(m.tokenizer.decode(&plain).unwrap(), "a, blorfy");
}

#[test]
fn gradient_into_new_rows_matches_finite_differences() {
    let m = tiny_model(2, &Device::Cpu).unwrap();
    let d = m.llama.cfg.hidden_size;
    let v = Forms::new(
        vec!["blorf".into(), "zinter".into()],
        m.llama.cfg.vocab_size,
    );
    let blocks: Vec<Vec<u32>> = ["the blorf and zinter", "zinter blorf the cat"]
        .iter()
        .map(|t| v.encode(&m, t).unwrap())
        .collect();
    let len = blocks.iter().map(Vec::len).min().unwrap();
    let blocks: Vec<Vec<u32>> = blocks.into_iter().map(|b| b[..len].to_vec()).collect();
    let refs: Vec<&[u32]> = blocks.iter().map(Vec::as_slice).collect();
    let rows0: Vec<f32> = (0..2 * d)
        .map(|i| ((i as f32) * 0.37).sin() * 0.3)
        .collect();
    let var =
        Var::from_tensor(&Tensor::from_vec(rows0.clone(), (2, d), &Device::Cpu).unwrap()).unwrap();
    let (nll, _) = nll_sum(&m.llama, var.as_tensor(), &refs).unwrap();
    let g = nll.backward().unwrap().remove(var.as_tensor()).unwrap();
    let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
    assert!(
        g.iter().map(|x| x.abs()).sum::<f32>() > 1e-3,
        "gradient is zero"
    );
    let f = |rows: &[f32]| -> f64 {
        let t = Tensor::from_vec(rows.to_vec(), (2, d), &Device::Cpu).unwrap();
        f64::from(
            nll_sum(&m.llama, &t, &refs)
                .unwrap()
                .0
                .to_scalar::<f32>()
                .unwrap(),
        )
    };
    // Both rows get gradient both from the input (they occur) and from the tied output.
    let mut order: Vec<usize> = (0..2 * d).collect();
    order.sort_by(|a, b| g[*b].abs().total_cmp(&g[*a].abs()));
    for &i in order.iter().take(6).chain([d + order[0] % d].iter()) {
        let h = 1e-2f32;
        let mut p = rows0.clone();
        p[i] += h;
        let mut q = rows0.clone();
        q[i] -= h;
        let fd = (f(&p) - f(&q)) / (2.0 * f64::from(h));
        let an = f64::from(g[i]);
        assert!(
            (fd - an).abs() <= 2e-2 * an.abs().max(0.05),
            "coordinate {i}: analytic {an} vs finite difference {fd}"
        );
    }
}

#[test]
fn training_keeps_base_rows_lowers_val_loss_and_resumes_exactly() {
    let m = tiny_model(3, &Device::Cpu).unwrap();
    let before: Vec<f32> = m.llama.embed.flatten_all().unwrap().to_vec1().unwrap();
    let inp = inputs();

    // Uninterrupted run.
    let dir_a = tempfile::tempdir().unwrap();
    let s = session::start(&m, &inp, &cfg(), dir_a.path()).unwrap();
    assert_eq!(s.meta.known, vec!["the".to_owned()]); // one token already: left out
    assert_eq!(s.vocab.len(), 4);
    let mut st = s.state(dir_a.path()).unwrap();
    let stop = s
        .train(&m, dir_a.path(), &mut st, None, &mut |_| true)
        .unwrap();
    assert_eq!(stop, Stopped::Completed);
    assert_eq!(st.losses.len(), 8);
    let (v0, v1) = (st.val[0].1, st.val.last().unwrap().1);
    assert!(v1 < v0 - 0.05, "validation loss {v0} -> {v1}");
    let after: Vec<f32> = m.llama.embed.flatten_all().unwrap().to_vec1().unwrap();
    assert!(
        before
            .iter()
            .zip(&after)
            .all(|(a, b)| a.to_bits() == b.to_bits())
    );

    // The same run stopped after step 3 (a checkpoint is written on stop), then resumed
    // from disk in a fresh session.
    let dir_b = tempfile::tempdir().unwrap();
    let s = session::start(&m, &inp, &cfg(), dir_b.path()).unwrap();
    let mut st_b = s.state(dir_b.path()).unwrap();
    let stop = s
        .train(&m, dir_b.path(), &mut st_b, None, &mut |e| {
            !matches!(e, InjectEvent::Step { step: 3, .. })
        })
        .unwrap();
    assert_eq!(stop, Stopped::Cancelled);
    assert_eq!(run::checkpoints(dir_b.path()).unwrap(), vec![2, 3]);
    drop(st_b);
    let s = session::open(&m, dir_b.path()).unwrap();
    let mut resumed = s.state(dir_b.path()).unwrap();
    assert_eq!(resumed.step, 3);
    s.train(&m, dir_b.path(), &mut resumed, None, &mut |_| true)
        .unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&resumed.losses),
        bits(&st.losses),
        "loss curves differ"
    );
    assert_eq!(resumed.val, st.val);
    let ra: Vec<f32> = st.rows.flatten_all().unwrap().to_vec1().unwrap();
    let rb: Vec<f32> = resumed.rows.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(bits(&ra), bits(&rb));
    // Only the last three checkpoints are kept.
    assert_eq!(run::checkpoints(dir_b.path()).unwrap(), vec![4, 6, 8]);
    // Extending the run records the new total in run.json.
    s.train(&m, dir_b.path(), &mut resumed, Some(10), &mut |_| true)
        .unwrap();
    let reopened = session::open(&m, dir_b.path()).unwrap();
    assert_eq!(reopened.meta.config.steps, 10);
    assert_eq!(reopened.state(dir_b.path()).unwrap().step, 10);
    // A refused total (zero, or not beyond the step reached) leaves run.json untouched.
    let meta = std::fs::read(dir_b.path().join("run.json")).unwrap();
    for steps in [0, 5] {
        let e = reopened
            .train(&m, dir_b.path(), &mut resumed, Some(steps), &mut |_| true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("steps"), "{steps}: {e}");
        assert_eq!(std::fs::read(dir_b.path().join("run.json")).unwrap(), meta);
    }
}

#[test]
fn runs_are_refused_for_another_model_and_folders_are_not_overwritten() {
    let m = tiny_model(3, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg();
    c.init = InitKind::Spherical;
    session::start(&m, &inputs(), &c, dir.path()).unwrap();
    let e = session::start(&m, &inputs(), &c, dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("already holds a run"), "{e}");
    let other = tiny_model(4, &Device::Cpu).unwrap();
    let e = session::open(&other, dir.path()).unwrap_err().to_string();
    assert!(e.contains("was made for the model"), "{e}");
    // Blocks longer than the model's context are refused before the folder is made.
    let fresh = dir.path().join("long");
    c.block_len = m.llama.cfg.max_position_embeddings + 1;
    let e = session::start(&m, &inputs(), &c, &fresh)
        .unwrap_err()
        .to_string();
    assert!(e.contains("exceeds the model's context"), "{e}");
    assert!(!fresh.exists());
}

#[test]
fn geometry_report_is_written_and_consistent() {
    use neoscope_engine::inject::report;
    let m = tiny_model(5, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = session::start(&m, &inputs(), &cfg(), dir.path()).unwrap();
    let mut st = s.state(dir.path()).unwrap();
    s.train(&m, dir.path(), &mut st, None, &mut |_| true)
        .unwrap();
    let r = report::compute(&m, &s, &st, &mut |_, _| true).unwrap();
    assert!(r.drift.base_identical);
    assert_eq!((r.n_new, r.n_known), (4, 1));
    assert_eq!(r.norms.base.n, m.llama.cfg.vocab_size);
    assert!(r.isotropy.base > 0.0 && r.isotropy.base <= 1.0);
    assert!(r.drift.new.max <= 1.0 + 1e-6 && r.drift.new.min < 1.0);
    assert_eq!(r.drift.per_form.len(), 4);
    assert_eq!(r.drift.per_form[0].0, s.vocab.forms[0]);
    assert_eq!(r.neighbors.len(), 4);
    assert!(r.pca.base_90 <= r.pca.base_95 && r.pca.base_95 <= 32);
    // Change per form: overlaps are shares of k, one scatter point per form, PIP loss > 0.
    let c = r.change.clone().unwrap();
    assert_eq!((c.k, c.scatter.len()), (10, 4));
    assert!(c.overlap.min >= 0.0 && c.overlap.max <= 1.0);
    assert_eq!(c.overlap_hist.series[0].1.iter().sum::<usize>(), 4);
    assert!(c.pip_loss > 0.0 && c.pip_relative > 0.0);
    let (i0, n0) = (s.init.get(0).unwrap(), st.rows.get(0).unwrap());
    let norm = |t: &candle_core::Tensor| {
        f64::from(
            t.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .sqrt()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        )
    };
    assert!((f64::from(c.scatter[0][0]) - (norm(&n0) - norm(&i0))).abs() < 1e-4);
    assert_eq!(r.phases.len(), 2);
    // `quaxle` splits as quax + le (the table's one suffix): compared with its parts' mean.
    let mc = r.morphemes.clone().unwrap();
    assert!(
        mc.forms >= 1 && mc.examples.iter().any(|e| e.1 == "quax+le"),
        "{mc:?}"
    );
    assert!((r.phases[1].perplexity - f64::from(r.phases[1].val_loss).exp()).abs() < 1e-6);
    // The joint t-SNE: one initial and one trained point per form, all finite.
    assert_eq!((r.tsne_initial.len(), r.tsne_trained.len()), (4, 4));
    assert!(
        r.tsne_initial
            .iter()
            .chain(&r.tsne_trained)
            .all(|p| p[0].is_finite() && p[1].is_finite())
    );
    let html = report::write(dir.path(), &r).unwrap();
    let text = std::fs::read_to_string(html).unwrap();
    for part in [
        "<svg",
        "Welch t",
        "Mann-Whitney U",
        "Isotropy",
        "KS base-base vs new-new",
        "Change per form",
        "Forms and their parts",
        "PIP loss",
        "perplexity",
        "Initial against trained rows (t-SNE)",
        "blorf",
    ] {
        assert!(text.contains(part), "report lacks {part}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert_eq!(json["format"], "neoscope-geometry-report");
}

#[test]
fn appended_lexicon_adds_training_blocks_holding_every_form() {
    let m = tiny_model(6, &Device::Cpu).unwrap();
    let mut inp = inputs();
    // A form the corpus never uses: only the appended lexicon shows it.
    inp.forms.push("vorpalish".into());
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = session::start(&m, &inp, &cfg(), plain_dir.path()).unwrap();
    let c = InjectConfig {
        append_lexicon: true,
        ..cfg()
    };
    let dir = tempfile::tempdir().unwrap();
    let s = session::start(&m, &inp, &c, dir.path()).unwrap();
    // Held-out blocks are the corpus's own; the extra training blocks hold every form.
    assert_eq!(s.blocks.val, plain.blocks.val);
    let extra = &s.blocks.train[plain.blocks.train.len()..];
    assert!(!extra.is_empty());
    for i in 0..s.vocab.len() {
        let id = s.vocab.id(i);
        assert!(extra.iter().flatten().any(|&t| t == id), "form {i} missing");
    }
    let v = s.vocab.id(s.vocab.find("vorpalish").unwrap());
    assert!(!plain.blocks.train.iter().flatten().any(|&t| t == v));
    // The setting is recorded, and the run reopens with the same blocks.
    let reopened = session::open(&m, dir.path()).unwrap();
    assert!(reopened.meta.config.append_lexicon);
    assert_eq!(reopened.blocks.train, s.blocks.train);
}

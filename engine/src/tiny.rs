//! Tiny random-weight Llama models built in code with a fixed seed, with a small byte-level BPE
//! tokenizer: fixtures for fast tests (and for trying the app without a download).

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenizers::Tokenizer;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::config::LlamaConfig;
use crate::error::{EngineError, Result};
use crate::fetch::DEFAULT_MODEL_SHA256;
use crate::model::llama::{Block, Llama};
use crate::model::load::{LoadedModel, ModelInfo, device_name};
use crate::model::mat::Mat;
use crate::tokenizer::ModelTokenizer;

/// The configuration of the tiny model: 2 layers, d_model 32, 4 query / 2 KV heads.
pub fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        vocab_size: 0, // set from the tokenizer
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 128,
        tie_word_embeddings: true,
        model_type: "llama".into(),
        rope_scaling: None,
        head_dim: None,
        sliding_window: None,
        arch: Default::default(),
    }
}

/// A byte-level BPE tokenizer: the 256 byte symbols, a handful of merges, `<|endoftext|>`.
pub fn tiny_tokenizer() -> Result<ModelTokenizer> {
    let bytes = ByteLevel::alphabet();
    let mut symbols: Vec<String> = bytes.iter().map(char::to_string).collect();
    symbols.sort();
    let merges: Vec<(String, String)> = [("t", "h"), ("th", "e"), ("Ġ", "the"), ("a", "n")]
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    for (a, b) in &merges {
        symbols.push(format!("{a}{b}"));
    }
    let vocab: Vocab = symbols
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), u32::try_from(i).unwrap_or(u32::MAX)))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    tok.add_special_tokens(vec![tokenizers::AddedToken::from("<|endoftext|>", true)])
        .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
    let eos = tok.token_to_id("<|endoftext|>");
    Ok(ModelTokenizer::from_tokenizer(tok, eos))
}

fn randn(rng: &mut StdRng, shape: &[usize], std: f32, dev: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    Ok(Tensor::from_vec(
        crate::sampling::normal_vec(rng, n, std),
        shape,
        dev,
    )?)
}

fn norm_weight(rng: &mut StdRng, d: usize, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..d)
        .map(|_| 1.0 + 0.1 * (rng.random::<f32>() - 0.5))
        .collect();
    Ok(Tensor::from_vec(v, d, dev)?)
}

/// A tiny random model (weights drawn from `seed`) with the tiny tokenizer.
pub fn tiny_model(seed: u64, dev: &Device) -> Result<LoadedModel> {
    let tokenizer = tiny_tokenizer()?;
    let mut cfg = tiny_config();
    cfg.vocab_size = tokenizer.vocab_size();
    let mut rng = StdRng::seed_from_u64(seed);
    let (d, m, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim());
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.kv_heads() * hd);
    let embed = randn(&mut rng, &[cfg.vocab_size, d], 0.5, dev)?;
    let mut blocks = Vec::new();
    for _ in 0..cfg.num_hidden_layers {
        blocks.push(Block {
            attn_norm: norm_weight(&mut rng, d, dev)?,
            wq: Mat::Dense(randn(&mut rng, &[q, d], 0.2, dev)?),
            wk: Mat::Dense(randn(&mut rng, &[kv, d], 0.2, dev)?),
            wv: Mat::Dense(randn(&mut rng, &[kv, d], 0.2, dev)?),
            wo: Mat::Dense(randn(&mut rng, &[d, q], 0.2, dev)?),
            mlp_norm: norm_weight(&mut rng, d, dev)?,
            w_gate: Some(Mat::Dense(randn(&mut rng, &[m, d], 0.2, dev)?)),
            w_up: Mat::Dense(randn(&mut rng, &[m, d], 0.2, dev)?),
            w_down: Mat::Dense(randn(&mut rng, &[d, m], 0.2, dev)?),
            qkv_bias: None,
            qk_norm: None,
            extra: Default::default(),
        });
    }
    let final_norm = norm_weight(&mut rng, d, dev)?;
    let llama = Llama::new(cfg, embed, blocks, final_norm, None)?;
    let info = ModelInfo {
        name: format!("tiny-llama-seed{seed}"),
        path: std::path::PathBuf::new(),
        format: "memory".into(),
        // A tiny model has no file; its identity is its seed, never the default model's hash.
        sha256: format!("tiny-seed-{seed}"),
        dims: llama.cfg.dims(),
        architecture: "llama".into(),
        device: device_name(dev),
        has_chat_template: false,
        weights: crate::model::WeightsInfo {
            dtype: crate::model::WeightDType::F32,
            stored_as: "F32".into(),
            bytes: crate::model::weights::bytes_of(&llama),
        },
        injected: None,
    };
    debug_assert_ne!(info.sha256, DEFAULT_MODEL_SHA256);
    Ok(LoadedModel {
        llama,
        tokenizer,
        info,
    })
}

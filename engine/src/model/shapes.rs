//! Checks an assembled model's weights against its configuration before anything runs: every
//! shape, and every optional part present exactly when the family has it (a bias the math
//! would ignore, or one it needs and lacks, is an error naming the tensor).

use candle_core::Tensor;

use super::llama::{Block, ModelExtra};
use super::mat::Mat;
use crate::config::{LlamaConfig, NormKind};
use crate::error::{EngineError, Result};

fn shape(name: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.dims() == want {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "weight {name} has shape {:?}, expected {want:?}",
            t.dims()
        )))
    }
}

fn mat(name: &str, w: &Mat, want: (usize, usize)) -> Result<()> {
    let got = w.dims()?;
    if got == want {
        Ok(())
    } else {
        Err(EngineError::Invalid(format!(
            "weight {name} has shape {got:?}, expected {want:?}"
        )))
    }
}

fn one(t: &Option<Tensor>) -> Option<Vec<&Tensor>> {
    t.as_ref().map(|t| vec![t])
}

fn pair(t: &Option<(Tensor, Tensor)>) -> Option<Vec<&Tensor>> {
    t.as_ref().map(|(a, b)| vec![a, b])
}

/// `part` must be present exactly when `wanted`, and then of shape `want` each.
fn optional(
    cfg: &LlamaConfig,
    name: &str,
    part: Option<&[&Tensor]>,
    wanted: bool,
    want: &[usize],
) -> Result<()> {
    match (part, wanted) {
        (Some(ts), true) => ts
            .iter()
            .enumerate()
            .try_for_each(|(i, t)| shape(&format!("{name}[{i}]"), t, want)),
        (None, false) => Ok(()),
        (Some(_), false) => Err(EngineError::Invalid(format!(
            "{name} is present but model_type `{}` has none",
            cfg.model_type
        ))),
        (None, true) => Err(EngineError::Invalid(format!(
            "{name} is missing; model_type `{}` needs it",
            cfg.model_type
        ))),
    }
}

/// `e` from [`check`], with the config's sizes added when a shape disagrees with them.
pub(super) fn explain(e: EngineError, cfg: &LlamaConfig) -> EngineError {
    match e {
        EngineError::Invalid(msg) if msg.contains(" has shape ") => EngineError::Invalid(format!(
            "{msg} (the config gives d_model {}, {} heads × head width {}, {} KV heads, \
             feed-forward width {}, vocabulary {}: a size in the config does not match the weights)",
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.head_dim(),
            cfg.kv_heads(),
            cfg.intermediate_size,
            cfg.vocab_size
        )),
        other => other,
    }
}

/// Every weight's shape and presence against `cfg`.
pub(super) fn check(
    cfg: &LlamaConfig,
    embed: &Tensor,
    blocks: &[Block],
    final_norm: &Tensor,
    lm_head: Option<&Tensor>,
    extra: &ModelExtra,
) -> Result<()> {
    let (d, hd) = (cfg.hidden_size, cfg.head_dim());
    let (q, kv, m) = (
        cfg.num_attention_heads * hd,
        cfg.kv_heads() * hd,
        cfg.intermediate_size,
    );
    let a = &cfg.arch;
    let layer_norm = a.norm == NormKind::Layer;
    shape("embedding", embed, &[cfg.vocab_size, d])?;
    shape("final norm", final_norm, &[d])?;
    if let Some(h) = lm_head {
        shape("output head", h, &[cfg.vocab_size, d])?;
    }

    optional(
        cfg,
        "position embedding",
        one(&extra.pos_embed).as_deref(),
        a.learned_positions,
        &[cfg.n_ctx(), d],
    )?;
    optional(
        cfg,
        "final norm bias",
        one(&extra.final_norm_bias).as_deref(),
        layer_norm && !a.no_final_norm,
        &[d],
    )?;
    optional(
        cfg,
        "output head bias",
        one(&extra.head_bias).as_deref(),
        a.head_bias,
        &[cfg.vocab_size],
    )?;
    if blocks.len() != cfg.num_hidden_layers {
        return Err(EngineError::Invalid(format!(
            "{} blocks given, config says {}",
            blocks.len(),
            cfg.num_hidden_layers
        )));
    }
    for (l, b) in blocks.iter().enumerate() {
        let p = |n: &str| format!("blocks.{l}.{n}");
        shape(&p("attn_norm"), &b.attn_norm, &[d])?;
        shape(&p("mlp_norm"), &b.mlp_norm, &[d])?;
        mat(&p("wq"), &b.wq, (q, d))?;
        mat(&p("wk"), &b.wk, (kv, d))?;
        mat(&p("wv"), &b.wv, (kv, d))?;
        mat(&p("wo"), &b.wo, (d, q))?;
        match (&b.w_gate, a.plain_mlp) {
            (Some(g), false) => mat(&p("w_gate"), g, (m, d))?,
            (None, true) => {}
            _ => {
                return Err(EngineError::Invalid(format!(
                    "{}: a gate projection is present exactly when the MLP is gated",
                    p("w_gate")
                )));
            }
        }
        mat(&p("w_up"), &b.w_up, (m, d))?;
        mat(&p("w_down"), &b.w_down, (d, m))?;
        let x = &b.extra;
        optional(
            cfg,
            &p("qkv_bias"),
            one(&b.qkv_bias).as_deref(),
            cfg.qkv_bias(),
            &[q + 2 * kv],
        )?;
        optional(
            cfg,
            &p("q_norm/k_norm"),
            pair(&b.qk_norm).as_deref(),
            cfg.qk_norm(),
            &[hd],
        )?;
        optional(
            cfg,
            &p("norm biases"),
            pair(&x.norm_biases).as_deref(),
            layer_norm,
            &[d],
        )?;
        optional(
            cfg,
            &p("post-attention/post-MLP norms"),
            pair(&x.post_norms).as_deref(),
            a.sandwich_norms,
            &[d],
        )?;
        optional(cfg, &p("o_bias"), one(&x.o_bias).as_deref(), a.biases, &[d])?;
        optional(
            cfg,
            &p("up_bias"),
            one(&x.up_bias).as_deref(),
            a.biases,
            &[m],
        )?;
        optional(
            cfg,
            &p("down_bias"),
            one(&x.down_bias).as_deref(),
            a.biases,
            &[d],
        )?;
    }
    Ok(())
}

//! Reading a Hugging Face `config.json` into a `LlamaConfig`, refusing by name every setting
//! that would change the computation in a way this engine does not implement. A model whose
//! config asks for other math is never run: a silently wrong model would make every lens, word
//! and MFA on it wrong.

use serde_json::{Map, Value};

use crate::config::{LlamaConfig, RopeScaling};

/// Families computed by the Llama block (with their differences handled in `LlamaConfig`).
const FAMILIES: &[&str] = &["llama", "mistral", "qwen2", "qwen3"];

/// Keys that change the computation when set and that no supported family implements here.
const UNHANDLED: &[&str] = &[
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "query_pre_attn_scalar",
    "logits_scaling",
    "embedding_multiplier",
    "residual_multiplier",
    "attention_multiplier",
    "partial_rotary_factor",
    "qk_layernorm",
    "use_qk_norm",
    "no_rope_layers",
    "num_experts",
    "num_local_experts",
    "moe_intermediate_size",
];

/// Parses and checks `config.json`; the error says which key asks for what.
pub fn parse(text: &str) -> Result<LlamaConfig, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(mut obj) = v else {
        return Err("not a JSON object".into());
    };
    let model_type = obj
        .get("model_type")
        .and_then(Value::as_str)
        .unwrap_or("llama")
        .to_owned();
    if !FAMILIES.contains(&model_type.as_str()) {
        let hint = match model_type.as_str() {
            "gpt2" => " (GPT-2: learned positions, LayerNorm, GELU and Conv1D weights)",
            "gemma" | "gemma2" | "gemma3" | "gemma3_text" => {
                " (Gemma: scaled embedding, (1 + w) norms, GeGLU, soft-capping)"
            }
            "phi3" => " (Phi-3: fused qkv and gate/up)",
            _ => "",
        };
        return Err(format!(
            "model_type `{model_type}`{hint} is not implemented; supported: {}",
            FAMILIES.join(", ")
        ));
    }
    check_flags(&obj, &model_type)?;
    let rope = rope_settings(&obj)?;
    let sliding = match model_type.as_str() {
        // transformers' MistralConfig defaults to a 4096-token window; `null` means none.
        "mistral" => match obj.get("sliding_window") {
            None => Some(4096),
            Some(v) => v.as_u64(),
        },
        // Qwen2 ignores `sliding_window` unless `use_sliding_window` (refused above).
        _ => None,
    };
    // Null means "the default": drop those keys, then fill transformers' defaults for this
    // family (they differ from ours: rms_norm_eps is 1e-6 in all three).
    obj.retain(|_, v| !v.is_null());
    let max_pos: u64 = match model_type.as_str() {
        "mistral" => 131_072,
        "qwen2" | "qwen3" => 32_768,
        _ => 2048,
    };
    for (key, default) in [
        ("rms_norm_eps", Value::from(1e-6)),
        ("rope_theta", Value::from(10_000.0)),
        ("max_position_embeddings", Value::from(max_pos)),
    ] {
        obj.entry(key).or_insert(default);
    }
    if let Some(theta) = rope.theta {
        obj.insert("rope_theta".into(), theta.into());
    }
    // Our own fields are set below from what was checked, never from the raw keys.
    obj.remove("rope_scaling");
    obj.remove("sliding_window");
    let head_dim = obj.get("head_dim").and_then(Value::as_u64);
    obj.remove("head_dim");
    let mut cfg: LlamaConfig =
        serde_json::from_value(Value::Object(obj)).map_err(|e| e.to_string())?;
    cfg.rope_scaling = rope.scaling;
    cfg.sliding_window = sliding.map(|w| usize::try_from(w).unwrap_or(usize::MAX));
    cfg.head_dim = head_dim.map(|h| usize::try_from(h).unwrap_or(usize::MAX));
    cfg.validate()?;
    Ok(cfg)
}

fn is_set(v: Option<&Value>) -> bool {
    !matches!(v, None | Some(Value::Null | Value::Bool(false)))
}

/// Refuses flags that switch on math the block does not do.
fn check_flags(obj: &Map<String, Value>, model_type: &str) -> Result<(), String> {
    for key in UNHANDLED {
        if is_set(obj.get(*key)) {
            return Err(format!(
                "`{key}` = {} changes the computation and is not implemented",
                obj[*key]
            ));
        }
    }
    if model_type != "qwen2" && is_set(obj.get("attention_bias")) {
        // Qwen2's q/k/v biases are implied by its family; elsewhere this flag also adds an
        // output-projection bias.
        return Err(
            "`attention_bias: true` (biases on the q/k/v/o projections) is not implemented".into(),
        );
    }
    if is_set(obj.get("mlp_bias")) {
        return Err("`mlp_bias: true` (biases in the MLP) is not implemented".into());
    }
    if is_set(obj.get("use_sliding_window")) {
        return Err("`use_sliding_window: true` is not implemented for this family".into());
    }
    for key in ["hidden_act", "hidden_activation"] {
        if let Some(act) = obj.get(key).and_then(Value::as_str)
            && act != "silu"
        {
            return Err(format!(
                "`{key}` = \"{act}\" is not implemented (only \"silu\")"
            ));
        }
    }
    if let Some(Value::Array(types)) = obj.get("layer_types") {
        let allowed = if model_type == "mistral" {
            &["full_attention", "sliding_attention"][..]
        } else {
            &["full_attention"][..]
        };
        if let Some(t) = types
            .iter()
            .find(|t| !t.as_str().is_some_and(|s| allowed.contains(&s)))
        {
            return Err(format!("`layer_types` entry {t} is not implemented"));
        }
    }
    Ok(())
}

struct Rope {
    theta: Option<f64>,
    scaling: Option<RopeScaling>,
}

/// Reads RoPE settings from `rope_scaling` (transformers 4) or `rope_parameters`
/// (transformers 5, which also moves `rope_theta` there).
fn rope_settings(obj: &Map<String, Value>) -> Result<Rope, String> {
    let params = obj
        .get("rope_parameters")
        .filter(|v| !v.is_null())
        .or_else(|| obj.get("rope_scaling").filter(|v| !v.is_null()));
    let Some(params) = params else {
        return Ok(Rope {
            theta: None,
            scaling: None,
        });
    };
    let Value::Object(p) = params else {
        return Err(format!("`rope_scaling` = {params} is not an object"));
    };
    let theta = p.get("rope_theta").and_then(Value::as_f64);
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| -> Result<f64, String> {
        p.get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| format!("`rope_scaling` of type \"{kind}\" lacks the number `{k}`"))
    };
    if is_set(p.get("partial_rotary_factor")) && num("partial_rotary_factor")? != 1.0 {
        return Err("`partial_rotary_factor` below 1 is not implemented".into());
    }
    let scaling = match kind {
        "default" => None,
        "linear" => Some(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        }),
        other => {
            return Err(format!(
                "`rope_scaling` type \"{other}\" is not implemented (implemented: default, \
                 linear, llama3)"
            ));
        }
    };
    Ok(Rope { theta, scaling })
}

#[cfg(test)]
mod tests {
    use super::parse;

    const BASE: &str = r#""hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 300"#;

    fn cfg(extra: &str) -> Result<crate::config::LlamaConfig, String> {
        parse(&format!("{{{BASE}{extra}}}"))
    }

    #[test]
    fn plain_llama_parses() {
        let c = cfg("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.head_dim(), 16);
        assert!(c.rope_scaling.is_none());
    }

    #[test]
    fn refusals_name_the_key() {
        for (extra, key) in [
            (r#", "model_type": "gpt2""#, "gpt2"),
            (r#", "model_type": "gemma2""#, "gemma2"),
            (
                r#", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}"#,
                "yarn",
            ),
            (
                r#", "rope_scaling": {"type": "dynamic", "factor": 2.0}"#,
                "dynamic",
            ),
            (r#", "attention_bias": true"#, "attention_bias"),
            (r#", "mlp_bias": true"#, "mlp_bias"),
            (r#", "hidden_act": "gelu""#, "hidden_act"),
            (
                r#", "final_logit_softcapping": 30.0"#,
                "final_logit_softcapping",
            ),
            (
                r#", "model_type": "qwen2", "use_sliding_window": true"#,
                "use_sliding_window",
            ),
            (
                r#", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}"#,
                "low_freq_factor",
            ),
        ] {
            let e = cfg(extra).expect_err(extra);
            assert!(e.contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn rope_theta_and_scaling_read_from_either_place() {
        let c = cfg(
            r#", "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.rope_theta, 500.0);
        assert!(c.rope_scaling.is_some());
        let c = cfg(r#", "rope_theta": 300.0, "rope_scaling": {"type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.rope_theta, 300.0);
        assert!(c.rope_scaling.is_some());
    }

    #[test]
    fn mistral_window_caps_the_context() {
        let c = cfg(
            r#", "model_type": "mistral", "sliding_window": 16, "max_position_embeddings": 128"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.n_ctx(), 16);
        let c =
            cfg(r#", "model_type": "qwen2", "sliding_window": 16, "use_sliding_window": false"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.n_ctx(), 32_768, "transformers' Qwen2 default");
        assert!(c.qkv_bias());
    }
}

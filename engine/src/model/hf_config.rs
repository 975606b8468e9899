//! Reading a Hugging Face `config.json` into a `LlamaConfig`, refusing by name every setting
//! that would change the computation in a way this engine does not implement. A model whose
//! config asks for other math is never run: a silently wrong model would make every lens, word
//! and MFA on it wrong.

use serde_json::{Map, Value};

use crate::config::{Arch, LlamaConfig, RopeScaling};

/// Families computed by the block (with their differences in `config::Arch`).
const FAMILIES: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "gpt2",
];

/// Keys that change the computation when set and that no supported family implements here.
const UNHANDLED: &[&str] = &[
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
    "use_bidirectional_attention",
    "add_cross_attention",
    "scale_attn_by_inverse_layer_idx",
];

/// Gemma 2/3's keys, refused elsewhere.
const GEMMA_KEYS: &[&str] = &[
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "query_pre_attn_scalar",
];

/// Whether the family's RMSNorms multiply by `(1 + w)` (the loaders fold the 1 into `w`).
pub fn norm_plus_one(model_type: &str) -> bool {
    model_type.starts_with("gemma")
}

/// The `model_type` of a `config.json`, if it has one.
pub fn model_type_of(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    v.get("model_type")?.as_str().map(str::to_owned)
}

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
            "gemma3" => {
                " (a multimodal Gemma 3 config: load the text model, model_type \
                         `gemma3_text`)"
            }
            _ => "",
        };
        return Err(format!(
            "model_type `{model_type}`{hint} is not implemented; supported: {}",
            FAMILIES.join(", ")
        ));
    }
    let gemma = model_type.starts_with("gemma");
    if model_type == "gpt2" {
        gpt2_keys(&mut obj)?;
    }
    check_flags(&obj, &model_type)?;
    let rope = rope_settings(&obj, &model_type)?;
    let sliding = match model_type.as_str() {
        // transformers' defaults: Mistral and Gemma 2/3 have 4096-token windows; `null` means
        // none. Phi-3's window is whatever the config says.
        "mistral" | "gemma2" | "gemma3_text" => match obj.get("sliding_window") {
            None => Some(4096),
            Some(v) => v.as_u64(),
        },
        "phi3" => obj.get("sliding_window").and_then(Value::as_u64),
        // Qwen2 ignores `sliding_window` unless `use_sliding_window` (refused above).
        _ => None,
    };
    let d = obj
        .get("hidden_size")
        .and_then(Value::as_u64)
        .map_or(0, |d| usize::try_from(d).unwrap_or(usize::MAX));
    let mut arch = Arch::family(&model_type, d);
    if gemma {
        check_gemma_activation(&obj)?;
        if model_type != "gemma" {
            let num = |k: &str| obj.get(k).and_then(Value::as_f64);
            arch.query_pre_attn_scalar = Some(num("query_pre_attn_scalar").unwrap_or(256.0));
            arch.attn_softcap = num("attn_logit_softcapping");
            arch.final_softcap = num("final_logit_softcapping");
            arch.sliding_layers = sliding_layers(&obj, &model_type)?;
            arch.rope_local_theta = rope.local_theta;
        }
    }
    // Null means "the default": drop those keys, then fill transformers' defaults for this
    // family (they differ from ours: rms_norm_eps is 1e-6 in most).
    obj.retain(|_, v| !v.is_null());
    let (max_pos, eps): (u64, f64) = match model_type.as_str() {
        "mistral" => (131_072, 1e-6),
        "qwen2" | "qwen3" => (32_768, 1e-6),
        "gemma" | "gemma2" => (8192, 1e-6),
        "gemma3_text" => (131_072, 1e-6),
        "phi3" => (4096, 1e-5),
        _ => (2048, 1e-6),
    };
    for (key, default) in [
        ("rms_norm_eps", Value::from(eps)),
        ("rope_theta", Value::from(10_000.0)),
        ("max_position_embeddings", Value::from(max_pos)),
    ] {
        obj.entry(key).or_insert(default);
    }
    if gemma {
        // Gemma ties its output head unless the config says otherwise.
        obj.entry("tie_word_embeddings")
            .or_insert(Value::Bool(true));
    }
    if let Some(theta) = rope.theta {
        obj.insert("rope_theta".into(), theta.into());
    }
    // Our own fields are set below from what was checked, never from the raw keys.
    for key in ["rope_scaling", "sliding_window", "arch"] {
        obj.remove(key);
    }
    let head_dim = obj.get("head_dim").and_then(Value::as_u64);
    obj.remove("head_dim");
    let mut cfg: LlamaConfig =
        serde_json::from_value(Value::Object(obj)).map_err(|e| e.to_string())?;
    cfg.rope_scaling = rope.scaling;
    cfg.sliding_window = sliding.map(|w| usize::try_from(w).unwrap_or(usize::MAX));
    cfg.head_dim = head_dim.map(|h| usize::try_from(h).unwrap_or(usize::MAX));
    cfg.arch = arch;
    cfg.validate()?;
    Ok(cfg)
}

/// GPT-2's own key names mapped onto the Llama ones; what GPT-2 can switch off refused.
fn gpt2_keys(obj: &mut Map<String, Value>) -> Result<(), String> {
    if obj.get("scale_attn_weights") == Some(&Value::Bool(false)) {
        return Err("`scale_attn_weights: false` (unscaled attention) is not implemented".into());
    }
    match obj.get("activation_function").and_then(Value::as_str) {
        None | Some("gelu_new" | "gelu_pytorch_tanh") => {}
        Some(other) => {
            return Err(format!(
                "`activation_function` = \"{other}\" is not implemented (only \"gelu_new\")"
            ));
        }
    }
    for (from, to) in [
        ("n_embd", "hidden_size"),
        ("n_layer", "num_hidden_layers"),
        ("n_head", "num_attention_heads"),
        ("n_positions", "max_position_embeddings"),
        ("layer_norm_epsilon", "rms_norm_eps"),
    ] {
        if let Some(v) = obj.remove(from) {
            obj.insert(to.into(), v);
        }
    }
    obj.entry("layer_norm_epsilon").or_insert(Value::from(1e-5));
    let d = obj.get("hidden_size").and_then(Value::as_u64).unwrap_or(0);
    let inner = obj.remove("n_inner").filter(|v| !v.is_null());
    obj.insert(
        "intermediate_size".into(),
        inner.unwrap_or(Value::from(4 * d)),
    );
    obj.entry("rms_norm_eps").or_insert(Value::from(1e-5));
    obj.entry("tie_word_embeddings")
        .or_insert(Value::Bool(true));
    Ok(())
}

/// Gemma's activation must be the tanh approximation of GELU (`gelu_pytorch_tanh`).
fn check_gemma_activation(obj: &Map<String, Value>) -> Result<(), String> {
    let act = obj
        .get("hidden_activation")
        .filter(|v| !v.is_null())
        .or_else(|| obj.get("hidden_act"))
        .and_then(Value::as_str)
        .unwrap_or("gelu_pytorch_tanh");
    match act {
        "gelu_pytorch_tanh" | "gelu_new" => Ok(()),
        other => Err(format!(
            "`hidden_activation` = \"{other}\" is not implemented (only \"gelu_pytorch_tanh\")"
        )),
    }
}

/// Per layer, whether it is a sliding-window layer: `layer_types`, else the family's pattern
/// (Gemma 2 alternates starting with a sliding layer; Gemma 3 has one global layer in
/// `sliding_window_pattern`).
/// More layers than any model has.
const MAX_LAYERS: usize = 1 << 16;

fn sliding_layers(obj: &Map<String, Value>, model_type: &str) -> Result<Vec<bool>, String> {
    let n = obj
        .get("num_hidden_layers")
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize;
    // Checked against the weights when they are read; here only kept from sizing a table by
    // an absurd count.
    if n > MAX_LAYERS {
        return Err(format!(
            "`num_hidden_layers` {n} exceeds {MAX_LAYERS}: not a layer count"
        ));
    }
    if let Some(Value::Array(types)) = obj.get("layer_types") {
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("sliding_attention") => Ok(true),
                Some("full_attention") => Ok(false),
                _ => Err(format!("`layer_types` entry {t} is not implemented")),
            })
            .collect();
    }
    let pattern = if model_type == "gemma2" {
        2
    } else {
        obj.get("sliding_window_pattern")
            .or_else(|| obj.get("_sliding_window_pattern"))
            .and_then(Value::as_u64)
            .unwrap_or(6) as usize
    };
    Ok((0..n).map(|i| (i + 1) % pattern.max(1) != 0).collect())
}

fn is_set(v: Option<&Value>) -> bool {
    !matches!(v, None | Some(Value::Null | Value::Bool(false)))
}

/// Refuses flags that switch on math the block does not do.
fn check_flags(obj: &Map<String, Value>, model_type: &str) -> Result<(), String> {
    let gemma23 = matches!(model_type, "gemma2" | "gemma3_text");
    for key in UNHANDLED
        .iter()
        .chain(GEMMA_KEYS.iter().filter(|_| !gemma23))
    {
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
    if !model_type.starts_with("gemma") && model_type != "gpt2" {
        for key in ["hidden_act", "hidden_activation"] {
            if let Some(act) = obj.get(key).and_then(Value::as_str)
                && act != "silu"
            {
                return Err(format!(
                    "`{key}` = \"{act}\" is not implemented (only \"silu\")"
                ));
            }
        }
    }
    if let Some(Value::Array(types)) = obj.get("layer_types") {
        let allowed = if matches!(model_type, "mistral" | "phi3") || gemma23 {
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
    /// The sliding-window layers' base (Gemma 3), which is never scaled.
    local_theta: Option<f64>,
}

/// Reads RoPE settings from `rope_scaling` (transformers 4) or `rope_parameters`
/// (transformers 5, which also moves `rope_theta` there, and for Gemma 3 keys them by layer
/// type: `full_attention`, `sliding_attention`).
fn rope_settings(obj: &Map<String, Value>, model_type: &str) -> Result<Rope, String> {
    let original = obj
        .get("original_max_position_embeddings")
        .and_then(Value::as_f64);
    let max_pos = obj
        .get("max_position_embeddings")
        .and_then(Value::as_f64)
        .unwrap_or(2048.0);
    let params = obj
        .get("rope_parameters")
        .filter(|v| !v.is_null())
        .or_else(|| obj.get("rope_scaling").filter(|v| !v.is_null()));
    let local_default = (model_type == "gemma3_text").then(|| {
        obj.get("rope_local_base_freq")
            .and_then(Value::as_f64)
            .unwrap_or(10_000.0)
    });
    let Some(params) = params else {
        return Ok(Rope {
            theta: None,
            scaling: None,
            local_theta: local_default,
        });
    };
    let Value::Object(p) = params else {
        return Err(format!("`rope_scaling` = {params} is not an object"));
    };
    if let Some(full) = p.get("full_attention") {
        let (theta, scaling) = one_rope(full, "rope_parameters.full_attention", original, max_pos)?;
        let local_theta = match p.get("sliding_attention") {
            Some(local) => {
                match one_rope(local, "rope_parameters.sliding_attention", None, max_pos)? {
                    (t, None) => t.or(local_default),
                    (_, Some(_)) => {
                        return Err(
                        "`rope_parameters.sliding_attention`: scaled RoPE on the sliding-window \
                         layers is not implemented"
                            .into(),
                    );
                    }
                }
            }
            None => local_default,
        };
        return Ok(Rope {
            theta,
            scaling,
            local_theta,
        });
    }
    let (theta, scaling) = one_rope(params, "rope_scaling", original, max_pos)?;
    Ok(Rope {
        theta,
        scaling,
        local_theta: local_default,
    })
}

/// One RoPE parameter set: its base (when given) and its frequency scaling. `original` is a
/// top-level `original_max_position_embeddings` (transformers prefers it to the parameters');
/// `max_pos` the context, YaRN's default original context.
fn one_rope(
    params: &Value,
    at: &str,
    original: Option<f64>,
    max_pos: f64,
) -> Result<(Option<f64>, Option<RopeScaling>), String> {
    let Value::Object(p) = params else {
        return Err(format!("`{at}` = {params} is not an object"));
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
            .ok_or_else(|| format!("`{at}` of type \"{kind}\" lacks the number `{k}`"))
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
            original_max_position_embeddings: original
                .or(p
                    .get("original_max_position_embeddings")
                    .and_then(Value::as_f64))
                .ok_or(format!(
                    "`{at}` of type \"llama3\" lacks the number `original_max_position_embeddings`"
                ))? as usize,
        }),
        "yarn" => {
            let factor = num("factor")?;
            let old = original
                .or(p
                    .get("original_max_position_embeddings")
                    .and_then(Value::as_f64))
                .unwrap_or(max_pos);
            let opt = |k: &str| p.get(k).and_then(Value::as_f64).filter(|v| *v != 0.0);
            // transformers' default attention factor: YaRN's 0.1·m·ln(s) + 1.
            let mscale = |m: f64| {
                if factor <= 1.0 {
                    1.0
                } else {
                    0.1 * m * factor.ln() + 1.0
                }
            };
            let attention_factor = opt("attention_factor").unwrap_or_else(|| {
                match (opt("mscale"), opt("mscale_all_dim")) {
                    (Some(m), Some(all)) => mscale(m) / mscale(all),
                    _ => mscale(1.0),
                }
            });
            Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: old as usize,
                beta_fast: opt("beta_fast").unwrap_or(32.0),
                beta_slow: opt("beta_slow").unwrap_or(1.0),
                attention_factor,
                truncate: p.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            })
        }
        // Within the context (longer sequences are refused) dynamic NTK is plain RoPE.
        "dynamic" => Some(RopeScaling::Dynamic {
            factor: num("factor")?,
        }),
        other => {
            return Err(format!(
                "`{at}` type \"{other}\" is not implemented (implemented: default, linear, \
                 llama3, yarn, dynamic)"
            ));
        }
    };
    Ok((theta, scaling))
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
            (r#", "model_type": "gpt_neox""#, "gpt_neox"),
            (r#", "model_type": "gemma3""#, "gemma3_text"),
            (
                r#", "model_type": "gpt2", "activation_function": "relu""#,
                "activation_function",
            ),
            (
                r#", "model_type": "gpt2", "scale_attn_by_inverse_layer_idx": true"#,
                "scale_attn_by_inverse_layer_idx",
            ),
            (
                r#", "model_type": "gemma2", "hidden_activation": "gelu""#,
                "hidden_activation",
            ),
            (
                r#", "model_type": "gemma", "use_bidirectional_attention": true"#,
                "use_bidirectional_attention",
            ),
            (
                r#", "rope_scaling": {"rope_type": "longrope", "factor": 4.0}"#,
                "longrope",
            ),
            (r#", "rope_scaling": {"type": "su", "factor": 2.0}"#, "su"),
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
    fn windows_apply_to_the_right_layers() {
        let c = cfg(
            r#", "model_type": "mistral", "sliding_window": 16, "max_position_embeddings": 128"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (c.n_ctx(), c.window(0), c.window(1)),
            (128, Some(16), Some(16))
        );
        let c =
            cfg(r#", "model_type": "qwen2", "sliding_window": 16, "use_sliding_window": false"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.n_ctx(), 32_768, "transformers' Qwen2 default");
        assert_eq!(c.window(0), None);
        assert!(c.qkv_bias());
        // Gemma 2 alternates, starting with a sliding layer; Gemma 3 has one global layer in 6.
        let c = cfg(r#", "model_type": "gemma2", "sliding_window": 16"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.window(0), c.window(1)), (Some(16), None));
        assert_eq!(c.arch.query_pre_attn_scalar, Some(256.0));
        let c = parse(
            r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 7,
            "num_attention_heads": 4, "vocab_size": 300, "model_type": "gemma3_text",
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let windows: Vec<bool> = (0..7).map(|l| c.window(l).is_some()).collect();
        assert_eq!(windows, [true, true, true, true, true, false, true]);
        assert_eq!(c.arch.rope_local_theta, Some(10_000.0));
        assert_eq!(c.rope_theta, 1_000_000.0);
    }

    #[test]
    fn gpt2_keys_are_read() {
        let c = parse(
            r#"{"model_type": "gpt2", "n_embd": 64, "n_layer": 3, "n_head": 4, "n_positions": 32,
            "vocab_size": 300, "n_inner": null}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                c.hidden_size,
                c.num_hidden_layers,
                c.intermediate_size,
                c.n_ctx()
            ),
            (64, 3, 256, 32)
        );
        assert!(c.tie_word_embeddings && c.arch.learned_positions && c.arch.biases);
    }
}

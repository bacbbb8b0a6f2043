//! The model's shape, read from and written to a Hugging Face `config.json`, and the named
//! configs (`tiny`, `small`, `qwen2.5-0.5b`, ...) that build random models without downloads.
//!
//! `config.json` is read as it is: keys we do not use are kept and written back, so a checkpoint
//! we save still opens in `transformers` with everything it had. What this module does not do:
//! touch tensors.

use serde_json::{Map, Value, json};

/// The architectures this crate runs: Qwen2 (always q/k/v bias) and Llama (bias optional).
pub const SUPPORTED_ARCHITECTURES: [&str; 2] = ["Qwen2ForCausalLM", "LlamaForCausalLM"];

/// A config that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required key is absent or has the wrong type.
    #[error("config.json: key `{key}`: {reason}")]
    Key {
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The architecture is not one this crate implements.
    #[error(
        "config.json: architecture {found:?} is not supported (supported: {SUPPORTED_ARCHITECTURES:?})"
    )]
    UnsupportedArchitecture {
        /// What the config names.
        found: String,
    },
    /// A named config that does not exist.
    #[error("unknown model config {0:?} (known: {known})", known = NAMED_CONFIGS.join(", "))]
    UnknownName(String),
}

/// The names accepted by [`ModelConfig::named`].
pub const NAMED_CONFIGS: [&str; 6] =
    ["tiny", "small", "qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b"];

/// The shape of a Qwen2-family decoder, as `config.json` states it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// `Qwen2ForCausalLM` or `LlamaForCausalLM`.
    pub architecture: String,
    /// Rows of the embedding and of the output head.
    pub vocab_size: i64,
    /// Width of the residual stream.
    pub hidden_size: i64,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads; divides `num_attention_heads` (grouped-query attention).
    pub num_key_value_heads: i64,
    /// Width of one head (`hidden_size / num_attention_heads` unless the config says otherwise).
    pub head_dim: i64,
    /// Longest sequence the rotary table covers.
    pub max_position_embeddings: i64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Base of the rotary frequencies.
    pub rope_theta: f64,
    /// Whether q/k/v projections have a bias (always for Qwen2; `attention_bias` for Llama).
    pub attention_bias: bool,
    /// Whether the output head reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Standard deviation of random initialisation.
    pub initializer_range: f64,
    /// `bos_token_id`, if any.
    pub bos_token_id: Option<i64>,
    /// `eos_token_id`: one id or several.
    pub eos_token_ids: Vec<i64>,
    /// The dtype the checkpoint is stored in (`float32`, `bfloat16`, `float16`).
    pub dtype: String,
    /// Every other key of `config.json`, written back unchanged.
    pub extra: Map<String, Value>,
}

impl ModelConfig {
    /// One of [`NAMED_CONFIGS`]. `tiny` and `small` are ours (the quickstart's model and a ~25M
    /// model for benchmarks, both sized for the synthetic tokenizer); the `qwen2.5-*` shapes are
    /// those of the published Qwen2.5 checkpoints.
    pub fn named(name: &str) -> Result<Self, ConfigError> {
        // (vocab, hidden, intermediate, layers, heads, kv heads, tied, rope theta, max positions)
        let (vocab, hidden, inter, layers, heads, kv, tied, theta, max_pos) = match name {
            "tiny" => (128, 128, 320, 3, 4, 2, true, 10_000.0, 1024),
            "small" => (1024, 512, 1408, 8, 8, 4, true, 10_000.0, 2048),
            "qwen2.5-0.5b" => (151_936, 896, 4864, 24, 14, 2, true, 1e6, 32_768),
            "qwen2.5-1.5b" => (151_936, 1536, 8960, 28, 12, 2, true, 1e6, 32_768),
            "qwen2.5-3b" => (151_936, 2048, 11_008, 36, 16, 2, true, 1e6, 32_768),
            "qwen2.5-7b" => (152_064, 3584, 18_944, 28, 28, 4, false, 1e6, 32_768),
            other => return Err(ConfigError::UnknownName(other.to_string())),
        };
        let (bos, eos) = if name.starts_with("qwen") {
            (Some(151_643), vec![151_643])
        } else {
            (None, vec![crate::tokenizer::EOS_ID])
        };
        Ok(ModelConfig {
            architecture: "Qwen2ForCausalLM".into(),
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: inter,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim: hidden / heads,
            max_position_embeddings: max_pos,
            rms_norm_eps: 1e-6,
            rope_theta: theta,
            attention_bias: true,
            tie_word_embeddings: tied,
            initializer_range: 0.02,
            bos_token_id: bos,
            eos_token_ids: eos,
            dtype: "float32".into(),
            extra: Map::new(),
        })
    }

    /// Reads a parsed `config.json`.
    pub fn from_hf_json(value: &Value) -> Result<Self, ConfigError> {
        let mut extra = value
            .as_object()
            .ok_or(ConfigError::Key { key: "(root)", reason: "expected a JSON object".into() })?
            .clone();
        let architecture = match extra.remove("architectures") {
            Some(Value::Array(a)) if a.len() == 1 => a[0].as_str().unwrap_or_default().to_string(),
            Some(other) => {
                return Err(ConfigError::UnsupportedArchitecture { found: other.to_string() });
            }
            None => return Err(key_err("architectures", "missing")),
        };
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(ConfigError::UnsupportedArchitecture { found: architecture });
        }
        let qwen = architecture == "Qwen2ForCausalLM";
        let mut take = |key: &'static str| extra.remove(key);
        let vocab_size = int(take("vocab_size"), "vocab_size")?;
        let hidden_size = int(take("hidden_size"), "hidden_size")?;
        let intermediate_size = int(take("intermediate_size"), "intermediate_size")?;
        let num_hidden_layers = int(take("num_hidden_layers"), "num_hidden_layers")?;
        let num_attention_heads = int(take("num_attention_heads"), "num_attention_heads")?;
        let num_key_value_heads = match take("num_key_value_heads") {
            None | Some(Value::Null) => num_attention_heads,
            v => int(v, "num_key_value_heads")?,
        };
        let head_dim = match take("head_dim") {
            None | Some(Value::Null) => hidden_size / num_attention_heads.max(1),
            v => int(v, "head_dim")?,
        };
        let max_position_embeddings =
            int(take("max_position_embeddings"), "max_position_embeddings")?;
        let rms_norm_eps = float(take("rms_norm_eps"), "rms_norm_eps")?;
        // transformers 5 nests the rotary settings in `rope_parameters`; 4.x has `rope_theta` and
        // `rope_scaling` at the top level. Only the default (unscaled) rotary is implemented.
        let mut rope_theta =
            take("rope_theta").map(|v| float(Some(v), "rope_theta")).transpose()?;
        let rope_parameters = take("rope_parameters");
        if let Some(Value::Object(params)) = &rope_parameters {
            if let Some(theta) = params.get("rope_theta") {
                rope_theta = Some(float(Some(theta.clone()), "rope_parameters.rope_theta")?);
            }
            check_default_rope(params.get("rope_type"), "rope_parameters.rope_type")?;
        }
        let rope_scaling = take("rope_scaling");
        if let Some(Value::Object(scaling)) = &rope_scaling {
            let kind = scaling.get("rope_type").or(scaling.get("type"));
            check_default_rope(kind, "rope_scaling")?;
        }
        let rope_theta = rope_theta.unwrap_or(10_000.0);
        if let Some(v) = rope_parameters {
            extra.insert("rope_parameters".into(), v);
        }
        if let Some(v) = rope_scaling {
            extra.insert("rope_scaling".into(), v);
        }
        if extra.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
            return Err(key_err("use_sliding_window", "sliding-window attention is not supported"));
        }
        if extra.get("mlp_bias").and_then(Value::as_bool) == Some(true) {
            return Err(key_err("mlp_bias", "MLP biases are not supported"));
        }
        let attention_bias = if qwen {
            true
        } else {
            extra.get("attention_bias").and_then(Value::as_bool).unwrap_or(false)
        };
        // Absent means untied, as in transformers' Qwen2Config and LlamaConfig.
        let tie_word_embeddings =
            extra.remove("tie_word_embeddings").and_then(|v| v.as_bool()).unwrap_or(false);
        let initializer_range =
            extra.get("initializer_range").and_then(Value::as_f64).unwrap_or(0.02);
        let bos_token_id = extra.remove("bos_token_id").and_then(|v| v.as_i64());
        let eos_token_ids = match extra.remove("eos_token_id") {
            Some(Value::Array(ids)) => ids.iter().filter_map(Value::as_i64).collect(),
            Some(v) => v.as_i64().into_iter().collect(),
            None => Vec::new(),
        };
        let dtype = extra
            .remove("dtype")
            .or_else(|| extra.remove("torch_dtype"))
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "float32".into());
        extra.remove("torch_dtype");
        let config = ModelConfig {
            architecture,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings,
            rms_norm_eps,
            rope_theta,
            attention_bias,
            tie_word_embeddings,
            initializer_range,
            bos_token_id,
            eos_token_ids,
            dtype,
            extra,
        };
        config.validate()?;
        Ok(config)
    }

    /// The `config.json` that `transformers` reads back as this config.
    pub fn to_hf_json(&self) -> Value {
        let mut out = self.extra.clone();
        let qwen = self.architecture == "Qwen2ForCausalLM";
        let model_type = if qwen { "qwen2" } else { "llama" };
        let eos = match self.eos_token_ids.as_slice() {
            [] => Value::Null,
            [one] => json!(one),
            many => json!(many),
        };
        let fields = json!({
            "architectures": [self.architecture],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "hidden_act": "silu",
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "dtype": self.dtype,
        });
        if let Value::Object(fields) = fields {
            out.extend(fields);
        }
        // transformers 5 reads `rope_parameters`, 4.x the top-level `rope_theta`: write both.
        let rope = out.entry("rope_parameters").or_insert(json!({ "rope_type": "default" }));
        if let Value::Object(params) = rope {
            params.insert("rope_theta".into(), json!(self.rope_theta));
        }
        if !qwen {
            out.insert("attention_bias".into(), json!(self.attention_bias));
            out.entry("mlp_bias").or_insert(json!(false));
        }
        out.entry("use_cache").or_insert(json!(true));
        out.entry("attention_dropout").or_insert(json!(0.0));
        Value::Object(out)
    }

    /// Checks the shape is one the model can be built with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (key, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v <= 0 {
                return Err(key_err(key, &format!("must be positive, got {v}")));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(key_err(
                "num_key_value_heads",
                &format!(
                    "{} does not divide num_attention_heads = {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(key_err("head_dim", "rotary embeddings need an even head_dim"));
        }
        crate::checkpoint::kind_of_dtype(&self.dtype)
            .map_err(|e| key_err("torch_dtype", &e.to_string()))?;
        Ok(())
    }

    /// Number of parameters (embedding counted once when tied).
    pub fn num_parameters(&self) -> i64 {
        let (h, d, i) = (self.hidden_size, self.head_dim, self.intermediate_size);
        let q = self.num_attention_heads * d;
        let kv = self.num_key_value_heads * d;
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let attention = h * q + 2 * h * kv + q * h + bias;
        let mlp = 3 * h * i;
        let layer = attention + mlp + 2 * h;
        let head = if self.tie_word_embeddings { 0 } else { self.vocab_size * h };
        self.vocab_size * h + self.num_hidden_layers * layer + h + head
    }
}

fn key_err(key: &'static str, reason: &str) -> ConfigError {
    ConfigError::Key { key, reason: reason.to_string() }
}

fn int(v: Option<Value>, key: &'static str) -> Result<i64, ConfigError> {
    match v {
        Some(v) => v.as_i64().ok_or_else(|| key_err(key, &format!("expected an integer, got {v}"))),
        None => Err(key_err(key, "missing")),
    }
}

fn float(v: Option<Value>, key: &'static str) -> Result<f64, ConfigError> {
    match v {
        Some(v) => v.as_f64().ok_or_else(|| key_err(key, &format!("expected a number, got {v}"))),
        None => Err(key_err(key, "missing")),
    }
}

fn check_default_rope(kind: Option<&Value>, key: &'static str) -> Result<(), ConfigError> {
    match kind.and_then(Value::as_str) {
        None | Some("default") => Ok(()),
        Some(other) => Err(key_err(key, &format!("rotary scaling {other:?} is not supported"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_configs_round_trip_through_json() {
        for name in NAMED_CONFIGS {
            let config = ModelConfig::named(name).expect("named config");
            let back = ModelConfig::from_hf_json(&config.to_hf_json()).expect("parse");
            assert_eq!(config.hidden_size, back.hidden_size, "{name}");
            assert_eq!(config.tie_word_embeddings, back.tie_word_embeddings, "{name}");
            assert_eq!(config.eos_token_ids, back.eos_token_ids, "{name}");
        }
    }

    #[test]
    fn published_parameter_counts() {
        // Qwen2.5 model cards: 0.49B (0.5B) and 7.61B parameters.
        let half = ModelConfig::named("qwen2.5-0.5b").expect("named").num_parameters();
        assert!((490_000_000..500_000_000).contains(&half), "{half}");
        let seven = ModelConfig::named("qwen2.5-7b").expect("named").num_parameters();
        assert!((7_600_000_000..7_620_000_000).contains(&seven), "{seven}");
    }

    #[test]
    fn errors_name_the_key() {
        let mut v = ModelConfig::named("tiny").expect("named").to_hf_json();
        v["num_key_value_heads"] = json!(3);
        let err = ModelConfig::from_hf_json(&v).expect_err("3 does not divide 4").to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
        v["architectures"] = json!(["GPT2LMHeadModel"]);
        let err = ModelConfig::from_hf_json(&v).expect_err("gpt2").to_string();
        assert!(err.contains("GPT2LMHeadModel"), "{err}");
    }
}

//! Hugging Face checkpoint directories: `config.json`, `model.safetensors` (or shards with
//! `model.safetensors.index.json`), `tokenizer.json`, `generation_config.json`.
//!
//! We read and write the same layout `transformers` does, so users bring Qwen2.5 weights in and
//! take trained policies out. Only safetensors is read, never pickle. What this module does not
//! do: optimizer state (the learner's checkpoints add it beside these files).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use tch::{Device, Kind, Tensor};

use crate::config::{ConfigError, ModelConfig};
use crate::model::Qwen2;
use crate::tokenizer::{Tokenizer, TokenizerError};

const CONFIG: &str = "config.json";
const WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";
const TOKENIZER: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const GENERATION_CONFIG: &str = "generation_config.json";

/// Why a checkpoint could not be read or written. Each names the file or tensor at fault.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file is missing or unreadable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A JSON file does not parse.
    #[error("{path}: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The directory has neither `model.safetensors` nor an index of shards.
    #[error(
        "{dir}: no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are read)"
    )]
    NoWeights {
        /// The checkpoint directory.
        dir: PathBuf,
    },
    /// `config.json` is unusable.
    #[error("{path}: {source}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: ConfigError,
    },
    /// A safetensors file is malformed.
    #[error("{path}: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The checkpoint's files differ from its `manifest.json` (torn, truncated or altered).
    #[error("checkpoint {dir} is refused: {reason}")]
    Damaged {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Which file differs, and how.
        reason: String,
    },
    /// The model needs a tensor the checkpoint lacks.
    #[error("{dir}: tensor `{name}` is missing")]
    MissingTensor {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The tensor's name.
        name: String,
    },
    /// The checkpoint has tensors the model does not use.
    #[error("{dir}: unexpected tensor(s) {names:?}")]
    UnexpectedTensors {
        /// The checkpoint directory.
        dir: PathBuf,
        /// Their names (at most a few).
        names: Vec<String>,
    },
    /// A tensor's shape is not the one the config implies.
    #[error("{dir}: tensor `{name}` has shape {found:?}, the config implies {expected:?}")]
    WrongShape {
        /// The checkpoint directory.
        dir: PathBuf,
        /// The tensor's name.
        name: String,
        /// Its shape in the file.
        found: Vec<i64>,
        /// The shape the model has.
        expected: Vec<i64>,
    },
    /// A dtype this crate does not run.
    #[error("unsupported dtype {0:?} (expected float32, bfloat16 or float16)")]
    Dtype(String),
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// `generation_config.json`: the defaults a checkpoint suggests for sampling.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    /// Tokens that end a sequence.
    pub eos_token_ids: Vec<i64>,
    /// Suggested temperature.
    pub temperature: Option<f64>,
    /// Suggested nucleus mass.
    pub top_p: Option<f64>,
    /// Suggested top-k.
    pub top_k: Option<i64>,
}

/// A loaded checkpoint directory.
#[derive(Debug)]
pub struct Checkpoint {
    /// The model, on the requested device and dtype.
    pub model: Qwen2,
    /// `tokenizer.json`, when the directory has one.
    pub tokenizer: Option<Tokenizer>,
    /// `generation_config.json`, or defaults from `config.json`.
    pub generation: GenerationDefaults,
}

/// The tch kind of a `config.json` dtype name.
pub fn kind_of_dtype(dtype: &str) -> Result<Kind, CheckpointError> {
    match dtype {
        "float32" | "fp32" => Ok(Kind::Float),
        "bfloat16" | "bf16" => Ok(Kind::BFloat16),
        "float16" | "fp16" => Ok(Kind::Half),
        other => Err(CheckpointError::Dtype(other.to_string())),
    }
}

fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bfloat16",
        Kind::Half => "float16",
        _ => "float32",
    }
}

fn read_json(path: &Path) -> Result<Value, CheckpointError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text)
        .map_err(|e| CheckpointError::Json { path: path.to_path_buf(), reason: e.to_string() })
}

fn write_json(path: &Path, value: &Value) -> Result<(), CheckpointError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    std::fs::write(path, text)
        .map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })
}

/// Reads `config.json` of a checkpoint directory.
pub fn read_config(dir: &Path) -> Result<ModelConfig, CheckpointError> {
    let path = dir.join(CONFIG);
    ModelConfig::from_hf_json(&read_json(&path)?)
        .map_err(|source| CheckpointError::Config { path, source })
}

/// Loads a checkpoint directory onto `device`; `kind` overrides the stored dtype.
///
/// A directory with a `manifest.json` (every checkpoint the learner writes) must match it file
/// for file, or it is refused with the name of the file that differs.
pub fn load(dir: &Path, device: Device, kind: Option<Kind>) -> Result<Checkpoint, CheckpointError> {
    verify_manifest(dir)?;
    let config = read_config(dir)?;
    let kind = match kind {
        Some(k) => k,
        None => kind_of_dtype(&config.dtype)?,
    };
    let generation = read_generation_config(dir, &config)?;
    let model = Qwen2::zeros(config, kind, device);
    load_weights(&model, dir)?;
    let tokenizer_path = dir.join(TOKENIZER);
    let tokenizer =
        if tokenizer_path.exists() { Some(Tokenizer::from_file(&tokenizer_path)?) } else { None };
    Ok(Checkpoint { model, tokenizer, generation })
}

fn read_generation_config(
    dir: &Path,
    config: &ModelConfig,
) -> Result<GenerationDefaults, CheckpointError> {
    let path = dir.join(GENERATION_CONFIG);
    let mut defaults =
        GenerationDefaults { eos_token_ids: config.eos_token_ids.clone(), ..Default::default() };
    if !path.exists() {
        return Ok(defaults);
    }
    let value = read_json(&path)?;
    match value.get("eos_token_id") {
        Some(Value::Array(ids)) => {
            defaults.eos_token_ids = ids.iter().filter_map(Value::as_i64).collect()
        }
        Some(Value::Number(id)) => defaults.eos_token_ids = id.as_i64().into_iter().collect(),
        _ => {}
    }
    defaults.temperature = value.get("temperature").and_then(Value::as_f64);
    defaults.top_p = value.get("top_p").and_then(Value::as_f64);
    defaults.top_k = value.get("top_k").and_then(Value::as_i64);
    Ok(defaults)
}

/// The safetensors files of a checkpoint: the one file, or the shards its index names.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let single = dir.join(WEIGHTS);
    if single.exists() {
        return Ok(vec![single]);
    }
    let index_path = dir.join(WEIGHTS_INDEX);
    if !index_path.exists() {
        return Err(CheckpointError::NoWeights { dir: dir.to_path_buf() });
    }
    let index = read_json(&index_path)?;
    let map = index.get("weight_map").and_then(Value::as_object).ok_or_else(|| {
        CheckpointError::Json { path: index_path.clone(), reason: "no `weight_map` object".into() }
    })?;
    let mut files: Vec<String> =
        map.values().filter_map(|v| v.as_str().map(str::to_string)).collect();
    files.sort();
    files.dedup();
    files
        .into_iter()
        .map(|f| {
            // A shard name is a file in this directory, never a path elsewhere.
            if f.contains('/') || f.contains('\\') || f == ".." {
                return Err(CheckpointError::Json {
                    path: index_path.clone(),
                    reason: format!("bad shard name {f:?}"),
                });
            }
            Ok(dir.join(f))
        })
        .collect()
}

/// Checks `dir` against its `manifest.json`, when it has one.
pub fn verify_manifest(dir: &Path) -> Result<(), CheckpointError> {
    if !dir.join(crate::manifest::MANIFEST).is_file() {
        return Ok(());
    }
    crate::manifest::verify(dir)
        .map_err(|reason| CheckpointError::Damaged { dir: dir.to_path_buf(), reason })
}

/// Copies a checkpoint directory's tensors into `model`, checking every name and shape.
pub fn load_weights(model: &Qwen2, dir: &Path) -> Result<(), CheckpointError> {
    let mut found: HashMap<String, Tensor> = HashMap::new();
    for path in weight_files(dir)? {
        let bytes = std::fs::read(&path)
            .map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
        let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            CheckpointError::Safetensors { path: path.clone(), reason: format!("{e:?}") }
        })?;
        for (name, view) in file.tensors() {
            let tensor = Tensor::try_from(view).map_err(|e| CheckpointError::Safetensors {
                path: path.clone(),
                reason: format!("{name}: {e}"),
            })?;
            found.insert(name, tensor);
        }
    }
    let tied = model.config().tie_word_embeddings;
    let _guard = tch::no_grad_guard();
    for (name, param) in model.checkpoint_tensors() {
        let tensor = found.remove(name).ok_or_else(|| CheckpointError::MissingTensor {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        })?;
        if tensor.size() != param.size() {
            return Err(CheckpointError::WrongShape {
                dir: dir.to_path_buf(),
                name: name.to_string(),
                found: tensor.size(),
                expected: param.size(),
            });
        }
        param.shallow_clone().copy_(&tensor.to_kind(param.kind()));
    }
    // A tied checkpoint may still carry the head; old ones carry the rotary table.
    let ignorable =
        |name: &str| (tied && name == "lm_head.weight") || name.ends_with("rotary_emb.inv_freq");
    found.retain(|name, _| !ignorable(name));
    if !found.is_empty() {
        let mut names: Vec<String> = found.into_keys().collect();
        names.sort();
        names.truncate(5);
        return Err(CheckpointError::UnexpectedTensors { dir: dir.to_path_buf(), names });
    }
    Ok(())
}

/// What [`save`] writes besides the weights.
#[derive(Debug, Default)]
pub struct SaveOptions<'a> {
    /// Written as `tokenizer.json` (and a `tokenizer_config.json` naming its special tokens).
    pub tokenizer: Option<&'a Tokenizer>,
    /// Written as `generation_config.json`.
    pub generation: Option<&'a GenerationDefaults>,
    /// Split the weights into shards of at most this many bytes (with an index) when set.
    pub max_shard_bytes: Option<usize>,
}

/// Writes `model` as a Hugging Face checkpoint directory (created if absent) in the model's dtype.
pub fn save(model: &Qwen2, dir: &Path, options: &SaveOptions<'_>) -> Result<(), CheckpointError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CheckpointError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut config = model.config().clone();
    config.dtype = dtype_name(model.kind()).to_string();
    write_json(&dir.join(CONFIG), &config.to_hf_json())?;

    let tensors: Vec<(String, Tensor)> = model
        .checkpoint_tensors()
        .map(|(name, t)| (name.to_string(), t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    let shards = split_into_shards(&tensors, options.max_shard_bytes);
    // Stale weights from an earlier save would shadow or contradict the new ones.
    for stale in [WEIGHTS, WEIGHTS_INDEX] {
        let _ = std::fs::remove_file(dir.join(stale));
    }
    if shards.len() == 1 {
        write_safetensors(&tensors, &dir.join(WEIGHTS))?;
    } else {
        let count = shards.len();
        let mut weight_map = BTreeMap::new();
        let mut total = 0usize;
        for (i, shard) in shards.iter().enumerate() {
            let file = format!("model-{:05}-of-{count:05}.safetensors", i + 1);
            let part: Vec<(String, Tensor)> = shard
                .iter()
                .map(|&j| (tensors[j].0.clone(), tensors[j].1.shallow_clone()))
                .collect();
            for (name, t) in &part {
                weight_map.insert(name.clone(), file.clone());
                total += t.numel() * t.kind().elt_size_in_bytes();
            }
            write_safetensors(&part, &dir.join(&file))?;
        }
        let index = json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        write_json(&dir.join(WEIGHTS_INDEX), &index)?;
    }
    if let Some(tokenizer) = options.tokenizer {
        tokenizer.save(&dir.join(TOKENIZER))?;
        let tokenizer_config = dir.join(TOKENIZER_CONFIG);
        if !tokenizer_config.exists() {
            write_json(&tokenizer_config, &crate::tokenizer::synthetic_tokenizer_config())?;
        }
    }
    if let Some(generation) = options.generation {
        let mut value = json!({ "eos_token_id": generation.eos_token_ids, "bos_token_id": config.bos_token_id });
        for (key, v) in [("temperature", generation.temperature), ("top_p", generation.top_p)] {
            if let Some(v) = v {
                value[key] = json!(v);
            }
        }
        if let Some(k) = generation.top_k {
            value["top_k"] = json!(k);
        }
        if generation.temperature.is_some()
            || generation.top_p.is_some()
            || generation.top_k.is_some()
        {
            value["do_sample"] = json!(true);
        }
        write_json(&dir.join(GENERATION_CONFIG), &value)?;
    }
    Ok(())
}

/// Groups tensor indices into shards of at most `max_bytes` each (a larger tensor gets its own).
fn split_into_shards(tensors: &[(String, Tensor)], max_bytes: Option<usize>) -> Vec<Vec<usize>> {
    let Some(max_bytes) = max_bytes else {
        return vec![(0..tensors.len()).collect()];
    };
    let mut shards: Vec<Vec<usize>> = vec![Vec::new()];
    let mut current = 0usize;
    for (i, (_, t)) in tensors.iter().enumerate() {
        let bytes = t.numel() * t.kind().elt_size_in_bytes();
        let last = shards.last_mut().expect("at least one shard");
        if !last.is_empty() && current + bytes > max_bytes {
            shards.push(vec![i]);
            current = bytes;
        } else {
            last.push(i);
            current += bytes;
        }
    }
    shards
}

fn write_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<(), CheckpointError> {
    let err = |reason: String| CheckpointError::Safetensors { path: path.to_path_buf(), reason };
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in tensors {
        let dtype = match t.kind() {
            Kind::Float => safetensors::Dtype::F32,
            Kind::BFloat16 => safetensors::Dtype::BF16,
            Kind::Half => safetensors::Dtype::F16,
            other => return Err(err(format!("{name}: cannot save {other:?}"))),
        };
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut data, numel).map_err(|e| err(format!("{name}: {e}")))?;
        let shape = t.size().iter().map(|&d| d as usize).collect();
        owned.push((name.clone(), dtype, shape, data));
    }
    let views = owned
        .iter()
        .map(|(name, dtype, shape, data)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (name.clone(), v))
                .map_err(|e| err(format!("{name}: {e:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // `transformers` checks this metadata key before it trusts a safetensors file.
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::tensor::serialize_to_file(views, &metadata, path)
        .map_err(|e| err(format!("{e:?}")))
}

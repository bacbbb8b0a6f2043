//! What every process that runs the policy (actors, and the learner for its evaluations)
//! derives from the run config, in one place so that they agree: the task's questions and
//! their train/eval split, the tokenizer, the model, the objectives and budgets, the sampling
//! settings. What it does not do: load weights from a checkpoint the learner wrote
//! ([`crate::weights`] and `policy::checkpoint` do), or talk to other processes.

use std::path::Path;

use anyhow::{Context, bail};
use paretopo_service::RunConfig;
use policy::{ModelConfig, Qwen2, SamplingParams, Tokenizer};
use tasks::datasets::{self, Example};
use tasks::format::STOP_STRINGS;
use tasks::synthetic::{self, Demonstration};
use tasks::{Budgets, Objective, TextMetric};
use tch::{Device, Kind};

/// The task as the run uses it.
#[derive(Debug, Clone)]
pub struct TaskSetup {
    /// Questions to train on (actors shard these).
    pub train: Vec<Example>,
    /// Held-out questions (evaluation only).
    pub eval: Vec<Example>,
    /// Warm-start demonstrations (empty for data files).
    pub demonstrations: Vec<Demonstration>,
    /// Multi-character tokens for the synthetic tokenizer.
    pub extra_tokens: Vec<String>,
    /// The tools the parser accepts.
    pub tools: Vec<&'static str>,
    /// The objectives, in the run's order.
    pub objectives: Vec<Objective>,
    /// The budgets the efficiency objectives are measured against.
    pub budgets: Budgets,
    /// How text answers are scored.
    pub metric: TextMetric,
}

impl TaskSetup {
    /// Tool names as the agent loop takes them.
    pub fn tool_names(&self) -> Vec<&str> {
        self.tools.to_vec()
    }
}

/// The task of `config`: a built-in one generated from `run.seed`, or a GSM8K (`.jsonl`) or
/// HotpotQA (`.json`) file, split into train and eval by `algorithm.eval_fraction`.
pub fn task(config: &RunConfig) -> anyhow::Result<TaskSetup> {
    let name = config.task.name.as_str();
    let seed = config.run.seed;
    // Question answering (kb-qa, HotpotQA) searches and scores by F1; math calls the
    // calculator and scores by exact match.
    let qa = name == synthetic::kbqa::NAME || name.ends_with(".json");
    let (tools, metric) = if qa {
        (vec!["search"], TextMetric::TokenF1)
    } else {
        (vec!["calculator"], TextMetric::ExactMatch)
    };
    let (examples, demonstrations, extra_tokens) = if synthetic::TASKS.contains(&name) {
        let data = synthetic::generate_with(name, &config.task.settings_json(), seed)
            .context("key `task.settings`")?;
        (data.examples, data.demonstrations, data.extra_tokens)
    } else {
        let path = Path::new(name);
        let text = std::fs::read_to_string(path).with_context(|| {
                format!("key `task.name`: {name:?} is no built-in task (arith, kb-qa) and cannot be read as a file")
            })?;
        let loaded = if name.ends_with(".json") {
            datasets::load_hotpotqa(&text).with_context(|| format!("task file {name}"))?
        } else {
            datasets::load_gsm8k(&text)
        };
        for bad in loaded.skipped.iter().take(5) {
            tracing::warn!(file = name, position = bad.position, reason = %bad.reason, "skipped a bad record");
        }
        if loaded.examples.is_empty() {
            bail!("task file {name}: no usable record");
        }
        (loaded.examples, Vec::new(), Vec::new())
    };
    let (train, eval) = datasets::split(examples, config.algorithm.eval_fraction, seed);
    if train.is_empty() {
        bail!("key `algorithm.eval_fraction`: leaves no training question");
    }
    let objectives = config
        .task
        .objectives
        .iter()
        .map(|o| o.parse::<Objective>())
        .collect::<Result<Vec<_>, _>>()
        .context("key `task.objectives`")?;
    Ok(TaskSetup {
        train,
        eval,
        demonstrations,
        extra_tokens,
        tools,
        objectives,
        budgets: Budgets {
            tool_calls: config.algorithm.tool_call_budget,
            tokens: config.algorithm.token_budget,
        },
        metric,
    })
}

/// The tokenizer: the checkpoint's own when `model.name` is a directory holding one, else the
/// synthetic tokenizer with the task's extra tokens.
pub fn tokenizer(config: &RunConfig, task: &TaskSetup) -> anyhow::Result<Tokenizer> {
    let dir = Path::new(&config.model.name);
    let file = dir.join("tokenizer.json");
    if dir.is_dir() && file.is_file() {
        return Tokenizer::from_file(&file).with_context(|| format!("reading {}", file.display()));
    }
    let extra: Vec<&str> = task.extra_tokens.iter().map(String::as_str).collect();
    Tokenizer::synthetic(&extra).context("building the synthetic tokenizer")
}

/// The model of `model.name` on `device`: a checkpoint directory's weights, or a named config
/// with random weights from `run.seed` (its vocabulary grown to hold the tokenizer's ids).
pub fn model(config: &RunConfig, tokenizer: &Tokenizer, device: Device) -> anyhow::Result<Qwen2> {
    let dir = Path::new(&config.model.name);
    if dir.is_dir() {
        let checkpoint = policy::checkpoint::load(dir, device, None)
            .with_context(|| format!("key `model.name`: loading {}", dir.display()))?;
        return Ok(checkpoint.model);
    }
    let mut model_config = ModelConfig::named(&config.model.name)
        .with_context(|| format!("key `model.name`: {:?}", config.model.name))?;
    let needed = tokenizer.vocab_size() as i64;
    if model_config.vocab_size < needed {
        // Rounded up to a multiple of 64, as vocabularies usually are, for aligned matmuls.
        model_config.vocab_size = (needed + 63) / 64 * 64;
    }
    let model = Qwen2::zeros(model_config, Kind::Float, device);
    model.init_random(config.run.seed as i64);
    Ok(model)
}

/// Sampling settings for training episodes (the run's temperature) or, with `greedy`, for
/// evaluation.
pub fn sampling(config: &RunConfig, tokenizer: &Tokenizer, greedy: bool) -> SamplingParams {
    let eos = tokenizer.token_id("<|endoftext|>").unwrap_or(policy::tokenizer::EOS_ID);
    SamplingParams {
        temperature: if greedy { 0.0 } else { config.algorithm.temperature },
        eos_token_ids: vec![eos],
        stop_strings: STOP_STRINGS.iter().map(|s| (*s).to_owned()).collect(),
        max_new_tokens: config.algorithm.token_budget as usize,
        ..Default::default()
    }
}

/// Sets libtorch's threads from `run.torch_threads` (0 leaves libtorch's default).
pub fn set_threads(config: &RunConfig) {
    if config.run.torch_threads > 0 {
        tch::set_num_threads(config.run.torch_threads as i32);
    }
}

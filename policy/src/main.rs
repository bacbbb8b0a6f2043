//! `policy`: make, inspect, sample from and time Qwen2-family checkpoints.
//!
//! ```text
//! policy init --config tiny --seed 0 --out DIR     write a random Hugging Face checkpoint
//! policy logits --model DIR --input-ids 1,2,3      logits of every position, as JSON
//! policy generate --model DIR --prompt TEXT --max-new-tokens N [--temperature 0]
//! policy bench --config NAME --batch B --prompt-len P --new-tokens N --device cpu|cuda
//! ```
//! Exit codes: 0 success, 1 failure, 2 bad arguments (clap's).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use policy::checkpoint::{self, kind_of_dtype};
use policy::train::{self, TokenBatch};
use policy::{
    GenerationDefaults, ModelConfig, Qwen2, Sampler, SamplingParams, SaveOptions, Session,
    Tokenizer,
};
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

#[derive(Parser)]
#[command(
    name = "policy",
    version,
    about = "Make, inspect, sample from and time Qwen2-family checkpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a random model from a named config as a Hugging Face checkpoint directory, with the
    /// synthetic tasks' tokenizer.
    Init {
        /// tiny, small, qwen2.5-0.5b, qwen2.5-1.5b, qwen2.5-3b or qwen2.5-7b.
        #[arg(long)]
        config: String,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 0)]
        seed: i64,
        /// The directory to write.
        #[arg(long)]
        out: PathBuf,
        /// Stored dtype: float32 or bfloat16.
        #[arg(long, default_value = "float32")]
        dtype: String,
        /// Split the weights into shards of at most this many bytes.
        #[arg(long)]
        max_shard_bytes: Option<usize>,
    },
    /// Print the logits of every position of a token sequence as JSON (float32 computation).
    Logits {
        /// A checkpoint directory.
        #[arg(long)]
        model: PathBuf,
        /// Comma-separated token ids.
        #[arg(long, value_delimiter = ',', required = true)]
        input_ids: Vec<i64>,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Sample a continuation of a text prompt.
    Generate {
        /// A checkpoint directory (with tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// The prompt text.
        #[arg(long)]
        prompt: String,
        /// The most tokens to sample.
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0 means greedy.
        #[arg(long, default_value_t = 1.0)]
        temperature: f64,
        /// Nucleus mass (1 = off).
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        /// Keep the k most likely tokens (0 = off).
        #[arg(long, default_value_t = 0)]
        top_k: i64,
        /// Stop when the sampled text contains this (repeatable).
        #[arg(long = "stop")]
        stop: Vec<String>,
        /// Sampler seed.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Print token ids, log-probs and the finish reason as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Time batched generation and the masked log-prob forward+backward on a random model.
    Bench {
        /// A named config (random weights) ...
        #[arg(long, conflicts_with = "model", required_unless_present = "model")]
        config: Option<String>,
        /// ... or a checkpoint directory.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Sequences per batch.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Prompt tokens per sequence.
        #[arg(long, default_value_t = 32)]
        prompt_len: usize,
        /// Tokens generated per sequence.
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// cpu, cuda or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
        /// float32 or bfloat16.
        #[arg(long, default_value = "float32")]
        dtype: String,
        /// libtorch intra-op threads (default: libtorch's choice).
        #[arg(long)]
        threads: Option<i32>,
        /// Timed repetitions after one warm-up; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Skip the training measurement.
        #[arg(long)]
        no_train: bool,
        /// Train in passes of at most this many padded tokens, as the learner does
        /// (`[learner] max_tokens_per_pass`); 0: the whole batch in one pass.
        #[arg(long, default_value_t = train::DEFAULT_MAX_TOKENS_PER_PASS)]
        max_tokens_per_pass: usize,
        /// Print one JSON line instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    if let Err(err) = run(cli.command) {
        // A reader that went away (`policy logits ... | head`) is not a failure of ours.
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return;
        }
        eprintln!("policy: {err:#}");
        std::process::exit(1);
    }
}

/// Writes one line to stdout, returning the error (e.g. a closed pipe) instead of panicking.
fn print_line(line: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Init { config, seed, out, dtype, max_shard_bytes } => {
            let kind = kind_of_dtype(&dtype)?;
            let config = ModelConfig::named(&config)?;
            let tokenizer = Tokenizer::synthetic(&[])?;
            let model = Qwen2::zeros(config, kind, Device::Cpu);
            model.init_random(seed);
            let generation = GenerationDefaults {
                eos_token_ids: model.config().eos_token_ids.clone(),
                ..Default::default()
            };
            let options = SaveOptions {
                tokenizer: Some(&tokenizer),
                generation: Some(&generation),
                max_shard_bytes,
            };
            checkpoint::save(&model, &out, &options)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!(
                "policy: wrote {} ({} parameters, {dtype}) to {}",
                model.config().architecture,
                model.parameters().numel(),
                out.display()
            );
        }
        Command::Logits { model, input_ids, device } => {
            let device = policy::device_from_setting(&device)?;
            let ckpt = checkpoint::load(&model, device, Some(Kind::Float))?;
            let vocab = ckpt.model.config().vocab_size;
            if let Some(bad) = input_ids.iter().find(|&&id| id < 0 || id >= vocab) {
                bail!("token id {bad} is outside the vocabulary (0..{vocab})");
            }
            let ids = Tensor::from_slice(&input_ids).unsqueeze(0).to_device(device);
            let logits =
                tch::no_grad(|| ckpt.model.forward(&ids)).squeeze_dim(0).to_device(Device::Cpu);
            let rows: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(logits).context("logits to f32")?;
            print_line(&serde_json::to_string(&rows)?)?;
        }
        Command::Generate {
            model,
            prompt,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            stop,
            seed,
            device,
            json,
        } => {
            let device = policy::device_from_setting(&device)?;
            let ckpt = checkpoint::load(&model, device, None)?;
            let tokenizer = ckpt
                .tokenizer
                .with_context(|| format!("{}: no tokenizer.json", model.display()))?;
            let prompt_ids = tokenizer.encode(&prompt)?;
            if prompt_ids.is_empty() {
                bail!("the prompt is empty");
            }
            let params = SamplingParams {
                temperature,
                top_p,
                top_k,
                max_new_tokens,
                eos_token_ids: ckpt.generation.eos_token_ids.clone(),
                stop_strings: stop,
            };
            let capacity = (prompt_ids.len() + max_new_tokens) as i64;
            let mut session = Session::new(&ckpt.model, &[prompt_ids], capacity);
            let turn = session
                .generate(&[0], &params, &mut Sampler::new(seed), Some(&tokenizer))
                .remove(0);
            let text = tokenizer.decode(&turn.tokens)?;
            if json {
                let value = serde_json::json!({
                    "text": text,
                    "tokens": turn.tokens,
                    "logprobs": turn.logprobs,
                    "finish": format!("{:?}", turn.finish),
                });
                print_line(&value.to_string())?;
            } else {
                print_line(&text)?;
            }
        }
        Command::Bench {
            config,
            model,
            batch,
            prompt_len,
            new_tokens,
            device,
            dtype,
            threads,
            repeats,
            no_train,
            max_tokens_per_pass,
            json,
        } => {
            if let Some(n) = threads {
                tch::set_num_threads(n);
            }
            let device = policy::device_from_setting(&device)?;
            let kind = kind_of_dtype(&dtype)?;
            let (name, model) = match (config, model) {
                (Some(name), _) => {
                    let model = Qwen2::zeros(ModelConfig::named(&name)?, kind, device);
                    model.init_random(0);
                    (name, model)
                }
                (None, Some(dir)) => {
                    (dir.display().to_string(), checkpoint::load(&dir, device, Some(kind))?.model)
                }
                (None, None) => bail!("give --config or --model"),
            };
            let lengths = BenchLengths { batch, prompt_len, new_tokens };
            let train = (!no_train).then_some(max_tokens_per_pass);
            let report = bench(&model, lengths, repeats.max(1), train);
            let value = serde_json::json!({
                "config": name,
                "params": model.parameters().numel(),
                "batch": batch,
                "prompt_len": prompt_len,
                "new_tokens": new_tokens,
                "device": policy::device_name(device),
                "dtype": dtype,
                "threads": tch::get_num_threads(),
                "generate_seconds": report.generate_seconds,
                "generate_tokens_per_s": (batch * new_tokens) as f64 / report.generate_seconds,
                "max_tokens_per_pass": max_tokens_per_pass,
                "train_seconds": report.train_seconds,
                "train_tokens_per_s": report.train_seconds.map(|s| (batch * (prompt_len + new_tokens)) as f64 / s),
            });
            if json {
                print_line(&value.to_string())?;
            } else {
                print_line(&serde_json::to_string_pretty(&value)?)?;
            }
        }
    }
    Ok(())
}

struct BenchReport {
    generate_seconds: f64,
    train_seconds: Option<f64>,
}

/// The shape of a benchmark batch.
struct BenchLengths {
    batch: usize,
    prompt_len: usize,
    new_tokens: usize,
}

/// Median seconds of `repeats` timed runs of generation (and, with `train` = the pass size, of
/// the masked log-prob forward+backward over the same sequences, in passes as the learner
/// trains), after one untimed warm-up each.
fn bench(
    model: &Qwen2,
    lengths: BenchLengths,
    repeats: usize,
    train: Option<usize>,
) -> BenchReport {
    let BenchLengths { batch, prompt_len, new_tokens } = lengths;
    let vocab = model.config().vocab_size;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let prompts: Vec<Vec<i64>> =
        (0..batch).map(|_| (0..prompt_len).map(|_| rng.random_range(0..vocab)).collect()).collect();
    // No end token, so every row samples exactly `new_tokens`.
    let params =
        SamplingParams { temperature: 1.0, max_new_tokens: new_tokens, ..Default::default() };
    let rows: Vec<usize> = (0..batch).collect();
    let capacity = (prompt_len + new_tokens) as i64;
    let sync = || {
        if let Device::Cuda(i) = model.device() {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let mut generated = Vec::new();
    let generate_seconds = median((0..=repeats).map(|rep| {
        sync();
        let start = Instant::now();
        let mut session = Session::new(model, &prompts, capacity);
        session.generate(&rows, &params, &mut Sampler::new(rep as u64), None);
        sync();
        generated = session.sequences().to_vec();
        start.elapsed().as_secs_f64()
    }));
    let train_seconds = train.map(|max_tokens_per_pass| {
        let masks: Vec<Vec<bool>> =
            generated.iter().map(|s| (0..s.len()).map(|t| t >= prompt_len).collect()).collect();
        let row_lengths: Vec<usize> = generated.iter().map(Vec::len).collect();
        let passes: Vec<TokenBatch> = train::passes(&row_lengths, max_tokens_per_pass)
            .iter()
            .map(|pass| TokenBatch::of_rows(&generated, &masks, pass, model.device()))
            .collect();
        let count = passes.iter().map(TokenBatch::num_loss_tokens).sum::<i64>().max(1) as f64;
        median((0..=repeats).map(|_| {
            sync();
            let start = Instant::now();
            for tokens in &passes {
                train::backward(model, tokens, 1.0, false, |stats| {
                    -stats.logprobs.sum(Kind::Float) / count
                });
            }
            train::zero_grad(model.parameters());
            sync();
            start.elapsed().as_secs_f64()
        }))
    });
    BenchReport { generate_seconds, train_seconds }
}

/// The median of the timed runs, the first (warm-up) one dropped.
fn median(times: impl Iterator<Item = f64>) -> f64 {
    let mut times: Vec<f64> = times.skip(1).collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

//! The paretopo policy: the model the actor samples from and the learner trains, in tch.
//!
//! - [`config`]: the model's shape (`config.json`) and the named configs (`tiny`, `small`,
//!   `qwen2.5-0.5b`, ...);
//! - [`model`]: [`Qwen2`], the Qwen2-family decoder as plain structs, and its [`KvCache`];
//! - [`checkpoint`]: Hugging Face checkpoint directories in and out (safetensors only);
//! - [`tokenizer`]: `tokenizer.json` via the `tokenizers` crate, and the synthetic tasks'
//!   character-level tokenizer;
//! - [`sample`]: batched multi-turn sampling with log-probs ([`Session`]);
//! - [`train`]: masked per-token log-probs, gradients as one flat buffer, [`AdamW`];
//! - [`device`]: the `[model] device` setting;
//! - `small_batch`: the CPU kernel for the weight products of a sampling step.
//!
//! ```no_run
//! use policy::{Qwen2, ModelConfig, Session, Sampler, SamplingParams};
//! let model = Qwen2::zeros(ModelConfig::named("tiny")?, tch::Kind::Float, tch::Device::Cpu);
//! model.init_random(0);
//! let mut session = Session::new(&model, &[vec![5, 6, 7]], 64);
//! let params = SamplingParams { max_new_tokens: 8, ..Default::default() };
//! let turns = session.generate(&[0], &params, &mut Sampler::new(0), None);
//! assert_eq!(turns[0].tokens.len(), 8);
//! # Ok::<(), policy::config::ConfigError>(())
//! ```
//!
//! What it is not: it knows nothing of gRPC, tasks or rewards.

pub mod checkpoint;
pub mod config;
pub mod device;
pub mod manifest;
pub mod model;
pub mod sample;
mod small_batch;
pub mod tokenizer;
pub mod train;

pub use checkpoint::{Checkpoint, CheckpointError, GenerationDefaults, SaveOptions};
pub use config::ModelConfig;
pub use device::{DeviceChoice, DeviceError, device_from_setting, device_name};
pub use model::{KvCache, Qwen2};
pub use sample::{FinishReason, Sampler, SamplingParams, Session, Turn};
pub use tokenizer::Tokenizer;
pub use train::{AdamW, AdamWConfig, TokenBatch, TokenStats};

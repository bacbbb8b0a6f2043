//! One rank's part of a learner step: from scored trajectories to this rank's gradient.
//!
//! Each trajectory becomes a row of a right-padded batch (prompt and completion), its loss mask
//! the tokens the policy generated, its old log-probs the ones it was sampled with, and its
//! advantage repeated on every generated token (spec §3 step 8). The loss is spec §4's
//! ([`crate::loss`]) divided by the step's global token count, so the ranks' gradients summed
//! (the all-reduce) are the gradient of one rank on the whole batch; the optimizer then steps on
//! that sum. A rank's samples go through the model in passes of bounded size (longest first,
//! so a pass pads little), whose gradients add up. What this module does not do: compute
//! advantages, or all-reduce.

use policy::Qwen2;
use policy::train::{self, TokenBatch};
use tch::{Device, Kind, Tensor};

use crate::loss::{LossConfig, LossInputs, LossStats, policy_loss};

pub use paretopo_intake::Sample;

/// What one rank's backward pass gives.
#[derive(Debug)]
pub struct LocalGradient {
    /// All gradients as one flat buffer (`policy::train::flat_grads`), for the all-reduce.
    pub flat: Tensor,
    /// This rank's share of the loss (the ranks' shares add up to the step's loss).
    pub loss: f64,
    /// This rank's share of the loss statistics.
    pub stats: LossStats,
}

/// Builds a `[B, T]` float tensor of per-token values, right-padded with 0.
fn padded(rows: &[Vec<f32>], width: usize, device: Device) -> Tensor {
    let mut flat = vec![0f32; rows.len() * width];
    for (b, row) in rows.iter().enumerate() {
        flat[b * width..b * width + row.len()].copy_from_slice(row);
    }
    Tensor::from_slice(&flat).view([rows.len() as i64, width as i64]).to_device(device)
}

/// How a rank's samples go through the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassOptions {
    /// The temperature log-probs are computed at (the actors' sampling temperature).
    pub temperature: f64,
    /// Recompute each layer in the backward pass instead of keeping its activations.
    pub checkpointing: bool,
    /// At most this many padded tokens in one forward+backward pass (`[learner]
    /// max_tokens_per_pass`, [`policy::train::passes`]); 0 runs every sample in one pass.
    pub max_tokens_per_pass: usize,
}

impl PassOptions {
    /// Temperature 1, no checkpointing, the default pass size.
    pub fn new(temperature: f64) -> Self {
        PassOptions {
            temperature,
            checkpointing: false,
            max_tokens_per_pass: train::DEFAULT_MAX_TOKENS_PER_PASS,
        }
    }
}

/// This rank's gradient for `samples`, with the loss divided by `total_tokens`, the generated
/// tokens of the whole step over all ranks. Gradients are zeroed first, then each pass of
/// [`policy::train::passes`] adds its part: the loss is a sum over tokens, so the parts add up
/// to the gradient of one pass over every sample. `reference` is the policy the KL term
/// measures against (spec §4), needed when `config.kl_coef > 0`.
pub fn local_gradient(
    model: &Qwen2,
    reference: Option<&Qwen2>,
    samples: &[Sample],
    total_tokens: f64,
    config: &LossConfig,
    options: PassOptions,
) -> LocalGradient {
    train::zero_grad(model.parameters());
    let lengths: Vec<usize> = samples.iter().map(|s| s.tokens.len()).collect();
    let mut loss = 0.0;
    let mut stats = LossStats::default();
    for pass in train::passes(&lengths, options.max_tokens_per_pass) {
        let rows: Vec<&Sample> = pass.iter().map(|&i| &samples[i]).collect();
        let (pass_loss, pass_stats) =
            backward_pass(model, reference, &rows, total_tokens, config, options);
        loss += pass_loss;
        // Each statistic is a sum over tokens divided by the global count: the passes add.
        stats.clip_fraction += pass_stats.clip_fraction;
        stats.approx_kl_old += pass_stats.approx_kl_old;
        stats.kl_ref += pass_stats.kl_ref;
    }
    LocalGradient { flat: train::flat_grads(model.parameters()), loss, stats }
}

/// One forward+backward pass over `samples`, adding to the parameters' gradients.
fn backward_pass(
    model: &Qwen2,
    reference: Option<&Qwen2>,
    samples: &[&Sample],
    total_tokens: f64,
    config: &LossConfig,
    options: PassOptions,
) -> (f64, LossStats) {
    let device = model.device();
    let sequences: Vec<Vec<i64>> = samples.iter().map(|s| s.tokens.clone()).collect();
    let masks: Vec<Vec<bool>> = samples.iter().map(|s| s.generated.clone()).collect();
    let batch = TokenBatch::new(&sequences, &masks, device);
    let width = sequences.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let old =
        padded(&samples.iter().map(|s| s.old_logprobs.clone()).collect::<Vec<_>>(), width, device);
    let advantages: Vec<Vec<f32>> = samples
        .iter()
        .map(|s| s.generated.iter().map(|&g| if g { s.advantage as f32 } else { 0.0 }).collect())
        .collect();
    let advantages = padded(&advantages, width, device);
    let temperature = options.temperature;
    let ref_logprobs = reference
        .filter(|_| config.kl_coef > 0.0)
        .map(|r| tch::no_grad(|| train::token_stats(r, &batch, temperature)).logprobs);
    let mut stats = None;
    let (loss, _) =
        train::backward(model, &batch, temperature, options.checkpointing, |token_stats| {
            let inputs = LossInputs {
                logprobs: &token_stats.logprobs,
                old_logprobs: &old,
                advantages: &advantages,
                mask: &batch.loss_mask,
                ref_logprobs: ref_logprobs.as_ref(),
                total_tokens,
            };
            let (loss, loss_stats) = policy_loss(&inputs, config);
            stats = Some(loss_stats);
            loss.to_kind(Kind::Float)
        });
    // `backward` always calls the loss closure; the default only satisfies the type.
    (loss, stats.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_configs_default_pass_size_is_the_policy_crates() {
        // `service` knows no tch, so the number is written in both places.
        let config = paretopo_service::config::LearnerSection::default();
        assert_eq!(config.max_tokens_per_pass as usize, policy::train::DEFAULT_MAX_TOKENS_PER_PASS);
    }
}

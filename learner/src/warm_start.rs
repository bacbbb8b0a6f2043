//! The supervised warm start (DESIGN.md §5): before RL, a freshly initialised model learns the
//! tool-call format from a task's demonstrations (`tasks::synthetic`).
//!
//! Loss: the mean negative log-likelihood of the tokens the model would generate; the prompt
//! and the tool responses are masked, exactly as RL masks them. Schedule: linear warm-up to the
//! peak rate, then linear decay to 0, AdamW with betas (0.9, 0.98) and weight decay 0.01 (the
//! settings measured in `../shared/quickstart-notes.md`). What it does not do: choose the
//! demonstrations or save checkpoints.

use std::ops::ControlFlow;

use policy::Qwen2;
use policy::tokenizer::{Tokenizer, TokenizerError};
use policy::train::{self, AdamW, AdamWConfig, TokenBatch};
use rand::SeedableRng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use tasks::synthetic::Demonstration;
use tch::Kind;

/// The warm start's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmStartConfig {
    /// Optimizer steps.
    pub steps: usize,
    /// Demonstrations per step, drawn with replacement.
    pub batch_size: usize,
    /// The learning rate at the end of the warm-up.
    pub peak_lr: f64,
    /// Steps of linear warm-up.
    pub warmup_steps: usize,
    /// Seed of the draws.
    pub seed: u64,
}

impl Default for WarmStartConfig {
    fn default() -> Self {
        WarmStartConfig { steps: 300, batch_size: 32, peak_lr: 3e-3, warmup_steps: 30, seed: 0 }
    }
}

impl WarmStartConfig {
    /// The learning rate of `step` (0-based): linear warm-up, then linear decay to 0.
    pub fn lr(&self, step: usize) -> f64 {
        let warmup = self.warmup_steps.max(1) as f64;
        let step = step as f64;
        if step < warmup {
            return self.peak_lr * (step + 1.0) / warmup;
        }
        let remaining = (self.steps as f64 - step) / (self.steps as f64 - warmup).max(1.0);
        self.peak_lr * remaining.clamp(0.0, 1.0)
    }
}

/// A demonstration's token ids and loss mask (true where the model writes the token).
pub fn demonstration_tokens(
    tokenizer: &Tokenizer,
    demo: &Demonstration,
) -> Result<(Vec<i64>, Vec<bool>), TokenizerError> {
    let mut ids = tokenizer.encode(&demo.prompt)?;
    let mut mask = vec![false; ids.len()];
    for segment in &demo.segments {
        let tokens = tokenizer.encode(&segment.text)?;
        mask.extend(std::iter::repeat_n(segment.generated, tokens.len()));
        ids.extend(tokens);
    }
    Ok((ids, mask))
}

/// Trains `model` on `demos` for `config.steps` steps and returns each step's loss;
/// `progress(step, loss)` is called after every step and stops the warm start early by
/// returning `ControlFlow::Break` (a shutdown).
pub fn warm_start(
    model: &Qwen2,
    tokenizer: &Tokenizer,
    demos: &[Demonstration],
    config: &WarmStartConfig,
    mut progress: impl FnMut(usize, f64) -> ControlFlow<()>,
) -> Result<Vec<f64>, TokenizerError> {
    let encoded: Vec<(Vec<i64>, Vec<bool>)> =
        demos.iter().map(|d| demonstration_tokens(tokenizer, d)).collect::<Result<_, _>>()?;
    let adamw = AdamWConfig { lr: config.lr(0), beta1: 0.9, beta2: 0.98, ..Default::default() };
    let mut optimizer = AdamW::new(model.parameters(), adamw);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut losses = Vec::with_capacity(config.steps);
    for step in 0..config.steps {
        let picked: Vec<&(Vec<i64>, Vec<bool>)> =
            (0..config.batch_size).filter_map(|_| encoded.choose(&mut rng)).collect();
        if picked.is_empty() {
            break;
        }
        let ids: Vec<Vec<i64>> = picked.iter().map(|(i, _)| i.clone()).collect();
        let masks: Vec<Vec<bool>> = picked.iter().map(|(_, m)| m.clone()).collect();
        let batch = TokenBatch::new(&ids, &masks, model.device());
        let count = batch.num_loss_tokens().max(1) as f64;
        train::zero_grad(model.parameters());
        let (loss, _) = train::backward(model, &batch, 1.0, false, |stats| {
            -stats.logprobs.sum(Kind::Float) / count
        });
        optimizer.config.lr = config.lr(step);
        optimizer.step(model.parameters());
        losses.push(loss);
        if progress(step, loss).is_break() {
            break;
        }
    }
    Ok(losses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays_to_zero() {
        let c =
            WarmStartConfig { steps: 100, peak_lr: 1.0, warmup_steps: 10, ..Default::default() };
        assert!((c.lr(0) - 0.1).abs() < 1e-12);
        assert!((c.lr(9) - 1.0).abs() < 1e-12);
        assert!((c.lr(10) - 1.0).abs() < 1e-12);
        assert!((c.lr(55) - 0.5).abs() < 1e-12);
        assert_eq!(c.lr(100), 0.0);
        let lrs: Vec<f64> = (10..100).map(|s| c.lr(s)).collect();
        assert!(lrs.windows(2).all(|w| w[1] < w[0]), "decays monotonically");
    }
}

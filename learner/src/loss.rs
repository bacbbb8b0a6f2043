//! The policy loss of spec §4, for both stages:
//!
//! ```text
//! L = -(1/N_tok) sum_i sum_t min(rho_it A_it, clip(rho_it, 1 - eps_low, 1 + eps_high) A_it)
//!     + beta_kl KL(pi_theta || pi_ref)
//! ```
//!
//! with `rho_it = pi_theta / pi_old` of the token (the decoupled clip of DAPO), `A_it` the
//! trajectory's advantage on each of its generated tokens, and `N_tok` the number of generated
//! tokens in the **whole step across all learner ranks**: each rank divides by the global count,
//! so the sum of the ranks' gradients is the gradient of one rank on the whole batch. The KL term
//! uses the k3 estimator `exp(r) - r - 1` with `r = log pi_ref - log pi_theta` per token,
//! averaged the same way.
//!
//! What it does not do: compute advantages (`pareto::advantages`) or the log-probs
//! (`policy::train::token_stats`).

use tch::{Kind, Tensor};

/// The loss's settings (spec §4 defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossConfig {
    /// `eps_low`: the ratio is clipped below at `1 - clip_low`.
    pub clip_low: f64,
    /// `eps_high`: the ratio is clipped above at `1 + clip_high`.
    pub clip_high: f64,
    /// `beta_kl`: the weight of the KL penalty to the reference policy (0 turns it off).
    pub kl_coef: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        LossConfig { clip_low: 0.2, clip_high: 0.28, kl_coef: 0.0 }
    }
}

/// One rank's share of a step, as `[B, T]` tensors aligned with `policy::train::TokenBatch`.
#[derive(Debug)]
pub struct LossInputs<'a> {
    /// `log pi_theta` of each token (with gradient), 0 where masked.
    pub logprobs: &'a Tensor,
    /// `log pi_old`: the log-prob each token was sampled with.
    pub old_logprobs: &'a Tensor,
    /// The advantage of each token (its trajectory's).
    pub advantages: &'a Tensor,
    /// Which tokens the policy generated (bool).
    pub mask: &'a Tensor,
    /// `log pi_ref` of each token, when `kl_coef > 0`.
    pub ref_logprobs: Option<&'a Tensor>,
    /// `N_tok`: generated tokens in the whole step, summed over all learner ranks.
    pub total_tokens: f64,
}

/// What the step's logs report about the loss (this rank's tokens, divided by `N_tok`, so the
/// ranks' values add up).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LossStats {
    /// The share of tokens whose ratio was clipped (the min picked the clipped term).
    pub clip_fraction: f64,
    /// The mean of `log pi_old - log pi_theta` (a first-order KL estimate to the old policy).
    pub approx_kl_old: f64,
    /// The mean k3 KL to the reference (0 without one).
    pub kl_ref: f64,
}

/// The loss (a scalar to call `backward` on) and its statistics.
pub fn policy_loss(inputs: &LossInputs<'_>, config: &LossConfig) -> (Tensor, LossStats) {
    let mask = inputs.mask.to_kind(Kind::Float);
    let n = inputs.total_tokens.max(1.0);
    // Masked positions get ratio exp(0) = 1 and contribute 0 through the mask.
    let log_ratio = (inputs.logprobs - inputs.old_logprobs) * &mask;
    let ratio = log_ratio.exp();
    let unclipped = &ratio * inputs.advantages;
    let clipped = ratio.clamp(1.0 - config.clip_low, 1.0 + config.clip_high) * inputs.advantages;
    let surrogate = unclipped.minimum(&clipped);
    let mut loss = -(surrogate * &mask).sum(Kind::Float) / n;
    let mut kl_ref = 0.0;
    if config.kl_coef > 0.0
        && let Some(reference) = inputs.ref_logprobs
    {
        let r = (reference - inputs.logprobs) * &mask;
        let k3 = ((r.exp() - &r - 1.0) * &mask).sum(Kind::Float) / n;
        kl_ref = k3.double_value(&[]);
        loss += k3 * config.kl_coef;
    }
    let stats = tch::no_grad(|| {
        let was_clipped = unclipped_differs(&ratio, inputs.advantages, config) * &mask;
        LossStats {
            clip_fraction: was_clipped.sum(Kind::Float).double_value(&[]) / n,
            approx_kl_old: (-(&log_ratio) * &mask).sum(Kind::Float).double_value(&[]) / n,
            kl_ref,
        }
    });
    (loss, stats)
}

/// 1 where the clipped term is the smaller one and differs from the unclipped term.
fn unclipped_differs(ratio: &Tensor, advantages: &Tensor, config: &LossConfig) -> Tensor {
    let above = ratio.gt(1.0 + config.clip_high).logical_and(&advantages.gt(0.0));
    let below = ratio.lt(1.0 - config.clip_low).logical_and(&advantages.lt(0.0));
    above.logical_or(&below).to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss token by token in plain f64, from the formula.
    fn reference_loss(
        new: &[f64],
        old: &[f64],
        adv: &[f64],
        mask: &[bool],
        n: f64,
        c: &LossConfig,
    ) -> f64 {
        let mut total = 0.0;
        for i in 0..new.len() {
            if !mask[i] {
                continue;
            }
            let rho = (new[i] - old[i]).exp();
            let clipped = rho.clamp(1.0 - c.clip_low, 1.0 + c.clip_high);
            total += (rho * adv[i]).min(clipped * adv[i]);
        }
        -total / n
    }

    fn tensor(values: &[f64]) -> Tensor {
        Tensor::from_slice(values).view([2, -1]).to_kind(Kind::Float)
    }

    #[test]
    fn loss_and_gradient_match_the_formula() {
        // Ratios inside and outside the clip range, both advantage signs, and a masked token.
        let new = [-1.0, -0.5, -2.0, -0.1, -3.0, -1.2];
        let old = [-1.0, -1.0, -1.5, -0.6, -2.0, -1.2];
        let adv = [1.0, 1.0, -1.0, -1.0, 0.5, 2.0];
        let mask = [true, true, true, true, true, false];
        let config = LossConfig::default();
        let logprobs = tensor(&new).set_requires_grad(true);
        let mask_t = Tensor::from_slice(&mask).view([2, -1]);
        let inputs = LossInputs {
            logprobs: &logprobs,
            old_logprobs: &tensor(&old),
            advantages: &tensor(&adv),
            mask: &mask_t,
            ref_logprobs: None,
            total_tokens: 10.0,
        };
        let (loss, stats) = policy_loss(&inputs, &config);
        let want = reference_loss(&new, &old, &adv, &mask, 10.0, &config);
        assert!(
            (loss.double_value(&[]) - want).abs() < 1e-6,
            "{} vs {want}",
            loss.double_value(&[])
        );
        loss.backward();
        let grad = Vec::<f32>::try_from(logprobs.grad().reshape([-1])).expect("grad");
        // Central differences of the reference, per token.
        for i in 0..new.len() {
            let h = 1e-5;
            let (mut up, mut down) = (new, new);
            up[i] += h;
            down[i] -= h;
            let numeric = (reference_loss(&up, &old, &adv, &mask, 10.0, &config)
                - reference_loss(&down, &old, &adv, &mask, 10.0, &config))
                / (2.0 * h);
            assert!(
                (f64::from(grad[i]) - numeric).abs() < 1e-4,
                "token {i}: {} vs {numeric}",
                grad[i]
            );
        }
        // Clipped: token 1 (rho = e^0.5 > 1.28, A > 0) and token 2 (rho = e^-0.5 < 0.8, A < 0).
        // Not: token 3 (rho = e^0.5, A < 0) and token 4 (rho = e^-1, A > 0), where the min
        // keeps the unclipped term.
        assert!((stats.clip_fraction - 2.0 / 10.0).abs() < 1e-9, "{stats:?}");
    }

    #[test]
    fn ranks_dividing_by_the_global_count_add_up_to_one_rank() {
        let new = [-1.0, -0.5, -2.0, -0.1, -3.0, -1.2, -0.7, -0.9];
        let old = [-1.1, -0.4, -1.5, -0.6, -2.9, -1.2, -0.8, -0.3];
        let adv = [1.0, -1.0, -1.0, 0.3, 0.5, 2.0, -0.2, 1.5];
        let mask = [true, true, false, true, true, true, true, false];
        let config = LossConfig { kl_coef: 0.1, ..Default::default() };
        let reference = [-1.0; 8];
        let total = mask.iter().filter(|m| **m).count() as f64;
        let loss_of = |range: std::ops::Range<usize>| {
            let slice = |v: &[f64]| {
                Tensor::from_slice(&v[range.clone()]).view([1, -1]).to_kind(Kind::Float)
            };
            let m = Tensor::from_slice(&mask[range.clone()]).view([1, -1]);
            let inputs = LossInputs {
                logprobs: &slice(&new),
                old_logprobs: &slice(&old),
                advantages: &slice(&adv),
                mask: &m,
                ref_logprobs: Some(&slice(&reference)),
                total_tokens: total,
            };
            policy_loss(&inputs, &config).0.double_value(&[])
        };
        let whole = loss_of(0..8);
        let shards = loss_of(0..3) + loss_of(3..8);
        assert!((whole - shards).abs() < 1e-6, "{whole} vs {shards}");
        // And the KL term is the k3 estimator, by hand.
        let k3: f64 = (0..8)
            .filter(|&i| mask[i])
            .map(|i| {
                let r = reference[i] - new[i];
                r.exp() - r - 1.0
            })
            .sum::<f64>()
            / total;
        let without = LossConfig { kl_coef: 0.0, ..config };
        let base = reference_loss(&new, &old, &adv, &mask, total, &without);
        assert!((whole - (base + 0.1 * k3)).abs() < 1e-6, "{whole} vs {}", base + 0.1 * k3);
    }
}

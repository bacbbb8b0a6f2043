//! The KL term of spec §4 reaches the gradient through `local_gradient`'s reference policy:
//! against itself it adds nothing (k3 = exp(r) - r - 1 has zero slope at r = 0), against
//! another policy it changes the gradient.

use learner::loss::LossConfig;
use learner::step::{PassOptions, Sample, local_gradient};
use policy::{ModelConfig, Qwen2};
use tch::{Device, Kind};

fn model(seed: i64) -> Qwen2 {
    let model = Qwen2::zeros(ModelConfig::named("tiny").expect("tiny"), Kind::Float, Device::Cpu);
    model.init_random(seed);
    model
}

fn samples() -> Vec<Sample> {
    (0..3)
        .map(|i| {
            let tokens: Vec<i64> = (0..12).map(|t| 3 + (t * 5 + i * 7) % 100).collect();
            let generated: Vec<bool> = (0..12).map(|t| t >= 4).collect();
            Sample {
                tokens,
                generated,
                old_logprobs: vec![-4.0; 12],
                advantage: 0.5 - i as f64 * 0.5,
            }
        })
        .collect()
}

#[test]
fn the_kl_term_moves_the_gradient_only_away_from_the_reference() {
    let (policy, other) = (model(1), model(2));
    let batch = samples();
    let total = batch.iter().map(Sample::generated_tokens).sum::<usize>() as f64;
    let plain = LossConfig::default();
    let with_kl = LossConfig { kl_coef: 0.5, ..LossConfig::default() };
    let base = local_gradient(&policy, None, &batch, total, &plain, PassOptions::new(1.0)).flat;
    let against_itself =
        local_gradient(&policy, Some(&policy), &batch, total, &with_kl, PassOptions::new(1.0)).flat;
    let against_other =
        local_gradient(&policy, Some(&other), &batch, total, &with_kl, PassOptions::new(1.0)).flat;
    let diff = |a: &tch::Tensor, b: &tch::Tensor| (a - b).abs().max().double_value(&[]);
    assert!(diff(&base, &against_itself) < 1e-6, "{}", diff(&base, &against_itself));
    assert!(diff(&base, &against_other) > 1e-4, "{}", diff(&base, &against_other));
}

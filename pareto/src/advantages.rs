//! Advantage estimators: from one group's objective vectors (and the run's weights) to one
//! advantage per trajectory. Spec §2 step 2 (GRPO), §3 (Stage 2), §5 (baselines).
//!
//! Conventions (spec §0): population standard deviations; `eps = 1e-6` added to every deviation;
//! a group whose rewards or scores are all exactly equal gets A = 0 for every member, because
//! `(x - mean) / (0 + eps)` is not 0 in floating point. Token-level broadcasting (spec §3 step 8)
//! is the learner's job: these functions stop at one number per trajectory.

use crate::crowding::{Crowding, crowding_distances};
use crate::dominance::Dominance;
use crate::points::Points;
use crate::sort::{front_ranks, net_dominance};

/// The epsilon added to every standard deviation (spec §0).
pub const EPS: f64 = 1e-6;

/// Mean and population standard deviation.
pub fn moments(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// True when every value equals the first exactly: such a group carries no signal (spec §3
/// step 7) and gets zero advantages.
pub fn all_equal(values: &[f64]) -> bool {
    values.iter().all(|v| *v == values[0])
}

/// `(x - mean) / (std + eps)`, or `x - mean` when `divide` is false (Dr. GRPO); zeros when all
/// values are equal.
pub fn whiten(values: &[f64], divide: bool) -> Vec<f64> {
    if all_equal(values) {
        return vec![0.0; values.len()];
    }
    let (mean, std) = moments(values);
    let scale = if divide { std + EPS } else { 1.0 };
    values.iter().map(|v| (v - mean) / scale).collect()
}

/// GRPO's group advantage (DeepSeekMath): `A_i = (r_i - mean r) / (std r + eps)`.
pub fn grpo(rewards: &[f64]) -> Vec<f64> {
    whiten(rewards, true)
}

/// Linear scalarization `r_i = sum_k w_k y_ik` (spec §2 step 1; `static`, spec §5).
///
/// # Panics
/// When `weights.len() != points.m()`.
pub fn linear_rewards(points: Points<'_>, weights: &[f64]) -> Vec<f64> {
    assert_eq!(weights.len(), points.m(), "one weight per objective");
    points.iter().map(|y| y.iter().zip(weights).map(|(a, w)| a * w).sum()).collect()
}

/// Hypervolume scalarization (Golovin and Zhang 2020; spec §2 option `hv_scalarization`):
/// `r_i = min_k(max(0, (y_ik - ref_k) / lambda_k))^K` with `lambda = w / ||w||_2`.
///
/// # Panics
/// When `weights` or `reference` do not have one entry per objective.
pub fn hv_scalarized_rewards(points: Points<'_>, weights: &[f64], reference: &[f64]) -> Vec<f64> {
    let k = points.m();
    assert_eq!(weights.len(), k, "one weight per objective");
    assert_eq!(reference.len(), k, "one reference value per objective");
    let norm = weights.iter().map(|w| w * w).sum::<f64>().sqrt();
    points
        .iter()
        .map(|y| {
            let inner = y
                .iter()
                .zip(weights)
                .zip(reference)
                .map(|((v, w), r)| (v - r).max(0.0) / (w / norm))
                .fold(f64::INFINITY, f64::min);
            inner.powi(k as i32)
        })
        .collect()
}

/// Stage-2 settings (spec §3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage2Options {
    /// The dominance relation.
    pub mode: Dominance,
    /// Weight of the crowding tie-break, `0 <= lambda_cd < 1` (default 0.1), so that it never
    /// reorders fronts.
    pub lambda_cd: f64,
    /// Dr. GRPO: no division by the standard deviation.
    pub dr_grpo: bool,
}

impl Default for Stage2Options {
    fn default() -> Self {
        Self {
            mode: Dominance::Constrained { accuracy: 0, threshold: 1.0 },
            lambda_cd: 0.1,
            dr_grpo: false,
        }
    }
}

/// Crowding distance normalised within each front (spec §3 step 3): finite `cd / M` with `M` the
/// front's largest finite cd (0 when `M` is 0), 1 for +inf, and 0 everywhere in a front with no
/// finite cd.
pub fn normalised_crowding(distance: &[f64], ranks: &[u32]) -> Vec<f64> {
    let fronts = ranks.iter().copied().max().unwrap_or(0) as usize;
    let mut largest = vec![None::<f64>; fronts + 1];
    for (&d, &r) in distance.iter().zip(ranks) {
        if d.is_finite() {
            let slot = &mut largest[r as usize];
            *slot = Some(slot.map_or(d, |m: f64| m.max(d)));
        }
    }
    distance
        .iter()
        .zip(ranks)
        .map(|(&d, &r)| match largest[r as usize] {
            None => 0.0,
            Some(_) if d.is_infinite() => 1.0,
            Some(m) if m > 0.0 => d / m,
            Some(_) => 0.0,
        })
        .collect()
}

/// Stage-2 scores `s_i = -rho_i + lambda_cd c_i` (spec §3 steps 1-4).
pub fn stage2_scores(points: Points<'_>, options: &Stage2Options) -> Vec<f64> {
    let ranks = front_ranks(points, options.mode);
    let distance = crowding_distances(points, &ranks, Crowding::OrderIndependent);
    let c = normalised_crowding(&distance, &ranks);
    ranks.iter().zip(&c).map(|(&r, &c)| -f64::from(r) + options.lambda_cd * c).collect()
}

/// Stage-2 advantages (spec §3 step 5): the scores whitened within the group.
pub fn stage2(points: Points<'_>, options: &Stage2Options) -> Vec<f64> {
    whiten(&stage2_scores(points, options), !options.dr_grpo)
}

/// Net-dominance advantages (spec §3 step 6): `d_i = net_i / (G - 1)`, `A_i = d_i / (std d + eps)`.
pub fn net_dominance_advantages(points: Points<'_>, mode: Dominance) -> Vec<f64> {
    let g = points.len();
    if g < 2 {
        return vec![0.0; g];
    }
    let d: Vec<f64> =
        net_dominance(points, mode).iter().map(|&n| n as f64 / (g - 1) as f64).collect();
    if all_equal(&d) {
        return vec![0.0; g];
    }
    let (_, std) = moments(&d);
    d.iter().map(|x| x / (std + EPS)).collect()
}

/// GDPO's per-group score before batch whitening (spec §5):
/// `sum_k w_k (y_k - mean_G y_k) / (std_G y_k + eps)`. An objective that is constant in the
/// group contributes 0.
pub fn gdpo_group_scores(points: Points<'_>, weights: &[f64]) -> Vec<f64> {
    assert_eq!(weights.len(), points.m(), "one weight per objective");
    let mut scores = vec![0.0; points.len()];
    let mut column = Vec::with_capacity(points.len());
    for (k, w) in weights.iter().enumerate() {
        column.clear();
        column.extend(points.iter().map(|y| y[k]));
        for (s, a) in scores.iter_mut().zip(whiten(&column, true)) {
            *s += w * a;
        }
    }
    scores
}

/// GDPO's final step: whiten every score of the step's batch with the batch's mean and
/// standard deviation across all learner ranks (`batch_mean`, `batch_std`, all-reduced by the
/// caller). A batch with zero spread gets zeros.
pub fn whiten_with(scores: &[f64], batch_mean: f64, batch_std: f64) -> Vec<f64> {
    if batch_std == 0.0 {
        return vec![0.0; scores.len()];
    }
    scores.iter().map(|s| (s - batch_mean) / (batch_std + EPS)).collect()
}

/// OTC's tool reward (Wang et al. 2025; spec §5) for a rollout with `m` calls when `n` is the
/// fewest calls among the group's correct rollouts (`None` when none is correct).
pub fn otc_tool_reward(m: u32, n: Option<u32>, c: f64) -> f64 {
    let (m, n) = (f64::from(m), f64::from(n.unwrap_or(0)));
    let f = if m == 0.0 && n == 0.0 {
        0.0
    } else if n == 0.0 {
        m
    } else {
        2.0 * n * m / (m + n)
    };
    if f == 0.0 && n == 0.0 {
        1.0
    } else if n == 0.0 {
        (m * std::f64::consts::PI / (2.0 * m + c)).cos()
    } else {
        (f * std::f64::consts::PI / (2.0 * n)).sin()
    }
}

/// OTC-GRPO advantages: reward `alpha * r_tool * accuracy`, then GRPO. `correct` tells which
/// rollouts count as correct (accuracy >= correct_threshold).
///
/// # Panics
/// When the slices differ in length.
pub fn otc_grpo(
    accuracy: &[f64],
    tool_calls: &[u32],
    correct_threshold: f64,
    alpha: f64,
    c: f64,
) -> Vec<f64> {
    assert_eq!(accuracy.len(), tool_calls.len(), "one call count per rollout");
    let n = accuracy
        .iter()
        .zip(tool_calls)
        .filter(|(a, _)| **a >= correct_threshold)
        .map(|(_, &calls)| calls)
        .min();
    let rewards: Vec<f64> = accuracy
        .iter()
        .zip(tool_calls)
        .map(|(&a, &m)| alpha * otc_tool_reward(m, n, c) * a)
        .collect();
    grpo(&rewards)
}

/// `grpo_accuracy` (spec §5): GRPO on accuracy alone (objective `accuracy`).
pub fn grpo_accuracy(points: Points<'_>, accuracy: usize) -> Vec<f64> {
    let rewards: Vec<f64> = points.iter().map(|y| y[accuracy]).collect();
    grpo(&rewards)
}

/// `static:W` weights (spec §5): accuracy gets `w_acc`, the other K - 1 objectives split the rest
/// equally.
///
/// # Panics
/// When `k < 2`, `accuracy >= k` or `w_acc` is outside [0, 1].
pub fn static_weights(k: usize, accuracy: usize, w_acc: f64) -> Vec<f64> {
    assert!(k >= 2 && accuracy < k && (0.0..=1.0).contains(&w_acc), "bad static weights");
    let rest = (1.0 - w_acc) / (k - 1) as f64;
    (0..k).map(|i| if i == accuracy { w_acc } else { rest }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::close;

    const SPEC_GROUP: [f64; 12] = [1.0, 0.75, 1.0, 0.25, 1.0, 0.75, 0.0, 1.0, 0.0, 0.5, 0.0, 0.0];

    fn group() -> Points<'static> {
        Points::new(&SPEC_GROUP, 2).expect("valid")
    }

    #[test]
    fn spec_stage2_plain() {
        let options = Stage2Options { mode: Dominance::Plain, ..Default::default() };
        close(&stage2(group(), &options), &[0.894, -0.447, 0.894, 0.894, -0.447, -1.789], 1e-3);
    }

    #[test]
    fn spec_stage2_constrained() {
        let options = Stage2Options::default();
        close(&stage2(group(), &options), &[1.312, 0.137, 1.312, -0.920, -0.920, -0.920], 1e-3);
        let no_crowding = Stage2Options { lambda_cd: 0.0, ..options };
        close(&stage2(group(), &no_crowding), &[1.300, 0.186, 1.300, -0.928, -0.928, -0.928], 1e-3);
    }

    #[test]
    fn spec_net_dominance() {
        let a = net_dominance_advantages(group(), Dominance::Plain);
        // d = .6, -.2, .6, .4, -.4, -1.0; A = d / (std d + eps)
        let d = [0.6, -0.2, 0.6, 0.4, -0.4, -1.0];
        let (_, std) = moments(&d);
        let want: Vec<f64> = d.iter().map(|x| x / (std + EPS)).collect();
        close(&a, &want, 1e-12);
    }

    #[test]
    fn spec_stage2_with_crowding_at_work() {
        let y = [
            1.0, 0.9, 0.2, 1.0, 0.7, 0.5, 1.0, 0.5, 0.6, 1.0, 0.2, 0.9, 1.0, 0.6, 0.4, 0.0, 1.0,
            1.0, 1.0, 0.7, 0.5, 0.0, 0.4, 0.3,
        ];
        let points = Points::new(&y, 3).expect("valid");
        let options = Stage2Options::default();
        let ranks = front_ranks(points, options.mode);
        let cd = crowding_distances(points, &ranks, Crowding::OrderIndependent);
        close(
            &normalised_crowding(&cd, &ranks),
            &[1.0, 0.889, 1.0, 1.0, 0.0, 0.0, 0.889, 0.0],
            1e-3,
        );
        close(
            &stage2(points, &options),
            &[0.739, 0.726, 0.739, 0.739, -0.483, -1.593, 0.726, -1.593],
            1e-3,
        );
    }

    #[test]
    fn spec_otc_tool_reward() {
        let got: Vec<f64> = [(0, Some(0)), (1, Some(1)), (2, Some(1)), (0, Some(1)), (3, None)]
            .iter()
            .map(|&(m, n)| otc_tool_reward(m, n, 1.0))
            .collect();
        close(&got, &[1.0, 1.0, 0.866, 0.0, 0.223], 1e-3);
    }

    #[test]
    fn equal_groups_get_exact_zeros() {
        let same = [0.5, 0.5, 0.5];
        assert_eq!(grpo(&same), [0.0, 0.0, 0.0]);
        let y = [1.0, 0.5, 1.0, 0.5];
        let points = Points::new(&y, 2).expect("valid");
        assert_eq!(stage2(points, &Stage2Options::default()), [0.0, 0.0]);
        assert_eq!(net_dominance_advantages(points, Dominance::Plain), [0.0, 0.0]);
    }

    #[test]
    fn grpo_is_zero_mean_unit_scale() {
        let a = grpo(&[1.0, 0.0, 0.0, 1.0, 1.0]);
        let (mean, std) = moments(&a);
        assert!(mean.abs() < 1e-12 && (std - 1.0).abs() < 1e-5, "{a:?}");
    }

    #[test]
    fn static_weights_split_the_rest() {
        close(&static_weights(3, 0, 0.7), &[0.7, 0.15, 0.15], 1e-12);
        close(&linear_rewards(group(), &[0.7, 0.3]), &[0.925, 0.775, 0.925, 0.3, 0.15, 0.0], 1e-12);
    }

    #[test]
    fn hv_scalarization_with_equal_weights_is_the_min_squared() {
        // lambda = (1/sqrt2, 1/sqrt2): r = (sqrt2 * min_k y_k)^2 = 2 min^2.
        let r = hv_scalarized_rewards(group(), &[0.5, 0.5], &[0.0, 0.0]);
        close(&r, &[2.0 * 0.75 * 0.75, 2.0 * 0.25 * 0.25, 2.0 * 0.75 * 0.75, 0.0, 0.0, 0.0], 1e-12);
    }

    #[test]
    fn gdpo_scores_normalise_each_objective() {
        let scores = gdpo_group_scores(group(), &[0.5, 0.5]);
        // Accuracy column (1,1,1,0,0,0) whitens to +-1/(0.5 + eps)*0.5; its mean is 0 overall.
        assert!(scores.iter().sum::<f64>().abs() < 1e-9);
        assert!(scores[0] > scores[1] && scores[3] > scores[5]);
        let batch = whiten_with(&scores, 0.0, moments(&scores).1);
        assert!((moments(&batch).1 - 1.0).abs() < 1e-5);
    }
}

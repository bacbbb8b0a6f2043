//! Which advantage estimator a run uses (`algorithm.method`), and one group's advantages under
//! it: ParetoPO's two stages, its ablations and the baselines of spec §5. The formulas live in
//! `pareto::advantages`; this module only picks among them.
//!
//! What it does not do: the batch-wide whitening GDPO ends with (it needs the whole step's
//! scores across ranks; see [`Estimator::whitens_over_the_batch`]) or token broadcasting.

use std::str::FromStr;

use pareto::Points;
use pareto::advantages::{self, Stage2Options};

/// An advantage estimator, as `algorithm.method` names it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Estimator {
    /// `paretopo`: Stage 1 (hypervolume-guided weights, GRPO on the weighted sum) until the
    /// coordinator switches the stage, then Stage 2 (Pareto ranks).
    ParetoPo,
    /// `paretopo_stage1_only`: the ablation that never leaves Stage 1.
    Stage1Only,
    /// `paretopo_stage2_only`: the ablation that starts in Stage 2.
    Stage2Only,
    /// `grpo_accuracy`: GRPO on accuracy alone.
    GrpoAccuracy,
    /// `static:W`: fixed weights, accuracy `W` and the rest split equally; GRPO.
    Static(f64),
    /// `gdpo`: per-objective normalisation, then whitening over the whole batch.
    Gdpo,
    /// `otc_grpo`: OTC's tool reward times accuracy; GRPO.
    OtcGrpo,
}

/// An `algorithm.method` that names no estimator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown method {0:?} (expected paretopo, paretopo_stage1_only, paretopo_stage2_only, grpo_accuracy, static:W with W in [0, 1], gdpo or otc_grpo)"
)]
pub struct UnknownEstimator(pub String);

impl FromStr for Estimator {
    type Err = UnknownEstimator;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownEstimator(s.to_owned());
        Ok(match s {
            "paretopo" => Estimator::ParetoPo,
            "paretopo_stage1_only" => Estimator::Stage1Only,
            "paretopo_stage2_only" => Estimator::Stage2Only,
            "grpo_accuracy" => Estimator::GrpoAccuracy,
            "gdpo" => Estimator::Gdpo,
            "otc_grpo" => Estimator::OtcGrpo,
            other => {
                let w: f64 = other
                    .strip_prefix("static:")
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(unknown)?;
                if !(0.0..=1.0).contains(&w) {
                    return Err(unknown());
                }
                Estimator::Static(w)
            }
        })
    }
}

/// What a group's advantages depend on besides its points.
#[derive(Debug, Clone, PartialEq)]
pub struct Context<'a> {
    /// The run's current weights (Stage 1, GDPO), one per objective.
    pub weights: &'a [f64],
    /// The coordinator's current stage (1 or 2).
    pub stage: u8,
    /// Which objective is accuracy.
    pub accuracy: usize,
    /// Stage 2's dominance mode, tie-break and Dr. GRPO option.
    pub stage2: Stage2Options,
    /// Accuracy that counts as correct (OTC).
    pub correct_threshold: f64,
}

impl Estimator {
    /// Whether the group values still need whitening over the whole step (GDPO).
    pub fn whitens_over_the_batch(self) -> bool {
        self == Estimator::Gdpo
    }

    /// The advantages of one group: `points` are its objective vectors, `tool_calls` each
    /// trajectory's call count (OTC).
    pub fn group_advantages(
        self,
        points: Points<'_>,
        tool_calls: &[u32],
        context: &Context<'_>,
    ) -> Vec<f64> {
        let stage1 = || advantages::grpo(&advantages::linear_rewards(points, context.weights));
        let stage2 = || advantages::stage2(points, &context.stage2);
        match self {
            Estimator::ParetoPo if context.stage >= 2 => stage2(),
            Estimator::ParetoPo | Estimator::Stage1Only => stage1(),
            Estimator::Stage2Only => stage2(),
            Estimator::GrpoAccuracy => advantages::grpo_accuracy(points, context.accuracy),
            Estimator::Static(w) => {
                let weights = advantages::static_weights(points.m(), context.accuracy, w);
                advantages::grpo(&advantages::linear_rewards(points, &weights))
            }
            Estimator::Gdpo => advantages::gdpo_group_scores(points, context.weights),
            Estimator::OtcGrpo => {
                let accuracy: Vec<f64> = points.iter().map(|y| y[context.accuracy]).collect();
                advantages::otc_grpo(&accuracy, tool_calls, context.correct_threshold, 1.0, 1.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use pareto::Dominance;

    use super::*;

    /// The config check and this parser accept the same names.
    #[test]
    fn the_config_accepts_exactly_the_methods_that_parse() {
        for name in [
            "paretopo",
            "paretopo_stage1_only",
            "paretopo_stage2_only",
            "grpo_accuracy",
            "gdpo",
            "otc_grpo",
            "static:0.7",
            "static:0",
            "static:1.5",
            "static:x",
            "static",
            "Paretopo",
            "",
        ] {
            assert_eq!(
                paretopo_service::config::is_method(name),
                name.parse::<Estimator>().is_ok(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn methods_parse_and_bad_ones_are_named() {
        assert_eq!("paretopo".parse(), Ok(Estimator::ParetoPo));
        assert_eq!("static:0.7".parse(), Ok(Estimator::Static(0.7)));
        assert_eq!("otc_grpo".parse(), Ok(Estimator::OtcGrpo));
        for bad in ["static:1.5", "static:", "ppo", ""] {
            let err = bad.parse::<Estimator>().expect_err(bad);
            assert!(err.to_string().contains("expected paretopo"), "{err}");
        }
    }

    fn context(weights: &[f64], stage: u8) -> Context<'_> {
        Context {
            weights,
            stage,
            accuracy: 0,
            stage2: Stage2Options {
                mode: Dominance::Constrained { accuracy: 0, threshold: 1.0 },
                lambda_cd: 0.1,
                dr_grpo: false,
            },
            correct_threshold: 1.0,
        }
    }

    /// Spec §6's Stage-2 example: G = 6, K = 2, y = (acc, eff).
    const Y: [f64; 12] = [1.0, 0.75, 1.0, 0.25, 1.0, 0.75, 0.0, 1.0, 0.0, 0.5, 0.0, 0.0];

    fn close(a: &[f64], b: &[f64]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3)
    }

    #[test]
    fn paretopo_follows_the_stage() {
        let points = Points::new(&Y, 2).expect("points");
        let calls = [0; 6];
        let stage2 = Estimator::ParetoPo.group_advantages(points, &calls, &context(&[0.5, 0.5], 2));
        // Spec §6, constrained: A = 1.312, .137, 1.312, -.920, -.920, -.920.
        assert!(close(&stage2, &[1.312, 0.137, 1.312, -0.920, -0.920, -0.920]), "{stage2:?}");
        assert_eq!(
            stage2,
            Estimator::Stage2Only.group_advantages(points, &calls, &context(&[0.5, 0.5], 1))
        );
        // Stage 1 with w = (.5, .5): rewards .875, .625, .875, .5, .25, 0 whitened by hand.
        let rewards = [0.875, 0.625, 0.875, 0.5, 0.25, 0.0];
        let mean = rewards.iter().sum::<f64>() / 6.0;
        let std = (rewards.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / 6.0).sqrt();
        let want: Vec<f64> = rewards.iter().map(|r| (r - mean) / (std + 1e-6)).collect();
        let stage1 = Estimator::ParetoPo.group_advantages(points, &calls, &context(&[0.5, 0.5], 1));
        assert!(close(&stage1, &want), "{stage1:?} vs {want:?}");
        assert_eq!(
            stage1,
            Estimator::Stage1Only.group_advantages(points, &calls, &context(&[0.5, 0.5], 2))
        );
    }

    #[test]
    fn baselines_use_their_own_rewards() {
        let points = Points::new(&Y, 2).expect("points");
        let ctx = context(&[0.5, 0.5], 1);
        // grpo_accuracy: accuracy 1, 1, 1, 0, 0, 0 -> +1 and -1.
        let a = Estimator::GrpoAccuracy.group_advantages(points, &[0; 6], &ctx);
        assert!(close(&a, &[1.0, 1.0, 1.0, -1.0, -1.0, -1.0]), "{a:?}");
        // static:1.0 is accuracy alone, the same as grpo_accuracy.
        assert_eq!(Estimator::Static(1.0).group_advantages(points, &[0; 6], &ctx), a);
        // otc_grpo: the correct rollouts' fewest calls is 1; rollout 0 with 1 call gets tool
        // reward sin(pi/2) = 1, rollout 1 with 2 calls sin(4/3 pi/2) = .866, rollout 2 with 1
        // call 1; the wrong ones 0. GRPO of (1, .866, 1, 0, 0, 0).
        let otc = Estimator::OtcGrpo.group_advantages(points, &[1, 2, 1, 0, 3, 0], &ctx);
        let rewards =
            [1.0, (2.0 * 2.0 * 1.0 / 3.0 * std::f64::consts::PI / 2.0).sin(), 1.0, 0.0, 0.0, 0.0];
        let mean = rewards.iter().sum::<f64>() / 6.0;
        let std = (rewards.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / 6.0).sqrt();
        let want: Vec<f64> = rewards.iter().map(|r| (r - mean) / (std + 1e-6)).collect();
        assert!(close(&otc, &want), "{otc:?} vs {want:?}");
        assert!(
            Estimator::Gdpo.whitens_over_the_batch()
                && !Estimator::ParetoPo.whitens_over_the_batch()
        );
    }
}

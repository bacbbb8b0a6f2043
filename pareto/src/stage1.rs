//! Stage 1 of ParetoPO: hypervolume-guided dynamic scalarization (spec §2), and the rule that
//! switches to Stage 2.
//!
//! Each learner step t, given the batch mean objective vector m_t (all-reduced over ranks):
//! 1. `ybar_1 = m_1`, then `ybar_t = mu ybar_{t-1} + (1 - mu) m_t`;
//! 2. `P = ND(A ∪ {ybar_t})`;
//! 3. gains `g_k = HV(ND(P ∪ {ybar_t + delta e_k})) - HV(P)`;
//! 4. if `sum g <= eps_g` keep w; else `ghat = (g + eps_g) / ||g + eps_g||_1` (variant `inverse`:
//!    proportional to `1 / (g + eps_g)`) and `w <- Proj((1 - beta) w + beta ghat)`, Proj the
//!    Euclidean projection onto `{w : sum w = 1, w_k >= w_min}`;
//! 5. `A <- P`, capped by dropping the smallest exclusive contributions.
//!
//! The per-trajectory rewards (linear or hypervolume scalarization) are in
//! [`crate::advantages`]; this module owns only the state that moves the weights.

use crate::advantages::EPS;
use crate::archive::Archive;

/// How gains become a target direction (spec §2 step 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GainRule {
    /// `ghat` proportional to `g + eps_g`: push where the frontier grows most.
    #[default]
    Proportional,
    /// `ghat` proportional to `1 / (g + eps_g)`: push where the frontier is stuck.
    Inverse,
}

/// Stage-1 settings; [`Stage1Config::new`] gives the spec's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage1Config {
    /// Floor of every weight (`w_min`, 0.05); needs `K w_min < 1`.
    pub w_min: f64,
    /// Step size towards `ghat` (`beta`, 0.2).
    pub beta: f64,
    /// Finite step used for the gains (`delta`, 0.05).
    pub delta: f64,
    /// Gain threshold and smoothing (`eps_g`, 1e-4).
    pub eps_g: f64,
    /// EMA factor of the policy point (`mu`, 0.9).
    pub mu: f64,
    /// How gains become a direction.
    pub rule: GainRule,
    /// The hypervolume reference point (default -0.01 in every objective).
    pub reference: Vec<f64>,
    /// Largest archive (`archive_cap`, 256).
    pub archive_cap: usize,
}

impl Stage1Config {
    /// The spec's defaults for `k` objectives.
    pub fn new(k: usize) -> Self {
        Self {
            w_min: 0.05,
            beta: 0.2,
            delta: 0.05,
            eps_g: 1e-4,
            mu: 0.9,
            rule: GainRule::Proportional,
            reference: vec![-0.01; k],
            archive_cap: 256,
        }
    }
}

/// A Stage-1 configuration that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Stage1Error {
    /// Fewer than two objectives.
    #[error("stage 1 needs at least 2 objectives, got {0}")]
    TooFewObjectives(usize),
    /// `K w_min >= 1` leaves no room on the simplex.
    #[error("w_min = {w_min} is too large for {k} objectives (needs k * w_min < 1)")]
    FloorTooHigh {
        /// Objectives.
        k: usize,
        /// The floor.
        w_min: f64,
    },
    /// A setting out of its range.
    #[error("{name} = {value} is out of range ({range})")]
    OutOfRange {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: f64,
        /// The allowed range.
        range: &'static str,
    },
}

/// What one Stage-1 step did, for logs (spec §7).
#[derive(Debug, Clone, PartialEq)]
pub struct Stage1Step {
    /// The learner step t.
    pub step: u64,
    /// The EMA policy point `ybar_t`.
    pub ybar: Vec<f64>,
    /// The gains `g`.
    pub gains: Vec<f64>,
    /// The direction `ghat`, when the weights moved.
    pub direction: Option<Vec<f64>>,
    /// The weights after the step.
    pub weights: Vec<f64>,
    /// HV of the archive after the step.
    pub hypervolume: f64,
    /// Archive size after the step.
    pub archive_size: usize,
}

/// The coordinator's Stage-1 state: weights, EMA point and global archive.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage1 {
    config: Stage1Config,
    weights: Vec<f64>,
    ybar: Option<Vec<f64>>,
    archive: Archive,
}

impl Stage1 {
    /// Uniform weights, an empty archive.
    pub fn new(config: Stage1Config) -> Result<Self, Stage1Error> {
        let k = config.reference.len();
        if k < 2 {
            return Err(Stage1Error::TooFewObjectives(k));
        }
        if !(config.w_min >= 0.0 && (k as f64) * config.w_min < 1.0) {
            return Err(Stage1Error::FloorTooHigh { k, w_min: config.w_min });
        }
        for (name, value, ok, range) in [
            ("beta", config.beta, (0.0..=1.0).contains(&config.beta), "[0, 1]"),
            ("mu", config.mu, (0.0..1.0).contains(&config.mu), "[0, 1)"),
            ("delta", config.delta, config.delta > 0.0, "> 0"),
            ("eps_g", config.eps_g, config.eps_g > 0.0, "> 0"),
        ] {
            if !ok {
                return Err(Stage1Error::OutOfRange { name, value, range });
            }
        }
        let archive = Archive::new(config.reference.clone(), config.archive_cap.max(1));
        Ok(Self { weights: vec![1.0 / k as f64; k], ybar: None, archive, config })
    }

    /// Starts from given weights and archive points (to resume, or for the spec's example).
    pub fn with_state(
        config: Stage1Config,
        weights: Vec<f64>,
        archive_points: &[Vec<f64>],
    ) -> Result<Self, Stage1Error> {
        let mut stage = Self::new(config)?;
        stage.weights = weights;
        for p in archive_points {
            stage.archive.insert(p);
        }
        stage.archive.enforce_cap();
        Ok(stage)
    }

    /// The EMA policy point `ybar` of the last update, if any.
    pub fn ybar(&self) -> Option<&[f64]> {
        self.ybar.as_deref()
    }

    /// Sets the EMA policy point (to resume a saved state).
    pub fn set_ybar(&mut self, ybar: Option<Vec<f64>>) {
        self.ybar = ybar;
    }

    /// The current weights.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The global archive.
    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    /// One step with the batch mean `m_t` (spec §2 steps 3-6).
    ///
    /// # Panics
    /// When `batch_mean` has the wrong length or a non-finite value.
    pub fn update(&mut self, step: u64, batch_mean: &[f64]) -> Stage1Step {
        let c = &self.config;
        assert_eq!(batch_mean.len(), self.weights.len(), "one mean per objective");
        let ybar: Vec<f64> = match &self.ybar {
            None => batch_mean.to_vec(),
            Some(prev) => {
                prev.iter().zip(batch_mean).map(|(a, b)| c.mu * a + (1.0 - c.mu) * b).collect()
            }
        };
        self.archive.insert(&ybar);
        let gains: Vec<f64> = (0..ybar.len())
            .map(|k| {
                let mut bumped = ybar.clone();
                bumped[k] += c.delta;
                self.archive.gain(&bumped)
            })
            .collect();
        let mut direction = None;
        if gains.iter().sum::<f64>() > c.eps_g {
            let raw: Vec<f64> = match c.rule {
                GainRule::Proportional => gains.iter().map(|g| g + c.eps_g).collect(),
                GainRule::Inverse => gains.iter().map(|g| 1.0 / (g + c.eps_g)).collect(),
            };
            let total: f64 = raw.iter().sum();
            let ghat: Vec<f64> = raw.iter().map(|x| x / total).collect();
            let mixed: Vec<f64> = self
                .weights
                .iter()
                .zip(&ghat)
                .map(|(w, g)| (1.0 - c.beta) * w + c.beta * g)
                .collect();
            self.weights = project_to_floored_simplex(&mixed, c.w_min);
            direction = Some(ghat);
        }
        self.archive.enforce_cap();
        self.ybar = Some(ybar.clone());
        Stage1Step {
            step,
            ybar,
            gains,
            direction,
            weights: self.weights.clone(),
            hypervolume: self.archive.hypervolume(),
            archive_size: self.archive.len(),
        }
    }
}

/// Euclidean projection of `v` onto `{w : sum w = 1, w_k >= w_min}`: subtract `w_min`, project
/// onto the simplex of mass `1 - K w_min` with the sort-based algorithm of Duchi et al. (2008),
/// add `w_min` back.
///
/// # Panics
/// When `K w_min >= 1`.
pub fn project_to_floored_simplex(v: &[f64], w_min: f64) -> Vec<f64> {
    let k = v.len() as f64;
    let mass = 1.0 - k * w_min;
    assert!(mass > 0.0, "K * w_min must be below 1");
    let mut u: Vec<f64> = v.iter().map(|x| x - w_min).collect();
    u.sort_unstable_by(|a, b| b.total_cmp(a));
    let (mut cumulative, mut theta) = (0.0, 0.0);
    for (j, x) in u.iter().enumerate() {
        cumulative += x;
        let t = (cumulative - mass) / (j + 1) as f64;
        if x - t > 0.0 {
            theta = t;
        }
    }
    v.iter().map(|x| (x - w_min - theta).max(0.0) + w_min).collect()
}

/// When to switch to Stage 2 (spec §2): at the first step `t >= t_min` whose archive HV grew by
/// less than `tau_rel` relative over the last `window` steps (tested once `t > window`), or at
/// `t >= t_max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StageSwitch {
    /// `W` (10).
    pub window: usize,
    /// `tau_rel` (0.01).
    pub tau_rel: f64,
    /// `T_min` (ceil(0.2 T)).
    pub t_min: u64,
    /// `T_max` (ceil(0.5 T)).
    pub t_max: u64,
}

impl StageSwitch {
    /// The defaults for a run of `total_steps` learner steps.
    pub fn for_total_steps(total_steps: u64) -> Self {
        Self {
            window: 10,
            tau_rel: 0.01,
            t_min: total_steps.div_ceil(5),
            t_max: total_steps.div_ceil(2),
        }
    }

    /// Whether to switch at step `t`, given `recent`: HV(A_i) for the last steps, oldest first,
    /// ending with HV(A_t). Only the last `window + 1` values are read, so a caller need keep
    /// no more than those.
    pub fn should_switch(&self, t: u64, recent: &[f64]) -> bool {
        if t >= self.t_max {
            return true;
        }
        let w = self.window;
        if t < self.t_min || t <= w as u64 || recent.len() <= w {
            return false;
        }
        let now = recent[recent.len() - 1];
        let before = recent[recent.len() - 1 - w];
        now - before < self.tau_rel * before.max(EPS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::close;

    /// Spec §6, Stage 1, steps 1 and 2 with r = (0, 0).
    #[test]
    fn spec_example() {
        let config = Stage1Config { reference: vec![0.0, 0.0], ..Stage1Config::new(2) };
        let mut stage =
            Stage1::with_state(config, vec![0.5, 0.5], &[vec![0.40, 0.30], vec![0.30, 0.60]])
                .expect("valid config");
        assert!((stage.archive().hypervolume() - 0.210).abs() < 1e-12);

        let one = stage.update(1, &[0.42, 0.35]);
        assert!((one.hypervolume - 0.222).abs() < 1e-12);
        close(&one.gains, &[0.0175, 0.0060], 1e-9);
        close(one.direction.as_deref().expect("moved"), &[0.7426, 0.2574], 1e-4);
        close(&one.weights, &[0.549, 0.451], 1e-3);

        let two = stage.update(2, &[0.50, 0.30]);
        close(&two.ybar, &[0.428, 0.345], 1e-12);
        close(&two.gains, &[0.0172, 0.0058], 1e-4);
        close(&two.weights, &[0.588, 0.412], 1e-3);
    }

    #[test]
    fn spec_projection() {
        close(&project_to_floored_simplex(&[0.9, 0.12, -0.02], 0.05), &[0.865, 0.085, 0.05], 1e-12);
    }

    /// The projection lands on the floored simplex and is the closest such point: no feasible
    /// point on a grid is nearer.
    #[test]
    fn projection_is_feasible_and_nearest() {
        let w_min = 0.05;
        let inputs = [[0.2, 0.3, 0.5], [1.0, 1.0, 1.0], [-1.0, 0.5, 2.0], [0.0, 0.0, 0.0]];
        for v in inputs {
            let w = project_to_floored_simplex(&v, w_min);
            assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{w:?}");
            assert!(w.iter().all(|x| *x >= w_min - 1e-15), "{w:?}");
            let dist = |p: &[f64]| p.iter().zip(&v).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
            let steps = 90;
            for i in 0..=steps {
                for j in 0..=(steps - i) {
                    let a = w_min + 0.85 * i as f64 / steps as f64;
                    let b = w_min + 0.85 * j as f64 / steps as f64;
                    let c = 1.0 - a - b;
                    if c >= w_min {
                        assert!(
                            dist(&w) <= dist(&[a, b, c]) + 1e-12,
                            "{v:?}: {w:?} vs {a},{b},{c}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn no_gain_keeps_the_weights() {
        let config = Stage1Config { reference: vec![0.0, 0.0], ..Stage1Config::new(2) };
        let mut stage =
            Stage1::with_state(config, vec![0.7, 0.3], &[vec![1.0, 1.0]]).expect("valid");
        // ybar + delta e_k stays inside the box of (1, 1): no gain, no move.
        let step = stage.update(1, &[0.5, 0.5]);
        assert_eq!(step.gains, [0.0, 0.0]);
        assert_eq!(step.direction, None);
        assert_eq!(step.weights, [0.7, 0.3]);
    }

    #[test]
    fn inverse_rule_pushes_the_stuck_objective() {
        let config = Stage1Config {
            reference: vec![0.0, 0.0],
            rule: GainRule::Inverse,
            ..Stage1Config::new(2)
        };
        let mut stage =
            Stage1::with_state(config, vec![0.5, 0.5], &[vec![0.40, 0.30], vec![0.30, 0.60]])
                .expect("valid");
        let step = stage.update(1, &[0.42, 0.35]);
        // g = (.0175, .0060): the inverse rule favours objective 2.
        assert!(step.weights[1] > 0.5, "{:?}", step.weights);
    }

    #[test]
    fn bad_configs_are_rejected() {
        assert!(matches!(Stage1::new(Stage1Config::new(1)), Err(Stage1Error::TooFewObjectives(1))));
        let high = Stage1Config { w_min: 0.5, ..Stage1Config::new(2) };
        assert!(matches!(Stage1::new(high), Err(Stage1Error::FloorTooHigh { .. })));
        let mu = Stage1Config { mu: 1.0, ..Stage1Config::new(2) };
        assert!(matches!(Stage1::new(mu), Err(Stage1Error::OutOfRange { name: "mu", .. })));
    }

    #[test]
    fn stage_switch_rule() {
        let switch = StageSwitch::for_total_steps(100);
        assert_eq!((switch.t_min, switch.t_max), (20, 50));
        // HV grows 5% a step: never stalls, so the switch comes at t_max.
        let growing: Vec<f64> = (0..60).map(|t| 1.05f64.powi(t)).collect();
        let first = (1..=60).find(|&t| switch.should_switch(t, &growing[..t as usize]));
        assert_eq!(first, Some(50));
        // HV flat from step 5 on: stalls as soon as t >= t_min.
        let flat: Vec<f64> = (0..60).map(|t| f64::from(t.min(5))).collect();
        let first = (1..=60).find(|&t| switch.should_switch(t, &flat[..t as usize]));
        assert_eq!(first, Some(20));
        // Stalled but before t_min or within the first window: no switch.
        let short = StageSwitch { t_min: 1, ..switch };
        assert!(!short.should_switch(10, &flat[..10]));
        assert!(short.should_switch(16, &flat[..16]));
        // Only the window's worth of history is read.
        assert!(short.should_switch(16, &flat[16 - 11..16]));
        assert!(!short.should_switch(16, &flat[16 - 10..16]), "fewer than W + 1 values");
    }
}

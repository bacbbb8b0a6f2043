//! The coordinator's half of ParetoPO Stage 1 (spec §2, steps 3-6, and the stage switch): it
//! takes learner rank 0's batch mean of each step, updates the EMA point and the global archive,
//! moves the objective weights toward the objectives whose improvement grows the hypervolume
//! most, and decides when Stage 2 begins. The mathematics is `pareto::stage1`; this module holds
//! the run's state around it and says which estimators move the weights at all.
//!
//! What it does not do: talk gRPC, or write files ([`crate::run_files`] does).

use pareto::stage1::{GainRule, Stage1, Stage1Config, Stage1Error, StageSwitch};
use paretopo_service::config::AlgorithmSection;
use serde::{Deserialize, Serialize};

/// Everything [`Steering`] needs to go on where it stopped (the coordinator saves it in the run
/// directory after every report, so a restarted run keeps its archive, weights and stage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedSteering {
    /// The weights published.
    pub weights: Vec<f64>,
    /// Stage 1's own weights (they differ from `weights` once Stage 2 froze those).
    pub stage1_weights: Vec<f64>,
    /// The EMA policy point.
    pub ybar: Option<Vec<f64>>,
    /// The archive's points.
    pub archive: Vec<Vec<f64>>,
    /// The stage.
    pub stage: u8,
    /// The step Stage 2 began at.
    pub switch_step: u64,
    /// HV after each of the last `switch_window + 1` steps, oldest first.
    pub hv_history: Vec<f64>,
    /// The last step reported.
    pub last_step: u64,
}

/// How the method uses the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagePolicy {
    /// `paretopo`: Stage 1, then Stage 2 at the switch.
    Switch,
    /// Stays in Stage 1 (`paretopo_stage1_only`, and every baseline: the archive and HV are
    /// still tracked so runs compare on one footing).
    StayInOne,
    /// `paretopo_stage2_only`: Stage 2 from the start.
    StartInTwo,
}

impl StagePolicy {
    /// The stage policy of `algorithm.method`.
    pub fn of_method(method: &str) -> Self {
        match method {
            "paretopo" => StagePolicy::Switch,
            "paretopo_stage2_only" => StagePolicy::StartInTwo,
            _ => StagePolicy::StayInOne,
        }
    }
}

/// What one report changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The weights now in force.
    pub weights: Vec<f64>,
    /// The stage now (1 or 2).
    pub stage: u8,
    /// HV of the archive.
    pub hypervolume: f64,
    /// True when this report switched the run to Stage 2.
    pub switched: bool,
}

/// The run's weights, archive and stage.
#[derive(Debug)]
pub struct Steering {
    stage1: Stage1,
    stage1_config: Stage1Config,
    switch: StageSwitch,
    policy: StagePolicy,
    /// The weights published: Stage 1's while it runs, frozen once Stage 2 begins.
    weights: Vec<f64>,
    stage: u8,
    switch_step: u64,
    hv_history: Vec<f64>,
    last_step: u64,
}

impl Steering {
    /// Uniform weights, an empty archive, and the method's first stage.
    pub fn new(algorithm: &AlgorithmSection, objectives: usize) -> Result<Self, Stage1Error> {
        let mut config = Stage1Config::new(objectives);
        config.w_min = algorithm.w_min;
        config.beta = algorithm.weight_step;
        config.delta = algorithm.gain_delta;
        config.mu = algorithm.ema;
        config.rule = if algorithm.gain_rule == "inverse" {
            GainRule::Inverse
        } else {
            GainRule::Proportional
        };
        if let Some(reference) = &algorithm.hv_reference {
            config.reference = reference.clone();
        }
        config.archive_cap = algorithm.archive_cap as usize;
        let stage1 = Stage1::new(config.clone())?;
        let mut switch = StageSwitch::for_total_steps(algorithm.total_steps);
        switch.window = algorithm.switch_window as usize;
        switch.tau_rel = algorithm.switch_tau_rel;
        if let Some(t) = algorithm.switch_min_step {
            switch.t_min = t;
        }
        if let Some(t) = algorithm.switch_max_step {
            switch.t_max = t;
        }
        let policy = StagePolicy::of_method(&algorithm.method);
        let stage = if policy == StagePolicy::StartInTwo { 2 } else { 1 };
        Ok(Steering {
            weights: stage1.weights().to_vec(),
            stage1,
            stage1_config: config,
            switch,
            policy,
            stage,
            switch_step: 0,
            hv_history: Vec::new(),
            last_step: 0,
        })
    }

    /// The weights in force.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// The stage (1 or 2).
    pub fn stage(&self) -> u8 {
        self.stage
    }

    /// The step Stage 2 began at, 0 before.
    pub fn switch_step(&self) -> u64 {
        self.switch_step
    }

    /// The archive's points, row-major, and the number of objectives.
    pub fn frontier(&self) -> Vec<Vec<f64>> {
        self.stage1.archive().points().iter().map(<[f64]>::to_vec).collect()
    }

    /// Points in the archive.
    pub fn archive_size(&self) -> usize {
        self.stage1.archive().len()
    }

    /// HV of the archive.
    pub fn hypervolume(&self) -> f64 {
        self.stage1.archive().hypervolume()
    }

    /// The archive's reference point.
    pub fn reference(&self) -> &[f64] {
        self.stage1.archive().reference()
    }

    /// The last step reported.
    pub fn last_step(&self) -> u64 {
        self.last_step
    }

    /// Takes step `step`'s batch mean m_t. Steps must increase; a repeated or older step (a
    /// restarted learner redoing steps after its checkpoint) updates nothing and returns the
    /// state as it is, so redone steps are not counted twice.
    pub fn report(&mut self, step: u64, batch_mean: &[f64]) -> Update {
        if step <= self.last_step {
            return self.current(false);
        }
        let skipped = step - self.last_step;
        self.last_step = step;
        let result = self.stage1.update(step, batch_mean);
        // The HV after each of the last steps, ending with HV(A_step); steps skipped by a lost
        // report repeat the last value. The switch reads only the last `window + 1`, so only
        // those are kept: a long run's state stays the same size.
        let keep = self.switch.window + 1;
        for _ in 0..skipped.min(keep as u64) {
            self.hv_history.push(result.hypervolume);
        }
        if self.hv_history.len() > keep {
            self.hv_history.drain(..self.hv_history.len() - keep);
        }
        if self.stage == 1 {
            self.weights = result.weights;
        }
        let switched = self.stage == 1
            && self.policy == StagePolicy::Switch
            && self.switch.should_switch(step, &self.hv_history);
        if switched {
            self.stage = 2;
            self.switch_step = step;
        }
        self.current(switched)
    }

    /// The state to save.
    pub fn save(&self) -> SavedSteering {
        SavedSteering {
            weights: self.weights.clone(),
            stage1_weights: self.stage1.weights().to_vec(),
            ybar: self.stage1.ybar().map(<[f64]>::to_vec),
            archive: self.frontier(),
            stage: self.stage,
            switch_step: self.switch_step,
            hv_history: self.hv_history.clone(),
            last_step: self.last_step,
        }
    }

    /// Goes on from `saved`; the settings (`algorithm`) are the run's, as in [`Steering::new`].
    pub fn restore(
        algorithm: &AlgorithmSection,
        objectives: usize,
        saved: SavedSteering,
    ) -> Result<Self, Stage1Error> {
        let mut steering = Steering::new(algorithm, objectives)?;
        if saved.weights.len() != objectives || saved.stage1_weights.len() != objectives {
            return Err(Stage1Error::TooFewObjectives(saved.weights.len()));
        }
        let config = steering.stage1_config.clone();
        steering.stage1 = Stage1::with_state(config, saved.stage1_weights, &saved.archive)?;
        steering.stage1.set_ybar(saved.ybar);
        steering.weights = saved.weights;
        steering.stage = saved.stage;
        steering.switch_step = saved.switch_step;
        steering.hv_history = saved.hv_history;
        steering.last_step = saved.last_step;
        Ok(steering)
    }

    fn current(&self, switched: bool) -> Update {
        Update {
            weights: self.weights.clone(),
            stage: self.stage,
            hypervolume: self.hypervolume(),
            switched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn algorithm(method: &str, total_steps: u64) -> AlgorithmSection {
        AlgorithmSection { method: method.into(), total_steps, ..Default::default() }
    }

    #[test]
    fn spec_example_weights_through_the_coordinator_state() {
        // Spec §6, Stage 1 with r = (0, 0): from an empty archive the first report's point is
        // the archive; the weights move toward the objective with the larger gain.
        let mut a = algorithm("paretopo", 100);
        a.hv_reference = Some(vec![0.0, 0.0]);
        let mut s = Steering::new(&a, 2).expect("steering");
        assert_eq!(s.weights(), [0.5, 0.5]);
        let u = s.report(1, &[0.42, 0.35]);
        assert!((u.hypervolume - 0.42 * 0.35).abs() < 1e-12);
        // g = (0.05 * 0.35, 0.05 * 0.42): the second objective gains more.
        assert!(u.weights[1] > u.weights[0], "{:?}", u.weights);
        assert!((u.weights.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let again = s.report(1, &[0.9, 0.9]);
        assert_eq!(again.weights, u.weights, "a redone step changes nothing");
        assert_eq!(s.frontier(), vec![vec![0.42, 0.35]]);
    }

    #[test]
    fn paretopo_switches_by_t_max_and_freezes_the_weights() {
        let mut s = Steering::new(&algorithm("paretopo", 10), 2).expect("steering");
        let mut switched_at = None;
        for t in 1..=10 {
            // A point that keeps improving so only T_max = ceil(0.5 T) = 5 can switch.
            let y = 0.1 + 0.05 * t as f64;
            let u = s.report(t, &[y, 0.5]);
            if u.switched {
                switched_at = Some(t);
            }
        }
        assert_eq!(switched_at, Some(5));
        assert_eq!((s.stage(), s.switch_step()), (2, 5));
        let frozen = s.weights().to_vec();
        s.report(11, &[0.99, 0.01]);
        assert_eq!(s.weights(), frozen.as_slice());
        // Saved and restored, it goes on exactly as the original does.
        let mut restored =
            Steering::restore(&algorithm("paretopo", 10), 2, s.save()).expect("restore");
        assert_eq!(restored.save(), s.save());
        assert_eq!(restored.report(12, &[0.3, 0.9]), s.report(12, &[0.3, 0.9]));
        let mut only1 = Steering::new(&algorithm("paretopo_stage1_only", 10), 2).expect("s");
        let mut only2 = Steering::new(&algorithm("paretopo_stage2_only", 10), 2).expect("s");
        for t in 1..=10 {
            assert_eq!(only1.report(t, &[0.5, 0.5]).stage, 1);
            assert_eq!(only2.report(t, &[0.5, 0.5]).stage, 2);
        }
    }
}

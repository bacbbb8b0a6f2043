//! Checking a trajectory group from an actor before it may touch training: every field that
//! could break a step or poison the gradient is checked, and an error names the field (it
//! becomes the `INVALID_ARGUMENT` the actor sees). What passes becomes plain [`Sample`]s and
//! objective vectors.
//!
//! This is the learner's first line against bad input, kept apart from it so that it has no
//! tch and can be fuzzed (`fuzz/`, target `trajectory_validator`). It is not the ledger (which
//! counts groups) nor the staleness rule (which needs the learner's policy version).

use paretopo_proto::v1;

/// One trajectory as a step trains on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Prompt and completion token ids.
    pub tokens: Vec<i64>,
    /// Per token, whether the policy generated it (false for the prompt and tool output).
    pub generated: Vec<bool>,
    /// Per token, the log-prob it was sampled with (read only where `generated`).
    pub old_logprobs: Vec<f32>,
    /// The trajectory's advantage.
    pub advantage: f64,
}

impl Sample {
    /// Tokens the policy generated.
    pub fn generated_tokens(&self) -> usize {
        self.generated.iter().filter(|g| **g).count()
    }
}

/// What is wrong with a group; the message starts with the field's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct IntakeError {
    /// The field, e.g. `trajectories[3].loss_mask`.
    pub field: String,
    /// Why.
    pub message: String,
}

/// What the learner expects of every group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntakeLimits {
    /// The number of objectives, K.
    pub objectives: usize,
    /// The model's vocabulary size: token ids must be below it.
    pub vocab_size: u32,
    /// The longest trajectory accepted, in tokens.
    pub max_tokens: usize,
    /// The most trajectories a group may hold (`algorithm.group_size`).
    pub max_trajectories: usize,
}

/// The longest actor id accepted, in bytes (ids the coordinator gives are far shorter).
pub const MAX_ID_BYTES: usize = 128;
/// The longest prompt id accepted, in bytes.
pub const MAX_PROMPT_ID_BYTES: usize = 1024;

/// A checked group.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// The trajectories, advantages not yet set (0).
    pub samples: Vec<Sample>,
    /// Each trajectory's objective vector (G x K, row-major).
    pub objectives: Vec<f64>,
    /// Each trajectory's tool calls (for OTC).
    pub tool_calls: Vec<u32>,
    /// The policy version that sampled it.
    pub policy_version: u64,
}

/// Checks `group` against `limits` and converts it.
pub fn check_group(
    group: &v1::TrajectoryGroup,
    limits: &IntakeLimits,
) -> Result<Group, IntakeError> {
    let fail = |field: String, message: String| Err(IntakeError { field, message });
    if group.actor_id.is_empty() || group.actor_id.len() > MAX_ID_BYTES {
        return fail(
            "actor_id".into(),
            format!("needs 1 to {MAX_ID_BYTES} bytes, got {}", group.actor_id.len()),
        );
    }
    if group.group_seq == 0 {
        return fail("group_seq".into(), "starts at 1, got 0".into());
    }
    if group.prompt_id.len() > MAX_PROMPT_ID_BYTES {
        return fail(
            "prompt_id".into(),
            format!("at most {MAX_PROMPT_ID_BYTES} bytes, got {}", group.prompt_id.len()),
        );
    }
    let n = group.trajectories.len();
    if n < 2 || n > limits.max_trajectories.max(2) {
        return fail(
            "trajectories".into(),
            format!("a group needs 2 to {}, got {n}", limits.max_trajectories.max(2)),
        );
    }
    if !(group.temperature.is_finite() && group.temperature > 0.0) {
        return fail("temperature".into(), format!("must be positive, got {}", group.temperature));
    }
    let mut checked = Group {
        samples: Vec::with_capacity(group.trajectories.len()),
        objectives: Vec::with_capacity(group.trajectories.len() * limits.objectives),
        tool_calls: Vec::with_capacity(group.trajectories.len()),
        policy_version: group.policy_version,
    };
    for (i, t) in group.trajectories.iter().enumerate() {
        let field = |name: &str| format!("trajectories[{i}].{name}");
        let n = t.token_ids.len();
        if n == 0 || n > limits.max_tokens {
            return fail(
                field("token_ids"),
                format!("needs 1 to {} tokens, got {n}", limits.max_tokens),
            );
        }
        if let Some(id) = t.token_ids.iter().find(|&&id| id >= limits.vocab_size) {
            return fail(
                field("token_ids"),
                format!("id {id} is outside the vocabulary of {}", limits.vocab_size),
            );
        }
        if t.loss_mask.len() != n || t.sampling_logprobs.len() != n {
            return fail(
                field("loss_mask"),
                format!(
                    "loss_mask ({}) and sampling_logprobs ({}) must have one entry per token ({n})",
                    t.loss_mask.len(),
                    t.sampling_logprobs.len()
                ),
            );
        }
        if t.loss_mask.iter().any(|&m| m > 1) {
            return fail(field("loss_mask"), "entries must be 0 or 1".into());
        }
        if (group.prompt_tokens as usize) > n
            || t.loss_mask[..group.prompt_tokens as usize].contains(&1)
        {
            return fail(
                field("loss_mask"),
                format!("the {} prompt tokens must be masked out", group.prompt_tokens),
            );
        }
        let generated: Vec<bool> = t.loss_mask.iter().map(|&m| m == 1).collect();
        if let Some(lp) = t
            .sampling_logprobs
            .iter()
            .zip(&generated)
            .find(|(lp, g)| **g && !(lp.is_finite() && **lp <= 0.0))
        {
            return fail(
                field("sampling_logprobs"),
                format!("a generated token's log-prob must be finite and <= 0, got {}", lp.0),
            );
        }
        let values = t.objectives.as_ref().map(|o| o.values.as_slice()).unwrap_or_default();
        if values.len() != limits.objectives {
            return fail(
                field("objectives"),
                format!("expected {} values, got {}", limits.objectives, values.len()),
            );
        }
        if let Some(v) = values.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return fail(field("objectives"), format!("values must lie in [0, 1], got {v}"));
        }
        checked.objectives.extend_from_slice(values);
        checked.tool_calls.push(t.metrics.as_ref().map_or(0, |m| m.tool_calls));
        checked.samples.push(Sample {
            tokens: t.token_ids.iter().map(|&id| i64::from(id)).collect(),
            generated,
            old_logprobs: t.sampling_logprobs.clone(),
            advantage: 0.0,
        });
    }
    Ok(checked)
}

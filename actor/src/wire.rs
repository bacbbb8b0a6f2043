//! Trajectories as the learner receives them (`paretopo.v1.Trajectory`): prompt and completion
//! as one token list with its loss mask and sampling log-probs, the objective vector and the raw
//! metrics.

use paretopo_proto::v1;
use tasks::{RawMetrics, Termination};

use crate::episode::Trajectory;

/// The protobuf termination reason of `termination`.
pub fn termination_reason(termination: Termination) -> v1::TerminationReason {
    use v1::TerminationReason as R;
    match termination {
        Termination::Answered => R::Answered,
        Termination::NoAnswer => R::NoAnswer,
        Termination::TokenBudget => R::TokenBudget,
        Termination::ToolBudget => R::ToolBudget,
        Termination::ContextLimit => R::ContextLimit,
        Termination::Malformed => R::MalformedOutput,
        Termination::ToolError => R::ToolError,
        Termination::Aborted => R::Aborted,
    }
}

/// `trajectory` with its objective vector and raw metrics, as sent to the learner.
pub fn to_proto(trajectory: &Trajectory, objectives: &[f64], raw: &RawMetrics) -> v1::Trajectory {
    let prompt = trajectory.prompt.len();
    let ids = trajectory.prompt.iter().chain(&trajectory.completion);
    let mask = std::iter::repeat_n(false, prompt).chain(trajectory.generated.iter().copied());
    let logprobs = std::iter::repeat_n(0.0, prompt).chain(trajectory.logprobs.iter().copied());
    v1::Trajectory {
        // Token ids are vocabulary indices: non-negative and far below 2^32.
        token_ids: ids.map(|&id| u32::try_from(id).unwrap_or(u32::MAX)).collect(),
        loss_mask: mask.map(u32::from).collect(),
        sampling_logprobs: logprobs.collect(),
        objectives: Some(v1::ObjectiveVector { values: objectives.to_vec() }),
        metrics: Some(v1::RawMetrics {
            accuracy: raw.accuracy,
            tool_calls: raw.tool_calls,
            generated_tokens: raw.generated_tokens,
            termination: termination_reason(raw.termination) as i32,
            // Both tools charge 1 per call (`ToolSpec.cost_per_call`) and the trajectory does
            // not record charges, so this counts malformed attempts, which no server saw, too.
            tool_cost: f64::from(raw.tool_calls),
            wall_seconds: 0.0,
        }),
        answer_text: trajectory.answer.clone().unwrap_or_default(),
    }
}

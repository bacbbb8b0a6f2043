//! The objectives a trajectory is scored on (DESIGN.md §4): each in [0, 1], all maximised, and
//! the raw metrics and termination reason behind them.

use std::str::FromStr;

/// One objective, by its config name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// `accuracy`: correctness of the final answer (1/0 for math; EM or token F1 for QA).
    Accuracy,
    /// `tool_efficiency`: `1 - min(calls, budget) / budget`.
    ToolEfficiency,
    /// `token_efficiency`: `1 - min(tokens, budget) / budget`.
    TokenEfficiency,
}

/// An objective name that is not one of ours.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown objective {0:?}: expected `accuracy`, `tool_efficiency` or `token_efficiency`")]
pub struct UnknownObjective(pub String);

impl FromStr for Objective {
    type Err = UnknownObjective;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "accuracy" => Ok(Objective::Accuracy),
            "tool_efficiency" => Ok(Objective::ToolEfficiency),
            "token_efficiency" => Ok(Objective::TokenEfficiency),
            other => Err(UnknownObjective(other.to_owned())),
        }
    }
}

impl Objective {
    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            Objective::Accuracy => "accuracy",
            Objective::ToolEfficiency => "tool_efficiency",
            Objective::TokenEfficiency => "token_efficiency",
        }
    }
}

/// `1 - min(used, budget) / budget`: 1 for nothing used, 0 at or past the budget. A zero budget
/// means any use exhausts it.
pub fn budget_efficiency(used: u32, budget: u32) -> f64 {
    if budget == 0 {
        return if used == 0 { 1.0 } else { 0.0 };
    }
    1.0 - f64::from(used.min(budget)) / f64::from(budget)
}

/// Why an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Termination {
    /// The policy gave a final answer.
    Answered,
    /// The policy stopped (end of sequence) without an answer.
    NoAnswer,
    /// The generated-token budget ran out.
    TokenBudget,
    /// The tool-call budget ran out.
    ToolBudget,
    /// The model's context was full.
    ContextLimit,
    /// The policy wrote a tool call or answer the parser could not read, and the episode ended
    /// on it.
    Malformed,
    /// A tool call failed in a way the episode could not recover from.
    ToolError,
    /// The actor stopped the episode (shutdown).
    Aborted,
}

/// The measurements behind an episode's objective vector (DESIGN.md §4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawMetrics {
    /// Correctness of the final answer in [0, 1] (1/0 for math; EM or token F1 for QA); 0
    /// without an answer.
    pub accuracy: f64,
    /// Tool calls the policy made, malformed ones included.
    pub tool_calls: u32,
    /// Tokens the policy generated (tool output excluded).
    pub generated_tokens: u32,
    /// Why the episode ended.
    pub termination: Termination,
}

/// The budgets the efficiency objectives are measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budgets {
    /// Tool calls allowed per episode.
    pub tool_calls: u32,
    /// Generated tokens allowed per episode.
    pub tokens: u32,
}

/// The objective vector of an episode, in the order of `objectives`, each in [0, 1] and
/// maximised: `accuracy` (0 unless the episode ended with an answer), `tool_efficiency` and
/// `token_efficiency` (`1 - min(used, budget) / budget`).
pub fn objective_vector(objectives: &[Objective], raw: &RawMetrics, budgets: &Budgets) -> Vec<f64> {
    objectives
        .iter()
        .map(|objective| match objective {
            Objective::Accuracy if raw.termination == Termination::Answered => {
                raw.accuracy.clamp(0.0, 1.0)
            }
            Objective::Accuracy => 0.0,
            Objective::ToolEfficiency => budget_efficiency(raw.tool_calls, budgets.tool_calls),
            Objective::TokenEfficiency => budget_efficiency(raw.generated_tokens, budgets.tokens),
        })
        .collect()
}

/// How a text answer is scored (DESIGN.md §4: QA uses exact match or token F1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextMetric {
    /// 1 when the normalised answers are equal, else 0.
    ExactMatch,
    /// The token F1 of the normalised answers.
    TokenF1,
}

/// The accuracy of `answer` to `example` in [0, 1]: numeric equivalence (1 or 0) for numeric
/// answers, `metric` for text answers; 0 without an answer.
pub fn accuracy(
    example: &crate::datasets::Example,
    answer: Option<&str>,
    metric: TextMetric,
) -> f64 {
    use crate::checking::{exact_match, numbers_equal, token_f1};
    use crate::datasets::AnswerKind;
    let Some(answer) = answer else { return 0.0 };
    match (example.kind, metric) {
        (AnswerKind::Numeric, _) => f64::from(u8::from(numbers_equal(answer, &example.answer))),
        (AnswerKind::Text, TextMetric::ExactMatch) => {
            f64::from(u8::from(exact_match(answer, &example.answer)))
        }
        (AnswerKind::Text, TextMetric::TokenF1) => token_f1(answer, &example.answer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasets::{AnswerKind, Example};

    fn example(answer: &str, kind: AnswerKind) -> Example {
        Example {
            id: "e".into(),
            question: "q".into(),
            answer: answer.into(),
            kind,
            context: Vec::new(),
            category: String::new(),
        }
    }

    #[test]
    fn accuracy_by_hand() {
        let math = example("1234.5", AnswerKind::Numeric);
        assert_eq!(accuracy(&math, Some("1,234.50"), TextMetric::TokenF1), 1.0);
        assert_eq!(accuracy(&math, Some("2469/2"), TextMetric::ExactMatch), 1.0);
        assert_eq!(accuracy(&math, Some("1234"), TextMetric::TokenF1), 0.0);
        assert_eq!(accuracy(&math, None, TextMetric::TokenF1), 0.0);
        let qa = example("the Grey Sea", AnswerKind::Text);
        assert_eq!(accuracy(&qa, Some("Grey sea."), TextMetric::ExactMatch), 1.0);
        assert_eq!(accuracy(&qa, Some("Grey Lake"), TextMetric::ExactMatch), 0.0);
        // Tokens after normalisation: {grey, lake} against {grey, sea}: P = R = 1/2.
        assert_eq!(accuracy(&qa, Some("Grey Lake"), TextMetric::TokenF1), 0.5);
    }

    #[test]
    fn objective_vectors_by_hand() {
        let all = [Objective::Accuracy, Objective::ToolEfficiency, Objective::TokenEfficiency];
        let budgets = Budgets { tool_calls: 4, tokens: 200 };
        let answered = RawMetrics {
            accuracy: 1.0,
            tool_calls: 1,
            generated_tokens: 50,
            termination: Termination::Answered,
        };
        assert_eq!(objective_vector(&all, &answered, &budgets), vec![1.0, 0.75, 0.75]);
        // No answer: accuracy 0 whatever was measured; efficiencies still count what was used.
        let cut =
            RawMetrics { termination: Termination::TokenBudget, generated_tokens: 200, ..answered };
        assert_eq!(objective_vector(&all, &cut, &budgets), vec![0.0, 0.75, 0.0]);
        // Any order and subset of objectives.
        let two = [Objective::TokenEfficiency, Objective::Accuracy];
        let partial = RawMetrics { accuracy: 0.4, ..answered };
        assert_eq!(objective_vector(&two, &partial, &budgets), vec![0.75, 0.4]);
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_rejected() {
        for objective in
            [Objective::Accuracy, Objective::ToolEfficiency, Objective::TokenEfficiency]
        {
            assert_eq!(objective.name().parse(), Ok(objective));
        }
        assert_eq!("latency".parse::<Objective>(), Err(UnknownObjective("latency".into())));
    }

    #[test]
    fn budget_efficiency_is_linear_then_flat() {
        assert_eq!(budget_efficiency(0, 4), 1.0);
        assert_eq!(budget_efficiency(1, 4), 0.75);
        assert_eq!(budget_efficiency(4, 4), 0.0);
        assert_eq!(budget_efficiency(9, 4), 0.0);
        assert_eq!(budget_efficiency(0, 0), 1.0);
        assert_eq!(budget_efficiency(1, 0), 0.0);
        // Never outside [0, 1], and never increasing with use.
        for budget in 0..20 {
            let mut last = 1.0;
            for used in 0..40 {
                let e = budget_efficiency(used, budget);
                assert!((0.0..=1.0).contains(&e) && e <= last);
                last = e;
            }
        }
    }
}

//! The objectives a trajectory is scored on (DESIGN.md §4): each in [0, 1], all maximised.

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

#[cfg(test)]
mod tests {
    use super::*;

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

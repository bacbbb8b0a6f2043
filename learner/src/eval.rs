//! Held-out evaluation of a policy (DESIGN.md §10): greedy episodes on the eval split with the
//! real tools, and the policy's point, its mean objective vector. Its hypervolume is that one
//! point's, in all K objectives with the run's reference point, so a warm-start policy and a
//! trained one compare on one number.
//!
//! What it does not do: choose the questions (the run's eval split does) or write files.

use std::collections::BTreeMap;

use actor::episode::{SessionModel, ToolRunner, run_episodes, score};
use actor::runtime::session_capacity;
use actor::setup::TaskSetup;
use pareto::Points;
use policy::{Qwen2, Sampler, SamplingParams, Session, Tokenizer};
use serde::Serialize;
use tasks::Termination;

/// Rows sampled together.
const BATCH: usize = 64;

/// One category's share of an evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CategoryResult {
    /// Questions.
    pub questions: usize,
    /// Mean accuracy.
    pub accuracy: f64,
    /// Mean tool calls per question.
    pub tool_calls_per_q: f64,
    /// Questions answered without a tool call.
    pub direct_questions: usize,
    /// Mean accuracy of those (0 when there are none).
    pub direct_accuracy: f64,
    /// Mean accuracy of the questions that called a tool (0 when there are none).
    pub tool_accuracy: f64,
}

/// What an evaluation measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EvalResult {
    /// Questions evaluated.
    pub questions: usize,
    /// The objective names, in the order of `mean`.
    pub objectives: Vec<String>,
    /// The policy's point: the mean objective vector.
    pub mean: Vec<f64>,
    /// HV of that point with `reference`.
    pub hypervolume: f64,
    /// The reference point.
    pub reference: Vec<f64>,
    /// Mean accuracy.
    pub accuracy: f64,
    /// Share of questions answered correctly (accuracy at least the run's threshold).
    pub correct: f64,
    /// Mean tool calls per question.
    pub tool_calls_per_q: f64,
    /// Correct answers per tool call (OTC's productivity; `None` without any call).
    pub tool_productivity: Option<f64>,
    /// Mean generated tokens per question.
    pub tokens_per_q: f64,
    /// Share of episodes that ended with an answer.
    pub answered: f64,
    /// By category (the task's bands).
    pub by_category: BTreeMap<String, CategoryResult>,
}

/// How to evaluate.
#[derive(Debug, Clone, Copy)]
pub struct EvalSpec<'a> {
    /// Sampling settings (greedy for evaluation).
    pub params: &'a SamplingParams,
    /// The objective names, in the run's order.
    pub objectives: &'a [String],
    /// The hypervolume reference point.
    pub reference: &'a [f64],
    /// Held-out questions to evaluate, at most.
    pub limit: usize,
    /// Accuracy that counts as a correct answer.
    pub correct_threshold: f64,
}

/// Evaluates `model` on the first `spec.limit` questions of `questions` (a split of `task`).
pub fn evaluate(
    model: &Qwen2,
    tokenizer: &Tokenizer,
    task: &TaskSetup,
    questions: &[tasks::datasets::Example],
    tools: &mut impl ToolRunner,
    spec: &EvalSpec<'_>,
) -> anyhow::Result<EvalResult> {
    let EvalSpec { params, objectives: objective_names, reference, limit, correct_threshold } =
        *spec;
    let examples: Vec<_> = questions.iter().take(limit).collect();
    let k = task.objectives.len();
    let mut sum = vec![0.0; k];
    let (mut calls, mut tokens, mut answered, mut correct) = (0u64, 0u64, 0usize, 0usize);
    let mut by_category: BTreeMap<String, CategoryResult> = BTreeMap::new();
    let names = task.tool_names();
    // Greedy decoding draws nothing; the sampler is only there for the type.
    let mut sampler = Sampler::new(0);
    for batch in examples.chunks(BATCH) {
        let prompts = batch
            .iter()
            .map(|e| tokenizer.encode(&tasks::synthetic::prompt(&e.question)))
            .collect::<Result<Vec<_>, _>>()?;
        let capacity = session_capacity(model, &prompts, task);
        let mut turn_model = SessionModel {
            session: Session::new(model, &prompts, capacity),
            params,
            sampler: &mut sampler,
            tokenizer,
        };
        let trajectories =
            run_episodes(&mut turn_model, tokenizer, tools, &names, &prompts, &task.budgets)?;
        for (example, t) in batch.iter().zip(&trajectories) {
            let (y, raw) = score(t, example, &task.objectives, &task.budgets, task.metric);
            for (s, v) in sum.iter_mut().zip(&y) {
                *s += v;
            }
            calls += u64::from(raw.tool_calls);
            tokens += u64::from(raw.generated_tokens);
            answered += usize::from(raw.termination == Termination::Answered);
            correct += usize::from(raw.accuracy >= correct_threshold);
            let c = by_category.entry(example.category.clone()).or_default();
            c.questions += 1;
            c.accuracy += raw.accuracy;
            c.tool_calls_per_q += f64::from(raw.tool_calls);
            if raw.tool_calls == 0 {
                c.direct_questions += 1;
                c.direct_accuracy += raw.accuracy;
            } else {
                c.tool_accuracy += raw.accuracy;
            }
        }
    }
    let n = examples.len().max(1) as f64;
    for c in by_category.values_mut() {
        let tool_questions = c.questions - c.direct_questions;
        c.tool_accuracy /= tool_questions.max(1) as f64;
        c.direct_accuracy /= c.direct_questions.max(1) as f64;
        let q = c.questions.max(1) as f64;
        c.accuracy /= q;
        c.tool_calls_per_q /= q;
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let accuracy_index = objective_names.iter().position(|o| o == "accuracy");
    let hypervolume = Points::new(&mean, k).map_or(0.0, |p| pareto::hv::hypervolume(p, reference));
    Ok(EvalResult {
        questions: examples.len(),
        objectives: objective_names.to_vec(),
        accuracy: accuracy_index.map_or(0.0, |i| mean[i]),
        mean,
        hypervolume,
        reference: reference.to_vec(),
        correct: correct as f64 / n,
        tool_calls_per_q: calls as f64 / n,
        tool_productivity: (calls > 0).then(|| correct as f64 / calls as f64),
        tokens_per_q: tokens as f64 / n,
        answered: answered as f64 / n,
        by_category,
    })
}

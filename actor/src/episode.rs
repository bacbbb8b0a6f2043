//! The multi-turn agent loop (DESIGN.md §2, issue #6): sample a turn until `</tool_call>` or
//! `</answer>`, run the calls, append each response to its row's cached prefix, and go on until
//! every row has answered or run out of budget.
//!
//! The loop is synchronous and generic over the model ([`TurnModel`]) and the tools
//! ([`ToolRunner`]), so its bookkeeping (budgets, masks, termination) is tested with a scripted
//! model, and the actor plugs in `policy::Session` and its gRPC tool client. What it does not do:
//! choose prompts, score answers ([`score`] does, from `tasks`), or talk to the learner.

use policy::sample::{FinishReason, Sampler, SamplingParams, Session, Turn};
use policy::tokenizer::{Tokenizer, TokenizerError};
use tasks::datasets::Example;
use tasks::format::{TurnAction, format_response, parse_turn};
use tasks::{Budgets, Objective, RawMetrics, Termination, TextMetric, accuracy, objective_vector};

/// What the loop needs from a model: sample a turn for some rows, and take appended text.
pub trait TurnModel {
    /// Samples one turn for each row in `rows`, at most `limits[i]` tokens for `rows[i]`.
    fn generate(&mut self, rows: &[usize], limits: &[usize]) -> Vec<Turn>;
    /// Adds text the model did not write (a tool response) to the end of `row`.
    fn append(&mut self, row: usize, tokens: &[i64]);
}

/// The policy as the loop sees it: a sampling session with its settings, seeded sampler and
/// tokenizer (for stop strings).
#[derive(Debug)]
pub struct SessionModel<'a, 'm> {
    /// The batch being sampled.
    pub session: Session<'m>,
    /// Temperature, top-k/top-p, EOS ids and stop strings (`tasks::format::STOP_STRINGS`).
    pub params: &'a SamplingParams,
    /// The seeded sampler.
    pub sampler: &'a mut Sampler,
    /// The tokenizer that finds stop strings.
    pub tokenizer: &'a Tokenizer,
}

impl TurnModel for SessionModel<'_, '_> {
    fn generate(&mut self, rows: &[usize], limits: &[usize]) -> Vec<Turn> {
        self.session.generate_limited(rows, limits, self.params, self.sampler, Some(self.tokenizer))
    }

    fn append(&mut self, row: usize, tokens: &[i64]) {
        self.session.append(row, tokens);
    }
}

/// One tool call to run.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolRequest {
    /// The tool's name.
    pub tool: String,
    /// Its arguments, a JSON object as text.
    pub arguments_json: String,
}

/// Runs a turn's tool calls (all rows' at once, so a remote server sees them together) and
/// returns the text each call answers, in order. A failed call answers its error text: the
/// policy reads it like any other response.
pub trait ToolRunner {
    /// The answers to `requests`, one each, in order.
    fn run(&mut self, requests: &[ToolRequest]) -> Vec<String>;
}

/// One episode: the prompt, everything after it, and what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Trajectory {
    /// The prompt's token ids.
    pub prompt: Vec<i64>,
    /// Every token after the prompt: sampled turns and appended tool responses, in order.
    pub completion: Vec<i64>,
    /// For each completion token, the log-prob it was sampled with; 0 for appended tokens.
    pub logprobs: Vec<f32>,
    /// For each completion token, whether the model generated it (the loss mask: tool output
    /// is masked, spec §3 step 8).
    pub generated: Vec<bool>,
    /// The final answer, if one was given.
    pub answer: Option<String>,
    /// Tool calls made, malformed attempts included.
    pub tool_calls: u32,
    /// Tokens the model generated.
    pub generated_tokens: u32,
    /// Why the episode ended.
    pub termination: Termination,
}

impl Trajectory {
    fn new(prompt: &[i64]) -> Self {
        Trajectory {
            prompt: prompt.to_vec(),
            completion: Vec::new(),
            logprobs: Vec::new(),
            generated: Vec::new(),
            answer: None,
            tool_calls: 0,
            generated_tokens: 0,
            termination: Termination::Aborted,
        }
    }

    fn push_generated(&mut self, turn: &Turn) {
        self.completion.extend_from_slice(&turn.tokens);
        self.logprobs.extend_from_slice(&turn.logprobs);
        self.generated.extend(std::iter::repeat_n(true, turn.tokens.len()));
        self.generated_tokens += turn.tokens.len() as u32;
    }

    fn push_appended(&mut self, tokens: &[i64]) {
        self.completion.extend_from_slice(tokens);
        self.logprobs.extend(std::iter::repeat_n(0.0, tokens.len()));
        self.generated.extend(std::iter::repeat_n(false, tokens.len()));
    }
}

/// What the model's turn leads to.
enum Next {
    /// The episode is over.
    Done(Termination),
    /// Run this call, append its answer, then sample the next turn.
    Call(ToolRequest),
    /// Append this text (a format error the model reads back), then sample the next turn.
    Respond(String),
}

/// Runs one episode per prompt, all as one batch, and returns them in prompt order.
///
/// Budgets: a row stops when it has generated `budgets.tokens` tokens (`TokenBudget`), or when
/// it asks for a call past `budgets.tool_calls` (`ToolBudget`; a malformed attempt past it ends
/// the episode as `Malformed`). `tools` names the tools the parser accepts.
pub fn run_episodes(
    model: &mut impl TurnModel,
    tokenizer: &Tokenizer,
    runner: &mut impl ToolRunner,
    tools: &[&str],
    prompts: &[Vec<i64>],
    budgets: &Budgets,
) -> Result<Vec<Trajectory>, TokenizerError> {
    let mut trajectories: Vec<Trajectory> = prompts.iter().map(|p| Trajectory::new(p)).collect();
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    while !active.is_empty() {
        // Each row may generate what is left of its own budget, so a turn is never cut short
        // by another row's.
        let limits: Vec<usize> = active
            .iter()
            .map(|&row| budgets.tokens.saturating_sub(trajectories[row].generated_tokens) as usize)
            .collect();
        let turns = model.generate(&active, &limits);
        let mut calls: Vec<(usize, ToolRequest)> = Vec::new();
        let mut responses: Vec<(usize, String)> = Vec::new();
        let mut still_active = Vec::with_capacity(active.len());
        for (&row, turn) in active.iter().zip(&turns) {
            let trajectory = &mut trajectories[row];
            trajectory.push_generated(turn);
            let next = match &turn.finish {
                FinishReason::ContextFull => Next::Done(Termination::ContextLimit),
                FinishReason::Length => Next::Done(Termination::TokenBudget),
                FinishReason::Eos | FinishReason::StopString(_) => {
                    let text = tokenizer.decode(&turn.tokens)?;
                    decide(trajectory, parse_turn(&text, tools), budgets)
                }
            };
            match next {
                Next::Done(termination) => trajectory.termination = termination,
                Next::Call(request) => {
                    calls.push((row, request));
                    still_active.push(row);
                }
                Next::Respond(text) => {
                    responses.push((row, text));
                    still_active.push(row);
                }
            }
        }
        let requests: Vec<ToolRequest> = calls.iter().map(|(_, r)| r.clone()).collect();
        let answers = if requests.is_empty() { Vec::new() } else { runner.run(&requests) };
        let answered = calls.iter().map(|(row, _)| *row).zip(answers);
        for (row, output) in answered.chain(responses) {
            let tokens = tokenizer.encode(&format_response(&output))?;
            model.append(row, &tokens);
            trajectories[row].push_appended(&tokens);
        }
        active = still_active;
    }
    Ok(trajectories)
}

/// A trajectory's raw metrics and objective vector (in the order of `objectives`) as the answer
/// to `example`.
pub fn score(
    trajectory: &Trajectory,
    example: &Example,
    objectives: &[Objective],
    budgets: &Budgets,
    metric: TextMetric,
) -> (Vec<f64>, RawMetrics) {
    let raw = RawMetrics {
        accuracy: accuracy(example, trajectory.answer.as_deref(), metric),
        tool_calls: trajectory.tool_calls,
        generated_tokens: trajectory.generated_tokens,
        termination: trajectory.termination,
    };
    (objective_vector(objectives, &raw, budgets), raw)
}

/// What a finished turn leads to, counting its call.
fn decide(trajectory: &mut Trajectory, action: TurnAction, budgets: &Budgets) -> Next {
    let budget_spent = trajectory.tool_calls >= budgets.tool_calls;
    match action {
        TurnAction::Answer(answer) => {
            trajectory.answer = Some(answer);
            Next::Done(Termination::Answered)
        }
        TurnAction::Nothing => Next::Done(Termination::NoAnswer),
        TurnAction::Call(_) if budget_spent => Next::Done(Termination::ToolBudget),
        TurnAction::Malformed(_) if budget_spent => Next::Done(Termination::Malformed),
        TurnAction::Call(call) => {
            trajectory.tool_calls += 1;
            let arguments_json = serde_json::Value::Object(call.arguments).to_string();
            Next::Call(ToolRequest { tool: call.name, arguments_json })
        }
        TurnAction::Malformed(error) => {
            trajectory.tool_calls += 1;
            Next::Respond(error.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// A model that writes scripted texts, one turn each, cut at the row's limit, as `Session`
    /// would.
    struct Scripted<'t> {
        tokenizer: &'t Tokenizer,
        /// Per row, the texts of its turns to come.
        scripts: Vec<VecDeque<String>>,
        appended: Vec<Vec<i64>>,
        eos: i64,
    }

    impl<'t> Scripted<'t> {
        fn new(tokenizer: &'t Tokenizer, scripts: &[&[&str]]) -> Self {
            Scripted {
                tokenizer,
                scripts: scripts
                    .iter()
                    .map(|turns| turns.iter().map(|s| (*s).to_owned()).collect())
                    .collect(),
                appended: vec![Vec::new(); scripts.len()],
                eos: tokenizer.token_id("<|endoftext|>").expect("eos"),
            }
        }
    }

    impl TurnModel for Scripted<'_> {
        fn generate(&mut self, rows: &[usize], limits: &[usize]) -> Vec<Turn> {
            rows.iter()
                .zip(limits)
                .map(|(&row, &limit)| {
                    let text = self.scripts[row].pop_front().unwrap_or_default();
                    let mut tokens = self.tokenizer.encode(&text).expect("encode");
                    let stop =
                        ["</tool_call>", "</answer>"].into_iter().find(|s| text.ends_with(s));
                    if stop.is_none() {
                        tokens.push(self.eos);
                    }
                    let finish = if tokens.len() > limit {
                        tokens.truncate(limit);
                        FinishReason::Length
                    } else {
                        stop.map_or(FinishReason::Eos, |s| FinishReason::StopString(s.into()))
                    };
                    let logprobs = vec![-0.5; tokens.len()];
                    Turn { tokens, logprobs, finish }
                })
                .collect()
        }

        fn append(&mut self, row: usize, tokens: &[i64]) {
            self.appended[row].extend_from_slice(tokens);
        }
    }

    /// Answers calculator calls with "42", and records what it was asked, batch by batch.
    #[derive(Default)]
    struct Recorder {
        batches: Vec<Vec<ToolRequest>>,
    }

    impl ToolRunner for Recorder {
        fn run(&mut self, requests: &[ToolRequest]) -> Vec<String> {
            self.batches.push(requests.to_vec());
            requests.iter().map(|_| "42".to_owned()).collect()
        }
    }

    const CALL: &str =
        r#"<tool_call>{"name": "calculator", "arguments": {"expression": "6*7"}}</tool_call>"#;

    fn run(scripts: &[&[&str]], budgets: Budgets) -> (Vec<Trajectory>, Recorder, Tokenizer) {
        let tokenizer = Tokenizer::synthetic(&[]).expect("tokenizer");
        let mut model = Scripted::new(&tokenizer, scripts);
        let mut tools = Recorder::default();
        let prompts: Vec<Vec<i64>> =
            scripts.iter().map(|_| tokenizer.encode("Q\n").expect("prompt")).collect();
        let out =
            run_episodes(&mut model, &tokenizer, &mut tools, &["calculator"], &prompts, &budgets)
                .expect("episodes");
        for (row, t) in out.iter().enumerate() {
            // What the model was given is exactly the masked part of the completion.
            let appended: Vec<i64> = t
                .completion
                .iter()
                .zip(&t.generated)
                .filter(|(_, g)| !**g)
                .map(|(id, _)| *id)
                .collect();
            assert_eq!(appended, model.appended[row], "row {row}");
        }
        (out, tools, tokenizer)
    }

    #[test]
    fn calls_are_run_together_and_responses_are_masked() {
        let budgets = Budgets { tool_calls: 2, tokens: 1000 };
        let (out, tools, tokenizer) = run(
            &[
                &[CALL, "<answer>42</answer>"],
                &["<answer>7</answer>"],
                &[CALL, CALL, "<answer>1</answer>"],
            ],
            budgets,
        );
        assert_eq!(out[0].termination, Termination::Answered);
        assert_eq!(out[0].answer.as_deref(), Some("42"));
        assert_eq!((out[0].tool_calls, out[1].tool_calls, out[2].tool_calls), (1, 0, 2));
        // Round 1: rows 0 and 2 call together; round 2: row 2 alone.
        let sizes: Vec<usize> = tools.batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 1]);
        assert_eq!(tools.batches[0][0].arguments_json, r#"{"expression":"6*7"}"#);
        let text = tokenizer.decode(&out[0].completion).expect("decode");
        assert_eq!(text, format!("{CALL}<tool_response>42</tool_response><answer>42</answer>"));
        let generated = out[0].generated.iter().filter(|g| **g).count() as u32;
        assert_eq!(generated, out[0].generated_tokens);
        for t in &out {
            assert_eq!(t.completion.len(), t.logprobs.len());
            for (lp, g) in t.logprobs.iter().zip(&t.generated) {
                assert_eq!(*lp != 0.0, *g, "log-probs only on generated tokens");
            }
        }
    }

    #[test]
    fn scores_follow_the_answer_and_the_budgets_used() {
        let budgets = Budgets { tool_calls: 4, tokens: 1000 };
        let (out, _, _) = run(&[&[CALL, "<answer>42</answer>"], &["<answer>41</answer>"]], budgets);
        let example = Example {
            id: "q".into(),
            question: "What is 6*7?".into(),
            answer: "42".into(),
            kind: tasks::datasets::AnswerKind::Numeric,
            context: Vec::new(),
            category: String::new(),
        };
        let all = [Objective::Accuracy, Objective::ToolEfficiency, Objective::TokenEfficiency];
        let (right, raw) = score(&out[0], &example, &all, &budgets, TextMetric::TokenF1);
        let tokens = out[0].generated_tokens as f64;
        assert_eq!(right, vec![1.0, 0.75, 1.0 - tokens / 1000.0]);
        assert_eq!((raw.tool_calls, raw.termination), (1, Termination::Answered));
        let (wrong, _) = score(&out[1], &example, &all, &budgets, TextMetric::TokenF1);
        assert_eq!(wrong[..2], [0.0, 1.0]);
    }

    #[test]
    fn budgets_end_episodes_with_their_reasons() {
        let budgets = Budgets { tool_calls: 1, tokens: 120 };
        let long = "x".repeat(300);
        let (out, tools, _) = run(
            &[
                &[CALL, CALL, "<answer>1</answer>"],
                &[CALL, "<tool_call>{oops}</tool_call>"],
                &[&long],
                &["just text"],
                &["<tool_call>[1]</tool_call>", "<answer>3</answer>"],
            ],
            budgets,
        );
        let reasons: Vec<Termination> = out.iter().map(|t| t.termination).collect();
        assert_eq!(
            reasons,
            vec![
                Termination::ToolBudget,
                Termination::Malformed,
                Termination::TokenBudget,
                Termination::NoAnswer,
                Termination::Answered,
            ]
        );
        assert_eq!(out[2].generated_tokens, 120, "the token budget is exact");
        // The malformed call of row 4 counts, is answered with its error, and is not sent.
        assert_eq!(out[4].tool_calls, 1);
        assert_eq!(tools.batches.iter().map(Vec::len).sum::<usize>(), 2);
    }
}

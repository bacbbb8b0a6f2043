//! The built-in synthetic tasks, small enough to train on a laptop CPU and built so that calling a
//! tool is a real trade-off: [`arith`] (arithmetic, where the calculator pays off only on hard
//! questions) and [`kbqa`] (questions about a generated knowledge base, where `search` pays off
//! only for facts the warm-start data did not teach).
//!
//! Each task yields its questions, a search corpus (kb-qa), the extra tokens a synthetic
//! tokenizer should hold, and **warm-start demonstrations**: whole trajectories that mix direct
//! answers and tool calls, so a freshly initialised model learns the format before RL. A
//! demonstration's tool responses are what the tool-server answers to its calls (the
//! tool-server's tests check that), so a demonstration is a trajectory the actor could have
//! produced.
//!
//! Everything is a pure function of the settings and the seed. What this module does not do:
//! tokenize, run tools, or decide the train/eval split ([`crate::datasets::split`] does).

pub mod arith;
pub mod kbqa;

use serde_json::{Map, Value};

use crate::datasets::{Example, Passage};
use crate::format::{ToolCall, format_answer, format_call, format_response};

/// The name of each built-in task, as `[task] name` gives it.
pub const TASKS: [&str; 2] = [arith::NAME, kbqa::NAME];

/// The prompt the model sees for a question: the question and a newline. Demonstrations and the
/// actor both build prompts here.
pub fn prompt(question: &str) -> String {
    format!("{question}\n")
}

/// One stretch of a demonstration's completion.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Segment {
    /// The text.
    pub text: String,
    /// Whether the model writes it (trained on) or the actor appends it (a tool response:
    /// masked out of the loss).
    pub generated: bool,
}

/// A warm-start trajectory: a prompt and the completion, in segments.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Demonstration {
    /// The example it answers.
    pub example_id: String,
    /// The example's category (its band).
    pub category: String,
    /// The prompt ([`prompt`]).
    pub prompt: String,
    /// The completion: tool calls, tool responses and the final answer, in order.
    pub segments: Vec<Segment>,
}

impl Demonstration {
    fn new(example: &Example) -> Self {
        Demonstration {
            example_id: example.id.clone(),
            category: example.category.clone(),
            prompt: prompt(&example.question),
            segments: Vec::new(),
        }
    }

    /// Appends a tool call the model writes and the response the actor appends.
    fn call(&mut self, call: &ToolCall, response: &str) {
        self.segments.push(Segment { text: format_call(call), generated: true });
        self.segments.push(Segment { text: format_response(response), generated: false });
    }

    /// Appends the final answer.
    fn answer(&mut self, answer: &str) {
        self.segments.push(Segment { text: format_answer(answer), generated: true });
    }

    /// The tool calls it makes.
    pub fn tool_calls(&self) -> usize {
        self.segments.iter().filter(|s| !s.generated).count()
    }

    /// Prompt and completion as one text.
    pub fn text(&self) -> String {
        let mut text = self.prompt.clone();
        text.extend(self.segments.iter().map(|s| s.text.as_str()));
        text
    }
}

/// What a built-in task provides.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskData {
    /// The questions (split them with [`crate::datasets::split`]).
    pub examples: Vec<Example>,
    /// Warm-start trajectories.
    pub demonstrations: Vec<Demonstration>,
    /// The search corpus (empty for tasks without `search`).
    pub corpus: Vec<Passage>,
    /// Multi-character tokens worth a single id in a synthetic tokenizer: the task's fixed
    /// phrases and the fixed parts of its tool calls.
    pub extra_tokens: Vec<String>,
}

/// Settings that cannot produce a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{task}: setting `{key}`: {message}")]
pub struct SettingsError {
    /// The task.
    pub task: &'static str,
    /// The setting.
    pub key: &'static str,
    /// Why.
    pub message: String,
}

/// An unknown task name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown built-in task {0:?} (built in: arith, kb-qa)")]
pub struct UnknownTask(pub String);

/// Generates the built-in task `name` with its default settings.
pub fn generate(name: &str, seed: u64) -> Result<TaskData, UnknownTask> {
    // The defaults are valid by construction; the unit tests of each task check that.
    generate_with(name, &Map::new(), seed).map_err(|e| match e {
        GenerateError::Unknown(unknown) => unknown,
        other => UnknownTask(other.to_string()),
    })
}

/// Why a built-in task could not be generated from its settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    /// No such task.
    #[error(transparent)]
    Unknown(#[from] UnknownTask),
    /// The settings do not deserialise (an unknown key, a wrong type).
    #[error("{task}: settings: {message}")]
    Unreadable {
        /// The task.
        task: &'static str,
        /// The deserialiser's message, naming the key.
        message: String,
    },
    /// A setting's value makes no task.
    #[error(transparent)]
    Invalid(#[from] SettingsError),
}

/// The built-in task `name`'s settings: `settings` (keys of its settings struct; unset ones keep
/// their defaults), resolved in full, as JSON. Reports print these.
pub fn resolved_settings(
    name: &str,
    settings: &Map<String, Value>,
) -> Result<Value, GenerateError> {
    let resolved = match name {
        arith::NAME => serde_json::to_value(parse::<arith::ArithSettings>(arith::NAME, settings)?),
        kbqa::NAME => serde_json::to_value(parse::<kbqa::KbQaSettings>(kbqa::NAME, settings)?),
        other => return Err(UnknownTask(other.to_owned()).into()),
    };
    // Plain structs of numbers always serialise.
    Ok(resolved.unwrap_or(Value::Null))
}

/// Generates the built-in task `name` from `settings` (see [`resolved_settings`]) and `seed`.
pub fn generate_with(
    name: &str,
    settings: &Map<String, Value>,
    seed: u64,
) -> Result<TaskData, GenerateError> {
    match name {
        arith::NAME => Ok(arith::generate(&parse(arith::NAME, settings)?, seed)?),
        kbqa::NAME => Ok(kbqa::generate(&parse(kbqa::NAME, settings)?, seed)?),
        other => Err(UnknownTask(other.to_owned()).into()),
    }
}

fn parse<T: serde::de::DeserializeOwned>(
    task: &'static str,
    settings: &Map<String, Value>,
) -> Result<T, GenerateError> {
    serde_json::from_value(Value::Object(settings.clone()))
        .map_err(|e| GenerateError::Unreadable { task, message: e.to_string() })
}

/// A tool call with one string argument (and any fixed ones), in the canonical text.
fn tool_call(name: &str, key: &str, value: &str, fixed: &[(&str, Value)]) -> ToolCall {
    let mut arguments = Map::new();
    for (k, v) in fixed {
        arguments.insert((*k).to_owned(), v.clone());
    }
    arguments.insert(key.to_owned(), Value::String(value.to_owned()));
    ToolCall { name: name.to_owned(), arguments }
}

/// The fixed text of a call before and after its one string argument: a tokenizer can give each
/// a single id.
fn call_prefix_suffix(name: &str, key: &str, fixed: &[(&str, Value)]) -> (String, String) {
    const MARK: &str = "\u{1}";
    let text = format_call(&tool_call(name, key, MARK, fixed));
    let (prefix, suffix) = text.split_once("\\u0001").unwrap_or((&text, ""));
    (prefix.to_owned(), suffix.to_owned())
}

/// Checks that a fraction setting lies in [0, 1].
fn check_fraction(task: &'static str, key: &'static str, value: f64) -> Result<(), SettingsError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(SettingsError { task, key, message: format!("must be within [0, 1], got {value}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{TurnAction, parse_turn};

    #[test]
    fn call_prefix_and_suffix_surround_the_argument() {
        let (prefix, suffix) = call_prefix_suffix("calculator", "expression", &[]);
        assert_eq!(prefix, r#"<tool_call>{"name": "calculator", "arguments": {"expression": ""#);
        assert_eq!(suffix, r#""}}</tool_call>"#);
        let call = format_call(&tool_call("calculator", "expression", "2*3", &[]));
        assert_eq!(call, format!("{prefix}2*3{suffix}"));
    }

    /// Every generated segment of every demonstration of both tasks parses as what it claims:
    /// a call to a tool the server offers, or the example's answer.
    #[test]
    fn demonstrations_parse_back_as_calls_and_answers() {
        for name in TASKS {
            let task = generate(name, 7).expect("default settings");
            let answers: std::collections::HashMap<&str, &str> =
                task.examples.iter().map(|e| (e.id.as_str(), e.answer.as_str())).collect();
            let mut calls = 0;
            for demo in &task.demonstrations {
                let (last, turns) = demo.segments.split_last().expect("segments");
                for segment in turns.iter().filter(|s| s.generated) {
                    match parse_turn(&segment.text, &["calculator", "search"]) {
                        TurnAction::Call(_) => calls += 1,
                        other => panic!("{name}: {:?} parsed as {other:?}", segment.text),
                    }
                }
                match parse_turn(&last.text, &["calculator", "search"]) {
                    TurnAction::Answer(a) => {
                        if let Some(want) = answers.get(demo.example_id.as_str()) {
                            assert_eq!(&a, want, "{name}: {}", demo.text());
                        }
                    }
                    other => panic!("{name}: final segment {:?} parsed as {other:?}", last.text),
                }
            }
            assert!(calls > 0 && calls < task.demonstrations.len() * 2, "{name}: {calls} calls");
            assert!(generate(name, 7).expect("again") == task, "{name}: deterministic by seed");
        }
        assert!(generate("chess", 0).is_err());
    }

    #[test]
    fn settings_override_defaults_and_bad_ones_name_the_key() {
        let mut settings = Map::new();
        settings.insert("questions".into(), Value::from(50));
        let task = generate_with(arith::NAME, &settings, 3).expect("valid");
        assert_eq!(task.examples.len(), 50);
        let resolved = resolved_settings(arith::NAME, &settings).expect("resolved");
        assert_eq!(resolved["questions"], 50);
        assert_eq!(resolved["medium_max"], arith::ArithSettings::default().medium_max);
        settings.insert("bogus".into(), Value::from(1));
        let unknown = generate_with(arith::NAME, &settings, 3).expect_err("unknown key");
        assert!(unknown.to_string().contains("bogus"), "{unknown}");
        let mut bad = Map::new();
        bad.insert("memorised_fraction".into(), Value::from(1.5));
        let invalid = generate_with(kbqa::NAME, &bad, 3).expect_err("out of range");
        assert!(invalid.to_string().contains("memorised_fraction"), "{invalid}");
    }
}

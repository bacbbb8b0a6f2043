//! `arith`: "What is 347*29?" in three bands of difficulty.
//!
//! - **easy**: a fixed table of 200 facts (a+b and a*b for single digits a, b), which a small
//!   model memorises: answering directly is right and free;
//! - **medium**: products in the times tables up to `medium_max` (default 12) outside the easy
//!   table, partly memorisable: whether the calculator pays depends on its cost, so this band
//!   is what lets different objective weights reach different points of the frontier;
//! - **hard**: 3-4 digit by 2-4 digit products, or three 2-digit factors, which a small model
//!   cannot do in its head (`../shared/quickstart-notes.md`: 0% direct at every size).
//!
//! The defaults follow the mix measured there: 40% easy, 20% medium, 40% hard, and
//! demonstrations that call the calculator on 15% / 50% / 85% of each band.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{
    Demonstration, SettingsError, TaskData, call_prefix_suffix, check_fraction, tool_call,
};
use crate::datasets::{AnswerKind, Example};

/// The task's name.
pub const NAME: &str = "arith";

/// The question's fixed opening.
const OPENING: &str = "What is ";

/// The bands, in the order of [`ArithSettings::demo_tool_rates`].
pub const BANDS: [&str; 3] = ["easy", "medium", "hard"];

/// `arith`'s settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArithSettings {
    /// Questions to generate.
    pub questions: u32,
    /// Share of easy questions.
    pub easy_fraction: f64,
    /// Share of medium questions; the rest are hard.
    pub medium_fraction: f64,
    /// The medium band: a*b with 2 <= a, b <= `medium_max`, one of them at least 10.
    pub medium_max: u32,
    /// Demonstrations to generate (drawn like the questions, from their own stream).
    pub demonstrations: u32,
    /// Per band (easy, medium, hard), the share of demonstrations that call the calculator.
    pub demo_tool_rates: [f64; 3],
}

impl Default for ArithSettings {
    fn default() -> Self {
        ArithSettings {
            questions: 2000,
            easy_fraction: 0.4,
            medium_fraction: 0.2,
            medium_max: 12,
            demonstrations: 2000,
            demo_tool_rates: [0.15, 0.5, 0.85],
        }
    }
}

impl ArithSettings {
    fn check(&self) -> Result<(), SettingsError> {
        check_fraction(NAME, "easy_fraction", self.easy_fraction)?;
        check_fraction(NAME, "medium_fraction", self.medium_fraction)?;
        for rate in self.demo_tool_rates {
            check_fraction(NAME, "demo_tool_rates", rate)?;
        }
        let fail = |key, message: String| Err(SettingsError { task: NAME, key, message });
        if self.easy_fraction + self.medium_fraction > 1.0 {
            return fail("medium_fraction", "easy_fraction + medium_fraction exceeds 1".into());
        }
        if self.medium_fraction > 0.0 && !(10..=99).contains(&self.medium_max) {
            return fail("medium_max", format!("must be within 10..=99, got {}", self.medium_max));
        }
        Ok(())
    }
}

/// One question: its expression, its exact value and its band.
#[derive(Debug, Clone, PartialEq)]
struct Problem {
    expression: String,
    value: u64,
    band: usize,
}

fn draw(settings: &ArithSettings, rng: &mut ChaCha8Rng) -> Problem {
    let u: f64 = rng.random();
    if u < settings.easy_fraction {
        let (a, b) = (rng.random_range(0..=9u64), rng.random_range(0..=9u64));
        return if rng.random_bool(0.5) {
            Problem { expression: format!("{a}+{b}"), value: a + b, band: 0 }
        } else {
            Problem { expression: format!("{a}*{b}"), value: a * b, band: 0 }
        };
    }
    if u < settings.easy_fraction + settings.medium_fraction {
        let max = u64::from(settings.medium_max);
        loop {
            let (a, b) = (rng.random_range(2..=max), rng.random_range(2..=max));
            if a.max(b) >= 10 {
                return Problem { expression: format!("{a}*{b}"), value: a * b, band: 1 };
            }
        }
    }
    if rng.random_bool(0.5) {
        let a = rng.random_range(100..=9999u64);
        let b = rng.random_range(10..=9999u64);
        Problem { expression: format!("{a}*{b}"), value: a * b, band: 2 }
    } else {
        let [a, b, c] = [(); 3].map(|()| rng.random_range(10..=99u64));
        Problem { expression: format!("{a}*{b}*{c}"), value: a * b * c, band: 2 }
    }
}

fn example(id: String, problem: &Problem) -> Example {
    Example {
        id,
        question: format!("{OPENING}{}?", problem.expression),
        answer: problem.value.to_string(),
        kind: AnswerKind::Numeric,
        context: Vec::new(),
        category: BANDS[problem.band].to_owned(),
    }
}

/// Generates `arith` questions and demonstrations for `seed`.
pub fn generate(settings: &ArithSettings, seed: u64) -> Result<TaskData, SettingsError> {
    settings.check()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let examples = (0..settings.questions)
        .map(|i| example(format!("{NAME}-{i}"), &draw(settings, &mut rng)))
        .collect();
    // Demonstrations come from their own stream, so changing `questions` keeps them.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x0044_454d_4f53);
    let demonstrations = (0..settings.demonstrations)
        .map(|i| {
            let problem = draw(settings, &mut rng);
            let example = example(format!("{NAME}-demo-{i}"), &problem);
            let mut demo = Demonstration::new(&example);
            if rng.random_bool(settings.demo_tool_rates[problem.band]) {
                // The calculator's answer to an integer expression is the integer.
                let call = tool_call("calculator", "expression", &problem.expression, &[]);
                demo.call(&call, &example.answer);
            }
            demo.answer(&example.answer);
            demo
        })
        .collect();
    let (prefix, suffix) = call_prefix_suffix("calculator", "expression", &[]);
    Ok(TaskData {
        examples,
        demonstrations,
        corpus: Vec::new(),
        extra_tokens: vec![OPENING.to_owned(), prefix, suffix],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checking::numbers_equal;

    /// Evaluates "a*b*c" or "a+b" independently of the generator.
    fn evaluate(expression: &str) -> u64 {
        if let Some((a, b)) = expression.split_once('+') {
            return a.parse::<u64>().expect("a") + b.parse::<u64>().expect("b");
        }
        expression.split('*').map(|f| f.parse::<u64>().expect("factor")).product()
    }

    #[test]
    fn questions_have_the_right_answers_bands_and_mix() {
        let task = generate(&ArithSettings::default(), 3).expect("valid");
        assert_eq!(task.examples.len(), 2000);
        let mut per_band = [0usize; 3];
        for e in &task.examples {
            let expression =
                e.question.strip_prefix(OPENING).and_then(|q| q.strip_suffix('?')).expect("form");
            assert!(numbers_equal(&e.answer, &evaluate(expression).to_string()), "{e:?}");
            let band = BANDS.iter().position(|b| *b == e.category).expect("band");
            per_band[band] += 1;
            let factors: Vec<u64> =
                expression.split(['*', '+']).map(|f| f.parse().expect("number")).collect();
            match band {
                0 => assert!(factors.iter().all(|f| *f <= 9), "{expression}"),
                1 => assert!(
                    factors.iter().all(|f| (2..=12).contains(f))
                        && factors.iter().any(|f| *f >= 10)
                ),
                _ => assert!(factors.len() == 3 || factors[0] >= 100, "{expression}"),
            }
        }
        // 40/20/40 within sampling error (3 standard deviations of a binomial with n = 2000).
        for (count, share) in per_band.iter().zip([0.4f64, 0.2, 0.4]) {
            let sd = (2000.0 * share * (1.0 - share)).sqrt();
            assert!((*count as f64 - 2000.0 * share).abs() < 3.0 * sd, "{per_band:?}");
        }
        let easy: std::collections::HashSet<&str> = task
            .examples
            .iter()
            .filter(|e| e.category == "easy")
            .map(|e| e.question.as_str())
            .collect();
        assert!(easy.len() <= 200, "the easy table has 200 facts");
    }

    #[test]
    fn demonstrations_call_the_calculator_more_often_on_harder_bands() {
        let task = generate(&ArithSettings::default(), 5).expect("valid");
        let mut calls = [(0usize, 0usize); 3];
        for demo in &task.demonstrations {
            let band = BANDS.iter().position(|b| *b == demo.category).expect("band");
            calls[band].0 += demo.tool_calls();
            calls[band].1 += 1;
        }
        let rates: Vec<f64> = calls.iter().map(|(c, n)| *c as f64 / *n as f64).collect();
        for (rate, want) in rates.iter().zip([0.15, 0.5, 0.85]) {
            assert!((rate - want).abs() < 0.07, "{rates:?}");
        }
    }

    #[test]
    fn bad_settings_name_the_setting() {
        let settings =
            ArithSettings { easy_fraction: 0.9, medium_fraction: 0.2, ..Default::default() };
        let err = generate(&settings, 0).expect_err("sum");
        assert_eq!(err.key, "medium_fraction");
        let settings = ArithSettings { demo_tool_rates: [0.1, 1.5, 0.9], ..Default::default() };
        assert_eq!(generate(&settings, 0).expect_err("rate").key, "demo_tool_rates");
        let settings = ArithSettings { medium_max: 9, ..Default::default() };
        assert_eq!(generate(&settings, 0).expect_err("max").key, "medium_max");
    }
}

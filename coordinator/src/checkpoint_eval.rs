//! `coordinator eval`: scores a checkpoint on a split of a task without training.
//!
//! The coordinator links no libtorch (DESIGN.md §10), so this launches a run that does no RL
//! step: a learner that loads the checkpoint (`model.name`), evaluates it greedily with the
//! tools (`algorithm.eval_split`, `algorithm.eval_questions`) and exits, beside a coordinator
//! and a tool-server, in a scratch run directory that is removed afterwards. The result is the
//! same [`Evaluation`] a training run writes to `eval.json`.
//!
//! Which questions: a built-in task is generated from `run.seed` and its settings, so the
//! config must match the one the checkpoint was trained with. When the checkpoint lies in a run
//! directory (`<run>/checkpoints/step-N`) and no `--config` is given, that run's `config.toml`
//! is used.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::experiment::quoted;
use crate::launcher::{self, Ended, LaunchPlan};
use crate::report::Evaluation;

/// What `coordinator eval` was asked.
#[derive(Debug, Clone)]
pub struct EvalPlan {
    /// The checkpoint directory (Hugging Face layout).
    pub model: PathBuf,
    /// The task, overriding the config's.
    pub task: Option<String>,
    /// `test` or `train`.
    pub split: String,
    /// Questions to evaluate, overriding `algorithm.eval_questions`.
    pub questions: Option<u32>,
    /// The run config; unset: the checkpoint's run's, else the defaults.
    pub config: Option<PathBuf>,
    /// `--set` overrides.
    pub overrides: Vec<String>,
    /// Where the binaries are.
    pub bin_dir: PathBuf,
}

/// The run config beside a checkpoint in a run directory, if any.
pub fn run_config_of(checkpoint: &Path) -> Option<PathBuf> {
    let run_dir = checkpoint.parent()?.parent()?;
    let config = run_dir.join("config.toml");
    config.is_file().then_some(config)
}

/// Evaluates the plan's checkpoint; the result and the config file used.
pub async fn evaluate(plan: EvalPlan) -> anyhow::Result<(Evaluation, Option<PathBuf>)> {
    if !plan.model.join("config.json").is_file() {
        bail!(
            "--model {}: not a checkpoint directory (no config.json there)",
            plan.model.display()
        );
    }
    if !matches!(plan.split.as_str(), "test" | "train") {
        bail!("--split {:?}: expected `test` or `train`", plan.split);
    }
    let config = plan.config.clone().or_else(|| run_config_of(&plan.model));
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let scratch =
        std::env::temp_dir().join(format!("paretopo-eval-{}-{nanos}", std::process::id()));
    let mut overrides = plan.overrides.clone();
    overrides.extend([
        format!("model.name={}", quoted(&plan.model.display().to_string())),
        format!("run.dir={}", quoted(&scratch.display().to_string())),
        "run.name=\"eval\"".to_owned(),
        format!("algorithm.eval_split={}", quoted(&plan.split)),
        "algorithm.total_steps=0".to_owned(),
        "algorithm.warm_start_steps=0".to_owned(),
        "cluster.local_actors=0".to_owned(),
    ]);
    if let Some(task) = &plan.task {
        overrides.push(format!("task.name={}", quoted(task)));
    }
    if let Some(questions) = plan.questions {
        overrides.push(format!("algorithm.eval_questions={questions}"));
    }
    let launch = LaunchPlan {
        config: config.clone(),
        overrides,
        check_only: false,
        startup_timeout: Duration::from_secs(120),
        bin_dir: plan.bin_dir,
    };
    let outcome = launcher::launch(launch).await;
    let result = outcome.and_then(|ended| {
        if ended == Ended::Stopped {
            bail!("stopped before the evaluation finished");
        }
        let text = std::fs::read_to_string(scratch.join("eval.json"))
            .context("the learner wrote no evaluation (is `algorithm.eval_questions` 0?)")?;
        let all: serde_json::Value = serde_json::from_str(&text).context("eval.json")?;
        let eval = all.get("warm_start").cloned().context("eval.json holds no evaluation")?;
        Ok(serde_json::from_value::<Evaluation>(eval)?)
    });
    let result = result.with_context(|| {
        format!("evaluating {} (scratch run in {})", plan.model.display(), scratch.display())
    });
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok((result?, config))
}

/// The evaluation as a short table.
pub fn render(eval: &Evaluation) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(out, "questions        {}", eval.questions);
    let _ =
        writeln!(out, "hypervolume      {:.4}  (reference {:?})", eval.hypervolume, eval.reference);
    let _ = writeln!(
        out,
        "point            {:?}",
        eval.mean.iter().map(|v| (v * 1e4).round() / 1e4).collect::<Vec<_>>()
    );
    let _ = writeln!(out, "accuracy         {:.3}  (correct {:.3})", eval.accuracy, eval.correct);
    let _ = writeln!(out, "tool calls / q   {:.2}", eval.tool_calls_per_q);
    let _ = writeln!(
        out,
        "correct per call {}",
        eval.tool_productivity.map_or("- (no call)".into(), |p| format!("{p:.3}"))
    );
    let _ = writeln!(out, "tokens / answer  {:.1}", eval.tokens_per_q);
    if !eval.by_category.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<14} {:>9} {:>9} {:>8} {:>8} {:>11}",
            "category", "questions", "accuracy", "calls/q", "direct", "acc direct"
        );
        for (name, c) in &eval.by_category {
            let _ = writeln!(
                out,
                "{:<14} {:>9} {:>9.3} {:>8.2} {:>8} {:>11.3}",
                name,
                c.questions,
                c.accuracy,
                c.tool_calls_per_q,
                c.direct_questions,
                c.direct_accuracy
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_in_a_run_directory_finds_the_runs_config() {
        let dir = tempfile::tempdir().expect("dir");
        let checkpoint = dir.path().join("checkpoints/step-3");
        std::fs::create_dir_all(&checkpoint).expect("mkdir");
        assert_eq!(run_config_of(&checkpoint), None);
        std::fs::write(dir.path().join("config.toml"), "").expect("write");
        assert_eq!(run_config_of(&checkpoint), Some(dir.path().join("config.toml")));
    }
}

//! The experiment report: `report.md`, `summary.json` and `plots/` in the experiment directory,
//! rebuilt from every finished shard's files (`eval.json`, `metrics.jsonl`, `shard.json`), so a
//! partial grid gets a partial report and any tool can recompute the tables from
//! `summary.json`.
//!
//! The primary comparison is per run (DESIGN.md §10): each method's final held-out
//! hypervolume, mean and spread over seeds. A policy's held-out point is its mean objective
//! vector over the held-out questions; its hypervolume is that one point's, in all K objectives,
//! with one reference point for every run. Pooled fronts (each method's nondominated final
//! points over its seeds) are secondary. `<dir>/notes.md`, when present, is the analyst's
//! reading of the results and goes into the report verbatim.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use pareto::Points;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::chart::{Chart, PALETTE, Series};
use crate::experiment::{Experiment, ShardRecord, is_finished, shard_dir};
use crate::run_files::write_atomically;

/// How the report names the warm-start shards.
pub const WARM_START: &str = "warm_start";

/// One category of an evaluation, as `eval.json` holds it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Category {
    /// Questions.
    pub questions: usize,
    /// Mean accuracy.
    pub accuracy: f64,
    /// Mean tool calls per question.
    pub tool_calls_per_q: f64,
    /// Questions answered without a tool call.
    pub direct_questions: usize,
    /// Their mean accuracy.
    pub direct_accuracy: f64,
    /// Mean accuracy of the questions that called a tool.
    pub tool_accuracy: f64,
}

/// One held-out evaluation, as `eval.json` holds it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Evaluation {
    /// Questions evaluated.
    pub questions: usize,
    /// The policy's point: the mean objective vector.
    pub mean: Vec<f64>,
    /// Its hypervolume.
    pub hypervolume: f64,
    /// The reference point.
    pub reference: Vec<f64>,
    /// Mean accuracy.
    pub accuracy: f64,
    /// Share of correct answers.
    pub correct: f64,
    /// Mean tool calls per question.
    pub tool_calls_per_q: f64,
    /// Correct answers per tool call.
    pub tool_productivity: Option<f64>,
    /// Mean generated tokens per question.
    pub tokens_per_q: f64,
    /// By category.
    pub by_category: BTreeMap<String, Category>,
}

/// A finished shard's results.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    /// The method (or [`WARM_START`]).
    pub method: String,
    /// The seed.
    pub seed: u64,
    /// The policy it ends with, evaluated (for a warm start: the warm-start policy).
    #[serde(rename = "final")]
    pub final_eval: Evaluation,
    /// RL steps taken.
    pub steps: u64,
    /// `(step, hv)` of the training archive after each step, from `metrics.jsonl`.
    #[serde(skip)]
    pub hv_by_step: Vec<(u64, f64)>,
    /// The objective weights of the last step.
    pub final_weights: Vec<f64>,
    /// The first step trained in Stage 2, if any.
    pub stage2_from: Option<u64>,
    /// Seconds it took.
    pub wall_s: f64,
    /// The commit it ran on.
    pub commit: String,
}

/// Mean, sample standard deviation (n - 1; 0 for one value), min and max.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation.
    pub sd: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    /// Of `values` (finite ones); `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Spread> {
        let v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd = if v.len() > 1 {
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Spread { mean, sd, min, max })
    }
}

/// One method's aggregates over its finished seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MethodSummary {
    /// Finished runs.
    pub runs: usize,
    /// Final held-out hypervolume.
    pub hypervolume: Option<Spread>,
    /// Final held-out accuracy.
    pub accuracy: Option<Spread>,
    /// Tool calls per question.
    pub tool_calls_per_q: Option<Spread>,
    /// Correct answers per tool call (runs without calls left out).
    pub tool_productivity: Option<Spread>,
    /// Generated tokens per answer.
    pub tokens_per_answer: Option<Spread>,
    /// HV of the method's nondominated final points over its runs.
    pub pooled_hypervolume: f64,
}

/// What [`write`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// `report.md`.
    pub report: PathBuf,
    /// Runs of the grid (methods x seeds, warm starts not counted) that have finished.
    pub finished_runs: usize,
    /// Runs in the grid.
    pub grid_runs: usize,
}

/// Reads a finished shard's results.
pub fn read_run(dir: &Path, method: &str, seed: u64) -> anyhow::Result<RunResult> {
    let record: ShardRecord = read_json(&dir.join("shard.json"))?;
    let eval: Value = read_json(&dir.join("eval.json")).unwrap_or(Value::Null);
    let label = if method == WARM_START { "warm_start" } else { "final" };
    let final_eval: Evaluation = match eval.get(label) {
        Some(v) => serde_json::from_value(v.clone())
            .with_context(|| format!("{}/eval.json: `{label}`", dir.display()))?,
        None => Evaluation::default(),
    };
    let mut hv_by_step = Vec::new();
    let mut final_weights = Vec::new();
    let mut stage2_from = None;
    if let Ok(text) = std::fs::read_to_string(dir.join("metrics.jsonl")) {
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let row: Value = serde_json::from_str(line)
                .with_context(|| format!("{}/metrics.jsonl line {}", dir.display(), i + 1))?;
            let step = row["step"].as_u64().unwrap_or(0);
            // A redone step (learner restart) replaces the earlier record of it.
            hv_by_step.retain(|&(s, _)| s < step);
            hv_by_step.push((step, row["hv"].as_f64().unwrap_or(f64::NAN)));
            final_weights = row["weights"]
                .as_array()
                .map_or(Vec::new(), |w| w.iter().filter_map(Value::as_f64).collect());
            if row["stage"].as_u64() == Some(2) && stage2_from.is_none_or(|s| s > step) {
                stage2_from = Some(step);
            }
        }
    }
    Ok(RunResult {
        method: method.to_owned(),
        seed,
        final_eval,
        steps: hv_by_step.last().map_or(0, |&(s, _)| s),
        hv_by_step,
        final_weights,
        stage2_from,
        wall_s: record.wall_s,
        commit: record.commit,
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: not the JSON expected", path.display()))
}

/// The hypervolume of `points` (each K long) with `reference`.
fn hypervolume(points: &[&[f64]], reference: &[f64]) -> f64 {
    let k = reference.len();
    let flat: Vec<f64> =
        points.iter().filter(|p| p.len() == k).flat_map(|p| p.iter().copied()).collect();
    Points::new(&flat, k).map_or(0.0, |p| pareto::hv::hypervolume(p, reference))
}

/// Aggregates `runs` (one method's).
pub fn summarise(runs: &[&RunResult], reference: &[f64]) -> MethodSummary {
    let get = |f: &dyn Fn(&Evaluation) -> Option<f64>| {
        Spread::of(runs.iter().filter_map(|r| f(&r.final_eval)))
    };
    let points: Vec<&[f64]> = runs.iter().map(|r| r.final_eval.mean.as_slice()).collect();
    MethodSummary {
        runs: runs.len(),
        hypervolume: get(&|e| Some(e.hypervolume)),
        accuracy: get(&|e| Some(e.accuracy)),
        tool_calls_per_q: get(&|e| Some(e.tool_calls_per_q)),
        tool_productivity: get(&|e| e.tool_productivity),
        tokens_per_answer: get(&|e| Some(e.tokens_per_q)),
        pooled_hypervolume: hypervolume(&points, reference),
    }
}

/// `mean ± sd` with three decimals, or `-`.
fn show(spread: Option<Spread>, digits: usize) -> String {
    spread
        .map_or_else(|| "-".to_owned(), |s| format!("{:.*} ± {:.*}", digits, s.mean, digits, s.sd))
}

/// Rebuilds the report of `experiment` from its finished shards.
pub fn write(experiment: &Experiment, command: &str) -> anyhow::Result<Written> {
    let section = &experiment.section;
    let dir = &section.dir;
    let config = &experiment.config;
    let reference = config.hv_reference();
    let mut runs: Vec<RunResult> = Vec::new();
    let mut warm: Vec<RunResult> = Vec::new();
    for &seed in &section.seeds {
        let shard = shard_dir(dir, WARM_START, seed);
        if is_finished(&shard) {
            warm.push(read_run(&shard, WARM_START, seed)?);
        }
        for method in &section.methods {
            let shard = shard_dir(dir, method, seed);
            if is_finished(&shard) {
                runs.push(read_run(&shard, method, seed)?);
            }
        }
    }
    let of =
        |method: &str| -> Vec<&RunResult> { runs.iter().filter(|r| r.method == method).collect() };
    let mut methods: BTreeMap<String, MethodSummary> = BTreeMap::new();
    for method in &section.methods {
        methods.insert(method.clone(), summarise(&of(method), &reference));
    }
    let statics: Vec<&RunResult> =
        runs.iter().filter(|r| r.method.starts_with("static:")).collect();
    let static_pool = (!statics.is_empty()).then(|| {
        let points: Vec<&[f64]> = statics.iter().map(|r| r.final_eval.mean.as_slice()).collect();
        (statics.len(), hypervolume(&points, &reference))
    });
    let warm_refs: Vec<&RunResult> = warm.iter().collect();
    let warm_summary = summarise(&warm_refs, &reference);
    let task_settings = if tasks::synthetic::TASKS.contains(&config.task.name.as_str()) {
        tasks::synthetic::resolved_settings(&config.task.name, &config.task.settings_json())
            .context("key `task.settings`")?
    } else {
        Value::Null
    };
    let commits: Vec<String> = {
        let mut c: Vec<String> = runs.iter().chain(&warm).map(|r| r.commit.clone()).collect();
        c.sort();
        c.dedup();
        c
    };
    let wall_s: f64 = runs.iter().chain(&warm).map(|r| r.wall_s).sum();
    let a = &config.algorithm;
    let budget = a.total_steps * u64::from(a.groups_per_step) * u64::from(a.group_size);

    let summary = json!({
        "experiment": section.name,
        "command": experiment.command(),
        "report_written_by": command,
        "commits": commits,
        "wall_s": wall_s,
        "task": config.task.name,
        "task_settings": task_settings,
        "objectives": config.task.objectives,
        "reference": reference,
        "rollout_budget_per_run": budget,
        "methods_in_grid": section.methods,
        "seeds_in_grid": section.seeds,
        "runs": runs,
        "warm_start": warm,
        "methods": methods,
        "warm_start_summary": warm_summary,
        "static_pooled": static_pool.map(|(n, hv)| json!({"runs": n, "pooled_hypervolume": hv})),
    });
    write_atomically(&dir.join("summary.json"), &serde_json::to_string_pretty(&summary)?)
        .context("writing summary.json")?;

    std::fs::create_dir_all(dir.join("plots")).context("creating plots/")?;
    write_atomically(
        &dir.join("plots/accuracy_vs_calls.svg"),
        &tradeoff_chart(section, &runs, &warm).to_svg(),
    )
    .context("writing plots/accuracy_vs_calls.svg")?;
    write_atomically(&dir.join("plots/hv_over_steps.svg"), &hv_chart(section, &runs).to_svg())
        .context("writing plots/hv_over_steps.svg")?;

    let mut md = String::new();
    let _ = writeln!(md, "# Experiment `{}`: task `{}`\n", section.name, config.task.name);
    let _ = writeln!(
        md,
        "Command (from the workspace root, after `cargo build --workspace --bins`; it skips \
         finished shards): `{}`\n\nThis report was written by: `{command}`\n",
        experiment.command()
    );
    let _ = writeln!(
        md,
        "Commit(s) the runs ran on: {}\n",
        if commits.is_empty() { "none yet".into() } else { commits.join(", ") }
    );
    let _ = writeln!(
        md,
        "Machine time: {:.1} min over {} runs ({} warm starts and {} of the grid's {} method runs); \
         `summary.json` holds every number below.\n",
        wall_s / 60.0,
        runs.len() + warm.len(),
        warm.len(),
        runs.len(),
        section.methods.len() * section.seeds.len()
    );
    let _ = writeln!(md, "## Set-up\n");
    let _ = writeln!(
        md,
        "- Model `{}`; every method of a seed starts RL from that seed's warm-start checkpoint \
         ({} supervised steps).",
        config.model.name, a.warm_start_steps
    );
    let _ = writeln!(
        md,
        "- Same rollout budget for every run: {} steps x {} groups x {} trajectories = {budget} \
         trajectories; learning rate {}, tool-call budget {}, token budget {}.",
        a.total_steps,
        a.groups_per_step,
        a.group_size,
        a.learning_rate,
        a.tool_call_budget,
        a.token_budget
    );
    let _ = writeln!(
        md,
        "- Held-out evaluation: greedy, with the tools, on {} questions of the test split; a \
         policy's point is its mean objective vector ({}), its hypervolume that point's with \
         reference {:?} (the same for every run).",
        a.eval_questions,
        config.task.objectives.join(", "),
        reference
    );
    let _ = writeln!(md, "- Task settings (`[task.settings]`, resolved): `{task_settings}`\n");
    write_tradeoff_table(&mut md, &warm);

    let _ = writeln!(md, "## Final held-out results\n");
    let _ = writeln!(
        md,
        "Mean ± sample standard deviation over seeds; [min, max] of the hypervolume.\n"
    );
    let _ = writeln!(
        md,
        "| method | runs | hypervolume | [min, max] | accuracy | tool calls / q | correct per call | tokens / answer |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let mut row = |name: &str, s: &MethodSummary| {
        let range = s.hypervolume.map_or("-".into(), |h| format!("[{:.4}, {:.4}]", h.min, h.max));
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {range} | {} | {} | {} | {} |",
            s.runs,
            show(s.hypervolume, 4),
            show(s.accuracy, 3),
            show(s.tool_calls_per_q, 2),
            show(s.tool_productivity, 2),
            show(s.tokens_per_answer, 1)
        );
    };
    row("(warm start)", &warm_summary);
    for method in &section.methods {
        row(method, &methods[method]);
    }
    write_band_table(&mut md, section, &runs, &warm);
    let _ = writeln!(md, "\n## Pooled fronts (secondary)\n");
    let _ =
        writeln!(md, "Hypervolume of each method's nondominated final points over its seeds.\n");
    let _ = writeln!(md, "| method | runs pooled | pooled hypervolume |");
    let _ = writeln!(md, "|---|---|---|");
    for method in &section.methods {
        let s = &methods[method];
        let _ = writeln!(md, "| {method} | {} | {:.4} |", s.runs, s.pooled_hypervolume);
    }
    if let Some((n, hv)) = static_pool {
        let _ = writeln!(
            md,
            "| static, all weights | {n} | {hv:.4} |\n\nThe last row pools every static weight, so \
             more runs than the others: it is no like-for-like comparison."
        );
    }
    let _ = writeln!(md, "\n## Does ParetoPO beat every static weight and `otc_grpo`?\n");
    write_verdict(&mut md, section, &methods, &runs);
    let _ = writeln!(md, "\n## Plots\n");
    let _ = writeln!(md, "![accuracy against tool calls](plots/accuracy_vs_calls.svg)\n");
    let _ = writeln!(md, "![training hypervolume over steps](plots/hv_over_steps.svg)\n");
    let _ = writeln!(
        md,
        "The second plot is the hypervolume of the coordinator's training archive (batch means \
         of the training trajectories), mean over seeds, not a held-out number.\n"
    );
    let _ = writeln!(md, "## Runs\n");
    let _ = writeln!(
        md,
        "| method | seed | hypervolume | accuracy | tool calls / q | tokens / answer | steps | final weights | Stage 2 from | minutes | commit |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in warm.iter().chain(&runs) {
        // Only these methods use the coordinator's weights; the others' would mislead.
        let steered = r.method.starts_with("paretopo") || r.method == "gdpo";
        let w: Vec<String> = if steered {
            r.final_weights.iter().map(|w| format!("{w:.2}")).collect()
        } else {
            vec!["-".into()]
        };
        let e = &r.final_eval;
        let _ = writeln!(
            md,
            "| {} | {} | {:.4} | {:.3} | {:.2} | {:.1} | {} | {} | {} | {:.1} | {} |",
            r.method,
            r.seed,
            e.hypervolume,
            e.accuracy,
            e.tool_calls_per_q,
            e.tokens_per_q,
            r.steps,
            w.join("/"),
            r.stage2_from.map_or("-".into(), |s| s.to_string()),
            r.wall_s / 60.0,
            r.commit
        );
    }
    if let Ok(notes) = std::fs::read_to_string(dir.join("notes.md")) {
        let _ = writeln!(md, "\n## Reading of the results (`notes.md`)\n\n{}", notes.trim());
    }
    let report = dir.join("report.md");
    write_atomically(&report, &md).context("writing report.md")?;
    Ok(Written {
        report,
        finished_runs: runs.len(),
        grid_runs: section.methods.len() * section.seeds.len(),
    })
}

/// The warm-start policy per band: how often it answers directly, and how well each way.
fn write_tradeoff_table(md: &mut String, warm: &[RunResult]) {
    let mut bands: BTreeMap<&str, Vec<&Category>> = BTreeMap::new();
    for r in warm {
        for (band, c) in &r.final_eval.by_category {
            bands.entry(band).or_default().push(c);
        }
    }
    if bands.is_empty() {
        return;
    }
    let _ = writeln!(md, "### The trade-off at the warm-start policy\n");
    let _ = writeln!(
        md,
        "Held-out questions by band, pooled over the seeds' warm starts: answering directly \
         against calling a tool.\n"
    );
    let _ = writeln!(
        md,
        "| band | questions | answered directly | accuracy, direct | accuracy, with a tool | tool calls / q |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for (band, cats) in bands {
        let q: usize = cats.iter().map(|c| c.questions).sum();
        let direct: usize = cats.iter().map(|c| c.direct_questions).sum();
        let tool = q - direct;
        let weighted = |f: &dyn Fn(&Category) -> f64, n: &dyn Fn(&Category) -> usize| {
            let total: usize = cats.iter().map(|c| n(c)).sum();
            if total == 0 {
                "-".to_owned()
            } else {
                format!(
                    "{:.3}",
                    cats.iter().map(|c| f(c) * n(c) as f64).sum::<f64>() / total as f64
                )
            }
        };
        let _ = writeln!(
            md,
            "| {band} | {q} | {:.0}% | {} | {} | {} |",
            100.0 * direct as f64 / q.max(1) as f64,
            weighted(&|c| c.direct_accuracy, &|c| c.direct_questions),
            if tool == 0 {
                "-".into()
            } else {
                weighted(&|c| c.tool_accuracy, &|c| c.questions - c.direct_questions)
            },
            weighted(&|c| c.tool_calls_per_q, &|c| c.questions),
        );
    }
    let _ = writeln!(md);
}

/// Per method and band: final accuracy and tool calls per question, mean over seeds. Where the
/// trade-off is real, cutting calls on a band costs accuracy there.
fn write_band_table(
    md: &mut String,
    section: &crate::experiment::ExperimentSection,
    runs: &[RunResult],
    warm: &[RunResult],
) {
    let mut bands: Vec<&str> = warm
        .iter()
        .chain(runs)
        .flat_map(|r| r.final_eval.by_category.keys().map(String::as_str))
        .collect();
    bands.sort_unstable();
    bands.dedup();
    if bands.is_empty() {
        return;
    }
    let _ = writeln!(md, "\n### By band: accuracy / tool calls per question\n");
    let _ = writeln!(md, "Mean over seeds of each run's final held-out result in each band.\n");
    let _ = writeln!(md, "| method | {} |", bands.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(bands.len()));
    let names = std::iter::once(WARM_START).chain(section.methods.iter().map(String::as_str));
    for method in names {
        let mine: Vec<&RunResult> =
            warm.iter().chain(runs).filter(|r| r.method == method).collect();
        if mine.is_empty() {
            continue;
        }
        let cells: Vec<String> = bands
            .iter()
            .map(|band| {
                let cats: Vec<&Category> =
                    mine.iter().filter_map(|r| r.final_eval.by_category.get(*band)).collect();
                match (
                    Spread::of(cats.iter().map(|c| c.accuracy)),
                    Spread::of(cats.iter().map(|c| c.tool_calls_per_q)),
                ) {
                    (Some(a), Some(c)) => format!("{:.2} / {:.2}", a.mean, c.mean),
                    _ => "-".into(),
                }
            })
            .collect();
        let _ = writeln!(md, "| {method} | {} |", cells.join(" | "));
    }
}

/// ParetoPO's final hypervolume against each static weight and `otc_grpo`, plainly: the means
/// over seeds, and the paired differences on the seeds both finished (every method of a seed
/// starts from the same warm start, so the pairing removes the warm starts' spread).
fn write_verdict(
    md: &mut String,
    section: &crate::experiment::ExperimentSection,
    methods: &BTreeMap<String, MethodSummary>,
    runs: &[RunResult],
) {
    const OURS: &str = "paretopo";
    let Some(ours) = methods.get(OURS).and_then(|s| s.hypervolume) else {
        let _ = writeln!(md, "No finished `paretopo` run yet.");
        return;
    };
    let rivals: Vec<&String> =
        section.methods.iter().filter(|m| m.starts_with("static:") || *m == "otc_grpo").collect();
    if rivals.is_empty() {
        let _ = writeln!(md, "The grid holds no static weight and no `otc_grpo`.");
        return;
    }
    let hv_of = |method: &str, seed: u64| {
        runs.iter().find(|r| r.method == method && r.seed == seed).map(|r| r.final_eval.hypervolume)
    };
    let mut not_beaten = Vec::new();
    let mut compared = 0;
    let _ = writeln!(
        md,
        "| against | its hypervolume | ParetoPO's | ParetoPO minus it, paired by seed | seeds ParetoPO is ahead | ParetoPO's worst seed above its best? |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for rival in rivals {
        let Some(theirs) = methods.get(rival).and_then(|s| s.hypervolume) else { continue };
        let differences: Vec<f64> = section
            .seeds
            .iter()
            .filter_map(|&seed| Some(hv_of(OURS, seed)? - hv_of(rival, seed)?))
            .collect();
        let Some(paired) = Spread::of(differences.iter().copied()) else { continue };
        compared += 1;
        let ahead = differences.iter().filter(|d| **d > 0.0).count();
        let _ = writeln!(
            md,
            "| {rival} | {:.4} ± {:.4} | {:.4} ± {:.4} | {:+.4} ± {:.4} | {ahead} of {} | {} |",
            theirs.mean,
            theirs.sd,
            ours.mean,
            ours.sd,
            paired.mean,
            paired.sd,
            differences.len(),
            if ours.min > theirs.max { "yes" } else { "no" }
        );
        if paired.mean <= 0.0 {
            not_beaten.push(rival.as_str());
        }
    }
    let _ = writeln!(md);
    if compared == 0 {
        let _ = writeln!(md, "No seed has finished both ParetoPO and a rival yet.");
    } else if not_beaten.is_empty() {
        let _ = writeln!(
            md,
            "**Yes on the mean paired difference**: ParetoPO's final hypervolume is above every \
             compared static weight's and `otc_grpo`'s on average over the seeds. Where a seed \
             count or the last column says otherwise, the difference is within the seed spread."
        );
    } else {
        let _ = writeln!(
            md,
            "**No**: on average over the seeds ParetoPO's final hypervolume is not above that of {}.",
            not_beaten.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")
        );
    }
}

/// Accuracy against tool calls: every run's final point, each method's 2-D front, the warm starts.
fn tradeoff_chart(
    section: &crate::experiment::ExperimentSection,
    runs: &[RunResult],
    warm: &[RunResult],
) -> Chart {
    let mut series = vec![Series {
        label: "warm start".into(),
        color: "#999999".into(),
        points: warm
            .iter()
            .map(|r| (r.final_eval.tool_calls_per_q, r.final_eval.accuracy))
            .collect(),
        line: false,
        markers: true,
    }];
    for (i, method) in section.methods.iter().enumerate() {
        let points: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| &r.method == method)
            .map(|r| (r.final_eval.tool_calls_per_q, r.final_eval.accuracy))
            .collect();
        series.push(Series {
            label: method.clone(),
            color: PALETTE[i % PALETTE.len()].into(),
            points: front_2d(&points),
            line: true,
            markers: false,
        });
        series.push(Series {
            label: String::new(),
            color: PALETTE[i % PALETTE.len()].into(),
            points,
            line: false,
            markers: true,
        });
    }
    series.retain(|s| !s.points.is_empty());
    Chart {
        title: "final held-out points and each method's front".into(),
        x_label: "tool calls per question".into(),
        y_label: "accuracy".into(),
        series,
        x_range: Some((0.0, 0.0)),
        y_range: Some((0.0, 1.0)),
    }
}

/// The nondominated points of (calls, accuracy), fewer calls and higher accuracy better, as a
/// staircase sorted by calls.
pub fn front_2d(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted: Vec<(f64, f64)> = points.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.total_cmp(&a.1)));
    let mut front: Vec<(f64, f64)> = Vec::new();
    for p in sorted {
        if front.last().is_none_or(|last| p.1 > last.1) {
            front.push(p);
        }
    }
    front
}

/// Training hypervolume over steps, mean over each method's seeds.
fn hv_chart(section: &crate::experiment::ExperimentSection, runs: &[RunResult]) -> Chart {
    let mut series = Vec::new();
    for (i, method) in section.methods.iter().enumerate() {
        let mut by_step: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for r in runs.iter().filter(|r| &r.method == method) {
            for &(step, hv) in &r.hv_by_step {
                by_step.entry(step).or_default().push(hv);
            }
        }
        let points: Vec<(f64, f64)> = by_step
            .into_iter()
            .filter_map(|(s, v)| Spread::of(v).map(|m| (s as f64, m.mean)))
            .collect();
        if !points.is_empty() {
            series.push(Series {
                label: method.clone(),
                color: PALETTE[i % PALETTE.len()].into(),
                points,
                line: true,
                markers: false,
            });
        }
    }
    Chart {
        title: "training archive hypervolume (mean over seeds)".into(),
        x_label: "learner step".into(),
        y_label: "hypervolume".into(),
        series,
        ..Chart::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_is_the_sample_one() {
        let s = Spread::of([1.0, 2.0, 3.0, f64::NAN]).expect("values");
        assert_eq!((s.mean, s.min, s.max), (2.0, 1.0, 3.0));
        assert!((s.sd - 1.0).abs() < 1e-12);
        assert_eq!(Spread::of([5.0]).map(|s| s.sd), Some(0.0));
        assert_eq!(Spread::of(std::iter::empty()), None);
    }

    /// The staircase against a brute-force nondominated filter.
    #[test]
    fn the_2d_front_keeps_exactly_the_nondominated_points() {
        let points =
            [(0.0, 0.2), (1.0, 0.5), (0.5, 0.5), (2.0, 0.9), (2.0, 0.4), (0.0, 0.1), (3.0, 0.9)];
        let dominated = |p: &(f64, f64)| {
            points.iter().any(|q| q.0 <= p.0 && q.1 >= p.1 && (q.0 < p.0 || q.1 > p.1))
        };
        let mut want: Vec<(f64, f64)> = points.iter().copied().filter(|p| !dominated(p)).collect();
        want.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(front_2d(&points), want);
    }

    #[test]
    fn a_method_summary_pools_its_points_into_one_hypervolume() {
        let run = |mean: Vec<f64>, hv: f64| RunResult {
            method: "m".into(),
            seed: 0,
            final_eval: Evaluation { mean, hypervolume: hv, ..Evaluation::default() },
            steps: 1,
            hv_by_step: vec![],
            final_weights: vec![],
            stage2_from: None,
            wall_s: 0.0,
            commit: "c".into(),
        };
        let (a, b) = (run(vec![0.5, 0.5], 0.25), run(vec![1.0, 0.2], 0.2));
        let s = summarise(&[&a, &b], &[0.0, 0.0]);
        // Union of the boxes [0, .5]^2 and [0, 1] x [0, .2]: .25 + .5 * .2.
        assert!((s.pooled_hypervolume - 0.35).abs() < 1e-12);
        assert_eq!(s.runs, 2);
        assert!((s.hypervolume.expect("hv").mean - 0.225).abs() < 1e-12);
    }
}

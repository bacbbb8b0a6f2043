//! `coordinator experiment` and `coordinator eval` end to end (issue #7): a two-method, one-seed
//! grid with a tiny budget through the real processes, its report checked against the shards'
//! own files, a rerun that skips every finished shard, and a checkpoint scored again by
//! `coordinator eval`.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use paretopo_tests::binary;
use serde_json::Value;

fn coordinator(args: &[&str]) -> Output {
    Command::new(binary("coordinator"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running the coordinator")
}

fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn number(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no number `{key}` in {v}"))
}

fn show(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Prints every log of the experiment's shards (for a failure's diagnosis).
fn dump_logs(dir: &Path) {
    for entry in walk(dir) {
        if entry.extension().is_some_and(|e| e == "log") {
            eprintln!(
                "==== {}\n{}",
                entry.display(),
                std::fs::read_to_string(&entry).unwrap_or_default()
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
    }
    out
}

const STEPS: u64 = 3;

#[test]
fn a_tiny_grid_writes_a_report_that_matches_its_runs_and_resumes() {
    let root = tempfile::tempdir().expect("dir");
    let dir = root.path().join("exp");
    let file = root.path().join("experiment.toml");
    std::fs::write(
        &file,
        format!(
            r#"
[experiment]
name = "tiny"
dir = "{dir}"
methods = ["grpo_accuracy", "paretopo"]
seeds = [3]

[cluster]
local_actors = 1
heartbeat_interval_ms = 200
heartbeat_timeout_ms = 3000

[task]
name = "arith"
[task.settings]
questions = 300
demonstrations = 300

[algorithm]
total_steps = {STEPS}
warm_start_steps = 10
eval_questions = 8
groups_per_step = 2
actor_batch_prompts = 1
group_size = 4
token_budget = 48
checkpoint_every = 100
"#,
            dir = dir.display()
        ),
    )
    .expect("write");
    let file_arg = file.display().to_string();
    let output = coordinator(&["experiment", "--config", &file_arg]);
    if !output.status.success() {
        dump_logs(&dir);
        panic!("the experiment failed: {}", show(&output));
    }

    let summary = read_json(&dir.join("summary.json"));
    for plot in ["plots/accuracy_vs_calls.svg", "plots/hv_over_steps.svg"] {
        let svg = std::fs::read_to_string(dir.join(plot)).expect(plot);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{plot}");
    }
    let report = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    assert_eq!(summary["task_settings"]["questions"], 300, "the task settings reach the report");
    let reference: Vec<f64> = summary["reference"]
        .as_array()
        .expect("reference")
        .iter()
        .map(|v| v.as_f64().expect("number"))
        .collect();
    assert_eq!(reference, vec![-0.01; 3]);

    let warm_eval = read_json(&dir.join("runs/warm_start/seed-3/eval.json"))["warm_start"].clone();
    let runs = summary["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2, "{summary}");
    for (run, method) in runs.iter().zip(["grpo_accuracy", "paretopo"]) {
        assert_eq!(run["method"], method);
        let shard = dir.join("runs").join(method).join("seed-3");
        let eval = read_json(&shard.join("eval.json"));
        let final_eval = &eval["final"];
        for key in ["accuracy", "tool_calls_per_q", "tokens_per_q", "hypervolume"] {
            assert_eq!(number(&run["final"], key), number(final_eval, key), "{method} {key}");
        }
        // The held-out HV is that of one point: the box between it and the reference.
        let mean: Vec<f64> = final_eval["mean"]
            .as_array()
            .expect("mean")
            .iter()
            .map(|v| v.as_f64().expect("f"))
            .collect();
        let boxed: f64 = mean.iter().zip(&reference).map(|(m, r)| (m - r).max(0.0)).product();
        assert!((boxed - number(final_eval, "hypervolume")).abs() < 1e-9, "{method}: {boxed}");
        // One metrics record per step, and the summary's step count is theirs.
        let metrics = std::fs::read_to_string(shard.join("metrics.jsonl")).expect("metrics");
        let steps: Vec<u64> = metrics
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).expect("json")["step"].as_u64().expect("step")
            })
            .collect();
        assert_eq!(steps, (1..=STEPS).collect::<Vec<_>>(), "{method}");
        assert_eq!(run["steps"], STEPS);
        // Every method of a seed starts from the seed's warm-start checkpoint: greedy
        // evaluation of the same weights gives the same result.
        assert_eq!(eval["warm_start"], warm_eval, "{method} did not start from the warm start");
        // The method table shows that run's HV (one seed: the mean is the run's).
        let hv = number(final_eval, "hypervolume");
        assert_eq!(number(&summary["methods"][method]["hypervolume"], "mean"), hv);
        assert!(report.contains(&format!("| {method} | 1 | {hv:.4} ± 0.0000 |")), "{report}");
    }
    assert!(report.contains("Does ParetoPO beat"), "{report}");

    // A rerun finds every shard finished and only rebuilds the report.
    let again = coordinator(&["experiment", "--config", &file_arg]);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{}", show(&again));
    assert!(stdout.contains("0 to run"), "{stdout}");
    assert_eq!(read_json(&dir.join("summary.json"))["runs"], summary["runs"]);

    // `coordinator eval` scores the warm-start checkpoint as the run did, with the run's config.
    let latest = std::fs::read_to_string(dir.join("runs/warm_start/seed-3/checkpoints/latest"))
        .expect("latest");
    let checkpoint = dir.join("runs/warm_start/seed-3/checkpoints").join(latest.trim());
    let out = root.path().join("eval.json");
    let checkpoint_arg = checkpoint.display().to_string();
    let out_arg = out.display().to_string();
    let scored =
        coordinator(&["eval", "--model", &checkpoint_arg, "--split", "test", "--out", &out_arg]);
    assert!(scored.status.success(), "{}", show(&scored));
    let scored_eval = read_json(&out);
    for key in ["accuracy", "tool_calls_per_q", "tokens_per_q", "hypervolume"] {
        assert_eq!(number(&scored_eval, key), number(&warm_eval, key), "eval {key}");
    }
}

#[test]
fn bad_experiment_and_eval_input_is_refused_with_the_reason() {
    let root = tempfile::tempdir().expect("dir");
    let missing = coordinator(&["experiment", "--config", "/nonexistent/experiment.toml"]);
    assert_eq!(missing.status.code(), Some(2), "{}", show(&missing));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));

    let file = root.path().join("e.toml");
    let dir = root.path().join("out");
    let write = |text: &str| std::fs::write(&file, text).expect("write");
    let file_arg = file.display().to_string();
    let cases = [
        ("[run]\nseed = 1\n", "no [experiment] section"),
        (
            &format!(
                "[experiment]\nname = \"x\"\ndir = \"{}\"\nmethods = [\"nope\"]\nseeds = [0]\n",
                dir.display()
            ),
            "unknown method",
        ),
        (
            &format!(
                "[experiment]\nname = \"x\"\ndir = \"{}\"\nmethods = [\"gdpo\"]\nseeds = [0]\n[algorithm]\nbogus = 1\n",
                dir.display()
            ),
            "bogus",
        ),
    ];
    for (text, want) in cases {
        write(text);
        let output = coordinator(&["experiment", "--config", &file_arg]);
        assert_eq!(output.status.code(), Some(2), "{}", show(&output));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(want), "{want:?} not in {stderr}");
    }
    write(&format!(
        "[experiment]\nname = \"x\"\ndir = \"{}\"\nmethods = [\"gdpo\"]\nseeds = [0]\n",
        dir.display()
    ));
    let only = coordinator(&["experiment", "--config", &file_arg, "--only", "paretopo:0"]);
    assert_eq!(only.status.code(), Some(2), "{}", show(&only));
    assert!(String::from_utf8_lossy(&only.stderr).contains("not in the grid"));

    let eval = coordinator(&["eval", "--model", &root.path().display().to_string()]);
    assert_eq!(eval.status.code(), Some(1), "{}", show(&eval));
    assert!(String::from_utf8_lossy(&eval.stderr).contains("not a checkpoint directory"));
}

//! `coordinator experiment`: a grid of methods x seeds through the real runtime, then a report.
//!
//! An experiment file is a run config with one more section, `[experiment]` (its name, output
//! directory, methods and seeds); every other section is the config each run starts from. For
//! each seed one **warm-start shard** trains the supervised warm start alone
//! (`total_steps = 0`); every method's shard for that seed then starts RL from its checkpoint,
//! so all methods of a seed start from the same policy and get the same rollout budget
//! (`total_steps x groups_per_step x group_size` trajectories).
//!
//! Each shard is one `coordinator run` (the launcher's processes, in the shard's own run
//! directory under `<dir>/runs/`). A shard whose result exists is skipped, so a grid can span
//! several sittings and `--only METHOD:SEED` runs one shard alone (DESIGN.md §10). After the
//! shards, [`crate::report`] rebuilds `report.md`, `summary.json` and the plots from every
//! finished shard.
//!
//! What it does not do: tune anything per method; every shard gets the same config but for
//! `algorithm.method`, `run.seed` and its directory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use paretopo_service::RunConfig;
use serde::{Deserialize, Serialize};

use crate::launcher::{self, Ended, LaunchPlan};
use crate::report;

/// The `[experiment]` section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSection {
    /// The experiment's name (the report's title).
    pub name: String,
    /// Where the shards and the report go.
    pub dir: PathBuf,
    /// The methods (`algorithm.method` values), in the report's order.
    pub methods: Vec<String>,
    /// The seeds (`run.seed`): the task instance, the initial weights, every draw.
    pub seeds: Vec<u64>,
}

/// An experiment file, read and checked.
#[derive(Debug, Clone)]
pub struct Experiment {
    /// Its `[experiment]` section.
    pub section: ExperimentSection,
    /// The run config every shard starts from (`<dir>/base-config.toml`).
    pub base_config: PathBuf,
    /// That config, resolved with the command line's overrides.
    pub config: RunConfig,
    /// The command line's `--set` overrides, applied to every shard.
    pub overrides: Vec<String>,
    /// The experiment file.
    pub file: PathBuf,
}

/// One run of the grid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shard {
    /// The warm start of a seed.
    WarmStart {
        /// The seed.
        seed: u64,
    },
    /// A method's RL run for a seed.
    Method {
        /// The method.
        method: String,
        /// The seed.
        seed: u64,
    },
}

/// What a finished shard records beside its run files (`shard.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// `warm_start` or the method.
    pub method: String,
    /// The seed.
    pub seed: u64,
    /// The commit the binaries were built from (`git describe`; `unknown` outside a checkout).
    pub commit: String,
    /// Seconds the shard took, start to end.
    pub wall_s: f64,
    /// When it finished (Unix seconds).
    pub finished_at: f64,
    /// Method shards: the `finished_at` of the seed's warm start they started from. A warm start
    /// is not bitwise reproducible across sittings, so a method shard counts as finished only
    /// while that warm start is the one in place. Absent in records written before this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_start: Option<f64>,
}

impl Shard {
    /// `warm_start` or the method, as the report names it.
    pub fn method(&self) -> &str {
        match self {
            Shard::WarmStart { .. } => report::WARM_START,
            Shard::Method { method, .. } => method,
        }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        match self {
            Shard::WarmStart { seed } | Shard::Method { seed, .. } => *seed,
        }
    }

    /// Its run directory under the experiment's `dir`.
    pub fn dir(&self, experiment_dir: &Path) -> PathBuf {
        shard_dir(experiment_dir, self.method(), self.seed())
    }
}

/// The run directory of `method`'s run for `seed`: `runs/<method>/seed-<seed>`, with the `:` of
/// `static:0.7` written as `-`.
pub fn shard_dir(experiment_dir: &Path, method: &str, seed: u64) -> PathBuf {
    let keep = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '_';
    let slug: String = method.chars().map(|c| if keep(c) { c } else { '-' }).collect();
    experiment_dir.join("runs").join(slug).join(format!("seed-{seed}"))
}

/// Whether `dir` holds a finished shard: `shard.json` is written last, once its run ended
/// after its last step.
pub fn is_finished(dir: &Path) -> bool {
    dir.join("shard.json").is_file()
}

/// The record of a finished shard, if it has one that reads.
pub fn read_record(dir: &Path) -> Option<ShardRecord> {
    let text = std::fs::read_to_string(dir.join("shard.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// Reads an experiment file: `[experiment]` and the run config around it.
pub fn load(path: &Path, overrides: &[String]) -> anyhow::Result<Experiment> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("experiment file {}: cannot read", path.display()))?;
    let mut table: toml::Table = text
        .parse()
        .with_context(|| format!("experiment file {}: not valid TOML", path.display()))?;
    let section = table
        .remove("experiment")
        .with_context(|| format!("experiment file {}: no [experiment] section", path.display()))?;
    let section: ExperimentSection = section
        .try_into()
        .with_context(|| format!("experiment file {}: section [experiment]", path.display()))?;
    if section.methods.is_empty() || section.seeds.is_empty() {
        bail!("experiment file {}: [experiment] needs methods and seeds", path.display());
    }
    for (i, method) in section.methods.iter().enumerate() {
        if section.methods[..i].contains(method) {
            bail!("experiment file {}: method {method:?} is listed twice", path.display());
        }
    }
    std::fs::create_dir_all(&section.dir)
        .with_context(|| format!("key `experiment.dir`: creating {}", section.dir.display()))?;
    let base_config = section.dir.join("base-config.toml");
    let base_text = toml::to_string(&table).context("writing the base config")?;
    std::fs::write(&base_config, base_text)
        .with_context(|| format!("writing {}", base_config.display()))?;
    let config = RunConfig::load(Some(&base_config), overrides)
        .with_context(|| format!("experiment file {}", path.display()))?;
    for method in &section.methods {
        RunConfig::load(Some(&base_config), &[format!("algorithm.method={}", quoted(method))])
            .with_context(|| format!("experiment file {}: method {method:?}", path.display()))?;
    }
    Ok(Experiment {
        section,
        base_config,
        config,
        overrides: overrides.to_vec(),
        file: path.to_path_buf(),
    })
}

/// A string as a TOML value, for `--set`.
pub(crate) fn quoted(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

impl Experiment {
    /// The command that runs (or resumes) the whole grid from the workspace root.
    pub fn command(&self) -> String {
        let mut command =
            format!("./target/debug/coordinator experiment --config {}", self.file.display());
        for set in &self.overrides {
            command.push_str(&format!(" --set '{set}'"));
        }
        command
    }
}

/// `METHOD:SEED` of `--only`, split at the last `:` (methods such as `static:0.7` hold one).
pub fn parse_only(text: &str) -> anyhow::Result<(String, u64)> {
    let (method, seed) = text
        .rsplit_once(':')
        .with_context(|| format!("--only {text:?}: expected METHOD:SEED, e.g. paretopo:0"))?;
    let seed = seed.parse().with_context(|| format!("--only {text:?}: the seed is no number"))?;
    Ok((method.to_owned(), seed))
}

/// The shards to run, in order: per seed the warm start, then each method.
pub fn plan(section: &ExperimentSection, only: &[(String, u64)]) -> anyhow::Result<Vec<Shard>> {
    for (method, seed) in only {
        if !section.methods.contains(method) || !section.seeds.contains(seed) {
            bail!(
                "--only {method}:{seed}: not in the grid (methods {:?}, seeds {:?})",
                section.methods,
                section.seeds
            );
        }
    }
    let mut shards = Vec::new();
    for &seed in &section.seeds {
        let methods: Vec<&String> = section
            .methods
            .iter()
            .filter(|m| only.is_empty() || only.iter().any(|(om, os)| om == *m && *os == seed))
            .collect();
        if methods.is_empty() {
            continue;
        }
        shards.push(Shard::WarmStart { seed });
        shards.extend(methods.into_iter().map(|m| Shard::Method { method: m.clone(), seed }));
    }
    Ok(shards)
}

/// The `--set` overrides of `shard`, after the command line's own.
fn shard_overrides(experiment: &Experiment, shard: &Shard) -> anyhow::Result<Vec<String>> {
    let dir = shard.dir(&experiment.section.dir);
    let mut overrides = experiment.overrides.clone();
    overrides.push(format!("run.dir={}", quoted(&dir.display().to_string())));
    overrides.push(format!(
        "run.name={}",
        quoted(&format!("{}-{}-s{}", experiment.section.name, shard.method(), shard.seed()))
    ));
    overrides.push(format!("run.seed={}", shard.seed()));
    match shard {
        // No RL step, so no actor: the learner trains the warm start and evaluates it.
        Shard::WarmStart { .. } => {
            overrides.push("algorithm.total_steps=0".into());
            overrides.push("cluster.local_actors=0".into());
        }
        Shard::Method { method, seed } => {
            let warm = Shard::WarmStart { seed: *seed }.dir(&experiment.section.dir);
            let checkpoint = warm_checkpoint(&warm)?;
            overrides.push(format!("algorithm.method={}", quoted(method)));
            overrides.push(format!("model.name={}", quoted(&checkpoint.display().to_string())));
            overrides.push("algorithm.warm_start_steps=0".into());
        }
    }
    Ok(overrides)
}

/// The checkpoint a warm-start shard left.
fn warm_checkpoint(dir: &Path) -> anyhow::Result<PathBuf> {
    let latest = dir.join("checkpoints").join("latest");
    let name = std::fs::read_to_string(&latest)
        .with_context(|| format!("the warm start's checkpoint: reading {}", latest.display()))?;
    let checkpoint = dir.join("checkpoints").join(name.trim());
    if !checkpoint.is_dir() {
        bail!("{} names a missing checkpoint {}", latest.display(), checkpoint.display());
    }
    Ok(checkpoint)
}

/// The shards of `shards` that need running:
/// - a seed's warm start when it has not finished, or when its checkpoint is missing (results
///   are committed, checkpoints are not) and one of the seed's method shards is unfinished;
/// - a method shard that has not finished, or finished from another warm start than the one in
///   place, or whose seed's warm start runs again: a warm start is not bitwise reproducible,
///   and every method of a seed must start from the same one.
fn pending<'a>(experiment_dir: &Path, shards: &'a [Shard]) -> Vec<&'a Shard> {
    let warm_dir = |seed: u64| Shard::WarmStart { seed }.dir(experiment_dir);
    let method_done = |dir: &Path, seed: u64| {
        let warm = read_record(&warm_dir(seed)).map(|r| r.finished_at);
        is_finished(dir)
            && read_record(dir).is_none_or(|r| r.warm_start.is_none() || r.warm_start == warm)
    };
    let method_unfinished = |seed: u64| {
        shards.iter().any(|s| {
            matches!(s, Shard::Method { seed: t, .. } if *t == seed)
                && !method_done(&s.dir(experiment_dir), seed)
        })
    };
    let warm_pending = |seed: u64| {
        let dir = warm_dir(seed);
        !is_finished(&dir) || (warm_checkpoint(&dir).is_err() && method_unfinished(seed))
    };
    shards
        .iter()
        .filter(|shard| match shard {
            Shard::WarmStart { seed } => warm_pending(*seed),
            Shard::Method { seed, .. } => {
                !method_done(&shard.dir(experiment_dir), *seed) || warm_pending(*seed)
            }
        })
        .collect()
}

/// The commit of the checkout the binaries in `bin_dir` were built in (they live in its
/// `target/`), with `-dirty` when it has changes; `unknown` outside git.
pub fn current_commit(bin_dir: &Path) -> String {
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .current_dir(bin_dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// Runs `shards` (skipping finished ones), then writes the report. Returns whether every shard of
/// the plan is finished (false when a signal stopped the grid).
pub async fn run(
    experiment: &Experiment,
    shards: &[Shard],
    bin_dir: &Path,
    command: &str,
) -> anyhow::Result<bool> {
    let dir = &experiment.section.dir;
    let commit = current_commit(bin_dir);
    let pending = pending(dir, shards);
    println!(
        "experiment {:?}: {} shards planned, {} to run, {} finished before; commit {commit}",
        experiment.section.name,
        shards.len(),
        pending.len(),
        shards.len() - pending.len()
    );
    let started = Instant::now();
    let mut complete = true;
    for (i, shard) in pending.iter().enumerate() {
        let shard_dir = shard.dir(dir);
        println!(
            "\n== shard {}/{}: {} seed {} ({:.0} s into this sitting) -> {}",
            i + 1,
            pending.len(),
            shard.method(),
            shard.seed(),
            started.elapsed().as_secs_f64(),
            shard_dir.display()
        );
        let begun = Instant::now();
        // A shard that was interrupted resumes from its own checkpoint; its wall time then
        // counts this sitting only.
        let plan = LaunchPlan {
            config: Some(experiment.base_config.clone()),
            overrides: shard_overrides(experiment, shard)?,
            check_only: false,
            startup_timeout: Duration::from_secs(120),
            bin_dir: bin_dir.to_path_buf(),
        };
        let ended = launcher::launch(plan)
            .await
            .with_context(|| format!("shard {} seed {}", shard.method(), shard.seed()))?;
        if ended == Ended::Stopped {
            println!("stopped: rerun the same command to resume the grid where it stopped");
            complete = false;
            break;
        }
        let warm_start = match shard {
            Shard::WarmStart { .. } => None,
            Shard::Method { seed, .. } => {
                read_record(&Shard::WarmStart { seed: *seed }.dir(dir)).map(|r| r.finished_at)
            }
        };
        let record = ShardRecord {
            method: shard.method().to_owned(),
            seed: shard.seed(),
            commit: commit.clone(),
            wall_s: begun.elapsed().as_secs_f64(),
            finished_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            warm_start,
        };
        let text = serde_json::to_string_pretty(&record)?;
        crate::run_files::write_atomically(&shard_dir.join("shard.json"), &text)
            .with_context(|| format!("writing {}/shard.json", shard_dir.display()))?;
    }
    let written = report::write(experiment, command)?;
    println!(
        "\nreport: {} ({} of {} runs of the grid finished)",
        written.report.display(),
        written.finished_runs,
        written.grid_runs
    );
    Ok(complete)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section() -> ExperimentSection {
        ExperimentSection {
            name: "t".into(),
            dir: "out".into(),
            methods: vec!["paretopo".into(), "static:0.7".into()],
            seeds: vec![0, 1],
        }
    }

    #[test]
    fn the_plan_puts_each_seeds_warm_start_first_and_only_narrows_it() {
        let all = plan(&section(), &[]).expect("plan");
        let names: Vec<(String, u64)> =
            all.iter().map(|s| (s.method().to_owned(), s.seed())).collect();
        let want = [
            ("warm_start", 0),
            ("paretopo", 0),
            ("static:0.7", 0),
            ("warm_start", 1),
            ("paretopo", 1),
            ("static:0.7", 1),
        ];
        assert_eq!(names, want.map(|(m, s)| (m.to_owned(), s)));
        let only = plan(&section(), &[parse_only("static:0.7:1").expect("only")]).expect("plan");
        assert_eq!(
            only,
            vec![
                Shard::WarmStart { seed: 1 },
                Shard::Method { method: "static:0.7".into(), seed: 1 }
            ]
        );
        assert!(plan(&section(), &[("gdpo".into(), 0)]).is_err());
        assert!(parse_only("paretopo").is_err());
        assert!(parse_only("paretopo:x").is_err());
    }

    /// A fresh clone has the results but no checkpoints: a warm start reruns only for a seed
    /// that still has a method to run.
    #[test]
    fn a_warm_start_without_its_checkpoint_reruns_only_when_a_method_needs_it() {
        let root = tempfile::tempdir().expect("dir");
        let shards = plan(&section(), &[]).expect("plan");
        let finish = |shard: &Shard| {
            let dir = shard.dir(root.path());
            std::fs::create_dir_all(&dir).expect("mkdir");
            std::fs::write(dir.join("shard.json"), "{}").expect("write");
        };
        assert_eq!(pending(root.path(), &shards).len(), 6);
        shards.iter().for_each(finish);
        assert!(pending(root.path(), &shards).is_empty(), "seed 0 and 1 finished");
        let unfinished = Shard::Method { method: "paretopo".into(), seed: 1 };
        std::fs::remove_file(unfinished.dir(root.path()).join("shard.json")).expect("rm");
        assert_eq!(
            pending(root.path(), &shards),
            vec![
                &Shard::WarmStart { seed: 1 },
                &unfinished,
                &Shard::Method { method: "static:0.7".into(), seed: 1 }
            ],
            "seed 1's warm start has no checkpoint here, so all of seed 1 runs again"
        );
    }

    /// A method shard that started from an earlier warm start than the one in place is stale.
    #[test]
    fn a_method_shard_from_another_warm_start_runs_again() {
        let root = tempfile::tempdir().expect("dir");
        let section = ExperimentSection { seeds: vec![0], ..section() };
        let shards = plan(&section, &[]).expect("plan");
        let record = |method: &str, finished_at: f64, warm_start: Option<f64>| ShardRecord {
            method: method.into(),
            seed: 0,
            commit: "c".into(),
            wall_s: 1.0,
            finished_at,
            warm_start,
        };
        let write = |shard: &Shard, record: ShardRecord| {
            let dir = shard.dir(root.path());
            std::fs::create_dir_all(&dir).expect("mkdir");
            let text = serde_json::to_string(&record).expect("json");
            std::fs::write(dir.join("shard.json"), text).expect("write");
        };
        let warm = &shards[0];
        write(warm, record("warm_start", 20.0, None));
        // A checkpoint in place, so the warm start itself need not run.
        let checkpoints = warm.dir(root.path()).join("checkpoints");
        std::fs::create_dir_all(checkpoints.join("step-0")).expect("mkdir");
        std::fs::write(checkpoints.join("latest"), "step-0").expect("latest");
        write(&shards[1], record("paretopo", 30.0, Some(20.0)));
        write(&shards[2], record("static:0.7", 25.0, Some(10.0)));
        assert_eq!(pending(root.path(), &shards), vec![&shards[2]], "static:0.7 is stale");
        // Records written before the field existed are taken as they are.
        write(&shards[2], record("static:0.7", 25.0, None));
        assert!(pending(root.path(), &shards).is_empty());
    }

    #[test]
    fn shard_directories_are_distinct_and_path_safe() {
        let dir = Path::new("results/x");
        assert_eq!(shard_dir(dir, "static:0.7", 2), dir.join("runs/static-0.7/seed-2"));
        assert_eq!(shard_dir(dir, "paretopo", 0), dir.join("runs/paretopo/seed-0"));
        assert_ne!(shard_dir(dir, "static:0.7", 0), shard_dir(dir, "static:0.5", 0));
    }
}

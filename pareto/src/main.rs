//! `pareto`: multi-objective results for a CSV file of points, one result per line, so that any
//! tool can check them. See `pareto --help`.
//!
//! Input: one point per line, values separated by commas, no header; minimisation unless
//! `--maximise`. Output: numbers that round-trip an f64 (`inf` for infinity). Exit codes: 0 on
//! success, 2 for bad flags or a malformed file (the message names the line).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use pareto::crowding::{Crowding, crowding_distances};
use pareto::hv::hypervolume;
use pareto::hvc::{contributions, contributions_ignoring_dominated};
use pareto::sort::front_ranks;
use pareto::{Dominance, Points};

/// Exact multi-objective results for a CSV file of points.
///
/// Reads FILE (one point per line, comma-separated values, no header; minimisation unless
/// --maximise) and prints one result per line to stdout, in input order.
#[derive(Debug, Parser)]
#[command(name = "pareto", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The CSV file of points.
    file: PathBuf,

    /// Objectives are maximised (default: minimised).
    #[arg(long, alias = "maximize")]
    maximise: bool,

    /// Run the computation K times and print `compute_seconds=<median>` to stderr (parsing is
    /// not timed).
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The front rank of each point (1 = nondominated; copies share a rank).
    Rank(Common),
    /// The hypervolume of the points with respect to the reference point.
    Hv {
        #[command(flatten)]
        common: Common,
        /// The reference point, comma-separated (same direction as the data).
        #[arg(long = "ref", value_name = "R1,R2,...", allow_hyphen_values = true)]
        reference: String,
    },
    /// Each point's exclusive hypervolume contribution HV(P) - HV(P without p) (0 for dominated
    /// points and for every copy of a point).
    Hvc {
        #[command(flatten)]
        common: Common,
        /// The reference point, comma-separated (same direction as the data).
        #[arg(long = "ref", value_name = "R1,R2,...", allow_hyphen_values = true)]
        reference: String,
        /// Compute each nondominated point's contribution as if the dominated points were not
        /// there (moocore's default); dominated points still get 0.
        #[arg(long)]
        ignore_dominated: bool,
    },
    /// Each point's NSGA-II crowding distance within its front (`inf` at the ends; ties in input
    /// order; fronts of at most two points all `inf`).
    Crowding(Common),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("pareto: error: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<(), String> {
    let (common, reference) = match &command {
        Command::Rank(c) | Command::Crowding(c) => (c, None),
        Command::Hv { common, reference } | Command::Hvc { common, reference, .. } => {
            (common, Some(reference.as_str()))
        }
    };
    let (raw, m) = read_points(&common.file)?;
    // The library maximises: negate minimisation data (and its reference point).
    let sign = if common.maximise { 1.0 } else { -1.0 };
    let data: Vec<f64> = raw.iter().map(|v| sign * v).collect();
    let points = Points::new(&data, m).map_err(|e| e.to_string())?;
    let reference = reference
        .map(|r| parse_reference(r, m).map(|r| r.iter().map(|v| sign * v).collect::<Vec<_>>()))
        .transpose()?;

    let output: Vec<String> = match &command {
        Command::Rank(_) => {
            let ranks = timed(common.repeat, || front_ranks(points, Dominance::Plain));
            ranks.iter().map(u32::to_string).collect()
        }
        Command::Hv { .. } => {
            let reference = reference.as_deref().expect("hv has a reference");
            vec![format_f64(timed(common.repeat, || hypervolume(points, reference)))]
        }
        Command::Hvc { ignore_dominated, .. } => {
            let reference = reference.as_deref().expect("hvc has a reference");
            let hvc = if *ignore_dominated {
                timed(common.repeat, || contributions_ignoring_dominated(points, reference))
            } else {
                timed(common.repeat, || contributions(points, reference))
            };
            hvc.into_iter().map(format_f64).collect()
        }
        Command::Crowding(_) => {
            // Fronts come from the directed data; distances from the data as given, so that ties
            // are broken in input order exactly as minimising libraries do.
            let raw_points = Points::new(&raw, m).map_err(|e| e.to_string())?;
            let distances = timed(common.repeat, || {
                let ranks = front_ranks(points, Dominance::Plain);
                crowding_distances(raw_points, &ranks, Crowding::Classic)
            });
            distances.into_iter().map(format_f64).collect()
        }
    };
    let mut text = output.join("\n");
    text.push('\n');
    print!("{text}");
    Ok(())
}

/// Runs `compute` `repeat` times; with more than one run, prints the median time to stderr.
fn timed<T>(repeat: u32, mut compute: impl FnMut() -> T) -> T {
    let mut seconds = Vec::with_capacity(repeat as usize);
    let mut result = None;
    for _ in 0..repeat {
        let start = Instant::now();
        let value = compute();
        seconds.push(start.elapsed().as_secs_f64());
        result = Some(std::hint::black_box(value));
    }
    if repeat > 1 {
        seconds.sort_unstable_by(f64::total_cmp);
        let mid = seconds.len() / 2;
        let median = if seconds.len() % 2 == 1 {
            seconds[mid]
        } else {
            (seconds[mid - 1] + seconds[mid]) / 2.0
        };
        eprintln!("compute_seconds={median}");
    }
    result.expect("repeat >= 1")
}

/// Shortest text that reads back as the same f64; `inf` for infinity.
fn format_f64(value: f64) -> String {
    if value == f64::INFINITY {
        "inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-inf".to_owned()
    } else {
        format!("{value:?}")
    }
}

/// Reads a CSV of points: returns the row-major values and M. Errors name the file and line.
fn read_points(path: &Path) -> Result<(Vec<f64>, usize), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    pareto::csv::parse_points(&text).map_err(|e| match e.line {
        0 => format!("{}: {}", path.display(), e.message),
        line => format!("{}:{line}: {}", path.display(), e.message),
    })
}

fn parse_reference(text: &str, m: usize) -> Result<Vec<f64>, String> {
    let values: Vec<f64> = text
        .split(',')
        .map(|v| v.trim().parse::<f64>().map_err(|_| format!("--ref: {v:?} is not a number")))
        .collect::<Result<_, _>>()?;
    if values.len() != m {
        return Err(format!("--ref has {} values, the points have {m} objectives", values.len()));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err("--ref: values must be finite".to_owned());
    }
    Ok(values)
}

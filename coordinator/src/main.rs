//! `coordinator`: serves a run's coordinator, or launches a local run. See the crate docs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use coordinator::launcher::{self, LaunchPlan};
use paretopo_proto::service_names;
use paretopo_service::cli::{CommonArgs, run_main};
use paretopo_service::{Role, RunConfig, logging};

/// The paretopo coordinator: rendezvous, the global Pareto archive, objective weights and stage,
/// and the operator's status view of a run.
///
/// Without a subcommand it serves `paretopo.v1.Coordinator`, `grpc.health.v1.Health` and server
/// reflection on `--listen`, and Prometheus metrics on `--metrics-listen`. SIGTERM or Ctrl-C
/// drains calls in flight and exits 0. Exit codes: 0 clean shutdown, 1 failure while running,
/// 2 bad flags or config.
#[derive(Debug, Parser)]
#[command(name = "coordinator", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run locally: start coordinator, tool-server, learner and actor on loopback, check that
    /// each is healthy and reports its status, then stop them (unless --keep-running).
    Run(RunArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The run config (TOML) passed to every process; defaults apply without it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Override one config key in every process, e.g. `--set run.name=demo`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,

    /// Keep the processes running until Ctrl-C instead of stopping them after the check.
    #[arg(long)]
    keep_running: bool,

    /// Seconds each process may take to report SERVING.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    startup_timeout: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => {
            run_main(Role::Coordinator, service_names::COORDINATOR, cli.common, coordinator::run)
        }
        Some(Command::Run(args)) => local_run(args),
    }
}

fn local_run(args: RunArgs) -> ExitCode {
    // Check the config here, so a bad file fails once, with exit 2, before anything starts.
    if let Err(e) = RunConfig::load(args.config.as_deref(), &args.overrides) {
        eprintln!("coordinator run: error: {e}");
        return ExitCode::from(2);
    }
    logging::init(logging::LogFormat::Text);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(async {
                let plan = LaunchPlan {
                    config: args.config,
                    overrides: args.overrides,
                    keep_running: args.keep_running,
                    startup_timeout: Duration::from_secs(args.startup_timeout),
                    bin_dir: launcher::sibling_dir()?,
                };
                launcher::launch(plan).await
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coordinator run: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

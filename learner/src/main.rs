//! `learner`: trains the policy. See the crate docs of `learner`.

use std::process::ExitCode;

use clap::Parser;
use paretopo_proto::service_names;
use paretopo_service::Role;
use paretopo_service::cli::{CommonArgs, run_main};

/// Trains the paretopo policy: Pareto-ranked advantages, PPO-style updates, weight publication.
///
/// Serves `paretopo.v1.Learner`, `grpc.health.v1.Health` and server reflection on `--listen`,
/// and Prometheus metrics on `--metrics-listen`. SIGTERM or Ctrl-C drains calls in flight and
/// exits 0. Exit codes: 0 clean shutdown, 1 failure while running, 2 bad flags or config.
#[derive(Debug, Parser)]
#[command(name = "learner", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    // Before any thread exists: see learner/src/malloc.rs.
    learner::malloc::cap_arenas();
    let cli = Cli::parse();
    run_main(Role::Learner, service_names::LEARNER, cli.common, learner::run)
}

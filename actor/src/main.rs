//! `actor`: runs the agent loop. See the crate docs of `actor`.

use std::process::ExitCode;

use clap::Parser;
use paretopo_proto::service_names;
use paretopo_service::Role;
use paretopo_service::cli::{CommonArgs, run_main};

/// Runs the paretopo agent loop: samples tool-using trajectories and streams them to a learner.
///
/// Serves `paretopo.v1.Actor` (status), `grpc.health.v1.Health` and server reflection on
/// `--listen`, and Prometheus metrics on `--metrics-listen`. SIGTERM or Ctrl-C drains and exits 0.
/// Exit codes: 0 clean shutdown, 1 failure while running, 2 bad flags or config.
#[derive(Debug, Parser)]
#[command(name = "actor", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_main(Role::Actor, service_names::ACTOR, cli.common, actor::run)
}

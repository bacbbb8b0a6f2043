//! `tool-server`: serves tools to actors. See the crate docs of `tool_server`.

use std::process::ExitCode;

use clap::Parser;
use paretopo_proto::service_names;
use paretopo_service::Role;
use paretopo_service::cli::{CommonArgs, run_main};

/// Serves tools (calculator, search over a corpus) to paretopo actors over gRPC.
///
/// Serves `paretopo.v1.ToolServer`, `grpc.health.v1.Health` and server reflection on `--listen`,
/// and Prometheus metrics on `--metrics-listen`. SIGTERM or Ctrl-C drains calls in flight and
/// exits 0. Exit codes: 0 clean shutdown, 1 failure while running, 2 bad flags or config.
#[derive(Debug, Parser)]
#[command(name = "tool-server", version)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_main(Role::ToolServer, service_names::TOOL_SERVER, cli.common, tool_server::run)
}

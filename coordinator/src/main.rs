//! `coordinator`: serves a run's coordinator, or launches a local run. See the crate docs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
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

    #[command(flatten)]
    serve: ServeArgs,
}

/// The rendezvous flags of a serving coordinator (each overrides its `[cluster]` key).
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Worker processes to wait for: learners, actors and tool-servers, never the coordinator
    /// (`cluster.nodes`). Default with the role flags: their sum.
    #[arg(long, value_name = "N")]
    nodes: Option<u32>,

    /// Learner processes of the role plan (`cluster.learners`); give all three role flags, or
    /// none to accept any mix of `--nodes` workers.
    #[arg(long, value_name = "L")]
    learners: Option<u32>,

    /// Actor processes of the role plan (`cluster.actors`).
    #[arg(long, value_name = "A")]
    actors: Option<u32>,

    /// Tool-server processes of the role plan (`cluster.tool_servers`).
    #[arg(long, value_name = "T")]
    tool_servers: Option<u32>,
}

impl ServeArgs {
    /// The flags as `--set` overrides, appended after the user's own.
    fn overrides(&self) -> Vec<String> {
        let roles = [
            ("learners", self.learners),
            ("actors", self.actors),
            ("tool_servers", self.tool_servers),
        ];
        let mut overrides: Vec<String> = roles
            .iter()
            .filter_map(|(key, count)| count.map(|c| format!("cluster.{key}={c}")))
            .collect();
        let planned = roles.iter().all(|(_, count)| count.is_some());
        let nodes = self
            .nodes
            .or_else(|| planned.then(|| roles.iter().filter_map(|(_, count)| *count).sum::<u32>()));
        if let Some(nodes) = nodes {
            overrides.push(format!("cluster.nodes={nodes}"));
        }
        overrides
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train locally: start coordinator, tool-server, learner and actors on loopback and follow
    /// the run to its end (Ctrl-C stops it with a checkpoint the next run resumes from).
    Run(RunArgs),
    /// Print a running coordinator's status as a table: nodes, weights, stage, frontier.
    Status(StatusArgs),
    /// Print the resolved run config (file, then overrides, then defaults) as TOML: every key
    /// with the value a run would use. `service/src/config.rs` documents each key.
    Config(ConfigArgs),
    /// Run a grid of methods x seeds (each shard a local run; finished shards are skipped) and
    /// write its report: report.md, summary.json and plots/ in `experiment.dir`.
    Experiment(ExperimentArgs),
    /// Score a checkpoint on a split of a task without training (greedy, with the tools).
    Eval(EvalArgs),
    /// Make a run's CA, a certificate for each role and the operator, and an operator token
    /// (cert-manager's layout: DIR/<role>/tls.crt, tls.key, ca.crt). Keys are never printed.
    Certs(CertsArgs),
}

#[derive(Debug, clap::Args)]
struct CertsArgs {
    /// The directory to write; it must not hold a CA already.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// The run's name, written into the CA's common name.
    #[arg(long, default_value = "paretopo")]
    run_name: String,

    /// Days the certificates are valid.
    #[arg(long, default_value_t = 30)]
    days: u32,
}

#[derive(Debug, clap::Args)]
struct ExperimentArgs {
    /// The experiment file: `[experiment]` (name, dir, methods, seeds) and the run config every
    /// shard starts from.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,

    /// Override one run-config key in every shard, e.g. `--set algorithm.total_steps=10`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,

    /// Run only this shard (and its seed's warm start if missing), e.g. `static:0.7:1`.
    /// Repeatable.
    #[arg(long, value_name = "METHOD:SEED")]
    only: Vec<String>,

    /// Run no shard: only rebuild the report from the finished ones (after editing notes.md,
    /// or while another sitting runs the grid).
    #[arg(long, conflicts_with = "only")]
    report_only: bool,
}

#[derive(Debug, clap::Args)]
struct EvalArgs {
    /// The checkpoint directory (Hugging Face layout), e.g. `runs/quickstart/checkpoints/step-300`.
    #[arg(long, value_name = "DIR")]
    model: PathBuf,

    /// The task (`arith`, `kb-qa`, or a GSM8K / HotpotQA file); default: the config's.
    #[arg(long)]
    task: Option<String>,

    /// `test` (the held-out questions) or `train`.
    #[arg(long, default_value = "test")]
    split: String,

    /// Questions to evaluate (default: the config's `algorithm.eval_questions`).
    #[arg(long)]
    questions: Option<u32>,

    /// The run config (seed, task settings, budgets); default: the `config.toml` of the run the
    /// checkpoint belongs to, else the defaults.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Override one config key, e.g. `--set run.seed=1`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,

    /// Also write the result as JSON here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// The run config (TOML); defaults apply without it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Override one config key, e.g. `--set algorithm.group_size=4`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The coordinator's gRPC address.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:50051")]
    addr: String,

    /// Print again on every update until Ctrl-C.
    #[arg(long)]
    watch: bool,

    /// A certificate directory (`coordinator certs` writes `DIR/operator`): call over mutual
    /// TLS.
    #[arg(long, value_name = "DIR", env = "PARETOPO_TLS_DIR")]
    tls_dir: Option<PathBuf>,

    /// A bearer token file (the operator's `token`): call over TLS with it instead of a client
    /// certificate; needs `--ca` to check the coordinator.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,

    /// The run's CA (`ca.crt`), for `--token-file`.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The run config (TOML) passed to every process; defaults apply without it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Override one config key in every process, e.g. `--set run.name=demo`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,

    /// Only start the processes, check that each serves and reports its own facts, and stop
    /// them.
    #[arg(long)]
    check: bool,

    /// Seconds each process may take to report SERVING.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    startup_timeout: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => {
            let mut common = cli.common;
            common.overrides.extend(cli.serve.overrides());
            run_main(Role::Coordinator, service_names::COORDINATOR, common, coordinator::run)
        }
        Some(Command::Run(args)) => local_run(args),
        Some(Command::Status(args)) => status(args),
        Some(Command::Experiment(args)) => experiment(args),
        Some(Command::Eval(args)) => eval(args),
        Some(Command::Certs(args)) => {
            match paretopo_service::certs::make(&args.out, &args.run_name, args.days) {
                Ok(made) => {
                    for (principal, dir) in made.dirs {
                        println!("{principal:<12} {}", dir.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("coordinator certs: error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Some(Command::Config(args)) => {
            let text = RunConfig::load(args.config.as_deref(), &args.overrides)
                .map_err(|e| e.to_string())
                .and_then(|c| c.to_toml().map_err(|e| e.to_string()));
            match text {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("coordinator config: error: {e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}

/// The endpoint `status` dials (mutual TLS with `--tls-dir`, TLS with a bearer token with
/// `--token-file`, else plaintext) and the `authorization` value to send, if any.
fn status_endpoint(
    args: &StatusArgs,
) -> anyhow::Result<(
    tonic::transport::Endpoint,
    Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
)> {
    use paretopo_service::config::SecuritySection;
    use paretopo_service::security::Security;
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
    let address = args.addr.split_once("://").map_or(args.addr.as_str(), |(_, rest)| rest);
    if let Some(token_file) = &args.token_file {
        let ca = args.ca.as_ref().context("--token-file needs --ca (the run's ca.crt)")?;
        let ca = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading {}", token_file.display()))?;
        let value = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| anyhow::anyhow!("{}: not a token", token_file.display()))?;
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name(
            paretopo_service::security::Principal::Role(paretopo_service::Role::Coordinator)
                .dns_name(),
        );
        let endpoint = Endpoint::from_shared(format!("https://{address}"))?.tls_config(tls)?;
        return Ok((endpoint, Some(value)));
    }
    let section = SecuritySection { tls_dir: args.tls_dir.clone(), ..Default::default() };
    let security = Security::load(&section)?;
    Ok((security.endpoint(address, paretopo_service::Role::Coordinator)?, None))
}

fn status(args: StatusArgs) -> ExitCode {
    use paretopo_proto::v1::coordinator_client::CoordinatorClient;
    use paretopo_proto::v1::{GetStatusRequest, WatchStatusRequest};
    let result = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from).and_then(|rt| {
        rt.block_on(async {
            let (endpoint, token) = status_endpoint(&args)?;
            let channel = endpoint
                .connect_timeout(Duration::from_secs(3))
                .connect()
                .await
                .map_err(|e| anyhow::anyhow!("cannot reach a coordinator at {}: {e}", args.addr))?;
            let mut client = CoordinatorClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
                if let Some(token) = &token {
                    request.metadata_mut().insert("authorization", token.clone());
                }
                Ok(request)
            });
            if !args.watch {
                let status = client.get_status(GetStatusRequest {}).await?.into_inner();
                print!("{}", coordinator::status_table::render(&status));
                return anyhow::Ok(());
            }
            let mut stream = client.watch_status(WatchStatusRequest { interval_ms: 2000 }).await?.into_inner();
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    next = stream.message() => match next? {
                        Some(status) => {
                            // Clear the screen so the table stays in place.
                            print!("\x1b[2J\x1b[H{}", coordinator::status_table::render(&status));
                        }
                        None => return Ok(()),
                    },
                }
            }
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coordinator status: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs `work` on a multi-threaded runtime; errors print as `coordinator <what>: error: ...`.
fn block_on<F>(what: &str, work: F) -> ExitCode
where
    F: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(work));
    result.unwrap_or_else(|e| {
        eprintln!("coordinator {what}: error: {e:#}");
        ExitCode::from(1)
    })
}

fn experiment(args: ExperimentArgs) -> ExitCode {
    use coordinator::experiment;
    let checked = experiment::load(&args.config, &args.overrides).and_then(|e| {
        let only = args
            .only
            .iter()
            .map(|o| experiment::parse_only(o))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let shards = experiment::plan(&e.section, &only)?;
        Ok((e, shards))
    });
    let (loaded, shards) = match checked {
        Ok(v) => v,
        Err(e) => {
            eprintln!("coordinator experiment: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    logging::init(logging::LogFormat::Text);
    let command: Vec<String> = std::env::args().collect();
    let command = command.join(" ");
    block_on("experiment", async move {
        if args.report_only {
            let written = coordinator::report::write(&loaded, &command)?;
            println!(
                "report: {} ({} of {} runs of the grid finished)",
                written.report.display(),
                written.finished_runs,
                written.grid_runs
            );
            return Ok(ExitCode::SUCCESS);
        }
        let bin_dir = launcher::sibling_dir()?;
        let complete = experiment::run(&loaded, &shards, &bin_dir, &command).await?;
        Ok(if complete { ExitCode::SUCCESS } else { ExitCode::from(130) })
    })
}

fn eval(args: EvalArgs) -> ExitCode {
    use coordinator::checkpoint_eval::{self, EvalPlan};
    logging::init(logging::LogFormat::Text);
    block_on("eval", async move {
        let plan = EvalPlan {
            model: args.model,
            task: args.task,
            split: args.split,
            questions: args.questions,
            config: args.config,
            overrides: args.overrides,
            bin_dir: launcher::sibling_dir()?,
        };
        let (result, config) = checkpoint_eval::evaluate(plan).await?;
        println!(
            "\nevaluation of the checkpoint (config: {})",
            config.map_or("the defaults".into(), |c| c.display().to_string())
        );
        print!("{}", checkpoint_eval::render(&result));
        if let Some(out) = args.out {
            std::fs::write(&out, serde_json::to_string_pretty(&result)?)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
        }
        Ok(ExitCode::SUCCESS)
    })
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
                    check_only: args.check,
                    startup_timeout: Duration::from_secs(args.startup_timeout),
                    bin_dir: launcher::sibling_dir()?,
                };
                launcher::launch(plan).await.map(drop)
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

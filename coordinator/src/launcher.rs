//! `coordinator run`: the local launcher behind the README's main command.
//!
//! It starts the coordinator, a tool-server, a learner and `cluster.local_actors` actors as
//! child processes on loopback (each on a free port, their logs in `<run.dir>/logs/`), waits
//! until each reports SERVING over `grpc.health.v1`, then follows the run through the
//! coordinator's and the learner's `GetStatus`: a progress bar through the warm start and the
//! evaluations, then a live one-line summary (step, accuracy, tool calls, HV, weights, stage).
//! The run ends when the learner exits after its last step; Ctrl-C or SIGTERM ends it early,
//! and the learner then writes a checkpoint the next run resumes from. Either way every child
//! gets SIGTERM and must exit 0. An actor that dies is reported and the run goes on.
//!
//! With `--check` it only starts the processes, checks them and stops them (a smoke test).

use std::io::{IsTerminal, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use paretopo_proto::v1::{
    CoordinatorStatus, GetStatusRequest, LearnerStatus, ProcessInfo, ProcessState, Stage,
    actor_client::ActorClient, coordinator_client::CoordinatorClient,
    learner_client::LearnerClient, tool_server_client::ToolServerClient,
};
use paretopo_service::security::Security;
use paretopo_service::{Role, RunConfig};
use std::sync::Arc;
use tokio::process::{Child, Command};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// What `coordinator run` was asked to do.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    /// The run config to pass to every process.
    pub config: Option<PathBuf>,
    /// `--set` overrides to pass to every process.
    pub overrides: Vec<String>,
    /// Only start, check and stop the processes.
    pub check_only: bool,
    /// How long each process may take to report SERVING.
    pub startup_timeout: Duration,
    /// Where the four binaries are.
    pub bin_dir: PathBuf,
}

/// How a launched run ended, when no process failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The learner finished its last step and exited.
    Finished,
    /// Ctrl-C or SIGTERM stopped it early (a checkpoint was written to resume from), or
    /// `--check` only checked the processes.
    Stopped,
}

/// The binaries a local run starts.
const BINARIES: [&str; 4] = ["coordinator", "tool-server", "learner", "actor"];

/// One started child process.
struct Started {
    /// "coordinator", "tool-server", "learner", "actor-0", ...
    name: String,
    binary: &'static str,
    child: Child,
    grpc: SocketAddr,
    metrics: SocketAddr,
    /// Its exit, once seen.
    exited: Option<std::process::ExitStatus>,
    /// How the launcher dials it: as the run's operator, over mutual TLS unless the run is
    /// plaintext.
    dialer: Arc<Security>,
}

impl Started {
    fn role(&self) -> Role {
        // Each binary is named after its role.
        Role::from_name(self.binary).unwrap_or(Role::Actor)
    }
}

/// Runs the plan; an error says which process failed and how.
pub async fn launch(plan: LaunchPlan) -> anyhow::Result<Ended> {
    for binary in BINARIES {
        let path = plan.bin_dir.join(binary);
        if !path.is_file() {
            bail!(
                "`{}` not found: build all binaries first (`cargo build --bins`)",
                path.display()
            );
        }
    }
    let config = RunConfig::load(plan.config.as_deref(), &plan.overrides)?;
    let run_dir = config.run.dir.clone();
    let coordinator = free_port()?;
    let mut overrides = plan.overrides.clone();
    overrides.push(format!("cluster.coordinator_address=\"{coordinator}\""));
    overrides.push(format!("cluster.nodes={}", config.cluster.local_actors + 2));
    let config = RunConfig::load(plan.config.as_deref(), &overrides)?;
    std::fs::create_dir_all(run_dir.join("logs"))
        .with_context(|| format!("key `run.dir`: creating {}", run_dir.display()))?;
    std::fs::write(run_dir.join("config.toml"), config.to_toml()?)
        .with_context(|| format!("writing {}/config.toml", run_dir.display()))?;

    if let Ok(latest) = std::fs::read_to_string(run_dir.join("checkpoints/latest")) {
        println!(
            "{} holds checkpoint {}: the run resumes from it (another `run.dir` starts afresh)",
            run_dir.display(),
            latest.trim()
        );
    }
    let tls = local_tls(&config)?;
    let mut started = Vec::new();
    let result =
        run_processes(&plan, &config, &overrides, tls.as_deref(), coordinator, &mut started).await;
    let stopped = stop_all(&mut started).await;
    if result.is_ok() && !plan.check_only {
        print_outcome(&run_dir);
    }
    let ended = result?;
    stopped.map(|()| ended)
}

/// Days the local launcher's certificates are valid: a run on one machine resumes for a year.
const LOCAL_CERT_DAYS: u32 = 365;

/// The run's certificates for mutual TLS: made under `<run.dir>/tls/` the first time and
/// reused when the run resumes; `None` when the config asks for plaintext (`security.insecure`).
fn local_tls(config: &RunConfig) -> anyhow::Result<Option<PathBuf>> {
    if config.security.insecure {
        println!("security.insecure is set: the run's processes talk plaintext, unauthenticated");
        return Ok(None);
    }
    let dir = config.run.dir.join("tls");
    if !dir.join("ca.crt").exists() {
        // Made aside and renamed into place, so an interrupted start leaves nothing half made.
        let tmp = config.run.dir.join("tls.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_dir_all(&dir);
        paretopo_service::certs::make(&tmp, &config.run.name, LOCAL_CERT_DAYS)
            .with_context(|| format!("making the run's certificates in {}", tmp.display()))?;
        std::fs::rename(&tmp, &dir)
            .with_context(|| format!("moving the run's certificates to {}", dir.display()))?;
    }
    Ok(Some(dir))
}

async fn run_processes(
    plan: &LaunchPlan,
    config: &RunConfig,
    overrides: &[String],
    tls: Option<&Path>,
    coordinator: SocketAddr,
    started: &mut Vec<Started>,
) -> anyhow::Result<Ended> {
    let mut names = vec![
        ("coordinator".to_owned(), "coordinator"),
        ("tool-server".into(), "tool-server"),
        ("learner".into(), "learner"),
    ];
    for i in 0..config.cluster.local_actors {
        names.push((format!("actor-{i}"), "actor"));
    }
    let dialer = Arc::new(match tls {
        Some(dir) => Security::from_tls_dir(&dir.join("operator"))?,
        None => Security::default(),
    });
    for (name, binary) in names {
        let grpc = if binary == "coordinator" { coordinator } else { free_port()? };
        let tls_dir = tls.map(|dir| dir.join(binary));
        let mut process = start(plan, config, overrides, tls_dir.as_deref(), &name, binary, grpc)?;
        process.dialer = dialer.clone();
        started.push(process);
    }
    for process in started.iter_mut() {
        wait_serving(process, plan.startup_timeout).await?;
    }
    if plan.check_only {
        return check(started).await.map(|()| Ended::Stopped);
    }
    println!(
        "run {:?}: {} processes serving on 127.0.0.1; logs in {}",
        config.run.name,
        started.len(),
        config.run.dir.join("logs").display()
    );
    follow(config, started).await
}

fn start(
    plan: &LaunchPlan,
    config: &RunConfig,
    overrides: &[String],
    tls_dir: Option<&Path>,
    name: &str,
    binary: &'static str,
    grpc: SocketAddr,
) -> anyhow::Result<Started> {
    let metrics = free_port()?;
    let log_path = config.run.dir.join("logs").join(format!("{name}.log"));
    // Appended, so a resumed run keeps the logs of the runs before it.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut command = Command::new(plan.bin_dir.join(binary));
    command
        .arg("--listen")
        .arg(grpc.to_string())
        .arg("--metrics-listen")
        .arg(metrics.to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    if let Some(file) = &plan.config {
        command.arg("--config").arg(file);
    }
    for set in overrides {
        command.arg("--set").arg(set);
    }
    if let Some(dir) = tls_dir {
        command.arg("--tls-dir").arg(dir);
    }
    let child = command.spawn().with_context(|| format!("starting {name}"))?;
    tracing::debug!(name, %grpc, %metrics, pid = child.id(), "started");
    Ok(Started {
        name: name.to_owned(),
        binary,
        child,
        grpc,
        metrics,
        exited: None,
        dialer: Arc::new(Security::default()),
    })
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?)
}

async fn connect(process: &Started) -> anyhow::Result<Channel> {
    Ok(process.dialer.endpoint(&process.grpc.to_string(), process.role())?.connect().await?)
}

async fn wait_serving(process: &mut Started, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.child.try_wait()? {
            // A learner with little to do (`coordinator eval` on a few questions) may finish
            // before the first health check; that is a finished run, not a failure.
            if status.success() && process.binary == "learner" {
                process.exited = Some(status);
                return Ok(());
            }
            bail!("{} exited with {status} before it was serving (see its log)", process.name);
        }
        if let Ok(channel) = connect(process).await {
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest { service: String::new() })
                .await;
            if reply.is_ok_and(|r| r.get_ref().status == ServingStatus::Serving as i32) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{} did not report SERVING within {timeout:?}", process.name);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--check`: each process's own facts, which must name the addresses it was given.
async fn check(started: &[Started]) -> anyhow::Result<()> {
    println!(
        "{:<12} {:>7}  {:<21} {:<21} {:<8} uptime",
        "process", "pid", "grpc", "metrics", "state"
    );
    for process in started {
        let info = process_info(process).await?;
        println!(
            "{:<12} {:>7}  {:<21} {:<21} {:<8} {:.1}s",
            process.name,
            info.pid,
            info.listen_address,
            info.metrics_address,
            ProcessState::try_from(info.state)
                .map_or("?", |s| s.as_str_name().trim_start_matches("PROCESS_STATE_")),
            info.uptime_seconds,
        );
        if info.listen_address != process.grpc.to_string()
            || info.metrics_address != process.metrics.to_string()
        {
            bail!(
                "{} reports addresses {} / {}, not the ones it was given",
                process.name,
                info.listen_address,
                info.metrics_address
            );
        }
    }
    Ok(())
}

async fn process_info(process: &Started) -> anyhow::Result<ProcessInfo> {
    let channel = connect(process).await?;
    let request = || GetStatusRequest {};
    let info = match process.binary {
        "coordinator" => {
            CoordinatorClient::new(channel).get_status(request()).await?.into_inner().process
        }
        "tool-server" => {
            ToolServerClient::new(channel).get_status(request()).await?.into_inner().process
        }
        "learner" => LearnerClient::new(channel).get_status(request()).await?.into_inner().process,
        _ => ActorClient::new(channel).get_status(request()).await?.into_inner().process,
    };
    info.with_context(|| format!("{} sent a status without process facts", process.name))
}

/// Follows the run until the learner exits, a signal arrives, or the coordinator dies.
async fn follow(config: &RunConfig, started: &mut [Started]) -> anyhow::Result<Ended> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let find = |started: &[Started], binary: &str| started.iter().position(|p| p.binary == binary);
    let (Some(coordinator), Some(learner)) =
        (find(started, "coordinator"), find(started, "learner"))
    else {
        bail!("no coordinator or learner was started");
    };
    if started[learner].exited.is_some_and(|status| status.success()) {
        println!("training finished before the first status check");
        return Ok(Ended::Finished);
    }
    // Lazy channels: a learner with little to do may finish between its health check and
    // here, and a status call that fails is only skipped; the exits are read below.
    let lazy =
        |process: &Started| process.dialer.channel(&process.grpc.to_string(), process.role());
    let mut coordinator_client = CoordinatorClient::new(lazy(&started[coordinator])?);
    let mut learner_client = LearnerClient::new(lazy(&started[learner])?);
    let terminal = std::io::stdout().is_terminal();
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    let mut last_printed = Instant::now() - Duration::from_secs(60);
    let started_at = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                finish_line(terminal);
                println!("stopping (Ctrl-C): every process finishes what it is doing");
                return Ok(Ended::Stopped);
            }
            _ = sigterm.recv() => {
                finish_line(terminal);
                println!("stopping (SIGTERM): every process finishes what it is doing");
                return Ok(Ended::Stopped);
            }
            _ = ticker.tick() => {}
        }
        for process in started.iter_mut().filter(|p| p.exited.is_none()) {
            if let Some(status) = process.child.try_wait()? {
                process.exited = Some(status);
                if process.binary == "learner" {
                    finish_line(terminal);
                    if status.success() {
                        println!(
                            "training finished in {:.0} s",
                            started_at.elapsed().as_secs_f64()
                        );
                        return Ok(Ended::Finished);
                    }
                    bail!(
                        "the learner exited with {status}; see {}",
                        log_of(config, &process.name)
                    );
                }
                finish_line(terminal);
                println!("{} exited with {status}; the run goes on without it", process.name);
                if process.binary == "coordinator" || process.binary == "tool-server" {
                    bail!("the {} is gone; see {}", process.name, log_of(config, &process.name));
                }
            }
        }
        let coordinator_status =
            coordinator_client.get_status(GetStatusRequest {}).await.map(|r| r.into_inner());
        let learner_status =
            learner_client.get_status(GetStatusRequest {}).await.map(|r| r.into_inner());
        let (Ok(c), Ok(l)) = (coordinator_status, learner_status) else { continue };
        let line = summary(&c, &l);
        if terminal {
            print!("\r\x1b[K{line}");
            let _ = std::io::stdout().flush();
        } else if last_printed.elapsed() >= Duration::from_secs(10) {
            println!("{line}");
            last_printed = Instant::now();
        }
    }
}

fn finish_line(terminal: bool) {
    if terminal {
        println!();
    }
}

fn log_of(config: &RunConfig, name: &str) -> String {
    config.run.dir.join("logs").join(format!("{name}.log")).display().to_string()
}

/// A text progress bar of `width` cells.
fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 { 0 } else { (done.min(total) as usize * width) / total as usize };
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// The live one-line summary.
pub fn summary(c: &CoordinatorStatus, l: &LearnerStatus) -> String {
    if l.phase != "training" && l.phase != "done" {
        return format!(
            "{:<11} {} {}/{}",
            l.phase,
            bar(l.phase_done, l.phase_total, 30),
            l.phase_done,
            l.phase_total
        );
    }
    let weights = c.weights.clone().unwrap_or_default();
    let stage = if weights.stage == Stage::ParetoRanking as i32 { 2 } else { 1 };
    let metric = |name: &str| c.latest_metrics.get(name).copied().unwrap_or(0.0);
    let w: Vec<String> = weights.weights.iter().map(|w| format!("{w:.2}")).collect();
    let lost = c.nodes.iter().filter(|n| n.lost).count();
    format!(
        "step {} {}/{} | acc {:.3} | calls/q {:.2} | HV {:.4} ({} pts) | w {} | stage {} | v{}{}",
        bar(l.step, l.total_steps, 20),
        l.step,
        l.total_steps,
        metric("accuracy"),
        metric("tool_calls_per_q"),
        weights.hypervolume,
        weights.archive_size,
        w.join("/"),
        stage,
        l.policy_version,
        if lost > 0 { format!(" | {lost} node(s) lost") } else { String::new() }
    )
}

/// What the run left behind: the held-out evaluations and the files.
fn print_outcome(run_dir: &Path) {
    if let Ok(text) = std::fs::read_to_string(run_dir.join("eval.json"))
        && let Ok(eval) = serde_json::from_str::<serde_json::Value>(&text)
    {
        println!("held-out evaluation (greedy, with tools):");
        for label in ["warm_start", "final"] {
            if let Some(r) = eval.get(label) {
                println!(
                    "  {:<10} HV {:.4}  accuracy {:.3}  tool calls/q {:.2}  tokens/q {:.1}  ({} questions)",
                    label,
                    r["hypervolume"].as_f64().unwrap_or(0.0),
                    r["accuracy"].as_f64().unwrap_or(0.0),
                    r["tool_calls_per_q"].as_f64().unwrap_or(0.0),
                    r["tokens_per_q"].as_f64().unwrap_or(0.0),
                    r["questions"].as_u64().unwrap_or(0),
                );
            }
        }
    }
    match std::fs::read_to_string(run_dir.join("checkpoints/latest")) {
        Ok(latest) => println!(
            "checkpoint {}: the same command resumes from it (another `run.dir` starts afresh)",
            latest.trim()
        ),
        Err(_) => println!("no checkpoint yet: the next run starts from the beginning"),
    }
    let wanted = [
        "config.toml",
        "metrics.jsonl",
        "eval.json",
        "frontier.csv",
        "plots",
        "checkpoints",
        "logs",
    ];
    let present: Vec<&str> = wanted.into_iter().filter(|f| run_dir.join(f).exists()).collect();
    println!("run directory {}: {}", run_dir.display(), present.join(", "));
}

/// SIGTERM to every child still running, actors first and the coordinator last; the learner
/// may take a while to write its checkpoint, the others must exit within 5 s.
async fn stop_all(started: &mut [Started]) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for process in started.iter_mut().rev() {
        if let Some(status) = process.exited {
            if !status.success() && process.binary != "actor" {
                failures.push(format!("{} had exited with {status}", process.name));
            }
            continue;
        }
        let begun = Instant::now();
        if let Some(pid) = process.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        let limit = Duration::from_secs(if process.binary == "learner" { 60 } else { 5 });
        match tokio::time::timeout(limit, process.child.wait()).await {
            Ok(Ok(status)) if status.success() => {
                tracing::debug!(name = %process.name, ms = begun.elapsed().as_millis() as u64, "stopped");
                println!(
                    "{:<12} stopped: exit 0 after {} ms",
                    process.name,
                    begun.elapsed().as_millis()
                );
            }
            Ok(Ok(status)) => failures.push(format!("{} exited with {status}", process.name)),
            Ok(Err(e)) => failures.push(format!("{}: waiting for exit: {e}", process.name)),
            Err(_) => {
                let _ = process.child.kill().await;
                failures.push(format!("{} did not exit within {limit:?} of SIGTERM", process.name));
            }
        }
    }
    if failures.is_empty() { Ok(()) } else { bail!(failures.join("; ")) }
}

/// The directory holding the running binary, where its sibling binaries are built.
pub fn sibling_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the coordinator binary")?;
    exe.parent().map(Path::to_path_buf).context("the coordinator binary has no parent directory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bar_fills_in_proportion() {
        assert_eq!(bar(0, 10, 10), "[..........]");
        assert_eq!(bar(5, 10, 10), "[#####.....]");
        assert_eq!(bar(12, 10, 10), "[##########]");
        assert_eq!(bar(3, 0, 4), "[....]");
    }
}

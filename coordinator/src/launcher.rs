//! `coordinator run`: the local launcher behind the README's main command.
//!
//! It starts the coordinator, a tool-server, a learner and an actor as child processes on
//! loopback, waits until each reports SERVING over `grpc.health.v1`, prints what each says about
//! itself (`GetStatus`), and then, unless told to keep them running, stops them with SIGTERM and
//! checks that each exits 0. The training loop joins this once the runtime lands (issue #6).

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use paretopo_proto::v1::{
    GetStatusRequest, ProcessInfo, ProcessState, actor_client::ActorClient,
    coordinator_client::CoordinatorClient, learner_client::LearnerClient,
    tool_server_client::ToolServerClient,
};
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
    /// Keep the processes running until Ctrl-C or SIGTERM.
    pub keep_running: bool,
    /// How long each process may take to report SERVING.
    pub startup_timeout: Duration,
    /// Where the four binaries are.
    pub bin_dir: PathBuf,
}

/// The binaries a local run starts, in start order.
const ROLES: [&str; 4] = ["coordinator", "tool-server", "learner", "actor"];

/// One started child process.
struct Started {
    role: &'static str,
    child: Child,
    grpc: SocketAddr,
    metrics: SocketAddr,
}

/// Runs the plan; an error says which process failed and how.
pub async fn launch(plan: LaunchPlan) -> anyhow::Result<()> {
    for role in ROLES {
        let path = plan.bin_dir.join(role);
        if !path.is_file() {
            bail!(
                "`{}` not found: build all binaries first (`cargo build --bins`)",
                path.display()
            );
        }
    }
    let mut started = Vec::new();
    let result = start_and_check(&plan, &mut started).await;
    if result.is_ok() && plan.keep_running {
        println!("all processes are serving; Ctrl-C stops them");
        wait_for_stop(&mut started).await;
    }
    let stopped = stop_all(&mut started).await;
    result.and(stopped)
}

async fn start_and_check(plan: &LaunchPlan, started: &mut Vec<Started>) -> anyhow::Result<()> {
    for role in ROLES {
        let (grpc, metrics) = (free_port()?, free_port()?);
        let mut command = Command::new(plan.bin_dir.join(role));
        command
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--metrics-listen")
            .arg(metrics.to_string())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(config) = &plan.config {
            command.arg("--config").arg(config);
        }
        for set in &plan.overrides {
            command.arg("--set").arg(set);
        }
        let child = command.spawn().with_context(|| format!("starting {role}"))?;
        tracing::info!(role, %grpc, %metrics, pid = child.id(), "started");
        started.push(Started { role, child, grpc, metrics });
    }
    for process in started.iter_mut() {
        wait_serving(process, plan.startup_timeout).await?;
    }
    println!("{:<12} {:>7}  {:<21} {:<21} {:<8} uptime", "role", "pid", "grpc", "metrics", "state");
    for process in started.iter() {
        let info = status_of(process).await?;
        println!(
            "{:<12} {:>7}  {:<21} {:<21} {:<8} {:.1}s",
            process.role,
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
                process.role,
                info.listen_address,
                info.metrics_address
            );
        }
    }
    Ok(())
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?)
}

async fn wait_serving(process: &mut Started, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let endpoint = format!("http://{}", process.grpc);
    loop {
        if let Some(status) = process.child.try_wait()? {
            bail!("{} exited with {status} before it was serving", process.role);
        }
        if let Ok(channel) = Channel::from_shared(endpoint.clone())?.connect().await {
            let reply = HealthClient::new(channel)
                .check(HealthCheckRequest { service: String::new() })
                .await;
            if reply.is_ok_and(|r| r.get_ref().status == ServingStatus::Serving as i32) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("{} did not report SERVING within {timeout:?}", process.role);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_of(process: &Started) -> anyhow::Result<ProcessInfo> {
    let channel = Channel::from_shared(format!("http://{}", process.grpc))?.connect().await?;
    let request = || GetStatusRequest {};
    let info = match process.role {
        "coordinator" => {
            CoordinatorClient::new(channel).get_status(request()).await?.into_inner().process
        }
        "tool-server" => {
            ToolServerClient::new(channel).get_status(request()).await?.into_inner().process
        }
        "learner" => LearnerClient::new(channel).get_status(request()).await?.into_inner().process,
        _ => ActorClient::new(channel).get_status(request()).await?.into_inner().process,
    };
    info.with_context(|| format!("{} sent a status without process facts", process.role))
}

async fn wait_for_stop(started: &mut [Started]) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate()).ok();
    let any_exit = async {
        loop {
            for process in started.iter_mut() {
                if let Ok(Some(status)) = process.child.try_wait() {
                    tracing::warn!(role = process.role, %status, "exited on its own");
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match sigterm.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {}
        () = any_exit => {}
    }
}

/// SIGTERM to every child still running, in reverse start order; each must exit 0 within 5 s.
async fn stop_all(started: &mut [Started]) -> anyhow::Result<()> {
    let mut failures = Vec::new();
    for process in started.iter_mut().rev() {
        let begun = Instant::now();
        if let Some(pid) = process.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        match tokio::time::timeout(Duration::from_secs(5), process.child.wait()).await {
            Ok(Ok(status)) if status.success() => {
                println!(
                    "{:<12} stopped: exit 0 after {} ms",
                    process.role,
                    begun.elapsed().as_millis()
                );
            }
            Ok(Ok(status)) => failures.push(format!("{} exited with {status}", process.role)),
            Ok(Err(e)) => failures.push(format!("{}: waiting for exit: {e}", process.role)),
            Err(_) => {
                let _ = process.child.kill().await;
                failures.push(format!("{} did not exit within 5 s of SIGTERM", process.role));
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

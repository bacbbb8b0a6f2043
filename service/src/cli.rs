//! The flags every paretopo binary shares, and [`run_main`], which turns a role's `run` function
//! into a process: parse config, set up logging, bind the ports, stop on SIGTERM or Ctrl-C.
//!
//! Exit codes: 0 after a clean shutdown; 1 when the process failed while running (a port in use,
//! a fatal error); 2 for bad flags (clap's own exit code) or a bad config. Errors are one line on
//! stderr that names the key and the reason.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::config::RunConfig;
use crate::logging::{self, LogFormat};
use crate::metrics::{self, Metrics};
use crate::process::{Process, ProcessSetup};
use crate::security::{self, Security};
use crate::{Role, grpc};

/// Flags shared by `coordinator`, `learner`, `actor` and `tool-server`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// The run config (TOML). Every process of a run reads the same file; keys it does not set
    /// keep their defaults. Without this flag, the defaults alone are used.
    #[arg(long, value_name = "FILE", env = "PARETOPO_CONFIG")]
    pub config: Option<PathBuf>,

    /// The gRPC address to listen on (health, reflection, the role's API). Port 0 picks a free
    /// port. Overrides `listen` in this role's config section.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// The HTTP address for Prometheus metrics at `/metrics`. Overrides `metrics_listen` in this
    /// role's config section; without either, no metrics port is opened.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// The address peers dial to reach this process: `HOST` (the bound gRPC port is added) or
    /// `HOST:PORT`. Overrides `advertised_address` in this role's config section. Without
    /// either: the listen address, or, when that is a wildcard (`0.0.0.0`, `[::]`), `$POD_IP`
    /// and else the host name, with the bound port.
    #[arg(long, value_name = "ADDR")]
    pub advertise: Option<String>,

    /// This process's certificate directory (`tls.crt`, `tls.key`, `ca.crt`): serve and dial
    /// mutual TLS. Overrides `security.tls_dir`.
    #[arg(long, value_name = "DIR", env = "PARETOPO_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,

    /// Allow plaintext on addresses other machines can reach (a warning is logged). Without
    /// it, a process without a certificate refuses to start unless every address is loopback.
    #[arg(long)]
    pub insecure: bool,

    /// With TLS on: a plaintext port serving only `grpc.health.v1`, for Kubernetes probes.
    /// Overrides `security.health_listen`.
    #[arg(long, value_name = "ADDR")]
    pub health_listen: Option<SocketAddr>,

    /// Log line format on stderr. The level comes from RUST_LOG (default `info`).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Override one config key, e.g. `--set algorithm.group_size=4` or `--set run.name=demo`.
    /// Repeatable. The value is TOML (numbers, booleans, arrays, quoted strings); a bare word is a
    /// string.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

impl CommonArgs {
    /// The config with this process's flags applied; `--listen` and `--metrics-listen` become
    /// overrides of the role's section, so they are checked like any key.
    pub fn load_config(&self, role: Role) -> Result<RunConfig, crate::config::ConfigError> {
        let section = section_name(role);
        let mut overrides = self.overrides.clone();
        if let Some(listen) = self.listen {
            overrides.push(format!("{section}.listen=\"{listen}\""));
        }
        if let Some(metrics) = self.metrics_listen {
            overrides.push(format!("{section}.metrics_listen=\"{metrics}\""));
        }
        if let Some(advertise) = &self.advertise {
            // A TOML basic string: quotes and backslashes escaped, so any value stays one key.
            let quoted = toml::Value::String(advertise.clone()).to_string();
            overrides.push(format!("{section}.advertised_address={quoted}"));
        }
        if let Some(dir) = &self.tls_dir {
            let quoted = toml::Value::String(dir.to_string_lossy().into_owned()).to_string();
            overrides.push(format!("security.tls_dir={quoted}"));
        }
        if self.insecure {
            overrides.push("security.insecure=true".into());
        }
        if let Some(health) = self.health_listen {
            overrides.push(format!("security.health_listen=\"{health}\""));
        }
        RunConfig::load(self.config.as_deref(), &overrides)
    }
}

/// The config section of a role.
pub fn section_name(role: Role) -> &'static str {
    match role {
        Role::Coordinator => "coordinator",
        Role::Learner => "learner",
        Role::Actor => "actor",
        Role::ToolServer => "tool_server",
    }
}

/// What a role's `run` function receives: the config, the process, and its bound ports.
#[derive(Debug)]
pub struct Launch {
    /// The validated run config.
    pub config: RunConfig,
    /// The process's facts, state, health and shutdown token.
    pub process: Arc<Process>,
    /// The metric registry; register role metrics before [`Launch::serve`].
    pub metrics: Metrics,
    grpc_listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    health_listener: Option<TcpListener>,
}

impl Launch {
    /// `limits.max_message_bytes`, for the role's generated server.
    pub fn max_message_bytes(&self) -> usize {
        self.config.limits.max_message_bytes as usize
    }

    /// Serves the role's `routes` (plus health and reflection) and the metrics port until
    /// shutdown, then returns.
    pub async fn serve(self, routes: Routes) -> anyhow::Result<()> {
        let shutdown = self.process.shutdown().clone();
        let tls = self.process.security().rustls_server_config().map(|config| {
            // The metrics port speaks HTTP/1.1 (what Prometheus scrapes with).
            let mut config = (*config).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        });
        let metrics_task = self.metrics_listener.map(|listener| {
            tokio::spawn(metrics::serve(listener, tls, Arc::new(self.metrics), shutdown.clone()))
        });
        let served =
            grpc::serve(self.process.clone(), self.grpc_listener, self.health_listener, routes)
                .await;
        // Whatever ended the gRPC server ends the process: make sure everything else stops too.
        shutdown.cancel();
        if let Some(task) = metrics_task {
            match tokio::time::timeout(Duration::from_secs(1), task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "metrics server failed"),
                Ok(Err(e)) => tracing::warn!(error = %e, "metrics task panicked"),
                Err(_) => tracing::warn!("metrics server did not stop within 1 s"),
            }
        }
        served.map_err(Into::into)
    }
}

/// Runs a role: config and logging, runtime, ports, signal handling, then `run(launch)`.
///
/// `service_name` is the role's gRPC service (`paretopo.v1.Learner`), whose health is reported.
pub fn run_main<F, Fut>(
    role: Role,
    service_name: &'static str,
    args: CommonArgs,
    run: F,
) -> ExitCode
where
    F: FnOnce(Launch) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let config = match args.load_config(role) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{role}: error: {e}");
            return ExitCode::from(2);
        }
    };
    let security = match load_security(role, &config) {
        Ok(security) => security,
        Err(e) => {
            eprintln!("{role}: error: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{role}: error: starting the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        let launch = launch(role, service_name, config, security, started).await?;
        let shutdown = launch.process.shutdown().clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received, shutting down");
            shutdown.cancel();
        });
        run(launch).await
    });
    // Don't wait for detached tasks (a blocked client stream, say): shutdown must be prompt.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{role}: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `[security]`, loaded and checked: plaintext only where every address is loopback.
fn load_security(role: Role, config: &RunConfig) -> Result<Security, security::SecurityError> {
    let security = Security::load(&config.security)?;
    if let Some(found) = security.own_principal()
        && found != security::Principal::Role(role)
    {
        return Err(security::SecurityError::WrongPrincipal { role, found });
    }
    let section_key = section_name(role);
    let section = config.role_section(role);
    let mut addresses = vec![(format!("`{section_key}.listen`"), section.listen)];
    if let Some(metrics) = section.metrics_listen {
        addresses.push((format!("`{section_key}.metrics_listen`"), metrics));
    }
    security::check_plaintext_allowed(config, &addresses)?;
    Ok(security)
}

/// Binds the role's ports and builds its [`Process`].
async fn launch(
    role: Role,
    service_name: &'static str,
    config: RunConfig,
    security: Security,
    started: Instant,
) -> anyhow::Result<Launch> {
    let section_key = section_name(role);
    let section = config.role_section(role);
    let grpc_listener = TcpListener::bind(section.listen)
        .await
        .with_context(|| format!("binding `{section_key}.listen` = {}", section.listen))?;
    let metrics_listener = match section.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding `{section_key}.metrics_listen` = {addr}"))?,
        ),
        None => None,
    };
    let health_listener = match (security.tls_enabled(), config.security.health_listen) {
        (true, Some(addr)) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding `security.health_listen` = {addr}"))?,
        ),
        _ => None,
    };
    if !security.tls_enabled() && config.security.insecure {
        tracing::warn!(
            "TLS is off and --insecure is set: every port is plaintext and unauthenticated"
        );
    }
    let setup = ProcessSetup {
        role,
        run_name: config.run.name.clone(),
        service_name,
        listen_address: grpc_listener.local_addr()?,
        metrics_address: metrics_listener.as_ref().map(TcpListener::local_addr).transpose()?,
        advertised_address: Some(advertised_address(
            section.advertised_address.as_deref(),
            grpc_listener.local_addr()?,
        )),
        drain_timeout: Duration::from_millis(section.drain_timeout_ms),
        limits: config.limits.clone(),
        security: Arc::new(security),
    };
    let process = Arc::new(Process::new(setup, started).await);
    let metrics = Metrics::new(role, started, process.started_unix());
    tracing::info!(
        role = %role,
        listen = %process.listen_address(),
        metrics = ?process.metrics_address(),
        run = %config.run.name,
        tls = process.security().tls_enabled(),
        principal = ?process.security().own_principal(),
        "starting"
    );
    Ok(Launch { config, process, metrics, grpc_listener, metrics_listener, health_listener })
}

/// The address peers dial: `configured` as given when it names a port, a configured bare host
/// with the `bound` port, or else the bound address, with `$POD_IP` or the host name standing
/// in for a wildcard host (a process listening on `0.0.0.0` cannot be dialled there).
pub fn advertised_address(configured: Option<&str>, bound: SocketAddr) -> String {
    let with_port = |host: &str| {
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", bound.port())
        } else {
            format!("{host}:{}", bound.port())
        }
    };
    match configured.map(str::trim).filter(|c| !c.is_empty()) {
        Some(address) => {
            let names_port = address.parse::<SocketAddr>().is_ok()
                || address.rsplit_once(':').is_some_and(|(host, port)| {
                    port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
                });
            if names_port { address.to_owned() } else { with_port(address) }
        }
        None if bound.ip().is_unspecified() => {
            let pod_ip = std::env::var("POD_IP").ok().filter(|ip| !ip.trim().is_empty());
            let host =
                pod_ip.unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned());
            with_port(host.trim())
        }
        None => bound.to_string(),
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut sigterm) => {
            tokio::select! {
                _ = sigterm.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_address_keeps_a_port_and_adds_the_bound_one_to_a_bare_host() {
        let bound: SocketAddr = "0.0.0.0:7000".parse().expect("addr");
        let cases = [
            ("10.0.0.3:9000", "10.0.0.3:9000"),
            ("10.0.0.3", "10.0.0.3:7000"),
            ("learner-0.run.svc", "learner-0.run.svc:7000"),
            ("learner-0.run.svc:81", "learner-0.run.svc:81"),
            ("[fd00::3]:9000", "[fd00::3]:9000"),
            ("fd00::3", "[fd00::3]:7000"),
            ("[fd00::3]", "[fd00::3]:7000"),
        ];
        for (configured, want) in cases {
            assert_eq!(advertised_address(Some(configured), bound), want, "{configured}");
        }
        let loopback: SocketAddr = "127.0.0.1:4321".parse().expect("addr");
        assert_eq!(advertised_address(None, loopback), "127.0.0.1:4321");
    }

    #[test]
    fn a_wildcard_listen_address_is_never_advertised() {
        let bound: SocketAddr = "0.0.0.0:7000".parse().expect("addr");
        let advertised = advertised_address(None, bound);
        assert!(!advertised.starts_with("0.0.0.0"), "{advertised}");
        assert!(advertised.ends_with(":7000"), "{advertised}");
    }

    #[test]
    fn advertise_flag_becomes_the_role_sections_key() {
        let args = CommonArgs { advertise: Some("10.0.0.7".into()), ..Default::default() };
        let config = args.load_config(Role::Actor).expect("config");
        assert_eq!(config.actor.advertised_address.as_deref(), Some("10.0.0.7"));
        assert_eq!(config.learner.advertised_address, None);
    }
}

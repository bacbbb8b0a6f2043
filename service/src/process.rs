//! What a process knows about itself: its role, addresses and age, its lifecycle state, its gRPC
//! health, and the cancellation token that shutdown flows through.
//!
//! State and health move together: STARTING (health NOT_SERVING) -> SERVING (health SERVING) ->
//! DRAINING (health NOT_SERVING, then health statuses cleared so that open `Health/Watch` streams
//! end and the server can drain; DESIGN.md §9).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use paretopo_proto::v1::{ProcessInfo, ProcessState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::Role;

/// The health service name that is SERVING from start to exit, whatever the state: what a
/// Kubernetes liveness probe asks, so a learner busy in its warm start is not restarted.
pub const LIVENESS_SERVICE: &str = "liveness";

/// One running paretopo process. Shared as `Arc<Process>` by the role's service and the server.
#[derive(Debug)]
pub struct Process {
    role: Role,
    run_name: String,
    service_name: &'static str,
    started: Instant,
    started_unix: f64,
    listen_address: SocketAddr,
    metrics_address: Option<SocketAddr>,
    advertised_address: Option<String>,
    hostname: String,
    drain_timeout: Duration,
    state: watch::Sender<ProcessState>,
    /// Bumped on every status change; `WatchStatus` streams wait on it.
    status_generation: watch::Sender<u64>,
    health: HealthReporter,
    shutdown: CancellationToken,
    node_id: std::sync::OnceLock<String>,
    limits: crate::config::LimitsSection,
    status_watchers: Arc<AtomicU32>,
    security: Arc<crate::security::Security>,
}

/// One open `WatchStatus` stream's place (see [`Process::status_watcher`]).
#[derive(Debug)]
pub struct WatcherGuard(Arc<AtomicU32>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where a process listens and how it presents itself; see [`Process::new`].
#[derive(Debug, Clone)]
pub struct ProcessSetup {
    /// The role.
    pub role: Role,
    /// `[run] name`.
    pub run_name: String,
    /// The fully qualified name of the role's gRPC service (`paretopo.v1.Learner`).
    pub service_name: &'static str,
    /// The bound gRPC address.
    pub listen_address: SocketAddr,
    /// The bound metrics address, if metrics are on.
    pub metrics_address: Option<SocketAddr>,
    /// The address to tell peers, if configured.
    pub advertised_address: Option<String>,
    /// How long shutdown waits for calls in flight.
    pub drain_timeout: Duration,
    /// `[limits]`: the bounds the server and the status streams keep.
    pub limits: crate::config::LimitsSection,
    /// `[security]`, loaded: how this process serves and dials.
    pub security: Arc<crate::security::Security>,
}

impl Process {
    /// A process in state STARTING whose health reports NOT_SERVING, for the whole server ("")
    /// and for its service, until [`Process::mark_serving`].
    pub async fn new(setup: ProcessSetup, started: Instant) -> Self {
        let health = HealthReporter::new();
        health.set_service_status("", ServingStatus::NotServing).await;
        health.set_service_status(setup.service_name, ServingStatus::NotServing).await;
        health.set_service_status(LIVENESS_SERVICE, ServingStatus::Serving).await;
        let started_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() - started.elapsed().as_secs_f64())
            .unwrap_or(0.0);
        Self {
            role: setup.role,
            run_name: setup.run_name,
            service_name: setup.service_name,
            started,
            started_unix,
            listen_address: setup.listen_address,
            metrics_address: setup.metrics_address,
            advertised_address: setup.advertised_address,
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            drain_timeout: setup.drain_timeout,
            state: watch::Sender::new(ProcessState::Starting),
            status_generation: watch::Sender::new(0),
            health,
            shutdown: CancellationToken::new(),
            node_id: std::sync::OnceLock::new(),
            limits: setup.limits,
            status_watchers: Arc::new(AtomicU32::new(0)),
            security: setup.security,
        }
    }

    /// How this process serves and dials: its certificate, the tokens it accepts.
    pub fn security(&self) -> &Arc<crate::security::Security> {
        &self.security
    }

    /// A lazily connecting channel to the `peer` at `address`, TLS when this process has a
    /// certificate (see [`crate::security::Security::channel`]).
    pub fn channel(&self, address: &str, peer: Role) -> anyhow::Result<tonic::transport::Channel> {
        self.security.channel(address, peer)
    }

    /// `[limits]`.
    pub fn limits(&self) -> &crate::config::LimitsSection {
        &self.limits
    }

    /// Takes a place for one more `WatchStatus` stream, held until the guard drops; `None`
    /// when `limits.max_status_watchers` are open already.
    pub fn status_watcher(&self) -> Option<WatcherGuard> {
        let max = self.limits.max_status_watchers;
        self.status_watchers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| WatcherGuard(self.status_watchers.clone()))
    }

    /// Records the node id the coordinator assigned (the first one sticks: a process keeps its
    /// id when it registers again).
    pub fn set_node_id(&self, id: &str) {
        let _ = self.node_id.set(id.to_owned());
    }

    /// The address peers should dial: the advertised one, or the bound one.
    pub fn peer_address(&self) -> String {
        self.advertised_address.clone().unwrap_or_else(|| self.listen_address.to_string())
    }

    /// The process's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The fully qualified name of the role's gRPC service.
    pub fn service_name(&self) -> &'static str {
        self.service_name
    }

    /// The bound gRPC address.
    pub fn listen_address(&self) -> SocketAddr {
        self.listen_address
    }

    /// The bound metrics address, if any.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_address
    }

    /// When the process started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Unix time at which the process started.
    pub fn started_unix(&self) -> f64 {
        self.started_unix
    }

    /// How long shutdown waits for calls in flight.
    pub fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// The token every long-running task and stream selects on; cancelled once on shutdown.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// The health reporter, for building the health service.
    pub fn health(&self) -> &HealthReporter {
        &self.health
    }

    /// The lifecycle state now.
    pub fn state(&self) -> ProcessState {
        *self.state.borrow()
    }

    /// Tells `WatchStatus` streams that something in the role's status changed.
    pub fn notify_status_changed(&self) {
        self.status_generation.send_modify(|g| *g += 1);
    }

    /// A receiver that sees every [`Process::notify_status_changed`].
    pub fn status_changes(&self) -> watch::Receiver<u64> {
        self.status_generation.subscribe()
    }

    /// Ready: state SERVING, health SERVING.
    pub async fn mark_serving(&self) {
        self.health.set_service_status("", ServingStatus::Serving).await;
        self.health.set_service_status(self.service_name, ServingStatus::Serving).await;
        self.set_state(ProcessState::Serving);
        tracing::info!(role = %self.role, listen = %self.listen_address, "serving");
    }

    /// Shutting down: state DRAINING, health NOT_SERVING, then every health status cleared so
    /// that open health `Watch` streams end instead of holding the server open.
    pub async fn begin_drain(&self) {
        self.set_state(ProcessState::Draining);
        self.health.set_service_status("", ServingStatus::NotServing).await;
        self.health.set_service_status(self.service_name, ServingStatus::NotServing).await;
        let mut health = self.health.clone();
        health.clear_service_status(self.service_name).await;
        health.clear_service_status(LIVENESS_SERVICE).await;
        health.clear_service_status("").await;
        tracing::info!(role = %self.role, "draining");
    }

    fn set_state(&self, state: ProcessState) {
        self.state.send_replace(state);
        self.notify_status_changed();
    }

    /// The `ProcessInfo` message: facts about this process now.
    pub fn info(&self) -> ProcessInfo {
        ProcessInfo {
            role: self.role.to_proto() as i32,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            started_at_unix_seconds: self.started_unix,
            listen_address: self.listen_address.to_string(),
            advertised_address: self.advertised_address.clone().unwrap_or_default(),
            metrics_address: self.metrics_address.map(|a| a.to_string()).unwrap_or_default(),
            state: self.state() as i32,
            hostname: self.hostname.clone(),
            pid: std::process::id(),
            run_name: self.run_name.clone(),
            node_id: self.node_id.get().cloned().unwrap_or_default(),
            last_error: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> ProcessSetup {
        ProcessSetup {
            role: Role::ToolServer,
            run_name: "t".into(),
            service_name: "paretopo.v1.ToolServer",
            listen_address: SocketAddr::from(([127, 0, 0, 1], 4000)),
            metrics_address: None,
            advertised_address: Some("tools:4000".into()),
            drain_timeout: Duration::from_secs(1),
            limits: Default::default(),
            security: Default::default(),
        }
    }

    #[tokio::test]
    async fn state_moves_through_its_lifecycle_and_notifies() {
        let process = Process::new(setup(), Instant::now()).await;
        let mut changes = process.status_changes();
        assert_eq!(process.state(), ProcessState::Starting);
        process.mark_serving().await;
        assert_eq!(process.state(), ProcessState::Serving);
        assert!(changes.has_changed().expect("sender alive"));
        changes.mark_unchanged();
        process.begin_drain().await;
        assert_eq!(process.state(), ProcessState::Draining);
        assert!(changes.has_changed().expect("sender alive"));
    }

    #[tokio::test]
    async fn liveness_serves_from_start_while_readiness_waits_for_mark_serving() {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_server::Health;
        use tonic_health::server::HealthService;
        let process = Process::new(setup(), Instant::now()).await;
        let health = HealthService::from_health_reporter(process.health().clone());
        let status = |service: &str| {
            let request = tonic::Request::new(HealthCheckRequest { service: service.into() });
            let health = &health;
            async move { health.check(request).await.map(|r| r.into_inner().status) }
        };
        let (serving, not_serving) =
            (ServingStatus::Serving as i32, ServingStatus::NotServing as i32);
        assert_eq!(status(LIVENESS_SERVICE).await.expect("liveness"), serving);
        assert_eq!(status("").await.expect("readiness"), not_serving);
        process.mark_serving().await;
        assert_eq!(status("").await.expect("readiness"), serving);
        assert_eq!(status(LIVENESS_SERVICE).await.expect("liveness"), serving);
        process.begin_drain().await;
        assert!(status(LIVENESS_SERVICE).await.is_err(), "cleared on drain, ending Watch streams");
    }

    #[tokio::test]
    async fn info_reports_real_facts() {
        let process = Process::new(setup(), Instant::now() - Duration::from_secs(3)).await;
        let info = process.info();
        assert_eq!(info.role, paretopo_proto::v1::Role::ToolServer as i32);
        assert_eq!(info.listen_address, "127.0.0.1:4000");
        assert_eq!(info.advertised_address, "tools:4000");
        assert_eq!(info.pid, std::process::id());
        assert!(info.uptime_seconds >= 3.0, "{}", info.uptime_seconds);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64();
        assert!((now - 3.0 - info.started_at_unix_seconds).abs() < 1.0);
    }
}

//! The Prometheus endpoint every process serves on `--metrics-listen` (`GET /metrics`).
//!
//! Every process exports `paretopo_build_info{role,version}`, `paretopo_uptime_seconds` and
//! `paretopo_process_start_time_seconds`; roles register their own metrics in
//! [`Metrics::registry_mut`] before serving. Names start with `paretopo_` (DESIGN.md §10).
//! Output is OpenMetrics text, which Prometheus reads; the content type says so.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Role;

/// The content type of OpenMetrics text.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A process's metric registry and the gauges every process has.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    uptime: Gauge<f64, AtomicU64>,
    started: Instant,
}

impl Metrics {
    /// Registers the metrics every process exports. `started_unix` is the process start time.
    pub fn new(role: Role, started: Instant, started_unix: f64) -> Self {
        let mut registry = Registry::default();
        let info = Info::new(vec![
            ("role".to_owned(), role.name().to_owned()),
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ]);
        // `Info` appends `_info`: this is `paretopo_build_info`.
        registry.register("paretopo_build", "The paretopo build and role of this process", info);
        let uptime = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "paretopo_uptime_seconds",
            "Seconds since the process started",
            uptime.clone(),
        );
        let start_time = Gauge::<f64, AtomicU64>::default();
        start_time.set(started_unix);
        registry.register(
            "paretopo_process_start_time_seconds",
            "Unix time at which the process started",
            start_time,
        );
        Self { registry, uptime, started }
    }

    /// The registry, for a role to add its metrics before serving.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Renders the current values as OpenMetrics text.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let mut text = String::new();
        encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// What kind of number a [`Sample`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Goes up and down (a step, a rate, a count of live nodes).
    Gauge,
    /// Only goes up; exported with `_total` appended to its name.
    Counter,
}

/// One exported value of a role's status.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The metric name, starting with `paretopo_`.
    pub name: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// Gauge or counter.
    pub kind: Kind,
    /// Its labels (empty for most).
    pub labels: Vec<(&'static str, String)>,
    /// The value now.
    pub value: f64,
}

impl Sample {
    /// An unlabelled gauge.
    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Self {
        Sample { name, help, kind: Kind::Gauge, labels: Vec::new(), value }
    }

    /// An unlabelled counter.
    pub fn counter(name: &'static str, help: &'static str, value: f64) -> Self {
        Sample { name, help, kind: Kind::Counter, labels: Vec::new(), value }
    }
}

/// A collector that reads a role's status at every scrape, so the metrics and `GetStatus`
/// never disagree: `read` returns the samples, grouped by name in the order given.
pub struct StatusMetrics<F> {
    read: F,
}

impl<F> StatusMetrics<F> {
    /// A collector over `read`.
    pub fn new(read: F) -> Self {
        StatusMetrics { read }
    }
}

impl<F> std::fmt::Debug for StatusMetrics<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusMetrics")
    }
}

impl<F> prometheus_client::collector::Collector for StatusMetrics<F>
where
    F: Fn() -> Vec<Sample> + Send + Sync + 'static,
{
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::NoLabelSet;
        use prometheus_client::metrics::MetricType;
        let samples = (self.read)();
        let mut names: Vec<&'static str> = Vec::new();
        for sample in &samples {
            if !names.contains(&sample.name) {
                names.push(sample.name);
            }
        }
        for name in names {
            let family: Vec<&Sample> = samples.iter().filter(|s| s.name == name).collect();
            let (help, kind) = (family[0].help, family[0].kind);
            let metric_type = match kind {
                Kind::Gauge => MetricType::Gauge,
                Kind::Counter => MetricType::Counter,
            };
            let mut descriptor = encoder.encode_descriptor(name, help, None, metric_type)?;
            for sample in family {
                let labels: Vec<(&str, &str)> =
                    sample.labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let labels = labels.as_slice();
                let mut metric = descriptor.encode_family(&labels)?;
                match kind {
                    Kind::Gauge => metric.encode_gauge(&sample.value)?,
                    Kind::Counter => {
                        metric.encode_counter::<NoLabelSet, f64, u64>(&sample.value, None)?
                    }
                }
            }
        }
        Ok(())
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled.
///
/// With `tls`, the port speaks HTTPS and admits only clients with a certificate of the run's
/// CA (a scraper gets the operator's; docs/security.md).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(render)).with_state(metrics);
    match tls {
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await,
        Some(config) => {
            let listener = TlsListener::new(listener, config, shutdown.clone());
            axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
        }
    }
}

/// A TLS listener for axum: one task accepts TCP connections and hands each to a handshake
/// task of its own (with a deadline), so a client that stalls its handshake delays no other;
/// at most [`MAX_HANDSHAKES`] run at once (a connection beyond them is closed at once), and
/// finished handshakes wait in a small queue for axum to take.
struct TlsListener {
    handshaken: tokio::sync::mpsc::Receiver<(TlsStream, SocketAddr)>,
    local: SocketAddr,
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);
/// Handshakes under way at once: a scraper needs one; a flood of stalled ones holds no more
/// than this many tasks and sockets.
const MAX_HANDSHAKES: usize = 64;

impl TlsListener {
    fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        shutdown: CancellationToken,
    ) -> TlsListener {
        let local = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, handshaken) = tokio::sync::mpsc::channel(16);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = shutdown.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!(error = %e, "metrics accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, max = MAX_HANDSHAKES, "metrics: too many handshakes; closed");
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_DEADLINE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "metrics: TLS handshake refused");
                        }
                        Err(_) => tracing::warn!(%peer, "metrics: TLS handshake timed out"),
                    }
                });
            }
        });
        TlsListener { handshaken, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsStream, SocketAddr) {
        match self.handshaken.recv().await {
            Some(accepted) => accepted,
            // The accept task ended (shutdown): wait for axum's graceful shutdown to drop us.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    match metrics.render() {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], text).into_response(),
        Err(e) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics: {e}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stalled_handshakes_hold_at_most_their_share_of_connections() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().expect("dir");
        crate::certs::make(dir.path(), "test", 1).expect("certs");
        let security = crate::security::Security::from_tls_dir(&dir.path().join("learner"))
            .expect("credential");
        let config = security.rustls_server_config().expect("TLS on");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let _tls = TlsListener::new(listener, config, shutdown.clone());
        // Clients that connect and never start their handshake.
        let mut stalled = Vec::new();
        for _ in 0..MAX_HANDSHAKES {
            stalled.push(tokio::net::TcpStream::connect(address).await.expect("connect"));
        }
        // One more is closed at once, well before the handshake deadline.
        let mut extra = tokio::net::TcpStream::connect(address).await.expect("connect");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut byte)).await;
        assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "the extra connection stayed open");
        // The stalled ones are still held, waiting for their handshakes.
        let first =
            tokio::time::timeout(Duration::from_millis(300), stalled[0].read(&mut byte)).await;
        assert!(first.is_err(), "a stalled handshake was closed before its deadline");
        shutdown.cancel();
    }

    #[test]
    fn renders_build_info_uptime_and_start_time() {
        let metrics = Metrics::new(Role::Learner, Instant::now(), 1_700_000_000.0);
        let text = metrics.render().expect("render");
        assert!(
            text.contains(&format!(
                "paretopo_build_info{{role=\"learner\",version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.contains("paretopo_uptime_seconds "), "{text}");
        assert!(text.contains("paretopo_process_start_time_seconds 1700000000"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn status_metrics_read_the_status_at_every_scrape() {
        let step = Arc::new(AtomicU64::new(3));
        let reading = step.clone();
        let mut metrics = Metrics::new(Role::Coordinator, Instant::now(), 0.0);
        metrics.registry_mut().register_collector(Box::new(StatusMetrics::new(move || {
            let weight = |objective: &str, value| Sample {
                labels: vec![("objective", objective.to_owned())],
                ..Sample::gauge("paretopo_weight", "A weight", value)
            };
            vec![
                Sample::gauge(
                    "paretopo_step",
                    "The step",
                    reading.load(std::sync::atomic::Ordering::Relaxed) as f64,
                ),
                Sample::counter("paretopo_groups", "Groups", 7.0),
                weight("accuracy", 0.25),
                weight("tool_efficiency", 0.75),
            ]
        })));
        let text = metrics.render().expect("render");
        assert!(text.contains("# TYPE paretopo_step gauge\nparetopo_step 3.0\n"), "{text}");
        assert!(text.contains("paretopo_groups_total 7.0"), "{text}");
        assert!(text.contains("paretopo_weight{objective=\"accuracy\"} 0.25"), "{text}");
        assert!(text.contains("paretopo_weight{objective=\"tool_efficiency\"} 0.75"), "{text}");
        step.store(4, std::sync::atomic::Ordering::Relaxed);
        assert!(metrics.render().expect("render").contains("paretopo_step 4.0"));
    }
}

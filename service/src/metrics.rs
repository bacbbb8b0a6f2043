//! The Prometheus endpoint every process serves on `--metrics-listen` (`GET /metrics`).
//!
//! Every process exports `paretopo_build_info{role,version}`, `paretopo_uptime_seconds` and
//! `paretopo_process_start_time_seconds`; roles register their own metrics in
//! [`Metrics::registry_mut`] before serving. Names start with `paretopo_` (DESIGN.md §10).
//! Output is OpenMetrics text, which Prometheus reads; the content type says so.

use std::sync::Arc;
use std::time::Instant;

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

/// Serves `GET /metrics` on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(render)).with_state(metrics);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
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
}

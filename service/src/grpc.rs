//! Serving a role's gRPC service next to `grpc.health.v1.Health` and server reflection (v1 and
//! v1alpha: Python's grpcio-reflection speaks only v1alpha), with graceful shutdown.
//!
//! Shutdown, once the process's token is cancelled: the process goes DRAINING (health NOT_SERVING,
//! then cleared, which ends health `Watch` streams), the server stops accepting connections and
//! waits for calls in flight; every status stream ends on the same token. Should a call still be
//! running after the drain timeout, the server is dropped anyway: shutdown is bounded.

use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;

use crate::Process;
use crate::auth::AuthLayer;

/// Aborts a spawned task when dropped (the health port ends with the main server).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why serving failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from the descriptors.
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("serving gRPC on {address}: {source}")]
    Transport {
        /// The listen address.
        address: std::net::SocketAddr,
        /// The transport error.
        source: tonic::transport::Error,
    },
}

/// HTTP/2 flow-control windows of every server and client. h2's default (64 KiB) lets one
/// stream carry a few hundred MB/s at most on loopback; weight publication streams gigabytes.
pub const STREAM_WINDOW: u32 = 8 << 20;
/// The connection's window: room for a few streams' windows at once.
pub const CONNECTION_WINDOW: u32 = 32 << 20;

/// Serves `routes` (the role's service) with health and reflection on `listener`, marks the
/// process SERVING, and returns once shutdown has drained.
///
/// With TLS on ([`crate::security`]): the port serves TLS, every call passes
/// [`crate::auth::AuthLayer`], and `health_listener`, if given, serves `grpc.health.v1` alone
/// in plaintext for Kubernetes probes.
pub async fn serve(
    process: Arc<Process>,
    listener: TcpListener,
    health_listener: Option<TcpListener>,
    routes: Routes,
) -> Result<(), ServeError> {
    let reflection = || {
        // List only what this server serves: our descriptor set describes all four services.
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(paretopo_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for name in [
            process.service_name(),
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            builder = builder.with_service_name(name);
        }
        builder
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    let health = HealthServer::new(HealthService::from_health_reporter(process.health().clone()));
    let routes =
        routes.add_service(health).add_service(reflection_v1).add_service(reflection_v1alpha);

    let address = process.listen_address();
    let drain_signal = {
        let process = process.clone();
        async move {
            process.shutdown().cancelled().await;
            process.begin_drain().await;
        }
    };
    // Small replies must leave at once: without TCP_NODELAY, Nagle's algorithm meets the peer's
    // delayed ACK and holds some of them for 40 ms (seen as a 40 ms p99 under load).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = Server::builder()
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .max_concurrent_streams(Some(process.limits().max_concurrent_streams));
    let security = process.security().clone();
    if let Some(tls) = security.server_tls() {
        builder =
            builder.tls_config(tls).map_err(|source| ServeError::Transport { address, source })?;
    }
    // Without TLS every caller is anonymous, so there is nothing to authorise: plaintext is
    // for loopback-only runs and `--insecure` (crate::security::check_plaintext_allowed).
    let auth = security.tls_enabled().then(|| AuthLayer::new(security.clone()));
    let server = builder
        .layer(tower::util::option_layer(auth))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, drain_signal);
    let health_port = health_listener.map(|listener| {
        let health =
            HealthServer::new(HealthService::from_health_reporter(process.health().clone()));
        let shutdown = process.shutdown().clone();
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        tokio::spawn(
            Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()),
        )
    });

    process.mark_serving().await;
    let backstop = async {
        process.shutdown().cancelled().await;
        tokio::time::sleep(process.drain_timeout()).await;
    };
    let _health_port = health_port.map(AbortOnDrop);
    tokio::select! {
        result = server => result.map_err(|source| ServeError::Transport { address, source }),
        () = backstop => {
            tracing::warn!(timeout = ?process.drain_timeout(), "drain timeout passed with calls still in flight; stopping anyway");
            Ok(())
        }
    }
}

//! Issue #2, the foundation: every binary serves health, reflection, GetStatus and metrics,
//! shuts down cleanly on SIGTERM, and rejects bad flags, configs and requests clearly.

use std::process::Command;
use std::time::Duration;

use paretopo_proto::v1::{
    WatchStatusRequest, actor_client::ActorClient, coordinator_client::CoordinatorClient,
    learner_client::LearnerClient, tool_server_client::ToolServerClient,
};
use paretopo_tests::{BINARIES, Server, binary, fetch_metrics, run_to_end, venv_python};
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const STARTUP: Duration = Duration::from_secs(30);

fn service_of(binary: &str) -> &'static str {
    match binary {
        "coordinator" => "paretopo.v1.Coordinator",
        "learner" => "paretopo.v1.Learner",
        "actor" => "paretopo.v1.Actor",
        "tool-server" => "paretopo.v1.ToolServer",
        other => panic!("unknown binary {other}"),
    }
}

fn proto_role_of(binary: &str) -> &'static str {
    match binary {
        "coordinator" => "ROLE_COORDINATOR",
        "learner" => "ROLE_LEARNER",
        "actor" => "ROLE_ACTOR",
        "tool-server" => "ROLE_TOOL_SERVER",
        other => panic!("unknown binary {other}"),
    }
}

/// A standard gRPC client with no copy of our .proto files (Python grpcio, reflection) gets
/// SERVING, lists the services, calls GetStatus, and gets INVALID_ARGUMENT for bad requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_our_protos_can_check_list_and_call_every_binary() {
    for name in BINARIES {
        let mut server = Server::start(name, &[]);
        server.wait_serving(STARTUP).await;
        let output = Command::new(venv_python())
            .arg(paretopo_tests::workspace_root().join("tests/python/grpc_probe.py"))
            .arg(server.grpc.to_string())
            .output()
            .expect("run grpc_probe.py");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{name}: probe failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        let probe: serde_json::Value = serde_json::from_str(&stdout).expect("probe prints JSON");

        assert_eq!(probe["health"], "SERVING", "{name}: {probe}");
        // Exactly what this binary serves: its own service, health, reflection.
        let services: Vec<&str> = probe["services"]
            .as_array()
            .expect("services")
            .iter()
            .filter_map(|s| s.as_str())
            .collect();
        for expected in [
            service_of(name),
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ] {
            assert!(services.contains(&expected), "{name}: {expected} not listed in {services:?}");
        }
        assert_eq!(services.len(), 4, "{name}: unexpected services in {services:?}");
        let methods = probe["methods"].as_array().expect("methods");
        assert!(
            methods.iter().any(|m| m == "GetStatus") && methods.iter().any(|m| m == "WatchStatus")
        );

        let process = &probe["status"]["process"];
        assert_eq!(process["role"], proto_role_of(name), "{name}: {probe}");
        assert_eq!(process["state"], "PROCESS_STATE_SERVING", "{name}: {probe}");
        assert_eq!(process["listen_address"], server.grpc.to_string(), "{name}: {probe}");
        assert_eq!(process["metrics_address"], server.metrics.to_string(), "{name}: {probe}");
        assert_eq!(process["pid"].as_u64(), Some(u64::from(server.child.id())), "{name}: {probe}");
        assert_eq!(process["version"], env!("CARGO_PKG_VERSION"));
        let uptime = process["uptime_seconds"].as_f64().expect("uptime");
        assert!(uptime > 0.0 && uptime < 60.0, "{name}: uptime {uptime}");

        assert_eq!(probe["malformed"]["code"], "INVALID_ARGUMENT", "{name}: {probe}");
        assert_eq!(probe["bad_interval"]["code"], "INVALID_ARGUMENT", "{name}: {probe}");
        let message = probe["bad_interval"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("interval_ms:"),
            "{name}: message must name the field: {message}"
        );
        assert_eq!(probe["health_after"], "SERVING", "{name} must survive bad requests");
    }
}

/// Every metrics port answers with Prometheus (OpenMetrics) text that has build info and uptime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_ports_serve_build_info_and_uptime() {
    for name in BINARIES {
        let mut server = Server::start(name, &[]);
        server.wait_serving(STARTUP).await;
        let metrics = server.metrics;
        let (content_type, body) =
            tokio::task::spawn_blocking(move || fetch_metrics(metrics)).await.expect("fetch");
        assert!(content_type.starts_with("application/openmetrics-text"), "{name}: {content_type}");
        let role = if name == "tool-server" { "tool-server" } else { name };
        let build_info = format!(
            "paretopo_build_info{{role=\"{role}\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(body.contains(&build_info), "{name}: no `{build_info}` in\n{body}");
        let uptime: f64 = body
            .lines()
            .find_map(|l| l.strip_prefix("paretopo_uptime_seconds "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name}: no paretopo_uptime_seconds in\n{body}"));
        assert!(uptime > 0.0, "{name}: uptime {uptime}");
        assert!(body.ends_with("# EOF\n"), "{name}: OpenMetrics text ends with # EOF");
    }
}

/// SIGTERM while a WatchStatus stream and a health Watch stream are open: exit 0 within 5 s,
/// and both streams end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_open_streams_exits_zero_within_five_seconds() {
    for name in BINARIES {
        let mut server = Server::start(name, &[]);
        server.wait_serving(STARTUP).await;
        let channel = server.channel().await;
        let request = WatchStatusRequest { interval_ms: 100 };
        let mut status_stream: std::pin::Pin<Box<dyn tokio_stream::Stream<Item = bool> + Send>> =
            match name {
                "coordinator" => Box::pin(
                    CoordinatorClient::new(channel.clone())
                        .watch_status(request)
                        .await
                        .expect("watch")
                        .into_inner()
                        .map(|r| r.is_ok()),
                ),
                "learner" => Box::pin(
                    LearnerClient::new(channel.clone())
                        .watch_status(request)
                        .await
                        .expect("watch")
                        .into_inner()
                        .map(|r| r.is_ok()),
                ),
                "actor" => Box::pin(
                    ActorClient::new(channel.clone())
                        .watch_status(request)
                        .await
                        .expect("watch")
                        .into_inner()
                        .map(|r| r.is_ok()),
                ),
                _ => Box::pin(
                    ToolServerClient::new(channel.clone())
                        .watch_status(request)
                        .await
                        .expect("watch")
                        .into_inner()
                        .map(|r| r.is_ok()),
                ),
            };
        assert_eq!(status_stream.next().await, Some(true), "{name}: first status snapshot");
        let mut health_stream = HealthClient::new(channel)
            .watch(HealthCheckRequest { service: String::new() })
            .await
            .expect("health watch")
            .into_inner();
        assert!(health_stream.next().await.is_some(), "{name}: first health message");

        server.sigterm();
        let (status, took) =
            tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(5)))
                .unwrap_or_else(|| panic!("{name} still running 5 s after SIGTERM"));
        assert_eq!(
            status.code(),
            Some(0),
            "{name}: exit status {status}; stderr:\n{}",
            server.stderr()
        );
        eprintln!("{name}: exit 0 {} ms after SIGTERM", took.as_millis());

        // The open streams end (or fail) rather than hang.
        let drained = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(true) = status_stream.next().await {}
        })
        .await;
        assert!(drained.is_ok(), "{name}: status stream still open after exit");
    }
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

fn assert_config_error(name: &str, args: &[&str], expected: &[&str]) {
    let output = run_to_end(name, args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{name} {args:?}: {stderr}");
    let line = stderr.trim_end();
    assert!(!line.contains('\n'), "{name}: one line expected, got:\n{stderr}");
    for part in expected {
        assert!(line.contains(part), "{name} {args:?}: `{part}` not in: {line}");
    }
}

#[test]
fn unknown_config_key_exits_2_naming_the_key() {
    let file = write_config("[run]\nname = \"t\"\n\n[learner]\nlearning_rate = 0.1\n");
    let path = file.path().to_str().expect("utf-8 path");
    for name in BINARIES {
        assert_config_error(
            name,
            &["--config", path],
            &["key `learner.learning_rate`", "unknown field"],
        );
    }
}

#[test]
fn wrong_config_type_exits_2_naming_the_key() {
    let file = write_config("[algorithm]\ngroup_size = \"eight\"\n");
    let path = file.path().to_str().expect("utf-8 path");
    for name in BINARIES {
        assert_config_error(
            name,
            &["--config", path],
            &["key `algorithm.group_size`", "invalid type"],
        );
    }
}

#[test]
fn missing_config_file_exits_2() {
    for name in BINARIES {
        assert_config_error(
            name,
            &["--config", "/nonexistent/run.toml"],
            &["/nonexistent/run.toml", "cannot read"],
        );
    }
}

#[test]
fn bad_override_and_bad_flags_exit_2() {
    for name in BINARIES {
        assert_config_error(name, &["--set", "cluster.nodes=-1"], &["key `cluster.nodes`"]);
        let output = run_to_end(name, &["--listen", "not-an-address"]);
        assert_eq!(output.status.code(), Some(2), "{name}: bad --listen");
        let output = run_to_end(name, &["--no-such-flag"]);
        assert_eq!(output.status.code(), Some(2), "{name}: unknown flag");
    }
}

#[test]
fn help_explains_every_flag() {
    for name in BINARIES {
        let output = run_to_end(name, &["--help"]);
        assert!(output.status.success(), "{name} --help");
        let help = String::from_utf8_lossy(&output.stdout);
        for flag in [
            "--listen",
            "--config",
            "--metrics-listen",
            "--log-format",
            "--set",
            "--help",
            "--version",
        ] {
            // "      --listen <ADDR>" or "  -h, --help"
            let line = help.lines().position(|l| {
                let l = l.trim_start();
                l.starts_with(flag)
                    || (l.starts_with('-') && l.get(4..).is_some_and(|r| r.starts_with(flag)))
            });
            let line = line.unwrap_or_else(|| panic!("{name} --help lacks {flag}:\n{help}"));
            // The flag's explanation is on the following line(s).
            let next = help.lines().nth(line + 1).unwrap_or_default().trim();
            assert!(
                !next.is_empty() && !next.starts_with("--"),
                "{name}: {flag} is unexplained:\n{help}"
            );
        }
    }
}

/// Starts `name`, waits until it serves, stops it with SIGTERM, checks exit 0; returns stderr.
async fn serve_then_stop(name: &'static str, extra: &[&str], rust_log: &str) -> String {
    let mut server = Server::start_with_log(name, extra, rust_log);
    server.wait_serving(STARTUP).await;
    server.sigterm();
    let (status, _) = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(5)))
        .unwrap_or_else(|| panic!("{name} still running 5 s after SIGTERM"));
    assert!(status.success(), "{name}: {status}");
    server.stderr()
}

/// `--log-format json` writes one JSON object per line on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_format_writes_json_lines() {
    let stderr = serve_then_stop("tool-server", &["--log-format", "json"], "info").await;
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(lines.len() >= 3, "expected start, serving and stop lines:\n{stderr}");
    for line in lines {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(event["level"].is_string() && event["fields"].is_object(), "{line}");
    }
}

/// `RUST_LOG` decides what is logged: at `warn`, a clean start and stop logs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_filters_log_lines() {
    let stderr = serve_then_stop("tool-server", &[], "warn").await;
    assert!(stderr.trim().is_empty(), "info lines logged at RUST_LOG=warn:\n{stderr}");
}

/// Binaries that link libtorch resolve it through their rpath (no `LD_LIBRARY_PATH`) and keep
/// `libtorch_cuda` linked when the wheel has it, so tch can see a GPU where there is one.
#[test]
fn libtorch_binaries_need_no_library_path_and_keep_libtorch_cuda() {
    let libtorch = paretopo_tests::workspace_root().join(".venv/libtorch/lib");
    let has_cuda = libtorch.join("libtorch_cuda.so").exists();
    for name in ["learner", "actor"] {
        let output = Command::new("ldd")
            .arg(binary(name))
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .expect("ldd");
        let deps = String::from_utf8_lossy(&output.stdout);
        assert!(!deps.contains("not found"), "{name}: unresolved libraries:\n{deps}");
        assert!(deps.contains("libtorch_cpu.so => "), "{name}: libtorch not linked:\n{deps}");
        assert_eq!(deps.contains("libtorch_cuda.so => "), has_cuda, "{name}:\n{deps}");
    }
    // The coordinator never links libtorch (DESIGN.md §10).
    let output = Command::new("ldd").arg(binary("coordinator")).output().expect("ldd");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("libtorch"));
}

/// The launcher's smoke test: `coordinator run --check` starts the four binaries, finds them
/// healthy, and stops them, each exiting 0 (the training run itself is `tests/runtime.rs`).
#[test]
fn local_run_starts_all_four_healthy_and_stops_them() {
    let dir = tempfile::tempdir().expect("run dir");
    let output = Command::new(binary("coordinator"))
        .args(["run", "--check", "--set", &format!("run.dir=\"{}\"", dir.path().display())])
        .output()
        .expect("coordinator run");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "coordinator run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for name in BINARIES {
        assert!(
            stdout.lines().any(|l| l.starts_with(name) && l.contains("SERVING")),
            "{name} not reported SERVING:\n{stdout}"
        );
        assert!(
            stdout.lines().any(|l| l.starts_with(name) && l.contains("stopped: exit 0")),
            "{name} not stopped cleanly:\n{stdout}"
        );
    }
}

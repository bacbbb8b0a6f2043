//! Helpers for the end-to-end tests in `tests/`: find the built binaries, start one as a real
//! process on loopback, wait until it is healthy, stop it with a signal, and run the black-box
//! Python client. The tests themselves live in `tests/tests/`.
//!
//! The binaries are found in the target directory next to the test executable (the
//! `CARGO_BIN_EXE_*` variables exist only inside the defining package), so build them first:
//! `make test` runs `cargo build --bins` before `cargo test`.

pub mod run;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use paretopo_service::Role;
use paretopo_service::security::Security;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The four server binaries.
pub const BINARIES: [&str; 4] = ["coordinator", "learner", "actor", "tool-server"];

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The path of a built binary; panics with a hint when it has not been built.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(path.is_file(), "{} is not built: run `cargo build --bins` first", path.display());
    path
}

/// The project venv's Python, which has the gRPC client packages (`make setup`).
pub fn venv_python() -> PathBuf {
    let python = workspace_root().join(".venv/bin/python");
    assert!(python.is_file(), "{} missing: run `make setup`", python.display());
    python
}

/// An address on 127.0.0.1 whose port was free a moment ago.
///
/// The port is below the kernel's ephemeral range (32768 and up), where the processes under
/// test bind their own port-0 listeners (a learner's collective and weights ports), so none of
/// them can take a port a test has picked but not yet handed to its process. Each pick in this
/// test binary gets a port of its own.
pub fn free_addr() -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const PORTS: u32 = 12_000;
    // Different test binaries (and reruns) start at different places in the range.
    let offset = std::process::id().wrapping_mul(2_654_435_761) % PORTS;
    for _ in 0..PORTS {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (offset + n) % PORTS) as u16;
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return listener.local_addr().expect("local addr");
        }
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind port 0");
    listener.local_addr().expect("local addr")
}

/// One running server process; killed on drop if still running.
pub struct Server {
    /// The binary's name.
    pub name: &'static str,
    /// The process.
    pub child: Child,
    /// Its gRPC address.
    pub grpc: SocketAddr,
    /// Its metrics address.
    pub metrics: SocketAddr,
    /// Where its log goes, when not to a pipe.
    pub log: Option<PathBuf>,
    /// How the test dials it: plaintext, or mutual TLS as the run's operator
    /// ([`run::TestRun::with_mtls`]).
    pub dialer: Arc<Security>,
}

impl Server {
    /// Starts `name` on fresh loopback ports with `extra` arguments, stderr captured.
    pub fn start(name: &'static str, extra: &[&str]) -> Server {
        Self::start_with_log(name, extra, "info")
    }

    /// Like [`Server::start`], with `RUST_LOG` set to `rust_log`.
    ///
    /// `LD_LIBRARY_PATH` is removed, because `cargo test` points it at libtorch: the binaries
    /// must find their libraries through their rpath alone.
    pub fn start_with_log(name: &'static str, extra: &[&str], rust_log: &str) -> Server {
        let (grpc, metrics) = (free_addr(), free_addr());
        let child = Command::new(binary(name))
            .args(["--listen", &grpc.to_string(), "--metrics-listen", &metrics.to_string()])
            .args(extra)
            .env("RUST_LOG", rust_log)
            .env_remove("LD_LIBRARY_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Server { name, child, grpc, metrics, log: None, dialer: Arc::default() }
    }

    /// Starts `name` with its gRPC port at `grpc` and stderr (the log) appended to `log`: a
    /// process that runs for a while writes more than a pipe holds.
    pub fn start_logged(
        name: &'static str,
        grpc: SocketAddr,
        extra: &[&str],
        log: &Path,
    ) -> Server {
        let metrics = free_addr();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("opening {}: {e}", log.display()));
        let child = Command::new(binary(name))
            .args(["--listen", &grpc.to_string(), "--metrics-listen", &metrics.to_string()])
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("LD_LIBRARY_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Server { name, child, grpc, metrics, log: Some(log.to_path_buf()), dialer: Arc::default() }
    }

    /// The end of its log file, for a failure message.
    fn log_tail(&self) -> String {
        let Some(log) = &self.log else { return String::new() };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(20).collect();
        let tail: Vec<&str> = lines.into_iter().rev().collect();
        format!("\n--- {}:\n{}", log.display(), tail.join("\n"))
    }

    /// Sends SIGKILL: the process dies at once, as a crashed one would.
    pub fn sigkill(&self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL).expect("send SIGKILL");
    }

    /// Waits until health reports SERVING for the whole server; panics after `timeout`.
    pub async fn wait_serving(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let endpoint = self.endpoint();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited with {status} before serving{}", self.name, self.log_tail());
            }
            if let Ok(channel) = endpoint.connect().await {
                let check = HealthClient::new(channel)
                    .check(HealthCheckRequest { service: String::new() })
                    .await;
                if check.is_ok_and(|r| r.get_ref().status == ServingStatus::Serving as i32) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{} not SERVING within {timeout:?}", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A connected channel to the gRPC port.
    pub async fn channel(&self) -> tonic::transport::Channel {
        self.endpoint()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.name))
    }

    /// The endpoint of its gRPC port, dialled with [`Server::dialer`].
    pub fn endpoint(&self) -> tonic::transport::Endpoint {
        let role = Role::from_name(self.name).unwrap_or(Role::Actor);
        self.dialer.endpoint(&self.grpc.to_string(), role).expect("endpoint")
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("send SIGTERM");
    }

    /// Waits for the process to exit, at most `timeout`; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let begun = Instant::now();
        while begun.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some((status, begun.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Everything the process wrote to stderr; call after it exited.
    pub fn stderr(&mut self) -> String {
        use std::io::Read;
        let mut text = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a binary to completion with `args` (for flag and config errors).
pub fn run_to_end(name: &str, args: &[&str]) -> Output {
    Command::new(binary(name))
        .args(args)
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"))
}

/// Fetches `http://addr/metrics` and returns the content type and body.
pub fn fetch_metrics(addr: SocketAddr) -> (String, String) {
    let mut response = ureq::get(&format!("http://{addr}/metrics")).call().expect("GET /metrics");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.body_mut().read_to_string().expect("metrics body");
    (content_type, body)
}

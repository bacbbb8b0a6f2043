//! A run of the real binaries on loopback for a test: its settings, its processes, and what a
//! test reads back (status, logs, `metrics.jsonl`, the ledger).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use paretopo_proto::v1::coordinator_client::CoordinatorClient;
use paretopo_proto::v1::learner_client::LearnerClient;
use paretopo_proto::v1::{
    ActorStatus, CoordinatorStatus, GetStatusRequest, LearnerStatus, actor_client::ActorClient,
};

use paretopo_service::security::Security;
use sha2::{Digest, Sha256};
use std::sync::Arc;

use crate::{Server, free_addr, workspace_root};

/// A run's settings for a test: tiny, short, with fast heartbeats.
pub struct TestRun {
    dir: tempfile::TempDir,
    /// The coordinator's address.
    pub coordinator: SocketAddr,
    nodes: u32,
    steps: u64,
    extra: Vec<String>,
    /// With mutual TLS: the operator credential the test dials with.
    operator: Option<Arc<Security>>,
}

impl TestRun {
    /// A run of `nodes` workers for `steps` steps, with `extra` `--set` overrides.
    pub fn new(nodes: u32, steps: u64, extra: &[&str]) -> Self {
        Self::in_dir(&std::env::temp_dir(), nodes, steps, extra)
    }

    /// Like [`TestRun::new`], with the run directory made inside `parent`.
    pub fn in_dir(parent: &Path, nodes: u32, steps: u64, extra: &[&str]) -> Self {
        TestRun {
            dir: tempfile::Builder::new()
                .prefix("paretopo-run-")
                // PARETOPO_KEEP_RUNS=1 keeps the run directories (logs, ledger) for a look after.
                .disable_cleanup(std::env::var_os("PARETOPO_KEEP_RUNS").is_some())
                .tempdir_in(parent)
                .expect("run dir"),
            coordinator: free_addr(),
            nodes,
            steps,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            operator: None,
        }
    }

    /// Runs every process with mutual TLS: makes the run's certificates in `<dir>/tls/`, gives
    /// each process its role's, and dials them as the run's operator.
    pub fn with_mtls(mut self) -> Self {
        let dir = self.tls_dir();
        paretopo_service::certs::make(&dir, "test", 1).expect("certs");
        let operator =
            Security::from_tls_dir(&dir.join("operator")).expect("the operator's credential");
        self.operator = Some(Arc::new(operator));
        self
    }

    /// Where [`TestRun::with_mtls`] puts the certificates (`<dir>/tls/<principal>/`).
    pub fn tls_dir(&self) -> PathBuf {
        self.path().join("tls")
    }

    /// How the test dials this run's processes.
    pub fn dialer(&self) -> Arc<Security> {
        self.operator.clone().unwrap_or_default()
    }

    /// The run directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Every process's arguments: the quickstart config and the run's overrides.
    pub fn args(&self) -> Vec<String> {
        let config = workspace_root().join("configs/quickstart.toml");
        let mut sets = vec![
            format!("run.dir=\"{}\"", self.path().display()),
            format!("cluster.coordinator_address=\"{}\"", self.coordinator),
            format!("cluster.nodes={}", self.nodes),
            "cluster.heartbeat_interval_ms=200".into(),
            "cluster.heartbeat_timeout_ms=1500".into(),
            format!("algorithm.total_steps={}", self.steps),
            "algorithm.warm_start_steps=10".into(),
            "algorithm.eval_questions=8".into(),
            "algorithm.groups_per_step=2".into(),
            "algorithm.actor_batch_prompts=1".into(),
            "algorithm.group_size=4".into(),
            "algorithm.token_budget=48".into(),
            "algorithm.checkpoint_every=2".into(),
        ];
        sets.extend(self.extra.iter().cloned());
        let mut args = vec!["--config".to_owned(), config.display().to_string()];
        for set in sets {
            args.push("--set".into());
            args.push(set);
        }
        args
    }

    /// Starts `binary` on `grpc`, its log in `<name>.log` in the run directory.
    pub fn start(&self, binary: &'static str, name: &str, grpc: SocketAddr) -> Server {
        let mut args = self.args();
        if self.operator.is_some() {
            args.push("--tls-dir".into());
            args.push(self.tls_dir().join(binary).display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Server::start_logged(binary, grpc, &args, &self.log(name));
        server.dialer = self.dialer();
        server
    }

    /// The log file of the process started as `name`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.path().join(format!("{name}.log"))
    }

    /// Every log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut entries: Vec<_> = std::fs::read_dir(self.path())
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for path in entries.into_iter().filter(|p| p.extension().is_some_and(|e| e == "log")) {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            out.push_str(&format!("==== {}\n", path.display()));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Every log, whole.
    pub fn logs_full(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.path()).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|e| e == "log") {
                out.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        out
    }

    /// The steps of `metrics.jsonl`, in file order.
    pub fn metrics_steps(&self) -> Vec<u64> {
        std::fs::read_to_string(self.path().join("metrics.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("metrics line is JSON");
                v["step"].as_u64().expect("step")
            })
            .collect()
    }
}

/// The run's trajectory ledger as the learner wrote it at the end (`ledger.json`), checked to
/// add up: for every actor, its states sum to the groups it accounts for.
pub fn final_ledger(run: &TestRun) -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(run.path().join("ledger.json"))
        .unwrap_or_else(|e| panic!("ledger.json: {e}\n{}", run.logs()));
    let ledger: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).expect("ledger.json is a JSON object");
    for (actor, account) in &ledger {
        let n = |state: &str| account[state].as_u64().expect(state);
        let counted = n("queued") + n("trained") + n("stale") + n("invalid") + n("lost");
        assert_eq!(counted, n("through"), "actor {actor} does not add up: {account}");
    }
    ledger
}

/// The sum of `state` over every actor of a ledger.
pub fn ledger_total(ledger: &serde_json::Map<String, serde_json::Value>, state: &str) -> u64 {
    ledger.values().map(|a| a[state].as_u64().expect(state)).sum()
}

/// The coordinator's status.
pub async fn coordinator_status(run: &TestRun) -> CoordinatorStatus {
    let channel = run
        .dialer()
        .endpoint(&run.coordinator.to_string(), paretopo_service::Role::Coordinator)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect coordinator");
    CoordinatorClient::new(channel)
        .get_status(GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

/// A learner's status.
pub async fn learner_status(server: &Server) -> LearnerStatus {
    LearnerClient::new(server.channel().await)
        .get_status(GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

/// An actor's status.
pub async fn actor_status(server: &Server) -> ActorStatus {
    ActorClient::new(server.channel().await)
        .get_status(GetStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

/// Polls `check` every 100 ms until it holds; panics with the run's logs after `timeout`.
pub async fn wait_until<F, Fut>(run: &TestRun, what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", run.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for `server` to exit 0 within `timeout`.
pub fn expect_clean_exit(run: &TestRun, server: &mut Server, timeout: Duration) {
    match server.wait_exit(timeout) {
        Some((status, _)) => {
            assert!(status.success(), "{} exited with {status}\n{}", server.name, run.logs())
        }
        None => panic!("{} still running after {timeout:?}\n{}", server.name, run.logs()),
    }
}

/// Coordinator, tool-server, one learner and `actors` actors; returns them started and serving.
pub async fn start_run(run: &TestRun, actors: usize) -> (Server, Server, Server, Vec<Server>) {
    let mut coordinator = run.start("coordinator", "coordinator", run.coordinator);
    coordinator.wait_serving(Duration::from_secs(20)).await;
    let mut tool_server = run.start("tool-server", "tool-server", free_addr());
    let mut learner = run.start("learner", "learner", free_addr());
    let mut started: Vec<Server> =
        (0..actors).map(|i| run.start("actor", &format!("actor-{i}"), free_addr())).collect();
    tool_server.wait_serving(Duration::from_secs(20)).await;
    learner.wait_serving(Duration::from_secs(60)).await;
    for actor in &mut started {
        actor.wait_serving(Duration::from_secs(60)).await;
    }
    (coordinator, tool_server, learner, started)
}

/// Every file the manifest lists has its size and SHA-256, computed here independently.
pub fn verify_manifest(dir: &Path) {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("manifest.json")).expect("manifest.json"),
    )
    .expect("manifest is JSON");
    let files = manifest["files"].as_object().expect("files");
    assert!(files.contains_key("model.safetensors"), "{manifest}");
    for (name, entry) in files {
        let bytes = std::fs::read(dir.join(name)).expect("a listed file");
        assert_eq!(bytes.len() as u64, entry["bytes"].as_u64().expect("bytes"), "{name}");
        let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(digest, entry["sha256"].as_str().expect("sha256"), "{name}");
    }
}

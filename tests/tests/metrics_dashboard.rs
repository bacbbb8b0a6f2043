//! Issue #9: the Grafana dashboard (`deploy/grafana/paretopo-dashboard.json`) uses only metrics
//! the binaries export. A short run of all four roles trains a step; then every metric name the
//! dashboard's queries name must appear in the `/metrics` output of one of the processes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use paretopo_proto::v1::GetStatusRequest;
use paretopo_proto::v1::coordinator_client::CoordinatorClient;
use paretopo_tests::{Server, fetch_metrics, free_addr, workspace_root};

/// Every `paretopo_*` name in the dashboard's queries.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = workspace_root().join("deploy/grafana/paretopo-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("dashboard")).expect("JSON");
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("paretopo_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    let wanted = dashboard_metrics();
    assert!(wanted.len() >= 20, "{wanted:?}");
    let dir = tempfile::tempdir().expect("dir");
    let coordinator_address = free_addr();
    let sets = [
        format!("run.dir=\"{}\"", dir.path().display()),
        format!("cluster.coordinator_address=\"{coordinator_address}\""),
        "cluster.nodes=3".into(),
        "algorithm.total_steps=100".into(),
        "algorithm.warm_start_steps=5".into(),
        "algorithm.eval_questions=4".into(),
        "algorithm.groups_per_step=1".into(),
        "algorithm.group_size=4".into(),
        "algorithm.token_budget=48".into(),
    ];
    let config = workspace_root().join("configs/quickstart.toml").display().to_string();
    let mut args = vec!["--config".to_owned(), config];
    for set in sets {
        args.extend(["--set".to_owned(), set]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let log = |name: &str| dir.path().join(format!("{name}.log"));
    let mut coordinator =
        Server::start_logged("coordinator", coordinator_address, &args, &log("c"));
    coordinator.wait_serving(Duration::from_secs(30)).await;
    let mut servers = vec![
        Server::start_logged("tool-server", free_addr(), &args, &log("t")),
        Server::start_logged("learner", free_addr(), &args, &log("l")),
        Server::start_logged("actor", free_addr(), &args, &log("a")),
    ];
    for server in &mut servers {
        server.wait_serving(Duration::from_secs(60)).await;
    }
    // A step, so the batch's objectives exist.
    let begun = Instant::now();
    let mut client = CoordinatorClient::new(coordinator.channel().await);
    while client.get_status(GetStatusRequest {}).await.expect("status").into_inner().step < 1 {
        assert!(begun.elapsed() < Duration::from_secs(120), "no step within 120 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    servers.push(coordinator);
    let mut exported = String::new();
    for server in &servers {
        let metrics = server.metrics;
        let (_, body) =
            tokio::task::spawn_blocking(move || fetch_metrics(metrics)).await.expect("fetch");
        exported.push_str(&body);
    }
    let present: BTreeSet<&str> = exported
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = wanted.iter().filter(|n| !present.contains(n.as_str())).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which nothing exports:\n{exported}"
    );
}

//! Issue #9, runs that span hosts: the coordinator's role plan and rendezvous deadline, over a
//! real coordinator process. (The multi-host run itself is `scripts/multihost.sh`, driven by
//! `multihost.rs`.)

use std::time::Duration;

use paretopo_proto::v1::coordinator_client::CoordinatorClient;
use paretopo_proto::v1::{GetStatusRequest, RegisterRequest, Role};
use paretopo_tests::Server;

const STARTUP: Duration = Duration::from_secs(30);

fn register(role: Role, address: &str) -> RegisterRequest {
    RegisterRequest {
        role: role as i32,
        advertised_address: address.into(),
        hostname: "test".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_plan_refuses_extra_roles_and_the_deadline_names_the_missing_ones() {
    let mut coordinator = Server::start(
        "coordinator",
        &[
            "--learners",
            "1",
            "--actors",
            "2",
            "--tool-servers",
            "1",
            "--set",
            "cluster.rendezvous_timeout_ms=3000",
        ],
    );
    coordinator.wait_serving(STARTUP).await;
    let mut client = CoordinatorClient::new(coordinator.channel().await);
    let status = client.get_status(GetStatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.nodes_expected, 4, "--nodes defaults to the plan's sum");

    client.register(register(Role::ToolServer, "10.0.0.9:7000")).await.expect("tool-server");
    let refused = client
        .register(register(Role::ToolServer, "10.0.0.8:7000"))
        .await
        .expect_err("the plan has one tool-server");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("plans 1 tool-server"), "{}", refused.message());
    client.register(register(Role::Actor, "10.0.0.5:7000")).await.expect("actor");

    let (exit, _) = coordinator
        .wait_exit(Duration::from_secs(20))
        .expect("the coordinator gives up at its rendezvous deadline");
    assert!(!exit.success(), "a rendezvous that failed exits non-zero: {exit}");
    let stderr = coordinator.stderr();
    assert!(
        stderr.contains("rendezvous: 1 learner, 1 actor did not register within 3 s"),
        "{stderr}"
    );
    assert!(stderr.contains("tool-server-0 at 10.0.0.9:7000"), "{stderr}");
}

#[test]
fn role_flags_that_do_not_add_up_to_nodes_exit_2() {
    let out = paretopo_tests::run_to_end(
        "coordinator",
        &["--nodes", "8", "--learners", "2", "--actors", "4", "--tool-servers", "1"],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("key `cluster.nodes`") && stderr.contains("= 7 workers"), "{stderr}");
}

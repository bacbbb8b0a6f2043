//! Bad input everywhere (issue #10, point 5): a test client sends every gRPC method with inputs
//! no peer of ours would send (NaN or out-of-range objectives, token ids beyond the vocabulary,
//! lengths that disagree, huge sizes, unknown enum values, megabyte strings, unknown node ids,
//! policy versions from nowhere). Each is refused with INVALID_ARGUMENT naming the field (or
//! the status that fits: NOT_FOUND, PERMISSION_DENIED, ...), changes nothing, and the server
//! keeps serving; a well-formed request afterwards (the positive control) still works.

use std::time::Duration;

use actor::episode::Trajectory;
use paretopo_proto::v1::coordinator_client::CoordinatorClient;
use paretopo_proto::v1::learner_client::LearnerClient;
use paretopo_proto::v1::tool_server_client::ToolServerClient;
use paretopo_proto::v1::{
    CoordinatorStatus, GetRendezvousRequest, GetStatusRequest, GroupOutcome, HeartbeatRequest,
    ObjectiveVector, PushAck, RegisterRequest, ReportObjectivesRequest, Role, ToolCallRequest,
    ToolErrorKind, TrajectoryGroup, WatchPolicyRequest, WatchStatusRequest,
};
use paretopo_tests::run::{TestRun, coordinator_status, learner_status, start_run, wait_until};
use tasks::{RawMetrics, Termination};
use tonic::Code;

const MEGABYTE: usize = 1 << 20;

/// Asserts that `result` is an error with `code` whose message starts with `field`.
fn refused<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, tonic::Status>,
    code: Code,
    field: &str,
) {
    match result {
        Ok(ok) => panic!("{what}: accepted: {ok:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {}", status.message());
            assert!(
                status.message().starts_with(field),
                "{what}: the message should name {field:?}: {}",
                status.message()
            );
        }
    }
}

/// What a status says about the state the bad requests must not touch.
fn coordinator_state(s: &CoordinatorStatus) -> String {
    let mut nodes: Vec<String> =
        s.nodes.iter().map(|n| format!("{} {} {}", n.node_id, n.role, n.lost)).collect();
    nodes.sort();
    format!(
        "step {} weights {:?} frontier {:?} epoch {} nodes {nodes:?}",
        s.step, s.weights, s.frontier, s.membership_epoch
    )
}

fn register(role: Role, address: &str) -> RegisterRequest {
    RegisterRequest {
        role: role as i32,
        advertised_address: address.into(),
        hostname: "probe".into(),
        local_devices: 1,
        ..Default::default()
    }
}

fn report(node_id: &str, step: u64, values: Vec<f64>) -> ReportObjectivesRequest {
    ReportObjectivesRequest {
        node_id: node_id.into(),
        step,
        batch_mean: Some(ObjectiveVector { values }),
        trajectories: 8,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_refuses_every_malformed_request_by_field_and_changes_nothing() {
    // A coordinator alone; the test registers the run's four workers itself, so it also holds
    // learner rank 0's node id. Heartbeats are slow so that nobody is lost meanwhile.
    let run = TestRun::new(4, 50, &["cluster.heartbeat_timeout_ms=600000"]);
    let mut server = run.start("coordinator", "coordinator", run.coordinator);
    server.wait_serving(Duration::from_secs(20)).await;
    let mut client = CoordinatorClient::new(server.channel().await);

    // Registration: role, addresses, sizes, run name.
    let r = |change: &dyn Fn(&mut RegisterRequest)| {
        let mut request = register(Role::Learner, "127.0.0.1:1");
        change(&mut request);
        request
    };
    let cases: Vec<(&str, RegisterRequest, Code, &str)> = vec![
        ("unset role", r(&|q| q.role = 0), Code::InvalidArgument, "role:"),
        ("unknown role", r(&|q| q.role = 99), Code::InvalidArgument, "role:"),
        (
            "coordinator role",
            r(&|q| q.role = Role::Coordinator as i32),
            Code::InvalidArgument,
            "role:",
        ),
        (
            "no address",
            r(&|q| q.advertised_address.clear()),
            Code::InvalidArgument,
            "advertised_address:",
        ),
        (
            "MB address",
            r(&|q| q.advertised_address = "a".repeat(MEGABYTE)),
            Code::InvalidArgument,
            "advertised_address:",
        ),
        (
            "MB hostname",
            r(&|q| q.hostname = "h".repeat(MEGABYTE)),
            Code::InvalidArgument,
            "hostname:",
        ),
        (
            "MB previous id",
            r(&|q| q.previous_node_id = "n".repeat(MEGABYTE)),
            Code::InvalidArgument,
            "previous_node_id:",
        ),
        (
            "huge nccl id",
            r(&|q| q.nccl_unique_id = vec![7; 4096]),
            Code::InvalidArgument,
            "nccl_unique_id:",
        ),
        (
            "huge device count",
            r(&|q| q.local_devices = u32::MAX),
            Code::InvalidArgument,
            "local_devices:",
        ),
        (
            "huge learner index",
            r(&|q| q.learner_index = Some(u32::MAX)),
            Code::InvalidArgument,
            "learner_index:",
        ),
        (
            "another run",
            r(&|q| q.run_name = "not-this-run".into()),
            Code::FailedPrecondition,
            "run_name:",
        ),
    ];
    for (what, request, code, field) in cases {
        refused(what, client.register(request).await, code, field);
    }
    let empty = coordinator_status(&run).await;
    assert!(empty.nodes.is_empty(), "a refused registration stored a node: {:?}", empty.nodes);

    // The four workers, then one too many.
    let learner = client.register(register(Role::Learner, "127.0.0.1:2")).await.expect("learner");
    let learner = learner.into_inner().node_id;
    for (role, address) in [
        (Role::Actor, "127.0.0.1:3"),
        (Role::Actor, "127.0.0.1:4"),
        (Role::ToolServer, "127.0.0.1:5"),
    ] {
        client.register(register(role, address)).await.expect("worker");
    }
    refused(
        "a fifth worker",
        client.register(register(Role::Actor, "127.0.0.1:6")).await,
        Code::ResourceExhausted,
        "the run is full",
    );
    let before = coordinator_status(&run).await;
    assert!(before.rendezvous_complete, "{before:?}");

    // Heartbeats, rendezvous, reports and status streams.
    let unknown = client
        .heartbeat(HeartbeatRequest { node_id: "nobody".into(), ..Default::default() })
        .await
        .expect("an unknown node's heartbeat is answered")
        .into_inner();
    assert!(unknown.reregister, "an unknown node is told to register: {unknown:?}");
    refused(
        "MB last_error",
        client
            .heartbeat(HeartbeatRequest {
                node_id: learner.clone(),
                last_error: "e".repeat(MEGABYTE),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "last_error:",
    );
    refused(
        "MB node id",
        client
            .heartbeat(HeartbeatRequest { node_id: "n".repeat(MEGABYTE), ..Default::default() })
            .await,
        Code::InvalidArgument,
        "node_id:",
    );
    refused(
        "unknown node's rendezvous",
        client.get_rendezvous(GetRendezvousRequest { node_id: "nobody".into() }).await,
        Code::NotFound,
        "node_id:",
    );
    let mut nan_metric = report(&learner, 1, vec![0.5; 3]);
    nan_metric.metrics.insert("loss".into(), f64::NAN);
    let mut many_metrics = report(&learner, 1, vec![0.5; 3]);
    many_metrics.metrics = (0..10_000).map(|i| (format!("m{i}"), 1.0)).collect();
    let reports: Vec<(&str, ReportObjectivesRequest, Code, &str)> = vec![
        (
            "NaN objective",
            report(&learner, 1, vec![f64::NAN, 0.5, 0.5]),
            Code::InvalidArgument,
            "batch_mean:",
        ),
        (
            "objective above 1",
            report(&learner, 1, vec![1.5, 0.5, 0.5]),
            Code::InvalidArgument,
            "batch_mean:",
        ),
        (
            "negative objective",
            report(&learner, 1, vec![-0.1, 0.5, 0.5]),
            Code::InvalidArgument,
            "batch_mean:",
        ),
        (
            "infinite objective",
            report(&learner, 1, vec![f64::INFINITY, 0.5, 0.5]),
            Code::InvalidArgument,
            "batch_mean:",
        ),
        (
            "too few objectives",
            report(&learner, 1, vec![0.5; 2]),
            Code::InvalidArgument,
            "batch_mean:",
        ),
        (
            "a million objectives",
            report(&learner, 1, vec![0.5; MEGABYTE / 8]),
            Code::InvalidArgument,
            "batch_mean:",
        ),
        (
            "no batch mean",
            ReportObjectivesRequest { node_id: learner.clone(), step: 1, ..Default::default() },
            Code::InvalidArgument,
            "batch_mean:",
        ),
        ("step 0", report(&learner, 0, vec![0.5; 3]), Code::InvalidArgument, "step:"),
        (
            "step beyond the run",
            report(&learner, u64::MAX, vec![0.5; 3]),
            Code::InvalidArgument,
            "step:",
        ),
        ("NaN metric", nan_metric, Code::InvalidArgument, "metrics:"),
        ("ten thousand metrics", many_metrics, Code::InvalidArgument, "metrics:"),
        ("unknown node", report("nobody", 1, vec![0.5; 3]), Code::PermissionDenied, "node_id:"),
        (
            "an actor reporting",
            report(&before.nodes[1].node_id, 1, vec![0.5; 3]),
            Code::PermissionDenied,
            "node_id:",
        ),
    ];
    for (what, request, code, field) in reports {
        refused(what, client.report_objectives(request).await, code, field);
    }
    for interval_ms in [1, 99, 60_001, u32::MAX] {
        refused(
            "status interval",
            client.watch_status(WatchStatusRequest { interval_ms }).await,
            Code::InvalidArgument,
            "interval_ms:",
        );
    }
    // Bigger than any message a server takes (`limits.max_message_bytes`, 4 MiB).
    let oversized = client.register(r(&|q| q.hostname = "h".repeat(5 * MEGABYTE))).await;
    let status = oversized.expect_err("a 5 MiB message");
    assert!(
        matches!(status.code(), Code::ResourceExhausted | Code::OutOfRange),
        "5 MiB: {status:?}"
    );

    // Nothing changed: no node, archive point, weight or step; and the server still serves.
    let after = coordinator_status(&run).await;
    assert_eq!(coordinator_state(&after), coordinator_state(&before));
    assert!(after.frontier.is_empty() && after.step == 0, "{after:?}");

    // The positive control: the same report, well formed, moves the run.
    let reply = client.report_objectives(report(&learner, 1, vec![0.5, 0.25, 0.75])).await;
    let weights = reply.expect("a good report").into_inner().weights.expect("weights");
    let moved = coordinator_status(&run).await;
    assert_eq!((moved.step, moved.frontier.len()), (1, 1), "{moved:?}");
    assert!(weights.sequence > before.weights.as_ref().map_or(0, |w| w.sequence));
    server.sigterm();
    assert!(server.wait_exit(Duration::from_secs(10)).is_some_and(|(s, _)| s.success()));
}

/// A well-formed group of three trajectories from `actor`, number `seq`.
fn group(actor: &str, seq: u64, policy_version: u64) -> TrajectoryGroup {
    let trajectories = (0..3)
        .map(|i| {
            let t = Trajectory {
                prompt: vec![5, 6, 7],
                completion: vec![10 + i, 11, 12],
                logprobs: vec![-0.5, -1.0, -0.25],
                generated: vec![true, true, true],
                answer: Some("1".into()),
                tool_calls: 0,
                generated_tokens: 3,
                termination: Termination::Answered,
            };
            let raw = RawMetrics {
                accuracy: 1.0,
                tool_calls: 0,
                generated_tokens: 3,
                termination: Termination::Answered,
            };
            actor::wire::to_proto(&t, &[1.0, 1.0, 0.9], &raw)
        })
        .collect();
    TrajectoryGroup {
        actor_id: actor.into(),
        group_seq: seq,
        policy_version,
        prompt_id: "arith:probe".into(),
        prompt_tokens: 3,
        trajectories,
        temperature: 1.0,
    }
}

/// Pushes `groups` on one new stream; returns the acks, or the status that ended the stream.
async fn push(
    client: &mut LearnerClient<tonic::transport::Channel>,
    groups: Vec<TrajectoryGroup>,
) -> Result<Vec<PushAck>, tonic::Status> {
    let n = groups.len();
    let mut acks = client.push_trajectories(tokio_stream::iter(groups)).await?.into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(20), acks.message()).await {
            Ok(Ok(Some(ack))) => out.push(ack),
            Ok(Ok(None)) => break,
            Ok(Err(status)) => return Err(status),
            Err(_) => panic!("no ack within 20 s"),
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_learner_and_the_tool_server_refuse_malformed_input_by_field_and_keep_training() {
    let run = TestRun::new(4, 400, &[]);
    let (_coordinator, tool_server, learner, _actors) = start_run(&run, 2).await;
    wait_until(&run, "step 2", Duration::from_secs(120), || async {
        learner_status(&learner).await.step >= 2
    })
    .await;
    let mut client = LearnerClient::new(learner.channel().await);
    let version = learner_status(&learner).await.policy_version;

    // Each malformed group, alone on its stream, from its own probe actor.
    type Breakage = Box<dyn Fn(&mut TrajectoryGroup)>;
    let cases: Vec<(&str, Breakage)> = vec![
        (
            "trajectories[0].objectives:",
            Box::new(|g| g.trajectories[0].objectives.as_mut().expect("o").values[0] = f64::NAN),
        ),
        (
            "trajectories[1].objectives:",
            Box::new(|g| g.trajectories[1].objectives.as_mut().expect("o").values[2] = 1.5),
        ),
        (
            "trajectories[2].objectives:",
            Box::new(|g| g.trajectories[2].objectives.as_mut().expect("o").values.push(0.5)),
        ),
        ("trajectories[0].token_ids:", Box::new(|g| g.trajectories[0].token_ids[4] = u32::MAX)),
        (
            "trajectories[0].token_ids:",
            Box::new(|g| g.trajectories[0].token_ids = vec![5; 200_000]),
        ),
        (
            "trajectories[1].loss_mask:",
            Box::new(|g| {
                g.trajectories[1].loss_mask.pop();
            }),
        ),
        (
            "trajectories[1].loss_mask:",
            Box::new(|g| g.trajectories[1].sampling_logprobs.push(-1.0)),
        ),
        ("trajectories[2].loss_mask:", Box::new(|g| g.trajectories[2].loss_mask[5] = 7)),
        (
            "trajectories[2].sampling_logprobs:",
            Box::new(|g| g.trajectories[2].sampling_logprobs[4] = f32::INFINITY),
        ),
        ("trajectories:", Box::new(|g| g.trajectories.truncate(1))),
        (
            "trajectories:",
            Box::new(|g| {
                let t = g.trajectories[0].clone();
                g.trajectories.extend(std::iter::repeat_n(t, 40));
            }),
        ),
        ("temperature:", Box::new(|g| g.temperature = f32::NAN)),
        ("temperature:", Box::new(|g| g.temperature = -1.0)),
        ("prompt_id:", Box::new(|g| g.prompt_id = "p".repeat(MEGABYTE))),
        ("actor_id:", Box::new(|g| g.actor_id = "a".repeat(MEGABYTE))),
        ("actor_id:", Box::new(|g| g.actor_id.clear())),
        ("group_seq:", Box::new(|g| g.group_seq = 0)),
    ];
    for (i, (field, break_it)) in cases.iter().enumerate() {
        let mut bad = group(&format!("probe-{i}"), 1, version);
        break_it(&mut bad);
        let acks = push(&mut client, vec![bad]).await.unwrap_or_else(|e| panic!("{field}: {e}"));
        assert_eq!(acks.len(), 1, "{field}");
        assert_eq!(acks[0].outcome(), GroupOutcome::Invalid, "{field}: {:?}", acks[0]);
        assert!(acks[0].error.starts_with(field), "{field}: {}", acks[0].error);
    }
    // A policy version the learner never published, and one skipping ahead in a stream.
    let future = push(&mut client, vec![group("probe-future", 1, u64::MAX)]).await.expect("acks");
    assert_eq!(future[0].outcome(), GroupOutcome::Stale, "{future:?}");
    refused(
        "a skip in the sequence",
        push(&mut client, vec![group("probe-future", 5, version)]).await,
        Code::InvalidArgument,
        "group_seq:",
    );

    // Nothing of theirs went into training: the probes' accounts hold no queued or trained
    // group, the anonymous ones have none, and the learner trains on.
    let status = learner_status(&learner).await;
    for account in status.ledger.iter().filter(|a| a.actor_id.starts_with("probe")) {
        assert_eq!((account.queued, account.trained), (0, 0), "{account:?}");
    }
    let probes = status.ledger.iter().filter(|a| a.actor_id.starts_with("probe")).count();
    assert_eq!(
        probes,
        cases.len() - 3 + 1,
        "one account per identified probe: {:?}",
        status.ledger
    );
    let step = status.step;
    wait_until(&run, "training goes on", Duration::from_secs(60), || async {
        learner_status(&learner).await.step > step
    })
    .await;
    // A policy stream asked for a version from nowhere still starts with the current one.
    let mut policy = client
        .watch_policy(WatchPolicyRequest {
            node_id: "probe".into(),
            have_version: u64::MAX,
            raw_tcp: true,
        })
        .await
        .expect("policy stream")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(20), policy.message())
        .await
        .expect("a version within 20 s")
        .expect("stream")
        .expect("a message");
    assert!(!first.raw_address.is_empty(), "{first:?}");
    refused(
        "learner status interval",
        client.watch_status(WatchStatusRequest { interval_ms: 5 }).await,
        Code::InvalidArgument,
        "interval_ms:",
    );

    // The tool-server.
    let mut tools = ToolServerClient::new(tool_server.channel().await);
    let call = |tool: &str, arguments: &str, deadline_ms: u32| ToolCallRequest {
        tool: tool.into(),
        arguments_json: arguments.into(),
        deadline_ms,
        caller_id: "probe".into(),
    };
    let expression = r#"{"expression": "1+1"}"#;
    let cases = vec![
        ("no tool", call("", expression, 0), "tool:"),
        ("MB tool name", call(&"t".repeat(MEGABYTE), expression, 0), "tool:"),
        ("MB arguments", call("calculator", &"x".repeat(MEGABYTE), 0), "arguments_json:"),
        ("huge deadline", call("calculator", expression, u32::MAX), "deadline_ms:"),
    ];
    for (what, request, field) in cases {
        refused(what, tools.call(request).await, Code::InvalidArgument, field);
    }
    for (arguments, kind) in [
        ("not json", ToolErrorKind::BadArguments),
        (r#"{"expression": "1/0"}"#, ToolErrorKind::Execution),
        (r#"{"expression": 12}"#, ToolErrorKind::BadArguments),
    ] {
        let answer = tools.call(call("calculator", arguments, 0)).await.expect("answered");
        assert_eq!(answer.into_inner().error(), kind, "{arguments}");
    }
    let unknown = tools.call(call("no-such-tool", "{}", 0)).await.expect("answered").into_inner();
    assert_eq!(unknown.error(), ToolErrorKind::UnknownTool, "{unknown:?}");
    let good = tools.call(call("calculator", expression, 0)).await.expect("answered").into_inner();
    assert_eq!(good.output, "2", "the positive control");
    let status = tools.get_status(GetStatusRequest {}).await.expect("tool-server serves");
    assert!(status.into_inner().process.is_some());
}

//! The runtime end to end (issue #6): coordinator, tool-server, learners and actors as real
//! processes on loopback with a tiny model for a few steps. Each test has its own run
//! directory and ports; the logs of every process are kept there and printed on failure.

use std::time::Duration;

use paretopo_proto::v1::{CoordinatorStatus, Role};
use paretopo_tests::run::{
    TestRun, actor_status, coordinator_status, expect_clean_exit, final_ledger, learner_status,
    ledger_total, start_run, wait_until,
};
use paretopo_tests::{Server, free_addr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_flows_trajectories_steps_publishes_and_records_the_frontier() {
    // With mutual TLS, as every run the launcher starts (docs/security.md).
    let run = TestRun::new(4, 5, &[]).with_mtls();
    let (mut coordinator, mut tool_server, mut learner, mut actors) = start_run(&run, 2).await;

    // Every node registers with its role.
    wait_until(&run, "all four nodes registered", Duration::from_secs(30), || async {
        coordinator_status(&run).await.rendezvous_complete
    })
    .await;
    let status = coordinator_status(&run).await;
    let mut roles: Vec<i32> = status.nodes.iter().map(|n| n.role).collect();
    roles.sort_unstable();
    assert_eq!(
        roles,
        [Role::Learner as i32, Role::Actor as i32, Role::Actor as i32, Role::ToolServer as i32],
        "{status:?}"
    );

    // The learner steps and the actors follow its versions.
    wait_until(&run, "both actors on policy version >= 2", Duration::from_secs(120), || async {
        let mut newest = Vec::new();
        for actor in &actors {
            newest.push(actor_status(actor).await.policy_version);
        }
        newest.iter().all(|v| *v >= 2)
    })
    .await;
    for actor in &actors {
        let s = actor_status(actor).await;
        assert!(s.groups_acked > 0 && s.episodes_total >= 4, "{s:?}");
        assert_eq!(s.learner_address, learner.grpc.to_string());
    }
    let mid = learner_status(&learner).await;
    assert!(mid.groups_accepted >= 2 && mid.step >= 1, "{mid:?}");

    expect_clean_exit(&run, &mut learner, Duration::from_secs(120));
    let status = coordinator_status(&run).await;
    assert_eq!(status.step, 5, "{status:?}");
    assert_eq!(status.nodes.len(), 4);
    assert!(
        !status.frontier.is_empty() && status.weights.as_ref().is_some_and(|w| w.hypervolume > 0.0)
    );
    let weights = status.weights.clone().expect("weights");
    assert_eq!(weights.weights.len(), 3);
    assert!((weights.weights.iter().sum::<f64>() - 1.0).abs() < 1e-9);

    // The run directory: one metrics line per step, the frontier as the coordinator holds it,
    // the last checkpoint, both evaluations and the plot.
    assert_eq!(run.metrics_steps(), [1, 2, 3, 4, 5]);
    let frontier = std::fs::read_to_string(run.path().join("frontier.csv")).expect("frontier.csv");
    let mut lines = frontier.lines();
    assert_eq!(lines.next(), Some("accuracy,tool_efficiency,token_efficiency"));
    assert_eq!(lines.count(), status.frontier.len());
    let latest = std::fs::read_to_string(run.path().join("checkpoints/latest")).expect("latest");
    assert_eq!(latest.trim(), "step-5");
    for file in ["config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"]
    {
        assert!(run.path().join("checkpoints/step-5").join(file).is_file(), "{file}");
    }
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.path().join("eval.json")).expect("eval"))
            .expect("eval.json");
    for label in ["warm_start", "final"] {
        assert_eq!(eval[label]["questions"], 8, "{eval}");
        assert!(eval[label]["hypervolume"].as_f64().is_some_and(|hv| hv > 0.0), "{eval}");
    }
    assert!(run.path().join("plots/frontier.svg").is_file());

    // The ledger: each step trains `groups_per_step` groups, nothing was lost, and each actor's
    // account lies between what it had acknowledged and what it had sent.
    let ledger = final_ledger(&run);
    assert_eq!(ledger_total(&ledger, "trained"), 5 * 2, "{ledger:?}");
    assert_eq!(ledger_total(&ledger, "lost"), 0, "{ledger:?}");
    for actor in &actors {
        let s = actor_status(actor).await;
        let id = s.process.as_ref().expect("process").node_id.clone();
        let through = ledger.get(&id).map_or(0, |a| a["through"].as_u64().expect("through"));
        assert!(
            s.acked_through <= through && through <= s.acked_through + s.groups_unacked,
            "{id}: learner accounts through {through}, actor {s:?}"
        );
        assert_eq!(
            s.groups_accepted + s.groups_stale + s.groups_invalid + s.groups_duplicate,
            s.groups_acked,
            "{s:?}"
        );
    }

    for actor in &mut actors {
        actor.sigterm();
        expect_clean_exit(&run, actor, Duration::from_secs(10));
    }
    for server in [&mut tool_server, &mut coordinator] {
        server.sigterm();
        expect_clean_exit(&run, server, Duration::from_secs(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_actor_is_marked_lost_and_a_restarted_learner_resumes_from_its_checkpoint() {
    // Long enough that the learner is still training when it is stopped. The actors take
    // weights as chunks on the gRPC stream here (the other tests use the raw TCP port).
    let run = TestRun::new(4, 40, &["cluster.weights_transport=\"grpc\""]);
    let (_coordinator, _tool_server, mut learner, actors) = start_run(&run, 2).await;
    wait_until(&run, "step 2", Duration::from_secs(120), || async {
        learner_status(&learner).await.step >= 2
    })
    .await;

    // One actor dies; the coordinator marks it lost and the run goes on with the other.
    let killed = actor_status(&actors[1]).await.process.expect("process").node_id;
    assert!(killed.starts_with("actor-"), "{killed}");
    actors[1].sigkill();
    wait_until(&run, "the killed actor marked lost", Duration::from_secs(15), || async {
        coordinator_status(&run).await.nodes.iter().any(|n| n.lost && n.role == Role::Actor as i32)
    })
    .await;
    let before = learner_status(&learner).await.step;
    wait_until(&run, "two more steps with one actor", Duration::from_secs(120), || async {
        learner_status(&learner).await.step >= before + 2
    })
    .await;

    // The learner stops on SIGTERM with a checkpoint of the step it finished.
    learner.sigterm();
    expect_clean_exit(&run, &mut learner, Duration::from_secs(30));
    let saved = latest_trainer_state(&run);
    let saved_step = saved["step"].as_u64().expect("step");
    assert!(saved_step >= before + 2 && saved_step < 40, "{saved}");
    let log = std::fs::read_to_string(run.log("learner")).expect("log");
    let saved_digest =
        digest_of(&log, "checkpoint written", saved_step).expect("digest of the checkpoint");

    // Started again on the same address, it takes its own place back once the coordinator has
    // marked it lost, and resumes with the same step, weights, optimizer step and data position.
    let mut restarted = run.start("learner", "learner-restarted", learner.grpc);
    restarted.wait_serving(Duration::from_secs(60)).await;
    expect_clean_exit(&run, &mut restarted, Duration::from_secs(180));
    let log = std::fs::read_to_string(run.log("learner-restarted")).expect("log");
    let resumed =
        log.lines().find(|l| l.contains("resumed from checkpoint")).expect("resumed line");
    assert!(resumed.contains(&format!("step={saved_step} ")), "{resumed}");
    assert!(resumed.contains(&format!("optimizer_step={saved_step} ")), "{resumed}");
    assert!(
        resumed.contains(&format!("groups_consumed={} ", saved["groups_consumed"])),
        "{resumed}"
    );
    assert!(resumed.contains(&format!("digest={saved_digest}")), "{resumed}\nsaved {saved_digest}");

    // Steps after the checkpoint are redone; the committed sequence ends at T without a gap.
    let steps = run.metrics_steps();
    assert_eq!(steps.last(), Some(&40), "{steps:?}");
    let restart_at = steps.iter().rposition(|&s| s == saved_step + 1).expect("resumed step");
    assert_eq!(steps[restart_at..], (saved_step + 1..=40).collect::<Vec<_>>()[..], "{steps:?}");
    assert_eq!(
        steps[..restart_at].to_vec(),
        (1..=steps[restart_at - 1]).collect::<Vec<_>>(),
        "{steps:?}"
    );
    let status = coordinator_status(&run).await;
    assert_eq!(status.step, 40);
    let lost: Vec<&str> =
        status.nodes.iter().filter(|n| n.lost).map(|n| n.node_id.as_str()).collect();
    assert_eq!(lost, [killed.as_str()], "{status:?}");

    // The ledger covers the whole run: 40 steps' groups trained, counted once across the
    // restart (the groups queued at the stop are counted lost, not trained twice).
    let ledger = final_ledger(&run);
    assert_eq!(ledger_total(&ledger, "trained"), 40 * 2, "{ledger:?}");
    assert!(log.contains("trajectory ledger resumed"), "{log}");
}

/// A coordinator, a tool-server, two learner processes and two actors, started.
async fn two_learners(run: &TestRun) -> (Server, Server, Vec<Server>, Vec<Server>) {
    let mut coordinator = run.start("coordinator", "coordinator", run.coordinator);
    coordinator.wait_serving(Duration::from_secs(20)).await;
    let tool_server = run.start("tool-server", "tool-server", free_addr());
    let learners = (0..2).map(|i| run.start("learner", &format!("learner-{i}"), free_addr()));
    let actors = (0..2).map(|i| run.start("actor", &format!("actor-{i}"), free_addr()));
    (coordinator, tool_server, learners.collect(), actors.collect())
}

/// `trainer_state.json` of the run's newest checkpoint.
fn latest_trainer_state(run: &TestRun) -> serde_json::Value {
    let latest = std::fs::read_to_string(run.path().join("checkpoints/latest")).expect("latest");
    let path = run.path().join("checkpoints").join(latest.trim()).join("trainer_state.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("trainer_state.json")).expect("json")
}

/// The digest logged with `message` at `step=<step>`.
fn digest_of(log: &str, message: &str, step: u64) -> Option<String> {
    log.lines()
        .filter(|l| l.contains(message) && l.contains(&format!("step={step} ")))
        .find_map(|l| l.split("digest=").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cpu_learner_ranks_hold_the_same_parameters() {
    // Two learners, each fed by its own actor, all-reduce over TCP (TLS between the ranks);
    // every step both apply the same summed gradient, so they end with the same bits.
    let run = TestRun::new(5, 3, &[]).with_mtls();
    let (mut coordinator, mut tool_server, mut learners, mut actors) = two_learners(&run).await;
    for learner in &mut learners {
        expect_clean_exit(&run, learner, Duration::from_secs(180));
    }
    let digests: Vec<String> = (0..2)
        .map(|i| {
            let log = std::fs::read_to_string(run.log(&format!("learner-{i}"))).expect("log");
            digest_of(&log, "final parameters", 3)
                .unwrap_or_else(|| panic!("no digest\n{}", run.logs()))
        })
        .collect();
    assert_eq!(digests[0], digests[1], "{}", run.logs());
    // Both ranks trained: the coordinator saw every step.
    assert_eq!(coordinator_status(&run).await.step, 3);
    for server in actors.iter_mut().chain([&mut tool_server, &mut coordinator]) {
        server.sigterm();
        expect_clean_exit(&run, server, Duration::from_secs(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_learner_process_drives_two_ranks_that_hold_the_same_parameters() {
    // `learner.devices = 2` on the CPU: one process, two ranks (two replicas, the TCP
    // collective between them), the path a learner pod with several GPUs takes with NCCL.
    let run = TestRun::new(4, 3, &["learner.devices=2"]).with_mtls();
    let mut coordinator = run.start("coordinator", "coordinator", run.coordinator);
    coordinator.wait_serving(Duration::from_secs(20)).await;
    let mut tool_server = run.start("tool-server", "tool-server", free_addr());
    let mut learner = run.start("learner", "learner", free_addr());
    let mut actors: Vec<Server> =
        (0..2).map(|i| run.start("actor", &format!("actor-{i}"), free_addr())).collect();
    expect_clean_exit(&run, &mut learner, Duration::from_secs(180));
    let log = std::fs::read_to_string(run.log("learner")).expect("log");
    assert!(
        log.lines().any(|l| l.contains("rendezvous complete")
            && l.contains("first_rank=0")
            && l.contains("devices=2")
            && l.contains("world=2")),
        "{log}"
    );
    // Each rank logs its final digest: two lines, ranks 0 and 1, the same bits.
    let finals: Vec<(String, String)> = log
        .lines()
        .filter(|l| l.contains("final parameters") && l.contains("step=3 "))
        .map(|l| {
            let field = |name: &str| {
                l.split(&format!("{name}=")).nth(1).and_then(|r| r.split_whitespace().next())
            };
            (field("rank").unwrap_or_default().into(), field("digest").unwrap_or_default().into())
        })
        .collect();
    let mut ranks: Vec<&str> = finals.iter().map(|(rank, _)| rank.as_str()).collect();
    ranks.sort_unstable();
    assert_eq!(ranks, ["0", "1"], "{log}");
    assert_eq!(finals[0].1, finals[1].1, "{log}");
    assert!(!finals[0].1.is_empty(), "{log}");
    // The ranks stepped together: the coordinator saw every step, once.
    assert_eq!(coordinator_status(&run).await.step, 3);
    let ledger = final_ledger(&run);
    assert_eq!(ledger_total(&ledger, "trained"), 3 * 2, "{ledger:?}");
    for server in actors.iter_mut().chain([&mut tool_server, &mut coordinator]) {
        server.sigterm();
        expect_clean_exit(&run, server, Duration::from_secs(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_with_two_ranks_stops_cleanly_on_sigterm_with_both_ranks_groups_saved() {
    // SIGTERM reaches the ranks at different points: one waits for groups, the other may be
    // in the step's first collective already. They agree there to stop (no rank waits for the
    // 60 s deadline, none takes the lost-rank path), and the checkpoint's ledger holds both
    // ranks' groups of every step it saved.
    let run = TestRun::new(4, 200, &["learner.devices=2", "cluster.collective_timeout_ms=60000"]);
    let (mut coordinator, mut tool_server, mut learner, mut actors) = start_run(&run, 2).await;
    wait_until(&run, "step 3", Duration::from_secs(120), || async {
        learner_status(&learner).await.step >= 3
    })
    .await;
    learner.sigterm();
    expect_clean_exit(&run, &mut learner, Duration::from_secs(30));
    let state = latest_trainer_state(&run);
    let saved_step = state["step"].as_u64().expect("step");
    assert!((3..200).contains(&saved_step), "{state}");
    // groups_per_step = 2: one group per rank per step.
    let ledger = final_ledger(&run);
    assert_eq!(ledger_total(&ledger, "trained"), 2 * saved_step, "{ledger:?}");
    let log = std::fs::read_to_string(run.log("learner")).expect("log");
    assert!(!log.contains("lost learner"), "{log}");
    for server in actors.iter_mut().chain([&mut tool_server, &mut coordinator]) {
        server.sigterm();
        expect_clean_exit(&run, server, Duration::from_secs(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_one_learner_process_is_stopped_the_other_stops_with_a_checkpoint_and_an_error() {
    // Two learner processes (ranks 0 and 1). SIGTERM to rank 1 stops it cleanly; rank 0 learns
    // at the next step's first collective that a rank is stopping, writes a checkpoint and
    // exits with an error, so an orchestrator restarts the run and it resumes, and it does so
    // well before the 60 s collective deadline.
    let run = TestRun::new(5, 200, &["cluster.collective_timeout_ms=60000"]);
    let (mut coordinator, mut tool_server, mut learners, mut actors) = two_learners(&run).await;
    for learner in &mut learners {
        learner.wait_serving(Duration::from_secs(60)).await;
    }
    wait_until(&run, "step 3", Duration::from_secs(120), || async {
        coordinator_status(&run).await.step >= 3
    })
    .await;
    // The learner that became rank 1 is stopped.
    let mut ranks = Vec::new();
    for learner in &learners {
        ranks.push(learner_status(learner).await.rank);
    }
    let stopped = ranks.iter().position(|&r| r == 1).expect("a rank 1");
    learners[stopped].sigterm();
    expect_clean_exit(&run, &mut learners[stopped], Duration::from_secs(30));
    let other = &mut learners[1 - stopped];
    let (status, _) = other.wait_exit(Duration::from_secs(30)).unwrap_or_else(|| {
        panic!("rank 0 still running 30 s after rank 1 stopped\n{}", run.logs())
    });
    assert!(!status.success(), "rank 0 exited 0\n{}", run.logs());
    let log = std::fs::read_to_string(run.log(&format!("learner-{}", 1 - stopped))).expect("log");
    assert!(log.contains("another learner rank is shutting down"), "{log}");
    assert!(log.contains("resumes it"), "{log}");
    let state = latest_trainer_state(&run);
    assert!(state["step"].as_u64().expect("step") >= 3, "{state}");
    for server in actors.iter_mut().chain([&mut tool_server, &mut coordinator]) {
        server.sigterm();
        expect_clean_exit(&run, server, Duration::from_secs(10));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_restarts_from_its_state_and_the_running_workers_carry_on() {
    let run = TestRun::new(4, 30, &[]);
    let (mut coordinator, mut tool_server, mut learner, mut actors) = start_run(&run, 2).await;
    wait_until(&run, "step 3", Duration::from_secs(120), || async {
        learner_status(&learner).await.step >= 3
    })
    .await;
    let before = coordinator_status(&run).await;
    let ids = |status: &CoordinatorStatus| {
        let mut ids: Vec<String> = status.nodes.iter().map(|n| n.node_id.clone()).collect();
        ids.sort();
        ids
    };
    coordinator.sigkill();
    assert!(coordinator.wait_exit(Duration::from_secs(5)).is_some(), "SIGKILL ends it");

    // The same address and config: it resumes its archive and weights, and every worker,
    // still running, registers again under its own id.
    let mut restarted = run.start("coordinator", "coordinator-restarted", run.coordinator);
    restarted.wait_serving(Duration::from_secs(20)).await;
    wait_until(&run, "all four back in the run", Duration::from_secs(30), || async {
        let status = coordinator_status(&run).await;
        status.rendezvous_complete && status.nodes_registered == 4
    })
    .await;
    let after = coordinator_status(&run).await;
    assert_eq!(ids(&after), ids(&before), "{after:?}");
    assert!(after.step >= before.step, "the archive's step goes on: {after:?}");
    let log = std::fs::read_to_string(run.log("coordinator-restarted")).expect("log");
    assert!(log.contains("resuming the weights, archive and stage"), "{log}");
    assert!(log.contains("restored the membership"), "{log}");

    expect_clean_exit(&run, &mut learner, Duration::from_secs(180));
    assert_eq!(coordinator_status(&run).await.step, 30);
    assert_eq!(run.metrics_steps(), (1..=30).collect::<Vec<_>>(), "no worker restarted");
    for actor in &mut actors {
        actor.sigterm();
        expect_clean_exit(&run, actor, Duration::from_secs(10));
    }
    for server in [&mut tool_server, &mut restarted] {
        server.sigterm();
        expect_clean_exit(&run, server, Duration::from_secs(10));
    }
}

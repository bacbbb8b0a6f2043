//! An actor's trajectories survive the trip to the learner unchanged, and every malformed field
//! of a group is refused by name.

use actor::episode::Trajectory;
use actor::wire::to_proto;
use learner::intake::{IntakeLimits, check_group};
use paretopo_proto::v1;
use tasks::{RawMetrics, Termination};

fn trajectory(seed: i64) -> (Trajectory, Vec<f64>, RawMetrics) {
    let t = Trajectory {
        prompt: vec![5, 6, 7],
        completion: vec![10 + seed, 11, 12, 13, 14],
        logprobs: vec![-0.5, -1.25, 0.0, 0.0, -0.125],
        generated: vec![true, true, false, false, true],
        answer: Some("42".into()),
        tool_calls: 1,
        generated_tokens: 3,
        termination: Termination::Answered,
    };
    let raw = RawMetrics {
        accuracy: 1.0,
        tool_calls: 1,
        generated_tokens: 3,
        termination: Termination::Answered,
    };
    (t, vec![1.0, 0.75, 0.97], raw)
}

fn group() -> (v1::TrajectoryGroup, Vec<Trajectory>) {
    let parts: Vec<_> = (0..3).map(trajectory).collect();
    let group = v1::TrajectoryGroup {
        actor_id: "actor-0".into(),
        group_seq: 1,
        policy_version: 4,
        prompt_id: "arith:0".into(),
        prompt_tokens: 3,
        trajectories: parts.iter().map(|(t, y, raw)| to_proto(t, y, raw)).collect(),
        temperature: 1.0,
    };
    (group, parts.into_iter().map(|(t, _, _)| t).collect())
}

const LIMITS: IntakeLimits =
    IntakeLimits { objectives: 3, vocab_size: 128, max_tokens: 64, max_trajectories: 4 };

#[test]
fn trajectories_arrive_unchanged() {
    let (group, sent) = group();
    let checked = check_group(&group, &LIMITS).expect("valid group");
    assert_eq!(checked.policy_version, 4);
    assert_eq!(checked.tool_calls, vec![1, 1, 1]);
    assert_eq!(checked.objectives.len(), 9);
    for (sample, t) in checked.samples.iter().zip(&sent) {
        let tokens: Vec<i64> = t.prompt.iter().chain(&t.completion).copied().collect();
        assert_eq!(sample.tokens, tokens);
        assert_eq!(&sample.generated[3..], t.generated.as_slice());
        assert!(sample.generated[..3].iter().all(|g| !g));
        assert_eq!(&sample.old_logprobs[3..], t.logprobs.as_slice());
        assert_eq!(sample.generated_tokens() as u32, t.generated_tokens);
    }
    assert_eq!(
        group.trajectories[0].metrics.as_ref().map(|m| m.termination()),
        Some(v1::TerminationReason::Answered)
    );
}

/// A change that breaks one field of a valid group.
type Breakage = Box<dyn Fn(&mut v1::TrajectoryGroup)>;

#[test]
fn each_malformed_field_is_refused_by_name() {
    let cases: Vec<(&str, Breakage)> = vec![
        ("actor_id:", Box::new(|g| g.actor_id.clear())),
        ("actor_id:", Box::new(|g| g.actor_id = "a".repeat(1 << 20))),
        ("group_seq:", Box::new(|g| g.group_seq = 0)),
        ("prompt_id:", Box::new(|g| g.prompt_id = "p".repeat(1 << 20))),
        ("trajectories:", Box::new(|g| g.trajectories.truncate(1))),
        (
            "trajectories:",
            Box::new(|g| {
                let t = g.trajectories[0].clone();
                g.trajectories.extend(std::iter::repeat_n(t, 2));
            }),
        ),
        ("temperature:", Box::new(|g| g.temperature = 0.0)),
        ("trajectories[1].token_ids:", Box::new(|g| g.trajectories[1].token_ids[4] = 500)),
        ("trajectories[0].token_ids:", Box::new(|g| g.trajectories[0].token_ids = vec![1; 65])),
        (
            "trajectories[2].loss_mask:",
            Box::new(|g| {
                g.trajectories[2].loss_mask.pop();
            }),
        ),
        ("trajectories[0].loss_mask:", Box::new(|g| g.trajectories[0].loss_mask[4] = 2)),
        ("trajectories[0].loss_mask:", Box::new(|g| g.trajectories[0].loss_mask[0] = 1)),
        (
            "trajectories[1].sampling_logprobs:",
            Box::new(|g| g.trajectories[1].sampling_logprobs[3] = f32::NAN),
        ),
        (
            "trajectories[1].sampling_logprobs:",
            Box::new(|g| g.trajectories[1].sampling_logprobs[4] = 0.5),
        ),
        ("trajectories[2].objectives:", Box::new(|g| g.trajectories[2].objectives = None)),
        (
            "trajectories[2].objectives:",
            Box::new(|g| {
                if let Some(o) = g.trajectories[2].objectives.as_mut() {
                    o.values[1] = 1.5;
                }
            }),
        ),
    ];
    for (field, break_it) in cases {
        let (mut group, _) = group();
        break_it(&mut group);
        let err = check_group(&group, &LIMITS).expect_err(field);
        assert!(err.to_string().starts_with(field), "{field}: got {err}");
    }
}

/// The learner's intake, as the `PushTrajectories` handler drives it: a bounded queue that
/// holds an actor back when full, and a ledger that counts each group once.
mod intake_queue {
    use std::time::Duration;

    use learner::runtime::Shared;
    use paretopo_proto::v1::GroupOutcome;
    use paretopo_service::RunConfig;

    use super::{LIMITS, group};

    fn shared(
        queue_groups: u32,
    ) -> (std::sync::Arc<Shared>, tokio::sync::mpsc::Receiver<learner::runtime::Queued>) {
        let mut config = RunConfig::default();
        config.task.objectives =
            vec!["accuracy".into(), "tool_efficiency".into(), "token_efficiency".into()];
        config.limits.learner_queue_groups = queue_groups;
        let (shared, queue) = Shared::new(&config);
        shared.limits.set(LIMITS).expect("limits set once");
        (shared, queue)
    }

    fn numbered(seq: u64) -> paretopo_proto::v1::TrajectoryGroup {
        let (mut g, _) = group();
        g.group_seq = seq;
        g.policy_version = 0; // the learner's own, as it has published nothing newer
        g
    }

    #[tokio::test]
    async fn a_full_queue_holds_the_next_group_back_instead_of_buffering_it() {
        let (shared, mut queue) = shared(2);
        for seq in 1..=2 {
            let (outcome, _) = shared.accept(numbered(seq)).await.expect("taken");
            assert_eq!(outcome, GroupOutcome::Accepted);
        }
        let third = tokio::spawn({
            let shared = shared.clone();
            async move { shared.accept(numbered(3)).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!third.is_finished(), "a third group must wait while the queue holds two");
        assert_eq!(shared.accepted.load(std::sync::atomic::Ordering::Relaxed), 2);
        // The trainer takes one: the waiting group goes in.
        assert_eq!(queue.recv().await.expect("queued").group_seq, 1);
        let (outcome, _) = tokio::time::timeout(Duration::from_secs(5), third)
            .await
            .expect("the waiting group goes in once there is room")
            .expect("task")
            .expect("taken");
        assert_eq!(outcome, GroupOutcome::Accepted);
    }

    #[tokio::test]
    async fn once_intake_is_closed_groups_are_refused_and_the_ledger_stays_as_it_was() {
        let (shared, _queue) = shared(8);
        assert_eq!(shared.accept(numbered(1)).await.expect("taken").0, GroupOutcome::Accepted);
        shared.close_intake();
        let before = shared.ledger().accounts()["actor-0"];
        // The next group of the same actor, and a first group of another: neither is
        // acknowledged nor counted, so the ledger written after training holds every
        // acknowledged group.
        let mut other = numbered(1);
        other.actor_id = "actor-1".into();
        for group in [numbered(2), other] {
            let refused = shared.accept(group).await.expect_err("intake is closed");
            assert_eq!(refused.code(), tonic::Code::Unavailable);
        }
        let ledger = shared.ledger();
        assert_eq!(ledger.accounts()["actor-0"], before);
        assert!(!ledger.accounts().contains_key("actor-1"));
        assert_eq!(shared.accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn the_ledger_counts_each_group_once_and_refuses_what_it_cannot_count() {
        let (shared, _queue) = shared(8);
        assert_eq!(shared.accept(numbered(1)).await.expect("taken").0, GroupOutcome::Accepted);
        // A resend is a duplicate, not counted again.
        assert_eq!(shared.accept(numbered(1)).await.expect("taken").0, GroupOutcome::Duplicate);
        // A malformed group with an identity is counted invalid.
        let mut bad = numbered(2);
        bad.temperature = f32::NAN;
        let (outcome, error) = shared.accept(bad).await.expect("taken");
        assert_eq!(outcome, GroupOutcome::Invalid);
        assert!(error.starts_with("temperature:"), "{error}");
        // One without an identity, or one that skips ahead within a stream, is refused and
        // stored nowhere.
        let mut anonymous = numbered(3);
        anonymous.actor_id.clear();
        assert_eq!(shared.accept(anonymous).await.expect("taken").0, GroupOutcome::Invalid);
        let skipped = shared.accept(numbered(9)).await.expect_err("out of order");
        assert_eq!(skipped.code(), tonic::Code::InvalidArgument);
        assert!(skipped.message().starts_with("group_seq:"), "{}", skipped.message());
        let ledger = shared.ledger();
        let account = ledger.accounts()["actor-0"];
        assert_eq!(
            (account.through, account.queued, account.invalid, account.duplicates),
            (2, 1, 1, 1)
        );
        assert_eq!(ledger.accounts().len(), 1, "the anonymous group is stored nowhere");
        ledger.check().expect("balanced");
    }
}

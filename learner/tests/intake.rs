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

const LIMITS: IntakeLimits = IntakeLimits { objectives: 3, vocab_size: 128, max_tokens: 64 };

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
        ("trajectories:", Box::new(|g| g.trajectories.truncate(1))),
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

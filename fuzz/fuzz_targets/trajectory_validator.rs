//! Any bytes as a trajectory group a peer pushed: half the time decoded as protobuf (as the
//! learner's gRPC codec would), half the time built field by field from the bytes (which
//! reaches deep into the checks far more often). The validator must never panic, and what it
//! accepts must hold every promise training relies on.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use paretopo_intake::{IntakeLimits, check_group};
use paretopo_proto::v1::{ObjectiveVector, Trajectory, TrajectoryGroup};
use prost::Message;

const LIMITS: IntakeLimits =
    IntakeLimits { objectives: 3, vocab_size: 512, max_tokens: 256, max_trajectories: 8 };

fn built(u: &mut Unstructured<'_>) -> arbitrary::Result<TrajectoryGroup> {
    let trajectories = (0..u.int_in_range(0..=9)?)
        .map(|_| {
            let n = u.int_in_range(0..=40)?;
            let mut t = Trajectory {
                token_ids: (0..n).map(|_| u.int_in_range(0..=600)).collect::<Result<_, _>>()?,
                loss_mask: (0..n).map(|_| u.int_in_range(0..=2)).collect::<Result<_, _>>()?,
                sampling_logprobs: (0..n).map(|_| f32::arbitrary(u)).collect::<Result<_, _>>()?,
                objectives: Some(ObjectiveVector {
                    values: (0..u.int_in_range(2..=4)?)
                        .map(|_| f64::arbitrary(u))
                        .collect::<Result<_, _>>()?,
                }),
                ..Default::default()
            };
            if u.arbitrary()? {
                t.loss_mask.pop();
            }
            Ok(t)
        })
        .collect::<arbitrary::Result<Vec<_>>>()?;
    Ok(TrajectoryGroup {
        actor_id: String::arbitrary(u)?,
        group_seq: u.arbitrary()?,
        policy_version: u.arbitrary()?,
        prompt_id: String::arbitrary(u)?,
        prompt_tokens: u.int_in_range(0..=8)?,
        trajectories,
        temperature: f32::arbitrary(u)?,
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&how, rest)) = data.split_first() else { return };
    let group = if how % 2 == 0 {
        match TrajectoryGroup::decode(rest) {
            Ok(group) => group,
            Err(_) => return,
        }
    } else {
        match built(&mut Unstructured::new(rest)) {
            Ok(group) => group,
            Err(_) => return,
        }
    };
    let Ok(checked) = check_group(&group, &LIMITS) else { return };
    // What training relies on, for every accepted trajectory.
    assert_eq!(checked.samples.len(), group.trajectories.len());
    assert_eq!(checked.objectives.len(), checked.samples.len() * LIMITS.objectives);
    assert!(checked.objectives.iter().all(|v| (0.0..=1.0).contains(v)));
    for s in &checked.samples {
        assert!(!s.tokens.is_empty() && s.tokens.len() <= LIMITS.max_tokens);
        assert_eq!((s.generated.len(), s.old_logprobs.len()), (s.tokens.len(), s.tokens.len()));
        assert!(s.tokens.iter().all(|&t| (0..i64::from(LIMITS.vocab_size)).contains(&t)));
        for (g, lp) in s.generated.iter().zip(&s.old_logprobs) {
            assert!(!g || (lp.is_finite() && *lp <= 0.0));
        }
        assert!(s.generated[..group.prompt_tokens as usize].iter().all(|g| !g));
    }
});

//! `coordinator status`: the coordinator's `CoordinatorStatus` as a table for people, once or
//! on every update (`--watch`). Pure formatting, so it is tested on a message built by hand.

use std::fmt::Write as _;

use paretopo_proto::v1::{CoordinatorStatus, NodeStatus, ProcessState, Role, Stage};

fn role_name(role: i32) -> &'static str {
    match Role::try_from(role) {
        Ok(Role::Learner) => "learner",
        Ok(Role::Actor) => "actor",
        Ok(Role::ToolServer) => "tool-server",
        Ok(Role::Coordinator) => "coordinator",
        _ => "?",
    }
}

fn state_name(state: i32, lost: bool) -> &'static str {
    if lost {
        return "LOST";
    }
    match ProcessState::try_from(state) {
        Ok(ProcessState::Starting) => "starting",
        Ok(ProcessState::Serving) => "serving",
        Ok(ProcessState::Draining) => "draining",
        Ok(ProcessState::Failed) => "failed",
        _ => "?",
    }
}

/// `name=value` pairs, three decimals.
fn named(names: &[String], values: &[f64]) -> String {
    let pairs: Vec<String> =
        names.iter().zip(values).map(|(name, v)| format!("{name}={v:.3}")).collect();
    pairs.join(" ")
}

/// The role column: a learner with its global ranks ("learner 8-15"; "learner 0" for one).
fn role_label(node: &NodeStatus) -> String {
    let role = role_name(node.role);
    if node.role != Role::Learner as i32 || node.local_devices == 0 {
        return role.to_owned();
    }
    match node.local_devices {
        1 => format!("{role} {}", node.first_rank),
        n => format!("{role} {}-{}", node.first_rank, node.first_rank + n - 1),
    }
}

/// The status as text: a header with the run's progress and weights, the nodes, the frontier.
pub fn render(status: &CoordinatorStatus) -> String {
    let mut out = String::new();
    let weights = status.weights.clone().unwrap_or_default();
    let stage = match Stage::try_from(weights.stage) {
        Ok(Stage::ParetoRanking) => format!("2 (since step {})", status.stage_switch_step),
        _ => "1".to_owned(),
    };
    let _ = writeln!(
        out,
        "run {:?}  step {}/{}  stage {}  HV {:.4}  archive {}  {:.1} traj/s",
        status.process.as_ref().map_or("", |p| p.run_name.as_str()),
        status.step,
        status.total_steps,
        stage,
        weights.hypervolume,
        weights.archive_size,
        status.trajectories_per_second
    );
    let _ = writeln!(
        out,
        "weights  {} (computed at step {})",
        named(&weights.objectives, &weights.weights),
        weights.computed_at_step
    );
    if let Some(mean) = &status.latest_batch_mean {
        let _ = writeln!(out, "batch    {}", named(&weights.objectives, &mean.values));
    }
    let _ = writeln!(
        out,
        "nodes    {}/{} registered, epoch {}{}",
        status.nodes_registered,
        status.nodes_expected,
        status.membership_epoch,
        if status.rendezvous_complete { "" } else { ", waiting for the rest" }
    );
    let _ = writeln!(
        out,
        "  {:<14} {:<12} {:<21} {:<9} {:>8} {:>8} {:>7} {:>6}  last error",
        "node", "role", "address", "state", "progress", "per s", "version", "seen"
    );
    for n in &status.nodes {
        let _ = writeln!(
            out,
            "  {:<14} {:<12} {:<21} {:<9} {:>8} {:>8.2} {:>7} {:>5.1}s  {}",
            n.node_id,
            role_label(n),
            n.address,
            state_name(n.state, n.lost),
            n.progress,
            n.progress_per_second,
            n.policy_version,
            n.last_heartbeat_seconds_ago,
            n.last_error
        );
    }
    if !status.frontier.is_empty() {
        let _ = writeln!(out, "frontier ({}):", weights.objectives.join(", "));
        for p in &status.frontier {
            let values: Vec<String> = p.values.iter().map(|v| format!("{v:.3}")).collect();
            let _ = writeln!(out, "  ({})", values.join(", "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use paretopo_proto::v1::{ObjectiveVector, ObjectiveWeights};

    use super::*;

    #[test]
    fn the_table_names_every_node_and_marks_the_lost() {
        let status = CoordinatorStatus {
            nodes_expected: 2,
            nodes_registered: 1,
            step: 7,
            total_steps: 10,
            rendezvous_complete: true,
            weights: Some(ObjectiveWeights {
                objectives: vec!["accuracy".into(), "tool_efficiency".into()],
                weights: vec![0.6, 0.4],
                stage: Stage::ParetoRanking as i32,
                hypervolume: 0.25,
                ..Default::default()
            }),
            stage_switch_step: 5,
            frontier: vec![ObjectiveVector { values: vec![0.5, 0.5] }],
            nodes: vec![
                NodeStatus {
                    node_id: "learner-0".into(),
                    role: Role::Learner as i32,
                    state: ProcessState::Serving as i32,
                    progress: 7,
                    local_devices: 1,
                    ..Default::default()
                },
                NodeStatus {
                    node_id: "learner-1".into(),
                    role: Role::Learner as i32,
                    first_rank: 8,
                    local_devices: 8,
                    ..Default::default()
                },
                NodeStatus {
                    node_id: "actor-0".into(),
                    role: Role::Actor as i32,
                    lost: true,
                    last_error: "lost: no heartbeat for 6.0 s".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = render(&status);
        assert!(text.contains("step 7/10  stage 2 (since step 5)  HV 0.2500"), "{text}");
        assert!(text.contains("accuracy=0.600 tool_efficiency=0.400"), "{text}");
        let actor = text.lines().find(|l| l.contains("actor-0")).expect("actor row");
        assert!(actor.contains("LOST") && actor.contains("no heartbeat"), "{actor}");
        // A learner's row names its global ranks.
        let row = |node: &str| text.lines().find(|l| l.contains(node)).expect("learner row");
        assert!(row("learner-0").contains(" learner 0 "), "{text}");
        assert!(row("learner-1").contains(" learner 8-15 "), "{text}");
        assert!(text.contains("(0.500, 0.500)"), "{text}");
    }
}

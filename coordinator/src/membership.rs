//! Who is in the run: registration, ranks, heartbeats and lost nodes (DESIGN.md §2, §10).
//!
//! `--nodes N` counts worker processes (learners, actors, tool-servers). The rendezvous is
//! complete once N have registered; from then on it never goes back. A node that misses
//! `heartbeat_timeout` is marked lost (it stays listed, so operators see it), and a new process
//! of the same role takes the first lost slot of its role: its rank and place in the peer lists.
//! Every join and loss increases the membership epoch. This module is plain state with a clock
//! passed in, so it is tested without sleeping; the service wraps it in a lock.

use std::time::{Duration, Instant};

use paretopo_proto::v1::{NodeStatus, Peer, ProcessState, Rendezvous, Role};
use paretopo_service::config::RolePlan;

/// A role's count in a plan (0 for roles that never register).
trait PlannedCount {
    fn count(&self, role: Role) -> u32;
}

impl PlannedCount for RolePlan {
    fn count(&self, role: Role) -> u32 {
        match role {
            Role::Learner => self.learners,
            Role::Actor => self.actors,
            Role::ToolServer => self.tool_servers,
            Role::Coordinator | Role::Unspecified => 0,
        }
    }
}

/// One registered worker.
#[derive(Debug, Clone)]
pub struct Node {
    /// The id handed out at registration ("learner-0", "actor-1", ...).
    pub id: String,
    /// Its role.
    pub role: Role,
    /// Where peers reach it.
    pub address: String,
    /// Its host.
    pub hostname: String,
    /// Devices a learner drives (at least 1 for rank counting).
    pub local_devices: u32,
    /// Learners: the first global rank.
    pub first_rank: u32,
    /// The last state it reported.
    pub state: ProcessState,
    /// When it was last heard from.
    pub last_seen: Instant,
    /// Its last progress counter and when the one before it came, for a rate.
    pub progress: u64,
    /// Progress per second between its last two heartbeats.
    pub progress_per_second: f64,
    /// Its policy version.
    pub policy_version: u64,
    /// Missed its heartbeat deadline.
    pub lost: bool,
    /// The last error it reported or the coordinator saw.
    pub last_error: String,
}

/// A node as the coordinator saves it (`coordinator_state.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedNode {
    /// Its id.
    pub id: String,
    /// Its role (the proto enum's number).
    pub role: i32,
    /// Where peers reached it.
    pub address: String,
    /// Its host.
    pub hostname: String,
    /// Devices a learner drives.
    pub local_devices: u32,
    /// Learners: the first global rank.
    pub first_rank: u32,
}

/// The membership as the coordinator saves it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedMembership {
    /// `--nodes` when it was saved.
    pub expected: u32,
    /// The membership epoch.
    pub epoch: u64,
    /// The next id number per role.
    pub next_index: [u32; 5],
    /// Every node, in registration order.
    pub nodes: Vec<SavedNode>,
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegisterError {
    /// All N places are taken by live nodes.
    #[error("the run is full: {expected} workers are registered and none is lost")]
    Full {
        /// `--nodes`.
        expected: u32,
    },
    /// A learner index at or beyond the plan's learners.
    #[error("learner_index: {index} is beyond the run's {planned} learners (indexes count from 0)")]
    IndexBeyondPlan {
        /// The index asked for.
        index: u32,
        /// The plan's learners.
        planned: u32,
    },
    /// The learner's ranks overlap another live learner's.
    #[error("learner_index: ranks {first}..{end} overlap those of {other}")]
    RanksTaken {
        /// The first rank asked for.
        first: u32,
        /// One past the last.
        end: u32,
        /// The node holding them.
        other: String,
    },
    /// The role plan has no free place for this role.
    #[error("role: the run plans {planned} {}, all registered and none lost", role_name(*role, *planned))]
    RoleFull {
        /// The role that asked.
        role: Role,
        /// Its planned count.
        planned: u32,
    },
}

/// "learner" or "learners", and so on, for messages.
pub fn role_name(role: Role, count: u32) -> String {
    let name = match role {
        Role::Learner => "learner",
        Role::Actor => "actor",
        Role::ToolServer => "tool-server",
        Role::Coordinator => "coordinator",
        Role::Unspecified => "worker",
    };
    if count == 1 { name.to_owned() } else { format!("{name}s") }
}

/// The membership of one run.
#[derive(Debug)]
pub struct Membership {
    expected: u32,
    plan: Option<RolePlan>,
    timeout: Duration,
    nodes: Vec<Node>,
    epoch: u64,
    complete: bool,
    next_index: [u32; 5],
}

impl Membership {
    /// An empty membership waiting for `expected` workers, losing any silent for `timeout`.
    pub fn new(expected: u32, timeout: Duration) -> Self {
        Membership {
            expected,
            plan: None,
            timeout,
            nodes: Vec::new(),
            epoch: 0,
            complete: false,
            next_index: [0; 5],
        }
    }

    /// Accept only the workers of `plan` (its total must be `expected`): a worker whose role's
    /// places are taken is refused.
    pub fn with_plan(mut self, plan: Option<RolePlan>) -> Self {
        self.plan = plan;
        self
    }

    /// What the rendezvous still waits for, e.g. "1 learner, 2 actors" (empty once complete).
    pub fn missing(&self) -> String {
        if self.complete {
            return String::new();
        }
        // Live nodes only: after a coordinator restart, restored nodes are lost until they
        // register again, and they are what the rendezvous waits for.
        let live = |role: Role| self.nodes.iter().filter(|n| n.role == role && !n.lost).count();
        match self.plan {
            Some(plan) => [Role::Learner, Role::Actor, Role::ToolServer]
                .into_iter()
                .filter_map(|role| {
                    let missing = plan.count(role).saturating_sub(live(role) as u32);
                    (missing > 0).then(|| format!("{missing} {}", role_name(role, missing)))
                })
                .collect::<Vec<_>>()
                .join(", "),
            None => {
                let missing = self.expected.saturating_sub(self.live());
                format!("{missing} {} of any role", role_name(Role::Unspecified, missing))
            }
        }
    }

    /// The membership epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether all expected workers have registered (once true, stays true).
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Workers expected.
    pub fn expected(&self) -> u32 {
        self.expected
    }

    /// Live (not lost) registered workers.
    pub fn live(&self) -> u32 {
        self.nodes.iter().filter(|n| !n.lost).count() as u32
    }

    /// The nodes, in registration order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Registers a worker and returns its node id. A worker that names its previous id gets its
    /// own slot back; otherwise a new one takes the first lost slot of its role, or a free place.
    ///
    /// A learner that names its `learner_index` i (a Kubernetes completion index) is
    /// `learner-<i>` with first rank i x `local_devices`, and always takes that slot: a pod
    /// restarted with the same index replaces the old one even before it is marked lost.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &mut self,
        role: Role,
        address: &str,
        hostname: &str,
        local_devices: u32,
        previous_id: &str,
        learner_index: Option<u32>,
        now: Instant,
    ) -> Result<String, RegisterError> {
        let indexed = match (role, learner_index) {
            (Role::Learner, Some(index)) => {
                if let Some(plan) = self.plan
                    && index >= plan.learners
                {
                    return Err(RegisterError::IndexBeyondPlan { index, planned: plan.learners });
                }
                Some((format!("learner-{index}"), index * local_devices.max(1)))
            }
            _ => None,
        };
        let slot = match &indexed {
            Some((id, _)) => self.nodes.iter().position(|n| &n.id == id),
            None => self
                .nodes
                .iter()
                .position(|n| !previous_id.is_empty() && n.id == previous_id && n.role == role)
                .or_else(|| self.nodes.iter().position(|n| n.lost && n.role == role)),
        };
        let fresh = |id: String, first_rank: u32| Node {
            id,
            role,
            address: address.to_owned(),
            hostname: hostname.to_owned(),
            local_devices: local_devices.max(1),
            first_rank,
            state: ProcessState::Starting,
            last_seen: now,
            progress: 0,
            progress_per_second: 0.0,
            policy_version: 0,
            lost: false,
            last_error: String::new(),
        };
        let id = match slot {
            Some(i) => {
                // The replacement keeps the slot's rank so its peers' views stay valid.
                let (old_id, first_rank) = (self.nodes[i].id.clone(), self.nodes[i].first_rank);
                let id = if old_id == previous_id || indexed.is_some() {
                    old_id
                } else {
                    self.new_id(role)
                };
                let node = fresh(id.clone(), first_rank);
                self.nodes[i] = node;
                id
            }
            None => {
                if self.nodes.len() as u32 >= self.expected {
                    return Err(RegisterError::Full { expected: self.expected });
                }
                let registered = self.nodes.iter().filter(|n| n.role == role).count() as u32;
                if let Some(planned) = self.plan.map(|plan| plan.count(role))
                    && registered >= planned
                {
                    return Err(RegisterError::RoleFull { role, planned });
                }
                let (id, first_rank) = match indexed {
                    Some((id, first_rank)) => (id, first_rank),
                    None => {
                        let first_rank = self
                            .nodes
                            .iter()
                            .filter(|n| n.role == Role::Learner)
                            .map(|n| n.local_devices)
                            .sum();
                        (self.new_id(role), first_rank)
                    }
                };
                if role == Role::Learner {
                    let end = first_rank + local_devices.max(1);
                    let overlap = self.nodes.iter().find(|n| {
                        n.role == Role::Learner
                            && !n.lost
                            && n.first_rank < end
                            && first_rank < n.first_rank + n.local_devices
                    });
                    if let Some(other) = overlap {
                        return Err(RegisterError::RanksTaken {
                            first: first_rank,
                            end,
                            other: other.id.clone(),
                        });
                    }
                }
                self.nodes.push(fresh(id.clone(), first_rank));
                id
            }
        };
        self.epoch += 1;
        if self.live() >= self.expected {
            self.complete = true;
        }
        Ok(id)
    }

    /// What a restarted coordinator needs to give every worker its place back.
    pub fn save(&self) -> SavedMembership {
        SavedMembership {
            expected: self.expected,
            epoch: self.epoch,
            next_index: self.next_index,
            nodes: self
                .nodes
                .iter()
                .map(|n| SavedNode {
                    id: n.id.clone(),
                    role: n.role as i32,
                    address: n.address.clone(),
                    hostname: n.hostname.clone(),
                    local_devices: n.local_devices,
                    first_rank: n.first_rank,
                })
                .collect(),
        }
    }

    /// The membership a restarted coordinator starts from: every saved node is listed as lost
    /// until it registers again. A running worker does so on its next heartbeat (naming its
    /// id, it gets its own slot and rank back); a new process takes a lost slot of its role.
    /// The rendezvous completes again once all `expected` places are live. `None` when the
    /// saved membership was for another number of workers.
    pub fn restore(
        saved: SavedMembership,
        expected: u32,
        timeout: Duration,
        now: Instant,
    ) -> Option<Membership> {
        if saved.expected != expected || saved.nodes.len() as u32 > expected {
            return None;
        }
        let nodes = saved
            .nodes
            .into_iter()
            .map(|n| Node {
                id: n.id,
                role: Role::try_from(n.role).unwrap_or(Role::Unspecified),
                address: n.address,
                hostname: n.hostname,
                local_devices: n.local_devices.max(1),
                first_rank: n.first_rank,
                state: ProcessState::Failed,
                last_seen: now,
                progress: 0,
                progress_per_second: 0.0,
                policy_version: 0,
                lost: true,
                last_error: "not registered again since the coordinator restarted".into(),
            })
            .collect();
        Some(Membership {
            expected,
            plan: None,
            timeout,
            nodes,
            epoch: saved.epoch + 1,
            complete: false,
            next_index: saved.next_index,
        })
    }

    fn new_id(&mut self, role: Role) -> String {
        let name = match role {
            Role::Learner => "learner",
            Role::Actor => "actor",
            Role::ToolServer => "tool-server",
            Role::Coordinator | Role::Unspecified => "node",
        };
        // Skip ids that indexed learners already hold.
        loop {
            let index = &mut self.next_index[role as usize];
            let id = format!("{name}-{index}");
            *index += 1;
            if !self.nodes.iter().any(|n| n.id == id) {
                return id;
            }
        }
    }

    /// Records a heartbeat; false when the node is unknown or was lost (it must register again).
    pub fn heartbeat(
        &mut self,
        id: &str,
        state: ProcessState,
        progress: u64,
        policy_version: u64,
        last_error: &str,
        now: Instant,
    ) -> bool {
        let Some(node) = self.nodes.iter_mut().find(|n| n.id == id && !n.lost) else {
            return false;
        };
        let elapsed = now.saturating_duration_since(node.last_seen).as_secs_f64();
        if elapsed > 0.0 && progress >= node.progress {
            node.progress_per_second = (progress - node.progress) as f64 / elapsed;
        }
        node.last_seen = now;
        node.state = state;
        node.progress = progress;
        node.policy_version = policy_version;
        if !last_error.is_empty() {
            node.last_error = last_error.to_owned();
        }
        true
    }

    /// Marks every node silent for longer than the timeout as lost; returns the ids just lost.
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut lost = Vec::new();
        for node in self.nodes.iter_mut().filter(|n| !n.lost) {
            if now.saturating_duration_since(node.last_seen) > self.timeout {
                node.lost = true;
                node.state = ProcessState::Failed;
                node.last_error = format!(
                    "lost: no heartbeat for {:.1} s",
                    now.saturating_duration_since(node.last_seen).as_secs_f64()
                );
                lost.push(node.id.clone());
            }
        }
        if !lost.is_empty() {
            self.epoch += 1;
        }
        lost
    }

    /// Whether `id` is a live learner with first rank 0.
    pub fn is_rank_zero_learner(&self, id: &str) -> bool {
        self.nodes.iter().any(|n| n.id == id && n.role == Role::Learner && n.first_rank == 0)
    }

    /// The rendezvous as node `id` sees it (its own first rank); live nodes only.
    pub fn rendezvous(&self, id: &str, nccl_unique_id: &[u8]) -> Rendezvous {
        let peers = |role: Role| -> Vec<Peer> {
            let mut peers: Vec<Peer> = self
                .nodes
                .iter()
                .filter(|n| n.role == role && !n.lost)
                .map(|n| Peer {
                    node_id: n.id.clone(),
                    role: role as i32,
                    address: n.address.clone(),
                    first_rank: if role == Role::Learner { n.first_rank } else { 0 },
                    local_devices: if role == Role::Learner { n.local_devices } else { 0 },
                })
                .collect();
            peers.sort_by_key(|p| p.first_rank);
            peers
        };
        let learners = peers(Role::Learner);
        Rendezvous {
            membership_epoch: self.epoch,
            world_size: learners.iter().map(|p| p.local_devices).sum(),
            first_rank: self.nodes.iter().find(|n| n.id == id).map_or(0, |n| n.first_rank),
            learners,
            tool_servers: peers(Role::ToolServer),
            actors: peers(Role::Actor),
            nccl_unique_id: nccl_unique_id.to_vec(),
            collective_address: String::new(),
        }
    }

    /// Every node as operators see it.
    pub fn statuses(&self, now: Instant) -> Vec<NodeStatus> {
        self.nodes
            .iter()
            .map(|n| NodeStatus {
                node_id: n.id.clone(),
                role: n.role as i32,
                address: n.address.clone(),
                hostname: n.hostname.clone(),
                state: n.state as i32,
                last_heartbeat_seconds_ago: now
                    .saturating_duration_since(n.last_seen)
                    .as_secs_f64(),
                progress: n.progress,
                policy_version: n.policy_version,
                lost: n.lost,
                last_error: n.last_error.clone(),
                progress_per_second: n.progress_per_second,
                first_rank: n.first_rank,
                local_devices: if n.role == Role::Learner { n.local_devices } else { 0 },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(m: &mut Membership, role: Role, addr: &str, now: Instant) -> String {
        m.register(role, addr, "host", 0, "", None, now).expect("register")
    }

    #[test]
    fn rendezvous_completes_at_n_and_ranks_learners_in_order() {
        let t0 = Instant::now();
        let mut m = Membership::new(4, Duration::from_secs(5));
        let a = join(&mut m, Role::Actor, "a:1", t0);
        let l0 = m.register(Role::Learner, "l:1", "h", 2, "", None, t0).expect("l0");
        assert!(!m.complete());
        let l1 = join(&mut m, Role::Learner, "l:2", t0);
        let _t = join(&mut m, Role::ToolServer, "t:1", t0);
        assert!(m.complete());
        assert_eq!(m.epoch(), 4);
        let view = m.rendezvous(&l1, b"");
        assert_eq!((view.world_size, view.first_rank), (3, 2), "learner 0 drives 2 devices");
        assert_eq!(view.learners.iter().map(|p| p.node_id.clone()).collect::<Vec<_>>(), [l0, l1]);
        assert_eq!(m.rendezvous(&a, b"").actors.len(), 1);
        assert_eq!(m.rendezvous(&a, b"").tool_servers[0].address, "t:1");
        let err = m.register(Role::Actor, "a:2", "h", 0, "", None, t0).expect_err("full");
        assert_eq!(err, RegisterError::Full { expected: 4 });
    }

    #[test]
    fn a_silent_node_is_lost_and_a_replacement_takes_its_place() {
        let t0 = Instant::now();
        let mut m = Membership::new(2, Duration::from_secs(5));
        let a0 = join(&mut m, Role::Actor, "a:1", t0);
        let l = join(&mut m, Role::Learner, "l:1", t0);
        let t1 = t0 + Duration::from_secs(4);
        assert!(m.heartbeat(&l, ProcessState::Serving, 10, 3, "", t1));
        assert!(m.expire(t1).is_empty());
        let t2 = t0 + Duration::from_secs(6);
        assert_eq!(m.expire(t2), std::slice::from_ref(&a0));
        let epoch = m.epoch();
        assert_eq!(m.live(), 1);
        let status = m.statuses(t2);
        assert!(status[0].lost && status[0].last_error.contains("no heartbeat"));
        assert!(!m.heartbeat(&a0, ProcessState::Serving, 1, 1, "", t2), "lost nodes must rejoin");
        assert!(m.rendezvous(&l, b"").actors.is_empty(), "peers list live nodes only");
        // A new actor takes the lost one's slot; a learner cannot.
        let a1 = join(&mut m, Role::Actor, "a:9", t2);
        assert_ne!(a1, a0);
        assert!(m.epoch() > epoch);
        assert_eq!(m.nodes().len(), 2);
        assert_eq!(m.rendezvous(&l, b"").actors[0].address, "a:9");
        assert!(m.register(Role::Learner, "l:2", "h", 0, "", None, t2).is_err());
        // Progress rate from two heartbeats: 10 -> 30 over 2 s.
        assert!(m.heartbeat(&l, ProcessState::Serving, 30, 4, "", t2 + Duration::from_secs(0)));
        let rate = m.statuses(t2).iter().find(|s| s.node_id == l).map(|s| s.progress_per_second);
        assert_eq!(rate, Some(10.0));
    }

    #[test]
    fn a_role_plan_refuses_extra_workers_of_a_role_and_names_the_missing_ones() {
        let t0 = Instant::now();
        let plan = RolePlan { learners: 2, actors: 1, tool_servers: 1 };
        let mut m = Membership::new(4, Duration::from_secs(5)).with_plan(Some(plan));
        assert_eq!(m.missing(), "2 learners, 1 actor, 1 tool-server");
        join(&mut m, Role::Actor, "a:1", t0);
        let err =
            m.register(Role::Actor, "a:2", "h", 0, "", None, t0).expect_err("one actor planned");
        assert_eq!(err, RegisterError::RoleFull { role: Role::Actor, planned: 1 });
        assert!(err.to_string().contains("plans 1 actor,"), "{err}");
        join(&mut m, Role::Learner, "l:1", t0);
        assert_eq!(m.missing(), "1 learner, 1 tool-server");
        join(&mut m, Role::Learner, "l:2", t0);
        join(&mut m, Role::ToolServer, "t:1", t0);
        assert!(m.complete());
        assert_eq!(m.missing(), "");
        // Without a plan, any mix is counted.
        let mut any = Membership::new(3, Duration::from_secs(5));
        join(&mut any, Role::Actor, "a:1", t0);
        assert_eq!(any.missing(), "2 workers of any role");
    }

    #[test]
    fn indexed_learners_rank_by_index_and_a_restarted_index_takes_its_slot() {
        let t0 = Instant::now();
        let plan = RolePlan { learners: 2, actors: 1, tool_servers: 0 };
        let mut m = Membership::new(3, Duration::from_secs(5)).with_plan(Some(plan));
        // Index 1 registers first, with 2 GPUs: ranks 2..4; index 0 then gets ranks 0..2.
        let one = m.register(Role::Learner, "l1:1", "h", 2, "", Some(1), t0).expect("index 1");
        let zero = m.register(Role::Learner, "l0:1", "h", 2, "", Some(0), t0).expect("index 0");
        assert_eq!((one.as_str(), zero.as_str()), ("learner-1", "learner-0"));
        assert_eq!(m.rendezvous(&one, b"").first_rank, 2);
        assert_eq!(m.rendezvous(&zero, b"").first_rank, 0);
        assert!(m.is_rank_zero_learner(&zero));
        let err = m.register(Role::Learner, "l:9", "h", 1, "", Some(2), t0).expect_err("beyond");
        assert_eq!(err, RegisterError::IndexBeyondPlan { index: 2, planned: 2 });
        // A pod restarted with index 1 takes learner-1's slot at once, with its new address.
        let again = m.register(Role::Learner, "l1:2", "h", 2, "", Some(1), t0).expect("restart");
        assert_eq!(again, "learner-1");
        assert_eq!(m.nodes().len(), 2);
        assert_eq!(m.rendezvous(&zero, b"").learners[1].address, "l1:2");
        // An actor's id never collides with the learners' ids.
        let actor = m.register(Role::Actor, "a:1", "h", 0, "", Some(7), t0).expect("actor");
        assert_eq!(actor, "actor-0", "a learner index means nothing for an actor");
    }

    #[test]
    fn an_unindexed_learner_cannot_take_an_indexed_learners_ranks() {
        let t0 = Instant::now();
        let mut m = Membership::new(3, Duration::from_secs(5));
        m.register(Role::Learner, "l1:1", "h", 1, "", Some(1), t0).expect("index 1");
        // Registration order would give the unindexed one rank 1, which index 1 holds.
        let err = m.register(Role::Learner, "l0:1", "h", 1, "", None, t0).expect_err("overlap");
        assert_eq!(err, RegisterError::RanksTaken { first: 1, end: 2, other: "learner-1".into() });
        assert_eq!(m.nodes().len(), 1, "nothing stored");
    }

    #[test]
    fn a_restored_membership_waits_for_its_nodes_and_gives_each_its_slot_back() {
        let t0 = Instant::now();
        let mut m = Membership::new(3, Duration::from_secs(5));
        let l0 = m.register(Role::Learner, "l:1", "h", 1, "", None, t0).expect("l0");
        let l1 = m.register(Role::Learner, "l:2", "h", 1, "", None, t0).expect("l1");
        let a = join(&mut m, Role::Actor, "a:1", t0);
        assert!(m.complete());
        let saved = m.save();
        let mut back =
            Membership::restore(saved.clone(), 3, Duration::from_secs(5), t0).expect("same size");
        assert!(!back.complete() && back.live() == 0 && back.epoch() > m.epoch());
        assert_eq!(back.missing(), "3 workers of any role", "restored nodes are not back yet");
        // Running workers come back on their next heartbeat, naming their ids, in any order.
        assert!(!back.heartbeat(&l1, ProcessState::Serving, 1, 1, "", t0), "must register again");
        assert_eq!(back.register(Role::Learner, "l:2", "h", 1, &l1, None, t0).expect("l1"), l1);
        assert_eq!(back.register(Role::Actor, "a:1", "h", 0, &a, None, t0).expect("a"), a);
        assert!(!back.complete());
        // A new process in place of learner 0 takes its slot and rank.
        let new = back.register(Role::Learner, "l:9", "h", 1, "", None, t0).expect("new l0");
        assert!(back.complete());
        assert_eq!(back.rendezvous(&new, b"").first_rank, 0);
        assert_eq!(back.rendezvous(&l1, b"").first_rank, 1);
        assert_ne!(new, l0, "a new process gets a new id");
        assert!(back.is_rank_zero_learner(&new));
        // Saved for another number of workers: not restored.
        assert!(Membership::restore(saved, 4, Duration::from_secs(5), t0).is_none());
    }

    #[test]
    fn a_restarted_worker_naming_its_id_gets_its_slot_back() {
        let t0 = Instant::now();
        let mut m = Membership::new(1, Duration::from_secs(5));
        let l = join(&mut m, Role::Learner, "l:1", t0);
        let again = m.register(Role::Learner, "l:7", "h", 0, &l, None, t0).expect("rejoin");
        assert_eq!(again, l);
        assert_eq!(m.rendezvous(&l, b"id").learners[0].address, "l:7");
        assert_eq!(m.rendezvous(&l, b"id").nccl_unique_id, b"id");
    }
}

//! A worker's side of membership (DESIGN.md §2): register with the coordinator, wait for the
//! rendezvous, and heartbeat with progress until shutdown, registering again (under the same
//! id) when the coordinator has lost track of the node. Every role does this the same way, so
//! it lives here; what a role does with its peers is the role's business.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use paretopo_proto::v1::coordinator_client::CoordinatorClient;
use paretopo_proto::v1::{GetRendezvousRequest, HeartbeatRequest, RegisterRequest, Rendezvous};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{Process, RunConfig};

/// What a worker tells the coordinator in each heartbeat; the role's loop updates it.
#[derive(Debug, Default)]
pub struct Progress {
    /// Role-specific progress (learner steps, actor episodes, tool calls served).
    pub progress: AtomicU64,
    /// The policy version held.
    pub policy_version: AtomicU64,
    /// The last error, empty if none.
    pub last_error: Mutex<String>,
}

impl Progress {
    /// Records an error for the next heartbeat.
    pub fn error(&self, message: impl Into<String>) {
        *self.last_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = message.into();
    }
}

/// A registered worker.
#[derive(Debug, Clone)]
pub struct Member {
    /// The coordinator client.
    pub client: CoordinatorClient<Channel>,
    /// This node's id.
    pub node_id: String,
    /// The heartbeat interval the coordinator asked for.
    pub heartbeat_interval: Duration,
    /// The learner index it registered with, to register again with the same one.
    learner_index: Option<u32>,
}

/// The process shut down while waiting to join the run: a clean stop, not a failure (callers
/// tell it apart with `anyhow::Error::is::<Stopped>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shut down before {0}")]
pub struct Stopped(pub &'static str);

/// The wait between reconnection attempts of a long-lived stream or a registration: 100 ms,
/// doubling up to 2 s.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Backoff::FIRST }
    }
}

impl Backoff {
    /// The first wait.
    pub const FIRST: Duration = Duration::from_millis(100);
    /// The longest wait.
    pub const MAX: Duration = Duration::from_secs(2);

    /// Starts again from the first wait (after a success).
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }

    /// Sleeps the current wait and doubles the next; false when `shutdown` came first.
    pub async fn wait(&mut self, shutdown: &CancellationToken) -> bool {
        let slept = tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(self.next) => true,
        };
        self.next = (self.next * 2).min(Self::MAX);
        slept
    }
}

/// Registers with `cluster.coordinator_address`, retrying with backoff until the coordinator
/// answers or the process shuts down. `nccl_unique_id` and `collective_address` are what a
/// learner offers in case it becomes rank 0; other roles pass them empty.
pub async fn register(
    config: &RunConfig,
    process: &Process,
    local_devices: u32,
    nccl_unique_id: Vec<u8>,
    collective_address: String,
) -> anyhow::Result<Member> {
    let address = &config.cluster.coordinator_address;
    let mut client = CoordinatorClient::new(process.channel(address, crate::Role::Coordinator)?);
    let request = RegisterRequest {
        role: process.role().to_proto() as i32,
        advertised_address: process.peer_address(),
        hostname: process.info().hostname,
        local_devices,
        run_name: config.run.name.clone(),
        previous_node_id: String::new(),
        nccl_unique_id,
        collective_address,
        learner_index: if process.role() == crate::Role::Learner {
            config.learner.index
        } else {
            None
        },
    };
    let mut backoff = Backoff::default();
    loop {
        let attempt = client.register(request.clone());
        let reply = tokio::select! {
            () = process.shutdown().cancelled() => return Err(Stopped("registering").into()),
            reply = attempt => reply,
        };
        match reply {
            Ok(reply) => {
                let reply = reply.into_inner();
                process.set_node_id(&reply.node_id);
                tracing::info!(node = %reply.node_id, coordinator = %address, "registered");
                return Ok(Member {
                    client,
                    node_id: reply.node_id,
                    heartbeat_interval: Duration::from_millis(
                        reply.heartbeat_interval_ms.max(100).into(),
                    ),
                    learner_index: request.learner_index,
                });
            }
            // An unreachable coordinator is worth waiting for, and so is a full run: a
            // replacement waits until the node it replaces is marked lost. Other refusals
            // are final.
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tracing::debug!(error = %status.message(), "coordinator not reachable yet");
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                tracing::info!(error = %status.message(), "waiting for a place in the run");
            }
            Err(status) => {
                anyhow::bail!(
                    "the coordinator at {address} refused registration: {}",
                    status.message()
                )
            }
        }
        if !backoff.wait(process.shutdown()).await {
            return Err(Stopped("registering").into());
        }
    }
}

impl Member {
    /// Waits for the rendezvous (all `--nodes` workers registered).
    pub async fn rendezvous(&mut self, process: &Process) -> anyhow::Result<Rendezvous> {
        let request = GetRendezvousRequest { node_id: self.node_id.clone() };
        loop {
            let attempt = self.client.get_rendezvous(request.clone());
            let reply = tokio::select! {
                () = process.shutdown().cancelled() => return Err(Stopped("the rendezvous").into()),
                reply = attempt => reply,
            };
            match reply {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(status) => anyhow::bail!("rendezvous: {}", status.message()),
            }
        }
    }

    /// Heartbeats every interval until shutdown; registers again under the same id when the
    /// coordinator says it lost the node.
    pub fn spawn_heartbeats(&self, process: Arc<Process>, progress: Arc<Progress>) {
        let mut member = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(member.heartbeat_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = process.shutdown().cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let last_error = progress
                    .last_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone();
                let request = HeartbeatRequest {
                    node_id: member.node_id.clone(),
                    state: process.state() as i32,
                    progress: progress.progress.load(Ordering::Relaxed),
                    policy_version: progress.policy_version.load(Ordering::Relaxed),
                    last_error,
                };
                match member.client.heartbeat(request).await {
                    Ok(reply) if reply.get_ref().reregister => member.rejoin(&process).await,
                    Ok(_) => {}
                    Err(status) => {
                        tracing::warn!(error = %status.message(), "heartbeat failed");
                    }
                }
            }
        });
    }

    async fn rejoin(&mut self, process: &Process) {
        let request = RegisterRequest {
            role: process.role().to_proto() as i32,
            advertised_address: process.peer_address(),
            hostname: process.info().hostname,
            run_name: process.info().run_name,
            previous_node_id: self.node_id.clone(),
            learner_index: self.learner_index,
            ..Default::default()
        };
        match self.client.register(request).await {
            Ok(reply) => {
                tracing::warn!(node = %reply.get_ref().node_id, "the coordinator had lost this node; registered again");
                self.node_id = reply.into_inner().node_id;
            }
            Err(status) => tracing::warn!(error = %status.message(), "registering again failed"),
        }
    }
}

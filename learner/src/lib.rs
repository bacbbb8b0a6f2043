//! The paretopo learner: takes trajectory groups from actors, computes advantages, updates the
//! policy, all-reduces gradients across ranks, and publishes weights (`paretopo.v1.Learner`).
//!
//! Modules: [`intake`] (checking an actor's group field by field), [`estimator`] (a group's
//! advantages under `algorithm.method`), [`loss`] and [`step`] (spec §4's loss and one rank's
//! gradient), [`collective`] (the all-reduce between CPU ranks over TCP), [`warm_start`] (the
//! supervised start on demonstrations), [`nccl`] (the all-reduce on CUDA), [`checkpoint`] (save and resume), [`eval`] (held-out
//! evaluation), [`weights_server`] (policy versions over plain TCP) and [`runtime`] (the
//! process: intake queue, training loop, publication). The
//! gRPC service in this file is the intake stream, the policy stream and status.

pub mod checkpoint;
pub mod collective;
pub mod estimator;
pub mod eval;
pub use paretopo_intake as intake;
pub mod ledger;
pub mod loss;
pub mod malloc;
pub mod nccl;
pub mod runtime;
pub mod step;
pub mod warm_start;
pub mod weights_server;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use paretopo_proto::v1::learner_server::{Learner, LearnerServer};
use paretopo_proto::v1::{
    GetStatusRequest, GroupAccount, LearnerStatus, PushAck, TrajectoryGroup, WatchPolicyRequest,
    WatchStatusRequest, WeightChunk,
};
use paretopo_service::cli::Launch;
use paretopo_service::metrics::{Sample, StatusMetrics};
use paretopo_service::{Process, cluster, status};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

use crate::runtime::Shared;

/// The `Learner` gRPC service.
#[derive(Debug, Clone)]
pub struct LearnerService {
    process: Arc<Process>,
    device: String,
    total_steps: u64,
    shared: Arc<Shared>,
}

impl LearnerService {
    /// The service over `shared` (the training loop's state), for `run` and for benchmarks
    /// that drive the intake and the policy stream without a trainer.
    pub fn new(
        process: Arc<Process>,
        device: String,
        total_steps: u64,
        shared: Arc<Shared>,
    ) -> Self {
        LearnerService { process, device, total_steps, shared }
    }

    /// The status as Prometheus samples (`paretopo_learner_*`).
    fn samples(&self) -> Vec<Sample> {
        let s = self.snapshot();
        let mut samples = vec![
            Sample::gauge("paretopo_learner_step", "RL steps completed", s.step as f64),
            Sample::gauge(
                "paretopo_learner_total_steps",
                "RL steps the run trains",
                s.total_steps as f64,
            ),
            Sample::gauge(
                "paretopo_learner_policy_version",
                "The newest policy version published",
                s.policy_version as f64,
            ),
            Sample::gauge("paretopo_learner_rank", "This learner's global rank", s.rank.into()),
            Sample::gauge(
                "paretopo_learner_world_size",
                "Learner ranks in the collective",
                s.world_size.into(),
            ),
            Sample::gauge(
                "paretopo_learner_queued_groups",
                "Groups waiting for a step",
                s.queued_groups.into(),
            ),
            Sample::counter(
                "paretopo_learner_groups_accepted",
                "Groups accepted for training",
                s.groups_accepted as f64,
            ),
            Sample::counter(
                "paretopo_learner_groups_stale",
                "Groups dropped as too old a policy",
                s.groups_stale as f64,
            ),
            Sample::counter(
                "paretopo_learner_groups_duplicate",
                "Groups dropped as already received",
                s.groups_duplicate as f64,
            ),
            Sample::counter(
                "paretopo_learner_groups_invalid",
                "Groups refused as malformed",
                s.groups_invalid as f64,
            ),
        ];
        // The run's trajectory ledger, summed over actors, by state.
        let t = self.shared.ledger().totals();
        for (state, value) in [
            ("queued", t.queued),
            ("trained", t.trained),
            ("stale", t.stale),
            ("invalid", t.invalid),
            ("lost", t.lost),
        ] {
            let mut sample = Sample::gauge(
                "paretopo_learner_ledger_groups",
                "The run's pushed groups by what became of them (the trajectory ledger)",
                value as f64,
            );
            sample.labels.push(("state", state.to_owned()));
            samples.push(sample);
        }
        samples
    }

    fn snapshot(&self) -> LearnerStatus {
        let s = &self.shared;
        let phase = s.phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let weights = s.objective_weights.borrow().clone();
        let world = s.world.load(Ordering::Relaxed) as u32;
        LearnerStatus {
            process: Some(self.process.info()),
            rank: s.rank.load(Ordering::Relaxed) as u32,
            world_size: world,
            step: s.step.load(Ordering::Relaxed),
            policy_version: s.policy_version.load(Ordering::Relaxed),
            queued_groups: s.queued.load(Ordering::Relaxed) as u32,
            groups_accepted: s.accepted.load(Ordering::Relaxed),
            groups_stale: s.stale.load(Ordering::Relaxed),
            stage: weights.stage,
            weights: Some(weights),
            device: self.device.clone(),
            collective: s.collective.get().copied().unwrap_or("none").to_owned(),
            phase: phase.name,
            phase_done: phase.done,
            phase_total: phase.total,
            groups_duplicate: s.duplicate.load(Ordering::Relaxed),
            groups_invalid: s.invalid.load(Ordering::Relaxed),
            total_steps: self.total_steps,
            ledger: s
                .ledger()
                .accounts()
                .iter()
                .map(|(actor, a)| GroupAccount {
                    actor_id: actor.clone(),
                    through: a.through,
                    queued: a.queued,
                    trained: a.trained,
                    stale: a.stale,
                    invalid: a.invalid,
                    lost: a.lost,
                    duplicates: a.duplicates,
                })
                .collect(),
        }
    }
}

type AckStream = ReceiverStream<Result<PushAck, Status>>;
type ChunkStream = ReceiverStream<Result<WeightChunk, Status>>;

#[tonic::async_trait]
impl Learner for LearnerService {
    type PushTrajectoriesStream = AckStream;

    async fn push_trajectories(
        &self,
        request: Request<Streaming<TrajectoryGroup>>,
    ) -> Result<Response<AckStream>, Status> {
        let mut groups = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let shared = self.shared.clone();
        let shutdown = self.process.shutdown().clone();
        tokio::spawn(async move {
            let mut accepted_total = 0;
            loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = groups.message() => next,
                };
                let group = match next {
                    Ok(Some(group)) => group,
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(error = %status.message(), "an actor's stream ended");
                        return;
                    }
                };
                let (actor_id, group_seq) = (group.actor_id.clone(), group.group_seq);
                let accepted = tokio::select! {
                    () = shutdown.cancelled() => return,
                    result = shared.accept(group) => result,
                };
                let (outcome, error) = match accepted {
                    Ok(decided) => decided,
                    Err(status) => {
                        // Not acknowledged: the actor sends the group again on a new stream.
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                if outcome == paretopo_proto::v1::GroupOutcome::Accepted {
                    accepted_total += 1;
                }
                let ack = PushAck {
                    actor_id,
                    group_seq,
                    outcome: outcome as i32,
                    error,
                    accepted_total,
                    policy_version: shared.policy_version.load(Ordering::Relaxed),
                };
                if tx.send(Ok(ack)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type WatchPolicyStream = ChunkStream;

    async fn watch_policy(
        &self,
        request: Request<WatchPolicyRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let request = request.into_inner();
        let mut have = request.have_version;
        // Notices instead of chunks, when asked for and this learner serves a raw port.
        let raw_address = self.shared.raw_address.get().cloned().filter(|_| request.raw_tcp);
        let (tx, rx) = mpsc::channel(4);
        let mut published = self.shared.published.subscribe();
        let shutdown = self.process.shutdown().clone();
        tokio::spawn(async move {
            loop {
                let current = published.borrow_and_update().clone();
                // Send a version the subscriber lacks: a newer one, or an older one after a
                // restart from a checkpoint (the subscriber's is then no longer the learner's).
                if let Some(version) = current.filter(|v| v.version + 1 != have) {
                    // One notice naming the raw port, or the version's chunks.
                    let notice: Vec<WeightChunk> = raw_address
                        .iter()
                        .map(|address| WeightChunk {
                            version: version.version,
                            last: true,
                            tensor_count: version.chunks.last().map_or(0, |c| c.tensor_count),
                            raw_address: address.clone(),
                            ..Default::default()
                        })
                        .collect();
                    let messages = if notice.is_empty() { &version.chunks } else { &notice };
                    for message in messages {
                        let sent = tokio::select! {
                            () = shutdown.cancelled() => return,
                            sent = tx.send(Ok(message.clone())) => sent,
                        };
                        if sent.is_err() {
                            return; // the actor went away
                        }
                    }
                    have = version.version + 1;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = published.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<LearnerStatus>, Status> {
        Ok(Response::new(self.snapshot()))
    }

    type WatchStatusStream = status::StatusStream<LearnerStatus>;

    async fn watch_status(
        &self,
        request: Request<WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let this = self.clone();
        status::respond(&self.process, request.get_ref(), move || this.snapshot())
    }
}

/// Serves the learner and trains until `total_steps` (then exits 0) or shutdown (then writes
/// a checkpoint and exits 0). A training failure stops the process with the error.
pub async fn run(mut launch: Launch) -> anyhow::Result<()> {
    let device = policy::device_from_setting(&launch.config.model.device)?;
    tracing::info!(
        device = %policy::device_name(device),
        malloc_arena_cap = ?malloc::applied_cap(),
        "compute device"
    );
    let (shared, queue) = Shared::new(&launch.config);
    let service = LearnerService::new(
        launch.process.clone(),
        policy::device_name(device),
        launch.config.algorithm.total_steps,
        shared.clone(),
    );
    let view = service.clone();
    launch
        .metrics
        .registry_mut()
        .register_collector(Box::new(StatusMetrics::new(move || view.samples())));
    let process = launch.process.clone();
    let work =
        tokio::spawn(runtime::work(launch.config.clone(), process.clone(), shared, queue, device));
    let max_message = launch.max_message_bytes();
    let served = launch.serve(Routes::new(
        LearnerServer::new(service)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
    ));
    tokio::pin!(served);
    tokio::pin!(work);
    tokio::select! {
        result = &mut served => {
            // Shutdown: the trainer finishes its step and writes a checkpoint; wait for it,
            // or the process would exit with the checkpoint half written.
            match tokio::time::timeout(std::time::Duration::from_secs(120), &mut work).await {
                Ok(Ok(Ok(()))) => tracing::info!("trainer stopped"),
                Ok(Ok(Err(e))) => tracing::warn!("trainer stopped with an error: {e:#}"),
                Ok(Err(e)) => tracing::warn!("the trainer panicked: {e}"),
                Err(_) => tracing::warn!("the trainer did not stop within 120 s"),
            }
            result
        }
        outcome = &mut work => {
            let result = outcome
                .unwrap_or_else(|e| Err(anyhow::anyhow!("the trainer panicked: {e}")))
                // Stopped while joining the run: a clean shutdown.
                .or_else(|e| if e.is::<cluster::Stopped>() { Ok(()) } else { Err(e) });
            match &result {
                Ok(()) => tracing::info!("training finished"),
                Err(e) => tracing::error!("training failed: {e:#}"),
            }
            process.shutdown().cancel();
            served.await?;
            result
        }
    }
}

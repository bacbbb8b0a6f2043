//! The paretopo coordinator: rendezvous and membership (`--nodes` worker processes), the global
//! Pareto archive, the objective weights and stage it pushes to learners, and the operator's view
//! of a run (`paretopo.v1.Coordinator`). Also the local launcher behind `coordinator run`.
//!
//! Architecture invariant: the coordinator never links libtorch, CUDA or NCCL; work that needs a
//! model runs in learner and actor processes it starts (DESIGN.md §10).
//!
//! Modules: [`membership`] (registration, ranks, heartbeats, lost nodes), [`steering`] (the
//! Stage-1 weights, the archive and the stage switch), [`run_files`] (`frontier.csv` and the
//! plot), [`status_table`] (`coordinator status`), [`launcher`] (`coordinator run`),
//! [`experiment`] and [`report`] (`coordinator experiment`: a grid of runs and its report),
//! [`checkpoint_eval`] (`coordinator eval`), [`chart`] (the SVG plots). The gRPC service in this
//! file holds their state behind one lock and streams weights to learners.

pub mod chart;
pub mod checkpoint_eval;
pub mod experiment;
pub mod launcher;
pub mod membership;
pub mod report;
pub mod run_files;
pub mod status_table;
pub mod steering;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use paretopo_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use paretopo_proto::v1::{
    CoordinatorStatus, GetRendezvousRequest, GetStatusRequest, HeartbeatRequest, HeartbeatResponse,
    ObjectiveVector, ObjectiveWeights, ProcessState, RegisterRequest, RegisterResponse, Rendezvous,
    ReportObjectivesRequest, ReportObjectivesResponse, Role as ProtoRole, Stage,
    WatchStatusRequest, WatchWeightsRequest,
};
use paretopo_service::cli::Launch;
use paretopo_service::metrics::{Sample, StatusMetrics};
use paretopo_service::security::Principal;
use paretopo_service::{Process, RunConfig, status};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::membership::{Membership, RegisterError};
use crate::run_files::PlotAxes;
use crate::steering::Steering;

/// The coordinator's mutable state, behind one lock: every handler holds it only to read or
/// update plain values, never across an await.
#[derive(Debug)]
struct State {
    membership: Membership,
    steering: Steering,
    /// The NCCL unique id learner rank 0 registered, relayed to the other learners.
    nccl_unique_id: Vec<u8>,
    /// Where learner rank 0 accepts the CPU collective.
    collective_address: String,
    latest_mean: Option<Vec<f64>>,
    latest_metrics: HashMap<String, f64>,
    /// Batch means in step order, for the plot's policy path.
    mean_path: MeanPath,
    /// (when, trajectories) of recent reports, for trajectories per second.
    recent: VecDeque<(Instant, u32)>,
    sequence: u64,
    computed_at_step: u64,
}

/// The `Coordinator` gRPC service.
#[derive(Debug, Clone)]
pub struct CoordinatorService {
    process: Arc<Process>,
    objectives: Vec<String>,
    total_steps: u64,
    heartbeat_interval: Duration,
    run_dir: PathBuf,
    plot_axes: Option<PlotAxes>,
    state: Arc<Mutex<State>>,
    /// Fires (true) once the rendezvous is complete.
    complete: watch::Sender<bool>,
    weights: watch::Sender<ObjectiveWeights>,
}

impl CoordinatorService {
    /// A coordinator for `config`'s run, with uniform Stage-1 weights (spec §2).
    pub fn new(process: Arc<Process>, config: &RunConfig) -> anyhow::Result<Self> {
        let objectives = config.task.objectives.clone();
        let steering = Steering::new(&config.algorithm, objectives.len())
            .map_err(|e| anyhow::anyhow!("key `algorithm`: {e}"))?;
        let position = |name: &str| objectives.iter().position(|o| o == name);
        let plot_axes = match (position("accuracy"), position("tool_efficiency")) {
            (Some(accuracy), Some(tool_efficiency)) => Some(PlotAxes {
                accuracy,
                tool_efficiency,
                budget: f64::from(config.algorithm.tool_call_budget),
            }),
            _ => None,
        };
        let timeout = Duration::from_millis(config.cluster.heartbeat_timeout_ms.into());
        let saved = read_saved(&config.run.dir)?;
        let fresh = Membership::new(config.cluster.nodes, timeout);
        let (steering, mean_path, sequence, computed_at_step, membership, collective) = match saved
        {
            Some(saved) => {
                tracing::info!(
                    step = saved.steering.last_step,
                    "resuming the weights, archive and stage of the run"
                );
                let steering =
                    Steering::restore(&config.algorithm, objectives.len(), saved.steering)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", STATE_FILE))?;
                // The workers of a run that goes on register again and get their places back.
                let membership = saved.membership.and_then(|m| {
                    Membership::restore(m, config.cluster.nodes, timeout, Instant::now())
                });
                if let Some(m) = &membership {
                    tracing::info!(
                        nodes = m.nodes().len(),
                        epoch = m.epoch(),
                        "restored the membership; waiting for the workers to register again"
                    );
                }
                let collective = (saved.collective_address, saved.nccl_unique_id);
                (
                    steering,
                    MeanPath::restore(
                        saved.mean_path,
                        saved.mean_path_stride,
                        saved.mean_path_offered,
                    ),
                    saved.sequence,
                    saved.computed_at_step,
                    membership.unwrap_or(fresh),
                    collective,
                )
            }
            None => (steering, MeanPath::default(), 0, 0, fresh, (String::new(), Vec::new())),
        };
        let state = State {
            membership: membership.with_plan(config.cluster.role_plan()),
            steering,
            nccl_unique_id: collective.1,
            collective_address: collective.0,
            latest_mean: None,
            latest_metrics: HashMap::new(),
            mean_path,
            recent: VecDeque::new(),
            sequence,
            computed_at_step,
        };
        let initial = weights_message(&objectives, &state);
        Ok(Self {
            process,
            objectives,
            total_steps: config.algorithm.total_steps,
            heartbeat_interval: Duration::from_millis(config.cluster.heartbeat_interval_ms.into()),
            run_dir: config.run.dir.clone(),
            plot_axes,
            state: Arc::new(Mutex::new(state)),
            complete: watch::Sender::new(false),
            weights: watch::Sender::new(initial),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A handler that panicked mid-update left plain numbers behind; serving them beats
        // taking the whole run down.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn snapshot(&self) -> CoordinatorStatus {
        let state = self.lock();
        let now = Instant::now();
        let window = Duration::from_secs(60);
        let recent: u32 = state
            .recent
            .iter()
            .filter(|(t, _)| now.saturating_duration_since(*t) <= window)
            .map(|(_, n)| n)
            .sum();
        let span = state
            .recent
            .front()
            .map_or(0.0, |(t, _)| now.saturating_duration_since(*t).as_secs_f64().min(60.0));
        CoordinatorStatus {
            process: Some(self.process.info()),
            nodes_expected: state.membership.expected(),
            nodes_registered: state.membership.live(),
            membership_epoch: state.membership.epoch(),
            nodes: state.membership.statuses(now),
            step: state.steering.last_step(),
            weights: Some(weights_message(&self.objectives, &state)),
            frontier: state
                .steering
                .frontier()
                .into_iter()
                .map(|values| ObjectiveVector { values })
                .collect(),
            latest_batch_mean: state.latest_mean.clone().map(|values| ObjectiveVector { values }),
            trajectories_per_second: if span > 0.0 { f64::from(recent) / span } else { 0.0 },
            stage_switch_step: state.steering.switch_step(),
            latest_metrics: state.latest_metrics.clone(),
            rendezvous_complete: state.membership.complete(),
            total_steps: self.total_steps,
        }
    }

    /// The status as Prometheus samples (`paretopo_coordinator_*`).
    fn samples(&self) -> Vec<Sample> {
        let s = self.snapshot();
        let lost = s.nodes.iter().filter(|n| n.lost).count();
        let mut samples = vec![
            Sample::gauge(
                "paretopo_coordinator_step",
                "The newest learner step reported",
                s.step as f64,
            ),
            Sample::gauge(
                "paretopo_coordinator_total_steps",
                "RL steps the run trains",
                s.total_steps as f64,
            ),
            Sample::gauge(
                "paretopo_coordinator_nodes_expected",
                "Worker nodes the run waits for (--nodes)",
                s.nodes_expected.into(),
            ),
            Sample::gauge(
                "paretopo_coordinator_nodes_registered",
                "Worker nodes registered and not lost",
                s.nodes_registered.into(),
            ),
            Sample::gauge(
                "paretopo_coordinator_nodes_lost",
                "Worker nodes that missed their heartbeat deadline",
                lost as f64,
            ),
            Sample::gauge(
                "paretopo_coordinator_membership_epoch",
                "Joins and losses so far",
                s.membership_epoch as f64,
            ),
            Sample::gauge(
                "paretopo_coordinator_rendezvous_complete",
                "1 once every worker has registered",
                f64::from(u8::from(s.rendezvous_complete)),
            ),
            Sample::gauge(
                "paretopo_coordinator_trajectories_per_second",
                "Trajectories trained per second over the last minute",
                s.trajectories_per_second,
            ),
        ];
        if let Some(w) = &s.weights {
            samples.push(Sample::gauge(
                "paretopo_coordinator_hypervolume",
                "Hypervolume of the global Pareto archive",
                w.hypervolume,
            ));
            samples.push(Sample::gauge(
                "paretopo_coordinator_archive_size",
                "Policy points in the global Pareto archive",
                w.archive_size.into(),
            ));
            samples.push(Sample::gauge(
                "paretopo_coordinator_stage",
                "1 scalarization, 2 Pareto ranking",
                if w.stage == Stage::ParetoRanking as i32 { 2.0 } else { 1.0 },
            ));
            for (objective, weight) in w.objectives.iter().zip(&w.weights) {
                samples.push(Sample {
                    labels: vec![("objective", objective.clone())],
                    ..Sample::gauge(
                        "paretopo_coordinator_weight",
                        "The objective weights pushed to learners",
                        *weight,
                    )
                });
            }
        }
        if let Some(mean) = &s.latest_batch_mean {
            for (objective, value) in self.objectives.iter().zip(&mean.values) {
                samples.push(Sample {
                    labels: vec![("objective", objective.clone())],
                    ..Sample::gauge(
                        "paretopo_coordinator_batch_objective",
                        "The latest step's mean objective values",
                        *value,
                    )
                });
            }
        }
        samples
    }

    /// Marks silent nodes lost, every half heartbeat interval, until shutdown.
    async fn expire_loop(self) {
        let mut ticker = tokio::time::interval(self.heartbeat_interval / 2);
        let shutdown = self.process.shutdown().clone();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let lost = {
                let mut state = self.lock();
                let lost = state.membership.expire(Instant::now());
                if !lost.is_empty() {
                    self.membership_changed(&state);
                }
                lost
            };
            for id in &lost {
                tracing::warn!(node = %id, "node lost: heartbeat timeout");
            }
            if !lost.is_empty() {
                self.process.notify_status_changed();
            }
        }
    }

    /// Waits for the rendezvous; if `deadline` passes first, stops the process and returns
    /// what was missing. Returns `None` once complete or on shutdown.
    async fn rendezvous_deadline(self, deadline: Duration) -> Option<String> {
        let mut complete = self.complete.subscribe();
        let shutdown = self.process.shutdown().clone();
        tokio::select! {
            _ = complete.wait_for(|c| *c) => return None,
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(deadline) => {}
        }
        let missed = {
            let state = self.lock();
            let registered: Vec<String> = state
                .membership
                .nodes()
                .iter()
                .map(|n| format!("{} at {}", n.id, n.address))
                .collect();
            format!(
                "rendezvous: {} did not register within {:.0} s (`cluster.rendezvous_timeout_ms`); \
                 registered: {}",
                state.membership.missing(),
                deadline.as_secs_f64(),
                if registered.is_empty() { "none".into() } else { registered.join(", ") }
            )
        };
        tracing::error!("{missed}");
        shutdown.cancel();
        Some(missed)
    }

    fn write_files(&self, state: &State) {
        let dir = &self.run_dir;
        let frontier = state.steering.frontier();
        let result = std::fs::create_dir_all(dir)
            .and_then(|()| run_files::write_frontier(dir, &self.objectives, &frontier))
            .and_then(|()| match self.plot_axes {
                Some(axes) => run_files::write_plot(dir, axes, &frontier, &state.mean_path.points),
                None => Ok(()),
            })
            .and_then(|()| self.write_state(state));
        if let Err(e) = result {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the frontier files");
        }
    }

    /// Saves what a restarted coordinator resumes from. The membership is saved once the
    /// rendezvous has completed: a coordinator that never gathered its run has none to resume.
    fn write_state(&self, state: &State) -> std::io::Result<()> {
        let saved = SavedCoordinator {
            steering: state.steering.save(),
            mean_path: state.mean_path.points.clone(),
            mean_path_stride: state.mean_path.stride,
            mean_path_offered: state.mean_path.offered,
            sequence: state.sequence,
            computed_at_step: state.computed_at_step,
            membership: self.complete.borrow().then(|| state.membership.save()),
            collective_address: state.collective_address.clone(),
            nccl_unique_id: state.nccl_unique_id.clone(),
        };
        std::fs::create_dir_all(&self.run_dir)?;
        let text = serde_json::to_string(&saved).map_err(std::io::Error::other)?;
        run_files::write_atomically(&self.run_dir.join(STATE_FILE), &text)
    }

    /// Saves the state after a change of membership, once the rendezvous has completed.
    fn membership_changed(&self, state: &State) {
        if *self.complete.borrow()
            && let Err(e) = self.write_state(state)
        {
            tracing::warn!(dir = %self.run_dir.display(), error = %e, "cannot save the coordinator's state");
        }
    }
}

/// The most batch means the plotted path keeps (a long run's path is thinned to this).
pub const MEAN_PATH_POINTS: usize = 1024;

/// The batch means of the run's steps, for the frontier plot: every step's at first, then, each
/// time [`MEAN_PATH_POINTS`] are held, every other one and every other step from then on. The
/// points stay evenly spaced, and memory and the state file stay bounded however long the run.
#[derive(Debug, Clone, PartialEq)]
struct MeanPath {
    points: Vec<Vec<f64>>,
    /// Every `stride`-th step's mean is kept.
    stride: u64,
    /// Means offered so far.
    offered: u64,
}

impl Default for MeanPath {
    fn default() -> Self {
        MeanPath { points: Vec::new(), stride: 1, offered: 0 }
    }
}

impl MeanPath {
    /// A saved path; `offered` 0 (older files) is taken as one mean per point.
    fn restore(points: Vec<Vec<f64>>, stride: u64, offered: u64) -> Self {
        let stride = stride.max(1);
        let offered = if offered == 0 { points.len() as u64 * stride } else { offered };
        let mut path = MeanPath { points, stride, offered };
        while path.points.len() > MEAN_PATH_POINTS {
            path.thin();
        }
        path
    }

    fn thin(&mut self) {
        let mut keep = false;
        self.points.retain(|_| {
            keep = !keep;
            keep
        });
        self.stride *= 2;
    }

    fn push(&mut self, mean: Vec<f64>) {
        let index = self.offered;
        self.offered += 1;
        if !index.is_multiple_of(self.stride) {
            return;
        }
        if self.points.len() >= MEAN_PATH_POINTS {
            self.thin();
            if !index.is_multiple_of(self.stride) {
                return;
            }
        }
        self.points.push(mean);
    }
}

/// The coordinator's file in the run directory that a restarted run goes on from.
pub const STATE_FILE: &str = "coordinator_state.json";

/// What the coordinator saves after every report and every change of membership.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct SavedCoordinator {
    steering: steering::SavedSteering,
    mean_path: Vec<Vec<f64>>,
    /// The mean path keeps every `mean_path_stride`-th step's mean (absent in older files: 1).
    #[serde(default)]
    mean_path_stride: u64,
    /// Means offered to the path so far (absent in older files).
    #[serde(default)]
    mean_path_offered: u64,
    sequence: u64,
    computed_at_step: u64,
    /// Who was in the run, once the rendezvous had completed (absent in older files).
    #[serde(default)]
    membership: Option<membership::SavedMembership>,
    /// What learner rank 0 registered for the collective.
    #[serde(default)]
    collective_address: String,
    #[serde(default)]
    nccl_unique_id: Vec<u8>,
}

fn read_saved(dir: &std::path::Path) -> anyhow::Result<Option<SavedCoordinator>> {
    let path = dir.join(STATE_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

/// The weights message for the state as it is.
fn weights_message(objectives: &[String], state: &State) -> ObjectiveWeights {
    let stage =
        if state.steering.stage() >= 2 { Stage::ParetoRanking } else { Stage::Scalarization };
    ObjectiveWeights {
        objectives: objectives.to_vec(),
        weights: state.steering.weights().to_vec(),
        computed_at_step: state.computed_at_step,
        stage: stage as i32,
        hypervolume: state.steering.hypervolume(),
        archive_size: state.steering.archive_size() as u32,
        sequence: state.sequence,
    }
}

/// Checks a registration; the error names the field.
fn check_register(request: &RegisterRequest) -> Result<(), Status> {
    match ProtoRole::try_from(request.role) {
        Ok(ProtoRole::Learner | ProtoRole::Actor | ProtoRole::ToolServer) => {}
        Ok(ProtoRole::Coordinator) => {
            return Err(Status::invalid_argument(
                "role: a coordinator cannot register as a worker",
            ));
        }
        Ok(ProtoRole::Unspecified) | Err(_) => {
            return Err(Status::invalid_argument(format!(
                "role: must be LEARNER, ACTOR or TOOL_SERVER, got {}",
                request.role
            )));
        }
    }
    if request.advertised_address.trim().is_empty() {
        return Err(Status::invalid_argument("advertised_address: must be host:port"));
    }
    let texts = [
        ("advertised_address", request.advertised_address.len()),
        ("hostname", request.hostname.len()),
        ("run_name", request.run_name.len()),
        ("previous_node_id", request.previous_node_id.len()),
        ("collective_address", request.collective_address.len()),
    ];
    if let Some((field, len)) = texts.iter().find(|(_, len)| *len > MAX_TEXT_BYTES) {
        return Err(Status::invalid_argument(format!(
            "{field}: at most {MAX_TEXT_BYTES} bytes, got {len}"
        )));
    }
    if request.nccl_unique_id.len() > MAX_NCCL_ID_BYTES {
        return Err(Status::invalid_argument(format!(
            "nccl_unique_id: at most {MAX_NCCL_ID_BYTES} bytes, got {}",
            request.nccl_unique_id.len()
        )));
    }
    if request.local_devices > MAX_LOCAL_DEVICES {
        return Err(Status::invalid_argument(format!(
            "local_devices: at most {MAX_LOCAL_DEVICES}, got {}",
            request.local_devices
        )));
    }
    if let Some(index) = request.learner_index
        && index > MAX_LEARNER_INDEX
    {
        return Err(Status::invalid_argument(format!(
            "learner_index: at most {MAX_LEARNER_INDEX}, got {index}"
        )));
    }
    Ok(())
}

/// The longest address, host name, run name or node id a request may carry, in bytes.
pub const MAX_TEXT_BYTES: usize = 256;
/// The longest `last_error` a heartbeat may carry, in bytes.
pub const MAX_ERROR_BYTES: usize = 4096;
/// NCCL's unique id is 128 bytes.
pub const MAX_NCCL_ID_BYTES: usize = 128;
/// Devices one worker may bring (ranks are `u32`: this keeps every rank sum far from overflow).
pub const MAX_LOCAL_DEVICES: u32 = 1024;
/// The highest learner index (a Kubernetes completion index).
pub const MAX_LEARNER_INDEX: u32 = 65_535;
/// The most named metrics one report may carry, and the longest name.
pub const MAX_METRICS: usize = 256;

/// Checks a report's step and metrics; the error names the field.
fn check_report(request: &ReportObjectivesRequest, total_steps: u64) -> Result<(), Status> {
    if request.step == 0 {
        return Err(Status::invalid_argument("step: steps count from 1"));
    }
    if request.step > total_steps {
        return Err(Status::invalid_argument(format!(
            "step: this run has {total_steps} steps, got {}",
            request.step
        )));
    }
    if request.metrics.len() > MAX_METRICS {
        return Err(Status::invalid_argument(format!(
            "metrics: at most {MAX_METRICS} entries, got {}",
            request.metrics.len()
        )));
    }
    if let Some((name, value)) = request
        .metrics
        .iter()
        .find(|(k, v)| k.is_empty() || k.len() > MAX_TEXT_BYTES || !v.is_finite())
    {
        return Err(Status::invalid_argument(format!(
            "metrics: names need 1 to {MAX_TEXT_BYTES} bytes and values must be finite, got {:?} = {value}",
            name.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

/// The role of the caller's credential, when the server runs TLS (the auth layer put the
/// principal in the request's extensions; docs/security.md).
fn caller_role<T>(request: &Request<T>) -> Option<ProtoRole> {
    match request.extensions().get::<Principal>() {
        Some(Principal::Role(role)) => Some(role.to_proto()),
        _ => None,
    }
}

/// A node id speaks only for the role that registered it: an actor's credential cannot
/// heartbeat for a learner's node.
fn check_node_owner(
    membership: &Membership,
    node_id: &str,
    caller: Option<ProtoRole>,
) -> Result<(), Status> {
    let Some(caller) = caller else { return Ok(()) };
    match membership.nodes().iter().find(|n| n.id == node_id) {
        Some(node) if node.role != caller => {
            let status = Status::permission_denied(format!(
                "node_id: {node_id:?} is a {} node; a {} credential cannot speak for it",
                node.role.as_str_name(),
                caller.as_str_name()
            ));
            tracing::warn!(reason = %status.message(), "call refused: permission denied");
            Err(status)
        }
        _ => Ok(()),
    }
}

type WeightsStream = ReceiverStream<Result<ObjectiveWeights, Status>>;

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let remote = request.remote_addr();
        let caller = caller_role(&request);
        let request = request.into_inner();
        check_register(&request)?;
        let run_name = &self.process.info().run_name;
        if !request.run_name.is_empty() && &request.run_name != run_name {
            return Err(Status::failed_precondition(format!(
                "run_name: this coordinator runs {run_name:?}, not {:?}",
                request.run_name
            )));
        }
        let role = ProtoRole::try_from(request.role).unwrap_or(ProtoRole::Unspecified);
        if let Some(caller) = caller
            && caller != role
        {
            let status = Status::permission_denied(format!(
                "role: a {} credential cannot register as {}",
                caller.as_str_name(),
                role.as_str_name()
            ));
            tracing::warn!(peer = ?remote, method = "Register", reason = %status.message(), "call refused: permission denied");
            return Err(status);
        }
        let (id, epoch, complete) = {
            let mut state = self.lock();
            let id = state
                .membership
                .register(
                    role,
                    &request.advertised_address,
                    &request.hostname,
                    request.local_devices,
                    &request.previous_node_id,
                    request.learner_index,
                    Instant::now(),
                )
                .map_err(|e| match e {
                    RegisterError::Full { .. } | RegisterError::RoleFull { .. } => {
                        Status::resource_exhausted(e.to_string())
                    }
                    RegisterError::IndexBeyondPlan { .. } => {
                        Status::invalid_argument(e.to_string())
                    }
                    RegisterError::RanksTaken { .. } => Status::already_exists(e.to_string()),
                })?;
            if state.membership.is_rank_zero_learner(&id) {
                state.nccl_unique_id = request.nccl_unique_id.clone();
                state.collective_address = request.collective_address.clone();
            }
            (id, state.membership.epoch(), state.membership.complete())
        };
        tracing::info!(node = %id, role = role.as_str_name(), address = %request.advertised_address, from = ?remote, "registered");
        if complete {
            self.complete.send_replace(true);
            self.membership_changed(&self.lock());
        }
        self.process.notify_status_changed();
        Ok(Response::new(RegisterResponse {
            node_id: id,
            membership_epoch: epoch,
            heartbeat_interval_ms: self.heartbeat_interval.as_millis() as u32,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let caller = caller_role(&request);
        let request = request.into_inner();
        for (field, len, max) in [
            ("node_id", request.node_id.len(), MAX_TEXT_BYTES),
            ("last_error", request.last_error.len(), MAX_ERROR_BYTES),
        ] {
            if len > max {
                return Err(Status::invalid_argument(format!(
                    "{field}: at most {max} bytes, got {len}"
                )));
            }
        }
        let state_reported =
            ProcessState::try_from(request.state).unwrap_or(ProcessState::Unspecified);
        let (known, epoch) = {
            let mut state = self.lock();
            check_node_owner(&state.membership, &request.node_id, caller)?;
            let known = state.membership.heartbeat(
                &request.node_id,
                state_reported,
                request.progress,
                request.policy_version,
                &request.last_error,
                Instant::now(),
            );
            (known, state.membership.epoch())
        };
        Ok(Response::new(HeartbeatResponse { membership_epoch: epoch, reregister: !known }))
    }

    async fn get_rendezvous(
        &self,
        request: Request<GetRendezvousRequest>,
    ) -> Result<Response<Rendezvous>, Status> {
        let caller = caller_role(&request);
        let id = request.into_inner().node_id;
        check_node_owner(&self.lock().membership, &id, caller)?;
        let mut complete = self.complete.subscribe();
        let shutdown = self.process.shutdown().clone();
        tokio::select! {
            done = complete.wait_for(|c| *c) => {
                done.map_err(|_| Status::unavailable("the coordinator is stopping"))?;
            }
            () = shutdown.cancelled() => return Err(Status::unavailable("the coordinator is stopping")),
        }
        let state = self.lock();
        if !state.membership.nodes().iter().any(|n| n.id == id) {
            return Err(Status::not_found(format!("node_id: {id:?} is not registered")));
        }
        // The NCCL id and the collective's address are for learners: NCCL itself has no
        // authentication (docs/security.md), so no other role is told how to join it.
        let learner_or_plaintext = caller.is_none_or(|c| c == ProtoRole::Learner);
        let nccl_id = if learner_or_plaintext { &state.nccl_unique_id[..] } else { &[] };
        let mut view = state.membership.rendezvous(&id, nccl_id);
        if learner_or_plaintext {
            view.collective_address = state.collective_address.clone();
        }
        Ok(Response::new(view))
    }

    async fn report_objectives(
        &self,
        request: Request<ReportObjectivesRequest>,
    ) -> Result<Response<ReportObjectivesResponse>, Status> {
        let request = request.into_inner();
        let mean = request.batch_mean.as_ref().map(|m| m.values.clone()).unwrap_or_default();
        if mean.len() != self.objectives.len() {
            return Err(Status::invalid_argument(format!(
                "batch_mean: needs {} values, one per objective, got {}",
                self.objectives.len(),
                mean.len()
            )));
        }
        if let Some(bad) = mean.iter().find(|v| !(v.is_finite() && (0.0..=1.0).contains(*v))) {
            return Err(Status::invalid_argument(format!(
                "batch_mean: every value must lie in [0, 1], got {bad}"
            )));
        }
        check_report(&request, self.total_steps)?;
        let message = {
            let mut state = self.lock();
            if !state.membership.is_rank_zero_learner(&request.node_id) {
                let status = Status::permission_denied(format!(
                    "node_id: {:?} is not learner rank 0",
                    request.node_id
                ));
                tracing::warn!(method = "ReportObjectives", reason = %status.message(), "call refused: permission denied");
                return Err(status);
            }
            let before = state.steering.last_step();
            let update = state.steering.report(request.step, &mean);
            if request.step > before {
                state.sequence += 1;
                state.computed_at_step = request.step;
                state.latest_mean = Some(mean.clone());
                state.mean_path.push(mean);
                state.latest_metrics = request.metrics.clone();
                state.recent.push_back((Instant::now(), request.trajectories));
                while state.recent.len() > 600 {
                    state.recent.pop_front();
                }
                if update.switched {
                    tracing::info!(step = request.step, hv = update.hypervolume, "stage 2 begins");
                }
                self.write_files(&state);
            }
            weights_message(&self.objectives, &state)
        };
        self.weights.send_replace(message.clone());
        self.process.notify_status_changed();
        Ok(Response::new(ReportObjectivesResponse { weights: Some(message) }))
    }

    type WatchWeightsStream = WeightsStream;

    async fn watch_weights(
        &self,
        _: Request<WatchWeightsRequest>,
    ) -> Result<Response<WeightsStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut weights = self.weights.subscribe();
        let shutdown = self.process.shutdown().clone();
        tokio::spawn(async move {
            loop {
                let current = weights.borrow_and_update().clone();
                if tx.send(Ok(current)).await.is_err() {
                    return; // the learner went away
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    changed = weights.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<CoordinatorStatus>, Status> {
        Ok(Response::new(self.snapshot()))
    }

    type WatchStatusStream = status::StatusStream<CoordinatorStatus>;

    async fn watch_status(
        &self,
        request: Request<WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let this = self.clone();
        status::respond(&self.process, request.get_ref(), move || this.snapshot())
    }
}

/// Serves the coordinator until shutdown.
pub async fn run(mut launch: Launch) -> anyhow::Result<()> {
    let service = CoordinatorService::new(launch.process.clone(), &launch.config)?;
    let view = service.clone();
    launch
        .metrics
        .registry_mut()
        .register_collector(Box::new(StatusMetrics::new(move || view.samples())));
    tokio::spawn(service.clone().expire_loop());
    let deadline = Duration::from_millis(launch.config.cluster.rendezvous_timeout_ms);
    let rendezvous = tokio::spawn(service.clone().rendezvous_deadline(deadline));
    let max_message = launch.max_message_bytes();
    launch
        .serve(Routes::new(
            CoordinatorServer::new(service)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        ))
        .await?;
    // Serving ended, so shutdown was cancelled and the deadline task has returned.
    match rendezvous.await {
        Ok(Some(missed)) => Err(anyhow::anyhow!(missed)),
        Ok(None) | Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mean_path_stays_bounded_and_evenly_spaced() {
        let mut path = MeanPath::default();
        for step in 0..100_000u32 {
            path.push(vec![f64::from(step)]);
            assert!(path.points.len() <= MEAN_PATH_POINTS, "{} at step {step}", path.points.len());
        }
        // Every kept mean is the stride-th: step 0, stride, 2 x stride, ...
        let steps: Vec<u64> = path.points.iter().map(|p| p[0] as u64).collect();
        let expected: Vec<u64> = (0..steps.len() as u64).map(|i| i * path.stride).collect();
        assert_eq!(steps, expected);
        assert!(path.points.len() > MEAN_PATH_POINTS / 2, "{}", path.points.len());
        assert!(99_999 - steps[steps.len() - 1] < path.stride);
        // A saved path goes on the same way.
        let mut again = MeanPath::restore(path.points.clone(), path.stride, path.offered);
        let mut original = path.clone();
        for step in 100_000..130_000u32 {
            original.push(vec![f64::from(step)]);
            again.push(vec![f64::from(step)]);
        }
        assert_eq!(again.points, original.points);
    }

    #[test]
    fn registrations_are_checked_field_by_field() {
        let ok = RegisterRequest {
            role: ProtoRole::Learner as i32,
            advertised_address: "10.0.0.2:50052".into(),
            ..Default::default()
        };
        assert!(check_register(&ok).is_ok());
        for (bad, field) in [
            (RegisterRequest { role: 0, ..ok.clone() }, "role:"),
            (RegisterRequest { role: 99, ..ok.clone() }, "role:"),
            (RegisterRequest { role: ProtoRole::Coordinator as i32, ..ok.clone() }, "role:"),
            (
                RegisterRequest { advertised_address: String::new(), ..ok.clone() },
                "advertised_address:",
            ),
        ] {
            let err = check_register(&bad).expect_err("invalid");
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(err.message().starts_with(field), "{}", err.message());
        }
    }
}

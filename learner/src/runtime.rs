//! The learner process's work (DESIGN.md §2), one task per concern:
//!
//! - **membership**: register (offering a collective address in case this learner becomes rank
//!   0), heartbeat the step, read the rendezvous for rank, world size and the tool-server;
//! - **weights follower**: the coordinator's `WatchWeights` stream into a `watch` channel;
//! - **intake** (the `PushTrajectories` handler in `lib.rs`, via [`Shared::accept`]): check,
//!   de-duplicate, drop stale groups, and queue the rest with backpressure;
//! - **trainer** (`Trainer::run`, a blocking thread per rank: `learner.devices` of them, one
//!   per device, sharing the intake queue): warm start or resume, then per step gather
//!   `groups_per_step / world` groups, compute advantages with the configured estimator, take
//!   spec §4's loss, all-reduce the token count, statistics and gradients across ranks, step
//!   AdamW, report the batch mean to the coordinator, log, publish weights every `sync_every`
//!   steps and checkpoint every `checkpoint_every`. Held-out evaluations run before RL and at
//!   the end.
//!
//! Shutdown (SIGTERM) cancels the process token: the trainer finishes its step, writes a
//! checkpoint and returns, so a stopped run resumes where it stopped.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actor::setup::{self, TaskSetup};
use actor::tools::{GrpcTools, ToolClientConfig};
use actor::weights::{self, Published};
use anyhow::{Context, bail};
use pareto::advantages::{self, Stage2Options};
use pareto::{Dominance, Points};
use paretopo_proto::v1::coordinator_client::CoordinatorClient;
use paretopo_proto::v1::{
    GroupOutcome, ObjectiveVector, ObjectiveWeights, ReportObjectivesRequest, Stage,
    TrajectoryGroup, WatchWeightsRequest,
};
use paretopo_service::cluster::{self, Backoff, Progress};
use paretopo_service::{Process, RunConfig};
use policy::train::AdamWConfig;
use policy::{AdamW, Qwen2, Tokenizer};
use serde_json::json;
use tch::{Device, Kind, Tensor};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tonic::Status;
use tonic::transport::Channel;

use crate::checkpoint::{self, TrainerState};
use crate::collective::{CollectiveError, TcpCollective};
use crate::estimator::{Context as EstimatorContext, Estimator};
use crate::eval::{self, EvalResult};
use crate::intake::{self, Group, IntakeLimits};
use crate::ledger::{Intake, Ledger, Recorded};
use crate::loss::LossConfig;
use crate::nccl::{self, NcclCollective};
use crate::step::{PassOptions, Sample, local_gradient};
use crate::warm_start::{WarmStartConfig, warm_start};

/// A group that passed intake, with where it came from.
#[derive(Debug)]
pub struct Queued {
    /// The actor.
    pub actor_id: String,
    /// Its sequence number.
    pub group_seq: u64,
    /// The checked group.
    pub group: Group,
}

/// What the learner's phases report, for status.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// "starting", "warm start", "evaluating", "training", "done".
    pub name: String,
    /// Done so far.
    pub done: u64,
    /// Out of.
    pub total: u64,
}

/// State shared by the trainer, the intake handler and the status service.
#[derive(Debug)]
pub struct Shared {
    /// Steps completed.
    pub step: AtomicU64,
    /// The policy version published last.
    pub policy_version: AtomicU64,
    /// Groups accepted, stale, duplicate, invalid.
    pub accepted: AtomicU64,
    /// Groups dropped as stale (at intake or when a step takes them).
    pub stale: AtomicU64,
    /// The trajectories of those groups.
    pub stale_trajectories: AtomicU64,
    /// Refused as already seen.
    pub duplicate: AtomicU64,
    /// Rejected as malformed.
    pub invalid: AtomicU64,
    /// Groups in the queue.
    pub queued: AtomicU64,
    /// Rank and world once known.
    pub rank: AtomicU64,
    /// World size once known (0 before the rendezvous).
    pub world: AtomicU64,
    /// The published policy, `None` until the warm start is over.
    pub published: watch::Sender<Option<Arc<Published>>>,
    /// The objective weights and stage the coordinator pushes.
    pub objective_weights: watch::Sender<ObjectiveWeights>,
    /// What the trainer does now.
    pub phase: Mutex<Phase>,
    /// The raw weights port ("host:port"), once it is bound.
    pub raw_address: OnceLock<String>,
    /// The collective in use ("none", "cpu", "nccl"), once the rendezvous is done.
    pub collective: OnceLock<&'static str>,
    /// The intake's limits, known once the model is built.
    pub limits: OnceLock<IntakeLimits>,
    /// The trajectory ledger: what became of every group each actor pushed.
    pub ledger: Mutex<Ledger>,
    /// `algorithm.max_staleness`.
    pub max_staleness: u64,
    /// The queue the trainer takes groups from.
    queue: mpsc::Sender<Queued>,
    /// True once this process's first rank has installed the ledger it resumes (or found
    /// none): its other ranks record nothing into the ledger before.
    ledger_ready: watch::Sender<bool>,
    /// The last step each of this process's ranks has recorded in the ledger, so that its
    /// first rank saves a ledger holding every rank's groups of the step it checkpoints.
    recorded_steps: Vec<AtomicU64>,
    /// Set, under the ledger's lock, once this process has trained its last step: from then
    /// on intake refuses groups, so no group is acknowledged that the final ledger (written
    /// next) does not hold.
    training_over: AtomicBool,
}

impl Shared {
    /// New shared state and the receiving end of the training queue, which holds
    /// `limits.learner_queue_groups` (by default one step's groups: more would only age in line
    /// and be dropped as stale).
    pub fn new(config: &RunConfig) -> (Arc<Self>, mpsc::Receiver<Queued>) {
        let bound = match config.limits.learner_queue_groups {
            0 => config.algorithm.groups_per_step,
            n => n,
        };
        let (queue, rx) = mpsc::channel(bound.max(1) as usize);
        let k = config.task.objectives.len();
        let shared = Shared {
            step: AtomicU64::new(0),
            policy_version: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            stale: AtomicU64::new(0),
            stale_trajectories: AtomicU64::new(0),
            duplicate: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            rank: AtomicU64::new(0),
            world: AtomicU64::new(0),
            published: watch::Sender::new(None),
            objective_weights: watch::Sender::new(ObjectiveWeights {
                objectives: config.task.objectives.clone(),
                weights: vec![1.0 / k as f64; k],
                stage: Stage::Scalarization as i32,
                ..Default::default()
            }),
            phase: Mutex::new(Phase { name: "starting".into(), ..Default::default() }),
            raw_address: OnceLock::new(),
            collective: OnceLock::new(),
            limits: OnceLock::new(),
            ledger: Mutex::new(Ledger::default()),
            max_staleness: config.algorithm.max_staleness,
            queue,
            ledger_ready: watch::Sender::new(false),
            recorded_steps: (0..config.learner.devices.max(1)).map(|_| AtomicU64::new(0)).collect(),
            training_over: AtomicBool::new(false),
        };
        (Arc::new(shared), rx)
    }

    /// Takes objective weights from the coordinator (its stream or a report's answer) unless
    /// newer ones are already held: the two sources race.
    fn offer_weights(&self, weights: ObjectiveWeights) {
        self.objective_weights.send_if_modified(|current| {
            let newer = weights.sequence >= current.sequence;
            if newer {
                *current = weights;
            }
            newer
        });
    }

    fn set_phase(&self, name: &str, done: u64, total: u64) {
        *self.phase.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Phase { name: name.to_owned(), done, total };
    }

    /// Refuses every group from now on (`UNAVAILABLE`, not acknowledged, so the actor keeps
    /// it): called once training is over. A group is either in every ledger taken after this
    /// returns, or refused.
    pub fn close_intake(&self) {
        let _ledger = self.ledger();
        self.training_over.store(true, Ordering::Release);
    }

    /// The ledger, locked (it is never held across an await).
    pub fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes one pushed group: the outcome and, when invalid, why. Waits while the queue is
    /// full (backpressure on the actor's stream). Every group with an actor id and a sequence
    /// number ends up counted in the ledger once. An error is a group that was not taken and
    /// must not be acknowledged (the learner is starting or stopping, or the sequence number
    /// is out of order): the stream ends with it and the actor sends the group again.
    pub async fn accept(&self, group: TrajectoryGroup) -> Result<(GroupOutcome, String), Status> {
        let Some(limits) = self.limits.get() else {
            return Err(Status::unavailable("the learner is not ready yet"));
        };
        let training_over = || Status::unavailable("the learner has trained its last step");
        if self.training_over.load(Ordering::Acquire) {
            return Err(training_over());
        }
        let checked = intake::check_group(&group, limits);
        let version = self.policy_version.load(Ordering::Relaxed);
        // Too old a policy is stale; so is one newer than this learner has published (sampled
        // by a learner that died after its checkpoint, or claimed by a confused client): no
        // policy this learner holds produced it.
        let intake = match &checked {
            Err(_) => Intake::Invalid,
            Ok(_)
                if version.saturating_sub(group.policy_version) > self.max_staleness
                    || group.policy_version > version =>
            {
                Intake::Stale
            }
            Ok(_) => Intake::Queued,
        };
        // A group without a valid identity cannot be counted (nor its id stored); intake
        // refuses it by name.
        let identified = !group.actor_id.is_empty()
            && group.actor_id.len() <= intake::MAX_ID_BYTES
            && group.group_seq > 0;
        if identified {
            let mut ledger = self.ledger();
            // Checked again under the lock the final ledger is taken with: a group is either
            // in that ledger or refused.
            if self.training_over.load(Ordering::Acquire) {
                return Err(training_over());
            }
            match ledger.record(&group.actor_id, group.group_seq, intake) {
                Recorded::Duplicate => {
                    self.duplicate.fetch_add(1, Ordering::Relaxed);
                    return Ok((GroupOutcome::Duplicate, String::new()));
                }
                Recorded::Full => {
                    return Err(Status::resource_exhausted(format!(
                        "actor_id: the ledger holds {} actors already",
                        crate::ledger::MAX_ACTORS
                    )));
                }
                Recorded::OutOfOrder { expected } => {
                    return Err(Status::invalid_argument(format!(
                        "group_seq: {} from actor {} skips ahead; expected {expected}",
                        group.group_seq, group.actor_id
                    )));
                }
                Recorded::New { lost } if lost > 0 => tracing::warn!(
                    actor = %group.actor_id,
                    first = group.group_seq - lost,
                    last = group.group_seq - 1,
                    lost,
                    "groups decided by a learner that died before its checkpoint: counted lost"
                ),
                Recorded::New { .. } => {}
            }
        }
        let checked = match checked {
            Err(e) => {
                self.invalid.fetch_add(1, Ordering::Relaxed);
                return Ok((GroupOutcome::Invalid, e.to_string()));
            }
            Ok(_) if intake == Intake::Stale => {
                self.stale.fetch_add(1, Ordering::Relaxed);
                self.stale_trajectories
                    .fetch_add(group.trajectories.len() as u64, Ordering::Relaxed);
                return Ok((GroupOutcome::Stale, String::new()));
            }
            Ok(checked) => checked,
        };
        let queued =
            Queued { actor_id: group.actor_id, group_seq: group.group_seq, group: checked };
        self.queued.fetch_add(1, Ordering::Relaxed);
        // Counted as queued already: should the trainer be gone, the group is never
        // acknowledged, and the next learner counts it lost (it never reached a checkpoint).
        if self.queue.send(queued).await.is_err() {
            return Err(Status::unavailable("the learner has stopped training"));
        }
        self.accepted.fetch_add(1, Ordering::Relaxed);
        Ok((GroupOutcome::Accepted, String::new()))
    }
}

/// The learner's work, from registration to the end of training or shutdown.
pub async fn work(
    config: RunConfig,
    process: Arc<Process>,
    shared: Arc<Shared>,
    queue: mpsc::Receiver<Queued>,
    device: Device,
) -> anyhow::Result<()> {
    // A method that names no estimator fails here, not after the warm start.
    let estimator: Estimator = config.algorithm.method.parse().context("key `algorithm.method`")?;
    let progress = Arc::new(Progress::default());
    // Every learner offers a collective listener; the one that becomes rank 0 uses it.
    let host = process.listen_address().ip();
    let ports = &config.learner;
    let listener =
        TcpListener::bind(SocketAddr::new(host, ports.collective_port)).with_context(|| {
            format!("binding `learner.collective_port` = {}", ports.collective_port)
        })?;
    let advertised_host = process
        .peer_address()
        .rsplit_once(':')
        .map_or_else(|| host.to_string(), |(h, _)| h.to_owned());
    let collective_address = format!("{advertised_host}:{}", listener.local_addr()?.port());
    // The raw weights port, for actors that fetch versions over TCP (TLS when TLS is on).
    let weights_listener = tokio::net::TcpListener::bind(SocketAddr::new(host, ports.weights_port))
        .await
        .with_context(|| format!("binding `learner.weights_port` = {}", ports.weights_port))?;
    let _ = shared
        .raw_address
        .set(format!("{advertised_host}:{}", weights_listener.local_addr()?.port()));
    tokio::spawn(crate::weights_server::serve(
        weights_listener,
        shared.published.subscribe(),
        process.security().clone(),
        process.shutdown().clone(),
    ));
    // On CUDA with NCCL present, every learner also offers a unique id for the same reason.
    let use_nccl = matches!(device, Device::Cuda(_)) && nccl::available();
    if matches!(device, Device::Cuda(_)) && !use_nccl {
        tracing::warn!("no NCCL library found (libnccl.so); learner ranks all-reduce over TCP");
    }
    let devices = local_devices(device, config.learner.devices)?;
    let nccl_id = if use_nccl { nccl::unique_id()? } else { Vec::new() };
    let mut member =
        cluster::register(&config, &process, devices.len() as u32, nccl_id, collective_address)
            .await?;
    member.spawn_heartbeats(process.clone(), progress.clone());
    let view = member.rendezvous(&process).await?;
    let world = view.world_size.max(1) as usize;
    let first_rank = view.first_rank as usize;
    shared.rank.store(first_rank as u64, Ordering::Relaxed);
    shared.world.store(world as u64, Ordering::Relaxed);
    let tool_server = view.tool_servers.first().map(|p| p.address.clone());
    tracing::info!(node = %member.node_id, first_rank, devices = devices.len(), world, tool_server = ?tool_server, "rendezvous complete");
    if !(config.algorithm.groups_per_step as usize).is_multiple_of(world) {
        bail!(
            "key `algorithm.groups_per_step`: {} groups do not split evenly over {world} learner ranks",
            config.algorithm.groups_per_step
        );
    }
    tokio::spawn(follow_weights(
        member.client.clone(),
        member.node_id.clone(),
        shared.clone(),
        process.shutdown().clone(),
    ));
    let timeout = Duration::from_millis(config.cluster.collective_timeout_ms);
    // A host name (an advertised DNS name in Kubernetes) is resolved once, here.
    let root = if world > 1 && !use_nccl {
        Some(
            std::net::ToSocketAddrs::to_socket_addrs(view.collective_address.as_str())
                .ok()
                .and_then(|mut addresses| addresses.next())
                .with_context(|| {
                    format!("resolving rank 0's collective address {:?}", view.collective_address)
                })?,
        )
    } else {
        None
    };
    let mut listener = Some(listener);
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    let mut trainers = tokio::task::JoinSet::new();
    let many = devices.len() > 1;
    for (local, device) in devices.into_iter().enumerate() {
        let rank = first_rank + local;
        let collective = match (device, root) {
            // NCCL even for one rank, so a single-GPU run exercises the same path as a cluster.
            (Device::Cuda(ordinal), _) if use_nccl => {
                CollectivePlan::Nccl { ordinal, id: view.nccl_unique_id.clone(), timeout }
            }
            (_, Some(root)) => CollectivePlan::Tcp {
                root,
                listener: if rank == 0 { listener.take() } else { None },
                timeout,
                security: process.security().clone(),
            },
            _ => CollectivePlan::None,
        };
        // Only rank 0 evaluates, so only it calls the tool-server.
        let tools = match &tool_server {
            Some(address) if rank == 0 => Some(GrpcTools::new(
                Handle::current(),
                process.channel(address, paretopo_service::Role::ToolServer)?,
                ToolClientConfig { caller_id: member.node_id.clone(), ..Default::default() },
            )),
            _ => None,
        };
        let trainer = Trainer {
            config: config.clone(),
            estimator,
            shared: shared.clone(),
            queue: queue.clone(),
            process: process.clone(),
            progress: progress.clone(),
            coordinator: member.client.clone(),
            node_id: member.node_id.clone(),
            rank,
            local,
            world,
            collective: Some(collective),
            tools,
            device,
            runtime: Handle::current(),
        };
        trainers.spawn_blocking(move || {
            // With several ranks in the process, say which one failed.
            let result = trainer.run();
            if many { result.with_context(|| format!("learner rank {rank}")) } else { result }
        });
    }
    // Every rank of this process ends: a rank that fails makes the others fail at their next
    // collective call (a closed connection, or the deadline), so waiting for all cannot hang.
    // The first failure is the cause; later ones are its echoes.
    let mut first_error = None;
    while let Some(joined) = trainers.join_next().await {
        let Err(e) = joined.context("a trainer panicked").and_then(|result| result) else {
            continue;
        };
        if first_error.is_some() {
            tracing::warn!("{e:#}");
        } else {
            first_error = Some(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Lets the process's other ranks record into the ledger once dropped (see
/// [`Shared::ledger_ready`]).
struct LedgerReady(Arc<Shared>);

impl Drop for LedgerReady {
    fn drop(&mut self) {
        self.0.ledger_ready.send_replace(true);
    }
}

/// Replaces the process's ledger with the one a checkpoint saved.
fn install_resumed_ledger(shared: &Shared, state: &TrainerState) {
    let ledger = Ledger::resumed(state.ledger.clone());
    let totals = ledger.totals();
    tracing::info!(
        groups = totals.through,
        trained = totals.trained,
        stale = totals.stale,
        invalid = totals.invalid,
        lost = totals.lost,
        "trajectory ledger resumed (groups queued at the checkpoint are counted lost)"
    );
    *shared.ledger() = ledger;
    // Every rank resumes from this checkpoint's step.
    for recorded in &shared.recorded_steps {
        recorded.store(state.step, Ordering::Release);
    }
}

/// The devices this learner process drives, one rank each: `count` CUDA devices from `first`
/// on, or `count` replicas on the CPU.
fn local_devices(first: Device, count: u32) -> anyhow::Result<Vec<Device>> {
    let count = count.max(1) as usize;
    match first {
        Device::Cuda(ordinal) => {
            let available = tch::Cuda::device_count().max(0) as usize;
            if ordinal + count > available {
                bail!(
                    "key `learner.devices`: {count} CUDA devices from cuda:{ordinal} on, but \
                     libtorch sees {available}"
                );
            }
            Ok((ordinal..ordinal + count).map(Device::Cuda).collect())
        }
        other => Ok(vec![other; count]),
    }
}

/// How this rank will reach the others, decided at the rendezvous. The communicator itself is
/// made in the training thread, which alone uses it (an NCCL communicator cannot move between
/// threads).
#[derive(Debug)]
enum CollectivePlan {
    /// A single rank on CPU.
    None,
    /// CPU ranks over TCP; rank 0 accepts on its listener; every call has `timeout`.
    Tcp {
        root: SocketAddr,
        listener: Option<TcpListener>,
        timeout: Duration,
        security: Arc<paretopo_service::security::Security>,
    },
    /// NCCL on CUDA device `ordinal` with rank 0's unique id; every call has `timeout`.
    Nccl { ordinal: usize, id: Vec<u8>, timeout: Duration },
}

/// The all-reduce between learner ranks: NCCL on CUDA, TCP between CPU processes, or nothing
/// for a single CPU rank.
#[derive(Debug)]
enum Collective {
    None,
    Tcp(TcpCollective),
    Nccl(NcclCollective),
}

impl Collective {
    fn join(plan: CollectivePlan, rank: usize, world: usize) -> anyhow::Result<Self> {
        Ok(match plan {
            CollectivePlan::None => Collective::None,
            CollectivePlan::Tcp { root, listener, timeout, security } => Collective::Tcp(
                TcpCollective::join(rank, world, root, listener, timeout, &security)?,
            ),
            CollectivePlan::Nccl { ordinal, id, timeout } => {
                let joined = NcclCollective::join(ordinal, rank, world, &id, timeout)?;
                tracing::info!(rank, world, ordinal, "NCCL communicator ready");
                Collective::Nccl(joined)
            }
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Collective::None => "none",
            Collective::Tcp(_) => "cpu",
            Collective::Nccl(_) => "nccl",
        }
    }

    /// Replaces `values` on every rank by their element-wise sum over the ranks.
    fn sum<T>(&mut self, values: &mut [T]) -> anyhow::Result<()>
    where
        T: crate::collective::Element + cudarc::driver::DeviceRepr + cudarc::nccl::NcclType,
    {
        match self {
            Collective::None => {}
            Collective::Tcp(c) => c.all_reduce_sum(values)?,
            Collective::Nccl(c) => c.all_reduce_sum(values)?,
        }
        Ok(())
    }
}

/// Whether `error` is a collective's lost (or stalled) rank, and which rank when the
/// collective can tell: the CPU collective knows the silent peer; NCCL only knows that its
/// call missed the deadline or that a peer failed.
fn lost_rank(error: &anyhow::Error) -> Option<Option<usize>> {
    error.chain().find_map(|cause| {
        if let Some(lost) = cause.downcast_ref::<CollectiveError>() {
            return Some(lost.peer());
        }
        cause.downcast_ref::<nccl::NcclError>().filter(|e| e.is_lost_rank()).map(|_| None)
    })
}

/// Follows the coordinator's weights until shutdown, reconnecting with backoff.
async fn follow_weights(
    client: CoordinatorClient<Channel>,
    node_id: String,
    shared: Arc<Shared>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        let mut client = client.clone();
        let stream = async {
            let mut stream = client
                .watch_weights(WatchWeightsRequest { node_id: node_id.clone() })
                .await?
                .into_inner();
            while let Some(weights) = stream.message().await? {
                shared.offer_weights(weights);
            }
            anyhow::Ok(())
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = stream => if let Err(e) = result {
                tracing::debug!(error = %format!("{e:#}"), "weights stream ended");
            },
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

/// Everything the training thread owns.
struct Trainer {
    config: RunConfig,
    estimator: Estimator,
    shared: Arc<Shared>,
    /// The intake queue, shared by this process's ranks; a rank holds it while it gathers.
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>,
    process: Arc<Process>,
    progress: Arc<Progress>,
    coordinator: CoordinatorClient<Channel>,
    node_id: String,
    rank: usize,
    /// This rank's index among the process's ranks; index 0 speaks for the process (phase,
    /// step, published weights).
    local: usize,
    world: usize,
    collective: Option<CollectivePlan>,
    tools: Option<GrpcTools>,
    device: Device,
    runtime: Handle,
}

impl Trainer {
    fn run(mut self) -> anyhow::Result<()> {
        setup::set_threads(&self.config);
        let plan = self.collective.take().unwrap_or(CollectivePlan::None);
        let mut collective = Collective::join(plan, self.rank, self.world)?;
        let _ = self.shared.collective.set(collective.name());
        let task = setup::task(&self.config)?;
        let tokenizer = setup::tokenizer(&self.config, &task)?;
        let model = setup::model(&self.config, &tokenizer, self.device)?;
        let a = &self.config.algorithm;
        let mut optimizer = AdamW::new(
            model.parameters(),
            AdamWConfig {
                lr: a.learning_rate,
                max_grad_norm: Some(a.max_grad_norm),
                ..Default::default()
            },
        );
        let max_tokens = model.config().max_position_embeddings as usize;
        let _ = self.shared.limits.set(IntakeLimits {
            objectives: self.config.task.objectives.len(),
            vocab_size: model.config().vocab_size as u32,
            max_tokens,
            max_trajectories: self.config.algorithm.group_size as usize,
        });
        let run_dir = self.config.run.dir.clone();
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("key `run.dir`: creating {}", run_dir.display()))?;
        let keep = self.config.algorithm.keep_checkpoints as usize;
        // The process's first rank installs the resumed ledger; its other ranks wait for that
        // before they gather (`LedgerReady` lets them go when dropped, on an error too).
        let ledger_ready = (self.local == 0).then(|| LedgerReady(self.shared.clone()));
        let resumed = checkpoint::load_latest(&run_dir, &model, &mut optimizer)?;
        if self.local == 0
            && let Some((_, state)) = &resumed
        {
            install_resumed_ledger(&self.shared, state);
        }
        drop(ledger_ready);
        let mut state = match resumed {
            Some((dir, state)) => {
                tracing::info!(
                    dir = %dir.display(),
                    step = state.step,
                    optimizer_step = state.optimizer_step,
                    groups_consumed = state.groups_consumed,
                    policy_version = state.policy_version,
                    digest = %parameter_digest(&model),
                    "resumed from checkpoint"
                );
                state
            }
            None => {
                if !self.warm_start(&model, &tokenizer, &task)? {
                    // Nothing worth a checkpoint yet: the next run starts from scratch.
                    return Ok(());
                }
                let evaluated = self.evaluate(&model, &tokenizer, &task, "warm_start")?;
                if let Some(result) = evaluated {
                    write_eval(&run_dir, "warm_start", &result)?;
                }
                TrainerState {
                    step: 0,
                    optimizer_step: 0,
                    policy_version: 0,
                    groups_consumed: 0,
                    ledger: Ledger::default(),
                    objective_weights: Vec::new(),
                    stage: 1,
                }
            }
        };
        let reference = self.reference(&model, &tokenizer, state.step)?;
        self.count_step(state.step);
        self.publish(&model, state.policy_version);
        let total = self.config.algorithm.total_steps;
        let mut metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run_dir.join("metrics.jsonl"))
            .context("opening metrics.jsonl")?;
        let started = Instant::now();
        while state.step < total {
            self.set_phase("training", state.step, total);
            // `None`: shutdown. The rank still joins the step's first collective, which tells
            // every rank to stop, so none is left waiting there for it until the deadline.
            let batch = self.gather(&state)?;
            let stepped = self.step(
                &model,
                reference.as_ref(),
                &mut collective,
                &mut optimizer,
                &mut state,
                batch,
            );
            let record = match stepped {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(e) => {
                    let Some(lost) = lost_rank(&e) else { return Err(e) };
                    // Every collective call of a step comes before its optimizer update, so the
                    // model and `state` still hold the last completed step: rank 0 saves them.
                    let peer = lost.map_or("a rank".into(), |p| format!("rank {p}"));
                    if self.rank != 0 {
                        bail!("lost learner {peer} at step {}: {e:#}", state.step + 1);
                    }
                    state.ledger = self.ledger_at(state.step);
                    let dir =
                        checkpoint::save(&run_dir, &model, &tokenizer, &optimizer, &state, keep)?;
                    bail!(
                        "lost learner {peer} at step {}: {e:#}; the run stops here, and \
                         {} (step {}) resumes it",
                        state.step + 1,
                        dir.display(),
                        state.step
                    );
                }
            };
            if tracing::enabled!(tracing::Level::DEBUG) {
                // Off by default: it reads every parameter. Ranks must print the same digest.
                tracing::debug!(step = state.step, rank = self.rank, digest = %parameter_digest(&model), "step parameters");
            }
            if self.rank == 0 {
                writeln!(metrics, "{record}").context("writing metrics.jsonl")?;
            }
            let step = state.step;
            self.count_step(step);
            if step % self.config.algorithm.sync_every == 0 {
                state.policy_version += 1;
                self.publish(&model, state.policy_version);
            }
            if step % self.config.algorithm.checkpoint_every == 0 && step < total && self.rank == 0
            {
                state.ledger = self.ledger_at(state.step);
                match checkpoint::save(&run_dir, &model, &tokenizer, &optimizer, &state, keep) {
                    Ok(dir) => {
                        tracing::info!(step, dir = %dir.display(), digest = %parameter_digest(&model), "checkpoint written")
                    }
                    // The previous checkpoint is intact; `algorithm.on_checkpoint_error` says
                    // whether to train on without this one.
                    Err(e) if self.config.algorithm.on_checkpoint_error == "continue" => {
                        tracing::error!(step, error = %e, "checkpoint not written; training goes on")
                    }
                    Err(e) => {
                        return Err(anyhow::Error::new(e).context(format!(
                            "step {step}: the checkpoint could not be written, so the run stops \
                             (the previous checkpoint is intact; `algorithm.on_checkpoint_error` \
                             = \"continue\" trains on)"
                        )));
                    }
                }
            }
            self.process.notify_status_changed();
        }
        let stopped_early = state.step < total;
        self.shared.close_intake();
        // Ranks that stepped together hold the same bits; the digest lets anyone check that.
        tracing::info!(step = state.step, rank = self.rank, digest = %parameter_digest(&model), "final parameters");
        if self.rank == 0 {
            state.ledger = self.ledger_at(state.step);
            let dir = checkpoint::save(&run_dir, &model, &tokenizer, &optimizer, &state, keep)?;
            tracing::info!(
                step = state.step,
                dir = %dir.display(),
                digest = %parameter_digest(&model),
                seconds = started.elapsed().as_secs_f64(),
                "checkpoint written"
            );
            write_ledger(&run_dir, &state.ledger)?;
        }
        // With no RL step (`total_steps = 0`: a warm start alone, or `coordinator eval`) the
        // final policy is the one evaluated before, and `warm_start` already holds its result.
        if !stopped_early && total > 0 {
            if let Some(result) = self.evaluate(&model, &tokenizer, &task, "final")? {
                write_eval(&run_dir, "final", &result)?;
            }
            self.set_phase("done", total, total);
        }
        Ok(())
    }

    /// The reference policy of the KL term (`algorithm.kl_coef > 0`): the policy RL starts
    /// from, kept in `checkpoints/reference/` so a resumed run measures against the same one.
    fn reference(
        &self,
        model: &Qwen2,
        tokenizer: &Tokenizer,
        step: u64,
    ) -> anyhow::Result<Option<Qwen2>> {
        if self.config.algorithm.kl_coef <= 0.0 {
            return Ok(None);
        }
        let dir = checkpoint::checkpoints_dir(&self.config.run.dir).join("reference");
        let reference = setup::model(&self.config, tokenizer, self.device)?;
        if step == 0 {
            tch::no_grad(|| {
                for ((_, src), (_, dst)) in
                    model.parameters().iter().zip(reference.parameters().iter())
                {
                    dst.shallow_clone().copy_(src);
                }
            });
            if self.rank == 0 {
                let options =
                    policy::SaveOptions { tokenizer: Some(tokenizer), ..Default::default() };
                policy::checkpoint::save(&reference, &dir, &options)
                    .with_context(|| format!("saving the KL reference to {}", dir.display()))?;
            }
        } else {
            policy::checkpoint::load_weights(&reference, &dir)
                .with_context(|| format!("loading the KL reference from {}", dir.display()))?;
        }
        Ok(Some(reference))
    }

    /// The supervised warm start, when configured and the task has demonstrations; false when
    /// a shutdown stopped it before its last step.
    fn warm_start(
        &self,
        model: &Qwen2,
        tokenizer: &Tokenizer,
        task: &TaskSetup,
    ) -> anyhow::Result<bool> {
        let a = &self.config.algorithm;
        if a.warm_start_steps == 0 || task.demonstrations.is_empty() {
            return Ok(true);
        }
        let config = WarmStartConfig {
            steps: a.warm_start_steps as usize,
            batch_size: a.warm_start_batch as usize,
            peak_lr: a.warm_start_lr,
            warmup_steps: 30.min(a.warm_start_steps as usize / 4).max(1),
            // Every rank starts from the same policy: same draws everywhere.
            seed: self.config.run.seed,
        };
        let total = config.steps as u64;
        let started = Instant::now();
        let shutdown = self.process.shutdown().clone();
        let losses = warm_start(model, tokenizer, &task.demonstrations, &config, |step, loss| {
            self.set_phase("warm start", step as u64 + 1, total);
            if step % 50 == 0 {
                tracing::info!(step, loss, "warm start");
            }
            if shutdown.is_cancelled() {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        })?;
        if losses.len() < config.steps {
            tracing::info!(
                steps = losses.len(),
                "stopped during the warm start; the next run starts it again"
            );
            return Ok(false);
        }
        tracing::info!(
            steps = losses.len(),
            first_loss = losses.first().copied().unwrap_or(0.0),
            last_loss = losses.last().copied().unwrap_or(0.0),
            seconds = started.elapsed().as_secs_f64(),
            "warm start done"
        );
        Ok(true)
    }

    /// A held-out evaluation (rank 0 only, when there is a tool-server and questions).
    fn evaluate(
        &mut self,
        model: &Qwen2,
        tokenizer: &Tokenizer,
        task: &TaskSetup,
        label: &str,
    ) -> anyhow::Result<Option<EvalResult>> {
        let limit = self.config.algorithm.eval_questions as usize;
        let Some(tools) = self.tools.as_mut() else { return Ok(None) };
        let questions =
            if self.config.algorithm.eval_split == "train" { &task.train } else { &task.eval };
        if self.rank != 0 || limit == 0 || questions.is_empty() {
            return Ok(None);
        }
        self.shared.set_phase("evaluating", 0, limit.min(questions.len()) as u64);
        let params = setup::sampling(&self.config, tokenizer, true);
        let reference = self.config.hv_reference();
        let started = Instant::now();
        let spec = eval::EvalSpec {
            params: &params,
            objectives: &self.config.task.objectives,
            reference: &reference,
            limit,
            correct_threshold: self.config.algorithm.correct_threshold,
        };
        let result =
            tch::no_grad(|| eval::evaluate(model, tokenizer, task, questions, tools, &spec))?;
        tracing::info!(
            label,
            questions = result.questions,
            accuracy = result.accuracy,
            tool_calls_per_q = result.tool_calls_per_q,
            hypervolume = result.hypervolume,
            seconds = started.elapsed().as_secs_f64(),
            "held-out evaluation"
        );
        Ok(Some(result))
    }

    /// The ledger to save with a checkpoint of step `step`: once every rank of this process has
    /// recorded its groups of that step (each does so after its optimizer update), or once the
    /// collective deadline has passed (a rank that failed never will).
    fn ledger_at(&self, step: u64) -> Ledger {
        let deadline =
            Instant::now() + Duration::from_millis(self.config.cluster.collective_timeout_ms);
        while self.shared.recorded_steps.iter().any(|s| s.load(Ordering::Acquire) < step)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.shared.ledger().clone()
    }

    /// The phase, for status (this process's first rank speaks for it).
    fn set_phase(&self, name: &str, done: u64, total: u64) {
        if self.local == 0 {
            self.shared.set_phase(name, done, total);
        }
    }

    /// Steps done, for status and heartbeats (this process's first rank speaks for it).
    fn count_step(&self, step: u64) {
        if self.local == 0 {
            self.shared.step.store(step, Ordering::Relaxed);
            self.progress.progress.store(step, Ordering::Relaxed);
        }
    }

    /// Publishes `model` as `version` on this process's weights port (its ranks hold the same
    /// bits, so its first rank publishes for all).
    fn publish(&self, model: &Qwen2, version: u64) {
        if self.local != 0 {
            return;
        }
        let published = Arc::new(weights::publish(model, version));
        self.shared.policy_version.store(version, Ordering::Relaxed);
        self.progress.policy_version.store(version, Ordering::Relaxed);
        self.shared.published.send_replace(Some(published));
    }

    /// This rank's share of the next step; `None` on shutdown. Groups that went stale while
    /// queued are dropped and counted.
    fn gather(&mut self, state: &TrainerState) -> anyhow::Result<Option<Vec<Queued>>> {
        let wanted = self.config.algorithm.groups_per_step as usize / self.world;
        let mut batch = Vec::with_capacity(wanted);
        if self.local != 0 {
            let mut ready = self.shared.ledger_ready.subscribe();
            if !matches!(self.unless_shutdown(ready.wait_for(|ready| *ready)), Some(Ok(_))) {
                return Ok(None);
            }
        }
        // Held until this rank has its share: the process's ranks take theirs one after the
        // other.
        let Some(mut queue) = self.unless_shutdown(self.queue.lock()) else {
            return Ok(None);
        };
        while batch.len() < wanted {
            let Some(Some(queued)) = self.unless_shutdown(queue.recv()) else { return Ok(None) };
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            if state.policy_version.saturating_sub(queued.group.policy_version)
                > self.config.algorithm.max_staleness
            {
                self.shared.stale.fetch_add(1, Ordering::Relaxed);
                self.shared
                    .stale_trajectories
                    .fetch_add(queued.group.samples.len() as u64, Ordering::Relaxed);
                self.shared.ledger().dropped_stale(&queued.actor_id);
                continue;
            }
            batch.push(queued);
        }
        Ok(Some(batch))
    }

    /// Blocks on `future` unless shutdown comes first (then `None`).
    fn unless_shutdown<T>(&self, future: impl std::future::Future<Output = T>) -> Option<T> {
        let shutdown = self.process.shutdown();
        self.runtime.block_on(async {
            tokio::select! {
                () = shutdown.cancelled() => None,
                output = future => Some(output),
            }
        })
    }

    /// One learner step on `batch`; returns the metrics record.
    fn step(
        &mut self,
        model: &Qwen2,
        reference: Option<&Qwen2>,
        collective: &mut Collective,
        optimizer: &mut AdamW,
        state: &mut TrainerState,
        batch: Option<Vec<Queued>>,
    ) -> anyhow::Result<Option<serde_json::Value>> {
        let step = state.step + 1;
        let a = self.config.algorithm.clone();
        let names = self.config.task.objectives.clone();
        let k = names.len();
        // Rank 0's weights and stage hold for every rank: the others contribute zeros. The
        // last entry counts the ranks that are stopping (shutdown came while they gathered):
        // if any is, no rank takes the step.
        let held = self.shared.objective_weights.borrow().clone();
        let mut steering = vec![0.0; k + 3];
        if self.rank == 0 {
            steering[..k].copy_from_slice(&held.weights);
            steering[k] = if held.stage == Stage::ParetoRanking as i32 { 2.0 } else { 1.0 };
            steering[k + 1] = held.sequence as f64;
        }
        steering[k + 2] = if batch.is_none() { 1.0 } else { 0.0 };
        collective.sum(&mut steering).context("all-reducing the weights")?;
        if steering[k + 2] > 0.0 {
            // This process's own shutdown stops its ranks cleanly; a rank elsewhere stopping
            // leaves this process unable to go on: an error, so it is restarted and resumes.
            if self.process.shutdown().is_cancelled() {
                return Ok(None);
            }
            return Err(CollectiveError::PeerStopping { rank: self.rank }.into());
        }
        let Some(batch) = batch else { return Ok(None) };
        let weights = steering[..k].to_vec();
        let stage = steering[k] as u8;
        let sequence = steering[k + 1] as u64;

        let estimator = self.estimator;
        let accuracy = names.iter().position(|n| n == "accuracy").unwrap_or(0);
        let mode = if a.dominance == "plain" {
            Dominance::Plain
        } else {
            Dominance::Constrained { accuracy, threshold: a.correct_threshold }
        };
        let context = EstimatorContext {
            weights: &weights,
            stage,
            accuracy,
            stage2: Stage2Options { mode, lambda_cd: a.lambda_cd, dr_grpo: a.dr_grpo },
            correct_threshold: a.correct_threshold,
        };
        let mut samples: Vec<Sample> = Vec::new();
        let mut scores: Vec<Vec<f64>> = Vec::new();
        let mut zero_groups = 0usize;
        // sums: tokens, trajectories, objectives (K), tool calls, correct, zero groups, groups.
        let mut sums = vec![0.0; 2 + k + 4];
        for queued in &batch {
            let g = &queued.group;
            let n = g.samples.len();
            let points = Points::new(&g.objectives, k).context("a group's objectives")?;
            let values = estimator.group_advantages(points, &g.tool_calls, &context);
            if advantages::all_equal(&values) {
                zero_groups += 1;
            }
            sums[1] += n as f64;
            for (i, y) in g.objectives.chunks(k).enumerate() {
                for (s, v) in sums[2..2 + k].iter_mut().zip(y) {
                    *s += v;
                }
                sums[2 + k] += f64::from(g.tool_calls[i]);
                sums[3 + k] += f64::from(u8::from(y[accuracy] >= a.correct_threshold));
            }
            sums[5 + k] += 1.0;
            scores.push(values);
            for s in &g.samples {
                sums[0] += s.generated_tokens() as f64;
            }
        }
        sums[4 + k] = zero_groups as f64;
        // GDPO whitens the group scores over the whole step across ranks (spec §5).
        let mut moments = vec![0.0; 3];
        if estimator.whitens_over_the_batch() {
            for values in &scores {
                for v in values {
                    moments[0] += v;
                    moments[1] += v * v;
                    moments[2] += 1.0;
                }
            }
        }
        collective.sum(&mut sums).context("all-reducing step statistics")?;
        collective.sum(&mut moments).context("all-reducing GDPO's moments")?;
        if estimator.whitens_over_the_batch() && moments[2] > 0.0 {
            let mean = moments[0] / moments[2];
            let std = (moments[1] / moments[2] - mean * mean).max(0.0).sqrt();
            for values in &mut scores {
                *values = advantages::whiten_with(values, mean, std);
            }
        }
        for (queued, values) in batch.iter().zip(&scores) {
            for (s, advantage) in queued.group.samples.iter().zip(values) {
                samples.push(Sample { advantage: *advantage, ..s.clone() });
            }
        }
        let total_tokens = sums[0].max(1.0);
        let loss_config =
            LossConfig { clip_low: a.clip_low, clip_high: a.clip_high, kl_coef: a.kl_coef };
        let options = PassOptions {
            temperature: a.temperature,
            checkpointing: false,
            max_tokens_per_pass: usize::try_from(self.config.learner.max_tokens_per_pass)
                .unwrap_or(usize::MAX),
        };
        let gradient =
            local_gradient(model, reference, &samples, total_tokens, &loss_config, options);
        let mut flat = Vec::<f32>::try_from(&gradient.flat).context("gradient to host")?;
        let mut loss_stats = vec![gradient.loss, gradient.stats.clip_fraction];
        collective.sum(&mut flat).context("all-reducing gradients")?;
        collective.sum(&mut loss_stats).context("all-reducing the loss")?;
        let reduced = Tensor::from_slice(&flat).to_device(model.device()).to_kind(Kind::Float);
        let step_stats = optimizer.step_with(model.parameters(), &reduced);

        let trajectories = sums[1].max(1.0);
        let mean: Vec<f64> = sums[2..2 + k].iter().map(|s| s / trajectories).collect();
        let groups = sums[5 + k].max(1.0);
        let tool_calls = sums[2 + k];
        let metrics_map: HashMap<String, f64> = [
            ("accuracy", mean[accuracy]),
            ("tool_calls_per_q", tool_calls / trajectories),
            ("tool_productivity", if tool_calls > 0.0 { sums[3 + k] / tool_calls } else { 0.0 }),
            ("tokens_per_answer", sums[0] / trajectories),
            ("zero_advantage_groups", sums[4 + k] / groups),
            // Trajectories dropped as stale since the learner started (spec §7).
            ("stale_dropped", self.shared.stale_trajectories.load(Ordering::Relaxed) as f64),
            ("loss", loss_stats[0]),
            ("clip_fraction", loss_stats[1]),
            ("grad_norm", step_stats.grad_norm),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect();

        state.step = step;
        state.optimizer_step = optimizer.step;
        state.groups_consumed += a.groups_per_step as u64;
        {
            let mut ledger = self.shared.ledger();
            for queued in &batch {
                ledger.trained(&queued.actor_id);
            }
        }
        self.shared.recorded_steps[self.local].store(step, Ordering::Release);
        state.objective_weights = weights.clone();
        state.stage = stage;

        let mut report = None;
        if self.rank == 0 {
            report = self.report(step, &mean, trajectories as u32, sequence, &metrics_map);
        }
        let (hv, archive_size, next_weights) = match &report {
            Some(w) => (w.hypervolume, w.archive_size, w.weights.clone()),
            None => (held.hypervolume, held.archive_size, held.weights.clone()),
        };
        let time = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        let mut record = json!({
            "step": step,
            "time": time,
            "stage": stage,
            "weights": weights,
            "weights_computed_at": held.computed_at_step,
            "next_weights": next_weights,
            "hv": hv,
            "archive_size": archive_size,
            "policy_version": state.policy_version,
            "trajectories": trajectories,
        });
        for (name, value) in names.iter().zip(&mean) {
            record[format!("obj.{name}")] = json!(value);
        }
        for (name, value) in &metrics_map {
            record[name] = json!(value);
        }
        Ok(Some(record))
    }

    /// Sends step `step`'s batch mean to the coordinator; returns the weights it answers.
    fn report(
        &mut self,
        step: u64,
        mean: &[f64],
        trajectories: u32,
        sequence: u64,
        metrics: &HashMap<String, f64>,
    ) -> Option<ObjectiveWeights> {
        let request = ReportObjectivesRequest {
            node_id: self.node_id.clone(),
            step,
            batch_mean: Some(ObjectiveVector {
                values: mean.iter().map(|v| v.clamp(0.0, 1.0)).collect(),
            }),
            trajectories,
            weights_sequence: sequence,
            metrics: metrics.clone(),
        };
        let mut client = self.coordinator.clone();
        let reply = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), client.report_objectives(request)).await
        });
        match reply {
            Ok(Ok(reply)) => {
                let weights = reply.into_inner().weights?;
                self.shared.offer_weights(weights.clone());
                Some(weights)
            }
            Ok(Err(status)) => {
                tracing::warn!(step, error = %status.message(), "reporting objectives failed");
                self.progress.error(format!("report at step {step}: {}", status.message()));
                None
            }
            Err(_) => {
                tracing::warn!(step, "reporting objectives timed out");
                None
            }
        }
    }
}

/// Writes `ledger.json` in the run directory (the ledger of the checkpoint just written, for
/// operators and tests) and logs its totals and whether they add up.
fn write_ledger(run_dir: &std::path::Path, ledger: &Ledger) -> anyhow::Result<()> {
    let t = ledger.totals();
    let balanced = ledger.check();
    tracing::info!(
        groups = t.through,
        queued = t.queued,
        trained = t.trained,
        stale = t.stale,
        invalid = t.invalid,
        lost = t.lost,
        duplicates = t.duplicates,
        balanced = balanced.is_ok(),
        "trajectory ledger"
    );
    if let Err(e) = balanced {
        tracing::error!(error = %e, "the trajectory ledger does not add up");
    }
    let path = run_dir.join("ledger.json");
    let tmp = run_dir.join("ledger.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(ledger)?)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Adds `label`'s result to `eval.json` in the run directory.
fn write_eval(run_dir: &std::path::Path, label: &str, result: &EvalResult) -> anyhow::Result<()> {
    let path: PathBuf = run_dir.join("eval.json");
    let mut all: serde_json::Map<String, serde_json::Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    all.insert(label.to_owned(), serde_json::to_value(result)?);
    std::fs::write(&path, serde_json::to_string_pretty(&all)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// A 64-bit FNV-1a digest of every parameter's bytes, in parameter order.
pub fn parameter_digest(model: &Qwen2) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (_, p) in model.parameters().iter() {
        for b in actor::weights::tensor_bytes(p) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_rank_is_recognised_under_any_context_and_named_when_known() {
        let cpu = anyhow::Error::new(CollectiveError::Timeout { rank: 0, peer: 1, seconds: 2.0 })
            .context("all-reducing gradients");
        assert_eq!(lost_rank(&cpu), Some(Some(1)));
        let gpu = anyhow::Error::new(nccl::NcclError::Timeout {
            what: "all-reduce",
            rank: 0,
            world: 2,
            seconds: 2.0,
        })
        .context("all-reducing gradients");
        assert_eq!(lost_rank(&gpu), Some(None));
        let gone = anyhow::Error::new(nccl::NcclError::PeerLost {
            what: "all-reduce",
            rank: 0,
            code: "ncclSystemError".into(),
        });
        assert_eq!(lost_rank(&gone), Some(None));
        // Not a lost rank: the run fails with the error itself, no checkpoint.
        let aborted = anyhow::Error::new(nccl::NcclError::Aborted).context("all-reducing");
        assert_eq!(lost_rank(&aborted), None);
        assert_eq!(lost_rank(&anyhow::anyhow!("disk full")), None);
    }
}

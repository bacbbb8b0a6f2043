//! The actor process's work, one task per concern (DESIGN.md §2):
//!
//! - **membership**: register, heartbeat, and read the rendezvous for a learner and a
//!   tool-server (`paretopo_service::cluster`);
//! - **policy follower** ([`follow_policy`]): subscribes to the learner's `WatchPolicy`, puts
//!   each version together and hands the newest to the sampler through a `watch` channel;
//! - **sampler** ([`sample_loop`], a blocking thread, since tch is synchronous): takes prompts
//!   from this actor's shard, runs G episodes per prompt with the agent loop, scores them, and
//!   switches to a newer policy version between batches;
//! - **pusher** ([`push_groups`]): streams groups to the learner's `PushTrajectories`, keeps
//!   the unacknowledged ones, and sends them again after reconnecting (the learner drops
//!   duplicates by actor id and sequence number).
//!
//! Backpressure runs end to end: the learner stops reading when its queue is full, the pusher
//! stops taking groups when `limits.actor_unacked_groups` are in flight, and the sampler blocks on the full
//! channel. Shutdown cancels the process token; every loop selects on it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use paretopo_proto::v1::learner_client::LearnerClient;
use paretopo_proto::v1::{GroupOutcome, TrajectoryGroup, WatchPolicyRequest};
use paretopo_service::cluster::{self, Backoff, Progress};
use paretopo_service::sealed;
use paretopo_service::security::{BlockingStream, Security};
use paretopo_service::{Process, Role, RunConfig};
use policy::{Qwen2, Sampler, Session, Tokenizer};
use tasks::datasets::{self, Example};
use tch::Device;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::episode::{SessionModel, Trajectory, run_episodes, score};
use crate::setup::{self, TaskSetup};
use crate::tools::{GrpcTools, ToolClientConfig};
use crate::weights::{Assembler, PolicyVersion, apply};
use crate::wire;

/// Counters the status service reads.
#[derive(Debug, Default)]
pub struct ActorCounters {
    /// The policy version sampled with.
    pub policy_version: AtomicU64,
    /// Episodes finished.
    pub episodes: AtomicU64,
    /// Groups handed to the pusher.
    pub groups_sent: AtomicU64,
    /// Groups the learner acknowledged.
    pub groups_acked: AtomicU64,
    /// Those acknowledgements by outcome: accepted, stale, invalid, duplicate (this actor's
    /// side of the trajectory ledger).
    pub acked_by_outcome: [AtomicU64; 4],
    /// Groups sent and not yet acknowledged.
    pub unacked: AtomicU64,
    /// The highest sequence number acknowledged.
    pub acked_through: AtomicU64,
    /// Tool calls made.
    pub tool_calls: AtomicU64,
    /// Generated tokens per second of the last batch, as f64 bits.
    pub tokens_per_second_bits: AtomicU64,
    /// The learner streamed to.
    pub learner_address: std::sync::Mutex<String>,
}

impl ActorCounters {
    /// Counts one acknowledgement; `unacked` groups are still waiting for theirs.
    fn count_ack(&self, ack: &paretopo_proto::v1::PushAck, unacked: usize) {
        self.groups_acked.fetch_add(1, Ordering::Relaxed);
        let slot = match GroupOutcome::try_from(ack.outcome) {
            Ok(GroupOutcome::Stale) => 1,
            Ok(GroupOutcome::Invalid) => 2,
            Ok(GroupOutcome::Duplicate) => 3,
            _ => 0,
        };
        self.acked_by_outcome[slot].fetch_add(1, Ordering::Relaxed);
        self.acked_through.fetch_max(ack.group_seq, Ordering::Relaxed);
        self.unacked.store(unacked as u64, Ordering::Relaxed);
    }

    /// Logs this actor's side of the trajectory ledger (at exit, for reconciliation).
    fn log_ledger(&self) {
        let [accepted, stale, invalid, duplicate] =
            self.acked_by_outcome.each_ref().map(|c| c.load(Ordering::Relaxed));
        tracing::info!(
            sent = self.groups_sent.load(Ordering::Relaxed),
            acked_through = self.acked_through.load(Ordering::Relaxed),
            accepted,
            stale,
            invalid,
            duplicate,
            unacked = self.unacked.load(Ordering::Relaxed),
            "trajectory ledger (this actor's side)"
        );
    }
}

/// The actor's work, from registration to shutdown.
pub async fn work(
    config: RunConfig,
    process: Arc<Process>,
    counters: Arc<ActorCounters>,
    device: Device,
) -> anyhow::Result<()> {
    let progress = Arc::new(Progress::default());
    let mut member = cluster::register(&config, &process, 0, Vec::new(), String::new()).await?;
    member.spawn_heartbeats(process.clone(), progress.clone());
    let view = member.rendezvous(&process).await?;
    let index = view.actors.iter().position(|p| p.node_id == member.node_id).unwrap_or(0);
    let actors = view.actors.len().max(1);
    let pick = |peers: &[paretopo_proto::v1::Peer], what: &str| {
        peers
            .get(index % peers.len().max(1))
            .map(|p| p.address.clone())
            .with_context(|| format!("the rendezvous lists no {what}"))
    };
    let learner = pick(&view.learners, "learner")?;
    let tool_server = pick(&view.tool_servers, "tool-server")?;
    *counters.learner_address.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
        learner.clone();
    tracing::info!(node = %member.node_id, index, actors, %learner, %tool_server, "rendezvous complete");

    let task = setup::task(&config)?;
    let shard = datasets::shard(&task.train, index, actors, config.run.seed);
    if shard.is_empty() {
        bail!("actor shard {index} of {actors} holds no question");
    }
    let (policy_tx, policy_rx) = watch::channel(None);
    tokio::spawn(follow_policy(
        process.security().clone(),
        learner.clone(),
        member.node_id.clone(),
        config.cluster.weights_transport == "tcp",
        policy_tx,
        process.shutdown().clone(),
    ));
    let (groups_tx, groups_rx) = mpsc::channel(2);
    let max_unacked = config.limits.actor_unacked_groups.max(1) as usize;
    tokio::spawn(push_groups(
        process.security().clone(),
        learner,
        groups_rx,
        max_unacked,
        process.shutdown().clone(),
        counters.clone(),
    ));

    let tools = GrpcTools::new(
        tokio::runtime::Handle::current(),
        process.security().channel(&tool_server, Role::ToolServer)?,
        ToolClientConfig { caller_id: member.node_id.clone(), ..Default::default() },
    );
    let sampler = SamplerSetup {
        config,
        task,
        shard,
        actor_id: member.node_id.clone(),
        device,
        tools,
        policy: policy_rx,
        groups: groups_tx,
        shutdown: process.shutdown().clone(),
        counters,
        progress,
    };
    tokio::task::spawn_blocking(move || sample_loop(sampler))
        .await
        .context("the sampler panicked")?
}

/// Everything the sampling thread owns.
struct SamplerSetup {
    config: RunConfig,
    task: TaskSetup,
    shard: Vec<Example>,
    actor_id: String,
    device: Device,
    tools: GrpcTools,
    policy: watch::Receiver<Option<Arc<PolicyVersion>>>,
    groups: mpsc::Sender<TrajectoryGroup>,
    shutdown: CancellationToken,
    counters: Arc<ActorCounters>,
    progress: Arc<Progress>,
}

/// A seed for this actor's sampler: the run's seed mixed with the actor's id, so actors draw
/// different episodes and a restarted actor with the same id draws the same ones again.
fn actor_seed(run_seed: u64, actor_id: &str) -> u64 {
    actor_id.bytes().fold(run_seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn sample_loop(mut s: SamplerSetup) -> anyhow::Result<()> {
    setup::set_threads(&s.config);
    let tokenizer = setup::tokenizer(&s.config, &s.task)?;
    let model = setup::model(&s.config, &tokenizer, s.device)?;
    let mut version = None;
    let mut sampler = Sampler::new(actor_seed(s.config.run.seed, &s.actor_id));
    let params = setup::sampling(&s.config, &tokenizer, false);
    let group_size = s.config.algorithm.group_size as usize;
    let tools = s.task.tool_names().iter().map(|t| t.to_string()).collect::<Vec<_>>();
    let tool_refs: Vec<&str> = tools.iter().map(String::as_str).collect();
    let mut cursor = 0usize;
    let mut group_seq = 0u64;
    while !s.shutdown.is_cancelled() {
        // Follow the newest version between batches (never inside an episode).
        let newest = s.policy.borrow_and_update().clone();
        if let Some(newest) = newest
            && Some(newest.version) != version
        {
            apply(&model, &newest).context("applying policy weights")?;
            version = Some(newest.version);
            s.counters.policy_version.store(newest.version, Ordering::Relaxed);
            s.progress.policy_version.store(newest.version, Ordering::Relaxed);
            tracing::debug!(version = newest.version, "following a new policy version");
        }
        let Some(current) = version else {
            // No weights yet: the learner is still warming up.
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let examples: Vec<Example> = (0..s.config.algorithm.actor_batch_prompts as usize)
            .map(|i| s.shard[(cursor + i) % s.shard.len()].clone())
            .collect();
        cursor = (cursor + examples.len()) % s.shard.len();
        let started = Instant::now();
        let trajectories = run_batch(
            &model,
            &tokenizer,
            &mut sampler,
            &params,
            &mut s.tools,
            &s.task,
            &tool_refs,
            &examples,
            group_size,
        )?;
        let seconds = started.elapsed().as_secs_f64();
        let generated: u64 = trajectories.iter().map(|t| u64::from(t.generated_tokens)).sum();
        s.counters
            .tokens_per_second_bits
            .store((generated as f64 / seconds.max(1e-9)).to_bits(), Ordering::Relaxed);
        let per_episode = seconds / trajectories.len().max(1) as f64;
        for (example, group) in examples.iter().zip(trajectories.chunks(group_size)) {
            group_seq += 1;
            let message = to_group(&s, example, group, current, group_seq, per_episode);
            s.counters.episodes.fetch_add(group.len() as u64, Ordering::Relaxed);
            s.progress.progress.fetch_add(group.len() as u64, Ordering::Relaxed);
            s.counters
                .tool_calls
                .fetch_add(group.iter().map(|t| u64::from(t.tool_calls)).sum(), Ordering::Relaxed);
            if s.groups.blocking_send(message).is_err() {
                return Ok(()); // the pusher stopped: shutting down
            }
            s.counters.groups_sent.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// G episodes for each example, sampled as one batch.
#[allow(clippy::too_many_arguments)]
fn run_batch(
    model: &Qwen2,
    tokenizer: &Tokenizer,
    sampler: &mut Sampler,
    params: &policy::SamplingParams,
    runner: &mut GrpcTools,
    task: &TaskSetup,
    tools: &[&str],
    examples: &[Example],
    group_size: usize,
) -> anyhow::Result<Vec<Trajectory>> {
    let mut prompts = Vec::with_capacity(examples.len() * group_size);
    for example in examples {
        let ids = tokenizer.encode(&tasks::synthetic::prompt(&example.question))?;
        prompts.extend(std::iter::repeat_n(ids, group_size));
    }
    let capacity = session_capacity(model, &prompts, task);
    let mut turn_model = SessionModel {
        session: Session::new(model, &prompts, capacity),
        params,
        sampler,
        tokenizer,
    };
    Ok(run_episodes(&mut turn_model, tokenizer, runner, tools, &prompts, &task.budgets)?)
}

/// KV-cache room for the longest prompt, the token budget and the tool responses (at most
/// 128 tokens each), within the model's context.
pub fn session_capacity(model: &Qwen2, prompts: &[Vec<i64>], task: &TaskSetup) -> i64 {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0) as i64;
    let room =
        longest + i64::from(task.budgets.tokens) + 128 * i64::from(task.budgets.tool_calls + 1);
    room.min(model.config().max_position_embeddings)
}

fn to_group(
    s: &SamplerSetup,
    example: &Example,
    group: &[Trajectory],
    version: u64,
    group_seq: u64,
    per_episode: f64,
) -> TrajectoryGroup {
    let trajectories = group
        .iter()
        .map(|t| {
            let (objectives, raw) =
                score(t, example, &s.task.objectives, &s.task.budgets, s.task.metric);
            let mut proto = wire::to_proto(t, &objectives, &raw);
            if let Some(m) = proto.metrics.as_mut() {
                m.wall_seconds = per_episode;
            }
            proto
        })
        .collect();
    TrajectoryGroup {
        actor_id: s.actor_id.clone(),
        group_seq,
        policy_version: version,
        prompt_id: format!("{}:{}", s.config.task.name, example.id),
        prompt_tokens: group.first().map_or(0, |t| t.prompt.len() as u32),
        trajectories,
        temperature: s.config.algorithm.temperature as f32,
    }
}

/// Subscribes to the learner's policy versions until shutdown, reconnecting with backoff.
/// With `raw_tcp`, the stream carries notices and each version's bytes come over TCP (TLS
/// when TLS is on)
/// ([`fetch_raw`]); otherwise the stream carries the chunks.
pub async fn follow_policy(
    security: Arc<Security>,
    learner: String,
    node_id: String,
    raw_tcp: bool,
    newest: watch::Sender<Option<Arc<PolicyVersion>>>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    loop {
        let have_version = newest.borrow().as_ref().map_or(0, |v| v.version + 1);
        let result = async {
            let mut client = LearnerClient::new(security.channel(&learner, Role::Learner)?);
            let request = WatchPolicyRequest { node_id: node_id.clone(), have_version, raw_tcp };
            let mut stream = client.watch_policy(request).await?.into_inner();
            let mut assembler = Assembler::default();
            // The version before, once the sampler has let go of it: its buffers are reused.
            let mut staging: Option<PolicyVersion> = None;
            while let Some(chunk) = stream.message().await? {
                if !chunk.raw_address.is_empty() {
                    let version =
                        fetch_raw(&security, &chunk.raw_address, chunk.version, staging.take())
                            .await?;
                    tracing::debug!(version = version.version, "fetched a policy version over TCP");
                    let old = newest.send_replace(Some(Arc::new(version)));
                    staging = old.and_then(|old| Arc::try_unwrap(old).ok());
                    continue;
                }
                if let Some(version) = assembler.push(chunk)? {
                    tracing::debug!(version = version.version, "received a policy version");
                    newest.send_replace(Some(version));
                }
            }
            anyhow::Ok(())
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            result = result => match result {
                Ok(()) => backoff.reset(),
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "policy stream ended"),
            },
        }
        if !backoff.wait(&shutdown).await {
            return;
        }
    }
}

/// Fetches policy `version` (or a newer one, if the learner has moved on) from a learner's
/// raw weights port: sends the version wanted (u64, little-endian), reads one version in
/// [`crate::weights::read_raw`]'s format on a blocking thread (plain blocking reads of large
/// buffers are what makes this path fast), into `staging`'s buffers where they fit. With TLS,
/// the learner offers the version's key over TLS and the version follows as sealed frames,
/// decrypted where they land (`paretopo_service::sealed`). Every read and write times out
/// after two minutes.
pub async fn fetch_raw(
    security: &Security,
    address: &str,
    version: u64,
    staging: Option<PolicyVersion>,
) -> anyhow::Result<PolicyVersion> {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to the weights port {address}"))?
        .into_std()?;
    tcp.set_nonblocking(false)?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(Duration::from_secs(120)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(120)))?;
    let stream = security.connect_blocking(tcp, Role::Learner)?;
    let fetch = move || -> std::io::Result<PolicyVersion> {
        use std::io::Read as _;
        use std::io::Write as _;
        let mut stream = stream;
        stream.write_all(&version.to_le_bytes())?;
        stream.flush()?;
        let BlockingStream::Client(mut tls) = stream else {
            let mut plain = std::io::BufReader::with_capacity(1 << 16, stream);
            return crate::weights::read_raw(&mut plain, staging);
        };
        let mut offer = [0u8; sealed::OFFER_LEN];
        tls.read_exact(&mut offer)?;
        let key = sealed::ObjectKey::from_offer(&offer);
        // Nothing more comes over TLS: the learner sends the frames once it has this.
        tls.write_all(&[sealed::READY])?;
        tls.flush()?;
        let (_, tcp) = tls.into_parts();
        let mut sealed = sealed::SealedReader::new(tcp, key);
        let received = crate::weights::read_raw(&mut sealed, staging)?;
        // The learner ends every transfer with an empty last frame: reading it checks that
        // nothing follows, and the connection then closes with nothing left unread.
        if sealed.read(&mut [0u8; 1])? != 0 {
            return Err(crate::weights::invalid(
                "more bytes than the policy version's header names".into(),
            ));
        }
        Ok(received)
    };
    tokio::task::spawn_blocking(fetch)
        .await
        .context("the weights fetch panicked")?
        .with_context(|| format!("fetching policy version {version} from {address}"))
}

/// Streams groups to the learner until shutdown, with at most `max_unacked` unacknowledged;
/// after a lost connection, reconnects with backoff and sends the unacknowledged groups again
/// first.
pub async fn push_groups(
    security: Arc<Security>,
    learner: String,
    mut groups: mpsc::Receiver<TrajectoryGroup>,
    max_unacked: usize,
    shutdown: CancellationToken,
    counters: Arc<ActorCounters>,
) {
    let mut pending: VecDeque<TrajectoryGroup> = VecDeque::new();
    let mut backoff = Backoff::default();
    let mut failures = 0u64;
    loop {
        let connection = async {
            let mut client = LearnerClient::new(security.channel(&learner, Role::Learner)?);
            let (tx, rx) = mpsc::channel(4);
            let mut acks = client.push_trajectories(ReceiverStream::new(rx)).await?.into_inner();
            let mut resend: VecDeque<TrajectoryGroup> = pending.clone();
            loop {
                tokio::select! {
                    ack = acks.message() => {
                        let Some(ack) = ack? else { anyhow::bail!("the learner closed the stream") };
                        failures = 0;
                        while pending.front().is_some_and(|g| g.group_seq <= ack.group_seq) {
                            pending.pop_front();
                        }
                        counters.count_ack(&ack, pending.len());
                        if ack.outcome == GroupOutcome::Invalid as i32 {
                            tracing::warn!(seq = ack.group_seq, error = %ack.error, "the learner rejected a group");
                        }
                    }
                    permit = tx.reserve(), if !resend.is_empty() => {
                        if let Some(group) = resend.pop_front() {
                            permit?.send(group);
                        }
                    }
                    group = groups.recv(), if resend.is_empty() && pending.len() < max_unacked => {
                        let Some(group) = group else { return anyhow::Ok(()) };
                        pending.push_back(group.clone());
                        counters.unacked.store(pending.len() as u64, Ordering::Relaxed);
                        tx.send(group).await?;
                    }
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => return counters.log_ledger(),
            result = connection => match result {
                Ok(()) => return counters.log_ledger(), // the sampler stopped
                Err(e) => {
                    // One warning per outage (and one a minute while it lasts), not one per try.
                    failures += 1;
                    let error = format!("{e:#}");
                    if failures == 1 || failures.is_multiple_of(30) {
                        tracing::warn!(%error, failures, pending = pending.len(), "learner stream lost; reconnecting");
                    } else {
                        tracing::debug!(%error, failures, "learner stream still lost");
                    }
                }
            },
        }
        if !backoff.wait(&shutdown).await {
            return counters.log_ledger();
        }
    }
}

//! The paretopo actor: runs the multi-turn, tool-using agent loop with the current policy and
//! streams trajectory groups to a learner. Its own gRPC service (`paretopo.v1.Actor`) only reports
//! status; the actor is a client of the learner, the tool-servers and the coordinator.
//!
//! Modules: [`episode`] (the agent loop), [`tools`] (its gRPC tool client), [`wire`]
//! (trajectories as protobuf), [`weights`] (policy versions as chunks, both ways), [`setup`]
//! (task, tokenizer, model and sampling from the run config, shared with the learner's
//! evaluation) and [`runtime`] (the process's tasks: follow the policy, sample, push).

pub mod episode;
pub mod runtime;
pub mod setup;
pub mod tools;
pub mod weights;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use paretopo_proto::v1::actor_server::{Actor, ActorServer};
use paretopo_proto::v1::{ActorStatus, GetStatusRequest, WatchStatusRequest};
use paretopo_service::cli::Launch;
use paretopo_service::metrics::{Sample, StatusMetrics};
use paretopo_service::{Process, cluster, status};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

/// The `Actor` gRPC service.
#[derive(Debug, Clone)]
pub struct ActorService {
    process: Arc<Process>,
    device: String,
    counters: Arc<runtime::ActorCounters>,
}

impl ActorService {
    /// The status as Prometheus samples (`paretopo_actor_*`).
    fn samples(&self) -> Vec<Sample> {
        let s = self.snapshot();
        vec![
            Sample::gauge(
                "paretopo_actor_policy_version",
                "The policy version the actor samples with",
                s.policy_version as f64,
            ),
            Sample::counter(
                "paretopo_actor_episodes",
                "Episodes (trajectories) generated",
                s.episodes_total as f64,
            ),
            Sample::counter(
                "paretopo_actor_groups_sent",
                "Groups sent to the learner",
                s.groups_sent as f64,
            ),
            Sample::counter(
                "paretopo_actor_groups_acked",
                "Groups the learner acknowledged",
                s.groups_acked as f64,
            ),
            Sample::gauge(
                "paretopo_actor_groups_unacked",
                "Groups sent and not yet acknowledged",
                s.groups_unacked as f64,
            ),
            Sample::counter(
                "paretopo_actor_tool_calls",
                "Tool calls made",
                s.tool_calls_total as f64,
            ),
            Sample::gauge(
                "paretopo_actor_tokens_per_second",
                "Tokens generated per second, recently",
                s.tokens_per_second,
            ),
        ]
    }

    fn snapshot(&self) -> ActorStatus {
        let c = &self.counters;
        ActorStatus {
            process: Some(self.process.info()),
            policy_version: c.policy_version.load(Ordering::Relaxed),
            episodes_total: c.episodes.load(Ordering::Relaxed),
            groups_sent: c.groups_sent.load(Ordering::Relaxed),
            groups_acked: c.groups_acked.load(Ordering::Relaxed),
            learner_address: c
                .learner_address
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            tool_calls_total: c.tool_calls.load(Ordering::Relaxed),
            tokens_per_second: f64::from_bits(c.tokens_per_second_bits.load(Ordering::Relaxed)),
            device: self.device.clone(),
            groups_accepted: c.acked_by_outcome[0].load(Ordering::Relaxed),
            groups_stale: c.acked_by_outcome[1].load(Ordering::Relaxed),
            groups_invalid: c.acked_by_outcome[2].load(Ordering::Relaxed),
            groups_duplicate: c.acked_by_outcome[3].load(Ordering::Relaxed),
            groups_unacked: c.unacked.load(Ordering::Relaxed),
            acked_through: c.acked_through.load(Ordering::Relaxed),
        }
    }
}

#[tonic::async_trait]
impl Actor for ActorService {
    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<ActorStatus>, Status> {
        Ok(Response::new(self.snapshot()))
    }

    type WatchStatusStream = status::StatusStream<ActorStatus>;

    async fn watch_status(
        &self,
        request: Request<WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let this = self.clone();
        status::respond(&self.process, request.get_ref(), move || this.snapshot())
    }
}

/// Serves the actor's status and does its work until shutdown. A failure of the work (a
/// policy that does not fit the model, a task that cannot be loaded) stops the process with
/// the error, so the coordinator sees it lost and a replacement can take its place.
pub async fn run(mut launch: Launch) -> anyhow::Result<()> {
    let device = policy::device_from_setting(&launch.config.model.device)?;
    tracing::info!(device = %policy::device_name(device), "compute device");
    let counters = Arc::new(runtime::ActorCounters::default());
    let service = ActorService {
        process: launch.process.clone(),
        device: policy::device_name(device),
        counters: counters.clone(),
    };
    let view = service.clone();
    launch
        .metrics
        .registry_mut()
        .register_collector(Box::new(StatusMetrics::new(move || view.samples())));
    let process = launch.process.clone();
    let work =
        tokio::spawn(runtime::work(launch.config.clone(), process.clone(), counters, device));
    let max_message = launch.max_message_bytes();
    let served = launch.serve(Routes::new(
        ActorServer::new(service)
            .max_decoding_message_size(max_message)
            .max_encoding_message_size(max_message),
    ));
    tokio::pin!(served);
    tokio::select! {
        // The server ended (shutdown); the work sees the same token.
        result = &mut served => result,
        outcome = work => {
            let result = outcome
                .unwrap_or_else(|e| Err(anyhow::anyhow!("the actor's work panicked: {e}")))
                // Stopped while joining the run: a clean shutdown.
                .or_else(|e| if e.is::<cluster::Stopped>() { Ok(()) } else { Err(e) });
            process.shutdown().cancel();
            served.await?;
            result
        }
    }
}

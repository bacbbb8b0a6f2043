//! The paretopo learner: takes trajectory groups from actors, computes advantages, updates the
//! policy, all-reduces gradients across ranks, and publishes weights (`paretopo.v1.Learner`).
//!
//! Built so far (issue #6 is in progress):
//! - [`intake`]: checking an actor's trajectory group, field by field;
//! - [`estimator`]: one group's advantages under `algorithm.method`;
//! - [`loss`] and [`step`]: spec §4's loss and one rank's gradient;
//! - [`collective`]: the all-reduce between CPU ranks over TCP;
//! - [`warm_start`]: the supervised start on demonstrations;
//! - the process: status, health, reflection and metrics. Trajectory intake, the training loop
//!   and weight publication come next.

pub mod collective;
pub mod estimator;
pub mod intake;
pub mod loss;
pub mod step;
pub mod warm_start;

use std::sync::Arc;

use paretopo_proto::v1::learner_server::{Learner, LearnerServer};
use paretopo_proto::v1::{
    GetStatusRequest, LearnerStatus, PushAck, TrajectoryGroup, WatchPolicyRequest,
    WatchStatusRequest, WeightChunk,
};
use paretopo_service::cli::Launch;
use paretopo_service::{Process, status};
use tonic::service::Routes;
use tonic::{Request, Response, Status, Streaming};

/// The `Learner` gRPC service.
#[derive(Debug, Clone)]
pub struct LearnerService {
    process: Arc<Process>,
    device: String,
}

impl LearnerService {
    fn snapshot(&self) -> LearnerStatus {
        LearnerStatus {
            process: Some(self.process.info()),
            device: self.device.clone(),
            collective: "none".to_owned(),
            ..Default::default()
        }
    }
}

type AckStream = status::StatusStream<PushAck>;
type ChunkStream = status::StatusStream<WeightChunk>;

#[tonic::async_trait]
impl Learner for LearnerService {
    type PushTrajectoriesStream = AckStream;

    async fn push_trajectories(
        &self,
        _: Request<Streaming<TrajectoryGroup>>,
    ) -> Result<Response<AckStream>, Status> {
        Err(Status::unimplemented("Learner.PushTrajectories: training arrives with issue #6"))
    }

    type WatchPolicyStream = ChunkStream;

    async fn watch_policy(
        &self,
        _: Request<WatchPolicyRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        Err(Status::unimplemented("Learner.WatchPolicy: weight publication arrives with issue #6"))
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

/// Serves the learner until shutdown.
pub async fn run(launch: Launch) -> anyhow::Result<()> {
    let device = policy::device_name(policy::device_from_setting(&launch.config.model.device)?);
    tracing::info!(%device, "compute device");
    let service = LearnerService { process: launch.process.clone(), device };
    launch.serve(Routes::new(LearnerServer::new(service))).await
}

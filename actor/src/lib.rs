//! The paretopo actor: runs the multi-turn, tool-using agent loop with the current policy and
//! streams trajectory groups to a learner. Its own gRPC service (`paretopo.v1.Actor`) only reports
//! status; the actor is a client of the learner, the tool-servers and the coordinator.
//!
//! Today it resolves its compute device and serves status, health, reflection and metrics, and
//! [`episode`] holds the agent loop and [`tools`] its gRPC tool client; streaming to the learner
//! arrives with the rest of issue #6.

pub mod episode;
pub mod tools;
pub mod wire;

use std::sync::Arc;

use paretopo_proto::v1::actor_server::{Actor, ActorServer};
use paretopo_proto::v1::{ActorStatus, GetStatusRequest, WatchStatusRequest};
use paretopo_service::cli::Launch;
use paretopo_service::{Process, status};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

/// The `Actor` gRPC service.
#[derive(Debug, Clone)]
pub struct ActorService {
    process: Arc<Process>,
    device: String,
}

impl ActorService {
    fn snapshot(&self) -> ActorStatus {
        ActorStatus {
            process: Some(self.process.info()),
            device: self.device.clone(),
            ..Default::default()
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

/// Serves the actor until shutdown.
pub async fn run(launch: Launch) -> anyhow::Result<()> {
    let device = policy::device_name(policy::device_from_setting(&launch.config.model.device)?);
    tracing::info!(%device, "compute device");
    let service = ActorService { process: launch.process.clone(), device };
    launch.serve(Routes::new(ActorServer::new(service))).await
}

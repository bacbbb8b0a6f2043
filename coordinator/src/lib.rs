//! The paretopo coordinator: rendezvous and membership (`--nodes` worker processes), the global
//! Pareto archive, the objective weights and stage it pushes to learners, and the operator's view
//! of a run (`paretopo.v1.Coordinator`). Also the local launcher behind `coordinator run`.
//!
//! Architecture invariant: the coordinator never links libtorch, CUDA or NCCL; work that needs a
//! model runs in learner and actor processes it starts (DESIGN.md §10).
//!
//! Today it serves status, health, reflection and metrics, checks registrations, and launches
//! local runs; rendezvous and the weight loop arrive with issue #6.

pub mod launcher;

use std::sync::Arc;

use paretopo_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use paretopo_proto::v1::{
    CoordinatorStatus, GetRendezvousRequest, GetStatusRequest, HeartbeatRequest, HeartbeatResponse,
    ObjectiveWeights, RegisterRequest, RegisterResponse, Rendezvous, ReportObjectivesRequest,
    ReportObjectivesResponse, Role as ProtoRole, Stage, WatchStatusRequest, WatchWeightsRequest,
};
use paretopo_service::cli::Launch;
use paretopo_service::{Process, RunConfig, status};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

/// The `Coordinator` gRPC service.
#[derive(Debug, Clone)]
pub struct CoordinatorService {
    process: Arc<Process>,
    nodes_expected: u32,
    initial_weights: ObjectiveWeights,
}

impl CoordinatorService {
    /// A coordinator for `config`'s run, with uniform Stage-1 weights (spec §2).
    pub fn new(process: Arc<Process>, config: &RunConfig) -> Self {
        let k = config.task.objectives.len();
        let initial_weights = ObjectiveWeights {
            objectives: config.task.objectives.clone(),
            weights: vec![1.0 / k as f64; k],
            computed_at_step: 0,
            stage: Stage::Scalarization as i32,
            hypervolume: 0.0,
            archive_size: 0,
            sequence: 0,
        };
        Self { process, nodes_expected: config.cluster.nodes, initial_weights }
    }

    fn snapshot(&self) -> CoordinatorStatus {
        CoordinatorStatus {
            process: Some(self.process.info()),
            nodes_expected: self.nodes_expected,
            weights: Some(self.initial_weights.clone()),
            ..Default::default()
        }
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
    Ok(())
}

type WeightsStream = status::StatusStream<ObjectiveWeights>;

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        check_register(request.get_ref())?;
        Err(Status::unimplemented("Coordinator.Register: rendezvous arrives with issue #6"))
    }

    async fn heartbeat(
        &self,
        _: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        Err(Status::unimplemented("Coordinator.Heartbeat: membership arrives with issue #6"))
    }

    async fn get_rendezvous(
        &self,
        _: Request<GetRendezvousRequest>,
    ) -> Result<Response<Rendezvous>, Status> {
        Err(Status::unimplemented("Coordinator.GetRendezvous: rendezvous arrives with issue #6"))
    }

    async fn report_objectives(
        &self,
        _: Request<ReportObjectivesRequest>,
    ) -> Result<Response<ReportObjectivesResponse>, Status> {
        Err(Status::unimplemented(
            "Coordinator.ReportObjectives: the weight loop arrives with issue #6",
        ))
    }

    type WatchWeightsStream = WeightsStream;

    async fn watch_weights(
        &self,
        _: Request<WatchWeightsRequest>,
    ) -> Result<Response<WeightsStream>, Status> {
        Err(Status::unimplemented(
            "Coordinator.WatchWeights: the weight loop arrives with issue #6",
        ))
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
pub async fn run(launch: Launch) -> anyhow::Result<()> {
    let service = CoordinatorService::new(launch.process.clone(), &launch.config);
    launch.serve(Routes::new(CoordinatorServer::new(service))).await
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! The paretopo tool-server: serves tools to actors over gRPC (`paretopo.v1.ToolServer`).
//!
//! Today it serves status, health, reflection and metrics, and checks `Call` requests; the
//! [`calculator`] is written and tested, serving it and `search` arrive with the rest of issue
//! #5. It knows nothing of models or rewards.

pub mod calculator;

use std::sync::Arc;

use paretopo_proto::v1::tool_server_server::{ToolServer, ToolServerServer};
use paretopo_proto::v1::{
    GetStatusRequest, ListToolsRequest, ListToolsResponse, ToolCallRequest, ToolCallResponse,
    ToolServerStatus, WatchStatusRequest,
};
use paretopo_service::cli::Launch;
use paretopo_service::{Process, status};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

/// The longest deadline a caller may ask for, in milliseconds.
pub const MAX_DEADLINE_MS: u32 = 60_000;

/// The `ToolServer` gRPC service.
#[derive(Debug, Clone)]
pub struct ToolService {
    process: Arc<Process>,
}

impl ToolService {
    fn snapshot(&self) -> ToolServerStatus {
        ToolServerStatus { process: Some(self.process.info()), ..Default::default() }
    }
}

/// Checks a call request; the error names the field.
fn check_call(request: &ToolCallRequest) -> Result<(), Status> {
    if request.tool.trim().is_empty() {
        return Err(Status::invalid_argument("tool: must name a tool"));
    }
    if request.deadline_ms > MAX_DEADLINE_MS {
        return Err(Status::invalid_argument(format!(
            "deadline_ms: must be at most {MAX_DEADLINE_MS}, got {}",
            request.deadline_ms
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl ToolServer for ToolService {
    async fn list_tools(
        &self,
        _: Request<ListToolsRequest>,
    ) -> Result<Response<ListToolsResponse>, Status> {
        Err(Status::unimplemented("ToolServer.ListTools: no tools are served yet (issue #5)"))
    }

    async fn call(
        &self,
        request: Request<ToolCallRequest>,
    ) -> Result<Response<ToolCallResponse>, Status> {
        check_call(request.get_ref())?;
        Err(Status::unimplemented("ToolServer.Call: no tools are served yet (issue #5)"))
    }

    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<ToolServerStatus>, Status> {
        Ok(Response::new(self.snapshot()))
    }

    type WatchStatusStream = status::StatusStream<ToolServerStatus>;

    async fn watch_status(
        &self,
        request: Request<WatchStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let this = self.clone();
        status::respond(&self.process, request.get_ref(), move || this.snapshot())
    }
}

/// Serves the tool-server until shutdown.
pub async fn run(launch: Launch) -> anyhow::Result<()> {
    let service = ToolService { process: launch.process.clone() };
    launch.serve(Routes::new(ToolServerServer::new(service))).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_requests_are_checked_field_by_field() {
        let ok =
            ToolCallRequest { tool: "calculator".into(), deadline_ms: 100, ..Default::default() };
        assert!(check_call(&ok).is_ok());
        let no_tool = ToolCallRequest { tool: " ".into(), ..ok.clone() };
        let err = check_call(&no_tool).expect_err("empty tool");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("tool:"));
        let late = ToolCallRequest { deadline_ms: MAX_DEADLINE_MS + 1, ..ok };
        let err = check_call(&late).expect_err("deadline");
        assert!(err.message().starts_with("deadline_ms:"), "{}", err.message());
    }
}

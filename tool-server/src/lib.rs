//! The paretopo tool-server: serves tools to actors over gRPC (`paretopo.v1.ToolServer`).
//!
//! Today it serves the [`calculator`] (`ListTools`, `Call`), status, health, reflection and
//! metrics; `search`, configurable limits and latency histograms arrive with the rest of issue
//! #5. Calls beyond [`MAX_CONCURRENT_CALLS`] wait in line; each has a deadline; a tool's failure
//! is a result the policy reads, never a gRPC error. It knows nothing of models or rewards.

pub mod calculator;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use paretopo_proto::v1::tool_server_server::{ToolServer, ToolServerServer};
use paretopo_proto::v1::{
    GetStatusRequest, ListToolsRequest, ListToolsResponse, ToolCallRequest, ToolCallResponse,
    ToolErrorKind, ToolServerStatus, ToolSpec, WatchStatusRequest,
};
use paretopo_service::cli::Launch;
use paretopo_service::{Process, status};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

/// The longest deadline a caller may ask for, in milliseconds.
pub const MAX_DEADLINE_MS: u32 = 60_000;

/// The deadline of a call that names none, in milliseconds.
pub const DEFAULT_DEADLINE_MS: u32 = 5_000;

/// Calls run at once; more wait in line (in arrival order) until one finishes or their deadline
/// passes.
pub const MAX_CONCURRENT_CALLS: usize = 64;

/// The calculator's JSON Schema: one `expression` string.
const CALCULATOR_SCHEMA: &str = r#"{"type": "object", "properties": {"expression": {"type": "string", "description": "e.g. (12 + 3) * 7 / 2"}}, "required": ["expression"], "additionalProperties": false}"#;

/// The `ToolServer` gRPC service.
#[derive(Debug, Clone)]
pub struct ToolService {
    process: Arc<Process>,
    state: Arc<State>,
}

/// What calls share: the line, the limits and the counts.
#[derive(Debug)]
struct State {
    permits: tokio::sync::Semaphore,
    limits: calculator::Limits,
    calls_total: AtomicU64,
    call_errors_total: AtomicU64,
    calls_in_flight: AtomicU32,
}

impl ToolService {
    /// A service for `process` with the default limits.
    pub fn new(process: Arc<Process>) -> Self {
        let state = State {
            permits: tokio::sync::Semaphore::new(MAX_CONCURRENT_CALLS),
            limits: calculator::Limits::default(),
            calls_total: AtomicU64::new(0),
            call_errors_total: AtomicU64::new(0),
            calls_in_flight: AtomicU32::new(0),
        };
        ToolService { process, state: Arc::new(state) }
    }

    fn snapshot(&self) -> ToolServerStatus {
        ToolServerStatus {
            process: Some(self.process.info()),
            tools: tool_specs().into_iter().map(|t| t.name).collect(),
            calls_total: self.state.calls_total.load(Ordering::Relaxed),
            call_errors_total: self.state.call_errors_total.load(Ordering::Relaxed),
            calls_in_flight: self.state.calls_in_flight.load(Ordering::Relaxed),
            corpus_documents: 0,
        }
    }

    /// Runs one checked call within `deadline`: waits for a place in line, then runs the tool on
    /// the blocking pool so a slow evaluation never stalls the server's other work.
    async fn run_call(&self, request: &ToolCallRequest, deadline: Duration) -> ToolCallResponse {
        let started = Instant::now();
        let (output, error) = if request.tool != "calculator" {
            let known = tool_specs().into_iter().map(|t| t.name).collect::<Vec<_>>().join(", ");
            (
                format!("unknown tool {:?} (available: {known})", request.tool),
                ToolErrorKind::UnknownTool,
            )
        } else {
            match calculator_expression(&request.arguments_json) {
                Err(message) => (message, ToolErrorKind::BadArguments),
                Ok(expression) => self.evaluate(expression, deadline).await,
            }
        };
        if error != ToolErrorKind::Unspecified {
            self.state.call_errors_total.fetch_add(1, Ordering::Relaxed);
        }
        self.state.calls_total.fetch_add(1, Ordering::Relaxed);
        ToolCallResponse {
            output,
            error: error as i32,
            cost: 1.0,
            latency_us: started.elapsed().as_micros().try_into().unwrap_or(u64::MAX),
        }
    }

    async fn evaluate(&self, expression: String, deadline: Duration) -> (String, ToolErrorKind) {
        let state = self.state.clone();
        let work = async move {
            let _permit = state.permits.acquire().await.ok()?;
            state.calls_in_flight.fetch_add(1, Ordering::Relaxed);
            let limits = state.limits;
            let result =
                tokio::task::spawn_blocking(move || calculator::evaluate(&expression, &limits))
                    .await;
            state.calls_in_flight.fetch_sub(1, Ordering::Relaxed);
            result.ok()
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(Some(Ok(value))) => (calculator::format(&value), ToolErrorKind::Unspecified),
            Ok(Some(Err(e))) => (format!("error: {e}"), ToolErrorKind::Execution),
            Ok(None) => {
                ("error: the tool-server is shutting down".into(), ToolErrorKind::Execution)
            }
            Err(_) => (
                format!("error: no result within {} ms", deadline.as_millis()),
                ToolErrorKind::Timeout,
            ),
        }
    }
}

/// The tools on offer, sorted by name.
fn tool_specs() -> Vec<ToolSpec> {
    vec![ToolSpec {
        name: "calculator".into(),
        description:
            "Exact arithmetic on integers, decimals and fractions: + - * / ^ % and parentheses."
                .into(),
        arguments_schema: CALCULATOR_SCHEMA.into(),
        cost_per_call: 1.0,
    }]
}

/// The `expression` of calculator arguments, or the message the policy reads.
fn calculator_expression(arguments_json: &str) -> Result<String, String> {
    let value: serde_json::Value = serde_json::from_str(arguments_json)
        .map_err(|e| format!("error: arguments are not JSON ({e})"))?;
    match value.get("expression") {
        Some(serde_json::Value::String(e)) => Ok(e.clone()),
        Some(_) => Err("error: \"expression\" must be a string".into()),
        None => Err("error: missing \"expression\"".into()),
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
        Ok(Response::new(ListToolsResponse { tools: tool_specs() }))
    }

    async fn call(
        &self,
        request: Request<ToolCallRequest>,
    ) -> Result<Response<ToolCallResponse>, Status> {
        let request = request.into_inner();
        check_call(&request)?;
        let ms = if request.deadline_ms == 0 { DEFAULT_DEADLINE_MS } else { request.deadline_ms };
        Ok(Response::new(self.run_call(&request, Duration::from_millis(ms.into())).await))
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
    let service = ToolService::new(launch.process.clone());
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

    async fn service() -> ToolService {
        let setup = paretopo_service::process::ProcessSetup {
            role: paretopo_service::Role::ToolServer,
            run_name: "test".into(),
            service_name: "paretopo.v1.ToolServer",
            listen_address: ([127, 0, 0, 1], 0).into(),
            metrics_address: None,
            advertised_address: None,
            drain_timeout: Duration::from_secs(1),
        };
        ToolService::new(Arc::new(Process::new(setup, Instant::now()).await))
    }

    async fn call(service: &ToolService, tool: &str, arguments: &str) -> ToolCallResponse {
        let request = ToolCallRequest {
            tool: tool.into(),
            arguments_json: arguments.into(),
            ..Default::default()
        };
        service.call(Request::new(request)).await.expect("a result, not a gRPC error").into_inner()
    }

    #[tokio::test]
    async fn calculator_results_and_errors_are_results() {
        let service = service().await;
        let ok = call(&service, "calculator", r#"{"expression": "12*7"}"#).await;
        assert_eq!((ok.output.as_str(), ok.error()), ("84", ToolErrorKind::Unspecified));
        let zero = call(&service, "calculator", r#"{"expression": "1/0"}"#).await;
        assert_eq!(
            (zero.output.as_str(), zero.error()),
            ("error: division by zero", ToolErrorKind::Execution)
        );
        let bad = call(&service, "calculator", r#"{"expr": "1"}"#).await;
        assert_eq!(bad.error(), ToolErrorKind::BadArguments);
        let unknown = call(&service, "shell", "{}").await;
        assert_eq!(unknown.error(), ToolErrorKind::UnknownTool);
        let status = service.snapshot();
        assert_eq!((status.calls_total, status.call_errors_total), (4, 3));
        let tools =
            service.list_tools(Request::new(ListToolsRequest {})).await.expect("list").into_inner();
        let schema: serde_json::Value =
            serde_json::from_str(&tools.tools[0].arguments_schema).expect("schema is JSON");
        assert_eq!(schema["required"][0], "expression");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_expressions_from_64_callers_fail_fast_and_the_server_keeps_serving() {
        let service = service().await;
        let hostile = [
            "9^9^9^9".to_string(),
            "(".repeat(1_000_000),
            format!("{}1{}", "(".repeat(500), ")".repeat(500)),
            "1/0".to_string(),
            "2^99999999999999999999".to_string(),
        ];
        let started = Instant::now();
        let calls = (0..64).map(|i| {
            let service = service.clone();
            let expression = hostile[i % hostile.len()].clone();
            tokio::spawn(async move {
                let arguments = serde_json::json!({ "expression": expression }).to_string();
                let t = Instant::now();
                let response = call(&service, "calculator", &arguments).await;
                (response, t.elapsed())
            })
        });
        for handle in calls.collect::<Vec<_>>() {
            let (response, took) = handle.await.expect("task");
            assert_eq!(response.error(), ToolErrorKind::Execution, "{}", response.output);
            // A bound that proves "does not hang"; the latency itself is a benchmark figure.
            assert!(took < Duration::from_secs(1), "a hostile call took {took:?}");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let ok = call(&service, "calculator", r#"{"expression": "2+2"}"#).await;
        assert_eq!(ok.output, "4");
    }
}

//! The actor's tool client: runs a turn's tool calls on a tool-server over gRPC, all at once,
//! retrying an unreachable server with backoff.
//!
//! [`GrpcTools`] implements the agent loop's [`ToolRunner`], which is synchronous: call it from
//! the sampling thread (a blocking task), never from inside the async runtime, since it blocks
//! on the runtime it was given. A call that still fails after the retries answers an error text
//! the policy reads, like any failed tool call; the episode goes on.

use std::time::Duration;

use paretopo_proto::v1::ToolCallRequest;
use paretopo_proto::v1::tool_server_client::ToolServerClient;
use tokio::runtime::Handle;
use tonic::transport::Channel;

use crate::episode::{ToolRequest, ToolRunner};

/// Settings of the tool client.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolClientConfig {
    /// Each call's deadline on the server, in milliseconds.
    pub deadline_ms: u32,
    /// Attempts per call when the server cannot be reached (1 = no retry).
    pub attempts: u32,
    /// The wait before the first retry; it doubles after each.
    pub first_backoff: Duration,
    /// Who is calling (for the server's accounting).
    pub caller_id: String,
}

impl Default for ToolClientConfig {
    fn default() -> Self {
        ToolClientConfig {
            deadline_ms: 5_000,
            attempts: 4,
            first_backoff: Duration::from_millis(100),
            caller_id: String::new(),
        }
    }
}

/// A tool-server client for the agent loop.
#[derive(Debug, Clone)]
pub struct GrpcTools {
    runtime: Handle,
    client: ToolServerClient<Channel>,
    config: ToolClientConfig,
}

impl GrpcTools {
    /// A client of the tool-server on `channel` (made with
    /// `paretopo_service::Process::channel`). The channel should connect lazily, so that a
    /// server that starts later (or restarts) is found by the retries.
    pub fn new(runtime: Handle, channel: Channel, config: ToolClientConfig) -> Self {
        GrpcTools { runtime, client: ToolServerClient::new(channel), config }
    }

    async fn call(
        mut client: ToolServerClient<Channel>,
        request: ToolRequest,
        config: ToolClientConfig,
    ) -> String {
        let mut backoff = config.first_backoff;
        let mut last_error = String::new();
        for attempt in 0..config.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            let message = ToolCallRequest {
                tool: request.tool.clone(),
                arguments_json: request.arguments_json.clone(),
                deadline_ms: config.deadline_ms,
                caller_id: config.caller_id.clone(),
            };
            match client.call(message).await {
                Ok(response) => return response.into_inner().output,
                // Only a server that cannot be reached, or whose line is full, is worth another
                // try; a refused request would be refused again.
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                    ) =>
                {
                    last_error = status.message().to_owned();
                    tracing::warn!(attempt, error = %status.message(), "tool-server unreachable or full; retrying");
                }
                Err(status) => {
                    return format!(
                        "error: the tool-server refused the call ({})",
                        status.message()
                    );
                }
            }
        }
        format!("error: the tool-server is unreachable or full ({last_error})")
    }
}

impl ToolRunner for GrpcTools {
    fn run(&mut self, requests: &[ToolRequest]) -> Vec<String> {
        let calls: Vec<_> = requests
            .iter()
            .map(|request| {
                let call = Self::call(self.client.clone(), request.clone(), self.config.clone());
                self.runtime.spawn(call)
            })
            .collect();
        self.runtime.block_on(async {
            let mut outputs = Vec::with_capacity(calls.len());
            for call in calls {
                outputs.push(
                    call.await.unwrap_or_else(|e| format!("error: the tool call failed ({e})")),
                );
            }
            outputs
        })
    }
}

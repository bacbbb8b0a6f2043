//! Issue #5, tools: the `tool-server` binary, started as a process, answers tool calls over
//! gRPC. (Only the calculator is served so far; `search` follows.)

use std::time::Duration;

use paretopo_proto::v1::{
    GetStatusRequest, ListToolsRequest, ToolCallRequest, ToolErrorKind,
    tool_server_client::ToolServerClient,
};
use paretopo_tests::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_server_process_lists_and_runs_the_calculator() {
    let mut server = Server::start("tool-server", &[]);
    server.wait_serving(Duration::from_secs(30)).await;
    let mut client = ToolServerClient::new(server.channel().await);

    let tools = client.list_tools(ListToolsRequest {}).await.expect("ListTools").into_inner().tools;
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert!(names.contains(&"calculator"), "{names:?}");

    let call = |expression: &str| ToolCallRequest {
        tool: "calculator".into(),
        arguments_json: serde_json::json!({ "expression": expression }).to_string(),
        deadline_ms: 2_000,
        caller_id: "test".into(),
    };
    let ok = client.call(call("(2 + 3) * 4 / 6")).await.expect("Call").into_inner();
    assert_eq!((ok.output.as_str(), ok.error()), ("10/3", ToolErrorKind::Unspecified));
    let huge = client.call(call("9^9^9^9")).await.expect("Call").into_inner();
    assert_eq!(huge.error(), ToolErrorKind::Execution, "{}", huge.output);
    assert!(huge.output.contains("too large"), "{}", huge.output);

    let status = client.get_status(GetStatusRequest {}).await.expect("GetStatus").into_inner();
    assert_eq!((status.calls_total, status.call_errors_total), (2, 1));
    assert_eq!(status.tools, vec!["calculator".to_string()]);

    server.sigterm();
    let exited = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(5)));
    assert!(exited.is_some_and(|(status, _)| status.success()), "tool-server did not exit cleanly");
}

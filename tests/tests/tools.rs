//! Issue #5, tools: the `tool-server` binary, started as a process with a corpus, answers
//! calculator and search calls over gRPC, and counts them in status and metrics.

use std::io::Write;
use std::time::Duration;

use paretopo_proto::v1::{
    GetStatusRequest, ListToolsRequest, ToolCallRequest, ToolErrorKind,
    tool_server_client::ToolServerClient,
};
use paretopo_service::Role;
use paretopo_service::security::Security;
use paretopo_tests::{Server, fetch_metrics, run_to_end};

const CORPUS: &str = r#"{"id": "vorn", "title": "Vorn", "text": "Vorn is a river in Osterland."}
{"id": "osterland", "title": "Osterland", "text": "Osterland is a kingdom; its capital is Malbrook."}
this line is not JSON
{"id": "malbrook", "title": "Malbrook", "text": "Malbrook was founded by Edda Quill."}
"#;

fn request(tool: &str, arguments: serde_json::Value) -> ToolCallRequest {
    ToolCallRequest {
        tool: tool.into(),
        arguments_json: arguments.to_string(),
        deadline_ms: 2_000,
        caller_id: "test".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_server_process_serves_the_calculator_and_search() {
    let mut corpus = tempfile::NamedTempFile::new().expect("temp file");
    corpus.write_all(CORPUS.as_bytes()).expect("write corpus");
    let corpus_key = format!("tool_server.corpus={:?}", corpus.path().display().to_string());
    let mut server = Server::start("tool-server", &["--set", &corpus_key]);
    server.wait_serving(Duration::from_secs(30)).await;
    let mut client = ToolServerClient::new(server.channel().await);

    let tools = client.list_tools(ListToolsRequest {}).await.expect("ListTools").into_inner().tools;
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, vec!["calculator", "search"]);

    let calc = |e: &str| request("calculator", serde_json::json!({ "expression": e }));
    let ok = client.call(calc("(2 + 3) * 4 / 6")).await.expect("Call").into_inner();
    assert_eq!((ok.output.as_str(), ok.error()), ("10/3", ToolErrorKind::Unspecified));
    let huge = client.call(calc("9^9^9^9")).await.expect("Call").into_inner();
    assert_eq!(huge.error(), ToolErrorKind::Execution, "{}", huge.output);
    assert!(huge.output.contains("too large"), "{}", huge.output);

    let search = request("search", serde_json::json!({ "query": "who founded Malbrook", "k": 1 }));
    let found = client.call(search).await.expect("Call").into_inner();
    assert_eq!(
        (found.output.as_str(), found.error()),
        ("Malbrook: Malbrook was founded by Edda Quill.", ToolErrorKind::Unspecified)
    );

    let status = client.get_status(GetStatusRequest {}).await.expect("GetStatus").into_inner();
    assert_eq!((status.calls_total, status.call_errors_total), (3, 1));
    assert_eq!(status.corpus_documents, 3, "the bad line is skipped");
    let per_tool: Vec<(&str, u64)> =
        status.per_tool.iter().map(|t| (t.tool.as_str(), t.calls_total)).collect();
    assert_eq!(per_tool, vec![("(unknown)", 0), ("calculator", 2), ("search", 1)]);

    let (_, metrics) = tokio::task::block_in_place(|| fetch_metrics(server.metrics));
    for line in [
        "paretopo_tool_calls_total{tool=\"search\"} 1",
        "paretopo_tool_call_errors_total{tool=\"calculator\",kind=\"execution\"} 1",
        "paretopo_tool_call_duration_seconds_count{tool=\"calculator\"} 2",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }

    server.sigterm();
    let exited = tokio::task::block_in_place(|| server.wait_exit(Duration::from_secs(5)));
    assert!(exited.is_some_and(|(status, _)| status.success()), "tool-server did not exit cleanly");
    assert!(server.stderr().contains("line=3"), "the bad corpus line is reported");
}

#[test]
fn a_missing_or_empty_corpus_stops_the_tool_server_at_start() {
    let output = run_to_end("tool-server", &["--set", "tool_server.corpus=\"/nonexistent.jsonl\""]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("search corpus /nonexistent.jsonl: cannot read"), "{stderr}");

    let mut corpus = tempfile::NamedTempFile::new().expect("temp file");
    corpus.write_all(b"not json\n").expect("write corpus");
    let key = format!("tool_server.corpus={:?}", corpus.path().display().to_string());
    let output = run_to_end("tool-server", &["--set", &key]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no valid passage (1 lines skipped)"), "{stderr}");
}

/// The actor's tool client against a real tool-server: a turn's calls run together, a server
/// that starts late is found by the retries, and one that never comes answers an error text.
#[test]
fn the_actor_tool_client_retries_until_the_server_is_there() {
    use actor::episode::{ToolRequest, ToolRunner};
    use actor::tools::{GrpcTools, ToolClientConfig};

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let requests = vec![
        ToolRequest {
            tool: "calculator".into(),
            arguments_json: r#"{"expression": "6*7"}"#.into(),
        },
        ToolRequest { tool: "calculator".into(), arguments_json: r#"{"expr": "1"}"#.into() },
        ToolRequest { tool: "search".into(), arguments_json: r#"{"query": "x"}"#.into() },
    ];

    // A server that starts 300 ms after the calls are sent.
    let addr = paretopo_tests::free_addr();
    let config = ToolClientConfig {
        attempts: 8,
        first_backoff: Duration::from_millis(50),
        ..Default::default()
    };
    let channel = {
        let _context = runtime.enter();
        Security::default().channel(&addr.to_string(), Role::ToolServer).expect("channel")
    };
    let mut tools = GrpcTools::new(runtime.handle().clone(), channel, config);
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        std::process::Command::new(paretopo_tests::binary("tool-server"))
            .args(["--listen", &addr.to_string()])
            .env_remove("LD_LIBRARY_PATH")
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tool-server")
    });
    let outputs = tools.run(&requests);
    let mut server = starter.join().expect("starter");
    assert_eq!(outputs[0], "42");
    assert_eq!(outputs[1], "error: unknown argument \"expr\" (expected expression)");
    assert_eq!(outputs[2], "error: unknown tool \"search\" (available: calculator)");
    let _ = server.kill();
    let _ = server.wait();

    // Nobody listens: after the retries, an error the policy reads, within a bounded time.
    let config = ToolClientConfig {
        attempts: 3,
        first_backoff: Duration::from_millis(20),
        ..Default::default()
    };
    let nowhere = {
        let _context = runtime.enter();
        let address = paretopo_tests::free_addr().to_string();
        Security::default().channel(&address, Role::ToolServer).expect("channel")
    };
    let mut tools = GrpcTools::new(runtime.handle().clone(), nowhere, config);
    let started = std::time::Instant::now();
    let outputs = tools.run(&requests[..1]);
    assert!(outputs[0].starts_with("error: the tool-server is unreachable"), "{}", outputs[0]);
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

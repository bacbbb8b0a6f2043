//! The paretopo tool-server: serves tools to actors over gRPC (`paretopo.v1.ToolServer`).
//!
//! Two tools: the [`calculator`] (exact rational arithmetic) and, when a corpus is given,
//! [`search`] (BM25 over passages). Calls beyond `max_concurrent_calls` wait in line; each call
//! has a deadline that counts its wait; a tool's failure is a result the policy reads, never a
//! gRPC error. Every call is counted and timed per tool ([`stats`]) for status and metrics.
//!
//! What it is not: it knows nothing of models, prompts or rewards.

pub mod calculator;
pub mod search;
pub mod stats;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use paretopo_proto::v1::tool_server_server::{ToolServer, ToolServerServer};
use paretopo_proto::v1::{
    GetStatusRequest, ListToolsRequest, ListToolsResponse, ToolCallRequest, ToolCallResponse,
    ToolErrorKind, ToolServerStatus, ToolSpec, WatchStatusRequest,
};
use paretopo_service::cli::Launch;
use paretopo_service::config::ToolServerSection;
use paretopo_service::{Process, status};
use tasks::datasets::Passage;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::search::SearchIndex;
use crate::stats::CallStats;

/// The most passages one search may ask for (`k`).
pub const MAX_SEARCH_K: u32 = 10;

/// The calculator's JSON Schema: one `expression` string.
const CALCULATOR_SCHEMA: &str = r#"{"type": "object", "properties": {"expression": {"type": "string", "description": "e.g. (12 + 3) * 7 / 2"}}, "required": ["expression"], "additionalProperties": false}"#;

/// The search tool's JSON Schema: a `query` string and an optional passage count.
const SEARCH_SCHEMA: &str = r#"{"type": "object", "properties": {"query": {"type": "string", "description": "words to look for, e.g. capital of Osterland"}, "k": {"type": "integer", "minimum": 1, "maximum": 10, "description": "passages to return"}}, "required": ["query"], "additionalProperties": false}"#;

/// The tools and their settings, fixed at start.
#[derive(Debug)]
pub struct Toolbox {
    calculator: calculator::Limits,
    search: Option<SearchIndex>,
    search_top_k: u32,
    max_concurrent_calls: usize,
    max_queued_calls: u32,
    default_deadline: Duration,
    max_deadline_ms: u32,
}

impl Toolbox {
    /// The tools the `[tool_server]` section describes, with `search` over `corpus` if given.
    pub fn new(
        section: &ToolServerSection,
        corpus: Option<&[Passage]>,
    ) -> Result<Self, search::SearchError> {
        let search = corpus.map(SearchIndex::build).transpose()?;
        Ok(Toolbox {
            calculator: calculator::Limits {
                max_input_bytes: section.calculator_max_input_bytes as usize,
                max_depth: section.calculator_max_depth as usize,
                max_result_bits: section.calculator_max_result_bits.into(),
            },
            search,
            search_top_k: section.search_top_k.min(MAX_SEARCH_K),
            max_concurrent_calls: section.max_concurrent_calls.map_or_else(
                || std::thread::available_parallelism().map_or(1, usize::from),
                |n| n as usize,
            ),
            max_queued_calls: section.max_queued_calls,
            default_deadline: Duration::from_millis(section.default_deadline_ms.into()),
            max_deadline_ms: section.max_deadline_ms,
        })
    }

    /// The tools on offer, sorted by name.
    pub fn specs(&self) -> Vec<ToolSpec> {
        let mut specs = vec![ToolSpec {
            name: "calculator".into(),
            description:
                "Exact arithmetic on integers, decimals and fractions: + - * / ^ % and parentheses."
                    .into(),
            arguments_schema: CALCULATOR_SCHEMA.into(),
            cost_per_call: 1.0,
        }];
        if self.search.is_some() {
            specs.push(ToolSpec {
                name: "search".into(),
                description:
                    "Ranked passages (BM25) from the corpus, one per line as `Title: text`.".into(),
                arguments_schema: SEARCH_SCHEMA.into(),
                cost_per_call: 1.0,
            });
        }
        specs
    }

    /// Checks a tool's arguments and returns the work to run, or the message the policy reads.
    fn prepare(&self, tool: &str, arguments_json: &str) -> Result<Work, (String, ToolErrorKind)> {
        let bad = |message: String| (format!("error: {message}"), ToolErrorKind::BadArguments);
        let offered = tool == "calculator" || (tool == "search" && self.search.is_some());
        if !offered {
            let known = self.specs().into_iter().map(|t| t.name).collect::<Vec<_>>();
            return Err((
                format!("error: unknown tool {tool:?} (available: {})", known.join(", ")),
                ToolErrorKind::UnknownTool,
            ));
        }
        let arguments: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(arguments_json)
                .map_err(|e| bad(format!("arguments are not a JSON object ({e})")))?;
        // The schemas say `additionalProperties: false`; a misspelt key is an error the model
        // can read, not something silently ignored.
        let allowed: &[&str] = if tool == "calculator" { &["expression"] } else { &["query", "k"] };
        if let Some(key) = arguments.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(bad(format!("unknown argument {key:?} (expected {})", allowed.join(", "))));
        }
        let string = |key: &str| match arguments.get(key) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(bad(format!("\"{key}\" must be a string"))),
            None => Err(bad(format!("missing \"{key}\""))),
        };
        if tool == "calculator" {
            return Ok(Work::Calculate(string("expression")?));
        }
        let k = match arguments.get("k") {
            None => self.search_top_k,
            Some(v) => match v.as_u64() {
                Some(k @ 1..=10) => k as u32,
                _ => return Err(bad(format!("\"k\" must be an integer from 1 to {MAX_SEARCH_K}"))),
            },
        };
        Ok(Work::Search(string("query")?, k as usize))
    }

    /// Runs checked work to its output text (blocking: call it on the blocking pool).
    fn run(&self, work: Work) -> (String, ToolErrorKind) {
        match work {
            Work::Calculate(expression) => {
                match calculator::evaluate(&expression, &self.calculator) {
                    Ok(value) => (calculator::format(&value), ToolErrorKind::Unspecified),
                    Err(e) => (format!("error: {e}"), ToolErrorKind::Execution),
                }
            }
            Work::Search(query, k) => {
                let Some(index) = &self.search else {
                    return ("error: no search corpus".into(), ToolErrorKind::Execution);
                };
                match index.search(&query, k) {
                    Ok(hits) => (search::format_hits(&hits), ToolErrorKind::Unspecified),
                    Err(e) => (format!("error: {e}"), ToolErrorKind::Execution),
                }
            }
        }
    }
}

/// A checked call, ready to run.
#[derive(Debug)]
enum Work {
    Calculate(String),
    Search(String, usize),
}

/// The `ToolServer` gRPC service.
#[derive(Debug, Clone)]
pub struct ToolService {
    process: Arc<Process>,
    state: Arc<State>,
}

/// What calls share: the tools, the line, the counts.
#[derive(Debug)]
struct State {
    toolbox: Toolbox,
    permits: Arc<tokio::sync::Semaphore>,
    stats: Arc<CallStats>,
    calls_in_flight: AtomicU32,
    calls_queued: AtomicU32,
}

impl ToolService {
    /// A service for `process` serving `toolbox`.
    pub fn new(process: Arc<Process>, toolbox: Toolbox) -> Self {
        let names: Vec<String> = toolbox.specs().into_iter().map(|t| t.name).collect();
        let state = State {
            permits: Arc::new(tokio::sync::Semaphore::new(toolbox.max_concurrent_calls)),
            stats: Arc::new(CallStats::new(names.iter().map(String::as_str))),
            toolbox,
            calls_in_flight: AtomicU32::new(0),
            calls_queued: AtomicU32::new(0),
        };
        ToolService { process, state: Arc::new(state) }
    }

    /// The counts and latencies, to register with the metrics endpoint.
    pub fn stats(&self) -> Arc<CallStats> {
        self.state.stats.clone()
    }

    fn snapshot(&self) -> ToolServerStatus {
        let (calls_total, call_errors_total) = self.state.stats.totals();
        ToolServerStatus {
            process: Some(self.process.info()),
            tools: self.state.toolbox.specs().into_iter().map(|t| t.name).collect(),
            calls_total,
            call_errors_total,
            calls_in_flight: self.state.calls_in_flight.load(Ordering::Relaxed),
            corpus_documents: self.state.toolbox.search.as_ref().map_or(0, SearchIndex::documents),
            per_tool: self.state.stats.snapshot(),
            calls_queued: self.state.calls_queued.load(Ordering::Relaxed),
        }
    }

    /// Runs one checked call within `deadline`: waits for a place in line, then runs the tool on
    /// the blocking pool so a slow evaluation never stalls the server's other work.
    async fn run_call(&self, request: &ToolCallRequest, deadline: Duration) -> ToolCallResponse {
        let started = Instant::now();
        let (output, error) =
            match self.state.toolbox.prepare(&request.tool, &request.arguments_json) {
                Err(failure) => failure,
                Ok(work) => self.execute(work, deadline).await,
            };
        let latency = started.elapsed();
        self.state.stats.record(&request.tool, error, latency);
        ToolCallResponse {
            output,
            error: error as i32,
            cost: 1.0,
            latency_us: latency.as_micros().try_into().unwrap_or(u64::MAX),
        }
    }

    async fn execute(&self, work: Work, deadline: Duration) -> (String, ToolErrorKind) {
        let state = self.state.clone();
        let queued = Gauge::up(&self.state.calls_queued);
        let run = async move {
            let permit = state.permits.clone().acquire_owned().await.ok()?;
            drop(queued);
            let worker = state.clone();
            // The place in line is held until the work ends, even when the caller's deadline
            // passes first: the blocking pool cannot cancel it, and the line must count it.
            let work = tokio::task::spawn_blocking(move || {
                let _in_flight = Gauge::up(&worker.calls_in_flight);
                let _permit = permit;
                worker.toolbox.run(work)
            });
            work.await.ok()
        };
        match tokio::time::timeout(deadline, run).await {
            Ok(Some(result)) => result,
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

/// Adds one to a gauge until dropped (a call waiting in line, a call running).
struct Gauge<'a>(&'a AtomicU32);

impl<'a> Gauge<'a> {
    fn up(counter: &'a AtomicU32) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The longest tool name or caller id, in bytes.
pub const MAX_TOOL_NAME_BYTES: usize = 128;
/// The longest arguments object, in bytes (each tool bounds its own inputs further).
pub const MAX_ARGUMENTS_BYTES: usize = 64 << 10;

/// Checks a call request against `max_deadline_ms`; the error names the field.
fn check_call(request: &ToolCallRequest, max_deadline_ms: u32) -> Result<(), Status> {
    if request.tool.trim().is_empty() {
        return Err(Status::invalid_argument("tool: must name a tool"));
    }
    for (field, len, max) in [
        ("tool", request.tool.len(), MAX_TOOL_NAME_BYTES),
        ("caller_id", request.caller_id.len(), MAX_TOOL_NAME_BYTES),
        ("arguments_json", request.arguments_json.len(), MAX_ARGUMENTS_BYTES),
    ] {
        if len > max {
            return Err(Status::invalid_argument(format!(
                "{field}: at most {max} bytes, got {len}"
            )));
        }
    }
    if request.deadline_ms > max_deadline_ms {
        return Err(Status::invalid_argument(format!(
            "deadline_ms: must be at most {max_deadline_ms}, got {}",
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
        Ok(Response::new(ListToolsResponse { tools: self.state.toolbox.specs() }))
    }

    async fn call(
        &self,
        request: Request<ToolCallRequest>,
    ) -> Result<Response<ToolCallResponse>, Status> {
        let request = request.into_inner();
        let toolbox = &self.state.toolbox;
        check_call(&request, toolbox.max_deadline_ms)?;
        // The line is bounded: a call beyond it is refused now rather than held in memory.
        let waiting = self.state.calls_queued.load(Ordering::Relaxed);
        if waiting >= toolbox.max_queued_calls {
            return Err(Status::resource_exhausted(format!(
                "the tool-server's line is full ({waiting} calls waiting, \
                 `tool_server.max_queued_calls`); try again later"
            )));
        }
        let deadline = match request.deadline_ms {
            0 => toolbox.default_deadline,
            ms => Duration::from_millis(ms.into()),
        };
        Ok(Response::new(self.run_call(&request, deadline).await))
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

/// Reads a corpus JSONL file; bad lines are logged with their number and skipped. A file with
/// no good passage is an error.
pub fn read_corpus(path: &Path) -> anyhow::Result<Vec<Passage>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("search corpus {}: cannot read", path.display()))?;
    let loaded = tasks::datasets::load_corpus(&text);
    for bad in loaded.skipped.iter().take(20) {
        tracing::warn!(corpus = %path.display(), line = bad.position, reason = %bad.reason, "skipped a corpus line");
    }
    if !loaded.skipped.is_empty() {
        tracing::warn!(corpus = %path.display(), skipped = loaded.skipped.len(), "skipped bad corpus lines");
    }
    anyhow::ensure!(
        !loaded.passages.is_empty(),
        "search corpus {}: no valid passage ({} lines skipped)",
        path.display(),
        loaded.skipped.len()
    );
    Ok(loaded.passages)
}

/// Serves the tool-server until shutdown.
pub async fn run(mut launch: Launch) -> anyhow::Result<()> {
    let section = launch.config.tool_server.clone();
    let corpus = match &section.corpus {
        Some(path) => Some(read_corpus(path)?),
        // A built-in task with a corpus brings its own, generated from the run's seed.
        None if launch.config.task.name == tasks::synthetic::kbqa::NAME => {
            let task = tasks::synthetic::generate_with(
                &launch.config.task.name,
                &launch.config.task.settings_json(),
                launch.config.run.seed,
            )?;
            Some(task.corpus)
        }
        None => None,
    };
    let started = Instant::now();
    let toolbox = tokio::task::spawn_blocking(move || Toolbox::new(&section, corpus.as_deref()))
        .await
        .context("building the search index")??;
    if let Some(index) = &toolbox.search {
        tracing::info!(
            passages = index.documents(),
            seconds = started.elapsed().as_secs_f64(),
            "search index built"
        );
    }
    let service = ToolService::new(launch.process.clone(), toolbox);
    launch.metrics.registry_mut().register_collector(Box::new(service.stats()));
    tokio::spawn(join_the_run(launch.config.clone(), launch.process.clone(), service.stats()));
    let max_message = launch.max_message_bytes();
    launch
        .serve(Routes::new(
            ToolServerServer::new(service)
                .max_decoding_message_size(max_message)
                .max_encoding_message_size(max_message),
        ))
        .await
}

/// Registers with the coordinator and heartbeats the calls served, until shutdown. A
/// tool-server serves whether or not a coordinator is there (a standalone server needs none),
/// so a failure here is logged, never fatal.
async fn join_the_run(
    config: paretopo_service::RunConfig,
    process: std::sync::Arc<paretopo_service::Process>,
    stats: std::sync::Arc<stats::CallStats>,
) {
    use paretopo_service::cluster;
    let member = match cluster::register(&config, &process, 0, Vec::new(), String::new()).await {
        Ok(member) => member,
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "not registered with a coordinator");
            return;
        }
    };
    let progress = std::sync::Arc::new(cluster::Progress::default());
    member.spawn_heartbeats(process.clone(), progress.clone());
    let mut ticker = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            () = process.shutdown().cancelled() => return,
            _ = ticker.tick() => {}
        }
        progress.progress.store(stats.totals().0, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_requests_are_checked_field_by_field() {
        let ok =
            ToolCallRequest { tool: "calculator".into(), deadline_ms: 100, ..Default::default() };
        assert!(check_call(&ok, 60_000).is_ok());
        let no_tool = ToolCallRequest { tool: " ".into(), ..ok.clone() };
        let err = check_call(&no_tool, 60_000).expect_err("empty tool");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("tool:"));
        let late = ToolCallRequest { deadline_ms: 60_001, ..ok };
        let err = check_call(&late, 60_000).expect_err("deadline");
        assert!(err.message().starts_with("deadline_ms:"), "{}", err.message());
    }

    async fn service() -> ToolService {
        service_with(&ToolServerSection::default(), None).await
    }

    async fn service_with(section: &ToolServerSection, corpus: Option<&[Passage]>) -> ToolService {
        let setup = paretopo_service::process::ProcessSetup {
            role: paretopo_service::Role::ToolServer,
            run_name: "test".into(),
            service_name: "paretopo.v1.ToolServer",
            listen_address: ([127, 0, 0, 1], 0).into(),
            metrics_address: None,
            advertised_address: None,
            drain_timeout: Duration::from_secs(1),
            limits: Default::default(),
            security: Default::default(),
        };
        let toolbox = Toolbox::new(section, corpus).expect("toolbox");
        ToolService::new(Arc::new(Process::new(setup, Instant::now()).await), toolbox)
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
        assert_eq!(bad.output, "error: unknown argument \"expr\" (expected expression)");
        let missing = call(&service, "calculator", "{}").await;
        assert_eq!(missing.output, "error: missing \"expression\"");
        let not_object = call(&service, "calculator", r#"["1+1"]"#).await;
        assert_eq!(not_object.error(), ToolErrorKind::BadArguments);
        let unknown = call(&service, "shell", "{}").await;
        assert_eq!(unknown.error(), ToolErrorKind::UnknownTool);
        let status = service.snapshot();
        assert_eq!((status.calls_total, status.call_errors_total), (6, 5));
        let tools =
            service.list_tools(Request::new(ListToolsRequest {})).await.expect("list").into_inner();
        let schema: serde_json::Value =
            serde_json::from_str(&tools.tools[0].arguments_schema).expect("schema is JSON");
        assert_eq!(schema["required"][0], "expression");
    }

    fn passages() -> Vec<Passage> {
        [
            ("p0", "Vorn", "Vorn is a river in Osterland."),
            ("p1", "Osterland", "Its capital is Malbrook."),
        ]
        .into_iter()
        .map(|(id, title, text)| Passage { id: id.into(), title: title.into(), text: text.into() })
        .collect()
    }

    #[tokio::test]
    async fn search_is_offered_only_with_a_corpus_and_checks_its_arguments() {
        let without = service().await;
        let missing = call(&without, "search", r#"{"query": "x"}"#).await;
        assert_eq!(missing.error(), ToolErrorKind::UnknownTool);
        assert_eq!(missing.output, "error: unknown tool \"search\" (available: calculator)");

        let corpus = passages();
        let service = service_with(&ToolServerSection::default(), Some(&corpus)).await;
        let hit = call(&service, "search", r#"{"query": "capital of Osterland", "k": 1}"#).await;
        assert_eq!(
            (hit.output.as_str(), hit.error()),
            ("Osterland: Its capital is Malbrook.", ToolErrorKind::Unspecified)
        );
        let both = call(&service, "search", r#"{"query": "Osterland"}"#).await;
        assert_eq!(both.output.lines().count(), 2, "{}", both.output);
        let none = call(&service, "search", r#"{"query": "zebra"}"#).await;
        assert_eq!(none.output, "no results");
        for bad in [
            r#"{"query": 3}"#,
            r#"{"q": "x"}"#,
            r#"{"query": "x", "k": 0}"#,
            r#"{"query": "x", "k": 11}"#,
            "[1",
        ] {
            let response = call(&service, "search", bad).await;
            assert_eq!(response.error(), ToolErrorKind::BadArguments, "{bad}: {}", response.output);
        }
        let status = service.snapshot();
        assert_eq!(status.corpus_documents, 2);
        assert_eq!(status.tools, vec!["calculator", "search"]);
        let search = status.per_tool.iter().find(|t| t.tool == "search").expect("search stats");
        assert_eq!((search.calls_total, search.errors_total), (8, 5));
        assert!(search.latency_p50_ms > 0.0 && search.latency_p99_ms >= search.latency_p50_ms);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_wait_in_line_and_time_out_by_their_deadline() {
        let section = ToolServerSection { max_concurrent_calls: Some(1), ..Default::default() };
        let service = service_with(&section, None).await;
        // Take the only place in line, as a long call would.
        let held = service.state.permits.clone().acquire_owned().await.expect("permit");
        let waiting = {
            let service = service.clone();
            tokio::spawn(async move {
                let request = ToolCallRequest {
                    tool: "calculator".into(),
                    arguments_json: r#"{"expression": "1+1"}"#.into(),
                    deadline_ms: 200,
                    ..Default::default()
                };
                service.call(Request::new(request)).await.expect("result").into_inner()
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!((service.snapshot().calls_queued, service.snapshot().calls_in_flight), (1, 0));
        let timed_out = waiting.await.expect("task");
        assert_eq!(timed_out.error(), ToolErrorKind::Timeout, "{}", timed_out.output);
        assert_eq!(timed_out.output, "error: no result within 200 ms");
        assert_eq!(service.snapshot().calls_queued, 0);
        drop(held);
        let after = call(&service, "calculator", r#"{"expression": "1+1"}"#).await;
        assert_eq!(after.output, "2");
        let status = service.snapshot();
        let calculator = status.per_tool.iter().find(|t| t.tool == "calculator").expect("stats");
        assert_eq!((calculator.calls_total, calculator.timeouts_total), (2, 1));
        assert!(calculator.latency_p99_ms >= 200.0, "{calculator:?}");
    }

    #[tokio::test]
    async fn configured_limits_reach_the_calculator() {
        let section = ToolServerSection { calculator_max_input_bytes: 8, ..Default::default() };
        let service = service_with(&section, None).await;
        assert_eq!(call(&service, "calculator", r#"{"expression": "1+2+3+4"}"#).await.output, "10");
        let long = call(&service, "calculator", r#"{"expression": "1+2+3+4+5"}"#).await;
        assert_eq!(long.error(), ToolErrorKind::Execution);
        assert!(long.output.contains("too long"), "{}", long.output);
    }

    /// A demonstration is a trajectory the actor could have produced: each of its tool calls,
    /// run by this server's tools, returns exactly the response the demonstration shows.
    #[test]
    fn demonstrations_show_what_the_tools_answer() {
        use tasks::format::{TurnAction, format_response, parse_turn};
        for (name, seed) in [("arith", 1), ("kb-qa", 1), ("kb-qa", 2), ("kb-qa", 3)] {
            let task = tasks::synthetic::generate(name, seed).expect("task");
            let corpus = (!task.corpus.is_empty()).then_some(task.corpus.as_slice());
            let toolbox = Toolbox::new(&ToolServerSection::default(), corpus).expect("toolbox");
            let mut calls = 0;
            for demo in &task.demonstrations {
                for pair in demo.segments.windows(2) {
                    let TurnAction::Call(call) =
                        parse_turn(&pair[0].text, &["calculator", "search"])
                    else {
                        continue;
                    };
                    let arguments = serde_json::Value::Object(call.arguments).to_string();
                    let work = toolbox.prepare(&call.name, &arguments).expect("valid call");
                    let (output, error) = toolbox.run(work);
                    assert_eq!(error, ToolErrorKind::Unspecified, "{output}");
                    assert_eq!(format_response(&output), pair[1].text, "{name} seed {seed}");
                    calls += 1;
                }
            }
            assert!(calls > 10, "{name}: {calls} calls checked");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_expressions_from_64_callers_fail_fast_and_the_server_keeps_serving() {
        let service = service().await;
        let hostile = [
            "9^9^9^9".to_string(),
            // Past the calculator's input limit, under the call's (a megabyte is refused as
            // INVALID_ARGUMENT before any tool sees it: tests/tests/bad_input.rs).
            "(".repeat(60_000),
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

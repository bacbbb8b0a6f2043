//! Load benchmark of the tool-server over gRPC on loopback (issue #5, DESIGN.md §10).
//!
//! Starts the release `tool-server` binary as its own process with a generated corpus of
//! `--passages` passages (default 100,000), then for each tool:
//! - a one-second warm-up at the lowest rate, not reported;
//! - **closed loop**: 64 clients, each sending its next call when the last returns, for the
//!   highest throughput;
//! - **open loop**: calls sent on a fixed schedule at each offered rate, over 64 connections,
//!   latency measured from the scheduled send time (so a stalled server cannot hide its queue),
//!   p50/p99 per rate, and the highest rate up to which every rate's median p99 (over the
//!   repeats) stays under 5 ms.
//!
//! Run with `./dev bench tools` (or `cargo bench -p tool-server --bench tool_load -- [FLAGS]`
//! after `cargo build --release -p tool-server`). Flags: `--passages N`, `--seconds S` (per
//! point, default 5), `--repeats N` (each rate's sweep, default 3: a 2-core virtual machine's
//! p99 moves between runs, so the median run's p99 is what counts), `--out FILE` (JSON results, default bench/results-tools.json).
//! The client shares the machine's cores with the server; the numbers include that.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paretopo_proto::v1::ToolCallRequest;
use paretopo_proto::v1::tool_server_client::ToolServerClient;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tonic::transport::Channel;

const CLIENTS: usize = 64;
const P99_TARGET_MS: f64 = 5.0;

struct Args {
    passages: usize,
    seconds: f64,
    repeats: usize,
    out: PathBuf,
}

fn parse_args() -> Args {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut args = Args {
        passages: 100_000,
        seconds: 5.0,
        repeats: 3,
        out: root.join("bench/results-tools.json"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--passages" => args.passages = value().parse().expect("--passages N"),
            "--seconds" => args.seconds = value().parse().expect("--seconds S"),
            "--repeats" => args.repeats = value().parse().expect("--repeats N"),
            "--out" => args.out = PathBuf::from(value()),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

/// A vocabulary of made-up words with Zipf-like frequencies, as natural text has.
fn vocabulary(rng: &mut ChaCha8Rng) -> Vec<String> {
    let letters = b"abcdefghiklmnoprstuvz";
    (0..20_000)
        .map(|_| {
            let len = rng.random_range(3..=9);
            (0..len).map(|_| *letters.choose(rng).unwrap_or(&b'a') as char).collect()
        })
        .collect()
}

fn zipf_word<'a>(words: &'a [String], rng: &mut ChaCha8Rng) -> &'a str {
    // Inverse-CDF of a 1/rank law, approximately: rank = n^u.
    let u: f64 = rng.random();
    let rank = (words.len() as f64).powf(u) as usize;
    &words[rank.saturating_sub(1).min(words.len() - 1)]
}

/// Writes a JSONL corpus of `n` passages of 20-60 words and returns its path.
fn write_corpus(n: usize, words: &[String], rng: &mut ChaCha8Rng) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    let mut out = std::io::BufWriter::new(file.as_file_mut());
    for i in 0..n {
        let title: Vec<&str> = (0..2).map(|_| zipf_word(words, rng)).collect();
        let len = rng.random_range(20..=60);
        let text: Vec<&str> = (0..len).map(|_| zipf_word(words, rng)).collect();
        let line = serde_json::json!({"id": i.to_string(), "title": title.join(" "), "text": text.join(" ")});
        writeln!(out, "{line}").expect("write corpus");
    }
    out.flush().expect("flush corpus");
    drop(out);
    file
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(corpus: &std::path::Path, port: u16) -> Server {
    let binary = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/tool-server");
    assert!(binary.exists(), "build it first: cargo build --release -p tool-server");
    let child = Command::new(binary)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--set", &format!("tool_server.corpus={:?}", corpus.display().to_string())])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .expect("start tool-server");
    Server(child)
}

/// What one call asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Tool {
    Calculator,
    Search,
}

fn make_request(tool: Tool, words: &[String], rng: &mut ChaCha8Rng) -> ToolCallRequest {
    let (name, arguments) = match tool {
        Tool::Calculator => {
            let (a, b, c) =
                (rng.random_range(1..10_000), rng.random_range(1..1000), rng.random_range(1..100));
            (
                "calculator",
                serde_json::json!({"expression": format!("({a} + {b}) * {c} / 7 - {b}^3")}),
            )
        }
        Tool::Search => {
            let n = rng.random_range(2..=4);
            let query: Vec<&str> = (0..n).map(|_| zipf_word(words, rng)).collect();
            ("search", serde_json::json!({"query": query.join(" ")}))
        }
    };
    ToolCallRequest {
        tool: name.into(),
        arguments_json: arguments.to_string(),
        deadline_ms: 10_000,
        caller_id: "bench".into(),
    }
}

/// Latencies in milliseconds and failures of one measurement.
struct Sample {
    latencies_ms: Vec<f64>,
    failures: usize,
    seconds: f64,
}

impl Sample {
    fn percentile(&self, q: f64) -> f64 {
        let mut sorted = self.latencies_ms.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return f64::NAN;
        }
        sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
    }

    fn json(&self, offered: Option<f64>) -> serde_json::Value {
        serde_json::json!({
            "offered_per_s": offered,
            "achieved_per_s": self.latencies_ms.len() as f64 / self.seconds,
            "calls": self.latencies_ms.len(),
            "failures": self.failures,
            "p50_ms": self.percentile(0.5),
            "p99_ms": self.percentile(0.99),
        })
    }
}

async fn closed_loop(
    channels: &[Channel],
    tool: Tool,
    words: Arc<Vec<String>>,
    seconds: f64,
) -> Sample {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut client = ToolServerClient::new(channels[i % channels.len()].clone());
            let words = words.clone();
            tokio::spawn(async move {
                let mut rng = ChaCha8Rng::seed_from_u64(i as u64);
                let (mut latencies, mut failures) = (Vec::new(), 0);
                while Instant::now() < end {
                    let request = make_request(tool, &words, &mut rng);
                    let t = Instant::now();
                    match client.call(request).await {
                        Ok(r) if r.get_ref().error == 0 => {
                            latencies.push(t.elapsed().as_secs_f64() * 1e3)
                        }
                        _ => failures += 1,
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut sample = Sample { latencies_ms: Vec::new(), failures: 0, seconds: 0.0 };
    for task in tasks {
        let (latencies, failures) = task.await.expect("client task");
        sample.latencies_ms.extend(latencies);
        sample.failures += failures;
    }
    sample.seconds = started.elapsed().as_secs_f64();
    sample
}

async fn open_loop(
    channels: &[Channel],
    tool: Tool,
    words: &[String],
    rate: f64,
    seconds: f64,
) -> Sample {
    let count = (rate * seconds) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(rate as u64);
    let requests: Vec<ToolCallRequest> =
        (0..count).map(|_| make_request(tool, words, &mut rng)).collect();
    // Paced by an OS thread: tokio's timer wheel has a 1 ms granularity, which would add up to a
    // millisecond of the client's own lateness to every latency measured from the schedule.
    let channels = channels.to_vec();
    let pacer = tokio::task::spawn_blocking(move || {
        let handle = tokio::runtime::Handle::current();
        let start = Instant::now() + Duration::from_millis(20);
        let mut tasks = Vec::with_capacity(count);
        for (i, request) in requests.into_iter().enumerate() {
            let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let mut client = ToolServerClient::new(channels[i % channels.len()].clone());
            tasks.push(handle.spawn(async move {
                let ok = matches!(client.call(request).await, Ok(r) if r.get_ref().error == 0);
                // From the scheduled time, not the actual send: a late send is the server's delay.
                (ok, scheduled.elapsed().as_secs_f64() * 1e3)
            }));
        }
        tasks
    });
    let tasks = pacer.await.expect("pacer");
    let mut sample = Sample { latencies_ms: Vec::new(), failures: 0, seconds };
    for task in tasks {
        match task.await.expect("call task") {
            (true, ms) => sample.latencies_ms.push(ms),
            (false, _) => sample.failures += 1,
        }
    }
    sample
}

/// Each hostile calculator input, sent 20 times one after another on an idle server: the median
/// and slowest round trips, and the error the policy reads.
async fn hostile(channel: &Channel) -> serde_json::Value {
    let inputs = [
        ("tower of powers 9^9^9^9", "9^9^9^9".to_string()),
        ("giant exponent 2^(10^20)", "2^100000000000000000000".to_string()),
        ("1 MB of digits", "9".repeat(1 << 20)),
        ("1 MB of open parentheses", "(".repeat(1 << 20)),
        ("nesting depth 500", format!("{}1{}", "(".repeat(500), ")".repeat(500))),
        ("division by zero", "1/(3-3)".to_string()),
        ("product past the size limit", ["(10^1000)"; 5].join("*")),
    ];
    let mut client = ToolServerClient::new(channel.clone())
        .max_decoding_message_size(8 << 20)
        .max_encoding_message_size(8 << 20);
    let mut out = Vec::new();
    for (name, expression) in inputs {
        let mut times = Vec::new();
        let mut output = String::new();
        for _ in 0..20 {
            let request = ToolCallRequest {
                tool: "calculator".into(),
                arguments_json: serde_json::json!({ "expression": expression }).to_string(),
                deadline_ms: 10_000,
                caller_id: "bench".into(),
            };
            let t = Instant::now();
            let response = client.call(request).await.expect("hostile call").into_inner();
            times.push(t.elapsed().as_secs_f64() * 1e3);
            output = response.output;
        }
        times.sort_by(f64::total_cmp);
        let (median, slowest) = (times[times.len() / 2], times[times.len() - 1]);
        eprintln!(
            "tool_load: hostile {name}: median {median:.2} ms, slowest {slowest:.2} ms: {output}"
        );
        out.push(serde_json::json!({"input": name, "median_ms": median, "slowest_ms": slowest, "output": output}));
    }
    serde_json::Value::Array(out)
}

fn main() {
    let args = parse_args();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let words = Arc::new(vocabulary(&mut rng));
    eprintln!("tool_load: writing a corpus of {} passages", args.passages);
    let corpus = write_corpus(args.passages, &words, &mut rng);
    let port = free_port();
    let started = Instant::now();
    let _server = start_server(corpus.path(), port);
    let results = runtime.block_on(async {
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut channels = Vec::new();
        while channels.is_empty() {
            match Channel::from_shared(endpoint.clone()).expect("uri").connect().await {
                Ok(_) => {
                    for _ in 0..CLIENTS {
                        channels.push(Channel::from_shared(endpoint.clone()).expect("uri").connect().await.expect("connect"));
                    }
                }
                Err(_) if started.elapsed() < Duration::from_secs(300) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("tool-server did not start: {e}"),
            }
        }
        // The server answers only once its index is built.
        let mut probe = ToolServerClient::new(channels[0].clone());
        let ready = probe.call(make_request(Tool::Search, &words, &mut rng)).await;
        assert!(ready.is_ok(), "search does not answer: {ready:?}");
        let startup = started.elapsed().as_secs_f64();
        eprintln!("tool_load: server up and index built in {startup:.1} s");
        let mut report = serde_json::Map::new();
        let commit = Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok();
        let commit = commit.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        report.insert("commit".into(), commit.into());
        report.insert("passages".into(), args.passages.into());
        report.insert("startup_s".into(), startup.into());
        for (tool, name, rates) in [
            (Tool::Calculator, "calculator", vec![500.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0]),
            (Tool::Search, "search", vec![250.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0]),
        ] {
            // Warm up (connections, caches, the blocking pool's threads); not reported.
            open_loop(&channels, tool, &words, rates[0], 1.0).await;
            let closed = closed_loop(&channels, tool, words.clone(), args.seconds).await;
            eprintln!(
                "tool_load: {name} closed loop, {CLIENTS} clients: {:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms",
                closed.latencies_ms.len() as f64 / closed.seconds,
                closed.percentile(0.5),
                closed.percentile(0.99)
            );
            // Sweeps the rates `repeats` times, so a pause of the machine hits one run of a rate,
            // not all of them.
            let mut runs: Vec<Vec<Sample>> = rates.iter().map(|_| Vec::new()).collect();
            for repeat in 0..args.repeats {
                for (rate, samples) in rates.iter().zip(&mut runs) {
                    let sample = open_loop(&channels, tool, &words, *rate, args.seconds).await;
                    eprintln!(
                        "tool_load: {name} open loop at {rate:.0}/s (run {}): p50 {:.2} ms, p99 {:.2} ms, {} failures",
                        repeat + 1,
                        sample.percentile(0.5),
                        sample.percentile(0.99),
                        sample.failures
                    );
                    samples.push(sample);
                }
            }
            let mut open = Vec::new();
            let (mut best, mut best_index) = (None, 0);
            for (rate, samples) in rates.iter().zip(&runs) {
                let mut p99s: Vec<f64> = samples.iter().map(|s| s.percentile(0.99)).collect();
                p99s.sort_by(f64::total_cmp);
                let median_p99 = p99s[p99s.len() / 2];
                let failures: usize = samples.iter().map(|s| s.failures).sum();
                // Sustained: this rate and every lower one met the target.
                if median_p99 < P99_TARGET_MS && failures == 0 && open.len() == best_index {
                    best = Some(*rate);
                    best_index += 1;
                }
                open.push(serde_json::json!({
                    "offered_per_s": rate,
                    "median_p99_ms": median_p99,
                    "runs": samples.iter().map(|s| s.json(Some(*rate))).collect::<Vec<_>>(),
                }));
            }
            report.insert(
                name.into(),
                serde_json::json!({
                    "closed_loop_64_clients": closed.json(None),
                    "open_loop": open,
                    "highest_sustained_rate_median_p99_under_5ms": best,
                }),
            );
        }
        report.insert("hostile_calculator_inputs".into(), hostile(&channels[0]).await);
        serde_json::Value::Object(report)
    });
    let text = serde_json::to_string_pretty(&results).expect("json");
    std::fs::write(&args.out, text + "\n").expect("write results");
    eprintln!("tool_load: wrote {}", args.out.display());
}

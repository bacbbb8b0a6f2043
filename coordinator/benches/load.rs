//! The coordinator under load (issue #10, point 7): `--nodes` simulated workers register with a
//! real coordinator process and heartbeat at `cluster.heartbeat_interval_ms` (each over its own
//! connection, started at a random phase), `--watchers` clients hold `WatchStatus` streams open,
//! and one prober times `GetStatus` every 100 ms. After everyone has registered and a warm-up,
//! it measures for `--seconds`: heartbeat round trips (p50/p99), `GetStatus` latency, the status
//! messages the watchers got, and the coordinator's CPU (from /proc/<pid>/stat) and resident
//! memory (VmRSS). Prints a summary and one JSON line.
//!
//! `cargo bench -p coordinator --bench load -- --nodes 1000 --watchers 10 --seconds 60`

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use paretopo_proto::v1::coordinator_client::CoordinatorClient;
use paretopo_proto::v1::{
    GetStatusRequest, HeartbeatRequest, ProcessState, RegisterRequest, Role, WatchStatusRequest,
};
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

struct Args {
    nodes: u32,
    watchers: u32,
    seconds: u64,
    heartbeat_ms: u32,
}

fn args() -> Args {
    let mut args = Args { nodes: 1000, watchers: 10, seconds: 60, heartbeat_ms: 1000 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<u64>().ok()).expect("a number");
        match flag.as_str() {
            "--nodes" => args.nodes = value() as u32,
            "--watchers" => args.watchers = value() as u32,
            "--seconds" => args.seconds = value(),
            "--heartbeat-ms" => args.heartbeat_ms = value() as u32,
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn free_port() -> SocketAddr {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("a port")
}

fn channel(address: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{address}"))
        .expect("endpoint")
        .tcp_nodelay(true)
        .connect_lazy()
}

/// utime + stime of `pid`, in clock ticks, and its resident memory in KiB.
fn cpu_and_rss(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    (ticks, rss)
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args = args();
    let address = free_port();
    let dir = tempfile::tempdir().expect("run dir");
    let mut coordinator = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(["--listen", &address.to_string(), "--nodes", &args.nodes.to_string()])
        .args(["--set", &format!("run.dir=\"{}\"", dir.path().display())])
        .args(["--set", &format!("cluster.heartbeat_interval_ms={}", args.heartbeat_ms)])
        .args(["--set", &format!("cluster.heartbeat_timeout_ms={}", args.heartbeat_ms * 10)])
        .args(["--set", "cluster.rendezvous_timeout_ms=600000"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the coordinator");
    let pid = coordinator.id();
    let mut probe = CoordinatorClient::new(channel(address));
    let started = Instant::now();
    while probe.get_status(GetStatusRequest {}).await.is_err() {
        assert!(started.elapsed() < Duration::from_secs(30), "the coordinator did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, rss_idle) = cpu_and_rss(pid);

    // Register every node (each over its own connection), then heartbeat at the rate.
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat_rtts = Arc::new(Mutex::new(Vec::<u64>::new()));
    let failures = Arc::new(AtomicU64::new(0));
    let interval = Duration::from_millis(args.heartbeat_ms.into());
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        let mut client = CoordinatorClient::new(channel(address));
        let reply = client
            .register(RegisterRequest {
                role: if i == 0 { Role::Learner } else { Role::Actor } as i32,
                advertised_address: format!("10.0.{}.{}:9000", i / 250, i % 250),
                hostname: format!("sim-{i}"),
                local_devices: 1,
                ..Default::default()
            })
            .await
            .expect("register");
        let node_id = reply.into_inner().node_id;
        let (measuring, stop, rtts, failures) =
            (measuring.clone(), stop.clone(), heartbeat_rtts.clone(), failures.clone());
        nodes.push(tokio::spawn(async move {
            // A random phase, so heartbeats spread over the interval as real nodes' do.
            let phase = interval.mul_f64(f64::from(i.wrapping_mul(2_654_435_761) % 1000) / 1000.0);
            tokio::time::sleep(phase).await;
            let mut ticker = tokio::time::interval(interval);
            let mut mine = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                ticker.tick().await;
                let sent = Instant::now();
                let request = HeartbeatRequest {
                    node_id: node_id.clone(),
                    state: ProcessState::Serving as i32,
                    progress: 1,
                    ..Default::default()
                };
                match client.heartbeat(request).await {
                    Ok(_) if measuring.load(Ordering::Relaxed) => {
                        mine.push(sent.elapsed().as_micros() as u64)
                    }
                    Ok(_) => {}
                    Err(_) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            rtts.lock().await.extend(mine);
        }));
    }
    let registered = started.elapsed();

    // The status watchers: count the snapshots they receive while measuring.
    let watched = Arc::new(AtomicU64::new(0));
    let watched_bytes = Arc::new(AtomicU64::new(0));
    for _ in 0..args.watchers {
        let mut client = CoordinatorClient::new(channel(address));
        let (measuring, watched, watched_bytes) =
            (measuring.clone(), watched.clone(), watched_bytes.clone());
        tokio::spawn(async move {
            let mut stream = client
                .watch_status(WatchStatusRequest { interval_ms: 1000 })
                .await
                .expect("watch")
                .into_inner();
            while let Ok(Some(status)) = stream.message().await {
                if measuring.load(Ordering::Relaxed) {
                    watched.fetch_add(1, Ordering::Relaxed);
                    watched_bytes
                        .fetch_add(prost::Message::encoded_len(&status) as u64, Ordering::Relaxed);
                }
            }
        });
    }

    // Warm up for two intervals, then measure.
    tokio::time::sleep(interval * 2 + Duration::from_secs(1)).await;
    let status = probe.get_status(GetStatusRequest {}).await.expect("status").into_inner();
    assert_eq!(status.nodes_registered, args.nodes, "every simulated node registered");
    let (cpu_before, _) = cpu_and_rss(pid);
    let window = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    let mut status_latency = Vec::new();
    let mut rss_peak = 0;
    while window.elapsed() < Duration::from_secs(args.seconds) {
        let sent = Instant::now();
        probe.get_status(GetStatusRequest {}).await.expect("status");
        status_latency.push(sent.elapsed().as_micros() as u64);
        rss_peak = rss_peak.max(cpu_and_rss(pid).1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    measuring.store(false, Ordering::Relaxed);
    let wall = window.elapsed().as_secs_f64();
    let (cpu_after, rss_end) = cpu_and_rss(pid);
    let cores = (cpu_after - cpu_before) as f64 / clock_ticks() / wall;
    stop.store(true, Ordering::Relaxed);
    for node in nodes {
        let _ = node.await;
    }
    let _ = coordinator.kill();
    let _ = coordinator.wait();

    let mut rtts = heartbeat_rtts.lock().await.clone();
    rtts.sort_unstable();
    status_latency.sort_unstable();
    let lost = status.nodes.iter().filter(|n| n.lost).count();
    println!(
        "coordinator load: {} nodes heartbeating every {} ms, {} status watchers, {:.0} s measured \
         (registration of all took {:.1} s)",
        args.nodes,
        args.heartbeat_ms,
        args.watchers,
        wall,
        registered.as_secs_f64()
    );
    println!(
        "  heartbeats: {} round trips, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} failed; {lost} nodes lost",
        rtts.len(),
        percentile(&rtts, 0.5),
        percentile(&rtts, 0.99),
        percentile(&rtts, 1.0),
        failures.load(Ordering::Relaxed)
    );
    println!(
        "  GetStatus: p50 {:.2} ms, p99 {:.2} ms over {} calls; watchers got {} snapshots ({:.1} MB)",
        percentile(&status_latency, 0.5),
        percentile(&status_latency, 0.99),
        status_latency.len(),
        watched.load(Ordering::Relaxed),
        watched_bytes.load(Ordering::Relaxed) as f64 / 1e6
    );
    println!(
        "  coordinator: {cores:.3} cores, resident {:.1} MB idle, {:.1} MB peak, {:.1} MB at the end",
        rss_idle as f64 / 1024.0,
        rss_peak as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    println!(
        "{}",
        serde_json::json!({
            "nodes": args.nodes,
            "watchers": args.watchers,
            "heartbeat_ms": args.heartbeat_ms,
            "seconds": wall,
            "heartbeats": rtts.len(),
            "heartbeat_p50_ms": percentile(&rtts, 0.5),
            "heartbeat_p99_ms": percentile(&rtts, 0.99),
            "heartbeat_failures": failures.load(Ordering::Relaxed),
            "status_p50_ms": percentile(&status_latency, 0.5),
            "status_p99_ms": percentile(&status_latency, 0.99),
            "watcher_snapshots": watched.load(Ordering::Relaxed),
            "coordinator_cores": cores,
            "coordinator_rss_mb_peak": rss_peak as f64 / 1024.0,
            "coordinator_rss_mb_idle": rss_idle as f64 / 1024.0,
        })
    );
}

//! The learner's transport over gRPC on loopback (issue #6): how fast it ingests trajectories,
//! and how long publishing a large policy to actors takes against a plain TCP copy.
//!
//! - **ingest**: 4 actor connections stream groups of 8 synthetic 1,024-token trajectories to a
//!   learner's `PushTrajectories` (the real handler: field checks, de-duplication, staleness,
//!   the bounded queue, acknowledgements); a task drains the queue as a trainer would. Reports
//!   trajectories/s and MB/s of encoded protobuf.
//! - **publish**: a model of `qwen2.5-0.5b`'s shape (random weights, float32 on this CPU, or
//!   `--dtype bf16`) is cut into chunks and streamed by `WatchPolicy` to 2 subscribers at once
//!   (`--subscribers N`), timed until all hold every byte; against it, the same number of bytes
//!   copied once through a plain TCP socket on loopback. The target is within 2x.
//!
//! Run with `./dev bench transport` or
//! `cargo bench -p learner --bench transport -- [--groups N] [--connections N] [--dtype f32|bf16]
//! [--rounds N] [--subscribers N] [--ingest-only] [--tls]`. `--tls` serves two learners in one
//! process, one plaintext and one with mutual TLS (a fresh CA, the learner's and an actor's
//! certificates, the authorisation layer), runs every round on both in turn (the order swapped
//! each round, so that both see the machine alike), and prints how much slower TLS is
//! (issue #11).
//! Server and clients share this machine's cores; the numbers include that.

use std::io::{Read, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use learner::LearnerService;
use learner::intake::IntakeLimits;
use learner::runtime::Shared;
use paretopo_proto::v1::learner_client::LearnerClient;
use paretopo_proto::v1::learner_server::LearnerServer;
use paretopo_proto::v1::{
    ObjectiveVector, RawMetrics, Trajectory, TrajectoryGroup, WatchPolicyRequest,
};
use paretopo_service::process::{Process, ProcessSetup};
use paretopo_service::security::Security;
use paretopo_service::{Role, RunConfig};
use policy::{ModelConfig, Qwen2};
use prost::Message;
use tch::{Device, Kind};
use tokio::net::TcpListener;

const GROUP_SIZE: usize = 8;
const TOKENS: usize = 1024;

struct Args {
    groups: usize,
    connections: usize,
    kind: Kind,
    rounds: usize,
    subscribers: usize,
    ingest_only: bool,
    tls: bool,
}

fn args() -> Args {
    let mut args = Args {
        groups: 200,
        connections: 4,
        kind: Kind::Float,
        rounds: 3,
        subscribers: 2,
        ingest_only: false,
        tls: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--groups" => {
                args.groups = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.groups)
            }
            "--connections" => {
                args.connections =
                    it.next().and_then(|v| v.parse().ok()).unwrap_or(args.connections)
            }
            "--ingest-only" => args.ingest_only = true,
            "--tls" => args.tls = true,
            "--subscribers" => {
                args.subscribers =
                    it.next().and_then(|v| v.parse().ok()).unwrap_or(args.subscribers).max(1)
            }
            "--rounds" => {
                args.rounds = it.next().and_then(|v| v.parse().ok()).unwrap_or(args.rounds)
            }
            "--dtype" => {
                args.kind = match it.next().as_deref() {
                    Some("bf16") => Kind::BFloat16,
                    _ => Kind::Float,
                }
            }
            _ => {} // cargo bench passes --bench
        }
    }
    args
}

/// A group of synthetic trajectories: a 32-token prompt, then generated tokens with tool
/// output masked in between, as the actor sends them.
fn group(actor: usize, seq: u64) -> TrajectoryGroup {
    let trajectories = (0..GROUP_SIZE)
        .map(|i| {
            let ids: Vec<u32> =
                (0..TOKENS).map(|t| ((t * 7 + i * 13 + actor) % 120 + 3) as u32).collect();
            let mask: Vec<u32> =
                (0..TOKENS).map(|t| u32::from(t >= 32 && !(400..480).contains(&t))).collect();
            let logprobs: Vec<f32> =
                mask.iter().map(|&m| if m == 1 { -0.7 } else { 0.0 }).collect();
            Trajectory {
                token_ids: ids,
                loss_mask: mask,
                sampling_logprobs: logprobs,
                objectives: Some(ObjectiveVector { values: vec![1.0, 0.5, 0.2] }),
                metrics: Some(RawMetrics {
                    accuracy: 1.0,
                    tool_calls: 1,
                    generated_tokens: 912,
                    termination: 1,
                    ..Default::default()
                }),
                answer_text: "42".into(),
            }
        })
        .collect();
    TrajectoryGroup {
        actor_id: format!("actor-{actor}"),
        group_seq: seq,
        policy_version: 0,
        prompt_id: format!("bench:{seq}"),
        prompt_tokens: 32,
        trajectories,
        temperature: 1.0,
    }
}

async fn serve(vocab: i64, security: Arc<Security>) -> (SocketAddr, Arc<Shared>, Arc<Process>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
    let address = listener.local_addr().expect("addr");
    let process = Arc::new(
        Process::new(
            ProcessSetup {
                role: Role::Learner,
                run_name: "bench".into(),
                service_name: "paretopo.v1.Learner",
                listen_address: address,
                metrics_address: None,
                advertised_address: None,
                drain_timeout: Duration::from_secs(1),
                limits: Default::default(),
                security,
            },
            Instant::now(),
        )
        .await,
    );
    let mut config = RunConfig::default();
    config.algorithm.groups_per_step = 64;
    let (shared, mut queue) = Shared::new(&config);
    let _ = shared.limits.set(IntakeLimits {
        objectives: 3,
        vocab_size: vocab as u32,
        max_tokens: 4096,
        max_trajectories: 64,
    });
    // The trainer's side: take groups as fast as they come.
    tokio::spawn(async move { while queue.recv().await.is_some() {} });
    let weights = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind weights port");
    let _ = shared.raw_address.set(weights.local_addr().expect("addr").to_string());
    tokio::spawn(learner::weights_server::serve(
        weights,
        shared.published.subscribe(),
        process.security().clone(),
        process.shutdown().clone(),
    ));
    let service = LearnerService::new(process.clone(), "cpu".into(), 1, shared.clone());
    // The server every learner runs: TLS and the authorisation layer when `security` has a
    // certificate.
    let routes = tonic::service::Routes::new(LearnerServer::new(service));
    tokio::spawn(paretopo_service::grpc::serve(process.clone(), listener, None, routes));
    (address, shared, process)
}

async fn client(
    address: SocketAddr,
    security: &Security,
) -> LearnerClient<tonic::transport::Channel> {
    let channel = security
        .endpoint(&address.to_string(), Role::Learner)
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    LearnerClient::new(channel)
}

/// Streams `groups` groups from each of `connections` actors (a connection each); returns
/// (seconds, trajectories, bytes).
async fn ingest(
    security: &Security,
    address: SocketAddr,
    groups: usize,
    connections: usize,
    round: usize,
) -> (f64, usize, usize) {
    let bytes_per_group = group(0, 1).encoded_len();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for actor in 0..connections {
        let mut client = client(address, security).await;
        tasks.push(tokio::spawn(async move {
            let id = actor + connections * round;
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let sender = tokio::spawn(async move {
                for seq in 1..=groups as u64 {
                    if tx.send(group(id, seq)).await.is_err() {
                        return;
                    }
                }
            });
            let mut acks = client
                .push_trajectories(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .expect("push")
                .into_inner();
            let mut acked = 0;
            while acked < groups {
                let ack = acks.message().await.expect("ack").expect("stream open");
                assert_eq!(ack.outcome, 1, "accepted: {}", ack.error);
                acked += 1;
            }
            let _ = sender.await;
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    let seconds = started.elapsed().as_secs_f64();
    let total = groups * connections;
    (seconds, total * GROUP_SIZE, total * bytes_per_group)
}

/// `subscribers` subscribers as actors run them (`cluster.weights_transport = "tcp"`): each
/// takes the notices of `WatchPolicy` and fetches the even-numbered versions (the raw rounds')
/// from the raw weights port into the buffers of the version before, and reports the bytes it
/// holds.
async fn raw_subscribers(
    security: Arc<Security>,
    address: SocketAddr,
    subscribers: usize,
) -> tokio::sync::mpsc::Receiver<usize> {
    let (tx, rx) = tokio::sync::mpsc::channel(subscribers.max(4));
    for i in 0..subscribers {
        let mut client = client(address, &security).await;
        let tx = tx.clone();
        let security = security.clone();
        tokio::spawn(async move {
            let request = WatchPolicyRequest {
                node_id: format!("actor-{i}"),
                have_version: 1,
                raw_tcp: true,
            };
            let mut stream = client.watch_policy(request).await.expect("watch").into_inner();
            let mut staging = None;
            while let Some(notice) = stream.message().await.expect("notice") {
                assert!(!notice.raw_address.is_empty(), "a notice, not chunks");
                if notice.version % 2 == 1 {
                    continue; // a gRPC round's version
                }
                let got = actor::runtime::fetch_raw(
                    &security,
                    &notice.raw_address,
                    notice.version,
                    staging.take(),
                )
                .await
                .expect("fetch");
                let held = got.tensors.values().map(|t| t.bytes.len()).sum::<usize>();
                staging = Some(got);
                if tx.send(held).await.is_err() {
                    return;
                }
            }
        });
    }
    rx
}

/// Publishes `model` as `version` and times the raw subscribers until all hold every byte.
async fn publish_raw(
    shared: &Shared,
    model: &Qwen2,
    version: u64,
    subscribers: usize,
    done: &mut tokio::sync::mpsc::Receiver<usize>,
) -> (f64, f64) {
    let published = Arc::new(actor::weights::publish(model, version));
    let bytes: usize = published.chunks.iter().map(|c| c.data.len()).sum();
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    shared.published.send_replace(Some(published));
    for _ in 0..subscribers {
        assert_eq!(done.recv().await.expect("subscriber"), bytes);
    }
    (started.elapsed().as_secs_f64(), process_cpu_seconds() - cpu_before)
}

/// User + system CPU time of this whole process (learner and subscribers alike, every thread)
/// from `/proc/self/stat`, in seconds: on a machine whose cores the benchmark already fills,
/// extra CPU per transfer shows up as wall time, and this says how much there was.
fn process_cpu_seconds() -> f64 {
    // USER_HZ, the unit of these fields, is 100 on Linux for every architecture we build for.
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime
    // are fields 14 and 15.
    let after_name = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields[i - 3].parse::<f64>().expect("a tick count");
    (ticks(14) + ticks(15)) / TICKS_PER_SECOND
}

/// Publishes `model` and times `subscribers` subscribers receiving every chunk; returns the
/// seconds and the chunks' payloads (for the plain TCP copies of the same bytes).
async fn publish(
    security: &Security,
    address: SocketAddr,
    shared: &Shared,
    model: &Qwen2,
    version: u64,
    subscribers: usize,
) -> (f64, Arc<Vec<bytes::Bytes>>) {
    let published = Arc::new(actor::weights::publish(model, version));
    let payloads: Arc<Vec<bytes::Bytes>> =
        Arc::new(published.chunks.iter().map(|c| c.data.clone()).collect());
    let bytes: usize = published.chunks.iter().map(|c| c.data.len()).sum();
    let mut tasks = Vec::new();
    for i in 0..subscribers {
        let mut client = client(address, security).await;
        tasks.push(tokio::spawn(async move {
            let request = WatchPolicyRequest {
                node_id: format!("actor-{i}"),
                have_version: version,
                raw_tcp: false,
            };
            let mut stream = client.watch_policy(request).await.expect("watch").into_inner();
            let mut received = 0usize;
            while let Some(chunk) = stream.message().await.expect("chunk") {
                if chunk.version != version {
                    continue;
                }
                received += chunk.data.len();
                if chunk.last {
                    break;
                }
            }
            received
        }));
    }
    // Both subscribers wait on the stream; the clock starts when the version is published.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    shared.published.send_replace(Some(published));
    for s in tasks {
        assert_eq!(s.await.expect("subscriber"), bytes);
    }
    (started.elapsed().as_secs_f64(), payloads)
}

/// Sends the weights' own bytes (`data`, the chunks' payloads) through plain loopback TCP
/// sockets to `receivers` readers at once, one writer thread each; returns seconds until every
/// reader holds every byte.
fn plain_tcp(data: Arc<Vec<bytes::Bytes>>, receivers: usize) -> f64 {
    let total: usize = data.iter().map(bytes::Bytes::len).sum();
    let listener = StdListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    let address = listener.local_addr().expect("addr");
    let readers: Vec<_> = (0..receivers)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(address).expect("connect");
                let mut buffer = vec![0u8; 1 << 20];
                let mut got = 0;
                while got < total {
                    let n = stream.read(&mut buffer).expect("read");
                    assert!(n > 0, "closed early");
                    got += n;
                }
                got
            })
        })
        .collect();
    let streams: Vec<TcpStream> =
        (0..receivers).map(|_| listener.accept().expect("accept").0).collect();
    let started = Instant::now();
    let writers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let data = data.clone();
            std::thread::spawn(move || {
                stream.set_nodelay(true).expect("nodelay");
                for chunk in data.iter() {
                    stream.write_all(chunk).expect("write");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("writer");
    }
    for reader in readers {
        assert_eq!(reader.join().expect("reader"), total);
    }
    started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One transport's medians: ingest trajectories/s and MB/s; publication seconds over the raw
/// port and over gRPC chunks (0 with `--ingest-only`).
struct Medians {
    trajectories_per_s: f64,
    mb_per_s: f64,
    raw_s: f64,
    grpc_s: f64,
}

/// One learner's service as the benchmark drives it: plaintext, or with mutual TLS.
struct Side {
    label: &'static str,
    actor: Arc<Security>,
    address: SocketAddr,
    shared: Arc<Shared>,
    process: Arc<Process>,
}

/// Runs every round on each side in turn, the order swapped each round, so that both see the
/// same state of the machine ("side by side in one run"); returns each side's medians.
async fn measure(
    args: &Args,
    credentials: Vec<(&'static str, Arc<Security>, Arc<Security>)>,
) -> Vec<Medians> {
    let config = ModelConfig::named("qwen2.5-0.5b").expect("config");
    let mut sides = Vec::new();
    for (label, server, actor) in credentials {
        let (address, shared, process) = serve(config.vocab_size, server).await;
        process.mark_serving().await;
        sides.push(Side { label, actor, address, shared, process });
    }
    let order = |round: usize| -> Vec<usize> {
        let mut order: Vec<usize> = (0..sides.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        order
    };
    println!(
        "ingest: {} connections x {} groups of {GROUP_SIZE} trajectories x {TOKENS} tokens",
        args.connections, args.groups
    );
    let mut rates = vec![Vec::new(); sides.len()];
    for round in 0..args.rounds {
        for i in order(round) {
            let side = &sides[i];
            let (seconds, trajectories, bytes) =
                ingest(&side.actor, side.address, args.groups, args.connections, round).await;
            let (tps, mbps) = (trajectories as f64 / seconds, bytes as f64 / seconds / 1e6);
            println!(
                "  [{}] round {round}: {trajectories} trajectories in {seconds:.2} s: {tps:.0} trajectories/s, {mbps:.0} MB/s",
                side.label
            );
            rates[i].push((tps, mbps));
        }
    }
    let mut medians: Vec<Medians> = rates
        .iter()
        .zip(&sides)
        .map(|(rates, side)| {
            let tps = median(rates.iter().map(|r| r.0).collect());
            let mbps = median(rates.iter().map(|r| r.1).collect());
            println!("  [{}] median: {tps:.0} trajectories/s, {mbps:.0} MB/s", side.label);
            Medians { trajectories_per_s: tps, mb_per_s: mbps, raw_s: 0.0, grpc_s: 0.0 }
        })
        .collect();
    if args.ingest_only {
        sides.iter().for_each(|side| side.process.shutdown().cancel());
        return medians;
    }

    let model = Qwen2::zeros(config, args.kind, Device::Cpu);
    model.init_random(0);
    println!(
        "publish: qwen2.5-0.5b shape, {} parameters, {:?}, to {} subscribers",
        model.parameters().numel(),
        args.kind,
        args.subscribers
    );
    let mut raw_done = Vec::new();
    for side in &sides {
        raw_done.push(raw_subscribers(side.actor.clone(), side.address, args.subscribers).await);
    }
    let n = args.subscribers;
    let mut rounds = vec![Vec::new(); sides.len()];
    for round in 0..args.rounds {
        let version = 2 * round as u64 + 1;
        for i in order(round) {
            let side = &sides[i];
            let (grpc, payloads) =
                publish(&side.actor, side.address, &side.shared, &model, version, n).await;
            let (raw, raw_cpu) =
                publish_raw(&side.shared, &model, version + 1, n, &mut raw_done[i]).await;
            let bytes: usize = payloads.iter().map(bytes::Bytes::len).sum();
            let buffers =
                if round == 0 { " (fresh buffers)" } else { " (buffers of the version before)" };
            if sides.len() > 1 {
                println!(
                    "  [{}] round {round}: {:.0} MB to {n} subscribers: raw port {raw:.2} s (CPU {raw_cpu:.2} s){buffers}, gRPC chunks {grpc:.2} s",
                    side.label,
                    bytes as f64 / 1e6
                );
                rounds[i].push((raw, grpc, raw_cpu, 0.0));
                continue;
            }
            let once = {
                let payloads = payloads.clone();
                tokio::task::spawn_blocking(move || plain_tcp(payloads, 1)).await.expect("tcp")
            };
            let twice =
                tokio::task::spawn_blocking(move || plain_tcp(payloads, n)).await.expect("tcp");
            println!(
                "  round {round}: {:.0} MB to {n} subscribers: raw TCP port {raw:.2} s{buffers}, gRPC chunks {grpc:.2} s; plain TCP once {once:.2} s, to {n} readers at once {twice:.2} s",
                bytes as f64 / 1e6,
            );
            rounds[i].push((raw, grpc, once, twice));
        }
    }
    for ((medians, rounds), side) in medians.iter_mut().zip(&rounds).zip(&sides) {
        medians.raw_s = median(rounds.iter().map(|r| r.0).collect());
        medians.grpc_s = median(rounds.iter().map(|r| r.1).collect());
        if sides.len() == 1 {
            let once = median(rounds.iter().map(|r| r.2).collect());
            let twice = median(rounds.iter().map(|r| r.3).collect());
            println!(
                "  median: raw TCP port {:.2} s ({:.2}x one plain copy, target <= 2), gRPC chunks {:.2} s ({:.2}x); plain TCP once {once:.2} s, to {n} readers {twice:.2} s",
                medians.raw_s,
                medians.raw_s / once,
                medians.grpc_s,
                medians.grpc_s / once,
            );
        } else {
            println!(
                "  [{}] median: raw port {:.2} s (CPU {:.2} s, all threads), gRPC chunks {:.2} s",
                side.label,
                medians.raw_s,
                median(rounds.iter().map(|r| r.2).collect()),
                medians.grpc_s
            );
        }
        side.process.shutdown().cancel();
    }
    medians
}

fn main() {
    let args = args();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let plaintext = Arc::new(Security::default());
        let mut sides = vec![("plaintext", plaintext.clone(), plaintext)];
        // With --tls, the same beside it with mutual TLS: the learner's and an actor's
        // certificates of one CA.
        let dir = tempfile::tempdir().expect("dir");
        if args.tls {
            paretopo_service::certs::make(dir.path(), "bench", 1).expect("certs");
            let load = |name: &str| {
                Arc::new(Security::from_tls_dir(&dir.path().join(name)).expect("credential"))
            };
            sides.push(("mTLS", load("learner"), load("actor")));
        }
        let medians = measure(&args, sides).await;
        let [plain, tls] = &medians[..] else { return };
        let slower = |plain: f64, tls: f64| 100.0 * (plain / tls - 1.0);
        println!("mTLS against plaintext (target: under 25% slower on both):");
        println!(
            "  intake: {:.0} -> {:.0} trajectories/s ({:.0} -> {:.0} MB/s): {:.1}% slower",
            plain.trajectories_per_s,
            tls.trajectories_per_s,
            plain.mb_per_s,
            tls.mb_per_s,
            slower(plain.trajectories_per_s, tls.trajectories_per_s)
        );
        if !args.ingest_only {
            println!(
                "  publication, raw port: {:.2} -> {:.2} s: {:.1}% slower; gRPC chunks: {:.2} -> {:.2} s: {:.1}% slower",
                plain.raw_s,
                tls.raw_s,
                100.0 * (tls.raw_s / plain.raw_s - 1.0),
                plain.grpc_s,
                tls.grpc_s,
                100.0 * (tls.grpc_s / plain.grpc_s - 1.0),
            );
        }
    });
}

//! `delay-proxy`: a TCP forwarder that holds every chunk for a fixed delay, in both directions,
//! keeping order. The multi-host test puts one in front of each process to add network latency,
//! as this kernel has no `netem` qdisc (DESIGN.md §10).
//!
//!     delay-proxy --delay-ms 20 --forward 10.77.0.11:7000=127.0.0.1:7000 [--forward ...]
//!
//! Each `--forward LISTEN=TARGET` accepts on LISTEN and connects every accepted connection to
//! TARGET. A chunk read at time t is written at t + delay, so the delay adds to each direction
//! once and throughput is unchanged. Stops on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Chunks in flight per direction before the reader waits: enough for any delay we use.
const IN_FLIGHT: usize = 4096;

fn usage() -> ExitCode {
    eprintln!("usage: delay-proxy --delay-ms MS --forward LISTEN=TARGET [--forward ...]");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut delay = None;
    let mut forwards = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        match (flag.as_str(), value) {
            ("--delay-ms", Some(v)) => match v.parse::<u64>() {
                Ok(ms) => delay = Some(Duration::from_millis(ms)),
                Err(_) => return usage(),
            },
            ("--forward", Some(v)) => {
                let parsed = v.split_once('=').and_then(|(l, t)| {
                    Some((l.parse::<SocketAddr>().ok()?, t.parse::<SocketAddr>().ok()?))
                });
                match parsed {
                    Some(pair) => forwards.push(pair),
                    None => return usage(),
                }
            }
            _ => return usage(),
        }
    }
    let (Some(delay), false) = (delay, forwards.is_empty()) else { return usage() };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("delay-proxy: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let mut tasks = Vec::new();
        for (listen, target) in forwards {
            match TcpListener::bind(listen).await {
                Ok(listener) => tasks.push(tokio::spawn(accept(listener, target, delay))),
                Err(e) => {
                    eprintln!("delay-proxy: binding {listen}: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        eprintln!("delay-proxy: forwarding with {} ms each way", delay.as_millis());
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    eprintln!("delay-proxy: {e}");
                    return ExitCode::from(1);
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        for task in tasks {
            task.abort();
        }
        ExitCode::SUCCESS
    })
}

async fn accept(listener: TcpListener, target: SocketAddr, delay: Duration) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            // A target that is down refuses: close the inbound side, as the target would.
            let Ok(outbound) = TcpStream::connect(target).await else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::spawn(pipe(in_read, out_write, delay));
            tokio::spawn(pipe(out_read, in_write, delay));
        });
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read; ends (and shuts `to` down)
/// when `from` ends or either side fails.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(IN_FLIGHT);
    let writer = tokio::spawn(async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx.send((Instant::now() + delay, buffer[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.await;
}

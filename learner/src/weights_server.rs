//! The learner's raw weights port: plain TCP beside gRPC, for actors that asked `WatchPolicy`
//! for notices (`raw_tcp`). A client sends the version it wants (u64, little-endian) and gets
//! the newest version the learner holds, in `actor::weights::write_raw`'s format, written
//! straight from the published chunks. One task per connection; every read and write has a
//! deadline, and shutdown ends the accept loop.
//!
//! With TLS on, the port speaks TLS and serves only clients whose certificate names an actor
//! (docs/security.md). What it does not do: decide what to publish (the trainer does).

use std::sync::Arc;
use std::time::Duration;

use actor::weights::{Published, write_raw};
use std::io::Write;

use paretopo_service::Role;
use paretopo_service::security::Security;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a client may take to say which version it wants, and the wait for that version.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long one blocking write may stall.
const WRITE_DEADLINE: Duration = Duration::from_secs(120);
/// Connections served at once (each actor holds one while it fetches a version).
const MAX_CONNECTIONS: usize = 256;

/// Serves `published` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    published: watch::Receiver<Option<Arc<Published>>>,
    security: Arc<Security>,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                // At most MAX_CONNECTIONS at once: one more is closed at once.
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, max = MAX_CONNECTIONS, "weights port busy; connection closed");
                    continue;
                };
                let (published, shutdown) = (published.clone(), shutdown.clone());
                let security = security.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        result = send(stream, published, &security) => if let Err(e) = result {
                            tracing::warn!(%peer, error = %e, "a weights transfer failed");
                        },
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting on the weights port failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn send(
    stream: TcpStream,
    mut published: watch::Receiver<Option<Arc<Published>>>,
    security: &Security,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline passed");
    // The TLS handshake (when on) and the request, asynchronously under one deadline: a client
    // that stalls holds no thread. Then blocking writes of the large buffers on a blocking
    // thread: the fast path.
    let (mut stream, wanted) =
        tokio::time::timeout(REQUEST_DEADLINE, security.accept_request::<8>(stream))
            .await
            .map_err(|_| timed_out())??;
    stream.expect_peer(Role::Actor)?;
    stream.tcp().set_write_timeout(Some(WRITE_DEADLINE))?;
    let wanted = u64::from_le_bytes(wanted);
    // The version asked for may not be out yet (the notice raced the publication): wait for it.
    let version = tokio::time::timeout(
        REQUEST_DEADLINE,
        published.wait_for(|p| p.as_ref().is_some_and(|p| p.version >= wanted)),
    )
    .await
    .map_err(|_| timed_out())?
    .map_err(|_| std::io::Error::other("the learner stopped publishing"))?
    .clone();
    let Some(version) = version else { return Ok(()) };
    tokio::task::spawn_blocking(move || {
        write_raw(&mut stream, &version)?;
        stream.flush()
    })
    .await
    .map_err(std::io::Error::other)?
}

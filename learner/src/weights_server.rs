//! The learner's raw weights port: plain TCP beside gRPC, for actors that asked `WatchPolicy`
//! for notices (`raw_tcp`). A client sends the version it wants (u64, little-endian) and gets
//! the newest version the learner holds, in `actor::weights::write_raw`'s format, written
//! straight from the published chunks. One task per connection; every read and write has a
//! deadline, and shutdown ends the accept loop.
//!
//! What it does not do: decide what to publish (the trainer does) or authenticate (a run's
//! ports are for its own processes; issue #11 adds TLS).

use std::sync::Arc;
use std::time::Duration;

use actor::weights::{Published, write_raw};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long a client may take to say which version it wants, and the wait for that version.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How long one blocking write may stall.
const WRITE_DEADLINE: Duration = Duration::from_secs(120);

/// Serves `published` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    published: watch::Receiver<Option<Arc<Published>>>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let (published, shutdown) = (published.clone(), shutdown.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        result = send(stream, published) => if let Err(e) = result {
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
    mut stream: TcpStream,
    mut published: watch::Receiver<Option<Arc<Published>>>,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline passed");
    let wanted = tokio::time::timeout(REQUEST_DEADLINE, stream.read_u64_le())
        .await
        .map_err(|_| timed_out())??;
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
    // Plain blocking writes of the large buffers, on a blocking thread: the fast path.
    let stream = stream.into_std()?;
    tokio::task::spawn_blocking(move || {
        let mut stream = stream;
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(WRITE_DEADLINE))?;
        write_raw(&mut stream, &version)
    })
    .await
    .map_err(std::io::Error::other)?
}

//! The learner's raw weights port: plain TCP beside gRPC, for actors that asked `WatchPolicy`
//! for notices (`raw_tcp`). A client sends the version it wants (u64, little-endian) and gets
//! the newest version the learner holds, in `actor::weights::write_raw`'s format, written
//! straight from the published chunks. One task per connection; every read and write has a
//! deadline, and shutdown ends the accept loop.
//!
//! With TLS on, the port serves only clients whose certificate names an actor, and the version
//! travels as sealed frames (`paretopo_service::sealed`): the request and a key made for this
//! transfer go over TLS, then the frames follow outside it, each sealed as it is written, so
//! the learner holds no second copy of the weights and each byte is read from memory once,
//! as in plaintext (docs/security.md). What it does not do: decide what to publish (the
//! trainer does).

use std::sync::Arc;
use std::time::Duration;

use actor::weights::{Published, write_raw};
use paretopo_service::Role;
use paretopo_service::sealed::{self, ObjectKey};
use paretopo_service::security::{Security, expect_client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline passed")
}

/// Serves one connection: the request under a deadline (asynchronously, so a client that
/// stalls holds no thread), then the version from a blocking thread (blocking writes of large
/// buffers are the fast path).
async fn send(
    mut stream: TcpStream,
    mut published: watch::Receiver<Option<Arc<Published>>>,
    security: &Security,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let Some(config) = security.rustls_server_config() else {
        let mut wanted = [0u8; 8];
        tokio::time::timeout(REQUEST_DEADLINE, stream.read_exact(&mut wanted))
            .await
            .map_err(|_| timed_out())??;
        let Some(version) = wait_for(&mut published, u64::from_le_bytes(wanted)).await? else {
            return Ok(());
        };
        let mut stream = blocking(stream)?;
        return tokio::task::spawn_blocking(move || write_raw(&mut stream, &version))
            .await
            .map_err(std::io::Error::other)?;
    };
    let handshake = async {
        let mut tls = tokio_rustls::TlsAcceptor::from(config).accept(stream).await?;
        expect_client(tls.get_ref().1, Role::Actor)?;
        let mut wanted = [0u8; 8];
        tls.read_exact(&mut wanted).await?;
        std::io::Result::Ok((tls, u64::from_le_bytes(wanted)))
    };
    let (mut tls, wanted) =
        tokio::time::timeout(REQUEST_DEADLINE, handshake).await.map_err(|_| timed_out())??;
    let Some(version) = wait_for(&mut published, wanted).await? else { return Ok(()) };
    // A key for this transfer alone, over TLS; the client answers once it has read all that
    // TLS carried, so what follows on the socket is the frames alone.
    let key = ObjectKey::generate(version.version)?;
    let offer = async {
        tls.write_all(&key.offer()).await?;
        tls.flush().await?;
        let mut ready = [0u8; 1];
        tls.read_exact(&mut ready).await?;
        std::io::Result::Ok(ready[0] == sealed::READY)
    };
    if !tokio::time::timeout(REQUEST_DEADLINE, offer).await.map_err(|_| timed_out())?? {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the client did not answer the offer",
        ));
    }
    let (tcp, _) = tls.into_inner();
    let tcp = blocking(tcp)?;
    tokio::task::spawn_blocking(move || {
        let mut sealed = sealed::SealedWriter::new(tcp, key);
        write_raw(&mut sealed, &version)?;
        sealed.finish().map(drop)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The newest version once it is at least `wanted` (the notice may have raced the
/// publication); `None` when nothing is published.
async fn wait_for(
    published: &mut watch::Receiver<Option<Arc<Published>>>,
    wanted: u64,
) -> std::io::Result<Option<Arc<Published>>> {
    let version = tokio::time::timeout(
        REQUEST_DEADLINE,
        published.wait_for(|p| p.as_ref().is_some_and(|p| p.version >= wanted)),
    )
    .await
    .map_err(|_| timed_out())?
    .map_err(|_| std::io::Error::other("the learner stopped publishing"))?
    .clone();
    Ok(version)
}

/// The socket as a blocking one, with the write deadline.
fn blocking(stream: TcpStream) -> std::io::Result<std::net::TcpStream> {
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(WRITE_DEADLINE))?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use actor::weights::{PolicyVersion, publish};
    use policy::{ModelConfig, Qwen2};
    use tch::{Device, Kind};

    /// Every tensor's bytes as published, by name: what an actor must end up holding.
    fn expected(published: &Published) -> std::collections::HashMap<String, Vec<u8>> {
        let mut tensors = std::collections::HashMap::<String, Vec<u8>>::new();
        for chunk in &published.chunks {
            tensors.entry(chunk.tensor_name.clone()).or_default().extend_from_slice(&chunk.data);
        }
        tensors
    }

    fn assert_holds(got: &PolicyVersion, published: &Published) {
        assert_eq!(got.version, published.version);
        let want = expected(published);
        assert_eq!(got.tensors.len(), want.len());
        for (name, bytes) in want {
            assert!(got.tensors[&name].bytes == bytes, "{name} differs");
        }
    }

    async fn learner_port(
        security: Arc<Security>,
    ) -> (String, watch::Sender<Option<Arc<Published>>>, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let (published, watched) = watch::channel(None);
        let shutdown = CancellationToken::new();
        tokio::spawn(serve(listener, watched, security, shutdown.clone()));
        (address, published, shutdown)
    }

    /// A fresh CA with every principal's certificate, as `coordinator certs` makes them.
    struct RunCa(tempfile::TempDir);

    impl RunCa {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("dir");
            paretopo_service::certs::make(dir.path(), "test", 1).expect("certs");
            Self(dir)
        }

        /// The credential of the principal `name`.
        fn load(&self, name: &str) -> Arc<Security> {
            Arc::new(Security::from_tls_dir(&self.0.path().join(name)).expect("credential"))
        }
    }

    fn model(seed: i64) -> Qwen2 {
        let model =
            Qwen2::zeros(ModelConfig::named("tiny").expect("tiny"), Kind::Float, Device::Cpu);
        model.init_random(seed);
        model
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn actors_get_every_byte_sealed_and_other_roles_nothing() {
        let ca = RunCa::new();
        let load = |name: &str| ca.load(name);
        let (address, versions, shutdown) = learner_port(load("learner")).await;
        let actor = load("actor");

        let first = Arc::new(publish(&model(1), 1));
        versions.send_replace(Some(first.clone()));
        let got = actor::runtime::fetch_raw(&actor, &address, 1, None).await.expect("fetch");
        assert_holds(&got, &first);
        // A newer version with other weights, read into the buffers of the one before.
        let second = Arc::new(publish(&model(2), 2));
        assert_ne!(expected(&first), expected(&second), "the seeds give other weights");
        versions.send_replace(Some(second.clone()));
        let got = actor::runtime::fetch_raw(&actor, &address, 2, Some(got)).await.expect("fetch");
        assert_holds(&got, &second);

        for (who, security) in [
            ("learner", load("learner")),
            ("coordinator", load("coordinator")),
            ("none", Arc::new(Security::default())),
        ] {
            let refused = actor::runtime::fetch_raw(&security, &address, 2, None).await;
            assert!(refused.is_err(), "the {who} credential got a version");
        }
        shutdown.cancel();
    }

    /// Forwards connections to `server`, flipping one bit of the server's byte at `at`; returns
    /// its address and everything it forwarded from the server.
    async fn tampering_proxy(server: String, at: usize) -> (String, Arc<Mutex<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let forwarded = Arc::new(Mutex::new(Vec::new()));
        let record = forwarded.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = TcpStream::connect(&server).await.expect("server");
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = upstream.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                let record = record.clone();
                tokio::spawn(async move {
                    let (mut seen, mut buf) = (0usize, vec![0u8; 64 << 10]);
                    while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                        if (seen..seen + n).contains(&at) {
                            buf[at - seen] ^= 0x04;
                        }
                        seen += n;
                        record.lock().expect("record").extend_from_slice(&buf[..n]);
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (address, forwarded)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flipped_bit_fails_the_fetch_and_the_wire_shows_no_weights() {
        let ca = RunCa::new();
        let load = |name: &str| ca.load(name);
        let (address, versions, shutdown) = learner_port(load("learner")).await;
        let published = Arc::new(publish(&model(6), 3));
        let total: usize = published.chunks.iter().map(|c| c.data.len()).sum();
        assert!(total > 1 << 20, "the flip must land in the sealed frames, past TLS");
        versions.send_replace(Some(published.clone()));
        let actor = load("actor");
        // The handshake and the offer take a few KB; the byte at 512 KB is a frame's.
        let (proxy, _) = tampering_proxy(address.clone(), 512 << 10).await;
        let err = actor::runtime::fetch_raw(&actor, &proxy, 3, None).await.expect_err("tampered");
        assert!(format!("{err:#}").contains("failed authentication"), "{err:#}");
        // Untouched, the same fetch succeeds.
        let (proxy, first) = tampering_proxy(address.clone(), usize::MAX).await;
        actor::runtime::fetch_raw(&actor, &proxy, 3, None).await.expect("intact");
        // What crossed the wire shows none of the weights, and a second transfer of the same
        // version, under a key of its own, shows other bytes.
        let (proxy, second) = tampering_proxy(address, usize::MAX).await;
        actor::runtime::fetch_raw(&actor, &proxy, 3, None).await.expect("intact");
        let (first, second) = (first.lock().expect("first"), second.lock().expect("second"));
        assert!(first.len() > total && second.len() > total, "every byte went through");
        let biggest = published.chunks.iter().max_by_key(|c| c.data.len()).expect("a chunk");
        let middle = biggest.data.len() / 2;
        let weights = &biggest.data[middle..middle + 64];
        assert!(!first.windows(64).any(|w| w == weights), "weights in the clear on the wire");
        assert_ne!(first[512 << 10..(512 << 10) + 64], second[512 << 10..(512 << 10) + 64]);
        shutdown.cancel();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plaintext_serves_the_same_bytes() {
        let (address, versions, shutdown) = learner_port(Arc::new(Security::default())).await;
        let published = Arc::new(publish(&model(3), 5));
        versions.send_replace(Some(published.clone()));
        let security = Security::default();
        // Asking for an older version gets the newest.
        let got = actor::runtime::fetch_raw(&security, &address, 4, None).await.expect("fetch");
        assert_holds(&got, &published);
        shutdown.cancel();
    }
}

//! The learner's raw weights port: plain TCP beside gRPC, for actors that asked `WatchPolicy`
//! for notices (`raw_tcp`). A client sends the version it wants (u64, little-endian) and gets
//! the newest version the learner holds, in `actor::weights::write_raw`'s format, written
//! straight from the published chunks. One task per connection; every read and write has a
//! deadline, and shutdown ends the accept loop.
//!
//! With TLS on, the port serves only clients whose certificate names an actor, and the version
//! travels as sealed frames (`paretopo_service::sealed`): the request and the version's key go
//! over TLS, then the frames follow outside it. Each version is sealed once, when an actor
//! first asks for it, by a thread that runs ahead of the connections' writes, and every actor
//! reads the same frames, so the learner encrypts a version once however many actors fetch
//! it; the sealed copy is held until a newer version is fetched, and its buffers then take
//! the newer one (docs/security.md). What it does not do: decide what to publish
//! (the trainer does).

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use actor::weights::{Published, raw_header, write_raw};
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

/// Where a frame's plaintext lies: in the raw header, or in a chunk; and its byte range.
#[derive(Clone, Copy)]
enum Piece {
    Header(usize, usize),
    Chunk(usize, usize, usize),
}

/// One version as sealed frames: the raw header, then every chunk's bytes, cut into frames of
/// at most [`sealed::MAX_FRAME`], each sealed when first needed and kept for the next connection.
struct SealedVersion {
    published: Arc<Published>,
    key: ObjectKey,
    header: Vec<u8>,
    pieces: Vec<Piece>,
    frames: Vec<OnceLock<Vec<u8>>>,
    /// Buffers of the version before, sealed into again: first-touch page faults on gigabytes
    /// of fresh memory cost more than the sealing (BENCHMARKS.md).
    spare: Mutex<Vec<Vec<u8>>>,
}

impl SealedVersion {
    fn new(published: Arc<Published>, spare: Vec<Vec<u8>>) -> std::io::Result<Self> {
        let key = ObjectKey::generate(published.version)?;
        let header = raw_header(&published);
        let cuts = |len: usize| {
            (0..len.div_ceil(sealed::MAX_FRAME).max(1))
                .map(move |i| (i * sealed::MAX_FRAME, ((i + 1) * sealed::MAX_FRAME).min(len)))
        };
        let mut pieces: Vec<Piece> = cuts(header.len()).map(|(a, b)| Piece::Header(a, b)).collect();
        for (chunk, data) in published.chunks.iter().enumerate() {
            pieces.extend(cuts(data.data.len()).map(|(a, b)| Piece::Chunk(chunk, a, b)));
        }
        let frames = pieces.iter().map(|_| OnceLock::new()).collect();
        Ok(Self { published, key, header, pieces, frames, spare: Mutex::new(spare) })
    }

    /// Frame `index`, sealed now if no one has sealed it yet.
    fn frame(&self, index: usize) -> &[u8] {
        self.frames[index].get_or_init(|| {
            let plaintext = match self.pieces[index] {
                Piece::Header(start, end) => &self.header[start..end],
                Piece::Chunk(chunk, start, end) => &self.published.chunks[chunk].data[start..end],
            };
            let buffer = lock(&self.spare).pop().unwrap_or_default();
            self.key.seal_into(index as u64, index + 1 == self.frames.len(), plaintext, buffer)
        })
    }

    fn write(&self, out: &mut impl Write) -> std::io::Result<()> {
        for index in 0..self.frames.len() {
            out.write_all(self.frame(index))?;
        }
        out.flush()
    }
}

/// The sealed copy of the newest version a connection asked for, shared by all connections.
#[derive(Default)]
struct SealedCache(Mutex<Option<Arc<SealedVersion>>>);

impl SealedCache {
    fn get(&self, published: &Arc<Published>) -> std::io::Result<Arc<SealedVersion>> {
        let mut newest = lock(&self.0);
        if let Some(sealed) = newest.as_ref().filter(|s| Arc::ptr_eq(&s.published, published)) {
            return Ok(sealed.clone());
        }
        // The version before gives its buffers when no connection still sends it, last frame
        // first, so that frame i is sealed into the old frame i's buffer (the same size when
        // the model is) as they are popped.
        let spare = match newest.take().map(Arc::try_unwrap) {
            Some(Ok(old)) => {
                old.frames.into_iter().rev().filter_map(OnceLock::into_inner).collect()
            }
            _ => Vec::new(),
        };
        let sealed = Arc::new(SealedVersion::new(published.clone(), spare)?);
        *newest = Some(sealed.clone());
        // Sealing runs ahead of the writers on a thread of its own, so that a connection
        // writes one frame while the next is sealed instead of doing both in turn; a writer
        // that catches up seals the frame itself (or waits while it is being sealed).
        let ahead = sealed.clone();
        tokio::task::spawn_blocking(move || {
            for index in 0..ahead.frames.len() {
                ahead.frame(index);
            }
        });
        Ok(sealed)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves `published` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    published: watch::Receiver<Option<Arc<Published>>>,
    security: Arc<Security>,
    shutdown: CancellationToken,
) {
    let connections = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let cache = Arc::new(SealedCache::default());
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
                let (security, cache) = (security.clone(), cache.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        result = send(stream, published, &security, &cache) => if let Err(e) = result {
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
    cache: &SealedCache,
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
    let sealed = cache.get(&version)?;
    // The key over TLS; the client answers once it has read all that TLS carried, so what
    // follows on the socket is the frames alone.
    let offer = async {
        tls.write_all(&sealed.key.offer()).await?;
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
    let mut tcp = blocking(tcp)?;
    tokio::task::spawn_blocking(move || sealed.write(&mut tcp))
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
        // A newer version with other weights, read into the buffers of the one before (and
        // sealed into the learner's buffers of the one before).
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

    /// Forwards connections to `server`, flipping one bit of the server's byte at `at`.
    async fn tampering_proxy(server: String, at: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = TcpStream::connect(&server).await.expect("server");
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = upstream.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                });
                tokio::spawn(async move {
                    let (mut seen, mut buf) = (0usize, vec![0u8; 64 << 10]);
                    while let Ok(n @ 1..) = server_read.read(&mut buf).await {
                        if (seen..seen + n).contains(&at) {
                            buf[at - seen] ^= 0x04;
                        }
                        seen += n;
                        if client_write.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        address
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bit_flipped_on_the_wire_fails_the_fetch() {
        let ca = RunCa::new();
        let load = |name: &str| ca.load(name);
        let (address, versions, shutdown) = learner_port(load("learner")).await;
        let published = Arc::new(publish(&model(6), 3));
        let total: usize = published.chunks.iter().map(|c| c.data.len()).sum();
        assert!(total > 1 << 20, "the flip must land in the sealed frames, past TLS");
        versions.send_replace(Some(published));
        let actor = load("actor");
        // The handshake and the offer take a few KB; the byte at 512 KB is a frame's.
        let proxy = tampering_proxy(address.clone(), 512 << 10).await;
        let err = actor::runtime::fetch_raw(&actor, &proxy, 3, None).await.expect_err("tampered");
        assert!(format!("{err:#}").contains("failed authentication"), "{err:#}");
        // Untouched, the same fetch succeeds.
        let proxy = tampering_proxy(address, usize::MAX).await;
        actor::runtime::fetch_raw(&actor, &proxy, 3, None).await.expect("intact");
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_is_sealed_once_for_every_connection() {
        let published = Arc::new(publish(&model(4), 7));
        let cache = SealedCache::default();
        let (a, b) = (cache.get(&published).expect("seal"), cache.get(&published).expect("seal"));
        assert!(Arc::ptr_eq(&a, &b), "one sealed copy per version");
        let (mut one, mut two) = (Vec::new(), Vec::new());
        a.write(&mut one).expect("write");
        b.write(&mut two).expect("write");
        assert_eq!(one, two, "the same frames for both");
        // The frames open with the offered key and hold the raw format.
        let key = ObjectKey::from_offer(&a.key.offer());
        let got = actor::weights::read_raw(&mut sealed::SealedReader::new(&one[..], key), None)
            .expect("opens");
        assert_holds(&got, &published);

        // Once no one holds it (the cache, a and b: the thread sealing ahead has let go), the
        // next version is sealed into its buffers, under a key of its own.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&a) > 3 {
            assert!(std::time::Instant::now() < deadline, "the sealing thread never let go");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let old_offer = a.key.offer();
        let old_buffers: std::collections::HashSet<usize> =
            a.frames.iter().map(|f| f.get().expect("sealed").as_ptr() as usize).collect();
        drop((a, b));
        let next = Arc::new(publish(&model(5), 8));
        let sealed = cache.get(&next).expect("seal");
        let mut wire = Vec::new();
        sealed.write(&mut wire).expect("write");
        let new_buffers: std::collections::HashSet<usize> =
            sealed.frames.iter().map(|f| f.get().expect("sealed").as_ptr() as usize).collect();
        assert_eq!(new_buffers, old_buffers, "sealed into the buffers of the version before");
        assert_ne!(sealed.key.offer()[8..], old_offer[8..], "a key per version");
        let key = ObjectKey::from_offer(&sealed.key.offer());
        let got = actor::weights::read_raw(&mut sealed::SealedReader::new(&wire[..], key), None)
            .expect("opens");
        assert_holds(&got, &next);
    }
}

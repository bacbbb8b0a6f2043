//! The CPU collective: an all-reduce (sum) over TCP between learner processes, for machines
//! without GPUs (DESIGN.md §2; NCCL does this job on CUDA).
//!
//! A star: every rank sends its buffer to rank 0, which adds them **in rank order** and sends
//! the sum back. So every rank ends with bitwise the same values, and they are the sum a single
//! process would compute in that order. The root's traffic grows with the world size, which is
//! fine for the few CPU ranks this serves. Every read and write has a deadline, so a lost rank
//! is an error, never a hang.
//!
//! Wire format, little-endian: a hello `[rank: u32][world: u32]` once per connection, then per
//! call `[call: u64][elements: u64]` and the elements. What it does not do: rendezvous (the
//! coordinator hands out ranks and the root's address) or reconnect.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

use paretopo_service::Role;
use paretopo_service::security::{BlockingStream, Security};
use std::time::{Duration, Instant};

/// Why a collective call failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectiveError {
    /// Reading from or writing to a peer failed (a timeout included).
    #[error("collective: rank {rank} <-> rank {peer}: {source}")]
    Io {
        /// This rank.
        rank: usize,
        /// The other side.
        peer: usize,
        /// The error.
        source: std::io::Error,
    },
    /// A peer sent nothing, or took nothing, for the whole deadline: it is lost.
    #[error("collective: rank {rank}: rank {peer} did not answer within {seconds:.1} s (lost)")]
    Timeout {
        /// This rank.
        rank: usize,
        /// The silent side.
        peer: usize,
        /// The deadline.
        seconds: f64,
    },
    /// Not every rank joined before the deadline.
    #[error("collective: rank {rank}: {joined} of {world} ranks joined within {seconds} s")]
    Rendezvous {
        /// This rank.
        rank: usize,
        /// Ranks that joined.
        joined: usize,
        /// Ranks expected.
        world: usize,
        /// The deadline.
        seconds: u64,
    },
    /// Another rank stops (its process is shutting down), so this one cannot step on: it stops
    /// with it, as if that rank were lost (rank 0 writes a checkpoint).
    #[error("collective: rank {rank}: another learner rank is shutting down, so the run stops")]
    PeerStopping {
        /// This rank.
        rank: usize,
    },
    /// A peer disagrees on the world, the call or the buffer's length.
    #[error("collective: rank {rank}: rank {peer} {what}")]
    Mismatch {
        /// This rank.
        rank: usize,
        /// The other side.
        peer: usize,
        /// What differs.
        what: String,
    },
}

impl CollectiveError {
    /// The rank this error blames, if it blames one.
    pub fn peer(&self) -> Option<usize> {
        match self {
            CollectiveError::Io { peer, .. }
            | CollectiveError::Timeout { peer, .. }
            | CollectiveError::Mismatch { peer, .. } => Some(*peer),
            CollectiveError::Rendezvous { .. } | CollectiveError::PeerStopping { .. } => None,
        }
    }
}

/// The error for an I/O failure between `rank` and `peer`: a timeout when the deadline passed.
fn io_error(
    rank: usize,
    peer: usize,
    timeout: Duration,
) -> impl Fn(std::io::Error) -> CollectiveError {
    move |source| match source.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            CollectiveError::Timeout { rank, peer, seconds: timeout.as_secs_f64() }
        }
        _ => CollectiveError::Io { rank, peer, source },
    }
}

/// Numbers the collective can add: fixed-width, little-endian on the wire.
pub trait Element: Copy + std::ops::AddAssign + Default {
    /// Bytes per element.
    const SIZE: usize;
    /// Appends the element's bytes.
    fn put(self, out: &mut Vec<u8>);
    /// Reads one element from exactly `SIZE` bytes.
    fn get(bytes: &[u8]) -> Self;
}

macro_rules! element {
    ($t:ty) => {
        impl Element for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(bytes: &[u8]) -> Self {
                let mut array = [0u8; std::mem::size_of::<$t>()];
                array.copy_from_slice(bytes);
                <$t>::from_le_bytes(array)
            }
        }
    };
}

element!(f32);
element!(f64);

/// One rank's end of the collective.
#[derive(Debug)]
pub struct TcpCollective {
    rank: usize,
    world: usize,
    /// Rank 0: the streams of ranks 1..world, in rank order. Others: the stream to rank 0.
    /// TLS when the learners have certificates.
    peers: Vec<BlockingStream>,
    calls: u64,
    timeout: Duration,
}

impl TcpCollective {
    /// Joins the collective as `rank` of `world`. Rank 0 accepts on `listener` (bound at
    /// `root`); the others connect to `root`, retrying until `timeout`. The same `timeout`
    /// bounds every later read and write. With `security`'s certificate the streams are TLS
    /// and rank 0 admits only learners.
    pub fn join(
        rank: usize,
        world: usize,
        root: SocketAddr,
        listener: Option<TcpListener>,
        timeout: Duration,
        security: &Security,
    ) -> Result<Self, CollectiveError> {
        let deadline = Instant::now() + timeout;
        let io = |peer| io_error(rank, peer, timeout);
        let rendezvous = |joined| CollectiveError::Rendezvous {
            rank,
            joined,
            world,
            seconds: timeout.as_secs(),
        };
        let mut peers = Vec::new();
        if rank == 0 {
            let listener = match listener {
                Some(listener) => listener,
                None => TcpListener::bind(root).map_err(io(0))?,
            };
            listener.set_nonblocking(true).map_err(io(0))?;
            let mut joined: Vec<Option<BlockingStream>> = (0..world).map(|_| None).collect();
            let mut count = 1;
            while count < world {
                match listener.accept() {
                    Ok((stream, from)) => {
                        // The handshake and the hello within what is left of the deadline; a
                        // connection that fails either (not a learner rank: a port scan, a
                        // stray client) is dropped, and rank 0 goes on accepting.
                        let left = deadline
                            .saturating_duration_since(Instant::now())
                            .max(Duration::from_millis(10));
                        let greeted = (|| {
                            stream.set_nonblocking(false)?;
                            configure(&stream, left)?;
                            let mut stream = security.accept_blocking(stream)?;
                            let mut hello = [0u8; 8];
                            stream.read_exact(&mut hello)?;
                            stream.expect_peer(Role::Learner)?;
                            configure(stream.tcp(), timeout)?;
                            std::io::Result::Ok((stream, hello))
                        })();
                        let (stream, hello) = match greeted {
                            Ok(greeted) => greeted,
                            Err(e) => {
                                tracing::warn!(%from, error = %e, "collective: dropped a connection that did not join as a learner rank");
                                continue;
                            }
                        };
                        let peer =
                            u32::from_le_bytes([hello[0], hello[1], hello[2], hello[3]]) as usize;
                        let their_world =
                            u32::from_le_bytes([hello[4], hello[5], hello[6], hello[7]]) as usize;
                        if their_world != world
                            || peer == 0
                            || peer >= world
                            || joined[peer].is_some()
                        {
                            return Err(CollectiveError::Mismatch {
                                rank,
                                peer,
                                what: format!("says it is rank {peer} of {their_world}"),
                            });
                        }
                        joined[peer] = Some(stream);
                        count += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err(rendezvous(count));
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(io(0)(e)),
                }
            }
            peers = joined.into_iter().skip(1).flatten().collect();
        } else {
            let stream = loop {
                match TcpStream::connect_timeout(&root, timeout) {
                    Ok(stream) => break stream,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(_) => return Err(rendezvous(0)),
                }
            };
            configure(&stream, timeout).map_err(io(0))?;
            let mut stream = security.connect_blocking(stream, Role::Learner).map_err(io(0))?;
            let mut hello = Vec::with_capacity(8);
            hello.extend_from_slice(&(rank as u32).to_le_bytes());
            hello.extend_from_slice(&(world as u32).to_le_bytes());
            stream.write_all(&hello).map_err(io(0))?;
            stream.flush().map_err(io(0))?;
            peers.push(stream);
        }
        Ok(TcpCollective { rank, world, peers, calls: 0, timeout })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Replaces `buffer` on every rank by the element-wise sum of all ranks' buffers, added in
    /// rank order. Every rank must call it, in the same order, with buffers of equal length.
    pub fn all_reduce_sum<T: Element>(&mut self, buffer: &mut [T]) -> Result<(), CollectiveError> {
        let call = self.calls;
        self.calls += 1;
        let rank = self.rank;
        let io = |peer| io_error(rank, peer, self.timeout);
        if self.world == 1 {
            return Ok(());
        }
        if rank == 0 {
            let mut incoming = vec![T::default(); buffer.len()];
            for (i, stream) in self.peers.iter_mut().enumerate() {
                let peer = i + 1;
                receive(stream, call, &mut incoming, rank, peer, self.timeout)?;
                for (sum, value) in buffer.iter_mut().zip(&incoming) {
                    *sum += *value;
                }
            }
            let message = encode(call, buffer);
            for (i, stream) in self.peers.iter_mut().enumerate() {
                stream.write_all(&message).map_err(io(i + 1))?;
                stream.flush().map_err(io(i + 1))?;
            }
        } else {
            let stream = &mut self.peers[0];
            stream.write_all(&encode(call, buffer)).map_err(io(0))?;
            stream.flush().map_err(io(0))?;
            receive(stream, call, buffer, rank, 0, self.timeout)?;
        }
        Ok(())
    }
}

fn configure(stream: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))
}

fn encode<T: Element>(call: u64, values: &[T]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + values.len() * T::SIZE);
    out.extend_from_slice(&call.to_le_bytes());
    out.extend_from_slice(&(values.len() as u64).to_le_bytes());
    for &v in values {
        v.put(&mut out);
    }
    out
}

/// Reads one message into `into`, checking its call number and length.
fn receive<T: Element>(
    stream: &mut BlockingStream,
    call: u64,
    into: &mut [T],
    rank: usize,
    peer: usize,
    timeout: Duration,
) -> Result<(), CollectiveError> {
    let io = io_error(rank, peer, timeout);
    let mut header = [0u8; 16];
    stream.read_exact(&mut header).map_err(&io)?;
    let their_call = u64::from_le_bytes(header[..8].try_into().unwrap_or_default());
    let elements = u64::from_le_bytes(header[8..].try_into().unwrap_or_default());
    if their_call != call || elements != into.len() as u64 {
        return Err(CollectiveError::Mismatch {
            rank,
            peer,
            what: format!(
                "sent call {their_call} with {elements} elements; expected call {call} with {}",
                into.len()
            ),
        });
    }
    let mut bytes = vec![0u8; into.len() * T::SIZE];
    stream.read_exact(&mut bytes).map_err(&io)?;
    for (value, chunk) in into.iter_mut().zip(bytes.chunks_exact(T::SIZE)) {
        *value = T::get(chunk);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        (listener, addr)
    }

    /// Runs `world` ranks in threads, each calling `body` with its collective.
    fn run_ranks<R: Send + 'static>(
        world: usize,
        body: impl Fn(&mut TcpCollective) -> R + Send + Sync + Clone + 'static,
    ) -> Vec<R> {
        let (listener, addr) = root();
        let mut listener = Some(listener);
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let listener = if rank == 0 { listener.take() } else { None };
                let body = body.clone();
                std::thread::spawn(move || {
                    let mut c = TcpCollective::join(
                        rank,
                        world,
                        addr,
                        listener,
                        Duration::from_secs(10),
                        &Security::default(),
                    )
                    .expect("join");
                    body(&mut c)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank thread")).collect()
    }

    /// Each rank's input: values whose float sums depend on the order of addition.
    fn input(rank: usize, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((rank * 7919 + i * 104_729) % 1000) as f32 * 1.1e-3 + (rank as f32) * 1e6)
            .collect()
    }

    #[test]
    fn every_rank_gets_the_rank_ordered_sum_bitwise() {
        let world = 4;
        let results = run_ranks(world, move |c| {
            let mut sums = Vec::new();
            for len in [1usize, 1000, 100_003] {
                let mut buffer = input(c.rank(), len);
                c.all_reduce_sum(&mut buffer).expect("all-reduce");
                sums.push(buffer);
            }
            let mut count = [c.rank() as f64 + 0.5];
            c.all_reduce_sum(&mut count).expect("scalar");
            (sums, count[0])
        });
        for (which, len) in [1usize, 1000, 100_003].into_iter().enumerate() {
            // The sum computed here, in rank order, by plain loops.
            let mut want = input(0, len);
            for rank in 1..world {
                for (w, v) in want.iter_mut().zip(input(rank, len)) {
                    *w += v;
                }
            }
            for (rank, (sums, _)) in results.iter().enumerate() {
                let same = sums[which].iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "rank {rank}, length {len}: not the rank-ordered sum, bit for bit");
            }
        }
        assert!(results.iter().all(|(_, count)| *count == 0.5 + 1.5 + 2.5 + 3.5));
    }

    #[test]
    fn a_missing_rank_is_an_error_within_the_deadline() {
        let (listener, addr) = root();
        let started = Instant::now();
        let err = TcpCollective::join(
            0,
            3,
            addr,
            Some(listener),
            Duration::from_millis(300),
            &Security::default(),
        )
        .expect_err("ranks 1 and 2 never come");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(err.to_string().contains("1 of 3 ranks joined"), "{err}");
    }

    #[test]
    fn a_silent_rank_is_named_lost_within_the_deadline() {
        let (listener, addr) = root();
        let timeout = Duration::from_millis(300);
        let silent = std::thread::spawn(move || {
            let joined =
                TcpCollective::join(1, 2, addr, None, timeout, &Security::default()).expect("join");
            // Joined, then silent, as behind a link that went down.
            std::thread::sleep(Duration::from_secs(2));
            drop(joined);
        });
        let mut root =
            TcpCollective::join(0, 2, addr, Some(listener), timeout, &Security::default())
                .expect("join");
        let started = Instant::now();
        let err = root.all_reduce_sum(&mut [1.0f32; 4]).expect_err("rank 1 sends nothing");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(matches!(err, CollectiveError::Timeout { peer: 1, .. }), "{err}");
        assert_eq!(err.peer(), Some(1));
        assert!(err.to_string().contains("rank 1 did not answer within 0.3 s"), "{err}");
        silent.join().expect("silent rank");
    }

    #[test]
    fn mismatched_lengths_and_a_vanished_peer_are_errors() {
        let results = run_ranks(2, |c| {
            let mut buffer = vec![1.0f32; 10 + c.rank()];
            c.all_reduce_sum(&mut buffer).map_err(|e| e.to_string())
        });
        let root_error = results[0].as_ref().expect_err("lengths differ");
        assert!(root_error.contains("with 11 elements; expected call 0 with 10"), "{root_error}");
        // Rank 1 waits for an answer that never comes: its read ends at the deadline or when
        // the root's stream closes, as an error either way.
        assert!(results[1].is_err());
    }
}

//! The all-reduce between learner ranks on CUDA: NCCL through `cudarc`, loaded at run time
//! (DESIGN.md §6, §9), so the learner builds and runs where CUDA and NCCL are absent and falls
//! back to the CPU collective ([`crate::collective`]) there.
//!
//! Learner rank 0 creates the NCCL unique id; every learner on CUDA offers one when it
//! registers and the coordinator relays rank 0's ([`unique_id`], [`NcclCollective::join`]).
//! The buffer travels host -> device -> all-reduce -> host: the trainer's flat gradient is a
//! host buffer already (the CPU path needs it there), and the copies are small next to a
//! step. What it does not do: pick ranks or decide when to reduce.
//!
//! **Deadlines.** A blocking NCCL call waits for its peers forever, so a lost rank would hang
//! every other one. The communicator is made non-blocking (`ncclConfig_t.blocking = 0`) and
//! every call, joining included, is watched as NCCL's guide on fault tolerance describes: poll
//! `ncclCommGetAsyncError` (and, for an all-reduce, the stream) until the work is done, an error
//! shows, or the deadline passes; past the deadline `ncclCommAbort` stops the kernels and frees
//! the communicator, and the call fails with [`NcclError::Timeout`]. An aborted communicator
//! refuses every later call ([`NcclError::Aborted`]): the run stops, as it does when the CPU
//! collective loses a rank.
//!
//! cudarc's safe `Comm` only makes blocking communicators and does not expose its handle, so
//! this module calls NCCL through `cudarc::nccl::{result, sys}`; each `unsafe` block says what
//! it relies on.

use std::ffi::{c_char, c_void};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaStream, DevicePtrMut};
use cudarc::nccl::{Id, NcclType, result, sys};

/// What can fail in NCCL or the CUDA driver.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NcclError {
    /// The CUDA driver refused (no device of that ordinal, out of memory, ...).
    #[error("CUDA driver: {0}")]
    Driver(String),
    /// NCCL refused or failed (bad unique id, invalid usage, an internal error, ...).
    #[error("NCCL {what}: {code}")]
    Nccl {
        /// The call.
        what: &'static str,
        /// NCCL's result code.
        code: String,
    },
    /// NCCL reports that a peer failed or left, or that the connection to one broke
    /// (`ncclRemoteError`, `ncclSystemError`).
    #[error("NCCL {what} on rank {rank}: a peer rank failed or left ({code})")]
    PeerLost {
        /// The call.
        what: &'static str,
        /// This rank.
        rank: usize,
        /// NCCL's result code.
        code: String,
    },
    /// The call did not complete by its deadline; the communicator was aborted.
    #[error(
        "NCCL {what} on rank {rank} of {world} did not complete within {seconds:.1} s: a rank \
         is lost or stalled (communicator aborted)"
    )]
    Timeout {
        /// The call.
        what: &'static str,
        /// This rank.
        rank: usize,
        /// Ranks in the communicator.
        world: usize,
        /// The deadline.
        seconds: f64,
    },
    /// An earlier failure aborted the communicator.
    #[error("NCCL: the communicator was aborted by an earlier failure")]
    Aborted,
    /// The relayed unique id has the wrong size.
    #[error("nccl_unique_id: expected 128 bytes, got {0}")]
    BadId(usize),
}

impl NcclError {
    /// Whether this error means a rank is gone (or stalled past the deadline), the case the
    /// trainer answers with a checkpoint, as it does for the CPU collective's lost rank.
    pub fn is_lost_rank(&self) -> bool {
        matches!(self, NcclError::Timeout { .. } | NcclError::PeerLost { .. })
    }
}

fn driver(e: impl std::fmt::Debug) -> NcclError {
    NcclError::Driver(format!("{e:?}"))
}

fn failed(what: &'static str, code: sys::ncclResult_t) -> NcclError {
    NcclError::Nccl { what, code: format!("{code:?}") }
}

/// Whether the NCCL library can be loaded here (cudarc panics at first use otherwise).
#[allow(unsafe_code)]
pub fn available() -> bool {
    // SAFETY: `is_culib_present` only tries to open candidate library names with `dlopen`
    // and closes what it opened; it reads and writes no memory of ours.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

/// A new NCCL unique id, as the 128 bytes the coordinator relays.
pub fn unique_id() -> Result<Vec<u8>, NcclError> {
    let id = Id::new().map_err(|e| failed("get unique id", e.0))?;
    Ok(id.internal().iter().map(|&c| c as u8).collect())
}

/// `NCCL_VERSION(2, 14, 0)`: the first version with `ncclConfig_t.blocking`.
const CONFIG_VERSION: u32 = 21_400;
/// `NCCL_API_MAGIC`: marks a config made as `NCCL_CONFIG_INITIALIZER` makes it.
const CONFIG_MAGIC: u32 = 0xcafe_beef;
/// `NCCL_CONFIG_UNDEF_INT`: "use NCCL's default".
const UNDEFINED: i32 = i32::MIN;

/// A communicator config that asks for non-blocking calls and leaves everything else to NCCL.
/// The version says 2.14 (the first with `ncclCommInitRankConfig`, so NCCL 2.14 or newer is
/// needed), so NCCL takes its own defaults for every field that came later, whatever version is
/// loaded (`parseCommConfig` in NCCL's `init.cc`); the fields it reads whatever the version
/// (`splitShare`, `commName`) are left undefined here.
fn nonblocking_config() -> sys::ncclConfig_t {
    sys::ncclConfig_t {
        size: std::mem::size_of::<sys::ncclConfig_t>(),
        magic: CONFIG_MAGIC,
        version: CONFIG_VERSION,
        blocking: 0,
        cgaClusterSize: UNDEFINED,
        minCTAs: UNDEFINED,
        maxCTAs: UNDEFINED,
        netName: std::ptr::null(),
        splitShare: UNDEFINED,
        trafficClass: UNDEFINED,
        commName: std::ptr::null(),
        collnetEnable: UNDEFINED,
        CTAPolicy: UNDEFINED,
        shrinkShare: UNDEFINED,
        nvlsCTAs: UNDEFINED,
        nChannelsPerNetPeer: UNDEFINED,
        nvlinkCentricSched: UNDEFINED,
        graphUsageMode: UNDEFINED,
        numRmaCtx: UNDEFINED,
        maxP2pPeers: UNDEFINED,
    }
}

/// Calls `done` until it returns true (then `Ok(true)`), fails, or `deadline` passes (then
/// `Ok(false)`). The pause between calls grows from 10 µs to 1 ms: a fast operation is seen
/// at once, and a long wait costs little CPU.
fn poll_until<E>(deadline: Instant, mut done: impl FnMut() -> Result<bool, E>) -> Result<bool, E> {
    let mut pause = Duration::from_micros(10);
    loop {
        if done()? {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

/// One rank's non-blocking NCCL communicator on its device. Not `Send`: it is made and used on
/// the training thread.
pub struct NcclCollective {
    /// Null once aborted.
    comm: sys::ncclComm_t,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
    /// Every call's deadline, from the call's start.
    timeout: Duration,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("aborted", &self.comm.is_null())
            .finish()
    }
}

impl NcclCollective {
    /// Joins the communicator of `world` ranks as `rank` on CUDA device `ordinal`, with rank
    /// 0's unique id. Waits until every rank has joined, or fails with
    /// [`NcclError::Timeout`] after `timeout`.
    #[allow(unsafe_code)]
    pub fn join(
        ordinal: usize,
        rank: usize,
        world: usize,
        unique_id: &[u8],
        timeout: Duration,
    ) -> Result<Self, NcclError> {
        let internal: [c_char; 128] = unique_id
            .iter()
            .map(|&b| b as c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| NcclError::BadId(unique_id.len()))?;
        let (Ok(nranks), Ok(my_rank)) = (i32::try_from(world), i32::try_from(rank)) else {
            return Err(NcclError::Nccl { what: "join", code: format!("rank {rank} of {world}") });
        };
        let started = Instant::now();
        let context = CudaContext::new(ordinal).map_err(driver)?;
        context.bind_to_thread().map_err(driver)?;
        let stream = context.default_stream();
        let mut config = nonblocking_config();
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` and `config` are valid for the call; NCCL copies the config and, in
        // non-blocking mode, writes the handle before it returns `ncclInProgress`.
        let init = unsafe {
            result::comm_init_rank_config(
                &mut comm,
                nranks,
                sys::ncclUniqueId { internal },
                my_rank,
                &mut config,
            )
        };
        let mut this = NcclCollective { comm, stream, rank, world, timeout };
        if let Err(e) = init {
            this.abort();
            return Err(failed("join", e.0));
        }
        this.wait("join", started, || Ok(true))?;
        Ok(this)
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in the communicator.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Replaces `buffer` on every rank by the element-wise sum over all ranks (`f32` for the
    /// gradient, `f64` for the step's statistics), or fails with [`NcclError::Timeout`] when
    /// that takes longer than the deadline.
    #[allow(unsafe_code)]
    pub fn all_reduce_sum<T>(&mut self, buffer: &mut [T]) -> Result<(), NcclError>
    where
        T: cudarc::driver::DeviceRepr + NcclType,
    {
        let comm = self.live()?;
        let started = Instant::now();
        let stream = self.stream.clone();
        let mut device = stream.clone_htod(buffer).map_err(driver)?;
        let launched = {
            let (pointer, _written) = device.device_ptr_mut(&stream);
            // SAFETY: `pointer` addresses `buffer.len()` elements of `T` on this
            // communicator's device, and `device` outlives the operation: it is dropped only
            // after the stream has finished, or after `ncclCommAbort` has stopped the kernel.
            // In place (send == receive buffer) is allowed for all-reduce.
            unsafe {
                result::all_reduce(
                    pointer as *const c_void,
                    pointer as *mut c_void,
                    buffer.len(),
                    T::as_nccl_type(),
                    sys::ncclRedOp_t::ncclSum,
                    comm,
                    stream.cu_stream() as sys::cudaStream_t,
                )
            }
        };
        if let Err(e) = launched {
            self.abort();
            return Err(failed("all-reduce", e.0));
        }
        // Non-blocking: the call may return before the operation is enqueued.
        self.wait("all-reduce", started, || Ok(true))?;
        let enqueued = match stream.record_event(None) {
            Ok(event) => event,
            Err(e) => {
                // The all-reduce may still be running: stop it before `device` is freed.
                self.abort();
                return Err(driver(e));
            }
        };
        self.wait("all-reduce", started, || enqueued.try_is_complete().map_err(driver))?;
        stream.memcpy_dtoh(&device, buffer).map_err(driver)?;
        stream.synchronize().map_err(driver)
    }

    /// The communicator, unless an earlier failure aborted it.
    fn live(&self) -> Result<sys::ncclComm_t, NcclError> {
        if self.comm.is_null() { Err(NcclError::Aborted) } else { Ok(self.comm) }
    }

    /// Waits until NCCL reports no work in progress on the communicator and `done` says yes,
    /// with the deadline `started + timeout`. On an error or past the deadline the
    /// communicator is aborted.
    #[allow(unsafe_code)]
    fn wait(
        &mut self,
        what: &'static str,
        started: Instant,
        mut done: impl FnMut() -> Result<bool, NcclError>,
    ) -> Result<(), NcclError> {
        let comm = self.live()?;
        let rank = self.rank;
        let finished = poll_until(started + self.timeout, || {
            let mut state = sys::ncclResult_t::ncclSuccess;
            // SAFETY: `comm` is a live communicator (not yet aborted) and `state` is valid
            // for NCCL to write.
            if let Err(e) = unsafe { sys::ncclCommGetAsyncError(comm, &mut state) }.result() {
                return Err(failed(what, e.0));
            }
            match state {
                sys::ncclResult_t::ncclSuccess => done(),
                sys::ncclResult_t::ncclInProgress => Ok(false),
                code
                @ (sys::ncclResult_t::ncclRemoteError | sys::ncclResult_t::ncclSystemError) => {
                    Err(NcclError::PeerLost { what, rank, code: format!("{code:?}") })
                }
                code => Err(failed(what, code)),
            }
        });
        let error = match finished {
            Ok(true) => return Ok(()),
            Ok(false) => NcclError::Timeout {
                what,
                rank,
                world: self.world,
                seconds: self.timeout.as_secs_f64(),
            },
            Err(e) => e,
        };
        self.abort();
        Err(error)
    }

    /// Aborts the communicator (stopping any kernel still waiting on a peer) and frees it.
    #[allow(unsafe_code)]
    fn abort(&mut self) {
        if self.comm.is_null() {
            return;
        }
        // SAFETY: `comm` is a communicator NCCL made and nobody has freed; it is nulled right
        // after, so it is aborted once.
        if let Err(e) = unsafe { result::comm_abort(self.comm) } {
            tracing::warn!(rank = self.rank, code = ?e.0, "ncclCommAbort failed");
        }
        self.comm = std::ptr::null_mut();
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        // Abort rather than finalize: finalizing waits for peers, which may be gone.
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unique_id_of_the_wrong_size_is_refused_before_any_cuda_call() {
        let err = NcclCollective::join(0, 0, 1, &[0u8; 12], Duration::from_secs(1))
            .expect_err("short id");
        assert_eq!(err, NcclError::BadId(12));
    }

    #[test]
    fn the_config_asks_for_non_blocking_calls_in_the_layout_nccl_h_defines() {
        // NCCL_CONFIG_INITIALIZER's size, magic and "undefined" values, blocking = 0.
        let config = nonblocking_config();
        assert_eq!(config.size, std::mem::size_of::<sys::ncclConfig_t>());
        assert_eq!(config.magic, 0xcafebeef);
        assert_eq!(config.version, 2 * 10_000 + 14 * 100);
        assert_eq!(config.blocking, 0);
        assert_eq!(config.cgaClusterSize, i32::MIN);
        assert!(config.netName.is_null());
    }

    #[test]
    fn polling_stops_as_soon_as_the_work_is_done() {
        let mut calls = 0;
        let started = Instant::now();
        let done = poll_until(started + Duration::from_secs(30), || {
            calls += 1;
            Ok::<_, ()>(calls == 5)
        });
        assert_eq!(done, Ok(true));
        assert_eq!(calls, 5);
        // Four pauses of 10, 20, 40 and 80 µs; far below the deadline.
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    }

    #[test]
    fn polling_gives_up_at_the_deadline_and_not_long_after() {
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let mut calls = 0;
        let done = poll_until(started + timeout, || {
            calls += 1;
            Ok::<_, ()>(false)
        });
        let waited = started.elapsed();
        assert_eq!(done, Ok(false));
        assert!(waited >= timeout, "gave up after {waited:?}");
        assert!(waited < timeout + Duration::from_secs(2), "gave up after {waited:?}");
        // Pauses grow to 1 ms: about 200 polls in 200 ms (fewer on a busy machine), not one
        // per 10 µs (20,000) and not one long sleep.
        assert!((10..=2_000).contains(&calls), "{calls} polls");
    }

    #[test]
    fn an_error_while_polling_ends_the_wait_at_once() {
        let started = Instant::now();
        let mut calls = 0;
        let done = poll_until(started + Duration::from_secs(30), || {
            calls += 1;
            if calls == 3 { Err("peer gone") } else { Ok(false) }
        });
        assert_eq!(done, Err("peer gone"));
        assert_eq!(calls, 3);
    }

    /// A CUDA device and libnccl.so, or a visible skip (the tests below need a GPU machine).
    fn cuda_with_nccl() -> bool {
        let present = tch::Cuda::is_available() && available();
        if !present {
            eprintln!("skipped: needs a CUDA device and libnccl.so");
        }
        present
    }

    #[test]
    fn one_rank_on_cuda_all_reduces_to_its_own_values() {
        if !cuda_with_nccl() {
            return;
        }
        let id = unique_id().expect("unique id");
        let mut nccl = NcclCollective::join(0, 0, 1, &id, Duration::from_secs(60)).expect("join");
        let mut floats: Vec<f32> = (0..10_000).map(|i| i as f32 * 0.25 - 7.0).collect();
        let expected = floats.clone();
        nccl.all_reduce_sum(&mut floats).expect("all-reduce f32");
        assert_eq!(floats, expected);
        let mut doubles = vec![1.5f64, -2.0, 1e300];
        nccl.all_reduce_sum(&mut doubles).expect("all-reduce f64");
        assert_eq!(doubles, vec![1.5, -2.0, 1e300]);
    }

    #[test]
    fn joining_a_world_whose_other_rank_never_comes_times_out_and_aborts() {
        if !cuda_with_nccl() {
            return;
        }
        let id = unique_id().expect("unique id");
        let started = Instant::now();
        let err = NcclCollective::join(0, 0, 2, &id, Duration::from_secs(3)).expect_err("alone");
        assert!(matches!(err, NcclError::Timeout { what: "join", .. }), "{err}");
        assert!(err.is_lost_rank());
        // The deadline, the abort, and no hang.
        assert!(started.elapsed() >= Duration::from_secs(3));
        assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    }

    #[test]
    fn only_timeouts_and_lost_peers_count_as_a_lost_rank() {
        let timeout = NcclError::Timeout { what: "all-reduce", rank: 1, world: 2, seconds: 1.0 };
        assert!(timeout.is_lost_rank());
        let gone =
            NcclError::PeerLost { what: "all-reduce", rank: 1, code: "ncclRemoteError".into() };
        assert!(gone.is_lost_rank());
        assert!(!NcclError::Aborted.is_lost_rank());
        assert!(!NcclError::BadId(3).is_lost_rank());
        let message = timeout.to_string();
        assert!(message.contains("within 1.0 s"), "{message}");
    }
}

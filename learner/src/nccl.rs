//! The all-reduce between learner ranks on CUDA: NCCL through `cudarc`, loaded at run time
//! (DESIGN.md §6, §9), so the learner builds and runs where CUDA and NCCL are absent and falls
//! back to the CPU collective ([`crate::collective`]) there.
//!
//! Learner rank 0 creates the NCCL unique id; every learner on CUDA offers one when it
//! registers and the coordinator relays rank 0's ([`unique_id`], [`NcclCollective::join`]).
//! The buffer travels host -> device -> all-reduce -> host: the trainer's flat gradient is a
//! host buffer already (the CPU path needs it there), and the copies are small next to a
//! step. What it does not do: pick ranks or decide when to reduce.

use std::ffi::c_char;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};

/// What can fail in NCCL or the CUDA driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NcclError {
    /// The CUDA driver refused (no device of that ordinal, out of memory, ...).
    #[error("CUDA driver: {0}")]
    Driver(String),
    /// NCCL refused (bad unique id, a peer that never joined, ...).
    #[error("NCCL: {0}")]
    Nccl(String),
    /// The relayed unique id has the wrong size.
    #[error("nccl_unique_id: expected 128 bytes, got {0}")]
    BadId(usize),
}

fn driver(e: impl std::fmt::Debug) -> NcclError {
    NcclError::Driver(format!("{e:?}"))
}

fn nccl(e: impl std::fmt::Debug) -> NcclError {
    NcclError::Nccl(format!("{e:?}"))
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
    let id = Id::new().map_err(nccl)?;
    Ok(id.internal().iter().map(|&c| c as u8).collect())
}

/// One rank's NCCL communicator on its device.
pub struct NcclCollective {
    comm: Comm,
    stream: Arc<CudaStream>,
}

impl std::fmt::Debug for NcclCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclCollective")
            .field("rank", &self.comm.rank())
            .field("world", &self.comm.world_size())
            .finish()
    }
}

impl NcclCollective {
    /// Joins the communicator of `world` ranks as `rank` on CUDA device `ordinal`, with rank
    /// 0's unique id. Blocks until every rank has joined (NCCL's own rendezvous).
    pub fn join(
        ordinal: usize,
        rank: usize,
        world: usize,
        unique_id: &[u8],
    ) -> Result<Self, NcclError> {
        let internal: [c_char; 128] = unique_id
            .iter()
            .map(|&b| b as c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| NcclError::BadId(unique_id.len()))?;
        let context = CudaContext::new(ordinal).map_err(driver)?;
        let stream = context.default_stream();
        let comm =
            Comm::from_rank(stream.clone(), rank, world, Id::uninit(internal)).map_err(nccl)?;
        Ok(NcclCollective { comm, stream })
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Ranks in the communicator.
    pub fn world(&self) -> usize {
        self.comm.world_size()
    }

    /// Replaces `buffer` on every rank by the element-wise sum over all ranks (`f32` for the
    /// gradient, `f64` for the step's statistics).
    pub fn all_reduce_sum<T>(&mut self, buffer: &mut [T]) -> Result<(), NcclError>
    where
        T: cudarc::driver::DeviceRepr + cudarc::nccl::NcclType,
    {
        let mut device = self.stream.clone_htod(buffer).map_err(driver)?;
        self.comm.all_reduce_in_place(&mut device, &ReduceOp::Sum).map_err(nccl)?;
        self.stream.memcpy_dtoh(&device, buffer).map_err(driver)?;
        self.stream.synchronize().map_err(driver)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unique_id_of_the_wrong_size_is_refused_before_any_cuda_call() {
        let err = NcclCollective::join(0, 0, 1, &[0u8; 12]).expect_err("short id");
        assert_eq!(err, NcclError::BadId(12));
    }
}

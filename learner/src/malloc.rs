//! glibc's malloc arenas, capped for the learner's process.
//!
//! glibc gives each thread that allocates under contention an arena of its own, up to eight
//! per core, and returns an arena's free memory to the system only from its top. The learner
//! allocates tensor buffers of a few MB from libtorch's intra-op threads and trajectory buffers
//! from the async runtime's threads, so with the default its resident memory swung between 578
//! and 1,218 MB over a 30-minute soak with no leak behind it; with two arenas it levelled off at
//! 927 MB from minute 9 (docs/reliability.md, "Soak"). The cap is set before any thread starts.

use std::sync::OnceLock;

/// Arenas the learner uses unless the environment says otherwise.
pub const DEFAULT_ARENAS: i32 = 2;

static APPLIED: OnceLock<Option<i32>> = OnceLock::new();

/// Caps glibc's malloc arenas at [`DEFAULT_ARENAS`], unless `MALLOC_ARENA_MAX` or
/// `GLIBC_TUNABLES` is set, in which case glibc has already applied the operator's choice.
/// Returns the cap it set, if any. Call it first thing in `main`, before any thread starts.
pub fn cap_arenas() -> Option<i32> {
    *APPLIED.get_or_init(|| {
        let operator_set = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var_os("GLIBC_TUNABLES").is_some();
        (!operator_set && set_arena_max(DEFAULT_ARENAS)).then_some(DEFAULT_ARENAS)
    })
}

/// The cap [`cap_arenas`] set, if it was called and set one (for the start-up log).
pub fn applied_cap() -> Option<i32> {
    APPLIED.get().copied().flatten()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn set_arena_max(arenas: i32) -> bool {
    // SAFETY: `mallopt` takes two integers and changes only glibc's allocator settings; with
    // `M_ARENA_MAX` it bounds the arenas created from now on, and no other thread exists yet.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_arena_max(_arenas: i32) -> bool {
    false
}

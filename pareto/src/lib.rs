//! The multi-objective mathematics of ParetoPO (`../shared/paretopo-spec.md`).
//!
//! - [`points::Points`]: N points in M objectives, row-major; every function takes it.
//! - [`dominance`]: the `plain` and `constrained` relations (spec §1).
//! - [`sort`]: front ranks (nondominated sorting), the nondominated filter, net dominance.
//! - [`crowding`]: NSGA-II crowding distance, classic and order-independent (spec §3).
//! - [`hv`], [`hvc`]: exact hypervolume and exclusive contributions.
//! - [`archive::Archive`]: the incremental nondominated archive with its hypervolume.
//! - [`stage1`]: hypervolume-guided weights and the stage switch (spec §2).
//! - [`advantages`]: Stage-2 rank advantages and the baselines (spec §3, §5).
//!
//! Architecture invariant: pure Rust on `f64` slices. No I/O, no tch, no protobuf; callers
//! convert at their edge. All objectives are maximised (spec §0); the `pareto` CLI negates
//! minimisation input.

pub mod advantages;
pub mod archive;
pub mod crowding;
pub mod csv;
pub mod dominance;
pub mod hv;
pub mod hvc;
mod keys;
pub mod points;
pub mod sort;
pub mod stage1;

pub use dominance::{Dominance, dominates};
pub use points::{Points, PointsError};

/// Helpers shared by the unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    /// Asserts that two slices agree elementwise to `tol`.
    pub fn close(got: &[f64], want: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= tol, "got {got:?}, want {want:?}");
        }
    }
}

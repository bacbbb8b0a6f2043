//! The multi-objective mathematics of ParetoPO (`../shared/paretopo-spec.md`).
//!
//! - [`points::Points`]: N points in M objectives, row-major; every function takes it.
//! - [`dominance`]: the `plain` and `constrained` relations (spec §1).
//! - [`sort`]: front ranks (nondominated sorting), the nondominated filter, net dominance.
//! - [`crowding`]: NSGA-II crowding distance, classic and order-independent (spec §3).
//!
//! Architecture invariant: pure Rust on `f64` slices. No I/O, no tch, no protobuf; callers
//! convert at their edge. All objectives are maximised (spec §0); the `pareto` CLI negates
//! minimisation input.

pub mod crowding;
pub mod dominance;
pub mod points;
pub mod sort;

pub use dominance::{Dominance, dominates};
pub use points::{Points, PointsError};

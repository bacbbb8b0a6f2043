//! The multi-objective mathematics of ParetoPO (`../shared/paretopo-spec.md`): dominance, and,
//! as issue #3 lands, nondominated sorting, crowding, hypervolume and its contributions, the
//! global archive, the Stage-1 weight rule and the Stage-2 and baseline advantage estimators.
//!
//! Architecture invariant: pure Rust on slices of `f64`. No I/O, no tch, no protobuf; callers
//! convert at their edge. All objectives are maximised (spec §0).

pub mod dominance;

pub use dominance::{Dominance, dominates};

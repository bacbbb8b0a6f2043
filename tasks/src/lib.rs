//! The environment paretopo agents act in: the tool-call text format ([`format`]), answer
//! checking ([`checking`]), datasets in the public GSM8K and HotpotQA formats ([`datasets`]) and
//! the objectives; the built-in synthetic tasks arrive with the rest of issue #5.
//!
//! What it is not: no model, no gRPC; tool calls are executed by the tool-server.

pub mod checking;
pub mod datasets;
pub mod format;
pub mod objectives;

pub use objectives::{Budgets, Objective, RawMetrics, Termination, objective_vector};

//! The environment paretopo agents act in: the tool-call text format ([`format`]), answer
//! checking ([`checking`]), datasets in the public GSM8K and HotpotQA formats ([`datasets`]) and
//! the objectives ([`objectives`]), and the built-in synthetic tasks `arith` and `kb-qa` with
//! their warm-start demonstrations ([`synthetic`]).
//!
//! What it is not: no model, no gRPC; tool calls are executed by the tool-server.

pub mod checking;
pub mod datasets;
pub mod format;
pub mod objectives;
pub mod synthetic;

pub use objectives::{
    Budgets, Objective, RawMetrics, Termination, TextMetric, accuracy, objective_vector,
};

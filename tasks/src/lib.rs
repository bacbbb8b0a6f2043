//! The environment paretopo agents act in: the tool-call text format ([`format`]) and the
//! objectives; datasets (GSM8K, HotpotQA, built-in synthetic tasks) and answer checking arrive
//! with the rest of issue #5.
//!
//! What it is not: no model, no gRPC; tool calls are executed by the tool-server.

pub mod format;
pub mod objectives;

pub use objectives::Objective;

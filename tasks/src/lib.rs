//! The environment paretopo agents act in: objectives today; datasets (GSM8K, HotpotQA, built-in
//! synthetic tasks), the tool-call text format and answer checking arrive with issue #5.
//!
//! What it is not: no model, no gRPC; tool calls are executed by the tool-server.

pub mod objectives;

pub use objectives::Objective;

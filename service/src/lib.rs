//! Plumbing that every paretopo process shares, so each binary holds only its role's logic:
//!
//! - [`config`]: the run config (one TOML for all processes, `--set` overrides, errors that name
//!   the key);
//! - [`cli`]: the flags every binary has, and [`cli::run_main`], which turns a role's `run`
//!   function into a process with documented exit codes;
//! - [`logging`]: `tracing` to stderr, `RUST_LOG`, text or JSON lines;
//! - [`process`]: the facts a process reports about itself and its readiness and health;
//! - [`grpc`]: serving a role's service next to health and reflection, with graceful shutdown;
//! - [`status`]: the `WatchStatus` stream every service offers;
//! - [`metrics`]: the Prometheus endpoint;
//! - [`security`] and [`auth`]: mutual TLS, bearer tokens, and who may call which method;
//!   [`certs`]: a run's CA and certificates for local runs; [`sealed`]: the weights port's
//!   frames, encrypted once per version;
//!
//! What it is not: no role logic, no multi-objective math, no tch. Exit codes: 0 after a clean
//! shutdown, 1 when the process failed while running, 2 for bad flags or a bad config.

pub mod auth;
pub mod certs;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod grpc;
pub mod logging;
pub mod metrics;
pub mod process;
pub mod sealed;
pub mod security;
pub mod status;

pub use config::RunConfig;
pub use process::Process;

/// The four kinds of paretopo process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// `coordinator`.
    Coordinator,
    /// `learner`.
    Learner,
    /// `actor`.
    Actor,
    /// `tool-server`.
    ToolServer,
}

impl Role {
    /// The role's name in logs and metric labels (`coordinator`, `tool-server`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Learner => "learner",
            Role::Actor => "actor",
            Role::ToolServer => "tool-server",
        }
    }

    /// The role called `name` (`coordinator`, `learner`, `actor`, `tool-server`: also the
    /// names of the binaries).
    pub fn from_name(name: &str) -> Option<Role> {
        [Role::Coordinator, Role::Learner, Role::Actor, Role::ToolServer]
            .into_iter()
            .find(|r| r.name() == name)
    }

    /// The protobuf enum value.
    pub fn to_proto(self) -> paretopo_proto::v1::Role {
        use paretopo_proto::v1::Role as P;
        match self {
            Role::Coordinator => P::Coordinator,
            Role::Learner => P::Learner,
            Role::Actor => P::Actor,
            Role::ToolServer => P::ToolServer,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

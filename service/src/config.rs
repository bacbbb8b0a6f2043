//! The run config: one TOML file for every process of a run (DESIGN.md §7, §10).
//!
//! Shared sections (`[run]`, `[cluster]`, `[model]`, `[task]`, `[algorithm]`) and one per role
//! (`[coordinator]`, `[learner]`, `[actor]`, `[tool_server]`). Every binary reads the whole file,
//! so an unknown key anywhere is an error in every process. Every key has a default and can be
//! overridden from the command line with `--set section.key=value`.
//!
//! Every error names the key it is about, e.g. ``key `learner.listen`: invalid socket address
//! syntax``. This module reads files; it does not decide what a role does with its section.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything a config can get wrong. Each variant names the file (if any) and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config file {path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("config file {path}: not valid TOML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message (with line and column).
        message: String,
    },
    /// A key is unknown, has the wrong type, or an invalid value.
    #[error("{origin}: key `{key}`: {message}")]
    Key {
        /// Where the config came from (a file, or the defaults plus overrides).
        origin: String,
        /// The dotted key path, e.g. `learner.listen`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// A `--set` argument is not `key=value`.
    #[error("--set {arg:?}: expected KEY=VALUE with a dotted key such as `run.name=demo`")]
    BadOverride {
        /// The argument as given.
        arg: String,
    },
}

/// The whole run config. Field docs are the user documentation of each key.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// `[run]`: what the run is called and where it writes.
    pub run: RunSection,
    /// `[cluster]`: how processes find each other.
    pub cluster: ClusterSection,
    /// `[model]`: the policy model.
    pub model: ModelSection,
    /// `[task]`: the task and its objectives.
    pub task: TaskSection,
    /// `[algorithm]`: the estimator and its settings.
    pub algorithm: AlgorithmSection,
    /// `[coordinator]`: the coordinator process.
    pub coordinator: RoleSection,
    /// `[learner]`: each learner process.
    pub learner: LearnerSection,
    /// `[actor]`: each actor process.
    pub actor: RoleSection,
    /// `[tool_server]`: each tool-server process.
    pub tool_server: ToolServerSection,
    /// `[limits]`: the bounds of the queues and buffers every process shares
    /// (docs/reliability.md lists every bound, these and the others).
    pub limits: LimitsSection,
    /// `[security]`: TLS, credentials and the plaintext health port (docs/security.md).
    pub security: SecuritySection,
}

/// `[security]`. Each process has its own certificate, so `tls_dir` is usually set per process
/// (`--tls-dir`, or the same mount path in every pod).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// This process's certificate directory in cert-manager's layout: `tls.crt`, `tls.key`,
    /// `ca.crt` (`coordinator certs` writes one per role). Set: every port serves TLS, peers
    /// must present a certificate of the run's CA (or a bearer token) and calls are authorised
    /// by role. Unset: plaintext, allowed only when every address is loopback or `insecure`.
    pub tls_dir: Option<PathBuf>,
    /// Serve and dial plaintext on addresses other machines can reach (logs a warning at start).
    pub insecure: bool,
    /// The bearer tokens accepted: lines of `<principal> <sha256 hex>`. Unset:
    /// `<tls_dir>/tokens.sha256` when that file exists, else no token is accepted.
    pub token_hashes: Option<PathBuf>,
    /// A file holding the bearer token this process presents when it has no certificate
    /// (the `coordinator status` client of an operator).
    pub token_file: Option<PathBuf>,
    /// With TLS on: a plaintext port that serves `grpc.health.v1` and nothing else, for
    /// Kubernetes probes (`--health-listen`). Unset: no such port.
    pub health_listen: Option<SocketAddr>,
    /// Failed authentications one peer address may make in a minute; later ones in the same
    /// minute are refused without a check, and logged once.
    pub max_auth_failures_per_minute: u32,
}

impl Default for SecuritySection {
    fn default() -> Self {
        Self {
            tls_dir: None,
            insecure: false,
            token_hashes: None,
            token_file: None,
            health_listen: None,
            max_auth_failures_per_minute: 10,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// The largest gRPC request a server decodes (and response it encodes), in bytes; a larger
    /// one is refused with RESOURCE_EXHAUSTED. Clients keep gRPC's 4 MiB for what they receive.
    pub max_message_bytes: u32,
    /// gRPC streams one connection may have open at once (HTTP/2 max concurrent streams).
    pub max_concurrent_streams: u32,
    /// `WatchStatus` streams a process serves at once; one more is refused with
    /// RESOURCE_EXHAUSTED.
    pub max_status_watchers: u32,
    /// Groups a learner's training queue holds; 0: one step's worth
    /// (`algorithm.groups_per_step`). A full queue stops reading the actors' streams.
    pub learner_queue_groups: u32,
    /// Groups an actor has sent and not yet seen acknowledged; at this bound it stops taking
    /// new groups, and its sampler stops on the next one.
    pub actor_unacked_groups: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 << 20,
            max_concurrent_streams: 256,
            max_status_watchers: 64,
            learner_queue_groups: 0,
            actor_unacked_groups: 4,
        }
    }
}

impl LimitsSection {
    /// Checks values that parse but make no sense; returns the key (within the section) and why.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("max_message_bytes", self.max_message_bytes),
            ("max_concurrent_streams", self.max_concurrent_streams),
            ("max_status_watchers", self.max_status_watchers),
            ("actor_unacked_groups", self.actor_unacked_groups),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err((key, "must be at least 1".into()));
        }
        if self.max_message_bytes < 64 << 10 {
            return Err((
                "max_message_bytes",
                "must be at least 65536 (a trajectory group)".into(),
            ));
        }
        Ok(())
    }
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSection {
    /// Name of the run; processes of different runs refuse to join each other.
    pub name: String,
    /// Directory for the run's config copy, metrics, checkpoints and frontier.
    pub dir: PathBuf,
    /// Seed for every random choice of the run.
    pub seed: u64,
    /// libtorch's intra-op threads in each learner and actor process (0 = libtorch's default).
    /// A local run shares few cores between several processes; 1 each avoids oversubscription.
    pub torch_threads: u32,
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            name: "quickstart".into(),
            dir: PathBuf::from("runs/quickstart"),
            seed: 0,
            torch_threads: 1,
        }
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// The coordinator's gRPC address, as workers dial it.
    pub coordinator_address: String,
    /// Worker processes (learners, actors, tool-servers) the coordinator waits for.
    pub nodes: u32,
    /// How often a worker heartbeats, in milliseconds.
    pub heartbeat_interval_ms: u32,
    /// A worker silent for this long is marked lost, in milliseconds.
    pub heartbeat_timeout_ms: u32,
    /// Actors the local launcher (`coordinator run`) starts, beside one learner and one
    /// tool-server; `nodes` must then be `local_actors + 2`.
    pub local_actors: u32,
    /// How actors fetch policy weights: `tcp` (a notice on the gRPC stream, the bytes over a
    /// plain TCP port of the learner: several times faster for large policies) or `grpc`
    /// (the bytes in the stream's chunks).
    pub weights_transport: String,
    /// The role plan: how many of the `nodes` workers are learners. Set `learners`, `actors`
    /// and `tool_servers` together (they must add up to `nodes`), or none of them: then any
    /// mix of `nodes` workers is accepted and each announces its role when it registers.
    pub learners: Option<u32>,
    /// The role plan's actors; see `learners`.
    pub actors: Option<u32>,
    /// The role plan's tool-servers; see `learners`.
    pub tool_servers: Option<u32>,
    /// How long the coordinator waits for all `nodes` workers to register; then it stops with
    /// an error that names the missing roles. In milliseconds.
    pub rendezvous_timeout_ms: u64,
    /// The deadline of every call of the learners' gradient collective, and of joining it: a
    /// rank silent for longer is reported lost and the run stops with a checkpoint. In
    /// milliseconds.
    pub collective_timeout_ms: u64,
}

/// How many workers of each role a run has (`[cluster]` learners, actors, tool_servers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RolePlan {
    /// Learner processes.
    pub learners: u32,
    /// Actor processes.
    pub actors: u32,
    /// Tool-server processes.
    pub tool_servers: u32,
}

impl RolePlan {
    /// Workers in all.
    pub fn total(&self) -> u32 {
        self.learners + self.actors + self.tool_servers
    }
}

impl ClusterSection {
    /// The role plan, when all three counts are set.
    pub fn role_plan(&self) -> Option<RolePlan> {
        Some(RolePlan {
            learners: self.learners?,
            actors: self.actors?,
            tool_servers: self.tool_servers?,
        })
    }

    /// Checks values that parse but make no sense; returns the key (within the section) and why.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if !matches!(self.weights_transport.as_str(), "tcp" | "grpc") {
            return Err((
                "weights_transport",
                format!("expected `tcp` or `grpc`, got {:?}", self.weights_transport),
            ));
        }
        if self.nodes == 0 {
            return Err(("nodes", "must be at least 1".into()));
        }
        if self.heartbeat_interval_ms == 0
            || self.heartbeat_timeout_ms <= self.heartbeat_interval_ms
        {
            return Err((
                "heartbeat_timeout_ms",
                format!(
                    "must exceed heartbeat_interval_ms ({}) and both be positive, got {}",
                    self.heartbeat_interval_ms, self.heartbeat_timeout_ms
                ),
            ));
        }
        for (key, value) in [
            ("rendezvous_timeout_ms", self.rendezvous_timeout_ms),
            ("collective_timeout_ms", self.collective_timeout_ms),
        ] {
            if value == 0 {
                return Err((key, "must be positive".into()));
            }
        }
        let counts = [self.learners, self.actors, self.tool_servers];
        match self.role_plan() {
            Some(plan) if plan.total() != self.nodes => Err((
                "nodes",
                format!(
                    "the role plan has {} learners + {} actors + {} tool-servers = {} workers, \
                     but nodes = {}",
                    plan.learners,
                    plan.actors,
                    plan.tool_servers,
                    plan.total(),
                    self.nodes
                ),
            )),
            Some(plan) if plan.learners == 0 => {
                Err(("learners", "a run needs at least 1 learner".into()))
            }
            None if counts.iter().any(Option::is_some) => Err((
                "learners",
                "set learners, actors and tool_servers together, or none of them".into(),
            )),
            _ => Ok(()),
        }
    }
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            coordinator_address: "127.0.0.1:50051".into(),
            nodes: 4,
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 5000,
            local_actors: 2,
            weights_transport: "tcp".into(),
            learners: None,
            actors: None,
            tool_servers: None,
            rendezvous_timeout_ms: 600_000,
            collective_timeout_ms: 60_000,
        }
    }
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// A named config (`tiny`, `qwen2.5-0.5b`, ...) or a Hugging Face checkpoint directory.
    pub name: String,
    /// `auto` (CUDA when present, else CPU), `cpu`, or `cuda:N`.
    pub device: String,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self { name: "tiny".into(), device: "auto".into() }
    }
}

/// `[task]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TaskSection {
    /// The task: built in (`arith`, `kb-qa`), or a data file in GSM8K or HotpotQA format.
    pub name: String,
    /// The objectives, all maximised, in the order every objective vector uses (K >= 2).
    pub objectives: Vec<String>,
    /// A built-in task's settings (`[task.settings]`; unset keys keep their defaults). `arith`:
    /// `questions`, `easy_fraction`, `medium_fraction`, `medium_max`, `demonstrations`,
    /// `demo_tool_rates`; `kb-qa`: `people`, `cities`, `countries`, `memorised_fraction`,
    /// `demo_people_fraction`, `demo_search_when_memorised` (`tasks/src/synthetic/` documents
    /// each).
    pub settings: toml::Table,
}

impl Default for TaskSection {
    fn default() -> Self {
        Self {
            name: "arith".into(),
            objectives: vec![
                "accuracy".into(),
                "tool_efficiency".into(),
                "token_efficiency".into(),
            ],
            settings: toml::Table::new(),
        }
    }
}

impl TaskSection {
    /// `settings` as JSON, the form the task generators read.
    pub fn settings_json(&self) -> serde_json::Map<String, serde_json::Value> {
        match serde_json::to_value(&self.settings) {
            Ok(serde_json::Value::Object(map)) => map,
            // A TOML table is always a JSON object.
            _ => serde_json::Map::new(),
        }
    }
}

/// `[algorithm]`: the estimator, the loop's sizes and every knob of spec §2-§5. Defaults are
/// the spec's where it gives one, else the quickstart's (`../shared/quickstart-notes.md`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlgorithmSection {
    /// The advantage estimator: `paretopo`, `paretopo_stage1_only`, `paretopo_stage2_only`,
    /// `grpo_accuracy`, `static:W`, `gdpo` or `otc_grpo` (spec §5).
    pub method: String,
    /// Trajectories sampled per prompt (G >= 2).
    pub group_size: u32,
    /// The run's planned number of learner steps (T). 0: no RL step, only the warm start and
    /// the evaluation (what `coordinator experiment`'s warm-start shards and `coordinator eval`
    /// run).
    pub total_steps: u64,
    /// Groups (prompts) in one learner step, over all learner ranks.
    pub groups_per_step: u32,
    /// Prompts an actor samples together in one batch (each G times).
    pub actor_batch_prompts: u32,
    /// The RL learning rate (AdamW, betas 0.9/0.999, weight decay 0.01).
    pub learning_rate: f64,
    /// Clip the global gradient norm to this.
    pub max_grad_norm: f64,
    /// `eps_low` of the clipped ratio (spec §4).
    pub clip_low: f64,
    /// `eps_high` of the clipped ratio (spec §4, DAPO's decoupled clip).
    pub clip_high: f64,
    /// `beta_kl`, the weight of the k3 KL term to the warm-start policy (0 = off).
    pub kl_coef: f64,
    /// The sampling temperature; the log-probs of the loss use the same one (spec §4).
    pub temperature: f64,
    /// Trajectories sampled by a policy more than this many versions old are dropped.
    pub max_staleness: u64,
    /// The learner publishes weights to the actors every this many steps.
    pub sync_every: u64,
    /// Tool calls allowed per episode (the `tool_efficiency` budget).
    pub tool_call_budget: u32,
    /// Generated tokens allowed per episode (the `token_efficiency` budget).
    pub token_budget: u32,
    /// Stage-2 dominance: `constrained` (accuracy as feasibility, spec §1) or `plain`.
    pub dominance: String,
    /// Accuracy that counts as correct (spec §1; 1.0 for math, 0.5 F1 for QA).
    pub correct_threshold: f64,
    /// `lambda_cd`, the crowding tie-break's weight in Stage 2 (0 <= lambda_cd < 1).
    pub lambda_cd: f64,
    /// Stage 2 without the division by the standard deviation (Dr. GRPO).
    pub dr_grpo: bool,
    /// Stage 1's weight floor `w_min` (needs K w_min < 1).
    pub w_min: f64,
    /// Stage 1's step towards the gain direction, `beta`.
    pub weight_step: f64,
    /// Stage 1's finite step `delta` for the gains.
    pub gain_delta: f64,
    /// Stage 1's EMA factor `mu` of the policy point.
    pub ema: f64,
    /// Stage 1's gain rule: `proportional` or `inverse` (spec §2).
    pub gain_rule: String,
    /// The hypervolume reference point, one value per objective (default -0.01 each).
    pub hv_reference: Option<Vec<f64>>,
    /// The global archive's cap.
    pub archive_cap: u32,
    /// Stage switch: the window W of the hypervolume test.
    pub switch_window: u32,
    /// Stage switch: the relative hypervolume gain below which Stage 1 has stalled.
    pub switch_tau_rel: f64,
    /// Stage switch: the earliest step (unset: ceil(0.2 T)).
    pub switch_min_step: Option<u64>,
    /// Stage switch: the latest step (unset: ceil(0.5 T)).
    pub switch_max_step: Option<u64>,
    /// Supervised warm-start steps on the task's demonstrations before RL (0 = none).
    pub warm_start_steps: u32,
    /// Demonstrations per warm-start step.
    pub warm_start_batch: u32,
    /// The warm start's peak learning rate (linear warm-up over 30 steps, then linear decay).
    pub warm_start_lr: f64,
    /// Write a checkpoint every this many learner steps (and always at the end and on stop).
    pub checkpoint_every: u64,
    /// Checkpoints kept: older `step-<n>` directories are removed once a newer one is complete.
    pub keep_checkpoints: u32,
    /// When a periodic checkpoint cannot be written (a full disk): `stop` ends the run with the
    /// error, `continue` logs it and trains on. The previous checkpoint stays intact either way.
    pub on_checkpoint_error: String,
    /// Share of the task's questions held out for evaluation.
    pub eval_fraction: f64,
    /// Held-out questions evaluated before RL and at the end (0 = no evaluation).
    pub eval_questions: u32,
    /// The split those evaluations use: `test` (the held-out questions) or `train`.
    pub eval_split: String,
}

impl Default for AlgorithmSection {
    fn default() -> Self {
        Self {
            method: "paretopo".into(),
            group_size: 8,
            total_steps: 200,
            groups_per_step: 8,
            actor_batch_prompts: 4,
            learning_rate: 1e-4,
            max_grad_norm: 1.0,
            clip_low: 0.2,
            clip_high: 0.28,
            kl_coef: 0.0,
            temperature: 1.0,
            max_staleness: 4,
            sync_every: 1,
            tool_call_budget: 3,
            token_budget: 96,
            dominance: "constrained".into(),
            correct_threshold: 1.0,
            lambda_cd: 0.1,
            dr_grpo: false,
            w_min: 0.05,
            weight_step: 0.2,
            gain_delta: 0.05,
            ema: 0.9,
            gain_rule: "proportional".into(),
            hv_reference: None,
            archive_cap: 256,
            switch_window: 10,
            switch_tau_rel: 0.01,
            switch_min_step: None,
            switch_max_step: None,
            warm_start_steps: 300,
            warm_start_batch: 32,
            warm_start_lr: 3e-3,
            checkpoint_every: 50,
            keep_checkpoints: 3,
            on_checkpoint_error: "stop".into(),
            eval_fraction: 0.1,
            eval_questions: 200,
            eval_split: "test".into(),
        }
    }
}

impl AlgorithmSection {
    /// Checks values that parse but make no sense; returns the key (within the section) and why.
    fn validate(&self, objectives: usize) -> Result<(), (&'static str, String)> {
        let at_least_one = [
            ("groups_per_step", u64::from(self.groups_per_step)),
            ("actor_batch_prompts", u64::from(self.actor_batch_prompts)),
            ("sync_every", self.sync_every),
            ("tool_call_budget", u64::from(self.tool_call_budget)),
            ("token_budget", u64::from(self.token_budget)),
            ("archive_cap", u64::from(self.archive_cap)),
            ("checkpoint_every", self.checkpoint_every),
            ("keep_checkpoints", self.keep_checkpoints.into()),
            ("warm_start_batch", u64::from(self.warm_start_batch)),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, v)| *v == 0) {
            return Err((key, "must be at least 1".into()));
        }
        if !matches!(self.on_checkpoint_error.as_str(), "stop" | "continue") {
            return Err((
                "on_checkpoint_error",
                format!("expected `stop` or `continue`, got {:?}", self.on_checkpoint_error),
            ));
        }
        let positive = [
            ("learning_rate", self.learning_rate),
            ("max_grad_norm", self.max_grad_norm),
            ("temperature", self.temperature),
            ("warm_start_lr", self.warm_start_lr),
        ];
        if let Some((key, v)) = positive.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
            return Err((key, format!("must be positive, got {v}")));
        }
        let unit = [
            ("clip_low", self.clip_low),
            ("clip_high", self.clip_high),
            ("correct_threshold", self.correct_threshold),
            ("weight_step", self.weight_step),
            ("ema", self.ema),
            ("eval_fraction", self.eval_fraction),
        ];
        if let Some((key, v)) = unit.iter().find(|(_, v)| !(0.0..=1.0).contains(v)) {
            return Err((key, format!("must lie in [0, 1], got {v}")));
        }
        if !(0.0..1.0).contains(&self.lambda_cd) {
            return Err(("lambda_cd", format!("must lie in [0, 1), got {}", self.lambda_cd)));
        }
        if !(self.kl_coef.is_finite() && self.kl_coef >= 0.0) {
            return Err(("kl_coef", format!("must be 0 or more, got {}", self.kl_coef)));
        }
        if !(self.w_min >= 0.0 && self.w_min * (objectives as f64) < 1.0) {
            return Err((
                "w_min",
                format!("needs 0 <= w_min and {objectives} * w_min < 1, got {}", self.w_min),
            ));
        }
        if !matches!(self.dominance.as_str(), "constrained" | "plain") {
            return Err((
                "dominance",
                format!("expected `constrained` or `plain`, got {:?}", self.dominance),
            ));
        }
        if !is_method(&self.method) {
            return Err((
                "method",
                format!(
                    "unknown method {:?} (expected paretopo, paretopo_stage1_only, \
                     paretopo_stage2_only, grpo_accuracy, static:W with W in [0, 1], gdpo or \
                     otc_grpo)",
                    self.method
                ),
            ));
        }
        if !matches!(self.eval_split.as_str(), "test" | "train") {
            return Err((
                "eval_split",
                format!("expected `test` or `train`, got {:?}", self.eval_split),
            ));
        }
        if !matches!(self.gain_rule.as_str(), "proportional" | "inverse") {
            return Err((
                "gain_rule",
                format!("expected `proportional` or `inverse`, got {:?}", self.gain_rule),
            ));
        }
        if let Some(reference) = &self.hv_reference
            && reference.len() != objectives
        {
            return Err((
                "hv_reference",
                format!("needs one value per objective ({objectives}), got {}", reference.len()),
            ));
        }
        Ok(())
    }
}

/// Whether `method` names an estimator of spec §5 (the learner's `Estimator` parses it).
pub fn is_method(method: &str) -> bool {
    const NAMED: [&str; 6] = [
        "paretopo",
        "paretopo_stage1_only",
        "paretopo_stage2_only",
        "grpo_accuracy",
        "gdpo",
        "otc_grpo",
    ];
    NAMED.contains(&method)
        || method
            .strip_prefix("static:")
            .and_then(|w| w.parse::<f64>().ok())
            .is_some_and(|w| (0.0..=1.0).contains(&w))
}

/// The section every role has: where it listens.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleSection {
    /// The gRPC listen address (`--listen`). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The Prometheus metrics listen address (`--metrics-listen`); absent turns metrics off.
    pub metrics_listen: Option<SocketAddr>,
    /// The address peers should dial, when it differs from `listen` (NAT, Kubernetes).
    pub advertised_address: Option<String>,
    /// How long shutdown may wait for calls in flight, in milliseconds.
    pub drain_timeout_ms: u64,
}

impl Default for RoleSection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: None,
            advertised_address: None,
            drain_timeout_ms: 3000,
        }
    }
}

/// `[learner]`: the keys every role has, and the learner's two other ports.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LearnerSection {
    /// The gRPC listen address (`--listen`). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The Prometheus metrics listen address (`--metrics-listen`); absent turns metrics off.
    pub metrics_listen: Option<SocketAddr>,
    /// The address peers should dial, when it differs from `listen` (NAT, Kubernetes).
    pub advertised_address: Option<String>,
    /// How long shutdown may wait for calls in flight, in milliseconds.
    pub drain_timeout_ms: u64,
    /// The port of the CPU gradient collective (rank 0 accepts the other ranks there), on the
    /// host of `listen`; 0 picks a free port. Fix it where a firewall or a NetworkPolicy must
    /// name it.
    pub collective_port: u16,
    /// The port actors fetch weights from over plain TCP (`cluster.weights_transport = "tcp"`),
    /// on the host of `listen`; 0 picks a free port.
    pub weights_port: u16,
    /// This learner's index, when the deployment numbers its learners (in Kubernetes:
    /// `--set learner.index=$(JOB_COMPLETION_INDEX)`): its node id is `learner-<index>` and its
    /// first global rank `index` x its GPUs. Unset: ranks follow registration order.
    pub index: Option<u32>,
    /// How many devices this learner process drives, each a rank of its own: with
    /// `model.device = "cuda:N"` (or `cuda`, `auto` on a GPU machine) CUDA devices N, N+1, ...
    /// On the CPU each is another replica on the same cores, which only tests the path.
    pub devices: u32,
    /// At most this many padded tokens (samples x the longest of them) in one forward+backward
    /// pass: a rank's share of a step is trained in passes of similar-length samples whose
    /// gradients add up to the same step. Smaller passes hold fewer activations and logits; on
    /// the CPU, passes of a few thousand tokens also train faster per token (BENCHMARKS.md,
    /// issue #4). 0 trains the whole share in one pass.
    pub max_tokens_per_pass: u64,
}

impl Default for LearnerSection {
    fn default() -> Self {
        let role = RoleSection::default();
        Self {
            listen: role.listen,
            metrics_listen: role.metrics_listen,
            advertised_address: role.advertised_address,
            drain_timeout_ms: role.drain_timeout_ms,
            collective_port: 0,
            weights_port: 0,
            index: None,
            devices: 1,
            max_tokens_per_pass: 3072,
        }
    }
}

impl LearnerSection {
    /// The keys every role has.
    pub fn role(&self) -> RoleSection {
        RoleSection {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            advertised_address: self.advertised_address.clone(),
            drain_timeout_ms: self.drain_timeout_ms,
        }
    }
}

/// `[tool_server]`: the keys every role has, and the tools' corpus and limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolServerSection {
    /// The gRPC listen address (`--listen`). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The Prometheus metrics listen address (`--metrics-listen`); absent turns metrics off.
    pub metrics_listen: Option<SocketAddr>,
    /// The address peers should dial, when it differs from `listen` (NAT, Kubernetes).
    pub advertised_address: Option<String>,
    /// How long shutdown may wait for calls in flight, in milliseconds.
    pub drain_timeout_ms: u64,
    /// The `search` corpus, JSONL of `{"id", "title", "text"}`. Unset: the task's own corpus
    /// (`kb-qa`'s generated passages, a HotpotQA file's contexts), or no `search` tool.
    pub corpus: Option<PathBuf>,
    /// Passages a search returns when the call does not say (`k`).
    pub search_top_k: u32,
    /// Calls that run at once; more wait in line, in arrival order, until their deadline.
    /// Unset: one per CPU core, as the tools are CPU-bound and more at once only lengthen
    /// every call.
    pub max_concurrent_calls: Option<u32>,
    /// Calls that may wait in line at once; one more is refused at once with
    /// RESOURCE_EXHAUSTED (an actor retries it with backoff) instead of a place.
    pub max_queued_calls: u32,
    /// The deadline of a call that names none, in milliseconds.
    pub default_deadline_ms: u32,
    /// The longest deadline a call may ask for, in milliseconds.
    pub max_deadline_ms: u32,
    /// The longest calculator expression, in bytes.
    pub calculator_max_input_bytes: u32,
    /// The deepest nesting of parentheses and unary minus in a calculator expression.
    pub calculator_max_depth: u32,
    /// The largest numerator or denominator of any intermediate calculator result, in bits.
    pub calculator_max_result_bits: u32,
}

impl Default for ToolServerSection {
    fn default() -> Self {
        let role = RoleSection::default();
        Self {
            listen: role.listen,
            metrics_listen: role.metrics_listen,
            advertised_address: role.advertised_address,
            drain_timeout_ms: role.drain_timeout_ms,
            corpus: None,
            search_top_k: 3,
            max_concurrent_calls: None,
            max_queued_calls: 1024,
            default_deadline_ms: 5_000,
            max_deadline_ms: 60_000,
            calculator_max_input_bytes: 1024,
            calculator_max_depth: 64,
            calculator_max_result_bits: 4096,
        }
    }
}

impl ToolServerSection {
    /// The keys every role has.
    pub fn role(&self) -> RoleSection {
        RoleSection {
            listen: self.listen,
            metrics_listen: self.metrics_listen,
            advertised_address: self.advertised_address.clone(),
            drain_timeout_ms: self.drain_timeout_ms,
        }
    }

    /// Checks values that parse but make no sense; returns the key (within the section) and why.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let positive = [
            ("search_top_k", self.search_top_k),
            ("max_concurrent_calls", self.max_concurrent_calls.unwrap_or(1)),
            ("max_queued_calls", self.max_queued_calls),
            ("default_deadline_ms", self.default_deadline_ms),
            ("calculator_max_input_bytes", self.calculator_max_input_bytes),
            ("calculator_max_depth", self.calculator_max_depth),
            ("calculator_max_result_bits", self.calculator_max_result_bits),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err((key, "must be at least 1".into()));
        }
        if self.default_deadline_ms > self.max_deadline_ms {
            return Err((
                "default_deadline_ms",
                format!(
                    "must not exceed max_deadline_ms ({}), got {}",
                    self.max_deadline_ms, self.default_deadline_ms
                ),
            ));
        }
        Ok(())
    }
}

impl RunConfig {
    /// Reads `path` (or starts from the defaults when `None`), applies `overrides`
    /// (`section.key=value`, the value in TOML syntax, a bare word taken as a string), and checks
    /// every key.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                Self::from_text(&text, path, overrides)
            }
            None => Self::from_table(toml::Table::new(), "config".to_owned(), overrides),
        }
    }

    /// Parses `text` (the contents of the config file `path`, named in errors), applies
    /// `overrides` and checks every key, as [`RunConfig::load`] does.
    pub fn from_text(text: &str, path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        let table = text.parse::<toml::Table>().map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.message().to_owned() + &line_of(text, e.span()),
        })?;
        Self::from_table(table, format!("config file {}", path.display()), overrides)
    }

    fn from_table(
        mut table: toml::Table,
        origin: String,
        overrides: &[String],
    ) -> Result<Self, ConfigError> {
        for arg in overrides {
            apply_override(&mut table, arg)?;
        }
        let config: RunConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                // `message()`, not Display: Display appends "in `key`" on a second line, and
                // our own key prefix already says that.
                let message = e.into_inner().message().to_owned();
                ConfigError::Key { origin: origin.clone(), key, message }
            })?;
        config.validate().map_err(|(key, message)| ConfigError::Key { origin, key, message })?;
        Ok(config)
    }

    /// The hypervolume reference point: `algorithm.hv_reference`, else -0.01 per objective
    /// (spec §0).
    pub fn hv_reference(&self) -> Vec<f64> {
        self.algorithm
            .hv_reference
            .clone()
            .unwrap_or_else(|| vec![-0.01; self.task.objectives.len()])
    }

    /// The config as TOML, every key with its value (the run directory's `config.toml`).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// The role section for `role`.
    pub fn role_section(&self, role: crate::Role) -> RoleSection {
        match role {
            crate::Role::Coordinator => self.coordinator.clone(),
            crate::Role::Learner => self.learner.role(),
            crate::Role::Actor => self.actor.clone(),
            crate::Role::ToolServer => self.tool_server.role(),
        }
    }

    /// Checks values that parse but make no sense; returns the key and the reason.
    fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, message: String| Err((key.to_owned(), message));
        if self.run.name.is_empty() {
            return fail("run.name", "must not be empty".into());
        }
        if !valid_device(&self.model.device) {
            return fail(
                "model.device",
                format!("expected `auto`, `cpu` or `cuda:N`, got {:?}", self.model.device),
            );
        }
        if self.task.objectives.len() < 2 {
            return fail(
                "task.objectives",
                format!("needs at least 2 objectives, got {}", self.task.objectives.len()),
            );
        }
        if self.algorithm.group_size < 2 {
            return fail(
                "algorithm.group_size",
                format!("must be at least 2, got {}", self.algorithm.group_size),
            );
        }
        if let Err((key, message)) = self.tool_server.validate() {
            return fail(&format!("tool_server.{key}"), message);
        }
        if let Err((key, message)) = self.cluster.validate() {
            return fail(&format!("cluster.{key}"), message);
        }
        if self.learner.devices == 0 {
            return fail("learner.devices", "must be at least 1".into());
        }
        if self.security.max_auth_failures_per_minute == 0 {
            return fail("security.max_auth_failures_per_minute", "must be at least 1".into());
        }
        if let Err((key, message)) = self.limits.validate() {
            return fail(&format!("limits.{key}"), message);
        }
        if let Err((key, message)) = self.algorithm.validate(self.task.objectives.len()) {
            return fail(&format!("algorithm.{key}"), message);
        }
        Ok(())
    }
}

/// `auto`, `cpu`, `cuda` or `cuda:N`.
fn valid_device(device: &str) -> bool {
    match device.strip_prefix("cuda:") {
        Some(index) => index.parse::<usize>().is_ok(),
        None => matches!(device, "auto" | "cpu" | "cuda"),
    }
}

/// Applies one `--set a.b=value` to the raw table, creating sections as needed.
fn apply_override(table: &mut toml::Table, arg: &str) -> Result<(), ConfigError> {
    let bad = || ConfigError::BadOverride { arg: arg.to_owned() };
    let (key, raw) = arg.split_once('=').ok_or_else(bad)?;
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad());
    }
    // A value in TOML syntax (numbers, booleans, arrays, quoted strings); anything else is text.
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let (last, sections) = parts.split_last().ok_or_else(bad)?;
    let mut current = table;
    for section in sections {
        let entry = current.entry(section.to_string()).or_insert_with(|| toml::Table::new().into());
        current = entry.as_table_mut().ok_or_else(|| ConfigError::Key {
            origin: "--set".into(),
            key: key.to_owned(),
            message: format!("`{section}` is not a section"),
        })?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}

/// " at line N" for a parser error span, so syntax errors point at the line.
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn load_text(text: &str) -> Result<RunConfig, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        RunConfig::load(Some(file.path()), &[])
    }

    #[test]
    fn defaults_are_valid_and_empty_file_equals_defaults() {
        assert_eq!(load_text("").expect("empty file"), RunConfig::default());
        assert_eq!(RunConfig::load(None, &[]).expect("no file"), RunConfig::default());
    }

    #[test]
    fn unknown_key_is_named_with_its_section() {
        let err = load_text("[learner]\nlisten = \"127.0.0.1:1\"\nlr = 0.1\n").expect_err("lr");
        let msg = err.to_string();
        assert!(msg.contains("key `learner.lr`: unknown field `lr`"), "{msg}");
        assert!(!msg.contains('\n'), "one line: {msg}");
    }

    #[test]
    fn unknown_section_is_an_error() {
        let msg = load_text("[trainer]\nsteps = 3\n").expect_err("section").to_string();
        assert!(msg.contains("unknown field `trainer`"), "{msg}");
    }

    #[test]
    fn wrong_type_names_the_key_path() {
        let msg = load_text("[algorithm]\ngroup_size = \"ten\"\n").expect_err("type").to_string();
        assert!(msg.contains("key `algorithm.group_size`"), "{msg}");
        assert!(msg.contains("invalid type"), "{msg}");
    }

    #[test]
    fn bad_address_names_the_key_path() {
        let msg = load_text("[actor]\nlisten = \"nowhere\"\n").expect_err("addr").to_string();
        assert!(msg.contains("key `actor.listen`"), "{msg}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let msg = load_text("[task]\nobjectives = [\"accuracy\"]\n").expect_err("K=1").to_string();
        assert!(msg.contains("key `task.objectives`"), "{msg}");
    }

    #[test]
    fn tool_server_keys_are_checked_and_shared_keys_reach_the_role() {
        let config = load_text(
            "[tool_server]\nlisten = \"127.0.0.1:7000\"\ncorpus = \"passages.jsonl\"\nsearch_top_k = 5\n",
        )
        .expect("valid");
        assert_eq!(config.role_section(crate::Role::ToolServer).listen.port(), 7000);
        assert_eq!(config.tool_server.corpus.as_deref(), Some(Path::new("passages.jsonl")));
        let msg =
            load_text("[tool_server]\nmax_concurrent_calls = 0\n").expect_err("0").to_string();
        assert!(
            msg.contains("key `tool_server.max_concurrent_calls`: must be at least 1"),
            "{msg}"
        );
        let set = [
            "tool_server.default_deadline_ms=9000".to_string(),
            "tool_server.max_deadline_ms=100".into(),
        ];
        let msg = RunConfig::load(None, &set).expect_err("deadline").to_string();
        assert!(msg.contains("key `tool_server.default_deadline_ms`"), "{msg}");
        let msg = load_text("[tool_server]\nsearch_k = 1\n").expect_err("unknown").to_string();
        assert!(msg.contains("unknown field `search_k`"), "{msg}");
    }

    #[test]
    fn a_role_plan_sets_all_three_counts_and_adds_up_to_nodes() {
        let plan = |sets: &[&str]| {
            RunConfig::load(None, &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        let config = plan(&[
            "cluster.nodes=8",
            "cluster.learners=2",
            "cluster.actors=5",
            "cluster.tool_servers=1",
        ])
        .expect("2 + 5 + 1 = 8");
        assert_eq!(
            config.cluster.role_plan(),
            Some(RolePlan { learners: 2, actors: 5, tool_servers: 1 })
        );
        assert_eq!(RunConfig::default().cluster.role_plan(), None, "no plan by default");
        let msg = plan(&[
            "cluster.nodes=7",
            "cluster.learners=2",
            "cluster.actors=5",
            "cluster.tool_servers=1",
        ])
        .expect_err("sum")
        .to_string();
        assert!(msg.contains("key `cluster.nodes`") && msg.contains("= 8 workers"), "{msg}");
        let msg = plan(&["cluster.learners=2"]).expect_err("partial").to_string();
        assert!(msg.contains("key `cluster.learners`") && msg.contains("together"), "{msg}");
        let msg = plan(&[
            "cluster.nodes=2",
            "cluster.learners=0",
            "cluster.actors=1",
            "cluster.tool_servers=1",
        ])
        .expect_err("no learner")
        .to_string();
        assert!(msg.contains("at least 1 learner"), "{msg}");
        let msg = plan(&["cluster.collective_timeout_ms=0"]).expect_err("zero").to_string();
        assert!(msg.contains("key `cluster.collective_timeout_ms`: must be positive"), "{msg}");
    }

    #[test]
    fn device_must_be_auto_cpu_or_cuda() {
        for good in ["auto", "cpu", "cuda", "cuda:1"] {
            let set = format!("model.device={good}");
            assert!(RunConfig::load(None, &[set]).is_ok(), "{good}");
        }
        for bad in ["gpu", "cuda:", "cuda:x", ""] {
            let set = format!("model.device=\"{bad}\"");
            let msg = RunConfig::load(None, &[set]).expect_err(bad).to_string();
            assert!(msg.contains("key `model.device`"), "{msg}");
        }
    }

    #[test]
    fn syntax_error_gives_the_line() {
        let msg = load_text("[run]\nname = \"a\"\nseed = = 3\n").expect_err("syntax").to_string();
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn missing_file_says_cannot_read() {
        let msg = RunConfig::load(Some(Path::new("/nonexistent/run.toml")), &[])
            .expect_err("missing")
            .to_string();
        assert!(msg.contains("/nonexistent/run.toml") && msg.contains("cannot read"), "{msg}");
    }

    #[test]
    fn overrides_parse_toml_values_and_bare_words() {
        let config = RunConfig::load(
            None,
            &[
                "algorithm.group_size=4".into(),
                "run.name=demo".into(),
                "learner.listen=0.0.0.0:7000".into(),
                "task.objectives=[\"accuracy\", \"tool_efficiency\"]".into(),
            ],
        )
        .expect("overrides");
        assert_eq!(config.algorithm.group_size, 4);
        assert_eq!(config.run.name, "demo");
        assert_eq!(config.learner.listen, SocketAddr::from(([0, 0, 0, 0], 7000)));
        assert_eq!(config.task.objectives, ["accuracy", "tool_efficiency"]);
    }

    #[test]
    fn overrides_are_checked_like_the_file() {
        let msg = RunConfig::load(None, &["algorithm.group_size=many".into()])
            .expect_err("type")
            .to_string();
        assert!(msg.contains("key `algorithm.group_size`"), "{msg}");
        assert!(matches!(
            RunConfig::load(None, &["novalue".into()]),
            Err(ConfigError::BadOverride { .. })
        ));
    }
}

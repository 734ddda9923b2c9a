//! drover's control plane: keeps the queue and every job's truth, hands work to agents
//! over long-polls, expires leases, stores logs, and serves the HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Resolved server configuration (the CLI merges file < env < flags into this).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on; port 0 picks a free one (see [`Server::local_addr`]).
    pub listen: SocketAddr,
    /// Holds the SQLite database and log files.
    pub data_dir: PathBuf,
    /// `postgres://…` to use PostgreSQL; None for SQLite in `data_dir`.
    pub database_url: Option<String>,
    /// Leases not renewed by a poll for this long expire.
    pub lease_ttl: Duration,
    /// Serve `/metrics` without a token.
    pub public_metrics: bool,
    /// Tokens to make sure exist at start (e.g. those `drover up` generated), stored hashed.
    pub bootstrap_tokens: Vec<BootstrapToken>,
    /// Largest request body in bytes.
    pub max_body_bytes: usize,
    /// Longest a client may take to send a request's headers, and then its body: a
    /// connection that dawdles is closed, so idle sockets cannot pile up.
    pub read_timeout: Duration,
    /// Serve HTTPS with this certificate and key (PEM files).
    pub tls: Option<TlsFiles>,
    /// Keep files, artifacts and logs in S3-compatible storage instead of `data_dir`.
    pub object_store: Option<ObjectStoreConfig>,
    /// Largest file one upload may carry, in bytes.
    pub max_file_bytes: u64,
    /// Most artifacts, and bytes of artifacts, one attempt may upload.
    pub artifact_limits: drover_core::files::ArtifactLimits,
    /// Delete files, artifacts and logs of jobs that finished longer ago than this.
    pub retain: Option<Duration>,
    /// Most jobs of a queue leased or running at once, by queue (every server on one
    /// database needs the same).
    pub queue_limits: std::collections::BTreeMap<String, u32>,
    /// Forget agents not seen for this long.
    pub prune_agents_after: Duration,
    /// Providers of agents on demand (`[[provider]]` in the config file).
    pub providers: Vec<ProviderConfig>,
    /// The key that seals job secrets; None: `DATA/secrets.key` (created when missing).
    /// Every server on one database must have the same.
    pub secrets_key_file: Option<PathBuf>,
}

/// A provider: how the server starts agents for work no running agent can take, what
/// those agents offer, and its limits.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// Labels its agents get (their bootstrap token binds exactly these).
    pub labels: drover_core::labels::Labels,
    /// Queues its agents take jobs from; empty means `default`.
    pub queues: Vec<String>,
    /// Slots of each agent.
    pub slots: u32,
    pub max_agents: u32,
    /// Agents kept running without work.
    pub min_idle: u32,
    pub max_starts_per_minute: u32,
    /// An agent without work for this long is stopped (drained, then it exits).
    pub idle_timeout: Duration,
    /// An agent that has not registered this long after its start is killed and the
    /// start counts as failed.
    pub start_timeout: Duration,
    /// Agents run one job, then exit.
    pub ephemeral: bool,
    /// The URL its agents reach the server at; default from the listen address.
    pub server_url: Option<String>,
    /// Environment of the agent (not of its jobs).
    pub env: std::collections::BTreeMap<String, String>,
}

/// How a provider starts an agent.
#[derive(Debug, Clone)]
pub enum ProviderKind {
    /// `drover agent` processes on the server's machine: `command` (default: this
    /// executable) followed by `agent` and its flags.
    Process { command: Vec<String> },
    /// An agent container from `image` (whose entrypoint is `drover`) on the Docker
    /// engine the `docker` CLI reaches.
    Docker {
        image: String,
        network: Option<String>,
        /// `HOST:CONTAINER[:ro]`.
        mounts: Vec<String>,
        /// Ask for the host's GPUs (`--gpus all`).
        gpus: bool,
        /// `docker run --pull`: `missing` (the default), `always` or `never`.
        pull: Option<String>,
    },
}

impl ProviderKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::Process { .. } => "process",
            ProviderKind::Docker { .. } => "docker",
        }
    }
}

/// Where an S3-compatible object store is and how to sign in to it. Fields left out are
/// read from the usual `AWS_*` environment variables.
#[derive(Debug, Clone, Default)]
pub struct ObjectStoreConfig {
    /// `s3://bucket` or `s3://bucket/prefix`.
    pub url: String,
    /// For stores other than AWS, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// `http://host/bucket/key` rather than `http://bucket.host/key` (most self-hosted
    /// stores want this).
    pub path_style: bool,
}

/// PEM certificate chain and private key for HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A token the server creates at start if it does not exist yet.
#[derive(Debug, Clone)]
pub struct BootstrapToken {
    pub name: String,
    pub scope: Scope,
    pub secret: String,
}

/// What a client token may do. `Join` tokens may only register agents; `Bootstrap`
/// tokens register one agent, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Bootstrap,
    Join,
    Read,
    Submit,
    Admin,
}

impl ServerConfig {
    /// Defaults for a server whose data lives in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: data_dir.into(),
            database_url: None,
            lease_ttl: Duration::from_secs(30),
            public_metrics: false,
            bootstrap_tokens: Vec::new(),
            max_body_bytes: 8 * 1024 * 1024,
            read_timeout: Duration::from_secs(15),
            tls: None,
            object_store: None,
            max_file_bytes: 10 * 1024 * 1024 * 1024,
            artifact_limits: Default::default(),
            queue_limits: Default::default(),
            retain: None,
            prune_agents_after: Duration::from_secs(86_400),
            providers: Vec::new(),
            secrets_key_file: None,
        }
    }
}

pub use server::{rotate_secrets_key, Server, ServerError};

pub mod api;
mod cluster;
mod dashboard;
pub mod files;
mod housekeeping;
mod hub;
mod metrics;
mod provision;
pub mod schedules;
mod server;
mod state;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "testing")]
#[path = "testing_pg.rs"]
pub mod testing_pg;
#[cfg(feature = "testing")]
#[path = "testing_s3.rs"]
pub mod testing_s3;
pub mod waiting;

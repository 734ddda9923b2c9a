//! drover's agent: registers with a server, keeps one long-poll open, runs leased jobs
//! (shell, process, script) in their own workspaces and process groups (docker jobs in
//! containers through the Docker Engine API), spools and ships
//! their output line by line, and reports how they ended.
//!
//! Entry point: [`run`] with an [`AgentConfig`] and [`AgentSignals`]; the CLI installs
//! the real signal handlers with [`install_signal_handlers`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

mod agent;
mod attempt;
mod client;
mod docker;
mod executor;
mod fence;
mod files;
mod finisher;
mod host;
mod identity;
mod layout;
mod output;
mod pipeline;
mod process;
mod python;
mod recycle;
mod report;
mod resume;
mod spool;

pub use client::CallError;
pub use fence::{watchdog_main, WatchdogArgs};

/// Resolved agent configuration (the CLI fills it from flags, env and file).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:7070`.
    pub server: String,
    /// Join token used to register.
    pub token: String,
    /// Name shown in `drover agents`.
    pub name: String,
    /// Labels beyond the automatic `os` and `arch`.
    pub labels: drover_core::labels::Labels,
    /// Queues to take jobs from; empty means `default`.
    pub queues: Vec<String>,
    /// Most jobs run at once.
    pub slots: u32,
    /// Holds workspaces (`workspaces/`), log spools (`spool/`), a record of each running
    /// attempt (`attempts/`) and the agent's identity (`identity.json`); one agent per
    /// work dir. At start, jobs an earlier run left running are stopped and its spools
    /// deleted, and the agent registers again under the identity it had.
    pub work_dir: PathBuf,
    /// How long running jobs may go on after SIGTERM before they are canceled.
    pub shutdown_timeout: Duration,
    /// Exit once the first leased job(s) finished.
    pub exit_after_job: bool,
    /// Keep each job's workspace after it ended.
    pub keep_workspaces: bool,
    /// Most unshipped log bytes kept on disk per attempt before lines are dropped.
    pub spool_limit_bytes: u64,
    /// Most output bytes kept per attempt; later output is discarded (the job runs on).
    pub output_cap_bytes: u64,
    /// Mounts (`host:container[:ro]`) added to every docker job's container.
    pub docker_mounts: Vec<String>,
    /// When set, each job's log lines are also appended to
    /// `<dir>/jobs/<job_id>/logs/<job_id>.log`.
    pub job_log_dir: Option<PathBuf>,
    /// Keep docker jobs' containers after they ended (for debugging).
    pub keep_containers: bool,
    /// The Docker engine's unix socket; None means `/var/run/docker.sock`. (The CLI
    /// resolves `DOCKER_HOST`; this crate does not read the environment.)
    pub docker_socket: Option<PathBuf>,
    /// A PEM CA certificate to trust for an `https://` server (besides the system roots).
    pub ca_file: Option<PathBuf>,
    /// The environment every job starts from, before its own env, secrets and
    /// `DROVER_JOB_ID` and friends; build it with [`job_env`] so that drover's own
    /// settings and credentials never reach a job.
    pub job_env: Vec<(OsString, OsString)>,
    /// How to start the watchdog process (a program and its first arguments, e.g. the
    /// `drover` binary and `agent-watchdog`; it must call [`watchdog_main`]). It stops
    /// this agent's jobs when the agent dies or freezes past its leases. None: jobs of a
    /// killed agent are stopped when it restarts, those of a frozen one not at all.
    pub watchdog: Option<Vec<OsString>>,
    /// Longest a URL input may take to download.
    pub input_timeout: Duration,
    /// Largest input (an upload or a URL) the agent puts into a workspace.
    pub input_max_bytes: u64,
    /// How long a job's start waits to be reported: a job whose output ends within it
    /// reports its start, its log and its end in one request, instead of three.
    pub start_hold: Duration,
}

impl AgentConfig {
    /// Defaults: name = host name, slots = CPU count, shutdown 5 min, spool 1 GiB,
    /// output cap 4 GiB, inputs up to 10 GiB within 10 min, queue `default`, Docker at `/var/run/docker.sock` with no default
    /// mounts, containers removed after their job, no job log mirror, starts held 20 ms.
    pub fn new(
        server: impl Into<String>,
        token: impl Into<String>,
        work_dir: impl Into<PathBuf>,
    ) -> Self {
        AgentConfig {
            server: server.into(),
            token: token.into(),
            name: host::hostname(),
            labels: Default::default(),
            queues: Vec::new(),
            slots: host::cpu_count(),
            work_dir: work_dir.into(),
            shutdown_timeout: Duration::from_secs(300),
            exit_after_job: false,
            keep_workspaces: false,
            spool_limit_bytes: 1 << 30,
            output_cap_bytes: 4 << 30,
            docker_mounts: Vec::new(),
            job_log_dir: None,
            keep_containers: false,
            docker_socket: None,
            ca_file: None,
            job_env: job_env(std::env::vars_os(), &[]),
            watchdog: None,
            input_timeout: Duration::from_secs(600),
            input_max_bytes: 10 << 30,
            start_hold: Duration::from_millis(20),
        }
    }
}

/// The host environment a job may see: `vars` without any `DROVER_*` variable (the
/// agent's own configuration and its join token), and, when `allow` is not empty, only
/// the names it lists (`NAME`, or a prefix ending in `*` such as `LC_*`).
pub fn job_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    allow: &[String],
) -> Vec<(OsString, OsString)> {
    let allowed = |name: &str| {
        allow.is_empty()
            || allow.iter().any(|a| match a.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == a,
            })
    };
    vars.into_iter()
        .filter(|(k, _)| {
            let name = k.to_string_lossy();
            !name.starts_with("DROVER_") && allowed(&name)
        })
        .collect()
}

/// Requests to wind the agent down, usually from signals.
#[derive(Debug, Clone, Default)]
pub struct AgentSignals {
    /// SIGTERM/SIGINT: stop leasing, let jobs finish up to `shutdown_timeout`, then stop
    /// them and send them back to the queue (error `agent_shutdown`; the interrupted
    /// attempt does not count against the job's attempts).
    pub drain: CancellationToken,
    /// SIGUSR1: stop leasing, let current jobs finish, exit.
    pub finish: CancellationToken,
    /// A second SIGTERM/SIGINT: kill every job now and report it `failed` with `force-stop`.
    pub force: CancellationToken,
}

/// How the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentExit {
    /// Every job finished on its own (drain or SIGUSR1). Exit code 0.
    Drained,
    /// The shutdown timeout passed and running jobs were stopped and sent back to the
    /// queue. Exit code 2.
    ShutdownCanceledJobs,
    /// `exit_after_job` and the job finished. Exit code 0.
    FinishedAfterJob,
    /// Force-stopped; running jobs were killed. Exit code 3.
    ForceStopped,
}

impl AgentExit {
    /// The process exit code: 0 for `Drained` and `FinishedAfterJob`, 2 for
    /// `ShutdownCanceledJobs`, 3 for `ForceStopped`.
    pub fn code(&self) -> i32 {
        match self {
            AgentExit::Drained | AgentExit::FinishedAfterJob => 0,
            AgentExit::ShutdownCanceledJobs => 2,
            AgentExit::ForceStopped => 3,
        }
    }
}

/// Why the agent could not run at all (network trouble is retried, never an error).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The work directory could not be prepared.
    #[error("cannot prepare the work directory {path}: {source}")]
    WorkDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The CA file could not be read or is not a PEM certificate.
    #[error("cannot use the CA file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    /// The server refused registration (e.g. a wrong join token).
    #[error("the server refused to register this agent: {0}")]
    Register(#[source] CallError),
}

/// Runs the agent until `signals` end it; see [`AgentExit`] for how it can end.
pub async fn run(config: AgentConfig, signals: AgentSignals) -> Result<AgentExit, AgentError> {
    agent::run(config, signals).await
}

/// Maps the first SIGTERM/SIGINT to `drain`, the second to `force`, and SIGUSR1 to
/// `finish`. Call it inside a tokio runtime; a handler that cannot be installed is logged.
pub fn install_signal_handlers() -> AgentSignals {
    use tokio::signal::unix::{signal, SignalKind};
    let signals = AgentSignals::default();
    let s = signals.clone();
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    let usr1 = signal(SignalKind::user_defined1());
    tokio::spawn(async move {
        let (mut term, mut int, mut usr1) = match (term, int, usr1) {
            (Ok(t), Ok(i), Ok(u)) => (t, i, u),
            (t, i, u) => {
                let err = [t.err(), i.err(), u.err()].into_iter().flatten().next();
                tracing::error!(error = ?err, "cannot install signal handlers");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
                _ = usr1.recv() => {
                    tracing::info!("SIGUSR1: finishing current jobs, then exiting");
                    s.finish.cancel();
                    continue;
                }
            }
            if s.drain.is_cancelled() {
                tracing::warn!("second signal: force-stop");
                s.force.cancel();
                return;
            }
            tracing::info!("signal: draining");
            s.drain.cancel();
        }
    });
    signals
}

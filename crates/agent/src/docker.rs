//! The Docker executor: [`DockerExecutor`] runs a docker job in a container, on one
//! [`Engine`] per agent (a lazily connected, version-negotiated bollard client), with
//! one [`Container`] per attempt that owns its container the way `process::JobProcess`
//! owns a process group: create (image pull policy, GPU fallback), start, follow its
//! output, supervise it (exit, timeout, stop requests: engine stop with the grace
//! period, then kill), and remove it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerState, DeviceRequest, HostConfig, Mount, MountType, SystemVersion,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, KillContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use drover_core::api::{Gpus, Lease};
use drover_core::spec::{quote_words, shell_quote, DockerCommand, DockerSpec};
use drover_core::Outcome;
use futures::StreamExt;
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::sync::{watch, OnceCell};
use tokio::task::JoinHandle;

use crate::attempt::AttemptCtx;
use crate::executor::{
    limits, stopped_outcome, Ending, Executor, NotStarted, RunningJob, Started as JobStarted,
    StopRx,
};
use crate::fence;
use crate::layout::AttemptFiles;
use crate::pipeline::LogPipeline;
use crate::process::{wait_stop, StopReason};
use crate::recycle::WorkspacePool;

/// What docker attempts need from the agent.
pub struct DockerCtx {
    pub engine: std::sync::Arc<Engine>,
    /// Put on the agent's containers' `drover.agent` label: its name and work dir.
    pub agent: String,
    /// Default mounts for every container.
    pub mounts: Vec<String>,
    pub keep_containers: bool,
}

/// Runs a docker job in a container.
pub struct DockerExecutor<'a> {
    ctx: &'a AttemptCtx,
    files: &'a AttemptFiles,
    spec: &'a DockerSpec,
}

impl<'a> DockerExecutor<'a> {
    pub fn new(ctx: &'a AttemptCtx, files: &'a AttemptFiles, spec: &'a DockerSpec) -> Self {
        DockerExecutor { ctx, files, spec }
    }
}

impl<'a> Executor for DockerExecutor<'a> {
    type Job = DockerJob<'a>;

    /// As for a process, but open to every user, since the container may run as a user
    /// other than the agent's (its parent folders stay private to the agent).
    fn prepare(files: &AttemptFiles, pool: &WorkspacePool) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        crate::process::ProcessExecutor::prepare(files, pool)?;
        for dir in [files.workspace.clone(), files.meta()] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
        }
        Ok(())
    }

    async fn start(
        &self,
        logs: &LogPipeline,
        stop: &mut StopRx,
    ) -> Result<JobStarted<DockerJob<'a>>, NotStarted> {
        let (lease, docker) = (&self.ctx.lease, &self.ctx.docker);
        let cspec = ContainerSpec::new(
            lease,
            self.spec,
            &docker.agent,
            &docker.mounts,
            &self.files.workspace,
        );
        logs.system(&format!("$ {}", cspec.display(self.spec)))
            .await;
        let record = fence::Record {
            job_id: lease.job_id.clone(),
            attempt: lease.attempt,
            pgid: None,
            start_time: None,
            container: Some(cspec.name.clone()),
            deadline_ms: self.ctx.deadline_ms,
            ended: None,
            tail: Vec::new(),
        };
        let path = self.files.record.clone();
        let _ = tokio::task::spawn_blocking(move || fence::keep_record(&path, &record)).await;
        // Pulling can take long: a stop request meanwhile ends the attempt.
        let created = tokio::select! {
            s = docker.engine.create_and_start(&cspec) => s,
            r = wait_stop(stop, |_| true) => {
                docker.engine.remove_container(&cspec.name).await;
                return Err(NotStarted::Stopped(r));
            }
        };
        let Started {
            container,
            notes,
            gpus,
        } = created.map_err(NotStarted::Failed)?;
        tracing::info!(container = %container.name, "container started");
        let (stdout, stderr, follower) = container.follow_output();
        Ok(JobStarted {
            job: DockerJob {
                container,
                follower,
                gpus,
                spec: self.spec,
                keep: docker.keep_containers,
            },
            stdout: Box::new(stdout),
            stderr: Box::new(stderr),
            notes,
        })
    }
}

/// A started container and the task following its output.
pub struct DockerJob<'a> {
    container: Container,
    follower: JoinHandle<()>,
    gpus: Option<Gpus>,
    spec: &'a DockerSpec,
    keep: bool,
}

impl RunningJob for DockerJob<'_> {
    async fn supervise(&mut self, lease: &Lease, stop: &mut StopRx) -> Ending {
        let (timeout, grace) = limits(lease);
        let ended = self.container.supervise(timeout, grace, stop).await;
        Ending {
            gpus: self.gpus,
            ..ending(&ended, lease, self.spec)
        }
    }

    async fn release(self) {
        self.follower.abort();
        if !self.keep {
            self.container.remove().await;
        }
    }
}

/// Outcome, exit code and error for how a container ended.
fn ending(ended: &ContainerEnded, lease: &Lease, spec: &DockerSpec) -> Ending {
    let exit_code = ended
        .exit_code
        .map(|c| c.clamp(i32::MIN as i64, i32::MAX as i64) as i32);
    let (outcome, error) = match (ended.stopped, exit_code) {
        (Some(reason), _) => {
            let (o, e) = stopped_outcome(reason, lease);
            (o, Some(e))
        }
        _ if ended.oom_killed => {
            let error = match spec.memory {
                Some(m) => {
                    format!("out of memory (container exceeded its memory limit of {m} bytes)")
                }
                None => "out of memory (the kernel's OOM killer stopped the container)".into(),
            };
            (Outcome::Failed, Some(error))
        }
        // The engine learns of OOM kills from an event that can be lost when the
        // container exits at once (seen under load): a SIGKILL nobody here sent to a
        // container with a memory limit is that limit, most likely.
        (None, Some(137)) if spec.memory.is_some() => (
            Outcome::Failed,
            Some(format!(
                "out of memory, most likely (killed by SIGKILL with a memory limit of {} bytes; the engine did not confirm an OOM kill)",
                spec.memory.unwrap_or_default()
            )),
        ),
        (None, Some(0)) => (Outcome::Succeeded, None),
        (None, Some(code)) => (Outcome::Failed, Some(format!("exit code {code}"))),
        (None, None) => (
            Outcome::Failed,
            Some("lost track of the container".to_string()),
        ),
    };
    Ending {
        outcome,
        exit_code,
        error,
        stopped: ended.stopped,
        gpus: None,
    }
}

/// Where the engine listens when the agent is not told otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// Label keys put on every container the agent creates.
pub const LABEL_JOB: &str = "drover.job";
pub const LABEL_ATTEMPT: &str = "drover.attempt";
pub const LABEL_AGENT: &str = "drover.agent";
/// How long the engine may take to answer a version probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// bollard's per-request timeout; long because `stop` answers after the grace period.
const CLIENT_TIMEOUT_S: u64 = 24 * 3600;
/// How long the agent waits for a container that was killed to be reported exited.
const EXIT_AFTER_KILL: Duration = Duration::from_secs(30);
/// Bytes buffered between the log stream and the line pumps.
const PIPE_BYTES: usize = 64 * 1024;

/// The agent's connection to the Docker engine, set up on first use.
#[derive(Debug)]
pub struct Engine {
    socket: PathBuf,
    client: OnceCell<Ready>,
}

#[derive(Debug, Clone)]
struct Ready {
    docker: Docker,
    version: String,
}

impl Engine {
    /// An engine at `socket` (a unix socket path; `unix://` is accepted); nothing is
    /// contacted yet.
    pub fn new(socket: Option<&Path>) -> Engine {
        let socket = socket
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        Engine {
            socket,
            client: OnceCell::new(),
        }
    }

    /// The socket path, for messages.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Connects and negotiates the API version (once; a failure is retried next time).
    /// The error reads `cannot reach the Docker engine at PATH: …`.
    async fn ready(&self) -> Result<&Ready, String> {
        self.client
            .get_or_try_init(|| async {
                let unreachable = |e: &dyn std::fmt::Display| {
                    format!(
                        "cannot reach the Docker engine at {}: {e}",
                        self.socket.display()
                    )
                };
                let path = self.socket.to_string_lossy().into_owned();
                let docker =
                    Docker::connect_with_unix(&path, CLIENT_TIMEOUT_S, API_DEFAULT_VERSION)
                        .map_err(|e| unreachable(&e))?;
                let probe = async {
                    let docker = docker.negotiate_version().await?;
                    let version: SystemVersion = docker.version().await?;
                    Ok::<_, BollardError>((docker, version))
                };
                let (docker, version) = tokio::time::timeout(PROBE_TIMEOUT, probe)
                    .await
                    .map_err(|_| unreachable(&"no answer within 5s"))?
                    .map_err(|e| unreachable(&e))?;
                let version = version.version.unwrap_or_else(|| "unknown".into());
                Ok(Ready { docker, version })
            })
            .await
    }

    /// The engine's version when it answers.
    pub async fn version(&self) -> Result<String, String> {
        Ok(self.ready().await?.version.clone())
    }

    /// Every container labelled as this agent's. Listed at agent start, before the first
    /// poll, when the agent runs none: each one is an orphan of an earlier run.
    pub async fn orphans(&self, agent: &str) -> Result<Vec<Orphan>, String> {
        let docker = &self.ready().await?.docker;
        let filters =
            HashMap::from([("label".to_string(), vec![format!("{LABEL_AGENT}={agent}")])]);
        let list = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| format!("cannot list containers: {e}"))?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                Some(Orphan {
                    id: c.id?,
                    name: c.names.unwrap_or_default().join(","),
                    running: c.state.map(|s| s.to_string()) == Some("running".into()),
                    job_id: labels.get(LABEL_JOB).cloned().unwrap_or_default(),
                    attempt: labels.get(LABEL_ATTEMPT).cloned().unwrap_or_default(),
                })
            })
            .collect())
    }

    /// Stops and removes `orphans` (found by [`Engine::orphans`]); with `keep_stopped`,
    /// those that already exited are left for debugging and running ones only killed.
    /// Returns how many it acted on.
    pub async fn remove_orphans(
        &self,
        orphans: Vec<Orphan>,
        keep_stopped: bool,
    ) -> Result<usize, String> {
        let docker = &self.ready().await?.docker;
        let mut removed = 0;
        for c in orphans {
            if keep_stopped && !c.running {
                continue;
            }
            tracing::warn!(
                container = %c.name,
                job_id = %c.job_id,
                attempt = %c.attempt,
                "removing an orphaned container of this agent"
            );
            if keep_stopped {
                let _ = docker
                    .kill_container(&c.id, None::<KillContainerOptions>)
                    .await;
            } else {
                remove(docker, &c.id).await;
            }
            removed += 1;
        }
        Ok(removed)
    }
}

/// A container an earlier run of this agent left behind.
#[derive(Debug, Clone)]
pub struct Orphan {
    id: String,
    name: String,
    running: bool,
    job_id: String,
    attempt: String,
}

/// Force-removes a container (and its anonymous volumes); a missing one is fine.
async fn remove(docker: &Docker, name: &str) {
    let opts = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(name, Some(opts)).await {
        Ok(()) => {}
        Err(e) if status_of(&e) == Some(404) => {}
        Err(e) => tracing::warn!(container = name, error = %e, "cannot remove container"),
    }
}

fn status_of(e: &BollardError) -> Option<u16> {
    match e {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's message for an error, without bollard's wrapping.
fn message_of(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { message, .. } => message.trim().to_string(),
        other => other.to_string(),
    }
}

/// Where a container sees its attempt's workspace (inputs, artifacts, the progress and
/// result files): a path no image is likely to use for anything else.
pub const CONTAINER_WORKSPACE: &str = "/drover/workspace";

/// What the container is created from.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub pull: Pull,
    pub body: ContainerCreateBody,
    /// Whether the job asked for GPUs, and whether it must have them.
    pub gpus: Option<DeviceRequest>,
    pub gpus_required: bool,
}

/// The image pull policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    IfNotPresent,
    Always,
    Never,
}

impl ContainerSpec {
    /// Builds the container for `lease`'s docker spec with the agent's default mounts
    /// and the attempt's `workspace` at [`CONTAINER_WORKSPACE`].
    pub fn new(
        lease: &Lease,
        spec: &DockerSpec,
        agent: &str,
        default_mounts: &[String],
        workspace: &Path,
    ) -> Self {
        let name = container_name(&lease.job_id, lease.attempt);
        let env: Vec<String> = crate::layout::lease_env(lease, Path::new(CONTAINER_WORKSPACE))
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let (entrypoint, cmd) = match (&spec.command, &spec.entrypoint) {
            (Some(DockerCommand::Line(line)), None) => (
                Some(vec!["/bin/sh".to_string(), "-c".to_string()]),
                Some(vec![line.clone()]),
            ),
            (Some(DockerCommand::Line(line)), Some(ep)) => (
                Some(ep.clone()),
                Some(vec!["/bin/sh".to_string(), "-c".to_string(), line.clone()]),
            ),
            (Some(DockerCommand::Argv(argv)), ep) => (ep.clone(), Some(argv.clone())),
            (None, ep) => (ep.clone(), None),
        };
        let labels = HashMap::from([
            (LABEL_JOB.to_string(), lease.job_id.clone()),
            (LABEL_ATTEMPT.to_string(), lease.attempt.to_string()),
            (LABEL_AGENT.to_string(), agent.to_string()),
        ]);
        let own = format!("{}:{CONTAINER_WORKSPACE}", workspace.display());
        let mounts = std::iter::once(&own)
            .chain(default_mounts)
            .chain(spec.volumes.iter())
            .map(|v| mount(v))
            .collect();
        let memory = spec.memory.map(|m| m.min(i64::MAX as u64) as i64);
        let host_config = HostConfig {
            mounts: Some(mounts),
            network_mode: spec.network.clone(),
            nano_cpus: spec.cpus.map(|c| (c * 1e9).round() as i64),
            memory,
            // No swap beyond the limit: a job over its memory is OOM-killed, not slowed.
            memory_swap: memory,
            ..Default::default()
        };
        let gpus = spec.gpus.as_ref().map(|g| DeviceRequest {
            driver: Some("nvidia".into()),
            count: Some(g.as_i64().unwrap_or(-1)),
            capabilities: Some(vec![vec!["gpu".into()]]),
            ..Default::default()
        });
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd,
            entrypoint,
            env: Some(env),
            working_dir: Some(
                spec.workdir
                    .clone()
                    .unwrap_or_else(|| CONTAINER_WORKSPACE.to_string()),
            ),
            user: spec.user.clone(),
            labels: Some(labels),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            open_stdin: Some(false),
            host_config: Some(host_config),
            ..Default::default()
        };
        let pull = match spec.pull.as_deref() {
            Some("always") => Pull::Always,
            Some("never") => Pull::Never,
            _ => Pull::IfNotPresent,
        };
        ContainerSpec {
            name,
            image: spec.image.clone(),
            pull,
            body,
            gpus,
            gpus_required: spec.gpus_required,
        }
    }

    /// `docker run …` as a user would type it, for the log header.
    pub fn display(&self, spec: &DockerSpec) -> String {
        let mut words = vec!["docker run --name".to_string(), self.name.clone()];
        let host = self.body.host_config.as_ref();
        for m in host.and_then(|h| h.mounts.as_ref()).into_iter().flatten() {
            let ro = if m.read_only == Some(true) { ":ro" } else { "" };
            let (src, dst) = (m.source.as_deref(), m.target.as_deref());
            words.push(format!(
                "-v {}:{}{ro}",
                src.unwrap_or(""),
                dst.unwrap_or("")
            ));
        }
        if let Some(w) = &spec.workdir {
            words.push(format!("-w {w}"));
        }
        if let Some(u) = &spec.user {
            words.push(format!("-u {u}"));
        }
        if let Some(n) = &spec.network {
            words.push(format!("--network {n}"));
        }
        if let Some(c) = spec.cpus {
            words.push(format!("--cpus {c}"));
        }
        if let Some(m) = spec.memory {
            words.push(format!("--memory {m}"));
        }
        if let Some(g) = &spec.gpus {
            words.push(format!(
                "--gpus {}",
                g.as_str().map_or(g.to_string(), str::to_string)
            ));
        }
        if let Some(ep) = &spec.entrypoint {
            words.push(format!("--entrypoint {}", quote_words(ep)));
        }
        words.push(spec.image.clone());
        match &spec.command {
            Some(DockerCommand::Line(l)) => words.push(shell_quote(l)),
            Some(DockerCommand::Argv(a)) => words.extend(a.iter().map(|w| shell_quote(w))),
            None => {}
        }
        words.join(" ")
    }
}

/// `drover-<job>-<attempt>`, with characters the engine refuses replaced.
pub fn container_name(job_id: &str, attempt: u32) -> String {
    let safe: String = job_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("drover-{safe}-{attempt}")
}

/// `host:container[:ro|rw]`: an absolute host path is a bind mount (a missing path is an
/// engine error, not a new empty folder), anything else a named volume.
fn mount(v: &str) -> Mount {
    let mut parts = v.splitn(3, ':');
    let source = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let read_only = parts.next() == Some("ro");
    let typ = if source.starts_with('/') {
        MountType::BIND
    } else {
        MountType::VOLUME
    };
    Mount {
        source: Some(source),
        target: Some(target),
        read_only: Some(read_only),
        typ: Some(typ),
        ..Default::default()
    }
}

/// A created and started container; remove it with [`Container::remove`].
pub struct Container {
    docker: Docker,
    pub name: String,
}

/// What `create_and_start` has to say besides the container.
pub struct Started {
    pub container: Container,
    /// Notes for the job's log (e.g. GPUs were not available).
    pub notes: Vec<String>,
    /// For a job that asked for GPUs: whether it got them.
    pub gpus: Option<Gpus>,
}

/// How supervision ended.
#[derive(Debug)]
pub struct ContainerEnded {
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub stopped: Option<StopReason>,
}

impl Engine {
    /// Kills the container called `name` and keeps it; true when the engine did.
    pub async fn kill_container(&self, name: &str) -> bool {
        match self.ready().await {
            Ok(ready) => ready
                .docker
                .kill_container(name, None::<KillContainerOptions>)
                .await
                .is_ok(),
            Err(_) => false,
        }
    }

    /// Force-removes the container called `name`, if the engine answers and it exists.
    pub async fn remove_container(&self, name: &str) {
        if let Ok(ready) = self.ready().await {
            remove(&ready.docker, name).await;
        }
    }

    /// Makes sure the image is there (pull policy), creates and starts the container,
    /// retrying without GPUs when the engine cannot provide them and the job allows it.
    /// The error is the job's error message.
    pub async fn create_and_start(&self, spec: &ContainerSpec) -> Result<Started, String> {
        let docker = self.ready().await?.docker.clone();
        ensure_image(&docker, &spec.image, spec.pull).await?;
        // A container of this very attempt can only be a leftover of ours.
        remove(&docker, &spec.name).await;
        let mut notes = Vec::new();
        let with_gpus = spec.gpus.is_some();
        let gpus = match create_start(&docker, spec, with_gpus).await {
            Ok(()) => with_gpus.then_some(Gpus::Granted),
            Err(e) if with_gpus && !spec.gpus_required && is_gpu_error(&e) => {
                remove(&docker, &spec.name).await;
                notes.push(format!(
                    "[drover] the Docker engine cannot provide the requested GPUs ({e}); running without GPUs"
                ));
                create_start(&docker, spec, false).await?;
                Some(Gpus::Unavailable)
            }
            Err(e) => return Err(e),
        };
        Ok(Started {
            container: Container {
                docker,
                name: spec.name.clone(),
            },
            notes,
            gpus,
        })
    }
}

async fn create_start(
    docker: &Docker,
    spec: &ContainerSpec,
    with_gpus: bool,
) -> Result<(), String> {
    let mut body = spec.body.clone();
    if with_gpus {
        if let Some(h) = body.host_config.as_mut() {
            h.device_requests = spec.gpus.clone().map(|g| vec![g]);
        }
    }
    let opts = CreateContainerOptions {
        name: Some(spec.name.clone()),
        ..Default::default()
    };
    docker
        .create_container(Some(opts), body)
        .await
        .map_err(|e| format!("cannot create the container: {}", message_of(&e)))?;
    if let Err(e) = docker.start_container(&spec.name, None).await {
        remove(docker, &spec.name).await;
        return Err(format!("cannot start the container: {}", message_of(&e)));
    }
    Ok(())
}

fn is_gpu_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("device driver") || m.contains("gpu") || m.contains("nvidia")
}

async fn ensure_image(docker: &Docker, image: &str, pull: Pull) -> Result<(), String> {
    let present = match docker.inspect_image(image).await {
        Ok(_) => true,
        Err(e) if status_of(&e) == Some(404) => false,
        Err(e) => {
            return Err(format!(
                "cannot inspect image {image:?}: {}",
                message_of(&e)
            ))
        }
    };
    match (pull, present) {
        (Pull::Never, false) => Err(format!(
            "image {image:?} is not present and pull is \"never\""
        )),
        (Pull::Never, true) | (Pull::IfNotPresent, true) => Ok(()),
        (Pull::Always, _) | (Pull::IfNotPresent, false) => pull_image(docker, image).await,
    }
}

async fn pull_image(docker: &Docker, image: &str) -> Result<(), String> {
    tracing::info!(image, "pulling image");
    let (from, tag) = split_tag(image);
    let opts = CreateImageOptions {
        from_image: Some(from.to_string()),
        tag: tag.map(str::to_string),
        ..Default::default()
    };
    let mut stream = docker.create_image(Some(opts), None, None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(err) = info.error_detail.and_then(|d| d.message) {
                    return Err(format!("cannot pull image {image:?}: {err}"));
                }
            }
            Err(e) => return Err(format!("cannot pull image {image:?}: {}", message_of(&e))),
        }
    }
    Ok(())
}

/// `name[:tag]` → (name, tag); a name without tag or digest pulls `latest` (not every tag).
fn split_tag(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(i) => (&image[..last_slash + i], Some(&image[last_slash + i + 1..])),
        None => (image, Some("latest")),
    }
}

impl Container {
    /// Follows the container's stdout and stderr into two pipes for the line pumps; the
    /// task ends (closing both) when the container's output ends.
    pub fn follow_output(&self) -> (DuplexStream, DuplexStream, JoinHandle<()>) {
        let (mut out_w, out_r) = tokio::io::duplex(PIPE_BYTES);
        let (mut err_w, err_r) = tokio::io::duplex(PIPE_BYTES);
        let opts = LogsOptions {
            follow: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut stream = self.docker.logs(&self.name, Some(opts));
        let name = self.name.clone();
        let task = tokio::spawn(async move {
            use bollard::container::LogOutput;
            while let Some(item) = stream.next().await {
                let written = match item {
                    Ok(LogOutput::StdErr { message }) => err_w.write_all(&message).await,
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        out_w.write_all(&message).await
                    }
                    Ok(LogOutput::StdIn { .. }) => Ok(()),
                    Err(e) => {
                        tracing::warn!(container = %name, error = %e, "reading container output failed");
                        break;
                    }
                };
                if written.is_err() {
                    break;
                }
            }
            let _ = out_w.shutdown().await;
            let _ = err_w.shutdown().await;
        });
        (out_r, err_r, task)
    }

    /// Waits for the container to exit, time out or be stopped. Stops it with the engine's
    /// stop (SIGTERM, `grace`, SIGKILL) or kills it at once for immediate reasons.
    pub async fn supervise(
        &self,
        timeout: Option<Duration>,
        grace: Duration,
        stop: &mut watch::Receiver<Option<StopReason>>,
    ) -> ContainerEnded {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut reason = tokio::select! {
            _ = self.wait_exit() => return self.ended(None).await,
            _ = sleep_until_opt(deadline) => StopReason::TimedOut,
            r = wait_stop(stop, |_| true) => r,
        };
        if reason.is_immediate() {
            self.kill().await;
        } else {
            let t = grace.as_millis().div_ceil(1000).min(i32::MAX as u128) as i32;
            tracing::info!(?reason, grace_s = t, "stopping the container");
            let opts = StopContainerOptions {
                t: Some(t),
                ..Default::default()
            };
            tokio::select! {
                r = self.docker.stop_container(&self.name, Some(opts)) => {
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "engine stop failed; killing the container");
                        self.kill().await;
                    }
                }
                r = wait_stop(stop, StopReason::is_immediate) => {
                    reason = r;
                    self.kill().await;
                }
            }
        }
        if tokio::time::timeout(EXIT_AFTER_KILL, self.wait_exit())
            .await
            .is_err()
        {
            tracing::warn!("the container did not exit after it was killed");
        }
        if let Some(later) = *stop.borrow() {
            if later.is_immediate() {
                reason = later;
            }
        }
        self.ended(Some(reason)).await
    }

    async fn kill(&self) {
        let opts = KillContainerOptions {
            signal: "SIGKILL".into(),
        };
        if let Err(e) = self.docker.kill_container(&self.name, Some(opts)).await {
            // 409: it is not running any more.
            if !matches!(status_of(&e), Some(404 | 409)) {
                tracing::warn!(error = %e, "cannot kill the container");
            }
        }
    }

    /// Resolves once the container is not running (the wait stream's status is read again
    /// from `inspect`, which also knows about OOM kills).
    async fn wait_exit(&self) {
        let mut waits = self.docker.wait_container(&self.name, None);
        match waits.next().await {
            Some(Ok(_)) | Some(Err(BollardError::DockerContainerWaitError { .. })) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "waiting for the container failed; polling it");
                while self.running().await {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            None => {}
        }
    }

    async fn running(&self) -> bool {
        match self.docker.inspect_container(&self.name, None).await {
            Ok(i) => i.state.and_then(|s| s.running).unwrap_or(false),
            Err(_) => false,
        }
    }

    async fn ended(&self, stopped: Option<StopReason>) -> ContainerEnded {
        let state = self.state().await;
        ContainerEnded {
            exit_code: state.as_ref().and_then(|s| s.exit_code),
            oom_killed: state.and_then(|s| s.oom_killed).unwrap_or(false),
            stopped,
        }
    }

    async fn state(&self) -> Option<ContainerState> {
        match self.docker.inspect_container(&self.name, None).await {
            Ok(i) => i.state,
            Err(e) => {
                tracing::warn!(error = %e, "cannot inspect the ended container");
                None
            }
        }
    }

    /// Removes the container (force; a running one is killed first).
    pub async fn remove(&self) {
        remove(&self.docker, &self.name).await;
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags_are_split_so_pulls_never_fetch_every_tag() {
        assert_eq!(split_tag("busybox"), ("busybox", Some("latest")));
        assert_eq!(split_tag("busybox:1.36"), ("busybox", Some("1.36")));
        assert_eq!(
            split_tag("localhost:5000/lab/sim"),
            ("localhost:5000/lab/sim", Some("latest"))
        );
        assert_eq!(
            split_tag("localhost:5000/lab/sim:v2"),
            ("localhost:5000/lab/sim", Some("v2"))
        );
        assert_eq!(split_tag("sim@sha256:abc"), ("sim@sha256:abc", None));
    }

    #[test]
    fn volumes_become_bind_mounts_or_named_volumes() {
        let m = mount("/data:/data:ro");
        assert_eq!(m.typ, Some(MountType::BIND));
        assert_eq!(m.read_only, Some(true));
        let m = mount("cache:/cache");
        assert_eq!(m.typ, Some(MountType::VOLUME));
        assert_eq!(m.read_only, Some(false));
        assert_eq!(m.target.as_deref(), Some("/cache"));
    }

    #[tokio::test]
    async fn a_missing_engine_is_named_with_its_socket() {
        let engine = Engine::new(Some(Path::new("/drover-nowhere/docker.sock")));
        let err = engine.version().await.unwrap_err();
        assert!(
            err.starts_with("cannot reach the Docker engine at /drover-nowhere/docker.sock: "),
            "{err}"
        );
    }

    #[test]
    fn container_names_are_safe() {
        assert_eq!(container_name("01J/x y", 2), "drover-01J_x_y-2");
    }
}

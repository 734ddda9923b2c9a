//! The process executor (shell, process and script jobs; `python` builds on it): one
//! struct owns each child process: it spawns the job in its own process group and
//! supervises it (exit, timeout, stop requests), escalating SIGTERM → grace → SIGKILL to
//! the whole group, and always kills the group at the end so no grandchild survives.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use drover_core::api::Lease;
use drover_core::{Exec, Outcome};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::sync::watch;

use crate::attempt::AttemptCtx;
use crate::executor::{
    limits, stopped_outcome, Ending, Executor, NotStarted, RunningJob, Started, StopRx,
};
use crate::fence;
use crate::layout::AttemptFiles;
use crate::pipeline::LogPipeline;
use crate::recycle::WorkspacePool;

/// Why the agent stopped a job before it exited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The job's timeout passed.
    TimedOut,
    /// A user canceled the job.
    Canceled,
    /// The agent's shutdown timeout passed while draining.
    Shutdown,
    /// The agent was told to stop at once.
    ForceStop,
    /// The server says the attempt is not current any more.
    Stale,
    /// The agent could not renew the lease in time: the server may give the job to
    /// another agent, so it must not run here any longer.
    LeaseLost,
}

impl StopReason {
    /// Reasons that skip the grace period and kill at once.
    pub fn is_immediate(self) -> bool {
        matches!(
            self,
            StopReason::ForceStop | StopReason::Stale | StopReason::LeaseLost
        )
    }
}

/// The sending side of an attempt's stop request; the first reason wins unless a later
/// one is immediate (force-stop, stale) and the first was not.
#[derive(Debug, Clone)]
pub struct Stopper {
    tx: Arc<watch::Sender<Option<StopReason>>>,
}

impl Default for Stopper {
    fn default() -> Self {
        Stopper {
            tx: Arc::new(watch::channel(None).0),
        }
    }
}

impl Stopper {
    /// Asks the attempt to stop for `reason`.
    pub fn stop(&self, reason: StopReason) {
        self.tx.send_if_modified(|cur| match cur {
            None => {
                *cur = Some(reason);
                true
            }
            Some(old) if reason.is_immediate() && !old.is_immediate() => {
                *cur = Some(reason);
                true
            }
            Some(_) => false,
        });
    }

    /// The reason asked for so far, if any.
    pub fn current(&self) -> Option<StopReason> {
        *self.tx.borrow()
    }

    /// A receiver for [`wait_stop`].
    pub fn subscribe(&self) -> watch::Receiver<Option<StopReason>> {
        self.tx.subscribe()
    }
}

/// Resolves when a stop is requested that `accept` takes; never if none comes.
pub async fn wait_stop(
    rx: &mut watch::Receiver<Option<StopReason>>,
    accept: impl Fn(StopReason) -> bool,
) -> StopReason {
    loop {
        if let Some(r) = *rx.borrow_and_update() {
            if accept(r) {
                return r;
            }
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What to start: a program, its arguments, where, and with which environment.
#[derive(Debug, Clone)]
pub struct SpawnSpec {
    pub program: String,
    pub args: Vec<String>,
    pub workspace: PathBuf,
    /// The host environment the job starts from (the agent's own is never inherited).
    pub base_env: Vec<(OsString, OsString)>,
    /// The job's own variables, set over `base_env`.
    pub env: Vec<(String, String)>,
}

impl SpawnSpec {
    /// The job's `PATH`: its own, else the host environment's.
    fn path(&self) -> Option<&OsStr> {
        let job = self.env.iter().rev().find(|(k, _)| k == "PATH");
        match job {
            Some((_, v)) => Some(OsStr::new(v)),
            None => self
                .base_env
                .iter()
                .rev()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.as_os_str()),
        }
    }

    /// The program as `execvp` would find it on the job's `PATH`. std spawns with
    /// `posix_spawn` (no copy of the agent's page tables, no TLB shootdowns across its
    /// threads) only when it need not search a `PATH` other than the agent's own; a
    /// program it cannot find here is passed on as given, to fail as it would have.
    fn resolved_program(&self) -> PathBuf {
        let Some(path) = self.path().filter(|_| !self.program.contains('/')) else {
            return PathBuf::from(&self.program);
        };
        std::env::split_paths(path)
            .map(|dir| match dir.as_os_str().is_empty() {
                // An empty entry is the current directory: the job's workspace.
                true => self.workspace.join(&self.program),
                false => dir.join(&self.program),
            })
            .find(|candidate| is_executable(candidate))
            .unwrap_or_else(|| PathBuf::from(&self.program))
    }
}

/// A regular file this process may execute.
fn is_executable(path: &Path) -> bool {
    path.metadata().is_ok_and(|m| m.is_file())
        && nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).is_ok()
}

/// A spawn that failed, with a message for the job's error field.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {program:?}: {reason}")]
pub struct SpawnError {
    pub program: String,
    pub reason: String,
}

/// How supervision ended.
#[derive(Debug)]
pub struct Ended {
    /// The main process's exit status (None if waiting for it failed).
    pub status: Option<ExitStatus>,
    /// Set when the agent stopped the job.
    pub stopped: Option<StopReason>,
}

/// A running job process and its process group.
pub struct JobProcess {
    child: Child,
    pgid: Pid,
}

impl JobProcess {
    /// Spawns `spec` in a new process group with stdin closed and stdout/stderr piped.
    /// Blocking: call it on a blocking thread inside the runtime (the pipes are
    /// registered with it).
    pub fn spawn_now(
        spec: SpawnSpec,
    ) -> Result<(JobProcess, ChildStdout, ChildStderr), SpawnError> {
        let program = spec.program.clone();
        let mut cmd = Command::new(spec.resolved_program());
        cmd.args(&spec.args)
            .current_dir(&spec.workspace)
            .env_clear()
            .envs(spec.base_env.iter().map(|(k, v)| (k, v)))
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| {
            let reason = match e.raw_os_error() {
                Some(code) => nix::errno::Errno::from_raw(code).desc().to_string(),
                None => e.to_string(),
            };
            SpawnError {
                program: program.clone(),
                reason,
            }
        })?;
        let pid = child.id().unwrap_or_default() as i32;
        let stdout = child.stdout.take().ok_or_else(|| SpawnError {
            program: program.clone(),
            reason: "stdout was not piped".into(),
        })?;
        let stderr = child.stderr.take().ok_or_else(|| SpawnError {
            program: program.clone(),
            reason: "stderr was not piped".into(),
        })?;
        Ok((
            JobProcess {
                child,
                pgid: Pid::from_raw(pid),
            },
            stdout,
            stderr,
        ))
    }

    /// The process id of the main process (also the process group id).
    pub fn pid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// Sends `signal` to the whole process group; a group that is gone is fine.
    pub fn signal_group(&self, signal: Signal) {
        if self.pgid.as_raw() <= 0 {
            return;
        }
        match killpg(self.pgid, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pgid = self.pgid.as_raw(), %signal, error = %e, "killpg failed")
            }
        }
    }

    /// Waits for the job to exit, time out or be stopped; stops it with SIGTERM, `grace`,
    /// SIGKILL (or SIGKILL at once for immediate reasons); always kills the group at the end.
    pub async fn supervise(
        &mut self,
        timeout: Option<Duration>,
        grace: Duration,
        stop: &mut watch::Receiver<Option<StopReason>>,
    ) -> Ended {
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let reason = tokio::select! {
            status = self.child.wait() => {
                self.signal_group(Signal::SIGKILL);
                return Ended { status: status.ok(), stopped: None };
            }
            _ = sleep_until_opt(deadline) => StopReason::TimedOut,
            r = wait_stop(stop, |_| true) => r,
        };
        let mut reason = reason;
        if reason.is_immediate() {
            self.signal_group(Signal::SIGKILL);
        } else {
            tracing::info!(
                ?reason,
                grace_ms = grace.as_millis() as u64,
                "stopping job: SIGTERM to its process group"
            );
            self.signal_group(Signal::SIGTERM);
            tokio::select! {
                _ = self.child.wait() => {}
                _ = tokio::time::sleep(grace) => {
                    tracing::info!("grace period over: SIGKILL to the process group");
                }
                r = wait_stop(stop, StopReason::is_immediate) => reason = r,
            }
            self.signal_group(Signal::SIGKILL);
        }
        let status = self.child.wait().await.ok();
        self.signal_group(Signal::SIGKILL);
        if let Some(later) = *stop.borrow() {
            if later.is_immediate() {
                reason = later;
            }
        }
        Ended {
            status,
            stopped: Some(reason),
        }
    }
}

impl Drop for JobProcess {
    fn drop(&mut self) {
        // Whatever happened to the supervisor, leave no process of this job behind.
        self.signal_group(Signal::SIGKILL);
    }
}

/// Runs a job as a program in its own process group, in the workspace.
pub struct ProcessExecutor<'a> {
    ctx: &'a AttemptCtx,
    files: &'a AttemptFiles,
    command: CommandFn,
}

/// The program and arguments of a job, worked out (blocking) in its prepared workspace:
/// a script's body, a Python call, is written to a file there first.
pub type CommandFn = fn(&Lease, &AttemptFiles) -> Result<(String, Vec<String>), String>;

impl<'a> ProcessExecutor<'a> {
    /// For shell, process and script jobs.
    pub fn new(ctx: &'a AttemptCtx, files: &'a AttemptFiles) -> Self {
        Self::with_command(ctx, files, command)
    }

    /// For jobs run by a program that `command` makes from the lease.
    pub fn with_command(ctx: &'a AttemptCtx, files: &'a AttemptFiles, command: CommandFn) -> Self {
        ProcessExecutor {
            ctx,
            files,
            command,
        }
    }
}

impl Executor for ProcessExecutor<'_> {
    type Job = ProcessJob;

    fn prepare(files: &AttemptFiles, pool: &WorkspacePool) -> std::io::Result<()> {
        pool.make(&files.workspace)
    }

    async fn start(
        &self,
        _logs: &LogPipeline,
        _stop: &mut StopRx,
    ) -> Result<Started<ProcessJob>, NotStarted> {
        let (lease, files) = (self.ctx.lease.clone(), self.files.clone());
        let (base_env, deadline_ms, command) =
            (self.ctx.job_env.clone(), self.ctx.deadline_ms, self.command);
        // Spawning forks and the record is a file: blocking work.
        let spawned = crate::executor::in_place(move || {
            spawn_recorded(&lease, &files, &base_env, deadline_ms, command)
        })
        .await
        .unwrap_or_else(Err);
        let (process, stdout, stderr) = spawned.map_err(NotStarted::Failed)?;
        tracing::info!(pid = process.pid(), "job process started");
        Ok(Started {
            job: ProcessJob { process },
            stdout: Box::new(stdout),
            stderr: Box::new(stderr),
            notes: self.ctx.lease.exec.log_header(),
        })
    }
}

/// A started job process.
pub struct ProcessJob {
    process: JobProcess,
}

impl RunningJob for ProcessJob {
    async fn supervise(&mut self, lease: &Lease, stop: &mut StopRx) -> Ending {
        let (timeout, grace) = limits(lease);
        let ended = self.process.supervise(timeout, grace, stop).await;
        let (outcome, exit_code, error) = outcome_of(&ended, lease);
        Ending {
            outcome,
            exit_code,
            error,
            stopped: ended.stopped,
            gpus: None,
        }
    }

    async fn release(self) {}
}

/// The program and arguments of a shell, process or script job.
fn command(lease: &Lease, files: &AttemptFiles) -> Result<(String, Vec<String>), String> {
    Ok(match &lease.exec {
        Exec::Shell { command } => (shell_program(), vec!["-c".to_string(), command.clone()]),
        Exec::Process { argv } => {
            let (first, rest) = argv.split_first().ok_or("process job has an empty argv")?;
            (first.clone(), rest.to_vec())
        }
        Exec::Script { interpreter, body } => {
            let path = files.meta().join("script");
            std::fs::write(&path, body)
                .map_err(|e| format!("cannot write the script file: {e}"))?;
            let mut words = interpreter.split_whitespace().map(str::to_string);
            let program = words.next().ok_or("script job has an empty interpreter")?;
            let mut args: Vec<String> = words.collect();
            args.push(path.to_string_lossy().into_owned());
            (program, args)
        }
        other => return Err(format!("{} jobs are not run as processes", other.kind())),
    })
}

/// Spawns the job in its prepared workspace and records it (blocking); the error is the
/// job's error message.
fn spawn_recorded(
    lease: &Lease,
    files: &AttemptFiles,
    base_env: &[(OsString, OsString)],
    deadline_ms: u64,
    command: CommandFn,
) -> Result<(JobProcess, ChildStdout, ChildStderr), String> {
    let (program, args) = command(lease, files)?;
    let spec = SpawnSpec {
        program,
        args,
        workspace: files.workspace.clone(),
        base_env: base_env.to_vec(),
        env: crate::layout::lease_env(lease, &files.workspace),
    };
    let spawned = JobProcess::spawn_now(spec).map_err(|e| e.to_string())?;
    let pid = spawned.0.pid();
    let record = fence::Record {
        job_id: lease.job_id.clone(),
        attempt: lease.attempt,
        pgid: Some(pid),
        start_time: fence::process_start_time(pid),
        container: None,
        deadline_ms,
        ended: None,
        tail: Vec::new(),
    };
    fence::keep_record(&files.record, &record);
    Ok(spawned)
}

/// Outcome, exit code and error for how the process ended.
fn outcome_of(ended: &Ended, lease: &Lease) -> (Outcome, Option<i32>, Option<String>) {
    let exit_code = ended
        .status
        .and_then(|s| s.code().or_else(|| s.signal().map(|sig| 128 + sig)));
    if let Some(reason) = ended.stopped {
        let (outcome, error) = stopped_outcome(reason, lease);
        return (outcome, exit_code, Some(error));
    }
    match ended.status {
        Some(s) if s.success() => (Outcome::Succeeded, Some(0), None),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => (
                Outcome::Failed,
                Some(code),
                Some(format!("exit code {code}")),
            ),
            (None, Some(sig)) => {
                let name = Signal::try_from(sig)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| sig.to_string());
                (
                    Outcome::Failed,
                    Some(128 + sig),
                    Some(format!("killed by signal {name}")),
                )
            }
            (None, None) => (
                Outcome::Failed,
                None,
                Some("ended without an exit status".into()),
            ),
        },
        None => (
            Outcome::Failed,
            None,
            Some("lost track of the job process".into()),
        ),
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Finds `bash` on PATH, else `sh`; looked up once (the agent's PATH does not change).
pub fn shell_program() -> String {
    static SHELL: std::sync::OnceLock<&str> = std::sync::OnceLock::new();
    SHELL
        .get_or_init(|| {
            let has_bash = std::env::var_os("PATH").is_some_and(|path| {
                std::env::split_paths(&path).any(|dir| dir.join("bash").is_file())
            });
            if has_bash {
                "bash"
            } else {
                "sh"
            }
        })
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(program: &str, args: &[&str]) -> SpawnSpec {
        SpawnSpec {
            program: program.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            workspace: std::env::temp_dir(),
            base_env: crate::job_env(std::env::vars_os(), &[]),
            env: vec![],
        }
    }

    async fn spawn(spec: SpawnSpec) -> Result<(JobProcess, ChildStdout, ChildStderr), SpawnError> {
        tokio::task::spawn_blocking(move || JobProcess::spawn_now(spec))
            .await
            .unwrap()
    }

    #[test]
    fn programs_are_looked_up_on_the_jobs_path() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, ws) = (dir.path().join("bin"), dir.path().join("ws"));
        for d in [&bin, &ws] {
            std::fs::create_dir(d).unwrap();
        }
        let write = |path: &Path, mode: u32| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write(&bin.join("tool"), 0o755);
        write(&bin.join("notes"), 0o644);
        write(&ws.join("local"), 0o755);
        let mut s = spec("tool", &[]);
        s.workspace = ws.clone();
        s.base_env = vec![("PATH".into(), "/nowhere".into())];
        // The job's PATH wins over the host's; the first executable match is taken.
        s.env = vec![("PATH".into(), format!("/nowhere:{}", bin.display()))];
        assert_eq!(s.resolved_program(), bin.join("tool"));
        // Not executable, or not found: passed on as given, to fail as execvp would.
        s.program = "notes".into();
        assert_eq!(s.resolved_program(), PathBuf::from("notes"));
        s.program = "local".into();
        assert_eq!(s.resolved_program(), PathBuf::from("local"));
        // An empty PATH entry is the job's workspace.
        s.env = vec![("PATH".into(), format!(":{}", bin.display()))];
        assert_eq!(s.resolved_program(), ws.join("local"));
        // A path is never looked up.
        s.program = "./tool".into();
        assert_eq!(s.resolved_program(), PathBuf::from("./tool"));
    }

    #[tokio::test]
    async fn missing_programs_give_a_clear_error() {
        let err = spawn(spec("drover-no-such-program", &[]))
            .await
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "cannot start \"drover-no-such-program\": No such file or directory"
        );
    }

    #[tokio::test]
    async fn stop_requests_terminate_the_group() {
        let (mut p, _o, _e) = spawn(spec("sh", &["-c", "sleep 1000 & sleep 1000"]))
            .await
            .unwrap();
        let stopper = Stopper::default();
        let mut rx = stopper.subscribe();
        stopper.stop(StopReason::Canceled);
        stopper.stop(StopReason::TimedOut);
        let ended = p.supervise(None, Duration::from_secs(5), &mut rx).await;
        assert_eq!(ended.stopped, Some(StopReason::Canceled));
        assert!(!ended.status.unwrap().success());
    }

    #[tokio::test]
    async fn immediate_reasons_override_earlier_ones() {
        let s = Stopper::default();
        s.stop(StopReason::Canceled);
        s.stop(StopReason::ForceStop);
        s.stop(StopReason::Stale);
        assert_eq!(s.current(), Some(StopReason::ForceStop));
    }
}

//! Runs one leased attempt end to end: workspace, spawn, `start`, supervision, logs and
//! progress (see `pipeline`), result file, outcome, `finish`, and clean-up. Docker jobs
//! take the same path with a container (see `docker`) in place of the process group.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_core::api::{FinishRequest, Gpus, Lease};
use drover_core::spec::DockerSpec;
use drover_core::{Exec, Outcome};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::client::Client;
use crate::docker::{ContainerEnded, ContainerSpec, Engine, Started};
use crate::fence;
use crate::files::{self, InputLimits};
use crate::layout::{self, AttemptFiles};
use crate::output::Masker;
use crate::pipeline::{LogPipeline, OutputTasks, SpoolFiles, StartResult};
use crate::process::{self, Ended, JobProcess, SpawnSpec, StopReason, Stopper};
use crate::report::{Abandoned, Reporter};
use crate::spool::SpoolLimits;

/// Largest result file accepted.
const MAX_RESULT_BYTES: u64 = 1024 * 1024;

/// Everything an attempt needs from the agent.
pub struct AttemptCtx {
    pub client: Arc<Client>,
    pub lease: Lease,
    pub work_dir: PathBuf,
    pub keep_workspace: bool,
    pub limits: SpoolLimits,
    pub stopper: Stopper,
    pub slots: Arc<Semaphore>,
    /// Cancelled when the agent stops retrying server calls (some time after force-stop).
    pub abandon: CancellationToken,
    pub docker: DockerCtx,
    /// Mirror the job's log to `<dir>/jobs/<job_id>/logs/<job_id>.log`.
    pub job_log_dir: Option<PathBuf>,
    /// The host environment jobs start from.
    pub job_env: Arc<Vec<(OsString, OsString)>>,
    /// The lease deadline (boot clock ms) when the attempt was leased.
    pub deadline_ms: u64,
    /// Limits on URL inputs.
    pub inputs: InputLimits,
}

/// What docker attempts need from the agent.
pub struct DockerCtx {
    pub engine: Arc<Engine>,
    /// Put on the agent's containers' `drover.agent` label: its name and work dir.
    pub agent: String,
    /// Default mounts for every container.
    pub mounts: Vec<String>,
    pub keep_containers: bool,
}

/// How an attempt ended, as the agent needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEnd {
    /// The outcome reported; None when nothing was reported (stale attempt).
    pub outcome: Option<Outcome>,
    /// The agent stopped the job (and why).
    pub stopped: Option<StopReason>,
}

/// Runs the attempt; never fails (problems end up in the finish report or the log).
pub async fn run(ctx: AttemptCtx) -> AttemptEnd {
    let span =
        tracing::info_span!("attempt", job_id = %ctx.lease.job_id, attempt = ctx.lease.attempt);
    async move {
        let end = run_inner(&ctx).await;
        tracing::info!(outcome = ?end.outcome, stopped = ?end.stopped, "attempt ended");
        end
    }
    .instrument(span)
    .await
}

async fn run_inner(ctx: &AttemptCtx) -> AttemptEnd {
    let mut stop_rx = ctx.stopper.subscribe();
    let _permit = tokio::select! {
        p = ctx.slots.clone().acquire_owned() => p.ok(),
        r = process::wait_stop(&mut stop_rx, |_| true) => {
            // Stopped before it got a slot: report without starting.
            if r == StopReason::Stale {
                return AttemptEnd { outcome: None, stopped: Some(r) };
            }
            let (outcome, error) = stopped_outcome(r, &ctx.lease);
            return AttemptEnd { stopped: Some(r), ..report_unstarted(ctx, outcome, error, Some(r)).await };
        }
    };
    let names = Names::new(&ctx.work_dir, &ctx.lease, ctx.job_log_dir.as_deref());
    let result = match &ctx.lease.exec {
        Exec::Docker(spec) => execute_docker(ctx, &names, spec).await,
        _ => execute(ctx, &names).await,
    };
    cleanup(ctx, &names).await;
    match result {
        Ok(end) => end,
        Err(Abandoned) => AttemptEnd {
            outcome: None,
            stopped: ctx.stopper.current(),
        },
    }
}

/// Finishes (or, for a shutdown, releases) an attempt that never started a process.
async fn report_unstarted(
    ctx: &AttemptCtx,
    outcome: Outcome,
    error: String,
    stopped: Option<StopReason>,
) -> AttemptEnd {
    tracing::info!(?outcome, %error, "finishing the attempt without starting it");
    let req = FinishRequest {
        outcome,
        exit_code: None,
        error: Some(error),
        result: None,
        gpus: None,
    };
    let masker = ctx.masker();
    let reported = ctx.reporter(masker).end(req, stopped).await.is_ok();
    AttemptEnd {
        outcome: reported_outcome(outcome, stopped).filter(|_| reported),
        stopped: None,
    }
}

impl AttemptCtx {
    /// Masks the lease's secret values.
    fn masker(&self) -> Arc<Masker> {
        Arc::new(Masker::new(self.lease.secrets.values()))
    }

    fn reporter(&self, masker: Arc<Masker>) -> Reporter {
        Reporter::new(
            self.client.clone(),
            &self.lease,
            self.stopper.clone(),
            self.abandon.clone(),
            masker,
        )
    }
}

/// Paths of one attempt.
#[derive(Clone)]
struct Names {
    /// Workspace, spool and record (see `layout`).
    files: AttemptFiles,
    /// `<job_log_dir>/<log_path>`, by default `<job_log_dir>/jobs/<job_id>/logs/<job_id>.log`
    mirror: Option<PathBuf>,
}

impl Names {
    fn new(work_dir: &Path, lease: &Lease, job_log_dir: Option<&Path>) -> Names {
        let safe = layout::safe_name(&lease.job_id);
        let mirror = job_log_dir.map(|d| match &lease.log_path {
            // The server checks it too; a path out of the folder is never opened.
            Some(path) if drover_core::files::check_workspace_path(path).is_ok() => d.join(path),
            _ => d
                .join("jobs")
                .join(&safe)
                .join("logs")
                .join(format!("{safe}.log")),
        });
        Names {
            files: AttemptFiles::new(work_dir, &lease.job_id, lease.attempt),
            mirror,
        }
    }
}

/// Builds the program and arguments for `exec`, writing a script body where needed.
fn spawn_spec(
    lease: &Lease,
    names: &Names,
    base_env: &[(OsString, OsString)],
) -> Result<SpawnSpec, String> {
    let (program, args) = match &lease.exec {
        Exec::Shell { command } => (
            process::shell_program(),
            vec!["-c".to_string(), command.clone()],
        ),
        Exec::Process { argv } => {
            let (first, rest) = argv.split_first().ok_or("process job has an empty argv")?;
            (first.clone(), rest.to_vec())
        }
        Exec::Script { interpreter, body } => {
            let path = names.files.meta().join("script");
            std::fs::write(&path, body)
                .map_err(|e| format!("cannot write the script file: {e}"))?;
            let mut words = interpreter.split_whitespace().map(str::to_string);
            let program = words.next().ok_or("script job has an empty interpreter")?;
            let mut args: Vec<String> = words.collect();
            args.push(path.to_string_lossy().into_owned());
            (program, args)
        }
        Exec::Python {
            function,
            args,
            kwargs,
            python,
            path,
        } => crate::python::command(
            function,
            args,
            kwargs,
            python.as_deref(),
            path,
            &names.files.meta().join("call.json"),
        )?,
        Exec::Docker(_) => return Err("docker jobs run in containers, not processes".into()),
    };
    let env = crate::layout::lease_env(lease, &names.files.workspace);
    Ok(SpawnSpec {
        program,
        args,
        workspace: names.files.workspace.clone(),
        base_env: base_env.to_vec(),
        env,
    })
}

/// The workspace of a container job: as for a process, but open to every user, since
/// the container may run as a user other than the agent's (its parent folders stay
/// private to the agent).
fn prepare_container_dirs(names: &Names) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    prepare_dirs(names)?;
    for dir in [names.files.workspace.clone(), names.files.meta()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
    }
    Ok(())
}

fn prepare_dirs(names: &Names) -> std::io::Result<()> {
    match std::fs::remove_dir_all(&names.files.workspace) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::create_dir_all(names.files.meta())
}

async fn cleanup(ctx: &AttemptCtx, names: &Names) {
    if !ctx.keep_workspace {
        if let Err(e) = tokio::fs::remove_dir_all(&names.files.workspace).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, "cannot remove workspace");
            }
        }
    }
    let _ = tokio::fs::remove_file(&names.files.spool).await;
    let _ = tokio::fs::remove_file(&names.files.record).await;
}

/// The heart of an attempt; `Err(Abandoned)` means no finish was (or could be) reported.
async fn execute(ctx: &AttemptCtx, names: &Names) -> Result<AttemptEnd, Abandoned> {
    let lease = &ctx.lease;
    // Spool, workspace and (with no inputs to fetch first) process in one trip to a
    // blocking thread: each trip costs a thread wake-up on the way from lease to job.
    let with_inputs = !lease.inputs.is_empty();
    let prepared = {
        let (lease, names, limits) = (lease.clone(), names.clone(), ctx.limits);
        let base_env = ctx.job_env.clone();
        let deadline_ms = ctx.deadline_ms;
        tokio::task::spawn_blocking(move || {
            let files = SpoolFiles::create(&names.files.spool, limits, names.mirror.clone())?;
            let spawned = match prepare_dirs(&names) {
                Err(e) => Some(Err(workspace_error(&names, e))),
                Ok(()) if with_inputs => None,
                Ok(()) => Some(spawn_recorded(&lease, &names, &base_env, deadline_ms)),
            };
            Ok((files, spawned))
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    };
    let (files, spawned) = match prepared {
        Ok(both) => both,
        Err(e) => return spool_failed(ctx, e).await,
    };
    let (reporter, logs) = start_logs(ctx, files);
    let mut header = lease.exec.log_header();
    if let (Some(path), None) = (&lease.log_path, &ctx.job_log_dir) {
        // Said in the log, not only the agent's: the job's owner looks there.
        header.push(format!(
            "drover: log_path {path} is not written: this agent has no --job-log-dir"
        ));
    }
    let (spawned, logs) = match spawned {
        Some(spawned) => (spawned, logs),
        None => {
            let logs = match fetch_inputs(ctx, &reporter, logs, &names.files.workspace).await? {
                Ok(logs) => logs,
                Err(end) => return Ok(end),
            };
            let (lease, names, base_env) = (lease.clone(), names.clone(), ctx.job_env.clone());
            let deadline_ms = ctx.deadline_ms;
            let spawned = tokio::task::spawn_blocking(move || {
                spawn_recorded(&lease, &names, &base_env, deadline_ms)
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            (spawned, logs)
        }
    };
    let (mut proc, stdout, stderr) = match spawned {
        Ok(parts) => parts,
        Err(error) => {
            for line in &header {
                logs.system(line).await;
            }
            return not_started(&reporter, logs, error).await;
        }
    };
    tracing::info!(pid = proc.pid(), "job process started");
    // The start goes out with the header records, the first records.
    let started = logs.report_start();
    for line in &header {
        logs.system(line).await;
    }
    let mut output = OutputTasks::start(
        stdout,
        stderr,
        &logs,
        names.files.progress(),
        reporter.clone(),
    );

    let mut stop_rx = ctx.stopper.subscribe();
    let timeout = lease.timeout_ms.map(Duration::from_millis);
    let grace = Duration::from_millis(lease.grace_ms);
    let ended = proc.supervise(timeout, grace, &mut stop_rx).await;
    drop(proc);

    output.settle(&logs).await;
    let (outcome, exit_code, error) = outcome_of(&ended, lease);
    let ending = Ending {
        outcome,
        exit_code,
        error,
        stopped: ended.stopped,
        gpus: None,
    };
    let parts = Running {
        reporter,
        logs,
        output,
        started,
        record: names.files.record.clone(),
    };
    conclude(ctx, parts, ending, &names.files).await
}

/// How a started job ended, before the result file is read.
struct Ending {
    outcome: Outcome,
    exit_code: Option<i32>,
    error: Option<String>,
    stopped: Option<StopReason>,
    /// For a container that asked for GPUs: whether it got them.
    gpus: Option<Gpus>,
}

/// The reporting side of a started job.
struct Running {
    reporter: Reporter,
    logs: LogPipeline,
    output: OutputTasks,
    started: StartResult,
    /// The attempt's record, marked with the outcome once the log is complete.
    record: PathBuf,
}

/// After the job's output settled: logs the error, ships the log, reads the result file
/// and reports `finish` (or nothing, when the attempt is stale or never got started).
async fn conclude(
    ctx: &AttemptCtx,
    parts: Running,
    ending: Ending,
    files: &AttemptFiles,
) -> Result<AttemptEnd, Abandoned> {
    let Running {
        reporter,
        mut logs,
        output,
        started,
        record,
    } = parts;
    let Ending {
        mut outcome,
        exit_code,
        mut error,
        stopped,
        gpus,
    } = ending;
    // A result file that cannot be read fails a job that otherwise succeeded: whoever
    // waits for its result would get nothing, or garbage, from a "succeeded" job.
    let (result, result_error) = read_result(&files.result()).await;
    if matches!(ctx.lease.exec, Exec::Python { .. }) && outcome == Outcome::Failed {
        error = crate::python::error_of(result.as_ref()).or(error);
    }
    if let Some(re) = result_error {
        if outcome == Outcome::Succeeded {
            outcome = Outcome::Failed;
        }
        error = Some(match error {
            Some(e) => format!("{e}; {re}"),
            None => re,
        });
    }
    if let Some(e) = &error {
        logs.system(&format!("[drover] {e}")).await;
    }
    // Whatever the outcome; not for an attempt that is no longer this agent's, nor one
    // going back to the queue because the agent shuts down (the next attempt makes them).
    let current = !matches!(
        ctx.stopper.current(),
        Some(StopReason::Stale | StopReason::Shutdown | StopReason::LeaseLost)
    );
    if current && !ctx.lease.artifacts.is_empty() {
        for line in files::upload_artifacts(&ctx.client, &ctx.lease, &files.workspace).await {
            logs.system(&line).await;
        }
    }
    logs.close().await;
    // The spool is complete: should the agent die before the server has it all, its
    // next run sends the rest and this outcome instead of letting the job run again.
    // Noted before waiting for the start report, which waits for the server.
    // (A job stopped for the agent's shutdown is released, not finished: nothing to note.)
    if !matches!(
        ctx.stopper.current(),
        Some(StopReason::Stale | StopReason::Shutdown)
    ) {
        let ended = FinishRequest {
            outcome,
            exit_code,
            error: error.clone().map(|e| ctx.masker().mask(e)),
            result: None,
            gpus,
        };
        let marked = tokio::task::spawn_blocking(move || fence::mark_ended(&record, ended)).await;
        if let Ok(Err(e)) = marked {
            tracing::warn!(error = %e, "cannot note the job's end in its record");
        }
    }
    let started = match started.await {
        Ok(sent) => sent,
        Err(_) => reporter.start().await,
    };
    let stale = ctx.stopper.current() == Some(StopReason::Stale);
    if stale || started.is_err() {
        output.abort();
        logs.abort();
        return Err(Abandoned);
    }
    logs.shipped().await?;
    output.progress_sent().await;
    let req = FinishRequest {
        outcome,
        exit_code,
        error,
        result,
        gpus,
    };
    reporter.end(req, stopped).await?;
    Ok(AttemptEnd {
        outcome: reported_outcome(outcome, stopped),
        stopped,
    })
}

/// The outcome the server got: none for a job sent back to the queue by a shutdown.
fn reported_outcome(outcome: Outcome, stopped: Option<StopReason>) -> Option<Outcome> {
    (stopped != Some(StopReason::Shutdown)).then_some(outcome)
}

/// Starts the log pipeline of an attempt on its spool files.
fn start_logs(ctx: &AttemptCtx, files: SpoolFiles) -> (Reporter, LogPipeline) {
    let masker = ctx.masker();
    let reporter = ctx.reporter(masker.clone());
    let logs = LogPipeline::start(files, reporter.clone(), masker);
    (reporter, logs)
}

/// Fails an attempt whose spool could not be created (nothing was started).
async fn spool_failed(ctx: &AttemptCtx, e: std::io::Error) -> Result<AttemptEnd, Abandoned> {
    let error = format!("cannot create the log spool: {e}");
    tracing::error!(%error, "attempt cannot run");
    let masker = ctx.masker();
    ctx.reporter(masker).finish(failed(error)).await?;
    Ok(AttemptEnd {
        outcome: Some(Outcome::Failed),
        stopped: None,
    })
}

/// Reports a job that could not be started: the error goes to the log and to `finish`.
async fn not_started(
    reporter: &Reporter,
    logs: LogPipeline,
    error: String,
) -> Result<AttemptEnd, Abandoned> {
    tracing::warn!(%error, "job did not start");
    logs.system(&format!("[drover] {error}")).await;
    logs.shipped().await?;
    reporter.finish(failed(error)).await?;
    Ok(AttemptEnd {
        outcome: Some(Outcome::Failed),
        stopped: None,
    })
}

/// A docker job: pull policy, create and start the container, follow its output,
/// supervise it, remove it, report.
async fn execute_docker(
    ctx: &AttemptCtx,
    names: &Names,
    spec: &DockerSpec,
) -> Result<AttemptEnd, Abandoned> {
    let lease = &ctx.lease;
    let (limits, own) = (ctx.limits, names.clone());
    let prepared = tokio::task::spawn_blocking(move || {
        let files = SpoolFiles::create(&own.files.spool, limits, own.mirror.clone())?;
        Ok((files, prepare_container_dirs(&own)))
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    let (reporter, logs, prepared) = match prepared {
        Ok((files, prepared)) => {
            let (reporter, logs) = start_logs(ctx, files);
            (reporter, logs, prepared)
        }
        Err(e) => return spool_failed(ctx, e).await,
    };
    if let Err(e) = prepared {
        return not_started(&reporter, logs, workspace_error(names, e)).await;
    }
    let logs = if lease.inputs.is_empty() {
        logs
    } else {
        match fetch_inputs(ctx, &reporter, logs, &names.files.workspace).await? {
            Ok(logs) => logs,
            Err(end) => return Ok(end),
        }
    };
    let docker = &ctx.docker;
    let cspec = ContainerSpec::new(
        lease,
        spec,
        &docker.agent,
        &docker.mounts,
        &names.files.workspace,
    );
    logs.system(&format!("$ {}", cspec.display(spec))).await;
    let record = fence::Record {
        job_id: lease.job_id.clone(),
        attempt: lease.attempt,
        pgid: None,
        start_time: None,
        container: Some(cspec.name.clone()),
        deadline_ms: ctx.deadline_ms,
        ended: None,
    };
    let path = names.files.record.clone();
    let _ = tokio::task::spawn_blocking(move || keep_record(&path, &record)).await;

    // Pulling can take long: a stop request meanwhile ends the attempt.
    let mut stop_rx = ctx.stopper.subscribe();
    let created = tokio::select! {
        s = docker.engine.create_and_start(&cspec) => s,
        r = process::wait_stop(&mut stop_rx, |_| true) => {
            docker.engine.remove_container(&cspec.name).await;
            return stopped_before_start(ctx, &reporter, logs, r).await;
        }
    };
    let Started {
        container,
        notes,
        gpus,
    } = match created {
        Ok(s) => s,
        Err(error) => return not_started(&reporter, logs, error).await,
    };
    tracing::info!(container = %container.name, "container started");
    for note in &notes {
        logs.system(note).await;
    }
    let started = logs.report_start();
    let (stdout, stderr, follower) = container.follow_output();
    let mut output = OutputTasks::start(
        stdout,
        stderr,
        &logs,
        names.files.progress(),
        reporter.clone(),
    );

    let timeout = lease.timeout_ms.map(Duration::from_millis);
    let grace = Duration::from_millis(lease.grace_ms);
    let ended = container.supervise(timeout, grace, &mut stop_rx).await;
    output.settle(&logs).await;
    follower.abort();
    if !docker.keep_containers {
        container.remove().await;
    }
    let ending = Ending {
        gpus,
        ..docker_ending(&ended, lease, spec)
    };
    let parts = Running {
        reporter,
        logs,
        output,
        started,
        record: names.files.record.clone(),
    };
    conclude(ctx, parts, ending, &names.files).await
}

/// Outcome, exit code and error for how a container ended.
fn docker_ending(ended: &ContainerEnded, lease: &Lease, spec: &DockerSpec) -> Ending {
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

/// Writes the attempt's record (blocking); a job that cannot be recorded still runs, but
/// only this agent can stop it.
fn keep_record(path: &Path, record: &fence::Record) {
    if let Err(e) = fence::write_record(path, record) {
        tracing::error!(error = %e, path = %path.display(), "cannot record the attempt: if the agent dies, nothing will stop the job");
    }
}

/// Spawns the job in its prepared workspace and records it (blocking); the error is the
/// job's error message.
fn spawn_recorded(
    lease: &Lease,
    names: &Names,
    base_env: &[(OsString, OsString)],
    deadline_ms: u64,
) -> Result<
    (
        JobProcess,
        tokio::process::ChildStdout,
        tokio::process::ChildStderr,
    ),
    String,
> {
    let spec = spawn_spec(lease, names, base_env)?;
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
    };
    keep_record(&names.files.record, &record);
    Ok(spawned)
}

fn workspace_error(names: &Names, e: std::io::Error) -> String {
    format!(
        "cannot create the workspace {}: {e}",
        names.files.workspace.display()
    )
}

/// Puts the job's inputs into its workspace, logging each, and hands the log back.
/// `Err(end)` when the attempt ended instead: an input failed (the attempt fails,
/// naming it), or a stop came first.
async fn fetch_inputs(
    ctx: &AttemptCtx,
    reporter: &Reporter,
    logs: LogPipeline,
    workspace: &Path,
) -> Result<Result<LogPipeline, AttemptEnd>, Abandoned> {
    let mut stop_rx = ctx.stopper.subscribe();
    let fetched = tokio::select! {
        f = files::fetch_inputs(&ctx.client, &ctx.lease, workspace, ctx.inputs) => f,
        r = process::wait_stop(&mut stop_rx, |_| true) => {
            return stopped_before_start(ctx, reporter, logs, r).await.map(Err);
        }
    };
    match fetched {
        Ok(lines) => {
            for line in lines {
                logs.system(&line).await;
            }
            Ok(Ok(logs))
        }
        Err(error) => not_started(reporter, logs, error).await.map(Err),
    }
}

/// Ends an attempt stopped before its command started: a stale one without a report,
/// others with the stop's outcome (a shutdown's is a release).
async fn stopped_before_start(
    ctx: &AttemptCtx,
    reporter: &Reporter,
    logs: LogPipeline,
    reason: StopReason,
) -> Result<AttemptEnd, Abandoned> {
    if reason == StopReason::Stale {
        logs.abort();
        return Err(Abandoned);
    }
    let (outcome, error) = stopped_outcome(reason, &ctx.lease);
    logs.system(&format!("[drover] {error}")).await;
    logs.shipped().await?;
    let req = FinishRequest {
        outcome,
        exit_code: None,
        error: Some(error),
        result: None,
        gpus: None,
    };
    reporter.end(req, Some(reason)).await?;
    Ok(AttemptEnd {
        outcome: reported_outcome(outcome, Some(reason)),
        stopped: Some(reason),
    })
}

fn failed(error: String) -> FinishRequest {
    FinishRequest {
        outcome: Outcome::Failed,
        exit_code: None,
        error: Some(error),
        result: None,
        gpus: None,
    }
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
                let name = nix::sys::signal::Signal::try_from(sig)
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

/// The outcome and error reported for a job the agent stopped.
fn stopped_outcome(reason: StopReason, lease: &Lease) -> (Outcome, String) {
    match reason {
        StopReason::TimedOut => {
            let ms = lease.timeout_ms.unwrap_or_default();
            (
                Outcome::TimedOut,
                format!("timed out after {}", human_ms(ms)),
            )
        }
        StopReason::Canceled => (Outcome::Canceled, "canceled by user".into()),
        StopReason::Shutdown => (Outcome::Canceled, "agent shutdown".into()),
        StopReason::ForceStop => (Outcome::Failed, "force-stop".into()),
        StopReason::Stale => (Outcome::Failed, "attempt is no longer current".into()),
        StopReason::LeaseLost => (
            Outcome::Failed,
            "lease_lost: the agent could not reach the server to renew its lease in time, so it stopped the job before the server could give it to another agent".into(),
        ),
    }
}

fn human_ms(ms: u64) -> String {
    match ms % 1000 {
        0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// Reads the result file: `(value, error)`; a missing file is neither.
pub(crate) async fn read_result(path: &Path) -> (Option<serde_json::Value>, Option<String>) {
    let meta = match tokio::fs::metadata(path).await {
        Ok(m) => m,
        Err(_) => return (None, None),
    };
    if meta.len() > MAX_RESULT_BYTES {
        return (None, Some("result file is larger than 1 MiB".into()));
    }
    match tokio::fs::read(path).await {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(format!("result file is not valid JSON: {e}"))),
        },
        Err(e) => (None, Some(format!("result file cannot be read: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn result_files_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        assert_eq!(read_result(&p).await, (None, None));
        std::fs::write(&p, r#"{"ok": true}"#).unwrap();
        assert_eq!(
            read_result(&p).await.0,
            Some(serde_json::json!({"ok": true}))
        );
        std::fs::write(&p, "{nope").unwrap();
        let (v, e) = read_result(&p).await;
        assert!(v.is_none());
        assert!(e.unwrap().starts_with("result file is not valid JSON: "));
        std::fs::write(&p, vec![b' '; 1024 * 1024 + 1]).unwrap();
        assert_eq!(
            read_result(&p).await.1.unwrap(),
            "result file is larger than 1 MiB"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_ms(30_000), "30s");
        assert_eq!(human_ms(1_500), "1500ms");
    }
}

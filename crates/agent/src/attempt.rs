//! Runs one leased attempt end to end, the same for every executor (see `executor`):
//! slot, spool and workspace, inputs, start, `start` report, logs and progress (see
//! `pipeline`), supervision, result file, outcome, artifacts, `finish`, and clean-up.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use drover_core::api::{FinishRequest, Lease};
use drover_core::{Exec, Outcome};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::client::Client;
use crate::docker::{DockerCtx, DockerExecutor};
use crate::executor::{stopped_outcome, Ending, Executor, NotStarted, RunningJob, Started};
use crate::fence;
use crate::files::{self, InputLimits};
use crate::finisher::Finisher;
use crate::layout::{self, AttemptFiles};
use crate::output::Masker;
use crate::pipeline::{LogPipeline, OutputTasks, SpoolFiles, StartResult};
use crate::process::{self, ProcessExecutor, StopReason, Stopper};
use crate::python::PythonExecutor;
use crate::recycle::WorkspacePool;
use crate::report::{Abandoned, Reporter};
use crate::spool::SpoolLimits;

/// Largest result file accepted.
const MAX_RESULT_BYTES: u64 = 1024 * 1024;

/// Everything an attempt needs from the agent.
pub struct AttemptCtx {
    pub client: Arc<Client>,
    /// Sends `finish` reports, several at once when attempts end together.
    pub finisher: Finisher,
    pub lease: Lease,
    pub work_dir: PathBuf,
    pub keep_workspace: bool,
    /// Where workspaces come from and go back to.
    pub workspaces: Arc<WorkspacePool>,
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
    /// How long the start waits to go with the finish (see [`crate::pipeline::Folded`]).
    pub start_hold: std::time::Duration,
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
    let files = &names.files;
    let result = match &ctx.lease.exec {
        Exec::Docker(spec) => execute(ctx, &names, DockerExecutor::new(ctx, files, spec)).await,
        Exec::Python { .. } => execute(ctx, &names, PythonExecutor::new(ctx, files)).await,
        Exec::Shell { .. } | Exec::Process { .. } | Exec::Script { .. } => {
            execute(ctx, &names, ProcessExecutor::new(ctx, files)).await
        }
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
    let reported = ctx.reporter().end(req, stopped).await.is_ok();
    AttemptEnd {
        outcome: reported_outcome(outcome, stopped).filter(|_| reported),
        stopped: None,
    }
}

impl AttemptCtx {
    /// The attempt's reporter, masking the lease's secret values.
    fn reporter(&self) -> Reporter {
        Reporter::new(
            self.client.clone(),
            self.finisher.clone(),
            &self.lease,
            self.stopper.clone(),
            self.abandon.clone(),
            Arc::new(Masker::new(self.lease.secrets.values())),
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

/// Removes the attempt's files, in one trip to a blocking thread.
async fn cleanup(ctx: &AttemptCtx, names: &Names) {
    let (files, keep_workspace) = (names.files.clone(), ctx.keep_workspace);
    let pool = ctx.workspaces.clone();
    let removed = tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_file(&files.spool);
        let _ = std::fs::remove_file(&files.record);
        match keep_workspace {
            true => Ok(()),
            false => pool.recycle(&files.workspace),
        }
    })
    .await;
    if let Ok(Err(e)) = removed {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(error = %e, "cannot remove workspace");
        }
    }
}

/// The heart of an attempt; `Err(Abandoned)` means no finish was (or could be) reported.
async fn execute<E: Executor>(
    ctx: &AttemptCtx,
    names: &Names,
    executor: E,
) -> Result<AttemptEnd, Abandoned> {
    let lease = &ctx.lease;
    // Spool and workspace in one piece of blocking work.
    let prepared = {
        let (own, limits, pool) = (names.clone(), ctx.limits, ctx.workspaces.clone());
        crate::executor::in_place(move || {
            let files = SpoolFiles::create(&own.files.spool, limits, own.mirror.clone());
            (files, E::prepare(&own.files, &pool))
        })
        .await
    };
    let (files, prepared) = match prepared {
        Ok(done) => done,
        Err(e) => return not_prepared(ctx, e).await,
    };
    let (reporter, logs) = start_logs(ctx, files);
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
    let mut stop_rx = ctx.stopper.subscribe();
    let Started {
        mut job,
        stdout,
        stderr,
        mut notes,
    } = match executor.start(&logs, &mut stop_rx).await {
        Ok(started) => started,
        Err(NotStarted::Failed(error)) => return not_started(&reporter, logs, error).await,
        Err(NotStarted::Stopped(r)) => return stopped_before_start(ctx, &reporter, logs, r).await,
    };
    if let (Some(path), None) = (&lease.log_path, &ctx.job_log_dir) {
        // Said in the log, not only the agent's: the job's owner looks there.
        notes.push(format!(
            "drover: log_path {path} is not written: this agent has no --job-log-dir"
        ));
    }
    // The start goes out with the first records.
    let started = logs.report_start();
    for line in &notes {
        logs.system(line).await;
    }
    let mut output = OutputTasks::start(
        stdout,
        stderr,
        &logs,
        names.files.progress(),
        reporter.clone(),
    );
    let ending = job.supervise(lease, &mut stop_rx).await;
    output.settle(&logs).await;
    job.release().await;
    let parts = Running {
        reporter,
        logs,
        output,
        started,
        record: names.files.record.clone(),
    };
    conclude(ctx, &executor, parts, ending, &names.files).await
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
    executor: &impl Executor,
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
    // The result is shown as the log is, so it is masked as the log is.
    let masker = reporter.masker();
    let result = result.map(|v| masker.mask_json(v));
    if outcome == Outcome::Failed {
        error = executor.failure(result.as_ref()).or(error);
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
    // next run sends the rest (from the spool file, and what only memory held, written
    // here with the end) and this outcome instead of letting the job run again.
    // Noted before waiting for the start report, which waits for the server.
    // (A job stopped for the agent's shutdown is released, not finished: nothing to note.)
    if !matches!(
        ctx.stopper.current(),
        Some(StopReason::Stale | StopReason::Shutdown)
    ) {
        let ended = FinishRequest {
            outcome,
            exit_code,
            error: error.clone().map(|e| masker.mask(e)),
            result: result.clone(),
            gpus,
        };
        let tail = logs.unshipped_in_memory();
        let marked =
            tokio::task::spawn_blocking(move || fence::mark_ended(&record, ended, &tail)).await;
        if let Ok(Err(e)) = marked {
            tracing::warn!(error = %e, "cannot note the job's end in its record");
        }
    }
    if ctx.stopper.current() == Some(StopReason::Stale) {
        output.abort();
        logs.abort();
        return Err(Abandoned);
    }
    // Every record acknowledged, or the start and last records held for the finish.
    let folded = match logs.shipped().await {
        Ok(folded) => folded,
        Err(abandoned) => {
            output.abort();
            return Err(abandoned);
        }
    };
    if folded.is_none() {
        let started = match started.await {
            Ok(sent) => sent,
            Err(_) => reporter.start().await,
        };
        if started.is_err() || ctx.stopper.current() == Some(StopReason::Stale) {
            output.abort();
            return Err(Abandoned);
        }
    }
    output.progress_sent().await;
    let req = FinishRequest {
        outcome,
        exit_code,
        error,
        result,
        gpus,
    };
    reporter.end_folded(req, stopped, folded).await?;
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
    let reporter = ctx.reporter();
    let logs = LogPipeline::start(
        files,
        reporter.clone(),
        reporter.masker().clone(),
        ctx.start_hold,
    );
    (reporter, logs)
}

/// Fails an attempt whose preparation did not run (it panicked; nothing was started).
async fn not_prepared(ctx: &AttemptCtx, e: String) -> Result<AttemptEnd, Abandoned> {
    let error = format!("cannot prepare the attempt: {e}");
    tracing::error!(%error, "attempt cannot run");
    ctx.reporter().finish(failed(error)).await?;
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

/// Reads the result file: `(value, error)`; a missing file is neither.
pub(crate) async fn read_result(path: &Path) -> (Option<serde_json::Value>, Option<String>) {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || read_result_now(&path))
        .await
        .unwrap_or_else(|e| (None, Some(format!("result file cannot be read: {e}"))))
}

/// [`read_result`], blocking: one trip to a blocking thread for both calls.
fn read_result_now(path: &Path) -> (Option<serde_json::Value>, Option<String>) {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(_) => return (None, None),
    };
    if meta.len() > MAX_RESULT_BYTES {
        return (None, Some("result file is larger than 1 MiB".into()));
    }
    match std::fs::read(path) {
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
}

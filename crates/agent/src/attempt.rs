//! Runs one leased attempt end to end: workspace, spawn, `start`, output pumps into the
//! spool, the log shipper, progress, result file, outcome, `finish`, and clean-up.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use drover_core::api::{FinishRequest, Lease, LogBatch, ProgressUpdate, Stream};
use drover_core::{Exec, Outcome};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::client::{CallError, Client, RetryBackoff};
use crate::output::{self, LineReader, Masker, MAX_LINE_BYTES};
use crate::process::{self, Ended, JobProcess, SpawnSpec, StopReason, Stopper};
use crate::spool::{self, SpoolLimits, SpoolReader, SpoolWriter};

/// Lines in flight between the pumps and the spool writer (each at most 64 KiB).
const LINE_CHANNEL: usize = 256;
/// Largest result file accepted.
const MAX_RESULT_BYTES: u64 = 1024 * 1024;
/// Ship a batch at this many records …
const BATCH_RECORDS: usize = 5000;
/// … or this many bytes of JSON …
const BATCH_BYTES: usize = 1024 * 1024;
/// … or after this long.
const BATCH_INTERVAL: Duration = Duration::from_millis(50);
/// At most this often a progress update is sent.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// How often the progress file is read.
const PROGRESS_POLL: Duration = Duration::from_millis(100);
/// How long the pipes may stay open after the process group was killed.
const PIPE_DRAIN_LIMIT: Duration = Duration::from_secs(5);

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
}

/// How an attempt ended, as the agent needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptEnd {
    /// The outcome reported; None when nothing was reported (stale attempt).
    pub outcome: Option<Outcome>,
    /// The agent stopped the job (and why).
    pub stopped: Option<StopReason>,
}

/// A line of output for the spool writer.
enum SpoolLine {
    Output(Stream, String),
    System(String),
}

/// Things that end an attempt without a finish report.
#[derive(Debug)]
struct Abandoned;

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
            return AttemptEnd { stopped: Some(r), ..report_unstarted(ctx, outcome, error).await };
        }
    };
    if let Exec::Docker(_) = ctx.lease.exec {
        let error = "docker jobs are not supported by this agent yet".to_string();
        return report_unstarted(ctx, Outcome::Failed, error).await;
    }
    let names = Names::new(&ctx.work_dir, &ctx.lease);
    let result = execute(ctx, &names).await;
    cleanup(ctx, &names).await;
    match result {
        Ok(end) => end,
        Err(Abandoned) => AttemptEnd {
            outcome: None,
            stopped: ctx.stopper.current(),
        },
    }
}

/// Finishes an attempt that never started a process.
async fn report_unstarted(ctx: &AttemptCtx, outcome: Outcome, error: String) -> AttemptEnd {
    tracing::info!(?outcome, %error, "finishing the attempt without starting it");
    let req = FinishRequest {
        outcome,
        exit_code: None,
        error: Some(error),
        result: None,
    };
    let reported = send_finish(ctx, &req).await.is_ok();
    AttemptEnd {
        outcome: reported.then_some(outcome),
        stopped: None,
    }
}

/// Paths of one attempt.
struct Names {
    workspace: PathBuf,
    meta: PathBuf,
    spool: PathBuf,
}

impl Names {
    fn new(work_dir: &Path, lease: &Lease) -> Names {
        let safe: String = lease
            .job_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let stem = format!("{safe}-{}", lease.attempt);
        let workspace = work_dir.join("workspaces").join(&stem);
        Names {
            meta: workspace.join(".drover"),
            workspace,
            spool: work_dir.join("spool").join(format!("{stem}.jsonl")),
        }
    }
    fn progress(&self) -> PathBuf {
        self.meta.join("progress")
    }
    fn result(&self) -> PathBuf {
        self.meta.join("result.json")
    }
}

/// Builds the program and arguments for `exec`, writing a script body where needed.
async fn spawn_spec(lease: &Lease, names: &Names) -> Result<SpawnSpec, String> {
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
            let path = names.meta.join("script");
            tokio::fs::write(&path, body)
                .await
                .map_err(|e| format!("cannot write the script file: {e}"))?;
            let mut words = interpreter.split_whitespace().map(str::to_string);
            let program = words.next().ok_or("script job has an empty interpreter")?;
            let mut args: Vec<String> = words.collect();
            args.push(path.to_string_lossy().into_owned());
            (program, args)
        }
        Exec::Docker(_) => return Err("docker jobs are not supported by this agent yet".into()),
    };
    let mut env: Vec<(String, String)> = lease
        .env
        .iter()
        .chain(lease.secrets.iter())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let path = |p: &Path| p.to_string_lossy().into_owned();
    env.push(("DROVER_JOB_ID".into(), lease.job_id.clone()));
    env.push(("DROVER_ATTEMPT".into(), lease.attempt.to_string()));
    env.push(("DROVER_WORKSPACE".into(), path(&names.workspace)));
    env.push(("DROVER_PROGRESS".into(), path(&names.progress())));
    env.push(("DROVER_RESULT".into(), path(&names.result())));
    Ok(SpawnSpec {
        program,
        args,
        workspace: names.workspace.clone(),
        env,
    })
}

async fn prepare_dirs(names: &Names) -> std::io::Result<()> {
    match tokio::fs::remove_dir_all(&names.workspace).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    tokio::fs::create_dir_all(&names.meta).await
}

async fn cleanup(ctx: &AttemptCtx, names: &Names) {
    if !ctx.keep_workspace {
        if let Err(e) = tokio::fs::remove_dir_all(&names.workspace).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, "cannot remove workspace");
            }
        }
    }
    let _ = tokio::fs::remove_file(&names.spool).await;
}

/// The heart of an attempt; `Err(Abandoned)` means no finish was (or could be) reported.
async fn execute(ctx: &AttemptCtx, names: &Names) -> Result<AttemptEnd, Abandoned> {
    let lease = &ctx.lease;
    let spool_path = names.spool.clone();
    let limits = ctx.limits;
    let spool = tokio::task::spawn_blocking(move || spool::create(&spool_path, limits)).await;
    let (writer, reader) = match spool {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            return finish_without_logs(ctx, format!("cannot create the log spool: {e}")).await
        }
        Err(e) => {
            return finish_without_logs(ctx, format!("cannot create the log spool: {e}")).await
        }
    };
    let (line_tx, line_rx) = mpsc::channel::<SpoolLine>(LINE_CHANNEL);
    let writer_task = tokio::task::spawn_blocking(move || write_spool(writer, line_rx));
    let shipper = tokio::spawn(
        ship_logs(
            reader,
            ctx.client.clone(),
            lease.clone(),
            ctx.stopper.clone(),
            ctx.abandon.clone(),
        )
        .in_current_span(),
    );
    let masker = Arc::new(Masker::new(lease.secrets.values()));
    let _ = line_tx
        .send(SpoolLine::System(
            masker.mask(format!("$ {}", lease.exec.display())),
        ))
        .await;

    let spawned = match prepare_dirs(names).await {
        Ok(()) => match spawn_spec(lease, names).await {
            Ok(spec) => JobProcess::spawn(spec).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        },
        Err(e) => Err(format!(
            "cannot create the workspace {}: {e}",
            names.workspace.display()
        )),
    };
    let (mut proc, stdout, stderr) = match spawned {
        Ok(parts) => parts,
        Err(error) => {
            tracing::warn!(%error, "job did not start");
            let _ = line_tx
                .send(SpoolLine::System(masker.mask(format!("[drover] {error}"))))
                .await;
            drop(line_tx);
            let _ = writer_task.await;
            await_ship(shipper).await?;
            let req = FinishRequest {
                outcome: Outcome::Failed,
                exit_code: None,
                error: Some(error),
                result: None,
            };
            send_finish(ctx, &req).await?;
            return Ok(AttemptEnd {
                outcome: Some(Outcome::Failed),
                stopped: None,
            });
        }
    };
    tracing::info!(pid = proc.pid(), "job process started");
    let started = tokio::spawn(
        send_start(
            ctx.client.clone(),
            lease.clone(),
            ctx.stopper.clone(),
            ctx.abandon.clone(),
        )
        .in_current_span(),
    );

    let (progress_tx, progress_rx) = watch::channel::<Option<ProgressUpdate>>(None);
    let progress_tx = Arc::new(progress_tx);
    let progress_sender = tokio::spawn(
        send_progress(
            progress_rx,
            ctx.client.clone(),
            lease.clone(),
            ctx.stopper.clone(),
            ctx.abandon.clone(),
        )
        .in_current_span(),
    );
    let watcher_done = CancellationToken::new();
    let watcher = tokio::spawn(watch_progress_file(
        names.progress(),
        progress_tx.clone(),
        masker.clone(),
        watcher_done.clone(),
    ));
    let out_pump = tokio::spawn(pump(
        stdout,
        Stream::Stdout,
        line_tx.clone(),
        masker.clone(),
        Some(progress_tx.clone()),
    ));
    let err_pump = tokio::spawn(pump(
        stderr,
        Stream::Stderr,
        line_tx.clone(),
        masker.clone(),
        None,
    ));
    drop(progress_tx);

    let mut stop_rx = ctx.stopper.subscribe();
    let timeout = lease.timeout_ms.map(Duration::from_millis);
    let ended = proc
        .supervise(timeout, Duration::from_millis(lease.grace_ms), &mut stop_rx)
        .await;
    drop(proc);

    // The group is dead; the pipes close unless something escaped the group.
    let (mut out_pump, mut err_pump) = (out_pump, err_pump);
    let pumps = async {
        let _ = (&mut out_pump).await;
        let _ = (&mut err_pump).await;
    };
    if tokio::time::timeout(PIPE_DRAIN_LIMIT, pumps).await.is_err() {
        tracing::warn!("output pipes still open after the job ended; giving up on them");
        out_pump.abort();
        err_pump.abort();
        let _ = line_tx
            .send(SpoolLine::System("[drover] output pipes were still open after the job ended; the rest of its output is lost".into()))
            .await;
    }
    watcher_done.cancel();
    let _ = watcher.await;
    let (outcome, exit_code, mut error) = outcome_of(&ended, lease);
    if let Some(e) = &error {
        let _ = line_tx
            .send(SpoolLine::System(masker.mask(format!("[drover] {e}"))))
            .await;
    }
    drop(line_tx);
    let _ = writer_task.await;
    if ended.stopped == Some(StopReason::Stale) || ctx.stopper.current() == Some(StopReason::Stale)
    {
        started.abort();
        shipper.abort();
        progress_sender.abort();
        return Err(Abandoned);
    }
    match started.await {
        Ok(Ok(())) => {}
        _ => {
            shipper.abort();
            progress_sender.abort();
            return Err(Abandoned);
        }
    }
    await_ship(shipper).await?;
    let _ = progress_sender.await;
    let (result, result_error) = read_result(&names.result()).await;
    if let Some(re) = result_error {
        error = Some(match error {
            Some(e) => format!("{e}; {re}"),
            None => re,
        });
    }
    let req = FinishRequest {
        outcome,
        exit_code,
        error,
        result,
    };
    send_finish(ctx, &req).await?;
    Ok(AttemptEnd {
        outcome: Some(outcome),
        stopped: ended.stopped,
    })
}

async fn finish_without_logs(ctx: &AttemptCtx, error: String) -> Result<AttemptEnd, Abandoned> {
    tracing::error!(%error, "attempt cannot run");
    let req = FinishRequest {
        outcome: Outcome::Failed,
        exit_code: None,
        error: Some(error),
        result: None,
    };
    send_finish(ctx, &req).await?;
    Ok(AttemptEnd {
        outcome: Some(Outcome::Failed),
        stopped: None,
    })
}

async fn await_ship(
    shipper: tokio::task::JoinHandle<Result<(), Abandoned>>,
) -> Result<(), Abandoned> {
    match shipper.await {
        Ok(r) => r,
        Err(_) => Err(Abandoned),
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
    }
}

fn human_ms(ms: u64) -> String {
    match ms % 1000 {
        0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// Reads the result file: `(value, error)`; a missing file is neither.
async fn read_result(path: &Path) -> (Option<serde_json::Value>, Option<String>) {
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

/// Owns the spool writer on a blocking thread; flushes after each burst of lines.
fn write_spool(mut writer: SpoolWriter, mut rx: mpsc::Receiver<SpoolLine>) {
    let mut failed = false;
    let append = |w: &mut SpoolWriter, line: SpoolLine, failed: &mut bool| {
        let r = match line {
            SpoolLine::Output(stream, text) => w.append_output(stream, text),
            SpoolLine::System(text) => w.append_system(text),
        };
        if let Err(e) = r {
            if !*failed {
                tracing::error!(error = %e, "cannot write the log spool; output is lost");
            }
            *failed = true;
        }
    };
    while let Some(line) = rx.blocking_recv() {
        append(&mut writer, line, &mut failed);
        for _ in 0..4096 {
            match rx.try_recv() {
                Ok(line) => append(&mut writer, line, &mut failed),
                Err(_) => break,
            }
        }
        if let Err(e) = writer.flush() {
            tracing::error!(error = %e, "cannot flush the log spool");
        }
    }
    if let Err(e) = writer.close() {
        tracing::error!(error = %e, "cannot close the log spool");
    }
}

/// Reads one output stream line by line into the spool channel.
async fn pump(
    pipe: impl AsyncRead + Unpin,
    stream: Stream,
    tx: mpsc::Sender<SpoolLine>,
    masker: Arc<Masker>,
    progress: Option<Arc<watch::Sender<Option<ProgressUpdate>>>>,
) {
    let mut lines = LineReader::new(
        tokio::io::BufReader::with_capacity(64 * 1024, pipe),
        MAX_LINE_BYTES,
    );
    loop {
        let bytes = match lines.next_line().await {
            Ok(Some(b)) => b,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(?stream, error = %e, "reading job output failed");
                break;
            }
        };
        let text = masker.mask(String::from_utf8_lossy(&bytes).into_owned());
        if let Some(p) = progress
            .as_ref()
            .and_then(|tx| output::parse_progress_marker(&text).map(|u| (tx, u)))
        {
            p.0.send_replace(Some(p.1));
        }
        if tx.send(SpoolLine::Output(stream, text)).await.is_err() {
            break;
        }
    }
}

/// Reads lines appended to the progress file every [`PROGRESS_POLL`], until `done`.
async fn watch_progress_file(
    path: PathBuf,
    tx: Arc<watch::Sender<Option<ProgressUpdate>>>,
    masker: Arc<Masker>,
    done: CancellationToken,
) {
    const MAX_PARTIAL: usize = 4096;
    const MAX_PER_TICK: u64 = 1024 * 1024;
    let mut offset = 0u64;
    let mut partial: Vec<u8> = Vec::new();
    loop {
        let last = tokio::select! {
            _ = tokio::time::sleep(PROGRESS_POLL) => false,
            _ = done.cancelled() => true,
        };
        if let Ok(mut file) = tokio::fs::File::open(&path).await {
            let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
            if len < offset {
                offset = 0;
                partial.clear();
            }
            if len > offset && file.seek(std::io::SeekFrom::Start(offset)).await.is_ok() {
                let mut chunk = Vec::new();
                let n = (&mut file)
                    .take(MAX_PER_TICK)
                    .read_to_end(&mut chunk)
                    .await
                    .unwrap_or(0);
                offset += n as u64;
                for piece in chunk.split_inclusive(|b| *b == b'\n') {
                    if partial.len() < MAX_PARTIAL {
                        partial.extend_from_slice(
                            &piece[..piece.len().min(MAX_PARTIAL - partial.len())],
                        );
                    }
                    if piece.ends_with(b"\n") {
                        let line = masker.mask(String::from_utf8_lossy(&partial).into_owned());
                        partial.clear();
                        if let Some(update) = output::parse_progress(&line) {
                            tx.send_replace(Some(update));
                        }
                    }
                }
            }
        }
        if last {
            if !partial.is_empty() {
                let line = masker.mask(String::from_utf8_lossy(&partial).into_owned());
                if let Some(update) = output::parse_progress(&line) {
                    tx.send_replace(Some(update));
                }
            }
            return;
        }
    }
}

/// Why [`with_retry`] gave up.
#[derive(Debug)]
enum GaveUp {
    /// The attempt is stale, or the agent stopped reporting (after force-stop).
    Abandoned,
    /// The server refused this request (a 4xx other than 401/403/404/409); retrying it
    /// cannot help, but the attempt goes on.
    Refused,
}

impl From<GaveUp> for Abandoned {
    fn from(_: GaveUp) -> Self {
        Abandoned
    }
}

/// Calls `f` until it succeeds; transient failures are retried with backoff (100 ms
/// doubling to 5 s, jittered), for as long as it takes. Gives up when the attempt turns
/// stale (409, 404, or 403 not-your-attempt: the job is killed), when the agent abandons
/// it, or when the server refuses the request.
async fn with_retry<F, Fut>(
    what: &str,
    stopper: &Stopper,
    abandon: &CancellationToken,
    mut f: F,
) -> Result<(), GaveUp>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), CallError>>,
{
    let mut backoff = RetryBackoff::default();
    let mut stop_rx = stopper.subscribe();
    loop {
        if abandon.is_cancelled() || stopper.current() == Some(StopReason::Stale) {
            return Err(GaveUp::Abandoned);
        }
        match f().await {
            Ok(()) => return Ok(()),
            Err(CallError::Stale(msg))
            | Err(CallError::Refused {
                status: 403,
                message: msg,
            }) => {
                tracing::warn!(what, %msg, "server says the attempt is not ours any more: killing it");
                stopper.stop(StopReason::Stale);
                return Err(GaveUp::Abandoned);
            }
            Err(e @ CallError::Refused { .. }) => {
                tracing::error!(what, error = %e, "server refused the request; not retrying it");
                return Err(GaveUp::Refused);
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(what, error = %e, retry_in_ms = delay.as_millis() as u64, "server call failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = abandon.cancelled() => return Err(GaveUp::Abandoned),
                    _ = process::wait_stop(&mut stop_rx, |r| r == StopReason::Stale) => return Err(GaveUp::Abandoned),
                }
            }
        }
    }
}

/// `start`; a refused start is logged and the attempt goes on (finish will tell).
async fn send_start(
    client: Arc<Client>,
    lease: Lease,
    stopper: Stopper,
    abandon: CancellationToken,
) -> Result<(), Abandoned> {
    match with_retry("start", &stopper, &abandon, || {
        client.start(&lease.job_id, lease.attempt)
    })
    .await
    {
        Ok(()) | Err(GaveUp::Refused) => Ok(()),
        Err(GaveUp::Abandoned) => Err(Abandoned),
    }
}

async fn send_finish(ctx: &AttemptCtx, req: &FinishRequest) -> Result<(), Abandoned> {
    let lease = &ctx.lease;
    let masker = Masker::new(lease.secrets.values());
    let req = FinishRequest {
        error: req.error.clone().map(|e| masker.mask(e)),
        ..req.clone()
    };
    with_retry("finish", &ctx.stopper, &ctx.abandon, || {
        ctx.client.finish(&lease.job_id, lease.attempt, &req)
    })
    .await
    .map_err(Abandoned::from)
}

/// Ships spooled records in batches until the spool is closed and fully acknowledged.
/// A batch the server refuses is skipped (and logged) rather than blocking the rest.
async fn ship_logs(
    mut reader: SpoolReader,
    client: Arc<Client>,
    lease: Lease,
    stopper: Stopper,
    abandon: CancellationToken,
) -> Result<(), Abandoned> {
    loop {
        let mut batch = match reader.next_batch(BATCH_RECORDS, BATCH_BYTES).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, path = %reader.path().display(), "cannot read the log spool; the rest of the log is lost");
                return Ok(());
            }
        };
        if batch.records.is_empty() {
            if reader.is_done() {
                return Ok(());
            }
            reader.changed().await;
            continue;
        }
        let body = LogBatch {
            records: std::mem::take(&mut batch.records),
        };
        match with_retry("logs", &stopper, &abandon, || {
            client.logs(&lease.job_id, lease.attempt, &body)
        })
        .await
        {
            Ok(()) => {}
            Err(GaveUp::Refused) => {
                let (first, last) = (
                    body.records[0].seq,
                    body.records[body.records.len() - 1].seq,
                );
                tracing::error!(
                    first,
                    last,
                    "log records refused by the server; skipping them"
                );
            }
            Err(GaveUp::Abandoned) => return Err(Abandoned),
        }
        reader.ack(&batch);
        if !batch.full && !reader.is_done() {
            tokio::time::sleep(BATCH_INTERVAL).await;
        }
    }
}

/// Sends progress updates, at most one per [`PROGRESS_INTERVAL`], always the last one.
async fn send_progress(
    mut rx: watch::Receiver<Option<ProgressUpdate>>,
    client: Arc<Client>,
    lease: Lease,
    stopper: Stopper,
    abandon: CancellationToken,
) {
    while rx.changed().await.is_ok() {
        let Some(update) = rx.borrow_and_update().clone() else {
            continue;
        };
        let sent = with_retry("progress", &stopper, &abandon, || {
            client.progress(&lease.job_id, lease.attempt, &update)
        })
        .await;
        if sent.is_err() {
            return;
        }
        tokio::time::sleep(PROGRESS_INTERVAL).await;
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

//! The IO tasks around one job process: output pumps → spool writer (a blocking thread;
//! records stay in memory until they spill, see `spool`) → log shipper; progress from
//! `::progress` markers and the progress file → a throttled progress sender.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use drover_core::api::{ProgressUpdate, Stream};
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::output::{self, LineReader, Masker, MAX_LINE_BYTES};
use crate::report::{Abandoned, GaveUp, Reporter};
use crate::spool::{self, SpoolLimits, SpoolReader, SpoolShared, SpoolWriter};

/// Messages in flight between the pumps and the spool writer (each at most
/// [`LINES_PER_MESSAGE`] lines and about [`BYTES_PER_MESSAGE`]).
const LINE_CHANNEL: usize = 16;
/// Ship a batch at this many records …
const BATCH_RECORDS: usize = 5000;
/// … or this many bytes of JSON …
const BATCH_BYTES: usize = 1024 * 1024;
/// … or after this long.
const BATCH_INTERVAL: Duration = Duration::from_millis(50);
// A batch over the server's limit would be refused, and a refused batch is skipped.
const _: () = assert!(BATCH_RECORDS <= drover_core::api::MAX_LOG_RECORDS);
/// Log batches sent before the first of them is answered.
const BATCHES_IN_FLIGHT: usize = 2;
/// At most this often a progress update is sent.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// How often the progress file is read.
const PROGRESS_POLL: Duration = Duration::from_millis(100);
/// How long the pipes may stay open after the process group was killed.
const PIPE_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Lines for the spool writer: the job's output comes in runs of the lines that were
/// waiting in its pipe together, so a chatty job costs one channel message per read,
/// not per line.
enum SpoolLine {
    Output(Stream, Vec<String>),
    System(String),
}

/// Most lines sent to the spool writer in one message …
const LINES_PER_MESSAGE: usize = 512;
/// … and about the most bytes (the last line may pass it by up to 64 KiB).
const BYTES_PER_MESSAGE: usize = 256 * 1024;

type Progress = Arc<watch::Sender<Option<ProgressUpdate>>>;

/// An attempt's log path: a channel into the spool writer, and the shipper behind it.
pub struct LogPipeline {
    tx: Option<mpsc::Sender<SpoolLine>>,
    writer: Option<JoinHandle<()>>,
    shipper: JoinHandle<Result<Option<Folded>, Abandoned>>,
    masker: Arc<Masker>,
    start: Arc<StartReport>,
    spool: Arc<SpoolShared>,
}

/// How the start report went: `Err` when the attempt was abandoned.
pub type StartResult = oneshot::Receiver<Result<(), Abandoned>>;
type StartSender = oneshot::Sender<Result<(), Abandoned>>;

/// The attempt's start (and when the job started), waiting to ride on the next log
/// batch the shipper sends (an empty one if no output comes), or on the finish, which
/// saves a request or two per job.
#[derive(Default)]
struct StartReport {
    pending: std::sync::Mutex<Option<(StartSender, Instant)>>,
    notify: Notify,
}

/// The start and the last log records of a job whose output ended before its start was
/// reported: they go with its `finish` (see `finisher`), one request for all three.
/// The records stay in the spool until the finish is answered.
#[derive(Debug)]
pub struct Folded {
    /// When the job started.
    pub started: Instant,
    /// The records, as the JSON body of a log request.
    pub body: Vec<u8>,
}

impl StartReport {
    fn pending(&self) -> std::sync::MutexGuard<'_, Option<(StartSender, Instant)>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> Option<(StartSender, Instant)> {
        self.pending().take()
    }

    fn is_pending(&self) -> bool {
        self.pending().is_some()
    }
}

impl LogPipeline {
    /// Starts the writer and shipper of files made by [`SpoolFiles::create`]; a start
    /// waits up to `start_hold` for the job's output to end (see [`Folded`]).
    pub fn start(
        files: SpoolFiles,
        reporter: Reporter,
        masker: Arc<Masker>,
        start_hold: Duration,
    ) -> LogPipeline {
        let SpoolFiles {
            writer,
            reader,
            mirror,
        } = files;
        let spool = reader.shared();
        let (tx, rx) = mpsc::channel(LINE_CHANNEL);
        let writer = tokio::task::spawn_blocking(move || write_spool(writer, mirror, rx));
        let start = Arc::new(StartReport::default());
        let shipper =
            tokio::spawn(ship_logs(reader, reporter, start.clone(), start_hold).in_current_span());
        LogPipeline {
            tx: Some(tx),
            writer: Some(writer),
            shipper,
            masker,
            start,
            spool,
        }
    }

    /// The records not yet acknowledged that only the agent's memory holds (call after
    /// [`LogPipeline::close`]): they go into the attempt's record with its end.
    pub fn unshipped_in_memory(&self) -> Vec<u8> {
        self.spool.unshipped_in_memory()
    }

    /// Reports the attempt started with the next batch the shipper sends. When the
    /// answer never comes (the shipper stopped early), report it on its own.
    pub fn report_start(&self) -> StartResult {
        let (tx, rx) = oneshot::channel();
        *self.start.pending() = Some((tx, Instant::now()));
        self.start.notify.notify_one();
        rx
    }

    /// Appends a `system` record (secrets masked).
    pub async fn system(&self, text: &str) {
        if let Some(tx) = &self.tx {
            let _ = tx
                .send(SpoolLine::System(self.masker.mask(text.to_string())))
                .await;
        }
    }

    /// No more lines: closes the spool once the writer has written everything.
    pub async fn close(&mut self) {
        self.tx = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.await;
        }
    }

    /// Waits until every record was acknowledged (call after [`LogPipeline::close`]), or
    /// hands back the start and last records to send with the finish.
    pub async fn shipped(mut self) -> Result<Option<Folded>, Abandoned> {
        self.close().await;
        (&mut self.shipper).await.unwrap_or(Err(Abandoned))
    }

    /// Stops shipping at once (the attempt is stale).
    pub fn abort(self) {
        self.shipper.abort();
    }
}

/// The files of an attempt's log, made (blocking) before its pipeline starts.
pub struct SpoolFiles {
    writer: SpoolWriter,
    reader: SpoolReader,
    mirror: Option<Mirror>,
}

impl SpoolFiles {
    /// The spool (spilling to `path`) and the mirror, opened (a mirror that cannot be
    /// opened is logged and skipped). Blocking.
    pub fn create(
        path: &std::path::Path,
        limits: SpoolLimits,
        mirror: Option<PathBuf>,
    ) -> SpoolFiles {
        let (writer, reader) = spool::create(path, limits);
        SpoolFiles {
            writer,
            reader,
            mirror: mirror.and_then(open_mirror),
        }
    }
}

/// The tasks that read a running job's output and progress, and send its progress.
pub struct OutputTasks {
    out_pump: JoinHandle<()>,
    err_pump: JoinHandle<()>,
    watcher: JoinHandle<()>,
    watcher_done: CancellationToken,
    progress_sender: JoinHandle<()>,
}

impl OutputTasks {
    /// Starts pumping `stdout`/`stderr` into `logs` and watching `progress_file`.
    pub fn start(
        stdout: impl AsyncRead + Unpin + Send + 'static,
        stderr: impl AsyncRead + Unpin + Send + 'static,
        logs: &LogPipeline,
        progress_file: PathBuf,
        reporter: Reporter,
    ) -> OutputTasks {
        let (progress_tx, progress_rx) = watch::channel(None);
        let progress_tx = Arc::new(progress_tx);
        let masker = logs.masker.clone();
        let tx = logs.tx.clone().expect("the pipeline is open");
        let watcher_done = CancellationToken::new();
        OutputTasks {
            out_pump: tokio::spawn(pump(
                stdout,
                Stream::Stdout,
                tx.clone(),
                masker.clone(),
                Some(progress_tx.clone()),
            )),
            err_pump: tokio::spawn(pump(stderr, Stream::Stderr, tx, masker.clone(), None)),
            watcher: tokio::spawn(watch_progress_file(
                progress_file,
                progress_tx,
                masker,
                watcher_done.clone(),
            )),
            watcher_done,
            progress_sender: tokio::spawn(send_progress(progress_rx, reporter).in_current_span()),
        }
    }

    /// After the job's group is dead: waits (bounded) for the pipes to close, and reads
    /// the progress file one last time.
    pub async fn settle(&mut self, logs: &LogPipeline) {
        let pumps = async {
            let _ = (&mut self.out_pump).await;
            let _ = (&mut self.err_pump).await;
        };
        if tokio::time::timeout(PIPE_DRAIN_LIMIT, pumps).await.is_err() {
            tracing::warn!("output pipes still open after the job ended; giving up on them");
            self.out_pump.abort();
            self.err_pump.abort();
            logs.system("[drover] output pipes were still open after the job ended; the rest of its output is lost")
                .await;
        }
        self.watcher_done.cancel();
        let _ = (&mut self.watcher).await;
    }

    /// Waits until the last progress update was sent (call after [`OutputTasks::settle`]).
    pub async fn progress_sent(self) {
        let _ = self.progress_sender.await;
    }

    /// Stops everything at once.
    pub fn abort(self) {
        self.out_pump.abort();
        self.err_pump.abort();
        self.watcher.abort();
        self.progress_sender.abort();
    }
}

/// Opens (appending) the job log mirror; a failure is logged and the mirror skipped.
fn open_mirror(path: PathBuf) -> Option<Mirror> {
    let opened = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
        });
    match opened {
        Ok(f) => Some(Mirror {
            out: std::io::BufWriter::new(f),
            path,
            failed: false,
        }),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open the job log mirror");
            None
        }
    }
}

/// A plain-text copy of the job's log lines.
struct Mirror {
    out: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    failed: bool,
}

impl Mirror {
    fn line(&mut self, text: &str) {
        use std::io::Write;
        if self.failed {
            return;
        }
        if let Err(e) = writeln!(self.out, "{text}") {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the job log mirror");
            self.failed = true;
        }
    }

    fn flush(&mut self) {
        use std::io::Write;
        if !self.failed && self.out.flush().is_err() {
            self.failed = true;
        }
    }
}

/// Owns the spool writer on a blocking thread; flushes after each burst of lines.
fn write_spool(
    mut writer: SpoolWriter,
    mut mirror: Option<Mirror>,
    mut rx: mpsc::Receiver<SpoolLine>,
) {
    let mut failed = false;
    let append =
        |w: &mut SpoolWriter, mirror: &mut Option<Mirror>, line: SpoolLine, failed: &mut bool| {
            if let Some(m) = mirror.as_mut() {
                match &line {
                    SpoolLine::Output(_, texts) => texts.iter().for_each(|t| m.line(t)),
                    SpoolLine::System(text) => m.line(text),
                }
            }
            let r = match line {
                SpoolLine::Output(stream, texts) => texts
                    .into_iter()
                    .try_for_each(|text| w.append_output(stream, text)),
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
        append(&mut writer, &mut mirror, line, &mut failed);
        for _ in 0..64 {
            match rx.try_recv() {
                Ok(line) => append(&mut writer, &mut mirror, line, &mut failed),
                Err(_) => break,
            }
        }
        if let Err(e) = writer.flush() {
            tracing::error!(error = %e, "cannot flush the log spool");
        }
        if let Some(m) = mirror.as_mut() {
            m.flush();
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
    progress: Option<Progress>,
) {
    let mut lines = LineReader::new(
        tokio::io::BufReader::with_capacity(64 * 1024, pipe),
        MAX_LINE_BYTES,
    )
    .keep_whole(masker.patterns());
    let prepare = |bytes: Vec<u8>| {
        let text = masker.mask(String::from_utf8_lossy(&bytes).into_owned());
        if let Some(progress) = &progress {
            if let Some(update) = output::parse_progress_marker(&text) {
                progress.send_replace(Some(update));
            }
        }
        text
    };
    let mut ended = false;
    while !ended {
        let mut bytes = 0;
        let mut texts = match lines.next_line().await {
            Ok(Some(b)) => vec![prepare(b)],
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(?stream, error = %e, "reading job output failed");
                break;
            }
        };
        // Take whatever else is waiting without blocking (`next_line` keeps its state
        // in the reader, so dropping it when it would wait loses nothing).
        while texts.len() < LINES_PER_MESSAGE && bytes < BYTES_PER_MESSAGE {
            match lines.next_line().now_or_never() {
                Some(Ok(Some(b))) => {
                    bytes += b.len();
                    texts.push(prepare(b));
                }
                Some(Ok(None)) => ended = true,
                Some(Err(e)) => {
                    tracing::warn!(?stream, error = %e, "reading job output failed");
                    ended = true;
                }
                None => break,
            }
            if ended {
                break;
            }
        }
        if tx.send(SpoolLine::Output(stream, texts)).await.is_err() {
            break;
        }
    }
}

/// Reads lines appended to the progress file every [`PROGRESS_POLL`], until `done`.
async fn watch_progress_file(
    path: PathBuf,
    tx: Progress,
    masker: Arc<Masker>,
    done: CancellationToken,
) {
    const MAX_PARTIAL: usize = 4096;
    const MAX_PER_TICK: u64 = 1024 * 1024;
    let mut offset = 0u64;
    let mut partial: Vec<u8> = Vec::new();
    let publish = |partial: &mut Vec<u8>| {
        let line = masker.mask(String::from_utf8_lossy(partial).into_owned());
        partial.clear();
        if let Some(update) = output::parse_progress(&line) {
            tx.send_replace(Some(update));
        }
    };
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
                    let room = MAX_PARTIAL.saturating_sub(partial.len());
                    partial.extend_from_slice(&piece[..piece.len().min(room)]);
                    if piece.ends_with(b"\n") {
                        publish(&mut partial);
                    }
                }
            }
        }
        if last {
            if !partial.is_empty() {
                publish(&mut partial);
            }
            return;
        }
    }
}

/// Ships spooled records in batches until the spool is closed and fully acknowledged,
/// up to [`BATCHES_IN_FLIGHT`] at a time so the agent reads the next batch while the
/// server stores the last (the server keeps records by seq, in whatever order they come).
/// A batch the server refuses is skipped (and logged) rather than blocking the rest.
/// The start waits up to `start_hold` to be reported; if the job's output ends in that
/// time and the rest fits one batch, they are handed back for the finish instead.
async fn ship_logs(
    mut reader: SpoolReader,
    reporter: Reporter,
    start: Arc<StartReport>,
    start_hold: Duration,
) -> Result<Option<Folded>, Abandoned> {
    let mut in_flight = FuturesOrdered::new();
    let mut held = false;
    loop {
        if !held && in_flight.is_empty() && start.is_pending() {
            held = true;
            let until = tokio::time::Instant::now() + start_hold;
            while !reader.is_closed() {
                if tokio::time::timeout_at(until, reader.changed())
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
        while in_flight.len() < BATCHES_IN_FLIGHT {
            let started = start.take();
            let mut batch = match reader.next_batch(BATCH_RECORDS, BATCH_BYTES).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, path = %reader.path().display(), "cannot read the log spool; the rest of the log is lost");
                    return Ok(None);
                }
            };
            if batch.count == 0 && started.is_none() {
                break;
            }
            if let Some((_, at)) = &started {
                // The job's output has ended and the rest fits in one batch.
                if in_flight.is_empty() && reader.is_closed() && !batch.full {
                    return Ok(Some(Folded {
                        started: *at,
                        body: batch.body,
                    }));
                }
            }
            let body = bytes::Bytes::from(std::mem::take(&mut batch.body));
            let reporter = reporter.clone();
            let full = batch.full;
            in_flight.push_back(async move {
                let sent = reporter.logs(body, started.is_some()).await;
                if let Some((tx, _)) = started {
                    let _ = tx.send(match sent {
                        Err(GaveUp::Abandoned) => Err(Abandoned),
                        _ => Ok(()),
                    });
                }
                (sent, batch)
            });
            if !full {
                break;
            }
        }
        let Some((sent, batch)) = in_flight.next().await else {
            if reader.is_done() {
                return Ok(None);
            }
            tokio::select! {
                _ = reader.changed() => {}
                _ = start.notify.notified() => {}
            }
            continue;
        };
        match sent {
            Ok(()) => {}
            Err(GaveUp::Refused) => {
                tracing::error!(
                    records = batch.count,
                    "log records refused by the server; skipping them"
                );
            }
            Err(GaveUp::Abandoned) => return Err(Abandoned),
        }
        reader.ack(&batch);
        if in_flight.is_empty() && !batch.full && !reader.is_done() {
            // Gather lines for a moment, but not once the job's output has ended (the
            // finish report waits for the last batch) or a start waits to be reported.
            let deadline = tokio::time::Instant::now() + BATCH_INTERVAL;
            while !reader.is_closed() && !start.is_pending() {
                let wake = async {
                    tokio::select! {
                        _ = reader.changed() => {}
                        _ = start.notify.notified() => {}
                    }
                };
                if tokio::time::timeout_at(deadline, wake).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Sends progress updates, at most one per [`PROGRESS_INTERVAL`], always the last one.
async fn send_progress(mut rx: watch::Receiver<Option<ProgressUpdate>>, reporter: Reporter) {
    while rx.changed().await.is_ok() {
        let Some(update) = rx.borrow_and_update().clone() else {
            continue;
        };
        if let Err(GaveUp::Abandoned) = reporter.progress(&update).await {
            return;
        }
        tokio::time::sleep(PROGRESS_INTERVAL).await;
    }
}

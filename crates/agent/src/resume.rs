//! Reports what an earlier run of this agent could not: jobs that ended (their record in
//! `attempts/` says how) after their log spool was complete, but before the server had
//! the whole log and the finish. Sent before the first poll, while the attempts are still
//! this agent's, so that such a job is not run a second time. Resending log records is
//! harmless: the server stores each `seq` once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{CallError, Client, RetryBackoff};
use crate::fence::Record;
use crate::layout::{self, AttemptFiles};

/// Log records per request when a spool is sent again.
const RECORDS_PER_BATCH: usize = 1000;
/// Longest the agent keeps trying to report one ended attempt before it lets the server
/// retry the job instead.
const REPORT_LIMIT: Duration = Duration::from_secs(30);

/// Spool files of the work dir that no ended attempt needs (an earlier run's spools of
/// attempts the server gives up on); deleted at start.
pub async fn remove_stale_spools(work_dir: &Path, ended: &[(PathBuf, Record)]) {
    let keep: Vec<PathBuf> = ended
        .iter()
        .map(|(p, _)| AttemptFiles::of_record(work_dir, p).spool)
        .collect();
    let Ok(mut dir) = tokio::fs::read_dir(layout::spool_dir(work_dir)).await else {
        return;
    };
    while let Ok(Some(entry)) = dir.next_entry().await {
        if !keep.contains(&entry.path()) {
            let _ = tokio::fs::remove_file(entry.path()).await;
        }
    }
}

/// Sends the logs and finish of every ended attempt, then removes its files; returns how
/// many the server took. With `ours` false (the server did not know this agent any
/// more) the attempts are only cleaned up.
pub async fn report_ended(
    client: &Client,
    work_dir: &Path,
    ended: Vec<(PathBuf, Record)>,
    ours: bool,
    keep_workspaces: bool,
) -> usize {
    let mut reported = 0;
    for (path, rec) in ended {
        let files = AttemptFiles::of_record(work_dir, &path);
        if ours {
            match report(client, &files, &rec).await {
                Ok(()) => {
                    tracing::info!(job_id = %rec.job_id, attempt = rec.attempt, "reported a job that ended while the agent was down");
                    reported += 1;
                }
                Err(e) => {
                    tracing::warn!(job_id = %rec.job_id, attempt = rec.attempt, error = %e, "cannot report a job that ended while the agent was down; the server will retry it")
                }
            }
        }
        if !keep_workspaces {
            let _ = tokio::fs::remove_dir_all(&files.workspace).await;
        }
        let _ = tokio::fs::remove_file(&files.spool).await;
        let _ = tokio::fs::remove_file(&files.record).await;
    }
    reported
}

async fn report(client: &Client, files: &AttemptFiles, rec: &Record) -> Result<(), CallError> {
    let Some(finish) = rec.ended.clone() else {
        return Ok(());
    };
    let spool = tokio::fs::read(&files.spool).await.unwrap_or_default();
    let lines: Vec<&[u8]> = spool
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let mut batches: Vec<&[&[u8]]> = lines.chunks(RECORDS_PER_BATCH).collect();
    if batches.is_empty() {
        batches.push(&[]);
    }
    let give_up = Instant::now() + REPORT_LIMIT;
    for (i, batch) in batches.iter().enumerate() {
        let mut body = br#"{"records":["#.to_vec();
        body.extend(batch.join(&b","[..]));
        body.extend_from_slice(b"]}");
        // The first batch also reports the start, in case it never reached the server.
        retry(give_up, || {
            client.logs(&rec.job_id, rec.attempt, body.clone(), i == 0)
        })
        .await?;
    }
    let mut finish = finish;
    // The recorded outcome and error already account for a result file that cannot be
    // read (it was read before the end was noted); only its value is missing.
    finish.result = crate::attempt::read_result(&files.result()).await.0;
    retry(give_up, || client.finish(&rec.job_id, rec.attempt, &finish)).await
}

/// Calls `f` until it succeeds, fails for good, or `give_up` passes.
async fn retry<F, Fut>(give_up: Instant, mut f: F) -> Result<(), CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), CallError>>,
{
    let mut backoff = RetryBackoff::default();
    loop {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() || matches!(e, CallError::Unauthorized(_)) => {
                let delay = backoff.next_delay();
                if Instant::now() + delay > give_up {
                    return Err(e);
                }
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

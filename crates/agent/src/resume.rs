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

/// Log records per request when a spool is sent again, and their bytes (as the shipper
/// sends them: well under the server's 8 MiB body limit, whatever the lines' length).
const RECORDS_PER_BATCH: usize = 1000;
const BYTES_PER_BATCH: usize = 1024 * 1024;
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
    // What spilled to the spool file, then what only memory held when the job ended.
    let mut spool = tokio::fs::read(&files.spool).await.unwrap_or_default();
    spool.extend_from_slice(&rec.tail);
    let lines: Vec<&[u8]> = spool
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let batches = batches(&lines);
    let give_up = Instant::now() + REPORT_LIMIT;
    for (i, batch) in batches.iter().enumerate() {
        let mut body = br#"{"records":["#.to_vec();
        body.extend(batch.join(&b","[..]));
        body.extend_from_slice(b"]}");
        let body = bytes::Bytes::from(body);
        // The first batch also reports the start, in case it never reached the server.
        retry(give_up, || {
            client.logs(&rec.job_id, rec.attempt, body.clone(), i == 0)
        })
        .await?;
    }
    let mut finish = finish;
    // The record holds the result, masked, as the attempt read it; a record written
    // before records held it has only the outcome, and the file is read again.
    if finish.result.is_none() {
        finish.result = crate::attempt::read_result(&files.result()).await.0;
    }
    retry(give_up, || client.finish(&rec.job_id, rec.attempt, &finish)).await
}

/// The spool's lines in requests of at most [`RECORDS_PER_BATCH`] records and
/// [`BYTES_PER_BATCH`] bytes (a longer line alone); one empty request for an empty spool,
/// since the first request also reports the start.
fn batches<'a>(lines: &[&'a [u8]]) -> Vec<Vec<&'a [u8]>> {
    let mut batches: Vec<Vec<&[u8]>> = vec![Vec::new()];
    let mut bytes = 0;
    for &line in lines {
        let last = batches.last_mut().expect("never empty");
        if !last.is_empty()
            && (last.len() == RECORDS_PER_BATCH || bytes + line.len() > BYTES_PER_BATCH)
        {
            batches.push(Vec::new());
            bytes = 0;
        }
        bytes += line.len() + 1;
        batches.last_mut().expect("never empty").push(line);
    }
    batches
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resent_spools_are_cut_by_records_and_by_bytes() {
        assert_eq!(batches(&[]), vec![Vec::<&[u8]>::new()]);
        let short = vec![&b"{}"[..]; 2500];
        let sizes: Vec<usize> = batches(&short).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1000, 1000, 500]);
        // 300 KiB records: three fit in 1 MiB, and no request nears the body limit.
        let long = vec![300 * 1024; 10]
            .into_iter()
            .map(|n| vec![b'x'; n])
            .collect::<Vec<_>>();
        let refs: Vec<&[u8]> = long.iter().map(Vec::as_slice).collect();
        let cut = batches(&refs);
        assert_eq!(cut.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 3, 1]);
        let huge = vec![b'x'; 3 * 1024 * 1024];
        assert_eq!(
            batches(&[&huge[..], b"{}"]).len(),
            2,
            "a long line goes alone"
        );
    }
}

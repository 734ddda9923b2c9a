//! The logs of a chaos run: what the server stored, and what followers saw live through
//! server restarts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use drover_core::api::{Job, LogPage, LogRecord, Stream};
use futures::StreamExt;

use super::ledger::expected_lines;
use super::system::retry;
use super::{Tally, LIMIT};
use crate::api::Api;
use crate::roles::ADMIN;

/// A live follower of one job: its id and the records it saw, by attempt.
pub(super) type Follower =
    tokio::task::JoinHandle<(String, anyhow::Result<BTreeMap<u32, Vec<LogRecord>>>)>;

/// Follows `n` of the jobs, spread over the list, from their first attempt to their end.
pub(super) fn follow_some(api: &Api, ids: &[String], n: usize) -> Vec<Follower> {
    ids.iter()
        .step_by((ids.len() / n.max(1)).max(1))
        .take(n)
        .map(|id| {
            let (api, id) = (api.clone(), id.clone());
            tokio::spawn(async move { (id.clone(), follow(&api, &id).await) })
        })
        .collect()
}

/// Stored logs of every job's last attempt against what it printed, and followed logs
/// against stored ones.
pub(super) async fn count_logs(
    api: &Api,
    jobs: &[Job],
    followers: Vec<Follower>,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    for job in jobs.iter().filter(|j| j.current_attempt > 0) {
        let stored = stored_log(api, &job.id, job.current_attempt).await?;
        let (missing, dup) = compare(&expected_lines(), &stdout_of(&stored));
        if missing + dup > 0 {
            eprintln!(
                "    job {} attempt {}: {missing} stored lines missing, {dup} duplicated: {:?}",
                job.id,
                job.current_attempt,
                stored.iter().map(|r| (r.seq, &r.text)).collect::<Vec<_>>()
            );
        }
        tally.stored_missing += missing;
        tally.stored_duplicated += dup;
    }
    for f in followers {
        let (id, followed) = f.await?;
        let followed = followed.with_context(|| format!("following {id}"))?;
        let job = jobs.iter().find(|j| j.id == id).context("followed job")?;
        let stored = stored_log(api, &id, job.current_attempt).await?;
        let mine = followed
            .get(&job.current_attempt)
            .cloned()
            .unwrap_or_default();
        let want: Vec<u64> = stored.iter().map(|r| r.seq).collect();
        let got: Vec<u64> = mine.iter().map(|r| r.seq).collect();
        let (missing, dup) = compare(&want, &got);
        if missing + dup > 0 {
            eprintln!("    followed job {id} attempt {}: {missing} missing, {dup} duplicated: {got:?} vs {want:?}", job.current_attempt);
        }
        tally.followed_missing += missing;
        tally.followed_duplicated += dup;
    }
    Ok(())
}

fn stdout_of(records: &[LogRecord]) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.stream == Stream::Stdout)
        .map(|r| r.text.clone())
        .collect()
}

/// `(missing, duplicated)`: items of `want` absent from `got`, and items of `got` seen
/// more than once.
fn compare<T: Ord + Clone>(want: &[T], got: &[T]) -> (usize, usize) {
    let mut counts: BTreeMap<T, usize> = BTreeMap::new();
    for g in got {
        *counts.entry(g.clone()).or_default() += 1;
    }
    let missing = want.iter().filter(|w| !counts.contains_key(w)).count();
    let dup = counts.values().map(|c| c.saturating_sub(1)).sum();
    (missing, dup)
}

/// Every stored record of one attempt.
async fn stored_log(api: &Api, id: &str, attempt: u32) -> anyhow::Result<Vec<LogRecord>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("/v1/jobs/{id}/logs?attempt={attempt}&after={after}&limit=10000");
        let page: LogPage = retry(|| api.get(&path)).await?;
        if page.records.is_empty() {
            return Ok(out);
        }
        after = page.last_seq;
        out.extend(page.records);
    }
}

/// Follows a job's log live over Server-Sent Events from its first attempt to its end,
/// reconnecting after the last record seen when the server goes away; records by attempt.
async fn follow(api: &Api, id: &str) -> anyhow::Result<BTreeMap<u32, Vec<LogRecord>>> {
    let http = reqwest::Client::new();
    let mut out: BTreeMap<u32, Vec<LogRecord>> = BTreeMap::new();
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        anyhow::ensure!(started.elapsed() < LIMIT, "still following after {LIMIT:?}");
        let job: Job = match api.job(id).await {
            Ok(j) => j,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if job.current_attempt == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        // Done only after an `end` of the job's last attempt (below): a dropped
        // connection is followed again from the last record seen, even when the job
        // ended meanwhile.
        attempt = attempt.max(1);
        let after = out
            .get(&attempt)
            .and_then(|r| r.last())
            .map_or(0, |r| r.seq);
        let base = api.base().to_string();
        let resp = http
            .get(format!(
                "{base}/v1/jobs/{id}/logs/stream?attempt={attempt}&after={after}"
            ))
            .bearer_auth(ADMIN)
            .send()
            .await;
        let ended = match resp {
            Ok(r) if r.status().is_success() => read_sse(r, out.entry(attempt).or_default()).await,
            Err(_) => {
                api.fail_over(&base);
                false
            }
            _ => false,
        };
        if ended {
            let job: Job = retry(|| api.job(id)).await?;
            if attempt < job.current_attempt {
                attempt += 1;
            } else if job.state.is_terminal() {
                return Ok(out);
            } else {
                // The attempt ended but its job has not moved on yet.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Reads `record` events into `into` until `end` (true) or the connection drops (false).
async fn read_sse(resp: reqwest::Response, into: &mut Vec<LogRecord>) -> bool {
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { return false };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let event: String = buf.drain(..i + 2).collect();
            if event.lines().any(|l| l == "event: end") {
                return true;
            }
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                if let Ok(rec) = serde_json::from_str::<LogRecord>(data) {
                    into.push(rec);
                }
            }
        }
    }
    false
}

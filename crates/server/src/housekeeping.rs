//! Work that no request waits for: moving ended attempts' logs to the object store,
//! expiring files, artifacts and logs past `--retain`, deleting a job with everything
//! it left behind, and forgetting agents gone for longer than `--prune-agents-after`. Bytes go before rows, so an interrupted run leaves
//! rows that the next run (or a repeated delete) finishes, never bytes nobody can find.

use std::time::Duration;

use chrono::Utc;

use crate::files::file_key;
use crate::state::AppState;
use crate::store::{Result, StoreError};

/// Attempts or files handled per round.
const BATCH: u32 = 200;
/// How often the log mover looks for ended attempts when nothing woke it.
const MOVE_EVERY: Duration = Duration::from_secs(30);

/// Moves the logs of ended attempts out of the database, when an object store is
/// configured: right after a finish (the API wakes it) and every 30 s for anything
/// else that ended (lost and released attempts, a restart).
pub async fn log_mover(state: AppState) {
    if !state.files.is_remote() {
        return;
    }
    loop {
        while state.leader.is_leader() {
            match move_some_logs(&state).await {
                Ok(n) if n == BATCH as usize => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot move logs to the object store; will try again");
                    break;
                }
            }
        }
        tokio::select! {
            _ = state.hub.logs_to_move() => {}
            _ = tokio::time::sleep(MOVE_EVERY) => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
}

/// One round of the mover; how many attempts it looked at.
async fn move_some_logs(state: &AppState) -> Result<usize> {
    let attempts = state.store.logs_to_move(BATCH).await?;
    for (job_id, attempt) in &attempts {
        let chunks = state.store.move_logs(job_id, *attempt).await?;
        tracing::debug!(job = %job_id, attempt, chunks, "moved a log to the object store");
    }
    Ok(attempts.len())
}

/// Expires files, artifacts and logs older than `--retain`, once a minute at most
/// (retention is counted in days; finer steps would only cost queries).
pub async fn retention(state: AppState) {
    let Some(retain) = state.config.retain else {
        return;
    };
    let every = (retain / 100).clamp(Duration::from_secs(60), Duration::from_secs(3600));
    loop {
        let cutoff =
            Utc::now() - chrono::Duration::from_std(retain).unwrap_or(chrono::Duration::MAX);
        let round = if state.leader.is_leader() {
            expire(&state, cutoff).await
        } else {
            Ok(0)
        };
        match round {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deleted = n,
                "retention deleted files, artifacts and logs of ended jobs"
            ),
            Err(e) => tracing::warn!(error = %e, "retention failed; will try again"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
}

/// Deletes artifacts and logs of jobs that ended before `cutoff`, and uploads made
/// before it that no job not yet ended needs. Returns how many things went.
pub async fn expire(state: &AppState, cutoff: chrono::DateTime<Utc>) -> Result<usize> {
    let mut deleted = 0;
    loop {
        let mut ids = state.store.artifacts_to_expire(cutoff, BATCH).await?;
        ids.extend(state.store.uploads_to_expire(cutoff, BATCH).await?);
        let logs = state.store.logs_to_expire(cutoff, BATCH).await?;
        if ids.is_empty() && logs.is_empty() {
            return Ok(deleted);
        }
        delete_files(state, &ids).await?;
        for (job_id, attempt) in &logs {
            state.store.delete_logs(job_id, *attempt).await?;
        }
        deleted += ids.len() + logs.len();
    }
}

/// Removes agents not seen for `--prune-agents-after`, once a minute (or twice per
/// that time, when it is shorter).
pub async fn agent_pruner(state: AppState) {
    loop {
        let after = chrono::Duration::from_std(state.config.prune_agents_after)
            .unwrap_or(chrono::Duration::MAX);
        let now = Utc::now();
        let unseen = if state.leader.is_leader() {
            state.store.agents_unseen_since(now - after).await
        } else {
            Ok(Vec::new())
        };
        match unseen {
            Ok(ids) => {
                for id in ids {
                    match state.store.remove_agent(&id, "server:prune", now).await {
                        Ok(()) => {
                            tracing::info!(agent = %id, "forgot an agent not seen for longer than --prune-agents-after")
                        }
                        Err(e) => tracing::warn!(agent = %id, error = %e, "cannot prune an agent"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot look for agents to prune"),
        }
        let every = (state.config.prune_agents_after / 2).min(Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
}

/// Deletes files' bytes, then their rows.
async fn delete_files(state: &AppState, ids: &[String]) -> Result<()> {
    for id in ids {
        state
            .files
            .delete(&file_key(id))
            .await
            .map_err(StoreError::Unavailable)?;
    }
    state.store.forget_files(ids).await
}

/// Deletes an ended job: its logs, its artifacts' bytes, then its rows.
pub async fn delete_job(state: &AppState, id: &str) -> Result<()> {
    let job = state.store.job(id).await?;
    if !job.state.is_terminal() {
        return Err(StoreError::Conflict(format!(
            "job {id} is {}; cancel it or wait for it to end before deleting it",
            job.state
        )));
    }
    for a in &job.attempts {
        state.store.delete_logs(id, a.number).await?;
    }
    let artifacts = state.store.artifact_ids(id).await?;
    delete_files(state, &artifacts).await?;
    state.store.delete_job_rows(id).await?;
    state.hub.job_changed(id);
    Ok(())
}

//! Reads for the dashboard's views: per-queue counts and the last hour's throughput and
//! latency, the waiting jobs a queue hands out next, jobs by id for live lists, and the
//! end of a log for opening it at its tail.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use drover_core::api::Job;
use drover_core::labels::Labels;
use sqlx::Row;

use super::jobs::{job_from_row, JOB_COLS};
use super::{from_ms, json_col, ms, Result, Store};

/// Minutes the overview's charts cover.
pub const OVERVIEW_MINUTES: usize = 60;

/// One queue at a glance.
#[derive(Debug, Clone, Default)]
pub struct QueueOverview {
    /// Queued, whether due or not.
    pub queued: u64,
    /// Queued and due now (`run_at` passed).
    pub due: u64,
    /// Leased or running.
    pub running: u64,
    /// When the longest-waiting due job became due.
    pub oldest_due: Option<DateTime<Utc>>,
    /// Per minute of the last hour, oldest first: jobs that ended.
    pub ended: Vec<u64>,
    /// Per minute of the last hour, oldest first: the mean submit→start time (ms) of the
    /// jobs that ended then; None for a minute in which none ended after starting.
    pub latency_ms: Vec<Option<f64>>,
}

impl Store {
    /// Every queue with jobs that have not ended or that ended in the last hour.
    pub async fn queue_overview(
        &self,
        now: DateTime<Utc>,
    ) -> Result<BTreeMap<String, QueueOverview>> {
        let mut out: BTreeMap<String, QueueOverview> = BTreeMap::new();
        let blank = || QueueOverview {
            ended: vec![0; OVERVIEW_MINUTES],
            latency_ms: vec![None; OVERVIEW_MINUTES],
            ..Default::default()
        };
        let rows = sqlx::query(
            "SELECT queue, state, COUNT(*) AS n, SUM(CASE WHEN run_at <= $1 THEN 1 ELSE 0 END) AS due, MIN(CASE WHEN run_at <= $1 THEN run_at END) AS oldest FROM jobs WHERE state IN ('queued', 'leased', 'running') GROUP BY queue, state",
        )
        .bind(ms(now))
        .fetch_all(&self.read)
        .await?;
        for row in rows {
            let queue: String = row.try_get("queue")?;
            let state: String = row.try_get("state")?;
            let n = row.try_get::<i64, _>("n")? as u64;
            let q = out.entry(queue).or_insert_with(blank);
            if state == "queued" {
                q.queued = n;
                q.due = row.try_get::<Option<i64>, _>("due")?.unwrap_or(0) as u64;
                q.oldest_due = row.try_get::<Option<i64>, _>("oldest")?.map(from_ms);
            } else {
                q.running += n;
            }
        }
        let since = ms(now) - OVERVIEW_MINUTES as i64 * 60_000;
        let rows = sqlx::query(
            "SELECT queue, (finished_at - $1) / 60000 AS m, COUNT(*) AS n, AVG(CAST(started_at - created_at AS DOUBLE PRECISION)) AS latency FROM jobs WHERE finished_at >= $1 GROUP BY queue, m",
        )
        .bind(since)
        .fetch_all(&self.read)
        .await?;
        for row in rows {
            let minute = row.try_get::<i64, _>("m")?;
            let Some(i) = usize::try_from(minute)
                .ok()
                .filter(|&i| i < OVERVIEW_MINUTES)
            else {
                continue;
            };
            let q = out.entry(row.try_get("queue")?).or_insert_with(blank);
            q.ended[i] = row.try_get::<i64, _>("n")? as u64;
            q.latency_ms[i] = row.try_get::<Option<f64>, _>("latency")?;
        }
        Ok(out)
    }

    /// The due queued jobs `queue` hands out next, at most `limit`, in claim order.
    pub async fn next_waiting(
        &self,
        queue: &str,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Job>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLS} FROM jobs WHERE state = 'queued' AND queue = $1 AND run_at <= $2 ORDER BY priority DESC, num LIMIT $3"
        ))
        .bind(queue)
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Queue and required labels of the due queued jobs of every queue, in claim order,
    /// at most `limit`: what the provisioner weighs (no more of each row than that).
    pub async fn waiting_demand(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(String, Labels)>> {
        let rows = sqlx::query(
            "SELECT queue, required FROM jobs WHERE state = 'queued' AND run_at <= $1 ORDER BY priority DESC, num LIMIT $2",
        )
        .bind(ms(now))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("queue")?, json_col(r, "required")?)))
            .collect()
    }

    /// The jobs with these ids that exist (without their attempts), in no set order.
    pub async fn jobs_by_ids(&self, ids: &[String]) -> Result<Vec<Job>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {JOB_COLS} FROM jobs WHERE id IN ({})",
            self.params(0, ids.len())
        );
        let mut query = sqlx::query(&sql);
        for id in ids {
            query = query.bind(id.clone());
        }
        let rows = query.fetch_all(&self.read).await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Jobs agents hold now: `(agent id, job id, job name)`, by agent.
    pub async fn held_jobs(&self) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query(
            "SELECT agent_id, id, name FROM jobs WHERE state IN ('leased', 'running') AND agent_id IS NOT NULL ORDER BY agent_id, num",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("agent_id")?, r.try_get("id")?, r.try_get("name")?)))
            .collect()
    }

    /// The highest `seq` stored for an attempt's log (0 when none).
    pub async fn last_log_seq(&self, job_id: &str, attempt: u32) -> Result<u64> {
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(last_seq) FROM log_chunks WHERE job_id = $1 AND attempt = $2",
        )
        .bind(job_id)
        .bind(i64::from(attempt))
        .fetch_one(&self.logs_read)
        .await?;
        Ok(last.unwrap_or(0).max(0) as u64)
    }
}

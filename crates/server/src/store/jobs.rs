//! Job verbs for clients: enqueue, read, list, cancel, retry, timeline.

use chrono::{DateTime, Utc};
use drover_core::api::{Attempt, AttemptState, Gpus, Job, JobEvent, ListJobsQuery, Progress};
use drover_core::backoff::Backoff;
use drover_core::template::TemplateRef;
use drover_core::{transition, Event, JobState, ValidJob};
use sqlx::any::AnyRow;
use sqlx::{Any, AnyConnection, Row, Transaction};

use super::audit::audit_in_tx;
use super::deps::Start;
use drover_core::group::Dependency;
use std::collections::{BTreeMap, HashMap};

use super::{
    from_ms, json_col, ms, opt_time, parse_col, to_json, Result, Store, StoreError, CHUNK,
    ENDED_SQL,
};

/// Columns `job_from_row` reads.
pub(crate) const JOB_COLS: &str = "num, id, name, queue, priority, state, cancel_requested, exec, labels, timeout_ms, grace_ms, max_attempts, backoff_base_ms, backoff_cap_ms, env, secrets, metadata, idempotency_key, inputs, artifacts, attempts_used, current_attempt, agent_id, progress_pct, progress_msg, result, exit_code, error, created_at, run_at, started_at, finished_at, template_name, template_version, concurrency_key, concurrency_limit, group_id, array_index, log_path";

pub(crate) fn job_from_row(row: &AnyRow) -> Result<Job> {
    let secrets: super::seal::SealedSecrets = json_col(row, "secrets")?;
    let progress = row
        .try_get::<Option<f64>, _>("progress_pct")?
        .map(|percent| -> Result<Progress> {
            Ok(Progress {
                percent,
                message: row
                    .try_get::<Option<String>, _>("progress_msg")?
                    .unwrap_or_default(),
            })
        })
        .transpose()?;
    let result = row
        .try_get::<Option<String>, _>("result")?
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("result: {e}")))?;
    Ok(Job {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        queue: row.try_get("queue")?,
        priority: row.try_get::<i64, _>("priority")? as i32,
        state: parse_col(row, "state")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        exec: json_col(row, "exec")?,
        labels: json_col(row, "labels")?,
        timeout_ms: row
            .try_get::<Option<i64>, _>("timeout_ms")?
            .map(|v| v as u64),
        grace_ms: row.try_get::<i64, _>("grace_ms")? as u64,
        max_attempts: row.try_get::<i64, _>("max_attempts")? as u32,
        backoff: Backoff {
            base_ms: row.try_get::<i64, _>("backoff_base_ms")? as u64,
            cap_ms: row.try_get::<i64, _>("backoff_cap_ms")? as u64,
        },
        env: json_col(row, "env")?,
        secret_names: secrets.names,
        metadata: json_col(row, "metadata")?,
        idempotency_key: row.try_get("idempotency_key")?,
        inputs: json_col(row, "inputs")?,
        artifacts: json_col(row, "artifacts")?,
        attempts_used: row.try_get::<i64, _>("attempts_used")? as u32,
        current_attempt: row.try_get::<i64, _>("current_attempt")? as u32,
        progress,
        result,
        exit_code: row
            .try_get::<Option<i64>, _>("exit_code")?
            .map(|v| v as i32),
        error: row.try_get("error")?,
        created_at: from_ms(row.try_get("created_at")?),
        run_at: from_ms(row.try_get("run_at")?),
        started_at: opt_time(row, "started_at")?,
        finished_at: opt_time(row, "finished_at")?,
        template: match row.try_get::<Option<String>, _>("template_name")? {
            Some(name) => Some(TemplateRef {
                name,
                version: row.try_get::<i64, _>("template_version")? as u32,
            }),
            None => None,
        },
        concurrency_key: row.try_get("concurrency_key")?,
        concurrency_limit: row
            .try_get::<Option<i64>, _>("concurrency_limit")?
            .map(|v| v as u32),
        group_id: row.try_get("group_id")?,
        array_index: row
            .try_get::<Option<i64>, _>("array_index")?
            .map(|v| v as u32),
        after: Vec::new(),
        log_path: row.try_get("log_path")?,
        attempts: Vec::new(),
        queue_position: None,
        wait_reason: None,
    })
}

/// A job event to record in the same transaction as the change it describes.
pub(crate) struct NewEvent<'a> {
    pub job_id: &'a str,
    pub kind: &'a str,
    pub from: Option<JobState>,
    pub to: JobState,
    pub attempt: Option<u32>,
    pub actor: &'a str,
    pub reason: Option<&'a str>,
}

pub(crate) async fn record_event(
    tx: &mut Transaction<'_, Any>,
    e: NewEvent<'_>,
    now: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO job_events (job_id, at, kind, from_state, to_state, attempt, actor, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(e.job_id)
    .bind(ms(now))
    .bind(e.kind)
    .bind(e.from.map(|s| s.as_str()))
    .bind(e.to.as_str())
    .bind(e.attempt.map(i64::from))
    .bind(e.actor)
    .bind(e.reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Records job events set-wise: one multi-row INSERT per [`CHUNK`] events.
    pub(crate) async fn record_events(
        &self,
        tx: &mut Transaction<'_, Any>,
        events: &[NewEvent<'_>],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let at: Vec<(&NewEvent, DateTime<Utc>)> = events.iter().map(|e| (e, now)).collect();
        self.record_events_at(tx, &at).await
    }

    /// [`Store::record_events`] with each event's own time.
    pub(crate) async fn record_events_at<'e, E: std::borrow::Borrow<NewEvent<'e>>>(
        &self,
        tx: &mut Transaction<'_, Any>,
        events: &[(E, DateTime<Utc>)],
    ) -> Result<()> {
        for chunk in events.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO job_events (job_id, at, kind, from_state, to_state, attempt, actor, reason) VALUES {}",
                self.values(chunk.len(), 8)
            );
            let mut q = sqlx::query(&sql);
            for (e, at) in chunk {
                let e = e.borrow();
                q = q
                    .bind(e.job_id)
                    .bind(ms(*at))
                    .bind(e.kind)
                    .bind(e.from.map(|s| s.as_str()))
                    .bind(e.to.as_str())
                    .bind(e.attempt.map(i64::from))
                    .bind(e.actor)
                    .bind(e.reason);
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }
}

/// The answer to an attempt write resent after it took effect: nothing more is changed,
/// and the job is returned as it is now.
pub(crate) async fn answered_again(
    mut tx: Transaction<'_, Any>,
    job_id: &str,
) -> Result<super::AttemptWrite> {
    let job = job_in_tx(&mut tx, job_id).await?;
    tx.commit().await?;
    Ok(super::AttemptWrite {
        job,
        elapsed: None,
        released: Vec::new(),
    })
}

/// A job's row, without its attempts and dependencies: what an agent's write answers.
pub(crate) async fn job_in_tx(conn: &mut AnyConnection, id: &str) -> Result<Job> {
    let row = sqlx::query(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .ok_or_else(|| not_found(id))?;
    job_from_row(&row)
}

/// A job as `GET /v1/jobs/{id}` shows it, with its attempts and dependencies: also what a
/// cancel, a retry, a rerun and a repeated submit answer.
pub(crate) async fn full_job(conn: &mut AnyConnection, id: &str) -> Result<Job> {
    let mut job = job_in_tx(conn, id).await?;
    let rows = sqlx::query(
        "SELECT number, agent_id, state, leased_at, started_at, finished_at, exit_code, error, logs, gpus FROM attempts WHERE job_id = $1 ORDER BY number",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let state: String = row.try_get("state")?;
        job.attempts.push(Attempt {
            number: row.try_get::<i64, _>("number")? as u32,
            agent_id: row.try_get("agent_id")?,
            state: AttemptState::parse(&state)
                .ok_or_else(|| StoreError::Corrupt(format!("attempt state {state:?}")))?,
            leased_at: from_ms(row.try_get("leased_at")?),
            started_at: opt_time(&row, "started_at")?,
            finished_at: opt_time(&row, "finished_at")?,
            exit_code: row
                .try_get::<Option<i64>, _>("exit_code")?
                .map(|v| v as i32),
            error: row.try_get("error")?,
            log: super::logs::log_place(&row.try_get::<String, _>("logs")?).into(),
            gpus: row
                .try_get::<Option<String>, _>("gpus")?
                .as_deref()
                .and_then(Gpus::parse),
        });
    }
    job.after = super::deps::after_of(&mut *conn, id).await?;
    Ok(job)
}

/// How a job just enqueued looks, without reading it back.
fn new_job_view(
    id: String,
    job: ValidJob,
    start: Start,
    after: &[super::deps::Edge],
    now: DateTime<Utc>,
) -> Job {
    // Stored timestamps have millisecond precision; show the same.
    let trunc = |t: DateTime<Utc>| from_ms(ms(t));
    Job {
        id,
        name: job.name,
        queue: job.queue,
        priority: job.priority.0,
        state: start.state,
        cancel_requested: false,
        exec: job.exec,
        labels: job.labels,
        timeout_ms: job.timeout_ms,
        grace_ms: job.grace_ms,
        max_attempts: job.max_attempts,
        backoff: job.backoff,
        env: job.env,
        secret_names: job.secrets.into_keys().collect(),
        metadata: job.metadata,
        idempotency_key: job.idempotency_key,
        inputs: job.inputs,
        artifacts: job.artifacts,
        attempts_used: 0,
        current_attempt: 0,
        progress: None,
        result: None,
        exit_code: None,
        finished_at: start.error.is_some().then(|| trunc(now)),
        error: start.error,
        created_at: trunc(now),
        run_at: trunc(job.run_at),
        started_at: None,
        attempts: Vec::new(),
        queue_position: None,
        wait_reason: None,
        template: job.template,
        concurrency_key: job.concurrency.as_ref().map(|c| c.0.clone()),
        concurrency_limit: job.concurrency.as_ref().map(|c| c.1),
        array_index: job.group.as_ref().map(|g| g.1),
        group_id: job.group.map(|g| g.0),
        log_path: job.log_path,
        after: after
            .iter()
            .map(|e| Dependency {
                job: e.dep_id.clone(),
                condition: e.condition,
            })
            .collect(),
    }
}

/// Which jobs a cancel or retry acts on.
#[derive(Clone, Copy)]
pub(super) enum Of<'a> {
    Job(&'a str),
    /// The members of a group.
    Group(&'a str),
}

/// A job row a cancel or retry acts on.
pub(super) struct Subject {
    id: String,
    state: JobState,
    cancel_requested: bool,
    agent_id: Option<String>,
    has_dependents: bool,
    attempt: u32,
}

impl Subject {
    pub(super) fn id(&self) -> &str {
        &self.id
    }

    pub(super) fn state(&self) -> JobState {
        self.state
    }
}

/// What a cancel did.
#[derive(Debug, Default)]
pub struct Canceled {
    /// Jobs canceled or asked to stop.
    pub changed: u64,
    /// Agents holding jobs asked to stop: wake them.
    pub agents: Vec<String>,
    /// Jobs queued because they waited for a canceled one with `:any` or `:failed`.
    pub released: Vec<String>,
}

pub(crate) fn not_found(id: &str) -> StoreError {
    StoreError::NotFound(format!("no job with id {id:?}"))
}

impl Store {
    /// Stores new jobs in one transaction. Returns each job and whether it was created
    /// (false: its idempotency key was seen before and the earlier job is returned).
    pub async fn enqueue(
        &self,
        jobs: Vec<ValidJob>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<(Job, bool)>> {
        // Two submits of the same new key at once (on PostgreSQL, where transactions run
        // side by side): neither saw the other's job, and the later INSERT breaks the
        // key's uniqueness. Run again, it finds the earlier job and returns it, as it
        // would for a resend.
        let mut again = true;
        loop {
            let mut tx = self.write.begin().await?;
            match self.enqueue_in(&mut tx, jobs.clone(), actor, now).await {
                Ok(out) => {
                    tx.commit().await?;
                    return Ok(out);
                }
                Err(StoreError::Db(sqlx::Error::Database(e)))
                    if again
                        && e.is_unique_violation()
                        && e.constraint().is_none_or(|c| c.contains("idempotency")) =>
                {
                    again = false;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// [`Store::enqueue`] inside a transaction (a group's members go in with its row).
    pub(super) async fn enqueue_in(
        &self,
        tx: &mut Transaction<'_, Any>,
        jobs: Vec<ValidJob>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<(Job, bool)>> {
        enum Slot {
            Existing(Box<Job>),
            Fresh(usize),
            /// A repeat of a key first seen earlier in this same batch.
            Repeat(usize),
        }
        let mut slots = Vec::with_capacity(jobs.len());
        let mut fresh: Vec<(String, ValidJob)> = Vec::with_capacity(jobs.len());
        let mut keys_in_batch: HashMap<String, usize> = HashMap::new();
        for job in jobs {
            if let Some(key) = &job.idempotency_key {
                if let Some(&i) = keys_in_batch.get(key) {
                    slots.push(Slot::Repeat(i));
                    continue;
                }
                let existing: Option<String> =
                    sqlx::query_scalar("SELECT id FROM jobs WHERE idempotency_key = $1")
                        .bind(key)
                        .fetch_optional(&mut **tx)
                        .await?;
                if let Some(id) = existing {
                    slots.push(Slot::Existing(Box::new(full_job(tx, &id).await?)));
                    continue;
                }
                keys_in_batch.insert(key.clone(), fresh.len());
            }
            slots.push(Slot::Fresh(fresh.len()));
            fresh.push((uuid::Uuid::now_v7().to_string(), job));
        }
        // Dependencies: resolved, checked for circles, and each job's first state.
        let (edges, starts) = if fresh.iter().any(|(_, j)| !j.after.is_empty()) {
            let edges = self.resolve_after(tx, &fresh, &keys_in_batch).await?;
            let starts = super::deps::starts(&edges);
            (edges, starts)
        } else {
            (
                vec![Vec::new(); fresh.len()],
                vec![Start::QUEUED; fresh.len()],
            )
        };
        let mut depended = vec![false; fresh.len()];
        for e in edges.iter().flatten() {
            if let super::deps::Target::Batch(k) = e.target {
                depended[k] = true;
            }
        }
        let rows: Vec<_> = fresh
            .iter()
            .zip(&starts)
            .zip(&depended)
            .map(|(((id, job), start), dep)| (id, job, start, *dep))
            .collect();
        // Multi-row statements: one round trip per chunk instead of three per job.
        for chunk in rows.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO jobs (id, name, queue, priority, state, exec, labels, required, timeout_ms, grace_ms, max_attempts, backoff_base_ms, backoff_cap_ms, env, secrets, metadata, idempotency_key, inputs, artifacts, created_at, run_at, updated_at, template_name, template_version, concurrency_key, concurrency_limit, group_id, array_index, deps_pending, has_dependents, error, finished_at, log_path) VALUES {}",
                self.values(chunk.len(), 33)
            );
            let mut q = sqlx::query(&sql);
            for (id, job, start, depended) in chunk {
                let required = job.exec.required_labels(&job.labels);
                q = q
                    .bind(id.to_string())
                    .bind(job.name.clone())
                    .bind(job.queue.clone())
                    .bind(i64::from(job.priority.0))
                    .bind(start.state.as_str())
                    .bind(to_json(&job.exec))
                    .bind(to_json(&job.labels))
                    .bind(to_json(&required))
                    .bind(job.timeout_ms.map(|v| v.min(i64::MAX as u64) as i64))
                    .bind(job.grace_ms.min(i64::MAX as u64) as i64)
                    .bind(i64::from(job.max_attempts))
                    .bind(job.backoff.base_ms.min(i64::MAX as u64) as i64)
                    .bind(job.backoff.cap_ms.min(i64::MAX as u64) as i64)
                    .bind(to_json(&job.env))
                    .bind(self.sealer.seal(&job.secrets))
                    .bind(to_json(&job.metadata))
                    .bind(job.idempotency_key.clone())
                    .bind(to_json(&job.inputs))
                    .bind(to_json(&job.artifacts))
                    .bind(ms(now))
                    .bind(ms(job.run_at))
                    .bind(ms(now))
                    .bind(job.template.as_ref().map(|t| t.name.clone()))
                    .bind(job.template.as_ref().map(|t| i64::from(t.version)))
                    .bind(job.concurrency.as_ref().map(|c| c.0.clone()))
                    .bind(job.concurrency.as_ref().map(|c| i64::from(c.1)))
                    .bind(job.group.as_ref().map(|g| g.0.clone()))
                    .bind(job.group.as_ref().map(|g| i64::from(g.1)))
                    .bind(start.pending)
                    .bind(i64::from(*depended))
                    .bind(start.error.clone())
                    .bind(start.error.as_ref().map(|_| ms(now)))
                    .bind(job.log_path.clone());
            }
            q.execute(&mut **tx).await?;
            let reasons: Vec<Option<String>> = chunk
                .iter()
                .map(|(_, _, start, _)| match (&start.error, start.state) {
                    (Some(e), _) => Some(e.clone()),
                    (None, JobState::Waiting) => {
                        Some(format!("waits for {} jobs to end", start.pending))
                    }
                    _ => None,
                })
                .collect();
            let events: Vec<NewEvent> = chunk
                .iter()
                .zip(&reasons)
                .map(|((id, _, start, _), reason)| NewEvent {
                    job_id: id,
                    kind: "submitted",
                    from: None,
                    to: start.state,
                    attempt: None,
                    actor,
                    reason: reason.as_deref(),
                })
                .collect();
            self.record_events(tx, &events, now).await?;
            let sql = format!(
                "INSERT INTO audit (at, actor, action, target, detail) VALUES {}",
                self.values(chunk.len(), 5)
            );
            let mut q = sqlx::query(&sql);
            for (id, job, _, _) in chunk {
                q = q
                    .bind(ms(now))
                    .bind(actor.to_string())
                    .bind("job.submit")
                    .bind(id.to_string())
                    .bind(Some(job.name.clone()));
            }
            q.execute(&mut **tx).await?;
        }
        if edges.iter().any(|e| !e.is_empty()) {
            self.write_edges(tx, &fresh, &edges).await?;
        }
        let views: Vec<Job> = fresh
            .into_iter()
            .zip(starts)
            .zip(&edges)
            .map(|(((id, job), start), after)| new_job_view(id, job, start, after, now))
            .collect();
        Ok(slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Existing(job) => (*job, false),
                Slot::Fresh(i) => (views[i].clone(), true),
                Slot::Repeat(i) => (views[i].clone(), false),
            })
            .collect())
    }

    /// Deletes an ended job's rows: the job, its attempts, events and artifact rows
    /// (the caller deletes artifact bytes and logs first). A job that is not ended, or
    /// was retried meanwhile, is kept (409).
    pub async fn delete_job_rows(&self, id: &str) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let deleted = sqlx::query(&format!(
            "DELETE FROM jobs WHERE id = $1 AND state IN {ENDED_SQL}"
        ))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 0 {
            tx.rollback().await?;
            let job = self.job(id).await?;
            return Err(StoreError::Conflict(format!(
                "job {id} is {}; cancel it or wait for it to end before deleting it",
                job.state
            )));
        }
        for table in [
            "attempts",
            "job_events",
            "files",
            "progress_updates",
            "job_deps",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE job_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A new job with the same spec as `id` (secrets included, still sealed; without
    /// its idempotency key, which belongs to the first): "run again".
    pub async fn rerun(&self, id: &str, actor: &str, now: DateTime<Utc>) -> Result<Job> {
        let new_id = uuid::Uuid::now_v7().to_string();
        let mut tx = self.write.begin().await?;
        let copied = sqlx::query(
            "INSERT INTO jobs (id, name, queue, priority, state, exec, labels, required, timeout_ms, grace_ms, max_attempts, backoff_base_ms, backoff_cap_ms, env, secrets, metadata, idempotency_key, inputs, artifacts, created_at, run_at, updated_at, template_name, template_version, concurrency_key, concurrency_limit, log_path) SELECT $1, name, queue, priority, $2, exec, labels, required, timeout_ms, grace_ms, max_attempts, backoff_base_ms, backoff_cap_ms, env, secrets, metadata, NULL, inputs, artifacts, $3, $3, $3, template_name, template_version, concurrency_key, concurrency_limit, log_path FROM jobs WHERE id = $4",
        )
        .bind(&new_id)
        .bind(JobState::Queued.as_str())
        .bind(ms(now))
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if copied == 0 {
            tx.rollback().await?;
            return Err(not_found(id));
        }
        let reason = format!("run again of {id}");
        record_event(
            &mut tx,
            NewEvent {
                job_id: &new_id,
                kind: "submitted",
                from: None,
                to: JobState::Queued,
                attempt: None,
                actor,
                reason: Some(&reason),
            },
            now,
        )
        .await?;
        let job = full_job(&mut tx, &new_id).await?;
        tx.commit().await?;
        Ok(job)
    }

    /// The id of the job with this idempotency key.
    pub async fn job_by_key(&self, key: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM jobs WHERE idempotency_key = $1")
                .bind(key)
                .fetch_optional(&self.read)
                .await?,
        )
    }

    /// Where a queued, due job stands in its queue: 1 when it is the next its queue
    /// hands out (by priority, then age).
    pub async fn queue_position(&self, id: &str, now: DateTime<Utc>) -> Result<u64> {
        let ahead: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs o JOIN jobs j ON j.id = $1 WHERE o.state = 'queued' AND o.queue = j.queue AND o.run_at <= $2 AND (o.priority > j.priority OR (o.priority = j.priority AND o.num < j.num))",
        )
        .bind(id)
        .bind(ms(now))
        .fetch_one(&self.read)
        .await?;
        Ok(ahead as u64 + 1)
    }

    /// One job with its attempts and dependencies.
    pub async fn job(&self, id: &str) -> Result<Job> {
        let mut conn = self.read.acquire().await?;
        full_job(&mut conn, id).await
    }

    /// Jobs newest first, filtered; the cursor is the `num` of the last job of the
    /// previous page. Label filters apply in memory over the page (so a page may be short).
    pub async fn list_jobs(
        &self,
        q: &ListJobsQuery,
        state: Option<JobState>,
    ) -> Result<(Vec<Job>, Option<String>)> {
        let limit = i64::from(q.limit.unwrap_or(100).clamp(1, 1000));
        let cursor: Option<i64> = match &q.cursor {
            None => None,
            Some(c) => Some(c.parse().map_err(|_| {
                StoreError::Conflict(format!("cursor {c:?} is not one this server returned"))
            })?),
        };
        let mut sql = format!("SELECT {JOB_COLS} FROM jobs WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if state.is_some() {
            sql += &format!(" AND state = {}", next());
        }
        if q.queue.is_some() {
            sql += &format!(" AND queue = {}", next());
        }
        if q.name.is_some() {
            sql += &format!(" AND name = {}", next());
        }
        if q.idempotency_key.is_some() {
            sql += &format!(" AND idempotency_key = {}", next());
        }
        if q.group.is_some() {
            sql += &format!(" AND group_id = {}", next());
        }
        if cursor.is_some() {
            sql += &format!(" AND num < {}", next());
        }
        sql += &format!(" ORDER BY num DESC LIMIT {}", next());
        let mut query = sqlx::query(&sql);
        if let Some(s) = state {
            query = query.bind(s.as_str());
        }
        if let Some(qu) = &q.queue {
            query = query.bind(qu.clone());
        }
        if let Some(name) = &q.name {
            query = query.bind(name.clone());
        }
        if let Some(key) = &q.idempotency_key {
            query = query.bind(key.clone());
        }
        if let Some(group) = &q.group {
            query = query.bind(group.clone());
        }
        if let Some(c) = cursor {
            query = query.bind(c);
        }
        let rows = query.bind(limit).fetch_all(&self.read).await?;
        let next_cursor = if rows.len() as i64 == limit {
            rows.last()
                .map(|r| r.try_get::<i64, _>("num"))
                .transpose()?
                .map(|n| n.to_string())
        } else {
            None
        };
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            let job = job_from_row(row)?;
            if q.label
                .as_deref()
                .is_none_or(|f| drover_core::labels::matches_filter(&job.labels, f))
            {
                jobs.push(job);
            }
        }
        Ok((jobs, next_cursor))
    }

    /// Cancels a job: a waiting or queued one at once, a leased or running one by
    /// setting `cancel_requested` (its agent is told on its poll). Returns the job, the
    /// agent to wake when one holds it, and the jobs queued because they waited for
    /// this one to end (with `:any` or `:failed`).
    pub async fn cancel(
        &self,
        id: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<(Job, Canceled)> {
        let mut tx = self.write.begin().await?;
        let subject = self.subjects(&mut tx, Of::Job(id), &[]).await?.pop();
        let subject = subject.ok_or_else(|| not_found(id))?;
        transition(subject.state, Event::Cancel)
            .map_err(|e| StoreError::Conflict(format!("{e}: it has already ended")))?;
        let done = self
            .cancel_subjects(
                &mut tx,
                &[subject],
                actor,
                "canceled by user before it started",
                now,
            )
            .await?;
        audit_in_tx(&mut tx, actor, "job.cancel", id, None, now).await?;
        let job = full_job(&mut tx, id).await?;
        tx.commit().await?;
        Ok((job, done))
    }

    /// The rows of jobs a cancel or retry acts on: one job, or a group's members, in
    /// one of `states` (all states when empty), locked until the transaction ends.
    pub(super) async fn subjects(
        &self,
        tx: &mut Transaction<'_, Any>,
        of: Of<'_>,
        states: &[JobState],
    ) -> Result<Vec<Subject>> {
        let (column, value) = match of {
            Of::Job(id) => ("id", id),
            Of::Group(id) => ("group_id", id),
        };
        let in_states = match states {
            [] => String::new(),
            s => format!(
                " AND state IN ({})",
                s.iter()
                    .map(|s| format!("'{}'", s.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let sql = format!(
            "SELECT id, state, cancel_requested, agent_id, has_dependents, current_attempt FROM jobs WHERE {column} = $1{in_states}{}",
            self.lock_clause()
        );
        let rows = sqlx::query(&sql).bind(value).fetch_all(&mut **tx).await?;
        rows.iter()
            .map(|r| {
                Ok(Subject {
                    id: r.try_get("id")?,
                    state: parse_col(r, "state")?,
                    cancel_requested: r.try_get::<i64, _>("cancel_requested")? != 0,
                    agent_id: r.try_get("agent_id")?,
                    has_dependents: r.try_get::<i64, _>("has_dependents")? != 0,
                    attempt: r.try_get::<i64, _>("current_attempt")? as u32,
                })
            })
            .collect()
    }

    /// Cancels the subjects that have not ended, set-wise: waiting and queued ones at
    /// once (with `error`), leased and running ones by request.
    pub(super) async fn cancel_subjects(
        &self,
        tx: &mut Transaction<'_, Any>,
        subjects: &[Subject],
        actor: &str,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<Canceled> {
        let mut done = Canceled::default();
        // Ended now, by the state `transition` gives them; asked to stop; events.
        let mut ended: BTreeMap<JobState, Vec<&str>> = BTreeMap::new();
        let mut requested = Vec::new();
        let mut settled = Vec::new();
        let mut events = Vec::new();
        for t in subjects {
            let Ok(next) = transition(t.state, Event::Cancel) else {
                continue;
            };
            let (kind, attempt, reason) = if next.is_terminal() {
                ended.entry(next).or_default().push(t.id.as_str());
                if t.has_dependents {
                    settled.push((t.id.clone(), next));
                }
                ("canceled", None, "canceled before it started")
            } else if !t.cancel_requested {
                requested.push(t.id.as_str());
                done.agents.extend(t.agent_id.clone());
                (
                    "cancel_requested",
                    Some(t.attempt),
                    "waiting for the agent to stop the process",
                )
            } else {
                continue;
            };
            events.push(NewEvent {
                job_id: &t.id,
                kind,
                from: Some(t.state),
                to: next,
                attempt,
                actor,
                reason: Some(reason),
            });
        }
        done.changed = events.len() as u64;
        for (next, ids) in &ended {
            for chunk in ids.chunks(CHUNK) {
                let sql = format!(
                    "UPDATE jobs SET state = {}, finished_at = {}, updated_at = {}, error = {} WHERE id IN ({})",
                    self.param(1),
                    self.param(2),
                    self.param(3),
                    self.param(4),
                    self.params(4, chunk.len()),
                );
                let mut q = sqlx::query(&sql)
                    .bind(next.as_str())
                    .bind(ms(now))
                    .bind(ms(now))
                    .bind(error);
                for id in chunk {
                    q = q.bind(*id);
                }
                q.execute(&mut **tx).await?;
            }
        }
        for chunk in requested.chunks(CHUNK) {
            let sql = format!(
                "UPDATE jobs SET cancel_requested = 1, updated_at = {} WHERE id IN ({})",
                self.param(1),
                self.params(1, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(ms(now));
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut **tx).await?;
        }
        self.record_events(tx, &events, now).await?;
        if !settled.is_empty() {
            done.released = self.settle(tx, settled, now).await?;
        }
        Ok(done)
    }

    /// Puts a finished job back in the queue with a fresh attempt budget.
    pub async fn retry(&self, id: &str, actor: &str, now: DateTime<Utc>) -> Result<Job> {
        let mut tx = self.write.begin().await?;
        let subject = self.subjects(&mut tx, Of::Job(id), &[]).await?.pop();
        let subject = subject.ok_or_else(|| not_found(id))?;
        transition(subject.state, Event::Retry).map_err(|e| {
            StoreError::Conflict(format!("{e}: only a finished job can be retried"))
        })?;
        self.retry_subjects(&mut tx, &[subject], actor, now).await?;
        audit_in_tx(&mut tx, actor, "job.retry", id, None, now).await?;
        let job = full_job(&mut tx, id).await?;
        tx.commit().await?;
        Ok(job)
    }

    /// Queues the ended subjects again, set-wise, each with a fresh attempt budget; the
    /// jobs still waiting on them wait for their new end. Returns how many.
    pub(super) async fn retry_subjects(
        &self,
        tx: &mut Transaction<'_, Any>,
        subjects: &[Subject],
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let retried: Vec<(&Subject, JobState)> = subjects
            .iter()
            .filter_map(|t| Some((t, transition(t.state, Event::Retry).ok()?)))
            .collect();
        let mut by_next: BTreeMap<JobState, Vec<&str>> = BTreeMap::new();
        for (t, next) in &retried {
            by_next.entry(*next).or_default().push(t.id.as_str());
        }
        for (next, ids) in &by_next {
            for chunk in ids.chunks(CHUNK) {
                let sql = format!(
                    "UPDATE jobs SET state = {}, attempts_used = 0, cancel_requested = 0, run_at = {}, updated_at = {}, started_at = NULL, finished_at = NULL, exit_code = NULL, error = NULL, result = NULL, progress_pct = NULL, progress_msg = NULL WHERE id IN ({})",
                    self.param(1),
                    self.param(2),
                    self.param(3),
                    self.params(3, chunk.len()),
                );
                let mut q = sqlx::query(&sql)
                    .bind(next.as_str())
                    .bind(ms(now))
                    .bind(ms(now));
                for id in chunk {
                    q = q.bind(*id);
                }
                q.execute(&mut **tx).await?;
            }
        }
        let events: Vec<NewEvent> = retried
            .iter()
            .map(|(t, next)| NewEvent {
                job_id: &t.id,
                kind: "retried",
                from: Some(t.state),
                to: *next,
                attempt: None,
                actor,
                reason: None,
            })
            .collect();
        self.record_events(tx, &events, now).await?;
        let depended: Vec<&str> = retried
            .iter()
            .filter(|(t, _)| t.has_dependents)
            .map(|(t, _)| t.id.as_str())
            .collect();
        self.unsettle(tx, &depended).await?;
        Ok(retried.len() as u64)
    }

    /// The job's timeline, oldest first.
    pub async fn events(&self, id: &str) -> Result<Vec<JobEvent>> {
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM jobs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        exists.ok_or_else(|| not_found(id))?;
        let rows = sqlx::query(
            "SELECT at, kind, from_state, to_state, attempt, actor, reason FROM job_events WHERE job_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(JobEvent {
                    at: from_ms(row.try_get("at")?),
                    kind: row.try_get("kind")?,
                    from_state: row
                        .try_get::<Option<String>, _>("from_state")?
                        .map(|s| s.parse().map_err(StoreError::Corrupt))
                        .transpose()?,
                    to_state: parse_col(row, "to_state")?,
                    attempt: row.try_get::<Option<i64>, _>("attempt")?.map(|v| v as u32),
                    actor: row.try_get("actor")?,
                    reason: row.try_get("reason")?,
                })
            })
            .collect()
    }

    /// Job counts by (state, queue), for metrics.
    pub async fn count_jobs(&self) -> Result<Vec<(String, String, i64)>> {
        let rows =
            sqlx::query("SELECT state, queue, COUNT(*) AS n FROM jobs GROUP BY state, queue")
                .fetch_all(&self.read)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("queue")?, r.try_get("n")?)))
            .collect()
    }
}

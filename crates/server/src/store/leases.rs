//! Lease verbs for agents: claim work, start, progress, renew on poll, and the reaper's
//! expiry of leases that were not renewed (`finish` is in `finish.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use drover_core::api::{AttemptState, Lease, PollRequest, ProgressEntry, RunningAttempt};
use drover_core::backoff::should_retry;
use drover_core::labels::{satisfies, Labels};
use drover_core::{transition, Event, JobState, Outcome};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use super::agents::AgentAuth;
use super::jobs::{answered_again, job_in_tx, not_found, record_event, NewEvent};
use super::{from_ms, ms, opt_time, placeholders, Backend, Result, Store, StoreError};

/// How many queued jobs a claim looks at per poll at most; jobs whose labels this agent
/// lacks are skipped, and more than this many unmatched ones ahead of a match hide it
/// from this poll.
const CLAIM_SCAN: i64 = 4096;

/// Progress updates kept per attempt: the newest.
pub const PROGRESS_KEPT: i64 = 100;

/// How long after its lease expired a lost job may be leased again.
pub const REQUEUE_MARGIN: Duration = Duration::from_secs(1);

/// How an attempt that its agent no longer runs ends (see [`Store::drop_attempt`]).
struct Dropped<'a> {
    job_id: &'a str,
    held: &'a Held,
    event: Event,
    /// The job's error, and the event's reason.
    error: &'a str,
    /// The attempt's error.
    attempt_error: &'a str,
    attempts_used: u32,
    /// The event's kind, e.g. `lost`.
    kind: &'static str,
    actor: &'a str,
}

/// What the server must tell an agent after reconciling its poll.
#[derive(Debug, Default)]
pub struct PollOutcome {
    /// Attempts the agent runs that are not current: kill them.
    pub kill: Vec<RunningAttempt>,
    /// Current attempts of the agent whose job a user canceled.
    pub cancel: Vec<RunningAttempt>,
}

/// What an attempt write did, for metrics and wake-ups.
#[derive(Debug)]
pub struct AttemptWrite {
    pub job: drover_core::api::Job,
    /// Start: time from due (`run_at`) to start. Finish: run time of the attempt.
    pub elapsed: Option<Duration>,
    /// Jobs queued because they waited for this one to end.
    pub released: Vec<String>,
}

/// The fencing facts of a job row.
pub(super) struct Held {
    pub(super) state: JobState,
    pub(super) agent_id: Option<String>,
    pub(super) current_attempt: u32,
    pub(super) cancel_requested: bool,
    pub(super) attempts_used: u32,
    pub(super) max_attempts: u32,
    pub(super) base_ms: u64,
    pub(super) cap_ms: u64,
    pub(super) run_at: DateTime<Utc>,
    /// Start of the current attempt's process, once it started.
    pub(super) started_at: Option<DateTime<Utc>>,
    pub(super) queue: String,
    pub(super) concurrency_key: Option<String>,
    /// Jobs wait on this one: settle them when it ends.
    pub(super) has_dependents: bool,
}

impl Held {
    /// The columns [`Held::from_row`] reads.
    pub(super) const COLUMNS: &'static str = "state, agent_id, current_attempt, cancel_requested, attempts_used, max_attempts, backoff_base_ms, backoff_cap_ms, run_at, started_at, queue, concurrency_key, has_dependents";

    pub(super) fn from_row(row: &AnyRow) -> Result<Held> {
        let state: String = row.try_get("state")?;
        Ok(Held {
            state: state.parse().map_err(StoreError::Corrupt)?,
            agent_id: row.try_get("agent_id")?,
            current_attempt: row.try_get::<i64, _>("current_attempt")? as u32,
            cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
            attempts_used: row.try_get::<i64, _>("attempts_used")? as u32,
            max_attempts: row.try_get::<i64, _>("max_attempts")? as u32,
            base_ms: row.try_get::<i64, _>("backoff_base_ms")? as u64,
            cap_ms: row.try_get::<i64, _>("backoff_cap_ms")? as u64,
            run_at: from_ms(row.try_get("run_at")?),
            started_at: opt_time(row, "started_at")?,
            queue: row.try_get("queue")?,
            concurrency_key: row.try_get("concurrency_key")?,
            has_dependents: row.try_get::<i64, _>("has_dependents")? != 0,
        })
    }
}

/// Checks that `attempt` is the job's current one and held by `agent_id`.
pub(super) fn check_fence(
    held: Option<&Held>,
    agent_id: &str,
    job_id: &str,
    attempt: u32,
) -> Result<()> {
    let held = held.ok_or_else(|| not_found(job_id))?;
    if held.current_attempt != attempt || !held.state.is_active() {
        return Err(StoreError::StaleAttempt {
            job_id: job_id.to_string(),
            attempt,
        });
    }
    if held.agent_id.as_deref() != Some(agent_id) {
        return Err(StoreError::NotYourAttempt {
            job_id: job_id.to_string(),
            attempt,
        });
    }
    Ok(())
}

/// The advisory lock under which claims count what runs per concurrency key and queue,
/// so that two claims (on any servers) cannot both take a key's last place.
const LIMITS_LOCK: i64 = 0x6472_6f76_6c69; // "drovli"

/// What runs per concurrency key and per limited queue, as one claim sees it: counted
/// once each in its transaction, plus what the claim itself took.
#[derive(Default)]
struct Running {
    locked: bool,
    keys: HashMap<String, i64>,
    queues: HashMap<String, i64>,
}

impl Running {
    /// Whether a job with `key` (limit `key_limit`, default 1) in `queue` (limit
    /// `queue_limit`) fits; if so, counts it as taken.
    async fn room(
        &mut self,
        store: &Store,
        tx: &mut Transaction<'_, Any>,
        key: Option<&str>,
        key_limit: Option<i64>,
        queue: &str,
        queue_limit: Option<u32>,
    ) -> Result<bool> {
        if !self.locked && store.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(LIMITS_LOCK)
                .execute(&mut **tx)
                .await?;
        }
        self.locked = true;
        if let Some(k) = key {
            if !self.keys.contains_key(k) {
                let n = running_with(&mut **tx, "concurrency_key", k).await?;
                self.keys.insert(k.to_string(), n);
            }
            if self.keys[k] >= key_limit.unwrap_or(1) {
                return Ok(false);
            }
        }
        if let Some(limit) = queue_limit {
            if !self.queues.contains_key(queue) {
                let n = running_with(&mut **tx, "queue", queue).await?;
                self.queues.insert(queue.to_string(), n);
            }
            if self.queues[queue] >= i64::from(limit) {
                return Ok(false);
            }
            *self.queues.get_mut(queue).expect("counted") += 1;
        }
        if let Some(k) = key {
            *self.keys.get_mut(k).expect("counted") += 1;
        }
        Ok(true)
    }
}

/// Jobs leased or running whose `column` is `value`.
async fn running_with<'e, E>(ex: E, column: &str, value: &str) -> Result<i64>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    Ok(sqlx::query_scalar(&format!(
        "SELECT COUNT(*) FROM jobs WHERE {column} = $1 AND state IN ('leased', 'running')"
    ))
    .bind(value)
    .fetch_one(ex)
    .await?)
}

impl Store {
    /// Why a queued job with a concurrency key or in a limited queue is held back by
    /// its limit, if it is.
    pub async fn held_by_limit(&self, job: &drover_core::api::Job) -> Result<Option<String>> {
        if let Some(key) = &job.concurrency_key {
            let limit = i64::from(job.concurrency_limit.unwrap_or(1));
            let n = running_with(&self.read, "concurrency_key", key).await?;
            if n >= limit {
                return Ok(Some(format!(
                    "{n} jobs with concurrency key {key} are running, its limit of {limit}"
                )));
            }
        }
        if let Some(&limit) = self.queue_limits.get(&job.queue) {
            let n = running_with(&self.read, "queue", &job.queue).await?;
            if n >= i64::from(limit) {
                return Ok(Some(format!(
                    "{n} jobs of queue {} are running, its limit of {limit}",
                    job.queue
                )));
            }
        }
        Ok(None)
    }

    /// Whether a job with `concurrency_key` in `queue` counts against a limit: when it
    /// ends, a job its limit held back may run.
    pub fn is_limited(&self, concurrency_key: Option<&str>, queue: &str) -> bool {
        concurrency_key.is_some() || self.queue_limits.contains_key(queue)
    }
}

impl Store {
    pub(super) fn lock_clause(&self) -> &'static str {
        match self.backend {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        }
    }

    async fn held(&self, tx: &mut Transaction<'_, Any>, job_id: &str) -> Result<Option<Held>> {
        let sql = format!(
            "SELECT {} FROM jobs WHERE id = $1{}",
            Held::COLUMNS,
            self.lock_clause()
        );
        let row = sqlx::query(&sql)
            .bind(job_id)
            .fetch_optional(&mut **tx)
            .await?;
        row.as_ref().map(Held::from_row).transpose()
    }

    /// Loads the job row and checks that `attempt` is current and held by `agent_id`.
    pub(super) async fn fence(
        &self,
        tx: &mut Transaction<'_, Any>,
        agent_id: &str,
        job_id: &str,
        attempt: u32,
    ) -> Result<Held> {
        let held = self.held(tx, job_id).await?;
        check_fence(held.as_ref(), agent_id, job_id, attempt)?;
        Ok(held.expect("fenced"))
    }

    /// Leases up to the agent's free capacity of due, matching jobs: highest priority
    /// first, FIFO within a priority. Each job goes to exactly one agent. A job whose
    /// lease cannot be built (its secrets cannot be opened, a corrupt row) fails alone
    /// with `cannot_lease: …`, and the jobs behind it are served. An agent that was
    /// removed (its poll may still be held) gets nothing: [`StoreError::UnknownAgent`].
    pub async fn claim(
        &self,
        agent: &AgentAuth,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Vec<Lease>> {
        // Each round that fails a job fails it for good, so this ends.
        loop {
            let (leases, failed) = self.claim_once(agent, now, ttl).await?;
            if failed == 0 || !leases.is_empty() {
                return Ok(leases);
            }
        }
    }

    /// One claim transaction: the leases, and how many chosen jobs failed instead.
    async fn claim_once(
        &self,
        agent: &AgentAuth,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<(Vec<Lease>, usize)> {
        let mut tx = self.write.begin().await?;
        // The agent may have been removed since its poll arrived. On PostgreSQL the row
        // lock orders this claim and a removal: the removal either waits and then loses
        // what this claim leased, or goes first and this claim finds no agent. The same
        // statement counts the attempts it holds.
        let active: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE agent_id = a.id AND state IN ('leased', 'running')) FROM agents a WHERE a.id = $1{}",
            self.lock_clause()
        ))
        .bind(&agent.id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(active) = active else {
            tx.rollback().await?;
            return Err(StoreError::UnknownAgent {
                agent_id: agent.id.clone(),
            });
        };
        let got = self.claim_in(&mut tx, agent, active, now, ttl).await?;
        // Committed even when nothing was leased: a transaction left open holds its row
        // locks, which hide jobs from other claimers (SKIP LOCKED), until its
        // connection is next used.
        tx.commit().await?;
        Ok(got)
    }

    /// Leases, in `tx`, due jobs that match `agent` up to its free slots (it holds
    /// `active` attempts): the leases, and how many chosen jobs failed instead.
    async fn claim_in(
        &self,
        tx: &mut Transaction<'_, Any>,
        agent: &AgentAuth,
        active: i64,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<(Vec<Lease>, usize)> {
        let free = i64::from(agent.slots) - active;
        if free <= 0 || agent.queues.is_empty() {
            return Ok((Vec::new(), 0));
        }
        if self.backend == Backend::Postgres {
            sqlx::query(CLAIM_PLANNING).execute(&mut **tx).await?;
        }
        // Walk the queue in priority/FIFO order in small pages, skipping jobs whose
        // labels this agent lacks, until the free slots are filled.
        let page = (free * 2).clamp(8, 256);
        let nq = agent.queues.len();
        let mut chosen = Vec::new();
        let mut limits = Running::default();
        let mut after: Option<(i64, i64)> = None;
        let mut scanned = 0;
        loop {
            let sql = self.claim_page_sql(nq, after.is_some());
            let mut query = sqlx::query(&sql);
            for q in &agent.queues {
                query = query.bind(q.clone());
            }
            query = query.bind(ms(now)).bind(page);
            if let Some((p, n)) = after {
                query = query.bind(p).bind(n);
            }
            let rows = query.fetch_all(&mut **tx).await?;
            for row in &rows {
                after = Some((row.try_get("priority")?, row.try_get("num")?));
                let required: Labels = super::json_col(row, "required")?;
                if !satisfies(&agent.labels, &required) || (chosen.len() as i64) >= free {
                    continue;
                }
                let key: Option<String> = row.try_get("concurrency_key")?;
                let queue: String = row.try_get("queue")?;
                let queue_limit = self.queue_limits.get(&queue).copied();
                if key.is_some() || queue_limit.is_some() {
                    let key_limit = row.try_get::<Option<i64>, _>("concurrency_limit")?;
                    let room = limits
                        .room(self, tx, key.as_deref(), key_limit, &queue, queue_limit)
                        .await?;
                    if !room {
                        continue;
                    }
                }
                chosen.push(row.try_get::<String, _>("id")?);
            }
            scanned += rows.len() as i64;
            if chosen.len() as i64 == free || (rows.len() as i64) < page || scanned >= CLAIM_SCAN {
                break;
            }
        }
        let next = transition(JobState::Queued, Event::Lease).expect("queued jobs can be leased");
        let expires = ms(now) + ttl.as_millis() as i64;
        if chosen.is_empty() {
            return Ok((Vec::new(), 0));
        }
        // One UPDATE for all chosen jobs; `state = 'queued'` keeps it exactly-once even
        // if another server took one in between (PostgreSQL without the row lock).
        let sql = format!(
            "UPDATE jobs SET state = {}, agent_id = {}, current_attempt = current_attempt + 1, lease_expires_at = {}, updated_at = {} WHERE state = 'queued' AND id IN ({}) RETURNING id, current_attempt, name, exec, env, secrets, timeout_ms, grace_ms, metadata, inputs, artifacts, log_path",
            self.param(1),
            self.param(2),
            self.param(3),
            self.param(4),
            self.params(4, chosen.len())
        );
        let mut q = sqlx::query(&sql)
            .bind(next.as_str())
            .bind(&agent.id)
            .bind(expires)
            .bind(ms(now));
        for id in &chosen {
            q = q.bind(id.clone());
        }
        let rows = q.fetch_all(&mut **tx).await?;
        let mut by_id = HashMap::with_capacity(rows.len());
        let mut unleasable = Vec::new();
        for row in &rows {
            let id: String = row.try_get("id")?;
            match self.lease_of(row) {
                Ok(lease) => {
                    by_id.insert(id, lease);
                }
                Err(e) => {
                    let attempt = row.try_get::<i64, _>("current_attempt")? as u32;
                    tracing::error!(job = %id, error = %e, "cannot build a lease: failing the job");
                    unleasable.push((id, attempt, format!("cannot_lease: {e}")));
                }
            }
        }
        // Hand leases out in queue order.
        let leases: Vec<Lease> = chosen.iter().filter_map(|id| by_id.remove(id)).collect();
        if leases.is_empty() && unleasable.is_empty() {
            return Ok((leases, 0));
        }
        for (id, attempt, error) in &unleasable {
            self.fail_unleasable(tx, &agent.id, id, *attempt, error, now)
                .await?;
        }
        for chunk in leases.chunks(1000) {
            let sql = format!(
                "INSERT INTO attempts (job_id, number, agent_id, state, leased_at) VALUES {}",
                self.values(chunk.len(), 5)
            );
            let mut q = sqlx::query(&sql);
            for l in chunk {
                q = q
                    .bind(l.job_id.clone())
                    .bind(i64::from(l.attempt))
                    .bind(agent.id.clone())
                    .bind("leased")
                    .bind(ms(now));
            }
            q.execute(&mut **tx).await?;
        }
        let actor = format!("agent:{}", agent.id);
        let events: Vec<NewEvent> = leases
            .iter()
            .map(|l| NewEvent {
                job_id: &l.job_id,
                kind: "leased",
                from: Some(JobState::Queued),
                to: next,
                attempt: Some(l.attempt),
                actor: &actor,
                reason: None,
            })
            .collect();
        self.record_events(tx, &events, now).await?;
        Ok((leases, unleasable.len()))
    }

    /// The lease of a row that claim's UPDATE returned.
    fn lease_of(&self, row: &AnyRow) -> Result<Lease> {
        Ok(Lease {
            job_id: row.try_get("id")?,
            attempt: row.try_get::<i64, _>("current_attempt")? as u32,
            name: row.try_get("name")?,
            exec: super::json_col(row, "exec")?,
            env: super::json_col(row, "env")?,
            secrets: self.sealer.open(&row.try_get::<String, _>("secrets")?)?,
            timeout_ms: row
                .try_get::<Option<i64>, _>("timeout_ms")?
                .map(|v| v as u64),
            grace_ms: row.try_get::<i64, _>("grace_ms")? as u64,
            metadata: super::json_col(row, "metadata")?,
            inputs: super::json_col(row, "inputs")?,
            artifacts: super::json_col(row, "artifacts")?,
            artifact_limits: self.artifact_limits,
            log_path: row.try_get("log_path")?,
        })
    }

    /// Fails a job that was just leased but whose lease cannot be built; no agent ever
    /// sees it, and retrying would fail the same way.
    async fn fail_unleasable(
        &self,
        tx: &mut Transaction<'_, Any>,
        agent_id: &str,
        job_id: &str,
        attempt: u32,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let event = Event::Finish {
            outcome: Outcome::Failed,
            retry: false,
        };
        let next = transition(JobState::Leased, event).expect("a leased job can fail");
        sqlx::query("UPDATE jobs SET state = $1, agent_id = NULL, lease_expires_at = NULL, error = $2, finished_at = $3, updated_at = $3 WHERE id = $4")
            .bind(next.as_str())
            .bind(error)
            .bind(ms(now))
            .bind(job_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("INSERT INTO attempts (job_id, number, agent_id, state, leased_at, finished_at, error) VALUES ($1, $2, $3, 'failed', $4, $4, $5)")
            .bind(job_id)
            .bind(i64::from(attempt))
            .bind(agent_id)
            .bind(ms(now))
            .bind(error)
            .execute(&mut **tx)
            .await?;
        record_event(
            tx,
            NewEvent {
                job_id,
                kind: "finished",
                from: Some(JobState::Leased),
                to: next,
                attempt: Some(attempt),
                actor: "server",
                reason: Some(error),
            },
            now,
        )
        .await?;
        // Rare enough that the jobs it queues wait for the next poll to be claimed.
        self.settle(tx, vec![(job_id.to_string(), next)], now)
            .await?;
        Ok(())
    }

    /// The agent started the attempt's process. Resending a start is harmless.
    pub async fn start(
        &self,
        agent_id: &str,
        job_id: &str,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Result<AttemptWrite> {
        let elapsed = self.mark_started(agent_id, job_id, attempt, now).await?;
        Ok(AttemptWrite {
            job: self.job(job_id).await?,
            elapsed,
            released: Vec::new(),
        })
    }

    /// [`Store::start`] without reading the job back (agents starting an attempt with
    /// its first log batch do not need it): how long the job waited to start, the first
    /// time it is marked started.
    pub async fn mark_started(
        &self,
        agent_id: &str,
        job_id: &str,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<std::time::Duration>> {
        let mut tx = self.write.begin().await?;
        let held = self.fence(&mut tx, agent_id, job_id, attempt).await?;
        let mut elapsed = None;
        if held.state == JobState::Leased {
            let next = transition(held.state, Event::Start).expect("leased jobs can start");
            elapsed = (now - held.run_at).to_std().ok();
            sqlx::query("UPDATE jobs SET state = $1, attempts_used = attempts_used + 1, started_at = $2, updated_at = $2 WHERE id = $3")
                .bind(next.as_str())
                .bind(ms(now))
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE attempts SET state = 'running', started_at = $1 WHERE job_id = $2 AND number = $3")
                .bind(ms(now))
                .bind(job_id)
                .bind(i64::from(attempt))
                .execute(&mut *tx)
                .await?;
            let actor = format!("agent:{agent_id}");
            record_event(
                &mut tx,
                NewEvent {
                    job_id,
                    kind: "started",
                    from: Some(held.state),
                    to: next,
                    attempt: Some(attempt),
                    actor: &actor,
                    reason: None,
                },
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(elapsed)
    }

    /// The agent stopped the attempt because the agent itself is shutting down: the job
    /// goes back to the queue, and the interrupted attempt does not count against its
    /// attempts (nobody canceled it and it did not fail). A job whose cancel was
    /// requested meanwhile is canceled instead. A release of an attempt this agent
    /// released already (a resend whose answer was lost) changes nothing and gets the
    /// job as it is now.
    pub async fn release(
        &self,
        agent_id: &str,
        job_id: &str,
        attempt: u32,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<AttemptWrite> {
        let mut tx = self.write.begin().await?;
        let held = match self.fence(&mut tx, agent_id, job_id, attempt).await {
            Ok(held) => held,
            Err(StoreError::StaleAttempt { .. }) => {
                self.released_before(&mut tx, agent_id, job_id, attempt, reason)
                    .await?;
                return answered_again(tx, job_id).await;
            }
            Err(e) => return Err(e),
        };
        let event = if held.cancel_requested {
            Event::Finish {
                outcome: Outcome::Canceled,
                retry: false,
            }
        } else {
            Event::Lost { retry: true }
        };
        // The interrupted attempt does not count.
        let used =
            held.attempts_used - u32::from(held.state == JobState::Running).min(held.attempts_used);
        let actor = format!("agent:{agent_id}");
        let released = self
            .drop_attempt(
                &mut tx,
                Dropped {
                    job_id,
                    held: &held,
                    event,
                    error: reason,
                    attempt_error: reason,
                    attempts_used: used,
                    kind: "released",
                    actor: &actor,
                },
                now,
            )
            .await?;
        let job = job_in_tx(&mut tx, job_id).await?;
        tx.commit().await?;
        Ok(AttemptWrite {
            job,
            elapsed: None,
            released,
        })
    }

    /// Answers a release of an attempt that is no longer current: fine when this agent
    /// released it (its attempt ended `lost` with the release's reason), else
    /// `StaleAttempt`, which tells the agent to kill it.
    async fn released_before(
        &self,
        tx: &mut Transaction<'_, Any>,
        agent_id: &str,
        job_id: &str,
        attempt: u32,
        reason: &str,
    ) -> Result<()> {
        let row = sqlx::query(
            "SELECT agent_id, state, error FROM attempts WHERE job_id = $1 AND number = $2",
        )
        .bind(job_id)
        .bind(i64::from(attempt))
        .fetch_optional(&mut **tx)
        .await?;
        let released = match &row {
            Some(row) => {
                row.try_get::<String, _>("agent_id")? == agent_id
                    && row.try_get::<String, _>("state")? == AttemptState::Lost.as_str()
                    && row.try_get::<Option<String>, _>("error")?.as_deref() == Some(reason)
            }
            None => false,
        };
        if released {
            Ok(())
        } else {
            Err(StoreError::StaleAttempt {
                job_id: job_id.to_string(),
                attempt,
            })
        }
    }

    /// Records the job's latest progress, and adds it to the attempt's history (of which
    /// the last [`PROGRESS_KEPT`] updates are kept). Updates carry no sequence number, so
    /// an update equal to the attempt's latest one is taken for a resend (its answer was
    /// lost) and changes nothing.
    pub async fn progress(
        &self,
        agent_id: &str,
        job_id: &str,
        attempt: u32,
        percent: f64,
        message: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let percent = percent.clamp(0.0, 100.0);
        let mut tx = self.write.begin().await?;
        self.fence(&mut tx, agent_id, job_id, attempt).await?;
        let latest = sqlx::query(
            "SELECT seq, percent, message FROM progress_updates WHERE job_id = $1 AND attempt = $2 ORDER BY seq DESC LIMIT 1",
        )
        .bind(job_id)
        .bind(i64::from(attempt))
        .fetch_optional(&mut *tx)
        .await?;
        let last: i64 = match &latest {
            Some(row) => {
                let resent = row.try_get::<f64, _>("percent")? == percent
                    && row.try_get::<String, _>("message")? == message;
                if resent {
                    tx.rollback().await?;
                    return Ok(());
                }
                row.try_get("seq")?
            }
            None => 0,
        };
        sqlx::query(
            "UPDATE jobs SET progress_pct = $1, progress_msg = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(percent)
        .bind(message)
        .bind(ms(now))
        .bind(job_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO progress_updates (job_id, attempt, seq, at, percent, message) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(job_id)
            .bind(i64::from(attempt))
            .bind(last + 1)
            .bind(ms(now))
            .bind(percent)
            .bind(message)
            .execute(&mut *tx)
            .await?;
        if last + 1 > PROGRESS_KEPT {
            sqlx::query(
                "DELETE FROM progress_updates WHERE job_id = $1 AND attempt = $2 AND seq <= $3",
            )
            .bind(job_id)
            .bind(i64::from(attempt))
            .bind(last + 1 - PROGRESS_KEPT)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Progress updates of a job (of one attempt, or all), oldest first, after
    /// `(attempt, seq)` when given.
    pub async fn progress_history(
        &self,
        job_id: &str,
        attempt: Option<u32>,
        after: Option<(u32, u64)>,
    ) -> Result<Vec<ProgressEntry>> {
        let (after_attempt, after_seq) = after.unwrap_or((0, 0));
        let rows = sqlx::query(
            "SELECT attempt, seq, at, percent, message FROM progress_updates WHERE job_id = $1 AND ($2 = 0 OR attempt = $2) AND (attempt > $3 OR (attempt = $3 AND seq > $4)) ORDER BY attempt, seq",
        )
        .bind(job_id)
        .bind(i64::from(attempt.unwrap_or(0)))
        .bind(i64::from(after_attempt))
        .bind(after_seq.min(i64::MAX as u64) as i64)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ProgressEntry {
                    attempt: row.try_get::<i64, _>("attempt")? as u32,
                    seq: row.try_get::<i64, _>("seq")? as u64,
                    at: super::from_ms(row.try_get("at")?),
                    percent: row.try_get("percent")?,
                    message: row.try_get("message")?,
                })
            })
            .collect()
    }

    /// Checks that a write for `attempt` may go ahead (used before storing logs).
    pub async fn check_attempt(&self, agent_id: &str, job_id: &str, attempt: u32) -> Result<()> {
        let row = sqlx::query(&format!("SELECT {} FROM jobs WHERE id = $1", Held::COLUMNS))
            .bind(job_id)
            .fetch_optional(&self.read)
            .await?;
        let held = row.as_ref().map(Held::from_row).transpose()?;
        check_fence(held.as_ref(), agent_id, job_id, attempt)
    }

    /// Ends an attempt whose agent is gone: retried if attempts remain, else failed with
    /// `agent_lost`; a job with a pending cancel becomes canceled. The jobs this queues
    /// (they waited for this one) are claimed by the polls every caller wakes after.
    pub(crate) async fn lose(
        &self,
        tx: &mut Transaction<'_, Any>,
        job_id: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let Some(held) = self.held(tx, job_id).await? else {
            return Ok(());
        };
        if !held.state.is_active() {
            return Ok(());
        }
        let (event, error) = if held.cancel_requested {
            (
                Event::Finish {
                    outcome: Outcome::Canceled,
                    retry: false,
                },
                format!("canceled; the agent was lost ({why})"),
            )
        } else {
            let retry = should_retry(held.attempts_used, held.max_attempts);
            (Event::Lost { retry }, format!("agent_lost: {why}"))
        };
        self.drop_attempt(
            tx,
            Dropped {
                job_id,
                held: &held,
                event,
                error: &error,
                attempt_error: why,
                attempts_used: held.attempts_used,
                kind: "lost",
                actor: "server",
            },
            now,
        )
        .await?;
        Ok(())
    }

    /// Ends the current attempt of a job whose agent no longer runs it: the job takes
    /// the state `event` leads to, the attempt becomes `lost`, and the event is recorded.
    /// Returns the jobs queued because they waited for this one to end.
    async fn drop_attempt(
        &self,
        tx: &mut Transaction<'_, Any>,
        d: Dropped<'_>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let next =
            transition(d.held.state, d.event).map_err(|e| StoreError::Conflict(e.to_string()))?;
        let finished = next.is_terminal().then(|| ms(now));
        sqlx::query("UPDATE jobs SET state = $1, agent_id = NULL, lease_expires_at = NULL, attempts_used = $2, error = $3, finished_at = $4, updated_at = $5 WHERE id = $6")
            .bind(next.as_str())
            .bind(i64::from(d.attempts_used))
            .bind(d.error)
            .bind(finished)
            .bind(ms(now))
            .bind(d.job_id)
            .execute(&mut **tx)
            .await?;
        sqlx::query("UPDATE attempts SET state = 'lost', finished_at = $1, error = $2 WHERE job_id = $3 AND number = $4")
            .bind(ms(now))
            .bind(d.attempt_error)
            .bind(d.job_id)
            .bind(i64::from(d.held.current_attempt))
            .execute(&mut **tx)
            .await?;
        record_event(
            tx,
            NewEvent {
                job_id: d.job_id,
                kind: d.kind,
                from: Some(d.held.state),
                to: next,
                attempt: Some(d.held.current_attempt),
                actor: d.actor,
                reason: Some(d.error),
            },
            now,
        )
        .await?;
        if next.is_terminal() && d.held.has_dependents {
            return self
                .settle(tx, vec![(d.job_id.to_string(), next)], now)
                .await;
        }
        Ok(Vec::new())
    }

    /// Expires every lease not renewed before `now`; returns how many. A retried job
    /// waits until [`REQUEUE_MARGIN`] after its lease expired: its agent stopped it at
    /// the latest when the lease expired (agents fence themselves a little earlier), and
    /// the margin keeps the old and the new attempt apart even when clocks drift.
    pub async fn reap(&self, now: DateTime<Utc>) -> Result<usize> {
        let mut tx = self.write.begin().await?;
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT id, lease_expires_at FROM jobs WHERE state IN ('leased', 'running') AND lease_expires_at < $1",
        )
        .bind(ms(now))
        .fetch_all(&mut *tx)
        .await?;
        for (id, expired) in &rows {
            self.lose(
                &mut tx,
                id,
                "lease expired: the agent stopped renewing it",
                now,
            )
            .await?;
            let not_before = expired + REQUEUE_MARGIN.as_millis() as i64;
            sqlx::query(
                "UPDATE jobs SET run_at = $1 WHERE id = $2 AND state = 'queued' AND run_at < $1",
            )
            .bind(not_before)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// An agent's poll, in one transaction: renews its leases, answers `kill` for
    /// attempts it runs that are not current and `cancel` for canceled ones, gives back
    /// leases it does not know about (taken before `poll_received` but not in
    /// `running`), and then, when `lease`, leases due jobs that match it up to its free
    /// slots, as [`Store::claim`] does. An agent that was removed (its poll may
    /// still be held) gets [`StoreError::UnknownAgent`].
    pub async fn poll(
        &self,
        agent: &AgentAuth,
        poll: &PollRequest,
        now: DateTime<Utc>,
        poll_received: DateTime<Utc>,
        ttl: Duration,
        lease: bool,
    ) -> Result<(PollOutcome, Vec<Lease>)> {
        let mut tx = self.write.begin().await?;
        let Some((outcome, active)) = self
            .renew_in(&mut tx, &agent.id, poll, now, poll_received, ttl)
            .await?
        else {
            tx.rollback().await?;
            return Err(StoreError::UnknownAgent {
                agent_id: agent.id.clone(),
            });
        };
        let (leases, failed) = match lease {
            true => self.claim_in(&mut tx, agent, active, now, ttl).await?,
            false => (Vec::new(), 0),
        };
        tx.commit().await?;
        if failed > 0 && leases.is_empty() {
            // The jobs it chose failed for good instead; the ones behind them may lease.
            return Ok((outcome, self.claim(agent, now, ttl).await?));
        }
        Ok((outcome, leases))
    }

    /// The poll's bookkeeping in `tx` (see [`Store::poll`]): what to tell the agent, and
    /// how many attempts it holds now; `None` when the agent is not known. The UPDATE
    /// of its row comes first: on PostgreSQL that row lock orders the poll and a
    /// removal, which either waits and then loses what the poll leased, or goes first
    /// and the poll finds no agent.
    async fn renew_in(
        &self,
        tx: &mut Transaction<'_, Any>,
        agent_id: &str,
        poll: &PollRequest,
        now: DateTime<Utc>,
        poll_received: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<Option<(PollOutcome, i64)>> {
        let running = &poll.running;
        let known = sqlx::query(
            "UPDATE agents SET last_seen_at = $1, stats = $2, draining = $3 WHERE id = $4",
        )
        .bind(ms(now))
        .bind(super::to_json(&poll.stats))
        .bind(i64::from(poll.draining))
        .bind(agent_id)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if known == 0 {
            return Ok(None);
        }
        sqlx::query("UPDATE jobs SET lease_expires_at = $1 WHERE agent_id = $2 AND state IN ('leased', 'running')")
            .bind(ms(now) + ttl.as_millis() as i64)
            .bind(agent_id)
            .execute(&mut **tx)
            .await?;
        let rows = sqlx::query(
            "SELECT j.id, j.current_attempt, j.cancel_requested, a.leased_at FROM jobs j JOIN attempts a ON a.job_id = j.id AND a.number = j.current_attempt WHERE j.agent_id = $1 AND j.state IN ('leased', 'running')",
        )
        .bind(agent_id)
        .fetch_all(&mut **tx)
        .await?;
        let reported: HashSet<(&str, u32)> = running
            .iter()
            .map(|r| (r.job_id.as_str(), r.attempt))
            .collect();
        let mut held = BTreeMap::new();
        let mut out = PollOutcome::default();
        let mut forgotten = Vec::new();
        for row in rows {
            let id: String = row.try_get("id")?;
            let attempt = row.try_get::<i64, _>("current_attempt")? as u32;
            if reported.contains(&(id.as_str(), attempt)) {
                if row.try_get::<i64, _>("cancel_requested")? != 0 {
                    out.cancel.push(RunningAttempt {
                        job_id: id.clone(),
                        attempt,
                    });
                }
            } else if from_ms(row.try_get("leased_at")?) < poll_received {
                forgotten.push(id.clone());
            }
            held.insert(id, attempt);
        }
        let gone: Vec<&RunningAttempt> = running
            .iter()
            .filter(|r| held.get(&r.job_id) != Some(&r.attempt))
            .collect();
        if !gone.is_empty() {
            // An attempt whose finish this agent's own report stored while the poll was
            // on its way is done, not stale: a kill would only alarm the agent's log.
            let sql = format!(
                "SELECT job_id, number FROM attempts WHERE agent_id = {} AND state IN ('succeeded', 'failed', 'canceled') AND job_id IN ({})",
                self.param(1),
                self.params(1, gone.len())
            );
            let mut q = sqlx::query_as::<_, (String, i64)>(&sql).bind(agent_id);
            for r in &gone {
                q = q.bind(r.job_id.clone());
            }
            let finished: HashSet<(String, i64)> =
                q.fetch_all(&mut **tx).await?.into_iter().collect();
            out.kill.extend(
                gone.into_iter()
                    .filter(|r| !finished.contains(&(r.job_id.clone(), i64::from(r.attempt))))
                    .cloned(),
            );
        }
        // A lost attempt is no longer the agent's.
        let active = (held.len() - forgotten.len()) as i64;
        for id in forgotten {
            self.lose(tx, &id, "the agent does not run this attempt", now)
                .await?;
        }
        Ok(Some((out, active)))
    }

    /// The earliest future `run_at` of a queued job, so idle polls wake when it is due.
    pub async fn next_due(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        let v: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(run_at) FROM jobs WHERE state = 'queued' AND run_at > $1",
        )
        .bind(ms(now))
        .fetch_one(&self.read)
        .await?;
        Ok(v.map(from_ms))
    }

    /// Whether the attempt has ended (no longer current, or its job left leased/running).
    pub async fn attempt_ended(&self, job_id: &str, attempt: u32) -> Result<bool> {
        let row = sqlx::query("SELECT finished_at FROM attempts WHERE job_id = $1 AND number = $2")
            .bind(job_id)
            .bind(i64::from(attempt))
            .fetch_optional(&self.read)
            .await?;
        Ok(match row {
            None => true,
            Some(row) => opt_time(&row, "finished_at")?.is_some(),
        })
    }
}

impl Store {
    /// Current attempts of the agent, among those it reported, whose job a user canceled.
    pub async fn pending_cancels(
        &self,
        agent_id: &str,
        running: &[RunningAttempt],
    ) -> Result<Vec<RunningAttempt>> {
        if running.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<(String, i64)> = sqlx::query_as(
            "SELECT id, current_attempt FROM jobs WHERE agent_id = $1 AND cancel_requested = 1 AND state IN ('leased', 'running')",
        )
        .bind(agent_id)
        .fetch_all(&self.read)
        .await?;
        Ok(ids
            .into_iter()
            .map(|(job_id, attempt)| RunningAttempt {
                job_id,
                attempt: attempt as u32,
            })
            .filter(|r| running.contains(r))
            .collect())
    }
}

/// Set in every claim transaction on PostgreSQL. The claim's statement is prepared once
/// per connection, and PostgreSQL may settle on one generic plan for it: made while the
/// queue was short, that plan read the queue through `jobs_due` and sorted it, which at
/// 1,000,000 queued took ≈600 ms a claim until autovacuum's next ANALYZE made it plan
/// again (issue 19's 375 ms median). A plan made for each claim, with its values and
/// the table as it is, walks `jobs_claim` in order; planning costs well under a
/// millisecond.
const CLAIM_PLANNING: &str = "SET LOCAL plan_cache_mode = force_custom_plan";

impl Store {
    /// One page of a claim's walk of the queue: queued jobs of `nq` queues due by `$nq+1`,
    /// in priority and FIFO order, `$nq+2` of them, after the job `($nq+3, $nq+4)` when
    /// `after` (keyset paging).
    fn claim_page_sql(&self, nq: usize, after: bool) -> String {
        let cursor = if after {
            format!(
                " AND (priority < ${a} OR (priority = ${a} AND num > ${b}))",
                a = nq + 3,
                b = nq + 4
            )
        } else {
            String::new()
        };
        let skip_locked = match self.backend {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        format!(
            "SELECT id, required, priority, num, queue, concurrency_key, concurrency_limit FROM jobs WHERE state = 'queued' AND queue IN ({}) AND run_at <= ${}{cursor} ORDER BY priority DESC, num LIMIT ${}{skip_locked}",
            placeholders(0, nq),
            nq + 1,
            nq + 2,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (issue 19): a claim at 1,000,000 queued read every queued job through
    /// `jobs_due` and sorted them (≈600 ms), until autovacuum analyzed the table. The
    /// statement is prepared once per connection; PostgreSQL's generic plan for it, made
    /// while the queue was short, stayed in use as the queue grew. (Which index that
    /// plan picks was a near tie in the bench's run; here the test checks that claims are
    /// never planned generically.)
    #[tokio::test]
    async fn the_claim_is_planned_for_the_queue_as_it_is_now() {
        let url = crate::testing_pg::fresh_database().await;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Some(&url)).await.unwrap();
        let mut conn = store.write.acquire().await.unwrap();
        let insert = |n: i64, from: i64| {
            format!(
                "INSERT INTO jobs (id, name, queue, priority, state, exec, labels, required, grace_ms, max_attempts, backoff_base_ms, backoff_cap_ms, env, secrets, metadata, created_at, run_at, updated_at) \
                 SELECT 'j' || g, 'n', 'default', 0, 'queued', '{{}}', '{{}}', '{{}}', 0, 1, 0, 0, '{{}}', '', '{{}}', 0, g, 0 FROM generate_series({from}, {}) g",
                from + n - 1
            )
        };
        // No ANALYZE from autovacuum while the test looks at plans.
        for sql in [
            "ALTER TABLE jobs SET (autovacuum_enabled = false)".to_string(),
            "ANALYZE jobs".to_string(),
            insert(1000, 1),
            format!(
                "PREPARE claim(text, bigint, bigint) AS {}",
                store.claim_page_sql(1, false)
            ),
        ] {
            sqlx::query(&sql).execute(&mut *conn).await.unwrap();
        }
        // Claims while the queue is short make PostgreSQL settle on a generic plan.
        for _ in 0..8 {
            for sql in ["BEGIN", "EXECUTE claim('default', 1000000000, 8)", "COMMIT"] {
                sqlx::query(sql).execute(&mut *conn).await.unwrap();
            }
        }
        sqlx::query(&insert(200_000, 1001))
            .execute(&mut *conn)
            .await
            .unwrap();
        async fn plan(conn: &mut sqlx::AnyConnection, setting: &str) -> String {
            sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
            if !setting.is_empty() {
                sqlx::query(setting).execute(&mut *conn).await.unwrap();
            }
            let rows: Vec<(String,)> =
                sqlx::query_as("EXPLAIN EXECUTE claim('default', 1000000000, 8)")
                    .fetch_all(&mut *conn)
                    .await
                    .unwrap();
            sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
            rows.into_iter().map(|r| r.0).collect::<Vec<_>>().join("\n")
        }
        let cached = plan(&mut conn, "").await;
        assert!(
            cached.contains("$1") && cached.contains("$2"),
            "after a few claims PostgreSQL uses a generic plan, made while the queue was short:\n{cached}"
        );
        let claim = plan(&mut conn, CLAIM_PLANNING).await;
        assert!(
            !claim.contains('$') && claim.contains("jobs_claim") && !claim.contains("Sort"),
            "a claim is planned with its values for the table as it is, and walks jobs_claim in order:\n{claim}"
        );
    }
}

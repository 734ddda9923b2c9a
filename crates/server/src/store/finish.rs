//! Ending attempts: `finish` (one) and `finish_many` (an agent's batch). Both decide each
//! attempt the same way ([`plan`]); the batch then writes set-wise: one read for every
//! job, one UPDATE per group of jobs that end alike, one multi-row INSERT of events, so
//! a thousand finishes cost a handful of statements instead of four thousand. A start
//! reported with its end is written by the same statements.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use drover_core::api::{AttemptState, FinishRequest};
use drover_core::backoff::{should_retry, Backoff};
use drover_core::{transition, Event, JobState, Outcome};
use sqlx::{Any, Row, Transaction};

use super::jobs::{answered_again, job_in_tx, NewEvent};
use super::leases::{check_fence, AttemptWrite, Held};
use super::{ms, opt_time, Result, Store, StoreError, CHUNK};

/// How one item of a batch ended: the job's new state, the attempt's run time, and
/// whether the job counted against a concurrency or queue limit.
pub type Ended = (JobState, Option<Duration>, bool);

/// What [`Store::finish_many`] did.
#[derive(Debug)]
pub struct FinishedMany {
    /// Per item, what ended, or the fencing error that refused it.
    pub results: Vec<std::result::Result<Ended, StoreError>>,
    /// Jobs queued because they waited for these to end.
    pub released: Vec<String>,
    /// How long each job whose start came with its end waited to start.
    pub waited: Vec<Duration>,
}

/// How one attempt ends, decided before anything is written.
struct Plan {
    next: JobState,
    job: JobRow,
    attempt: AttemptRow,
    event_kind: &'static str,
    from: JobState,
    reason: String,
    elapsed: Option<Duration>,
    /// Jobs wait on this one: settle them if it ends.
    dependents: bool,
    /// When the attempt's process started, for a start reported with its end: the same
    /// writes record it.
    started: Option<DateTime<Utc>>,
}

/// The values written to a job row; jobs with equal values are updated together.
#[derive(Clone, PartialEq, Eq, Hash)]
struct JobRow {
    state: &'static str,
    used: i64,
    /// Set when the job goes back to the queue (a retry); else it is finished.
    run_at: Option<i64>,
    exit_code: Option<i64>,
    error: Option<String>,
    result: Option<String>,
}

/// The values written to an attempt row.
#[derive(Clone, PartialEq, Eq, Hash)]
struct AttemptRow {
    state: &'static str,
    exit_code: Option<i64>,
    error: Option<String>,
    gpus: Option<&'static str>,
}

/// Decides how the attempt ends (retry or final state, backoff, event). `started` is the
/// start of a leased attempt's process reported with its end (see [`folded_start`]): the
/// attempt ends as if that start had been stored first.
fn plan(
    held: &Held,
    req: &FinishRequest,
    now: DateTime<Utc>,
    jitter: f64,
    started: Option<DateTime<Utc>>,
) -> Result<Plan> {
    let (state, attempts_used, started_at) = match started {
        Some(at) => (JobState::Running, held.attempts_used + 1, Some(at)),
        None => (held.state, held.attempts_used, held.started_at),
    };
    // An attempt that ended before it reported a start still used up an attempt.
    let used = attempts_used + u32::from(state == JobState::Leased);
    let failed = matches!(req.outcome, Outcome::Failed | Outcome::TimedOut);
    let retry = failed && !held.cancel_requested && should_retry(used, held.max_attempts);
    let next = transition(
        state,
        Event::Finish {
            outcome: req.outcome,
            retry,
        },
    )
    .map_err(|e| StoreError::Conflict(e.to_string()))?;
    // jobs.started_at belongs to the current attempt only once it is running.
    let ran_from = started_at.filter(|_| state == JobState::Running);
    let run_at = (next == JobState::Queued).then(|| {
        let backoff = Backoff {
            base_ms: held.base_ms,
            cap_ms: held.cap_ms,
        };
        ms(now) + backoff.delay_ms(used, jitter) as i64
    });
    let exit_code = req.exit_code.map(i64::from);
    Ok(Plan {
        next,
        job: JobRow {
            state: next.as_str(),
            used: i64::from(used),
            run_at,
            exit_code,
            error: req.error.clone(),
            result: match run_at {
                Some(_) => None,
                None => req.result.as_ref().map(super::to_json),
            },
        },
        attempt: AttemptRow {
            state: AttemptState::from(req.outcome).as_str(),
            exit_code,
            error: req.error.clone(),
            gpus: req.gpus.map(|g| g.as_str()),
        },
        event_kind: if run_at.is_some() {
            "retry_scheduled"
        } else {
            "finished"
        },
        from: state,
        reason: req
            .error
            .clone()
            .unwrap_or_else(|| req.outcome.as_str().to_string()),
        elapsed: ran_from.and_then(|s| (now - s).to_std().ok()),
        dependents: held.has_dependents,
        started,
    })
}

/// When a leased attempt whose start came with its end started: never before it was
/// leased, nor in the future (the agent says how long ago, which no clock difference
/// between the machines changes). `None` when the attempt is not leased (a start stored
/// already wins) or its lease time is unknown.
fn folded_start(
    held: &Held,
    leased_at: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if held.state != JobState::Leased {
        return None;
    }
    Some(at.max(leased_at?).min(now))
}

impl Store {
    /// Ends an attempt with the agent's report: the job is retried (after its backoff)
    /// when it failed and attempts remain, else it takes its final state.
    pub async fn finish(
        &self,
        agent_id: &str,
        job_id: &str,
        attempt: u32,
        req: &FinishRequest,
        now: DateTime<Utc>,
        jitter: f64,
    ) -> Result<AttemptWrite> {
        let mut tx = self.write.begin().await?;
        let held = match self.fence(&mut tx, agent_id, job_id, attempt).await {
            Ok(held) => held,
            Err(StoreError::StaleAttempt { .. }) => {
                self.replayed(&mut tx, agent_id, job_id, attempt, req)
                    .await?;
                return answered_again(tx, job_id).await;
            }
            Err(e) => return Err(e),
        };
        let plan = plan(&held, req, now, jitter, None)?;
        let elapsed = plan.elapsed;
        let actor = format!("agent:{agent_id}");
        let released = self
            .write_plans(&mut tx, &[(job_id, attempt, plan)], &actor, now)
            .await?;
        let job = job_in_tx(&mut tx, job_id).await?;
        tx.commit().await?;
        Ok(AttemptWrite {
            job,
            elapsed,
            released,
        })
    }

    /// Ends many attempts of one agent in one transaction, each as if they had been
    /// finished one after the other. `starts[i]`, when given, is when item `i`'s process
    /// started, for an attempt whose start is reported with its end (missing entries
    /// are `None`).
    pub async fn finish_many(
        &self,
        agent_id: &str,
        items: &[(String, u32, FinishRequest)],
        now: DateTime<Utc>,
        jitters: &[f64],
        starts: &[Option<DateTime<Utc>>],
    ) -> Result<FinishedMany> {
        let mut tx = self.write.begin().await?;
        let ids: Vec<&str> = items.iter().map(|(id, _, _)| id.as_str()).collect();
        let (mut held, leased_at) = self.held_many(&mut tx, &ids).await?;
        let mut out = Vec::with_capacity(items.len());
        let mut plans = Vec::new();
        let mut waited = Vec::new();
        let starts = starts.iter().copied().chain(std::iter::repeat(None));
        let jitters = jitters.iter().copied().chain(std::iter::repeat(0.5));
        for (((job_id, attempt, req), jitter), start) in items.iter().zip(jitters).zip(starts) {
            let entry = held.get_mut(job_id.as_str());
            let decided =
                check_fence(entry.as_deref(), agent_id, job_id, *attempt).and_then(|()| {
                    let h = entry.as_deref().expect("fenced");
                    let started = start.and_then(|at| {
                        folded_start(h, leased_at.get(job_id.as_str()).copied(), at, now)
                    });
                    plan(h, req, now, jitter, started)
                });
            match decided {
                Ok(p) => {
                    let h = entry.expect("fenced");
                    let limited = self.is_limited(h.concurrency_key.as_deref(), &h.queue);
                    out.push(Ok((p.next, p.elapsed, limited)));
                    if let Some(at) = p.started {
                        waited.extend((at - h.run_at).to_std().ok());
                    }
                    // A second report of the same attempt in this batch is stale, as it
                    // would be one request later.
                    h.state = p.next;
                    plans.push((job_id.as_str(), *attempt, p));
                }
                Err(e @ (StoreError::Db(_) | StoreError::Corrupt(_))) => return Err(e),
                Err(StoreError::StaleAttempt { .. }) => {
                    let replay = self
                        .replayed(&mut tx, agent_id, job_id, *attempt, req)
                        .await;
                    match replay {
                        Ok(state) => out.push(Ok((state, None, false))),
                        Err(e @ (StoreError::Db(_) | StoreError::Corrupt(_))) => return Err(e),
                        Err(e) => out.push(Err(e)),
                    }
                }
                Err(e) => out.push(Err(e)),
            }
        }
        let actor = format!("agent:{agent_id}");
        let released = self.write_plans(&mut tx, &plans, &actor, now).await?;
        tx.commit().await?;
        Ok(FinishedMany {
            results: out,
            released,
            waited,
        })
    }

    /// Answers a finish for an attempt that is no longer current: the same report as the
    /// one stored (a retry whose first answer was lost) gets the job's state;
    /// a different report `AlreadyFinished`; an attempt that ended any other way (lost,
    /// or never this agent's) stays `StaleAttempt`, which tells the agent to kill it.
    async fn replayed(
        &self,
        tx: &mut Transaction<'_, Any>,
        agent_id: &str,
        job_id: &str,
        attempt: u32,
        req: &FinishRequest,
    ) -> Result<JobState> {
        let stale = || StoreError::StaleAttempt {
            job_id: job_id.to_string(),
            attempt,
        };
        let row = sqlx::query(
            "SELECT a.agent_id, a.state, a.exit_code, a.error, j.state AS job_state FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.job_id = $1 AND a.number = $2",
        )
        .bind(job_id)
        .bind(i64::from(attempt))
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(stale)?;
        let state: String = row.try_get("state")?;
        let reported = [
            AttemptState::Succeeded,
            AttemptState::Failed,
            AttemptState::Canceled,
            AttemptState::TimedOut,
        ]
        .iter()
        .any(|s| s.as_str() == state);
        if row.try_get::<String, _>("agent_id")? != agent_id || !reported {
            return Err(stale());
        }
        let same = state == AttemptState::from(req.outcome).as_str()
            && row.try_get::<Option<i64>, _>("exit_code")? == req.exit_code.map(i64::from)
            && row.try_get::<Option<String>, _>("error")? == req.error;
        if !same {
            return Err(StoreError::AlreadyFinished {
                job_id: job_id.to_string(),
                attempt,
                state,
            });
        }
        super::parse_col(&row, "job_state")
    }

    /// Whether each attempt is this agent's current one, as
    /// [`Store::check_attempt`] says for one, in one read.
    pub async fn check_attempts(&self, agent_id: &str, items: &[(&str, u32)]) -> Result<Vec<bool>> {
        let mut held = HashMap::with_capacity(items.len());
        for chunk in items.chunks(CHUNK) {
            let sql = format!(
                "SELECT id, {} FROM jobs WHERE id IN ({})",
                Held::COLUMNS,
                self.params(0, chunk.len()),
            );
            let mut q = sqlx::query(&sql);
            for (id, _) in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&self.read).await? {
                held.insert(row.try_get::<String, _>("id")?, Held::from_row(&row)?);
            }
        }
        Ok(items
            .iter()
            .map(|(id, attempt)| check_fence(held.get(*id), agent_id, id, *attempt).is_ok())
            .collect())
    }

    /// The fencing facts of many jobs, by id (missing jobs are absent), and when their
    /// current attempts were leased.
    async fn held_many(
        &self,
        tx: &mut Transaction<'_, Any>,
        ids: &[&str],
    ) -> Result<(HashMap<String, Held>, HashMap<String, DateTime<Utc>>)> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut leased_at = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT id, {}, (SELECT a.leased_at FROM attempts a WHERE a.job_id = jobs.id AND a.number = jobs.current_attempt) AS leased_at FROM jobs WHERE id IN ({}){}",
                Held::COLUMNS,
                self.params(0, chunk.len()),
                self.lock_clause()
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut **tx).await? {
                let id: String = row.try_get("id")?;
                if let Some(at) = opt_time(&row, "leased_at")? {
                    leased_at.insert(id.clone(), at);
                }
                out.insert(id, Held::from_row(&row)?);
            }
        }
        Ok((out, leased_at))
    }

    /// Writes decided finishes: jobs and attempts that end alike in one UPDATE each,
    /// their events in multi-row INSERTs; then settles the jobs waiting on those that
    /// ended, and returns the ones that were queued.
    async fn write_plans(
        &self,
        tx: &mut Transaction<'_, Any>,
        plans: &[(&str, u32, Plan)],
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let mut jobs: HashMap<&JobRow, Vec<&str>> = HashMap::new();
        let mut attempts: HashMap<&AttemptRow, Vec<(&str, u32)>> = HashMap::new();
        for (job_id, attempt, p) in plans {
            jobs.entry(&p.job).or_default().push(job_id);
            attempts
                .entry(&p.attempt)
                .or_default()
                .push((job_id, *attempt));
        }
        let started: HashMap<&str, i64> = plans
            .iter()
            .filter_map(|(id, _, p)| Some((*id, ms(p.started?))))
            .collect();
        for (w, ids) in jobs {
            for chunk in ids.chunks(CHUNK) {
                let p = |i| self.param(i);
                let (set, fixed) = match w.run_at {
                    Some(_) => (format!("state = {}, agent_id = NULL, lease_expires_at = NULL, attempts_used = {}, run_at = {}, exit_code = {}, error = {}, updated_at = {}", p(1), p(2), p(3), p(4), p(5), p(6)), 6),
                    None => (format!("state = {}, agent_id = NULL, lease_expires_at = NULL, attempts_used = {}, exit_code = {}, error = {}, result = {}, finished_at = {}, updated_at = {}", p(1), p(2), p(3), p(4), p(5), p(6), p(7)), 7),
                };
                let starts: Vec<(&str, i64)> = chunk
                    .iter()
                    .filter_map(|id| Some((*id, *started.get(id)?)))
                    .collect();
                let sql = format!(
                    "UPDATE jobs SET {set}{} WHERE id IN ({})",
                    self.started_case("id", fixed, starts.len()),
                    self.params(fixed + 2 * starts.len(), chunk.len())
                );
                let mut q = sqlx::query(&sql).bind(w.state).bind(w.used);
                q = match w.run_at {
                    Some(run_at) => q
                        .bind(run_at)
                        .bind(w.exit_code)
                        .bind(w.error.clone())
                        .bind(ms(now)),
                    None => q
                        .bind(w.exit_code)
                        .bind(w.error.clone())
                        .bind(w.result.clone())
                        .bind(ms(now))
                        .bind(ms(now)),
                };
                for (id, at) in &starts {
                    q = q.bind(*id).bind(*at);
                }
                for id in chunk {
                    q = q.bind(*id);
                }
                q.execute(&mut **tx).await?;
            }
        }
        for (w, keys) in attempts {
            for chunk in keys.chunks(CHUNK) {
                let starts: Vec<(&str, i64)> = chunk
                    .iter()
                    .filter_map(|(id, _)| Some((*id, *started.get(id)?)))
                    .collect();
                let fixed = 5 + 2 * starts.len();
                let sql = format!(
                    "UPDATE attempts SET state = {}, finished_at = {}, exit_code = {}, error = {}, gpus = {}{} WHERE (job_id, number) IN (VALUES {})",
                    self.param(1),
                    self.param(2),
                    self.param(3),
                    self.param(4),
                    self.param(5),
                    self.started_case("job_id", 5, starts.len()),
                    self.values_after(fixed, chunk.len(), 2),
                );
                let mut q = sqlx::query(&sql)
                    .bind(w.state)
                    .bind(ms(now))
                    .bind(w.exit_code)
                    .bind(w.error.clone())
                    .bind(w.gpus);
                for (id, at) in &starts {
                    q = q.bind(*id).bind(*at);
                }
                for (job_id, number) in chunk {
                    q = q.bind(*job_id).bind(i64::from(*number));
                }
                q.execute(&mut **tx).await?;
            }
        }
        // A start that came with the end is recorded before it, as it would have been.
        let mut events = Vec::with_capacity(plans.len() + started.len());
        for (job_id, attempt, p) in plans {
            if let Some(at) = p.started {
                let start = NewEvent {
                    job_id,
                    kind: "started",
                    from: Some(JobState::Leased),
                    to: JobState::Running,
                    attempt: Some(*attempt),
                    actor,
                    reason: None,
                };
                events.push((start, at));
            }
            let end = NewEvent {
                job_id,
                kind: p.event_kind,
                from: Some(p.from),
                to: p.next,
                attempt: Some(*attempt),
                actor,
                reason: Some(&p.reason),
            };
            events.push((end, now));
        }
        self.record_events_at(tx, &events).await?;
        let ended: Vec<(String, JobState)> = plans
            .iter()
            .filter(|(_, _, p)| p.dependents && p.next.is_terminal())
            .map(|(id, _, p)| (id.to_string(), p.next))
            .collect();
        if ended.is_empty() {
            return Ok(Vec::new());
        }
        self.settle(tx, ended, now).await
    }

    /// `, started_at = CASE key WHEN … THEN … ELSE started_at END` for `n` (key, start)
    /// pairs bound after `offset` parameters; empty when `n` is 0.
    fn started_case(&self, key: &str, offset: usize, n: usize) -> String {
        if n == 0 {
            return String::new();
        }
        let whens: Vec<String> = (0..n)
            .map(|i| {
                let (k, v) = (offset + 2 * i + 1, offset + 2 * i + 2);
                format!("WHEN {} THEN {}", self.param(k), self.param(v))
            })
            .collect();
        format!(
            ", started_at = CASE {key} {} ELSE started_at END",
            whens.join(" ")
        )
    }
}

//! Dependencies between jobs: resolving a submit's `after` lists (unknown jobs and
//! cycles refused), and settling the jobs that wait on jobs that just ended, in the
//! transaction that ended them.
//!
//! A waiting job keeps `deps_pending`, how many of its dependencies have not ended.
//! Each end decrements it (or cancels the job, when the end is one its condition
//! refuses), so a finish costs one statement per waiting dependent, however many
//! dependencies it has; at zero the job is queued.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use drover_core::group::{DepCondition, Dependency};
use drover_core::spec::FieldError;
use drover_core::{transition, Event, JobState, ValidJob};
use sqlx::{Any, Row, Transaction};

use super::jobs::{record_event, NewEvent};
use super::{ms, Result, Store, StoreError, CHUNK, ENDED_SQL};

/// Where a dependency stands when a job naming it is submitted.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    /// A stored job in this state (its row is locked until the submit commits, so it
    /// cannot end unseen in between).
    Stored(JobState),
    /// The fresh job at this index of the same submit.
    Batch(usize),
}

/// One resolved dependency of a fresh job.
#[derive(Debug, Clone)]
pub(super) struct Edge {
    pub dep_id: String,
    pub condition: DepCondition,
    pub target: Target,
}

/// How a fresh job starts: its state, its pending count, and why it was canceled.
#[derive(Debug, Clone)]
pub(super) struct Start {
    pub state: JobState,
    pub pending: i64,
    pub error: Option<String>,
}

impl Start {
    pub(super) const QUEUED: Start = Start {
        state: JobState::Queued,
        pending: 0,
        error: None,
    };
}

impl Store {
    /// Resolves the `after` lists of the fresh jobs of one submit (`ids[i]` is job
    /// `i`'s id; `batch_keys` maps an idempotency key of this submit to its index):
    /// every dependency named (a job id, `key:K`, or a group id for all its members)
    /// must exist, and jobs of the same submit must not wait on each other in a circle.
    /// Problems come back together as `Invalid`, by job index.
    pub(super) async fn resolve_after(
        &self,
        tx: &mut Transaction<'_, Any>,
        jobs: &[(String, ValidJob)],
        batch_keys: &HashMap<String, usize>,
    ) -> Result<Vec<Vec<Edge>>> {
        // Each name is looked up once, however many jobs of the submit use it.
        let mut known: HashMap<&str, Vec<Edge>> = HashMap::new();
        for dep in jobs.iter().flat_map(|(_, job)| &job.after) {
            if !known.contains_key(dep.job.as_str()) {
                let found = self.lookup(tx, dep, jobs, batch_keys).await?;
                known.insert(dep.job.as_str(), found);
            }
        }
        let mut errors = Vec::new();
        let mut out = Vec::with_capacity(jobs.len());
        for (i, (_, job)) in jobs.iter().enumerate() {
            let mut edges: Vec<Edge> = Vec::new();
            let mut seen: HashSet<&str> = HashSet::new();
            for (j, dep) in job.after.iter().enumerate() {
                let found = &known[dep.job.as_str()];
                if found.is_empty() {
                    errors.push((
                        i,
                        FieldError::new(
                            format!("after[{j}].job"),
                            format!(
                                "no job or group {:?}; name a job id, key:IDEMPOTENCY_KEY or a group id",
                                dep.job
                            ),
                        ),
                    ));
                }
                // Another job of the submit may name the same one with another condition.
                for e in found {
                    if seen.insert(e.dep_id.as_str()) {
                        edges.push(Edge {
                            condition: dep.condition,
                            ..e.clone()
                        });
                    }
                }
            }
            out.push(edges);
        }
        if let Some((i, cycle)) = find_cycle(&out) {
            let names: Vec<String> = cycle.iter().map(|&k| describe(&jobs[k].1, k)).collect();
            errors.push((
                i,
                FieldError::new(
                    "after",
                    format!(
                        "jobs would wait on each other in a circle: {} → {}",
                        names.join(" → "),
                        names[0]
                    ),
                ),
            ));
        }
        if !errors.is_empty() {
            return Err(StoreError::Invalid(errors));
        }
        Ok(out)
    }

    /// The jobs `dep` names, with their states (empty: none).
    async fn lookup(
        &self,
        tx: &mut Transaction<'_, Any>,
        dep: &Dependency,
        jobs: &[(String, ValidJob)],
        batch_keys: &HashMap<String, usize>,
    ) -> Result<Vec<Edge>> {
        let edge = |dep_id: String, target| Edge {
            dep_id,
            condition: dep.condition,
            target,
        };
        if let Some(key) = dep.job.strip_prefix("key:") {
            if let Some(&k) = batch_keys.get(key) {
                return Ok(vec![edge(jobs[k].0.clone(), Target::Batch(k))]);
            }
            let sql = format!(
                "SELECT id, state FROM jobs WHERE idempotency_key = $1{}",
                self.lock_clause()
            );
            return self.stored_edges(tx, &sql, key, dep.condition).await;
        }
        let sql = format!(
            "SELECT id, state FROM jobs WHERE id = $1{}",
            self.lock_clause()
        );
        let found = self.stored_edges(tx, &sql, &dep.job, dep.condition).await?;
        if !found.is_empty() {
            return Ok(found);
        }
        let sql = format!(
            "SELECT id, state FROM jobs WHERE group_id = $1 ORDER BY array_index{}",
            self.lock_clause()
        );
        self.stored_edges(tx, &sql, &dep.job, dep.condition).await
    }

    async fn stored_edges(
        &self,
        tx: &mut Transaction<'_, Any>,
        sql: &str,
        value: &str,
        condition: DepCondition,
    ) -> Result<Vec<Edge>> {
        let rows = sqlx::query(sql).bind(value).fetch_all(&mut **tx).await?;
        rows.iter()
            .map(|r| {
                Ok(Edge {
                    dep_id: r.try_get("id")?,
                    condition,
                    target: Target::Stored(super::parse_col(r, "state")?),
                })
            })
            .collect()
    }

    /// Writes the edges of the fresh jobs and marks their stored dependencies as having
    /// dependents.
    pub(super) async fn write_edges(
        &self,
        tx: &mut Transaction<'_, Any>,
        jobs: &[(String, ValidJob)],
        edges: &[Vec<Edge>],
    ) -> Result<()> {
        let all: Vec<(&str, &Edge)> = jobs
            .iter()
            .zip(edges)
            .flat_map(|((id, _), es)| es.iter().map(move |e| (id.as_str(), e)))
            .collect();
        for chunk in all.chunks(CHUNK) {
            let sql = format!(
                "INSERT INTO job_deps (job_id, dep_id, condition) VALUES {}",
                self.values(chunk.len(), 3)
            );
            let mut q = sqlx::query(&sql);
            for (id, e) in chunk {
                q = q
                    .bind(id.to_string())
                    .bind(e.dep_id.clone())
                    .bind(e.condition.as_str());
            }
            q.execute(&mut **tx).await?;
        }
        let mut stored: Vec<&str> = all
            .iter()
            .filter(|(_, e)| matches!(e.target, Target::Stored(_)))
            .map(|(_, e)| e.dep_id.as_str())
            .collect();
        stored.sort_unstable();
        stored.dedup();
        for chunk in stored.chunks(CHUNK) {
            let sql = format!(
                "UPDATE jobs SET has_dependents = 1 WHERE has_dependents = 0 AND id IN ({})",
                self.params(0, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id.to_string());
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Settles the jobs waiting on jobs that just ended (`ended`: id and final state):
    /// each is queued once none of its dependencies is pending, or canceled with
    /// `dependency_failed` when one ended in a way its condition refuses (which may
    /// settle the jobs waiting on it in turn). Returns the ids of the jobs it queued.
    pub(crate) async fn settle(
        &self,
        tx: &mut Transaction<'_, Any>,
        ended: Vec<(String, JobState)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<String>> {
        let mut released = Vec::new();
        let mut work = ended;
        while !work.is_empty() {
            let states: HashMap<String, JobState> = work.drain(..).collect();
            let ids: Vec<&String> = states.keys().collect();
            // Per waiting job: how many of these ended as it asked, and the first that
            // did not.
            let mut verdicts: BTreeMap<String, (i64, Option<String>)> = BTreeMap::new();
            for chunk in ids.chunks(CHUNK) {
                let sql = format!(
                    "SELECT d.job_id, d.dep_id, d.condition FROM job_deps d JOIN jobs j ON j.id = d.job_id WHERE j.state = 'waiting' AND d.dep_id IN ({})",
                    self.params(0, chunk.len())
                );
                let mut q = sqlx::query(&sql);
                for id in chunk {
                    q = q.bind(id.to_string());
                }
                for row in q.fetch_all(&mut **tx).await? {
                    let waiter: String = row.try_get("job_id")?;
                    let dep: String = row.try_get("dep_id")?;
                    let condition: DepCondition = super::parse_col(&row, "condition")?;
                    let state = states[&dep];
                    let v = verdicts.entry(waiter).or_default();
                    match condition.met_by(state) {
                        Some(true) => v.0 += 1,
                        _ => {
                            v.1.get_or_insert(format!(
                                "dependency_failed: job {dep} ended {state}, and this job waited for it with :{}",
                                condition.as_str()
                            ));
                        }
                    }
                }
            }
            for (waiter, (met, failure)) in verdicts {
                match failure {
                    Some(reason) => {
                        if self.dep_cancel(tx, &waiter, &reason, now).await? {
                            work.push((waiter, JobState::Canceled));
                        }
                    }
                    None => {
                        if self.dep_met(tx, &waiter, met, now).await? {
                            released.push(waiter);
                        }
                    }
                }
            }
        }
        Ok(released)
    }

    /// Cancels a waiting job whose dependency failed it; false when it was no longer
    /// waiting.
    async fn dep_cancel(
        &self,
        tx: &mut Transaction<'_, Any>,
        id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let next = transition(JobState::Waiting, Event::DepsFailed).expect("waiting can fail");
        let done = sqlx::query("UPDATE jobs SET state = $1, error = $2, finished_at = $3, updated_at = $3 WHERE id = $4 AND state = 'waiting'")
            .bind(next.as_str())
            .bind(reason)
            .bind(ms(now))
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected()
            == 1;
        if done {
            waiter_event(tx, id, "canceled", next, reason, now).await?;
        }
        Ok(done)
    }

    /// Counts `met` more dependencies of a waiting job as ended; queues it when none is
    /// pending. True when it was queued.
    async fn dep_met(
        &self,
        tx: &mut Transaction<'_, Any>,
        id: &str,
        met: i64,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let next = transition(JobState::Waiting, Event::DepsMet).expect("waiting can be met");
        sqlx::query("UPDATE jobs SET deps_pending = deps_pending - $1, updated_at = $2 WHERE id = $3 AND state = 'waiting'")
            .bind(met)
            .bind(ms(now))
            .bind(id)
            .execute(&mut **tx)
            .await?;
        // A job that was to start later still does; one that is due starts now.
        let done = sqlx::query("UPDATE jobs SET state = $1, run_at = CASE WHEN run_at < $2 THEN $2 ELSE run_at END WHERE id = $3 AND state = 'waiting' AND deps_pending <= 0")
            .bind(next.as_str())
            .bind(ms(now))
            .bind(id)
            .execute(&mut **tx)
            .await?
            .rows_affected()
            == 1;
        if done {
            let reason = "every job it waited for ended as it asked";
            waiter_event(tx, id, "released", next, reason, now).await?;
        }
        Ok(done)
    }

    /// Jobs that were retried (they had ended and will run again): the jobs still
    /// waiting on them wait for their new end too.
    pub(super) async fn unsettle(&self, tx: &mut Transaction<'_, Any>, ids: &[&str]) -> Result<()> {
        for chunk in ids.chunks(CHUNK) {
            let sql = format!(
                "SELECT d.job_id FROM job_deps d JOIN jobs j ON j.id = d.job_id WHERE j.state = 'waiting' AND d.dep_id IN ({})",
                self.params(0, chunk.len())
            );
            let mut q = sqlx::query_scalar::<_, String>(&sql);
            for id in chunk {
                q = q.bind(id.to_string());
            }
            let mut counts: BTreeMap<String, i64> = BTreeMap::new();
            for waiter in q.fetch_all(&mut **tx).await? {
                *counts.entry(waiter).or_default() += 1;
            }
            for (waiter, n) in counts {
                sqlx::query("UPDATE jobs SET deps_pending = deps_pending + $1 WHERE id = $2 AND state = 'waiting'")
                    .bind(n)
                    .bind(waiter)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// How many of a job's dependencies have not ended, and one of them.
    pub async fn waiting_on(&self, id: &str) -> Result<(u64, Option<String>)> {
        let row = sqlx::query(&format!("SELECT COUNT(*) AS n, MIN(d.dep_id) AS first FROM job_deps d JOIN jobs j ON j.id = d.dep_id WHERE d.job_id = $1 AND j.state NOT IN {ENDED_SQL}"))
            .bind(id)
            .fetch_one(&self.read)
            .await?;
        Ok((row.try_get::<i64, _>("n")? as u64, row.try_get("first")?))
    }
}

/// Records that the server moved a waiting job on (released or canceled).
async fn waiter_event(
    tx: &mut Transaction<'_, Any>,
    id: &str,
    kind: &str,
    to: JobState,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<()> {
    let e = NewEvent {
        job_id: id,
        kind,
        from: Some(JobState::Waiting),
        to,
        attempt: None,
        actor: "server",
        reason: Some(reason),
    };
    record_event(tx, e, now).await
}

/// How each fresh job starts, given its edges: in dependency order, so a job of the
/// submit that is canceled at once (a dependency had already failed it) cancels the
/// jobs of the submit that wait on it with `:ok`.
pub(super) fn starts(edges: &[Vec<Edge>]) -> Vec<Start> {
    fn start(i: usize, edges: &[Vec<Edge>], memo: &mut Vec<Option<Start>>) -> Start {
        if let Some(s) = &memo[i] {
            return s.clone();
        }
        let mut pending = 0;
        let mut failure = None;
        for e in &edges[i] {
            let state = match e.target {
                Target::Stored(s) => s,
                Target::Batch(k) => start(k, edges, memo).state,
            };
            match e.condition.met_by(state) {
                None => pending += 1,
                Some(true) => {}
                Some(false) => {
                    failure.get_or_insert(format!(
                        "dependency_failed: job {} had ended {state}, and this job waits for it with :{}",
                        e.dep_id,
                        e.condition.as_str()
                    ));
                }
            }
        }
        let s = match (edges[i].is_empty(), failure) {
            (true, _) => Start::QUEUED,
            (false, Some(error)) => Start {
                state: transition(JobState::Waiting, Event::DepsFailed).expect("waiting can fail"),
                pending,
                error: Some(error),
            },
            (false, None) if pending == 0 => Start::QUEUED,
            (false, None) => Start {
                state: JobState::Waiting,
                pending,
                error: None,
            },
        };
        memo[i] = Some(s.clone());
        s
    }
    let mut memo = vec![None; edges.len()];
    (0..edges.len())
        .map(|i| start(i, edges, &mut memo))
        .collect()
}

/// A circle of jobs of one submit that wait on each other, as job indexes, and the
/// first of them; none when the edges form no circle.
fn find_cycle(edges: &[Vec<Edge>]) -> Option<(usize, Vec<usize>)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(i: usize, edges: &[Vec<Edge>], marks: &mut [Mark], path: &mut Vec<usize>) -> bool {
        marks[i] = Mark::Open;
        path.push(i);
        for e in &edges[i] {
            if let Target::Batch(k) = e.target {
                let mark = marks[k];
                if mark == Mark::Open {
                    let from = path.iter().position(|&p| p == k).expect("open is on path");
                    path.drain(..from);
                    return true;
                }
                if mark == Mark::New && visit(k, edges, marks, path) {
                    return true;
                }
            }
        }
        marks[i] = Mark::Done;
        path.pop();
        false
    }
    let mut marks = vec![Mark::New; edges.len()];
    for i in 0..edges.len() {
        let mut path = Vec::new();
        if marks[i] == Mark::New && visit(i, edges, &mut marks, &mut path) {
            return Some((path[0], path));
        }
    }
    None
}

/// How an error names a job of the submit: its key, else its place.
fn describe(job: &ValidJob, i: usize) -> String {
    match &job.idempotency_key {
        Some(k) => format!("key:{k}"),
        None => format!("jobs[{i}]"),
    }
}

/// The jobs a job waits for, by id (ids are time-ordered: the oldest job first).
pub(super) async fn after_of<'e, E>(ex: E, id: &str) -> Result<Vec<Dependency>>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let rows =
        sqlx::query("SELECT dep_id, condition FROM job_deps WHERE job_id = $1 ORDER BY dep_id")
            .bind(id)
            .fetch_all(ex)
            .await?;
    rows.iter()
        .map(|r| {
            Ok(Dependency {
                job: r.try_get("dep_id")?,
                condition: super::parse_col(r, "condition")?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(k: usize) -> Edge {
        Edge {
            dep_id: format!("j{k}"),
            condition: DepCondition::Ok,
            target: Target::Batch(k),
        }
    }

    fn stored(state: JobState, condition: DepCondition) -> Edge {
        Edge {
            dep_id: "old".into(),
            condition,
            target: Target::Stored(state),
        }
    }

    #[test]
    fn circles_are_found_and_chains_are_not() {
        assert!(find_cycle(&[vec![], vec![batch(0)], vec![batch(1)]]).is_none());
        let (first, path) = find_cycle(&[vec![batch(2)], vec![batch(0)], vec![batch(1)]]).unwrap();
        assert_eq!(first, 0);
        assert_eq!(path, vec![0, 2, 1]);
        assert_eq!(find_cycle(&[vec![], vec![batch(1)]]).unwrap().1, vec![1]);
    }

    #[test]
    fn a_failed_dependency_cancels_down_the_chain_of_one_submit() {
        let edges = vec![
            vec![stored(JobState::Failed, DepCondition::Ok)],
            vec![batch(0)],
            vec![stored(JobState::Running, DepCondition::Ok)],
            vec![stored(JobState::Failed, DepCondition::Any)],
        ];
        let s = starts(&edges);
        assert_eq!(s[0].state, JobState::Canceled);
        assert_eq!(s[1].state, JobState::Canceled);
        assert!(s[1]
            .error
            .as_deref()
            .unwrap()
            .starts_with("dependency_failed"));
        assert_eq!((s[2].state, s[2].pending), (JobState::Waiting, 1));
        assert_eq!(s[3].state, JobState::Queued);
    }
}

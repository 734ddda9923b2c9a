//! Groups: the members of an array, stored with the group's row in one transaction,
//! read back as one aggregate (counts by state, mean progress), and canceled or retried
//! as one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use drover_core::group::{ArraySpec, Group, GroupAction, GroupState};
use drover_core::{JobState, ValidJob};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::audit::audit_in_tx;
use super::jobs::{Canceled, Of};
use super::{from_ms, ms, parse_col, Result, Store, StoreError, ENDED_SQL};

const COLS: &str = "num, id, name, first_index, count, parallelism, idempotency_key, created_at";

fn no_group(id: &str) -> StoreError {
    StoreError::NotFound(format!("no group with id {id:?}"))
}

/// The concurrency key that holds an array to its parallelism.
pub fn parallelism_key(group_id: &str) -> String {
    format!("group:{group_id}")
}

impl Store {
    /// Stores an array: the group and its members, each a copy of `job` with its index
    /// (`DROVER_ARRAY_INDEX`, `DROVER_GROUP_ID`, name `NAME[INDEX]`). `job`'s
    /// idempotency key is the group's: a group stored with it before is returned
    /// instead (false).
    pub async fn enqueue_group(
        &self,
        job: ValidJob,
        array: ArraySpec,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<(Group, bool)> {
        let mut tx = self.write.begin().await?;
        if let Some(key) = &job.idempotency_key {
            let existing: Option<String> =
                sqlx::query_scalar("SELECT id FROM job_groups WHERE idempotency_key = $1")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(id) = existing {
                tx.commit().await?;
                return Ok((self.group(&id).await?, false));
            }
        }
        let id = uuid::Uuid::now_v7().to_string();
        sqlx::query("INSERT INTO job_groups (id, name, first_index, count, parallelism, idempotency_key, actor, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)")
            .bind(&id)
            .bind(&job.name)
            .bind(i64::from(array.first))
            .bind(i64::from(array.count))
            .bind(array.parallelism.map(i64::from))
            .bind(job.idempotency_key.clone())
            .bind(actor)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
        let members: Vec<ValidJob> = (array.first..array.first + array.count)
            .map(|i| {
                let mut m = job.clone();
                m.name = format!("{}[{i}]", job.name);
                m.idempotency_key = None;
                m.env.insert("DROVER_ARRAY_INDEX".into(), i.to_string());
                m.env.insert("DROVER_GROUP_ID".into(), id.clone());
                if let Some(p) = array.parallelism {
                    m.concurrency = Some((parallelism_key(&id), p));
                }
                m.group = Some((id.clone(), i));
                m
            })
            .collect();
        self.enqueue_in(&mut tx, members, actor, now).await?;
        audit_in_tx(&mut tx, actor, "group.submit", &id, Some(&job.name), now).await?;
        tx.commit().await?;
        Ok((self.group(&id).await?, true))
    }

    /// One group with its members' counts and progress.
    pub async fn group(&self, id: &str) -> Result<Group> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM job_groups WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| no_group(id))?;
        self.group_from_row(&row).await
    }

    async fn group_from_row(&self, row: &AnyRow) -> Result<Group> {
        let id: String = row.try_get("id")?;
        // An ended member counts 100, one not started 0.
        let rows = sqlx::query(&format!("SELECT state, COUNT(*) AS n, SUM(CASE WHEN state IN {ENDED_SQL} THEN 100.0 ELSE COALESCE(progress_pct, 0.0) END) AS pct FROM jobs WHERE group_id = $1 GROUP BY state"))
            .bind(&id)
            .fetch_all(&self.read)
            .await?;
        let mut counts = BTreeMap::new();
        let mut sum = 0.0;
        for r in &rows {
            let state: JobState = parse_col(r, "state")?;
            counts.insert(state, r.try_get::<i64, _>("n")? as u64);
            sum += r.try_get::<Option<f64>, _>("pct")?.unwrap_or(0.0);
        }
        let total: u64 = counts.values().sum();
        Ok(Group {
            state: GroupState::of(&counts),
            percent: if total == 0 {
                0.0
            } else {
                (sum / total as f64 * 10.0).round() / 10.0
            },
            counts,
            id,
            name: row.try_get("name")?,
            first: row.try_get::<i64, _>("first_index")? as u32,
            count: row.try_get::<i64, _>("count")? as u32,
            parallelism: row
                .try_get::<Option<i64>, _>("parallelism")?
                .map(|v| v as u32),
            idempotency_key: row.try_get("idempotency_key")?,
            created_at: from_ms(row.try_get("created_at")?),
        })
    }

    /// Groups newest first; the cursor is the `num` of the last group of the previous
    /// page.
    pub async fn list_groups(
        &self,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<(Vec<Group>, Option<String>)> {
        let limit = i64::from(limit.clamp(1, 1000));
        let cursor: i64 = match cursor {
            None => i64::MAX,
            Some(c) => c.parse().map_err(|_| {
                StoreError::Conflict(format!("cursor {c:?} is not one this server returned"))
            })?,
        };
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM job_groups WHERE num < $1 ORDER BY num DESC LIMIT $2"
        ))
        .bind(cursor)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        let next = match rows.len() as i64 == limit {
            true => rows
                .last()
                .map(|r| r.try_get::<i64, _>("num"))
                .transpose()?
                .map(|n| n.to_string()),
            false => None,
        };
        let mut groups = Vec::with_capacity(rows.len());
        for r in &rows {
            groups.push(self.group_from_row(r).await?);
        }
        Ok((groups, next))
    }

    /// Cancels every member that has not ended, in one transaction.
    pub async fn cancel_group(
        &self,
        id: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<(GroupAction, Canceled)> {
        let mut tx = self.write.begin().await?;
        self.group_exists(&mut tx, id).await?;
        let open: Vec<JobState> = JobState::ALL
            .into_iter()
            .filter(|s| !s.is_terminal())
            .collect();
        let members = self.subjects(&mut tx, Of::Group(id), &open).await?;
        let done = self
            .cancel_subjects(
                &mut tx,
                &members,
                actor,
                "canceled by user with its group",
                now,
            )
            .await?;
        audit_in_tx(&mut tx, actor, "group.cancel", id, None, now).await?;
        tx.commit().await?;
        let action = GroupAction {
            changed: done.changed,
            group: self.group(id).await?,
        };
        Ok((action, done))
    }

    /// Queues again every member that failed or timed out, in one transaction.
    pub async fn retry_group(
        &self,
        id: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<GroupAction> {
        let mut tx = self.write.begin().await?;
        self.group_exists(&mut tx, id).await?;
        let failed = [JobState::Failed, JobState::TimedOut];
        let members = self.subjects(&mut tx, Of::Group(id), &failed).await?;
        let changed = self.retry_subjects(&mut tx, &members, actor, now).await?;
        audit_in_tx(&mut tx, actor, "group.retry", id, None, now).await?;
        tx.commit().await?;
        Ok(GroupAction {
            changed,
            group: self.group(id).await?,
        })
    }

    async fn group_exists(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        id: &str,
    ) -> Result<()> {
        let found: Option<String> = sqlx::query_scalar("SELECT id FROM job_groups WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        found.map(|_| ()).ok_or_else(|| no_group(id))
    }
}

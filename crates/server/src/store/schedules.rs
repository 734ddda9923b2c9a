//! Schedules: their rows, and the tick, which moves a schedule's `next_tick_at` on with a
//! compare-and-set in the transaction that submits the tick's jobs, so each tick
//! submits once however many servers or restarts see it due.

use chrono::{DateTime, Utc};
use drover_core::group::{DepCondition, Dependency};
use drover_core::schedule::{Schedule, ScheduleCreate, ScheduleTemplate, NEXT_SHOWN};
use drover_core::{JobState, ValidJob};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::jobs::{Canceled, Of};
use super::{from_ms, ms, opt_time, parse_col, to_json, Result, Store, StoreError};

const COLS: &str = "name, cron, tz, job, template, overlap, catch_up, catch_up_max, paused, next_tick_at, last_tick_at, last_job_id, last_error, created_at";

fn no_schedule(name: &str) -> StoreError {
    StoreError::NotFound(format!("no schedule named {name:?}"))
}

fn schedule_from_row(row: &AnyRow) -> Result<Schedule> {
    let opt_json = |col: &str| -> Result<Option<String>> { Ok(row.try_get(col)?) };
    let job = opt_json("job")?
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("schedule job: {e}")))?;
    let template: Option<ScheduleTemplate> = opt_json("template")?
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("schedule template: {e}")))?;
    let mut s = Schedule {
        name: row.try_get("name")?,
        cron: row.try_get("cron")?,
        tz: row.try_get("tz")?,
        job,
        template,
        overlap: parse_col(row, "overlap")?,
        catch_up: parse_col(row, "catch_up")?,
        catch_up_max: row.try_get::<i64, _>("catch_up_max")? as u32,
        paused: row.try_get::<i64, _>("paused")? != 0,
        created_at: from_ms(row.try_get("created_at")?),
        next_tick_at: opt_time(row, "next_tick_at")?,
        next_runs: Vec::new(),
        last_tick_at: opt_time(row, "last_tick_at")?,
        last_job_id: row.try_get("last_job_id")?,
        last_error: row.try_get("last_error")?,
    };
    if let (Some(first), Ok(cron)) = (s.next_tick_at, s.parsed()) {
        s.next_runs = cron.upcoming(first, NEXT_SHOWN);
    }
    Ok(s)
}

/// What one tick pass did to one schedule.
#[derive(Debug, Default)]
pub struct Ticked {
    /// Jobs submitted (new ones only).
    pub submitted: Vec<String>,
    /// What canceling a previous job did (overlap `cancel_previous`).
    pub canceled: Canceled,
}

impl Store {
    /// Stores a new schedule waiting for `next_tick`; 409 when the name is taken.
    pub async fn create_schedule(
        &self,
        req: &ScheduleCreate,
        next_tick: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<Schedule> {
        let inserted = sqlx::query("INSERT INTO schedules (name, cron, tz, job, template, overlap, catch_up, catch_up_max, next_tick_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
            .bind(&req.name)
            .bind(&req.cron)
            .bind(req.tz())
            .bind(req.job.as_ref().map(to_json))
            .bind(req.template.as_ref().map(to_json))
            .bind(req.overlap.as_str())
            .bind(req.catch_up.as_str())
            .bind(i64::from(req.catch_up_max()))
            .bind(next_tick.map(ms))
            .bind(ms(now))
            .execute(&self.write)
            .await;
        match inserted {
            Ok(_) => self.schedule(&req.name).await,
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Conflict(format!(
                    "a schedule named {:?} exists; remove it first (drover schedule rm {})",
                    req.name, req.name
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn schedule(&self, name: &str) -> Result<Schedule> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM schedules WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.read)
            .await?
            .ok_or_else(|| no_schedule(name))?;
        schedule_from_row(&row)
    }

    pub async fn schedules(&self) -> Result<Vec<Schedule>> {
        let rows = sqlx::query(&format!("SELECT {COLS} FROM schedules ORDER BY name"))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// Unpaused schedules whose next tick is at or before `now`.
    pub async fn due_schedules(&self, now: DateTime<Utc>) -> Result<Vec<Schedule>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM schedules WHERE paused = 0 AND next_tick_at <= $1 ORDER BY next_tick_at"
        ))
        .bind(ms(now))
        .fetch_all(&self.write)
        .await?;
        rows.iter().map(schedule_from_row).collect()
    }

    pub async fn delete_schedule(&self, name: &str) -> Result<()> {
        let gone = sqlx::query("DELETE FROM schedules WHERE name = $1")
            .bind(name)
            .execute(&self.write)
            .await?
            .rows_affected();
        match gone {
            0 => Err(no_schedule(name)),
            _ => Ok(()),
        }
    }

    /// Pauses a schedule: no tick submits until it is resumed.
    pub async fn pause_schedule(&self, name: &str) -> Result<Schedule> {
        self.set_paused(name, None).await
    }

    /// Resumes a schedule from its first tick after `now`: ticks of the pause are not
    /// caught up.
    pub async fn resume_schedule(&self, name: &str, now: DateTime<Utc>) -> Result<Schedule> {
        let cron = self.schedule(name).await?.parsed().map_err(|e| {
            StoreError::Corrupt(format!("schedule {name:?} no longer parses: {e:?}"))
        })?;
        self.set_paused(name, Some(cron.next_after(now))).await
    }

    /// Pauses (`None`) or resumes a schedule waiting for the given tick (a resumed one
    /// whose expression has no more ticks waits for none).
    async fn set_paused(
        &self,
        name: &str,
        resume_at: Option<Option<DateTime<Utc>>>,
    ) -> Result<Schedule> {
        let done =
            sqlx::query("UPDATE schedules SET paused = $1, next_tick_at = $2 WHERE name = $3")
                .bind(i64::from(resume_at.is_none()))
                .bind(resume_at.flatten().map(ms))
                .bind(name)
                .execute(&self.write)
                .await?
                .rows_affected();
        match done {
            0 => Err(no_schedule(name)),
            _ => self.schedule(name).await,
        }
    }

    /// One tick pass of a schedule seen waiting for `expected`: moves it on to `next`
    /// and submits `jobs` (one per due tick, each with its tick's idempotency key),
    /// applying its overlap policy against the job of the previous tick; or does nothing
    /// when another pass (another server, an earlier run) moved it on first. `error`
    /// says why a due tick submits nothing (its job could not be made).
    pub async fn tick(
        &self,
        s: &Schedule,
        expected: DateTime<Utc>,
        next: DateTime<Utc>,
        jobs: Vec<(DateTime<Utc>, ValidJob)>,
        error: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Option<Ticked>> {
        use drover_core::schedule::Overlap;
        let mut tx = self.write.begin().await?;
        let moved = sqlx::query("UPDATE schedules SET next_tick_at = $1 WHERE name = $2 AND next_tick_at = $3 AND paused = 0")
            .bind(ms(next))
            .bind(&s.name)
            .bind(ms(expected))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if moved == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let actor = format!("schedule:{}", s.name);
        let mut ticked = Ticked::default();
        let mut last = s.last_job_id.clone();
        let mut note = error;
        let mut last_tick = None;
        for (tick, mut job) in jobs {
            last_tick = Some(tick);
            let previous = match &last {
                Some(id) => self
                    .subjects(&mut tx, Of::Job(id), &[])
                    .await?
                    .pop()
                    .filter(|t| !t.state().is_terminal()),
                None => None,
            };
            if let Some(prev) = previous {
                match s.overlap {
                    Overlap::Skip => {
                        note = Some(format!(
                            "skipped the tick at {}: the job of the previous tick, {}, has not ended",
                            tick.to_rfc3339(),
                            prev.id()
                        ));
                        continue;
                    }
                    Overlap::Queue => job.after.push(Dependency {
                        job: prev.id().to_string(),
                        condition: DepCondition::Any,
                    }),
                    Overlap::CancelPrevious => {
                        let done = self
                            .cancel_subjects(
                                &mut tx,
                                &[prev],
                                &actor,
                                "canceled by its schedule: the next tick came",
                                now,
                            )
                            .await?;
                        ticked.canceled.agents.extend(done.agents);
                        ticked.canceled.released.extend(done.released);
                    }
                }
            }
            let (made, fresh) = self
                .enqueue_in(&mut tx, vec![job], &actor, now)
                .await?
                .pop()
                .expect("one job in, one out");
            if fresh {
                ticked.submitted.push(made.id.clone());
            }
            last = Some(made.id);
            if made.state != JobState::Canceled {
                note = None;
            }
        }
        sqlx::query("UPDATE schedules SET last_tick_at = COALESCE($1, last_tick_at), last_job_id = $2, last_error = $3 WHERE name = $4")
            .bind(last_tick.map(ms))
            .bind(last)
            .bind(note)
            .bind(&s.name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(ticked))
    }
}

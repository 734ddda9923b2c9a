//! The schedule ticker: on the server that does the singleton duties, once a second,
//! each due schedule's ticks are decided (`Cron::due`, by its catch-up policy), their
//! jobs made (from the spec or the template, filled in at each tick), and submitted by
//! `Store::tick`, whose compare-and-set makes a tick submit once even if two servers
//! or a restart see it due.

use std::time::Duration;

use chrono::{DateTime, Utc};
use drover_core::schedule::{tick_key, Schedule};
use drover_core::{SubmitRequest, ValidJob};

use crate::state::AppState;
use crate::store::StoreError;

/// How often the ticker looks for due schedules.
const EVERY: Duration = Duration::from_secs(1);

pub async fn run(state: AppState) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = state.shutdown.cancelled() => return,
        }
        if !state.leader.is_leader() {
            continue;
        }
        if let Err(e) = tick_due(&state, Utc::now()).await {
            tracing::error!(error = %e, "schedule ticker failed; will try again");
        }
    }
}

/// Submits the jobs of every schedule due at `now`; returns how many it submitted.
pub async fn tick_due(state: &AppState, now: DateTime<Utc>) -> Result<usize, StoreError> {
    let mut submitted = 0;
    for s in state.store.due_schedules(now).await? {
        let Some(expected) = s.next_tick_at else {
            continue;
        };
        let cron = match s.parsed() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(schedule = %s.name, problems = ?e, "a stored schedule no longer parses");
                continue;
            }
        };
        let (ticks, next) = cron.due(expected, now, s.catch_up, s.catch_up_max);
        let mut jobs = Vec::new();
        let mut error = None;
        for tick in ticks {
            match job_for(state, &s, tick, now).await? {
                Ok(job) => jobs.push((tick, job)),
                Err(e) => {
                    tracing::warn!(schedule = %s.name, error = %e, "a tick submitted nothing");
                    error = Some(format!(
                        "the tick at {} submitted nothing: {e}",
                        tick.to_rfc3339()
                    ));
                }
            }
        }
        let Some(done) = state
            .store
            .tick(&s, expected, next, jobs, error, now)
            .await?
        else {
            continue;
        };
        submitted += done.submitted.len();
        state.hub.queued(done.submitted.iter().map(String::as_str));
        crate::api::jobs::announce_cancel(state, &done.canceled);
    }
    Ok(submitted)
}

/// The job of one tick: the schedule's spec, or its template filled in now; with the
/// tick's idempotency key and `DROVER_SCHEDULE`, `DROVER_SCHEDULED_AT` in its env. A
/// job that cannot be made (the template is gone, a parameter no longer fits) is the
/// inner error, noted on the schedule; a store that fails is the outer one, and the
/// tick is tried again on the next pass.
async fn job_for(
    state: &AppState,
    s: &Schedule,
    tick: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Result<ValidJob, String>, StoreError> {
    let stamp = |req: &mut SubmitRequest| {
        req.idempotency_key = Some(tick_key(&s.name, tick));
        req.env.insert("DROVER_SCHEDULE".into(), s.name.clone());
        req.env
            .insert("DROVER_SCHEDULED_AT".into(), tick.to_rfc3339());
    };
    let made = match (&s.job, &s.template) {
        (Some(job), _) => {
            let mut req = job.clone();
            stamp(&mut req);
            req.validate(now)
        }
        (None, Some(t)) => match state.store.template(&t.name, t.version).await {
            Ok(template) => template.job(&t.params, now, stamp),
            Err(StoreError::NotFound(m)) => return Ok(Err(m)),
            Err(e) => return Err(e),
        },
        (None, None) => return Ok(Err("the schedule has no job".into())),
    };
    Ok(made.map_err(|errs| listed(&errs)))
}

fn listed(errs: &[drover_core::spec::FieldError]) -> String {
    errs.iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ")
}

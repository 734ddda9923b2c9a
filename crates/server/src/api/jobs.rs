//! Client endpoints for jobs: submit, batch submit, list, get, cancel, retry, events.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use drover_core::api::{
    BatchSubmit, BatchSubmitted, ErrorBody, Job, JobEvents, JobPage, ListJobsQuery,
    ProgressHistory, ProgressQuery,
};
use drover_core::{JobState, SubmitRequest};

use super::auth::{Client, READ, SUBMIT};
use super::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::store::StoreError;

/// Most jobs in one batch request.
pub const MAX_BATCH: usize = 10_000;

#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = SubmitRequest,
    responses(
        (status = 201, description = "Job created", body = Job),
        (status = 200, description = "A job with this idempotency key exists; it is returned", body = Job),
        (status = 400, description = "Malformed JSON or invalid spec (every problem listed)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("token" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    Client(caller): Client<SUBMIT>,
    ApiJson(req): ApiJson<SubmitRequest>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let now = Utc::now();
    let valid = req.validate(now).map_err(ApiError::InvalidSpec)?;
    enqueue_one(&state, &caller.actor, valid, now).await
}

/// Stores one valid job (its input files checked) and wakes the agents: 201 with the
/// job, or 200 with the earlier one of the same idempotency key.
pub(crate) async fn enqueue_one(
    state: &AppState,
    actor: &str,
    valid: drover_core::ValidJob,
    now: chrono::DateTime<Utc>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    super::files::check_uploads(state, &[(String::new(), &valid)]).await?;
    let (job, created) = state
        .store
        .enqueue(vec![valid], actor, now)
        .await?
        .pop()
        .expect("one job in, one out");
    if created {
        state.hub.queued([job.id.as_str()]);
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(job)))
}

#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs", request_body = BatchSubmit,
    responses(
        (status = 201, description = "All jobs stored in one transaction (existing ones for repeated idempotency keys)", body = BatchSubmitted),
        (status = 400, description = "Invalid specs; fields are prefixed with `jobs[i].`; nothing was stored", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)),
    security(("token" = [])))]
pub async fn submit_batch(
    State(state): State<AppState>,
    Client(caller): Client<SUBMIT>,
    ApiJson(req): ApiJson<BatchSubmit>,
) -> Result<(StatusCode, Json<BatchSubmitted>), ApiError> {
    if req.jobs.len() > MAX_BATCH {
        return Err(ApiError::TooLarge(format!(
            "a batch holds at most {MAX_BATCH} jobs; this one has {}",
            req.jobs.len()
        )));
    }
    if req.jobs.is_empty() {
        return Err(ApiError::BadRequest("the batch has no jobs".into()));
    }
    let now = Utc::now();
    let mut valid = Vec::with_capacity(req.jobs.len());
    let mut errors = Vec::new();
    for (i, job) in req.jobs.into_iter().enumerate() {
        match job.validate(now) {
            Ok(v) => valid.push(v),
            Err(errs) => errors.extend(errs.into_iter().map(|e| e.within(&format!("jobs[{i}].")))),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::InvalidSpec(errors));
    }
    let named: Vec<(String, &drover_core::ValidJob)> = valid
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("jobs[{i}]."), v))
        .collect();
    super::files::check_uploads(&state, &named).await?;
    let jobs = match state.store.enqueue(valid, &caller.actor, now).await {
        Err(StoreError::Invalid(errs)) => {
            return Err(ApiError::InvalidSpec(
                errs.into_iter()
                    .map(|(i, e)| e.within(&format!("jobs[{i}].")))
                    .collect(),
            ))
        }
        other => other?,
    };
    state.hub.queued(jobs.iter().map(|(j, _)| j.id.as_str()));
    Ok((
        StatusCode::CREATED,
        Json(BatchSubmitted {
            jobs: jobs.into_iter().map(|(j, _)| j).collect(),
        }),
    ))
}

#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListJobsQuery),
    responses((status = 200, body = JobPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiQuery(q): ApiQuery<ListJobsQuery>,
) -> Result<Json<JobPage>, ApiError> {
    let job_state = q
        .state
        .as_deref()
        .map(str::parse::<JobState>)
        .transpose()
        .map_err(ApiError::BadRequest)?;
    if let Some(limit) = q.limit {
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit must be between 1 and 1000, not {limit}"
            )));
        }
    }
    if q.label.as_deref().is_some_and(|l| !l.contains('=')) {
        return Err(ApiError::BadRequest(
            "label filter must look like key=value".into(),
        ));
    }
    let (jobs, next_cursor) = state
        .store
        .list_jobs(&q, job_state)
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict(m) => ApiError::BadRequest(m),
            other => other.into(),
        })?;
    Ok(Json(JobPage { jobs, next_cursor }))
}

#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("token" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(job_with_reason(&state, &id).await?))
}

/// A job with its attempts, and for a queued one its place in the queue and why it
/// waits.
pub async fn job_with_reason(state: &AppState, id: &str) -> Result<Job, ApiError> {
    let mut job = state.store.job(id).await?;
    if job.state == JobState::Waiting {
        let (n, first) = state.store.waiting_on(id).await?;
        job.wait_reason = Some(match (n, first) {
            (1, Some(first)) => format!("waits for job {first} to end"),
            (n, Some(first)) => format!("waits for {n} jobs to end, among them {first}"),
            _ => "its dependencies have ended; it is being queued".to_string(),
        });
    }
    if job.state == JobState::Queued {
        let now = Utc::now();
        let due = job.run_at <= now;
        if due {
            job.queue_position = Some(state.store.queue_position(id, now).await?);
        }
        // A concurrency or queue limit is the whole answer; only without one do the
        // agents matter.
        let held = match due {
            true => state.store.held_by_limit(&job).await?,
            false => None,
        };
        job.wait_reason = match held {
            Some(held) => Some(held),
            None => {
                let agents = state.store.list_agents(now, state.config.lease_ttl).await?;
                crate::waiting::wait_reason(&job, &agents, &state.providers.providers(), now)
            }
        };
    }
    Ok(job)
}

#[utoipa::path(get, path = "/v1/jobs/{id}/progress", tag = "jobs", params(("id" = String, Path, description = "Job id"), ProgressQuery),
    responses((status = 200, description = "The job's progress updates, oldest first (the last 100 of each attempt)", body = ProgressHistory),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn progress(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ProgressQuery>,
) -> Result<Json<ProgressHistory>, ApiError> {
    let after = q.after.as_deref().map(parse_progress_cursor).transpose()?;
    state.store.job(&id).await?;
    Ok(Json(ProgressHistory {
        updates: state.store.progress_history(&id, q.attempt, after).await?,
    }))
}

/// `ATTEMPT.SEQ`, the cursor of progress updates.
fn parse_progress_cursor(s: &str) -> Result<(u32, u64), ApiError> {
    s.split_once('.')
        .and_then(|(a, q)| Some((a.parse().ok()?, q.parse().ok()?)))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "after {s:?} is not ATTEMPT.SEQ (e.g. 1.14, from the last update seen)"
            ))
        })
}

#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Canceled (queued job) or cancel requested (leased/running job; see `cancel_requested`)", body = Job),
        (status = 404, body = ErrorBody), (status = 409, description = "The job has already ended", body = ErrorBody)),
    security(("token" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    Client(caller): Client<SUBMIT>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(cancel_job(&state, &id, &caller.actor).await?))
}

/// Cancels a job and wakes its agent and watchers (the API's and the dashboard's cancel).
pub(crate) async fn cancel_job(state: &AppState, id: &str, actor: &str) -> Result<Job, StoreError> {
    let (job, done) = state.store.cancel(id, actor, Utc::now()).await?;
    announce_cancel(state, &done);
    state.hub.job_changed(id);
    Ok(job)
}

/// Wakes what a cancel concerns: the agents asked to stop a job, and polls for the jobs
/// it queued (they waited for a canceled one with `:any` or `:failed`).
pub(crate) fn announce_cancel(state: &AppState, done: &crate::store::Canceled) {
    for agent in &done.agents {
        state.hub.wake_agent(agent);
    }
    if !done.released.is_empty() {
        state.hub.queued(done.released.iter().map(String::as_str));
    }
}

/// Queues an ended job again (the API's and the dashboard's retry).
pub(crate) async fn retry_job(state: &AppState, id: &str, actor: &str) -> Result<Job, StoreError> {
    let job = state.store.retry(id, actor, Utc::now()).await?;
    state.hub.queued([job.id.as_str()]);
    Ok(job)
}

/// A new job with the same spec (the API's and the dashboard's run again).
pub(crate) async fn rerun_job(state: &AppState, id: &str, actor: &str) -> Result<Job, StoreError> {
    let job = state.store.rerun(id, actor, Utc::now()).await?;
    state.hub.queued([job.id.as_str()]);
    Ok(job)
}

#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 204, description = "Deleted with its attempts, events, logs and artifacts"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The job has not ended", body = ErrorBody)),
    security(("token" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Client(_caller): Client<SUBMIT>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    crate::housekeeping::delete_job(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/jobs/{id}/rerun", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 201, description = "A new job with the same spec (secrets included; no idempotency key), in any state of the first", body = Job),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn rerun(
    State(state): State<AppState>,
    Client(caller): Client<SUBMIT>,
    ApiPath(id): ApiPath<String>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(rerun_job(&state, &id, &caller.actor).await?),
    ))
}

#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Queued again with a fresh attempt budget", body = Job),
        (status = 404, body = ErrorBody), (status = 409, description = "The job has not ended", body = ErrorBody)),
    security(("token" = [])))]
pub async fn retry(
    State(state): State<AppState>,
    Client(caller): Client<SUBMIT>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(retry_job(&state, &id, &caller.actor).await?))
}

#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses((status = 200, body = JobEvents), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn events(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobEvents>, ApiError> {
    Ok(Json(JobEvents {
        events: state.store.events(&id).await?,
    }))
}

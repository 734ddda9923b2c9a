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

/// Submit a job
///
/// Validates the spec (every problem is reported at once, in `details`), checks that
/// the uploads its inputs name exist and that its `after` dependencies resolve, then
/// stores the job (queued, or waiting for its dependencies) and wakes polling agents.
/// Idempotent by `idempotency_key`: a key seen before answers 200 with the job first
/// stored under it, and nothing new is created.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = SubmitRequest,
    responses(
        (status = 201, description = "Job created", body = Job),
        (status = 200, description = "A job with this idempotency key exists; it is returned unchanged", body = Job),
        (status = 400, description = "`bad_request`: malformed JSON body (not JSON, wrong types, missing fields, unknown fields) or no `Content-Type: application/json`; `invalid_spec`: the spec is invalid, an input names an upload that does not exist, or a dependency in `after` does not exist or makes a cycle (every problem listed in `details`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 413, description = "`too_large`: the body is over the server's request body limit", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
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

/// Submit many jobs at once
///
/// Validates every job (problems are reported together, fields prefixed with
/// `jobs[i].`) and stores all of them in one transaction, or none. Jobs may depend on
/// each other through `after`. A job whose `idempotency_key` was seen before (or
/// earlier in the same batch) is answered with the job first stored under it. At most
/// 10000 jobs per batch.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(post, path = "/v1/jobs/batch", tag = "jobs", request_body = BatchSubmit,
    responses(
        (status = 201, description = "All jobs stored in one transaction (the existing job for each repeated idempotency key), in the order sent", body = BatchSubmitted),
        (status = 400, description = "`bad_request`: malformed JSON body (not JSON, wrong types, missing fields) or no `Content-Type: application/json`, or the batch has no jobs; `invalid_spec`: invalid specs, missing uploads or unresolvable dependencies, fields prefixed with `jobs[i].` (every problem listed in `details`); nothing was stored", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 413, description = "`too_large`: more than 10000 jobs, or the body is over the server's request body limit", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
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

/// List jobs
///
/// Jobs newest first, filtered by state, queue, name, idempotency key, group and a
/// `key=value` label. Paginated: pass the `next_cursor` of a page as `cursor` to get
/// the next one; it is absent on the last page. The label filter applies within each
/// page, so a page may hold fewer jobs than `limit` while more follow.
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", params(ListJobsQuery),
    responses(
        (status = 200, description = "A page of jobs, newest first", body = JobPage),
        (status = 400, description = "`bad_request`: a query parameter does not parse, an unknown `state`, `limit` outside 1..=1000, a `label` without `=`, or a `cursor` this server did not return", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
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

/// Get a job
///
/// One job with its attempts. A waiting job says which dependencies it waits for; a
/// queued one its place in its queue and why it waits (a concurrency or queue limit, or
/// no agent that matches).
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job with its attempts", body = Job),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
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

/// List a job's progress updates
///
/// The progress updates its agents reported, oldest first: the last 100 of each
/// attempt. Filter by `attempt`; pass the `ATTEMPT.SEQ` of the last update seen as
/// `after` to get only newer ones.
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/jobs/{id}/progress", tag = "jobs", params(("id" = String, Path, description = "Job id"), ProgressQuery),
    responses(
        (status = 200, description = "The job's progress updates, oldest first (the last 100 of each attempt)", body = ProgressHistory),
        (status = 400, description = "`bad_request`: a path or query parameter does not parse, an unknown query parameter, or `after` is not `ATTEMPT.SEQ`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
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

/// Cancel a job
///
/// A waiting or queued job is canceled at once. A leased or running one gets
/// `cancel_requested`: its agent is told on its next poll, stops the process and
/// reports it canceled. Jobs that waited for this one with `:any` or `:failed` are
/// queued. Canceling a job whose cancel was already requested answers the same again.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Canceled (waiting or queued job) or cancel requested (leased or running job; see `cancel_requested`)", body = Job),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id", body = ErrorBody),
        (status = 409, description = "`conflict`: the job has already ended", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
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

/// Delete an ended job
///
/// Deletes the job with its attempts, events, logs, progress and artifacts (their bytes
/// too). Only a job that has ended can be deleted: cancel it first.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(delete, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 204, description = "Deleted with its attempts, events, logs and artifacts"),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id", body = ErrorBody),
        (status = 409, description = "`conflict`: the job has not ended (or was retried meanwhile)", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Client(_caller): Client<SUBMIT>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    crate::housekeeping::delete_job(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Run a job again as a new job
///
/// Creates a new queued job with the same spec as this one (secrets included, without
/// its idempotency key, which stays with the first), whatever state the first is in.
/// The first job is left as it is. Not idempotent: each call makes another job.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(post, path = "/v1/jobs/{id}/rerun", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 201, description = "A new job with the same spec (secrets included; no idempotency key), in any state of the first", body = Job),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
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

/// Retry an ended job
///
/// Puts an ended job (succeeded, failed, timed out or canceled) back in the queue under
/// the same id, with a fresh attempt budget; earlier attempts stay in its history. Jobs
/// that wait on it wait for its new end.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Queued again with a fresh attempt budget", body = Job),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id", body = ErrorBody),
        (status = 409, description = "`conflict`: the job has not ended", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn retry(
    State(state): State<AppState>,
    Client(caller): Client<SUBMIT>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(retry_job(&state, &id, &caller.actor).await?))
}

/// Get a job's timeline
///
/// Every state change of the job (submitted, leased, started, finished, retried,
/// canceled …) with who did it and why, oldest first.
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "jobs", params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job's events, oldest first", body = JobEvents),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
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

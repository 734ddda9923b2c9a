//! Agent endpoints: register, the long-poll, per-attempt writes, and the agent list.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use drover_core::api::{
    AgentList, Control, ErrorBody, FinishBatch, FinishBatchResult, FinishItem, FinishItemResult,
    FinishRequest, Job, LogBatch, LogRecord, PollRequest, PollResponse, ProgressUpdate,
    ProviderList, RegisterRequest, RegisterResponse,
};
use drover_core::Outcome;
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::{hash_token, new_token, AgentCaller, Client, JOIN, READ};
use super::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::store::{NewAgent, StoreError};
use crate::Scope;
use drover_core::api::MAX_LOG_RECORDS;

/// Longest a poll is held open.
const MAX_POLL_WAIT: Duration = Duration::from_secs(60);
/// Longest text of one log record (the agent splits lines at 64 KiB).
pub const MAX_RECORD_BYTES: usize = 64 * 1024 + 1024;

/// Register an agent
///
/// Registers an agent and returns its id and the session token it uses on every agent
/// route. A name an online agent already has gets a `-N` suffix. With `resume` (the
/// identity of an earlier registration), a server that still knows it answers 200 and
/// the agent keeps its id and token; otherwise it is registered anew (201). A bootstrap
/// token registers one agent, once, with the token's labels in place of the ones asked
/// for. Not idempotent: the same request again without `resume` registers a second
/// agent.
/// Token: a client token with scope `join`, `bootstrap` (once) or `admin`.
#[utoipa::path(post, path = "/v1/agents/register", tag = "agents", request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered; the session token is shown only here", body = RegisterResponse),
        (status = 200, description = "Registered again under the identity in `resume`", body = RegisterResponse),
        (status = 400, description = "`bad_request`: malformed JSON body (not JSON, wrong types, missing fields) or no `Content-Type: application/json`, `slots` outside 1..=4096, or an empty `name`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, an unknown, revoked or expired token, or a bootstrap token already used", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope is not `join`, `bootstrap` or `admin`, or it is an agent's session token", body = ErrorBody),
        (status = 413, description = "`too_large`: the body is over the server's request body limit", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn register(
    State(state): State<AppState>,
    Client(caller): Client<JOIN>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisterResponse>), ApiError> {
    if req.slots == 0 || req.slots > 4096 {
        return Err(ApiError::BadRequest(format!(
            "slots must be between 1 and 4096, not {}",
            req.slots
        )));
    }
    if req.name.trim().is_empty() {
        return Err(ApiError::BadRequest("agent name must not be empty".into()));
    }
    let queues = if req.queues.is_empty() {
        vec!["default".to_string()]
    } else {
        req.queues
    };
    let agent = NewAgent {
        name: req.name,
        labels: req.labels,
        queues,
        slots: req.slots,
        host: req.host,
    };
    let ttl_ms = state.config.lease_ttl.as_millis() as u64;
    if let Some(id) = req.resume {
        let known = state
            .store
            .resume_agent(
                &id.agent_id,
                &hash_token(&id.token),
                &bootstrapped(&caller, agent.clone()),
                &caller.actor,
                Utc::now(),
            )
            .await?;
        if known {
            tracing::info!(agent = %id.agent_id, name = %agent.name, "agent registered again");
            return Ok((
                StatusCode::OK,
                Json(RegisterResponse {
                    agent_id: id.agent_id,
                    token: id.token,
                    lease_ttl_ms: ttl_ms,
                    name: agent.name,
                }),
            ));
        }
    }
    if caller.scope == Scope::Bootstrap
        && !state
            .store
            .consume_bootstrap(&caller.token.id, Utc::now())
            .await?
    {
        return Err(ApiError::Unauthorized(
            "this bootstrap token was already used; bootstrap tokens work once".into(),
        ));
    }
    let agent = bootstrapped(&caller, agent);
    let token = new_token("dra_");
    let (agent_id, name) = state
        .store
        .register_agent(
            &agent,
            &hash_token(&token),
            &caller.actor,
            Utc::now(),
            state.config.lease_ttl,
        )
        .await?;
    if caller.scope == Scope::Bootstrap {
        // An agent a provider started: its start is running now.
        state
            .store
            .start_registered(&caller.token.id, &agent_id)
            .await?;
    }
    tracing::info!(agent = %agent_id, name = %name, slots = agent.slots, "agent registered");
    Ok((
        StatusCode::CREATED,
        Json(RegisterResponse {
            agent_id,
            token,
            lease_ttl_ms: ttl_ms,
            name,
        }),
    ))
}

/// List agent providers
///
/// Each provider of agents on demand, the agents it runs and how its starts went, as of
/// the provisioner's last round (at most a second old).
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/providers", tag = "agents",
    responses(
        (status = 200, description = "Each provider of agents on demand, the agents it runs and how its starts went (as of the provisioner's last round, at most a second old)", body = ProviderList),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn providers(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
) -> Json<ProviderList> {
    Json(ProviderList {
        providers: state.providers.providers(),
    })
}

/// Leave (an agent's clean exit)
///
/// The calling agent shows offline at once, and the attempts it still holds are lost
/// now rather than when their leases expire: retried where attempts remain.
/// Token: the agent's session token from register.
#[utoipa::path(post, path = "/v1/agents/leave", tag = "agents",
    responses(
        (status = 204, description = "The agent shows offline at once; attempts it still held are lost and retried where attempts remain"),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown session token (register again)", body = ErrorBody),
        (status = 403, description = "`forbidden`: a client token, not an agent session token", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn leave(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
) -> Result<StatusCode, ApiError> {
    state.store.agent_left(&agent.id, Utc::now()).await?;
    tracing::info!(agent = %agent.id, name = %agent.name, "agent left");
    state.hub.work_available();
    Ok(StatusCode::NO_CONTENT)
}

/// Labels that describe the host an agent runs on rather than grant it work.
const HOST_LABELS: [&str; 4] = ["os", "arch", "docker", "docker_version"];

/// An agent made from a bootstrap token gets exactly the token's labels (plus the host
/// facts in [`HOST_LABELS`]), whatever else it asked for; others keep theirs.
fn bootstrapped(caller: &super::auth::Caller, mut agent: NewAgent) -> NewAgent {
    if caller.scope == Scope::Bootstrap {
        agent
            .labels
            .retain(|k, _| HOST_LABELS.contains(&k.as_str()));
        agent.labels.extend(caller.token.labels.clone());
    }
    agent
}

/// Poll for work (long-poll)
///
/// The agent's heartbeat and work request. Renews the leases of the attempts listed in
/// `running`, answers `kill` for those that are no longer current and `cancel` for
/// those a user canceled, and gives back leases the agent does not know about. Unless
/// `draining`, leases due jobs that match the agent, up to its free slots. With nothing
/// to say, the request is held open up to `wait_ms` (at most 60 s; with attempts in
/// `running`, at most half the lease TTL, as a held poll renews nothing) and answers as soon
/// as work or a control message arrives; empty when the wait ran out. A stopping server
/// answers `reconnect`. A poll of an agent that is removed while it is held ends with
/// 401 and no leases.
/// Token: the agent's session token from register.
#[utoipa::path(post, path = "/v1/agents/poll", tag = "agents", request_body = PollRequest,
    responses(
        (status = 200, description = "Leases and control messages; empty when the wait ran out", body = PollResponse),
        (status = 400, description = "`bad_request`: malformed JSON body (not JSON, wrong types, missing fields, unknown fields) or no `Content-Type: application/json`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown session token (register again); also a held poll whose agent was removed meanwhile", body = ErrorBody),
        (status = 403, description = "`forbidden`: a client token, not an agent session token", body = ErrorBody),
        (status = 413, description = "`too_large`: the body is over the server's request body limit", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn poll(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    ApiJson(req): ApiJson<PollRequest>,
) -> Result<Json<PollResponse>, ApiError> {
    let received = Utc::now();
    let ttl = state.config.lease_ttl;
    // A held poll renews nothing: one that lists running attempts ends within half a
    // lease TTL, so an agent that polls again at once keeps its leases whatever
    // `wait_ms` it asked for.
    let mut hold = Duration::from_millis(req.wait_ms).min(MAX_POLL_WAIT);
    if !req.running.is_empty() {
        hold = hold.min(ttl / 2);
    }
    let deadline = tokio::time::Instant::now() + hold;
    let wake = state.hub.agent(&agent.id);
    let mut first = true;
    loop {
        // Register for wake-ups before looking, so nothing between look and wait is missed.
        let work = state.hub.work().notified();
        let mine = wake.notified();
        tokio::pin!(work, mine);
        work.as_mut().enable();
        mine.as_mut().enable();

        let now = Utc::now();
        let mut resp = PollResponse::default();
        // A stopping server still renews, but leases nothing and answers `reconnect`.
        let stopping = state.shutdown.is_cancelled();
        if stopping {
            resp.controls.push(Control::Reconnect);
        }
        // Renew and reconcile once per poll, in the claim's transaction; later rounds
        // only look for new cancels and work. An agent removed meanwhile gets no
        // leases: its poll ends with the 401 that its next request would get.
        let lease = !req.draining && !stopping;
        let cancels = if first {
            first = false;
            let (outcome, leases) = state
                .store
                .poll(&agent, &req, now, received, ttl, lease)
                .await?;
            resp.leases = leases;
            resp.controls
                .extend(outcome.kill.into_iter().map(|r| Control::Kill {
                    job_id: r.job_id,
                    attempt: r.attempt,
                }));
            outcome.cancel
        } else {
            let cancels = state.store.pending_cancels(&agent.id, &req.running).await?;
            if lease {
                resp.leases = state.store.claim(&agent, now, ttl).await?;
            } else if !stopping {
                state.store.ensure_agent(&agent.id).await?;
            }
            cancels
        };
        resp.controls
            .extend(cancels.into_iter().map(|r| Control::Cancel {
                job_id: r.job_id,
                attempt: r.attempt,
            }));
        for lease in &resp.leases {
            state.hub.job_changed(&lease.job_id);
        }
        if !resp.leases.is_empty()
            || !resp.controls.is_empty()
            || tokio::time::Instant::now() >= deadline
        {
            return Ok(Json(resp));
        }
        let mut until = deadline;
        if let Some(due) = state.store.next_due(now).await? {
            let wait = (due - now).to_std().unwrap_or_default() + Duration::from_millis(1);
            until = until.min(tokio::time::Instant::now() + wait);
        }
        let _waiting = GaugeGuard::inc(&state.metrics.polls_waiting);
        tokio::select! {
            _ = &mut work => {}
            _ = &mut mine => {}
            _ = tokio::time::sleep_until(until) => {}
            _ = state.shutdown.cancelled() => {}
        }
    }
}

/// Mark an attempt started
///
/// The agent started the attempt's process: a leased job becomes running. Resending a
/// start is harmless. Fenced: only the agent holding the attempt, and only while it is
/// the job's current one.
/// Token: the agent's session token from register.
#[utoipa::path(post, path = "/v1/jobs/{id}/attempts/{attempt}/start", tag = "agents",
    params(("id" = String, Path, description = "Job id"), ("attempt" = u32, Path, description = "Attempt number")),
    responses(
        (status = 200, description = "The job, now running", body = Job),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown session token (register again)", body = ErrorBody),
        (status = 403, description = "`forbidden`: a client token, not an agent session token; or the attempt is held by another agent", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id", body = ErrorBody),
        (status = 409, description = "`stale_attempt`: the attempt is no longer the job's current one (lost, canceled, or retried meanwhile); kill it", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn start(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    ApiPath((id, attempt)): ApiPath<(String, u32)>,
) -> Result<Json<Job>, ApiError> {
    mark_started(&state, &agent.id, &id, attempt).await?;
    Ok(Json(state.store.job(&id).await?))
}

/// Records the start (fenced) and tells those who watch the job.
async fn mark_started(
    state: &AppState,
    agent_id: &str,
    id: &str,
    attempt: u32,
) -> Result<(), ApiError> {
    let waited = state
        .store
        .mark_started(agent_id, id, attempt, Utc::now())
        .await?;
    if let Some(waited) = waited {
        state.metrics.submit_to_start.observe(waited.as_secs_f64());
    }
    state.hub.job_changed(id);
    Ok(())
}

/// Query of `POST …/logs`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogWrite {
    /// Also mark the attempt started (as `POST …/start` does): agents send their first
    /// batch this way and save a round trip per job.
    #[serde(default)]
    pub start: bool,
}

/// Append log records of an attempt
///
/// Stores a batch of numbered records (`seq` from 1); records already stored (same
/// `seq`) are left as they are, so a resent batch is harmless. At most 10000 records
/// per batch, each at most 65 KiB. With `start=true` the attempt is also marked
/// started, as `POST …/start` does, once the batch passed its checks (a refused batch
/// records no start). Fenced: only the agent holding the attempt, and only while it is
/// the job's current one.
/// Token: the agent's session token from register.
#[utoipa::path(post, path = "/v1/jobs/{id}/attempts/{attempt}/logs", tag = "agents", request_body = LogBatch,
    params(("id" = String, Path, description = "Job id"), ("attempt" = u32, Path, description = "Attempt number"), LogWrite),
    responses(
        (status = 204, description = "Stored (records already stored are ignored)"),
        (status = 400, description = "`bad_request`: a path or query parameter does not parse, malformed JSON body (not JSON, wrong types, missing fields) or no `Content-Type: application/json`, or a record with `seq` 0", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown session token (register again)", body = ErrorBody),
        (status = 403, description = "`forbidden`: a client token, not an agent session token; or the attempt is held by another agent", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id", body = ErrorBody),
        (status = 409, description = "`stale_attempt`: the attempt is no longer the job's current one (lost, canceled, or retried meanwhile); kill it", body = ErrorBody),
        (status = 413, description = "`too_large`: more than 10000 records, a record longer than 65 KiB, or the body is over the server's request body limit", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn logs(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    ApiPath((id, attempt)): ApiPath<(String, u32)>,
    ApiQuery(query): ApiQuery<LogWrite>,
    ApiJson(batch): ApiJson<LogBatch>,
) -> Result<StatusCode, ApiError> {
    // Every check of the batch comes before the start is recorded: a refused batch
    // changes nothing.
    check_log_records(&batch.records)?;
    // The start's transaction fences the attempt as the check would.
    if query.start {
        mark_started(&state, &agent.id, &id, attempt).await?;
    } else {
        state.store.check_attempt(&agent.id, &id, attempt).await?;
    }
    state
        .store
        .append_logs(&id, attempt, &batch.records)
        .await?;
    state.hub.job_changed(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// The limits on a batch of log records, wherever it comes.
fn check_log_records(records: &[LogRecord]) -> Result<(), ApiError> {
    if records.len() > MAX_LOG_RECORDS {
        return Err(ApiError::TooLarge(format!(
            "a log batch holds at most {MAX_LOG_RECORDS} records; send smaller batches"
        )));
    }
    if let Some(r) = records.iter().find(|r| r.text.len() > MAX_RECORD_BYTES) {
        return Err(ApiError::TooLarge(format!(
            "log record {} is longer than {MAX_RECORD_BYTES} bytes; split long lines",
            r.seq
        )));
    }
    if records.iter().any(|r| r.seq == 0) {
        return Err(ApiError::BadRequest(
            "log record seq numbers start at 1".into(),
        ));
    }
    Ok(())
}

/// Report an attempt's progress
///
/// Sets the job's progress (a percentage from 0 to 100 and a message) and adds it to
/// the attempt's history, of which the last 100 updates are kept. Idempotent: an update
/// equal to the attempt's latest one (same percent and message) is a resend and is not
/// stored again. Fenced: only the agent holding the attempt, and only while it is the
/// job's current one.
/// Token: the agent's session token from register.
#[utoipa::path(post, path = "/v1/jobs/{id}/attempts/{attempt}/progress", tag = "agents", operation_id = "report_progress", request_body = ProgressUpdate,
    params(("id" = String, Path, description = "Job id"), ("attempt" = u32, Path, description = "Attempt number")),
    responses(
        (status = 204, description = "Stored; an update equal to the attempt's latest one is answered the same way and not stored twice"),
        (status = 400, description = "`bad_request`: a path parameter does not parse, malformed JSON body (not JSON, wrong types, missing fields, unknown fields) or no `Content-Type: application/json`, or `percent` outside 0..=100", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown session token (register again)", body = ErrorBody),
        (status = 403, description = "`forbidden`: a client token, not an agent session token; or the attempt is held by another agent", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id", body = ErrorBody),
        (status = 409, description = "`stale_attempt`: the attempt is no longer the job's current one (lost, canceled, or retried meanwhile); kill it", body = ErrorBody),
        (status = 413, description = "`too_large`: the body is over the server's request body limit", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn progress(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    ApiPath((id, attempt)): ApiPath<(String, u32)>,
    ApiJson(p): ApiJson<ProgressUpdate>,
) -> Result<StatusCode, ApiError> {
    if !(0.0..=100.0).contains(&p.percent) {
        return Err(ApiError::BadRequest(
            "percent must be a number between 0 and 100".into(),
        ));
    }
    state
        .store
        .progress(&agent.id, &id, attempt, p.percent, &p.message, Utc::now())
        .await?;
    state.hub.job_changed(&id);
    Ok(StatusCode::NO_CONTENT)
}

/// Finish an attempt
///
/// Ends the attempt with the agent's report: a failed or timed-out job is queued again
/// after its backoff while attempts remain, else it takes its final state; jobs waiting
/// on it are released. Idempotent: the same report sent again (a retry whose answer was
/// lost) gets the same answer; a different one is refused. Fenced: only the agent that
/// held the attempt.
/// Token: the agent's session token from register.
#[utoipa::path(post, path = "/v1/jobs/{id}/attempts/{attempt}/finish", tag = "agents", request_body = FinishRequest,
    params(("id" = String, Path, description = "Job id"), ("attempt" = u32, Path, description = "Attempt number")),
    responses(
        (status = 200, description = "Stored; the same report sent again is answered the same way", body = Job),
        (status = 400, description = "`bad_request`: a path parameter does not parse, malformed JSON body (not JSON, wrong types, missing fields) or no `Content-Type: application/json`, or the outcome disagrees with the exit code (succeeded with a non-zero code, or failed with code 0 and no `error`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown session token (register again)", body = ErrorBody),
        (status = 403, description = "`forbidden`: a client token, not an agent session token; or the attempt is held by another agent", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id", body = ErrorBody),
        (status = 409, description = "`stale_attempt`: the attempt is not current and did not end with this report; kill it. `already_finished`: it ended with a different report", body = ErrorBody),
        (status = 413, description = "`too_large`: the body is over the server's request body limit", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn finish(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    ApiPath((id, attempt)): ApiPath<(String, u32)>,
    ApiJson(req): ApiJson<FinishRequest>,
) -> Result<Json<Job>, ApiError> {
    req.check().map_err(ApiError::BadRequest)?;
    let jitter = rand::random::<f64>();
    let w = state
        .store
        .finish(&agent.id, &id, attempt, &req, Utc::now(), jitter)
        .await?;
    if let Some(ran) = w.elapsed {
        state
            .metrics
            .job_duration
            .with_label_values(&[req.outcome.as_str()])
            .observe(ran.as_secs_f64());
    }
    let limited = state
        .store
        .is_limited(w.job.concurrency_key.as_deref(), &w.job.queue);
    if w.job.state == drover_core::JobState::Queued || limited {
        state.hub.work_available();
    }
    if !w.released.is_empty() {
        state.hub.queued(w.released.iter().map(String::as_str));
    }
    if req.outcome != Outcome::Succeeded {
        tracing::info!(job = %id, attempt, outcome = req.outcome.as_str(), error = req.error.as_deref().unwrap_or(""), "attempt ended");
    }
    state.hub.wake_agent(&agent.id);
    state.hub.job_changed(&id);
    state.hub.attempt_ended();
    Ok(Json(w.job))
}

/// Why a released job waits in the queue again.
pub const RELEASED: &str =
    "agent_shutdown: the agent was stopped before the job ended; the job runs again";

/// Release an attempt (the agent is stopping)
///
/// The agent stopped the attempt because the agent itself is shutting down: the job
/// goes back to the queue, and the interrupted attempt does not count against its
/// attempts. A job whose cancel was requested meanwhile is canceled instead.
/// Idempotent: a release of an attempt this agent already released (a retry whose
/// answer was lost) changes nothing and gets the job as it is now. Fenced: only the
/// agent holding the attempt, and only while it is the job's current one.
/// Token: the agent's session token from register.
#[utoipa::path(post, path = "/v1/jobs/{id}/attempts/{attempt}/release", tag = "agents",
    params(("id" = String, Path, description = "Job id"), ("attempt" = u32, Path, description = "Attempt number")),
    responses(
        (status = 200, description = "The job is queued again (canceled if a cancel was requested); the attempt does not count against its attempts. The same release again gets the job as it is now", body = Job),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown session token (register again)", body = ErrorBody),
        (status = 403, description = "`forbidden`: a client token, not an agent session token; or the attempt is held by another agent", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id", body = ErrorBody),
        (status = 409, description = "`stale_attempt`: the attempt is no longer the job's current one (lost, canceled, or retried meanwhile) and was not released by this agent; kill it", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn release(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    ApiPath((id, attempt)): ApiPath<(String, u32)>,
) -> Result<Json<Job>, ApiError> {
    let w = state
        .store
        .release(&agent.id, &id, attempt, RELEASED, Utc::now())
        .await?;
    tracing::info!(job = %id, attempt, "attempt released by a stopping agent");
    state.hub.work_available();
    state.hub.wake_agent(&agent.id);
    state.hub.job_changed(&id);
    Ok(Json(w.job))
}

/// List agents
///
/// Every known agent with its labels, queues, slots, host, last heartbeat and status
/// (online, draining or offline).
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    responses(
        (status = 200, description = "Every known agent", body = AgentList),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
) -> Result<Json<AgentList>, ApiError> {
    Ok(Json(AgentList {
        agents: state
            .store
            .list_agents(Utc::now(), state.config.lease_ttl)
            .await?,
    }))
}

/// Keeps a gauge raised while alive, so a dropped (disconnected) poll is not counted.
struct GaugeGuard<'a>(&'a prometheus::IntGauge);

impl<'a> GaugeGuard<'a> {
    fn inc(g: &'a prometheus::IntGauge) -> Self {
        g.inc();
        GaugeGuard(g)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Most attempts in one finish batch.
pub const MAX_FINISH_BATCH: usize = 10_000;

/// Finish many attempts at once
///
/// Ends several attempts of the calling agent in one transaction, each as
/// `POST …/finish` would, in order. Items are answered one by one: each result's
/// `status` is `ok` (with the job's new state) or why that item was refused
/// (`stale_attempt`, `forbidden`, `not_found`, `already_finished`, `conflict`); a
/// refused item does not fail the others. At most 10000 items. An item may also
/// report the attempt's start (`started_ms_ago`) and bring its last log records
/// (`logs`, with the limits of `POST …/logs`), stored before the attempt ends: a job
/// that ends within moments of starting needs no other request.
/// Token: the agent's session token from register.
#[utoipa::path(post, path = "/v1/agents/finish", tag = "agents", request_body = FinishBatch,
    responses(
        (status = 200, description = "One result per item, in order; refused items say why", body = FinishBatchResult),
        (status = 400, description = "`bad_request`: malformed JSON body (not JSON, wrong types, missing fields) or no `Content-Type: application/json`, an item's outcome disagrees with its exit code, or an item's log record has `seq` 0 (the whole batch is refused)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown session token (register again)", body = ErrorBody),
        (status = 403, description = "`forbidden`: a client token, not an agent session token", body = ErrorBody),
        (status = 413, description = "`too_large`: more than 10000 items, an item with more than 10000 log records or one longer than 65 KiB, or the body is over the server's request body limit", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn finish_batch(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    ApiJson(batch): ApiJson<FinishBatch>,
) -> Result<Json<FinishBatchResult>, ApiError> {
    if batch.finishes.len() > MAX_FINISH_BATCH {
        return Err(ApiError::TooLarge(format!(
            "a finish batch holds at most {MAX_FINISH_BATCH} items"
        )));
    }
    for (i, f) in batch.finishes.iter().enumerate() {
        f.finish
            .check()
            .map_err(|e| ApiError::BadRequest(format!("finishes[{i}]: {e}")))?;
        check_log_records(&f.logs).map_err(|e| match e {
            ApiError::TooLarge(m) => ApiError::TooLarge(format!("finishes[{i}]: {m}")),
            ApiError::BadRequest(m) => ApiError::BadRequest(format!("finishes[{i}]: {m}")),
            other => other,
        })?;
    }
    // The records an item brings are stored before its attempt ends, as separate log
    // batches would have been; an item its fence refuses stores none (and the finish
    // refuses it the same way).
    let with_logs: Vec<&FinishItem> = batch
        .finishes
        .iter()
        .filter(|f| !f.logs.is_empty())
        .collect();
    if !with_logs.is_empty() {
        let keys: Vec<(&str, u32)> = with_logs
            .iter()
            .map(|f| (f.job_id.as_str(), f.attempt))
            .collect();
        let current = state.store.check_attempts(&agent.id, &keys).await?;
        let logs: Vec<(&str, u32, &[LogRecord])> = with_logs
            .iter()
            .zip(current)
            .filter(|(_, current)| *current)
            .map(|(f, _)| (f.job_id.as_str(), f.attempt, f.logs.as_slice()))
            .collect();
        state.store.append_logs_many(&logs).await?;
        for (job_id, _, _) in &logs {
            state.hub.job_changed(job_id);
        }
    }
    let now = Utc::now();
    let starts: Vec<Option<chrono::DateTime<Utc>>> = batch
        .finishes
        .iter()
        .map(|f| {
            // However long ago it says, the store keeps the start after the job's run_at.
            let ago = f.started_ms_ago?.min(i64::MAX as u64) as i64;
            let ago = chrono::TimeDelta::try_milliseconds(ago).unwrap_or(chrono::TimeDelta::MAX);
            Some(
                now.checked_sub_signed(ago)
                    .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC),
            )
        })
        .collect();
    let items: Vec<(String, u32, FinishRequest)> = batch
        .finishes
        .into_iter()
        .map(|f| (f.job_id, f.attempt, f.finish))
        .collect();
    let jitters: Vec<f64> = items.iter().map(|_| rand::random()).collect();
    let done = state
        .store
        .finish_many(&agent.id, &items, now, &jitters, &starts)
        .await?;
    for waited in &done.waited {
        state.metrics.submit_to_start.observe(waited.as_secs_f64());
    }
    if !done.released.is_empty() {
        state.hub.queued(done.released.iter().map(String::as_str));
    }
    // A job queued again, or one whose end frees a place under a limit: polls may
    // find work.
    let mut work = false;
    let results = items
        .iter()
        .zip(done.results)
        .map(|((job_id, attempt, req), r)| {
            let (status, st) = match r {
                Ok((next, ran, limited)) => {
                    if let Some(ran) = ran {
                        state
                            .metrics
                            .job_duration
                            .with_label_values(&[req.outcome.as_str()])
                            .observe(ran.as_secs_f64());
                    }
                    work |= next == drover_core::JobState::Queued || limited;
                    state.hub.job_changed(job_id);
                    ("ok", Some(next))
                }
                Err(StoreError::StaleAttempt { .. }) => ("stale_attempt", None),
                Err(StoreError::NotYourAttempt { .. }) => ("forbidden", None),
                Err(StoreError::NotFound(_)) => ("not_found", None),
                Err(StoreError::AlreadyFinished { .. }) => ("already_finished", None),
                Err(_) => ("conflict", None),
            };
            FinishItemResult {
                job_id: job_id.clone(),
                attempt: *attempt,
                status: status.into(),
                state: st,
            }
        })
        .collect();
    if work {
        state.hub.work_available();
    }
    state.hub.wake_agent(&agent.id);
    Ok(Json(FinishBatchResult { results }))
}

//! Live views over Server-Sent Events: changes to the jobs a list shows, and one job's
//! state, timeline and progress as they happen. Both re-read the store after each
//! wake-up (see `hub`), so what they send is always what is stored.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use drover_core::api::{ErrorBody, Job, WatchJobsQuery};
use futures::{Stream as FutStream, StreamExt};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::Sender;

use super::auth::{Client, READ};
use super::logs::async_stream;
use super::{ApiError, ApiPath, ApiQuery};
use crate::state::AppState;

/// Changes that come this close together are sent together.
const COALESCE: Duration = Duration::from_millis(200);
/// Jobs read per query while sending changes.
const READ_CHUNK: usize = 200;
/// A list is told to reload this often even without changes, so a change no wake-up
/// announced (a lease the reaper expired) shows within this long.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// An event stream kept alive every 15 s. It opens with a comment: the answer's headers
/// go out with the first bytes of its body, and a client waiting for them would
/// otherwise learn it is connected only when the first event comes, which may be never.
pub(super) fn sse(
    stream: impl FutStream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    let opening = futures::stream::once(async { Ok(Event::default().comment("connected")) });
    Sse::new(opening.chain(stream))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

fn json_event(kind: &str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(kind)
        .json_data(data)
        .expect("API types serialize")
}

/// Watch jobs change (Server-Sent Events)
///
/// A live feed for a job list: a `job` event (data: the Job, without attempts) for each
/// job matching the filters when it is submitted or changes, changes 200 ms apart sent
/// together; a `reload` event (empty data) when changes may have been missed (too many
/// at once, a store error, or every 10 s without news), after which the client reads
/// the list again. A comment line keeps the connection alive every 15 s. The stream
/// never ends on its own; it closes when the server shuts down.
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/jobs/stream", tag = "jobs", operation_id = "stream_jobs", params(WatchJobsQuery),
    responses(
        (status = 200, description = "Server-Sent Events: a `job` event (data: the Job, without attempts) for each job that matches the filters when it is submitted or changes (changes 200 ms apart are sent together), and `reload` when changes may have been missed (too many at once, or every 10 s): read the list again", content_type = "text/event-stream"),
        (status = 400, description = "`bad_request`: a query parameter does not parse, or an unknown one", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn jobs(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiQuery(q): ApiQuery<WatchJobsQuery>,
) -> Response {
    sse(async_stream(move |tx| watch_jobs(state, q, tx)))
}

async fn watch_jobs(state: AppState, q: WatchJobsQuery, tx: Sender<Event>) {
    let mut rx = state.hub.subscribe_jobs();
    loop {
        let mut changed: HashSet<Arc<str>> = HashSet::new();
        let mut lagged = false;
        let mut note = |r: Result<Arc<str>, RecvError>| match r {
            Ok(id) => {
                changed.insert(id);
                true
            }
            Err(RecvError::Lagged(_)) => {
                lagged = true;
                true
            }
            Err(RecvError::Closed) => false,
        };
        let mut quiet = false;
        tokio::select! {
            r = rx.recv() => if !note(r) { return },
            _ = tokio::time::sleep(RELOAD_EVERY) => quiet = true,
            _ = tx.closed() => return,
            _ = state.shutdown.cancelled() => return,
        }
        let until = tokio::time::Instant::now() + COALESCE;
        loop {
            tokio::select! {
                r = rx.recv() => if !note(r) { return },
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        if lagged || quiet {
            if tx
                .send(Event::default().event("reload").data(""))
                .await
                .is_err()
            {
                return;
            }
            continue;
        }
        let ids: Vec<String> = changed.iter().map(|id| id.to_string()).collect();
        for chunk in ids.chunks(READ_CHUNK) {
            let jobs = match state.store.jobs_by_ids(chunk).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = %e, "job watcher cannot read jobs; the list will reload");
                    let _ = tx.send(Event::default().event("reload").data("")).await;
                    break;
                }
            };
            for job in jobs.iter().filter(|j| q.matches(j)) {
                if tx.send(json_event("job", job)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Watch one job (Server-Sent Events)
///
/// A live view of one job: its state, timeline and progress as they happen. The stream
/// re-reads the store after each change, so what it sends is what is stored, and ends
/// with `end` once the job has ended and everything about it was sent. A reconnecting
/// client gets everything again from the start.
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/jobs/{id}/events/stream", tag = "jobs", operation_id = "stream_job_events", params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "Server-Sent Events about one job: `job` (data: the Job, with its attempts and, while queued, why it waits) first and whenever it changes; `event` (data: a JobEvent) for each timeline entry, oldest first; `progress` (data: a ProgressEntry) for each progress update; `end` (empty data) once the job has ended and all of that was sent. A reconnecting client gets everything again from the start", content_type = "text/event-stream"),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn job(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    state.store.job(&id).await?;
    Ok(sse(async_stream(move |tx| watch_job(state, id, tx))))
}

async fn watch_job(state: AppState, id: String, tx: Sender<Event>) {
    let mut changes = state.hub.subscribe_jobs();
    let mut last_job: Option<serde_json::Value> = None;
    let mut events_sent = 0;
    let mut progress_after: Option<(u32, u64)> = None;
    loop {
        match send_job_changes(
            &state,
            &id,
            &tx,
            &mut last_job,
            &mut events_sent,
            &mut progress_after,
        )
        .await
        {
            Ok(true) => {
                let _ = tx.send(Event::default().event("end").data("")).await;
                return;
            }
            Ok(false) => {}
            Err(Watch::Gone) => return,
            Err(Watch::Store(e)) => {
                tracing::warn!(job = %id, error = %e, "job watcher cannot read the job; trying again")
            }
        }
        // At most one read per COALESCE: a chatty job's log batches all wake this.
        tokio::time::sleep(COALESCE).await;
        tokio::select! {
            _ = super::logs::wait_for_job(&mut changes, &id) => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = tx.closed() => return,
            _ = state.shutdown.cancelled() => return,
        }
    }
}

enum Watch {
    Gone,
    Store(ApiError),
}

impl From<ApiError> for Watch {
    fn from(e: ApiError) -> Self {
        Watch::Store(e)
    }
}

impl From<crate::store::StoreError> for Watch {
    fn from(e: crate::store::StoreError) -> Self {
        Watch::Store(e.into())
    }
}

/// Sends what changed since the last call; true when the job has ended (everything
/// about it was sent).
async fn send_job_changes(
    state: &AppState,
    id: &str,
    tx: &Sender<Event>,
    last_job: &mut Option<serde_json::Value>,
    events_sent: &mut usize,
    progress_after: &mut Option<(u32, u64)>,
) -> Result<bool, Watch> {
    let job: Job = super::jobs::job_with_reason(state, id).await?;
    let events = state.store.events(id).await?;
    let progress = state
        .store
        .progress_history(id, None, *progress_after)
        .await?;
    let send = |e: Event| async move { tx.send(e).await.map_err(|_| Watch::Gone) };
    let value = serde_json::to_value(&job).expect("jobs serialize");
    if last_job.as_ref() != Some(&value) {
        send(json_event("job", &job)).await?;
        *last_job = Some(value);
    }
    for e in events.iter().skip(*events_sent) {
        send(json_event("event", e)).await?;
    }
    *events_sent = events.len().max(*events_sent);
    for p in &progress {
        send(json_event("progress", p)).await?;
        *progress_after = Some((p.attempt, p.seq));
    }
    Ok(job.state.is_terminal())
}

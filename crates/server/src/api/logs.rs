//! Log endpoints: a JSON page from any `seq`, a live Server-Sent Events follow, and a
//! plain-text download.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::Json;
use drover_core::api::{ErrorBody, LogPage, LogQuery, LogRecord, Stream};
use futures::Stream as FutStream;

use super::auth::{Client, READ};
use super::{ApiError, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::store::{LogPageRead, LogRead, StoreError};

const PAGE: u32 = 1000;
const MAX_PAGE: u32 = 10_000;

struct Resolved {
    job_id: String,
    attempt: u32,
    stream: Option<Stream>,
    after: u64,
}

impl Resolved {
    /// Whether the attempt has ended, and the next page of its records: until it ended,
    /// only up to the first missing `seq`. The end is asked about before reading, so
    /// that an ended attempt's page never misses a late record.
    async fn next_page(
        &self,
        state: &AppState,
        limit: u32,
    ) -> Result<(bool, LogPageRead), StoreError> {
        let ended = state
            .store
            .attempt_ended(&self.job_id, self.attempt)
            .await?;
        let read = LogRead {
            after: self.after,
            stream: self.stream,
            limit,
            gap_free: !ended,
        };
        let page = state
            .store
            .read_log_page(&self.job_id, self.attempt, read)
            .await?;
        Ok((ended, page))
    }
}

async fn resolve(state: &AppState, id: String, q: &LogQuery) -> Result<Resolved, ApiError> {
    // Checked by every form, though only the page uses it: a request the document
    // calls invalid is refused, not half read.
    if !(1..=MAX_PAGE).contains(&q.limit.unwrap_or(PAGE)) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let job = state.store.job(&id).await?;
    let stream = q
        .stream
        .as_deref()
        .map(|s| {
            Stream::parse(s).ok_or_else(|| {
                ApiError::BadRequest(format!("stream {s:?} is not stdout, stderr or system"))
            })
        })
        .transpose()?;
    let attempt = match q.attempt {
        Some(n) if n == 0 || n > job.current_attempt => {
            return Err(ApiError::NotFound(format!(
                "job {id} has no attempt {n} (it has {})",
                job.current_attempt
            )))
        }
        Some(n) => n,
        None => job.current_attempt,
    };
    let after = match q.tail {
        Some(n) if attempt > 0 => state
            .store
            .last_log_seq(&id, attempt)
            .await?
            .saturating_sub(u64::from(n)),
        _ => q.after.unwrap_or(0),
    };
    Ok(Resolved {
        job_id: id,
        attempt,
        stream,
        after,
    })
}

/// Read a page of a job's log
///
/// Log records of one attempt (default: the current one) in `seq` order, optionally of
/// one stream. Resumable: pass the page's `last_seq` as `after` to read on; `tail=N`
/// starts N records before the end instead. While the attempt runs a page stops at the
/// first missing `seq`, so no record is skipped; `complete` is true once the attempt
/// has ended and every record was read. A job not yet leased answers attempt 0 with no
/// records.
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/jobs/{id}/logs", tag = "logs", params(("id" = String, Path, description = "Job id"), LogQuery),
    responses(
        (status = 200, description = "A page of records, oldest first; `last_seq` is the cursor for the next", body = LogPage),
        (status = 400, description = "`bad_request`: a path or query parameter does not parse, or `stream` is not `stdout`, `stderr` or `system`, or `limit` is outside 1..=10000", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id, or it has no such attempt", body = ErrorBody),
        (status = 500, description = "`internal`: the database failed, or a stored log chunk is damaged; the message quotes a request id", body = ErrorBody),
        (status = 503, description = "`unavailable`: the log was moved to the object store, which does not answer now; the message names it; try again later", body = ErrorBody)),
    security(("token" = [])))]
pub async fn page(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Json<LogPage>, ApiError> {
    let limit = q.limit.unwrap_or(PAGE);
    let r = resolve(&state, id, &q).await?;
    if r.attempt == 0 {
        let job = state.store.job(&r.job_id).await?;
        return Ok(Json(LogPage {
            attempt: 0,
            records: Vec::new(),
            last_seq: r.after,
            complete: job.state.is_terminal(),
        }));
    }
    let (ended, page) = r.next_page(&state, limit).await?;
    let complete = ended && (page.records.len() as u32) < limit;
    Ok(Json(LogPage {
        attempt: r.attempt,
        records: page.records,
        last_seq: page.cursor,
        complete,
    }))
}

/// Follow a job's log (Server-Sent Events)
///
/// Streams the records of one attempt (default: the current one; a job not yet leased
/// is waited for) as they are stored, from `after` or `tail` like the JSON page.
/// Resumable: each `record` event's id is its `seq`, and a reconnecting EventSource's
/// `Last-Event-ID` header takes the place of `after`. A final `end` event says the
/// attempt has ended and every record was sent. A comment line keeps the connection
/// alive every 15 s.
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/jobs/{id}/logs/stream", tag = "logs", params(("id" = String, Path, description = "Job id"), LogQuery),
    responses(
        (status = 200, description = "Server-Sent Events: `record` events (id: the record's seq; data: the LogRecord JSON) in seq order, and a final `end` event (data: the attempt number) when the attempt has ended and every record was sent", content_type = "text/event-stream"),
        (status = 400, description = "`bad_request`: a path or query parameter does not parse, or `stream` is not `stdout`, `stderr` or `system`, or `limit` is outside 1..=10000", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id, or it has no such attempt", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn follow(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    headers: HeaderMap,
    ApiPath(id): ApiPath<String>,
    ApiQuery(mut q): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    // A resuming EventSource sends the last id it saw.
    if let Some(last) = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        q.after = Some(last);
        q.tail = None;
    }
    let r = resolve(&state, id, &q).await?;
    Ok(super::live::sse(follow_stream(state, r)))
}

fn follow_stream(
    state: AppState,
    mut r: Resolved,
) -> impl FutStream<Item = Result<Event, Infallible>> {
    async_stream(move |tx| async move {
        let mut changes = state.hub.subscribe_jobs();
        loop {
            // A database error is never taken for the end of the log: the follower waits
            // and reads again (the `end` event promises that nothing more will come).
            match follow_step(&state, &mut r, &tx).await {
                Ok(Step::Ended) => break,
                Ok(Step::More) => continue,
                Ok(Step::Wait) => {}
                Err(Gone) => return,
            }
            tokio::select! {
                _ = wait_for_job(&mut changes, &r.job_id) => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = state.shutdown.cancelled() => return,
            }
        }
        let _ = tx
            .send(Event::default().event("end").data(r.attempt.to_string()))
            .await;
    })
}

/// What a follower does after one read.
enum Step {
    /// Every record of the attempt was sent.
    Ended,
    /// A full page went out: read on at once.
    More,
    /// Wait for the job to change (or the database to answer again).
    Wait,
}

/// The follower hung up.
struct Gone;

async fn follow_step(
    state: &AppState,
    r: &mut Resolved,
    tx: &tokio::sync::mpsc::Sender<Event>,
) -> Result<Step, Gone> {
    if r.attempt == 0 {
        // Not leased yet: wait for the first attempt.
        match state.store.job(&r.job_id).await {
            Ok(job) if job.current_attempt > 0 => r.attempt = job.current_attempt,
            Ok(job) if job.state.is_terminal() => return Ok(Step::Ended),
            Ok(_) => return Ok(Step::Wait),
            Err(e) => {
                tracing::warn!(job = %r.job_id, error = %e, "log follower cannot read the job; trying again");
                return Ok(Step::Wait);
            }
        }
    }
    let (ended, page) = match r.next_page(state, PAGE).await {
        Ok(both) => both,
        Err(e) => {
            tracing::warn!(job = %r.job_id, error = %e, "log follower cannot read the log; trying again");
            return Ok(Step::Wait);
        }
    };
    let full = page.records.len() as u32 == PAGE;
    for rec in page.records {
        if tx.send(record_event(&rec)).await.is_err() {
            return Err(Gone);
        }
    }
    r.after = page.cursor;
    Ok(if full {
        Step::More
    } else if ended {
        Step::Ended
    } else {
        Step::Wait
    })
}

pub(super) async fn wait_for_job(
    rx: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<str>>,
    job_id: &str,
) {
    loop {
        match rx.recv().await {
            Ok(id) if &*id == job_id => return,
            Ok(_) => continue,
            Err(_) => return,
        }
    }
}

fn record_event(rec: &LogRecord) -> Event {
    Event::default()
        .event("record")
        .id(rec.seq.to_string())
        .json_data(rec)
        .expect("log records serialize")
}

/// A stream fed by a producer task through a small channel (backpressure included).
pub(super) fn async_stream<F, Fut>(producer: F) -> impl FutStream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(producer(tx));
    futures::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok)
}

/// Download a job's log as text
///
/// The output of one attempt (default: the current one) as plain text, one record per
/// line, optionally of one stream and from `after` or `tail`; streamed as it is read,
/// so a long log does not wait; for an attempt still running it holds the records
/// stored so far. A job not yet leased answers an empty body. A store failure during
/// the download breaks the connection off.
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/jobs/{id}/logs.txt", tag = "logs", params(("id" = String, Path, description = "Job id"), LogQuery),
    responses(
        (status = 200, description = "The attempt's output as plain text, one record per line", content_type = "text/plain"),
        (status = 400, description = "`bad_request`: a path or query parameter does not parse, or `stream` is not `stdout`, `stderr` or `system`, or `limit` is outside 1..=10000", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id, or it has no such attempt", body = ErrorBody),
        (status = 500, description = "`internal`: the database failed, or a stored log chunk is damaged; the message quotes a request id", body = ErrorBody),
        (status = 503, description = "`unavailable`: the log was moved to the object store, which does not answer now; the message names it; try again later", body = ErrorBody)),
    security(("token" = [])))]
pub async fn text(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let r = resolve(&state, id, &q).await?;
    // The first page is read before answering: a log that cannot be read now (moved to
    // an object store that does not answer) is a 503, not a 200 whose body breaks off.
    let first = if r.attempt == 0 {
        None
    } else {
        Some(r.next_page(&state, MAX_PAGE).await?.1)
    };
    let body = futures::stream::unfold((first, Some(r)), move |(read, cursor)| {
        let state = state.clone();
        async move {
            let mut r = cursor?;
            if r.attempt == 0 {
                return None;
            }
            let page = match read {
                Some(page) => page,
                None => match r.next_page(&state, MAX_PAGE).await {
                    Ok((_, page)) => page,
                    Err(e) => {
                        return Some((Err(std::io::Error::other(e.to_string())), (None, None)))
                    }
                },
            };
            if page.records.is_empty() {
                return None;
            }
            let records = page.records;
            let mut chunk = String::new();
            for rec in &records {
                chunk.push_str(&rec.text);
                chunk.push('\n');
            }
            r.after = page.cursor;
            Some((Ok::<_, std::io::Error>(chunk), (None, Some(r))))
        }
    });
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response())
}

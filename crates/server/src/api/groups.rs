//! Groups: submit an array, read one group or a page of them, cancel or retry one as a
//! whole. Members are jobs: `GET /v1/jobs?group=ID` lists them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use drover_core::api::ErrorBody;
use drover_core::group::{Group, GroupAction, GroupPage, GroupSubmit, ListGroupsQuery};

use super::auth::{Client, READ, SUBMIT};
use super::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::store::StoreError;

/// Submit a job array (a group)
///
/// Stores a group and all its members in one transaction: one copy of the job per index
/// of `array` (`DROVER_ARRAY_INDEX` and `DROVER_GROUP_ID` in each one's environment,
/// name `NAME[INDEX]`), at most `parallelism` running at once. Idempotent by the job's
/// `idempotency_key`, which is the group's: a key seen before answers 200 with the
/// group first stored under it.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(post, path = "/v1/groups", tag = "groups", request_body = GroupSubmit,
    responses(
        (status = 201, description = "The group and all its members, stored in one transaction", body = Group),
        (status = 200, description = "A group with this idempotency key exists; it is returned", body = Group),
        (status = 400, description = "`bad_request`: malformed JSON body (not JSON, wrong types, missing fields, unknown fields) or no `Content-Type: application/json`; `invalid_spec`: an invalid spec or array, a missing upload, or an unresolvable dependency (every problem listed in `details`; fields are prefixed with `job.` or `array.`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 413, description = "`too_large`: the body is over the server's request body limit", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    Client(caller): Client<SUBMIT>,
    ApiJson(req): ApiJson<GroupSubmit>,
) -> Result<(StatusCode, Json<Group>), ApiError> {
    let now = Utc::now();
    let (valid, array) = req.validate(now).map_err(ApiError::InvalidSpec)?;
    super::files::check_uploads(&state, &[("job.".to_string(), &valid)]).await?;
    let (group, created) = match state
        .store
        .enqueue_group(valid, array, &caller.actor, now)
        .await
    {
        // Every member has the spec's `after`: the first member's problems are all.
        Err(StoreError::Invalid(errs)) => {
            return Err(ApiError::InvalidSpec(
                errs.into_iter()
                    .filter(|(i, _)| *i == 0)
                    .map(|(_, e)| e.within("job."))
                    .collect(),
            ))
        }
        other => other?,
    };
    if created {
        state.hub.work_available();
    }
    let status = match created {
        true => StatusCode::CREATED,
        false => StatusCode::OK,
    };
    Ok((status, Json(group)))
}

/// List groups
///
/// Groups newest first, each with its state, counts of members by state and mean
/// progress. Paginated: pass a page's `next_cursor` as `cursor` to get the next one; it
/// is absent on the last page. List a group's members with `GET /v1/jobs?group=ID`.
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/groups", tag = "groups", params(ListGroupsQuery),
    responses(
        (status = 200, description = "Groups, newest first", body = GroupPage),
        (status = 400, description = "`bad_request`: a query parameter does not parse, an unknown one, or a `cursor` this server did not return", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiQuery(q): ApiQuery<ListGroupsQuery>,
) -> Result<Json<GroupPage>, ApiError> {
    let limit = q.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and 1000, not {limit}"
        )));
    }
    let (groups, next_cursor) = state
        .store
        .list_groups(limit, q.cursor.as_deref())
        .await
        .map_err(|e| match e {
            StoreError::Conflict(m) => ApiError::BadRequest(m),
            e => e.into(),
        })?;
    Ok(Json(GroupPage {
        groups,
        next_cursor,
    }))
}

/// Get a group
///
/// One group: its state, counts of members by state and mean progress (an ended member
/// counts 100 %).
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/groups/{id}", tag = "groups", params(("id" = String, Path, description = "Group id")),
    responses(
        (status = 200, description = "The group: its state, counts by state and mean progress", body = Group),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no group with this id", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Group>, ApiError> {
    Ok(Json(state.store.group(&id).await?))
}

/// Cancel a group
///
/// Cancels every member that has not ended, in one transaction: waiting and queued ones
/// at once, leased and running ones by request to their agents. Canceling a group whose
/// members have all ended changes nothing (`changed` is 0).
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(post, path = "/v1/groups/{id}/cancel", tag = "groups", params(("id" = String, Path, description = "Group id")),
    responses(
        (status = 200, description = "Members not yet ended are canceled (waiting and queued ones at once, running ones by request); `changed` says how many", body = GroupAction),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no group with this id", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    Client(caller): Client<SUBMIT>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<GroupAction>, ApiError> {
    Ok(Json(cancel_group(&state, &id, &caller.actor).await?))
}

/// Cancels a group's members that have not ended and wakes what that concerns (the
/// API's and the dashboard's cancel).
pub(crate) async fn cancel_group(
    state: &AppState,
    id: &str,
    actor: &str,
) -> Result<GroupAction, StoreError> {
    let (action, done) = state.store.cancel_group(id, actor, Utc::now()).await?;
    super::jobs::announce_cancel(state, &done);
    Ok(action)
}

/// Queues a group's failed members again and wakes polls (the API's and the
/// dashboard's retry).
pub(crate) async fn retry_group(
    state: &AppState,
    id: &str,
    actor: &str,
) -> Result<GroupAction, StoreError> {
    let action = state.store.retry_group(id, actor, Utc::now()).await?;
    if action.changed > 0 {
        state.hub.work_available();
    }
    Ok(action)
}

/// Retry a group's failed members
///
/// Queues again, in one transaction, every member that failed or timed out, each with a
/// fresh attempt budget; other members are left as they are (`changed` may be 0).
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(post, path = "/v1/groups/{id}/retry", tag = "groups", params(("id" = String, Path, description = "Group id")),
    responses(
        (status = 200, description = "Members that failed or timed out are queued again with a fresh attempt budget; `changed` says how many", body = GroupAction),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no group with this id", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn retry(
    State(state): State<AppState>,
    Client(caller): Client<SUBMIT>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<GroupAction>, ApiError> {
    Ok(Json(retry_group(&state, &id, &caller.actor).await?))
}

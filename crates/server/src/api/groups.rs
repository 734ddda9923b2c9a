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

#[utoipa::path(post, path = "/v1/groups", tag = "groups", request_body = GroupSubmit,
    responses(
        (status = 201, description = "The group and all its members, stored in one transaction", body = Group),
        (status = 200, description = "A group with this idempotency key exists; it is returned", body = Group),
        (status = 400, description = "Invalid spec or array (every problem listed; fields are prefixed with `job.` or `array.`)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)),
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

#[utoipa::path(get, path = "/v1/groups", tag = "groups", params(ListGroupsQuery),
    responses((status = 200, description = "Groups, newest first", body = GroupPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiQuery(q): ApiQuery<ListGroupsQuery>,
) -> Result<Json<GroupPage>, ApiError> {
    let (groups, next_cursor) = state
        .store
        .list_groups(q.limit.unwrap_or(50), q.cursor.as_deref())
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

#[utoipa::path(get, path = "/v1/groups/{id}", tag = "groups", params(("id" = String, Path, description = "Group id")),
    responses((status = 200, description = "The group: its state, counts by state and mean progress", body = Group), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn get(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Group>, ApiError> {
    Ok(Json(state.store.group(&id).await?))
}

#[utoipa::path(post, path = "/v1/groups/{id}/cancel", tag = "groups", params(("id" = String, Path, description = "Group id")),
    responses((status = 200, description = "Members not yet ended are canceled (waiting and queued ones at once, running ones by request); `changed` says how many", body = GroupAction), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
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

#[utoipa::path(post, path = "/v1/groups/{id}/retry", tag = "groups", params(("id" = String, Path, description = "Group id")),
    responses((status = 200, description = "Members that failed or timed out are queued again with a fresh attempt budget; `changed` says how many", body = GroupAction), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn retry(
    State(state): State<AppState>,
    Client(caller): Client<SUBMIT>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<GroupAction>, ApiError> {
    Ok(Json(retry_group(&state, &id, &caller.actor).await?))
}

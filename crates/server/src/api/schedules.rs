//! Schedules: create, list, show, pause, resume, delete. The ticker is in
//! `crate::schedules`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use drover_core::api::ErrorBody;
use drover_core::schedule::{Schedule, ScheduleCreate, ScheduleList};
use drover_core::spec::FieldError;

use super::auth::{Client, READ, SUBMIT};
use super::{ApiError, ApiJson, ApiPath};
use crate::state::AppState;
use crate::store::StoreError;

/// Create a schedule
///
/// A cron schedule (with a time zone) that submits a job, given whole or as a template
/// with parameters, at each tick, with an overlap policy and catch-up of missed ticks.
/// Every problem is reported at once. Each tick's job carries an idempotency key of its
/// own, so a tick never submits twice.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", request_body = ScheduleCreate,
    responses(
        (status = 201, description = "The schedule, with its next run times", body = Schedule),
        (status = 400, description = "`bad_request`: malformed JSON body (not JSON, wrong types, missing fields, unknown fields) or no `Content-Type: application/json`; `invalid_spec`: an invalid name, cron expression, time zone or job, an unknown template, or template parameters that do not fit (every problem listed in `details`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 409, description = "`conflict`: a schedule with this name exists", body = ErrorBody),
        (status = 413, description = "`too_large`: the body is over the server's request body limit", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Client(_caller): Client<SUBMIT>,
    ApiJson(req): ApiJson<ScheduleCreate>,
) -> Result<(StatusCode, Json<Schedule>), ApiError> {
    let now = Utc::now();
    let mut errors = Vec::new();
    let cron = req.check(now).map_err(|e| errors.extend(e)).ok();
    if let Some(t) = &req.template {
        match state.store.template(&t.name, t.version).await {
            Ok(template) => {
                if let Err(e) = template.render(&t.params) {
                    errors.extend(e.into_iter().map(|e| e.within("template.")));
                }
            }
            Err(StoreError::NotFound(m)) => errors.push(FieldError::new("template.name", m)),
            Err(e) => return Err(e.into()),
        }
    }
    let Some(cron) = cron.filter(|_| errors.is_empty()) else {
        return Err(ApiError::InvalidSpec(errors));
    };
    let made = state
        .store
        .create_schedule(&req, cron.next_after(now), now)
        .await?;
    Ok((StatusCode::CREATED, Json(made)))
}

/// List schedules
///
/// Every schedule, by name, with its next run times.
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    responses(
        (status = 200, description = "Every schedule, by name, with its next run times", body = ScheduleList),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
) -> Result<Json<ScheduleList>, ApiError> {
    Ok(Json(ScheduleList {
        schedules: state.store.schedules().await?,
    }))
}

/// Get a schedule
///
/// One schedule with its next run times.
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "The schedule, with its next run times", body = Schedule),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no schedule with this name", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.store.schedule(&name).await?))
}

/// Delete a schedule
///
/// Deletes the schedule; the jobs it submitted stay.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 204, description = "Deleted; the jobs it submitted stay"),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no schedule with this name", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Client(_caller): Client<SUBMIT>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.store.delete_schedule(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pause a schedule
///
/// No tick submits until the schedule is resumed. Pausing a paused schedule changes
/// nothing.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(post, path = "/v1/schedules/{name}/pause", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "Paused: no tick submits until it is resumed", body = Schedule),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no schedule with this name", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    Client(_caller): Client<SUBMIT>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.store.pause_schedule(&name).await?))
}

/// Resume a schedule
///
/// The schedule runs again from its first tick after now: ticks missed while it was
/// paused are not caught up.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(post, path = "/v1/schedules/{name}/resume", tag = "schedules", params(("name" = String, Path, description = "Schedule name")),
    responses(
        (status = 200, description = "Resumed from the next tick after now: ticks of the pause are not caught up", body = Schedule),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no schedule with this name", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    Client(_caller): Client<SUBMIT>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.store.resume_schedule(&name, Utc::now()).await?))
}

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

#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", request_body = ScheduleCreate,
    responses(
        (status = 201, description = "The schedule, with its next run times", body = Schedule),
        (status = 400, description = "Invalid name, cron expression, time zone, job, or template parameters (every problem listed)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "A schedule with this name exists", body = ErrorBody)),
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

#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    responses((status = 200, description = "Every schedule, by name, with its next run times", body = ScheduleList),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
) -> Result<Json<ScheduleList>, ApiError> {
    Ok(Json(ScheduleList {
        schedules: state.store.schedules().await?,
    }))
}

#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path)),
    responses((status = 200, body = Schedule), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.store.schedule(&name).await?))
}

#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path)),
    responses((status = 204, description = "Deleted; the jobs it submitted stay"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Client(_caller): Client<SUBMIT>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.store.delete_schedule(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/schedules/{name}/pause", tag = "schedules", params(("name" = String, Path)),
    responses((status = 200, description = "Paused: no tick submits until it is resumed", body = Schedule), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    Client(_caller): Client<SUBMIT>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.store.pause_schedule(&name).await?))
}

#[utoipa::path(post, path = "/v1/schedules/{name}/resume", tag = "schedules", params(("name" = String, Path)),
    responses((status = 200, description = "Resumed from the next tick after now: ticks of the pause are not caught up", body = Schedule), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    Client(_caller): Client<SUBMIT>,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Schedule>, ApiError> {
    Ok(Json(state.store.resume_schedule(&name, Utc::now()).await?))
}

//! Job templates: create (each create of a name is its next version), list, show,
//! delete, and submit a job from one with its parameters filled in.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use drover_core::api::{ErrorBody, Job};
use drover_core::template::{Template, TemplateCreate, TemplateList, TemplateSubmit};
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::{Client, READ, SUBMIT};
use super::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

/// `GET /v1/templates/{name}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    /// Which version (default: the latest).
    pub version: Option<u32>,
}

#[utoipa::path(post, path = "/v1/templates", tag = "templates", request_body = TemplateCreate,
    responses(
        (status = 201, description = "The template's next version (1 for a new name)", body = Template),
        (status = 400, description = "Invalid name, parameters or job (every problem listed)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, description = "Another version was made at the same moment", body = ErrorBody)),
    security(("token" = [])))]
pub async fn create(
    State(state): State<AppState>,
    Client(_caller): Client<SUBMIT>,
    ApiJson(req): ApiJson<TemplateCreate>,
) -> Result<(StatusCode, Json<Template>), ApiError> {
    let now = Utc::now();
    let params = req.check(now).map_err(ApiError::InvalidSpec)?;
    let made = state
        .store
        .create_template(&req.name, &req.job, &params, now)
        .await?;
    Ok((StatusCode::CREATED, Json(made)))
}

#[utoipa::path(get, path = "/v1/templates", tag = "templates",
    responses((status = 200, description = "The latest version of each template", body = TemplateList),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
) -> Result<Json<TemplateList>, ApiError> {
    Ok(Json(TemplateList {
        templates: state.store.templates().await?,
    }))
}

#[utoipa::path(get, path = "/v1/templates/{name}", tag = "templates", params(("name" = String, Path), VersionQuery),
    responses((status = 200, body = Template), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<VersionQuery>,
) -> Result<Json<Template>, ApiError> {
    Ok(Json(state.store.template(&name, q.version).await?))
}

#[utoipa::path(delete, path = "/v1/templates/{name}", tag = "templates", params(("name" = String, Path)),
    responses((status = 204, description = "Every version deleted; jobs made from it keep their record"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Client(_caller): Client<SUBMIT>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.store.delete_template(&name, Utc::now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/v1/templates/{name}/jobs", tag = "templates", params(("name" = String, Path)),
    request_body = TemplateSubmit,
    responses(
        (status = 201, description = "Job created from the template", body = Job),
        (status = 200, description = "A job with this idempotency key exists; it is returned", body = Job),
        (status = 400, description = "Missing, unknown or ill-typed parameters, or an invalid job (every problem listed)", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("token" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    Client(caller): Client<SUBMIT>,
    ApiPath(name): ApiPath<String>,
    ApiJson(req): ApiJson<TemplateSubmit>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let template = state.store.template(&name, req.version).await?;
    let now = Utc::now();
    let valid = template
        .job(&req.params, now, |job| {
            if let Some(n) = req.name {
                job.name = Some(n);
            }
            if let Some(m) = req.metadata {
                job.metadata = Some(m);
            }
            job.idempotency_key = req.idempotency_key;
            job.secrets = req.secrets;
            job.after = req.after;
        })
        .map_err(ApiError::InvalidSpec)?;
    super::jobs::enqueue_one(&state, &caller.actor, valid, now).await
}

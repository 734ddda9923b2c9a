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

/// Create a template version
///
/// Stores a job template: a job spec with `{{ params.NAME }}` placeholders in its
/// strings, and the types and defaults of its parameters (one without a default is
/// required). Creating a name that exists stores its next version; earlier versions
/// stay usable.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(post, path = "/v1/templates", tag = "templates", request_body = TemplateCreate,
    responses(
        (status = 201, description = "The template's next version (1 for a new name)", body = Template),
        (status = 400, description = "`bad_request`: malformed JSON body (not JSON, wrong types, missing fields, unknown fields) or no `Content-Type: application/json`; `invalid_spec`: an invalid name, parameters or job (every problem listed in `details`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 409, description = "`conflict`: another version of this template was made at the same moment; try again", body = ErrorBody),
        (status = 413, description = "`too_large`: the body is over the server's request body limit", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
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

/// List templates
///
/// The latest version of each template, by name (deleted ones are left out).
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/templates", tag = "templates",
    responses(
        (status = 200, description = "The latest version of each template", body = TemplateList),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
) -> Result<Json<TemplateList>, ApiError> {
    Ok(Json(TemplateList {
        templates: state.store.templates().await?,
    }))
}

/// Get a template
///
/// One version of a template (default: the latest).
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/templates/{name}", tag = "templates", params(("name" = String, Path, description = "Template name"), VersionQuery),
    responses(
        (status = 200, description = "The template version", body = Template),
        (status = 400, description = "`bad_request`: a path or query parameter does not parse, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no template with this name (or it was deleted), or it has no such version", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn show(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<VersionQuery>,
) -> Result<Json<Template>, ApiError> {
    Ok(Json(state.store.template(&name, q.version).await?))
}

/// Delete a template
///
/// Deletes every version of the template; jobs made from it keep their record.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(delete, path = "/v1/templates/{name}", tag = "templates", params(("name" = String, Path, description = "Template name")),
    responses(
        (status = 204, description = "Every version deleted; jobs made from it keep their record"),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no template with this name", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Client(_caller): Client<SUBMIT>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.store.delete_template(&name, Utc::now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Submit a job from a template
///
/// Fills a template version (default: the latest) with `params` and submits the job, as
/// `POST /v1/jobs` would; `name`, `metadata`, `idempotency_key`, `secrets` and `after`
/// may be given alongside. Idempotent by `idempotency_key`: a key seen before answers
/// 200 with the job first stored under it.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(post, path = "/v1/templates/{name}/jobs", tag = "templates", params(("name" = String, Path, description = "Template name")),
    request_body = TemplateSubmit,
    responses(
        (status = 201, description = "Job created from the template", body = Job),
        (status = 200, description = "A job with this idempotency key exists; it is returned", body = Job),
        (status = 400, description = "`bad_request`: a path parameter does not parse, or malformed JSON body (not JSON, wrong types, missing fields, unknown fields) or no `Content-Type: application/json`; `invalid_spec`: missing, unknown or ill-typed parameters, an invalid job, a missing upload or an unresolvable dependency (every problem listed in `details`)", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no template with this name, or it has no such version", body = ErrorBody),
        (status = 413, description = "`too_large`: the body is over the server's request body limit", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
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

//! The HTTP API: routes, the OpenAPI document, operational endpoints, request metrics.

pub(crate) mod admin;
mod agents;
pub mod auth;
mod error;
mod files;
pub(crate) mod groups;
pub(crate) mod jobs;
mod live;
mod logs;
mod schedules;
mod templates;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use utoipa::OpenApi;

pub use error::{ApiError, ApiJson, ApiPath, ApiQuery};

use crate::state::AppState;
use crate::Scope;

/// The generated OpenAPI document; every route in [`router`] is listed here.
#[derive(OpenApi)]
#[openapi(
    info(title = "drover", description = "drover's HTTP API: jobs, agents, logs. Every endpoint but /healthz, /readyz and /openapi.json needs `Authorization: Bearer <token>`."),
    paths(
        jobs::submit, jobs::submit_batch, jobs::list, jobs::get, jobs::delete, jobs::cancel, jobs::retry, jobs::rerun, jobs::events, jobs::progress,
        live::jobs, live::job,
        logs::page, logs::follow, logs::text,
        files::upload, files::list, files::download, files::delete, files::artifacts, files::archive, files::input, files::upload_artifact,
        agents::register, agents::poll, agents::leave, agents::start, agents::logs, agents::progress, agents::finish, agents::release, agents::finish_batch, agents::list, agents::providers,
        groups::submit, groups::list, groups::get, groups::cancel, groups::retry,
        schedules::create, schedules::list, schedules::show, schedules::delete, schedules::pause, schedules::resume,
        templates::create, templates::list, templates::show, templates::delete, templates::submit,
        admin::create_token, admin::list_tokens, admin::revoke_token, admin::remove_agent, admin::audit,
        healthz, readyz, metrics, openapi_json,
    ),
    modifiers(&TokenScheme),
)]
pub struct ApiDoc;

struct TokenScheme;

impl utoipa::Modify for TokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document `/openapi.json` serves: [`ApiDoc`], mended where the derive
/// cannot say it (and utoipa's types cannot hold the mend): the labels map is named
/// `Labels` (not after the `BTreeMap` it aliases), `priority` and `gpus` get their two
/// forms, and the docker branch of `Exec` is one object with `kind` among its
/// properties (an `allOf` with a closed `DockerSpec` would refuse every docker job).
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    mend_schemas(&mut doc);
    doc
}

fn mend_schemas(doc: &mut serde_json::Value) {
    use serde_json::{json, Value};
    fn rename_refs(v: &mut Value, from: &str, to: &str) {
        match v {
            Value::String(s) if s == from => *s = to.to_string(),
            Value::Array(items) => items.iter_mut().for_each(|i| rename_refs(i, from, to)),
            Value::Object(map) => map.values_mut().for_each(|i| rename_refs(i, from, to)),
            _ => {}
        }
    }
    let schemas = &mut doc["components"]["schemas"];
    if let Some(map) = schemas.as_object_mut() {
        if let Some(labels) = map.remove("BTreeMap") {
            map.insert("Labels".into(), labels);
        }
    }
    rename_refs(
        doc,
        "#/components/schemas/BTreeMap",
        "#/components/schemas/Labels",
    );
    let schemas = &mut doc["components"]["schemas"];
    schemas["SubmitRequest"]["properties"]["priority"] = json!({
        "description": "An integer (higher runs first) or low (-100), normal (0), high (100), critical (1000); default normal.",
        "oneOf": [
            {"type": "null"},
            {"type": "integer", "format": "int32"},
            {"type": "string", "pattern": "^(low|normal|high|critical|-?[0-9]{1,10})$"},
        ],
    });
    schemas["DockerSpec"]["properties"]["gpus"] = json!({
        "description": "A count, or \"all\".",
        "oneOf": [
            {"type": "null"},
            {"type": "integer", "minimum": 0},
            {"type": "string", "enum": ["all"]},
        ],
    });
    let mut docker = schemas["DockerSpec"].clone();
    docker["properties"]["kind"] = json!({"type": "string", "enum": ["docker"]});
    if let Some(required) = docker["required"].as_array_mut() {
        required.push(json!("kind"));
    }
    docker["description"] = json!("A container run through the Docker Engine API.");
    // Each branch of `Exec` becomes a schema of its own (ShellExec, DockerExec, …) with
    // `kind` as the discriminator: generated clients name their classes after it, and
    // openapi-python-client drops an inline branch that holds objects of its own.
    let mut named = Vec::new();
    let mut mapping = serde_json::Map::new();
    if let Some(branches) = schemas["Exec"]["oneOf"].as_array_mut() {
        for branch in branches.iter_mut() {
            if branch.get("allOf").is_some() {
                *branch = docker.clone();
            }
            let Some(kind) = branch["properties"]["kind"]["enum"][0].as_str() else {
                continue;
            };
            let name = format!("{}{}Exec", kind[..1].to_uppercase(), &kind[1..]);
            let reference = format!("#/components/schemas/{name}");
            mapping.insert(kind.to_string(), json!(reference));
            named.push((name, std::mem::replace(branch, json!({"$ref": reference}))));
        }
    }
    schemas["Exec"]["discriminator"] = json!({"propertyName": "kind", "mapping": mapping});
    for (name, schema) in named {
        schemas[name.as_str()] = schema;
    }
    // Any JSON values, not only objects (the derive cannot say "any").
    schemas["PythonExec"]["properties"]["args"]["items"] = json!({});
    schemas["PythonExec"]["properties"]["kwargs"] =
        json!({"type": "object", "additionalProperties": {}});
    unique_operation_ids(doc);
    unsigned_ranges(doc);
}

/// The derive writes a `u32` as `int32` with minimum 0 (and a `u64` as `int64`), which
/// tells a client that 2147483648 is out of range though the server takes it: such an
/// integer gets the unsigned type's maximum instead of the signed format.
fn unsigned_ranges(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            let unsigned = map.get("minimum").and_then(|m| m.as_u64()).is_some();
            let max = match map.get("format").and_then(|f| f.as_str()) {
                Some("int32") if unsigned => Some(serde_json::json!(u32::MAX)),
                Some("int64") if unsigned => Some(serde_json::json!(u64::MAX)),
                _ => None,
            };
            if let Some(max) = max {
                map.remove("format");
                map.entry("maximum").or_insert(max);
            }
            map.values_mut().for_each(unsigned_ranges);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unsigned_ranges),
        _ => {}
    }
}

/// OpenAPI wants every operationId unique, and the derive takes the handler's name
/// (`list` in six modules): a repeated one gets its tag (`list_jobs`, `get_group`).
fn unique_operation_ids(doc: &mut serde_json::Value) {
    use std::collections::HashMap;
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    for item in paths.values().filter_map(|i| i.as_object()) {
        for op in item.values() {
            if let Some(id) = op["operationId"].as_str() {
                *seen.entry(id.to_string()).or_default() += 1;
            }
        }
    }
    for item in paths.values_mut().filter_map(|i| i.as_object_mut()) {
        for op in item.values_mut() {
            let (Some(id), Some(tag)) = (op["operationId"].as_str(), op["tags"][0].as_str()) else {
                continue;
            };
            if seen.get(id).copied().unwrap_or(0) > 1 {
                let noun = if id == "list" {
                    tag
                } else {
                    tag.trim_end_matches('s')
                };
                op["operationId"] = serde_json::json!(format!("{id}_{noun}"));
            }
        }
    }
}

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    let read_timeout = state.config.read_timeout;
    Router::new()
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/batch", post(jobs::submit_batch))
        .route("/v1/groups", post(groups::submit).get(groups::list))
        .route("/v1/groups/{id}", get(groups::get))
        .route("/v1/groups/{id}/cancel", post(groups::cancel))
        .route("/v1/groups/{id}/retry", post(groups::retry))
        .route(
            "/v1/schedules",
            post(schedules::create).get(schedules::list),
        )
        .route(
            "/v1/schedules/{name}",
            get(schedules::show).delete(schedules::delete),
        )
        .route("/v1/schedules/{name}/pause", post(schedules::pause))
        .route("/v1/schedules/{name}/resume", post(schedules::resume))
        .route(
            "/v1/templates",
            post(templates::create).get(templates::list),
        )
        .route(
            "/v1/templates/{name}",
            get(templates::show).delete(templates::delete),
        )
        .route("/v1/templates/{name}/jobs", post(templates::submit))
        .route("/v1/jobs/{id}", get(jobs::get).delete(jobs::delete))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/retry", post(jobs::retry))
        .route("/v1/jobs/{id}/rerun", post(jobs::rerun))
        .route("/v1/jobs/stream", get(live::jobs))
        .route("/v1/jobs/{id}/events", get(jobs::events))
        .route("/v1/jobs/{id}/events/stream", get(live::job))
        .route("/v1/jobs/{id}/progress", get(jobs::progress))
        .route("/v1/jobs/{id}/logs", get(logs::page))
        .route("/v1/jobs/{id}/logs/stream", get(logs::follow))
        .route("/v1/jobs/{id}/logs.txt", get(logs::text))
        .route("/v1/jobs/{id}/artifacts", get(files::artifacts))
        .route("/v1/jobs/{id}/artifacts.tar", get(files::archive))
        .route(
            "/v1/files",
            post(files::upload)
                .layer(DefaultBodyLimit::disable())
                .get(files::list),
        )
        .route("/v1/files/{id}", get(files::download).delete(files::delete))
        .route(
            "/v1/jobs/{id}/attempts/{attempt}/inputs/{index}",
            get(files::input),
        )
        .route(
            "/v1/jobs/{id}/attempts/{attempt}/artifacts",
            post(files::upload_artifact).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/jobs/{id}/attempts/{attempt}/start",
            post(agents::start),
        )
        .route("/v1/jobs/{id}/attempts/{attempt}/logs", post(agents::logs))
        .route(
            "/v1/jobs/{id}/attempts/{attempt}/progress",
            post(agents::progress),
        )
        .route(
            "/v1/jobs/{id}/attempts/{attempt}/finish",
            post(agents::finish),
        )
        .route(
            "/v1/jobs/{id}/attempts/{attempt}/release",
            post(agents::release),
        )
        .route("/v1/agents", get(agents::list))
        .route("/v1/providers", get(agents::providers))
        .route("/v1/agents/register", post(agents::register))
        .route("/v1/agents/poll", post(agents::poll))
        .route("/v1/agents/leave", post(agents::leave))
        .route("/v1/agents/finish", post(agents::finish_batch))
        .route(
            "/v1/agents/{id}",
            axum::routing::delete(admin::remove_agent),
        )
        .route(
            "/v1/tokens",
            post(admin::create_token).get(admin::list_tokens),
        )
        .route(
            "/v1/tokens/{id}",
            axum::routing::delete(admin::revoke_token),
        )
        .route("/v1/audit", get(admin::audit))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .merge(crate::dashboard::routes())
        .fallback(|| async { ApiError::NotFound("no such endpoint; see /openapi.json".into()) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::Extension(error::BodyLimit(limit)))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            read_timeout,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Counts and times every request by its route template.
async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let started = Instant::now();
    let resp = next.run(req).await;
    let m = &state.metrics;
    m.http_requests
        .with_label_values(&[&method, &route, resp.status().as_str()])
        .inc();
    m.http_duration
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Liveness check
///
/// Answers `ok` as long as the process serves HTTP; it checks nothing else (see
/// `/readyz`).
/// Token: none.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses(
        (status = 200, description = "The process is up (body: `ok`)", content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness check
///
/// Answers 200 when the database answers a query, 503 when it does not, so a load
/// balancer can take the server out of rotation.
/// Token: none.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "The database answers (body: `ready`)", content_type = "text/plain"),
        (status = 503, description = "The database does not answer (body: `database unreachable`)", content_type = "text/plain")))]
async fn readyz(State(state): State<AppState>) -> Response {
    if state.store.ping().await {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable\n").into_response()
    }
}

/// Prometheus metrics
///
/// Request counts and durations by route, jobs by state and queue, agents online,
/// waiting polls, job durations, the time from submit to start, agent providers' starts
/// and whether this server leads, in the Prometheus text format.
/// Token: a client token with scope `read` (or `submit` or `admin`); none when the
/// server runs with public metrics.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = drover_core::api::ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = drover_core::api::ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = drover_core::api::ErrorBody)),
    security(("token" = [])))]
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if !state.config.public_metrics {
        auth::require(&state, &headers, Scope::Read).await?;
    }
    let m = &state.metrics;
    m.jobs.reset();
    for (st, queue, n) in state.store.count_jobs().await? {
        m.jobs.with_label_values(&[&st, &queue]).set(n);
    }
    let agents = state
        .store
        .list_agents(chrono::Utc::now(), state.config.lease_ttl)
        .await?;
    m.leader.set(i64::from(state.leader.is_leader()));
    m.agents_online
        .set(agents.iter().filter(|a| a.status != "offline").count() as i64);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
        .into_response())
}

/// The OpenAPI document
///
/// This document: every endpoint of the API with its parameters, bodies and answers.
/// No token: whoever writes a client or an agent needs it first, perhaps holding only
/// a join token, and it says nothing that is not in drover's source.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses(
        (status = 200, description = "This document", content_type = "application/json")))]
async fn openapi_json() -> Json<serde_json::Value> {
    Json(document())
}

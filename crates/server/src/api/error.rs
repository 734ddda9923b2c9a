//! `ApiError`: the one mapping from failures to HTTP statuses and error bodies.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use drover_core::api::{ErrorBody, ErrorDetail};
use drover_core::spec::FieldError;
use serde::de::DeserializeOwned;

use crate::store::StoreError;

/// Everything a handler can fail with. Client errors carry safe messages; internal
/// ones are logged with a request id and answered with a generic 500.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the job spec is invalid")]
    InvalidSpec(Vec<FieldError>),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    StaleAttempt(String),
    #[error("{0}")]
    AlreadyFinished(String),
    #[error("{0}")]
    TooLarge(String),
    /// Something the server depends on (the object store) failed; the request may
    /// succeed later. The message names it; the detail goes to the server log.
    #[error("{0}")]
    ServiceUnavailable(String),
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::InvalidSpec(_) => (StatusCode::BAD_REQUEST, "invalid_spec"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::StaleAttempt(_) => (StatusCode::CONFLICT, "stale_attempt"),
            ApiError::AlreadyFinished(_) => (StatusCode::CONFLICT, "already_finished"),
            ApiError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ApiError::ServiceUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let (message, details, request_id) = match self {
            ApiError::InvalidSpec(details) => {
                let summary = details
                    .iter()
                    .map(|d| format!("{}: {}", d.field, d.message))
                    .collect::<Vec<_>>()
                    .join("; ");
                (format!("the job spec is invalid: {summary}"), details, None)
            }
            ApiError::Internal(detail) => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                tracing::error!(request_id = %id, error = %detail, "internal error");
                (
                    format!("internal server error; quote request id {id} when reporting it"),
                    Vec::new(),
                    Some(id),
                )
            }
            other => (other.to_string(), Vec::new(), None),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message,
                details,
                request_id,
            },
        };
        (status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::NotFound(m),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::TooLarge(m) => ApiError::TooLarge(m),
            // One job (or one spec, as an array's): its fields are named as they are.
            StoreError::Invalid(errs) => {
                ApiError::InvalidSpec(errs.into_iter().map(|(_, e)| e).collect())
            }
            e @ StoreError::StaleAttempt { .. } => ApiError::StaleAttempt(e.to_string()),
            e @ StoreError::NotYourAttempt { .. } => ApiError::Forbidden(e.to_string()),
            // The answer every request of a forgotten agent gets from its token check.
            StoreError::UnknownAgent { .. } => {
                ApiError::Unauthorized(super::auth::UNKNOWN_AGENT.into())
            }
            e @ StoreError::AlreadyFinished { .. } => ApiError::AlreadyFinished(e.to_string()),
            StoreError::Unavailable(m) => {
                ApiError::ServiceUnavailable(format!("{m}; try again later"))
            }
            e @ (StoreError::Db(_) | StoreError::Corrupt(_)) => ApiError::Internal(e.to_string()),
        }
    }
}

/// The server's request body limit, put on every request so that a refusal can name it.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(format!(
                "request body is larger than the server's limit: {}",
                r.body_text()
            )),
            _ => ApiError::BadRequest(format!("cannot read the request body: {}", r.body_text())),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::BadRequest(format!("invalid query string: {}", r.body_text()))
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::BadRequest(format!("invalid path: {}", r.body_text()))
    }
}

/// JSON body extractor whose failures are `ApiError`s (400/413 with an error body).
///
/// Parses with plain `serde_json`: axum's `Json` tracks the path of every value it reads,
/// which stood out in the server's profile on log batches of thousands of records. Only
/// a body that fails is parsed again with path tracking, so the message still names the
/// field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<mime::Mime>().ok())
            .is_some_and(|m| {
                m.type_() == "application"
                    && (m.subtype() == "json" || m.suffix().is_some_and(|s| s == "json"))
            });
        if !is_json {
            return Err(ApiError::BadRequest(
                "malformed JSON body: expected a request with `Content-Type: application/json`"
                    .into(),
            ));
        }
        let limit = req.extensions().get::<BodyLimit>().copied();
        let body = Bytes::from_request(req, state)
            .await
            .map_err(|r| match (r.status(), limit) {
                (StatusCode::PAYLOAD_TOO_LARGE, Some(BodyLimit(n))) => ApiError::TooLarge(format!(
                    "request body is larger than the server's limit of {n} bytes ({:.1} MiB); send less per request",
                    n as f64 / (1024.0 * 1024.0)
                )),
                _ => ApiError::from(r),
            })?;
        serde_json::from_slice(&body).map(ApiJson).map_err(|e| {
            let mut de = serde_json::Deserializer::from_slice(&body);
            let message = match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Err(with_path) => with_path.to_string(),
                Ok(_) => e.to_string(),
            };
            ApiError::BadRequest(format!("malformed JSON body: {message}"))
        })
    }
}

/// Query extractor whose failures are `ApiError`s.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// Path extractor whose failures are `ApiError`s.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

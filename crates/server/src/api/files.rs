//! File endpoints: uploads (`/v1/files`), a job's artifacts (list, one file, a tar
//! archive), and the two agent routes, fenced by attempt: fetch an input, upload an
//! artifact. Bodies stream through in chunks both ways.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use drover_core::api::ErrorBody;
use drover_core::files::{check_workspace_path, is_sha256, FileInfo, FileList, InputSource};
use drover_core::spec::FieldError;
use drover_core::ValidJob;
use futures::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::{AgentCaller, Client, READ, SUBMIT};
use super::{ApiError, ApiPath, ApiQuery};
use crate::files::{file_key, FileStore, PutError};
use crate::state::AppState;
use crate::store::{NewFile, StoreError};

/// Query of `POST /v1/files`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// The file's name (shown in lists; jobs place it under their own path).
    #[serde(default)]
    pub name: Option<String>,
    /// The sha256 the content must have (hex); a mismatch stores nothing (400).
    #[serde(default)]
    pub sha256: Option<String>,
}

/// Query of `GET /v1/files`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    /// Most uploads listed, newest first (default 100, at most 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Query of the artifact reads.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsQuery {
    /// Only this attempt's artifacts. The archive defaults to the latest attempt that
    /// has any; the list to all attempts.
    #[serde(default)]
    pub attempt: Option<u32>,
}

/// Query of an agent's artifact upload.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ArtifactUpload {
    /// Path relative to the workspace.
    pub path: String,
    #[serde(default)]
    pub sha256: Option<String>,
}

/// Longest upload name.
const MAX_FILE_NAME: usize = 1024;

fn put_error(files: &FileStore, e: PutError, what: &str, server_limit: u64) -> ApiError {
    match e {
        PutError::TooLarge { limit } => too_large(limit, what, server_limit),
        PutError::Sha256 { .. } | PutError::Body(_) => ApiError::BadRequest(format!("{what}: {e}")),
        PutError::Store(detail) => unavailable(files, what, &detail),
    }
}

/// `what` is over `limit`: the server's file size limit, or what is left of an
/// attempt's artifact limit.
fn too_large(limit: u64, what: &str, server_limit: u64) -> ApiError {
    if limit >= server_limit {
        ApiError::TooLarge(format!(
            "{what} is larger than the server's file size limit of {limit} bytes ({}); the server's --max-file-size sets it",
            human_bytes(limit)
        ))
    } else {
        ApiError::TooLarge(format!(
            "{what} is larger than the {limit} bytes ({}) left of this attempt's artifact limit",
            human_bytes(limit)
        ))
    }
}

/// The file store failed while reading or writing `what`: 503, naming the store, as
/// it may work again later. The store's own error goes to the server log.
fn unavailable(files: &FileStore, what: &str, detail: &str) -> ApiError {
    tracing::warn!(store = files.location(), what, error = %detail, "the file store failed");
    let store = if files.is_remote() {
        format!("the object store {}", files.location())
    } else {
        "the server's file store (its data directory)".to_string()
    };
    ApiError::ServiceUnavailable(format!("{what}: {store} is unavailable; try again later"))
}

/// `1.5 GiB`, for messages.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn check_sha256(sha: Option<&str>) -> Result<(), ApiError> {
    match sha {
        Some(s) if !is_sha256(s) => Err(ApiError::BadRequest(format!(
            "sha256 {s:?} is not 64 hexadecimal digits"
        ))),
        _ => Ok(()),
    }
}

/// Refuses a body whose declared length is over `limit` before reading any of it.
fn check_declared(
    headers: &HeaderMap,
    limit: u64,
    what: &str,
    server_limit: u64,
) -> Result<(), ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(too_large(limit, what, server_limit)),
        _ => Ok(()),
    }
}

/// Upload a file
///
/// Stores the request body as an upload that jobs can take as an input
/// (`inputs[].from.file`). The body streams through to the file store in chunks, so
/// files larger than memory work; a `Content-Length` over the server's file size limit
/// is refused before any of it is read. With `sha256`, content that hashes differently
/// is refused and nothing is stored. Not idempotent: each upload gets a new id.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(post, path = "/v1/files", tag = "files", params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The file's bytes, streamed"),
    responses(
        (status = 201, description = "Stored; the file's id, size and sha256", body = FileInfo),
        (status = 400, description = "`bad_request`: a bad `name` or `sha256`, an unknown query parameter, the content's sha256 differs from `sha256`, or the body broke off", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 413, description = "`too_large`: larger than the server's file size limit", body = ErrorBody),
        (status = 500, description = "`internal`: the database failed; the message quotes a request id", body = ErrorBody),
        (status = 503, description = "`unavailable`: the object store (or the server's file store) failed; nothing was stored, try again later", body = ErrorBody)),
    security(("token" = [])))]
pub async fn upload(
    State(state): State<AppState>,
    Client(_caller): Client<SUBMIT>,
    ApiQuery(q): ApiQuery<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<FileInfo>), ApiError> {
    let name = q.name.unwrap_or_else(|| "upload".to_string());
    if name.is_empty() || name.len() > MAX_FILE_NAME || name.contains(['\0', '/']) {
        return Err(ApiError::BadRequest(format!(
            "file name {name:?} must be 1 to {MAX_FILE_NAME} bytes without `/` or NUL"
        )));
    }
    check_sha256(q.sha256.as_deref())?;
    let limit = state.config.max_file_bytes;
    check_declared(&headers, limit, "the upload", limit)?;
    let id = uuid::Uuid::now_v7().to_string();
    let stored = state
        .files
        .put(
            &file_key(&id),
            body.into_data_stream(),
            limit,
            q.sha256.as_deref(),
        )
        .await
        .map_err(|e| put_error(&state.files, e, "the upload", limit))?;
    let new = NewFile {
        id: &id,
        name: &name,
        size: stored.size,
        sha256: &stored.sha256,
    };
    match state.store.add_upload(new, Utc::now()).await {
        Ok(info) => Ok((StatusCode::CREATED, Json(info))),
        Err(e) => {
            let _ = state.files.delete(&file_key(&id)).await;
            Err(e.into())
        }
    }
}

/// List uploads
///
/// Uploaded files, newest first (artifacts are listed per job).
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/files", tag = "files", params(FilesQuery),
    responses(
        (status = 200, description = "Uploads, newest first", body = FileList),
        (status = 400, description = "`bad_request`: a query parameter does not parse, an unknown one, or `limit` outside 1..=1000", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn list(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiQuery(q): ApiQuery<FilesQuery>,
) -> Result<Json<FileList>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > 1000 {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    Ok(Json(FileList {
        files: state.store.uploads(limit).await?,
    }))
}

/// Download a file
///
/// The bytes of an upload or an artifact, streamed, with `Content-Length`, a
/// `Content-Disposition` file name, and their sha256 in `X-Drover-Sha256`.
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/files/{id}", tag = "files", params(("id" = String, Path, description = "File id")),
    responses(
        (status = 200, description = "The bytes; `X-Drover-Sha256` carries their sha256", content_type = "application/octet-stream"),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no file with this id, or its bytes are gone from the file store", body = ErrorBody),
        (status = 500, description = "`internal`: the database failed; the message quotes a request id", body = ErrorBody),
        (status = 503, description = "`unavailable`: the object store (or the server's file store) cannot be read now; try again later", body = ErrorBody)),
    security(("token" = [])))]
pub async fn download(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let info = state.store.file(&id).await?;
    send_file(&state, &info).await
}

/// Delete a file
///
/// Forgets a file and deletes its bytes. An upload that a job not yet ended takes as an
/// input is kept, since that job would fail without it.
/// Token: a client token with scope `submit` (or `admin`).
#[utoipa::path(delete, path = "/v1/files/{id}", tag = "files", params(("id" = String, Path, description = "File id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `submit`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no file with this id", body = ErrorBody),
        (status = 409, description = "`conflict`: the file is an input of a job that has not ended", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn delete(
    State(state): State<AppState>,
    Client(_caller): Client<SUBMIT>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    state.store.remove_file(&id).await?;
    state
        .files
        .delete(&file_key(&id))
        .await
        .map_err(ApiError::Internal)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Streams a stored file with its length and sha256.
async fn send_file(state: &AppState, info: &FileInfo) -> Result<Response, ApiError> {
    let (size, stream) = state
        .files
        .get(&file_key(&info.id))
        .await
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => ApiError::NotFound(format!(
                "the bytes of file {} are gone from the file store",
                info.id
            )),
            e => unavailable(&state.files, &format!("file {}", info.id), &e.to_string()),
        })?;
    let base = info.name.rsplit('/').next().unwrap_or("file");
    let safe: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{safe}\""),
            ),
            (
                header::HeaderName::from_static("x-drover-sha256"),
                info.sha256.clone(),
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}

/// List a job's artifacts
///
/// The files the job's attempts uploaded, by attempt then path; of one attempt with
/// `attempt` (an attempt without artifacts gives an empty list). Download each with
/// `GET /v1/files/{id}`.
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts", tag = "files",
    params(("id" = String, Path, description = "Job id"), ArtifactsQuery),
    responses(
        (status = 200, description = "The job's artifacts, by attempt then path", body = FileList),
        (status = 400, description = "`bad_request`: a path or query parameter does not parse, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn artifacts(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ArtifactsQuery>,
) -> Result<Json<FileList>, ApiError> {
    state.store.job(&id).await?;
    Ok(Json(FileList {
        files: state.store.artifacts(&id, q.attempt).await?,
    }))
}

/// Download a job's artifacts as a tar archive
///
/// One attempt's artifacts (default: the latest attempt that has any) as a tar archive
/// streamed with its `Content-Length`, named `JOB-attempt-N-artifacts.tar`. A store
/// failure during the download breaks the connection off.
/// Token: a client token with scope `read` (or `submit` or `admin`), or a signed-in
/// dashboard session.
#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts.tar", tag = "files",
    params(("id" = String, Path, description = "Job id"), ArtifactsQuery),
    responses(
        (status = 200, description = "A tar archive of one attempt's artifacts", content_type = "application/x-tar"),
        (status = 400, description = "`bad_request`: a path or query parameter does not parse, or an unknown query parameter", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `read`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id, or it (or the attempt asked for) has no artifacts", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn archive(
    State(state): State<AppState>,
    Client(_caller): Client<READ>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ArtifactsQuery>,
) -> Result<Response, ApiError> {
    state.store.job(&id).await?;
    let mut files = state.store.artifacts(&id, q.attempt).await?;
    let Some(latest) = files.iter().filter_map(|f| f.attempt).max() else {
        return Err(ApiError::NotFound(format!("job {id} has no artifacts")));
    };
    let attempt = q.attempt.unwrap_or(latest);
    files.retain(|f| f.attempt == Some(attempt));
    let total: u64 = files
        .iter()
        .map(|f| {
            tar_header(&f.name, f.size, f.created_at.timestamp()).len() as u64 + padded(f.size)
        })
        .sum::<u64>()
        + 1024;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let store = state.files.clone();
    tokio::spawn(async move {
        for f in files {
            let head = tar_header(&f.name, f.size, f.created_at.timestamp());
            if tx.send(Ok(Bytes::from(head))).await.is_err() {
                return;
            }
            let mut sent = 0u64;
            match store.get(&file_key(&f.id)).await {
                Ok((_, mut s)) => {
                    while let Some(chunk) = s.next().await {
                        let chunk = chunk.map_err(std::io::Error::other);
                        if let Ok(c) = &chunk {
                            sent += c.len() as u64;
                        }
                        if tx.send(chunk).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e))).await;
                    return;
                }
            }
            if sent != f.size {
                let _ = tx
                    .send(Err(std::io::Error::other(format!(
                        "artifact {} changed size while it was read",
                        f.name
                    ))))
                    .await;
                return;
            }
            let pad = (padded(f.size) - f.size) as usize;
            if pad > 0 && tx.send(Ok(Bytes::from(vec![0u8; pad]))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(Bytes::from(vec![0u8; 1024]))).await;
    });
    let name = format!("{}-attempt-{attempt}-artifacts.tar", id);
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-tar".to_string()),
            (header::CONTENT_LENGTH, total.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
        .into_response())
}

/// `size` rounded up to tar's 512-byte blocks.
fn padded(size: u64) -> u64 {
    size.div_ceil(512) * 512
}

/// The tar header block(s) of a regular file: a GNU long-name entry first when the
/// path does not fit the header's 100 bytes.
fn tar_header(path: &str, size: u64, mtime: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let mut head = tar::Header::new_gnu();
    head.set_size(size);
    head.set_mode(0o644);
    head.set_mtime(mtime.max(0) as u64);
    head.set_entry_type(tar::EntryType::Regular);
    let name = path.as_bytes();
    if name.len() >= 100 {
        let mut long = tar::Header::new_gnu();
        let link = b"././@LongLink";
        long.as_gnu_mut().expect("a GNU header").name[..link.len()].copy_from_slice(link);
        long.set_mode(0o644);
        long.set_size(name.len() as u64 + 1);
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_cksum();
        out.extend_from_slice(long.as_bytes());
        let mut data = name.to_vec();
        data.push(0);
        data.resize(padded(data.len() as u64) as usize, 0);
        out.extend_from_slice(&data);
    }
    let short = &name[..name.len().min(99)];
    head.as_gnu_mut().expect("a GNU header").name[..short.len()].copy_from_slice(short);
    head.set_cksum();
    out.extend_from_slice(head.as_bytes());
    out
}

/// Fetch an input file of an attempt
///
/// For the agent running the attempt: the bytes of the job's input number `index` when
/// it is an uploaded file (inputs from URLs the agent fetches itself), streamed, with
/// their sha256 in `X-Drover-Sha256`. Fenced: only the agent holding the attempt, and
/// only while it is the job's current one.
/// Token: the agent's session token from register.
#[utoipa::path(get, path = "/v1/jobs/{id}/attempts/{attempt}/inputs/{index}", tag = "agents",
    params(("id" = String, Path, description = "Job id"), ("attempt" = u32, Path, description = "Attempt number"), ("index" = usize, Path, description = "Index in the job's `inputs`")),
    responses(
        (status = 200, description = "The uploaded file's bytes; `X-Drover-Sha256` carries their sha256", content_type = "application/octet-stream"),
        (status = 400, description = "`bad_request`: a path parameter does not parse, or that input is not an uploaded file", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown session token (register again)", body = ErrorBody),
        (status = 403, description = "`forbidden`: a client token, not an agent session token; or the attempt is held by another agent", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id, no input with this index, or the file (or its bytes) was deleted", body = ErrorBody),
        (status = 409, description = "`stale_attempt`: the attempt is no longer the job's current one; kill it", body = ErrorBody),
        (status = 500, description = "`internal`: the database failed; the message quotes a request id", body = ErrorBody),
        (status = 503, description = "`unavailable`: the object store (or the server's file store) cannot be read now; try again later", body = ErrorBody)),
    security(("token" = [])))]
pub async fn input(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    ApiPath((id, attempt, index)): ApiPath<(String, u32, usize)>,
) -> Result<Response, ApiError> {
    state.store.check_attempt(&agent.id, &id, attempt).await?;
    let job = state.store.job(&id).await?;
    let input = job
        .inputs
        .get(index)
        .ok_or_else(|| ApiError::NotFound(format!("job {id} has no input {index}")))?;
    let InputSource::File(file_id) = &input.from else {
        return Err(ApiError::BadRequest(format!(
            "input {index} of job {id} is not an uploaded file; the agent fetches it itself"
        )));
    };
    // Only a missing file is the agent's 404; a failing database is a 500 it retries.
    let info = state.store.file(file_id).await.map_err(|e| match e {
        StoreError::NotFound(_) => ApiError::NotFound(format!(
            "input {} was deleted from the server",
            input.describe()
        )),
        e => e.into(),
    })?;
    send_file(&state, &info).await
}

/// Upload an artifact of an attempt
///
/// For the agent running the attempt: stores the body as the artifact at `path`
/// (relative to the workspace), streamed. An earlier upload of the same path by this
/// attempt is replaced, so a retried upload is harmless. Limited by the server's file
/// size limit and the attempt's artifact count and bytes. Fenced: only the agent
/// holding the attempt, and only while it is the job's current one.
/// Token: the agent's session token from register.
#[utoipa::path(post, path = "/v1/jobs/{id}/attempts/{attempt}/artifacts", tag = "agents",
    params(("id" = String, Path, description = "Job id"), ("attempt" = u32, Path, description = "Attempt number"), ArtifactUpload),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The artifact's bytes, streamed"),
    responses(
        (status = 201, description = "Stored (an earlier upload of the same path by this attempt is replaced)", body = FileInfo),
        (status = 400, description = "`bad_request`: a path or query parameter does not parse (or `path` is missing), an unknown query parameter, `path` is not a plain relative path inside the workspace, a bad `sha256`, the content's sha256 differs from it, or the body broke off", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown session token (register again)", body = ErrorBody),
        (status = 403, description = "`forbidden`: a client token, not an agent session token; or the attempt is held by another agent", body = ErrorBody),
        (status = 404, description = "`not_found`: no job with this id", body = ErrorBody),
        (status = 409, description = "`stale_attempt`: the attempt is no longer the job's current one; kill it", body = ErrorBody),
        (status = 413, description = "`too_large`: over the server's file size limit, or the attempt's artifact count or bytes limit", body = ErrorBody),
        (status = 500, description = "`internal`: the database failed; the message quotes a request id", body = ErrorBody),
        (status = 503, description = "`unavailable`: the object store (or the server's file store) failed; nothing was stored, try again later", body = ErrorBody)),
    security(("token" = [])))]
pub async fn upload_artifact(
    State(state): State<AppState>,
    AgentCaller(agent): AgentCaller,
    ApiPath((id, attempt)): ApiPath<(String, u32)>,
    ApiQuery(q): ApiQuery<ArtifactUpload>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<FileInfo>), ApiError> {
    check_workspace_path(&q.path)
        .map_err(|m| ApiError::BadRequest(format!("artifact path {:?} {m}", q.path)))?;
    check_sha256(q.sha256.as_deref())?;
    state.store.check_attempt(&agent.id, &id, attempt).await?;
    let limits = state.config.artifact_limits;
    let room = state
        .store
        .artifact_room(&id, attempt, &q.path, limits)
        .await?;
    let server_limit = state.config.max_file_bytes;
    let what = format!("artifact {}", q.path);
    check_declared(&headers, room.min(server_limit), &what, server_limit)?;
    let file_id = uuid::Uuid::now_v7().to_string();
    let key = file_key(&file_id);
    let stored = state
        .files
        .put(
            &key,
            body.into_data_stream(),
            room.min(server_limit),
            q.sha256.as_deref(),
        )
        .await
        .map_err(|e| put_error(&state.files, e, &what, server_limit))?;
    let new = NewFile {
        id: &file_id,
        name: &q.path,
        size: stored.size,
        sha256: &stored.sha256,
    };
    match state
        .store
        .add_artifact(&agent.id, &id, attempt, new, limits, Utc::now())
        .await
    {
        Ok((info, replaced)) => {
            if let Some(old) = replaced {
                if let Err(e) = state.files.delete(&file_key(&old)).await {
                    tracing::warn!(file = %old, error = %e, "cannot delete a replaced artifact's bytes");
                }
            }
            Ok((StatusCode::CREATED, Json(info)))
        }
        Err(e) => {
            let _ = state.files.delete(&key).await;
            Err(e.into())
        }
    }
}

/// Refuses jobs whose inputs name uploads that do not exist, each listed.
pub async fn check_uploads(state: &AppState, jobs: &[(String, &ValidJob)]) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    for (prefix, job) in jobs {
        for (i, input) in job.inputs.iter().enumerate() {
            if let InputSource::File(fid) = &input.from {
                if !state.store.upload_exists(fid).await? {
                    errors.push(FieldError {
                        field: format!("{prefix}inputs[{i}].from.file"),
                        message: format!(
                            "no uploaded file has id {fid:?} (upload it with POST /v1/files first)"
                        ),
                    });
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::InvalidSpec(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_headers_hold_short_and_long_paths() {
        let short = tar_header("out/a.txt", 5, 0);
        assert_eq!(short.len(), 512);
        let mut archive = short.clone();
        archive.extend_from_slice(b"hello");
        archive.resize(1024, 0);
        let long_name = format!("{}/b.txt", "d".repeat(150));
        let long = tar_header(&long_name, 3, 0);
        assert_eq!(long.len(), 512 * 3);
        archive.extend_from_slice(&long);
        archive.extend_from_slice(b"abc");
        archive.resize(archive.len() + 509 + 1024, 0);
        let mut read = tar::Archive::new(&archive[..]);
        let names: Vec<String> = read
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["out/a.txt".to_string(), long_name]);
    }
}

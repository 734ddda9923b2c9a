//! Admin endpoints: tokens, agent removal, the audit trail.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use drover_core::api::{
    AuditEntry, AuditPage, AuditQuery, CreateTokenRequest, CreatedToken, ErrorBody, TokenList,
    TokenView,
};

use super::auth::{hash_token, new_token, Client, ADMIN};
use super::{ApiError, ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;
use crate::store::{NewToken, TokenInfo};
use crate::Scope;

const BOOTSTRAP_DEFAULT_SECS: u64 = 15 * 60;
const BOOTSTRAP_MAX_SECS: u64 = 24 * 3600;

fn view(t: TokenInfo) -> TokenView {
    TokenView {
        id: t.id,
        name: t.name,
        scope: t.scope,
        created_at: t.created_at,
        expires_at: t.expires_at,
        revoked_at: t.revoked_at,
        used_at: t.used_at,
        labels: t.labels,
    }
}

/// Create a token
///
/// A new client token of scope `read`, `submit`, `admin`, `join` (agents register) or
/// `bootstrap` (registers one agent, once, with the labels bound to it; 15 minutes by
/// default, at most a day). The secret is in this answer only; the server keeps its
/// hash.
/// Token: a client token with scope `admin`.
#[utoipa::path(post, path = "/v1/tokens", tag = "admin", request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "The token; its secret is shown only here", body = CreatedToken),
        (status = 400, description = "`bad_request`: malformed JSON body (not JSON, wrong types, missing fields, unknown fields) or no `Content-Type: application/json`, an unknown scope, a name that is empty or over 256 bytes, labels on a token that is not a bootstrap token, `expires_in_secs` of 0, or a bootstrap token living over a day", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `admin`, or it is an agent's session token", body = ErrorBody),
        (status = 413, description = "`too_large`: the body is over the server's request body limit", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn create_token(
    State(state): State<AppState>,
    Client(caller): Client<ADMIN>,
    ApiJson(req): ApiJson<CreateTokenRequest>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let scope = Scope::parse(&req.scope).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "scope {:?} is not read, submit, admin, join or bootstrap",
            req.scope
        ))
    })?;
    if req.name.trim().is_empty() || req.name.len() > 256 {
        return Err(ApiError::BadRequest(
            "token name must be 1 to 256 bytes".into(),
        ));
    }
    if !req.labels.is_empty() && scope != Scope::Bootstrap {
        return Err(ApiError::BadRequest(
            "labels can only be bound to bootstrap tokens".into(),
        ));
    }
    let secs = match (scope, req.expires_in_secs) {
        (_, Some(0)) => {
            return Err(ApiError::BadRequest(
                "expires_in_secs must be greater than 0".into(),
            ))
        }
        (Scope::Bootstrap, Some(s)) if s > BOOTSTRAP_MAX_SECS => {
            return Err(ApiError::BadRequest(format!(
                "bootstrap tokens live at most {BOOTSTRAP_MAX_SECS} s"
            )))
        }
        (Scope::Bootstrap, None) => Some(BOOTSTRAP_DEFAULT_SECS),
        (_, s) => s,
    };
    let now = Utc::now();
    let expires_at = secs.map(|s| now + chrono::Duration::seconds(s.min(100 * 365 * 86400) as i64));
    let prefix = match scope {
        Scope::Bootstrap => "drb_",
        Scope::Join => "drj_",
        _ => "drc_",
    };
    let secret = new_token(prefix);
    let info = state
        .store
        .create_token(
            &NewToken {
                name: req.name,
                scope: scope.as_str().into(),
                hash: hash_token(&secret),
                expires_at,
                labels: req.labels,
            },
            &caller.actor,
            now,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: secret,
            info: view(info),
        }),
    ))
}

/// List tokens
///
/// Every token, newest first, without secrets: scope, expiry, revocation, use.
/// Token: a client token with scope `admin`, or a signed-in dashboard session of one.
#[utoipa::path(get, path = "/v1/tokens", tag = "admin",
    responses(
        (status = 200, description = "Every token, newest first", body = TokenList),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `admin`, or it is an agent's session token", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn list_tokens(
    State(state): State<AppState>,
    Client(_caller): Client<ADMIN>,
) -> Result<Json<TokenList>, ApiError> {
    Ok(Json(TokenList {
        tokens: state
            .store
            .list_tokens()
            .await?
            .into_iter()
            .map(view)
            .collect(),
    }))
}

/// Revoke a token
///
/// The token fails from its next request on. The last working admin token cannot be
/// revoked (create another first), and a revoked token cannot be revoked again.
/// Token: a client token with scope `admin`.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "admin", params(("id" = String, Path, description = "Token id")),
    responses(
        (status = 200, description = "Revoked", body = TokenView),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `admin`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no token with this id", body = ErrorBody),
        (status = 409, description = "`conflict`: already revoked, or the last working admin token", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn revoke_token(
    State(state): State<AppState>,
    Client(caller): Client<ADMIN>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<TokenView>, ApiError> {
    Ok(Json(view(
        state
            .store
            .revoke_token(&id, &caller.actor, Utc::now())
            .await?,
    )))
}

/// Remove an agent
///
/// Forgets the agent: its session token stops working, a poll it holds ends with 401
/// and no leases, and the attempts it held are lost (retried where attempts remain).
/// Token: a client token with scope `admin`.
#[utoipa::path(delete, path = "/v1/agents/{id}", tag = "admin", params(("id" = String, Path, description = "Agent id")),
    responses(
        (status = 204, description = "Removed; its attempts are lost and retried where attempts remain"),
        (status = 400, description = "`bad_request`: a path parameter does not parse", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `admin`, or it is an agent's session token", body = ErrorBody),
        (status = 404, description = "`not_found`: no agent with this id", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn remove_agent(
    State(state): State<AppState>,
    Client(caller): Client<ADMIN>,
    ApiPath(id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    remove_agent_now(&state, &id, &caller.actor).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Removes an agent; the jobs it held go back to the queue (the API's and the
/// dashboard's remove).
pub(crate) async fn remove_agent_now(
    state: &AppState,
    id: &str,
    actor: &str,
) -> Result<(), crate::store::StoreError> {
    state.store.remove_agent(id, actor, Utc::now()).await?;
    state.hub.wake_agent(id);
    state.hub.work_available();
    Ok(())
}

/// Read the audit trail
///
/// Who did what, newest first: token, job, group, agent and other changes. Paginated:
/// pass a page's `next_before` as `before` to get older entries; it is absent on the
/// last page.
/// Token: a client token with scope `admin`, or a signed-in dashboard session of one.
#[utoipa::path(get, path = "/v1/audit", tag = "admin", params(AuditQuery),
    responses(
        (status = 200, description = "Audit entries, newest first", body = AuditPage),
        (status = 400, description = "`bad_request`: a query parameter does not parse, or `limit` outside 1..=1000", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, a malformed `Authorization` header, or an unknown, revoked or expired token (or an ended dashboard session)", body = ErrorBody),
        (status = 403, description = "`forbidden`: the token's scope does not cover `admin`, or it is an agent's session token", body = ErrorBody),
        (status = 500, description = "`internal`: the database or the file store failed; the message quotes a request id", body = ErrorBody)),
    security(("token" = [])))]
pub async fn audit(
    State(state): State<AppState>,
    Client(_caller): Client<ADMIN>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(
            "limit must be between 1 and 1000".into(),
        ));
    }
    let entries: Vec<AuditEntry> = state
        .store
        .audit(q.before, limit)
        .await?
        .into_iter()
        .map(|e| AuditEntry {
            id: e.id,
            at: e.at,
            actor: e.actor,
            action: e.action,
            target: e.target,
            detail: e.detail,
        })
        .collect();
    let next_before = (entries.len() as u32 == limit)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    Ok(Json(AuditPage {
        entries,
        next_before,
    }))
}

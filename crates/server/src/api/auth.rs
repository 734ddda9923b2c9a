//! Who is calling: client tokens with scopes, agent session tokens.

use axum::http::HeaderMap;
use chrono::Utc;
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::state::AppState;
use crate::store::{AgentAuth, TokenInfo};
use crate::Scope;

/// Hex SHA-256 of a token; only this is stored.
pub fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A fresh random token with a readable prefix (`drc_` client, `dra_` agent session).
pub fn new_token(prefix: &str) -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::thread_rng().gen();
    format!("{prefix}{}", hex::encode(bytes))
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Bootstrap => "bootstrap",
            Scope::Join => "join",
            Scope::Read => "read",
            Scope::Submit => "submit",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Some(match s {
            "bootstrap" => Scope::Bootstrap,
            "join" => Scope::Join,
            "read" => Scope::Read,
            "submit" => Scope::Submit,
            "admin" => Scope::Admin,
            _ => return None,
        })
    }

    /// Whether a token of this scope may do what `needed` allows.
    fn covers(self, needed: Scope) -> bool {
        match needed {
            Scope::Bootstrap => self == Scope::Bootstrap,
            Scope::Join => matches!(self, Scope::Join | Scope::Bootstrap | Scope::Admin),
            Scope::Read => matches!(self, Scope::Read | Scope::Submit | Scope::Admin),
            Scope::Submit => matches!(self, Scope::Submit | Scope::Admin),
            Scope::Admin => self == Scope::Admin,
        }
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::Unauthorized("missing token: send `Authorization: Bearer <token>`".into())
        })?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "malformed Authorization header: expected `Bearer <token>`".into(),
            )
        })
}

/// An authenticated client.
#[derive(Debug)]
pub struct Caller {
    /// `token:<name>`, as the audit trail and job events name it.
    pub actor: String,
    pub scope: Scope,
    pub token: TokenInfo,
}

/// Checks a client token for `needed`.
pub async fn require(
    state: &AppState,
    headers: &HeaderMap,
    needed: Scope,
) -> Result<Caller, ApiError> {
    let secret = bearer(headers)?;
    let hash = hash_token(secret);
    match state.store.token_by_hash(&hash).await? {
        Some(token) => authorize(token, needed),
        // Looked up only on the way to an error: the message says what went wrong.
        None if state.store.agent_by_token(&hash).await?.is_some() => Err(ApiError::Forbidden(
            "this is an agent's session token, which only agent routes take; use a client token (drover token create)".into(),
        )),
        None => Err(ApiError::Unauthorized("unknown token".into())),
    }
}

/// The name of the dashboard's session cookie.
pub const SESSION_COOKIE: &str = "drover_session";

/// The value of the session cookie, if the request has one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Checks a dashboard session for `needed`; the caller and the session's CSRF secret.
pub async fn require_session(
    state: &AppState,
    headers: &HeaderMap,
    needed: Scope,
) -> Result<(Caller, String), ApiError> {
    let secret =
        session_cookie(headers).ok_or_else(|| ApiError::Unauthorized("not signed in".into()))?;
    let (token, csrf) = state
        .store
        .session(&hash_token(secret), Utc::now())
        .await?
        .ok_or_else(|| ApiError::Unauthorized("the session has ended; sign in again".into()))?;
    Ok((authorize(token, needed)?, csrf))
}

/// Whether `token` may do what `needed` allows: not revoked, not expired, in scope.
fn authorize(token: TokenInfo, needed: Scope) -> Result<Caller, ApiError> {
    if token.revoked_at.is_some() {
        return Err(ApiError::Unauthorized("this token was revoked".into()));
    }
    if token.expires_at.is_some_and(|t| t <= Utc::now()) {
        return Err(ApiError::Unauthorized("this token has expired".into()));
    }
    let scope = Scope::parse(&token.scope).unwrap_or(Scope::Read);
    if !scope.covers(needed) {
        return Err(ApiError::Forbidden(format!(
            "token {:?} has scope {}, but this needs {}",
            token.name,
            scope.as_str(),
            needed.as_str()
        )));
    }
    if scope == Scope::Bootstrap && token.used_at.is_some() {
        return Err(ApiError::Unauthorized(
            "this bootstrap token was already used; bootstrap tokens work once".into(),
        ));
    }
    Ok(Caller {
        actor: format!("token:{}", token.name),
        scope,
        token,
    })
}

/// Checks an agent session token.
pub async fn require_agent(state: &AppState, headers: &HeaderMap) -> Result<AgentAuth, ApiError> {
    let secret = bearer(headers)?;
    let hash = hash_token(secret);
    match state.store.agent_by_token(&hash).await? {
        Some(agent) => Ok(agent),
        None if state.store.token_by_hash(&hash).await?.is_some() => Err(ApiError::Forbidden(
            "this is a client token; agent routes take the session token POST /v1/agents/register returns".into(),
        )),
        None => Err(ApiError::Unauthorized(UNKNOWN_AGENT.into())),
    }
}

/// What an agent the server does not know (never registered, removed, pruned) is told.
pub(crate) const UNKNOWN_AGENT: &str = "unknown agent session token; register again";

/// Scope a [`Client`] extractor demands (const generic values).
pub const READ: u8 = 0;
pub const SUBMIT: u8 = 1;
pub const ADMIN: u8 = 2;
pub const JOIN: u8 = 3;

/// Extractor: a client token with scope `S`. Runs before any body is parsed, so a
/// request without the right token gets 401/403, never a 400 about its body.
pub struct Client<const S: u8>(pub Caller);

impl<const S: u8> axum::extract::FromRequestParts<AppState> for Client<S> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        let needed = match S {
            READ => Scope::Read,
            SUBMIT => Scope::Submit,
            ADMIN => Scope::Admin,
            _ => Scope::Join,
        };
        // A signed-in browser reads the API with its session cookie (the dashboard's
        // scripts and live streams); writes always need the token itself, so a page on
        // another site cannot make a browser act (CSRF).
        let safe = matches!(
            parts.method,
            axum::http::Method::GET | axum::http::Method::HEAD
        );
        let has_bearer = parts
            .headers
            .contains_key(axum::http::header::AUTHORIZATION);
        if safe && !has_bearer && session_cookie(&parts.headers).is_some() {
            return require_session(state, &parts.headers, needed)
                .await
                .map(|(caller, _)| Client(caller));
        }
        require(state, &parts.headers, needed).await.map(Client)
    }
}

/// Extractor: an agent session token.
pub struct AgentCaller(pub AgentAuth);

impl axum::extract::FromRequestParts<AppState> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, ApiError> {
        require_agent(state, &parts.headers).await.map(AgentCaller)
    }
}

//! The web dashboard, served by the server itself: pages rendered here with `maud`, one
//! stylesheet and one small script compiled into the binary (no Node, no CDN).
//!
//! Sign-in takes an API token and makes a session (the `drover_session` cookie:
//! HttpOnly, SameSite=Strict, Secure with TLS), stored hashed. Pages and the page's
//! scripts read with the session (the JSON API accepts it for GET requests, see
//! `api::auth`); every action is a form POST that carries the session's CSRF secret and
//! needs the submit scope, so a read token sees no buttons and is refused if it posts.

mod pages;
mod workloads;

use axum::extract::{FromRequestParts, State};
use axum::http::{header, request::Parts, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use chrono::Utc;
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use crate::api::auth::{self, Caller, SESSION_COOKIE};
use crate::api::ApiError;
use crate::state::AppState;
use crate::Scope;

/// How long a sign-in lasts.
const SESSION_HOURS: i64 = 12;

/// The dashboard's routes (merged into the API router).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/jobs", get(pages::jobs))
        .route("/jobs/{id}", get(pages::job))
        .route("/jobs/{id}/cancel", post(pages::cancel))
        .route("/jobs/{id}/retry", post(pages::retry))
        .route("/jobs/{id}/rerun", post(pages::rerun))
        .route("/agents", get(pages::agents))
        .route("/groups", get(workloads::groups))
        .route("/groups/{id}", get(workloads::group))
        .route("/groups/{id}/cancel", post(workloads::cancel_group))
        .route("/groups/{id}/retry", post(workloads::retry_group))
        .route("/schedules", get(workloads::schedules))
        .route("/agents/{id}/remove", post(pages::remove_agent))
        .route("/ui/app.css", get(css))
        .route("/ui/app.js", get(js))
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/app.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
}

/// A signed-in visitor: who, and the session's CSRF secret for forms.
pub struct Viewer {
    pub caller: Caller,
    pub csrf: String,
}

impl Viewer {
    /// Whether the viewer may act (cancel, retry): the submit scope.
    pub fn can_act(&self) -> bool {
        self.caller.scope >= Scope::Submit
    }

    /// Whether the viewer may remove agents: the admin scope.
    pub fn can_admin(&self) -> bool {
        self.caller.scope >= Scope::Admin
    }
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match auth::require_session(state, &parts.headers, Scope::Read).await {
            Ok((caller, csrf)) => Ok(Viewer { caller, csrf }),
            Err(ApiError::Forbidden(m)) => Err(error_page(StatusCode::FORBIDDEN, &m)),
            Err(ApiError::Unauthorized(_)) => Err(Redirect::to("/login").into_response()),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// A whole page: header with navigation and who is signed in, then `body`.
pub fn layout(title: &str, viewer: Option<&Viewer>, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · drover" }
                    link rel="stylesheet" href="/ui/app.css";
                    script src="/ui/app.js" defer {}
                }
                body {
                    header {
                        a href="/" { "drover" }
                        @if let Some(v) = viewer {
                            nav aria-label="main" {
                                a href="/" { "Overview" } " · "
                                a href="/jobs" { "Jobs" } " · "
                                a href="/groups" { "Groups" } " · "
                                a href="/schedules" { "Schedules" } " · "
                                a href="/agents" { "Agents" }
                            }
                            span.who { "signed in with " (v.caller.token.name) " (" (v.caller.scope.as_str()) ")" }
                            form method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

/// A page that says what went wrong.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    let body = html! {
        h1 { (status.canonical_reason().unwrap_or("Error")) }
        p.error role="alert" { (message) }
        p { a href="/jobs" { "Back to the jobs" } }
    };
    (status, layout("Error", None, body)).into_response()
}

fn login_form(message: Option<&str>) -> Html<String> {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(m) = message { p.error role="alert" { (m) } }
            form method="post" action="/login" {
                label for="token" { "API token (read, submit or admin)" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                p { button type="submit" { "Sign in" } }
            }
            p { "A token comes from " code { "drover up" } " (its admin token) or " code { "drover token create --scope read --name me" } "." }
        },
    )
}

async fn login_page() -> Html<String> {
    login_form(None)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(State(state): State<AppState>, Form(f): Form<LoginForm>) -> Response {
    let mut headers = HeaderMap::new();
    let bearer = format!("Bearer {}", f.token.trim());
    if let Ok(v) = bearer.parse() {
        headers.insert(header::AUTHORIZATION, v);
    }
    let caller = match auth::require(&state, &headers, Scope::Read).await {
        Ok(c) => c,
        Err(ApiError::Unauthorized(m) | ApiError::Forbidden(m)) => {
            let m = format!("That token does not sign in: {m}.");
            return (StatusCode::UNAUTHORIZED, login_form(Some(&m))).into_response();
        }
        Err(e) => return e.into_response(),
    };
    let secret = auth::new_token("drs_");
    let csrf = auth::new_token("");
    let now = Utc::now();
    let expires = now + chrono::Duration::hours(SESSION_HOURS);
    if let Err(e) = state
        .store
        .create_session(
            &auth::hash_token(&secret),
            &caller.token.id,
            &csrf,
            now,
            expires,
        )
        .await
    {
        return ApiError::from(e).into_response();
    }
    let secure = if state.config.tls.is_some() {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_HOURS * 3600
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/jobs")).into_response()
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Ok((_, csrf)) = auth::require_session(&state, &headers, Scope::Read).await {
        if csrf != f.csrf {
            return error_page(StatusCode::FORBIDDEN, "the form is not from this session");
        }
    }
    if let Some(secret) = auth::session_cookie(&headers) {
        let _ = state
            .store
            .delete_session(&auth::hash_token(secret), Utc::now())
            .await;
    }
    let expired = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, expired)], Redirect::to("/login")).into_response()
}

/// The refusal of an action whose form did not come from this session, or from a
/// viewer who may not act; None when it may go ahead.
pub fn refuse_action(viewer: &Viewer, form: &CsrfForm) -> Option<Response> {
    if form.csrf != viewer.csrf {
        return Some(error_page(
            StatusCode::FORBIDDEN,
            "the form is not from this session (CSRF check); reload the page and try again",
        ));
    }
    if !viewer.can_act() {
        return Some(error_page(
            StatusCode::FORBIDDEN,
            &format!(
                "token {:?} has scope {}; cancel, retry and run again need submit",
                viewer.caller.token.name,
                viewer.caller.scope.as_str()
            ),
        ));
    }
    None
}

//! The dashboard over HTTP: sign-in and sessions, pages, scopes and CSRF on actions, and
//! the JSON API read with a session cookie (never written with one).

mod common;

use common::{register, shell, Client};
use drover_server::testing::TestServer;
use reqwest::{header, StatusCode};
use serde_json::json;

/// A browser without redirects followed, so each answer can be checked.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `token`; the session cookie (`name=value`) and the raw Set-Cookie.
async fn sign_in(server: &TestServer, token: &str) -> (String, String) {
    let resp = browser()
        .post(format!("{}/login", server.url))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let set = resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    let cookie = set.split(';').next().unwrap().to_string();
    (cookie, set)
}

async fn page(server: &TestServer, cookie: &str, path: &str) -> (StatusCode, String) {
    let resp = browser()
        .get(format!("{}{path}", server.url))
        .header(header::COOKIE, cookie)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

async fn post_form(
    server: &TestServer,
    cookie: &str,
    path: &str,
    form: &[(&str, &str)],
) -> (StatusCode, String) {
    let resp = browser()
        .post(format!("{}{path}", server.url))
        .header(header::COOKIE, cookie)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.text().await.unwrap())
}

/// The CSRF secret a page's forms carry.
fn csrf(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a form with a csrf field")
        + 19;
    html[at..].split('"').next().unwrap().to_string()
}

#[tokio::test]
async fn sign_in_pages_scopes_and_csrf() {
    let server = TestServer::start().await;
    let admin = Client::new(&server, &server.admin_token);
    let (_, t) = admin
        .post("/v1/tokens", json!({"name": "viewer", "scope": "read"}))
        .await;
    let read_token = t["token"].as_str().unwrap().to_string();
    let mut spec = shell("sleep 30");
    spec["name"] = json!("nightly <build>");
    spec["labels"] = json!({"nobody": "has-this"});
    let job = admin.submit(spec).await;
    register(&server, "gpu-box", json!({})).await;

    // Without a session every page leads to the sign-in form.
    let (status, _) = page(&server, "", "/jobs").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, form) = page(&server, "", "/login").await;
    assert_eq!(status, StatusCode::OK);
    assert!(form.contains("name=\"token\""), "{form}");
    let (status, refused) = post_form(&server, "", "/login", &[("token", "drt_wrong")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        refused.contains("That token does not sign in: unknown token."),
        "{refused}"
    );

    // A read session sees the jobs (names escaped), the job, the agents; no buttons.
    let (cookie, set) = sign_in(&server, &read_token).await;
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let (status, list) = page(&server, &cookie, "/jobs").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        list.contains("nightly &lt;build&gt;") && list.contains(&job.id),
        "{list}"
    );
    let (_, filtered) = page(&server, &cookie, "/jobs?state=succeeded").await;
    assert!(!filtered.contains(&job.id), "filters apply");
    let (status, _) = page(&server, &cookie, &format!("/jobs?q={}", job.id)).await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "searching an id opens the job"
    );
    let (_, view) = page(&server, &cookie, &format!("/jobs/{}", job.id)).await;
    assert!(view.contains("<pre>sleep 30</pre>"), "{view}");
    assert!(
        !view.contains("id=\"cancel\""),
        "a read token sees no cancel button"
    );
    let (_, agents) = page(&server, &cookie, "/agents").await;
    assert!(
        agents.contains("gpu-box") && agents.contains("online"),
        "{agents}"
    );

    // It is refused when it posts anyway, even with its own CSRF secret.
    let token = csrf(&view);
    let cancel = format!("/jobs/{}/cancel", job.id);
    let (status, why) = post_form(&server, &cookie, &cancel, &[("csrf", &token)]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(why.contains("need submit"), "{why}");

    // The session reads the JSON API (the page's scripts do) but never writes it.
    let (status, _) = page(&server, &cookie, "/v1/jobs").await;
    assert_eq!(status, StatusCode::OK);
    let resp = browser()
        .post(format!("{}/v1/jobs/{}/cancel", server.url, job.id))
        .header(header::COOKIE, &cookie)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "no cookie writes (CSRF)"
    );

    // An admin session cancels from the page, with the form's CSRF secret only.
    let (admin_cookie, _) = sign_in(&server, &server.admin_token).await;
    let (_, view) = page(&server, &admin_cookie, &format!("/jobs/{}", job.id)).await;
    assert!(view.contains("id=\"cancel\""), "{view}");
    let (status, why) = post_form(&server, &admin_cookie, &cancel, &[("csrf", "forged")]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(why.contains("CSRF"), "{why}");
    assert_eq!(
        admin.job(&job.id).await.state,
        drover_core::JobState::Queued
    );
    let (status, _) = post_form(&server, &admin_cookie, &cancel, &[("csrf", &csrf(&view))]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        admin.job(&job.id).await.state,
        drover_core::JobState::Canceled
    );
    let (_, view) = page(&server, &admin_cookie, &format!("/jobs/{}", job.id)).await;
    assert!(view.contains("id=\"retry\""), "an ended job offers retry");

    // Run again: a new job with the same spec, whatever the first one's state.
    let rerun = format!("/jobs/{}/rerun", job.id);
    let resp = browser()
        .post(format!("{}{rerun}", server.url))
        .header(header::COOKIE, &admin_cookie)
        .form(&[("csrf", csrf(&view).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let to = resp.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_string();
    let new_id = to.trim_start_matches("/jobs/").to_string();
    assert_ne!(new_id, job.id);
    let again = admin.job(&new_id).await;
    assert_eq!(
        (again.name.as_str(), again.state),
        ("nightly <build>", drover_core::JobState::Queued)
    );
    assert_eq!(again.exec, admin.job(&job.id).await.exec);

    // An offline agent can be removed from the agents page by an admin.
    let gone = register(&server, "gone-box", json!({})).await;
    let (_, me) = gone.post("/v1/agents/leave", json!({})).await;
    assert!(me.is_null() || me.is_string(), "{me}");
    let (_, agents) = page(&server, &admin_cookie, "/agents").await;
    let listed = admin.get("/v1/agents").await.1;
    let gone_id = listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "gone-box")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        agents.contains(&format!("/agents/{gone_id}/remove")),
        "{agents}"
    );
    let (status, _) = post_form(
        &server,
        &admin_cookie,
        &format!("/agents/{gone_id}/remove"),
        &[("csrf", &csrf(&agents))],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let listed = admin.get("/v1/agents").await.1;
    assert!(listed["agents"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["id"] != gone_id.as_str()));

    // Signing out ends the session.
    let (status, _) = post_form(&server, &cookie, "/logout", &[("csrf", &csrf(&list))]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (status, _) = page(&server, &cookie, "/jobs").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "back to the sign-in form");

    // The script and stylesheet come from the binary.
    let resp = browser()
        .get(format!("{}/ui/app.js", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    assert!(resp.text().await.unwrap().contains("EventSource"));
}

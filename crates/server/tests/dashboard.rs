//! The dashboard over HTTP: sign-in and sessions, pages, scopes and CSRF on actions, and
//! the JSON API read with a session cookie (never written with one).

mod common;

use common::{register, shell, sse_until, Client};
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

#[tokio::test]
async fn overview_wait_reasons_progress_history_log_tail_and_live_streams() {
    let server = TestServer::start().await;
    let admin = Client::new(&server, &server.admin_token);
    let (cookie, _) = sign_in(&server, &server.admin_token).await;

    // A job no agent can take says why, in the API and on the overview.
    let mut gpu = shell("true");
    gpu["labels"] = json!({"gpu": "a100"});
    gpu["queue"] = json!("train");
    let waiting = admin.submit(gpu).await;
    let agent = register(&server, "cpu-box", json!({"gpu": "none"})).await;
    let (_, v) = admin.get(&format!("/v1/jobs/{}", waiting.id)).await;
    assert_eq!(v["wait_reason"], "no online agent takes queue train", "{v}");
    let (status, overview) = page(&server, &cookie, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        overview.contains("id=\"queue-train\"")
            && overview.contains("no online agent takes queue train (1 job)"),
        "{overview}"
    );
    assert!(overview.contains("<svg"), "charts: {overview}");

    // The jobs list's stream announces a new job that matches its filters only.
    let watch = browser()
        .get(format!("{}/v1/jobs/stream?queue=default", server.url))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    let other = {
        let mut s = shell("true");
        s["queue"] = json!("elsewhere");
        admin.submit(s).await
    };
    let job = admin.submit(shell("echo hi")).await;
    let seen = sse_until(watch, |ev| {
        ev.iter().any(|(k, d)| k == "job" && d.contains(&job.id))
    })
    .await;
    assert!(
        seen.iter().all(|(_, d)| !d.contains(&other.id)),
        "a job of another queue is filtered out: {seen:?}"
    );

    // Progress history: every update kept (the last 100), with a cursor.
    let lease = common::poll(&agent, &[], 0)
        .await
        .leases
        .pop()
        .expect("a lease");
    assert_eq!(lease.job_id, job.id);
    let base = format!("/v1/jobs/{}/attempts/1", job.id);
    agent.post(&format!("{base}/start"), json!({})).await;
    for i in 1..=105 {
        let (status, v) = agent
            .post(
                &format!("{base}/progress"),
                json!({"percent": i as f64 / 1.05, "message": format!("step {i}")}),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    }
    let (_, h) = admin.get(&format!("/v1/jobs/{}/progress", job.id)).await;
    let updates = h["updates"].as_array().unwrap();
    assert_eq!(updates.len(), 100, "bounded");
    assert_eq!(
        (updates[0]["seq"].as_u64(), updates[0]["message"].as_str()),
        (Some(6), Some("step 6"))
    );
    let (_, h) = admin
        .get(&format!("/v1/jobs/{}/progress?after=1.104", job.id))
        .await;
    assert_eq!(h["updates"][0]["message"], "step 105", "{h}");
    let (status, e) = admin
        .get(&format!("/v1/jobs/{}/progress?after=nope", job.id))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");

    // A log opens at its tail.
    let records: Vec<_> = (1..=50)
        .map(|i| json!({"seq": i, "ts": chrono::Utc::now(), "stream": "stdout", "text": format!("line {i}")}))
        .collect();
    let (status, v) = agent
        .post(&format!("{base}/logs"), json!({"records": records}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let (_, tail) = admin
        .get(&format!("/v1/jobs/{}/logs?tail=10", job.id))
        .await;
    let seqs: Vec<u64> = tail["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (41..=50).collect::<Vec<_>>());

    // A draining agent shows as draining.
    let (status, _) = agent
        .post(
            "/v1/agents/poll",
            json!({"running": [{"job_id": job.id, "attempt": 1}], "wait_ms": 0, "draining": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, agents) = page(&server, &cookie, "/agents").await;
    assert!(
        agents.contains("status-draining") && agents.contains(&job.id),
        "{agents}"
    );

    // The job's event stream: the job, its timeline, its progress, then the end.
    let events = browser()
        .get(format!("{}/v1/jobs/{}/events/stream", server.url, job.id))
        .header(header::COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    let (status, v) = agent
        .post(
            &format!("{base}/finish"),
            json!({"outcome": "succeeded", "exit_code": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let seen = sse_until(events, |ev| ev.iter().any(|(k, _)| k == "end")).await;
    let kinds = |k: &str| seen.iter().filter(|(kind, _)| kind == k).count();
    assert_eq!(kinds("progress"), 100, "{seen:?}");
    assert!(
        kinds("event") >= 3,
        "submitted, leased, started, finished: {seen:?}"
    );
    let last_job = seen.iter().rev().find(|(k, _)| k == "job").unwrap();
    assert!(last_job.1.contains("\"succeeded\""), "{last_job:?}");
}

#[tokio::test]
async fn dashboard_authorization_matrix() {
    let server = TestServer::start().await;
    let admin = Client::new(&server, &server.admin_token);
    let mut tokens = Vec::new();
    for scope in ["read", "submit"] {
        let (_, t) = admin
            .post("/v1/tokens", json!({"name": scope, "scope": scope}))
            .await;
        tokens.push(t["token"].as_str().unwrap().to_string());
    }
    let job = admin.submit(shell("sleep 30")).await;
    let (status, group) = admin
        .post(
            "/v1/groups",
            json!({"job": shell("sleep 30"), "array": {"count": 2}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{group}");
    let group_id = group["id"].as_str().unwrap().to_string();
    let gone = register(&server, "gone-box", json!({})).await;
    gone.post("/v1/agents/leave", json!({})).await;
    let gone_id = admin.get("/v1/agents").await.1["agents"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Join and agent tokens do not sign in; read, submit and admin tokens do.
    for t in [server.join_token.clone(), "drt_forged".to_string()] {
        let (status, _) = post_form(&server, "", "/login", &[("token", &t)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let mut sessions = vec![("nobody", String::new())];
    for (who, t) in [
        ("read", &tokens[0]),
        ("submit", &tokens[1]),
        ("admin", &server.admin_token),
    ] {
        sessions.push((who, sign_in(&server, t).await.0));
    }

    let group_page = format!("/groups/{group_id}");
    let pages = [
        "/",
        "/jobs",
        &format!("/jobs/{}", job.id),
        "/agents",
        "/groups",
        &group_page,
        "/schedules",
    ];
    for (who, cookie) in &sessions {
        for path in pages {
            let (status, _) = page(&server, cookie, path).await;
            let want = if *who == "nobody" {
                StatusCode::SEE_OTHER
            } else {
                StatusCode::OK
            };
            assert_eq!(status, want, "{who} GET {path}");
        }
    }
    // Actions, least harmful first; each needs its scope and the session's CSRF secret.
    let actions = [
        (format!("/jobs/{}/rerun", job.id), "submit"),
        (format!("/jobs/{}/cancel", job.id), "submit"),
        (format!("/jobs/{}/retry", job.id), "submit"),
        (format!("/groups/{group_id}/cancel"), "submit"),
        (format!("/groups/{group_id}/retry"), "submit"),
        (format!("/agents/{gone_id}/remove"), "admin"),
    ];
    let rank = |w: &str| {
        ["nobody", "read", "submit", "admin"]
            .iter()
            .position(|x| *x == w)
            .unwrap()
    };
    for (path, needs) in &actions {
        for (who, cookie) in &sessions {
            let secret = if *who == "nobody" {
                String::new()
            } else {
                csrf(&page(&server, cookie, "/jobs").await.1)
            };
            if *who != "nobody" {
                let (status, _) = post_form(&server, cookie, path, &[("csrf", "forged")]).await;
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{who} POST {path} with a forged CSRF secret"
                );
            }
            let (status, body) = post_form(&server, cookie, path, &[("csrf", &secret)]).await;
            let want = match who {
                &"nobody" => StatusCode::SEE_OTHER,
                w if rank(w) < rank(needs) => StatusCode::FORBIDDEN,
                _ => status,
            };
            assert_eq!(status, want, "{who} POST {path}: {body}");
            if rank(who) >= rank(needs) {
                assert_ne!(status, StatusCode::FORBIDDEN, "{who} POST {path}: {body}");
            }
        }
    }
    // What each action did, once allowed.
    assert_eq!(
        admin.job(&job.id).await.state,
        drover_core::JobState::Queued,
        "retried after the cancel"
    );
    let (_, g) = admin.get(&format!("/v1/groups/{group_id}")).await;
    assert_eq!(g["state"], "canceled", "canceled as one: {g}");
    let (_, members) = page(&server, &sessions[3].1, &format!("/jobs?group={group_id}")).await;
    assert_eq!(members.matches("state-canceled").count(), 2, "{members}");
    assert!(admin.get("/v1/agents").await.1["agents"]
        .as_array()
        .unwrap()
        .is_empty());
}

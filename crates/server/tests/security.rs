//! Who may do what: the authorization matrix over every route of the OpenAPI document,
//! token lifecycle (bootstrap, expiry, revocation), secrets at rest, audit, and TLS.

use std::path::Path;

use drover_core::api::{CreatedToken, RegisterResponse};
use drover_server::testing::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn call(
    server: &TestServer,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", server.url));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    // Streams (SSE) are not read to the end: the status is what matters here.
    if resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "text/event-stream")
    {
        return (status, Value::Null);
    }
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn make_token(server: &TestServer, scope: &str, extra: Value) -> (String, String) {
    let mut body = json!({"name": format!("{scope}-token"), "scope": scope});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, v) = call(
        server,
        Some(&server.admin_token),
        Method::POST,
        "/v1/tokens",
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let t: CreatedToken = serde_json::from_value(v).unwrap();
    (t.token, t.info.id)
}

async fn register(server: &TestServer, token: &str, name: &str) -> (StatusCode, Value) {
    let body = json!({"name": name, "slots": 2, "host": {"hostname": "h", "os": "linux", "arch": "x86_64", "cpus": 2, "memory_bytes": 1, "version": "t"}});
    call(
        server,
        Some(token),
        Method::POST,
        "/v1/agents/register",
        Some(body),
    )
    .await
}

async fn agent(server: &TestServer, name: &str) -> RegisterResponse {
    let (status, v) = register(server, &server.join_token, name).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    serde_json::from_value(v).unwrap()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Who {
    Nobody,
    BadToken,
    Read,
    Submit,
    Join,
    OtherAgent,
    OwnAgent,
    Admin,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Needs {
    Nothing,
    Read,
    Submit,
    Admin,
    Join,
    Agent,
    OwnAttempt,
}

/// What each route demands. A route in the OpenAPI document but not here fails the test,
/// so no new route can skip the matrix.
fn needs(method: &str, path: &str) -> Option<Needs> {
    Some(match (method, path) {
        ("get", "/healthz" | "/readyz" | "/openapi.json") => Needs::Nothing,
        (
            "get",
            "/metrics"
            | "/v1/jobs"
            | "/v1/jobs/{id}"
            | "/v1/jobs/stream"
            | "/v1/jobs/{id}/events"
            | "/v1/jobs/{id}/events/stream"
            | "/v1/jobs/{id}/progress"
            | "/v1/jobs/{id}/logs"
            | "/v1/jobs/{id}/logs/stream"
            | "/v1/jobs/{id}/logs.txt"
            | "/v1/jobs/{id}/artifacts"
            | "/v1/jobs/{id}/artifacts.tar"
            | "/v1/files"
            | "/v1/files/{id}"
            | "/v1/agents"
            | "/v1/providers"
            | "/v1/templates"
            | "/v1/templates/{name}"
            | "/v1/groups"
            | "/v1/groups/{id}"
            | "/v1/schedules"
            | "/v1/schedules/{name}",
        ) => Needs::Read,
        (
            "post",
            "/v1/jobs"
            | "/v1/jobs/batch"
            | "/v1/jobs/{id}/cancel"
            | "/v1/jobs/{id}/retry"
            | "/v1/jobs/{id}/rerun"
            | "/v1/files"
            | "/v1/templates"
            | "/v1/templates/{name}/jobs"
            | "/v1/groups"
            | "/v1/groups/{id}/cancel"
            | "/v1/groups/{id}/retry"
            | "/v1/schedules"
            | "/v1/schedules/{name}/pause"
            | "/v1/schedules/{name}/resume",
        )
        | (
            "delete",
            "/v1/jobs/{id}" | "/v1/files/{id}" | "/v1/templates/{name}" | "/v1/schedules/{name}",
        ) => Needs::Submit,
        ("get" | "post", "/v1/tokens")
        | ("delete", "/v1/tokens/{id}" | "/v1/agents/{id}")
        | ("get", "/v1/audit") => Needs::Admin,
        ("post", "/v1/agents/register") => Needs::Join,
        ("post", "/v1/agents/poll" | "/v1/agents/finish" | "/v1/agents/leave") => Needs::Agent,
        ("post", p) if p.starts_with("/v1/jobs/{id}/attempts/{attempt}/") => Needs::OwnAttempt,
        ("get", "/v1/jobs/{id}/attempts/{attempt}/inputs/{index}") => Needs::OwnAttempt,
        _ => return None,
    })
}

/// Expected class of answer: Ok means neither 401 nor 403.
fn expect(needs: Needs, who: Who) -> StatusCode {
    const OK: StatusCode = StatusCode::OK;
    use Who::*;
    // A known token of the wrong kind is forbidden (and told so), not unknown.
    let client_scope = |allowed: &[Who]| match who {
        Nobody | BadToken => StatusCode::UNAUTHORIZED,
        w if allowed.contains(&w) => OK,
        _ => StatusCode::FORBIDDEN,
    };
    match needs {
        Needs::Nothing => OK,
        Needs::Read => client_scope(&[Read, Submit, Admin]),
        Needs::Submit => client_scope(&[Submit, Admin]),
        Needs::Admin => client_scope(&[Admin]),
        Needs::Join => client_scope(&[Join, Admin]),
        Needs::Agent => match who {
            OwnAgent | OtherAgent => OK,
            Nobody | BadToken => StatusCode::UNAUTHORIZED,
            _ => StatusCode::FORBIDDEN,
        },
        Needs::OwnAttempt => match who {
            OwnAgent => OK,
            Nobody | BadToken => StatusCode::UNAUTHORIZED,
            _ => StatusCode::FORBIDDEN,
        },
    }
}

/// A body that passes parsing, so that what is checked is the caller, not the JSON.
fn body_for(method: &str, path: &str, job: &str, also_held: &str) -> Option<Value> {
    if method != "post" {
        return None;
    }
    Some(match path {
        "/v1/jobs" => json!({"exec": {"kind": "shell", "command": "true"}}),
        "/v1/jobs/batch" => json!({"jobs": [{"exec": {"kind": "shell", "command": "true"}}]}),
        "/v1/tokens" => json!({"name": "m", "scope": "read"}),
        "/v1/agents/register" => {
            json!({"name": "m", "slots": 1, "host": {"hostname": "h", "os": "l", "arch": "a", "cpus": 1, "memory_bytes": 1, "version": "v"}})
        }
        "/v1/agents/poll" => {
            json!({"running": [{"job_id": job, "attempt": 1}, {"job_id": also_held, "attempt": 1}], "wait_ms": 0})
        }
        "/v1/agents/finish" => json!({"finishes": []}),
        p if p.ends_with("/logs") => json!({"records": []}),
        p if p.ends_with("/progress") => json!({"percent": 5.0}),
        p if p.ends_with("/finish") => json!({"outcome": "failed", "error": "matrix"}),
        _ => json!({}),
    })
}

#[tokio::test]
async fn authorization_matrix_covers_every_route_in_the_openapi_document() {
    // The held jobs' leases must outlast the whole matrix, however loaded the machine:
    // with the usual 3 s, one expired before the last routes on a busy CI run.
    let dir = tempfile::tempdir().unwrap();
    let mut config = TestServer::config(dir.path().to_path_buf(), 0);
    config.lease_ttl = std::time::Duration::from_secs(600);
    let server = TestServer::start_with(config).await;
    let admin = server.admin_token.clone();
    let (read, _) = make_token(&server, "read", json!({})).await;
    let (submit, _) = make_token(&server, "submit", json!({})).await;
    let (_, throwaway_token) = make_token(&server, "read", json!({})).await;
    let own = agent(&server, "own").await;
    let other = agent(&server, "other").await;
    let victim = agent(&server, "victim").await;
    // Two jobs held by the own agent: `release` ends one, the other routes use the other.
    let mut held = Vec::new();
    for _ in 0..2 {
        let (_, v) = call(
            &server,
            Some(&admin),
            Method::POST,
            "/v1/jobs",
            Some(json!({"exec": {"kind": "shell", "command": "sleep 1"}})),
        )
        .await;
        held.push(v["id"].as_str().unwrap().to_string());
    }
    let (_, v) = call(
        &server,
        Some(&own.token),
        Method::POST,
        "/v1/agents/poll",
        Some(json!({"wait_ms": 0})),
    )
    .await;
    assert_eq!(
        v["leases"].as_array().map(Vec::len),
        Some(2),
        "own agent holds the jobs"
    );
    for id in &held {
        let (s, _) = call(
            &server,
            Some(&own.token),
            Method::POST,
            &format!("/v1/jobs/{id}/attempts/1/start"),
            Some(json!({})),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (job, released) = (held[0].clone(), held[1].clone());

    let (_, doc) = call(&server, Some(&admin), Method::GET, "/openapi.json", None).await;
    let mut routes: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            routes.push((method.clone(), path.clone()));
        }
    }
    assert!(routes.len() >= 26, "{routes:?}");
    // `finish` by the own agent ends the attempt, and `leave` ends its session's
    // attempts: every other attempt route must run before them, and `leave` last.
    routes.sort_by_key(|(_, p)| (p.ends_with("/leave"), p.ends_with("/finish")));
    let order = [
        Who::Nobody,
        Who::BadToken,
        Who::Read,
        Who::Submit,
        Who::Join,
        Who::OtherAgent,
        Who::OwnAgent,
        Who::Admin,
    ];
    let mut checked = 0;
    for (method, template) in &routes {
        let needs = needs(method, template).unwrap_or_else(|| {
            panic!("route {method} {template} has no entry in the authorization matrix")
        });
        let target = if template.ends_with("/release") {
            &released
        } else {
            &job
        };
        let path = template
            .replace(
                "/v1/agents/{id}",
                &format!("/v1/agents/{}", victim.agent_id),
            )
            .replace("/v1/tokens/{id}", &format!("/v1/tokens/{throwaway_token}"))
            .replace("{id}", target)
            .replace("{attempt}", "1")
            .replace("{index}", "0")
            .replace(
                "/attempts/1/artifacts",
                "/attempts/1/artifacts?path=matrix.txt",
            );
        for who in order {
            let token = match who {
                Who::Nobody => None,
                Who::BadToken => Some("drc_not_a_real_token"),
                Who::Read => Some(read.as_str()),
                Who::Submit => Some(submit.as_str()),
                Who::Join => Some(server.join_token.as_str()),
                Who::OtherAgent => Some(other.token.as_str()),
                Who::OwnAgent => Some(own.token.as_str()),
                Who::Admin => Some(admin.as_str()),
            };
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, body) = call(
                &server,
                token,
                m,
                &path,
                body_for(method, template, &job, &released),
            )
            .await;
            let want = expect(needs, who);
            if want == StatusCode::OK {
                assert!(
                    status != StatusCode::UNAUTHORIZED
                        && status != StatusCode::FORBIDDEN
                        && status.as_u16() < 500,
                    "{who:?} {method} {path}: got {status} {body}"
                );
            } else {
                assert_eq!(status, want, "{who:?} {method} {path}: {body}");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * order.len());
}

#[tokio::test]
async fn bootstrap_tokens_work_once_and_bind_labels() {
    let server = TestServer::start().await;
    let (boot, _) = make_token(
        &server,
        "bootstrap",
        json!({"labels": {"pool": "burst"}, "expires_in_secs": 60}),
    )
    .await;
    let (status, v) = call(
        &server,
        Some(&boot),
        Method::POST,
        "/v1/agents/register",
        Some(json!({"name": "provisioned", "labels": {"gpu": "a100", "pool": "other", "os": "linux"}, "slots": 1, "host": {"hostname": "h", "os": "linux", "arch": "x86_64", "cpus": 2, "memory_bytes": 1, "version": "t"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, v) = register(&server, &boot, "again").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{v}"
    );
    let (_, agents) = call(
        &server,
        Some(&server.admin_token),
        Method::GET,
        "/v1/agents",
        None,
    )
    .await;
    assert_eq!(
        agents["agents"][0]["labels"],
        json!({"pool": "burst", "os": "linux"}),
        "regression: a bootstrap agent could add any labels; it gets the token's (and host facts)"
    );
    let (status, _) = call(&server, Some(&boot), Method::GET, "/v1/jobs", None).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a bootstrap token only registers"
    );
    let (status, v) = call(
        &server,
        Some(&server.admin_token),
        Method::POST,
        "/v1/tokens",
        Some(json!({"name": "x", "scope": "bootstrap", "expires_in_secs": 999999})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
}

#[tokio::test]
async fn expired_and_revoked_tokens_are_refused() {
    let server = TestServer::start().await;
    let (short, _) = make_token(&server, "read", json!({"expires_in_secs": 1})).await;
    let (status, _) = call(&server, Some(&short), Method::GET, "/v1/jobs", None).await;
    assert_eq!(status, StatusCode::OK);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, v) = call(&server, Some(&short), Method::GET, "/v1/jobs", None).await;
        if status == StatusCode::UNAUTHORIZED {
            assert!(v["error"]["message"].as_str().unwrap().contains("expired"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "token never expired");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (tok, id) = make_token(&server, "submit", json!({})).await;
    assert_eq!(
        call(&server, Some(&tok), Method::GET, "/v1/jobs", None)
            .await
            .0,
        StatusCode::OK
    );
    let (status, _) = call(
        &server,
        Some(&server.admin_token),
        Method::DELETE,
        &format!("/v1/tokens/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, v) = call(&server, Some(&tok), Method::GET, "/v1/jobs", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(v["error"]["message"].as_str().unwrap().contains("revoked"));
    let (status, _) = call(
        &server,
        Some(&server.admin_token),
        Method::DELETE,
        &format!("/v1/tokens/{id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, list) = call(
        &server,
        Some(&server.admin_token),
        Method::GET,
        "/v1/tokens",
        None,
    )
    .await;
    let text = list.to_string();
    assert!(!text.contains(&tok), "secrets are never listed");
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

#[tokio::test]
async fn secrets_are_redacted_in_the_api_and_sealed_at_rest() {
    let mut server = TestServer::start().await;
    let secret = "s3cr3t-value-4242";
    let admin = server.admin_token.clone();
    let (_, job) = call(&server, Some(&admin), Method::POST, "/v1/jobs", Some(json!({"exec": {"kind": "shell", "command": "echo $API_KEY"}, "secrets": {"API_KEY": secret}}))).await;
    let id = job["id"].as_str().unwrap().to_string();
    let a = agent(&server, "w").await;
    let (_, lease) = call(
        &server,
        Some(&a.token),
        Method::POST,
        "/v1/agents/poll",
        Some(json!({"wait_ms": 0})),
    )
    .await;
    assert_eq!(
        lease["leases"][0]["secrets"]["API_KEY"],
        json!(secret),
        "the lease carries it"
    );
    call(
        &server,
        Some(&a.token),
        Method::POST,
        &format!("/v1/jobs/{id}/attempts/1/start"),
        Some(json!({})),
    )
    .await;
    // What an agent sends after masking.
    let rec = json!({"records": [{"seq": 1, "ts": chrono::Utc::now(), "stream": "stdout", "text": "***"}]});
    call(
        &server,
        Some(&a.token),
        Method::POST,
        &format!("/v1/jobs/{id}/attempts/1/logs"),
        Some(rec),
    )
    .await;
    call(
        &server,
        Some(&a.token),
        Method::POST,
        &format!("/v1/jobs/{id}/attempts/1/finish"),
        Some(json!({"outcome": "succeeded", "exit_code": 0})),
    )
    .await;
    for path in [
        format!("/v1/jobs/{id}"),
        "/v1/jobs".into(),
        format!("/v1/jobs/{id}/events"),
        format!("/v1/jobs/{id}/logs"),
        format!("/v1/jobs/{id}/logs.txt"),
        "/v1/audit".into(),
    ] {
        let (status, v) = call(&server, Some(&admin), Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!v.to_string().contains(secret), "{path} shows the secret");
    }
    let (_, v) = call(
        &server,
        Some(&admin),
        Method::GET,
        &format!("/v1/jobs/{id}"),
        None,
    )
    .await;
    assert_eq!(v["secret_names"], json!(["API_KEY"]));
    server.stop().await;
    assert_eq!(
        files_containing(&server.data_dir, secret.as_bytes()),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn audit_trail_records_who_did_what() {
    let server = TestServer::start().await;
    let admin = server.admin_token.clone();
    let (_, job) = call(
        &server,
        Some(&admin),
        Method::POST,
        "/v1/jobs",
        Some(json!({"exec": {"kind": "shell", "command": "true"}})),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_string();
    call(
        &server,
        Some(&admin),
        Method::POST,
        &format!("/v1/jobs/{id}/cancel"),
        None,
    )
    .await;
    call(
        &server,
        Some(&admin),
        Method::POST,
        &format!("/v1/jobs/{id}/retry"),
        None,
    )
    .await;
    let (_, tok) = make_token(&server, "read", json!({})).await;
    call(
        &server,
        Some(&admin),
        Method::DELETE,
        &format!("/v1/tokens/{tok}"),
        None,
    )
    .await;
    let a = agent(&server, "w").await;
    call(
        &server,
        Some(&admin),
        Method::DELETE,
        &format!("/v1/agents/{}", a.agent_id),
        None,
    )
    .await;
    let (status, v) = call(&server, Some(&admin), Method::GET, "/v1/audit", None).await;
    assert_eq!(status, StatusCode::OK);
    let actions: Vec<(String, String, String)> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["target"].as_str().unwrap().into(),
                e["actor"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        ("agent.remove", a.agent_id.as_str()),
        ("agent.register", a.agent_id.as_str()),
        ("token.revoke", tok.as_str()),
        ("token.create", tok.as_str()),
        ("job.retry", id.as_str()),
        ("job.cancel", id.as_str()),
        ("job.submit", id.as_str()),
    ];
    let got: Vec<(&str, &str)> = actions
        .iter()
        .map(|(a, t, _)| (a.as_str(), t.as_str()))
        .collect();
    assert_eq!(got, want);
    assert!(actions
        .iter()
        .all(|(_, _, actor)| actor.starts_with("token:")));
    let (status, _) = call(
        &server,
        Some(&a.token),
        Method::POST,
        "/v1/agents/poll",
        Some(json!({})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a removed agent's token is dead"
    );
}

#[tokio::test]
async fn tls_end_to_end_with_a_generated_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    let cert_path = tmp.path().join("cert.pem");
    let key_path = tmp.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mut config = TestServer::config(tmp.path().join("data"), 0);
    config.tls = Some(drover_server::TlsFiles {
        cert: cert_path.clone(),
        key: key_path,
    });
    let server = TestServer::start_with(config).await;
    let https = server.url.replace("http://", "https://");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&cert_path).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let resp = client
        .post(format!("{https}/v1/jobs"))
        .bearer_auth(&server.admin_token)
        .json(&json!({"exec": {"kind": "shell", "command": "true"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(
        reqwest::Client::new()
            .get(format!("{https}/healthz"))
            .send()
            .await
            .is_err(),
        "an unknown CA is refused"
    );
    assert!(
        reqwest::get(format!("{}/healthz", server.url))
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true),
        "plain HTTP is not served"
    );
}

/// Regression: the last admin token could be revoked, locking every admin out.
#[tokio::test]
async fn the_last_admin_token_cannot_be_revoked() {
    let server = TestServer::start().await;
    let (_, list) = call(
        &server,
        Some(&server.admin_token),
        Method::GET,
        "/v1/tokens",
        None,
    )
    .await;
    let admin_id = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["scope"] == "admin")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/v1/tokens/{admin_id}");
    let (status, v) = call(
        &server,
        Some(&server.admin_token),
        Method::DELETE,
        &path,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("last admin token"),
        "{v}"
    );
    let (second, _) = make_token(&server, "admin", json!({})).await;
    let (status, v) = call(&server, Some(&second), Method::DELETE, &path, None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "with another admin token it may go: {v}"
    );
}

/// Regression: connections that never finished their headers stayed open (200 of them
/// after 40 s), so idle sockets could exhaust the server.
#[tokio::test]
async fn connections_that_never_finish_their_headers_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tmp = tempfile::tempdir().unwrap();
    let mut config = TestServer::config(tmp.path().to_path_buf(), 0);
    config.read_timeout = std::time::Duration::from_millis(500);
    let server = TestServer::start_with(config).await;
    let mut conns = Vec::new();
    for _ in 0..50 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        conns.push(s);
    }
    for mut s in conns {
        let mut buf = Vec::new();
        let read =
            tokio::time::timeout(std::time::Duration::from_secs(30), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server closed the half-sent request");
    }
    let (status, _) = call(
        &server,
        Some(&server.admin_token),
        Method::GET,
        "/v1/jobs",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "and serves everyone else");
}

/// The database and its directory are private to the server's user.
#[tokio::test]
async fn database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = TestServer::start_with(TestServer::config(data.clone(), 0)).await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("files")), 0o700);
    for f in ["drover.db", "logs.db", "secrets.key"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    drop(server);
}

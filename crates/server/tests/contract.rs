//! The OpenAPI document as a contract, checked by a tool we did not write: schemathesis
//! generates requests from `/openapi.json` (valid ones, and ones the document says are
//! invalid) and checks every answer: no 5xx, every status documented, every body and
//! content type as documented, invalid data refused. It runs once per kind of caller
//! (admin, read and submit tokens, an agent's session token), as each is answered
//! differently, against real records (a queued job, a leased attempt, a group, a
//! template, a schedule, a file) so that operations on one are exercised beyond 404.
//! Seeded, so a failure repeats; scripts/test.sh installs schemathesis.

use std::path::{Path, PathBuf};
use std::process::Command;

use drover_core::api::{CreatedToken, PollResponse, RegisterResponse};
use drover_server::testing::TestServer;
use serde_json::{json, Value};

/// schemathesis from the test venv, or None (the test then skips, unless CI asks for it).
fn schemathesis() -> Option<PathBuf> {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv/bin/schemathesis");
    if bin.exists() {
        return Some(bin);
    }
    assert!(
        std::env::var("DROVER_REQUIRE_SCHEMATHESIS").as_deref() != Ok("1"),
        "DROVER_REQUIRE_SCHEMATHESIS=1 but {} is missing: scripts/test.sh installs it",
        bin.display()
    );
    None
}

/// Sends `body` (JSON, or bytes for an upload) and returns the answer's JSON; panics
/// unless it succeeded, since the run needs these records.
async fn send(server: &TestServer, token: &str, path: &str, body: Value) -> Value {
    let req = reqwest::Client::new()
        .post(format!("{}{path}", server.url))
        .bearer_auth(token);
    let req = match body {
        Value::String(bytes) => req.body(bytes),
        body => req.json(&body),
    };
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{path}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

async fn client_token(server: &TestServer, scope: &str) -> CreatedToken {
    let body = json!({"name": format!("contract-{scope}"), "scope": scope});
    serde_json::from_value(send(server, &server.admin_token, "/v1/tokens", body).await).unwrap()
}

async fn register(server: &TestServer, name: &str) -> RegisterResponse {
    let body = json!({"name": name, "labels": {}, "slots": 1, "host": drover_core::api::HostInfo::default()});
    let v = send(server, &server.join_token, "/v1/agents/register", body).await;
    serde_json::from_value(v).unwrap()
}

async fn submit(server: &TestServer, command: &str) -> String {
    let body = json!({"exec": {"kind": "shell", "command": command}});
    let v = send(server, &server.admin_token, "/v1/jobs", body).await;
    v["id"].as_str().unwrap().to_string()
}

/// The operations an agent's session token is for (registration takes the join token).
const AGENT_OPERATIONS: &str =
    r"^(POST /v1/agents/(finish|leave|poll|register)|(GET|POST) /v1/jobs/\{id\}/attempts/)";

/// The records the run works on, by the path parameters that name them.
struct Records {
    /// Queued; read, canceled, retried by the client passes.
    job: String,
    /// Deleted by `DELETE /v1/jobs/{id}` (so the others keep theirs).
    doomed_job: String,
    /// Leased to the agent whose token the agent pass uses: attempt 1.
    leased_job: String,
    group: String,
    template: String,
    schedule: String,
    file: String,
    /// A token and an agent nobody else uses, for the revoke and remove operations.
    spare_token: String,
    spare_agent: String,
}

/// `schemathesis.toml`: each path parameter bound to its record. Operations are
/// matched by `METHOD /path` so that no operation falls under two entries.
fn schemathesis_toml(r: &Records) -> String {
    let entry = |name_regex: &str, params: &str| {
        format!(
            "[[operations]]\ninclude-name-regex = '{name_regex}'\nparameters = {{ {params} }}\n\n"
        )
    };
    // A stream (events, a log followed) may never end: schemathesis judges it by what
    // came in its first second (its headers, and the events sent by then).
    let head = "max-stream-events = 3\nrequest-timeout = 10\n\n[[operations]]\ninclude-name-regex = '/stream$'\nrequest-timeout = 1\n\n".to_string();
    [
        head,
        entry(
            r"^(GET|POST) /v1/jobs/\{id\}/attempts/",
            &format!(
                r#""path.id" = "{}", "path.attempt" = 1, "path.index" = 0"#,
                r.leased_job
            ),
        ),
        entry(
            r"^DELETE /v1/jobs/\{id\}$",
            &format!(r#""path.id" = "{}""#, r.doomed_job),
        ),
        entry(
            r"^(GET|POST) /v1/jobs/\{id\}(/(?!attempts)|$)",
            &format!(r#""path.id" = "{}""#, r.job),
        ),
        entry(
            r"/v1/groups/\{id\}",
            &format!(r#""path.id" = "{}""#, r.group),
        ),
        entry(
            r"/v1/templates/\{name\}",
            &format!(r#""path.name" = "{}""#, r.template),
        ),
        entry(
            r"/v1/schedules/\{name\}",
            &format!(r#""path.name" = "{}""#, r.schedule),
        ),
        entry(r"/v1/files/\{id\}", &format!(r#""path.id" = "{}""#, r.file)),
        entry(
            r"/v1/tokens/\{id\}",
            &format!(r#""path.id" = "{}""#, r.spare_token),
        ),
        entry(
            r"/v1/agents/\{id\}",
            &format!(r#""path.id" = "{}""#, r.spare_agent),
        ),
    ]
    .concat()
}

/// One schemathesis run as one caller; the report when it failed.
fn run(
    bin: &Path,
    config: &Path,
    schema: &str,
    who: &str,
    token: &str,
    args: &[&str],
) -> Option<String> {
    let out = Command::new(bin)
        .arg("--config-file")
        .arg(config)
        .arg("run")
        .arg(schema)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "10", "--seed", "1", "--workers", "1"])
        .arg("--no-color")
        .args(args)
        .output()
        .expect("schemathesis runs");
    (!out.status.success()).then(|| {
        format!(
            "== schemathesis as {who} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_matches_the_openapi_document() {
    let Some(bin) = schemathesis() else {
        eprintln!("skipped: schemathesis is not installed in target/test-venv (scripts/test.sh installs it)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut config = TestServer::config(tmp.path().join("data"), 0);
    // The leased attempt must stay the agent's for the whole run.
    config.lease_ttl = std::time::Duration::from_secs(600);
    let server = TestServer::start_with(config).await;
    let (read, submit_token) = (
        client_token(&server, "read").await,
        client_token(&server, "submit").await,
    );
    let agent = register(&server, "contract").await;

    // Leased first, so that the agent's poll gets this one.
    let leased_job = submit(&server, "true").await;
    let poll = send(
        &server,
        &agent.token,
        "/v1/agents/poll",
        json!({"wait_ms": 0}),
    )
    .await;
    let poll: PollResponse = serde_json::from_value(poll).unwrap();
    assert_eq!(
        poll.leases.first().map(|l| l.job_id.as_str()),
        Some(leased_job.as_str())
    );
    let job = submit(&server, "echo contract").await;
    let doomed_job = submit(&server, "true").await;
    let group = send(
        &server,
        &server.admin_token,
        "/v1/groups",
        json!({"job": {"exec": {"kind": "shell", "command": "true"}}, "array": {"count": 2}}),
    )
    .await;
    send(&server, &server.admin_token, "/v1/templates", json!({"name": "contract", "job": {"exec": {"kind": "shell", "command": "echo {{ params.x }}"}}, "params": {"x": {"type": "string", "default": "1"}}})).await;
    send(&server, &server.admin_token, "/v1/schedules", json!({"name": "contract", "cron": "0 3 * * *", "job": {"exec": {"kind": "shell", "command": "true"}}})).await;
    let file = send(
        &server,
        &server.admin_token,
        "/v1/files?name=contract.txt",
        json!("contract"),
    )
    .await;
    let records = Records {
        job,
        doomed_job,
        leased_job,
        group: group["id"].as_str().unwrap().to_string(),
        template: "contract".into(),
        schedule: "contract".into(),
        file: file["id"].as_str().unwrap().to_string(),
        spare_token: client_token(&server, "read").await.info.id,
        spare_agent: register(&server, "spare").await.agent_id,
    };
    let config_file = tmp.path().join("schemathesis.toml");
    std::fs::write(&config_file, schemathesis_toml(&records)).unwrap();
    let schema = format!("{}/openapi.json", server.url);

    // Who calls, and the operations that are theirs (a client token cannot reach the
    // agent's, nor a session token the client's: the security tests cover those 403s).
    let passes: [(&str, String, &[&str]); 4] = [
        (
            "admin",
            server.admin_token.clone(),
            &["--exclude-name-regex", AGENT_OPERATIONS],
        ),
        (
            "agent",
            agent.token.clone(),
            &["--include-name-regex", AGENT_OPERATIONS],
        ),
        ("read", read.token.clone(), &["--include-method", "GET"]),
        (
            "submit",
            submit_token.token.clone(),
            &[
                "--include-path-regex",
                "^/v1/(jobs|groups|templates)",
                "--exclude-name-regex",
                AGENT_OPERATIONS,
            ],
        ),
    ];
    // Two at a time, as the machine has two cores and schemathesis is CPU-bound: the
    // admin pass (most operations) beside the other three.
    let run_all = move |passes: Vec<(&'static str, String, &'static [&'static str])>| {
        let (bin, config_file, schema) = (bin.clone(), config_file.clone(), schema.clone());
        tokio::task::spawn_blocking(move || {
            passes
                .into_iter()
                .filter_map(|(who, token, select)| {
                    run(&bin, &config_file, &schema, who, &token, select)
                })
                .collect::<Vec<_>>()
        })
    };
    let [admin, rest @ ..] = passes;
    let admin = run_all(vec![admin]);
    let mut failed = run_all(rest.to_vec()).await.unwrap();
    failed.extend(admin.await.unwrap());
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

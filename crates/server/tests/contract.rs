//! The OpenAPI document as a contract, checked by a tool we did not write: schemathesis
//! generates requests from `/openapi.json` (valid ones and ones the document says are
//! invalid) and checks every answer: no 5xx, every status documented, every body and
//! content type as documented, invalid data refused. It runs once per kind of caller
//! (admin, read and submit tokens, an agent's session token), as each sees other
//! answers. Seeded; scripts/test.sh installs schemathesis.

use std::path::PathBuf;
use std::process::Command;

use drover_core::api::{CreatedToken, RegisterResponse};
use drover_server::testing::TestServer;
use serde_json::{json, Value};

/// schemathesis from the test venv, or None (the test then skips, unless CI asks for it).
fn schemathesis() -> Option<PathBuf> {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv/bin");
    let bin = venv.join("schemathesis");
    if bin.exists() {
        return Some(bin);
    }
    assert!(
        std::env::var_os("DROVER_REQUIRE_SCHEMATHESIS").is_none(),
        "DROVER_REQUIRE_SCHEMATHESIS is set but {} is missing: run scripts/test.sh, which installs it",
        bin.display()
    );
    None
}

async fn post(server: &TestServer, token: &str, path: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", server.url))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{path}: {}", resp.status());
    resp.json().await.unwrap()
}

async fn client_token(server: &TestServer, scope: &str) -> String {
    let body = json!({"name": format!("contract-{scope}"), "scope": scope});
    let made: CreatedToken =
        serde_json::from_value(post(server, &server.admin_token, "/v1/tokens", body).await)
            .unwrap();
    made.token
}

// Not yet in the default run: on this 2-core machine the four passes take 17 minutes
// and still report failures to work through (issue 17). Run it with
// `cargo test -p drover-server --test contract -- --ignored`.
#[ignore = "17 minutes on 2 cores, and failures remain (issue 17)"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_matches_the_openapi_document() {
    let Some(bin) = schemathesis() else {
        eprintln!("skipped: schemathesis is not installed in target/test-venv");
        return;
    };
    let server = TestServer::start().await;
    let read = client_token(&server, "read").await;
    let submit = client_token(&server, "submit").await;
    let agent: RegisterResponse = serde_json::from_value(
        post(
            &server,
            &server.join_token,
            "/v1/agents/register",
            json!({"name": "contract", "labels": {}, "slots": 1, "host": drover_core::api::HostInfo::default()}),
        )
        .await,
    )
    .unwrap();
    let schema = format!("{}/openapi.json", server.url);
    // Who calls, and which operations are theirs to exercise (all for admin).
    let runs: [(&str, &str, &[&str]); 4] = [
        ("admin", server.admin_token.as_str(), &[]),
        ("read", read.as_str(), &["--include-method", "GET"]),
        (
            "submit",
            submit.as_str(),
            &["--include-path-regex", "^/v1/(jobs|groups|templates)"],
        ),
        ("agent", agent.token.as_str(), &["--include-tag", "agents"]),
    ];
    let mut failed = Vec::new();
    for (who, token, only) in runs {
        let bin = bin.clone();
        let (schema, auth) = (schema.clone(), format!("Authorization: Bearer {token}"));
        let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
        let out = tokio::task::spawn_blocking(move || {
            Command::new(bin)
                .arg("run")
                .arg(&schema)
                .args(["-H", &auth])
                .args(["--checks", "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection"])
                .args(["--max-examples", "5", "--seed", "1", "--workers", "2"])
                .args(["--request-timeout", "30", "--no-color"])
                .args(&only)
                .output()
                .expect("schemathesis runs")
        })
        .await
        .unwrap();
        if !out.status.success() {
            failed.push(format!(
                "== as {who}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

//! Concurrency limits on SQLite and PostgreSQL: eight agents polling at once never hold
//! more jobs of one concurrency key than its limit, nor more jobs of a limited queue than
//! the queue's limit; jobs without a key are not held back; a held-back job says why.

mod common;

use common::{agents, drain, poll, register, shell, Client};
use drover_server::testing::TestServer;
use reqwest::StatusCode;
use serde_json::json;

async fn limits_hold(s: &TestServer) {
    let c = Client::new(s, &s.admin_token);
    // 40 jobs of key gpu0 (limit 2) and 40 without a key, interleaved.
    for i in 0..40 {
        let mut keyed = shell("true");
        keyed["name"] = json!(format!("keyed-{i}"));
        keyed["concurrency_key"] = json!("gpu0");
        keyed["concurrency_limit"] = json!(2);
        c.submit(keyed).await;
        let mut free = shell("true");
        free["name"] = json!(format!("free-{i}"));
        c.submit(free).await;
    }
    let most = drain(agents(s, &["default"]).await, 80, "keyed-").await;
    assert!(
        (1..=2).contains(&most),
        "{most} jobs of key gpu0 held at once"
    );

    // A held-back job says why.
    let agent = register(s, "holder", json!({})).await;
    let mut one = shell("sleep 1");
    one["concurrency_key"] = json!("solo");
    let first = c.submit(one.clone()).await;
    let second = c.submit(one).await;
    let got = poll(&agent, &[], 1000).await;
    assert_eq!(got.leases.len(), 1, "only one of key solo");
    assert_eq!(got.leases[0].job_id, first.id);
    let (_, v) = c.get(&format!("/v1/jobs/{}", second.id)).await;
    assert_eq!(
        v["wait_reason"],
        "1 jobs with concurrency key solo are running, its limit of 1"
    );

    // Bad input.
    let mut bad = shell("true");
    bad["concurrency_limit"] = json!(0);
    let (status, v) = c.post("/v1/jobs", bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("needs a concurrency_key"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrency_key_holds_its_limit_under_eight_agents_sqlite() {
    limits_hold(&TestServer::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_concurrency_key_holds_its_limit_under_eight_agents_postgres() {
    let db = drover_server::testing_pg::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    limits_hold(&TestServer::start_with(TestServer::config_shared(tmp.path(), &db)).await).await;
}

async fn queue_limit_holds(config: drover_server::ServerConfig) {
    let mut config = config;
    config.queue_limits.insert("gpu".into(), 3);
    let s = TestServer::start_with(config).await;
    let c = Client::new(&s, &s.admin_token);
    for i in 0..30 {
        let mut job = shell("true");
        job["name"] = json!(format!("gpu-{i}"));
        job["queue"] = json!("gpu");
        c.submit(job).await;
    }
    let most = drain(agents(&s, &["gpu"]).await, 30, "gpu-").await;
    assert!(
        (1..=3).contains(&most),
        "{most} jobs of queue gpu held at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_limit_holds_under_eight_agents_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    queue_limit_holds(TestServer::config(tmp.path().to_path_buf(), 0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_limit_holds_under_eight_agents_postgres() {
    let db = drover_server::testing_pg::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    queue_limit_holds(TestServer::config_shared(tmp.path(), &db)).await;
}

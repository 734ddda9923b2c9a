//! Concurrency limits on SQLite and PostgreSQL: eight agents polling at once never hold
//! more jobs of one concurrency key than its limit, nor more jobs of a limited queue than
//! the queue's limit; jobs without a key are not held back; a held-back job says why.

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{poll, register, register_in, shell, Client};
use drover_server::testing::TestServer;
use reqwest::StatusCode;
use serde_json::json;

/// Eight synthetic agents taking `queues`, each finishing what it leases after 5 ms.
async fn agents(s: &TestServer, queues: &[&str]) -> Vec<Client> {
    let mut out = Vec::new();
    for i in 0..8 {
        out.push(register_in(s, &format!("a{i}"), json!({}), queues).await);
    }
    out
}

/// The agents drain `jobs` jobs at once; returns the most held at the same time of the
/// jobs whose name starts with `counted`.
async fn drain(agents: Vec<Client>, jobs: usize, counted: &'static str) -> i64 {
    let held = Arc::new(AtomicI64::new(0));
    let most = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for agent in agents {
        let (held, most, done) = (held.clone(), most.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < jobs as i64 {
                let got = poll(&agent, &[], 200).await;
                for lease in got.leases {
                    let mine = lease.name.starts_with(counted);
                    if mine {
                        let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    // Counted down before the finish is sent: the server counts the job
                    // as running until the finish commits.
                    if mine {
                        held.fetch_sub(1, Ordering::SeqCst);
                    }
                    let path = format!(
                        "/v1/jobs/{}/attempts/{}/finish",
                        lease.job_id, lease.attempt
                    );
                    let (status, v) = agent
                        .post(&path, json!({"outcome": "succeeded", "exit_code": 0}))
                        .await;
                    assert_eq!(status, StatusCode::OK, "{v}");
                    done.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    most.load(Ordering::SeqCst)
}

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

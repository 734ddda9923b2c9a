//! Several servers on one PostgreSQL database: wake-ups cross servers (a submit on one
//! answers a poll held on another, a cancel reaches an agent polling another, a log
//! follower on one sees lines stored through another), the singleton duties move when
//! their server goes, and a server with another secrets key, or a second server on one
//! SQLite database, is refused.

mod common;

use std::time::{Duration, Instant};

use common::{register, shell, sse_until, Client};
use drover_core::api::Control;
use drover_server::testing::TestServer;
use drover_server::{testing_pg, Server};
use reqwest::StatusCode;
use serde_json::json;

/// Why a server with `config` does not start (it must not).
async fn refused(config: drover_server::ServerConfig) -> String {
    Server::bind(config)
        .await
        .err()
        .expect("refused")
        .to_string()
}

async fn is_leader(s: &TestServer) -> bool {
    common::has_metric_line(s, "drover_leader 1").await
}

/// Longest a held poll may take to be answered by a wake-up: far below its 30 s wait,
/// so that an answer at the wait's end (with no wake-up at all) fails the test.
const WOKEN_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_on_one_postgres_act_as_one() {
    let db = testing_pg::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(TestServer::start_with(TestServer::config_shared(dir, &db)).await);
    }
    let (a, b, c) = (&servers[0], &servers[1], &servers[2]);

    // A poll held on B is answered by a submit on C, long before its 20 s are up.
    let agent = register(a, "cross", json!({})).await;
    let on_b = Client::new(b, &agent.token);
    let held = tokio::spawn(async move { common::poll(&on_b, &[], 30_000).await });
    common::wait_parked(b, 1).await;
    let submitted = Instant::now();
    let job = Client::new(c, &c.admin_token)
        .submit(shell("sleep 30"))
        .await;
    let got = held.await.unwrap();
    assert!(
        submitted.elapsed() < WOKEN_WITHIN,
        "woken by the submit on C"
    );
    assert_eq!(
        got.leases.first().map(|l| l.job_id.as_str()),
        Some(job.id.as_str())
    );
    let on_a = Client::new(a, &agent.token);
    let (status, _) = on_a
        .post(&format!("/v1/jobs/{}/attempts/1/start", job.id), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);

    // A log follower on B sees lines stored through A.
    let follow = reqwest::Client::new()
        .get(format!("{}/v1/jobs/{}/logs/stream", b.url, job.id))
        .bearer_auth(&b.admin_token)
        .send()
        .await
        .unwrap();
    let rec = json!({"records": [{"seq": 1, "ts": chrono::Utc::now(), "stream": "stdout", "text": "through a"}]});
    let (status, _) = on_a
        .post(&format!("/v1/jobs/{}/attempts/1/logs", job.id), rec)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    sse_until(follow, |ev| ev.iter().any(|(_, d)| d.contains("through a"))).await;

    // A cancel sent to A reaches the agent's poll held on B.
    let on_b = Client::new(b, &agent.token);
    let running = [(job.id.clone(), 1)];
    let held = tokio::spawn(async move { common::poll(&on_b, &running, 30_000).await });
    common::wait_parked(b, 1).await;
    let canceled = Instant::now();
    let (status, _) = Client::new(a, &a.admin_token)
        .post(&format!("/v1/jobs/{}/cancel", job.id), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = held.await.unwrap();
    assert!(
        canceled.elapsed() < WOKEN_WITHIN,
        "woken by the cancel on A"
    );
    assert!(
        got.controls
            .iter()
            .any(|c| matches!(c, Control::Cancel { job_id, .. } if *job_id == job.id)),
        "{:?}",
        got.controls
    );

    // One server leads; when it goes, another takes over and still reaps lost leases.
    let mut leaders = Vec::new();
    for s in &servers {
        leaders.push(is_leader(s).await);
    }
    assert_eq!(leaders.iter().filter(|l| **l).count(), 1, "{leaders:?}");
    let first = leaders.iter().position(|l| *l).unwrap();
    servers[first].stop().await;
    let rest: Vec<usize> = (0..3).filter(|i| *i != first).collect();
    let lost = {
        let s = &servers[rest[0]];
        let victim = register(s, "victim", json!({})).await;
        let job = Client::new(s, &s.admin_token)
            .submit(shell("sleep 30"))
            .await;
        let got = common::poll(&victim, &[], 5_000).await;
        assert_eq!(
            got.leases.first().map(|l| l.job_id.clone()),
            Some(job.id.clone())
        );
        job.id // the victim never polls again: its lease expires
    };
    let start = Instant::now();
    loop {
        let s = &servers[rest[1]];
        let state = Client::new(s, &s.admin_token).job(&lost).await.state;
        if state != drover_core::JobState::Leased {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the lost lease was never reaped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut now_leading = 0;
    for i in &rest {
        now_leading += usize::from(is_leader(&servers[*i]).await);
    }
    assert_eq!(now_leading, 1);

    // A server with another secrets key refuses to start, and says why.
    let mut config = TestServer::config_shared(dir, &db);
    config.secrets_key_file = Some(dir.join("other.key"));
    let err = refused(config).await;
    assert!(
        err.contains("sealed with key") && err.contains("same key"),
        "{err}"
    );

    // So does one with the same key but its own folder of files (another machine's
    // data directory, and no object store): files uploaded elsewhere would be missing.
    let mut config = TestServer::config_shared(&dir.join("elsewhere"), &db);
    config.secrets_key_file = Some(dir.join("secrets.key"));
    let err = refused(config).await;
    assert!(
        err.contains("files are kept in local folder") && err.contains("--object-store"),
        "{err}"
    );
}

#[tokio::test]
async fn two_servers_on_one_sqlite_database_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut first = TestServer::start_with(TestServer::config(tmp.path().to_path_buf(), 0)).await;
    let err = refused(TestServer::config(tmp.path().to_path_buf(), 0)).await;
    assert!(
        err.contains("another drover server is using the SQLite database"),
        "{err}"
    );
    first.stop().await;
    // Once the first stopped, the database is free again.
    let mut again = TestServer::start_with(TestServer::config(tmp.path().to_path_buf(), 0)).await;
    again.stop().await;
}

/// The documented rotation: stop the servers, re-seal under a new key, start them with
/// it. Queued jobs keep their secrets; the old key is refused afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_secrets_key_reseals_queued_jobs() {
    let db = testing_pg::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut first = TestServer::start_with(TestServer::config_shared(dir, &db)).await;
    let mut job = shell("echo $TOKEN");
    job["secrets"] = json!({"TOKEN": "s3cret"});
    let with_secret = Client::new(&first, &first.admin_token).submit(job).await;
    // A job without secrets has nothing to re-seal.
    Client::new(&first, &first.admin_token)
        .submit(shell("true"))
        .await;
    first.stop().await;

    let config = TestServer::config_shared(dir, &db);
    let new_key = dir.join("new.key");
    let (resealed, fingerprint) = drover_server::rotate_secrets_key(&config, &new_key)
        .await
        .unwrap();
    assert_eq!(resealed, 1, "only the job with secrets is re-sealed");
    assert_eq!(fingerprint.len(), 16);

    // The old key is now the wrong one.
    let err = refused(TestServer::config_shared(dir, &db)).await;
    assert!(err.contains(&fingerprint), "{err}");

    let mut config = TestServer::config_shared(dir, &db);
    config.secrets_key_file = Some(new_key);
    let server = TestServer::start_with(config).await;
    let agent = register(&server, "rotated", json!({})).await;
    let got = common::poll(&agent, &[], 5_000).await;
    let lease = got
        .leases
        .iter()
        .find(|l| l.job_id == with_secret.id)
        .expect("the job with a secret is leased");
    assert_eq!(
        lease.secrets.get("TOKEN").map(String::as_str),
        Some("s3cret")
    );
}

//! Schedules on SQLite and PostgreSQL: the ticker submits a job per tick with its
//! overlap policy (queue, skip, cancel the previous); pause, resume and rm; bad input
//! named field by field; and a tick submits once when two servers tick at the same
//! moment or a restarted one sees it due again.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{error_fields, shell, Client};
use drover_core::api::{Job, JobPage};
use drover_core::schedule::{tick_key, Cron, ScheduleCreate};
use drover_core::{JobState, SubmitRequest};
use drover_server::store::Store;
use drover_server::testing::TestServer;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn jobs_named(c: &Client, name: &str) -> Vec<Job> {
    let (status, v) = c.get(&format!("/v1/jobs?name={name}&limit=1000")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let mut page: JobPage = serde_json::from_value(v).unwrap();
    page.jobs.reverse();
    page.jobs
}

/// Waits (up to 20 s) until `n` jobs named `name` exist.
async fn wait_jobs(c: &Client, name: &str, n: usize) -> Vec<Job> {
    for _ in 0..200 {
        let jobs = jobs_named(c, name).await;
        if jobs.len() >= n {
            return jobs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("fewer than {n} jobs named {name}");
}

fn every_second(name: &str, overlap: &str) -> Value {
    let mut job = shell("true");
    job["name"] = json!(name);
    json!({"name": name, "cron": "* * * * * *", "job": job, "overlap": overlap})
}

async fn ticker(s: &TestServer) {
    let c = Client::new(s, &s.admin_token);
    // No agent runs anything here, so each tick's previous job is still queued.
    for overlap in ["queue", "skip", "cancel_previous"] {
        let (status, v) = c
            .post("/v1/schedules", every_second(overlap, overlap))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        assert_eq!(v["next_runs"].as_array().unwrap().len(), 5);
    }
    let queued = wait_jobs(&c, "queue", 3).await;
    let mut keys: Vec<&str> = queued
        .iter()
        .map(|j| j.idempotency_key.as_deref().unwrap())
        .collect();
    assert!(
        keys.iter().all(|k| k.starts_with("schedule:queue:")),
        "{keys:?}"
    );
    keys.dedup();
    assert_eq!(keys.len(), queued.len(), "one job per tick");
    assert_eq!(queued[0].env["DROVER_SCHEDULE"], "queue");
    let second = c.job(&queued[1].id).await;
    assert_eq!(second.state, JobState::Waiting);
    assert_eq!(
        second.after[0].job, queued[0].id,
        "queued after the previous tick's job"
    );

    let cancel = wait_jobs(&c, "cancel_previous", 3).await;
    let states: Vec<JobState> = cancel.iter().map(|j| j.state).collect();
    let n = states.len();
    // The newest may have been submitted after the list was read; those before it were
    // canceled by the next tick.
    assert!(
        states[..n - 1].iter().all(|s| *s == JobState::Canceled),
        "{states:?}"
    );

    let skipped = jobs_named(&c, "skip").await;
    assert_eq!(
        skipped.len(),
        1,
        "later ticks skip while the first job waits"
    );
    let (_, v) = c.get("/v1/schedules/skip").await;
    assert!(
        v["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("skipped the tick"),
        "{v}"
    );
    assert_eq!(v["last_job_id"], json!(skipped[0].id));

    // Pause stops the ticks; resume starts them again.
    let (status, v) = c.post("/v1/schedules/queue/pause", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["paused"], true);
    let before = jobs_named(&c, "queue").await.len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        jobs_named(&c, "queue").await.len(),
        before,
        "no tick while paused"
    );
    let (status, _) = c.post("/v1/schedules/queue/resume", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    wait_jobs(&c, "queue", before + 1).await;

    let (_, v) = c.get("/v1/schedules").await;
    let names: Vec<&str> = v["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cancel_previous", "g", "queue", "skip"], "by name");
    for name in ["queue", "skip", "cancel_previous"] {
        let (status, _) = c
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/schedules/{name}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (status, _) = c.get("/v1/schedules/queue").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn refusals(s: &TestServer) {
    let c = Client::new(s, &s.admin_token);
    let (status, v) = c
        .post(
            "/v1/schedules",
            json!({"name": "bad name", "cron": "61 * * * *", "tz": "Mars/Base", "job": shell("true"), "template": {"name": "t"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let fields = error_fields(&v);
    assert_eq!(
        fields,
        ["name", "cron", "tz", "template", "template.name"],
        "{v}"
    );
    let (status, v) = c
        .post(
            "/v1/schedules",
            json!({"name": "t", "cron": "0 3 * * *", "template": {"name": "nope"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    // A schedule's job is shown to every reader: it keeps no secrets.
    let mut secret = shell("true");
    secret["secrets"] = json!({"API_KEY": "s3cr3t-value"});
    let (status, v) = c
        .post(
            "/v1/schedules",
            json!({"name": "s", "cron": "0 3 * * *", "job": secret}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(error_fields(&v), ["job.secrets"]);
    // A template with a parameter the schedule does not give.
    let (status, v) = c
        .post(
            "/v1/templates",
            json!({"name": "greet", "job": shell("echo {{ params.who }}")}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, v) = c
        .post(
            "/v1/schedules",
            json!({"name": "g", "cron": "0 3 * * *", "tz": "Europe/Lisbon", "template": {"name": "greet"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("template.params.who"), "{v}");
    let body = json!({"name": "g", "cron": "0 3 * * *", "tz": "Europe/Lisbon", "template": {"name": "greet", "params": {"who": "lab"}}});
    let (status, v) = c.post("/v1/schedules", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["tz"], "Europe/Lisbon");
    let (status, _) = c.post("/v1/schedules", body).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedules_tick_with_their_policies_sqlite() {
    let s = TestServer::start().await;
    refusals(&s).await;
    ticker(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedules_tick_with_their_policies_postgres() {
    let db = drover_server::testing_pg::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(TestServer::config_shared(tmp.path(), &db)).await;
    refusals(&s).await;
    ticker(&s).await;
}

/// Two servers (on SQLite, which takes one server, two tick passes of one) tick the
/// same due schedule at once, then a restarted one sees the same tick due: one job in
/// all.
async fn a_tick_submits_once(dir: &std::path::Path, db: Option<&str>) {
    let first = Store::open(dir, db).await.unwrap();
    let second = match db {
        Some(_) => Store::open(dir, db).await.unwrap(),
        None => first.clone(),
    };
    let now = Utc::now();
    let req: ScheduleCreate = serde_json::from_value(json!({
        "name": "nightly", "cron": "0 3 * * *", "job": shell("true"), "catch_up": "all"
    }))
    .unwrap();
    let cron: Cron = req.check(now).unwrap();
    // Waiting for a tick an hour ago: due now.
    let tick = now - chrono::Duration::hours(1);
    first.create_schedule(&req, Some(tick), now).await.unwrap();
    let s = first.due_schedules(now).await.unwrap().remove(0);
    let job = || {
        let mut r = SubmitRequest::shell("true");
        r.idempotency_key = Some(tick_key("nightly", tick));
        vec![(tick, r.validate(now).unwrap())]
    };
    let next = cron.next_after(now).unwrap();
    let (a, b) = tokio::join!(
        first.tick(&s, tick, next, job(), None, now),
        second.tick(&s, tick, next, job(), None, now)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.is_some() != b.is_some(), "exactly one server ticks");
    let done = a.or(b).unwrap();
    assert_eq!(done.submitted.len(), 1);
    first.close().await;
    second.close().await;

    let restarted = Store::open(dir, db).await.unwrap();
    assert!(restarted.due_schedules(now).await.unwrap().is_empty());
    let again = restarted
        .tick(&s, tick, next, job(), None, now)
        .await
        .unwrap();
    assert!(again.is_none(), "a tick already taken is not taken again");
    let key = tick_key("nightly", tick);
    let id = restarted.job_by_key(&key).await.unwrap();
    assert_eq!(id.as_deref(), Some(done.submitted[0].as_str()));
    let shown = restarted.schedule("nightly").await.unwrap();
    assert_eq!(shown.next_tick_at, Some(next));
    assert_eq!(shown.last_job_id, Some(done.submitted[0].clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tick_submits_once_across_servers_and_restarts_sqlite() {
    let tmp = tempfile::tempdir().unwrap();
    a_tick_submits_once(tmp.path(), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tick_submits_once_across_servers_and_restarts_postgres() {
    let db = drover_server::testing_pg::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    a_tick_submits_once(tmp.path(), Some(&db)).await;
}

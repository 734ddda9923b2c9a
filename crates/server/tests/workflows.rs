//! Dependencies and arrays on SQLite and PostgreSQL: a chain of three with a failing
//! middle, conditions ok/any/failed, cancel cascading, circles and unknown jobs refused,
//! an array of 1,000 with parallelism 10 under eight agents, and a group canceled,
//! retried and waited on as one.

mod common;

use common::{agents, drain, error_fields, poll, register, shell, Client};
use drover_core::api::{JobPage, Lease};
use drover_core::group::Group;
use drover_core::JobState;
use drover_server::testing::TestServer;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn after(cmd: &str, deps: &[(&str, &str)]) -> Value {
    let mut job = shell(cmd);
    job["after"] = deps
        .iter()
        .map(|(id, cond)| json!({"job": id, "condition": cond}))
        .collect();
    job
}

/// Polls until the agent holds exactly `n` leases, and returns them by name.
async fn take(agent: &Client, n: usize) -> Vec<Lease> {
    let got = poll(agent, &[], 2000).await;
    assert_eq!(
        got.leases.len(),
        n,
        "{:?}",
        got.leases.iter().map(|l| &l.name).collect::<Vec<_>>()
    );
    got.leases
}

async fn end(agent: &Client, lease: &Lease, outcome: &str) {
    let code = if outcome == "succeeded" { 0 } else { 1 };
    let path = format!(
        "/v1/jobs/{}/attempts/{}/finish",
        lease.job_id, lease.attempt
    );
    let (status, v) = agent
        .post(&path, json!({"outcome": outcome, "exit_code": code}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

fn named(mut job: Value, name: &str) -> Value {
    job["name"] = json!(name);
    job
}

async fn dependencies(s: &TestServer) {
    let c = Client::new(s, &s.admin_token);
    let agent = register(s, "a", json!({})).await;

    // A chain of three whose middle fails, and jobs that wait on the middle otherwise.
    let a = c.submit(named(shell("true"), "A")).await;
    let b = c.submit(named(after("false", &[(&a.id, "ok")]), "B")).await;
    let cc = c.submit(named(after("true", &[(&b.id, "ok")]), "C")).await;
    let on_fail = c
        .submit(named(after("true", &[(&b.id, "failed")]), "D"))
        .await;
    let on_c = c
        .submit(named(after("true", &[(&cc.id, "any")]), "E"))
        .await;
    assert_eq!(b.state, JobState::Waiting);
    let seen = c.job(&b.id).await;
    assert_eq!(seen.after.len(), 1);
    assert_eq!(seen.after[0].job, a.id);
    let (_, v) = c.get(&format!("/v1/jobs/{}", cc.id)).await;
    assert_eq!(
        v["wait_reason"],
        json!(format!("waits for job {} to end", b.id))
    );

    let first = take(&agent, 1).await;
    assert_eq!(first[0].job_id, a.id, "only A is queued");
    end(&agent, &first[0], "succeeded").await;
    let second = take(&agent, 1).await;
    assert_eq!(second[0].job_id, b.id, "A's success queued B");
    end(&agent, &second[0], "failed").await;

    let c_now = c.job(&cc.id).await;
    assert_eq!(c_now.state, JobState::Canceled);
    assert!(
        c_now
            .error
            .as_deref()
            .unwrap()
            .starts_with("dependency_failed"),
        "{:?}",
        c_now.error
    );
    let (_, events) = c.get(&format!("/v1/jobs/{}/events", cc.id)).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["submitted", "canceled"]);
    let last = take(&agent, 2).await;
    let mut ids: Vec<&str> = last.iter().map(|l| l.job_id.as_str()).collect();
    ids.sort();
    let mut want = [on_fail.id.as_str(), on_c.id.as_str()];
    want.sort();
    assert_eq!(ids, want, ":failed on B and :any on C were queued");
    for l in &last {
        end(&agent, l, "succeeded").await;
    }

    // Dependencies that have already ended decide at submit.
    let ran = c.submit(after("true", &[(&a.id, "ok")])).await;
    assert_eq!(ran.state, JobState::Queued);
    let never = c.submit(after("true", &[(&b.id, "ok")])).await;
    assert_eq!(never.state, JobState::Canceled);
    let (status, _) = c
        .post(&format!("/v1/jobs/{}/cancel", ran.id), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);

    // Canceling a job cancels those waiting on it with :ok, and queues those with :any.
    let x = c.submit(shell("sleep 1")).await;
    let y = c.submit(after("true", &[(&x.id, "ok")])).await;
    let z = c.submit(after("true", &[(&x.id, "any")])).await;
    let (status, v) = c
        .post(&format!("/v1/jobs/{}/cancel", x.id), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(c.job(&y.id).await.state, JobState::Canceled);
    assert_eq!(c.job(&z.id).await.state, JobState::Queued);
    c.post(&format!("/v1/jobs/{}/cancel", z.id), json!({}))
        .await;

    // A waiting job can itself be canceled.
    let w = c.submit(shell("sleep 1")).await;
    let v2 = c.submit(after("true", &[(&w.id, "ok")])).await;
    let (status, v) = c
        .post(&format!("/v1/jobs/{}/cancel", v2.id), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "canceled");
    c.post(&format!("/v1/jobs/{}/cancel", w.id), json!({}))
        .await;

    // key:K names a job by its idempotency key.
    let mut keyed = shell("true");
    keyed["idempotency_key"] = json!("backend-17");
    let k = c.submit(keyed).await;
    let by_key = c.submit(after("true", &[("key:backend-17", "ok")])).await;
    assert_eq!(c.job(&by_key.id).await.after[0].job, k.id);
    c.post(&format!("/v1/jobs/{}/cancel", k.id), json!({}))
        .await;
    assert_eq!(c.job(&by_key.id).await.state, JobState::Canceled);
}

async fn refusals(s: &TestServer) {
    let c = Client::new(s, &s.admin_token);
    let before: JobPage = serde_json::from_value(c.get("/v1/jobs").await.1).unwrap();

    // A circle through idempotency keys in one batch.
    let mut p = after("true", &[("key:q", "ok")]);
    p["idempotency_key"] = json!("p");
    let mut q = after("true", &[("key:p", "any")]);
    q["idempotency_key"] = json!("q");
    let (status, v) = c.post("/v1/jobs/batch", json!({"jobs": [p, q]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let details = v["error"]["details"].to_string();
    assert!(details.contains("circle"), "{details}");
    assert!(details.contains("key:p → key:q → key:p"), "{details}");

    // A job that waits on itself.
    let mut me = after("true", &[("key:me", "ok")]);
    me["idempotency_key"] = json!("me");
    let (status, v) = c.post("/v1/jobs/batch", json!({"jobs": [me]})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");

    // Unknown jobs, each named; a bad condition; the same job twice.
    let (status, v) = c
        .post(
            "/v1/jobs",
            after("true", &[("nope", "ok"), ("key:nokey", "any")]),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let fields = error_fields(&v);
    assert_eq!(fields, ["after[0].job", "after[1].job"]);
    let (status, _) = c
        .post("/v1/jobs", after("true", &[("x", "sometimes")]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, v) = c
        .post("/v1/jobs", after("true", &[("x", "ok"), ("x", "any")]))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("named twice"));

    // A chain inside one batch is fine, in any order.
    let mut first = shell("true");
    first["idempotency_key"] = json!("first");
    let (status, v) = c
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [after("true", &[("key:first", "ok")]), first]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["jobs"][0]["state"], "waiting");
    assert_eq!(v["jobs"][1]["state"], "queued");
    let first_id = v["jobs"][1]["id"].as_str().unwrap();
    c.post(&format!("/v1/jobs/{first_id}/cancel"), json!({}))
        .await;

    let after_all: JobPage = serde_json::from_value(c.get("/v1/jobs").await.1).unwrap();
    assert_eq!(
        after_all.jobs.len(),
        before.jobs.len() + 2,
        "nothing of a refused submit was stored"
    );
}

async fn group(c: &Client, id: &str) -> Group {
    let (status, v) = c.get(&format!("/v1/groups/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    serde_json::from_value(v).unwrap()
}

async fn arrays(s: &TestServer) {
    let c = Client::new(s, &s.admin_token);
    // 1,000 members, at most 10 at once, under eight agents.
    let mut job = shell("true");
    job["name"] = json!("sweep");
    let (status, v) = c
        .post(
            "/v1/groups",
            json!({"job": job, "array": {"count": 1000, "parallelism": 10}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let g: Group = serde_json::from_value(v).unwrap();
    assert_eq!((g.count, g.state.as_str()), (1000, "queued"));
    assert_eq!(g.counts.get(&JobState::Queued), Some(&1000));
    let (_, v) = c.get(&format!("/v1/jobs?group={}&limit=1000", g.id)).await;
    let members: JobPage = serde_json::from_value(v).unwrap();
    assert_eq!(members.jobs.len(), 1000);
    let mut indexes: Vec<u32> = members
        .jobs
        .iter()
        .map(|j| {
            assert_eq!(
                j.env["DROVER_ARRAY_INDEX"],
                j.array_index.unwrap().to_string()
            );
            j.array_index.unwrap()
        })
        .collect();
    indexes.sort();
    assert_eq!(indexes, (0..1000).collect::<Vec<_>>());
    let most = drain(agents(s, &["default"]).await, 1000, "sweep[").await;
    assert!((1..=10).contains(&most), "{most} members held at once");
    let done = group(&c, &g.id).await;
    assert_eq!(done.state.as_str(), "succeeded");
    assert_eq!(done.percent, 100.0);

    // A job waits for a whole group; the group fails, is retried, and succeeds.
    let (_, v) = c
        .post(
            "/v1/groups",
            json!({"job": named(shell("false"), "trio"), "array": {"first": 5, "count": 3}}),
        )
        .await;
    let trio: Group = serde_json::from_value(v).unwrap();
    let waiter = c.submit(after("true", &[(&trio.id, "ok")])).await;
    assert_eq!(c.job(&waiter.id).await.after.len(), 3);
    let agent = register(s, "g", json!({})).await;
    let leases = take(&agent, 3).await;
    end(&agent, &leases[0], "succeeded").await;
    let mid = group(&c, &trio.id).await;
    assert_eq!(mid.state.as_str(), "running");
    assert!((mid.percent - 33.3).abs() < 0.1, "{}", mid.percent);
    end(&agent, &leases[1], "failed").await;
    end(&agent, &leases[2], "failed").await;
    assert_eq!(group(&c, &trio.id).await.state.as_str(), "failed");
    assert_eq!(c.job(&waiter.id).await.state, JobState::Canceled);

    let (status, v) = c
        .post(&format!("/v1/groups/{}/retry", trio.id), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["changed"], 2, "the failed two run again");
    assert_eq!(v["group"]["state"], "running");
    for l in take(&agent, 2).await {
        end(&agent, &l, "succeeded").await;
    }
    assert_eq!(group(&c, &trio.id).await.state.as_str(), "succeeded");

    // Cancel as one: waiting, queued and running members.
    let (_, v) = c
        .post(
            "/v1/groups",
            json!({"job": shell("sleep 5"), "array": {"count": 4}}),
        )
        .await;
    let four: Group = serde_json::from_value(v).unwrap();
    let running = take(&agent, 4).await;
    let (status, v) = c
        .post(&format!("/v1/groups/{}/cancel", four.id), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["changed"], 4);
    let asked = poll(
        &agent,
        &running
            .iter()
            .map(|l| (l.job_id.clone(), l.attempt))
            .collect::<Vec<_>>(),
        0,
    )
    .await;
    let cancels = asked
        .controls
        .iter()
        .filter(|c| matches!(c, drover_core::api::Control::Cancel { .. }))
        .count();
    assert_eq!(cancels, 4, "the agent is told to stop all four");
    for l in &running {
        end(&agent, l, "canceled").await;
    }
    assert_eq!(group(&c, &four.id).await.state.as_str(), "canceled");

    // The same idempotency key returns the same group.
    let mut keyed = shell("true");
    keyed["idempotency_key"] = json!("nightly-2026-11-25");
    let body = json!({"job": keyed, "array": {"count": 2}});
    let (status, first) = c.post("/v1/groups", body.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, again) = c.post("/v1/groups", body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(first["id"], again["id"]);
    let (_, v) = c.get("/v1/groups?limit=2").await;
    assert_eq!(v["groups"][0]["id"], first["id"], "newest first");
    assert!(v["next_cursor"].is_string());

    // Bad input, every problem at once.
    let mut both = shell("true");
    both["concurrency_key"] = json!("gpu");
    let (status, v) = c
        .post(
            "/v1/groups",
            json!({"job": both, "array": {"count": 0, "parallelism": 2}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let fields = error_fields(&v);
    assert_eq!(fields, ["array.count", "array.parallelism"]);
    // A dependency no job has, named once for the whole array.
    let (status, v) = c
        .post(
            "/v1/groups",
            json!({"job": after("true", &[("nope", "ok")]), "array": {"count": 3}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(error_fields(&v), ["job.after[0].job"]);
    let (status, _) = c.get("/v1/groups/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = c.post("/v1/groups/nope/cancel", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn all(s: TestServer) {
    dependencies(&s).await;
    refusals(&s).await;
    arrays(&s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dependencies_and_arrays_sqlite() {
    all(TestServer::start().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dependencies_and_arrays_postgres() {
    let db = drover_server::testing_pg::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    all(TestServer::start_with(TestServer::config_shared(tmp.path(), &db)).await).await;
}

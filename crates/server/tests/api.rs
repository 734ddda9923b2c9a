//! HTTP tests for every endpoint, the agent protocol and each error the API promises.

use std::time::{Duration, Instant};

mod common;

use common::{error_code, poll, register, shell, Client};
use drover_core::api::*;
use drover_core::JobState;
use drover_server::testing::TestServer;
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test]
async fn submit_get_list_and_idempotency() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let job = c
        .submit(json!({"exec": {"kind": "process", "argv": ["echo", "a b"]}, "name": "hello", "queue": "q1", "priority": "high",
            "labels": {"gpu": "a100"}, "timeout_ms": 5000, "max_attempts": 3, "env": {"A": "1"}, "secrets": {"TOKEN": "s3cr3t"},
            "metadata": {"ticket": 7}, "idempotency_key": "k1"}))
        .await;
    assert_eq!(
        (job.state, job.priority, job.queue.as_str()),
        (JobState::Queued, 100, "q1")
    );
    assert_eq!(job.secret_names, ["TOKEN"]);
    let got = c.job(&job.id).await;
    assert_eq!(got.metadata, json!({"ticket": 7}));
    assert!(
        !serde_json::to_string(&got).unwrap().contains("s3cr3t"),
        "secret values are never shown"
    );
    let (status, again) = c
        .post(
            "/v1/jobs",
            json!({"exec": {"kind": "shell", "command": "other"}, "idempotency_key": "k1"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["id"], json!(job.id));

    let (status, v) = c
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [shell("echo 1"), shell("echo 2"), shell("echo 3")]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["jobs"].as_array().unwrap().len(), 3);

    let (_, v) = c.get("/v1/jobs?queue=q1").await;
    assert_eq!(v["jobs"].as_array().unwrap().len(), 1);
    let (_, v) = c.get("/v1/jobs?label=gpu=a100").await;
    assert_eq!(v["jobs"][0]["id"], json!(job.id));
    let (_, v) = c.get("/v1/jobs?name=hello&state=queued").await;
    assert_eq!(v["jobs"].as_array().unwrap().len(), 1);
    // Cursor pagination walks all four jobs, newest first, without repeats.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=3&cursor={c}"),
            None => "/v1/jobs?limit=3".to_string(),
        };
        let (status, v) = c.get(&path).await;
        assert_eq!(status, StatusCode::OK);
        let page: JobPage = serde_json::from_value(v).unwrap();
        seen.extend(page.jobs.into_iter().map(|j| j.id));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 4);
    assert_eq!(seen.last(), Some(&job.id));
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_harms_nothing() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let kept = c.submit(shell("echo kept")).await;

    let (status, v) = c.post("/v1/jobs", json!({"exec": {"kind": "shell", "command": ""}, "max_attempts": 0, "queue": "", "env": {"1X": "y"}})).await;
    assert_eq!(
        (status, error_code(&v)),
        (StatusCode::BAD_REQUEST, "invalid_spec")
    );
    assert_eq!(
        v["error"]["details"].as_array().unwrap().len(),
        4,
        "every problem is listed: {v}"
    );

    let resp = reqwest::Client::new()
        .post(format!("{}/v1/jobs", server.url))
        .bearer_auth(&server.admin_token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(error_code(&v), "bad_request");

    // A value of the wrong type is named by where it is.
    let (status, v) = c
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [shell("fine"), {"exec": {"kind": "process", "argv": "ls -l"}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("jobs[1]"), "{message}");

    // JSON without a JSON content type is refused with a hint.
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/jobs", server.url))
        .bearer_auth(&server.admin_token)
        .body(shell("x").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let v: Value = resp.json().await.unwrap();
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Content-Type: application/json"));

    let (status, v) = c
        .post(
            "/v1/jobs",
            json!({"exec": {"kind": "shell", "command": "x"}, "colour": "red"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("colour"));

    let (status, v) = c
        .post("/v1/jobs/batch", json!({"jobs": [shell("ok"), shell(" ")]}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        v["error"]["details"][0]["field"],
        json!("jobs[1].exec.command")
    );

    let huge = "x".repeat(9 * 1024 * 1024);
    let (status, v) = c.post("/v1/jobs", shell(&huge)).await;
    assert_eq!(
        (status, error_code(&v)),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );

    for path in [
        "/v1/jobs/nope",
        "/v1/jobs/nope/events",
        "/v1/jobs/nope/logs",
        "/v1/jobs/nope/logs.txt",
        "/v1/nothing",
    ] {
        let (status, v) = c.get(path).await;
        assert_eq!(
            (status, error_code(&v)),
            (StatusCode::NOT_FOUND, "not_found"),
            "{path}"
        );
    }
    for path in ["/v1/jobs/nope/cancel", "/v1/jobs/nope/retry"] {
        let (status, _) = c.post(path, json!({})).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, v) = c.get("/v1/jobs?state=done").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unknown state"));
    let (status, _) = c.get("/v1/jobs?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = c.get("/v1/jobs?cursor=abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, v) = c
        .post(&format!("/v1/jobs/{}/retry", kept.id), json!({}))
        .await;
    assert_eq!((status, error_code(&v)), (StatusCode::CONFLICT, "conflict"));
    let (status, _) = c
        .post(&format!("/v1/jobs/{}/cancel", kept.id), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, v) = c
        .post(&format!("/v1/jobs/{}/cancel", kept.id), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot cancel a job that is canceled"),
        "{v}"
    );
    assert_eq!(
        c.job(&kept.id).await.state,
        JobState::Canceled,
        "the stored job is intact"
    );
}

#[tokio::test]
async fn tokens_are_required_and_scoped() {
    let server = TestServer::start().await;
    let none = Client::new(&server, "");
    let resp = reqwest::get(format!("{}/v1/jobs", server.url))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let bad = Client::new(&server, "not-a-token");
    assert_eq!(bad.get("/v1/jobs").await.0, StatusCode::UNAUTHORIZED);
    let join = Client::new(&server, &server.join_token);
    let (status, v) = join.post("/v1/jobs", shell("true")).await;
    assert_eq!(
        (status, error_code(&v)),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let agent = register(&server, "a", json!({})).await;
    assert_eq!(
        agent.get("/v1/jobs").await.0,
        StatusCode::FORBIDDEN,
        "agent tokens are not client tokens"
    );
    assert_eq!(
        none.post("/v1/agents/poll", json!({})).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        reqwest::get(format!("{}/healthz", server.url))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        reqwest::get(format!("{}/readyz", server.url))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        reqwest::get(format!("{}/metrics", server.url))
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn long_poll_is_woken_by_a_submit() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let agent = register(&server, "waiter", json!({})).await;
    let started = Instant::now();
    let waiting = tokio::spawn(async move { poll(&agent, &[], 30_000).await });
    common::wait_parked(&server, 1).await;
    let job = c.submit(shell("echo hi")).await;
    let resp = waiting.await.unwrap();
    assert_eq!(resp.leases.len(), 1);
    assert_eq!(resp.leases[0].job_id, job.id);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "answered by the wake-up, not the timeout"
    );
}

#[tokio::test]
async fn a_poll_holding_running_attempts_ends_before_their_leases_do() {
    // The test server's TTL is 3 s: a minute's hold would lose the lease it renewed.
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let job = c.submit(shell("sleep 100")).await;
    let agent = register(&server, "holder", json!({})).await;
    let lease = poll(&agent, &[], 1000).await.leases.remove(0);
    let base = format!("/v1/jobs/{}/attempts/{}", job.id, lease.attempt);
    assert_eq!(
        agent.post(&format!("{base}/start"), json!({})).await.0,
        StatusCode::OK
    );
    let running = [(job.id.clone(), lease.attempt)];
    for _ in 0..3 {
        let started = Instant::now();
        let answer = poll(&agent, &running, 60_000).await;
        assert!(answer.controls.is_empty(), "{:?}", answer.controls);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "held past the TTL"
        );
    }
    assert_eq!(
        c.job(&job.id).await.state,
        JobState::Running,
        "the lease was kept"
    );
}

#[tokio::test]
async fn attempt_lifecycle_with_logs_progress_result_and_fencing() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let job = c
        .submit(json!({"exec": {"kind": "shell", "command": "echo hi"}, "secrets": {"K": "v4lue"}}))
        .await;
    let agent = register(&server, "worker", json!({})).await;
    let other = register(&server, "other", json!({})).await;
    let lease = poll(&agent, &[], 1000).await.leases.remove(0);
    assert_eq!((lease.job_id.as_str(), lease.attempt), (job.id.as_str(), 1));
    assert_eq!(
        lease.secrets.get("K").map(String::as_str),
        Some("v4lue"),
        "secrets go to the agent with the lease"
    );
    let base = format!("/v1/jobs/{}/attempts/1", job.id);
    let (status, v) = agent.post(&format!("{base}/start"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(c.job(&job.id).await.state, JobState::Running);

    let rec = |seq: u64, text: &str| json!({"seq": seq, "ts": chrono::Utc::now(), "stream": "stdout", "text": text});
    assert_eq!(
        agent
            .post(
                &format!("{base}/logs"),
                json!({"records": [rec(2, "two"), rec(3, "three")]})
            )
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        agent
            .post(
                &format!("{base}/logs"),
                json!({"records": [rec(1, "one"), rec(2, "two")]})
            )
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        agent
            .post(
                &format!("{base}/progress"),
                json!({"percent": 42.0, "message": "half"})
            )
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    let got = c.job(&job.id).await;
    assert_eq!(
        got.progress,
        Some(Progress {
            percent: 42.0,
            message: "half".into()
        })
    );

    let (status, v) = other
        .post(&format!("{base}/progress"), json!({"percent": 1.0}))
        .await;
    assert_eq!(
        (status, error_code(&v)),
        (StatusCode::FORBIDDEN, "forbidden"),
        "another agent's attempt"
    );
    let (status, v) = agent
        .post(
            &format!("/v1/jobs/{}/attempts/7/logs", job.id),
            json!({"records": [rec(1, "x")]}),
        )
        .await;
    assert_eq!(
        (status, error_code(&v)),
        (StatusCode::CONFLICT, "stale_attempt")
    );
    let too_many: Vec<Value> = (1..=10_001).map(|s| rec(s, "x")).collect();
    let (status, _) = agent
        .post(&format!("{base}/logs"), json!({"records": too_many}))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let (status, page) = c.get(&format!("/v1/jobs/{}/logs", job.id)).await;
    assert_eq!(status, StatusCode::OK);
    let page: LogPage = serde_json::from_value(page).unwrap();
    assert_eq!(
        page.records
            .iter()
            .map(|r| r.text.as_str())
            .collect::<Vec<_>>(),
        ["one", "two", "three"]
    );
    assert!(!page.complete, "the attempt is still running");

    let (status, v) = agent
        .post(
            &format!("{base}/finish"),
            json!({"outcome": "succeeded", "exit_code": 0, "result": {"score": 0.9}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let done = c.job(&job.id).await;
    assert_eq!((done.state, done.exit_code), (JobState::Succeeded, Some(0)));
    assert_eq!(done.result, Some(json!({"score": 0.9})));
    let (status, v) = agent
        .post(&format!("{base}/finish"), json!({"outcome": "failed"}))
        .await;
    assert_eq!(
        (status, error_code(&v)),
        (StatusCode::CONFLICT, "already_finished"),
        "a finished attempt cannot be finished differently"
    );

    let (_, page) = c
        .get(&format!("/v1/jobs/{}/logs?after=1&stream=stdout", job.id))
        .await;
    let page: LogPage = serde_json::from_value(page).unwrap();
    assert_eq!(
        (page.records.len(), page.last_seq, page.complete),
        (2, 3, true)
    );
    let text = reqwest::Client::new()
        .get(format!("{}/v1/jobs/{}/logs.txt", server.url, job.id))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, "one\ntwo\nthree\n");

    let (_, ev) = c.get(&format!("/v1/jobs/{}/events", job.id)).await;
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["submitted", "leased", "started", "finished"]);
    assert!(ev["events"][1]["actor"]
        .as_str()
        .unwrap()
        .starts_with("agent:"));

    let (status, _) = c
        .post(&format!("/v1/jobs/{}/retry", job.id), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let lease = poll(&agent, &[], 1000).await.leases.remove(0);
    assert_eq!(lease.attempt, 2, "a retry is a new attempt");
}

#[tokio::test]
async fn agent_writes_that_contradict_themselves_or_the_protocol_are_refused() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let job = c.submit(shell("true")).await;
    let agent = register(&server, "worker", json!({})).await;

    // A poll with a field the protocol does not have is refused, as a submit is.
    let (status, v) = agent
        .post(
            "/v1/agents/poll",
            json!({"running": [], "wait_ms": 0, "runing": []}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("runing"),
        "{v}"
    );

    let lease = poll(&agent, &[], 1000).await.leases.remove(0);
    let base = format!("/v1/jobs/{}/attempts/{}", job.id, lease.attempt);
    assert_eq!(
        agent.post(&format!("{base}/start"), json!({})).await.0,
        StatusCode::OK
    );
    for percent in [-1.0, 100.5] {
        let (status, v) = agent
            .post(&format!("{base}/progress"), json!({"percent": percent}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{percent}: {v}");
    }
    let finish = |outcome: &str, code: Option<i32>, error: Option<&str>| json!({"outcome": outcome, "exit_code": code, "error": error, "result": null});
    for (body, why) in [
        (
            finish("succeeded", Some(3), None),
            "disagrees with exit code 3",
        ),
        (finish("failed", Some(0), None), "needs an error"),
    ] {
        let (status, v) = agent.post(&format!("{base}/finish"), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{v}");
        let mut item = body.clone();
        item["job_id"] = json!(job.id);
        item["attempt"] = json!(lease.attempt);
        let (status, v) = agent
            .post("/v1/agents/finish", json!({"finishes": [item]}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("finishes[0]: "),
            "{v}"
        );
    }
    assert_eq!(
        c.job(&job.id).await.state,
        JobState::Running,
        "nothing was stored"
    );
    let (status, v) = agent
        .post(
            &format!("{base}/finish"),
            finish("failed", Some(0), Some("result file is not valid JSON")),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a failure with exit code 0 and a reason: {v}"
    );

    // A token of the wrong kind is told so.
    let (status, v) = agent.get("/v1/jobs").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("agent's session token"),
        "{v}"
    );
    let (status, v) = c.post("/v1/agents/poll", json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("client token"),
        "{v}"
    );
}

#[tokio::test]
async fn sse_follows_a_log_until_the_attempt_ends() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let job = c.submit(shell("x")).await;
    // Follow before the job is even leased.
    let url = format!("{}/v1/jobs/{}/logs/stream", server.url, job.id);
    let token = server.admin_token.clone();
    let follower = tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        resp.text().await.unwrap()
    });
    let agent = register(&server, "w", json!({})).await;
    let lease = poll(&agent, &[], 1000).await.leases.remove(0);
    let base = format!("/v1/jobs/{}/attempts/{}", lease.job_id, lease.attempt);
    for seq in 1..=3u64 {
        let body = json!({"records": [{"seq": seq, "ts": chrono::Utc::now(), "stream": "stdout", "text": format!("line {seq}")}]});
        // The first batch also reports the start, as agents do.
        let path = match seq {
            1 => format!("{base}/logs?start=true"),
            _ => format!("{base}/logs"),
        };
        assert_eq!(agent.post(&path, body).await.0, StatusCode::NO_CONTENT);
        let job = c.job(&lease.job_id).await;
        assert_eq!(job.state, JobState::Running, "after batch {seq}");
        assert!(job.started_at.is_some());
    }
    agent
        .post(
            &format!("{base}/finish"),
            json!({"outcome": "succeeded", "exit_code": 0}),
        )
        .await;
    let body = tokio::time::timeout(Duration::from_secs(20), follower)
        .await
        .expect("stream ends")
        .unwrap();
    let data: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.len(), 4, "{body}");
    for (i, d) in data[..3].iter().enumerate() {
        let rec: LogRecord = serde_json::from_str(d).unwrap();
        assert_eq!(rec.text, format!("line {}", i + 1));
    }
    assert!(body.contains("event: end"));
    assert!(body.contains("id: 3"));
}

#[tokio::test]
async fn cancel_of_a_running_job_reaches_its_agent_and_stale_runs_are_killed() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let job = c.submit(shell("sleep 100")).await;
    let agent = register(&server, "w", json!({})).await;
    let lease = poll(&agent, &[], 1000).await.leases.remove(0);
    agent
        .post(&format!("/v1/jobs/{}/attempts/1/start", job.id), json!({}))
        .await;
    let running = [(job.id.clone(), 1)];
    let agent2 = Client {
        http: reqwest::Client::new(),
        base: agent.base.clone(),
        token: agent.token.clone(),
    };
    let running2 = running.clone();
    let waiting = tokio::spawn(async move { poll(&agent2, &running2, 30_000).await });
    let (status, v) = c
        .post(&format!("/v1/jobs/{}/cancel", job.id), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["cancel_requested"], json!(true));
    assert_eq!(
        v["state"],
        json!("running"),
        "running until the agent confirms"
    );
    let resp = waiting.await.unwrap();
    assert_eq!(
        resp.controls,
        [Control::Cancel {
            job_id: job.id.clone(),
            attempt: lease.attempt
        }]
    );
    agent
        .post(
            &format!("/v1/jobs/{}/attempts/1/finish", job.id),
            json!({"outcome": "canceled", "error": "canceled by user"}),
        )
        .await;
    assert_eq!(c.job(&job.id).await.state, JobState::Canceled);
    // The attempt this agent's own finish ended is done, not stale: only the unknown
    // one is killed.
    let resp = poll(&agent, &[(job.id.clone(), 1), ("gone".into(), 3)], 0).await;
    assert_eq!(
        resp.controls,
        [Control::Kill {
            job_id: "gone".into(),
            attempt: 3
        }]
    );
}

/// Regression: cancel, retry and a repeated submit answered the job without its attempts
/// and dependencies, unlike `GET /v1/jobs/{id}`.
#[tokio::test]
async fn cancel_retry_and_a_repeated_submit_answer_the_whole_job() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let mut spec = shell("true");
    spec["idempotency_key"] = json!("whole-job");
    let a = c.submit(spec.clone()).await;
    let mut waiter = shell("true");
    waiter["after"] = json!([{"job": a.id}]);
    let b = c.submit(waiter).await;
    let agent = register(&server, "w", json!({})).await;
    let lease = poll(&agent, &[], 1000).await.leases.remove(0);
    assert_eq!(lease.job_id, a.id);
    // The job as a GET shows it, less what only a GET works out (where a queued job
    // stands in its queue, and why it waits).
    let got = |id: String| {
        let c = &c;
        async move {
            let mut v = c.get(&format!("/v1/jobs/{id}")).await.1;
            for only_get in ["queue_position", "wait_reason"] {
                v.as_object_mut().unwrap().remove(only_get);
            }
            v
        }
    };

    let (status, again) = c.post("/v1/jobs", spec).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["attempts"].as_array().unwrap().len(), 1, "{again}");
    assert_eq!(again, got(a.id.clone()).await);

    let (status, canceled) = c
        .post(&format!("/v1/jobs/{}/cancel", b.id), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{canceled}");
    assert_eq!(canceled["after"][0]["job"], json!(a.id), "{canceled}");
    assert_eq!(canceled, got(b.id.clone()).await);

    let (status, v) = agent
        .post(
            &format!("/v1/jobs/{}/attempts/{}/finish", a.id, lease.attempt),
            json!({"outcome": "failed", "exit_code": 1}),
        )
        .await;
    assert!(status.is_success(), "{v}");
    let (status, retried) = c.post(&format!("/v1/jobs/{}/retry", a.id), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(
        retried["attempts"][0]["state"],
        json!("failed"),
        "{retried}"
    );
    assert_eq!(retried, got(a.id.clone()).await);
}

#[tokio::test]
async fn agents_are_listed_and_go_offline_when_polls_stop() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let agent = register(&server, "lister", json!({"gpu": "a100"})).await;
    poll(&agent, &[], 0).await;
    let (_, v) = c.get("/v1/agents").await;
    let list: AgentList = serde_json::from_value(v).unwrap();
    assert_eq!(list.agents.len(), 1);
    assert_eq!(
        (list.agents[0].name.as_str(), list.agents[0].status.as_str()),
        ("lister", "online")
    );
    assert_eq!(list.agents[0].queues, ["default"]);
    // The test server's lease TTL is 3 s; wait it out by watching the status flip.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = c.get("/v1/agents").await;
        if v["agents"][0]["status"] == json!("offline") {
            break;
        }
        assert!(Instant::now() < deadline, "agent never went offline");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_lost_agent_s_job_is_retried_on_another_agent() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let job = c
        .submit(json!({"exec": {"kind": "shell", "command": "x"}, "max_attempts": 2}))
        .await;
    let dead = register(&server, "dead", json!({})).await;
    poll(&dead, &[], 0).await;
    dead.post(&format!("/v1/jobs/{}/attempts/1/start", job.id), json!({}))
        .await;
    // `dead` never polls again; the reaper expires its lease after the 3 s TTL.
    let alive = register(&server, "alive", json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let lease = loop {
        let mut resp = poll(&alive, &[], 5_000).await;
        if let Some(l) = resp.leases.pop() {
            break l;
        }
        assert!(Instant::now() < deadline, "job was never re-leased");
    };
    assert_eq!((lease.job_id.as_str(), lease.attempt), (job.id.as_str(), 2));
    let (status, v) = dead
        .post(
            &format!("/v1/jobs/{}/attempts/1/finish", job.id),
            json!({"outcome": "succeeded"}),
        )
        .await;
    assert_eq!(
        (status, error_code(&v)),
        (StatusCode::CONFLICT, "stale_attempt")
    );
    let got = c.job(&job.id).await;
    assert_eq!(got.attempts[0].state, AttemptState::Lost);
}

#[tokio::test]
async fn ops_endpoints_and_openapi_cover_every_route() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    c.submit(shell("true")).await;
    let (status, metrics) = c.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let metrics = metrics.as_str().unwrap().to_string();
    for name in [
        "drover_jobs{queue=\"default\",state=\"queued\"} 1",
        "drover_agents_online 0",
        "drover_submit_to_start_seconds_bucket",
        "drover_job_duration_seconds",
        "drover_http_requests_total{method=\"POST\",route=\"/v1/jobs\",status=\"201\"} 1",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    let (status, doc) = c.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);

    let paths = doc["paths"].as_object().unwrap();
    let ops: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    // Keep in step with api::router (tests/security.rs checks each one's access rules).
    assert_eq!(
        (paths.len(), ops),
        (49, 59),
        "{:?}",
        paths.keys().collect::<Vec<_>>()
    );
    for schema in [
        "SubmitRequest",
        "Job",
        "Lease",
        "PollRequest",
        "Control",
        "LogRecord",
        "ErrorBody",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
}

#[tokio::test]
async fn shutdown_tells_waiting_polls_to_reconnect() {
    let mut server = TestServer::start().await;
    let agent = register(&server, "w", json!({})).await;
    let waiting = tokio::spawn(async move { poll(&agent, &[], 30_000).await });
    let started = Instant::now();
    common::wait_parked(&server, 1).await;
    server.stop().await;
    let resp = waiting.await.unwrap();
    assert_eq!(resp.controls, [Control::Reconnect]);
    assert!(started.elapsed() < Duration::from_secs(25));
}

#[tokio::test]
async fn finish_batch_ends_many_attempts_and_refuses_stale_ones_individually() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let (status, _) = c
        .post(
            "/v1/jobs/batch",
            json!({"jobs": [shell("a"), shell("b"), shell("c")]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let agent = register(&server, "batcher", json!({})).await;
    let other = register(&server, "other", json!({})).await;
    let leases = poll(&agent, &[], 1000).await.leases;
    assert_eq!(leases.len(), 3);
    let item = |l: &Lease, outcome: &str| json!({"job_id": l.job_id, "attempt": l.attempt, "outcome": outcome, "exit_code": i32::from(outcome == "failed")});
    let mut finishes = vec![item(&leases[0], "succeeded"), item(&leases[1], "failed")];
    finishes.push(json!({"job_id": leases[2].job_id, "attempt": 9, "outcome": "succeeded"}));
    let (status, v) = other
        .post(
            "/v1/agents/finish",
            json!({"finishes": [item(&leases[2], "succeeded")]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["results"][0]["status"], json!("forbidden"));
    let (status, v) = agent
        .post("/v1/agents/finish", json!({"finishes": finishes}))
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let got: FinishBatchResult = serde_json::from_value(v).unwrap();
    let statuses: Vec<&str> = got.results.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["ok", "ok", "stale_attempt"]);
    assert_eq!(got.results[0].state, Some(JobState::Succeeded));
    assert_eq!(c.job(&leases[1].job_id).await.state, JobState::Failed);
    assert_eq!(
        c.job(&leases[2].job_id).await.state,
        JobState::Leased,
        "the refused item changed nothing"
    );
}

/// A job that ended within moments of starting reports its start, its last records
/// and its end in one finish item: the start is kept as when it happened, the records
/// are stored before the job ends, and a refused item stores nothing.
#[tokio::test]
async fn finish_items_bring_the_start_and_last_records() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let (status, _) = c
        .post("/v1/jobs/batch", json!({"jobs": [shell("a"), shell("b")]}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let agent = register(&server, "folder", json!({})).await;
    let leases = poll(&agent, &[], 1000).await.leases;
    assert_eq!(leases.len(), 2);
    let rec = |seq: u64, text: &str| json!({"seq": seq, "ts": "2026-11-25T10:00:00.000Z", "stream": "stdout", "text": text});
    let item = |l: &Lease, attempt: u32| json!({"job_id": l.job_id, "attempt": attempt, "outcome": "succeeded", "exit_code": 0, "started_ms_ago": 300, "logs": [rec(1, "hello"), rec(2, "bye")]});

    // The process started 300 ms before the finish was sent, after the lease.
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A record with seq 0 refuses the whole batch, before anything is stored.
    let mut bad = item(&leases[0], 1);
    bad["logs"][1]["seq"] = json!(0);
    let (status, v) = agent
        .post(
            "/v1/agents/finish",
            json!({"finishes": [item(&leases[1], 1), bad]}),
        )
        .await;
    assert_eq!(
        (status, error_code(&v)),
        (StatusCode::BAD_REQUEST, "bad_request"),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("finishes[1]: "),
        "{v}"
    );
    let (_, page) = c.get(&format!("/v1/jobs/{}/logs", leases[1].job_id)).await;
    assert_eq!(page["records"], json!([]));
    assert_eq!(c.job(&leases[1].job_id).await.state, JobState::Leased);

    let (status, v) = agent
        .post(
            "/v1/agents/finish",
            json!({"finishes": [item(&leases[0], 1), item(&leases[1], 9)]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["results"][0]["status"], json!("ok"));
    assert_eq!(v["results"][1]["status"], json!("stale_attempt"));

    let job = c.job(&leases[0].job_id).await;
    assert_eq!(job.state, JobState::Succeeded);
    let (started, finished) = (job.started_at.unwrap(), job.finished_at.unwrap());
    let ran = (finished - started).num_milliseconds();
    assert!(
        (300..5_000).contains(&ran),
        "started {ran} ms before it finished"
    );
    assert_eq!(job.attempts[0].started_at, Some(started));
    assert_eq!(job.attempts_used, 1);
    let (_, events) = c.get(&format!("/v1/jobs/{}/events", job.id)).await;
    let events: JobEvents = serde_json::from_value(events).unwrap();
    let kinds: Vec<(&str, i64)> = events
        .events
        .iter()
        .map(|e| (e.kind.as_str(), (e.at - started).num_milliseconds()))
        .collect();
    assert_eq!(
        kinds.iter().map(|k| k.0).collect::<Vec<_>>(),
        ["submitted", "leased", "started", "finished"]
    );
    assert_eq!(kinds[2].1, 0, "the start is recorded when it happened");
    let (_, page) = c.get(&format!("/v1/jobs/{}/logs", job.id)).await;
    let page: LogPage = serde_json::from_value(page).unwrap();
    let texts: Vec<&str> = page.records.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(texts, ["hello", "bye"]);
    assert!(page.complete);

    // The refused item stored no records and changed nothing.
    let (_, page) = c.get(&format!("/v1/jobs/{}/logs", leases[1].job_id)).await;
    assert_eq!(page["records"], json!([]));
    assert_eq!(c.job(&leases[1].job_id).await.state, JobState::Leased);
}

/// Regression: agents keep two log batches in flight, so a later batch can be stored
/// before an earlier one; a follower (or a pager) that read in between moved past the
/// gap and never saw the earlier records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_and_pagers_never_skip_records_stored_out_of_order() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let jobs = 4;
    for _ in 0..jobs {
        c.submit(shell("x")).await;
    }
    let agent = register(&server, "w", json!({})).await;
    let leases = poll(&agent, &[], 1000).await.leases;
    assert_eq!(leases.len(), jobs);
    let mut followers = Vec::new();
    for lease in &leases {
        for _ in 0..5 {
            let url = format!("{}/v1/jobs/{}/logs/stream", server.url, lease.job_id);
            let token = server.admin_token.clone();
            followers.push(tokio::spawn(async move {
                let resp = reqwest::Client::new()
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .unwrap();
                resp.text().await.unwrap()
            }));
        }
    }
    let batch = |from: u64, to: u64| {
        let records: Vec<Value> = (from..=to)
            .map(|s| json!({"seq": s, "ts": chrono::Utc::now(), "stream": "stdout", "text": format!("line {s}")}))
            .collect();
        json!({ "records": records })
    };
    let rounds = 30;
    for round in 0..rounds {
        for lease in &leases {
            let base = format!("/v1/jobs/{}/attempts/{}", lease.job_id, lease.attempt);
            let first = round * 10;
            // The later half arrives first.
            let (status, v) = agent
                .post(
                    &format!("{base}/logs?start=true"),
                    batch(first + 6, first + 10),
                )
                .await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
            let (_, page) = c
                .get(&format!("/v1/jobs/{}/logs?after={first}", lease.job_id))
                .await;
            assert_eq!(page["records"], json!([]), "round {round}: {page}");
            assert_eq!(page["last_seq"], json!(first), "round {round}: {page}");
            let (status, v) = agent
                .post(&format!("{base}/logs"), batch(first + 1, first + 5))
                .await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
        }
    }
    for lease in &leases {
        let base = format!("/v1/jobs/{}/attempts/{}", lease.job_id, lease.attempt);
        let (status, v) = agent
            .post(
                &format!("{base}/finish"),
                json!({"outcome": "succeeded", "exit_code": 0}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    let want: Vec<u64> = (1..=rounds * 10).collect();
    for f in followers {
        let body = tokio::time::timeout(Duration::from_secs(30), f)
            .await
            .expect("stream ends")
            .unwrap();
        let seqs: Vec<u64> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<LogRecord>(d).ok())
            .map(|r| r.seq)
            .collect();
        assert_eq!(seqs, want, "a follower saw every record once, in order");
        assert!(body.contains("event: end"));
    }
}

/// Regression: a finish that was stored but whose answer was lost (a database restart)
/// was refused on retry with "no longer current; kill it", the answer a zombie gets.
#[tokio::test]
async fn a_repeated_finish_is_answered_again_and_a_different_one_is_refused() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let job = c.submit(shell("x")).await;
    let agent = register(&server, "w", json!({})).await;
    let lease = poll(&agent, &[], 1000).await.leases.remove(0);
    let base = format!("/v1/jobs/{}/attempts/{}", lease.job_id, lease.attempt);
    assert_eq!(
        agent.post(&format!("{base}/start"), json!({})).await.0,
        StatusCode::OK
    );
    let report = json!({"outcome": "failed", "exit_code": 3, "error": "exit code 3"});
    let (status, first) = agent.post(&format!("{base}/finish"), report.clone()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["state"], "failed");
    let (status, again) = agent.post(&format!("{base}/finish"), report).await;
    assert_eq!(status, StatusCode::OK, "the same finish again: {again}");
    assert_eq!(again["state"], "failed");
    let (status, batch) = agent
        .post("/v1/agents/finish", json!({"finishes": [{"job_id": job.id, "attempt": 1, "outcome": "failed", "exit_code": 3, "error": "exit code 3"}]}))
        .await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    assert_eq!(batch["results"][0]["status"], "ok", "{batch}");
    let (status, other) = agent
        .post(
            &format!("{base}/finish"),
            json!({"outcome": "succeeded", "exit_code": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{other}");
    assert_eq!(error_code(&other), "already_finished", "{other}");
    let events = c.get(&format!("/v1/jobs/{}/events", job.id)).await.1;
    let finished = events.to_string().matches("\"finished\"").count();
    assert_eq!(finished, 1, "stored once: {events}");
}

/// Registers an agent with one slot; its id and a client with its session token.
async fn register_with_id(server: &TestServer, name: &str) -> (String, Client) {
    let join = Client::new(server, &server.join_token);
    let (status, v) = join
        .post(
            "/v1/agents/register",
            json!({"name": name, "slots": 1, "host": HostInfo::default()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let resp: RegisterResponse = serde_json::from_value(v).unwrap();
    (resp.agent_id, Client::new(server, &resp.token))
}

/// Regression: a poll held while an admin removed its agent went on looking for work,
/// and leased the next job to the agent that no longer existed.
#[tokio::test]
async fn a_removed_agents_held_poll_ends_without_leases() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let (id, agent) = register_with_id(&server, "removed").await;
    let (draining_id, draining) = register_with_id(&server, "removed-draining").await;
    let token = agent.token.clone();
    let started = Instant::now();
    let held = tokio::spawn(async move {
        agent
            .post("/v1/agents/poll", json!({"running": [], "wait_ms": 30_000}))
            .await
    });
    let held_draining = tokio::spawn(async move {
        draining
            .post(
                "/v1/agents/poll",
                json!({"running": [], "wait_ms": 30_000, "draining": true}),
            )
            .await
    });
    common::wait_parked(&server, 2).await;
    for agent_id in [&id, &draining_id] {
        let (status, v) = c
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/agents/{agent_id}"),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    }
    // Work for the removed agent's slot, should its poll still be looking.
    let job = c.submit(shell("echo hi")).await;
    let (status, v) = held.await.unwrap();
    assert_eq!(
        (status, error_code(&v)),
        (StatusCode::UNAUTHORIZED, "unauthorized"),
        "the held poll ends without leases: {v}"
    );
    let later = Client::new(&server, &token)
        .post("/v1/agents/poll", json!({"running": [], "wait_ms": 0}))
        .await;
    assert_eq!((status, v), later, "the answer its next request gets");
    let (status, v) = held_draining.await.unwrap();
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a draining poll ends too: {v}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "ended by the removal, not by the wait"
    );
    let job = c.job(&job.id).await;
    assert_eq!(job.state, JobState::Queued);
    assert!(job.attempts.is_empty(), "{:?}", job.attempts);
}

/// Regression: `logs?start=true` recorded the start before it looked at the batch, so a
/// batch refused with 400 or 413 had changed the job all the same.
#[tokio::test]
async fn a_refused_log_batch_with_start_records_no_start() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let job = c.submit(shell("echo hi")).await;
    let agent = register(&server, "w", json!({})).await;
    let lease = poll(&agent, &[], 1000).await.leases.remove(0);
    let path = format!(
        "/v1/jobs/{}/attempts/{}/logs?start=true",
        job.id, lease.attempt
    );
    let rec = |seq: u64, text: String| json!({"seq": seq, "ts": chrono::Utc::now(), "stream": "stdout", "text": text});
    for (records, want) in [
        (vec![rec(0, "zero".into())], StatusCode::BAD_REQUEST),
        (
            vec![rec(1, "x".repeat(70_000))],
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let (status, v) = agent.post(&path, json!({ "records": records })).await;
        assert_eq!(status, want, "{v}");
        let got = c.job(&job.id).await;
        assert_eq!(
            (got.state, got.started_at, got.attempts_used),
            (JobState::Leased, None, 0),
            "a refused batch records no start"
        );
    }
    // A batch that passes its checks records the start.
    let (status, v) = agent
        .post(&path, json!({"records": [rec(1, "one".into())]}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let got = c.job(&job.id).await;
    assert_eq!((got.state, got.attempts_used), (JobState::Running, 1));
}

/// Regression: a progress update sent again after its answer was lost was stored twice
/// in the attempt's history.
#[tokio::test]
async fn a_resent_progress_update_is_stored_once() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let job = c.submit(shell("x")).await;
    let agent = register(&server, "w", json!({})).await;
    let lease = poll(&agent, &[], 1000).await.leases.remove(0);
    let path = format!("/v1/jobs/{}/attempts/{}/progress", job.id, lease.attempt);
    for percent in [40.0, 40.0, 50.0, 40.0] {
        let (status, v) = agent
            .post(&path, json!({"percent": percent, "message": "epoch 2/3"}))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    }
    let (_, h) = c.get(&format!("/v1/jobs/{}/progress", job.id)).await;
    let got: Vec<(u64, f64)> = h["updates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["seq"].as_u64().unwrap(), u["percent"].as_f64().unwrap()))
        .collect();
    assert_eq!(
        got,
        [(1, 40.0), (2, 50.0), (3, 40.0)],
        "the resend is not stored again; a later equal update is: {h}"
    );
    assert_eq!(
        c.job(&job.id).await.progress,
        Some(Progress {
            percent: 40.0,
            message: "epoch 2/3".into()
        })
    );
}

/// Regression: a release sent again after its answer was lost got 409 "no longer
/// current; kill it", the answer a zombie gets, though this agent had released it.
#[tokio::test]
async fn a_repeated_release_is_answered_again_and_other_releases_stay_stale() {
    let server = TestServer::start().await;
    let c = Client::new(&server, &server.admin_token);
    let job = c.submit(shell("x")).await;
    let agent = register(&server, "w", json!({})).await;
    let other = register(&server, "other", json!({})).await;
    let lease = poll(&agent, &[], 1000).await.leases.remove(0);
    let base = format!("/v1/jobs/{}/attempts/{}", lease.job_id, lease.attempt);
    assert_eq!(
        agent.post(&format!("{base}/start"), json!({})).await.0,
        StatusCode::OK
    );
    let (status, first) = agent.post(&format!("{base}/release"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        (&first["state"], &first["attempts_used"]),
        (&json!("queued"), &json!(0))
    );
    let (status, again) = agent.post(&format!("{base}/release"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "the same release again: {again}");
    assert_eq!(
        (&again["state"], &again["attempts_used"]),
        (&json!("queued"), &json!(0))
    );
    let (status, v) = other.post(&format!("{base}/release"), json!({})).await;
    assert_eq!(
        (status, error_code(&v)),
        (StatusCode::CONFLICT, "stale_attempt"),
        "another agent's release: {v}"
    );
    let events = c.get(&format!("/v1/jobs/{}/events", job.id)).await.1;
    let released = events.to_string().matches("\"released\"").count();
    assert_eq!(released, 1, "released once: {events}");

    // An attempt of this agent that was lost rather than released stays stale.
    let lease = poll(&agent, &[], 1000).await.leases.remove(0);
    assert_eq!((lease.job_id.as_str(), lease.attempt), (job.id.as_str(), 2));
    assert_eq!(
        agent.post("/v1/agents/leave", json!({})).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, v) = agent
        .post(
            &format!("/v1/jobs/{}/attempts/2/release", job.id),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, error_code(&v)),
        (StatusCode::CONFLICT, "stale_attempt"),
        "a lost attempt: {v}"
    );
}

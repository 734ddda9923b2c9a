//! Helpers of the HTTP tests: a JSON client with a token, agents that register and poll.
#![allow(dead_code)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use drover_core::api::*;
use drover_server::testing::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A JSON client with one token.
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

impl Client {
    pub fn new(server: &TestServer, token: &str) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: server.url.clone(),
            token: token.into(),
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    pub async fn submit(&self, body: Value) -> Job {
        let (status, v) = self.post("/v1/jobs", body).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        serde_json::from_value(v).unwrap()
    }

    pub async fn job(&self, id: &str) -> Job {
        let (status, v) = self.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        serde_json::from_value(v).unwrap()
    }
}

pub fn shell(cmd: &str) -> Value {
    json!({"exec": {"kind": "shell", "command": cmd}})
}

pub async fn register(server: &TestServer, name: &str, labels: Value) -> Client {
    register_in(server, name, labels, &[]).await
}

/// [`register`] for an agent that takes `queues` (none: `default`).
pub async fn register_in(
    server: &TestServer,
    name: &str,
    labels: Value,
    queues: &[&str],
) -> Client {
    let join = Client::new(server, &server.join_token);
    let (status, v) = join
        .post("/v1/agents/register", json!({"name": name, "labels": labels, "queues": queues, "slots": 4, "host": HostInfo::default()}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let resp: RegisterResponse = serde_json::from_value(v).unwrap();
    Client::new(server, &resp.token)
}

pub async fn poll(agent: &Client, running: &[(String, u32)], wait_ms: u64) -> PollResponse {
    let running: Vec<Value> = running
        .iter()
        .map(|(j, a)| json!({"job_id": j, "attempt": a}))
        .collect();
    let (status, v) = agent
        .post(
            "/v1/agents/poll",
            json!({"running": running, "wait_ms": wait_ms}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    serde_json::from_value(v).unwrap()
}

/// The fields an `invalid_spec` error names, in order.
pub fn error_fields(v: &Value) -> Vec<String> {
    v["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_string())
        .collect()
}

pub fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

/// Reads Server-Sent Events from `resp` until `done` says the events so far suffice;
/// `(event, data)` pairs. A guard of a minute keeps a broken stream from hanging the run.
pub async fn sse_until(
    mut resp: reqwest::Response,
    done: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    assert_eq!(resp.status(), StatusCode::OK);
    let mut buf = String::new();
    let mut events = Vec::new();
    let read = async {
        while !done(&events) {
            let chunk = resp.chunk().await.unwrap().expect("the stream ended early");
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let mut kind = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(k) = line.strip_prefix("event: ") {
                        kind = k.to_string();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push_str(d);
                    }
                }
                if !data.is_empty() || kind != "message" {
                    events.push((kind, data));
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), read)
        .await
        .unwrap_or_else(|_| panic!("the events wanted did not come: {events:?}"));
    events
}

/// Whether the server's `/metrics` has `line`.
pub async fn has_metric_line(server: &TestServer, line: &str) -> bool {
    let (_, text) = Client::new(server, &server.admin_token)
        .get("/metrics")
        .await;
    text.as_str().unwrap_or_default().lines().any(|l| l == line)
}

/// Waits until `n` polls are parked on the server, as its own gauge reports it.
pub async fn wait_parked(server: &TestServer, n: usize) {
    let started = std::time::Instant::now();
    while !has_metric_line(server, &format!("drover_polls_waiting {n}")).await {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "the poll never parked"
        );
        tokio::task::yield_now().await;
    }
}

/// Eight synthetic agents taking `queues`, each finishing what it leases after 5 ms.
pub async fn agents(s: &TestServer, queues: &[&str]) -> Vec<Client> {
    let mut out = Vec::new();
    for i in 0..8 {
        out.push(register_in(s, &format!("a{i}"), json!({}), queues).await);
    }
    out
}

/// The agents drain `jobs` jobs at once; returns the most held at the same time of the
/// jobs whose name starts with `counted`.
pub async fn drain(agents: Vec<Client>, jobs: usize, counted: &'static str) -> i64 {
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

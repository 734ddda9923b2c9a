//! Shared helpers for the agent tests: a server, an agent running in-process, and a
//! small HTTP client that waits on job states (never on fixed sleeps).

#![allow(dead_code)]

pub mod docker;

use std::time::Duration;

use drover_agent::{AgentConfig, AgentExit, AgentSignals};
use drover_core::api::{Job, LogPage, LogRecord, Stream};
use drover_core::{JobState, SubmitRequest};
use drover_server::testing::TestServer;

/// How long any wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A client of the job API with the admin token.
#[derive(Clone)]
pub struct Api {
    pub url: String,
    pub token: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(server: &TestServer) -> Api {
        Api {
            url: server.url.clone(),
            token: server.admin_token.clone(),
            http: reqwest::Client::new(),
        }
    }

    /// `GET path` (from `/v1/…` or `/metrics`) with the admin token.
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
    }

    pub async fn submit(&self, req: SubmitRequest) -> Job {
        let resp = self
            .http
            .post(format!("{}/v1/jobs", self.url))
            .bearer_auth(&self.token)
            .json(&req)
            .send()
            .await
            .expect("submit");
        assert!(
            resp.status().is_success(),
            "submit: {}",
            resp.text().await.unwrap()
        );
        resp.json().await.expect("job json")
    }

    /// How many requests the server answered on `route` (a route pattern, as in the
    /// `drover_http_requests_total` metric), whatever their status.
    pub async fn requests(&self, method: &str, route: &str) -> u64 {
        let text = self
            .get("/metrics")
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        let prefix = format!("drover_http_requests_total{{method=\"{method}\",route=\"{route}\",");
        text.lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    pub async fn job(&self, id: &str) -> Option<Job> {
        let resp = self.get(&format!("/v1/jobs/{id}")).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.json().await.ok()
    }

    /// `GET /v1/agents`.
    pub async fn agents(&self) -> Vec<drover_core::api::Agent> {
        let list: drover_core::api::AgentList = self
            .get("/v1/agents")
            .send()
            .await
            .expect("agents")
            .json()
            .await
            .expect("agents json");
        list.agents
    }

    pub async fn cancel(&self, id: &str) {
        let resp = self
            .http
            .post(format!("{}/v1/jobs/{id}/cancel", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("cancel");
        assert!(
            resp.status().is_success(),
            "cancel: {}",
            resp.text().await.unwrap()
        );
    }

    /// Waits until `pred` holds for the job (server hiccups are retried).
    pub async fn wait_for(&self, id: &str, what: &str, pred: impl Fn(&Job) -> bool) -> Job {
        let give_up = tokio::time::Instant::now() + DEADLINE;
        let mut last = None;
        loop {
            if let Some(job) = self.job(id).await {
                if pred(&job) {
                    return job;
                }
                last = Some(job);
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "job {id} never got {what}; last seen: {last:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the job reached a terminal state.
    pub async fn wait_done(&self, id: &str) -> Job {
        self.wait_for(id, "a terminal state", |j| j.state.is_terminal())
            .await
    }

    /// Waits until the job is running.
    pub async fn wait_running(&self, id: &str) -> Job {
        self.wait_for(id, "running", |j| j.state == JobState::Running)
            .await
    }

    /// Every stored log record of the job's current attempt, paging through.
    pub async fn logs(&self, id: &str) -> Vec<LogRecord> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page: LogPage = self
                .http
                .get(format!(
                    "{}/v1/jobs/{id}/logs?after={after}&limit=10000",
                    self.url
                ))
                .bearer_auth(&self.token)
                .send()
                .await
                .expect("logs")
                .json()
                .await
                .expect("log page");
            if page.records.is_empty() {
                return out;
            }
            after = page.last_seq;
            out.extend(page.records);
        }
    }

    /// Waits until the job's log has a line that `pred` accepts; returns all records.
    pub async fn wait_log(&self, id: &str, pred: impl Fn(&[LogRecord]) -> bool) -> Vec<LogRecord> {
        let give_up = tokio::time::Instant::now() + DEADLINE;
        loop {
            let logs = self.logs(id).await;
            if pred(&logs) {
                return logs;
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "log of {id} never matched: {logs:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Texts of one stream.
pub fn texts(records: &[LogRecord], stream: Stream) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.stream == stream)
        .map(|r| r.text.clone())
        .collect()
}

/// An agent config for tests: two slots, short shutdown timeout, its own work dir.
pub fn agent_config(server: &TestServer, work_dir: &std::path::Path) -> AgentConfig {
    let mut c = AgentConfig::new(server.url.clone(), server.join_token.clone(), work_dir);
    c.name = "test-agent".into();
    c.slots = 2;
    c.shutdown_timeout = Duration::from_secs(10);
    // The engine the `docker` CLI of the docker tests talks to (the CLI crate resolves
    // DOCKER_HOST for real agents).
    if let Some(path) = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
    {
        c.docker_socket = Some(path.into());
    }
    c
}

/// An agent running in this process.
pub struct RunningAgent {
    pub signals: AgentSignals,
    handle: Option<tokio::task::JoinHandle<Result<AgentExit, drover_agent::AgentError>>>,
    _work: Option<tempfile::TempDir>,
}

impl RunningAgent {
    pub fn start(config: AgentConfig) -> RunningAgent {
        let signals = AgentSignals::default();
        let handle = tokio::spawn(drover_agent::run(config, signals.clone()));
        RunningAgent {
            signals,
            handle: Some(handle),
            _work: None,
        }
    }

    /// Waits (up to the deadline) for the agent to exit.
    pub async fn exit(mut self) -> AgentExit {
        let handle = self.handle.take().expect("not awaited yet");
        tokio::time::timeout(DEADLINE, handle)
            .await
            .expect("agent exits in time")
            .expect("agent task")
            .expect("agent runs")
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.signals.force.cancel();
    }
}

/// A server and one agent with default test settings.
pub async fn server_and_agent() -> (TestServer, Api, RunningAgent) {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let work = tempfile::tempdir().unwrap();
    let mut agent = RunningAgent::start(agent_config(&server, work.path()));
    agent._work = Some(work);
    (server, api, agent)
}

/// Starts an agent with `config` and a temp work dir it keeps alive.
pub fn agent_with(server: &TestServer, tweak: impl FnOnce(&mut AgentConfig)) -> RunningAgent {
    let work = tempfile::tempdir().unwrap();
    let mut config = agent_config(server, work.path());
    tweak(&mut config);
    let mut agent = RunningAgent::start(config);
    agent._work = Some(work);
    agent
}

/// True when no live process has this pid (gone, or a zombie waiting for init).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| {
                rest.trim_start().starts_with('Z') || rest.trim_start().starts_with('X')
            })
            .unwrap_or(false),
    }
}

/// Waits until every pid is gone.
pub async fn wait_gone(pids: &[i32]) {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    while !pids.iter().all(|p| process_gone(*p)) {
        assert!(
            tokio::time::Instant::now() < give_up,
            "processes {pids:?} still alive"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

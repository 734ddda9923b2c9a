//! Fencing from the agent's side, against a scripted fake server (the real one cannot be
//! made to answer 409 or `kill` on cue): a write answered 409 `stale_attempt`, or a
//! `kill` control, kills the job's process group (or a docker job's container: stopped
//! and removed) at once, drops its spool, and no finish is ever sent.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_agent::{AgentConfig, AgentSignals};
use drover_core::api::{Control, Lease, LogBatch, PollResponse};
use drover_core::Exec;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Log writes after the first batch are answered 409.
    ConflictOnLogs,
    /// Once the pid is known, the next poll answers `kill`.
    KillControl,
}

#[derive(Default)]
struct Seen {
    paths: Vec<String>,
    pid: Option<i32>,
    leased: bool,
}

struct Fake {
    mode: Mode,
    lease: Lease,
    seen: Mutex<Seen>,
}

impl Fake {
    fn answer(&self, path: &str, body: &[u8]) -> (u16, String) {
        let mut seen = self.seen.lock().unwrap();
        seen.paths.push(path.to_string());
        // `?start=true` rides on a log write.
        match path.split('?').next().unwrap_or_default() {
            "/v1/agents/register" => (
                201,
                r#"{"agent_id":"a1","token":"session","lease_ttl_ms":3000}"#.into(),
            ),
            "/v1/agents/poll" => {
                let mut resp = PollResponse::default();
                if !seen.leased {
                    seen.leased = true;
                    resp.leases.push(self.lease.clone());
                } else if self.mode == Mode::KillControl && seen.pid.is_some() {
                    resp.controls.push(Control::Kill {
                        job_id: self.lease.job_id.clone(),
                        attempt: 1,
                    });
                }
                (200, serde_json::to_string(&resp).unwrap())
            }
            p if p == format!("/v1/jobs/{}/attempts/1/logs", self.lease.job_id) => {
                let batch: LogBatch = serde_json::from_slice(body).unwrap();
                let first = seen.pid.is_none();
                if let Some(pid) = batch
                    .records
                    .iter()
                    .find_map(|r| r.text.strip_prefix("pid "))
                {
                    seen.pid = pid.parse().ok();
                }
                if self.mode == Mode::ConflictOnLogs && !first {
                    return (409, r#"{"error":{"code":"stale_attempt","message":"attempt 1 is not current"}}"#.into());
                }
                (204, String::new())
            }
            _ => (200, "{}".into()),
        }
    }
}

const TICKER: &str = "echo pid $$; sleep 1000 & while true; do echo tick; sleep 0.05; done";

fn lease(job_id: &str, exec: Exec) -> Lease {
    Lease {
        job_id: job_id.into(),
        attempt: 1,
        name: "ticker".into(),
        exec,
        env: BTreeMap::new(),
        secrets: BTreeMap::new(),
        timeout_ms: None,
        grace_ms: 60_000,
        metadata: serde_json::Value::Null,
        inputs: Vec::new(),
        artifacts: Vec::new(),
        artifact_limits: Default::default(),
        log_path: None,
    }
}

async fn serve(listener: TcpListener, fake: Arc<Fake>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            return;
        };
        let fake = fake.clone();
        tokio::spawn(async move {
            let (read, mut write) = conn.into_split();
            let mut read = BufReader::new(read);
            loop {
                let mut request_line = String::new();
                if read.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                    return;
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                let mut length = 0usize;
                loop {
                    let mut header = String::new();
                    read.read_line(&mut header).await.unwrap();
                    let header = header.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = header.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                }
                let mut body = vec![0; length];
                read.read_exact(&mut body).await.unwrap();
                if path == "/v1/agents/poll" {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let (status, text) = fake.answer(&path, &body);
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{text}",
                    text.len()
                );
                if write.write_all(resp.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn shell() -> Lease {
    lease(
        "j1",
        Exec::Shell {
            command: TICKER.into(),
        },
    )
}

async fn stale_attempt_is_killed_without_finish(mode: Mode, lease: Lease) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let docker = matches!(lease.exec, Exec::Docker(_));
    let container = format!("drover-{}-1", lease.job_id);
    let fake = Arc::new(Fake {
        mode,
        lease,
        seen: Mutex::new(Seen::default()),
    });
    let server = tokio::spawn(serve(listener, fake.clone()));
    let work = tempfile::tempdir().unwrap();
    let mut config = AgentConfig::new(url, "join", work.path());
    config.slots = 1;
    config.name = common::docker::unique_name("stale");
    let signals = AgentSignals::default();
    let agent = tokio::spawn(drover_agent::run(config, signals.clone()));

    let give_up = tokio::time::Instant::now() + common::DEADLINE;
    let pid = loop {
        if let Some(pid) = fake.seen.lock().unwrap().pid {
            break pid;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the job never printed its pid; requests: {:?}",
            fake.seen.lock().unwrap().paths
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if docker {
        common::docker::wait_containers(&container, "removed", |n| n.is_empty()).await;
    } else {
        common::wait_gone(&[pid]).await;
    }
    let spool = work.path().join("spool");
    loop {
        let files = std::fs::read_dir(&spool).unwrap().count();
        if files == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "the spool was not dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A few more polls: the agent carries on, and never reports the stale attempt.
    let polls = fake.seen.lock().unwrap().paths.len();
    while fake.seen.lock().unwrap().paths.len() < polls + 3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let paths = fake.seen.lock().unwrap().paths.clone();
    assert!(!paths.iter().any(|p| p.ends_with("/finish")), "{paths:#?}");
    signals.drain.cancel();
    let exit = tokio::time::timeout(common::DEADLINE, agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(exit, drover_agent::AgentExit::Drained);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_409_on_a_log_write_kills_the_job_and_reports_nothing() {
    stale_attempt_is_killed_without_finish(Mode::ConflictOnLogs, shell()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_control_kills_the_job_and_reports_nothing() {
    stale_attempt_is_killed_without_finish(Mode::KillControl, shell()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_control_stops_and_removes_a_docker_jobs_container() {
    if !common::docker::docker_ready() {
        return;
    }
    let exec = serde_json::from_value(serde_json::json!({
        "kind": "docker", "image": common::docker::IMAGE, "command": TICKER,
    }))
    .unwrap();
    let lease = lease(&format!("stale-{}", std::process::id()), exec);
    stale_attempt_is_killed_without_finish(Mode::KillControl, lease).await;
}

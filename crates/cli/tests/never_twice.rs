//! Never two copies of one job: an agent killed with SIGKILL, an agent frozen with
//! SIGSTOP past its lease, and an agent cut off from its server (the server frozen) all
//! stop their jobs before the server can give them to anyone else. Real `drover server`
//! and `drover agent` processes; each job writes a ledger of its executions.

mod common;
#[path = "../../agent/tests/common/docker.rs"]
#[allow(dead_code)]
mod docker;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{client, free_port, healthy, json, stdout, wait_until, Daemon, BIN};

const LIMIT: Duration = Duration::from_secs(60);
/// What the shared Docker helpers wait at most.
pub const DEADLINE: Duration = LIMIT;

struct Cluster {
    dir: PathBuf,
    url: String,
    admin: String,
    join: String,
    server: Daemon,
}

impl Cluster {
    fn start(dir: &Path, lease_ttl: &str) -> Cluster {
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.args(["server", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(dir.join("data"))
            .args(["--lease-ttl", lease_ttl, "--log-level", "warn"])
            .env_remove("DROVER_CONFIG")
            .env_remove("DROVER_ADMIN_TOKEN")
            .env_remove("DROVER_JOIN_TOKEN")
            .current_dir(dir);
        let server = Daemon::spawn(cmd, dir, "server");
        wait_until("the server's /healthz", LIMIT, || healthy(port));
        let tokens: toml::Table =
            toml::from_str(&std::fs::read_to_string(dir.join("data/tokens.toml")).unwrap())
                .unwrap();
        Cluster {
            dir: dir.to_path_buf(),
            url: format!("http://127.0.0.1:{port}"),
            admin: tokens["admin"].as_str().unwrap().to_string(),
            join: tokens["join"].as_str().unwrap().to_string(),
            server,
        }
    }

    /// An agent with its own work dir (the same name means the same work dir) and one slot.
    fn agent(&self, name: &str, log: &str) -> Daemon {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "agent",
            "--name",
            name,
            "--slots",
            "1",
            "--log-level",
            "info",
        ])
        .arg("--work-dir")
        .arg(self.dir.join(format!("agent-{name}")))
        .env("DROVER_SERVER", &self.url)
        .env("DROVER_TOKEN", &self.join)
        .env_remove("DROVER_CONFIG")
        .current_dir(&self.dir);
        let agent = Daemon::spawn(cmd, &self.dir, log);
        wait_until(&format!("agent {name} online"), LIMIT, || {
            let out = self.drover(&["agents", "-o", "json"]);
            out.status.success()
                && json(&out)["agents"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|a| a["name"] == name && a["status"] == "online")
                })
        });
        agent
    }

    fn drover(&self, args: &[&str]) -> Output {
        client(&self.dir.join("ctx"), &self.dir)
            .env("DROVER_SERVER", &self.url)
            .env("DROVER_TOKEN", &self.admin)
            .args(args)
            .output()
            .unwrap()
    }

    fn job(&self, id: &str) -> serde_json::Value {
        json(&self.drover(&["status", "-o", "json", id]))
    }

    fn submit(&self, cmd: &str) -> String {
        let out = self.drover(&["submit", "--attempts", "3", "--", cmd]);
        assert!(out.status.success(), "{}", common::stderr(&out));
        stdout(&out).trim().to_string()
    }
}

/// The job behind every test: attempt 1 records its process group and runs until it is
/// killed, appending a timestamp to the ledger every 20 ms; later attempts write one
/// line and end.
fn ledger_job(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "echo $$ > {d}/pgid-$DROVER_ATTEMPT; if [ $DROVER_ATTEMPT = 1 ]; then while :; do echo \"1 $(date +%s%N)\" >> {d}/ledger; sleep 0.02; done; fi; echo \"$DROVER_ATTEMPT $(date +%s%N)\" >> {d}/ledger"
    )
}

/// Whether any live process is in process group `pgid`.
fn group_alive(pgid: i32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.first().is_some_and(|s| *s != "Z")
            && fields.get(2) == Some(&pgid.to_string().as_str())
    })
}

fn read_pgid(dir: &Path, attempt: u32) -> i32 {
    let path = dir.join(format!("pgid-{attempt}"));
    wait_until(&format!("attempt {attempt} to start"), LIMIT, || {
        std::fs::read_to_string(&path).is_ok_and(|s| s.trim().parse::<i32>().is_ok())
    });
    std::fs::read_to_string(&path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Asserts that every execution of attempt 1 ended before attempt 2 began.
fn assert_no_overlap(dir: &Path) {
    let ledger = std::fs::read_to_string(dir.join("ledger")).unwrap();
    let times = |attempt: &str| -> Vec<u128> {
        ledger
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(a, _)| *a == attempt)
            .map(|(_, t)| t.parse().unwrap())
            .collect()
    };
    let (first, second) = (times("1"), times("2"));
    assert!(!first.is_empty() && !second.is_empty(), "{ledger}");
    let last_first = *first.iter().max().unwrap();
    let start_second = *second.iter().min().unwrap();
    assert!(
        last_first < start_second,
        "attempt 1 still ran {} ms after attempt 2 began",
        (last_first - start_second) / 1_000_000
    );
}

/// Waits for the job to succeed, and checks that it did on its second attempt and that
/// the two never ran at the same time.
fn succeeds_on_the_retry_without_overlap(c: &Cluster, id: &str) {
    let mut job = serde_json::Value::Null;
    wait_until("the job to succeed", LIMIT, || {
        job = c.job(id);
        job["state"] == "succeeded"
    });
    assert_eq!(job["current_attempt"], 2, "{job}");
    assert_no_overlap(&c.dir);
}

/// Regression: an agent killed with SIGKILL left its jobs running; the job was leased
/// again when the lease expired and the orphan and the new attempt ran side by side.
#[test]
fn a_sigkilled_agents_job_stops_at_once_and_is_retried_as_soon_as_it_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // A TTL far beyond the test's waits: the retry must not wait for it.
    let c = Cluster::start(dir, "10m");
    let mut agent = c.agent("a", "agent-a1");
    let id = c.submit(&ledger_job(dir));
    let pgid = read_pgid(dir, 1);
    assert!(group_alive(pgid));

    agent.signal("KILL");
    agent.wait_exit(LIMIT);
    wait_until("the watchdog to stop the orphaned job", LIMIT, || {
        !group_alive(pgid)
    });

    let _again = c.agent("a", "agent-a2");
    succeeds_on_the_retry_without_overlap(&c, &id);
    let events = stdout(&c.drover(&["events", &id]));
    assert!(
        events.contains("the agent does not run this attempt"),
        "requeued because the restarted agent said so: {events}"
    );
    assert!(!c.server.stderr().contains("panicked"));
}

/// Regression: an agent paused with SIGSTOP past its lease kept its jobs running while
/// the server gave them to another agent.
#[test]
fn a_frozen_agents_job_is_stopped_before_another_agent_runs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let c = Cluster::start(dir, "3s");
    let a = c.agent("a", "agent-a");
    let id = c.submit(&ledger_job(dir));
    let pgid = read_pgid(dir, 1);
    let _b = c.agent("b", "agent-b");

    a.signal("STOP");
    wait_until("the watchdog to stop the frozen agent's job", LIMIT, || {
        !group_alive(pgid)
    });
    succeeds_on_the_retry_without_overlap(&c, &id);
    a.signal("CONT");
    assert!(
        a.stderr().contains("the agent stopped renewing its leases"),
        "the watchdog says why: {}",
        a.stderr()
    );
}

/// An agent that cannot reach its server (here: the server frozen with SIGSTOP) stops
/// its jobs itself before their leases expire, and says why.
#[test]
fn a_partitioned_agent_stops_its_job_before_the_lease_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let c = Cluster::start(dir, "3s");
    let a = c.agent("a", "agent-a");
    let id = c.submit(&ledger_job(dir));
    let pgid = read_pgid(dir, 1);

    c.server.signal("STOP");
    wait_until("the agent to stop its job while cut off", LIMIT, || {
        !group_alive(pgid)
    });
    c.server.signal("CONT");
    succeeds_on_the_retry_without_overlap(&c, &id);
    assert!(
        a.stderr().contains("cannot renew leases in time"),
        "the agent says why: {}",
        a.stderr()
    );
}

/// Regression: a SIGKILLed agent's container ran on (the engine owns it) while the job
/// was leased again. The watchdog removes it at once.
#[test]
fn a_sigkilled_agents_container_is_removed_by_its_watchdog() {
    if !docker::docker_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let c = Cluster::start(dir, "10m");
    let mut agent = c.agent("d", "agent-d1");
    let out = c.drover(&[
        "submit",
        "--attempts",
        "2",
        "--image",
        docker::IMAGE,
        "--",
        "sleep",
        "600",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let id = stdout(&out).trim().to_string();
    let name = format!("drover-{id}-1");
    let running = || {
        docker::docker(&["ps", "-q", "--filter", &format!("name=^{name}$")])
            .is_ok_and(|o| !o.trim().is_empty())
    };
    wait_until("the container to run", LIMIT, running);
    agent.signal("KILL");
    agent.wait_exit(LIMIT);
    wait_until("the watchdog to remove the container", LIMIT, || !running());
    // It says why once the container is gone, so the line may come a moment later.
    wait_until("the watchdog to say why", LIMIT, || {
        agent.stderr().contains("the agent is gone")
    });
    let again = c.agent("d", "agent-d2");
    wait_until("the retry to run", LIMIT, || {
        c.job(&id)["current_attempt"] == 2
    });
    assert!(c.drover(&["cancel", &id]).status.success());
    wait_until("the retry to be canceled", LIMIT, || {
        c.job(&id)["state"] == "canceled"
    });
    drop(again);
}

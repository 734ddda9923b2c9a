//! Agents on demand with the process provider, end to end through the real binary:
//! growth to the maximum and no further, idle agents stopped, an ephemeral agent that
//! exits after its job, a provider whose agents cannot start backing off and saying
//! why, wait reasons, and a server restarted while an agent was starting.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{client, free_port, healthy, json, stdout, wait_until, Daemon, BIN};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("drover.toml");
    // `slow` registers 3 s after its start: time to restart the server meanwhile.
    let slow = format!("[\"sh\", \"-c\", \"sleep 3; exec {BIN} \\\"$@\\\"\", \"sh\"]");
    std::fs::write(
        &path,
        format!(
            r#"
[[provider]]
name = "burst"
kind = "process"
labels = {{ pool = "burst" }}
max_agents = 2
idle_timeout = "2s"

[[provider]]
name = "once"
kind = "process"
labels = {{ pool = "once" }}
ephemeral = true

[[provider]]
name = "broken"
kind = "process"
labels = {{ pool = "broken" }}
command = ["sh", "-c", "echo cannot start: no such image >&2; exit 3"]

[[provider]]
name = "slow"
kind = "process"
labels = {{ pool = "slow" }}
idle_timeout = "1s"
command = {slow}
"#
        ),
    )
    .unwrap();
    path
}

fn server(dir: &Path, port: u16, name: &str) -> Daemon {
    let mut cmd = Command::new(BIN);
    cmd.args(["server", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(dir.join("drover.toml"))
        .args([
            "--admin-token",
            "adm",
            "--join-token",
            "join",
            "--lease-ttl",
            "3s",
        ])
        .current_dir(dir);
    let d = Daemon::spawn(cmd, dir, name);
    wait_until("the server", LIMIT, || healthy(port));
    d
}

/// `drover ARGS` against the server at `base` with the admin token.
fn cli(dir: &Path, base: &str, args: &[&str]) -> std::process::Output {
    client(&dir.join("ctx"), dir)
        .args(["--server", base, "--token", "adm"])
        .args(args)
        .output()
        .unwrap()
}

/// Processes whose command line mentions `needle`, as (pid, command line).
fn processes_with(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|s| s.trim_start().starts_with('Z'));
        if cmd.contains(needle) && !zombie {
            found.push((pid, cmd));
        }
    }
    found
}

/// Kills the agents a provider left behind when the test ends, whatever happened.
struct Strays(String);

impl Drop for Strays {
    fn drop(&mut self) {
        for (pid, _) in processes_with(&self.0) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

fn provider(list: &Value, name: &str) -> Value {
    list["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no provider {name}: {list}"))
}

#[test]
fn the_process_provider_starts_and_stops_agents_for_waiting_work() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    config(dir);
    let _strays = Strays(dir.join("data/provisioned").display().to_string());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let srv = server(dir, port, "server");
    let drover = |args: &[&str]| cli(dir, &base, args);
    let providers = || json(&drover(&["providers", "-o", "json"]));
    let submit = |args: &[&str]| {
        stdout(&drover(&[&["submit"], args].concat()))
            .trim()
            .to_string()
    };

    // Given several servers, the CLI goes on with the next one when a connection is
    // refused.
    let out = client(&dir.join("ctx"), dir)
        .args([
            "--server",
            &format!("http://127.0.0.1:1,{base}"),
            "--token",
            "adm",
        ])
        .args(["providers", "-o", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::stderr(&out));
    assert!(
        common::stderr(&out).contains(&format!("cannot reach http://127.0.0.1:1; trying {base}")),
        "{}",
        common::stderr(&out)
    );

    // A job nobody can run says so, naming that no provider offers its labels.
    let nobody = submit(&["--label", "gpu=a100", "--", "true"]);
    let shown = stdout(&drover(&["status", &nobody]));
    assert!(
        shown.contains("waiting:   no agent is online, and no provider offers them"),
        "{shown}"
    );

    // Ten jobs only `burst` offers: it grows to its maximum of 2 and no further.
    let jobs: Vec<String> = (0..10)
        .map(|_| submit(&["--label", "pool=burst", "--", "sleep 0.3"]))
        .collect();
    let mut most = 0;
    let start = Instant::now();
    loop {
        let burst = provider(&providers(), "burst");
        most = most.max(burst["agents"].as_array().unwrap().len());
        assert!(most <= 2, "over the maximum: {burst}");
        let done = jobs
            .iter()
            .all(|j| json(&drover(&["status", "-o", "json", j]))["state"] == "succeeded");
        if done {
            break;
        }
        assert!(start.elapsed() < LIMIT, "the jobs did not all run: {burst}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(most, 2, "it grew to its maximum");
    let agents = json(&drover(&["agents", "-o", "json"]));
    for j in &jobs {
        let job = json(&drover(&["status", "-o", "json", j]));
        let on = job["attempts"][0]["agent_id"].clone();
        let agent = agents["agents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == on)
            .unwrap();
        assert_eq!(agent["provider"], "burst", "{job}");
        assert_eq!(agent["labels"]["pool"], "burst");
    }
    // Idle agents are stopped after the idle timeout.
    wait_until("burst's idle agents to stop", LIMIT, || {
        provider(&providers(), "burst")["agents"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    assert_eq!(provider(&providers(), "burst")["starts"], 2);
    wait_until("burst's agent processes to exit", LIMIT, || {
        processes_with(&dir.join("data/provisioned/burst-").display().to_string()).is_empty()
    });

    // An ephemeral agent runs one job and exits.
    let one = submit(&["--label", "pool=once", "--", "echo one"]);
    let out = drover(&["wait", &one]);
    assert!(out.status.success());
    wait_until("the ephemeral agent to exit", LIMIT, || {
        let once = provider(&providers(), "once");
        once["agents"].as_array().unwrap().is_empty() && once["starts"] == 1
    });
    assert_eq!(provider(&providers(), "once")["failures"], 0);

    // A provider whose agents cannot start backs off and says why.
    let stuck = submit(&["--label", "pool=broken", "--", "true"]);
    wait_until("the failed start", LIMIT, || {
        provider(&providers(), "broken")["failures"].as_u64() >= Some(1)
    });
    let broken = provider(&providers(), "broken");
    assert!(
        broken["last_failure"]
            .as_str()
            .unwrap()
            .contains("exited (exit status: 3) before it registered; its last output: cannot start: no such image"),
        "{broken}"
    );
    let table = stdout(&drover(&["providers"]));
    assert!(table.contains("cannot start: no such image"), "{table}");
    wait_until("the wait reason to name the backoff", LIMIT, || {
        stdout(&drover(&["status", &stuck]))
            .contains("provider broken is backing off after failed starts")
    });
    let starts = provider(&providers(), "broken")["starts"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let later = provider(&providers(), "broken")["starts"].as_u64().unwrap();
    assert!(
        later - starts <= 2,
        "it backs off (1 s, 2 s, 4 s …): {starts} → {later}"
    );
    drover(&["cancel", &stuck]);

    // The server restarted while an agent is starting: the new server finds it, the job
    // runs on it, and then it is stopped like any idle agent. Nothing is left behind.
    let late = submit(&["--label", "pool=slow", "--", "echo late"]);
    wait_until("slow to be starting an agent", LIMIT, || {
        provider(&providers(), "slow")["agents"][0]["state"] == "starting"
    });
    drop(srv); // SIGKILL
    let _srv = server(dir, port, "server-2");
    let out = drover(&["wait", &late]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let slow = provider(&providers(), "slow");
    assert_eq!(
        (slow["starts"].as_u64(), slow["failures"].as_u64()),
        (Some(1), Some(0)),
        "{slow}"
    );
    wait_until("slow's agent to be stopped when idle", LIMIT, || {
        provider(&providers(), "slow")["agents"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    wait_until("no agent process left", LIMIT, || {
        processes_with(&dir.join("data/provisioned").display().to_string()).is_empty()
    });
}

/// An agent image made here by scripts/agent-image.sh from the binary under test.
fn agent_image(tag: &str) -> Result<(), String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/agent-image.sh");
    let out = Command::new(script)
        .args([tag, BIN])
        .output()
        .map_err(|e| format!("scripts/agent-image.sh: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(())
}

/// Removes the containers a provider started (by their name prefix) when the test ends.
struct Containers(&'static str);

impl Drop for Containers {
    fn drop(&mut self) {
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("name=drover-agent-{}", self.0),
            ])
            .output();
        if let Ok(out) = out {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
    }
}

#[test]
fn the_docker_provider_runs_agents_in_containers() {
    if std::env::var("DROVER_SKIP_DOCKER_TESTS").as_deref() == Ok("1") {
        eprintln!("DROVER_SKIP_DOCKER_TESTS=1: skipping a Docker test");
        return;
    }
    let tag = "drover-test-agent:latest";
    if let Err(e) = agent_image(tag) {
        panic!("cannot build the agent image: {e}\n(set DROVER_SKIP_DOCKER_TESTS=1 to skip the Docker tests)");
    }
    let _gone = (Containers("dock-"), Containers("noimage-"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("drover.toml"),
        format!(
            r#"
[[provider]]
name = "dock"
kind = "docker"
image = "{tag}"
network = "host"
pull = "never"
labels = {{ pool = "dock" }}
ephemeral = true

[[provider]]
name = "noimage"
kind = "docker"
image = "drover-no-such-image:never"
network = "host"
pull = "never"
labels = {{ pool = "noimage" }}
"#
        ),
    )
    .unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _srv = server(dir, port, "server");
    let drover = |args: &[&str]| cli(dir, &base, args);
    let providers = || json(&drover(&["providers", "-o", "json"]));

    let job = stdout(&drover(&[
        "submit",
        "--label",
        "pool=dock",
        "--",
        "echo from the container",
    ]))
    .trim()
    .to_string();
    let out = drover(&["wait", &job]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = stdout(&drover(&["logs", &job]));
    assert!(logs.contains("from the container"), "{logs}");
    let done = json(&drover(&["status", "-o", "json", &job]));
    let agents = json(&drover(&["agents", "-o", "json"]));
    let agent = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == done["attempts"][0]["agent_id"])
        .cloned()
        .unwrap();
    assert_eq!(agent["provider"], "dock", "{agent}");
    // Ephemeral: the agent exits after its job, and its container is removed.
    let container = format!("drover.provisioned={}", agent["name"].as_str().unwrap());
    wait_until("the container agent to exit and be removed", LIMIT, || {
        let dock = provider(&providers(), "dock");
        let left = Command::new("docker")
            .args(["ps", "-aq", "--filter", &format!("label={container}")])
            .output()
            .unwrap();
        dock["agents"].as_array().unwrap().is_empty() && left.stdout.is_empty()
    });
    assert_eq!(provider(&providers(), "dock")["failures"], 0);

    // A missing image is a failed start, with docker's own words.
    let stuck = stdout(&drover(&[
        "submit",
        "--label",
        "pool=noimage",
        "--",
        "true",
    ]))
    .trim()
    .to_string();
    wait_until("the failed start", LIMIT, || {
        provider(&providers(), "noimage")["failures"].as_u64() >= Some(1)
    });
    let why = provider(&providers(), "noimage")["last_failure"].clone();
    assert!(
        why.as_str()
            .unwrap()
            .contains("docker run of image drover-no-such-image:never failed"),
        "{why}"
    );
    drover(&["cancel", &stuck]);
}

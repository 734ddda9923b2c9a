//! `drover server` and `drover agent` as separate processes: tokens made once and kept,
//! and a followed log (`logs -f`) that survives a server restart without repeating or
//! losing a line.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{client, free_port, healthy, json, stdout, wait_until, Daemon, BIN};

fn start_server(dir: &std::path::Path, port: u16, name: &str) -> Daemon {
    let mut cmd = Command::new(BIN);
    cmd.args(["server", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.join("data"))
        .args(["--log-format", "json", "--log-level", "warn"])
        .env_remove("DROVER_CONFIG")
        .env_remove("DROVER_ADMIN_TOKEN")
        .env_remove("DROVER_JOIN_TOKEN")
        .current_dir(dir);
    let server = Daemon::spawn(cmd, dir, name);
    wait_until("the server's /healthz", Duration::from_secs(60), || {
        healthy(port)
    });
    server
}

#[test]
fn a_followed_log_survives_a_server_restart_without_repeating_a_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");

    let server = start_server(dir, port, "server1");
    let printed = server.stderr();
    assert!(printed.contains("created tokens"), "{printed}");
    let tokens: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("data/tokens.toml")).unwrap()).unwrap();
    let admin = tokens["admin"].as_str().unwrap().to_string();
    let join = tokens["join"].as_str().unwrap().to_string();
    assert!(printed.contains(&admin), "the admin token is printed once");

    let mut agent_cmd = Command::new(BIN);
    agent_cmd
        .args([
            "agent", "--name", "e2e", "--slots", "2", "--labels", "e2e=yes",
        ])
        .arg("--work-dir")
        .arg(dir.join("agent"))
        .env("DROVER_SERVER", &url)
        .env("DROVER_TOKEN", &join)
        .env_remove("DROVER_CONFIG")
        .current_dir(dir);
    let mut agent = Daemon::spawn(agent_cmd, dir, "agent");

    let ctx = dir.join("ctx");
    let drover = |args: &[&str]| {
        client(&ctx, dir)
            .env("DROVER_SERVER", &url)
            .env("DROVER_TOKEN", &admin)
            .args(args)
            .output()
            .unwrap()
    };
    wait_until("the agent to come online", Duration::from_secs(30), || {
        let out = drover(&["agents", "-o", "json"]);
        out.status.success()
            && json(&out)["agents"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|a| a["name"] == "e2e" && a["status"] == "online")
            })
    });

    let submitted = drover(&[
        "submit",
        "--label",
        "e2e=yes",
        "--",
        "for i in $(seq 1 60); do echo line $i; sleep 0.1; done",
    ]);
    assert!(submitted.status.success());
    let id = stdout(&submitted).trim().to_string();

    let follower = Daemon::spawn(
        {
            let mut c = client(&ctx, dir);
            c.env("DROVER_SERVER", &url)
                .env("DROVER_TOKEN", &admin)
                .args(["logs", "-f", &id]);
            c
        },
        dir,
        "follower",
    );
    wait_until("the first lines", Duration::from_secs(30), || {
        follower.stdout().contains("line 3\n")
    });

    // The server goes away mid-job and comes back on the same data and port.
    let server = server.interrupt();
    assert!(!server.stderr().contains("panicked"));
    let before_restart = follower.stdout();
    assert!(
        !before_restart.contains("line 60\n"),
        "the stream must drop mid-job for this test to mean anything: {before_restart}"
    );
    let server = start_server(dir, port, "server2");
    assert!(
        !server.stderr().contains("created tokens"),
        "a restart keeps the tokens"
    );

    let mut follower = follower;
    let status = follower.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "logs -f: {}", follower.stderr());
    let expected: String = (1..=60).map(|i| format!("line {i}\n")).collect();
    assert_eq!(follower.stdout(), expected, "every line once, in order");

    assert_eq!(
        drover(&["wait", &id]).status.code(),
        Some(0),
        "the job itself finished"
    );

    agent.signal("TERM");
    let code = agent.wait_exit(Duration::from_secs(30));
    assert_eq!(
        code.code(),
        Some(0),
        "a drained agent exits 0: {}",
        agent.stderr()
    );
    server.interrupt();
}

//! End to end with the real `drover` binary: `drover up` in a temp dir and the client
//! commands against it, including each documented error and exit code.

mod common;
#[path = "../../agent/tests/common/docker.rs"]
#[allow(dead_code)]
mod docker;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, json, stderr, stdout, Up, BIN};

/// What the shared Docker helpers wait at most.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Regression: with `--image`, one word after `--` was taken as a program name
/// (`exec: "echo hi; exit 5": no such file`); it runs in the image's shell now.
#[test]
fn a_container_command_line_runs_in_the_images_shell() {
    if !docker::docker_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::start(tmp.path(), &tmp.path().join("ctx"), free_port());
    let out = up.drover(&[
        "submit",
        "--follow",
        "--image",
        docker::IMAGE,
        "--pull",
        "never",
        "--",
        "echo hi from $0; exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("hi from /bin/sh"),
        "stdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let out = up.drover(&[
        "submit",
        "--wait",
        "--image",
        docker::IMAGE,
        "--memory",
        "64MiB",
        "--",
        "echo",
        "a;",
        "exit",
        "3",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "several words are argv: {}",
        stderr(&out)
    );
    up.stop();
}

#[test]
fn up_submit_logs_cancel_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let port = free_port();
    let up = Up::start(tmp.path(), &ctx, port);

    let ok = up.drover(&[
        "submit",
        "--wait",
        "--",
        "echo",
        "out-line;",
        "echo",
        "err-line",
        ">&2",
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let failing = up.drover(&["submit", "--wait", "--", "exit 7"]);
    assert_eq!(failing.status.code(), Some(7));
    assert!(
        stderr(&failing).contains("exit code 7"),
        "{}",
        stderr(&failing)
    );

    let id_out = up.drover(&[
        "submit",
        "--",
        "printf 'a\\nb\\n'; sleep 0.3; echo c >&2; sleep 0.3; printf 'd\\n'",
    ]);
    assert!(id_out.status.success());
    let id = stdout(&id_out).trim().to_string();
    assert_eq!(up.drover(&["wait", &id]).status.code(), Some(0));
    let logs = up.drover(&["logs", &id]);
    assert_eq!(
        stdout(&logs),
        "a\nb\nc\nd\n",
        "logs prints exactly the job's output, stdout and stderr in order"
    );
    let only_err = up.drover(&["logs", "--stream", "stderr", &id]);
    assert_eq!(stdout(&only_err), "c\n");
    let records = stdout(&up.drover(&["logs", "-o", "json", &id]));
    let records: Vec<serde_json::Value> = records
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // drover's own header line (the command) comes first, as a `system` record.
    assert_eq!(records[0]["stream"], "system");
    let texts: Vec<&str> = records[1..]
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["a", "b", "c", "d"]);
    assert_eq!(records[3]["stream"], "stderr");
    assert!(records
        .windows(2)
        .all(|w| w[0]["seq"].as_u64() < w[1]["seq"].as_u64()));

    // A retried job runs again and exits like before; its timeline says so.
    let failed_id = json(&up.drover(&["ls", "-o", "json", "--state", "failed"]))["jobs"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(up.drover(&["retry", &failed_id]).status.success());
    assert_eq!(up.drover(&["wait", &failed_id]).status.code(), Some(7));
    let events = json(&up.drover(&["events", "-o", "json", &failed_id]));
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "retried"),
        "{events}"
    );

    let status = json(&up.drover(&["status", "-o", "json", &id]));
    for field in [
        "id",
        "name",
        "state",
        "queue",
        "priority",
        "exit_code",
        "attempts",
        "created_at",
        "finished_at",
    ] {
        assert!(
            status.get(field).is_some(),
            "status JSON lacks {field}: {status}"
        );
    }
    assert_eq!(status["state"], "succeeded");
    let ls = json(&up.drover(&["ls", "-o", "json"]));
    assert_eq!(ls["jobs"].as_array().unwrap().len(), 3);
    assert!(ls["jobs"][0]["id"].is_string() && ls["jobs"][0]["state"].is_string());
    let agents = json(&up.drover(&["agents", "-o", "json"]));
    let a = &agents["agents"][0];
    for field in [
        "id",
        "name",
        "status",
        "slots",
        "running",
        "labels",
        "host",
        "last_seen_at",
    ] {
        assert!(a.get(field).is_some(), "agents JSON lacks {field}: {a}");
    }

    let sleeper = stdout(&up.drover(&["submit", "--", "sleep 100"]))
        .trim()
        .to_string();
    common::wait_until("the sleep to run", Duration::from_secs(30), || {
        json(&up.drover(&["status", "-o", "json", &sleeper]))["state"] == "running"
    });
    let start = Instant::now();
    let cancel = up.drover(&["cancel", &sleeper]);
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    assert_eq!(up.drover(&["wait", &sleeper]).status.code(), Some(130));
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "cancel took {:?}",
        start.elapsed()
    );
    assert_eq!(
        json(&up.drover(&["status", "-o", "json", &sleeper]))["state"],
        "canceled"
    );
    // Regression: a job that had been canceled still said "(cancel requested)".
    let status = stdout(&up.drover(&["status", &sleeper]));
    assert!(!status.contains("cancel requested"), "{status}");

    let printed = up.stop();
    assert!(
        printed.contains("drover is up at http://127.0.0.1:"),
        "{printed}"
    );
    assert!(printed.contains("admin token: drc_"), "{printed}");
    assert!(
        printed.contains("drover submit --follow -- echo hello"),
        "{printed}"
    );
    // A second `drover up` on the same data resumes with the earlier jobs and the same token.
    let up = Up::start(tmp.path(), &ctx, port);
    // Same tokens: the context written by the first `up` still works as it was.
    let ls = json(&up.drover(&["ls", "-o", "json"]));
    assert_eq!(ls["jobs"].as_array().unwrap().len(), 4);
    let logs = up.drover(&["logs", &id]);
    assert_eq!(stdout(&logs), "a\nb\nc\nd\n", "logs survive a restart");
    up.stop();
}

#[test]
fn follow_streams_the_log_and_exits_with_the_job_code() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::start(tmp.path(), &tmp.path().join("ctx"), free_port());
    let out = up.drover(&[
        "submit",
        "--follow",
        "--",
        "for i in 1 2 3; do echo line $i; sleep 0.1; done; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "line 1\nline 2\nline 3\n");
    // A reader that goes away early (`drover logs JOB | head -1`) ends it quietly.
    let big = up.drover(&["submit", "--wait", "--", "seq 1 50000"]);
    assert_eq!(big.status.code(), Some(0), "{}", stderr(&big));
    let id = stdout(&up.drover(&["ls", "--limit", "1", "-o", "json"]));
    let id: serde_json::Value = serde_json::from_str(&id).unwrap();
    let id = id["jobs"][0]["id"].as_str().unwrap().to_string();
    let mut logs = common::client(&up.ctx, &up.dir)
        .args(["logs", &id])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(logs.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert_eq!(first, "1\n");
    let out = logs.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));

    // A retried job's log is followed into its next attempt.
    let out = up.drover(&[
        "submit",
        "--follow",
        "--attempts",
        "2",
        "--backoff",
        "100ms",
        "--",
        "echo try; exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(stdout(&out), "try\ntry\n");
    assert!(
        stderr(&out).contains("--- attempt 2 ---"),
        "{}",
        stderr(&out)
    );
    let out = up.drover(&["submit", "--wait", "--timeout", "1s", "--", "sleep 30"]);
    assert_eq!(out.status.code(), Some(124), "{}", stderr(&out));
}

#[test]
fn errors_are_one_clear_line_with_a_distinct_exit_code() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("DROVER_CONFIG_DIR", &ctx)
            .env_remove("DROVER_SERVER")
            .env_remove("DROVER_TOKEN")
            .output()
            .unwrap()
    };

    let out = run(&["--server", &dead, "--token", "x", "ls"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).starts_with("error: cannot reach the drover server at"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stderr(&out).lines().count(), 1);

    for bad in [
        &["submit", "--priority", "urgent", "--", "true"][..],
        &["submit", "--timeout", "xyz", "--", "true"],
        &["ls", "--state", "done"],
        &["frobnicate"],
    ] {
        let out = run(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"));
    }
    let out = run(&["--server", &dead, "--token", "x", "submit"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "nothing to run is a usage error"
    );

    let up = Up::start(tmp.path(), &ctx, free_port());
    let out = up.drover(&["status", "no-such-job"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("no job with id"), "{}", stderr(&out));
    // Regression: a body over the server's limit sometimes exited 4 (the server hangs up
    // before reading all of it), and the message did not name the limit.
    std::fs::write(tmp.path().join("big.py"), "#".repeat(12 << 20)).unwrap();
    for _ in 0..3 {
        let out = up.drover(&["submit", "--script", "big.py", "--interpreter", "python3"]);
        assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
        assert!(stderr(&out).contains("limit"), "{}", stderr(&out));
    }
    // With -o json, errors are JSON too.
    let out = up.drover(&["-o", "json", "status", "no-such-job"]);
    assert_eq!(out.status.code(), Some(3));
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).expect("a JSON error");
    assert_eq!(err["error"]["code"], "not_found", "{err}");
    assert_eq!(err["error"]["exit_code"], 3, "{err}");
    // Regression: ids went into URLs unencoded, so `../x` named another route.
    let out = up.drover(&["status", "../x"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(r#"no job with id "../x""#),
        "{}",
        stderr(&out)
    );
    let out = up.drover(&["--token", "wrong", "ls"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("refused the token"),
        "{}",
        stderr(&out)
    );
    let id = stdout(&up.drover(&["submit", "--", "true"]))
        .trim()
        .to_string();
    assert_eq!(up.drover(&["wait", &id]).status.code(), Some(0));
    let out = up.drover(&["cancel", &id]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot cancel a job that is succeeded"));
    let out = up.drover(&["submit", "--env", "1BAD=x", "--", "true"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("env.1BAD"));
    // Regression: a delay past what a date can hold panicked a handler, and the CLI then
    // said the server could not be reached.
    let out = up.drover(&["submit", "--delay", "9999999999999d", "--", "true"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("delay_ms"), "{}", stderr(&out));
    let out = up.drover(&["logs", "-f", "no-such-job"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let port = up.port.to_string();
    let out = up.drover(&["up", "--port", &port, "--data", "second"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is another drover running"),
        "{}",
        stderr(&out)
    );
    let out = run(&["agent", "--server", &dead]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no join token"), "{}", stderr(&out));
    let comp = up.drover(&["completions", "bash"]);
    assert!(comp.status.success() && stdout(&comp).contains("drover"));
}

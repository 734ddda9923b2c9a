//! End to end with the real `drover` binary: `drover up` in a temp dir and the client
//! commands against it, including each documented error and exit code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_drover");

struct Up {
    child: Child,
    dir: PathBuf,
    ctx: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Up {
    fn start(dir: &Path, ctx: &Path, port: u16) -> Up {
        let child = Command::new(BIN)
            .args(["up", "--port", &port.to_string(), "--data"])
            .arg(dir.join("data"))
            .env("DROVER_CONFIG_DIR", ctx)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let up = Up {
            child,
            dir: dir.to_path_buf(),
            ctx: ctx.to_path_buf(),
        };
        // Ready once the context is written and an agent is online.
        let start = Instant::now();
        loop {
            let out = up.drover(&["agents", "-o", "json"]);
            if out.status.success() {
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                if v["agents"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| a["status"] == "online"))
                {
                    break;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "drover up did not come up: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        up
    }

    fn drover(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("DROVER_CONFIG_DIR", &self.ctx)
            .env_remove("DROVER_SERVER")
            .env_remove("DROVER_TOKEN")
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }

    /// Stops it with SIGINT, as Ctrl-C would, and waits for a clean exit.
    fn stop(mut self) -> String {
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                use std::io::Read;
                let (mut out, mut err) = (String::new(), String::new());
                self.child
                    .stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                self.child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                assert!(status.success(), "drover up exited with {status}: {err}");
                return out;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "drover up did not stop on SIGINT"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
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

    let id_out = up.drover(&["submit", "--", "printf 'a\\nb\\n'; printf 'c\\n'"]);
    assert!(id_out.status.success());
    let id = stdout(&id_out).trim().to_string();
    assert_eq!(up.drover(&["wait", &id]).status.code(), Some(0));
    let logs = up.drover(&["logs", &id]);
    assert_eq!(
        stdout(&logs),
        "a\nb\nc\n",
        "logs prints exactly the job's output"
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
    let start = Instant::now();
    while json(&up.drover(&["status", "-o", "json", &sleeper]))["state"] != "running" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "sleep never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let cancel = up.drover(&["cancel", &sleeper]);
    assert!(cancel.status.success(), "{}", stderr(&cancel));
    assert_eq!(up.drover(&["wait", &sleeper]).status.code(), Some(130));
    assert_eq!(
        json(&up.drover(&["status", "-o", "json", &sleeper]))["state"],
        "canceled"
    );

    let printed = up.stop();
    assert!(printed.contains("drover is up at"), "{printed}");
    // A second `drover up` on the same data resumes with the earlier jobs and the same token.
    let up = Up::start(tmp.path(), &ctx, port);
    let ls = json(&up.drover(&["ls", "-o", "json"]));
    assert_eq!(ls["jobs"].as_array().unwrap().len(), 4);
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
    let comp = up.drover(&["completions", "bash"]);
    assert!(comp.status.success() && stdout(&comp).contains("drover"));
}

//! Helpers of the end-to-end tests: free ports, the real `drover` binary as a client and
//! as long-running `up`/`server`/`agent` processes, readiness by polling `/healthz`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_drover");

/// A port nothing listens on right now (bind :0, then let it go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `GET /healthz` on the port answers 200.
pub fn healthy(port: u16) -> bool {
    http_get(port, "/healthz", None)
        .is_some_and(|a| a.starts_with("HTTP/1.1 200") || a.starts_with("HTTP/1.0 200"))
}

/// The whole answer (status line, headers, body) to a plain `GET` on the port.
pub fn http_get(port: u16, path: &str, token: Option<&str>) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n{auth}\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    Some(answer)
}

/// Polls until `cond` holds, failing the test with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stdout as text.
/// Runs a Python unittest suite (no bytecode left beside its sources) and checks that it
/// passed with nothing skipped: a skipped test would pass without proving anything.
pub fn python_suite(mut cmd: Command) {
    let out = cmd
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("python runs");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert!(!report.contains("skipped"), "{report}");
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Stdout as JSON.
pub fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}{}", stdout(o), stderr(o)))
}

/// A client invocation with an isolated context directory and no DROVER_* from outside.
pub fn client(ctx: &Path, cwd: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env("DROVER_CONFIG_DIR", ctx)
        .env_remove("DROVER_SERVER")
        .env_remove("DROVER_TOKEN")
        .env_remove("DROVER_CONFIG")
        .current_dir(cwd)
        .stdin(Stdio::null());
    cmd
}

/// A long-running `drover` process whose stdout and stderr go to files.
pub struct Daemon {
    /// The process.
    pub child: Child,
    /// Its captured stdout.
    pub out: PathBuf,
    /// Its captured stderr.
    pub err: PathBuf,
}

impl Daemon {
    /// Starts `cmd`, sending its output to NAME.out / NAME.err in `dir`.
    pub fn spawn(mut cmd: Command, dir: &Path, name: &str) -> Daemon {
        let out = dir.join(format!("{name}.out"));
        let err = dir.join(format!("{name}.err"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Daemon { child, out, err }
    }

    /// What it printed on stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// What it printed on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Sends a signal (`INT`, `TERM`, …) with kill(1).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < limit,
                "process did not exit; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGINT (Ctrl-C) and asserts a clean exit.
    pub fn interrupt(mut self) -> Daemon {
        self.signal("INT");
        let status = self.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "exited with {status}: {}", self.stderr());
        self
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `drover up` in a temp dir on its own port with its own context directory.
pub struct Up {
    /// The `drover up` process.
    pub daemon: Daemon,
    /// Its working directory (the data is in DIR/data).
    pub dir: PathBuf,
    /// The context directory clients use.
    pub ctx: PathBuf,
    /// Its port.
    pub port: u16,
}

impl Up {
    /// Starts `drover up` and waits until `/healthz` answers and an agent is online.
    pub fn start(dir: &Path, ctx: &Path, port: u16) -> Up {
        Up::start_with(dir, ctx, port, &[])
    }

    /// [`Up::start`] with more flags.
    pub fn start_with(dir: &Path, ctx: &Path, port: u16, flags: &[&str]) -> Up {
        let mut cmd = Command::new(BIN);
        cmd.args(["up", "--port", &port.to_string(), "--data"])
            .arg(dir.join("data"))
            .args(flags)
            .env("DROVER_CONFIG_DIR", ctx)
            .current_dir(dir);
        let up = Up {
            daemon: Daemon::spawn(cmd, dir, "up"),
            dir: dir.to_path_buf(),
            ctx: ctx.to_path_buf(),
            port,
        };
        wait_until("drover up's /healthz", Duration::from_secs(60), || {
            healthy(port)
        });
        wait_until("an online agent", Duration::from_secs(30), || {
            let out = up.drover(&["agents", "-o", "json"]);
            out.status.success()
                && json(&out)["agents"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|a| a["status"] == "online"))
        });
        up
    }

    /// Runs a client command against it (through the context `up` wrote).
    pub fn drover(&self, args: &[&str]) -> Output {
        client(&self.ctx, &self.dir).args(args).output().unwrap()
    }

    /// `drover submit ARGS…`, which must succeed; the job id it printed.
    pub fn submit(&self, args: &[&str]) -> String {
        let mut all = vec!["submit"];
        all.extend_from_slice(args);
        let out = self.drover(&all);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out).trim().to_string()
    }

    /// `drover status -o json JOB`.
    pub fn status(&self, job: &str) -> Value {
        json(&self.drover(&["status", "-o", "json", job]))
    }

    /// Stops it with SIGINT, as Ctrl-C would; returns what it printed on stdout.
    pub fn stop(self) -> String {
        self.daemon.interrupt().stdout()
    }
}

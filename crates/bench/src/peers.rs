//! `peers`: the job users compare first, run by what they would pick instead, in the
//! same run on the same machine: `xargs -P8`, drover (one agent, 8 slots) and Celery 5
//! (prefork pool of 8, Redis on loopback, a task that runs `true` with
//! `subprocess.run`), each running N `true`s; and the memory each needed to do it
//! (Celery's worker tree against drover's server and agent, RSS and PSS). Celery goes
//! into `target/bench-venv` and Redis comes from apt-get when missing; when either
//! cannot be had the Celery rows are skipped with a line saying why.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::report::{Row, Target};
use crate::roles::Proc;
use crate::scenarios::{drover_true, xargs_true};
use crate::Size;

/// The Celery app: one task that runs `true`, the way a worker node runs a command.
const TASKS: &str = r#"
import os
import subprocess

from celery import Celery

url = os.environ["PEERS_REDIS"]
app = Celery("tasks", broker=url, backend=url)
app.conf.update(broker_connection_retry_on_startup=True)


@app.task
def run_true():
    subprocess.run(["true"], check=True)
    return 0
"#;

/// Waits for the worker, sends N tasks, waits for every result; prints jobs/s.
const DRIVE: &str = r#"
import json
import sys
import time

from tasks import app, run_true

n = int(sys.argv[1])
deadline = time.time() + 120
while not app.control.ping(timeout=0.5):
    if time.time() > deadline:
        sys.exit("the Celery worker did not answer a ping within 120 s")
start = time.perf_counter()
results = [run_true.delay() for _ in range(n)]
for r in results:
    r.get(timeout=600)
print(json.dumps({"jobs_per_s": n / (time.perf_counter() - start)}))
"#;

pub async fn run(size: Size, runs: usize) -> anyhow::Result<Vec<Row>> {
    let n = if size == Size::Tiny { 50 } else { 10_000 };
    let celery = match Celery::prepare() {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("    peers: Celery skipped: {e:#}");
            None
        }
    };
    let (mut xargs, mut ours, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    let (mut our_mem, mut their_mem) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        xargs.push(xargs_true(n)?);
        let (rate, sys) = drover_true(n).await?;
        ours.push(rate);
        let (server, agent) = sys.pids();
        our_mem.push(add(
            tree_memory(server),
            tree_memory(agent.unwrap_or(server)),
        ));
        sys.stop();

        if let Some(c) = &celery {
            let (rate, mem) = c.run(n)?;
            theirs.push(rate);
            their_mem.push(mem);
        }
    }
    let mut rows = vec![
        Row::new(
            "peers",
            &format!("xargs -P8: {n} `true`"),
            "jobs/s",
            &xargs,
            None,
            Target::None,
        ),
        Row::new(
            "peers",
            &format!("drover, 1 agent × 8 slots: {n} `true` (vs xargs)"),
            "jobs/s",
            &ours,
            Some(&xargs),
            Target::RatioAtLeast(0.6),
        ),
    ];
    let mib = |v: &[(f64, f64)], pss: bool| -> Vec<f64> {
        v.iter().map(|m| if pss { m.1 } else { m.0 }).collect()
    };
    if celery.is_some() {
        rows.push(Row::new(
            "peers",
            &format!("Celery 5, prefork × 8, Redis: {n} `subprocess.run(['true'])`"),
            "jobs/s",
            &theirs,
            None,
            Target::None,
        ));
        rows.push(Row::new(
            "peers",
            "drover vs Celery",
            "jobs/s",
            &ours,
            Some(&theirs),
            Target::RatioAtLeast(1.2),
        ));
    }
    for (what, pss) in [("RSS", false), ("PSS", true)] {
        rows.push(Row::new(
            "peers",
            &format!("drover server + agent {what}, after the run"),
            "MiB",
            &mib(&our_mem, pss),
            None,
            Target::None,
        ));
        if celery.is_some() {
            rows.push(Row::new(
                "peers",
                &format!("Celery worker tree {what}, after the run"),
                "MiB",
                &mib(&their_mem, pss),
                None,
                Target::None,
            ));
        }
    }
    Ok(rows)
}

/// Celery in its venv and Redis, ready to run.
struct Celery {
    venv: PathBuf,
    redis: PathBuf,
}

impl Celery {
    /// Finds or installs both; the error says what is missing.
    fn prepare() -> anyhow::Result<Celery> {
        let redis = match which("redis-server") {
            Some(p) => p,
            None => {
                eprintln!("    peers: installing redis-server with apt-get");
                let sudo = if is_root() { "" } else { "sudo " };
                let ok = Command::new("bash")
                    .args(["-c", &format!("{sudo}apt-get update -qq && DEBIAN_FRONTEND=noninteractive {sudo}apt-get install -y -qq --no-install-recommends redis-server >/dev/null")])
                    .status()
                    .is_ok_and(|s| s.success());
                which("redis-server")
                    .filter(|_| ok)
                    .context("redis-server is not installed and apt-get could not install it")?
            }
        };
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-venv");
        if !venv.join("bin/celery").exists() {
            eprintln!("    peers: installing Celery into {}", venv.display());
            let ok = Command::new("python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv)
                .status()
                .is_ok_and(|s| s.success())
                && Command::new(venv.join("bin/pip"))
                    .args([
                        "install",
                        "-q",
                        "--disable-pip-version-check",
                        "celery[redis]>=5,<6",
                    ])
                    .status()
                    .is_ok_and(|s| s.success());
            if !ok {
                bail!("cannot install Celery into {} (python3 -m venv, then pip install 'celery[redis]>=5,<6')", venv.display());
            }
        }
        Ok(Celery { venv, redis })
    }

    /// One run: Redis and a worker of 8, N tasks; jobs/s and the worker tree's memory.
    fn run(&self, n: usize) -> anyhow::Result<(f64, (f64, f64))> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("tasks.py"), TASKS)?;
        std::fs::write(dir.path().join("drive.py"), DRIVE)?;
        let port = free_port()?;
        let url = format!("redis://127.0.0.1:{port}/0");
        let _redis: Proc = Command::new(&self.redis)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start redis-server")?
            .into();
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("redis-server did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let worker: Proc = Command::new(self.venv.join("bin/celery"))
            .args([
                "-A",
                "tasks",
                "worker",
                "--pool",
                "prefork",
                "--concurrency",
                "8",
            ])
            .args([
                "--loglevel",
                "WARNING",
                "--without-gossip",
                "--without-mingle",
            ])
            .current_dir(dir.path())
            .env("PEERS_REDIS", &url)
            // Celery refuses root unless told, and warns; the bench runs as root here.
            .env("C_FORCE_ROOT", "1")
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the Celery worker")?
            .into();
        let out = Command::new(self.venv.join("bin/python"))
            .arg("drive.py")
            .arg(n.to_string())
            .current_dir(dir.path())
            .env("PEERS_REDIS", &url)
            .output()?;
        if !out.status.success() {
            bail!(
                "the Celery run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "drive.py printed {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })?;
        let mem = tree_memory(worker.pid());
        Ok((report["jobs_per_s"].as_f64().context("no jobs_per_s")?, mem))
    }
}

/// RSS and PSS (MiB) of `pid` and all its descendants.
fn tree_memory(pid: u32) -> (f64, f64) {
    let mut total = (0.0, 0.0);
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let rollup = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
        let field = |name: &str| {
            rollup
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        total = add(total, (field("Rss:"), field("Pss:")));
        let children =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        todo.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    total
}

fn add(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    (a.0 + b.0, a.1 + b.1)
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.exists())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap_or(false)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

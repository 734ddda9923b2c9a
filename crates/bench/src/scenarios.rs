//! The scenarios. Each returns rows of figures; every process it starts is stopped
//! before it returns.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::api::Api;
use crate::report::{Row, Target};
use crate::roles::{self, Proc, ADMIN};
use crate::Size;
use drover_core::api::{Job, LogPage};

const LONG: Duration = Duration::from_secs(1800);

pub async fn run(name: &str, size: Size, runs: usize) -> anyhow::Result<Vec<Row>> {
    match name {
        "dispatch" => dispatch(size, runs).await,
        "latency" => latency(size, runs).await,
        "queue" => queue(size, runs).await,
        "logs" => logs(size, runs).await,
        "memory" => memory(size).await,
        "docker" => docker(size, runs).await,
        "files" => files(size, runs).await,
        "dashboard" => dashboard(size, runs).await,
        "provision" => provision(size, runs).await,
        "chaos" => crate::chaos::run(size).await,
        "cluster" => crate::cluster::run(size, runs).await,
        "workflows" => crate::workflows::run(size, runs).await,
        "peers" => crate::peers::run(size, runs).await,
        other => bail!("unknown scenario {other:?}"),
    }
}

/// A server and one agent in a fresh temp dir.
pub(crate) struct System {
    server: Proc,
    agent: Option<Proc>,
    pub(crate) api: Api,
    _dir: tempfile::TempDir,
}

impl System {
    /// `slots`: an agent with that many, or none; `database`: PostgreSQL, or SQLite when
    /// `None`.
    pub(crate) async fn start(
        slots: Option<u32>,
        database: Option<&str>,
    ) -> anyhow::Result<System> {
        let dir = tempfile::tempdir()?;
        let (server, url) = roles::start_server(&dir.path().join("server"), database)?;
        let api = Api::new(&url, ADMIN);
        let agent = match slots {
            Some(n) => Some(roles::start_agent(&url, n, &dir.path().join("agent"))?),
            None => None,
        };
        if agent.is_some() {
            wait_agents(&api, 1).await?;
        }
        Ok(System {
            server,
            agent,
            api,
            _dir: dir,
        })
    }

    /// The server's pid and the agent's.
    pub(crate) fn pids(&self) -> (u32, Option<u32>) {
        (self.server.pid(), self.agent.as_ref().map(Proc::pid))
    }

    pub(crate) fn stop(self) {
        if let Some(a) = self.agent {
            a.stop();
        }
        self.server.stop();
    }
}

/// Waits until `n` agents have registered.
pub(crate) async fn wait_agents(api: &Api, n: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let v: Value = api.get("/v1/agents").await?;
        if v["agents"].as_array().is_some_and(|a| a.len() >= n) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the agent did not register within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn process(argv: &[&str]) -> Value {
    json!({"exec": {"kind": "process", "argv": argv}})
}

fn timed_shell(script: &str) -> anyhow::Result<f64> {
    let start = Instant::now();
    let status = Command::new("bash").args(["-c", script]).status()?;
    if !status.success() {
        bail!("baseline `{script}` failed: {status}");
    }
    Ok(start.elapsed().as_secs_f64())
}

async fn dispatch(size: Size, runs: usize) -> anyhow::Result<Vec<Row>> {
    let n = if size == Size::Tiny { 50 } else { 10_000 };
    let mut ours = Vec::new();
    let mut base = Vec::new();
    for _ in 0..runs {
        base.push(xargs_true(n)?);
        let (rate, sys) = drover_true(n).await?;
        ours.push(rate);
        sys.stop();
    }
    Ok(vec![Row::new(
        "dispatch",
        &format!("{n} `true` jobs, 1 agent × 8 slots"),
        "jobs/s",
        &ours,
        Some(&base),
        Target::RatioAtLeast(0.6),
    )])
}

/// `true` run `n` times by `xargs -P8`: runs a second.
pub(crate) fn xargs_true(n: usize) -> anyhow::Result<f64> {
    Ok(n as f64 / timed_shell(&format!("seq {n} | xargs -P8 -n1 true"))?)
}

/// `n` `true` jobs through a server and one agent with 8 slots, submitted in batches of
/// 1000 and timed until all succeeded: jobs a second, and the system, still running.
pub(crate) async fn drover_true(n: usize) -> anyhow::Result<(f64, System)> {
    let sys = System::start(Some(8), None).await?;
    let specs = vec![process(&["true"]); n];
    let start = Instant::now();
    sys.api.submit_all(&specs, 1000).await?;
    sys.api.wait_count("succeeded", n as u64, LONG).await?;
    Ok((n as f64 / start.elapsed().as_secs_f64(), sys))
}

fn now_ns() -> i128 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default() as i128
}

pub(crate) fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

async fn latency(size: Size, runs: usize) -> anyhow::Result<Vec<Row>> {
    let (jobs, cancels) = if size == Size::Tiny { (5, 1) } else { (200, 5) };
    let (mut p50, mut p99, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let sys = System::start(Some(2), None).await?;
        let mut samples = Vec::new();
        for _ in 0..jobs {
            samples.push(submit_to_start_ms(&sys.api).await?);
        }
        p50.push(percentile(&samples, 0.5));
        p99.push(percentile(&samples, 0.99));
        for _ in 0..cancels {
            let job: Job = sys
                .api
                .post(
                    "/v1/jobs",
                    process(&["sh", "-c", "echo $$; exec sleep 1000"]),
                )
                .await?;
            let pid = wait_for_pid(&sys.api, &job.id).await?;
            let start = Instant::now();
            let _: Value = sys
                .api
                .post(&format!("/v1/jobs/{}/cancel", job.id), json!({}))
                .await?;
            while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
                if start.elapsed() > Duration::from_secs(30) {
                    bail!("canceled process {pid} still runs after 30 s");
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            gone.push(start.elapsed().as_secs_f64() * 1000.0);
            sys.api.wait_done(&job.id, Duration::from_secs(30)).await?;
        }
        sys.stop();
    }
    Ok(vec![
        Row::new(
            "latency",
            "submit → process start, p50",
            "ms",
            &p50,
            None,
            // Issue 19's targets.
            Target::AtMost(1.5),
        ),
        Row::new(
            "latency",
            "submit → process start, p99",
            "ms",
            &p99,
            None,
            Target::AtMost(5.0),
        ),
        Row::new(
            "latency",
            "cancel → process gone",
            "ms",
            &gone,
            None,
            Target::AtMost(1000.0),
        ),
    ])
}

/// Submits a job that prints the time it started and waits for it: from submit to the
/// process's start, in ms.
pub(crate) async fn submit_to_start_ms(api: &Api) -> anyhow::Result<f64> {
    let submitted = now_ns();
    let job: Job = api.post("/v1/jobs", process(&["date", "+%s%N"])).await?;
    api.wait_done(&job.id, Duration::from_secs(30)).await?;
    let page = api.logs(&job.id).await?;
    let started: i128 = page
        .records
        .iter()
        .find(|r| r.stream == drover_core::api::Stream::Stdout)
        .context("no output from date")?
        .text
        .trim()
        .parse()?;
    Ok((started - submitted) as f64 / 1e6)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.contains(") Z "))
        .unwrap_or(true)
}

async fn wait_for_pid(api: &Api, id: &str) -> anyhow::Result<u32> {
    let start = Instant::now();
    loop {
        let page = api.logs(id).await?;
        if let Some(r) = page
            .records
            .iter()
            .find(|r| r.stream == drover_core::api::Stream::Stdout)
        {
            return Ok(r.text.trim().parse()?);
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("job {id} printed no pid within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A synthetic agent that finishes every lease at once, polling with `wait_ms`, until
/// `n` jobs were finished by it and the others sharing `done`.
pub(crate) async fn drain_synthetic(
    agent: &Api,
    done: &AtomicUsize,
    n: usize,
    wait_ms: u64,
) -> anyhow::Result<()> {
    while done.load(Ordering::SeqCst) < n {
        let resp = agent.poll(&[], wait_ms).await?;
        let leases: Vec<(String, u32)> = resp
            .leases
            .iter()
            .map(|l| (l.job_id.clone(), l.attempt))
            .collect();
        if !leases.is_empty() {
            agent.finish_many(&leases).await?;
        }
        done.fetch_add(leases.len(), Ordering::SeqCst);
    }
    Ok(())
}

async fn queue(size: Size, runs: usize) -> anyhow::Result<Vec<Row>> {
    let (n, shallow, deep) = if size == Size::Tiny {
        (200, 100, 1_000)
    } else {
        (20_000, 1_000, 1_000_000)
    };
    let mut rows = Vec::new();
    for backend in ["sqlite", "postgres"] {
        let mut rates = Vec::new();
        for _ in 0..runs {
            let db = if backend == "postgres" {
                Some(drover_server::testing_pg::fresh_database().await)
            } else {
                None
            };
            let sys = System::start(None, db.as_deref()).await?;
            let agent = sys.api.register("synthetic", 1000).await?;
            let specs = vec![process(&["true"]); n];
            let start = Instant::now();
            let submit = sys.api.submit_all(&specs, 1000);
            let done = AtomicUsize::new(0);
            let drain = drain_synthetic(&agent, &done, n, 1000);
            let (s, d) = tokio::join!(submit, drain);
            s?;
            d?;
            rates.push(n as f64 / start.elapsed().as_secs_f64());
            sys.stop();
        }
        rows.push(Row::new(
            "queue",
            &format!("{backend}: submit + lease + finish, batches of 1000"),
            "jobs/s",
            &rates,
            None,
            // Issue 19's targets.
            Target::AtLeast(if backend == "sqlite" {
                30_000.0
            } else {
                20_000.0
            }),
        ));

        let db = if backend == "postgres" {
            Some(drover_server::testing_pg::fresh_database().await)
        } else {
            None
        };
        let sys = System::start(None, db.as_deref()).await?;
        let agent = sys.api.register("synthetic", 1).await?;
        let mut queued = 0;
        let mut medians = Vec::new();
        for depth in [shallow, deep] {
            eprintln!("    {backend}: filling the queue to {depth} jobs");
            let specs = vec![process(&["true"]); depth - queued];
            sys.api.submit_all(&specs, 5000).await?;
            queued = depth;
            let mut samples = Vec::new();
            for _ in 0..200 {
                let start = Instant::now();
                let resp = agent.poll(&[], 0).await?;
                samples.push(start.elapsed().as_secs_f64() * 1000.0);
                let lease = resp.leases.first().context("no lease with a full queue")?;
                agent.finish(&lease.job_id, lease.attempt).await?;
                // Keep the depth constant.
                sys.api.submit_all(&[process(&["true"])], 1).await?;
            }
            medians.push(samples.clone());
        }
        let shallow_median =
            crate::report::Row::new("", "", "", &medians[0], None, Target::None).median;
        rows.push(Row::new(
            "queue",
            &format!("{backend}: lease latency, {shallow} queued"),
            "ms",
            &medians[0],
            None,
            Target::None,
        ));
        rows.push(Row::new(
            "queue",
            &format!("{backend}: lease latency, {deep} queued"),
            "ms",
            &medians[1],
            Some(&[shallow_median]),
            Target::RatioAtMost(2.0),
        ));
        sys.stop();
    }
    Ok(rows)
}

async fn logs(size: Size, runs: usize) -> anyhow::Result<Vec<Row>> {
    let bytes: u64 = if size == Size::Tiny { 8 << 20 } else { 1 << 30 };
    let line = "x".repeat(99);
    let producer = format!("yes '{line}' | head -c {bytes}");
    let mut ours = Vec::new();
    let mut base = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..runs {
        let tmp = tempfile::tempdir()?;
        let out = tmp.path().join("out");
        base.push(bytes as f64 / 1e6 / timed_shell(&format!("{producer} > {}", out.display()))?);
        drop(tmp);
        let sys = System::start(Some(1), None).await?;
        let start = Instant::now();
        let job: Job = sys
            .api
            .post(
                "/v1/jobs",
                json!({"exec": {"kind": "shell", "command": producer}}),
            )
            .await?;
        let done = sys.api.wait_done(&job.id, LONG).await?;
        if done.state != drover_core::JobState::Succeeded {
            bail!("log job ended {}: {:?}", done.state, done.error);
        }
        ours.push(bytes as f64 / 1e6 / start.elapsed().as_secs_f64());
        rss.push(sys.agent.as_ref().map_or(f64::NAN, |a| a.rss_mib().1));
        // A figure for logs that did not all arrive would mean nothing.
        let lines = bytes.div_ceil(line.len() as u64 + 1);
        let stored = stored_stdout_lines(&sys.api, &job.id).await?;
        if stored != lines {
            bail!("the store holds {stored} of the job's {lines} lines");
        }
        sys.stop();
    }
    Ok(vec![
        Row::new(
            "logs",
            &format!("{} MiB in 100-byte lines into the store", bytes >> 20),
            "MB/s",
            &ours,
            Some(&base),
            Target::RatioAtLeast(0.5),
        ),
        Row::new(
            "logs",
            "peak agent RSS while streaming",
            "MiB",
            &rss,
            None,
            Target::AtMost(64.0),
        ),
    ])
}

/// How many stdout records job `id` has stored, read page by page; fails on a gap in
/// `seq`.
async fn stored_stdout_lines(api: &Api, id: &str) -> anyhow::Result<u64> {
    let (mut after, mut lines) = (0u64, 0u64);
    loop {
        let page: LogPage = api
            .get(&format!("/v1/jobs/{id}/logs?after={after}&limit=10000"))
            .await?;
        let Some(last) = page.records.last() else {
            return Ok(lines);
        };
        if last.seq != after + page.records.len() as u64 {
            bail!("stored log records after seq {after} have a gap");
        }
        after = last.seq;
        lines += (page.records.iter())
            .filter(|r| r.stream == drover_core::api::Stream::Stdout)
            .count() as u64;
    }
}

/// A 1 GiB artifact uploaded by the agent after its job and downloaded by a client,
/// against `cp` of the same file on the same disk; peak RSS of agent and server.
async fn files(size: Size, runs: usize) -> anyhow::Result<Vec<Row>> {
    let bytes: u64 = if size == Size::Tiny {
        16 << 20
    } else {
        1 << 30
    };
    let (mut cp, mut up, mut down) = (Vec::new(), Vec::new(), Vec::new());
    let (mut agent_rss, mut server_rss) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let sys = System::start(Some(1), None).await?;
        let src = sys._dir.path().join("big.bin");
        timed_shell(&format!(
            "head -c {bytes} /dev/urandom > {0} && sync",
            src.display()
        ))?;
        let copy = sys._dir.path().join("copy.bin");
        cp.push(
            bytes as f64
                / 1e6
                / timed_shell(&format!("cp {} {} && sync", src.display(), copy.display()))?,
        );
        std::fs::remove_file(&copy)?;
        // The job links the file into its workspace: what is timed is the upload.
        let start = Instant::now();
        let job: Job = sys
            .api
            .post(
                "/v1/jobs",
                json!({"exec": {"kind": "shell", "command": format!("mkdir out && ln {} out/big.bin", src.display())}, "artifacts": ["out/*"]}),
            )
            .await?;
        let done = sys.api.wait_done(&job.id, LONG).await?;
        if done.state != drover_core::JobState::Succeeded {
            bail!("artifact job ended {}: {:?}", done.state, done.error);
        }
        up.push(bytes as f64 / 1e6 / start.elapsed().as_secs_f64());
        let list: Value = sys
            .api
            .get(&format!("/v1/jobs/{}/artifacts", job.id))
            .await?;
        let id = list["files"][0]["id"]
            .as_str()
            .context("no artifact listed")?
            .to_string();
        let start = Instant::now();
        let got = sys.api.download(&format!("/v1/files/{id}"), &copy).await?;
        timed_shell("sync")?;
        down.push(bytes as f64 / 1e6 / start.elapsed().as_secs_f64());
        if got != bytes {
            bail!("downloaded {got} bytes of {bytes}");
        }
        agent_rss.push(sys.agent.as_ref().map_or(f64::NAN, |a| a.rss_mib().1));
        server_rss.push(sys.server.rss_mib().1);
        sys.stop();
    }
    let what = format!("{} MiB artifact", bytes >> 20);
    Ok(vec![
        Row::new(
            "files",
            &format!("{what}: agent upload after the job"),
            "MB/s",
            &up,
            Some(&cp),
            Target::RatioAtLeast(0.5),
        ),
        Row::new(
            "files",
            &format!("{what}: client download"),
            "MB/s",
            &down,
            Some(&cp),
            Target::RatioAtLeast(0.5),
        ),
        Row::new(
            "files",
            "peak agent RSS while uploading",
            "MiB",
            &agent_rss,
            None,
            Target::AtMost(64.0),
        ),
        Row::new(
            "files",
            "peak server RSS while receiving and sending",
            "MiB",
            &server_rss,
            None,
            Target::AtMost(64.0),
        ),
    ])
}

async fn memory(size: Size) -> anyhow::Result<Vec<Row>> {
    let n = if size == Size::Tiny { 100 } else { 100_000 };
    let sys = System::start(Some(8), None).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let server_idle = sys.server.rss_mib().0;
    let agent_idle = sys.agent.as_ref().map_or(f64::NAN, |a| a.rss_mib().0);
    let specs = vec![process(&["true"]); n];
    sys.api.submit_all(&specs, 1000).await?;
    sys.api.wait_count("succeeded", n as u64, LONG).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let server_after = sys.server.rss_mib().0;
    let server_after_file = roles::rss_file_of(sys.server.pid());
    let agent_after = sys.agent.as_ref().map_or(f64::NAN, |a| a.rss_mib().0);
    sys.stop();
    Ok(vec![
        Row::new(
            "memory",
            "server idle RSS",
            "MiB",
            &[server_idle],
            None,
            Target::AtMost(40.0),
        ),
        Row::new(
            "memory",
            "agent idle RSS",
            "MiB",
            &[agent_idle],
            None,
            Target::AtMost(10.0),
        ),
        Row::new(
            "memory",
            &format!("server RSS after {n} jobs"),
            "MiB",
            &[server_after],
            None,
            Target::None,
        ),
        Row::new(
            "memory",
            &format!("… of which file pages (program text, SQLite's mmap) after {n} jobs"),
            "MiB",
            &[server_after_file],
            None,
            Target::None,
        ),
        Row::new(
            "memory",
            &format!("server RSS after {n} jobs, without file pages"),
            "MiB",
            &[server_after - server_after_file],
            None,
            Target::AtMost(100.0),
        ),
        Row::new(
            "memory",
            &format!("agent RSS after {n} jobs"),
            "MiB",
            &[agent_after],
            None,
            Target::None,
        ),
    ])
}

pub const IMAGE: &str = "drover-test-busybox:latest";

/// Imports a busybox root filesystem as [`IMAGE`] when the engine lacks it (no registry here).
pub fn ensure_image() -> anyhow::Result<()> {
    if Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    let script = format!(
        "set -e; bb=$(command -v busybox || ls /bin/busybox); t=$(mktemp -d); mkdir -p $t/bin $t/tmp; cp $bb $t/bin/busybox; \
         for a in $($t/bin/busybox --list); do [ $a = busybox ] || ln -s busybox $t/bin/$a; done; \
         tar -C $t -c . | docker import - {IMAGE} >/dev/null; rm -rf $t"
    );
    let status = Command::new("bash").args(["-c", &script]).status()?;
    if !status.success() {
        bail!("cannot build {IMAGE}: needs a Docker engine and busybox (`apt-get install busybox-static`)");
    }
    Ok(())
}

async fn docker(size: Size, runs: usize) -> anyhow::Result<Vec<Row>> {
    ensure_image()?;
    let per_run = if size == Size::Tiny { 1 } else { 10 };
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let sys = System::start(Some(2), None).await?;
        for _ in 0..per_run {
            base.push(timed_shell(&format!("docker run --rm {IMAGE} true"))? * 1000.0);
            let start = Instant::now();
            let job: Job = sys
                .api
                .post("/v1/jobs", json!({"exec": {"kind": "docker", "image": IMAGE, "command": ["true"], "pull": "never"}}))
                .await?;
            let done = sys.api.wait_done(&job.id, Duration::from_secs(120)).await?;
            if done.state != drover_core::JobState::Succeeded {
                bail!("docker job ended {}: {:?}", done.state, done.error);
            }
            ours.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        sys.stop();
    }
    Ok(vec![Row::new(
        "docker",
        "`true` in a container, submit → job done",
        "ms",
        &ours,
        Some(&base),
        Target::RatioAtMost(1.2),
    )])
}

/// A browser's session with the dashboard: signs in with `token` like the form does.
async fn dashboard_session(url: &str, token: &str) -> anyhow::Result<(reqwest::Client, String)> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let resp = http
        .post(format!("{url}/login"))
        .form(&[("token", token)])
        .send()
        .await?;
    let cookie = resp
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("signing in gave no session cookie")?
        .to_string();
    Ok((http, cookie))
}

/// The dashboard's two targets: a printed line reaching a job page's live log (the
/// Server-Sent Events stream the page reads, with its session cookie), and the first
/// page of the jobs list with many jobs stored.
async fn dashboard(size: Size, runs: usize) -> anyhow::Result<Vec<Row>> {
    let (lines, stored) = if size == Size::Tiny {
        (20, 2_000)
    } else {
        (200, 1_000_000)
    };
    let mut line_p50 = Vec::new();
    for _ in 0..runs {
        let sys = System::start(Some(2), None).await?;
        let (http, cookie) = dashboard_session(&sys.api.url, ADMIN).await?;
        let script = format!("for i in $(seq 1 {lines}); do date +%s%N; sleep 0.02; done");
        let job: Job = sys
            .api
            .post(
                "/v1/jobs",
                json!({"exec": {"kind": "process", "argv": ["sh", "-c", script]}}),
            )
            .await?;
        let mut resp = http
            .get(format!("{}/v1/jobs/{}/logs/stream", sys.api.url, job.id))
            .header(reqwest::header::COOKIE, &cookie)
            .send()
            .await?;
        let mut samples = Vec::new();
        let mut buf = String::new();
        while samples.len() < lines {
            let chunk = tokio::time::timeout(Duration::from_secs(60), resp.chunk())
                .await
                .context("the log stream stalled")??
                .context("the log stream ended early")?;
            let got = now_ns();
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) else {
                    continue;
                };
                let rec: Value = serde_json::from_str(data)?;
                if let Some(printed) = rec["text"]
                    .as_str()
                    .and_then(|t| t.trim().parse::<i128>().ok())
                {
                    samples.push((got - printed) as f64 / 1e6);
                }
            }
        }
        line_p50.push(percentile(&samples, 0.5));
        sys.stop();
    }
    let mut rows = vec![Row::new(
        "dashboard",
        "a printed line → the job page's live log (p50)",
        "ms",
        &line_p50,
        None,
        Target::AtMost(100.0),
    )];

    let sys = System::start(None, None).await?;
    eprintln!("    storing {stored} jobs");
    let specs = vec![process(&["true"]); 5000.min(stored)];
    let mut n = 0;
    while n < stored {
        sys.api.submit_all(&specs, 5000).await?;
        n += specs.len();
    }
    let (http, cookie) = dashboard_session(&sys.api.url, ADMIN).await?;
    let mut first_page = Vec::new();
    for _ in 0..runs {
        let mut samples = Vec::new();
        for _ in 0..50 {
            let start = Instant::now();
            let resp = http
                .get(format!("{}/jobs", sys.api.url))
                .header(reqwest::header::COOKIE, &cookie)
                .send()
                .await?;
            let ok = resp.status().is_success();
            let body = resp.text().await?;
            samples.push(start.elapsed().as_secs_f64() * 1000.0);
            if !ok || !body.contains("id=\"jobs\"") {
                bail!(
                    "the jobs page did not render: {}",
                    &body[..body.len().min(300)]
                );
            }
        }
        first_page.push(percentile(&samples, 0.5));
    }
    rows.push(Row::new(
        "dashboard",
        &format!("first page of the jobs list, {stored} jobs stored (p50)"),
        "ms",
        &first_page,
        None,
        Target::AtMost(50.0),
    ));
    sys.stop();
    Ok(rows)
}

/// Submit → the job's process starts, for a job only a provider's (ephemeral) agents can
/// take: with the process provider, and with the docker provider against `docker run` of
/// the agent image until the agent has registered. Runs the real `drover` binary (built
/// next to this one) with a config file.
async fn provision(size: Size, runs: usize) -> anyhow::Result<Vec<Row>> {
    let samples_per_run = if size == Size::Tiny { 2 } else { 10 };
    let drover = std::env::current_exe()?.with_file_name("drover");
    if !drover.is_file() {
        bail!(
            "{} is missing: cargo build --release -p drover",
            drover.display()
        );
    }
    let image = "drover-bench-agent:latest";
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/agent-image.sh");
    let built = Command::new(&script).arg(image).arg(&drover).status()?;
    if !built.success() {
        bail!("scripts/agent-image.sh could not build the agent image");
    }
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    std::fs::write(
        dir.path().join("drover.toml"),
        format!(
            "[[provider]]\nname = \"proc\"\nkind = \"process\"\nlabels = {{ pool = \"proc\" }}\nephemeral = true\n\n\
             [[provider]]\nname = \"benchdock\"\nkind = \"docker\"\nimage = \"{image}\"\nnetwork = \"host\"\npull = \"never\"\nlabels = {{ pool = \"benchdock\" }}\nephemeral = true\n"
        ),
    )?;
    let server = Proc::from(
        Command::new(&drover)
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-token",
                ADMIN,
                "--join-token",
                "bench-join",
            ])
            .arg("--data")
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(dir.path().join("drover.toml"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()?,
    );
    let api = Api::new(&url, ADMIN);
    let start = Instant::now();
    while api.get::<Value>("/v1/providers").await.is_err() {
        if start.elapsed() > Duration::from_secs(30) {
            bail!("the server did not start");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started_after = |pool: &'static str| {
        let api = api.clone();
        async move {
            // The previous sample's agent must be gone, so each sample starts one.
            let t = Instant::now();
            loop {
                let v: Value = api.get("/v1/providers").await?;
                let busy = v["providers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["agents"].as_array().is_some_and(|a| !a.is_empty()));
                if !busy {
                    break;
                }
                if t.elapsed() > Duration::from_secs(60) {
                    bail!("the providers' agents did not stop");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let submitted = now_ns();
            let job: Job = api
                .post(
                    "/v1/jobs",
                    json!({"labels": {"pool": pool}, "exec": {"kind": "shell", "command": "true"}}),
                )
                .await?;
            let done = api.wait_done(&job.id, Duration::from_secs(120)).await?;
            if done.state != drover_core::JobState::Succeeded {
                bail!("the {pool} job ended {}: {:?}", done.state, done.error);
            }
            // When the agent reported the process started (busybox's `date`, in the
            // container, has no nanoseconds).
            let started = done
                .started_at
                .and_then(|t| t.timestamp_nanos_opt())
                .context("the job has no start time")? as i128;
            anyhow::Ok((started - submitted) as f64 / 1e6)
        }
    };
    let (mut process_p50, mut docker_p50, mut baseline) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let mut p = Vec::new();
        let mut d = Vec::new();
        let mut b = Vec::new();
        for _ in 0..samples_per_run {
            p.push(started_after("proc").await?);
            d.push(started_after("benchdock").await?);
            b.push(docker_run_and_register(&api, &url, image).await?);
        }
        process_p50.push(percentile(&p, 0.5));
        docker_p50.push(percentile(&d, 0.5));
        baseline.push(percentile(&b, 0.5));
    }
    drop(server);
    // The killed server's last agents: ended, not yet removed.
    let left = Command::new("docker")
        .args(["ps", "-aq", "--filter", "name=drover-agent-benchdock-"])
        .output()?;
    for id in String::from_utf8_lossy(&left.stdout).split_whitespace() {
        let _ = Command::new("docker").args(["rm", "-f", id]).output();
    }
    Ok(vec![
        Row::new(
            "provision",
            "submit → process start, process provider, no agent running (p50)",
            "ms",
            &process_p50,
            None,
            Target::AtMost(1000.0),
        ),
        Row::new(
            "provision",
            "submit → process start, docker provider, no agent running (p50)",
            "ms",
            &docker_p50,
            Some(&baseline),
            Target::RatioAtMost(1.5),
        ),
    ])
}

/// The baseline of the docker provider: `docker run` of the agent image by hand, with a
/// bootstrap token, until the agent is listed; in ms.
async fn docker_run_and_register(api: &Api, url: &str, image: &str) -> anyhow::Result<f64> {
    let token: Value = api
        .post(
            "/v1/tokens",
            json!({"name": "bench-baseline", "scope": "bootstrap", "labels": {"pool": "baseline"}}),
        )
        .await?;
    let secret = token["token"].as_str().context("no token")?;
    let name = format!("baseline-{}", now_ns());
    let start = Instant::now();
    let out = Command::new("docker")
        .args([
            "run",
            "-d",
            "--rm",
            "--network",
            "host",
            "--pull=never",
            "--name",
            &name,
            image,
        ])
        .args([
            "agent",
            "--server",
            url,
            "--token",
            secret,
            "--name",
            &name,
            "--work-dir",
            "/var/lib/drover-agent",
        ])
        .output()?;
    if !out.status.success() {
        bail!("docker run: {}", String::from_utf8_lossy(&out.stderr));
    }
    loop {
        let v: Value = api.get("/v1/agents").await?;
        if v["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|a| a["name"] == name.as_str())
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("the baseline agent did not register");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = start.elapsed().as_secs_f64() * 1000.0;
    let _ = Command::new("docker").args(["rm", "-f", &name]).output();
    Ok(took)
}

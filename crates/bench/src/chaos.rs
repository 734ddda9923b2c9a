//! The chaos scenario: jobs that record every execution in a ledger run while agents are
//! SIGKILLed and restarted on their work dirs, the server is killed and restarted (SIGKILL
//! and SIGTERM), PostgreSQL restarts the way a crash would, and one agent is cut off from
//! the server for longer than the lease TTL. Then it counts what must be zero: jobs lost
//! or completed twice, attempts of one job that ran at the same time, log lines missing
//! or duplicated (stored and followed live), processes left behind, 5xx answers outside
//! database outages; and how long the jobs of a restarted agent waited to be retried.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use drover_core::api::{Job, JobEvents, LogPage, LogRecord, Stream};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

use crate::api::Api;
use crate::report::{Row, Target};
use crate::roles::{self, Proc, ADMIN};
use crate::Size;

/// Output lines each job prints (and ledger heartbeats it writes), 50 ms apart.
const LINES_PER_JOB: usize = 8;
/// Longest the whole run may take.
const LIMIT: Duration = Duration::from_secs(900);

/// How hard one run shakes the system.
struct Plan {
    jobs: usize,
    agents: usize,
    slots: u32,
    ttl: Duration,
    /// Job progress (fraction done) at which the server is killed; `true`: SIGKILL,
    /// `false`: SIGTERM.
    server_kills: Vec<(f64, bool)>,
    /// Progress at which PostgreSQL restarts (PostgreSQL runs only).
    pg_restarts: Vec<f64>,
    /// Progress at which one agent is cut off, and for how long.
    partition: (f64, Duration),
    followers: usize,
}

fn plan(size: Size) -> Plan {
    match size {
        Size::Tiny => Plan {
            jobs: 200,
            agents: 3,
            slots: 4,
            ttl: Duration::from_secs(3),
            server_kills: vec![(0.3, true), (0.6, false)],
            pg_restarts: vec![0.45],
            partition: (0.15, Duration::from_secs(5)),
            followers: 10,
        },
        Size::Full => Plan {
            jobs: 1200,
            agents: 3,
            slots: 8,
            ttl: Duration::from_secs(5),
            server_kills: vec![
                (0.15, true),
                (0.3, false),
                (0.5, true),
                (0.7, false),
                (0.85, true),
            ],
            pg_restarts: vec![0.4, 0.6],
            partition: (0.2, Duration::from_secs(8)),
            followers: 40,
        },
    }
}

/// Runs the scenario on SQLite and on PostgreSQL.
pub async fn run(size: Size) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for backend in ["sqlite", "postgres"] {
        eprintln!("    chaos on {backend}");
        rows.extend(one(size, backend).await?);
    }
    Ok(rows)
}

/// What one run counted.
#[derive(Default)]
struct Tally {
    jobs: usize,
    lost: usize,
    finished_twice: usize,
    /// Jobs whose work ran to its end twice, the first time on an agent whose lease
    /// expired before its report could arrive (cut off, or restarting for too long).
    rerun_after_cutoff: usize,
    /// The same because its agent died within a second of the job's end, before it
    /// had written down how the job ended (or the job finished while its watchdog was
    /// getting to it).
    rerun_after_death_at_end: usize,
    /// The same for any other reason: must not happen.
    rerun_otherwise: usize,
    /// Longest a job in its last moments ran on after its agent was killed (until the
    /// watchdog stopped it, or it ended first).
    ran_on_s: f64,
    overlapping: usize,
    overlap_s: f64,
    stored_missing: usize,
    stored_duplicated: usize,
    followed_missing: usize,
    followed_duplicated: usize,
    processes_left: usize,
    containers_left: usize,
    docker: bool,
    errors_5xx: u64,
    requeue_s: Vec<f64>,
    agent_kills: usize,
    server_restarts: usize,
    pg_restarts: usize,
}

async fn one(size: Size, backend: &str) -> anyhow::Result<Vec<Row>> {
    let plan = plan(size);
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_path_buf();
    let ledger = root.join("ledger");
    std::fs::create_dir_all(&ledger)?;
    let pg = match backend {
        "postgres" => Some(
            tokio::task::spawn_blocking(drover_server::testing_pg::OwnCluster::start)
                .await?
                .map_err(anyhow::Error::msg)?,
        ),
        _ => None,
    };
    let db = pg.as_ref().map(|c| c.url());
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let mut sys = Chaos {
        root: root.clone(),
        db,
        listen,
        ttl: plan.ttl,
        slots: plan.slots,
        server: None,
        agents: Vec::new(),
        api: Api::new(&url, ADMIN),
        proxy: Proxy::start(port).await?,
        kills: Vec::new(),
        outages: Vec::new(),
    };
    sys.start_server()?;
    sys.wait_healthy().await?;
    for i in 0..plan.agents {
        // The first agent talks to the server through the proxy that cuts it off.
        let via = if i == 0 {
            format!("http://127.0.0.1:{}", sys.proxy.port)
        } else {
            url.clone()
        };
        let agent = roles::start_agent_named(&via, plan.slots, &sys.work_dir(i), &name(i))?;
        sys.agents.push((agent, via));
    }

    let docker = crate::scenarios::ensure_image().is_ok();
    if !docker {
        eprintln!("    no Docker engine: shell jobs only");
    }
    let specs: Vec<Value> = (0..plan.jobs)
        .map(|i| job_spec(i, &ledger, docker))
        .collect();
    let ids = sys.api.submit_all(&specs, 500).await?;
    let followers: Vec<_> = ids
        .iter()
        .step_by((ids.len() / plan.followers.max(1)).max(1))
        .take(plan.followers)
        .map(|id| {
            let (api, id) = (sys.api.clone(), id.clone());
            tokio::spawn(async move { (id.clone(), follow(&api, &id).await) })
        })
        .collect();

    let mut tally = Tally {
        jobs: ids.len(),
        ..Tally::default()
    };
    let started = Instant::now();
    let mut server_kills = plan.server_kills.clone().into_iter().peekable();
    let mut pg_restarts = plan.pg_restarts.clone().into_iter().peekable();
    let mut partition = Some(plan.partition);
    let mut next_agent_kill = Instant::now() + jitter(Duration::from_secs(2));
    // 5xx are counted in windows that leave out database restarts: the server's counter
    // when the current window opened, and the sum of closed windows.
    let (mut window_start, mut outside_5xx) = (0, 0);
    loop {
        let done = sys.terminal_count().await;
        let progress = done as f64 / ids.len() as f64;
        if done >= ids.len() {
            break;
        }
        if started.elapsed() > LIMIT {
            bail!("only {done} of {} jobs ended within {LIMIT:?}", ids.len());
        }
        if let Some((at, cut)) = partition.filter(|(at, _)| progress >= *at) {
            let _ = at;
            partition = None;
            eprintln!("    partition agent 0 for {cut:?}");
            sys.outages.push(Utc::now());
            sys.proxy.cut(true);
            let until = Instant::now() + cut;
            // Agents keep being killed meanwhile; the cut one is left alone.
            while Instant::now() < until {
                sys.maybe_kill_agent(&mut next_agent_kill, &mut tally)
                    .await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sys.proxy.cut(false);
        }
        if let Some(&(at, hard)) = server_kills.peek() {
            if progress >= at {
                server_kills.next();
                outside_5xx += sys.errors_5xx().await - window_start;
                window_start = 0;
                eprintln!(
                    "    server {} at {:.0}%",
                    if hard { "SIGKILL" } else { "SIGTERM" },
                    progress * 100.0
                );
                sys.outages.push(Utc::now());
                sys.restart_server(hard).await?;
                tally.server_restarts += 1;
            }
        }
        if let (Some(&at), Some(cluster)) = (pg_restarts.peek(), pg.as_ref()) {
            if progress >= at {
                pg_restarts.next();
                // 5xx while the database is down are expected; count up to the restart,
                // and again from a moment after it is back.
                outside_5xx += sys.errors_5xx().await - window_start;
                eprintln!(
                    "    PostgreSQL immediate restart at {:.0}%",
                    progress * 100.0
                );
                sys.outages.push(Utc::now());
                tokio::task::block_in_place(|| cluster.restart_immediately())
                    .map_err(anyhow::Error::msg)?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                window_start = sys.errors_5xx().await;
                tally.pg_restarts += 1;
            }
        }
        sys.maybe_kill_agent(&mut next_agent_kill, &mut tally)
            .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tally.errors_5xx = outside_5xx + sys.errors_5xx().await - window_start;

    // Everything ended: count what the system did.
    let jobs = sys.all_jobs(&ids).await?;
    tally.lost = jobs
        .iter()
        .filter(|j| j.state.as_str() != "succeeded")
        .count();
    let twice = check_ledger(&ledger, &mut tally)?;
    for job in jobs.iter().filter(|j| j.current_attempt > 0) {
        let stored = stored_log(&sys.api, &job.id, job.current_attempt).await?;
        let (missing, dup) = compare(&expected_lines(), &stdout_of(&stored));
        if missing + dup > 0 {
            eprintln!(
                "    job {} attempt {}: {missing} stored lines missing, {dup} duplicated: {:?}",
                job.id,
                job.current_attempt,
                stored.iter().map(|r| (r.seq, &r.text)).collect::<Vec<_>>()
            );
        }
        tally.stored_missing += missing;
        tally.stored_duplicated += dup;
    }
    for f in followers {
        let (id, followed) = f.await?;
        let followed = followed.with_context(|| format!("following {id}"))?;
        let job = jobs.iter().find(|j| j.id == id).context("followed job")?;
        let stored = stored_log(&sys.api, &id, job.current_attempt).await?;
        let mine = followed
            .get(&job.current_attempt)
            .cloned()
            .unwrap_or_default();
        let want: Vec<u64> = stored.iter().map(|r| r.seq).collect();
        let got: Vec<u64> = mine.iter().map(|r| r.seq).collect();
        let (missing, dup) = compare(&want, &got);
        if missing + dup > 0 {
            eprintln!("    followed job {id} attempt {}: {missing} missing, {dup} duplicated: {got:?} vs {want:?}", job.current_attempt);
        }
        tally.followed_missing += missing;
        tally.followed_duplicated += dup;
    }
    let events = sys.events_of(&jobs).await?;
    tally.finished_twice = events
        .values()
        .filter(|e| e.events.iter().filter(|e| e.kind == "finished").count() > 1)
        .count();
    tally.requeue_s = sys.requeue_delays(&jobs, &events).await?;
    let index_of: HashMap<String, usize> = sys
        .agent_ids()
        .await?
        .into_iter()
        .filter_map(|(name, id)| Some((id, name.strip_prefix("chaos-")?.parse().ok()?)))
        .collect();
    for (id, attempt, end) in twice {
        let cut_off = events.get(&id).is_some_and(|e| {
            e.events.iter().any(|e| {
                e.kind == "lost"
                    && e.attempt == Some(attempt)
                    && e.reason
                        .as_deref()
                        .is_some_and(|r| r.contains("lease expired"))
            })
        });
        // The agent that ran it, killed less than a second before or after the job's end
        // (a job in its last moments can finish before the watchdog, woken by its
        // agent's death, gets to kill it).
        let agent = jobs
            .iter()
            .find(|j| j.id == id)
            .and_then(|j| j.attempts.iter().find(|a| a.number == attempt))
            .and_then(|a| index_of.get(&a.agent_id));
        let died_at_end = sys
            .kills
            .iter()
            .any(|(i, _, at)| Some(i) == agent && at.abs_diff(end) < 1_000_000_000);
        // How long the job ran on after its agent died, if it did.
        if let Some(late) = sys
            .kills
            .iter()
            .filter(|(i, _, at)| Some(i) == agent && *at <= end)
            .map(|(_, _, at)| end - at)
            .min()
            .filter(|late| *late < 1_000_000_000)
        {
            tally.ran_on_s = tally.ran_on_s.max(late as f64 / 1e9);
        }
        if cut_off {
            tally.rerun_after_cutoff += 1;
        } else if died_at_end {
            tally.rerun_after_death_at_end += 1;
        } else {
            let timeline: Vec<String> = events
                .get(&id)
                .into_iter()
                .flat_map(|e| &e.events)
                .map(|e| {
                    format!(
                        "{} {} {:?} {}",
                        e.at.format("%H:%M:%S%.3f"),
                        e.kind,
                        e.attempt,
                        e.reason.as_deref().unwrap_or("")
                    )
                })
                .collect();
            let kills: Vec<i128> = sys
                .kills
                .iter()
                .filter(|(i, _, _)| Some(i) == agent)
                .map(|(_, _, at)| (*at as i128 - end as i128) / 1_000_000)
                .collect();
            eprintln!("    job {id}: attempt {attempt} (agent {agent:?}) ran to its end and the job ran again; its agent's kills relative to the end (ms): {kills:?}; {timeline:?}");
            tally.rerun_otherwise += 1;
        }
    }
    sys.stop_all().await;
    tally.processes_left = processes_mentioning(&root);
    tally.containers_left = if docker {
        containers_left(plan.agents)
    } else {
        0
    };
    tally.docker = docker;
    drop(pg);
    Ok(rows(backend, &tally))
}

fn name(i: usize) -> String {
    format!("chaos-{i}")
}

/// A job that prints numbered lines and writes a heartbeat to its own ledger file
/// (one per attempt) every 50 ms, then an end mark. Times come from `/proc/uptime`,
/// which containers share with the host (busybox's `date` has no nanoseconds).
fn job_command(ledger: &str) -> String {
    let lines: Vec<String> = (1..=LINES_PER_JOB).map(|i| i.to_string()).collect();
    format!(
        "L={ledger}/$DROVER_JOB_ID.$DROVER_ATTEMPT; for i in {}; do echo \"line $i\"; echo \"h $(cut -d' ' -f1 /proc/uptime)\" >> $L; sleep 0.05; done; echo \"end $(cut -d' ' -f1 /proc/uptime)\" >> $L",
        lines.join(" ")
    )
}

/// Job `i` of a run: every tenth a container when the engine is there, the rest shell.
fn job_spec(i: usize, ledger: &Path, docker: bool) -> Value {
    let exec = if docker && i % 10 == 5 {
        json!({"kind": "docker", "image": crate::scenarios::IMAGE, "command": ["sh", "-c", job_command("/ledger")],
               "volumes": [format!("{}:/ledger", ledger.display())]})
    } else {
        json!({"kind": "shell", "command": job_command(&ledger.to_string_lossy())})
    };
    json!({"exec": exec, "max_attempts": 50, "backoff": {"base_ms": 100, "cap_ms": 1000}})
}

/// Containers of this run's agents still there (running or not).
fn containers_left(agents: usize) -> usize {
    (0..agents)
        .filter_map(|i| {
            std::process::Command::new("docker")
                .args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=drover.agent={}", name(i)),
                ])
                .output()
                .ok()
        })
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
        .sum()
}

fn expected_lines() -> Vec<String> {
    (1..=LINES_PER_JOB).map(|i| format!("line {i}")).collect()
}

fn stdout_of(records: &[LogRecord]) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.stream == Stream::Stdout)
        .map(|r| r.text.clone())
        .collect()
}

/// `(missing, duplicated)`: items of `want` absent from `got`, and items of `got` seen
/// more than once.
fn compare<T: Ord + Clone>(want: &[T], got: &[T]) -> (usize, usize) {
    let mut counts: BTreeMap<T, usize> = BTreeMap::new();
    for g in got {
        *counts.entry(g.clone()).or_default() += 1;
    }
    let missing = want.iter().filter(|w| !counts.contains_key(w)).count();
    let dup = counts.values().map(|c| c.saturating_sub(1)).sum();
    (missing, dup)
}

/// Executions per job from the ledger: attempts that overlapped; returns the jobs whose
/// work ran to its end more than once, with the first attempt that did and its end.
fn check_ledger(ledger: &Path, tally: &mut Tally) -> anyhow::Result<Vec<(String, u32, u128)>> {
    // job id -> attempt -> (first, last timestamp ns, completed)
    let mut runs: HashMap<String, BTreeMap<u32, (u128, u128, bool)>> = HashMap::new();
    for entry in std::fs::read_dir(ledger)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let Some((job, attempt)) = name.rsplit_once('.') else {
            continue;
        };
        let attempt: u32 = attempt.parse()?;
        let text = std::fs::read_to_string(&path)?;
        let times: Vec<u128> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .map(|secs| (secs * 1e9) as u128)
            .collect();
        let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
            continue;
        };
        let completed = text.lines().any(|l| l.starts_with("end "));
        runs.entry(job.to_string())
            .or_default()
            .insert(attempt, (*first, *last, completed));
    }
    let mut twice = Vec::new();
    for (job, attempts) in &runs {
        let mut completed = attempts.iter().filter(|(_, r)| r.2);
        if let (Some((first, run)), Some(_)) = (completed.next(), completed.next()) {
            twice.push((job.clone(), *first, run.1));
        }
        let list: Vec<_> = attempts.values().collect();
        let mut worst = 0u128;
        for (i, a) in list.iter().enumerate() {
            for b in &list[i + 1..] {
                worst = worst.max(a.1.saturating_sub(b.0));
            }
        }
        if worst > 0 {
            tally.overlapping += 1;
            tally.overlap_s = tally.overlap_s.max(worst as f64 / 1e9);
        }
    }
    Ok(twice)
}

/// Every stored record of one attempt.
async fn stored_log(api: &Api, id: &str, attempt: u32) -> anyhow::Result<Vec<LogRecord>> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let path = format!("/v1/jobs/{id}/logs?attempt={attempt}&after={after}&limit=10000");
        let page: LogPage = retry(|| api.get(&path)).await?;
        if page.records.is_empty() {
            return Ok(out);
        }
        after = page.last_seq;
        out.extend(page.records);
    }
}

/// Follows a job's log live over Server-Sent Events from its first attempt to its end,
/// reconnecting after the last record seen when the server goes away; records by attempt.
async fn follow(api: &Api, id: &str) -> anyhow::Result<BTreeMap<u32, Vec<LogRecord>>> {
    let http = reqwest::Client::new();
    let mut out: BTreeMap<u32, Vec<LogRecord>> = BTreeMap::new();
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        anyhow::ensure!(started.elapsed() < LIMIT, "still following after {LIMIT:?}");
        let job: Job = match api.job(id).await {
            Ok(j) => j,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if job.current_attempt == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        // Done only after an `end` of the job's last attempt (below): a dropped
        // connection is followed again from the last record seen, even when the job
        // ended meanwhile.
        attempt = attempt.max(1);
        let after = out
            .get(&attempt)
            .and_then(|r| r.last())
            .map_or(0, |r| r.seq);
        let resp = http
            .get(format!(
                "{}/v1/jobs/{id}/logs/stream?attempt={attempt}&after={after}",
                api.url
            ))
            .bearer_auth(ADMIN)
            .send()
            .await;
        let ended = match resp {
            Ok(r) if r.status().is_success() => read_sse(r, out.entry(attempt).or_default()).await,
            _ => false,
        };
        if ended {
            let job: Job = retry(|| api.job(id)).await?;
            if attempt < job.current_attempt {
                attempt += 1;
            } else if job.state.is_terminal() {
                return Ok(out);
            } else {
                // The attempt ended but its job has not moved on yet.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Reads `record` events into `into` until `end` (true) or the connection drops (false).
async fn read_sse(resp: reqwest::Response, into: &mut Vec<LogRecord>) -> bool {
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    while let Some(chunk) = body.next().await {
        let Ok(chunk) = chunk else { return false };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find("\n\n") {
            let event: String = buf.drain(..i + 2).collect();
            if event.lines().any(|l| l == "event: end") {
                return true;
            }
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                if let Ok(rec) = serde_json::from_str::<LogRecord>(data) {
                    into.push(rec);
                }
            }
        }
    }
    false
}

/// Calls `f` until it succeeds (the server may be restarting), for up to a minute.
async fn retry<T, F, Fut>(mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > give_up => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn jitter(around: Duration) -> Duration {
    around.mul_f64(0.75 + rand_unit() * 0.5)
}

fn rand_unit() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    f64::from(nanos % 1000) / 1000.0
}

/// The ledger's clock: `/proc/uptime`, in nanoseconds.
fn uptime_ns() -> u128 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |secs| (secs * 1e9) as u128)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Processes whose command line names the run's temp dir: jobs, agents, watchdogs.
fn processes_mentioning(root: &Path) -> usize {
    let needle = root.to_string_lossy().into_owned();
    let mine = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy() != mine)
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .filter(|c| String::from_utf8_lossy(c).contains(&needle))
                .count()
        })
        .unwrap_or(0)
}

/// The processes of one run and the wall-clock times agents were killed.
struct Chaos {
    root: PathBuf,
    db: Option<String>,
    listen: String,
    ttl: Duration,
    slots: u32,
    server: Option<Proc>,
    agents: Vec<(Proc, String)>,
    api: Api,
    proxy: Proxy,
    /// (agent index, when it was killed, on the wall clock and on the ledger's clock).
    kills: Vec<(usize, DateTime<Utc>, u128)>,
    /// When the server or the database went down, or the partition began.
    outages: Vec<DateTime<Utc>>,
}

impl Chaos {
    fn work_dir(&self, i: usize) -> PathBuf {
        self.root.join(format!("agent-{i}"))
    }

    fn start_server(&mut self) -> anyhow::Result<()> {
        let (proc, _) = roles::start_server_at(
            &self.root.join("server"),
            self.db.as_deref(),
            &self.listen,
            self.ttl,
        )?;
        self.server = Some(proc);
        Ok(())
    }

    async fn wait_healthy(&self) -> anyhow::Result<()> {
        retry(|| self.api.get::<Value>("/v1/agents")).await?;
        Ok(())
    }

    async fn restart_server(&mut self, hard: bool) -> anyhow::Result<()> {
        if let Some(mut s) = self.server.take() {
            if hard {
                s.kill();
            } else {
                s.terminate();
            }
        }
        self.start_server()?;
        self.wait_healthy().await
    }

    /// Kills a random agent (not the cut-off one while it is cut off) when it is time,
    /// and starts it again at once on the same work dir.
    async fn maybe_kill_agent(
        &mut self,
        next: &mut Instant,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        if Instant::now() < *next {
            return Ok(());
        }
        *next = Instant::now() + jitter(Duration::from_secs(2));
        let first = usize::from(self.proxy.is_cut());
        let n = self.agents.len() - first;
        let i = first + (rand_unit() * n as f64) as usize % n;
        let work_dir = self.work_dir(i);
        let (agent, via) = &mut self.agents[i];
        agent.kill();
        self.kills.push((i, Utc::now(), uptime_ns()));
        *agent = roles::start_agent_named(via, self.slots, &work_dir, &name(i))?;
        tally.agent_kills += 1;
        Ok(())
    }

    async fn terminal_count(&self) -> usize {
        let mut n = 0;
        for state in ["succeeded", "failed", "canceled", "timed_out"] {
            n += self.api.count(state).await.unwrap_or(0) as usize;
        }
        n
    }

    /// 5xx answers counted by the running server since it started.
    async fn errors_5xx(&self) -> u64 {
        let Ok(text) = retry(|| self.api.metrics_text()).await else {
            return 0;
        };
        text.lines()
            .filter(|l| l.starts_with("drover_http_requests_total{") && l.contains("status=\"5"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    async fn all_jobs(&self, ids: &[String]) -> anyhow::Result<Vec<Job>> {
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            jobs.push(retry(|| self.api.job(id)).await?);
        }
        Ok(jobs)
    }

    /// Agent ids by name.
    async fn agent_ids(&self) -> anyhow::Result<HashMap<String, String>> {
        let agents: Value = retry(|| self.api.get("/v1/agents")).await?;
        Ok(agents["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some((
                    a["name"].as_str()?.to_string(),
                    a["id"].as_str()?.to_string(),
                ))
            })
            .collect())
    }

    /// The events of every job that had more than one attempt.
    async fn events_of(&self, jobs: &[Job]) -> anyhow::Result<HashMap<String, JobEvents>> {
        let mut out = HashMap::new();
        for job in jobs.iter().filter(|j| j.current_attempt > 1) {
            let path = format!("/v1/jobs/{}/events", job.id);
            out.insert(job.id.clone(), retry(|| self.api.get(&path)).await?);
        }
        Ok(out)
    }

    /// For each agent kill: from the kill until the server requeued the last attempt
    /// that agent held (they are lost when the restarted agent's first poll lists none).
    /// Kills followed within 5 s by a server or database outage or the partition are
    /// left out: the restarted agent then waits for the server, not for itself.
    async fn requeue_delays(
        &self,
        jobs: &[Job],
        events: &HashMap<String, JobEvents>,
    ) -> anyhow::Result<Vec<f64>> {
        let id_of = self.agent_ids().await?;
        // Requeues of attempts the restarted agent no longer ran, by agent id.
        let mut lost: HashMap<String, Vec<DateTime<Utc>>> = HashMap::new();
        for job in jobs {
            let Some(events) = events.get(&job.id) else {
                continue;
            };
            for e in events.events.iter().filter(|e| e.kind == "lost") {
                let Some(att) = job.attempts.iter().find(|a| Some(a.number) == e.attempt) else {
                    continue;
                };
                lost.entry(att.agent_id.clone()).or_default().push(e.at);
            }
        }
        let mut delays = Vec::new();
        for (k, (i, at, _)) in self.kills.iter().enumerate() {
            if self
                .outages
                .iter()
                .any(|o| *o >= *at && (*o - *at).num_seconds() < 5)
            {
                continue;
            }
            let Some(agent_id) = id_of.get(&name(*i)) else {
                continue;
            };
            let next_kill = self.kills[k + 1..]
                .iter()
                .find(|(j, _, _)| j == i)
                .map(|(_, t, _)| *t);
            let worst = lost
                .get(agent_id)
                .into_iter()
                .flatten()
                .filter(|t| *t >= at && next_kill.is_none_or(|n| **t < n))
                .map(|t| (*t - *at).num_milliseconds() as f64 / 1000.0)
                .fold(None, |m: Option<f64>, d| Some(m.map_or(d, |m| m.max(d))));
            if let Some(d) = worst {
                if d > 2.0 {
                    eprintln!(
                        "    agent {} killed at {}: its jobs were requeued {d:.2} s later",
                        name(*i),
                        at.format("%H:%M:%S%.3f")
                    );
                }
                delays.push(d);
            }
        }
        Ok(delays)
    }

    async fn stop_all(&mut self) {
        for (agent, _) in self.agents.drain(..) {
            tokio::task::block_in_place(|| agent.stop());
        }
        if let Some(s) = self.server.take() {
            tokio::task::block_in_place(|| s.stop());
        }
        // Watchdogs leave once their agent did.
        let give_up = Instant::now() + Duration::from_secs(10);
        while processes_mentioning(&self.root) > 0 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn rows(backend: &str, t: &Tally) -> Vec<Row> {
    let scenario = format!("chaos-{backend}");
    let zero = |metric: &str, unit: &str, v: f64| {
        Row::new(&scenario, metric, unit, &[v], None, Target::AtMost(0.0))
    };
    let info = |metric: &str, unit: &str, v: f64| {
        Row::new(&scenario, metric, unit, &[v], None, Target::None)
    };
    let worst_requeue = t.requeue_s.iter().cloned().fold(0.0, f64::max);
    let mut rows = vec![
        info("jobs", "jobs", t.jobs as f64),
        info(
            "agent SIGKILLs (restarted on the same work dir)",
            "kills",
            t.agent_kills as f64,
        ),
        info(
            "server restarts (SIGKILL and SIGTERM)",
            "restarts",
            t.server_restarts as f64,
        ),
        info(
            "PostgreSQL immediate restarts",
            "restarts",
            t.pg_restarts as f64,
        ),
        zero("jobs lost", "jobs", t.lost as f64),
        zero(
            "jobs finished twice (server)",
            "jobs",
            t.finished_twice as f64,
        ),
        // At least once, never at the same time: work a cut-off agent finished but could
        // not report before its lease expired is run again.
        info(
            "jobs run again: their agent finished them but could not report before the lease expired",
            "jobs",
            t.rerun_after_cutoff as f64,
        ),
        info(
            "jobs run again because their agent died within a second of their end",
            "jobs",
            t.rerun_after_death_at_end as f64,
        ),
        info(
            "longest a job ran on after its agent was killed",
            "s",
            t.ran_on_s,
        ),
        zero(
            "jobs whose work ran to its end twice for any other reason",
            "jobs",
            t.rerun_otherwise as f64,
        ),
        zero(
            "jobs whose attempts ran at the same time",
            "jobs",
            t.overlapping as f64,
        ),
        zero("longest overlap of two attempts", "s", t.overlap_s),
        zero("stored log lines missing", "lines", t.stored_missing as f64),
        zero(
            "stored log lines duplicated",
            "lines",
            t.stored_duplicated as f64,
        ),
        zero(
            "followed log lines missing",
            "lines",
            t.followed_missing as f64,
        ),
        zero(
            "followed log lines duplicated",
            "lines",
            t.followed_duplicated as f64,
        ),
        zero(
            "processes left after the run",
            "processes",
            t.processes_left as f64,
        ),
        zero(
            "5xx answers outside database restarts",
            "answers",
            t.errors_5xx as f64,
        ),
        Row::new(
            &scenario,
            "requeue after an agent restart (worst)",
            "s",
            &[worst_requeue],
            None,
            Target::AtMost(2.0),
        ),
    ];
    if t.docker {
        rows.insert(
            17,
            zero(
                "containers left after the run",
                "containers",
                t.containers_left as f64,
            ),
        );
    }
    rows
}

/// A TCP proxy in front of the server for one agent; `cut` drops every connection and
/// refuses new ones, as a network partition would.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target_port: u16) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (c, k) = (cut.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue;
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(("127.0.0.1", target_port)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                let mut list = k.lock().expect("proxy lock");
                list.retain(|h| !h.is_finished());
                list.push(relay.abort_handle());
            }
        });
        Ok(Proxy {
            port,
            cut,
            conns,
            task,
        })
    }

    fn cut(&self, on: bool) {
        self.cut.store(on, Ordering::SeqCst);
        if on {
            for h in self.conns.lock().expect("proxy lock").drain(..) {
                h.abort();
            }
        }
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! The chaos scenario: jobs that record every execution in a ledger run while agents are
//! SIGKILLed and restarted on their work dirs, the server is killed and restarted (SIGKILL
//! and SIGTERM), PostgreSQL restarts the way a crash would, and one agent is cut off from
//! the server for longer than the lease TTL. Then it counts what must be zero: jobs lost
//! or completed twice, attempts of one job that ran at the same time, log lines missing
//! or duplicated (stored and followed live), processes left behind, 5xx answers outside
//! database outages; and how long the jobs of a restarted agent waited to be retried.

mod ledger;
mod logs;
mod system;

use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::Utc;
use drover_server::testing_pg::OwnCluster;
use serde_json::Value;

use crate::api::Api;
use crate::report::{Row, Target};
use crate::roles::{self, ADMIN};
use crate::Size;
use ledger::{check_ledger, classify_reruns, job_spec};
use logs::{count_logs, follow_some};
use system::{containers_left, free_port, jitter, processes_mentioning, Chaos, Proxy, Slot};

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
    /// Servers on one database (1 but for the cluster run).
    servers: usize,
    /// With several servers: one of them is killed this often, and restarted after
    /// `server_down` (the first kill, and every other one, hits the leader).
    server_kill_every: Option<Duration>,
    server_down: Duration,
}

fn plan(size: Size, backend: &str) -> Plan {
    let plan = one_server_plan(size);
    if backend != "cluster" {
        return plan;
    }
    // Three servers on PostgreSQL, one killed every 20 s (every 4 s at the small size,
    // so a short run sees several), besides everything the one-server runs do.
    match size {
        Size::Tiny => Plan {
            jobs: 300,
            server_kills: Vec::new(),
            servers: 3,
            server_kill_every: Some(Duration::from_secs(4)),
            server_down: Duration::from_millis(1500),
            ..plan
        },
        Size::Full => Plan {
            jobs: 4000,
            server_kills: Vec::new(),
            servers: 3,
            server_kill_every: Some(Duration::from_secs(20)),
            server_down: Duration::from_secs(3),
            ..plan
        },
    }
}

fn one_server_plan(size: Size) -> Plan {
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
            servers: 1,
            server_kill_every: None,
            server_down: Duration::ZERO,
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
            servers: 1,
            server_kill_every: None,
            server_down: Duration::ZERO,
        },
    }
}

/// Runs the scenario on SQLite, on PostgreSQL, and on three servers sharing PostgreSQL.
pub async fn run(size: Size) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for backend in ["sqlite", "postgres", "cluster"] {
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
    /// Servers of a cluster killed while the others went on (and of those, leaders).
    cluster_kills: usize,
    leader_kills: usize,
}

async fn one(size: Size, backend: &str) -> anyhow::Result<Vec<Row>> {
    let plan = plan(size, backend);
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_path_buf();
    let ledger = root.join("ledger");
    std::fs::create_dir_all(&ledger)?;
    let pg = match backend {
        "sqlite" => None,
        _ => Some(
            tokio::task::spawn_blocking(drover_server::testing_pg::OwnCluster::start)
                .await?
                .map_err(anyhow::Error::msg)?,
        ),
    };
    let mut servers = Vec::new();
    let mut proxies = Vec::new();
    for _ in 0..plan.servers {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let api = Api::new(&format!("http://{listen}"), ADMIN);
        servers.push(Slot {
            listen,
            proc: None,
            api,
            errors_from: None,
        });
        proxies.push(Proxy::start(port).await?);
    }
    let all: Vec<String> = servers
        .iter()
        .map(|s| format!("http://{}", s.listen))
        .collect();
    let mut sys = Chaos {
        root: root.clone(),
        db: pg.as_ref().map(|c| c.url()),
        ttl: plan.ttl,
        slots: plan.slots,
        servers,
        agents: Vec::new(),
        api: Api::new(&all.join(","), ADMIN),
        proxies,
        kills: Vec::new(),
        outages: Vec::new(),
        errors_closed: 0,
    };
    for k in 0..plan.servers {
        sys.start_server(k)?;
        sys.wait_healthy(k).await?;
    }
    for i in 0..plan.agents {
        // The first agent talks to the servers through the proxies that cut it off.
        let via = sys.urls_from(i, i == 0);
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
    let followers = follow_some(&sys.api, &ids, plan.followers);

    let mut tally = Tally {
        jobs: ids.len(),
        ..Tally::default()
    };
    shake(&mut sys, &plan, pg.as_ref(), ids.len(), &mut tally).await?;

    // Everything ended: count what the system did.
    let jobs = sys.all_jobs(&ids).await?;
    tally.lost = jobs
        .iter()
        .filter(|j| j.state.as_str() != "succeeded")
        .count();
    let twice = check_ledger(&ledger, &mut tally)?;
    count_logs(&sys.api, &jobs, followers, &mut tally).await?;
    let events = sys.events_of(&jobs).await?;
    tally.finished_twice = events
        .values()
        .filter(|e| e.events.iter().filter(|e| e.kind == "finished").count() > 1)
        .count();
    tally.requeue_s = sys.requeue_delays(&jobs, &events).await?;
    classify_reruns(&sys, &jobs, &events, twice, &mut tally).await?;
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

/// Breaks things until every job ended: agents killed and restarted, the server and
/// PostgreSQL restarted, one agent cut off; counts 5xx answers outside database restarts.
async fn shake(
    sys: &mut Chaos,
    plan: &Plan,
    pg: Option<&OwnCluster>,
    jobs: usize,
    tally: &mut Tally,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut server_kills = plan.server_kills.clone().into_iter().peekable();
    let mut pg_restarts = plan.pg_restarts.clone().into_iter().peekable();
    let mut partition = Some(plan.partition);
    let mut next_agent_kill = Instant::now() + jitter(Duration::from_secs(2));
    let mut next_server_kill = plan.server_kill_every.map(|every| started + every);
    // A cluster server that is down, and when it comes back.
    let mut down: Option<(usize, Instant)> = None;
    loop {
        let done = sys.terminal_count().await;
        let progress = done as f64 / jobs as f64;
        if done >= jobs {
            break;
        }
        if started.elapsed() > LIMIT {
            bail!("only {done} of {} jobs ended within {LIMIT:?}", jobs);
        }
        if let Some((_, cut)) = partition.filter(|(at, _)| progress >= *at) {
            partition = None;
            eprintln!("    partition agent 0 for {cut:?}");
            sys.outages.push(Utc::now());
            sys.proxies.iter().for_each(|p| p.cut(true));
            let until = Instant::now() + cut;
            // Agents keep being killed meanwhile; the cut one is left alone.
            while Instant::now() < until {
                sys.maybe_kill_agent(&mut next_agent_kill, tally).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sys.proxies.iter().for_each(|p| p.cut(false));
        }
        if let Some(&(at, hard)) = server_kills.peek() {
            if progress >= at {
                server_kills.next();
                eprintln!(
                    "    server {} at {:.0}%",
                    if hard { "SIGKILL" } else { "SIGTERM" },
                    progress * 100.0
                );
                sys.outages.push(Utc::now());
                sys.restart_server(0, hard).await?;
                tally.server_restarts += 1;
            }
        }
        if let Some((k, _)) = down.filter(|(_, back)| Instant::now() >= *back) {
            down = None;
            sys.start_server(k)?;
            sys.wait_healthy(k).await?;
            tally.server_restarts += 1;
        }
        if let (Some(due), None) = (next_server_kill, down) {
            if Instant::now() >= due {
                next_server_kill = plan.server_kill_every.map(|every| due + every);
                // Every other kill hits the leader, so the singleton duties move; the
                // others go round the servers. Two in three are SIGKILLs.
                let mut k = tally.cluster_kills % sys.servers.len();
                if tally.cluster_kills.is_multiple_of(2) {
                    for j in 0..sys.servers.len() {
                        if sys.leads(j).await {
                            k = j;
                            tally.leader_kills += 1;
                            break;
                        }
                    }
                }
                let hard = tally.cluster_kills % 3 != 2;
                eprintln!(
                    "    server {k} of {} {} at {:.0}%",
                    sys.servers.len(),
                    if hard { "SIGKILL" } else { "SIGTERM" },
                    progress * 100.0
                );
                sys.stop_server(k, hard).await;
                down = Some((k, Instant::now() + plan.server_down));
                tally.cluster_kills += 1;
            }
        }
        if let (Some(&at), Some(cluster)) = (pg_restarts.peek(), pg) {
            if progress >= at {
                pg_restarts.next();
                // 5xx while the database is down are expected; count up to the restart,
                // and again from a moment after it is back.
                sys.close_windows().await;
                eprintln!(
                    "    PostgreSQL immediate restart at {:.0}%",
                    progress * 100.0
                );
                sys.outages.push(Utc::now());
                tokio::task::block_in_place(|| cluster.restart_immediately())
                    .map_err(anyhow::Error::msg)?;
                tokio::time::sleep(Duration::from_secs(2)).await;
                sys.open_windows().await;
                tally.pg_restarts += 1;
            }
        }
        sys.maybe_kill_agent(&mut next_agent_kill, tally).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some((k, _)) = down {
        sys.start_server(k)?;
        sys.wait_healthy(k).await?;
    }
    tally.errors_5xx = sys.errors_outside_outages().await;

    Ok(())
}

fn name(i: usize) -> String {
    format!("chaos-{i}")
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
    if backend == "cluster" {
        rows.splice(
            4..4,
            [
                info(
                    "servers of three killed while the others went on",
                    "kills",
                    t.cluster_kills as f64,
                ),
                info(
                    "of them, the server holding the singleton duties",
                    "kills",
                    t.leader_kills as f64,
                ),
            ],
        );
    }
    if t.docker {
        let after_processes = 1 + rows
            .iter()
            .position(|r| r.metric.starts_with("processes left"))
            .expect("a processes-left row");
        rows.insert(
            after_processes,
            zero(
                "containers left after the run",
                "containers",
                t.containers_left as f64,
            ),
        );
    }
    rows
}

//! The processes of a chaos run (server, agents, the proxy that cuts one agent off) and
//! the small tools that drive them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use drover_core::api::{Job, JobEvents};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

use super::{name, Tally};
use crate::api::Api;
use crate::roles::{self, Proc};

/// Containers of this run's agents still there (running or not).
pub(super) fn containers_left(agents: usize) -> usize {
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

/// Calls `f` until it succeeds (the server may be restarting), for up to a minute.
pub(super) async fn retry<T, F, Fut>(mut f: F) -> anyhow::Result<T>
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

pub(super) fn jitter(around: Duration) -> Duration {
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
pub(super) fn uptime_ns() -> u128 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |secs| (secs * 1e9) as u128)
}

pub(super) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Processes whose command line names the run's temp dir: jobs, agents, watchdogs.
pub(super) fn processes_mentioning(root: &Path) -> usize {
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

/// One server of the run: where it listens and, while it is up, its process.
pub(super) struct Slot {
    pub(super) listen: String,
    pub(super) proc: Option<Proc>,
    /// This server alone (for its own metrics).
    pub(super) api: Api,
    /// Its 5xx counter when the current counting window opened; `None` while closed
    /// (the server is down, or the database restarting).
    pub(super) errors_from: Option<u64>,
}

/// The processes of one run and the wall-clock times agents were killed.
pub(super) struct Chaos {
    pub(super) root: PathBuf,
    pub(super) db: Option<String>,
    pub(super) ttl: Duration,
    pub(super) slots: u32,
    /// One server, or several on one PostgreSQL database.
    pub(super) servers: Vec<Slot>,
    pub(super) agents: Vec<(Proc, String)>,
    /// Every server, failing over between them.
    pub(super) api: Api,
    /// One proxy per server in front of agent 0, to cut it off.
    pub(super) proxies: Vec<Proxy>,
    /// (agent index, when it was killed, on the wall clock and on the ledger's clock).
    pub(super) kills: Vec<(usize, DateTime<Utc>, u128)>,
    /// When the server or the database went down, or the partition began.
    pub(super) outages: Vec<DateTime<Utc>>,
    /// 5xx answers counted in closed windows.
    pub(super) errors_closed: u64,
}

impl Chaos {
    pub(super) fn work_dir(&self, i: usize) -> PathBuf {
        self.root.join(format!("agent-{i}"))
    }

    /// Every server's URL, comma-separated, starting with server `first` (so agents
    /// spread their polls over the servers).
    pub(super) fn urls_from(&self, first: usize, proxied: bool) -> String {
        let n = self.servers.len();
        (0..n)
            .map(|k| (first + k) % n)
            .map(|k| match proxied {
                true => format!("http://127.0.0.1:{}", self.proxies[k].port),
                false => format!("http://{}", self.servers[k].listen),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts server `k` on its address; servers sharing a database share the data
    /// directory too (its secrets key and files).
    pub(super) fn start_server(&mut self, k: usize) -> anyhow::Result<()> {
        let (proc, _) = roles::start_server_at(
            &self.root.join("server"),
            self.db.as_deref(),
            &self.servers[k].listen,
            self.ttl,
        )?;
        let slot = &mut self.servers[k];
        slot.proc = Some(proc);
        slot.errors_from = Some(0);
        Ok(())
    }

    pub(super) async fn wait_healthy(&self, k: usize) -> anyhow::Result<()> {
        retry(|| self.servers[k].api.get::<Value>("/v1/agents")).await?;
        Ok(())
    }

    /// Stops server `k` (SIGKILL or SIGTERM) and leaves it down.
    pub(super) async fn stop_server(&mut self, k: usize, hard: bool) {
        self.close_window(k).await;
        if let Some(mut s) = self.servers[k].proc.take() {
            tokio::task::block_in_place(|| match hard {
                true => s.kill(),
                false => s.terminate(),
            });
        }
    }

    pub(super) async fn restart_server(&mut self, k: usize, hard: bool) -> anyhow::Result<()> {
        self.stop_server(k, hard).await;
        self.start_server(k)?;
        self.wait_healthy(k).await
    }

    /// Whether server `k` holds the singleton duties now.
    pub(super) async fn leads(&self, k: usize) -> bool {
        self.servers[k]
            .api
            .metrics_text()
            .await
            .is_ok_and(|t| t.lines().any(|l| l == "drover_leader 1"))
    }

    /// Adds server `k`'s 5xx since its window opened to the closed count.
    pub(super) async fn close_window(&mut self, k: usize) {
        if let Some(from) = self.servers[k].errors_from.take() {
            self.errors_closed += errors_5xx(&self.servers[k].api).await.saturating_sub(from);
        }
    }

    /// Closes every server's window (the database is about to go down).
    pub(super) async fn close_windows(&mut self) {
        for k in 0..self.servers.len() {
            self.close_window(k).await;
        }
    }

    /// Opens a window on every server that is up.
    pub(super) async fn open_windows(&mut self) {
        for slot in self.servers.iter_mut().filter(|s| s.proc.is_some()) {
            slot.errors_from = Some(errors_5xx(&slot.api).await);
        }
    }

    /// 5xx answers outside database restarts, over the whole run so far.
    pub(super) async fn errors_outside_outages(&mut self) -> u64 {
        self.close_windows().await;
        self.open_windows().await;
        self.errors_closed
    }

    /// Kills a random agent (not the cut-off one while it is cut off) when it is time,
    /// and starts it again at once on the same work dir.
    pub(super) async fn maybe_kill_agent(
        &mut self,
        next: &mut Instant,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        if Instant::now() < *next {
            return Ok(());
        }
        *next = Instant::now() + jitter(Duration::from_secs(2));
        let first = usize::from(self.proxies[0].is_cut());
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

    pub(super) async fn terminal_count(&self) -> usize {
        let mut n = 0;
        for state in ["succeeded", "failed", "canceled", "timed_out"] {
            n += self.api.count(state).await.unwrap_or(0) as usize;
        }
        n
    }

    pub(super) async fn all_jobs(&self, ids: &[String]) -> anyhow::Result<Vec<Job>> {
        let mut jobs = Vec::with_capacity(ids.len());
        for id in ids {
            jobs.push(retry(|| self.api.job(id)).await?);
        }
        Ok(jobs)
    }

    /// Agent ids by name.
    pub(super) async fn agent_ids(&self) -> anyhow::Result<HashMap<String, String>> {
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
    pub(super) async fn events_of(
        &self,
        jobs: &[Job],
    ) -> anyhow::Result<HashMap<String, JobEvents>> {
        let mut out = HashMap::new();
        for job in jobs.iter().filter(|j| j.current_attempt > 1) {
            let path = format!("/v1/jobs/{}/events", job.id);
            out.insert(job.id.clone(), retry(|| self.api.get(&path)).await?);
        }
        Ok(out)
    }

    /// For each agent kill: from the kill until the server requeued the last attempt
    /// that agent held when it was killed (they are lost when the restarted agent's first
    /// poll lists none).
    /// Kills followed within 5 s by a server or database outage or the partition are
    /// left out: the restarted agent then waits for the server, not for itself.
    pub(super) async fn requeue_delays(
        &self,
        jobs: &[Job],
        events: &HashMap<String, JobEvents>,
    ) -> anyhow::Result<Vec<f64>> {
        let id_of = self.agent_ids().await?;
        // Requeues of attempts the restarted agent no longer ran, by agent id: when each
        // attempt was leased, and when it was lost.
        type Leased = DateTime<Utc>;
        let mut lost: HashMap<String, Vec<(Leased, DateTime<Utc>)>> = HashMap::new();
        for job in jobs {
            let Some(events) = events.get(&job.id) else {
                continue;
            };
            for e in events.events.iter().filter(|e| e.kind == "lost") {
                let Some(att) = job.attempts.iter().find(|a| Some(a.number) == e.attempt) else {
                    continue;
                };
                lost.entry(att.agent_id.clone())
                    .or_default()
                    .push((att.leased_at, e.at));
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
                // Only attempts it held when it was killed: one leased to the restarted
                // agent and lost later (a partition, a server outage) is not the restart's.
                .filter(|(leased, t)| leased < at && t >= at && next_kill.is_none_or(|n| *t < n))
                .map(|(_, t)| (*t - *at).num_milliseconds() as f64 / 1000.0)
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

    pub(super) async fn stop_all(&mut self) {
        for (agent, _) in self.agents.drain(..) {
            tokio::task::block_in_place(|| agent.stop());
        }
        for s in self.servers.iter_mut().filter_map(|s| s.proc.take()) {
            tokio::task::block_in_place(|| s.stop());
        }
        // Watchdogs leave once their agent did.
        let give_up = Instant::now() + Duration::from_secs(10);
        while processes_mentioning(&self.root) > 0 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// 5xx answers counted by one server since it started.
async fn errors_5xx(api: &Api) -> u64 {
    let Ok(text) = retry(|| api.metrics_text()).await else {
        return 0;
    };
    text.lines()
        .filter(|l| l.starts_with("drover_http_requests_total{") && l.contains("status=\"5"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A TCP proxy in front of the server for one agent; `cut` drops every connection and
/// refuses new ones, as a network partition would.
pub(super) struct Proxy {
    pub(super) port: u16,
    pub(super) cut: Arc<AtomicBool>,
    pub(super) conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub(super) async fn start(target_port: u16) -> anyhow::Result<Proxy> {
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

    pub(super) fn cut(&self, on: bool) {
        self.cut.store(on, Ordering::SeqCst);
        if on {
            for h in self.conns.lock().expect("proxy lock").drain(..) {
                h.abort();
            }
        }
    }

    pub(super) fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

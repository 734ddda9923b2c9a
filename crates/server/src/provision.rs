//! Agents on demand. Once a second (and when work arrives) the provisioner:
//!
//! 1. checks each agent a provider started: one that exited before it registered, or did
//!    not register within the provider's `start_timeout`, is a failed start (its last
//!    output is the reason, and the provider backs off); one without work for
//!    `idle_timeout` is told to stop (it drains and exits) while more than `min_idle`
//!    are idle;
//! 2. counts, per provider, the due queued jobs its agents could take that no other
//!    online agent could, against the free slots of its agents (starting ones count
//!    whole), and starts what is missing: within `max_agents` (starting and stopping
//!    ones count), `max_starts_per_minute` and the backoff. Each start gets its own
//!    single-use bootstrap token with exactly the provider's labels, expiring with the
//!    start timeout;
//! 3. publishes each provider's state for `GET /v1/providers` and wait reasons.
//!
//! Agents outlive the server (they reconnect like any agent); a restarted server finds
//! the ones it started again from the `provisioned` table (a pid it checks is still that
//! agent, or a labelled container) and manages them on, or marks them ended.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use drover_core::api::{Agent, Job, ProvidedAgent, Provider};
use drover_core::labels::{satisfies, Labels};
use nix::sys::signal::Signal;

use crate::api::auth::{hash_token, new_token};
use crate::state::AppState;
use crate::store::{LiveStart, StoreError};
use crate::{ProviderConfig, ProviderKind};

/// Queued jobs looked at per round.
const DEMAND_SAMPLE: u32 = 2000;
/// How often the provisioner looks, at the latest.
const TICK: Duration = Duration::from_secs(1);
/// Longest backoff after failed starts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often starts that ended a day ago are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Lines of an agent's output kept as the reason of a failed start.
const OUTPUT_LINES: usize = 15;

/// Each provider's state as the provisioner last saw it; shared with the API.
#[derive(Clone, Default)]
pub struct Board {
    providers: Arc<Mutex<Vec<Provider>>>,
}

impl Board {
    /// The providers of `config`, before the first round.
    pub fn new(config: &[ProviderConfig]) -> Board {
        let list = config
            .iter()
            .map(|c| snapshot(c, Vec::new(), Default::default(), None))
            .collect();
        Board {
            providers: Arc::new(Mutex::new(list)),
        }
    }

    pub fn providers(&self) -> Vec<Provider> {
        self.providers.lock().expect("board lock").clone()
    }

    fn set(&self, list: Vec<Provider>) {
        *self.providers.lock().expect("board lock") = list;
    }
}

fn snapshot(
    c: &ProviderConfig,
    agents: Vec<ProvidedAgent>,
    counts: crate::store::StartCounts,
    backoff_until: Option<DateTime<Utc>>,
) -> Provider {
    Provider {
        name: c.name.clone(),
        kind: c.kind.as_str().into(),
        labels: c.labels.clone(),
        queues: queues(c),
        slots: c.slots,
        max_agents: c.max_agents,
        min_idle: c.min_idle,
        ephemeral: c.ephemeral,
        agents,
        starts: counts.starts,
        failures: counts.failures,
        last_failure: counts.last_failure,
        backoff_until,
    }
}

fn queues(c: &ProviderConfig) -> Vec<String> {
    if c.queues.is_empty() {
        vec!["default".into()]
    } else {
        c.queues.clone()
    }
}

/// The labels a provider's agents have: its own and the host facts every agent adds.
pub fn offered(labels: &Labels) -> Labels {
    let mut l = labels.clone();
    l.entry("os".into())
        .or_insert_with(|| std::env::consts::OS.into());
    l.entry("arch".into())
        .or_insert_with(|| std::env::consts::ARCH.into());
    l
}

/// Whether a provider's agents could run `job`.
pub fn offers(p: &Provider, job: &Job) -> bool {
    p.queues.contains(&job.queue) && satisfies(&offered(&p.labels), &job.required_labels())
}

/// What the provisioner holds of an agent it started.
enum Handle {
    Child(tokio::process::Child),
    /// A process a previous run of the server started.
    Pid(i32),
    /// A process another server started on another machine (it led before this one):
    /// alive while its agent is, not signalled from here.
    Foreign,
    Container(String),
}

struct Provisioner {
    state: AppState,
    handles: HashMap<String, Handle>,
    /// Since when each running agent has had no work.
    idle_since: HashMap<String, DateTime<Utc>>,
    /// When ended starts were last pruned (a write; once an hour is enough).
    pruned: Option<std::time::Instant>,
}

/// Runs the provisioner until shutdown (at once returns without providers).
pub async fn run(state: AppState) {
    if state.config.providers.is_empty() {
        return;
    }
    let mut p = Provisioner {
        state: state.clone(),
        handles: HashMap::new(),
        idle_since: HashMap::new(),
        pruned: None,
    };
    let mut adopted = false;
    loop {
        // With several servers, the leader provisions; it finds the agents it (or the
        // server before it) started when it begins.
        if state.leader.is_leader() {
            if !adopted {
                match p.adopt().await {
                    Ok(()) => adopted = true,
                    Err(e) => {
                        tracing::error!(error = %e, "provisioner cannot read the agents it started; it will try again")
                    }
                }
            }
            if let Err(e) = p.round().await {
                tracing::warn!(error = %e, "provisioning round failed; trying again");
            }
        } else {
            adopted = false;
            p.handles.clear();
        }
        let work = state.hub.work().notified();
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = work => {}
            _ = state.shutdown.cancelled() => return,
        }
    }
}

impl Provisioner {
    /// After a restart: the starts that have not ended are found again by their pid or
    /// container; the ones that are gone are ended.
    async fn adopt(&mut self) -> Result<(), StoreError> {
        for s in self.state.store.live_starts().await? {
            let handle = match (s.kind.as_str(), &s.handle) {
                ("process", Some(h)) => match h.split_once('@') {
                    Some((_, host)) if host != hostname() => Some(Handle::Foreign),
                    Some((pid, _)) => pid
                        .parse()
                        .ok()
                        .filter(|pid| pid_is_agent(*pid, &s.id))
                        .map(Handle::Pid),
                    None => None,
                },
                ("docker", Some(id)) => Some(Handle::Container(id.clone())),
                _ => None,
            };
            match handle {
                Some(h) => {
                    tracing::info!(agent = %s.id, provider = %s.provider, "found an agent started before the restart");
                    self.handles.insert(s.id.clone(), h);
                }
                None => {
                    let why = "the server restarted before the agent registered, and it is gone";
                    let state = if s.state == "starting" {
                        "failed"
                    } else {
                        "exited"
                    };
                    self.state
                        .store
                        .start_ended(
                            &s.id,
                            state,
                            (state == "failed").then_some(why),
                            chrono::Utc::now(),
                        )
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn round(&mut self) -> Result<(), StoreError> {
        let state = self.state.clone();
        let now = Utc::now();
        let agents = state.store.list_agents(now, state.config.lease_ttl).await?;
        let mut live = Vec::new();
        for s in state.store.live_starts().await? {
            if self.check(&s, &agents, now).await? {
                live.push(s);
            }
        }
        let waiting = state.store.waiting_demand(now, DEMAND_SAMPLE).await?;
        let mut board = Vec::new();
        for cfg in &state.config.providers {
            let (counts, recent) = state.store.start_counts(&cfg.name, now).await?;
            let backoff_until = backoff(&counts);
            let mine: Vec<&LiveStart> = live.iter().filter(|s| s.provider == cfg.name).collect();
            self.stop_idle(cfg, &mine, &agents, now).await?;
            let wanted = wanted(cfg, &mine, &agents, &waiting);
            let room = (cfg.max_agents as usize).saturating_sub(mine.len());
            let rate = cfg.max_starts_per_minute.saturating_sub(recent) as usize;
            let allowed = if backoff_until.is_some_and(|t| t > now) {
                0
            } else {
                room.min(rate)
            };
            let mut started = Vec::new();
            for _ in 0..wanted.min(allowed) {
                match self.start(cfg).await {
                    Ok(s) => started.push(s),
                    Err(e) => {
                        tracing::error!(provider = %cfg.name, error = %e, "cannot record an agent start")
                    }
                }
            }
            let (counts, _) = if started.is_empty() {
                (counts, recent)
            } else {
                state.store.start_counts(&cfg.name, now).await?
            };
            let agents_now = mine
                .iter()
                .map(|s| provided(s))
                .chain(started.iter().map(provided))
                .collect();
            state
                .metrics
                .provider_agents
                .with_label_values(&[&cfg.name])
                .set((mine.len() + started.len()) as i64);
            board.push(snapshot(cfg, agents_now, counts, backoff_until));
        }
        state.providers.set(board);
        if self.pruned.is_none_or(|t| t.elapsed() > PRUNE_EVERY) {
            state
                .store
                .prune_starts(now - chrono::Duration::days(1))
                .await?;
            self.pruned = Some(std::time::Instant::now());
        }
        Ok(())
    }

    /// Checks one start; false when it has ended (now or before).
    async fn check(
        &mut self,
        s: &LiveStart,
        agents: &[Agent],
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let store = self.state.store.clone();
        let config = self.state.config.clone();
        let Some(cfg) = config.providers.iter().find(|c| c.name == s.provider) else {
            // Its provider left the config: stop it.
            if s.state != "stopping" {
                self.stop(s).await;
                store.start_stopping(&s.id).await?;
            }
            return Ok(self.alive(&s.id).await);
        };
        if !self.alive(&s.id).await {
            if s.agent_id.is_some() {
                store.start_ended(&s.id, "exited", None, now).await?;
                self.forget(&s.id).await;
            } else {
                let output = self.last_output(s).await;
                let code = self.exit_code(&s.id);
                let reason = format!(
                    "the agent exited{code} before it registered; its last output: {output}"
                );
                self.fail_start(&s.id, &s.provider, &reason, now).await?;
            }
            return Ok(false);
        }
        let waited = (now - s.started_at).to_std().unwrap_or_default();
        if s.agent_id.is_none() && waited > cfg.start_timeout {
            let output = self.last_output(s).await;
            let reason = format!(
                "the agent did not register within {}s; its last output: {output}",
                cfg.start_timeout.as_secs()
            );
            self.kill(&s.id).await;
            self.fail_start(&s.id, &s.provider, &reason, now).await?;
            return Ok(false);
        }
        let agent = s
            .agent_id
            .as_ref()
            .and_then(|id| agents.iter().find(|a| a.id == *id));
        if matches!(self.handles.get(&s.id), Some(Handle::Foreign))
            && s.agent_id.is_some()
            && agent.is_none_or(|a| a.status == "offline")
        {
            store.start_ended(&s.id, "exited", None, now).await?;
            self.forget(&s.id).await;
            return Ok(false);
        }
        if let Some(agent) = agent {
            if agent.running > 0 {
                self.idle_since.remove(&s.id);
            } else {
                self.idle_since.entry(s.id.clone()).or_insert(now);
            }
        }
        Ok(true)
    }

    /// Tells agents idle past the timeout to stop, oldest idle first, while more than
    /// `min_idle` of the provider's agents are idle.
    async fn stop_idle(
        &mut self,
        cfg: &ProviderConfig,
        mine: &[&LiveStart],
        agents: &[Agent],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let idle: Vec<(&LiveStart, DateTime<Utc>)> = mine
            .iter()
            .filter(|s| s.state == "running")
            .filter(|s| {
                s.agent_id
                    .as_ref()
                    .is_some_and(|id| agents.iter().any(|a| a.id == *id && a.running == 0))
            })
            .filter_map(|s| self.idle_since.get(&s.id).map(|t| (*s, *t)))
            .collect();
        let mut idle_count = idle.len() + mine.iter().filter(|s| s.state == "starting").count();
        let mut sorted = idle;
        sorted.sort_by_key(|(_, t)| *t);
        for (s, since) in sorted {
            if idle_count <= cfg.min_idle as usize {
                break;
            }
            if (now - since).to_std().unwrap_or_default() < cfg.idle_timeout {
                continue;
            }
            tracing::info!(provider = %cfg.name, agent = %s.id, "stopping an idle agent");
            self.stop(s).await;
            self.state.store.start_stopping(&s.id).await?;
            self.idle_since.remove(&s.id);
            idle_count -= 1;
        }
        Ok(())
    }

    /// Starts one agent of `cfg`.
    async fn start(&mut self, cfg: &ProviderConfig) -> Result<LiveStart, StoreError> {
        let now = Utc::now();
        let suffix = uuid::Uuid::now_v7().simple().to_string();
        let id = format!("{}-{}", cfg.name, &suffix[suffix.len() - 8..]);
        let token = new_token("drb_");
        let expires = now
            + chrono::Duration::from_std(cfg.start_timeout).unwrap_or_default()
            + chrono::Duration::seconds(5);
        self.state
            .store
            .record_start(
                &id,
                &cfg.name,
                cfg.kind.as_str(),
                &hash_token(&token),
                &cfg.labels,
                expires,
                now,
            )
            .await?;
        self.state
            .metrics
            .provider_starts
            .with_label_values(&[&cfg.name])
            .inc();
        tracing::info!(provider = %cfg.name, agent = %id, "starting an agent for waiting work");
        let args = self.agent_args(cfg, &id, &token);
        let launched = match &cfg.kind {
            ProviderKind::Process { command } => self.spawn_process(cfg, &id, command, &args).await,
            ProviderKind::Docker { .. } => docker_run(cfg, &id, &args).await,
        };
        match launched {
            Ok((handle, text)) => {
                self.state.store.set_start_handle(&id, &text).await?;
                self.handles.insert(id.clone(), handle);
            }
            Err(why) => self.fail_start(&id, &cfg.name, &why, Utc::now()).await?,
        }
        Ok(LiveStart {
            id,
            provider: cfg.name.clone(),
            kind: cfg.kind.as_str().into(),
            handle: None,
            agent_id: None,
            state: "starting".into(),
            started_at: now,
        })
    }

    fn agent_args(&self, cfg: &ProviderConfig, id: &str, token: &str) -> Vec<String> {
        let server = cfg.server_url.clone().unwrap_or_else(|| self.server_url());
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--server".into(),
            server,
            "--token".into(),
            token.into(),
            "--name".into(),
            id.into(),
            "--slots".into(),
            cfg.slots.to_string(),
            "--queues".into(),
            queues(cfg).join(","),
        ];
        if cfg.ephemeral {
            args.push("--exit-after-job".into());
        }
        args
    }

    /// The URL the server listens at, as an agent on this machine reaches it.
    fn server_url(&self) -> String {
        let c = &self.state.config;
        let scheme = if c.tls.is_some() { "https" } else { "http" };
        let mut addr = self.state.local_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("{scheme}://{addr}")
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.state.config.data_dir.join("provisioned").join(id)
    }

    async fn spawn_process(
        &self,
        cfg: &ProviderConfig,
        id: &str,
        command: &[String],
        args: &[String],
    ) -> Result<(Handle, String), String> {
        let dir = self.dir(id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let log = std::fs::File::create(dir.join("agent.log"))
            .map_err(|e| format!("cannot create the agent's log: {e}"))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let program = match command.first() {
            Some(p) => PathBuf::from(p),
            None => {
                std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?
            }
        };
        let mut cmd = tokio::process::Command::new(&program);
        cmd.args(command.iter().skip(1))
            .args(args)
            .arg("--work-dir")
            .arg(dir.join("work"))
            // The agent's own settings come from its flags and the provider's env only.
            .env_clear()
            .envs(
                ["PATH", "HOME", "TMPDIR", "LANG"]
                    .iter()
                    .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
            )
            .envs(&cfg.env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // Its own process group: a Ctrl-C meant for the server does not reach it.
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
        // `PID@HOST`: after a restart, or on another server, a pid means something only
        // on its own machine.
        let pid = child.id().map(|p| p.to_string()).unwrap_or_default();
        Ok((Handle::Child(child), format!("{pid}@{}", hostname())))
    }

    async fn alive(&mut self, id: &str) -> bool {
        match self.handles.get_mut(id) {
            None => false,
            Some(Handle::Child(c)) => matches!(c.try_wait(), Ok(None)),
            Some(Handle::Pid(pid)) => pid_is_agent(*pid, id),
            Some(Handle::Foreign) => true,
            Some(Handle::Container(c)) => docker(&["inspect", "-f", "{{.State.Running}}", c])
                .await
                .is_ok_and(|out| out.trim() == "true"),
        }
    }

    fn exit_code(&mut self, id: &str) -> String {
        match self.handles.get_mut(id) {
            Some(Handle::Child(c)) => match c.try_wait() {
                Ok(Some(status)) => format!(" ({status})"),
                _ => String::new(),
            },
            _ => String::new(),
        }
    }

    async fn last_output(&self, s: &LiveStart) -> String {
        let text = match self.handles.get(&s.id) {
            Some(Handle::Container(c)) => docker(&["logs", "--tail", &OUTPUT_LINES.to_string(), c])
                .await
                .unwrap_or_else(|e| e),
            _ => std::fs::read_to_string(self.dir(&s.id).join("agent.log")).unwrap_or_default(),
        };
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(OUTPUT_LINES)..].join(" | ");
        if tail.is_empty() {
            "(none)".into()
        } else {
            tail
        }
    }

    /// Asks the agent to drain and exit (SIGTERM).
    async fn stop(&self, s: &LiveStart) {
        match self.handles.get(&s.id) {
            Some(Handle::Child(c)) => signal(c.id().map(|p| p as i32), Signal::SIGTERM),
            Some(Handle::Pid(pid)) => signal(Some(*pid), Signal::SIGTERM),
            Some(Handle::Foreign) => {
                tracing::warn!(agent = %s.id, "cannot stop an agent another server started on another machine")
            }
            Some(Handle::Container(c)) => {
                let _ = docker(&["kill", "--signal", "TERM", c]).await;
            }
            None => {}
        }
    }

    async fn kill(&mut self, id: &str) {
        match self.handles.get_mut(id) {
            Some(Handle::Child(c)) => {
                let _ = c.kill().await;
            }
            Some(Handle::Pid(pid)) => signal(Some(*pid), Signal::SIGKILL),
            Some(Handle::Foreign) => {}
            Some(Handle::Container(c)) => {
                let _ = docker(&["kill", c]).await;
            }
            None => {}
        }
    }

    /// Drops an ended start's handle (a container is removed, its logs read before).
    /// A start that failed: logged, counted, recorded with `reason`, forgotten.
    async fn fail_start(
        &mut self,
        id: &str,
        provider: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        tracing::warn!(provider = %provider, agent = %id, reason = %reason, "agent start failed");
        self.state
            .metrics
            .provider_failures
            .with_label_values(&[provider])
            .inc();
        self.state
            .store
            .start_ended(id, "failed", Some(reason), now)
            .await?;
        self.forget(id).await;
        Ok(())
    }

    async fn forget(&mut self, id: &str) {
        self.idle_since.remove(id);
        if let Some(Handle::Container(c)) = self.handles.remove(id) {
            let _ = docker(&["rm", "-f", &c]).await;
        }
    }
}

/// Agents `cfg` should start now for the waiting jobs, before its limits.
fn wanted(
    cfg: &ProviderConfig,
    mine: &[&LiveStart],
    agents: &[Agent],
    waiting: &[(String, Labels)],
) -> usize {
    let offered = offered(&cfg.labels);
    let queues = queues(cfg);
    let for_me = waiting
        .iter()
        .filter(|(queue, required)| {
            queues.contains(queue)
                && satisfies(&offered, required)
                && !agents.iter().any(|a| {
                    a.status == "online"
                        && a.provider.as_deref() != Some(cfg.name.as_str())
                        && a.queues.contains(queue)
                        && satisfies(&a.labels, required)
                })
        })
        .count();
    let mut free = 0usize;
    let mut idle = 0usize;
    for s in mine {
        match s.state.as_str() {
            "starting" => {
                free += cfg.slots as usize;
                idle += 1;
            }
            "running" => {
                if let Some(a) = s
                    .agent_id
                    .as_ref()
                    .and_then(|id| agents.iter().find(|a| a.id == *id))
                {
                    if a.status == "online" {
                        free += a.slots.saturating_sub(a.running) as usize;
                        idle += usize::from(a.running == 0);
                    }
                }
            }
            _ => {}
        }
    }
    let slots = cfg.slots.max(1) as usize;
    let for_jobs = for_me.saturating_sub(free).div_ceil(slots);
    let for_idle = (cfg.min_idle as usize).saturating_sub(idle);
    for_jobs.max(for_idle)
}

/// Until when a provider waits after failed starts in a row: 1 s, 2 s, 4 s … 60 s.
fn backoff(c: &crate::store::StartCounts) -> Option<DateTime<Utc>> {
    let at = c.last_failure_at?;
    if c.failures_in_a_row == 0 {
        return None;
    }
    let secs = 1u64 << (c.failures_in_a_row - 1).min(6);
    let wait = Duration::from_secs(secs).min(MAX_BACKOFF);
    Some(at + chrono::Duration::from_std(wait).unwrap_or_default())
}

fn provided(s: &LiveStart) -> ProvidedAgent {
    ProvidedAgent {
        id: s.id.clone(),
        state: s.state.clone(),
        agent_id: s.agent_id.clone(),
        started_at: s.started_at,
    }
}

/// Whether `pid` is alive and is the agent `id` (a reused pid is not).
fn pid_is_agent(pid: i32, id: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let text = String::from_utf8_lossy(&c);
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // A zombie (state Z) has exited.
            let zombie = state
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'));
            text.split('\0').any(|a| a == id) && !zombie
        })
        .unwrap_or(false)
}

/// This machine's name, which process handles carry.
fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn signal(pid: Option<i32>, sig: Signal) {
    if let Some(pid) = pid {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

async fn docker(args: &[&str]) -> Result<String, String> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot run docker: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(text.trim().to_string())
    }
}

/// Starts an agent container; its id.
async fn docker_run(
    cfg: &ProviderConfig,
    id: &str,
    args: &[String],
) -> Result<(Handle, String), String> {
    let ProviderKind::Docker {
        image,
        network,
        mounts,
        gpus,
        pull,
    } = &cfg.kind
    else {
        return Err("not a docker provider".into());
    };
    let name = format!("drover-agent-{id}");
    let label = format!("drover.provisioned={id}");
    let mut argv: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--name".into(),
        name,
        "--label".into(),
        label,
    ];
    if let Some(n) = network {
        argv.extend(["--network".into(), n.clone()]);
    }
    if let Some(p) = pull {
        argv.push(format!("--pull={p}"));
    }
    for m in mounts {
        argv.extend(["-v".into(), m.clone()]);
    }
    if *gpus {
        argv.extend(["--gpus".into(), "all".into()]);
    }
    for (k, v) in &cfg.env {
        argv.extend(["-e".into(), format!("{k}={v}")]);
    }
    argv.push(image.clone());
    argv.extend(args.iter().cloned());
    argv.extend(["--work-dir".into(), "/var/lib/drover-agent".into()]);
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = docker(&refs)
        .await
        .map_err(|e| format!("docker run of image {image} failed: {e}"))?;
    let cid = out.trim().to_string();
    Ok((Handle::Container(cid.clone()), cid))
}

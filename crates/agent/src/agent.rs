//! The agent session: register, keep one long-poll open, start attempts for leases, act
//! on controls, and run the shutdown protocol (drain, finish, force).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use drover_core::api::{
    Control, PollRequest, PollResponse, RegisterRequest, RegisterResponse, RunningAttempt,
};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::attempt::{self, AttemptCtx, AttemptEnd};
use crate::client::{CallError, Client, RetryBackoff};
use crate::docker::DockerCtx;
use crate::docker::{Engine, Orphan};
use crate::fence::{self, Watchdog};
use crate::files::InputLimits;
use crate::finisher::Finisher;
use crate::host::{self, StatsSampler};
use crate::identity;
use crate::layout;
use crate::process::{StopReason, Stopper};
use crate::recycle::WorkspacePool;
use crate::resume;
use crate::spool::SpoolLimits;
use crate::{AgentConfig, AgentError, AgentExit, AgentSignals};

/// Longest a poll is held open.
const MAX_WAIT_MS: u64 = 25_000;
/// An empty poll answer that came back sooner than this delays the next poll to it.
const MIN_EMPTY_POLL: Duration = Duration::from_millis(100);
/// Longest the agent waits for the list of its orphaned containers before its first poll.
const ORPHAN_LIST_LIMIT: Duration = Duration::from_secs(10);
/// Longest the agent spends removing orphaned containers (beside its session).
const ORPHAN_CLEANUP_LIMIT: Duration = Duration::from_secs(30);
/// After force-stop, server calls are retried this long before the agent gives up.
const FORCE_REPORT_LIMIT: Duration = Duration::from_secs(10);

/// An attempt the agent holds.
struct Held {
    stopper: Stopper,
}

/// What the one outstanding server call (register or poll) came back with.
enum CallResult {
    Registered(Result<RegisterResponse, CallError>),
    /// The answer and when the poll was sent.
    Polled(Result<PollResponse, CallError>, Renewal),
}

type Call = Pin<Box<dyn Future<Output = CallResult> + Send>>;

/// How the agent is winding down, if it is.
#[derive(Debug, Default)]
struct Winding {
    /// SIGTERM/SIGINT: the moment running jobs get canceled.
    drain_deadline: Option<Instant>,
    deadline_passed: bool,
    /// SIGUSR1.
    finishing: bool,
    /// `exit_after_job` and a lease arrived.
    after_job: bool,
    forced: bool,
    /// After force-stop: when to stop retrying reports to the server.
    give_up_at: Option<Instant>,
    canceled_jobs: bool,
}

impl Winding {
    fn taking_work(&self) -> bool {
        self.drain_deadline.is_none() && !self.finishing && !self.after_job && !self.forced
    }

    fn exit(&self) -> AgentExit {
        if self.forced {
            AgentExit::ForceStopped
        } else if self.canceled_jobs {
            AgentExit::ShutdownCanceledJobs
        } else if self.after_job {
            AgentExit::FinishedAfterJob
        } else {
            AgentExit::Drained
        }
    }
}

/// Runs the agent until a signal ends it.
pub async fn run(mut config: AgentConfig, signals: AgentSignals) -> Result<AgentExit, AgentError> {
    // Jobs run inside their workspaces: every path handed to them must be absolute.
    config.work_dir = absolute(&config.work_dir)?;
    if let Some(dir) = &config.job_log_dir {
        config.job_log_dir = Some(absolute(dir)?);
    }
    let ca = match &config.ca_file {
        None => None,
        Some(path) => {
            let fail = |reason: String| AgentError::CaFile {
                path: path.clone(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
            Some(reqwest::Certificate::from_pem(&pem).map_err(|e| fail(e.to_string()))?)
        }
    };
    let client = Arc::new(Client::new(&config.server, ca).map_err(AgentError::Client)?);
    prepare_work_dir(&config).await?;
    let engine = Arc::new(Engine::new(config.docker_socket.as_deref()));
    // Before any new work: nothing an earlier run of this agent started may still run.
    let left = fence::stop_leftovers(&config.work_dir, &engine, config.keep_workspaces).await;
    if left.stopped > 0 {
        tracing::warn!(
            jobs = left.stopped,
            "stopped jobs an earlier run of this agent left running"
        );
    }
    resume::remove_stale_spools(&config.work_dir, &left.ended).await;
    let docker_version = probe_docker(&engine).await;
    let mut register = register_request(&config);
    register.resume = identity::load(&config.work_dir, &config.server).await;
    if let Some(version) = &docker_version {
        register.labels.insert("docker".into(), "true".into());
        register
            .labels
            .insert("docker_version".into(), version.clone());
    }
    let mut backoff = RetryBackoff::default();
    let registered = loop {
        if signals.force.is_cancelled() {
            return Ok(AgentExit::ForceStopped);
        }
        if signals.drain.is_cancelled() || signals.finish.is_cancelled() {
            return Ok(AgentExit::Drained);
        }
        match client.register(&config.token, &register).await {
            Ok(r) => {
                identity::save(&config.work_dir, &config.server, &r).await;
                break r;
            }
            Err(e) if e.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot register yet");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = signals.drain.cancelled() => {}
                    _ = signals.finish.cancelled() => {}
                    _ = signals.force.cancelled() => {}
                }
            }
            Err(e) => return Err(AgentError::Register(e)),
        }
    };
    let resumed = register.resume.as_ref().map(|r| &r.agent_id) == Some(&registered.agent_id);
    register.resume = None;
    // Before the first poll, which would tell the server these attempts are gone.
    let ended = left.ended;
    resume::report_ended(
        &client,
        &config.work_dir,
        ended,
        resumed,
        config.keep_workspaces,
    )
    .await;
    // Containers are listed before the first poll, since from then on new ones are this
    // run's own. Removing them can take seconds and happens beside the session: the
    // earlier run's were killed already, and the first poll gives back their attempts.
    let orphans = match docker_version {
        Some(_) => list_orphans(&engine, &config).await,
        None => Vec::new(),
    };
    let span = tracing::info_span!("agent", agent_id = %registered.agent_id, name = %config.name);
    tracing::info!(parent: &span, agent_id = %registered.agent_id, name = %registered.name, slots = config.slots, resumed, "registered");
    let mut session = Session::new(config, client, register, registered, signals, engine);
    session.start_watchdog();
    session.remove_orphans(orphans);
    session.run().instrument(span).await
}

fn absolute(path: &std::path::Path) -> Result<std::path::PathBuf, AgentError> {
    std::path::absolute(path).map_err(|source| AgentError::WorkDir {
        path: path.to_path_buf(),
        source,
    })
}

async fn prepare_work_dir(config: &AgentConfig) -> Result<(), AgentError> {
    let w = &config.work_dir;
    for dir in [
        layout::workspaces_dir(w),
        layout::spool_dir(w),
        layout::records_dir(w),
    ] {
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|source| AgentError::WorkDir {
                path: dir.clone(),
                source,
            })?;
    }
    Ok(())
}

/// The engine's version when it answers.
async fn probe_docker(engine: &Engine) -> Option<String> {
    match engine.version().await {
        Ok(v) => {
            tracing::info!(version = %v, socket = %engine.socket().display(), "Docker engine found");
            Some(v)
        }
        Err(e) => {
            tracing::info!(error = %e, "no Docker engine: docker jobs will not be offered to this agent");
            None
        }
    }
}

/// This agent's containers left by an earlier run (at start the agent runs nothing, so
/// every container labelled with its name is one); none when the engine does not answer.
async fn list_orphans(engine: &Engine, config: &AgentConfig) -> Vec<Orphan> {
    let owner = container_owner(config);
    match tokio::time::timeout(ORPHAN_LIST_LIMIT, engine.orphans(&owner)).await {
        Ok(Ok(orphans)) => orphans,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot look for orphaned containers");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!("the Docker engine is slow: orphaned containers may be left");
            Vec::new()
        }
    }
}

/// What this agent's containers are labelled with (`drover.agent`): its name and its
/// work dir, which no other agent shares (one agent per work dir), so that an agent
/// never takes another's containers for its own orphans, even when both are named
/// after the host.
fn container_owner(config: &AgentConfig) -> String {
    format!("{}:{}", config.name, config.work_dir.display())
}

fn register_request(config: &AgentConfig) -> RegisterRequest {
    RegisterRequest {
        name: config.name.clone(),
        labels: host::auto_labels(&config.labels),
        queues: config.queues.clone(),
        slots: config.slots,
        host: host::host_info(),
        resume: None,
    }
}

/// One registered agent session and everything it holds.
struct Session {
    config: AgentConfig,
    client: Arc<Client>,
    finisher: Finisher,
    register: RegisterRequest,
    signals: AgentSignals,
    wait_ms: u64,
    held: HashMap<RunningAttempt, Held>,
    slots: Arc<Semaphore>,
    /// Emptied workspaces for the next attempts.
    workspaces: Arc<WorkspacePool>,
    tracker: TaskTracker,
    done_tx: mpsc::UnboundedSender<(RunningAttempt, AttemptEnd)>,
    done_rx: mpsc::UnboundedReceiver<(RunningAttempt, AttemptEnd)>,
    abandon: CancellationToken,
    stats: StatsSampler,
    backoff: RetryBackoff,
    winding: Winding,
    engine: Arc<Engine>,
    job_env: Arc<Vec<(std::ffi::OsString, std::ffi::OsString)>>,
    /// How long the server keeps a lease that no poll renews.
    ttl: Duration,
    /// When the last poll the server answered was sent: its leases are renewed from then.
    renewed: Option<Renewal>,
    /// The running jobs were stopped because the leases could not be renewed in time.
    fenced: bool,
    watchdog: Option<Watchdog>,
}

/// When a poll that the server answered was sent, on the agent's and the boot clock.
#[derive(Debug, Clone, Copy)]
struct Renewal {
    at: Instant,
    boot_ms: u64,
}

impl Session {
    fn new(
        config: AgentConfig,
        client: Arc<Client>,
        register: RegisterRequest,
        registered: RegisterResponse,
        signals: AgentSignals,
        engine: Arc<Engine>,
    ) -> Session {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let job_env = Arc::new(config.job_env.clone());
        Session {
            slots: Arc::new(Semaphore::new(config.slots.max(1) as usize)),
            workspaces: Arc::new(WorkspacePool::new(
                &layout::workspaces_dir(&config.work_dir),
                config.slots.max(1) as usize,
            )),
            wait_ms: wait_ms(registered.lease_ttl_ms),
            config,
            finisher: Finisher::start(client.clone()),
            client,
            register,
            signals,
            held: HashMap::new(),
            tracker: TaskTracker::new(),
            done_tx,
            done_rx,
            abandon: CancellationToken::new(),
            stats: StatsSampler::default(),
            backoff: RetryBackoff::default(),
            winding: Winding::default(),
            engine,
            job_env,
            ttl: Duration::from_millis(registered.lease_ttl_ms),
            renewed: None,
            fenced: false,
            watchdog: None,
        }
    }

    /// Removes an earlier run's containers in the background. Shutting down does not wait
    /// for it: they were killed already, and the next start finds what is left.
    fn remove_orphans(&self, orphans: Vec<Orphan>) {
        if orphans.is_empty() {
            return;
        }
        let engine = self.engine.clone();
        let keep = self.config.keep_containers;
        tokio::spawn(async move {
            let cleanup = engine.remove_orphans(orphans, keep);
            match tokio::time::timeout(ORPHAN_CLEANUP_LIMIT, cleanup).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => {
                    tracing::warn!(containers = n, "removed orphaned containers of this agent")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove orphaned containers"),
                Err(_) => {
                    tracing::warn!("the Docker engine is slow: orphaned containers may be left")
                }
            }
        });
    }

    fn start_watchdog(&mut self) {
        let Some(command) = &self.config.watchdog else {
            return;
        };
        match Watchdog::spawn(
            command,
            &self.config.work_dir,
            self.config.docker_socket.as_deref(),
            self.config.keep_containers,
            &self.tracker,
        ) {
            Ok(w) => self.watchdog = Some(w),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the watchdog: jobs of a frozen or killed agent will not be stopped until it restarts")
            }
        }
    }

    /// The moment running jobs must stop because their leases were not renewed: the
    /// server lets them expire a TTL after the last renewal, and gives them to others.
    fn fence_deadline(&self) -> Option<Instant> {
        Some(self.renewed?.at + self.safe_window())
    }

    /// The deadline (boot clock ms) for jobs leased now.
    fn deadline_ms(&self) -> u64 {
        let from = self.renewed.map_or_else(fence::boot_ms, |r| r.boot_ms);
        from + self.safe_window().as_millis() as u64
    }

    /// How long after a renewal the leases may be relied on: the TTL less the margin.
    fn safe_window(&self) -> Duration {
        self.ttl.saturating_sub(fence::fence_margin(self.ttl))
    }

    fn renewed(&mut self, at: Renewal) {
        self.renewed = Some(at);
        self.fenced = false;
        if let Some(w) = &self.watchdog {
            // The watchdog acts only if the agent did not, half a margin later.
            let slack = fence::fence_margin(self.ttl) / 2;
            w.renewed(self.deadline_ms() + slack.as_millis() as u64);
        }
    }

    fn self_fence(&mut self) {
        self.fenced = true;
        let since = self.renewed.map(|r| r.at.elapsed()).unwrap_or_default();
        tracing::error!(
            jobs = self.held.len(),
            since_renewal_ms = since.as_millis() as u64,
            ttl_ms = self.ttl.as_millis() as u64,
            "cannot renew leases in time: stopping every job before the server gives it to another agent"
        );
        for h in self.held.values() {
            h.stopper.stop(StopReason::LeaseLost);
        }
    }

    async fn run(mut self) -> Result<AgentExit, AgentError> {
        let mut call: Option<Call> = None;
        let mut delay = Duration::ZERO;
        let mut need_register = false;
        loop {
            if !self.winding.taking_work() && self.held.is_empty() {
                break;
            }
            let pending = call.get_or_insert_with(|| {
                let d = std::mem::take(&mut delay);
                if need_register {
                    self.register_call(d)
                } else {
                    self.poll_call(d)
                }
            });
            let deadline = self
                .winding
                .drain_deadline
                .filter(|_| !self.winding.deadline_passed);
            let give_up = self.winding.give_up_at;
            let fence_at = self
                .fence_deadline()
                .filter(|_| !self.fenced && !self.held.is_empty());
            tokio::select! {
                biased;
                _ = sleep_until_opt(fence_at), if fence_at.is_some() => self.self_fence(),
                _ = self.signals.force.cancelled(), if !self.winding.forced => self.force_stop(),
                _ = self.signals.drain.cancelled(), if self.winding.drain_deadline.is_none() => {
                    tracing::info!(timeout_s = self.config.shutdown_timeout.as_secs(), "draining: no new work; running jobs may finish");
                    self.winding.drain_deadline = Some(Instant::now() + self.config.shutdown_timeout);
                    call = None;
                }
                _ = self.signals.finish.cancelled(), if !self.winding.finishing => {
                    tracing::info!("finishing current jobs, then exiting");
                    self.winding.finishing = true;
                    call = None;
                }
                _ = sleep_until_opt(deadline) => {
                    self.winding.deadline_passed = true;
                    if !self.held.is_empty() {
                        tracing::warn!(jobs = self.held.len(), "shutdown timeout passed: canceling running jobs");
                        self.winding.canceled_jobs = true;
                    }
                    for h in self.held.values() {
                        h.stopper.stop(StopReason::Shutdown);
                    }
                }
                _ = sleep_until_opt(give_up), if !self.abandon.is_cancelled() => {
                    tracing::warn!(jobs = self.held.len(), "server unreachable after force-stop: giving up on reports");
                    self.abandon.cancel();
                }
                Some((key, end)) = self.done_rx.recv() => {
                    tracing::debug!(job_id = %key.job_id, attempt = key.attempt, outcome = ?end.outcome, "attempt done");
                    self.held.remove(&key);
                }
                result = pending => {
                    call = None;
                    match result {
                        CallResult::Registered(Ok(r)) => {
                            tracing::info!(agent_id = %r.agent_id, "registered again");
                            identity::save(&self.config.work_dir, &self.config.server, &r).await;
                            self.ttl = Duration::from_millis(r.lease_ttl_ms);
                            self.wait_ms = wait_ms(r.lease_ttl_ms);
                            self.backoff.reset();
                            need_register = false;
                        }
                        CallResult::Registered(Err(e)) => {
                            delay = self.backoff.next_delay();
                            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "registration failed");
                        }
                        CallResult::Polled(Ok(resp), sent) => {
                            let held_for = sent.at.elapsed();
                            self.renewed(sent);
                            self.backoff.reset();
                            let empty = resp.leases.is_empty() && resp.controls.is_empty();
                            if self.handle(resp) {
                                delay = self.backoff.next_delay();
                            } else if empty {
                                // A server that answers empty polls at once must not make us spin.
                                delay = MIN_EMPTY_POLL.saturating_sub(held_for);
                            }
                        }
                        CallResult::Polled(Err(CallError::Unauthorized(msg)), _) => {
                            tracing::warn!(%msg, "session token refused: registering again");
                            need_register = true;
                        }
                        CallResult::Polled(Err(e), _) => {
                            delay = self.backoff.next_delay();
                            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "poll failed");
                        }
                    }
                }
            }
        }
        drop(call);
        // Dropping the watchdog's handle closes its stdin once its task has written
        // the last deadline; nothing of ours runs any more.
        self.watchdog = None;
        self.tracker.close();
        self.tracker.wait().await;
        // Say goodbye, so that the agent shows offline now rather than a TTL later; a
        // server that does not answer finds out by the TTL, as after a crash.
        if let Err(e) = self.client.leave().await {
            tracing::info!(error = %e, "could not tell the server this agent leaves");
        }
        let exit = self.winding.exit();
        tracing::info!(?exit, "agent stopped");
        Ok(exit)
    }

    fn force_stop(&mut self) {
        tracing::warn!(jobs = self.held.len(), "force-stop: killing every job now");
        self.winding.forced = true;
        for h in self.held.values() {
            h.stopper.stop(StopReason::ForceStop);
        }
        self.winding.give_up_at = Some(Instant::now() + FORCE_REPORT_LIMIT);
    }

    /// Acts on a poll answer; true when the server asked us to back off.
    fn handle(&mut self, resp: PollResponse) -> bool {
        let mut reconnect = false;
        for control in resp.controls {
            match control {
                Control::Cancel { job_id, attempt } => {
                    if let Some(h) = self.held.get(&RunningAttempt { job_id, attempt }) {
                        h.stopper.stop(StopReason::Canceled);
                    }
                }
                Control::Kill { job_id, attempt } => {
                    if let Some(h) = self.held.get(&RunningAttempt {
                        job_id: job_id.clone(),
                        attempt,
                    }) {
                        tracing::warn!(%job_id, attempt, "server says the attempt is not current: killing it");
                        h.stopper.stop(StopReason::Stale);
                    }
                }
                Control::Reconnect => reconnect = true,
            }
        }
        for lease in resp.leases {
            let key = RunningAttempt {
                job_id: lease.job_id.clone(),
                attempt: lease.attempt,
            };
            if self.held.contains_key(&key) {
                continue;
            }
            if self.config.exit_after_job {
                self.winding.after_job = true;
            }
            let stopper = Stopper::default();
            if self.winding.forced {
                stopper.stop(StopReason::ForceStop);
            } else if self.winding.deadline_passed {
                stopper.stop(StopReason::Shutdown);
            }
            tracing::info!(job_id = %key.job_id, attempt = key.attempt, name = %lease.name, "leased");
            let ctx = AttemptCtx {
                client: self.client.clone(),
                finisher: self.finisher.clone(),
                lease,
                work_dir: self.config.work_dir.clone(),
                keep_workspace: self.config.keep_workspaces,
                workspaces: self.workspaces.clone(),
                limits: SpoolLimits {
                    unshipped_bytes: self.config.spool_limit_bytes,
                    output_bytes: self.config.output_cap_bytes,
                },
                stopper: stopper.clone(),
                slots: self.slots.clone(),
                abandon: self.abandon.clone(),
                docker: DockerCtx {
                    engine: self.engine.clone(),
                    agent: container_owner(&self.config),
                    mounts: self.config.docker_mounts.clone(),
                    keep_containers: self.config.keep_containers,
                },
                job_log_dir: self.config.job_log_dir.clone(),
                job_env: self.job_env.clone(),
                deadline_ms: self.deadline_ms(),
                inputs: InputLimits {
                    timeout: self.config.input_timeout,
                    max_bytes: self.config.input_max_bytes,
                },
                start_hold: self.config.start_hold,
            };
            self.held.insert(key.clone(), Held { stopper });
            let done = self.done_tx.clone();
            self.tracker.spawn(
                async move {
                    let end = attempt::run(ctx).await;
                    let _ = done.send((key, end));
                }
                .in_current_span(),
            );
        }
        reconnect
    }

    fn poll_call(&mut self, delay: Duration) -> Call {
        let req = PollRequest {
            running: self.held.keys().cloned().collect(),
            wait_ms: self.wait_ms,
            draining: !self.winding.taking_work(),
            stats: self.stats.sample(),
        };
        let client = self.client.clone();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            let sent = Renewal {
                at: Instant::now(),
                boot_ms: fence::boot_ms(),
            };
            let answer = client.poll(&req).await;
            CallResult::Polled(answer, sent)
        })
    }

    fn register_call(&mut self, delay: Duration) -> Call {
        let client = self.client.clone();
        let token = self.config.token.clone();
        let req = self.register.clone();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            CallResult::Registered(client.register(&token, &req).await)
        })
    }
}

/// `min(25 s, ttl / 4)`: polls renew leases often enough that a late answer or two do
/// not make the agent stop its jobs (it does so 90% into the TTL without a renewal).
fn wait_ms(lease_ttl_ms: u64) -> u64 {
    (lease_ttl_ms / 4).clamp(100, MAX_WAIT_MS)
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_renew_leases_often_enough() {
        assert_eq!(wait_ms(3_000), 750);
        assert_eq!(wait_ms(300_000), 25_000);
        assert_eq!(wait_ms(0), 100);
    }
}

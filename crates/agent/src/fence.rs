//! Never two copies of one job. Every attempt the agent starts is recorded in the work
//! dir (its process group and the leader's start time, or its container), so that a
//! restarted agent stops what its previous run left behind before it takes new work; a
//! separate watchdog process stops the agent's jobs when the agent dies (its stdin pipe
//! closes) or stops renewing its leases (it froze, or the network failed), before the
//! server can lease them again.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::docker::Engine;
use crate::layout::{self, AttemptFiles};

/// How often the watchdog looks at the clock.
const WATCH_TICK: Duration = Duration::from_millis(100);

/// What is needed to stop one attempt when its agent cannot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub job_id: String,
    pub attempt: u32,
    /// The process group (the leader's pid) of a process job.
    pub pgid: Option<i32>,
    /// The leader's start time (clock ticks after boot), so that a pid the kernel gave to
    /// another process since is never signalled.
    pub start_time: Option<u64>,
    /// The container of a docker job.
    pub container: Option<String>,
    /// The lease deadline (see [`boot_ms`]) when the attempt was leased.
    pub deadline_ms: u64,
    /// How the job ended, once it did and its log spool is complete: an agent that dies
    /// before the server has the report sends it when it starts again, rather than
    /// letting the job run a second time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<drover_core::api::FinishRequest>,
    /// With the end: the log records that were only in the agent's memory then (spool
    /// lines), to be sent again with it.
    #[serde(skip)]
    pub tail: Vec<u8>,
}

/// Milliseconds on the boot clock: the same in every process of the machine, and it
/// keeps counting while the machine sleeps.
pub fn boot_ms() -> u64 {
    use nix::time::{clock_gettime, ClockId};
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or_default()
}

/// How long before its lease expires on the server an agent that could not renew it
/// stops its jobs: a tenth of the TTL, between 200 ms and 5 s.
pub fn fence_margin(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_millis(200), Duration::from_secs(5))
}

/// Writes a record (blocking); it is complete or absent, never half written. It is
/// one line; [`mark_ended`] appends the unshipped records and the end after it.
pub fn write_record(path: &Path, record: &Record) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    let mut line = serde_json::to_vec(record).expect("plain data serializes");
    line.push(b'\n');
    f.write_all(&line)?;
    std::fs::rename(&tmp, path)
}

/// A record file's record: its first line, with the end from a complete last line and
/// the log records between (a half-written end, from an agent killed while writing it,
/// is not an end yet, and its records are not needed: the job will run again).
fn parse_record(bytes: &[u8]) -> Option<Record> {
    let first = bytes
        .iter()
        .position(|b| *b == b'\n')
        .map_or(bytes.len(), |i| i + 1);
    let mut rec: Record = serde_json::from_slice(&bytes[..first]).ok()?;
    let rest = &bytes[first..];
    if rest.ends_with(b"\n") {
        let end_at = rest[..rest.len() - 1]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        // A write cut right after a record line leaves no end either.
        if let Ok(end) = serde_json::from_slice(&rest[end_at..]) {
            rec.ended = Some(end);
            rec.tail = rest[..end_at].to_vec();
        }
    }
    Some(rec)
}

/// Writes the attempt's record (blocking); a job that cannot be recorded still runs, but
/// only this agent can stop it.
pub fn keep_record(path: &Path, record: &Record) {
    if let Err(e) = write_record(path, record) {
        tracing::error!(error = %e, path = %path.display(), "cannot record the attempt: if the agent dies, nothing will stop the job");
    }
}

/// Every readable record of the work dir, with its path.
pub fn read_records(work_dir: &Path) -> Vec<(PathBuf, Record)> {
    let Ok(dir) = std::fs::read_dir(layout::records_dir(work_dir)) else {
        return Vec::new();
    };
    dir.flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| {
            let rec = parse_record(&std::fs::read(&p).ok()?)?;
            Some((p, rec))
        })
        .collect()
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`), if it exists.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// SIGKILLs the record's process group unless its pid now names another process (a
/// group whose leader is gone keeps its id reserved, so killing it is safe). True when a
/// group was signalled.
fn kill_group(rec: &Record) -> bool {
    let (Some(pgid), Some(start)) = (rec.pgid, rec.start_time) else {
        return false;
    };
    if pgid <= 1 {
        return false;
    }
    if process_start_time(pgid).is_some_and(|now| now != start) {
        return false;
    }
    killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok()
}

/// Stops what one record names: its process group, or its container (killed first, which
/// is quick, then removed unless `keep_containers`).
async fn stop(rec: &Record, engine: &Engine, keep_containers: bool) -> bool {
    let mut stopped = kill_group(rec);
    if let Some(name) = &rec.container {
        stopped |= engine.kill_container(name).await;
        if !keep_containers {
            engine.remove_container(name).await;
        }
    }
    stopped
}

/// Marks the record at `path` with how its job ended (blocking): one line appended in
/// one write, rather than a new file renamed over it, which would cost a file (an inode
/// made and one freed) per job.
pub fn mark_ended(
    path: &Path,
    ended: drover_core::api::FinishRequest,
    tail: &[u8],
) -> std::io::Result<()> {
    let mut lines = tail.to_vec();
    serde_json::to_writer(&mut lines, &ended).expect("plain data serializes");
    lines.push(b'\n');
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(&lines)
}

/// What an earlier run of this agent left behind.
#[derive(Debug, Default)]
pub struct Leftovers {
    /// Jobs that were still running and have been stopped.
    pub stopped: usize,
    /// Jobs that ended but whose end the server may not know: their record paths and
    /// records (kept, with their spools, until reported).
    pub ended: Vec<(PathBuf, Record)>,
}

/// At agent start: stops every job an earlier run of this agent left running and forgets
/// its record; jobs that had ended are returned for [`crate::resume`] to report.
/// Containers are only killed, which is quick: removing them is left to the agent's
/// clean-up of orphaned containers.
pub async fn stop_leftovers(work_dir: &Path, engine: &Engine, keep_workspaces: bool) -> Leftovers {
    let dir = work_dir.to_path_buf();
    let records = tokio::task::spawn_blocking(move || read_records(&dir))
        .await
        .unwrap_or_default();
    let mut left = Leftovers::default();
    for (path, rec) in records {
        // A job that ended may still have left a process in its group.
        let stopped = stop(&rec, engine, true).await;
        if rec.ended.is_some() {
            left.ended.push((path, rec));
            continue;
        }
        if stopped {
            tracing::warn!(job_id = %rec.job_id, attempt = rec.attempt, pgid = ?rec.pgid, container = ?rec.container,
                "stopped a job left running by an earlier run of this agent");
            left.stopped += 1;
        }
        if !keep_workspaces {
            let workspace = AttemptFiles::of_record(work_dir, &path).workspace;
            let _ = tokio::fs::remove_dir_all(workspace).await;
        }
        let _ = tokio::fs::remove_file(path).await;
    }
    left
}

/// The agent's side of its watchdog: a child process told each new lease deadline over
/// its stdin. When the agent dies the pipe closes and the watchdog stops every recorded
/// job; when a deadline passes without a new one it stops the jobs leased before it.
pub struct Watchdog {
    deadline: watch::Sender<u64>,
}

impl Watchdog {
    /// Starts `command` (program and leading arguments) with `--work-dir` and, when
    /// given, `--docker-socket`, in its own process group so that a Ctrl-C meant for
    /// the agent does not reach it.
    pub fn spawn(
        command: &[OsString],
        work_dir: &Path,
        docker_socket: Option<&Path>,
        keep_containers: bool,
        tasks: &tokio_util::task::TaskTracker,
    ) -> std::io::Result<Watchdog> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| std::io::Error::other("the watchdog command is empty"))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .arg("--work-dir")
            .arg(work_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .process_group(0);
        if let Some(socket) = docker_socket {
            cmd.arg("--docker-socket").arg(socket);
        }
        if keep_containers {
            cmd.arg("--keep-containers");
        }
        let mut child = cmd.spawn()?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let (tx, mut rx) = watch::channel(u64::MAX);
        tasks.spawn(async move {
            while rx.changed().await.is_ok() {
                let line = format!("deadline {}\n", *rx.borrow_and_update());
                if let Err(e) = stdin.write_all(line.as_bytes()).await {
                    tracing::error!(error = %e, "the watchdog is gone: jobs of a frozen or killed agent will not be stopped until it restarts");
                    return;
                }
            }
            // The agent is done: closing stdin lets the watchdog exit.
            drop(stdin);
            let _ = child.wait().await;
        });
        Ok(Watchdog { deadline: tx })
    }

    /// Jobs leased before now must be stopped by `deadline_ms` (boot clock) unless a later
    /// deadline comes first.
    pub fn renewed(&self, deadline_ms: u64) {
        self.deadline.send_replace(deadline_ms);
    }
}

/// Arguments of the watchdog process.
#[derive(Debug, Clone)]
pub struct WatchdogArgs {
    pub work_dir: PathBuf,
    pub docker_socket: Option<PathBuf>,
    pub keep_containers: bool,
}

/// The watchdog process: reads deadlines from stdin until it closes, and stops recorded
/// jobs whose deadline passed (all of them once the agent is gone). Returns the exit code.
pub fn watchdog_main(args: WatchdogArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover watchdog: cannot start: {e}");
            return 1;
        }
    };
    rt.block_on(watch_agent(args));
    0
}

async fn watch_agent(args: WatchdogArgs) {
    use tokio::signal::unix::{signal, SignalKind};
    // Signals meant for the agent's terminal or service are not for us: we leave when
    // the agent does, after its jobs.
    let _ignored: Vec<_> = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ]
    .into_iter()
    .filter_map(|k| signal(k).ok())
    .collect();
    let engine = Engine::new(args.docker_socket.as_deref());
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut deadline = u64::MAX;
    let mut stopped: HashSet<PathBuf> = HashSet::new();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(l)) => {
                    if let Some(d) = l.strip_prefix("deadline ").and_then(|d| d.trim().parse().ok()) {
                        deadline = d;
                    }
                    continue;
                }
                Ok(None) | Err(_) => {
                    stop_due(&args, &engine, u64::MAX, &mut stopped, "the agent is gone").await;
                    return;
                }
            },
            _ = tokio::time::sleep(WATCH_TICK) => {}
        }
        let now = boot_ms();
        if now > deadline {
            stop_due(
                &args,
                &engine,
                now,
                &mut stopped,
                "the agent stopped renewing its leases",
            )
            .await;
        }
    }
}

/// Stops every recorded job whose own and agent-wide deadlines are before `now` (all of
/// them when `now` is `u64::MAX`), once each: process groups first (a signal each), then
/// containers (an engine call each, all at once).
async fn stop_due(
    args: &WatchdogArgs,
    engine: &Engine,
    now: u64,
    stopped: &mut HashSet<PathBuf>,
    why: &str,
) {
    // This process has nothing else to do: reading the records in place is quickest.
    let due: Vec<(PathBuf, Record)> = read_records(&args.work_dir)
        .into_iter()
        .filter(|(path, rec)| rec.deadline_ms < now && !stopped.contains(path))
        .collect();
    let say = |rec: &Record| {
        eprintln!(
            "drover watchdog: {why}: stopped job {} attempt {} so that it cannot run twice",
            rec.job_id, rec.attempt
        )
    };
    for (_, rec) in due.iter().filter(|(_, r)| r.container.is_none()) {
        if kill_group(rec) {
            say(rec);
        }
    }
    let containers = due
        .iter()
        .filter(|(_, r)| r.container.is_some())
        .map(|(_, rec)| async move {
            if stop(rec, engine, args.keep_containers).await {
                say(rec);
            }
        });
    futures::future::join_all(containers).await;
    stopped.extend(due.into_iter().map(|(path, _)| path));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_pids_have_start_times() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(crate::layout::records_dir(dir.path())).unwrap();
        let me = std::process::id() as i32;
        let rec = Record {
            job_id: "j".into(),
            attempt: 2,
            pgid: Some(me),
            start_time: process_start_time(me),
            container: None,
            deadline_ms: boot_ms(),
            ended: None,
            tail: Vec::new(),
        };
        assert!(rec.start_time.is_some());
        let path = crate::layout::AttemptFiles::new(dir.path(), "j", 2).record;
        // Written by hand without its newline, it still reads.
        std::fs::write(&path, serde_json::to_vec(&rec).unwrap()).unwrap();
        assert_eq!(read_records(dir.path()), vec![(path.clone(), rec.clone())]);
        write_record(&path, &rec).unwrap();
        assert_eq!(read_records(dir.path()), vec![(path.clone(), rec.clone())]);
        // An end half written (the agent was killed while writing it) is no end yet.
        let ended = drover_core::api::FinishRequest {
            outcome: drover_core::Outcome::Succeeded,
            exit_code: Some(0),
            error: None,
            result: Some(serde_json::json!({"n": 1})),
            gpus: None,
        };
        let line = serde_json::to_string(&ended).unwrap();
        let whole = std::fs::read(&path).unwrap();
        std::fs::write(&path, [&whole[..], &line.as_bytes()[..10]].concat()).unwrap();
        assert_eq!(read_records(dir.path()), vec![(path.clone(), rec.clone())]);
        std::fs::write(&path, &whole).unwrap();
        mark_ended(&path, ended.clone(), b"").unwrap();
        let marked = Record {
            ended: Some(ended.clone()),
            ..rec.clone()
        };
        assert_eq!(read_records(dir.path()), vec![(path.clone(), marked)]);
        // Records still unshipped go before the end, in the same write; with the end
        // half written they are not read either.
        let tail = b"{\"seq\":1,\"ts\":\"2026-11-25T00:00:00.000Z\",\"stream\":\"stdout\",\"text\":\"a\"}\n{\"seq\":2,\"ts\":\"2026-11-25T00:00:00.000Z\",\"stream\":\"stdout\",\"text\":\"b\"}\n";
        std::fs::write(&path, &whole).unwrap();
        mark_ended(&path, ended.clone(), tail).unwrap();
        let with_tail = Record {
            ended: Some(ended),
            tail: tail.to_vec(),
            ..rec.clone()
        };
        assert_eq!(read_records(dir.path()), vec![(path.clone(), with_tail)]);
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 5]).unwrap();
        assert_eq!(read_records(dir.path()), vec![(path.clone(), rec.clone())]);
        std::fs::write(&path, [&whole[..], &tail[..]].concat()).unwrap();
        assert_eq!(read_records(dir.path()), vec![(path, rec)]);
    }

    #[test]
    fn a_reused_pid_is_never_signalled() {
        let me = std::process::id() as i32;
        let rec = Record {
            job_id: "j".into(),
            attempt: 1,
            pgid: Some(me),
            start_time: process_start_time(me).map(|t| t + 1),
            container: None,
            deadline_ms: 0,
            ended: None,
            tail: Vec::new(),
        };
        assert!(!kill_group(&rec), "another start time: not our group");
    }

    #[test]
    fn margins_scale_with_the_ttl() {
        assert_eq!(
            fence_margin(Duration::from_secs(30)),
            Duration::from_secs(3)
        );
        assert_eq!(
            fence_margin(Duration::from_secs(1)),
            Duration::from_millis(200)
        );
        assert_eq!(
            fence_margin(Duration::from_secs(600)),
            Duration::from_secs(5)
        );
    }
}

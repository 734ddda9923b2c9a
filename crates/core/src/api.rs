//! Wire types of the HTTP API (`/v1`), shared by server, agent and CLI.
//!
//! Routes (all JSON unless noted; see `/openapi.json` for the generated spec):
//! - client: `POST /v1/jobs`, `POST /v1/jobs/batch`, `GET /v1/jobs`, `GET /v1/jobs/{id}`,
//!   `POST /v1/jobs/{id}/cancel`, `POST /v1/jobs/{id}/retry`, `GET /v1/jobs/{id}/events`,
//!   `GET /v1/jobs/{id}/logs` (JSON page), `GET /v1/jobs/{id}/logs/stream` (SSE),
//!   `GET /v1/jobs/{id}/logs.txt` (plain text), `DELETE /v1/jobs/{id}`, `GET /v1/agents`;
//!   files: `POST /v1/files` (raw bytes), `GET /v1/files`, `GET|DELETE /v1/files/{id}`,
//!   `GET /v1/jobs/{id}/artifacts` and `…/artifacts.tar`.
//! - agent: `POST /v1/agents/register` (join token), `POST /v1/agents/poll`, and per
//!   attempt `POST /v1/jobs/{id}/attempts/{n}/{start|logs|progress|finish}` (session token;
//!   `logs?start=true` also reports the start), `GET …/inputs/{index}` and
//!   `POST …/artifacts?path=P` (raw bytes).
//!   A write for an attempt that is no longer current gets 409 with code `stale_attempt`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::backoff::Backoff;
use crate::files::{ArtifactLimits, Input};
use crate::labels::Labels;
use crate::spec::{Exec, FieldError};
use crate::state::{JobState, Outcome};

/// The error body of every non-2xx answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `invalid_spec`, `stale_attempt`.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// Field problems, for `invalid_spec`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
    /// For internal errors: the id to look up in the server log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// A job as the read API shows it. Secrets appear only as their names.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub queue: String,
    pub priority: i32,
    pub state: JobState,
    /// A cancel was asked for and the agent has not confirmed yet.
    pub cancel_requested: bool,
    pub exec: Exec,
    pub labels: Labels,
    pub timeout_ms: Option<u64>,
    pub grace_ms: u64,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub env: BTreeMap<String, String>,
    /// Names of the job's secrets; values are never shown.
    pub secret_names: Vec<String>,
    pub metadata: serde_json::Value,
    pub idempotency_key: Option<String>,
    /// Files put into the workspace before the command starts.
    #[serde(default)]
    pub inputs: Vec<Input>,
    /// Patterns of files uploaded as artifacts after the job ends.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// Attempts that started a process (a lease that never started does not count).
    pub attempts_used: u32,
    /// Number of the current (latest) attempt; 0 before the first lease.
    pub current_attempt: u32,
    pub progress: Option<Progress>,
    pub result: Option<serde_json::Value>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub run_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Filled in by `GET /v1/jobs/{id}`; empty in lists.
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    /// For a queued job that may start now (`GET /v1/jobs/{id}` only): 1 when it is the
    /// next its queue hands out, by priority, then age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
    /// For a queued job (`GET /v1/jobs/{id}` only): why it is not running yet, e.g.
    /// "no online agent has labels gpu=a100".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_reason: Option<String>,
    /// The template and version the job was made from, if any.
    #[serde(default)]
    pub template: Option<crate::template::TemplateRef>,
    /// At most `concurrency_limit` jobs with this key run at once.
    #[serde(default)]
    pub concurrency_key: Option<String>,
    #[serde(default)]
    pub concurrency_limit: Option<u32>,
    /// The group (array) the job belongs to, and its index there.
    #[serde(default)]
    pub group_id: Option<String>,
    #[serde(default)]
    pub array_index: Option<u32>,
    /// The jobs it waits for, by id (`GET /v1/jobs/{id}` only; empty in lists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<crate::group::Dependency>,
    /// Where agents with `--job-log-dir` also write its log, relative to that folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
}

impl Job {
    /// The labels an agent needs to run it: its own and those its executor implies
    /// (`docker=true` for a container job).
    pub fn required_labels(&self) -> crate::labels::Labels {
        self.exec.required_labels(&self.labels)
    }

    /// Attempts counted so far, and allowed in all. A retry grants `max_attempts` more,
    /// so while a retried job's second attempt runs this is `(2, 2)`, not `(1, 1)`.
    pub fn attempt_counts(&self) -> (u32, u32) {
        let started = self
            .attempts
            .iter()
            .filter(|a| a.started_at.is_some())
            .count() as u32;
        let before_retries = started.saturating_sub(self.attempts_used);
        (
            before_retries + self.attempts_used,
            before_retries + self.max_attempts,
        )
    }
}

/// One lease of a job by an agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Attempt {
    pub number: u32,
    pub agent_id: String,
    pub state: AttemptState,
    pub leased_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// Where the attempt's log is kept: `database`, `object_store` (moved there once the
    /// attempt ended) or `expired` (deleted by the server's retention).
    #[serde(default = "in_database")]
    pub log: String,
    /// For a container job that asked for GPUs: whether this attempt got them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Gpus>,
}

fn in_database() -> String {
    "database".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AttemptState {
    Leased,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Canceled,
    /// The lease expired or the agent dropped it.
    Lost,
}

impl AttemptState {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Leased => "leased",
            AttemptState::Running => "running",
            AttemptState::Succeeded => "succeeded",
            AttemptState::Failed => "failed",
            AttemptState::TimedOut => "timed_out",
            AttemptState::Canceled => "canceled",
            AttemptState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "leased" => AttemptState::Leased,
            "running" => AttemptState::Running,
            "succeeded" => AttemptState::Succeeded,
            "failed" => AttemptState::Failed,
            "timed_out" => AttemptState::TimedOut,
            "canceled" => AttemptState::Canceled,
            "lost" => AttemptState::Lost,
            _ => return None,
        })
    }
}

impl From<Outcome> for AttemptState {
    fn from(o: Outcome) -> Self {
        match o {
            Outcome::Succeeded => AttemptState::Succeeded,
            Outcome::Failed => AttemptState::Failed,
            Outcome::TimedOut => AttemptState::TimedOut,
            Outcome::Canceled => AttemptState::Canceled,
        }
    }
}

/// Percent done and a message, as the job last reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    pub percent: f64,
    #[serde(default)]
    pub message: String,
}

/// One progress update an attempt reported, as kept in its history (the last 100 per
/// attempt).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProgressEntry {
    pub attempt: u32,
    /// 1 for the attempt's first update, then counting up.
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub percent: f64,
    pub message: String,
}

/// `GET /v1/jobs/{id}/progress`: progress updates, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProgressHistory {
    pub updates: Vec<ProgressEntry>,
}

/// `GET /v1/jobs/{id}/progress` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ProgressQuery {
    /// Attempt number; default every attempt.
    pub attempt: Option<u32>,
    /// Only updates after this one: `ATTEMPT.SEQ`, e.g. `2.14` (what the last update
    /// seen had).
    pub after: Option<String>,
}

/// `POST /v1/jobs` answers 201 with the new job, or 200 with the existing one when the
/// idempotency key was seen before.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchSubmit {
    pub jobs: Vec<crate::spec::SubmitRequest>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchSubmitted {
    pub jobs: Vec<Job>,
}

/// Filters of `GET /v1/jobs`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListJobsQuery {
    pub state: Option<String>,
    pub queue: Option<String>,
    /// `key=value`: only jobs that require this label.
    pub label: Option<String>,
    pub name: Option<String>,
    /// Only the job submitted with this idempotency key (at most one).
    pub idempotency_key: Option<String>,
    /// Only the members of this group.
    pub group: Option<String>,
    /// Page size, 1..=1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Filters of `GET /v1/jobs/stream`: only changes of jobs that match them are sent. There
/// is no state filter: a job that leaves the state a list shows still gets its update.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WatchJobsQuery {
    pub queue: Option<String>,
    /// `key=value`: only jobs that require this label.
    pub label: Option<String>,
    pub name: Option<String>,
}

impl WatchJobsQuery {
    /// Whether `job` passes the filters.
    pub fn matches(&self, job: &Job) -> bool {
        self.queue.as_ref().is_none_or(|q| *q == job.queue)
            && self.name.as_ref().is_none_or(|n| *n == job.name)
            && self
                .label
                .as_deref()
                .is_none_or(|f| crate::labels::matches_filter(&job.labels, f))
    }
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// One entry in a job's timeline.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobEvent {
    pub at: DateTime<Utc>,
    /// What happened: `submitted`, `leased`, `started`, `finished`, `lost`, `cancel_requested`, `canceled`, `retried`.
    pub kind: String,
    pub from_state: Option<JobState>,
    pub to_state: JobState,
    pub attempt: Option<u32>,
    /// `user`, `agent:<id>` or `server`.
    pub actor: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobEvents {
    pub events: Vec<JobEvent>,
}

/// The stream a log record came from. `system` records are written by drover itself
/// (the `$ command` header, truncation and drop markers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
    System,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "stdout" => Stream::Stdout,
            "stderr" => Stream::Stderr,
            "system" => Stream::System,
            _ => return None,
        })
    }
}

/// Most records in one log batch: the server refuses more, and agents ship at most this.
pub const MAX_LOG_RECORDS: usize = 10_000;

/// One line of output. `seq` numbers the records of an attempt from 1 without gaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogRecord {
    pub seq: u64,
    #[serde(deserialize_with = "log_ts::deserialize")]
    pub ts: DateTime<Utc>,
    pub stream: Stream,
    pub text: String,
}

/// Log record timestamps: a batch holds thousands, so the `YYYY-MM-DDTHH:MM:SS.sssZ` form
/// agents write is parsed by hand; anything else goes through chrono as usual.
mod log_ts {
    use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
    use serde::de::{Error, Visitor};
    use serde::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        d.deserialize_str(TsVisitor)
    }

    struct TsVisitor;

    impl Visitor<'_> for TsVisitor {
        type Value = DateTime<Utc>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an RFC 3339 timestamp")
        }

        fn visit_str<E: Error>(self, s: &str) -> Result<DateTime<Utc>, E> {
            if let Some(t) = fast(s) {
                return Ok(t);
            }
            s.parse::<DateTime<FixedOffset>>()
                .map(|t| t.with_timezone(&Utc))
                .map_err(E::custom)
        }
    }

    fn fast(s: &str) -> Option<DateTime<Utc>> {
        let b = s.as_bytes();
        let shape_ok = b.len() == 24
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'.'
            && b[23] == b'Z';
        if !shape_ok {
            return None;
        }
        let num = |from: usize, to: usize| -> Option<u32> {
            b[from..to].iter().try_fold(0u32, |n, &c| {
                c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
            })
        };
        let date = NaiveDate::from_ymd_opt(num(0, 4)? as i32, num(5, 7)?, num(8, 10)?)?;
        let time =
            date.and_hms_milli_opt(num(11, 13)?, num(14, 16)?, num(17, 19)?, num(20, 23)?)?;
        Some(time.and_utc())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn both_paths_agree() {
            for s in [
                "2026-11-23T13:04:05.678Z",
                "1999-12-31T23:59:59.999Z",
                "2024-02-29T00:00:00.000Z",
            ] {
                let slow: DateTime<Utc> = s.parse::<DateTime<FixedOffset>>().unwrap().into();
                assert_eq!(fast(s), Some(slow), "{s}");
            }
            for s in [
                "2026-11-23T13:04:05Z",
                "2026-11-23T13:04:05.678+01:00",
                "2026-02-30T13:04:05.678Z",
                "2026-11-23T13:04:05.6a8Z",
                "2026-11-23T25:04:05.678Z",
            ] {
                assert_eq!(fast(s), None, "{s}");
            }
            let lenient: DateTime<Utc> = serde_json::from_str::<super::super::LogRecord>(
                r#"{"seq":1,"ts":"2026-11-23T13:04:05.678+01:00","stream":"stdout","text":""}"#,
            )
            .unwrap()
            .ts;
            assert_eq!(lenient.to_rfc3339(), "2026-11-23T12:04:05.678+00:00");
        }
    }
}

/// `POST /v1/jobs/{id}/attempts/{n}/logs`. Resending records already stored is harmless.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogBatch {
    pub records: Vec<LogRecord>,
}

/// Query of `GET /v1/jobs/{id}/logs`, `/logs/stream` and `/logs.txt`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Attempt number; default the current attempt.
    pub attempt: Option<u32>,
    /// Only records with `seq` greater than this.
    pub after: Option<u64>,
    /// `stdout`, `stderr` or `system`; default all.
    pub stream: Option<String>,
    /// Page size for the JSON form, default 1000, at most 10000.
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<u32>,
    /// Only the last N records stored now (replaces `after`): how a viewer opens a long
    /// log without reading it whole.
    pub tail: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    pub attempt: u32,
    pub records: Vec<LogRecord>,
    /// Highest `seq` in this page (or `after` when empty); pass as `after` to continue.
    pub last_seq: u64,
    /// The attempt has ended and every stored record up to `last_seq` was returned.
    pub complete: bool,
}

/// Host facts an agent reports when it registers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct HostInfo {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub version: String,
}

/// `POST /v1/agents/register`, authenticated with a join token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterRequest {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    /// Queues to take jobs from; empty means `["default"]`.
    #[serde(default)]
    pub queues: Vec<String>,
    /// Jobs it runs at once.
    #[schema(minimum = 1, maximum = 4096)]
    pub slots: u32,
    pub host: HostInfo,
    /// The identity of an earlier registration of this agent (kept in its work dir): when
    /// it is still valid the agent keeps its id and session token, and its first poll
    /// tells the server which of its attempts it no longer runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<AgentIdentity>,
}

/// An agent's id and session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentIdentity {
    pub agent_id: String,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterResponse {
    pub agent_id: String,
    /// The agent's session token for polls and attempt writes.
    pub token: String,
    /// Leases expire when not renewed by a poll for this long.
    pub lease_ttl_ms: u64,
    /// The name the agent is listed under: the one it asked for, with `-N` added when
    /// an online agent has that name already.
    #[serde(default)]
    pub name: String,
}

/// An attempt an agent says it runs (`job_id`, `attempt`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunningAttempt {
    pub job_id: String,
    pub attempt: u32,
}

/// Resource use the agent reports with each poll.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentStats {
    pub cpu_percent: f64,
    pub memory_used_bytes: u64,
}

/// `POST /v1/agents/poll`: the agent's heartbeat and work request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// Every attempt the agent is still running; renewed if current, else answered with
    /// `kill`. An attempt of this agent left out is lost (it failed or went back to the
    /// queue), as the agent no longer runs it.
    #[serde(default)]
    pub running: Vec<RunningAttempt>,
    /// How long the server may hold the poll open when there is nothing to say (ms); it
    /// holds at most 60000, and with attempts in `running` at most half the lease TTL
    /// (`lease_ttl_ms` of register), since only a poll's arrival renews their leases.
    #[serde(default)]
    pub wait_ms: u64,
    /// Take no new work (the agent is draining or shutting down).
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub stats: AgentStats,
}

/// The answer to a poll: new work and orders about running work.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct PollResponse {
    pub leases: Vec<Lease>,
    pub controls: Vec<Control>,
}

/// A message from server to agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Control {
    /// A user canceled the job: stop the attempt (SIGTERM, grace, SIGKILL) and finish it as `canceled`.
    Cancel { job_id: String, attempt: u32 },
    /// The attempt is no longer current (or unknown): kill it and drop its spool.
    Kill { job_id: String, attempt: u32 },
    /// The server is shutting down: poll again (with backoff) in a moment.
    Reconnect,
}

/// A job handed to an agent: everything needed to run it, secrets included.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    pub job_id: String,
    pub attempt: u32,
    pub name: String,
    pub exec: Exec,
    pub env: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    pub timeout_ms: Option<u64>,
    pub grace_ms: u64,
    pub metadata: serde_json::Value,
    #[serde(default)]
    pub inputs: Vec<Input>,
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// What the server accepts as this attempt's artifacts.
    #[serde(default)]
    pub artifact_limits: ArtifactLimits,
    /// Where to also write the job's log, relative to the agent's `--job-log-dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
}

/// `POST .../attempts/{n}/progress`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProgressUpdate {
    #[schema(minimum = 0, maximum = 100)]
    pub percent: f64,
    #[serde(default)]
    pub message: String,
}

/// `POST .../attempts/{n}/finish`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FinishRequest {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    /// Why it ended, e.g. `exit code 3`, `killed by signal SIGKILL`, `timed out after 30s`,
    /// `canceled by user`, `force-stop`, `out of memory`. Needed with outcome `failed` and
    /// exit code 0; `succeeded` needs exit code 0 or none.
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
    /// For a container job that asked for GPUs: whether it got them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<Gpus>,
}

impl FinishRequest {
    /// Whether the outcome agrees with the exit code: a success exited 0 (or has no
    /// code), and a failure with exit code 0 says why in `error` (a bad result file).
    pub fn check(&self) -> Result<(), String> {
        match (self.outcome, self.exit_code) {
            (Outcome::Succeeded, Some(code)) if code != 0 => Err(format!(
                "outcome succeeded disagrees with exit code {code}: report failed, or exit code 0"
            )),
            (Outcome::Failed, Some(0)) if self.error.as_deref().is_none_or(str::is_empty) => {
                Err("outcome failed with exit code 0 needs an error saying why".into())
            }
            _ => Ok(()),
        }
    }
}

/// What a container job got of the GPUs it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Gpus {
    /// The engine gave the container the GPUs it asked for.
    Granted,
    /// The engine could not provide them, and the job (without `gpus_required`) ran
    /// without them.
    Unavailable,
}

impl Gpus {
    pub fn as_str(self) -> &'static str {
        match self {
            Gpus::Granted => "granted",
            Gpus::Unavailable => "unavailable",
        }
    }

    pub fn parse(s: &str) -> Option<Gpus> {
        match s {
            "granted" => Some(Gpus::Granted),
            "unavailable" => Some(Gpus::Unavailable),
            _ => None,
        }
    }
}

/// An agent as `GET /v1/agents` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    pub id: String,
    pub name: String,
    pub labels: Labels,
    pub queues: Vec<String>,
    pub slots: u32,
    /// Attempts it holds now.
    pub running: u32,
    /// `online`; `draining` when online but taking no new work (it is shutting down);
    /// `offline` when its polls stopped for longer than the lease TTL or it left.
    pub status: String,
    pub host: HostInfo,
    pub stats: AgentStats,
    pub registered_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// The provider that started it, for an agent the server started on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<Agent>,
}

/// An agent a provider started (or is starting).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProvidedAgent {
    /// Also the agent's name.
    pub id: String,
    /// `starting` (not registered yet), `running`, `stopping` (told to drain and exit).
    pub state: String,
    /// Once registered.
    pub agent_id: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// A provider of agents on demand (`[[provider]]` in the server's config file) and how
/// it has been doing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Provider {
    pub name: String,
    /// `process` or `docker`.
    pub kind: String,
    /// What its agents offer.
    pub labels: crate::labels::Labels,
    pub queues: Vec<String>,
    pub slots: u32,
    pub max_agents: u32,
    pub min_idle: u32,
    /// Its agents run one job, then exit.
    pub ephemeral: bool,
    /// Agents it runs now (starting, running or stopping).
    pub agents: Vec<ProvidedAgent>,
    /// Agents it started, ever.
    pub starts: u64,
    /// Starts that failed (the agent exited or did not register in time).
    pub failures: u64,
    /// Why the last failed start failed, with the agent's last output.
    pub last_failure: Option<String>,
    /// No new start before this, after failed starts.
    pub backoff_until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProviderList {
    pub providers: Vec<Provider>,
}

/// `POST /v1/tokens` (admin).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    pub name: String,
    /// `read`, `submit`, `admin`, `join` (agents register) or `bootstrap` (one agent, once).
    pub scope: String,
    /// Lifetime in seconds; none: no expiry. Bootstrap tokens default to 15 minutes, at most a day.
    #[serde(default)]
    pub expires_in_secs: Option<u64>,
    /// Bootstrap tokens only: labels the agent that uses it gets.
    #[serde(default)]
    pub labels: Labels,
}

/// A token as the API shows it; the secret only once, at creation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub scope: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub used_at: Option<DateTime<Utc>>,
    pub labels: Labels,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The secret: shown this once, stored only as a hash.
    pub token: String,
    #[serde(flatten)]
    pub info: TokenView,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// One entry of the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `token:<name>` of whoever did it.
    pub actor: String,
    /// e.g. `job.submit`, `job.cancel`, `job.retry`, `token.create`, `token.revoke`, `agent.register`, `agent.remove`.
    pub action: String,
    /// The id of the job, token or agent.
    pub target: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass as `before` for older entries; absent on the last page.
    pub next_before: Option<i64>,
}

/// Query of `GET /v1/audit`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only entries older than this id.
    pub before: Option<i64>,
    /// Page size, 1..=1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// `POST /v1/agents/finish`: several attempts of this agent ended (one transaction).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FinishBatch {
    pub finishes: Vec<FinishItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FinishItem {
    pub job_id: String,
    pub attempt: u32,
    #[serde(flatten)]
    pub finish: FinishRequest,
    /// Set when the attempt's start was not reported yet: its process started this many
    /// milliseconds before the request was sent. A job that ends within moments of
    /// starting reports its start, its log and its end in one item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms_ago: Option<u64>,
    /// Log records not sent yet, stored (as `POST …/logs` stores them) before the
    /// attempt ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FinishBatchResult {
    /// One per item, in order.
    pub results: Vec<FinishItemResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FinishItemResult {
    pub job_id: String,
    pub attempt: u32,
    /// `ok`, or why it was refused: `stale_attempt` (kill it), `forbidden`, `not_found`, `conflict`.
    pub status: String,
    /// The job's state after an `ok`.
    pub state: Option<JobState>,
}

//! Client commands about one job or many: status, ls, cancel, retry, events.

use crate::output::outln;
use drover_core::api::{Job, JobEvents, JobPage, ListJobsQuery};
use drover_core::JobState;

use crate::client::{job_path, Client};
use crate::config::{ClientConfig, OutputFormat};
use crate::error::{CliError, Result};
use crate::output;

/// The id of the job `job` names: its id, or `key:K` for the job submitted with
/// idempotency key K (so a backend can use its own ids).
pub async fn resolve(cfg: &ClientConfig, job: &str) -> Result<String> {
    let Some(key) = job.strip_prefix("key:") else {
        return Ok(job.to_string());
    };
    let query = ListJobsQuery {
        idempotency_key: Some(key.to_string()),
        ..ListJobsQuery::default()
    };
    let page: JobPage = Client::new(cfg)?
        .get_with("/v1/jobs", |r| r.query(&query))
        .await?;
    page.jobs.into_iter().next().map(|j| j.id).ok_or_else(|| {
        CliError::NotFound(format!("no job was submitted with idempotency key {key:?}"))
    })
}

/// `drover status`: one job, as fields or JSON.
pub async fn status(cfg: &ClientConfig, id: &str) -> Result<i32> {
    let client = Client::new(cfg)?;
    let job: Job = client.get(&job_path(id)).await?;
    if cfg.output == OutputFormat::Json {
        output::json(&job);
        return Ok(0);
    }
    let color = output::stdout_is_tty();
    outln!("id:        {}", job.id);
    outln!("name:      {}", job.name);
    let note = if job.cancel_requested && !job.state.is_terminal() {
        " (cancel requested)".to_string()
    } else if let Some(n) = job.queue_position {
        format!(" (number {n} in queue {})", job.queue)
    } else if job.state == JobState::Queued {
        format!(" (not before {})", job.run_at.to_rfc3339())
    } else {
        String::new()
    };
    outln!("state:     {}{note}", output::state(job.state, color));
    if let Some(why) = &job.wait_reason {
        outln!("waiting:   {why}");
    }
    outln!("command:   {}", job.exec.display());
    outln!("queue:     {} (priority {})", job.queue, job.priority);
    if let (Some(g), Some(i)) = (&job.group_id, job.array_index) {
        outln!("group:     {g} (index {i}; drover group status {g})");
    }
    for d in &job.after {
        outln!("after:     {}:{}", d.job, d.condition.as_str());
    }
    let (used, allowed) = job.attempt_counts();
    outln!("attempts:  {used} of {allowed}");
    if let Some(p) = &job.progress {
        outln!("progress:  {:.0}% {}", p.percent, p.message);
    }
    if let Some(code) = job.exit_code {
        outln!("exit code: {code}");
    }
    if let Some(e) = &job.error {
        outln!("error:     {e}");
    }
    for a in &job.attempts {
        if let Some(g) = a.gpus {
            outln!("gpus:      attempt {}: {}", a.number, g.as_str());
        }
    }
    for input in &job.inputs {
        outln!("input:     {}", input.describe());
    }
    if !job.artifacts.is_empty() {
        outln!(
            "artifacts: {} (drover artifacts ls {})",
            job.artifacts.join(" "),
            job.id
        );
    }
    if let Some(r) = &job.result {
        outln!("result:    {r}");
    }
    outln!("created:   {}", job.created_at.to_rfc3339());
    outln!("started:   {}", output::time(job.started_at));
    outln!("finished:  {}", output::time(job.finished_at));
    if !job.attempts.is_empty() {
        outln!();
        let rows: Vec<Vec<String>> = job
            .attempts
            .iter()
            .map(|a| {
                vec![
                    a.number.to_string(),
                    a.state.as_str().to_string(),
                    a.agent_id.clone(),
                    a.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                    a.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        output::table(&["ATTEMPT", "STATE", "AGENT", "EXIT", "ERROR"], &rows);
    }
    Ok(0)
}

/// Flags of `drover ls`.
#[derive(clap::Args)]
pub struct LsArgs {
    /// Only jobs in this state (waiting, queued, leased, running, succeeded, failed, canceled, timed_out).
    #[arg(long, value_parser = |s: &str| s.parse::<JobState>())]
    state: Option<JobState>,
    /// Only jobs of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only jobs that require this label.
    #[arg(long, value_name = "K=V", value_parser = parse_label)]
    label: Option<String>,
    /// Only jobs with this name.
    #[arg(long)]
    name: Option<String>,
    /// Only the members of this group (an array; see `drover group`).
    #[arg(long)]
    group: Option<String>,
    /// How many jobs to show (1-1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
    /// Continue after a previous page (the `next_cursor` it printed).
    #[arg(long)]
    cursor: Option<String>,
}

fn parse_label(s: &str) -> std::result::Result<String, String> {
    match s.split_once('=') {
        Some((k, _)) if !k.is_empty() => Ok(s.to_string()),
        _ => Err(format!("{s:?} must look like key=value")),
    }
}

/// `drover ls`: a table of jobs, newest first, or the JobPage JSON.
pub async fn ls(cfg: &ClientConfig, args: LsArgs) -> Result<i32> {
    let client = Client::new(cfg)?;
    let query = ListJobsQuery {
        state: args.state.map(|s| s.to_string()),
        queue: args.queue,
        label: args.label,
        name: args.name,
        limit: Some(args.limit),
        cursor: args.cursor,
        group: args.group,
        ..ListJobsQuery::default()
    };
    let page: JobPage = client.get_with("/v1/jobs", |r| r.query(&query)).await?;
    if cfg.output == OutputFormat::Json {
        output::json(&page);
        return Ok(0);
    }
    let color = output::stdout_is_tty();
    let now = chrono::Utc::now();
    let rows: Vec<Vec<String>> = page
        .jobs
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                truncate(&j.name, 40),
                output::state(j.state, color),
                j.queue.clone(),
                format!("{}/{}", j.attempts_used, j.max_attempts),
                j.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                format!("{} ago", output::elapsed(now - j.created_at)),
            ]
        })
        .collect();
    output::table(
        &[
            "ID", "NAME", "STATE", "QUEUE", "ATTEMPTS", "EXIT", "CREATED",
        ],
        &rows,
    );
    if page.jobs.is_empty() {
        eprintln!("(no jobs)");
    }
    if let Some(next) = &page.next_cursor {
        eprintln!("(more: drover ls --cursor {next})");
    }
    Ok(0)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// `drover cancel`: a queued job ends at once, a running one when its agent stopped it.
pub async fn cancel(cfg: &ClientConfig, id: &str) -> Result<i32> {
    let client = Client::new(cfg)?;
    let job: Job = client
        .post(&format!("{}/cancel", job_path(id)), &serde_json::json!({}))
        .await?;
    match cfg.output {
        OutputFormat::Json => output::json(&job),
        OutputFormat::Table if job.cancel_requested => {
            outln!("{}: cancel requested; the agent is stopping it", job.id)
        }
        OutputFormat::Table => outln!("{}: {}", job.id, job.state),
    }
    Ok(0)
}

/// `drover rm`: deletes ended jobs with their logs and artifacts.
pub async fn rm(cfg: &ClientConfig, ids: &[String]) -> Result<i32> {
    let client = Client::new(cfg)?;
    for id in ids {
        client.delete::<serde_json::Value>(&job_path(id)).await?;
        if cfg.output == OutputFormat::Table {
            outln!("{id}: deleted");
        }
    }
    Ok(0)
}

/// `drover rerun`: a new job with the same spec; prints its id.
pub async fn rerun(cfg: &ClientConfig, id: &str) -> Result<i32> {
    let client = Client::new(cfg)?;
    let job: Job = client
        .post(&format!("{}/rerun", job_path(id)), &serde_json::json!({}))
        .await?;
    match cfg.output {
        OutputFormat::Json => output::json(&job),
        OutputFormat::Table => outln!("{}", job.id),
    }
    Ok(0)
}

/// `drover retry`: queues a finished job again.
pub async fn retry(cfg: &ClientConfig, id: &str) -> Result<i32> {
    let client = Client::new(cfg)?;
    let job: Job = client
        .post(&format!("{}/retry", job_path(id)), &serde_json::json!({}))
        .await?;
    match cfg.output {
        OutputFormat::Json => output::json(&job),
        OutputFormat::Table => outln!("{}: queued again", job.id),
    }
    Ok(0)
}

/// `drover events`: the job's timeline.
pub async fn events(cfg: &ClientConfig, id: &str) -> Result<i32> {
    let client = Client::new(cfg)?;
    let ev: JobEvents = client.get(&format!("{}/events", job_path(id))).await?;
    if cfg.output == OutputFormat::Json {
        output::json(&ev);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = ev
        .events
        .iter()
        .map(|e| {
            vec![
                e.at.format("%Y-%m-%d %H:%M:%S%.3f").to_string(),
                e.kind.clone(),
                format!(
                    "{} → {}",
                    e.from_state
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into()),
                    e.to_state
                ),
                e.attempt.map(|a| a.to_string()).unwrap_or_default(),
                e.actor.clone(),
                e.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(
        &["AT", "EVENT", "STATE", "ATTEMPT", "ACTOR", "REASON"],
        &rows,
    );
    Ok(0)
}

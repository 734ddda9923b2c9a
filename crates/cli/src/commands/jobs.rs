//! Client commands about jobs: submit, status, ls, logs, cancel, retry, wait, events.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use drover_core::api::{Job, JobEvents, JobPage, LogPage, LogRecord, Stream};
use drover_core::spec::{DockerCommand, DockerSpec};
use drover_core::{Exec, JobState, Priority, SubmitRequest};
use futures::StreamExt;
use reqwest::Method;

use crate::client::Client;
use crate::config::{parse_duration, ClientConfig, OutputFormat};
use crate::error::{CliError, Result};
use crate::output;

fn parse_priority(s: &str) -> std::result::Result<Priority, String> {
    s.parse()
}

fn parse_kv(s: &str) -> std::result::Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} must look like KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_json(s: &str) -> std::result::Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not valid JSON: {e}"))
}

#[derive(clap::Args)]
pub struct SubmitArgs {
    /// A name shown in lists (default: the command line).
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    queue: Option<String>,
    /// low, normal, high, critical or an integer; higher runs first.
    #[arg(long, value_parser = parse_priority)]
    priority: Option<Priority>,
    /// Kill the job after this long, e.g. 30s, 10m.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Time between SIGTERM and SIGKILL when stopping it (default 10s).
    #[arg(long, value_parser = parse_duration)]
    grace: Option<Duration>,
    /// Attempts in all, the first included.
    #[arg(long)]
    attempts: Option<u32>,
    /// Do not start before this much time has passed.
    #[arg(long, value_parser = parse_duration)]
    delay: Option<Duration>,
    /// Environment variable for the job (repeatable).
    #[arg(long = "env", value_parser = parse_kv, value_name = "K=V")]
    env: Vec<(String, String)>,
    /// Like --env, but never shown by the API and masked in the log.
    #[arg(long = "secret", value_parser = parse_kv, value_name = "K=V")]
    secret: Vec<(String, String)>,
    /// Label an agent must have (repeatable).
    #[arg(long = "label", value_parser = parse_kv, value_name = "k=v")]
    label: Vec<(String, String)>,
    /// Free JSON metadata.
    #[arg(long, value_parser = parse_json)]
    metadata: Option<serde_json::Value>,
    /// Submitting again with the same key returns the same job.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Run the words as a program and its arguments, without a shell.
    #[arg(long, conflicts_with_all = ["script", "image"])]
    no_shell: bool,
    /// Send this script file; run it with --interpreter.
    #[arg(long, requires = "interpreter", conflicts_with = "image")]
    script: Option<PathBuf>,
    /// Interpreter for --script, e.g. python3, bash.
    #[arg(long)]
    interpreter: Option<String>,
    /// Run in a Docker container of this image; the words are its command.
    #[arg(long)]
    image: Option<String>,
    /// Wait for the job to end, showing its state; exit with its exit code.
    #[arg(long)]
    wait: bool,
    /// Stream the job's log until it ends; exit with its exit code.
    #[arg(long, conflicts_with = "wait")]
    follow: bool,
    /// The command.
    #[arg(last = true)]
    command: Vec<String>,
}

impl SubmitArgs {
    fn exec(&self) -> Result<Exec> {
        if let Some(path) = &self.script {
            let body = std::fs::read_to_string(path).map_err(|e| {
                CliError::Usage(format!("cannot read script {}: {e}", path.display()))
            })?;
            let interpreter = self.interpreter.clone().unwrap_or_default();
            return Ok(Exec::Script { interpreter, body });
        }
        if let Some(image) = &self.image {
            let command =
                (!self.command.is_empty()).then(|| DockerCommand::Argv(self.command.clone()));
            // Built through serde so fields added to the spec keep their defaults.
            let spec: DockerSpec =
                serde_json::from_value(serde_json::json!({ "image": image, "command": command }))
                    .map_err(|e| CliError::Other(format!("cannot build the docker spec: {e}")))?;
            return Ok(Exec::Docker(Box::new(spec)));
        }
        if self.command.is_empty() {
            return Err(CliError::Usage(
                "nothing to run: give the command after `--`, e.g. `drover submit -- echo hello`"
                    .into(),
            ));
        }
        if self.no_shell {
            return Ok(Exec::Process {
                argv: self.command.clone(),
            });
        }
        Ok(Exec::Shell {
            command: self.command.join(" "),
        })
    }

    fn request(&self) -> Result<SubmitRequest> {
        let map = |v: &[(String, String)]| v.iter().cloned().collect::<BTreeMap<_, _>>();
        let mut req = SubmitRequest::shell("");
        req.exec = self.exec()?;
        req.name = self.name.clone();
        req.queue = self.queue.clone();
        req.priority = self.priority;
        req.labels = map(&self.label);
        req.timeout_ms = self.timeout.map(|d| d.as_millis() as u64);
        req.grace_ms = self.grace.map(|d| d.as_millis() as u64);
        req.max_attempts = self.attempts;
        req.delay_ms = self.delay.map(|d| d.as_millis() as u64);
        req.env = map(&self.env);
        req.secrets = map(&self.secret);
        req.metadata = self.metadata.clone();
        req.idempotency_key = self.idempotency_key.clone();
        Ok(req)
    }
}

pub async fn submit(cfg: &ClientConfig, args: SubmitArgs) -> Result<i32> {
    let req = args.request()?;
    let client = Client::new(cfg)?;
    let job: Job = client.post("/v1/jobs", &req).await?;
    if args.follow {
        eprintln!("submitted {}", job.id);
        follow_logs(&client, &job.id, None, None).await?;
        let done = wait_done(&client, &job.id, false).await?;
        return Ok(report_end(cfg, &done));
    }
    if args.wait {
        if cfg.output == OutputFormat::Table {
            eprintln!("submitted {}", job.id);
        }
        let done = wait_done(&client, &job.id, output::stderr_is_tty()).await?;
        return Ok(report_end(cfg, &done));
    }
    match cfg.output {
        OutputFormat::Json => output::json(&job),
        OutputFormat::Table => println!("{}", job.id),
    }
    Ok(0)
}

/// The exit code that stands for how a job ended.
pub fn job_exit_code(job: &Job) -> i32 {
    match job.state {
        JobState::Succeeded => 0,
        JobState::TimedOut => 124,
        JobState::Canceled => 130,
        JobState::Failed => job.exit_code.filter(|c| (1..=255).contains(c)).unwrap_or(1),
        _ => 1,
    }
}

fn report_end(cfg: &ClientConfig, job: &Job) -> i32 {
    match cfg.output {
        OutputFormat::Json => output::json(job),
        OutputFormat::Table if job.state != JobState::Succeeded => {
            let why = job.error.clone().unwrap_or_default();
            eprintln!(
                "job {} {}{}",
                job.id,
                job.state,
                if why.is_empty() {
                    String::new()
                } else {
                    format!(": {why}")
                }
            );
        }
        OutputFormat::Table => {}
    }
    job_exit_code(job)
}

/// Polls the job until it ends; on a terminal, keeps one status line up to date.
async fn wait_done(client: &Client, id: &str, live: bool) -> Result<Job> {
    let mut failures = 0;
    loop {
        let job: Job = match client.get(&format!("/v1/jobs/{id}")).await {
            Ok(job) => {
                failures = 0;
                job
            }
            // A server restart is not the job's end: keep waiting a while.
            Err(CliError::Connect(msg)) if failures < 60 => {
                failures += 1;
                if live {
                    eprint!("\r\x1b[2K(server unreachable, retrying) {msg}");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if live {
            let since = job.started_at.unwrap_or(job.created_at);
            let pct = job.progress.as_ref().map_or(0.0, |p| p.percent);
            let msg = job
                .progress
                .as_ref()
                .map_or(String::new(), |p| p.message.clone());
            let state = output::state(job.state, true);
            eprint!(
                "\r\x1b[2K{state} {} {pct:>3.0}% {msg} {}",
                output::bar(pct),
                output::elapsed(chrono::Utc::now() - since)
            );
            let _ = std::io::stderr().flush();
        }
        if job.state.is_terminal() {
            if live {
                eprintln!();
            }
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn wait(cfg: &ClientConfig, id: &str) -> Result<i32> {
    let client = Client::new(cfg)?;
    let job = wait_done(&client, id, output::stderr_is_tty()).await?;
    Ok(report_end(cfg, &job))
}

pub async fn status(cfg: &ClientConfig, id: &str) -> Result<i32> {
    let client = Client::new(cfg)?;
    let job: Job = client.get(&format!("/v1/jobs/{id}")).await?;
    if cfg.output == OutputFormat::Json {
        output::json(&job);
        return Ok(0);
    }
    let color = output::stdout_is_tty();
    let t = |v: Option<chrono::DateTime<chrono::Utc>>| {
        v.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into())
    };
    println!("id:        {}", job.id);
    println!("name:      {}", job.name);
    println!(
        "state:     {}{}",
        output::state(job.state, color),
        if job.cancel_requested {
            " (cancel requested)"
        } else {
            ""
        }
    );
    println!("command:   {}", job.exec.display());
    println!("queue:     {} (priority {})", job.queue, job.priority);
    println!("attempts:  {} of {}", job.attempts_used, job.max_attempts);
    if let Some(p) = &job.progress {
        println!("progress:  {:.0}% {}", p.percent, p.message);
    }
    if let Some(code) = job.exit_code {
        println!("exit code: {code}");
    }
    if let Some(e) = &job.error {
        println!("error:     {e}");
    }
    if let Some(r) = &job.result {
        println!("result:    {r}");
    }
    println!("created:   {}", job.created_at.to_rfc3339());
    println!("started:   {}", t(job.started_at));
    println!("finished:  {}", t(job.finished_at));
    if !job.attempts.is_empty() {
        println!();
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

#[derive(clap::Args)]
pub struct LsArgs {
    /// Only jobs in this state (queued, leased, running, succeeded, failed, canceled, timed_out).
    #[arg(long, value_parser = |s: &str| s.parse::<JobState>())]
    state: Option<JobState>,
    #[arg(long)]
    queue: Option<String>,
    /// How many jobs to show (1-1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    limit: u32,
}

pub async fn ls(cfg: &ClientConfig, args: LsArgs) -> Result<i32> {
    let client = Client::new(cfg)?;
    let mut path = format!("/v1/jobs?limit={}", args.limit);
    if let Some(s) = args.state {
        path += &format!("&state={s}");
    }
    if let Some(q) = &args.queue {
        path += &format!("&queue={}", urlencode(q));
    }
    let page: JobPage = client.get(&path).await?;
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
    Ok(0)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(clap::Args)]
pub struct LogsArgs {
    job: String,
    /// Keep printing new lines until the job ends.
    #[arg(short, long)]
    follow: bool,
    /// Which attempt (default: the latest).
    #[arg(long)]
    attempt: Option<u32>,
    /// Only this stream.
    #[arg(long, value_parser = ["stdout", "stderr"])]
    stream: Option<String>,
}

fn print_record(r: &LogRecord, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("records serialize"));
        return;
    }
    match r.stream {
        Stream::Stdout => println!("{}", r.text),
        Stream::Stderr | Stream::System => eprintln!("{}", r.text),
    }
}

pub async fn logs(cfg: &ClientConfig, args: LogsArgs) -> Result<i32> {
    let client = Client::new(cfg)?;
    let json = cfg.output == OutputFormat::Json;
    if args.follow {
        follow_logs_as(
            &client,
            &args.job,
            args.attempt,
            args.stream.as_deref(),
            json,
        )
        .await?;
        return Ok(0);
    }
    let mut after = 0;
    loop {
        let mut path = format!("/v1/jobs/{}/logs?after={after}&limit=10000", args.job);
        if let Some(a) = args.attempt {
            path += &format!("&attempt={a}");
        }
        if let Some(s) = &args.stream {
            path += &format!("&stream={s}");
        }
        let page: LogPage = client.get(&path).await?;
        for r in &page.records {
            print_record(r, json);
        }
        if page.records.is_empty() || page.complete {
            return Ok(0);
        }
        after = page.last_seq;
    }
}

async fn follow_logs(
    client: &Client,
    id: &str,
    attempt: Option<u32>,
    stream: Option<&str>,
) -> Result<()> {
    follow_logs_as(client, id, attempt, stream, false).await
}

/// Streams the log over SSE until its `end` event; after a dropped connection it resumes
/// after the last `seq` printed, so no line is repeated or lost.
async fn follow_logs_as(
    client: &Client,
    id: &str,
    attempt: Option<u32>,
    stream: Option<&str>,
    json: bool,
) -> Result<()> {
    let mut after = 0u64;
    let mut attempt = attempt;
    let mut failures = 0;
    loop {
        let mut path = format!("/v1/jobs/{id}/logs/stream?after={after}");
        if let Some(a) = attempt {
            path += &format!("&attempt={a}");
        }
        if let Some(s) = stream {
            path += &format!("&stream={s}");
        }
        let resp = match client.send(client.request(Method::GET, &path)).await {
            Ok(r) => r,
            Err(CliError::Connect(msg)) if failures < 60 => {
                failures += 1;
                eprintln!("(log stream interrupted: {msg}; retrying)");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        failures = 0;
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        let mut ended = false;
        'stream: while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(pos) = buf.find("\n\n") {
                let event: String = buf.drain(..pos + 2).collect();
                let (mut kind, mut data) = ("message", String::new());
                for line in event.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        kind = if v.trim() == "end" {
                            "end"
                        } else if v.trim() == "record" {
                            "record"
                        } else {
                            "other"
                        };
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                match kind {
                    "record" => {
                        if let Ok(r) = serde_json::from_str::<LogRecord>(&data) {
                            if r.seq > after {
                                after = r.seq;
                                print_record(&r, json);
                            }
                        }
                    }
                    "end" => {
                        // The attempt the server followed; pin it so a resume cannot jump to a retry.
                        if let Ok(n) = data.trim().parse() {
                            attempt.get_or_insert(n);
                        }
                        ended = true;
                        break 'stream;
                    }
                    _ => {}
                }
            }
        }
        let _ = std::io::stdout().flush();
        if ended {
            return Ok(());
        }
        // The connection dropped before the end: resume after the last line printed.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn cancel(cfg: &ClientConfig, id: &str) -> Result<i32> {
    let client = Client::new(cfg)?;
    let job: Job = client
        .post(&format!("/v1/jobs/{id}/cancel"), &serde_json::json!({}))
        .await?;
    match cfg.output {
        OutputFormat::Json => output::json(&job),
        OutputFormat::Table if job.cancel_requested => {
            println!("{}: cancel requested; the agent is stopping it", job.id)
        }
        OutputFormat::Table => println!("{}: {}", job.id, job.state),
    }
    Ok(0)
}

pub async fn retry(cfg: &ClientConfig, id: &str) -> Result<i32> {
    let client = Client::new(cfg)?;
    let job: Job = client
        .post(&format!("/v1/jobs/{id}/retry"), &serde_json::json!({}))
        .await?;
    match cfg.output {
        OutputFormat::Json => output::json(&job),
        OutputFormat::Table => println!("{}: queued again", job.id),
    }
    Ok(0)
}

pub async fn events(cfg: &ClientConfig, id: &str) -> Result<i32> {
    let client = Client::new(cfg)?;
    let ev: JobEvents = client.get(&format!("/v1/jobs/{id}/events")).await?;
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

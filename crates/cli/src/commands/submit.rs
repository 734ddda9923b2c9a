//! `drover submit` (with `--wait` and `--follow`) and `drover wait`.

use crate::output::outln;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use drover_core::api::{Job, Progress, ProgressHistory};
use drover_core::backoff::Backoff;
use drover_core::files::{Input, InputSource};
use drover_core::group::{ArraySpec, Dependency, Group, GroupSubmit};
use drover_core::spec::{DockerCommand, DockerSpec};
use drover_core::template::TemplateSubmit;
use drover_core::{Exec, JobState, Priority, SubmitRequest};

use crate::client::{job_path, segment, Client};
use crate::commands::files;
use crate::commands::logs::{follow_job, Follow};
use crate::config::{parse_duration, parse_kv, parse_size, ClientConfig, OutputFormat};
use crate::error::{CliError, Result};
use crate::output;

/// `--gpus`: a count or `all`.
fn parse_gpus(s: &str) -> std::result::Result<serde_json::Value, String> {
    match s {
        "all" => Ok(serde_json::json!("all")),
        n => n
            .parse::<u64>()
            .map(serde_json::Value::from)
            .map_err(|_| format!("{s:?} is not a GPU count; use a number or `all`")),
    }
}

/// Parses `low`, `normal`, `high`, `critical` or an integer.
fn parse_priority(s: &str) -> std::result::Result<Priority, String> {
    s.parse()
}

fn parse_json(s: &str) -> std::result::Result<serde_json::Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not valid JSON: {e}"))
}

/// Flags of `drover submit`.
#[derive(clap::Args)]
pub struct SubmitArgs {
    /// A name shown in lists (default: the command line).
    #[arg(long)]
    name: Option<String>,
    #[arg(long)]
    queue: Option<String>,
    /// low, normal, high, critical or an integer; higher runs first.
    #[arg(long, value_parser = parse_priority, allow_hyphen_values = true)]
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
    /// First delay before a retry, doubling each time (default 1s; up to 5m).
    #[arg(long, value_parser = parse_duration)]
    backoff: Option<Duration>,
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
    /// Jobs sharing this key run at most --concurrency-limit at a time (one per GPU,
    /// per dataset …), whichever agents take them.
    #[arg(long)]
    concurrency_key: Option<String>,
    /// With --concurrency-key: how many of its jobs may run at once (default 1).
    #[arg(long, requires = "concurrency_key")]
    concurrency_limit: Option<u32>,
    /// Wait for this job to end first: a job id, key:IDEMPOTENCY_KEY or a group id (all
    /// its members), and how it must end: ok (the default), any or failed. Otherwise
    /// the job is canceled with dependency_failed (repeatable).
    #[arg(long, value_name = "JOB[:ok|any|failed]")]
    after: Vec<Dependency>,
    /// Where agents started with --job-log-dir also write the job's log, relative to
    /// that folder (default jobs/JOB/logs/JOB.log); in a template it may use
    /// {{ params.NAME }}.
    #[arg(long, value_name = "PATH")]
    log_path: Option<String>,
    /// Submit an array: one job per index, FIRST-LAST or a COUNT from 0, at most
    /// PARALLEL running at once (`0-99%10`). Each gets DROVER_ARRAY_INDEX; prints the
    /// group's id (see `drover group`).
    #[arg(long, value_name = "FIRST-LAST[%PARALLEL]", conflicts_with_all = ["template", "wait", "follow"])]
    pub(crate) array: Option<ArraySpec>,
    /// Run the words as a program and its arguments, without a shell.
    #[arg(long, conflicts_with_all = ["script", "image"])]
    no_shell: bool,
    /// Send this script file; run it with --interpreter.
    #[arg(long, requires = "interpreter", conflicts_with = "image")]
    script: Option<PathBuf>,
    /// Interpreter for --script, e.g. python3, bash.
    #[arg(long, requires = "script")]
    interpreter: Option<String>,
    /// Run in a Docker container of this image: one word after `--` runs in the image's
    /// shell (`sh -c`), several are the command's argv.
    #[arg(long)]
    image: Option<String>,
    /// With --image: mount HOST:CONTAINER[:ro] (repeatable).
    #[arg(
        long = "volume",
        value_name = "HOST:CONTAINER[:ro]",
        requires = "image"
    )]
    volumes: Vec<String>,
    /// With --image: GPUs to request, a count or `all` (falls back to CPU unless --gpus-required).
    #[arg(long, value_name = "N|all", value_parser = parse_gpus, requires = "image")]
    gpus: Option<serde_json::Value>,
    /// With --gpus: fail instead of running without GPUs.
    #[arg(long, requires = "gpus")]
    gpus_required: bool,
    /// With --image: the program to run instead of the image's entrypoint.
    #[arg(long, requires = "image")]
    entrypoint: Option<String>,
    /// With --image: CPU limit, e.g. 1.5.
    #[arg(long, requires = "image")]
    cpus: Option<f64>,
    /// With --image: memory limit, e.g. 512MiB or 2G.
    #[arg(long, value_parser = parse_size, requires = "image")]
    memory: Option<u64>,
    /// With --image: when to pull the image.
    #[arg(long, value_parser = ["if-not-present", "always", "never"], requires = "image")]
    pull: Option<String>,
    /// With --image: working directory inside the container.
    #[arg(long, requires = "image")]
    workdir: Option<String>,
    /// With --image: user (name or uid[:gid]) to run as.
    #[arg(long, requires = "image")]
    user: Option<String>,
    /// With --image: Docker network to attach to.
    #[arg(long, requires = "image")]
    network: Option<String>,
    /// Upload a local file and put it into the job's workspace, at PATH or under its own
    /// name (repeatable).
    #[arg(long = "input", value_name = "FILE[=PATH]")]
    inputs: Vec<String>,
    /// Have the agent download URL into the workspace at PATH, or under the URL's last
    /// part (repeatable; a URL with `=` in it needs `=PATH`).
    #[arg(long = "input-url", value_name = "URL[=PATH]")]
    input_urls: Vec<String>,
    /// Upload the files matching this pattern as artifacts after the job ends, whatever
    /// its outcome: * stays within a folder, ** crosses folders (repeatable).
    #[arg(long = "artifact", value_name = "PATTERN")]
    artifacts: Vec<String>,
    /// Make the job from this template on the server (see `drover template`); the
    /// template brings the command and everything but --name, --metadata,
    /// --idempotency-key, --secret and --param.
    #[arg(long, conflicts_with_all = [
        "queue", "priority", "timeout", "grace", "attempts", "backoff", "delay", "env", "label",
        "no_shell", "script", "image", "inputs", "input_urls", "artifacts", "concurrency_key",
        "log_path",
    ])]
    pub(crate) template: Option<String>,
    /// With --template: which version (default: the latest).
    #[arg(long, requires = "template")]
    template_version: Option<u32>,
    /// With --template: a parameter's value, NAME=VALUE (repeatable). In `drover template
    /// create`: a parameter's declaration, NAME[:TYPE][=DEFAULT], TYPE one of string
    /// (the default), integer, number, boolean.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub(crate) params: Vec<String>,
    /// Wait for the job to end, showing its state; exit with its exit code.
    #[arg(long)]
    pub(crate) wait: bool,
    /// Stream the job's log until it ends; exit with its exit code.
    #[arg(long, conflicts_with = "wait")]
    pub(crate) follow: bool,
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
            // One word is a command line for the image's shell, as without --image.
            let command = match self.command.as_slice() {
                [] => None,
                [line] => Some(DockerCommand::Line(line.clone())),
                argv => Some(DockerCommand::Argv(argv.to_vec())),
            };
            // Built through serde so fields added to the spec keep their defaults.
            let spec: DockerSpec = serde_json::from_value(serde_json::json!({
                "image": image,
                "command": command,
                "volumes": self.volumes,
                "gpus": self.gpus,
                "gpus_required": self.gpus_required,
                "entrypoint": self.entrypoint.as_ref().map(|e| vec![e.clone()]),
                "cpus": self.cpus,
                "memory": self.memory,
                "pull": self.pull,
                "workdir": self.workdir,
                "user": self.user,
                "network": self.network,
            }))
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

    pub(crate) fn request(&self) -> Result<SubmitRequest> {
        let map = |v: &[(String, String)]| v.iter().cloned().collect::<BTreeMap<_, _>>();
        let mut req = SubmitRequest::shell("");
        req.exec = self.exec()?;
        req.name = self.name.clone();
        req.queue = self.queue.clone();
        req.priority = self.priority;
        req.labels = map(&self.label);
        // Saturating: an absurd duration reaches the server, which says what the limit is.
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        req.timeout_ms = self.timeout.map(ms);
        req.grace_ms = self.grace.map(ms);
        req.max_attempts = self.attempts;
        req.delay_ms = self.delay.map(ms);
        req.backoff = self.backoff.map(|d| {
            let base_ms = ms(d).max(1);
            Backoff {
                base_ms,
                cap_ms: base_ms.max(300_000),
            }
        });
        req.env = map(&self.env);
        req.secrets = map(&self.secret);
        req.metadata = self.metadata.clone();
        req.idempotency_key = self.idempotency_key.clone();
        req.concurrency_key = self.concurrency_key.clone();
        req.concurrency_limit = self.concurrency_limit;
        req.after = self.after.clone();
        req.log_path = self.log_path.clone();
        for spec in &self.input_urls {
            req.inputs.push(url_input(spec)?);
        }
        req.artifacts = self.artifacts.clone();
        Ok(req)
    }

    /// With --template: what to send to `POST /v1/templates/{name}/jobs`.
    pub(crate) fn template_submit(&self) -> Result<TemplateSubmit> {
        if !self.command.is_empty() {
            return Err(CliError::Usage(
                "--template brings its command: give none after --".into(),
            ));
        }
        let mut params = BTreeMap::new();
        for p in &self.params {
            let (k, v) = parse_kv(p).map_err(|e| CliError::Usage(format!("--param {e}")))?;
            params.insert(k, serde_json::Value::String(v));
        }
        Ok(TemplateSubmit {
            params,
            version: self.template_version,
            name: self.name.clone(),
            metadata: self.metadata.clone(),
            idempotency_key: self.idempotency_key.clone(),
            secrets: self.secret.iter().cloned().collect(),
            after: self.after.clone(),
        })
    }

    /// Whether `--input` was given.
    pub(crate) fn has_local_inputs(&self) -> bool {
        !self.inputs.is_empty()
    }

    /// The local files of `--input`: each path and where it goes in the workspace.
    fn local_inputs(&self) -> Result<Vec<(PathBuf, String)>> {
        self.inputs
            .iter()
            .map(|spec| {
                let whole = PathBuf::from(spec);
                if whole.is_file() {
                    return Ok((whole.clone(), files::file_name(&whole)?));
                }
                match spec.split_once('=') {
                    Some((file, path)) if !path.is_empty() => {
                        Ok((PathBuf::from(file), path.to_string()))
                    }
                    _ => Err(CliError::Usage(format!(
                        "--input {spec}: no such file (give FILE or FILE=PATH)"
                    ))),
                }
            })
            .collect()
    }
}

/// `--input-url URL[=PATH]`: the path is what follows the last `=`, else the URL's
/// last part.
fn url_input(spec: &str) -> Result<Input> {
    let bad = || {
        CliError::Usage(format!(
            "--input-url {spec}: give an http(s) URL and where to put it, URL=PATH"
        ))
    };
    let (url, path) = match spec.rsplit_once('=') {
        Some((url, path)) if !path.contains("://") && !path.is_empty() => {
            (url.to_string(), path.to_string())
        }
        _ => {
            let last = spec
                .split(['?', '#'])
                .next()
                .and_then(|u| u.rsplit('/').next())
                .filter(|l| !l.is_empty() && !spec.ends_with("//"))
                .ok_or_else(bad)?;
            (spec.to_string(), last.to_string())
        }
    };
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(bad());
    }
    Ok(Input {
        path,
        from: InputSource::Url(url),
        sha256: None,
    })
}

/// `drover submit`: prints the job id (or the Job JSON); with `--wait`/`--follow` exits
/// like the job (see [`job_exit_code`]).
pub async fn submit(cfg: &ClientConfig, args: SubmitArgs) -> Result<i32> {
    let client = Client::new(cfg)?;
    let job: Job = match &args.template {
        Some(name) => {
            let body = args.template_submit()?;
            let path = format!("/v1/templates/{}/jobs", segment(name));
            client.post(&path, &body).await?
        }
        None => {
            let mut req = args.request()?;
            for (file, path) in args.local_inputs()? {
                let name = files::file_name(&file)?;
                let info = files::upload(&client, &file, &name).await?;
                req.inputs.push(Input {
                    path,
                    from: InputSource::File(info.id),
                    sha256: None,
                });
            }
            if let Some(array) = args.array {
                let group: Group = client
                    .post("/v1/groups", &GroupSubmit { job: req, array })
                    .await?;
                match cfg.output {
                    OutputFormat::Json => output::json(&group),
                    OutputFormat::Table => outln!("{}", group.id),
                }
                return Ok(0);
            }
            client.post("/v1/jobs", &req).await?
        }
    };
    if args.follow {
        let json = cfg.output == OutputFormat::Json;
        if !json {
            eprintln!("submitted {}", job.id);
        }
        let follow = Follow {
            job: &job.id,
            attempt: None,
            stream: None,
            json,
        };
        follow_job(&client, &follow).await?;
        let done = wait_done(&client, &job.id, false, false).await?;
        if json {
            // One JSON value per line: the records, then the job.
            outln!("{}", serde_json::to_string(&done).expect("jobs serialize"));
            return Ok(job_exit_code(&done));
        }
        return Ok(report_end(cfg, &done));
    }
    if args.wait {
        if cfg.output == OutputFormat::Table {
            eprintln!("submitted {}", job.id);
        }
        let done = wait_done(&client, &job.id, output::stderr_is_tty(), true).await?;
        return Ok(report_end(cfg, &done));
    }
    match cfg.output {
        OutputFormat::Json => output::json(&job),
        OutputFormat::Table => outln!("{}", job.id),
    }
    Ok(0)
}

/// The exit code that stands for how a job ended: 0 succeeded; failed: the job's own
/// exit code when it has one (1-255), else 1; 124 timed out; 130 canceled.
pub fn job_exit_code(job: &Job) -> i32 {
    match job.state {
        JobState::Succeeded => 0,
        JobState::TimedOut => 124,
        JobState::Canceled => 130,
        JobState::Failed => job.exit_code.filter(|c| (1..=255).contains(c)).unwrap_or(1),
        _ => 1,
    }
}

/// Prints how the job ended (why, when it did not succeed) and returns its exit code.
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
/// Waits for the job to end. `live` redraws a status line on stderr; `progress` prints
/// each progress update the job reports (from its history, so none is missed between
/// two reads) as a line on stderr.
async fn wait_done(client: &Client, id: &str, live: bool, progress: bool) -> Result<Job> {
    let mut failures = 0;
    let mut seen: Option<Progress> = None;
    let mut after: Option<String> = None;
    loop {
        let job: Job = match client.get(&job_path(id)).await {
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
        if progress && job.progress.is_some() && job.progress != seen {
            seen = job.progress.clone();
            let mut path = format!("{}/progress", job_path(id));
            if let Some(a) = &after {
                path += &format!("?after={a}");
            }
            let history: ProgressHistory = client.get(&path).await?;
            for p in &history.updates {
                if live {
                    eprint!("\r\x1b[2K");
                }
                eprintln!(
                    "progress: attempt {} {:>3.0}% {}",
                    p.attempt, p.percent, p.message
                );
                after = Some(format!("{}.{}", p.attempt, p.seq));
            }
        }
        if live {
            eprint!("\r\x1b[2K{}", output::status_line(&job, chrono::Utc::now()));
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

/// `drover wait`: exits like the job once it ends.
pub async fn wait(cfg: &ClientConfig, id: &str) -> Result<i32> {
    let client = Client::new(cfg)?;
    let job = wait_done(&client, id, output::stderr_is_tty(), true).await?;
    Ok(report_end(cfg, &job))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Submit {
        #[command(flatten)]
        args: SubmitArgs,
    }

    fn request(argv: &[&str]) -> Result<SubmitRequest> {
        let argv = std::iter::once("submit").chain(argv.iter().copied());
        Submit::try_parse_from(argv).unwrap().args.request()
    }

    #[test]
    fn the_words_after_dashes_are_one_shell_line() {
        let req = request(&[
            "--timeout",
            "30s",
            "--attempts",
            "3",
            "--env",
            "A=1=2",
            "--label",
            "gpu=a100",
            "--priority",
            "high",
            "--",
            "echo",
            "hi",
            "&&",
            "make",
            "test",
        ])
        .unwrap();
        match &req.exec {
            Exec::Shell { command } => assert_eq!(command, "echo hi && make test"),
            other => panic!("not a shell job: {other:?}"),
        }
        assert_eq!(req.timeout_ms, Some(30_000));
        assert_eq!(req.max_attempts, Some(3));
        assert_eq!(req.env.get("A").map(String::as_str), Some("1=2"));
        assert_eq!(req.labels.get("gpu").map(String::as_str), Some("a100"));
        assert!(req.priority.is_some());
    }

    #[test]
    fn no_shell_script_and_image_pick_the_executor() {
        let req = request(&["--no-shell", "--", "python3", "-c", "print(1)"]).unwrap();
        assert!(matches!(req.exec, Exec::Process { ref argv } if argv.len() == 3));
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("job.py");
        std::fs::write(&script, "print(42)\n").unwrap();
        let path = script.to_str().unwrap();
        let req = request(&["--script", path, "--interpreter", "python3"]).unwrap();
        assert!(
            matches!(req.exec, Exec::Script { ref interpreter, ref body } if interpreter == "python3" && body == "print(42)\n")
        );
        let req = request(&["--image", "busybox", "--", "echo", "hi"]).unwrap();
        assert!(matches!(req.exec, Exec::Docker(_)));
        let err = request(&[]).unwrap_err();
        assert_eq!(err.exit_code(), 2, "nothing to run: {err}");
    }

    /// Regression: `--priority -3` was taken for an unknown flag `-3`.
    #[test]
    fn negative_priorities_are_numbers() {
        let req = request(&["--priority", "-3", "--", "true"]).unwrap();
        assert_eq!(req.priority, Some(Priority(-3)));
    }

    /// Regression: `--image busybox -- 'echo hi; exit 5'` ran the line as a program name.
    #[test]
    fn containers_take_a_shell_line_or_argv_and_the_docker_flags() {
        let docker = |argv: &[&str]| match request(argv).unwrap().exec {
            Exec::Docker(spec) => *spec,
            other => panic!("not a docker job: {other:?}"),
        };
        let line = docker(&["--image", "busybox", "--", "echo hi; exit 5"]);
        assert_eq!(
            line.command,
            Some(DockerCommand::Line("echo hi; exit 5".into()))
        );
        let argv = docker(&["--image", "busybox", "--", "echo", "hi"]);
        assert_eq!(
            argv.command,
            Some(DockerCommand::Argv(vec!["echo".into(), "hi".into()]))
        );
        let full = docker(&[
            "--image",
            "trainer:1",
            "--volume",
            "/srv/data:/data:ro",
            "--volume",
            "/tmp:/scratch",
            "--gpus",
            "all",
            "--gpus-required",
            "--entrypoint",
            "/bin/train",
            "--cpus",
            "1.5",
            "--memory",
            "512MiB",
            "--pull",
            "never",
            "--workdir",
            "/work",
            "--user",
            "1000:1000",
            "--network",
            "none",
        ]);
        assert_eq!(full.volumes, ["/srv/data:/data:ro", "/tmp:/scratch"]);
        assert_eq!(full.gpus, Some(serde_json::json!("all")));
        assert!(full.gpus_required);
        assert_eq!(full.entrypoint, Some(vec!["/bin/train".to_string()]));
        assert_eq!((full.cpus, full.memory), (Some(1.5), Some(512 << 20)));
        assert_eq!(full.pull.as_deref(), Some("never"));
        assert_eq!(full.workdir.as_deref(), Some("/work"));
        assert_eq!(full.user.as_deref(), Some("1000:1000"));
        assert_eq!(full.network.as_deref(), Some("none"));
        assert_eq!(
            docker(&["--image", "x", "--gpus", "2"]).gpus,
            Some(serde_json::json!(2))
        );
        // Flags that mean nothing without their partner are usage errors.
        let parse = |argv: &[&str]| {
            Submit::try_parse_from(std::iter::once("submit").chain(argv.iter().copied())).is_err()
        };
        assert!(
            parse(&["--volume", "/a:/b", "--", "true"]),
            "--volume needs --image"
        );
        assert!(
            parse(&["--image", "x", "--gpus-required"]),
            "--gpus-required needs --gpus"
        );
        assert!(
            parse(&["--interpreter", "python3", "--", "true"]),
            "--interpreter needs --script"
        );
        assert!(
            parse(&["--image", "x", "--gpus", "some"]),
            "a GPU count or all"
        );
    }

    #[test]
    fn exit_codes_follow_the_job() {
        use crate::output::sample_job;
        assert_eq!(job_exit_code(&sample_job(JobState::Succeeded)), 0);
        assert_eq!(job_exit_code(&sample_job(JobState::TimedOut)), 124);
        assert_eq!(job_exit_code(&sample_job(JobState::Canceled)), 130);
        let mut failed = sample_job(JobState::Failed);
        assert_eq!(job_exit_code(&failed), 1, "failed without an exit code");
        failed.exit_code = Some(7);
        assert_eq!(job_exit_code(&failed), 7);
        failed.exit_code = Some(-9);
        assert_eq!(job_exit_code(&failed), 1, "killed by a signal");
    }
}

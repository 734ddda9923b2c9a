//! What a user submits: the job spec, its validation, and the normalised `ValidJob`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::backoff::Backoff;
use crate::files::{self, Input};
use crate::labels::Labels;

/// Longest job name, queue name, label or env key we accept.
pub const MAX_NAME_LEN: usize = 256;
/// Default grace period between SIGTERM and SIGKILL.
pub const DEFAULT_GRACE_MS: u64 = 10_000;

/// What to run. Tagged by `kind` on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Exec {
    /// A command line run with `bash -c` (`sh -c` where there is no bash).
    Shell { command: String },
    /// A program and its arguments, run without a shell.
    Process { argv: Vec<String> },
    /// A script body written to a file and run by `interpreter`.
    Script { interpreter: String, body: String },
    /// A container run through the Docker Engine API.
    Docker(Box<DockerSpec>),
    /// A Python function, `module:function`, called with JSON arguments by the agent's
    /// own runner (the SDK need not be installed): its JSON return value is the job's
    /// result; an exception fails the job, as `{"exception": {type, module, message,
    /// traceback}}` in its result and `Type: message` as its error.
    Python {
        /// `package.module:function` (or `module:Class.method`).
        function: String,
        #[serde(default)]
        #[schema(value_type = Vec<Object>)]
        args: Vec<serde_json::Value>,
        #[serde(default)]
        #[schema(value_type = Object)]
        kwargs: BTreeMap<String, serde_json::Value>,
        /// The interpreter, default `python3`.
        #[serde(default)]
        python: Option<String>,
        /// Folders put in front of `sys.path` (relative ones from the workspace).
        #[serde(default)]
        path: Vec<String>,
    },
}

/// Most bytes of a Python job's arguments, as JSON.
pub const MAX_PYTHON_ARGS_BYTES: usize = 1024 * 1024;

/// Whether `s` is `dotted.module:dotted.attribute`, each part a Python identifier.
pub fn is_python_target(s: &str) -> bool {
    let dotted = |p: &str| !p.is_empty() && p.split('.').all(is_identifier);
    matches!(s.split_once(':'), Some((m, f)) if dotted(m) && dotted(f))
}

/// Whether `s` is an ASCII Python identifier.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Exec {
    pub fn kind(&self) -> &'static str {
        match self {
            Exec::Shell { .. } => "shell",
            Exec::Process { .. } => "process",
            Exec::Script { .. } => "script",
            Exec::Docker(_) => "docker",
            Exec::Python { .. } => "python",
        }
    }

    /// A one-line rendering for headers and tables, argv shell-quoted so it can be
    /// pasted back into a shell.
    pub fn display(&self) -> String {
        match self {
            Exec::Shell { command } => command.clone(),
            Exec::Process { argv } => quote_words(argv),
            Exec::Script { interpreter, .. } => format!("{interpreter} <script>"),
            Exec::Docker(d) => match &d.command {
                None => format!("docker {}", d.image),
                Some(DockerCommand::Line(l)) => format!("docker {} {}", d.image, shell_quote(l)),
                Some(DockerCommand::Argv(a)) => format!("docker {} {}", d.image, quote_words(a)),
            },
            Exec::Python {
                function,
                args,
                kwargs,
                ..
            } => {
                let shown: Vec<String> = args
                    .iter()
                    .map(|a| a.to_string())
                    .chain(kwargs.iter().map(|(k, v)| format!("{k}={v}")))
                    .collect();
                let call = format!("{function}({})", shown.join(", "));
                match call.char_indices().nth(200) {
                    Some((at, _)) => format!("{}…)", &call[..at]),
                    None => call,
                }
            }
        }
    }

    /// The lines a job's log starts with: `$ ` and the command, as a CI runner shows it;
    /// a script's body in full as a here-document.
    pub fn log_header(&self) -> Vec<String> {
        match self {
            Exec::Script { interpreter, body } => {
                // A delimiter that no line of the body is.
                let mut delim = "EOF".to_string();
                while body.lines().any(|l| l == delim) {
                    delim.push('_');
                }
                let mut lines = vec![format!("$ {interpreter} <<'{delim}'")];
                lines.extend(body.lines().map(str::to_string));
                lines.push(delim);
                lines
            }
            other => vec![format!("$ {}", other.display())],
        }
    }

    /// Every label an agent needs to run a job of this kind with `labels`: its own and
    /// those the kind implies (`docker=true` for a container job).
    pub fn required_labels(&self, labels: &Labels) -> Labels {
        let mut required = labels.clone();
        required.extend(self.implied_labels());
        required
    }

    /// Labels an agent must have to run this kind, beyond the job's own.
    pub fn implied_labels(&self) -> Labels {
        let mut l = Labels::new();
        if let Exec::Docker(_) = self {
            l.insert("docker".into(), "true".into());
        }
        l
    }
}

/// `word` as a POSIX shell reads it back: unchanged when it holds only characters no
/// shell treats specially, else in single quotes (a `'` inside becomes `'\''`).
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Words shell-quoted and joined by spaces.
pub fn quote_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A container job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DockerSpec {
    pub image: String,
    /// A string run by the image's shell, or an argv list.
    #[serde(default)]
    pub command: Option<DockerCommand>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    /// `host:container[:ro]`.
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Bytes.
    #[serde(default)]
    pub memory: Option<u64>,
    /// A count, or `"all"`.
    #[serde(default)]
    pub gpus: Option<serde_json::Value>,
    /// Fail rather than run without GPUs when the engine cannot provide them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gpus_required: bool,
    /// `if-not-present` (default), `always` or `never`.
    #[serde(default)]
    pub pull: Option<String>,
}

/// A container command: one string for the image's shell, or argv.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum DockerCommand {
    Line(String),
    Argv(Vec<String>),
}

/// Job priority: higher runs first, FIFO within one priority. On the wire a name
/// (`low`, `normal`, `high`, `critical`) or an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, ToSchema)]
#[serde(transparent)]
pub struct Priority(pub i32);

impl Priority {
    pub const LOW: Priority = Priority(-100);
    pub const NORMAL: Priority = Priority(0);
    pub const HIGH: Priority = Priority(100);
    pub const CRITICAL: Priority = Priority(1000);
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "low" => Ok(Priority::LOW),
            "normal" => Ok(Priority::NORMAL),
            "high" => Ok(Priority::HIGH),
            "critical" => Ok(Priority::CRITICAL),
            other => other.parse::<i32>().map(Priority).map_err(|_| {
                format!("priority {other:?} is not low, normal, high, critical or an integer")
            }),
        }
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(i) => i32::try_from(i)
                .map(Priority)
                .map_err(|_| serde::de::Error::custom("priority is out of range")),
            Raw::Name(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// `POST /v1/jobs`: everything a user can say about a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub exec: Exec,
    #[serde(default)]
    pub name: Option<String>,
    /// Defaults to `default`.
    #[serde(default)]
    pub queue: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub priority: Option<Priority>,
    /// Labels an agent must have (`key: value`).
    #[serde(default)]
    pub labels: Labels,
    /// Kill the job after this long (ms). None: no limit.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Time between SIGTERM and SIGKILL (ms). Default 10 s.
    #[serde(default)]
    pub grace_ms: Option<u64>,
    /// Attempts in all, first one included. Default 1.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub backoff: Option<Backoff>,
    /// Do not start before this time.
    #[serde(default)]
    pub run_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Do not start before now + this many ms (instead of `run_at`).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Like `env`, but never shown by the read API and masked in logs.
    #[serde(default)]
    pub secrets: BTreeMap<String, String>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// The same key returns the same job instead of a second one.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Files put into the workspace before the command starts.
    #[serde(default)]
    pub inputs: Vec<Input>,
    /// Glob patterns, relative to the workspace, of files uploaded after the job ends
    /// (`results/**`, `screenshots/*.png`), whatever its outcome.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// Jobs sharing this key run at most `concurrency_limit` at a time (one per GPU, per
    /// dataset, per external API …), whichever agents take them.
    #[serde(default)]
    pub concurrency_key: Option<String>,
    /// With `concurrency_key`: how many of its jobs may be leased or running at once
    /// (1 to 10,000; default 1). Each job carries its own: keep them equal per key.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10000)]
    pub concurrency_limit: Option<u32>,
    /// Jobs this one waits for (state `waiting`) before it is queued; when one ends in a
    /// way its condition refuses, this job is canceled with `dependency_failed`.
    #[serde(default)]
    pub after: Vec<crate::group::Dependency>,
    /// Where the agent also writes the job's log, relative to its `--job-log-dir`
    /// (`jobs/{{ params.job_id }}/run.log` in a template); without it, the agent's
    /// default `jobs/JOB/logs/JOB.log`.
    #[serde(default)]
    pub log_path: Option<String>,
}

/// Most jobs of one concurrency key that may run at once.
pub const MAX_CONCURRENCY_LIMIT: u32 = 10_000;

impl SubmitRequest {
    /// A shell job with every other field at its default.
    pub fn shell(command: impl Into<String>) -> Self {
        SubmitRequest {
            exec: Exec::Shell {
                command: command.into(),
            },
            name: None,
            queue: None,
            priority: None,
            labels: Labels::new(),
            timeout_ms: None,
            grace_ms: None,
            max_attempts: None,
            backoff: None,
            run_at: None,
            delay_ms: None,
            env: BTreeMap::new(),
            secrets: BTreeMap::new(),
            metadata: None,
            idempotency_key: None,
            inputs: Vec::new(),
            artifacts: Vec::new(),
            concurrency_key: None,
            concurrency_limit: None,
            after: Vec::new(),
            log_path: None,
        }
    }
}

/// One problem with a submitted spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// Dotted path to the field, e.g. `exec.argv`.
    pub field: String,
    pub message: String,
}

/// A spec that passed validation, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJob {
    pub exec: Exec,
    pub name: String,
    pub queue: String,
    pub priority: Priority,
    pub labels: Labels,
    pub timeout_ms: Option<u64>,
    pub grace_ms: u64,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub run_at: chrono::DateTime<chrono::Utc>,
    pub env: BTreeMap<String, String>,
    pub secrets: BTreeMap<String, String>,
    pub metadata: serde_json::Value,
    pub idempotency_key: Option<String>,
    pub inputs: Vec<Input>,
    pub artifacts: Vec<String>,
    /// Set by the server for a job made from a template.
    pub template: Option<crate::template::TemplateRef>,
    /// Concurrency key and its limit.
    pub concurrency: Option<(String, u32)>,
    /// Jobs it waits for, as the user named them (resolved by the store).
    pub after: Vec<crate::group::Dependency>,
    /// Set by the server for an array member: its group's id and its index.
    pub group: Option<(String, u32)>,
    pub log_path: Option<String>,
}

fn check_name(errs: &mut Vec<FieldError>, field: &str, value: &str) {
    if value.is_empty() {
        errs.push(err(field, "must not be empty"));
    } else if value.len() > MAX_NAME_LEN {
        errs.push(err(field, &format!("is longer than {MAX_NAME_LEN} bytes")));
    }
}

fn err(field: &str, message: &str) -> FieldError {
    FieldError::new(field, message)
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error for a field inside `prefix` (`job.`, `jobs[3].`).
    pub fn within(self, prefix: &str) -> FieldError {
        FieldError {
            field: format!("{prefix}{}", self.field),
            message: self.message,
        }
    }
}

/// Longest single argument or `NAME=value` the kernel passes to a program
/// (`MAX_ARG_STRLEN`); a longer one makes exec fail with E2BIG.
pub const MAX_ARG_BYTES: usize = 128 * 1024 - 1;
/// Most bytes of env and secrets in all, leaving room under the kernel's total limit for
/// the agent's host environment and the arguments.
pub const MAX_ENV_BYTES: usize = 1024 * 1024;
/// Shortest secret value: masking a shorter one would mangle every line that happens
/// to contain those letters.
pub const MIN_SECRET_LEN: usize = 4;
/// Longest delay or latest `run_at`: ten years from now.
pub const MAX_DELAY_MS: u64 = 10 * 365 * 86_400_000;
/// Longest job timeout: a year.
pub const MAX_TIMEOUT_MS: u64 = 365 * 86_400_000;
/// Longest grace period between SIGTERM and SIGKILL: a day.
pub const MAX_GRACE_MS: u64 = 86_400_000;
/// Longest retry backoff: thirty days.
pub const MAX_BACKOFF_MS: u64 = 30 * 86_400_000;

/// A string the kernel will take as one argument or variable: no NUL, not too long.
fn check_arg(errs: &mut Vec<FieldError>, field: &str, value: &str) {
    if value.contains('\0') {
        errs.push(err(field, "must not contain a NUL byte"));
    } else if value.len() > MAX_ARG_BYTES {
        errs.push(err(
            field,
            &format!("is {} bytes; programs cannot receive more than {MAX_ARG_BYTES} in one argument or variable (use a script job or an input file)", value.len()),
        ));
    }
}

fn check_ms(errs: &mut Vec<FieldError>, field: &str, value: Option<u64>, max: u64, what: &str) {
    if value.is_some_and(|v| v > max) {
        errs.push(err(field, &format!("must be at most {max} ({what})")));
    }
}

/// Whether `name` is an environment variable name: letters, digits and `_`, not
/// starting with a digit.
pub(crate) fn is_var_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_env_keys(errs: &mut Vec<FieldError>, field: &str, map: &BTreeMap<String, String>) {
    for (key, value) in map {
        // The program receives `KEY=value` as one string.
        check_arg(errs, &format!("{field}.{key}"), &format!("{key}={value}"));
    }
    for key in map.keys() {
        if !is_var_name(key) {
            errs.push(err(
                &format!("{field}.{key}"),
                "must be a variable name (letters, digits, _; not starting with a digit)",
            ));
        }
    }
}

impl SubmitRequest {
    /// Checks every field and reports all problems at once.
    pub fn validate(self, now: chrono::DateTime<chrono::Utc>) -> Result<ValidJob, Vec<FieldError>> {
        let mut errs = Vec::new();
        match &self.exec {
            Exec::Shell { command } => {
                if command.trim().is_empty() {
                    errs.push(err("exec.command", "must not be empty"));
                }
                check_arg(&mut errs, "exec.command", command);
            }
            Exec::Process { argv } => {
                if argv.first().is_none_or(|p| p.is_empty()) {
                    errs.push(err("exec.argv", "must name a program as its first item"));
                }
                for (i, a) in argv.iter().enumerate() {
                    check_arg(&mut errs, &format!("exec.argv[{i}]"), a);
                }
            }
            Exec::Script { interpreter, body } => {
                if interpreter.trim().is_empty() {
                    errs.push(err("exec.interpreter", "must not be empty"));
                }
                check_arg(&mut errs, "exec.interpreter", interpreter);
                if body.is_empty() {
                    errs.push(err("exec.body", "must not be empty"));
                }
            }
            Exec::Docker(d) => {
                if d.image.trim().is_empty() {
                    errs.push(err("exec.image", "must not be empty"));
                }
                for (i, v) in d.volumes.iter().enumerate() {
                    let parts: Vec<&str> = v.split(':').collect();
                    let ok = matches!(parts.len(), 2 | 3)
                        && parts[..2].iter().all(|p| !p.is_empty())
                        && (parts.len() == 2 || matches!(parts[2], "ro" | "rw"));
                    if !ok {
                        errs.push(err(
                            &format!("exec.volumes[{i}]"),
                            "must look like host:container or host:container:ro",
                        ));
                    }
                }
                if let Some(p) = &d.pull {
                    if !matches!(p.as_str(), "if-not-present" | "always" | "never") {
                        errs.push(err("exec.pull", "must be if-not-present, always or never"));
                    }
                }
                match &d.gpus {
                    None => {}
                    Some(serde_json::Value::Number(n)) if n.as_u64().is_some() => {}
                    Some(serde_json::Value::String(s)) if s == "all" => {}
                    Some(_) => errs.push(err("exec.gpus", "must be a count or \"all\"")),
                }
                if d.cpus.is_some_and(|c| c.is_nan() || c <= 0.0) {
                    errs.push(err("exec.cpus", "must be greater than 0"));
                }
            }
            Exec::Python {
                function,
                args,
                kwargs,
                python,
                path,
            } => {
                if !is_python_target(function) {
                    errs.push(err(
                        "exec.function",
                        "must be module:function, e.g. pkg.mod:fn (dotted Python identifiers)",
                    ));
                }
                for k in kwargs.keys().filter(|k| !is_identifier(k)) {
                    errs.push(err(
                        &format!("exec.kwargs.{k}"),
                        "is not a Python identifier",
                    ));
                }
                let bytes = serde_json::to_string(args).map_or(0, |s| s.len())
                    + serde_json::to_string(kwargs).map_or(0, |s| s.len());
                if bytes > MAX_PYTHON_ARGS_BYTES {
                    errs.push(err(
                        "exec.args",
                        &format!("args and kwargs take {bytes} bytes as JSON; at most {MAX_PYTHON_ARGS_BYTES} (pass large data as an input file)"),
                    ));
                }
                if let Some(p) = python {
                    if p.trim().is_empty() {
                        errs.push(err(
                            "exec.python",
                            "must not be empty (leave it out for python3)",
                        ));
                    }
                    check_arg(&mut errs, "exec.python", p);
                }
                for (i, p) in path.iter().enumerate() {
                    if p.is_empty() {
                        errs.push(err(&format!("exec.path[{i}]"), "must not be empty"));
                    }
                    check_arg(&mut errs, &format!("exec.path[{i}]"), p);
                }
            }
        }
        if let Some(name) = &self.name {
            check_name(&mut errs, "name", name);
        }
        let queue = self.queue.clone().unwrap_or_else(|| "default".to_string());
        check_name(&mut errs, "queue", &queue);
        for (k, v) in &self.labels {
            check_name(&mut errs, &format!("labels.{k}"), k);
            if v.len() > MAX_NAME_LEN {
                errs.push(err(&format!("labels.{k}"), "value is too long"));
            }
        }
        if self.timeout_ms == Some(0) {
            errs.push(err(
                "timeout_ms",
                "must be greater than 0 (leave it out for no limit)",
            ));
        }
        check_ms(
            &mut errs,
            "timeout_ms",
            self.timeout_ms,
            MAX_TIMEOUT_MS,
            "a year",
        );
        check_ms(&mut errs, "grace_ms", self.grace_ms, MAX_GRACE_MS, "a day");
        check_ms(
            &mut errs,
            "delay_ms",
            self.delay_ms,
            MAX_DELAY_MS,
            "ten years",
        );
        let latest = now + chrono::Duration::milliseconds(MAX_DELAY_MS as i64);
        if self.run_at.is_some_and(|t| t > latest || t.timestamp() < 0) {
            errs.push(err(
                "run_at",
                "must be after 1970 and at most ten years from now",
            ));
        }
        let env_bytes: usize = self
            .env
            .iter()
            .chain(&self.secrets)
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum();
        if env_bytes > MAX_ENV_BYTES {
            errs.push(err(
                "env",
                &format!("env and secrets take {env_bytes} bytes; at most {MAX_ENV_BYTES} fit in a program's environment (put large values in a file)"),
            ));
        }
        let max_attempts = self.max_attempts.unwrap_or(1);
        if max_attempts == 0 || max_attempts > 100 {
            errs.push(err("max_attempts", "must be between 1 and 100"));
        }
        let backoff = self.backoff.unwrap_or_default();
        if backoff.base_ms == 0 || backoff.cap_ms < backoff.base_ms {
            errs.push(err("backoff", "needs base_ms > 0 and cap_ms >= base_ms"));
        }
        check_ms(
            &mut errs,
            "backoff.cap_ms",
            Some(backoff.cap_ms),
            MAX_BACKOFF_MS,
            "thirty days",
        );
        if self.run_at.is_some() && self.delay_ms.is_some() {
            errs.push(err("delay_ms", "give either run_at or delay_ms, not both"));
        }
        check_env_keys(&mut errs, "env", &self.env);
        check_env_keys(&mut errs, "secrets", &self.secrets);
        for (k, v) in &self.secrets {
            if v.len() < MIN_SECRET_LEN {
                errs.push(err(
                    &format!("secrets.{k}"),
                    &format!("is shorter than {MIN_SECRET_LEN} characters, too short to be masked in logs (pass it with env if it need not be hidden)"),
                ));
            }
        }
        if let Some(key) = &self.idempotency_key {
            check_name(&mut errs, "idempotency_key", key);
        }
        if let Some(key) = &self.concurrency_key {
            check_name(&mut errs, "concurrency_key", key);
        }
        match (&self.concurrency_key, self.concurrency_limit) {
            (None, Some(_)) => errs.push(err(
                "concurrency_limit",
                "needs a concurrency_key: the jobs it limits",
            )),
            (_, Some(n)) if n == 0 || n > MAX_CONCURRENCY_LIMIT => errs.push(err(
                "concurrency_limit",
                &format!("must be between 1 and {MAX_CONCURRENCY_LIMIT}"),
            )),
            _ => {}
        }
        files::check(&mut errs, &self.inputs, &self.artifacts);
        if let Some(path) = &self.log_path {
            if let Err(e) = files::check_workspace_path(path) {
                errs.push(err(
                    "log_path",
                    &format!("{e} (it is relative to the agent's --job-log-dir)"),
                ));
            }
        }
        crate::group::check_after(&mut errs, &self.after);
        if !errs.is_empty() {
            return Err(errs);
        }
        let run_at = match (self.run_at, self.delay_ms) {
            (Some(t), _) => t,
            (None, Some(ms)) => now + chrono::Duration::milliseconds(ms as i64),
            (None, None) => now,
        };
        let name = self.name.unwrap_or_else(|| {
            let line = self.exec.display();
            line.chars().take(80).collect()
        });
        Ok(ValidJob {
            exec: self.exec,
            name,
            queue,
            priority: self.priority.unwrap_or_default(),
            labels: self.labels,
            timeout_ms: self.timeout_ms,
            grace_ms: self.grace_ms.unwrap_or(DEFAULT_GRACE_MS),
            max_attempts,
            backoff,
            run_at,
            env: self.env,
            secrets: self.secrets,
            metadata: self.metadata.unwrap_or(serde_json::Value::Null),
            idempotency_key: self.idempotency_key,
            inputs: self.inputs,
            artifacts: self.artifacts,
            template: None,
            concurrency: self
                .concurrency_key
                .map(|k| (k, self.concurrency_limit.unwrap_or(1))),
            after: self.after,
            group: None,
            log_path: self.log_path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_calls_name_a_function_and_take_json_arguments() {
        let now = chrono::Utc::now();
        for ok in ["m:f", "pkg.mod:fn", "a_1.b:C.method"] {
            assert!(is_python_target(ok), "{ok}");
        }
        for bad in [
            "", "m", "m:", ":f", "m:f:g", "1m:f", "m.:f", "m:f-g", "m :f",
        ] {
            assert!(!is_python_target(bad), "{bad}");
        }
        let call = |v: serde_json::Value| -> SubmitRequest {
            serde_json::from_value(serde_json::json!({"exec": v})).unwrap()
        };
        let good = call(
            serde_json::json!({"kind": "python", "function": "pkg.mod:add", "args": [1, "two"], "kwargs": {"x": [3]}}),
        );
        assert_eq!(good.exec.display(), r#"pkg.mod:add(1, "two", x=[3])"#);
        assert!(good.validate(now).is_ok());
        let errs = call(serde_json::json!({"kind": "python", "function": "add", "kwargs": {"not ok": 1}, "python": " ", "path": [""]}))
            .validate(now)
            .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "exec.function",
                "exec.kwargs.not ok",
                "exec.python",
                "exec.path[0]"
            ]
        );
        let unknown = serde_json::from_value::<SubmitRequest>(
            serde_json::json!({"exec": {"kind": "python", "function": "m:f", "argz": []}}),
        );
        assert!(unknown.is_err());
    }

    #[test]
    fn numbers_and_sizes_past_what_the_system_can_hold_are_refused_together() {
        let now = chrono::Utc::now();
        let mut req = SubmitRequest::shell("true");
        req.delay_ms = Some(u64::MAX);
        req.timeout_ms = Some(u64::MAX);
        req.grace_ms = Some(u64::MAX);
        req.backoff = Some(Backoff {
            base_ms: 1,
            cap_ms: u64::MAX,
        });
        req.env.insert("BIG".into(), "x".repeat(MAX_ARG_BYTES));
        req.env.insert("NUL".into(), "a\0b".into());
        req.secrets.insert("S".into(), "e".into());
        let fields: Vec<String> = req
            .validate(now)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        for f in [
            "delay_ms",
            "timeout_ms",
            "grace_ms",
            "backoff.cap_ms",
            "env.BIG",
            "env.NUL",
        ] {
            assert!(fields.contains(&f.to_string()), "{f} in {fields:?}");
        }
        let mut many = SubmitRequest::shell("true");
        for i in 0..20 {
            many.secrets.insert(format!("S{i}"), "y".repeat(60_000));
        }
        let errs = many.validate(now).unwrap_err();
        assert_eq!(errs[0].field, "env", "{errs:?}");
        let mut far = SubmitRequest::shell("x".repeat(MAX_ARG_BYTES + 1));
        far.run_at = Some(now + chrono::Duration::days(20 * 365));
        let fields: Vec<String> = far
            .validate(now)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["exec.command", "run_at"]);
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn argv_is_shown_as_a_shell_reads_it_back() {
        let argv: Vec<String> = ["python3", "-c", "print('hi there')", "a b", "", "x=1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            quote_words(&argv),
            r#"python3 -c 'print('\''hi there'\'')' 'a b' '' x=1"#
        );
        let out = std::process::Command::new("sh")
            .args(["-c", &format!("printf '%s\\n' {}", quote_words(&argv))])
            .output()
            .unwrap();
        let back: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(back, argv, "sh reads the words back unchanged");
    }

    #[test]
    fn a_scripts_log_header_is_a_here_document_of_its_body() {
        let exec = Exec::Script {
            interpreter: "python3".into(),
            body: "print(1)\nEOF\nprint(2)\n".into(),
        };
        assert_eq!(
            exec.log_header(),
            ["$ python3 <<'EOF_'", "print(1)", "EOF", "print(2)", "EOF_"]
        );
        let exec = Exec::Process {
            argv: vec!["echo".into(), "a b".into()],
        };
        assert_eq!(exec.log_header(), ["$ echo 'a b'"]);
    }

    #[test]
    fn priority_accepts_names_and_integers() {
        let p: Priority = serde_json::from_str("\"high\"").unwrap();
        assert_eq!(p, Priority::HIGH);
        let p: Priority = serde_json::from_str("7").unwrap();
        assert_eq!(p, Priority(7));
        assert!(serde_json::from_str::<Priority>("\"urgent\"").is_err());
        assert!(Priority::CRITICAL > Priority::HIGH && Priority::NORMAL > Priority::LOW);
    }

    #[test]
    fn defaults_are_filled_in() {
        let job = SubmitRequest::shell("echo hi").validate(now()).unwrap();
        assert_eq!(job.queue, "default");
        assert_eq!(job.name, "echo hi");
        assert_eq!(job.max_attempts, 1);
        assert_eq!(job.grace_ms, DEFAULT_GRACE_MS);
        assert_eq!(job.run_at, now());
    }

    #[test]
    fn delay_moves_run_at() {
        let mut req = SubmitRequest::shell("true");
        req.delay_ms = Some(5_000);
        let job = req.validate(now()).unwrap();
        assert_eq!(job.run_at, now() + chrono::Duration::seconds(5));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut req = SubmitRequest::shell("  ");
        req.queue = Some(String::new());
        req.max_attempts = Some(0);
        req.timeout_ms = Some(0);
        req.env.insert("1BAD".into(), "x".into());
        let errs = req.validate(now()).unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "exec.command",
                "queue",
                "timeout_ms",
                "max_attempts",
                "env.1BAD"
            ]
        );
    }

    #[test]
    fn unknown_fields_and_kinds_are_refused() {
        let bad = r#"{"exec":{"kind":"shell","command":"x"},"colour":"red"}"#;
        assert!(serde_json::from_str::<SubmitRequest>(bad).is_err());
        let bad = r#"{"exec":{"kind":"lambda","command":"x"}}"#;
        assert!(serde_json::from_str::<SubmitRequest>(bad).is_err());
    }

    #[test]
    fn docker_volumes_are_checked() {
        let req: SubmitRequest = serde_json::from_value(serde_json::json!({
            "exec": {"kind": "docker", "image": "busybox", "volumes": ["/a:/b:ro", "nocolon", "/a:/b:rx"]}
        }))
        .unwrap();
        let errs = req.validate(now()).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].field, "exec.volumes[1]");
    }
}

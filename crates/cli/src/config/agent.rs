//! `drover agent`'s flags and their resolution into a `drover_agent::AgentConfig`.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use drover_agent::AgentConfig;

use super::{
    duration_from, parse_duration, parse_size, size_from, AgentFile, Env, FileConfig, LogConfig,
};
use crate::error::{CliError, Result};

/// Flags of `drover agent`; each also comes from env and the `[agent]` table.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AgentArgs {
    /// TOML config file (its [agent] table) [env: DROVER_CONFIG].
    #[arg(long, env = "DROVER_CONFIG", hide_env = true)]
    pub config: Option<PathBuf>,
    /// Server URL, e.g. http://queue:7070 [env: DROVER_SERVER].
    #[arg(long, env = "DROVER_SERVER", hide_env = true)]
    pub server: Option<String>,
    /// Join (or one-time bootstrap) token [env: DROVER_TOKEN].
    #[arg(long, env = "DROVER_TOKEN", hide_env = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Name shown in `drover agents` [default: host name] [env: DROVER_AGENT_NAME].
    #[arg(long, env = "DROVER_AGENT_NAME", hide_env = true)]
    pub name: Option<String>,
    /// Labels jobs can require, k=v,k2=v2 (repeatable) [env: DROVER_LABELS].
    #[arg(long, env = "DROVER_LABELS", hide_env = true, value_name = "K=V,...")]
    pub labels: Vec<String>,
    /// Queues to take jobs from, q1,q2 [default: default] [env: DROVER_QUEUES].
    #[arg(long, env = "DROVER_QUEUES", hide_env = true, value_delimiter = ',')]
    pub queues: Vec<String>,
    /// Most jobs at once [default: CPU count] [env: DROVER_SLOTS].
    #[arg(long, env = "DROVER_SLOTS", hide_env = true, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub slots: Option<u32>,
    /// Workspaces and log spools [default: ./.drover-agent] [env: DROVER_WORK_DIR].
    #[arg(long, env = "DROVER_WORK_DIR", hide_env = true)]
    pub work_dir: Option<PathBuf>,
    /// How long jobs may finish after SIGTERM before they are canceled [default: 5m] [env: DROVER_SHUTDOWN_TIMEOUT].
    #[arg(long, env = "DROVER_SHUTDOWN_TIMEOUT", hide_env = true, value_parser = parse_duration)]
    pub shutdown_timeout: Option<Duration>,
    /// Exit once the current job(s) finished [env: DROVER_EXIT_AFTER_JOB].
    #[arg(long, env = "DROVER_EXIT_AFTER_JOB", hide_env = true, value_parser = BoolishValueParser::new())]
    pub exit_after_job: bool,
    /// Keep each job's workspace after it ends [env: DROVER_KEEP_WORKSPACES].
    #[arg(long, env = "DROVER_KEEP_WORKSPACES", hide_env = true, value_parser = BoolishValueParser::new())]
    pub keep_workspaces: bool,
    /// Keep docker jobs' containers after they end, for debugging [env: DROVER_KEEP_CONTAINERS].
    #[arg(long, env = "DROVER_KEEP_CONTAINERS", hide_env = true, value_parser = BoolishValueParser::new())]
    pub keep_containers: bool,
    /// Host path mounted into every docker job, HOST:CONTAINER[:ro] (repeatable) [env: DROVER_DOCKER_MOUNTS, comma-separated].
    #[arg(
        long = "docker-mount",
        value_name = "HOST:CONTAINER[:ro]",
        env = "DROVER_DOCKER_MOUNTS",
        hide_env = true,
        value_delimiter = ','
    )]
    pub docker_mounts: Vec<String>,
    /// Bound of the on-disk log spool while the server is unreachable [default: 1GiB] [env: DROVER_SPOOL_LIMIT].
    #[arg(long, env = "DROVER_SPOOL_LIMIT", hide_env = true, value_parser = parse_size)]
    pub spool_limit: Option<u64>,
    /// Most output one job may write before it is stopped [default: 4GiB] [env: DROVER_OUTPUT_CAP].
    #[arg(long, env = "DROVER_OUTPUT_CAP", hide_env = true, value_parser = parse_size)]
    pub output_cap: Option<u64>,
    /// CA certificate (PEM) to trust for an https:// server [env: DROVER_CA_FILE].
    #[arg(long, env = "DROVER_CA_FILE", hide_env = true)]
    pub ca_file: Option<PathBuf>,
    /// Also write each job's log to DIR/jobs/JOB/logs/JOB.log, e.g. on a shared folder [env: DROVER_JOB_LOG_DIR].
    #[arg(long, env = "DROVER_JOB_LOG_DIR", hide_env = true, value_name = "DIR")]
    pub job_log_dir: Option<PathBuf>,
    /// Only these host environment variables reach jobs, NAME or PREFIX* (repeatable) [default: all but DROVER_*] [env: DROVER_JOB_ENV_ALLOW, comma-separated].
    #[arg(
        long,
        env = "DROVER_JOB_ENV_ALLOW",
        hide_env = true,
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub job_env_allow: Vec<String>,
    /// Longest a URL input may take to download [default: 10m] [env: DROVER_INPUT_TIMEOUT].
    #[arg(long, env = "DROVER_INPUT_TIMEOUT", hide_env = true, value_parser = parse_duration)]
    pub input_timeout: Option<Duration>,
    /// Largest input (upload or URL) put into a workspace [default: 10GiB] [env: DROVER_INPUT_MAX_SIZE].
    #[arg(long, env = "DROVER_INPUT_MAX_SIZE", hide_env = true, value_parser = parse_size)]
    pub input_max_size: Option<u64>,
    /// Log format [default: text] [env: DROVER_LOG_FORMAT].
    #[arg(long, env = "DROVER_LOG_FORMAT", hide_env = true, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Tracing filter, e.g. info or drover_agent=debug [default: RUST_LOG, else info].
    #[arg(long)]
    pub log_level: Option<String>,
}

/// Everything `drover agent` needs to start.
#[derive(Debug, Clone)]
pub struct AgentSetup {
    /// The agent's configuration.
    pub config: AgentConfig,
    /// How to log.
    pub log: LogConfig,
}

impl AgentSetup {
    /// Merges file < env < flags.
    pub fn resolve(args: &AgentArgs, env: &Env) -> Result<AgentSetup> {
        let file = FileConfig::load(args.config.as_deref())?;
        resolve(args, &file.agent, env)
    }
}

fn resolve(args: &AgentArgs, f: &AgentFile, env: &Env) -> Result<AgentSetup> {
    let server = args
        .server
        .clone()
        .or_else(|| f.server.clone())
        .ok_or_else(|| {
            CliError::Usage("no server: pass --server URL or set DROVER_SERVER".into())
        })?;
    // The agent library takes the list as one string, as the flag gives it.
    let server = super::server_urls(&server)?.join(",");
    let token = args.token.clone().or_else(|| f.token.clone()).ok_or_else(|| {
        CliError::Usage(
            "no join token: pass --token or set DROVER_TOKEN (`drover server` prints one at its first start)"
                .into(),
        )
    })?;
    let work_dir = args
        .work_dir
        .clone()
        .or_else(|| f.work_dir.clone())
        .unwrap_or_else(|| PathBuf::from(".drover-agent"));
    let mut cfg = AgentConfig::new(server.trim_end_matches('/'), token, work_dir);
    if let Some(n) = args.name.clone().or_else(|| f.name.clone()) {
        cfg.name = n;
    }
    let labels = pick(&args.labels, &f.labels);
    cfg.labels = drover_core::labels::parse(&labels).map_err(CliError::Usage)?;
    cfg.queues = pick(&args.queues, &f.queues);
    if let Some(s) = args.slots.or(f.slots) {
        if s == 0 {
            return Err(CliError::Usage("slots must be at least 1".into()));
        }
        cfg.slots = s;
    }
    let timeout = f.shutdown_timeout.as_deref();
    if let Some(t) = duration_from(args.shutdown_timeout, timeout, "shutdown_timeout")? {
        cfg.shutdown_timeout = t;
    }
    cfg.exit_after_job = args.exit_after_job;
    cfg.keep_workspaces = args.keep_workspaces || f.keep_workspaces.unwrap_or(false);
    cfg.keep_containers = args.keep_containers || f.keep_containers.unwrap_or(false);
    cfg.docker_mounts = pick(&args.docker_mounts, &f.docker_mounts);
    cfg.docker_socket = env.docker_socket()?;
    cfg.ca_file = args.ca_file.clone().or_else(|| f.ca_file.clone());
    cfg.job_log_dir = args.job_log_dir.clone().or_else(|| f.job_log_dir.clone());
    let allow = pick(&args.job_env_allow, &f.job_env_allow);
    cfg.job_env = drover_agent::job_env(env.vars.iter().cloned(), &allow);
    cfg.watchdog = env.watchdog();
    if let Some(n) = size_from(args.spool_limit, f.spool_limit.as_deref(), "spool_limit")? {
        cfg.spool_limit_bytes = n;
    }
    if let Some(n) = size_from(args.output_cap, f.output_cap.as_deref(), "output_cap")? {
        cfg.output_cap_bytes = n;
    }
    let input_timeout = f.input_timeout.as_deref();
    if let Some(t) = duration_from(args.input_timeout, input_timeout, "input_timeout")? {
        cfg.input_timeout = t;
    }
    let input_max = f.input_max_size.as_deref();
    if let Some(n) = size_from(args.input_max_size, input_max, "input_max_size")? {
        cfg.input_max_bytes = n;
    }
    let format = args.log_format.as_deref().or(f.log_format.as_deref());
    if let Some(other) = format.filter(|f| !matches!(*f, "text" | "json")) {
        return Err(CliError::Usage(format!(
            "log_format = {other:?} in the config file: use \"text\" or \"json\""
        )));
    }
    let level = args.log_level.as_deref().or(f.log_level.as_deref());
    Ok(AgentSetup {
        config: cfg,
        log: LogConfig::resolve(format, level, env, "info"),
    })
}

/// Flag values when any were given, else the file's.
fn pick(flags: &[String], file: &Option<Vec<String>>) -> Vec<String> {
    if flags.is_empty() {
        file.clone().unwrap_or_default()
    } else {
        flags.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(toml_text: &str) -> AgentFile {
        toml::from_str::<FileConfig>(toml_text).unwrap().agent
    }

    #[test]
    fn flags_beat_the_file() {
        let f = file(
            "[agent]\nserver = \"http://q:7070/\"\ntoken = \"drj_file\"\nlabels = [\"gpu=a100\", \"zone=lab\"]\nqueues = [\"gpu\"]\nslots = 4\nshutdown_timeout = \"1m\"\nspool_limit = \"64MiB\"\n",
        );
        let setup = resolve(&AgentArgs::default(), &f, &Env::default()).unwrap();
        let c = &setup.config;
        assert_eq!(c.server, "http://q:7070");
        assert_eq!(c.token, "drj_file");
        assert_eq!(c.labels.get("gpu").map(String::as_str), Some("a100"));
        assert_eq!(c.queues, ["gpu"]);
        assert_eq!(c.slots, 4);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(60));
        assert_eq!(c.spool_limit_bytes, 64 << 20);

        let args = AgentArgs {
            token: Some("drj_flag".into()),
            labels: vec!["os=linux,arch=arm64".into()],
            slots: Some(2),
            shutdown_timeout: Some(Duration::from_secs(5)),
            exit_after_job: true,
            ca_file: Some("/etc/ca.pem".into()),
            ..AgentArgs::default()
        };
        let c = resolve(&args, &f, &Env::default()).unwrap().config;
        assert_eq!(c.token, "drj_flag");
        assert_eq!(c.labels.len(), 2);
        assert_eq!(c.labels.get("arch").map(String::as_str), Some("arm64"));
        assert_eq!(c.slots, 2);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
        assert!(c.exit_after_job);
        assert_eq!(c.ca_file, Some(PathBuf::from("/etc/ca.pem")));
    }

    #[test]
    fn missing_or_bad_values_are_usage_errors() {
        let no_server = resolve(
            &AgentArgs::default(),
            &AgentFile::default(),
            &Env::default(),
        );
        assert!(no_server.unwrap_err().to_string().contains("--server"));
        for text in [
            "[agent]\nserver = \"http://q\"\n",
            "[agent]\nserver = \"q:7070\"\ntoken = \"t\"\n",
            "[agent]\nserver = \"http://q\"\ntoken = \"t\"\nlabels = [\"gpu\"]\n",
            "[agent]\nserver = \"http://q\"\ntoken = \"t\"\nslots = 0\n",
            "[agent]\nserver = \"http://q\"\ntoken = \"t\"\nshutdown_timeout = \"later\"\n",
        ] {
            let err = resolve(&AgentArgs::default(), &file(text), &Env::default()).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{text}: {err}");
        }
    }

    #[test]
    fn docker_host_names_the_engine_socket() {
        let f = file("[agent]\nserver = \"http://q\"\ntoken = \"t\"\n");
        let env = Env {
            docker_host: Some("unix:///tmp/d.sock".into()),
            ..Env::default()
        };
        let c = resolve(&AgentArgs::default(), &f, &env).unwrap().config;
        assert_eq!(c.docker_socket, Some(PathBuf::from("/tmp/d.sock")));
    }
}

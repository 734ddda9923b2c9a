//! Configuration: config file < environment < flags, resolved once at start-up into
//! `drover_server::ServerConfig`, `drover_agent::AgentConfig` or a [`ClientConfig`].
//!
//! This is the only module that reads the environment: the `DROVER_*` variables through
//! the clap `env` attributes of the argument structs declared in its submodules, and
//! `RUST_LOG`, `DOCKER_HOST` and the context directory through [`Env`].

mod agent;
mod client;
mod provider;
mod server;
mod up;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};

pub use agent::{AgentArgs, AgentSetup};
pub use client::{write_context, ClientArgs, ClientConfig, Context, OutputFormat};
pub use server::{ServerArgs, ServerSetup};
pub use up::{UpArgs, UpSetup};

/// The environment variables drover reads besides the `DROVER_*` flag variables,
/// captured once so that resolution itself is pure and testable.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `RUST_LOG`: a tracing filter, overridden by `--log-level`.
    pub rust_log: Option<String>,
    /// `DOCKER_HOST` (only `unix://PATH` is supported): the agents' Docker engine.
    pub docker_host: Option<String>,
    /// `DROVER_CONFIG_DIR`: where the client context lives.
    pub config_dir: Option<PathBuf>,
    /// `XDG_CONFIG_HOME`.
    pub xdg_config_home: Option<PathBuf>,
    /// `HOME`.
    pub home: Option<PathBuf>,
    /// The whole environment, from which an agent's jobs get theirs (less `DROVER_*`).
    pub vars: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// This binary, which agents start again as their watchdog.
    pub exe: Option<PathBuf>,
}

impl Env {
    /// A variable of the captured environment, if set and not empty.
    pub fn var(&self, key: &str) -> Option<String> {
        self.vars
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.to_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }

    /// How an agent starts its watchdog: this binary's hidden `agent-watchdog` command.
    pub fn watchdog(&self) -> Option<Vec<std::ffi::OsString>> {
        let exe = self.exe.clone()?;
        Some(vec![exe.into(), "agent-watchdog".into()])
    }

    /// Reads the variables from the process environment.
    pub fn capture() -> Env {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let path = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Env {
            rust_log: var("RUST_LOG"),
            docker_host: var("DOCKER_HOST"),
            config_dir: path("DROVER_CONFIG_DIR"),
            xdg_config_home: path("XDG_CONFIG_HOME"),
            home: path("HOME"),
            vars: std::env::vars_os().collect(),
            exe: std::env::current_exe().ok(),
        }
    }

    /// The directory of the client context: `$DROVER_CONFIG_DIR`, else
    /// `$XDG_CONFIG_HOME/drover`, else `~/.config/drover`.
    pub fn context_dir(&self) -> PathBuf {
        if let Some(dir) = &self.config_dir {
            return dir.clone();
        }
        if let Some(dir) = &self.xdg_config_home {
            return dir.join("drover");
        }
        let home = self.home.clone().unwrap_or_else(|| PathBuf::from("."));
        home.join(".config").join("drover")
    }

    /// The Docker engine socket from `DOCKER_HOST=unix://PATH`; other schemes are refused.
    pub fn docker_socket(&self) -> Result<Option<PathBuf>> {
        let Some(host) = &self.docker_host else {
            return Ok(None);
        };
        match host.strip_prefix("unix://") {
            Some(path) => Ok(Some(PathBuf::from(path))),
            None => Err(CliError::Usage(format!(
                "DOCKER_HOST={host:?} is not supported: agents talk to Docker over a unix:// socket"
            ))),
        }
    }
}

/// How the long-running roles log: format and tracing filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Lines as JSON objects instead of text.
    pub json: bool,
    /// A tracing filter such as `info` or `drover_server=debug,info`.
    pub filter: String,
}

impl LogConfig {
    /// `--log-level` beats `RUST_LOG`, which beats `default_level`.
    pub fn resolve(format: Option<&str>, level: Option<&str>, env: &Env, default: &str) -> Self {
        LogConfig {
            json: format == Some("json"),
            filter: level
                .map(str::to_string)
                .or_else(|| env.rust_log.clone())
                .unwrap_or_else(|| default.to_string()),
        }
    }
}

/// The TOML config file for `drover server` and `drover agent` (see drover.example.toml).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The `[server]` table.
    #[serde(default)]
    pub server: ServerFile,
    /// The `[agent]` table.
    #[serde(default)]
    pub agent: AgentFile,
    /// `[[provider]]` tables: providers of agents on demand (server only).
    #[serde(default)]
    pub provider: Vec<provider::ProviderFile>,
}

/// The `[server]` table of the config file; every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Data directory.
    pub data: Option<PathBuf>,
    /// PostgreSQL URL.
    pub database: Option<String>,
    /// Lease time-to-live, e.g. `30s`.
    pub lease_ttl: Option<String>,
    /// Serve /metrics without a token.
    pub public_metrics: Option<bool>,
    /// PEM certificate for HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM key for HTTPS.
    pub tls_key: Option<PathBuf>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// A tracing filter, e.g. `info`.
    pub log_level: Option<String>,
    /// `s3://bucket/prefix` for files, artifacts and finished jobs' logs.
    pub object_store: Option<String>,
    /// The object store's endpoint (stores other than AWS).
    pub object_store_endpoint: Option<String>,
    /// The object store's region.
    pub object_store_region: Option<String>,
    /// Address the bucket in the URL's path.
    pub object_store_path_style: Option<bool>,
    /// The object store's access key (else `AWS_ACCESS_KEY_ID`).
    pub object_store_access_key_id: Option<String>,
    /// The object store's secret key (else `AWS_SECRET_ACCESS_KEY`).
    pub object_store_secret_access_key: Option<String>,
    /// Largest upload, e.g. `10GiB`.
    pub max_file_size: Option<String>,
    /// Most artifacts per attempt.
    pub artifact_max_files: Option<u32>,
    /// Most bytes of artifacts per attempt, e.g. `10GiB`.
    pub artifact_max_size: Option<String>,
    /// How long ended jobs keep files, artifacts and logs, e.g. `30d`.
    pub retain: Option<String>,
    /// Forget agents not seen for this long, e.g. `24h`.
    pub prune_agents_after: Option<String>,
    /// The key file that seals job secrets (the same for every server on one database).
    pub secrets_key_file: Option<PathBuf>,
    /// Most jobs of a queue leased or running at once, e.g. `{ gpu = 2 }`.
    #[serde(default)]
    pub queue_limits: std::collections::BTreeMap<String, u32>,
}

/// The `[agent]` table of the config file; every key is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// Server URL.
    pub server: Option<String>,
    /// Join or bootstrap token.
    pub token: Option<String>,
    /// Agent name.
    pub name: Option<String>,
    /// Labels, `k=v` each.
    pub labels: Option<Vec<String>>,
    /// Queues to take jobs from.
    pub queues: Option<Vec<String>>,
    /// Jobs at once.
    pub slots: Option<u32>,
    /// Workspaces and spools.
    pub work_dir: Option<PathBuf>,
    /// How long jobs may finish after SIGTERM, e.g. `5m`.
    pub shutdown_timeout: Option<String>,
    /// Keep workspaces after jobs end.
    pub keep_workspaces: Option<bool>,
    /// Bound of the on-disk log spool, e.g. `1GiB`.
    pub spool_limit: Option<String>,
    /// Most output one job may write, e.g. `4GiB`.
    pub output_cap: Option<String>,
    /// Host paths mounted into every docker job, `HOST:CONTAINER[:ro]`.
    pub docker_mounts: Option<Vec<String>>,
    /// Keep docker jobs' containers after they end.
    pub keep_containers: Option<bool>,
    /// A PEM CA certificate to trust for an https:// server.
    pub ca_file: Option<PathBuf>,
    /// Also write each job's log to `DIR/jobs/JOB/logs/JOB.log`.
    pub job_log_dir: Option<PathBuf>,
    /// Host environment variables jobs may see (`NAME` or `PREFIX*`); none means all
    /// but drover's own `DROVER_*`.
    pub job_env_allow: Option<Vec<String>>,
    /// Longest a URL input may take to download, e.g. `10m`.
    pub input_timeout: Option<String>,
    /// Largest input put into a workspace, e.g. `10GiB`.
    pub input_max_size: Option<String>,
    /// `text` or `json`.
    pub log_format: Option<String>,
    /// A tracing filter, e.g. `info`.
    pub log_level: Option<String>,
}

impl FileConfig {
    /// Reads and checks the file; no path means an empty config.
    pub fn load(path: Option<&Path>) -> Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text).map_err(|e| {
            CliError::Usage(format!(
                "config file {} is invalid: {}",
                path.display(),
                e.to_string().trim()
            ))
        })
    }
}

/// Tokens a server creates on its first start, kept (mode 0600) in DATA/tokens.toml so
/// a restart accepts the same ones. The database holds only their hashes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LocalTokens {
    /// Admin-scoped API token.
    pub admin: String,
    /// Join token agents register with.
    pub join: String,
}

impl LocalTokens {
    /// The file the tokens of a data directory live in.
    pub fn path(data: &Path) -> PathBuf {
        data.join("tokens.toml")
    }

    /// Loads DATA/tokens.toml, creating it on first start. Returns the tokens and
    /// whether they were just created.
    pub fn load_or_create(data: &Path) -> Result<(LocalTokens, bool)> {
        let path = Self::path(data);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let t = toml::from_str(&text).map_err(|e| {
                    CliError::Other(format!(
                        "{} is damaged ({}); remove it to make new tokens",
                        path.display(),
                        e.to_string().trim()
                    ))
                })?;
                return Ok((t, false));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(CliError::Other(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        }
        std::fs::create_dir_all(data).map_err(|e| {
            CliError::Other(format!(
                "cannot create data directory {}: {e}",
                data.display()
            ))
        })?;
        let t = LocalTokens {
            admin: random_token("drc_"),
            join: random_token("drj_"),
        };
        write_private(&path, &toml::to_string(&t).expect("tokens serialize"))?;
        Ok((t, true))
    }
}

fn random_token(prefix: &str) -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::thread_rng().gen();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// Writes a file only its owner can read and write (tokens live in it).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |e: std::io::Error| CliError::Other(format!("cannot write {}: {e}", path.display()));
    // Written beside it and renamed into place, so that a reader sees the old file or the
    // whole new one: a `drover submit` started together with `drover up` reads the
    // context the moment it appears, and an empty one sent it to the default server.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // A leftover file keeps its mode on open; make sure it is private.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(text.as_bytes())?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(err)
}

/// Parses `KEY=VALUE` (the value may be empty or contain `=`).
pub fn parse_kv(s: &str) -> std::result::Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} must look like KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// Parses `30s`, `5m`, `1h30m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 30s, 5m, 1h30m"))
}

/// Parses a size: bytes, or a number with K, M, G (powers of 1024; `KiB`, `MB` … alike).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let bad = || format!("{s:?} is not a size; use e.g. 512MiB, 4G or a number of bytes");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Applies a size from a flag or, failing that, the config file.
fn size_from(flag: Option<u64>, file: Option<&str>, key: &str) -> Result<Option<u64>> {
    match (flag, file) {
        (Some(n), _) => Ok(Some(n)),
        (None, Some(s)) => parse_size(s)
            .map(Some)
            .map_err(|e| CliError::Usage(format!("{key} in the config file: {e}"))),
        (None, None) => Ok(None),
    }
}

/// Checks one server URL or several, comma-separated (servers on one database; clients
/// and agents go on with the next when one cannot be reached); returns them without
/// trailing slashes.
pub fn server_urls(list: &str) -> Result<Vec<String>> {
    let urls: Vec<&str> = list
        .split(',')
        .map(|u| u.trim().trim_end_matches('/'))
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        return Err(CliError::Usage("no server URL given".into()));
    }
    for u in &urls {
        if !u.starts_with("http://") && !u.starts_with("https://") {
            return Err(CliError::Usage(format!(
                "server URL {u:?} must start with http:// or https://"
            )));
        }
    }
    Ok(urls.into_iter().map(str::to_string).collect())
}

/// Applies a duration from a flag or, failing that, the config file.
fn duration_from(
    flag: Option<Duration>,
    file: Option<&str>,
    key: &str,
) -> Result<Option<Duration>> {
    match (flag, file) {
        (Some(d), _) => Ok(Some(d)),
        (None, Some(s)) => parse_duration(s)
            .map(Some)
            .map_err(|e| CliError::Usage(format!("{key} in the config file: {e}"))),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("drover.example.toml");
        let cfg = FileConfig::load(Some(&path)).unwrap();
        assert_eq!(cfg.server.listen.as_deref(), Some("127.0.0.1:7070"));
        assert_eq!(cfg.agent.slots, Some(4));
        assert!(parse_duration(cfg.server.lease_ttl.as_deref().unwrap()).is_ok());
        let providers = provider::resolve(&cfg.provider).unwrap();
        assert_eq!(providers[0].name, "burst");
        assert_eq!(
            parse_size(cfg.agent.spool_limit.as_deref().unwrap()),
            Ok(1 << 30)
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nlisten = \"x\"\ncolour = 1\n").unwrap();
        let err = FileConfig::load(Some(&path)).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("xyz").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn log_level_flag_beats_rust_log_which_beats_the_default() {
        let env = Env {
            rust_log: Some("debug".into()),
            ..Env::default()
        };
        assert_eq!(
            LogConfig::resolve(None, Some("warn"), &env, "info").filter,
            "warn"
        );
        assert_eq!(LogConfig::resolve(None, None, &env, "info").filter, "debug");
        let plain = LogConfig::resolve(Some("json"), None, &Env::default(), "info");
        assert_eq!(
            plain,
            LogConfig {
                json: true,
                filter: "info".into()
            }
        );
    }

    #[test]
    fn context_dir_prefers_drover_config_dir_then_xdg_then_home() {
        let mut env = Env {
            home: Some("/home/u".into()),
            ..Env::default()
        };
        assert_eq!(env.context_dir(), Path::new("/home/u/.config/drover"));
        env.xdg_config_home = Some("/xdg".into());
        assert_eq!(env.context_dir(), Path::new("/xdg/drover"));
        env.config_dir = Some("/ctx".into());
        assert_eq!(env.context_dir(), Path::new("/ctx"));
    }

    #[test]
    fn docker_host_must_be_a_unix_socket() {
        let mut env = Env::default();
        assert_eq!(env.docker_socket().unwrap(), None);
        env.docker_host = Some("unix:///run/user/1/docker.sock".into());
        assert_eq!(
            env.docker_socket().unwrap(),
            Some(PathBuf::from("/run/user/1/docker.sock"))
        );
        env.docker_host = Some("tcp://10.0.0.1:2375".into());
        assert!(env.docker_socket().is_err());
    }

    #[test]
    fn local_tokens_are_created_once_private_and_then_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (first, new) = LocalTokens::load_or_create(dir.path()).unwrap();
        assert!(new);
        assert!(first.admin.starts_with("drc_") && first.join.starts_with("drj_"));
        let mode = std::fs::metadata(LocalTokens::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, new) = LocalTokens::load_or_create(dir.path()).unwrap();
        assert!(!new);
        assert_eq!(again, first);
    }
}

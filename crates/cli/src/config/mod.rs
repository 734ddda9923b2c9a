//! Configuration: file < environment < flags, resolved once. The only module that reads
//! the environment (through clap's `env` attributes declared here, and the context path).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{CliError, Result};

/// Where the client finds the server and its token: flags, env, then the context file.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientArgs {
    /// Server URL [env: DROVER_SERVER] (default: the context `drover up` wrote, else http://127.0.0.1:7070).
    #[arg(long, global = true, env = "DROVER_SERVER", hide_env = true)]
    pub server: Option<String>,
    /// API token [env: DROVER_TOKEN] (default: the context `drover up` wrote).
    #[arg(
        long,
        global = true,
        env = "DROVER_TOKEN",
        hide_env = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for an https:// server [env: DROVER_CA_FILE].
    #[arg(long, global = true, env = "DROVER_CA_FILE", hide_env = true)]
    pub ca_file: Option<PathBuf>,
    /// `table` for people, `json` for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputFormat {
    #[default]
    Table,
    Json,
}

/// The client context `drover up` writes, so local commands need no flags.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub server: String,
    pub token: String,
}

/// The directory of the client context: `$DROVER_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/drover`, else `~/.config/drover`.
pub fn context_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DROVER_CONFIG_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        return PathBuf::from(dir).join("drover");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".config").join("drover")
}

pub fn read_context() -> Option<Context> {
    let text = std::fs::read_to_string(context_dir().join("context.toml")).ok()?;
    toml::from_str(&text).ok()
}

pub fn write_context(ctx: &Context) -> Result<PathBuf> {
    let dir = context_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::Other(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join("context.toml");
    write_private(&path, &toml::to_string(ctx).expect("context serializes"))?;
    Ok(path)
}

/// Writes a file only its owner can read (tokens live in it).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| CliError::Other(format!("cannot write {}: {e}", path.display())))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// A resolved client configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub server: String,
    pub token: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub output: OutputFormat,
}

impl ClientArgs {
    pub fn resolve(&self) -> ClientConfig {
        let ctx = read_context();
        let server = self
            .server
            .clone()
            .or_else(|| ctx.as_ref().map(|c| c.server.clone()))
            .unwrap_or_else(|| "http://127.0.0.1:7070".to_string());
        // A context token only belongs to the context's server.
        let token = self
            .token
            .clone()
            .or_else(|| ctx.filter(|c| c.server == server).map(|c| c.token));
        ClientConfig {
            server: server.trim_end_matches('/').to_string(),
            token,
            ca_file: self.ca_file.clone(),
            output: self.output,
        }
    }
}

/// The TOML config file for `drover server` and `drover agent` (see drover.example.toml).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerFile,
    #[serde(default)]
    pub agent: AgentFile,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub database: Option<String>,
    pub lease_ttl: Option<String>,
    pub public_metrics: Option<bool>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub log_format: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    pub server: Option<String>,
    pub token: Option<String>,
    pub name: Option<String>,
    pub labels: Option<Vec<String>>,
    pub queues: Option<Vec<String>>,
    pub slots: Option<u32>,
    pub work_dir: Option<PathBuf>,
    pub shutdown_timeout: Option<String>,
    pub keep_workspaces: Option<bool>,
}

impl FileConfig {
    pub fn load(path: Option<&Path>) -> Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text)
            .map_err(|e| CliError::Usage(format!("config file {} is invalid: {e}", path.display())))
    }
}

/// Parses `30s`, `5m`, `1h30m`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is not a duration; use e.g. 30s, 5m, 1h30m"))
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
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[server]\nlisten = \"x\"\ncolour = 1\n").unwrap();
        let err = FileConfig::load(Some(&path)).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("xyz").is_err());
    }
}

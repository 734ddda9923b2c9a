//! The client's configuration: `--server`/`DROVER_SERVER`, `--token`/`DROVER_TOKEN`, else
//! the context `drover up` wrote; and the output format.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{write_private, Env};
use crate::error::{CliError, Result};

/// The server `drover` talks to when nothing else says.
const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

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
    /// `table` for people, `json` (the API's JSON) for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// How client commands print their results.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// Aligned tables and plain lines, states coloured on a terminal.
    #[default]
    Table,
    /// The API's JSON, unchanged.
    Json,
}

/// The client context `drover up` writes, so local commands need no flags.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// Server URL.
    pub server: String,
    /// Admin token for that server.
    pub token: String,
}

fn read_context(env: &Env) -> Option<Context> {
    let text = std::fs::read_to_string(env.context_dir().join("context.toml")).ok()?;
    toml::from_str(&text).ok()
}

/// Writes the context (mode 0600) into `dir` and returns its path.
pub fn write_context(dir: &Path, ctx: &Context) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CliError::Other(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join("context.toml");
    write_private(&path, &toml::to_string(ctx).expect("context serializes"))?;
    Ok(path)
}

/// A resolved client configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Server base URL without a trailing slash.
    pub server: String,
    /// Bearer token, if any was found.
    pub token: Option<String>,
    /// Extra CA certificate to trust.
    pub ca_file: Option<PathBuf>,
    /// Table or JSON.
    pub output: OutputFormat,
    /// The server came from a context written moments ago, by a `drover up` that may
    /// still be starting: until then a refused connection is tried again.
    pub server_starting: Option<std::time::Instant>,
}

/// How long a context counts as just written by a `drover up` that may still be starting
/// (migrations on a busy machine can take seconds).
const FRESH_CONTEXT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a client with neither flags nor a context waits for a `drover up` started
/// beside it to write one: on a busy machine, starting the process alone can take
/// seconds.
const WAIT_FOR_CONTEXT: std::time::Duration = std::time::Duration::from_secs(20);

impl ClientArgs {
    /// Flags and env first, then the context; a context token is only used for the
    /// context's own server.
    pub fn resolve(&self, env: &Env) -> ClientConfig {
        resolve(self, read_context(env))
    }

    /// [`ClientArgs::resolve`] for client commands: with neither flags nor a context, it
    /// waits a moment for one, so that `drover up & drover submit …` works the first
    /// time too; and it notes a context that `drover up` wrote moments ago.
    pub async fn resolve_for_commands(&self, env: &Env) -> ClientConfig {
        let path = env.context_dir().join("context.toml");
        let on_our_own = self.server.is_none() && self.token.is_none();
        let start = std::time::Instant::now();
        let mut said = false;
        while on_our_own && !path.exists() && start.elapsed() < WAIT_FOR_CONTEXT {
            if !said && start.elapsed() > std::time::Duration::from_secs(1) {
                eprintln!(
                    "no server given and no context yet: waiting up to {}s for a `drover up` to write {} (or pass --server and --token)",
                    WAIT_FOR_CONTEXT.as_secs(),
                    path.display()
                );
                said = true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let ctx = read_context(env);
        let mut cfg = resolve(self, ctx.clone());
        let age = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        let ours = ctx.is_some_and(|c| c.server.trim_end_matches('/') == cfg.server);
        cfg.server_starting = age
            .and_then(|age| FRESH_CONTEXT.checked_sub(age))
            .filter(|_| ours)
            .map(|left| std::time::Instant::now() + left);
        cfg
    }
}

fn resolve(args: &ClientArgs, ctx: Option<Context>) -> ClientConfig {
    let server = args
        .server
        .clone()
        .or_else(|| ctx.as_ref().map(|c| c.server.clone()))
        .unwrap_or_else(|| DEFAULT_SERVER.to_string())
        .trim_end_matches('/')
        .to_string();
    let token = args.token.clone().or_else(|| {
        ctx.filter(|c| c.server.trim_end_matches('/') == server)
            .map(|c| c.token)
    });
    ClientConfig {
        server,
        token,
        ca_file: args.ca_file.clone(),
        output: args.output,
        server_starting: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Option<Context> {
        Some(Context {
            server: "http://127.0.0.1:9999".into(),
            token: "drc_ctx".into(),
        })
    }

    #[test]
    fn the_context_fills_in_what_flags_leave_out() {
        let cfg = resolve(&ClientArgs::default(), ctx());
        assert_eq!(cfg.server, "http://127.0.0.1:9999");
        assert_eq!(cfg.token.as_deref(), Some("drc_ctx"));
        let none = resolve(&ClientArgs::default(), None);
        assert_eq!(none.server, DEFAULT_SERVER);
        assert_eq!(none.token, None);
    }

    #[test]
    fn a_context_token_is_not_sent_to_another_server() {
        let args = ClientArgs {
            server: Some("http://elsewhere:7070/".into()),
            ..ClientArgs::default()
        };
        let cfg = resolve(&args, ctx());
        assert_eq!(cfg.server, "http://elsewhere:7070");
        assert_eq!(cfg.token, None);
    }

    #[test]
    fn the_context_round_trips_privately() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env {
            config_dir: Some(dir.path().join("ctx")),
            ..Env::default()
        };
        let path = write_context(&env.context_dir(), &ctx().unwrap()).unwrap();
        assert!(path.starts_with(dir.path()));
        assert_eq!(read_context(&env), ctx());
    }
}

//! `drover up`'s flags and their resolution into one server and local agents.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use drover_agent::AgentConfig;
use drover_server::ServerConfig;

use super::server::bootstrap_tokens;
use super::{Env, LocalTokens, LogConfig};
use crate::error::Result;

/// Flags of `drover up`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 7070)]
    pub port: u16,
    /// Data directory; a second `drover up` on it resumes its jobs and tokens.
    #[arg(long, default_value = ".drover")]
    pub data: PathBuf,
    /// Local agents to start (each with one slot per CPU).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub agents: u32,
    /// Tracing filter for the server and agents' own log [default: RUST_LOG, else warn].
    #[arg(long)]
    pub log_level: Option<String>,
}

/// Everything `drover up` needs to start.
#[derive(Debug, Clone)]
pub struct UpSetup {
    /// The server (SQLite in DATA/server).
    pub server: ServerConfig,
    /// The local agents (work dirs DATA/agents/N).
    pub agents: Vec<AgentConfig>,
    /// The admin and join tokens (DATA/tokens.toml).
    pub tokens: LocalTokens,
    /// The data directory.
    pub data: PathBuf,
    /// Where the client context goes.
    pub context_dir: PathBuf,
    /// How to log.
    pub log: LogConfig,
}

impl UpSetup {
    /// Loads or creates the tokens and derives the server's and agents' configuration.
    pub fn resolve(args: &UpArgs, env: &Env) -> Result<UpSetup> {
        let (tokens, _) = LocalTokens::load_or_create(&args.data)?;
        let mut server = ServerConfig::new(args.data.join("server"));
        server.listen = SocketAddr::from(([127, 0, 0, 1], args.port));
        server.bootstrap_tokens = bootstrap_tokens(&tokens.admin, &tokens.join);
        let docker_socket = env.docker_socket()?;
        // The URL is fixed up once the port is known (port 0 picks one).
        let agents = (0..args.agents)
            .map(|i| {
                let mut a = AgentConfig::new(
                    String::new(),
                    tokens.join.clone(),
                    args.data.join("agents").join(i.to_string()),
                );
                a.name = format!("{}-{i}", a.name);
                a.shutdown_timeout = Duration::from_secs(10);
                a.docker_socket = docker_socket.clone();
                a.job_env = drover_agent::job_env(env.vars.iter().cloned(), &[]);
                a.watchdog = env.watchdog();
                a
            })
            .collect();
        Ok(UpSetup {
            server,
            agents,
            tokens,
            data: args.data.clone(),
            context_dir: env.context_dir(),
            log: LogConfig::resolve(None, args.log_level.as_deref(), env, "warn"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_keeps_everything_under_its_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let args = UpArgs {
            port: 0,
            data: dir.path().join("d"),
            agents: 2,
            log_level: None,
        };
        let env = Env {
            config_dir: Some(dir.path().join("ctx")),
            ..Env::default()
        };
        let setup = UpSetup::resolve(&args, &env).unwrap();
        assert_eq!(setup.server.data_dir, dir.path().join("d/server"));
        assert_eq!(setup.agents.len(), 2);
        assert_eq!(setup.agents[1].work_dir, dir.path().join("d/agents/1"));
        assert_ne!(setup.agents[0].name, setup.agents[1].name);
        assert_eq!(setup.agents[0].token, setup.tokens.join);
        assert_eq!(setup.context_dir, dir.path().join("ctx"));
        assert_eq!(setup.log.filter, "warn");
        let again = UpSetup::resolve(&args, &env).unwrap();
        assert_eq!(again.tokens, setup.tokens, "a second up reuses the tokens");
    }
}

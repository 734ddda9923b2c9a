//! `drover up`'s flags and their resolution into servers (one, or several on one
//! PostgreSQL database) and local agents.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use drover_agent::AgentConfig;
use drover_server::ServerConfig;

use super::server::bootstrap_tokens;
use super::{Env, LocalTokens, LogConfig};
use crate::error::{CliError, Result};

/// Flags of `drover up`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    /// Port on 127.0.0.1 (with --servers N: the first of N consecutive ports).
    #[arg(long, default_value_t = 7070)]
    pub port: u16,
    /// postgres://… to keep the queue in PostgreSQL instead of SQLite in DATA/server.
    #[arg(long, hide_env_values = true)]
    pub database: Option<String>,
    /// Servers to run on that PostgreSQL database, acting as one (agents and the
    /// client context get every URL); needs --database.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub servers: u16,
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
    /// The servers, all with data in DATA/server (SQLite there, unless a database is
    /// given); several only on PostgreSQL.
    pub servers: Vec<ServerConfig>,
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
        if args.servers > 1 && args.database.is_none() {
            return Err(CliError::Usage(format!(
                "--servers {} needs --database postgres://…: one SQLite database takes one server",
                args.servers
            )));
        }
        if args.port != 0 && u32::from(args.port) + u32::from(args.servers) - 1 > 65535 {
            return Err(CliError::Usage(format!(
                "--servers {} from port {} runs past port 65535: pick a lower --port",
                args.servers, args.port
            )));
        }
        let (tokens, _) = LocalTokens::load_or_create(&args.data)?;
        // They share the data directory: its secrets key and files are the same for all.
        let servers = (0..args.servers)
            .map(|k| {
                let mut server = ServerConfig::new(args.data.join("server"));
                let port = if args.port == 0 { 0 } else { args.port + k };
                server.listen = SocketAddr::from(([127, 0, 0, 1], port));
                server.database_url = args.database.clone();
                server.bootstrap_tokens = bootstrap_tokens(&tokens.admin, &tokens.join);
                server
            })
            .collect();
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
            servers,
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
            database: None,
            servers: 1,
        };
        let env = Env {
            config_dir: Some(dir.path().join("ctx")),
            ..Env::default()
        };
        let setup = UpSetup::resolve(&args, &env).unwrap();
        assert_eq!(setup.servers.len(), 1);
        assert_eq!(setup.servers[0].data_dir, dir.path().join("d/server"));
        assert_eq!(setup.agents.len(), 2);
        assert_eq!(setup.agents[1].work_dir, dir.path().join("d/agents/1"));
        assert_ne!(setup.agents[0].name, setup.agents[1].name);
        assert_eq!(setup.agents[0].token, setup.tokens.join);
        assert_eq!(setup.context_dir, dir.path().join("ctx"));
        assert_eq!(setup.log.filter, "warn");
        let again = UpSetup::resolve(&args, &env).unwrap();
        assert_eq!(again.tokens, setup.tokens, "a second up reuses the tokens");
    }

    #[test]
    fn several_servers_need_postgres_and_take_consecutive_ports() {
        let dir = tempfile::tempdir().unwrap();
        let env = Env::default();
        let mut args = UpArgs {
            port: 7100,
            data: dir.path().join("d"),
            agents: 1,
            log_level: None,
            database: None,
            servers: 3,
        };
        let err = UpSetup::resolve(&args, &env).unwrap_err().to_string();
        assert!(err.contains("needs --database postgres://"), "{err}");
        args.database = Some("postgres://x@127.0.0.1/db".into());
        let setup = UpSetup::resolve(&args, &env).unwrap();
        let ports: Vec<u16> = setup.servers.iter().map(|s| s.listen.port()).collect();
        assert_eq!(ports, [7100, 7101, 7102]);
        assert!(setup
            .servers
            .iter()
            .all(|s| s.data_dir == dir.path().join("d/server")));
        args.port = 65535;
        let err = UpSetup::resolve(&args, &env).unwrap_err().to_string();
        assert!(err.contains("past port 65535"), "{err}");
    }
}

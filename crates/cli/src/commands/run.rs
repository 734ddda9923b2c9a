//! The long-running roles: `drover server`, `drover agent`, and `drover up` (both, plus a
//! client context, on one machine).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_server::{BootstrapToken, Scope, Server, ServerConfig, TlsFiles};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::{self, parse_duration, FileConfig};
use crate::error::{CliError, Result};

#[derive(clap::Args)]
pub struct ServerArgs {
    /// TOML config file (see drover.example.toml) [env: DROVER_CONFIG].
    #[arg(long, env = "DROVER_CONFIG", hide_env = true)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070] [env: DROVER_LISTEN].
    #[arg(long, env = "DROVER_LISTEN", hide_env = true)]
    listen: Option<SocketAddr>,
    /// Data directory: SQLite database, logs, secrets key [default: ./.drover] [env: DROVER_DATA].
    #[arg(long, env = "DROVER_DATA", hide_env = true)]
    data: Option<PathBuf>,
    /// postgres://… to use PostgreSQL instead of SQLite [env: DROVER_DATABASE].
    #[arg(long, env = "DROVER_DATABASE", hide_env = true, hide_env_values = true)]
    database: Option<String>,
    /// Leases not renewed for this long expire [default: 30s].
    #[arg(long, value_parser = parse_duration)]
    lease_ttl: Option<Duration>,
    /// Serve /metrics without a token.
    #[arg(long)]
    public_metrics: bool,
    /// PEM certificate for HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Admin token to accept (default: generated once, kept in DATA/tokens.toml).
    #[arg(
        long,
        env = "DROVER_ADMIN_TOKEN",
        hide_env = true,
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// Join token agents register with (default: generated once, kept in DATA/tokens.toml).
    #[arg(
        long,
        env = "DROVER_JOIN_TOKEN",
        hide_env = true,
        hide_env_values = true
    )]
    join_token: Option<String>,
}

/// Tokens a server creates on its first start, kept (mode 0600) beside its data so a
/// restart accepts the same ones. The database holds only their hashes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tokens {
    admin: String,
    join: String,
}

fn random_token(prefix: &str) -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::thread_rng().gen();
    format!(
        "{prefix}{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Loads DATA/tokens.toml, creating it on first start. Returns the tokens and whether they are new.
fn local_tokens(data: &Path) -> Result<(Tokens, bool)> {
    let path = data.join("tokens.toml");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let t = toml::from_str(&text).map_err(|e| {
            CliError::Other(format!(
                "{} is damaged ({e}); remove it to make new tokens",
                path.display()
            ))
        })?;
        return Ok((t, false));
    }
    std::fs::create_dir_all(data).map_err(|e| {
        CliError::Other(format!(
            "cannot create data directory {}: {e}",
            data.display()
        ))
    })?;
    let t = Tokens {
        admin: random_token("drc_"),
        join: random_token("drj_"),
    };
    config::write_private(&path, &toml::to_string(&t).expect("tokens serialize"))?;
    Ok((t, true))
}

fn init_tracing(format: &str, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

fn server_config(args: &ServerArgs, file: &FileConfig) -> Result<ServerConfig> {
    let f = &file.server;
    let data = args
        .data
        .clone()
        .or_else(|| f.data.clone())
        .unwrap_or_else(crate::default_data_dir);
    let mut cfg = ServerConfig::new(data);
    if let Some(listen) = args.listen {
        cfg.listen = listen;
    } else if let Some(l) = &f.listen {
        cfg.listen = l.parse().map_err(|_| {
            CliError::Usage(format!(
                "listen address {l:?} in the config file is not host:port"
            ))
        })?;
    }
    cfg.database_url = args.database.clone().or_else(|| f.database.clone());
    if let Some(ttl) = args.lease_ttl {
        cfg.lease_ttl = ttl;
    } else if let Some(t) = &f.lease_ttl {
        cfg.lease_ttl = parse_duration(t).map_err(CliError::Usage)?;
    }
    if cfg.lease_ttl < Duration::from_secs(1) {
        return Err(CliError::Usage("lease TTL must be at least 1s".into()));
    }
    cfg.public_metrics = args.public_metrics || f.public_metrics.unwrap_or(false);
    match (
        args.tls_cert.clone().or_else(|| f.tls_cert.clone()),
        args.tls_key.clone().or_else(|| f.tls_key.clone()),
    ) {
        (Some(cert), Some(key)) => cfg.tls = Some(TlsFiles { cert, key }),
        (None, None) => {}
        _ => {
            return Err(CliError::Usage(
                "give both a TLS certificate and a key".into(),
            ))
        }
    }
    Ok(cfg)
}

async fn wait_for_signal(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    token.cancel();
}

pub async fn server(args: ServerArgs) -> Result<i32> {
    let file = FileConfig::load(args.config.as_deref())?;
    let format = args
        .log_format
        .clone()
        .or_else(|| file.server.log_format.clone())
        .unwrap_or_else(|| "text".into());
    init_tracing(&format, "info");
    let mut cfg = server_config(&args, &file)?;
    let (admin, join) = match (&args.admin_token, &args.join_token) {
        (Some(a), Some(j)) => (a.clone(), j.clone()),
        _ => {
            let (t, new) = local_tokens(&cfg.data_dir)?;
            if new {
                eprintln!(
                    "created tokens (kept in {}):\n  admin: {}\n  join:  {}",
                    cfg.data_dir.join("tokens.toml").display(),
                    t.admin,
                    t.join
                );
            }
            (
                args.admin_token.clone().unwrap_or(t.admin),
                args.join_token.clone().unwrap_or(t.join),
            )
        }
    };
    cfg.bootstrap_tokens = vec![
        BootstrapToken {
            name: "admin".into(),
            scope: Scope::Admin,
            secret: admin,
        },
        BootstrapToken {
            name: "join".into(),
            scope: Scope::Join,
            secret: join,
        },
    ];
    let server = Server::bind(cfg)
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    server
        .serve(shutdown)
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    Ok(0)
}

#[derive(clap::Args)]
pub struct AgentArgs {
    /// TOML config file (its [agent] section) [env: DROVER_CONFIG].
    #[arg(long, env = "DROVER_CONFIG", hide_env = true)]
    config: Option<PathBuf>,
    /// Server URL [env: DROVER_SERVER].
    #[arg(long, env = "DROVER_SERVER", hide_env = true)]
    server: Option<String>,
    /// Join (or bootstrap) token [env: DROVER_TOKEN].
    #[arg(long, env = "DROVER_TOKEN", hide_env = true, hide_env_values = true)]
    token: Option<String>,
    /// Name shown in `drover agents` [default: host name] [env: DROVER_AGENT_NAME].
    #[arg(long, env = "DROVER_AGENT_NAME", hide_env = true)]
    name: Option<String>,
    /// Labels, k=v,k2=v2 (os and arch are added) [env: DROVER_LABELS].
    #[arg(long, env = "DROVER_LABELS", hide_env = true)]
    labels: Vec<String>,
    /// Queues to take jobs from, q1,q2 [default: default] [env: DROVER_QUEUES].
    #[arg(long, env = "DROVER_QUEUES", hide_env = true, value_delimiter = ',')]
    queues: Vec<String>,
    /// Most jobs at once [default: CPU count] [env: DROVER_SLOTS].
    #[arg(long, env = "DROVER_SLOTS", hide_env = true)]
    slots: Option<u32>,
    /// Workspaces and log spools [default: ./.drover-agent] [env: DROVER_WORK_DIR].
    #[arg(long, env = "DROVER_WORK_DIR", hide_env = true)]
    work_dir: Option<PathBuf>,
    /// How long jobs may finish after SIGTERM before they are canceled [default: 5m].
    #[arg(long, value_parser = parse_duration)]
    shutdown_timeout: Option<Duration>,
    /// Exit once the current job(s) finished.
    #[arg(long)]
    exit_after_job: bool,
    /// Keep each job's workspace after it ends.
    #[arg(long)]
    keep_workspaces: bool,
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

pub async fn agent(args: AgentArgs) -> Result<i32> {
    init_tracing(&args.log_format, "info");
    let file = FileConfig::load(args.config.as_deref())?;
    let f = &file.agent;
    let server = args
        .server
        .clone()
        .or_else(|| f.server.clone())
        .ok_or_else(|| {
            CliError::Usage("no server: pass --server URL or set DROVER_SERVER".into())
        })?;
    let token = args.token.clone().or_else(|| f.token.clone()).ok_or_else(|| CliError::Usage("no join token: pass --token or set DROVER_TOKEN (the server prints one at first start)".into()))?;
    let work_dir = args
        .work_dir
        .clone()
        .or_else(|| f.work_dir.clone())
        .unwrap_or_else(|| PathBuf::from(".drover-agent"));
    let mut cfg = drover_agent::AgentConfig::new(server, token, work_dir);
    if let Some(n) = args.name.clone().or_else(|| f.name.clone()) {
        cfg.name = n;
    }
    let label_items = if args.labels.is_empty() {
        f.labels.clone().unwrap_or_default()
    } else {
        args.labels.clone()
    };
    cfg.labels = drover_core::labels::parse(&label_items).map_err(CliError::Usage)?;
    cfg.queues = if args.queues.is_empty() {
        f.queues.clone().unwrap_or_default()
    } else {
        args.queues.clone()
    };
    if let Some(s) = args.slots.or(f.slots) {
        if s == 0 {
            return Err(CliError::Usage("--slots must be at least 1".into()));
        }
        cfg.slots = s;
    }
    if let Some(t) = args.shutdown_timeout {
        cfg.shutdown_timeout = t;
    } else if let Some(t) = &f.shutdown_timeout {
        cfg.shutdown_timeout = parse_duration(t).map_err(CliError::Usage)?;
    }
    cfg.exit_after_job = args.exit_after_job;
    cfg.keep_workspaces = args.keep_workspaces || f.keep_workspaces.unwrap_or(false);
    let signals = drover_agent::install_signal_handlers();
    let exit = drover_agent::run(cfg, signals)
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    Ok(exit.code())
}

#[derive(clap::Args)]
pub struct UpArgs {
    /// Port on 127.0.0.1.
    #[arg(long, default_value_t = 7070)]
    port: u16,
    /// Data directory (resumed when it exists).
    #[arg(long, default_value = ".drover")]
    data: PathBuf,
    /// Local agents to start.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=64))]
    agents: u32,
}

pub async fn up(args: UpArgs) -> Result<i32> {
    init_tracing("text", "warn");
    let (tokens, _) = local_tokens(&args.data)?;
    let mut cfg = ServerConfig::new(args.data.join("server"));
    cfg.listen = SocketAddr::from(([127, 0, 0, 1], args.port));
    cfg.bootstrap_tokens = vec![
        BootstrapToken {
            name: "admin".into(),
            scope: Scope::Admin,
            secret: tokens.admin.clone(),
        },
        BootstrapToken {
            name: "join".into(),
            scope: Scope::Join,
            secret: tokens.join.clone(),
        },
    ];
    let server = Server::bind(cfg).await.map_err(|e| match e {
        drover_server::ServerError::Bind { .. } => CliError::Other(format!(
            "{e}; is another drover running? pick another port with --port"
        )),
        other => CliError::Other(other.to_string()),
    })?;
    let url = format!("http://{}", server.local_addr());
    let server_stop = CancellationToken::new();
    let server_task = tokio::spawn(server.serve(server_stop.clone()));

    let signals = drover_agent::AgentSignals::default();
    let mut agents = Vec::new();
    for i in 0..args.agents {
        let mut a = drover_agent::AgentConfig::new(
            url.clone(),
            tokens.join.clone(),
            args.data.join("agents").join(i.to_string()),
        );
        a.name = format!("{}-{i}", a.name);
        a.shutdown_timeout = Duration::from_secs(10);
        agents.push(tokio::spawn(drover_agent::run(a, signals.clone())));
    }
    let ctx_path = config::write_context(&config::Context {
        server: url.clone(),
        token: tokens.admin.clone(),
    })?;
    println!("drover is up at {url}");
    println!("  data:        {}", args.data.display());
    println!("  admin token: {}", tokens.admin);
    println!(
        "  join token:  {}  (for agents on other machines)",
        tokens.join
    );
    println!(
        "  context:     {} (drover commands here need no flags)",
        ctx_path.display()
    );
    println!();
    println!("try:  drover submit --follow -- 'for i in 1 2 3; do echo step $i; sleep 1; done'");
    println!("stop: Ctrl-C (twice to stop running jobs at once)");

    // First Ctrl-C/SIGTERM: agents drain; a second one force-stops them.
    let first = CancellationToken::new();
    tokio::spawn(wait_for_signal(first.clone()));
    first.cancelled().await;
    eprintln!("stopping: letting running jobs finish (Ctrl-C again to stop them now)");
    signals.drain.cancel();
    let second = CancellationToken::new();
    tokio::spawn(wait_for_signal(second.clone()));
    let force = signals.force.clone();
    tokio::spawn(async move {
        second.cancelled().await;
        force.cancel();
    });
    for a in agents {
        match a.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("agent stopped with an error: {e}"),
            Err(e) => eprintln!("agent task failed: {e}"),
        }
    }
    server_stop.cancel();
    match server_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(CliError::Other(e.to_string())),
        Err(e) => return Err(CliError::Other(e.to_string())),
    }
    eprintln!("stopped");
    Ok(0)
}

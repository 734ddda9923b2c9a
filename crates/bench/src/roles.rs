//! The measured processes: a server and an agent, each a child process running the same
//! library code as `drover server` / `drover agent`, so RSS and CPU are theirs alone.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use drover_server::{BootstrapToken, Scope, Server, ServerConfig};
use tokio_util::sync::CancellationToken;

pub const ADMIN: &str = "bench_admin_token";
pub const JOIN: &str = "bench_join_token";

#[derive(clap::Args)]
pub struct ServerArgs {
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    database: Option<String>,
    /// Address to listen on (a restarted server keeps its port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    #[arg(long)]
    lease_ttl_ms: Option<u64>,
}

#[derive(clap::Args)]
pub struct AgentArgs {
    #[arg(long)]
    server: String,
    #[arg(long)]
    slots: u32,
    #[arg(long)]
    work_dir: PathBuf,
    #[arg(long, default_value = "bench-agent")]
    name: String,
}

/// What an agent's watchdog is started with (see `drover_agent::WatchdogArgs`).
#[derive(clap::Args)]
pub struct WatchdogArgs {
    #[arg(long)]
    work_dir: PathBuf,
    #[arg(long)]
    docker_socket: Option<PathBuf>,
    #[arg(long)]
    keep_containers: bool,
}

/// Child role: an agent's watchdog, as `drover agent-watchdog` is for `drover agent`.
pub fn watchdog(args: WatchdogArgs) -> i32 {
    drover_agent::watchdog_main(drover_agent::WatchdogArgs {
        work_dir: args.work_dir,
        docker_socket: args.docker_socket,
        keep_containers: args.keep_containers,
    })
}

/// Child role: serve until stdin closes, after printing `LISTENING <addr>`.
pub async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let mut config = ServerConfig::new(args.data);
    config.listen = args.listen;
    if let Some(ms) = args.lease_ttl_ms {
        config.lease_ttl = Duration::from_millis(ms);
    }
    config.database_url = args.database;
    config.max_body_bytes = 64 << 20;
    config.bootstrap_tokens = vec![
        BootstrapToken {
            name: "bench-admin".into(),
            scope: Scope::Admin,
            secret: ADMIN.into(),
        },
        BootstrapToken {
            name: "bench-join".into(),
            scope: Scope::Join,
            secret: JOIN.into(),
        },
    ];
    let server = Server::bind(config).await?;
    println!("LISTENING {}", server.local_addr());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        // The parent closes our stdin (or dies) to stop us.
        let _ = tokio::task::spawn_blocking(|| {
            std::io::copy(&mut std::io::stdin(), &mut std::io::sink())
        })
        .await;
        stop.cancel();
    });
    let term = shutdown.clone();
    tokio::spawn(async move {
        // SIGTERM stops it as it stops `drover server`: gracefully.
        if let Ok(mut sig) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            sig.recv().await;
            term.cancel();
        }
    });
    server.serve(shutdown).await?;
    Ok(())
}

/// Child role: an agent until stdin closes; its warnings go to stderr.
pub async fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let mut config = drover_agent::AgentConfig::new(args.server, JOIN, args.work_dir);
    config.slots = args.slots;
    config.name = args.name;
    config.watchdog = Some(vec![me()?.into(), "role-watchdog".into()]);
    config.shutdown_timeout = Duration::from_secs(5);
    let signals = drover_agent::AgentSignals::default();
    let drain = signals.drain.clone();
    tokio::spawn(async move {
        let _ = tokio::task::spawn_blocking(|| {
            std::io::copy(&mut std::io::stdin(), &mut std::io::sink())
        })
        .await;
        drain.cancel();
    });
    drover_agent::run(config, signals).await?;
    Ok(())
}

/// A child process that is stopped (stdin closed, then killed) when dropped.
pub struct Proc {
    child: Child,
}

impl From<Child> for Proc {
    fn from(child: Child) -> Proc {
        Proc { child }
    }
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Current and peak resident set size in MiB, from /proc.
    pub fn rss_mib(&self) -> (f64, f64) {
        rss_of(self.pid())
    }

    /// SIGKILL, as a crash or the OOM killer would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for it to exit.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let _ = self.child.wait();
    }

    pub fn stop(mut self) {
        drop(self.child.stdin.take());
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_of(pid: u32) -> (f64, f64) {
    (status_mib(pid, "VmRSS:"), status_mib(pid, "VmHWM:"))
}

/// The part of the RSS that is file pages (program text and, for the server, SQLite's
/// memory-mapped database), which the kernel can drop at will.
pub fn rss_file_of(pid: u32) -> f64 {
    status_mib(pid, "RssFile:")
}

/// A `kB` field of `/proc/PID/status`, in MiB.
fn status_mib(pid: u32, name: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn me() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the drover-bench binary")
}

/// Starts a server child; returns it with its base URL.
pub fn start_server(data: &Path, database: Option<&str>) -> anyhow::Result<(Proc, String)> {
    server_child(data, database, &[])
}

/// Starts a server child on `listen` with a lease TTL.
pub fn start_server_at(
    data: &Path,
    database: Option<&str>,
    listen: &str,
    ttl: Duration,
) -> anyhow::Result<(Proc, String)> {
    let ttl = ttl.as_millis().to_string();
    server_child(
        data,
        database,
        &["--listen", listen, "--lease-ttl-ms", &ttl],
    )
}

fn server_child(
    data: &Path,
    database: Option<&str>,
    extra: &[&str],
) -> anyhow::Result<(Proc, String)> {
    let mut cmd = Command::new(me()?);
    cmd.arg("role-server").arg("--data").arg(data).args(extra);
    if let Some(db) = database {
        cmd.arg("--database").arg(db);
    }
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the server child")?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let Some(addr) = line.trim().strip_prefix("LISTENING ") else {
        bail!("server child did not start: {line:?}");
    };
    let url = format!("http://{addr}");
    Ok((Proc { child }, url))
}

/// Starts an agent child against `url`.
pub fn start_agent(url: &str, slots: u32, work_dir: &Path) -> anyhow::Result<Proc> {
    start_agent_named(url, slots, work_dir, "bench-agent")
}

/// Starts an agent child called `name` against `url`.
pub fn start_agent_named(
    url: &str,
    slots: u32,
    work_dir: &Path,
    name: &str,
) -> anyhow::Result<Proc> {
    let child = Command::new(me()?)
        .arg("role-agent")
        .args([
            "--server",
            url,
            "--slots",
            &slots.to_string(),
            "--name",
            name,
        ])
        .arg("--work-dir")
        .arg(work_dir)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start the agent child")?;
    Ok(Proc { child })
}

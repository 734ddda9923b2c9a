//! `drover-bench`: starts a real server and real agents (separate processes) on loopback
//! in a temp dir, runs a scenario several times, and prints a Markdown table (or JSON)
//! with median, min and max, and each figure's ratio to a baseline measured in the same
//! run. See BENCHMARKS.md for the figures and how to reproduce them.

mod api;
mod chaos;
mod cluster;
mod peers;
mod report;
mod roles;
mod scenarios;
mod workflows;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "drover-bench",
    about = "Measure drover against the machine's own limits",
    after_help = "Examples:\n  cargo run --release -p drover-bench -- dispatch\n  cargo run --release -p drover-bench -- all --runs 3 --json\n  cargo run --release -p drover-bench -- queue --size tiny"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one scenario (or `all`).
    #[command(flatten)]
    Bench(BenchCommand),
    /// Internal: run a server in this process (the benchmark starts it as a child).
    #[command(hide = true)]
    RoleServer(roles::ServerArgs),
    /// Internal: run an agent in this process.
    #[command(hide = true)]
    RoleAgent(roles::AgentArgs),
    /// Internal: an agent's watchdog.
    #[command(hide = true)]
    RoleWatchdog(roles::WatchdogArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Repetitions per figure (median, min and max are reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// `full` for the sizes BENCHMARKS.md reports, `tiny` for a smoke run.
    #[arg(long, value_enum, default_value_t = Size::Full)]
    size: Size,
    /// Print JSON instead of a Markdown table.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// 10,000 `true` jobs through one agent with 8 slots, against `xargs -P8`.
    Dispatch(BenchArgs),
    /// Submit → process start on an idle system, and cancel → process gone.
    Latency(BenchArgs),
    /// Jobs/s through the HTTP API with a synthetic agent, SQLite and PostgreSQL; lease latency vs queue depth.
    Queue(BenchArgs),
    /// A job printing 1 GiB in ~100-byte lines, against a plain redirect to a file.
    Logs(BenchArgs),
    /// Idle RSS of server and agent, and after 100,000 jobs.
    Memory(BenchArgs),
    /// `true` in a container through drover, against `docker run --rm IMAGE true`.
    Docker(BenchArgs),
    /// A 1 GiB artifact uploaded and downloaded, against `cp`; agent and server RSS.
    Files(BenchArgs),
    /// The dashboard: a printed line → the job page's live log, and the jobs list's
    /// first page with 1,000,000 jobs stored.
    Dashboard(BenchArgs),
    /// Submit → start of a job only agents on demand can take: process and docker
    /// providers (needs `drover` built next to `drover-bench`, and Docker).
    Provision(BenchArgs),
    /// Several servers on one PostgreSQL: submit → start when the job is submitted to
    /// another server than its agent polls, and queue throughput with two servers
    /// against one.
    Cluster(BenchArgs),
    /// Jobs under agent SIGKILLs, server and PostgreSQL restarts and a partition: what
    /// was lost, run twice at once, or left behind (SQLite and PostgreSQL).
    Chaos(BenchArgs),
    /// Arrays and dependencies: one `POST /v1/groups` of 10,000 jobs, and a job's
    /// dependency ending → the job leased.
    Workflows(BenchArgs),
    /// `true` jobs through xargs -P8, drover and Celery (prefork × 8, Redis) side by side,
    /// with the memory of each; installs Celery and Redis when missing.
    Peers(BenchArgs),
    /// Every scenario.
    All(BenchArgs),
}

/// How big a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Size {
    Tiny,
    Full,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::RoleWatchdog(args) = cli.command {
        std::process::exit(roles::watchdog(args));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::RoleServer(args) => rt.block_on(roles::server(args)),
        Command::RoleAgent(args) => rt.block_on(roles::agent(args)),
        Command::RoleWatchdog(_) => unreachable!("handled before the runtime starts"),
        Command::Bench(b) => {
            let (names, args): (Vec<&str>, BenchArgs) = match b {
                BenchCommand::Dispatch(a) => (vec!["dispatch"], a),
                BenchCommand::Latency(a) => (vec!["latency"], a),
                BenchCommand::Queue(a) => (vec!["queue"], a),
                BenchCommand::Logs(a) => (vec!["logs"], a),
                BenchCommand::Memory(a) => (vec!["memory"], a),
                BenchCommand::Docker(a) => (vec!["docker"], a),
                BenchCommand::Files(a) => (vec!["files"], a),
                BenchCommand::Chaos(a) => (vec!["chaos"], a),
                BenchCommand::Dashboard(a) => (vec!["dashboard"], a),
                BenchCommand::Provision(a) => (vec!["provision"], a),
                BenchCommand::Cluster(a) => (vec!["cluster"], a),
                BenchCommand::Workflows(a) => (vec!["workflows"], a),
                BenchCommand::Peers(a) => (vec!["peers"], a),
                BenchCommand::All(a) => (
                    vec![
                        "dispatch",
                        "latency",
                        "queue",
                        "logs",
                        "memory",
                        "docker",
                        "files",
                        "dashboard",
                        "provision",
                        "cluster",
                        "workflows",
                        "peers",
                    ],
                    a,
                ),
            };
            let mut rows = Vec::new();
            for name in names {
                eprintln!("==> {name} ({:?}, {} runs)", args.size, args.runs);
                let got = rt.block_on(scenarios::run(name, args.size, args.runs.max(1)))?;
                rows.extend(got);
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", report::markdown(&rows));
            }
            Ok(())
        }
    }
}

//! `drover`: one binary that is server, agent, `drover up` (both on one machine) and the
//! client. This file holds the command line; the work is in `commands/`.

mod client;
mod commands;
mod config;
mod error;
mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::ClientArgs;
use crate::error::CliError;

const EXIT_CODES: &str = "Exit codes:
  0  success          1  the job failed, or another error
  2  usage error      3  not found
  4  cannot connect, or the token was refused
  5  conflict (e.g. cancel of a finished job)
  6  the server rejected the input
  submit --wait / wait: the job's exit code; 124 timed out; 130 canceled";

#[derive(Parser)]
#[command(
    name = "drover",
    version,
    about = "Run jobs on many machines: server, agent and client in one binary",
    after_help = format!("Examples:\n  drover up                                   # server + local agent in ./.drover\n  drover submit --follow -- echo hello        # run a job, stream its log\n  drover ls --state running\n  drover logs -f JOB\n\n{EXIT_CODES}")
)]
struct Cli {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a server, local agents and a client context on this machine (like `nomad agent -dev`).
    #[command(
        after_help = "Examples:\n  drover up\n  drover up --port 8080 --data /tmp/drover --agents 2"
    )]
    Up(commands::run::UpArgs),
    /// Run the control plane: queue, leases, logs and the HTTP API.
    #[command(
        after_help = "Examples:\n  drover server --listen 0.0.0.0:7070 --data /var/lib/drover\n  drover server --database postgres://drover@db/drover --config /etc/drover.toml"
    )]
    Server(commands::run::ServerArgs),
    /// Run an agent that leases and runs jobs.
    #[command(
        after_help = "Examples:\n  drover agent --server http://queue:7070 --token $JOIN_TOKEN --labels gpu=a100 --slots 4\n  DROVER_SERVER=http://queue:7070 DROVER_TOKEN=... drover agent --exit-after-job"
    )]
    Agent(commands::run::AgentArgs),
    /// Submit a job; the words after `--` are one shell command line (run with `bash -c`).
    #[command(
        after_help = "Examples:\n  drover submit -- make test\n  drover submit --wait --timeout 10m --attempts 3 -- ./train.sh --epochs 5\n  drover submit --follow --no-shell -- python3 -c 'print(42)'\n  drover submit --script job.py --interpreter python3\n  drover submit --image busybox:latest -- echo hi"
    )]
    Submit(commands::jobs::SubmitArgs),
    /// Show one job.
    #[command(
        after_help = "Examples:\n  drover status 01932f...\n  drover status -o json 01932f... | jq .state"
    )]
    Status { job: String },
    /// List jobs, newest first.
    #[command(
        after_help = "Examples:\n  drover ls\n  drover ls --state failed --queue gpu --limit 20"
    )]
    Ls(commands::jobs::LsArgs),
    /// Print a job's output (stdout records to stdout, stderr and drover's own lines to stderr).
    #[command(
        after_help = "Examples:\n  drover logs JOB\n  drover logs -f JOB\n  drover logs --attempt 1 --stream stderr JOB"
    )]
    Logs(commands::jobs::LogsArgs),
    /// Cancel a job (a running one is stopped: SIGTERM, grace period, SIGKILL).
    #[command(after_help = "Example:\n  drover cancel JOB")]
    Cancel { job: String },
    /// Run a finished job again.
    #[command(after_help = "Example:\n  drover retry JOB")]
    Retry { job: String },
    /// Wait for a job to end; exits with its exit code.
    #[command(after_help = "Example:\n  drover wait JOB && echo done")]
    Wait { job: String },
    /// A job's timeline: every transition with time, actor and reason.
    #[command(after_help = "Example:\n  drover events JOB")]
    Events { job: String },
    /// List agents.
    #[command(after_help = "Example:\n  drover agents -o json")]
    Agents,
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Token(commands::admin::TokenCommand),
    /// Show the audit trail (admin).
    #[command(after_help = "Example:\n  drover audit --limit 50")]
    Audit {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Print shell completions.
    #[command(after_help = "Example:\n  drover completions bash > /etc/bash_completion.d/drover")]
    Completions { shell: clap_complete::Shell },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<i32, CliError> {
    let client = cli.client;
    match cli.command {
        Command::Up(args) => commands::run::up(args).await,
        Command::Server(args) => commands::run::server(args).await,
        Command::Agent(args) => commands::run::agent(args).await,
        Command::Submit(args) => commands::jobs::submit(&client.resolve(), args).await,
        Command::Status { job } => commands::jobs::status(&client.resolve(), &job).await,
        Command::Ls(args) => commands::jobs::ls(&client.resolve(), args).await,
        Command::Logs(args) => commands::jobs::logs(&client.resolve(), args).await,
        Command::Cancel { job } => commands::jobs::cancel(&client.resolve(), &job).await,
        Command::Retry { job } => commands::jobs::retry(&client.resolve(), &job).await,
        Command::Wait { job } => commands::jobs::wait(&client.resolve(), &job).await,
        Command::Events { job } => commands::jobs::events(&client.resolve(), &job).await,
        Command::Agents => commands::admin::agents(&client.resolve()).await,
        Command::Token(cmd) => commands::admin::token(&client.resolve(), cmd).await,
        Command::Audit { limit } => commands::admin::audit(&client.resolve(), limit).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "drover", &mut std::io::stdout());
            Ok(0)
        }
    }
}

/// Used by `up` to find its default data directory.
pub fn default_data_dir() -> PathBuf {
    PathBuf::from(".drover")
}

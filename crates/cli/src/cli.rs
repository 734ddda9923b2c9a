//! The command line: every command, its flags and its `--help` examples.

use clap::{Parser, Subcommand};

use crate::commands::{admin, files, jobs, logs, submit, templates};
use crate::config::{AgentArgs, ClientArgs, ServerArgs, UpArgs};

/// The exit codes, shown by `drover --help` (and documented in `error.rs`).
pub const EXIT_CODES: &str = "Exit codes:
  0  success
  1  the job failed, or another error
  2  usage error (bad flag, value or config file)
  3  not found (e.g. no such job)
  4  cannot connect to the server, or it refused the token (401/403)
  5  conflict (e.g. cancel of a job that already finished)
  6  the server rejected the input (400/413)
  submit --wait / --follow and wait exit like the job: 0 succeeded, the job's own
  exit code when it failed with one (else 1), 124 timed out, 130 canceled.";

/// `drover`: server, agent and client in one binary.
#[derive(Parser)]
#[command(
    name = "drover",
    version,
    about = "Run jobs on many machines: server, agent and client in one binary",
    after_help = format!("Examples:\n  drover up                                   # server + local agent in ./.drover\n  drover submit --follow -- echo hello        # run a job, stream its log\n  drover ls --state running\n  drover logs -f JOB\n\nThe client finds its server in --server/DROVER_SERVER, --token/DROVER_TOKEN, else the\ncontext `drover up` wrote ($DROVER_CONFIG_DIR, else $XDG_CONFIG_HOME/drover, else\n~/.config/drover).\n\n{EXIT_CODES}")
)]
pub struct Cli {
    /// Server, token and output format of the client commands.
    #[command(flatten)]
    pub client: ClientArgs,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Every `drover` command.
#[derive(Subcommand)]
pub enum Command {
    /// Start a server, local agents and a client context on this machine (like `nomad agent -dev`).
    #[command(
        after_help = "Examples:\n  drover up\n  drover up --port 8080 --data /tmp/drover --agents 2\n\nThe server keeps its SQLite database in DATA/server; the admin and join tokens\nare made on the first start and kept in DATA/tokens.toml (mode 0600), so a second\n`drover up` on the same data resumes with the same tokens and jobs. Ctrl-C lets\nrunning jobs finish (up to 10s), then stops; a second Ctrl-C stops them at once."
    )]
    Up(UpArgs),
    /// Run the control plane: queue, leases, logs and the HTTP API.
    #[command(
        after_help = "Examples:\n  drover server --listen 0.0.0.0:7070 --data /var/lib/drover\n  drover server --database postgres://drover@db/drover --config /etc/drover.toml\n  RUST_LOG=drover_server=debug drover server --log-format json\n\nWithout --admin-token/--join-token the first start makes both, prints them once and\nkeeps them in DATA/tokens.toml (mode 0600). Precedence: config file < env < flags."
    )]
    Server(ServerArgs),
    /// Run an agent that leases and runs jobs.
    #[command(
        after_help = "Examples:\n  drover agent --server http://queue:7070 --token $JOIN_TOKEN --labels gpu=a100 --slots 4\n  DROVER_SERVER=http://queue:7070 DROVER_TOKEN=... drover agent --exit-after-job\n\nSIGTERM/SIGINT: stop leasing, let jobs finish up to --shutdown-timeout, then stop\nthem and send them back to the queue; a second signal kills them now. SIGUSR1: finish the current jobs, then exit.\nExit codes: 0 drained, 2 jobs were sent back to the queue at the shutdown timeout, 3 force-stopped."
    )]
    Agent(AgentArgs),
    /// Submit a job; the words after `--` are one shell command line (run with `bash -c`).
    #[command(
        after_help = "Examples:\n  drover submit -- make test\n  drover submit --wait --timeout 10m --attempts 3 -- ./train.sh --epochs 5\n  drover submit --follow --no-shell -- python3 -c 'print(42)'\n  drover submit --script job.py --interpreter python3\n  drover submit --image busybox:latest -- echo hi\n  drover submit --label gpu=a100 --env EPOCHS=5 --secret TOKEN=s3cr3t -- ./train.sh\n  drover submit --input study.yaml --artifact 'results/**' -- ./simulate study.yaml\n\nPrints the job id (-o json: the job). --wait and --follow exit like the job:\n0 succeeded, its exit code when it failed, 124 timed out, 130 canceled."
    )]
    Submit(Box<submit::SubmitArgs>),
    /// Show one job: state, command, attempts, progress, result.
    #[command(
        after_help = "Examples:\n  drover status 01932f...\n  drover status -o json 01932f... | jq .state"
    )]
    Status {
        /// The job id, or key:K for the job submitted with idempotency key K.
        job: String,
    },
    /// List jobs, newest first.
    #[command(
        after_help = "Examples:\n  drover ls\n  drover ls --state failed --queue gpu --limit 20\n  drover ls -o json | jq '.jobs[].id'"
    )]
    Ls(jobs::LsArgs),
    /// Print a job's output: stdout and stderr lines in order on stdout (drover's own notes on stderr).
    #[command(
        after_help = "Examples:\n  drover logs JOB\n  drover logs -f JOB              # follow until the job ends\n  drover logs --attempt 1 --stream stderr JOB\n\nA followed log that loses its connection resumes after the last line printed."
    )]
    Logs(logs::LogsArgs),
    /// Cancel a job (a running one is stopped: SIGTERM, grace period, SIGKILL).
    #[command(
        after_help = "Example:\n  drover cancel JOB\n\nCanceling a job that already ended is a conflict (exit 5)."
    )]
    Cancel {
        /// The job id.
        job: String,
    },
    /// Delete ended jobs with their attempts, events, logs and artifacts.
    #[command(
        after_help = "Example:\n  drover rm JOB\n\nA job that has not ended is a conflict (exit 5): cancel it first."
    )]
    Rm {
        /// The job ids.
        #[arg(required = true)]
        jobs: Vec<String>,
    },
    /// Submit a new job with the same spec as JOB (secrets included; any state).
    #[command(
        after_help = "Example:\n  drover rerun JOB && drover wait $(drover ls --limit 1 -o json | jq -r '.jobs[0].id')"
    )]
    Rerun {
        /// The job id.
        job: String,
    },
    /// Run a finished job again.
    #[command(after_help = "Example:\n  drover retry JOB && drover wait JOB")]
    Retry {
        /// The job id.
        job: String,
    },
    /// Wait for a job to end; exits like the job (0, its exit code, 124, 130).
    #[command(after_help = "Example:\n  drover wait JOB && echo done")]
    Wait {
        /// The job id.
        job: String,
    },
    /// A job's timeline: every transition with time, actor and reason.
    #[command(after_help = "Example:\n  drover events JOB")]
    Events {
        /// The job id.
        job: String,
    },
    /// List agents: status, running/slots, labels, CPU, memory, last seen; `rm` removes one.
    #[command(
        after_help = "Examples:\n  drover agents\n  drover agents -o json | jq '.agents[] | {name, status}'\n  drover agents rm AGENT_ID"
    )]
    Agents {
        #[command(subcommand)]
        command: Option<admin::AgentsCommand>,
    },
    /// Providers of agents on demand: their agents, starts, failures and the last failure.
    #[command(after_help = "Examples:\n  drover providers\n  drover providers -o json")]
    Providers,
    /// Uploaded files: put, ls, get, rm.
    #[command(subcommand)]
    Files(files::FilesCommand),
    /// A job's artifacts: ls, get.
    #[command(subcommand)]
    Artifacts(files::ArtifactsCommand),
    /// Job templates kept on the server: create, ls, show, rm.
    #[command(subcommand)]
    Template(templates::TemplateCommand),
    /// Arrays (`drover submit --array`) as one: status, ls, cancel, retry.
    #[command(subcommand)]
    Group(crate::commands::groups::GroupCommand),
    /// Cron schedules that submit a job at each tick: create, ls, show, pause, resume, rm.
    #[command(subcommand)]
    Schedule(crate::commands::schedules::ScheduleCommand),
    /// Manage API tokens (admin).
    #[command(subcommand)]
    Token(admin::TokenCommand),
    /// Show the audit trail (admin).
    #[command(after_help = "Example:\n  drover audit --limit 50")]
    Audit {
        /// How many entries.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// The agent's watchdog process (started by `drover agent` and `drover up`
    /// themselves): stops the agent's jobs when the agent dies or freezes past its leases.
    #[command(hide = true)]
    AgentWatchdog {
        /// The agent's work dir.
        #[arg(long)]
        work_dir: std::path::PathBuf,
        /// The Docker engine's socket.
        #[arg(long)]
        docker_socket: Option<std::path::PathBuf>,
        /// Kill containers but keep them.
        #[arg(long)]
        keep_containers: bool,
    },
    /// Print shell completions.
    #[command(
        after_help = "Examples:\n  drover completions bash > ~/.local/share/bash-completion/completions/drover\n  drover completions zsh > ~/.zfunc/_drover\n  drover completions fish > ~/.config/fish/completions/drover.fish"
    )]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

//! `drover`: one binary that is server, agent, `drover up` (both on one machine) and the
//! client. This file only parses the command line and dispatches; the command line is in
//! `cli`, the work in `commands/` and `up`.
//!
//! Exit codes: see [`cli::EXIT_CODES`] (and `error.rs`); failures print one line on stderr.

mod cli;
mod client;
mod commands;
mod config;
mod error;
mod output;
mod up;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::commands::{admin, jobs, logs, submit};
use crate::config::{AgentSetup, Env, OutputFormat, ServerSetup, UpSetup};
use crate::error::CliError;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    if let Command::AgentWatchdog {
        work_dir,
        docker_socket,
        keep_containers,
    } = cli.command
    {
        let code = drover_agent::watchdog_main(drover_agent::WatchdogArgs {
            work_dir,
            docker_socket,
            keep_containers,
        });
        return ExitCode::from(code as u8);
    }
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
    let json = cli.client.output == OutputFormat::Json;
    match runtime.block_on(dispatch(cli, Env::capture())) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            if json {
                eprintln!("{}", e.to_json());
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

async fn dispatch(cli: Cli, env: Env) -> Result<i32, CliError> {
    let client = match cli.command {
        Command::Up(_) | Command::Server(_) | Command::Agent(_) | Command::Completions { .. } => {
            cli.client.resolve(&env)
        }
        _ => cli.client.resolve_for_commands(&env).await,
    };
    match cli.command {
        Command::Up(args) => up::run(UpSetup::resolve(&args, &env)?).await,
        Command::Server(args) => commands::server::run(ServerSetup::resolve(&args, &env)?).await,
        Command::Agent(args) => commands::agent::run(AgentSetup::resolve(&args, &env)?).await,
        Command::Submit(args) => submit::submit(&client, *args).await,
        Command::Wait { job } => submit::wait(&client, &jobs::resolve(&client, &job).await?).await,
        Command::Status { job } => {
            jobs::status(&client, &jobs::resolve(&client, &job).await?).await
        }
        Command::Ls(args) => jobs::ls(&client, args).await,
        Command::Logs(mut args) => {
            args.job = jobs::resolve(&client, &args.job).await?;
            logs::logs(&client, args).await
        }
        Command::Cancel { job } => {
            jobs::cancel(&client, &jobs::resolve(&client, &job).await?).await
        }
        Command::Rm { jobs } => jobs::rm(&client, &jobs).await,
        Command::Rerun { job } => jobs::rerun(&client, &jobs::resolve(&client, &job).await?).await,
        Command::Retry { job } => jobs::retry(&client, &jobs::resolve(&client, &job).await?).await,
        Command::Events { job } => {
            jobs::events(&client, &jobs::resolve(&client, &job).await?).await
        }
        Command::Agents { command } => admin::agents(&client, command).await,
        Command::Providers => admin::providers(&client).await,
        Command::Files(cmd) => commands::files::files(&client, cmd).await,
        Command::Artifacts(cmd) => commands::files::artifacts(&client, cmd).await,
        Command::Template(cmd) => commands::templates::template(&client, cmd).await,
        Command::Group(cmd) => commands::groups::group(&client, cmd).await,
        Command::Schedule(cmd) => commands::schedules::schedule(&client, cmd).await,
        Command::Token(cmd) => admin::token(&client, cmd).await,
        Command::Audit { limit } => admin::audit(&client, limit).await,
        Command::AgentWatchdog { .. } => unreachable!("handled before the runtime starts"),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "drover", &mut std::io::stdout());
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_command_has_examples_in_its_help() {
        let cli = Cli::command();
        let mut commands: Vec<(String, &clap::Command)> = Vec::new();
        for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.has_subcommands() {
                // A group: its subcommands carry the examples.
                for leaf in sub.get_subcommands() {
                    commands.push((format!("{} {}", sub.get_name(), leaf.get_name()), leaf));
                }
            } else {
                commands.push((sub.get_name().to_string(), sub));
            }
        }
        for (name, sub) in commands {
            let help = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(help.contains("Example"), "`drover {name}` has no examples");
        }
    }

    #[test]
    fn bad_flag_values_are_usage_errors() {
        for argv in [
            &["drover", "submit", "--priority", "urgent", "--", "true"][..],
            &["drover", "submit", "--timeout", "xyz", "--", "true"],
            &["drover", "submit", "--env", "NOEQUALS", "--", "true"],
            &["drover", "ls", "--limit", "0"],
            &["drover", "agent", "--slots", "0"],
        ] {
            let err = Cli::try_parse_from(argv).err().expect("refused");
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
    }
}

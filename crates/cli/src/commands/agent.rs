//! `drover agent`: leases and runs jobs until a signal ends it.

use crate::config::AgentSetup;
use crate::error::{CliError, Result};

/// Runs the agent; SIGTERM/SIGINT drain (twice: force), SIGUSR1 finishes current jobs.
/// The exit code is the agent's own (`AgentExit::code`).
pub async fn run(setup: AgentSetup) -> Result<i32> {
    super::init_tracing(&setup.log);
    let signals = drover_agent::install_signal_handlers();
    let exit = drover_agent::run(setup.config, signals)
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    Ok(exit.code())
}

//! `drover server`: the control plane until Ctrl-C or SIGTERM.

use drover_server::Server;
use tokio_util::sync::CancellationToken;

use crate::config::ServerSetup;
use crate::error::{CliError, Result};

/// Runs the server; a first Ctrl-C/SIGTERM shuts it down gracefully.
pub async fn run(setup: ServerSetup) -> Result<i32> {
    super::init_tracing(&setup.log);
    if let Some(new_key) = &setup.rotate_secrets_key {
        let (jobs, fingerprint) = drover_server::rotate_secrets_key(&setup.config, new_key)
            .await
            .map_err(|e| CliError::Other(e.to_string()))?;
        eprintln!(
            "re-sealed the secrets of {jobs} jobs under key {fingerprint} ({}); start every server with --secrets-key-file {}",
            new_key.display(),
            new_key.display()
        );
        return Ok(0);
    }
    if let Some((tokens, path)) = &setup.created_tokens {
        eprintln!(
            "created tokens (shown once; kept in {}, mode 0600):\n  admin: {}\n  join:  {}",
            path.display(),
            tokens.admin,
            tokens.join
        );
    }
    let shutdown = CancellationToken::new();
    super::cancel_on_signals(vec![shutdown.clone()]);
    let server = Server::bind(setup.config)
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    tracing::info!(addr = %server.local_addr(), "drover server listening");
    server
        .serve(shutdown)
        .await
        .map_err(|e| CliError::Other(e.to_string()))?;
    Ok(0)
}

//! `drover up`: a server, local agents and a client context on one machine, stopped
//! cleanly by Ctrl-C (agents drain first, then the server).

use crate::output::outln;
use drover_server::{Server, ServerError};
use tokio_util::sync::CancellationToken;

use crate::commands::{cancel_on_signal, init_tracing};
use crate::config::{write_context, Context, UpSetup};
use crate::error::{CliError, Result};

/// Runs everything until Ctrl-C/SIGTERM; a second signal stops running jobs at once.
pub async fn run(setup: UpSetup) -> Result<i32> {
    init_tracing(&setup.log);
    let port = setup.server.listen.port();
    // The context goes first, so that a client started right after (`drover up &
    // drover submit …`) finds it and waits for the server; restored if we cannot start.
    let ctx = Context {
        server: format!("http://{}", setup.server.listen),
        token: setup.tokens.admin.clone(),
    };
    let ctx_file = setup.context_dir.join("context.toml");
    let previous = std::fs::read_to_string(&ctx_file).ok();
    let ctx_path = write_context(&setup.context_dir, &ctx)?;
    let server = match Server::bind(setup.server.clone()).await {
        Ok(s) => s,
        Err(e) => {
            let _ = match &previous {
                Some(text) => std::fs::write(&ctx_file, text),
                None => std::fs::remove_file(&ctx_file),
            };
            return Err(match e {
                ServerError::Bind { .. } => CliError::Other(format!(
                    "{e}; is another drover running on port {port}? pick another with --port"
                )),
                other => CliError::Other(other.to_string()),
            });
        }
    };
    let url = ctx.server.clone();
    let server_stop = CancellationToken::new();
    let server_task = tokio::spawn(server.serve(server_stop.clone()));

    let signals = drover_agent::AgentSignals::default();
    let agents: Vec<_> = setup
        .agents
        .iter()
        .cloned()
        .map(|mut a| {
            a.server = url.clone();
            tokio::spawn(drover_agent::run(a, signals.clone()))
        })
        .collect();
    print_banner(&url, &setup, &ctx_path);

    // First Ctrl-C/SIGTERM: agents drain; a second one force-stops them.
    let first = CancellationToken::new();
    tokio::spawn(cancel_on_signal(first.clone()));
    first.cancelled().await;
    eprintln!("stopping: letting running jobs finish (Ctrl-C again to stop them now)");
    signals.drain.cancel();
    let second = CancellationToken::new();
    tokio::spawn(cancel_on_signal(second.clone()));
    let force = signals.force.clone();
    tokio::spawn(async move {
        second.cancelled().await;
        force.cancel();
    });
    for a in agents {
        match a.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("an agent stopped with an error: {e}"),
            Err(e) => eprintln!("an agent task failed: {e}"),
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

fn print_banner(url: &str, setup: &UpSetup, ctx_path: &std::path::Path) {
    outln!("drover is up at {url}");
    outln!("  data:        {}", setup.data.display());
    outln!("  admin token: {}", setup.tokens.admin);
    outln!(
        "  join token:  {}  (for agents on other machines)",
        setup.tokens.join
    );
    outln!(
        "  context:     {}  (drover commands here need no flags)",
        ctx_path.display()
    );
    outln!("  agents:      {}", setup.agents.len());
    outln!();
    outln!("try:  drover submit --follow -- echo hello");
    outln!("stop: Ctrl-C (twice to stop running jobs at once)");
}

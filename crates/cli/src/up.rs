//! `drover up`: a server (or several on one PostgreSQL database), local agents and a
//! client context on one machine, stopped cleanly by Ctrl-C (agents drain first, then
//! the servers).

use crate::output::outln;
use drover_server::{Server, ServerError};
use tokio_util::sync::CancellationToken;

use crate::commands::{cancel_on_signals, init_tracing};
use crate::config::{write_context, Context, UpSetup};
use crate::error::{CliError, Result};

/// Runs everything until Ctrl-C/SIGTERM; a second signal stops running jobs at once.
pub async fn run(setup: UpSetup) -> Result<i32> {
    init_tracing(&setup.log);
    // First Ctrl-C/SIGTERM: agents drain; a second one force-stops them. Installed
    // before anything starts, so that no signal is missed.
    let first = CancellationToken::new();
    let signals = drover_agent::AgentSignals::default();
    cancel_on_signals(vec![first.clone(), signals.force.clone()]);
    let urls: Vec<String> = setup
        .servers
        .iter()
        .map(|s| format!("http://{}", s.listen))
        .collect();
    // The context goes first, so that a client started right after (`drover up &
    // drover submit …`) finds it and waits for the server; restored if we cannot start.
    let ctx = Context {
        server: urls.join(","),
        token: setup.tokens.admin.clone(),
    };
    let ctx_file = setup.context_dir.join("context.toml");
    let previous = std::fs::read_to_string(&ctx_file).ok();
    let ctx_path = write_context(&setup.context_dir, &ctx)?;
    let mut bound = Vec::new();
    for config in &setup.servers {
        match Server::bind(config.clone()).await {
            Ok(s) => bound.push(s),
            Err(e) => {
                let _ = match &previous {
                    Some(text) => std::fs::write(&ctx_file, text),
                    None => std::fs::remove_file(&ctx_file),
                };
                let port = config.listen.port();
                return Err(match e {
                    ServerError::Bind { .. } => CliError::Other(format!(
                        "{e}; is another drover running on port {port}? pick another with --port"
                    )),
                    other => CliError::Other(other.to_string()),
                });
            }
        }
    }
    let server_stop = CancellationToken::new();
    let server_tasks: Vec<_> = bound
        .into_iter()
        .map(|s| tokio::spawn(s.serve(server_stop.clone())))
        .collect();

    let agents: Vec<_> = setup
        .agents
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, mut a)| {
            // Each agent starts with another server, so their polls spread out.
            let n = urls.len();
            a.server = (0..n)
                .map(|k| urls[(i + k) % n].as_str())
                .collect::<Vec<_>>()
                .join(",");
            tokio::spawn(drover_agent::run(a, signals.clone()))
        })
        .collect();
    print_banner(&urls, &setup, &ctx_path);

    first.cancelled().await;
    eprintln!("stopping: letting running jobs finish (Ctrl-C again to stop them now)");
    signals.drain.cancel();
    for a in agents {
        match a.await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => eprintln!("an agent stopped with an error: {e}"),
            Err(e) => eprintln!("an agent task failed: {e}"),
        }
    }
    server_stop.cancel();
    for task in server_tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(CliError::Other(e.to_string())),
            Err(e) => return Err(CliError::Other(e.to_string())),
        }
    }
    eprintln!("stopped");
    Ok(0)
}

fn print_banner(urls: &[String], setup: &UpSetup, ctx_path: &std::path::Path) {
    match urls {
        [url] => outln!("drover is up at {url}"),
        _ => outln!(
            "drover is up at {} ({} servers on one PostgreSQL database)",
            urls.join(", "),
            urls.len()
        ),
    }
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

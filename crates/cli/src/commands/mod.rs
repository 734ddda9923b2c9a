//! The commands, one file per group: `server`, `agent`, `submit` (and wait), `jobs`
//! (status, ls, cancel, retry, events), `logs`, `files` (uploads and artifacts), `admin`
//! (agents, tokens, audit).

pub mod admin;
pub mod agent;
pub mod files;
pub mod groups;
pub mod jobs;
pub mod logs;
pub mod schedules;
pub mod server;
pub mod submit;
pub mod templates;

use tokio_util::sync::CancellationToken;

use crate::config::LogConfig;

/// Sets up `tracing` on stderr with the resolved format and filter.
pub fn init_tracing(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.filter).unwrap_or_else(|e| {
        eprintln!(
            "warning: log filter {:?} is invalid ({e}); using info",
            log.filter
        );
        tracing_subscriber::EnvFilter::new("info")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(crate::output::stderr_is_tty())
        .with_writer(std::io::stderr);
    let _ = if log.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Cancels `tokens[0]` on the first Ctrl-C (SIGINT) or SIGTERM, `tokens[1]` on the
/// second, and so on. The handlers are installed before this returns, so a signal sent
/// at any moment after it is seen: installed from inside a task, they left a window in
/// which a Ctrl-C sent to a freshly started `drover up` was lost (a background process
/// of a script starts with SIGINT ignored).
pub fn cancel_on_signals(tokens: Vec<CancellationToken>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return;
    };
    tokio::spawn(async move {
        for token in tokens {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            token.cancel();
        }
    });
}

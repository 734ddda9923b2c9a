//! `install_signal_handlers` maps real signals to the agent's tokens (own test binary:
//! the handlers are process-wide).

use std::time::Duration;

use nix::sys::signal::{raise, Signal};

async fn cancelled(token: &tokio_util::sync::CancellationToken) {
    tokio::time::timeout(Duration::from_secs(10), token.cancelled())
        .await
        .expect("the signal reached the token");
}

#[tokio::test]
async fn usr1_finishes_first_term_drains_second_forces() {
    let signals = drover_agent::install_signal_handlers();
    // Let the handler task install itself before raising.
    tokio::task::yield_now().await;
    raise(Signal::SIGUSR1).unwrap();
    cancelled(&signals.finish).await;
    assert!(!signals.drain.is_cancelled());
    raise(Signal::SIGTERM).unwrap();
    cancelled(&signals.drain).await;
    assert!(!signals.force.is_cancelled());
    raise(Signal::SIGINT).unwrap();
    cancelled(&signals.force).await;
}

//! Several servers on one PostgreSQL database.
//!
//! - **Wake-ups cross servers.** Every wake-up of the hub (work available, an agent's
//!   message, a job's change, an attempt's end) is also published with `pg_notify` on
//!   the `drover_wake` channel, several to one notification; each server LISTENs and
//!   replays the others' on its own hub. A notification lost (a dropped listener
//!   connection) only costs latency, as with every wake-up: waiters re-read the store.
//! - **Duties one server does** (lease reaper, provisioner, retention, log mover, agent
//!   pruner) run only while this server holds a session advisory lock, kept on a
//!   connection of its own and checked every second. When that server dies its
//!   connection closes, PostgreSQL releases the lock, and another server takes it at its
//!   next try (within a second).
//!
//! On SQLite one server owns the database (a lock file), so it leads and nothing is
//! published.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnection, PgListener};
use sqlx::{Connection, Executor};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::hub::{Hub, Wake};

/// The advisory lock whose holder does the singleton duties.
const LEADER_LOCK: i64 = 0x6472_6f76_6572; // "drover"
/// The NOTIFY channel.
const CHANNEL: &str = "drover_wake";
/// How often the leader checks its lock connection, and others try to take the lock.
const LEADER_CHECK: Duration = Duration::from_secs(1);
/// Most bytes of one notification's payload (PostgreSQL's limit is 8000).
const PAYLOAD: usize = 7000;

/// Whether this server does the singleton duties now.
#[derive(Clone)]
pub struct Leader {
    rx: watch::Receiver<bool>,
}

impl Leader {
    /// A leader that always leads (one server on SQLite).
    pub fn always() -> Leader {
        Leader {
            rx: watch::channel(true).1,
        }
    }

    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }
}

/// Takes and holds the leader lock until `shutdown`; the receiver says whether it is held.
pub fn lead(url: String, shutdown: CancellationToken) -> Leader {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            match hold_lock(&url, &tx, &shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    if *tx.borrow() {
                        tracing::warn!(error = %e, "lost the leader lock; another server takes the singleton duties");
                    }
                    let _ = tx.send(false);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(LEADER_CHECK) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
    Leader { rx }
}

/// Tries to take the lock and holds it while its connection answers; Ok at shutdown.
async fn hold_lock(
    url: &str,
    tx: &watch::Sender<bool>,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect(url).await?;
    loop {
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut conn)
            .await?;
        if held {
            tracing::info!(
                "this server now does the singleton duties (reaper, provisioner, retention)"
            );
            let _ = tx.send(true);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(LEADER_CHECK) => {}
                    _ = shutdown.cancelled() => {
                        let _ = tx.send(false);
                        let _ = conn.close().await;
                        return Ok(());
                    }
                }
                conn.execute("SELECT 1").await?;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(LEADER_CHECK) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// Publishes this server's wake-ups and replays the other servers' on `hub`.
pub fn bridge(
    url: String,
    pool: sqlx::AnyPool,
    hub: &Hub,
    mut outgoing: mpsc::UnboundedReceiver<Wake>,
    shutdown: CancellationToken,
) {
    let me: Arc<str> = Arc::from(uuid::Uuid::now_v7().simple().to_string());
    let sender_id = me.clone();
    tokio::spawn(async move {
        while let Some(first) = outgoing.recv().await {
            let mut lines = vec![first.encode()];
            while let Ok(more) = outgoing.try_recv() {
                lines.push(more.encode());
            }
            for payload in payloads(&sender_id, &lines) {
                if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(payload)
                    .execute(&pool)
                    .await
                {
                    tracing::warn!(error = %e, "cannot tell the other servers of a change; they see it at their next read");
                }
            }
        }
    });
    let hub = hub.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = listen(&url, &me, &hub, &shutdown).await {
                tracing::warn!(error = %e, "listening for the other servers' changes failed; reconnecting");
            }
            if shutdown.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

/// Payloads of at most [`PAYLOAD`] bytes: the sender's id, then one wake-up per line.
fn payloads(me: &str, lines: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::from(me);
    for l in lines {
        if cur.len() + l.len() + 1 > PAYLOAD && cur.len() > me.len() {
            out.push(std::mem::replace(&mut cur, String::from(me)));
        }
        cur.push('\n');
        cur.push_str(l);
    }
    if cur.len() > me.len() {
        out.push(cur);
    }
    out
}

async fn listen(
    url: &str,
    me: &str,
    hub: &Hub,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(CHANNEL).await?;
    // What changed while no one listened is unknown: wake every waiter to re-read.
    hub.replay(Wake::Work);
    loop {
        let n = tokio::select! {
            n = listener.recv() => n?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let mut lines = n.payload().lines();
        if lines.next() == Some(me) {
            continue;
        }
        for line in lines {
            if let Some(w) = Wake::decode(line) {
                hub.replay(w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_limit_and_keep_every_line() {
        let lines: Vec<String> = (0..2000).map(|i| format!("j:job-{i:08}")).collect();
        let out = payloads("me", &lines);
        assert!(out.len() > 1);
        assert!(out
            .iter()
            .all(|p| p.len() <= PAYLOAD && p.starts_with("me\n")));
        let back: Vec<&str> = out.iter().flat_map(|p| p.lines().skip(1)).collect();
        assert_eq!(back, lines.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

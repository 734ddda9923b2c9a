//! Agents providers started: a row per start (`provisioned`), its single-use token, and
//! how it ended. The provisioner keeps its handles (child processes, containers) in
//! memory; these rows let a restarted server find its agents again.

use chrono::{DateTime, Utc};
use drover_core::labels::Labels;
use sqlx::Row;

use super::audit::audit_in_tx;
use super::tokens::{insert_token, NewToken};
use super::{from_ms, ms, Result, Store};

/// A start that has not ended.
#[derive(Debug, Clone)]
pub struct LiveStart {
    pub id: String,
    pub provider: String,
    pub kind: String,
    /// A pid or a container id, once known.
    pub handle: Option<String>,
    pub agent_id: Option<String>,
    /// `starting`, `running` or `stopping`.
    pub state: String,
    pub started_at: DateTime<Utc>,
}

/// Counts of one provider's starts.
#[derive(Debug, Clone, Default)]
pub struct StartCounts {
    pub starts: u64,
    pub failures: u64,
    pub last_failure: Option<String>,
    /// When the last start failed.
    pub last_failure_at: Option<DateTime<Utc>>,
    /// Failed starts since the last one that registered.
    pub failures_in_a_row: u32,
}

impl Store {
    /// Records a start and creates its single-use bootstrap token (hash given) with
    /// exactly `labels`, expiring at `expires_at`.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_start(
        &self,
        id: &str,
        provider: &str,
        kind: &str,
        token_hash: &str,
        labels: &Labels,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let token = NewToken {
            name: format!("provider:{provider}:{id}"),
            scope: "bootstrap".into(),
            hash: token_hash.into(),
            expires_at: Some(expires_at),
            labels: labels.clone(),
        };
        let token_id = insert_token(&mut tx, &token, now).await?;
        sqlx::query(
            "INSERT INTO provisioned (id, provider, kind, token_id, state, started_at) VALUES ($1, $2, $3, $4, 'starting', $5)",
        )
        .bind(id)
        .bind(provider)
        .bind(kind)
        .bind(&token_id)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        audit_in_tx(
            &mut tx,
            "server:provisioner",
            "agent.provision",
            id,
            Some(provider),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The pid or container id of a start.
    pub async fn set_start_handle(&self, id: &str, handle: &str) -> Result<()> {
        sqlx::query("UPDATE provisioned SET handle = $1 WHERE id = $2")
            .bind(handle)
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// An agent registered with the token of a start: the start is running.
    pub async fn start_registered(&self, token_id: &str, agent_id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE provisioned SET agent_id = $1, state = 'running' WHERE token_id = $2 AND ended_at IS NULL",
        )
        .bind(agent_id)
        .bind(token_id)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The provisioner told a start's agent to stop.
    pub async fn start_stopping(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE provisioned SET state = 'stopping' WHERE id = $1 AND ended_at IS NULL")
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// A start ended: `failed` (with why) or `exited`. Its token stops working.
    pub async fn start_ended(
        &self,
        id: &str,
        state: &str,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query("UPDATE provisioned SET state = $1, reason = $2, ended_at = $3 WHERE id = $4 AND ended_at IS NULL")
            .bind(state)
            .bind(reason)
            .bind(ms(now))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = (SELECT token_id FROM provisioned WHERE id = $2) AND revoked_at IS NULL")
            .bind(ms(now))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every start that has not ended, oldest first.
    pub async fn live_starts(&self) -> Result<Vec<LiveStart>> {
        let rows = sqlx::query(
            "SELECT id, provider, kind, handle, agent_id, state, started_at FROM provisioned WHERE ended_at IS NULL ORDER BY started_at",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(LiveStart {
                    id: r.try_get("id")?,
                    provider: r.try_get("provider")?,
                    kind: r.try_get("kind")?,
                    handle: r.try_get("handle")?,
                    agent_id: r.try_get("agent_id")?,
                    state: r.try_get("state")?,
                    started_at: from_ms(r.try_get("started_at")?),
                })
            })
            .collect()
    }

    /// Starts and failures of `provider`, and its starts in the last minute.
    pub async fn start_counts(
        &self,
        provider: &str,
        now: DateTime<Utc>,
    ) -> Result<(StartCounts, u32)> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS starts, SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS failures, SUM(CASE WHEN started_at > $2 THEN 1 ELSE 0 END) AS recent FROM provisioned WHERE provider = $1",
        )
        .bind(provider)
        .bind(ms(now) - 60_000)
        .fetch_one(&self.read)
        .await?;
        let mut c = StartCounts {
            starts: row.try_get::<i64, _>("starts")? as u64,
            failures: row.try_get::<Option<i64>, _>("failures")?.unwrap_or(0) as u64,
            ..Default::default()
        };
        let recent = row.try_get::<Option<i64>, _>("recent")?.unwrap_or(0) as u32;
        // Failed starts in a row: the latest ended or registered starts, newest first,
        // up to one that did not fail.
        let states: Vec<String> = sqlx::query_scalar(
            "SELECT state FROM provisioned WHERE provider = $1 AND (ended_at IS NOT NULL OR agent_id IS NOT NULL) ORDER BY started_at DESC LIMIT 20",
        )
        .bind(provider)
        .fetch_all(&self.read)
        .await?;
        c.failures_in_a_row = states.iter().take_while(|s| *s == "failed").count() as u32;
        if c.failures > 0 {
            let r = sqlx::query(
                "SELECT reason, ended_at FROM provisioned WHERE provider = $1 AND state = 'failed' ORDER BY started_at DESC LIMIT 1",
            )
            .bind(provider)
            .fetch_one(&self.read)
            .await?;
            c.last_failure = r.try_get("reason")?;
            c.last_failure_at = super::opt_time(&r, "ended_at")?;
        }
        Ok((c, recent))
    }

    /// Forgets starts that ended before `cutoff`.
    pub async fn prune_starts(&self, cutoff: DateTime<Utc>) -> Result<()> {
        sqlx::query("DELETE FROM provisioned WHERE ended_at IS NOT NULL AND ended_at < $1")
            .bind(ms(cutoff))
            .execute(&self.write)
            .await?;
        Ok(())
    }
}

//! Agent verbs: register, authenticate by session token, list.

use std::time::Duration;

use chrono::{DateTime, Utc};
use drover_core::api::{Agent, AgentStats, HostInfo};
use drover_core::labels::Labels;
use sqlx::Row;

use super::audit::audit_in_tx;
use super::{from_ms, json_col, ms, to_json, Result, Store};

/// What an agent registers with.
#[derive(Debug, Clone)]
pub struct NewAgent {
    pub name: String,
    pub labels: Labels,
    pub queues: Vec<String>,
    pub slots: u32,
    pub host: HostInfo,
}

/// An authenticated agent, as polls and attempt writes see it.
#[derive(Debug, Clone)]
pub struct AgentAuth {
    pub id: String,
    pub name: String,
    pub labels: Labels,
    pub queues: Vec<String>,
    pub slots: u32,
}

impl Store {
    /// Stores a new agent with the hash of its session token; returns its id and name
    /// (its own, or with a `-N` suffix when an online agent has that name already).
    pub async fn register_agent(
        &self,
        agent: &NewAgent,
        token_hash: &str,
        actor: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Result<(String, String)> {
        let id = format!("a-{}", uuid::Uuid::now_v7().simple());
        let mut tx = self.write.begin().await?;
        // Two agents on one host both default to its name: the second online one
        // becomes `NAME-2`, and so on, so that lists tell them apart.
        let mut name = agent.name.clone();
        for n in 2.. {
            let taken: Option<String> = sqlx::query_scalar(
                "SELECT id FROM agents WHERE name = $1 AND last_seen_at > $2 AND (left_at IS NULL OR left_at < last_seen_at) LIMIT 1",
            )
            .bind(&name)
            .bind(ms(now) - ttl.as_millis() as i64)
            .fetch_optional(&mut *tx)
            .await?;
            if taken.is_none() {
                break;
            }
            name = format!("{}-{n}", agent.name);
        }
        sqlx::query(
            "INSERT INTO agents (id, name, token_hash, labels, queues, slots, host, stats, registered_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
        )
        .bind(&id)
        .bind(&name)
        .bind(token_hash)
        .bind(to_json(&agent.labels))
        .bind(to_json(&agent.queues))
        .bind(i64::from(agent.slots))
        .bind(to_json(&agent.host))
        .bind(to_json(&AgentStats::default()))
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        audit_in_tx(&mut tx, actor, "agent.register", &id, Some(&name), now).await?;
        tx.commit().await?;
        Ok((id, name))
    }

    /// Registers an agent again under the id it had, when `token_hash` is still its
    /// session token's; false when the server does not know that identity.
    pub async fn resume_agent(
        &self,
        agent_id: &str,
        token_hash: &str,
        agent: &NewAgent,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let n = sqlx::query(
            "UPDATE agents SET name = $1, labels = $2, queues = $3, slots = $4, host = $5, last_seen_at = $6 WHERE id = $7 AND token_hash = $8",
        )
        .bind(&agent.name)
        .bind(to_json(&agent.labels))
        .bind(to_json(&agent.queues))
        .bind(i64::from(agent.slots))
        .bind(to_json(&agent.host))
        .bind(ms(now))
        .bind(agent_id)
        .bind(token_hash)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 1 {
            audit_in_tx(
                &mut tx,
                actor,
                "agent.resume",
                agent_id,
                Some(&agent.name),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(n == 1)
    }

    /// An agent leaves (its clean exit): it shows offline at once, and attempts it
    /// still holds are lost now rather than when their leases expire.
    pub async fn agent_left(&self, agent_id: &str, now: DateTime<Utc>) -> Result<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query("UPDATE agents SET left_at = $1 WHERE id = $2")
            .bind(ms(now))
            .bind(agent_id)
            .execute(&mut *tx)
            .await?;
        self.lose_held(&mut tx, agent_id, "the agent left", now)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Loses every attempt `agent_id` holds.
    async fn lose_held(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        agent_id: &str,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let held: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE agent_id = $1 AND state IN ('leased', 'running')",
        )
        .bind(agent_id)
        .fetch_all(&mut **tx)
        .await?;
        for job in held {
            self.lose(tx, &job, why, now).await?;
        }
        Ok(())
    }

    /// Agents not seen since `cutoff`, for pruning.
    pub async fn agents_unseen_since(&self, cutoff: DateTime<Utc>) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM agents WHERE last_seen_at < $1")
                .bind(ms(cutoff))
                .fetch_all(&self.read)
                .await?,
        )
    }

    /// Removes an agent: its session token stops working and the attempts it held are
    /// lost (retried where attempts remain).
    pub async fn remove_agent(
        &self,
        agent_id: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let n = sqlx::query("DELETE FROM agents WHERE id = $1")
            .bind(agent_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(super::StoreError::NotFound(format!(
                "no agent with id {agent_id:?}"
            )));
        }
        self.lose_held(&mut tx, agent_id, "the agent was removed", now)
            .await?;
        audit_in_tx(&mut tx, actor, "agent.remove", agent_id, None, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Fails with [`super::StoreError::UnknownAgent`] when the agent was removed (or
    /// pruned), so that a poll it still holds ends.
    pub async fn ensure_agent(&self, agent_id: &str) -> Result<()> {
        let known: Option<String> = sqlx::query_scalar("SELECT id FROM agents WHERE id = $1")
            .bind(agent_id)
            .fetch_optional(&self.read)
            .await?;
        match known {
            Some(_) => Ok(()),
            None => Err(super::StoreError::UnknownAgent {
                agent_id: agent_id.to_string(),
            }),
        }
    }

    /// The agent whose session token hashes to `token_hash`.
    pub async fn agent_by_token(&self, token_hash: &str) -> Result<Option<AgentAuth>> {
        let row =
            sqlx::query("SELECT id, name, labels, queues, slots FROM agents WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(&self.read)
                .await?;
        row.map(|row| {
            Ok(AgentAuth {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                labels: json_col(&row, "labels")?,
                queues: json_col(&row, "queues")?,
                slots: row.try_get::<i64, _>("slots")? as u32,
            })
        })
        .transpose()
    }

    /// Every agent not pruned yet, newest first; `online` when it polled within `ttl`
    /// and has not left since.
    pub async fn list_agents(&self, now: DateTime<Utc>, ttl: Duration) -> Result<Vec<Agent>> {
        let rows = sqlx::query(
            "SELECT a.id, a.name, a.labels, a.queues, a.slots, a.host, a.stats, a.registered_at, a.last_seen_at, a.left_at, a.draining, (SELECT COUNT(*) FROM jobs j WHERE j.agent_id = a.id AND j.state IN ('leased', 'running')) AS running, (SELECT p.provider FROM provisioned p WHERE p.agent_id = a.id LIMIT 1) AS provider FROM agents a ORDER BY a.registered_at DESC",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| {
                let last_seen = from_ms(row.try_get("last_seen_at")?);
                let left = super::opt_time(row, "left_at")?.is_some_and(|t| t >= last_seen);
                let online = !left && (now - last_seen).to_std().map(|d| d <= ttl).unwrap_or(true);
                Ok(Agent {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    labels: json_col(row, "labels")?,
                    queues: json_col(row, "queues")?,
                    slots: row.try_get::<i64, _>("slots")? as u32,
                    running: row.try_get::<i64, _>("running")? as u32,
                    status: match (online, row.try_get::<i64, _>("draining")? != 0) {
                        (false, _) => "offline",
                        (true, true) => "draining",
                        (true, false) => "online",
                    }
                    .to_string(),
                    host: json_col(row, "host")?,
                    stats: json_col(row, "stats")?,
                    registered_at: from_ms(row.try_get("registered_at")?),
                    last_seen_at: last_seen,
                    provider: row.try_get("provider")?,
                })
            })
            .collect()
    }
}

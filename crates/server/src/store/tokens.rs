//! Client token verbs: tokens are stored only as SHA-256 hashes.

use chrono::{DateTime, Utc};
use drover_core::labels::Labels;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::audit::audit_in_tx;
use super::{from_ms, json_col, ms, opt_time, to_json, Result, Store, StoreError};

/// A stored token, without its secret.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub scope: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Bootstrap tokens: labels forced onto the agent that registers with it.
    pub labels: Labels,
    /// Bootstrap tokens: when it was used (they work once).
    pub used_at: Option<DateTime<Utc>>,
}

/// A token to create.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub scope: String,
    pub hash: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub labels: Labels,
}

const COLS: &str = "id, name, scope, created_at, expires_at, revoked_at, labels, used_at";

fn token_from_row(row: &AnyRow) -> Result<TokenInfo> {
    let labels = match row.try_get::<Option<String>, _>("labels")? {
        Some(_) => json_col(row, "labels")?,
        None => Labels::new(),
    };
    Ok(TokenInfo {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        scope: row.try_get("scope")?,
        created_at: from_ms(row.try_get("created_at")?),
        expires_at: opt_time(row, "expires_at")?,
        revoked_at: opt_time(row, "revoked_at")?,
        labels,
        used_at: opt_time(row, "used_at")?,
    })
}

/// Stores a new token in `tx`; its id.
pub(super) async fn insert_token(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    t: &NewToken,
    now: DateTime<Utc>,
) -> Result<String> {
    let id = format!("t-{}", uuid::Uuid::now_v7().simple());
    sqlx::query(
        "INSERT INTO tokens (id, name, scope, hash, created_at, expires_at, labels) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&id)
    .bind(&t.name)
    .bind(&t.scope)
    .bind(&t.hash)
    .bind(ms(now))
    .bind(t.expires_at.map(ms))
    .bind((!t.labels.is_empty()).then(|| to_json(&t.labels)))
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

impl Store {
    /// Stores a token unless one with the same hash exists (bootstrap tokens from config).
    pub async fn ensure_token(
        &self,
        name: &str,
        scope: &str,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO tokens (id, name, scope, hash, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (hash) DO NOTHING",
        )
        .bind(format!("t-{}", uuid::Uuid::now_v7().simple()))
        .bind(name)
        .bind(scope)
        .bind(hash)
        .bind(ms(now))
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// Creates a token and records who did.
    pub async fn create_token(
        &self,
        t: &NewToken,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenInfo> {
        let mut tx = self.write.begin().await?;
        let id = insert_token(&mut tx, t, now).await?;
        let detail = format!("scope {}", t.scope);
        audit_in_tx(&mut tx, actor, "token.create", &id, Some(&detail), now).await?;
        let row = sqlx::query(&format!("SELECT {COLS} FROM tokens WHERE id = $1"))
            .bind(&id)
            .fetch_one(&mut *tx)
            .await?;
        let info = token_from_row(&row)?;
        tx.commit().await?;
        Ok(info)
    }

    /// One token by id.
    pub async fn token_by_id(&self, id: &str) -> Result<Option<TokenInfo>> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Every token, newest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM tokens ORDER BY created_at DESC, id DESC"
        ))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token; it fails on its next request.
    pub async fn revoke_token(
        &self,
        id: &str,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenInfo> {
        let mut tx = self.write.begin().await?;
        // Revoking the last working admin token would lock every admin out for good.
        let scope: Option<String> =
            sqlx::query_scalar("SELECT scope FROM tokens WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if scope.as_deref() == Some("admin") {
            let others: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM tokens WHERE scope = 'admin' AND id <> $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
            )
            .bind(id)
            .bind(ms(now))
            .fetch_one(&mut *tx)
            .await?;
            if others == 0 {
                return Err(StoreError::Conflict(format!(
                    "token {id} is the last admin token: create another one (drover token create --scope admin) before revoking it"
                )));
            }
        }
        let done =
            sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(ms(now))
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        let row = sqlx::query(&format!("SELECT {COLS} FROM tokens WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no token with id {id:?}")))?;
        if done == 0 {
            return Err(StoreError::Conflict(format!(
                "token {id} is already revoked"
            )));
        }
        audit_in_tx(&mut tx, actor, "token.revoke", id, None, now).await?;
        let info = token_from_row(&row)?;
        tx.commit().await?;
        Ok(info)
    }

    /// The token whose secret hashes to `hash`.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM tokens WHERE hash = $1"))
            .bind(hash)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// Marks a bootstrap token used; false when it was used already (by a racing request too).
    pub async fn consume_bootstrap(&self, id: &str, now: DateTime<Utc>) -> Result<bool> {
        let n = sqlx::query("UPDATE tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
            .bind(ms(now))
            .bind(id)
            .execute(&self.write)
            .await?
            .rows_affected();
        Ok(n == 1)
    }
}

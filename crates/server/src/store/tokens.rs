//! Client token verbs: tokens are stored only as SHA-256 hashes.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{ms, opt_time, Result, Store};

/// A stored token, without its secret.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub id: String,
    pub name: String,
    pub scope: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Stores a token unless one with the same hash exists.
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

    /// The token whose secret hashes to `hash`.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>> {
        let row = sqlx::query(
            "SELECT id, name, scope, expires_at, revoked_at FROM tokens WHERE hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.read)
        .await?;
        row.map(|row| {
            Ok(TokenInfo {
                id: row.try_get("id")?,
                name: row.try_get("name")?,
                scope: row.try_get("scope")?,
                expires_at: opt_time(&row, "expires_at")?,
                revoked_at: opt_time(&row, "revoked_at")?,
            })
        })
        .transpose()
    }
}

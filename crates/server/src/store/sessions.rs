//! Dashboard sessions: a browser's sign-in, standing for the API token it was made from.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::tokens::TokenInfo;
use super::{ms, Result, Store};

impl Store {
    /// Stores a session (its secret hashed) for the token `token_id`.
    pub async fn create_session(
        &self,
        hash: &str,
        token_id: &str,
        csrf: &str,
        now: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> Result<()> {
        sqlx::query("INSERT INTO dashboard_sessions (hash, token_id, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(hash)
            .bind(token_id)
            .bind(csrf)
            .bind(ms(now))
            .bind(ms(expires))
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// The token and CSRF secret of a session that has not expired.
    pub async fn session(
        &self,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(TokenInfo, String)>> {
        let row = sqlx::query(
            "SELECT token_id, csrf FROM dashboard_sessions WHERE hash = $1 AND expires_at > $2",
        )
        .bind(hash)
        .bind(ms(now))
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let token_id: String = row.try_get("token_id")?;
        let csrf: String = row.try_get("csrf")?;
        Ok(self.token_by_id(&token_id).await?.map(|t| (t, csrf)))
    }

    /// Ends a session (sign-out); expired ones go too.
    pub async fn delete_session(&self, hash: &str, now: DateTime<Utc>) -> Result<()> {
        sqlx::query("DELETE FROM dashboard_sessions WHERE hash = $1 OR expires_at <= $2")
            .bind(hash)
            .bind(ms(now))
            .execute(&self.write)
            .await?;
        Ok(())
    }
}

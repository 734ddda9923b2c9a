//! Job templates: every version is kept, since a job names the one it came from; `rm`
//! marks all versions deleted, and a template made again under that name goes on
//! numbering.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use drover_core::template::{ParamSpec, Template};
use drover_core::SubmitRequest;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{from_ms, json_col, ms, to_json, Result, Store, StoreError};

const COLS: &str = "name, version, job, params, created_at";

fn template_from_row(row: &AnyRow) -> Result<Template> {
    Ok(Template {
        name: row.try_get("name")?,
        version: row.try_get::<i64, _>("version")? as u32,
        job: json_col(row, "job")?,
        params: json_col(row, "params")?,
        created_at: from_ms(row.try_get("created_at")?),
    })
}

fn no_template(name: &str, version: Option<u32>) -> StoreError {
    StoreError::NotFound(match version {
        Some(v) => format!("template {name:?} has no version {v}"),
        None => format!("no template named {name:?}"),
    })
}

impl Store {
    /// Stores the next version of template `name`.
    pub async fn create_template(
        &self,
        name: &str,
        job: &SubmitRequest,
        params: &BTreeMap<String, ParamSpec>,
        now: DateTime<Utc>,
    ) -> Result<Template> {
        let mut tx = self.write.begin().await?;
        let last: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM templates WHERE name = $1")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        let version = last.unwrap_or(0) + 1;
        let inserted = sqlx::query(
            "INSERT INTO templates (name, version, job, params, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(name)
        .bind(version)
        .bind(to_json(job))
        .bind(to_json(params))
        .bind(ms(now))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Conflict(format!(
                    "another version of template {name:?} was made at the same moment; try again"
                )))
            }
            other => other?,
        };
        tx.commit().await?;
        Ok(Template {
            name: name.to_string(),
            version: version as u32,
            job: job.clone(),
            params: params.clone(),
            created_at: from_ms(ms(now)),
        })
    }

    /// Version `version` of template `name` (default: the latest), unless deleted.
    pub async fn template(&self, name: &str, version: Option<u32>) -> Result<Template> {
        let row = match version {
            Some(v) => sqlx::query(&format!(
                "SELECT {COLS} FROM templates WHERE name = $1 AND version = $2 AND deleted_at IS NULL"
            ))
            .bind(name)
            .bind(i64::from(v))
            .fetch_optional(&self.read)
            .await?,
            None => sqlx::query(&format!(
                "SELECT {COLS} FROM templates WHERE name = $1 AND deleted_at IS NULL ORDER BY version DESC LIMIT 1"
            ))
            .bind(name)
            .fetch_optional(&self.read)
            .await?,
        };
        template_from_row(&row.ok_or_else(|| no_template(name, version))?)
    }

    /// The latest version of every template, by name.
    pub async fn templates(&self) -> Result<Vec<Template>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLS} FROM templates t WHERE deleted_at IS NULL AND version = (SELECT MAX(version) FROM templates u WHERE u.name = t.name AND u.deleted_at IS NULL) ORDER BY name"
        ))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(template_from_row).collect()
    }

    /// Deletes every version of template `name` (jobs made from it keep their record).
    pub async fn delete_template(&self, name: &str, now: DateTime<Utc>) -> Result<()> {
        let done = sqlx::query(
            "UPDATE templates SET deleted_at = $1 WHERE name = $2 AND deleted_at IS NULL",
        )
        .bind(ms(now))
        .bind(name)
        .execute(&self.write)
        .await?;
        match done.rows_affected() {
            0 => Err(no_template(name, None)),
            _ => Ok(()),
        }
    }
}

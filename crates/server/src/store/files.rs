//! Rows of stored files: uploads and artifacts. The bytes are in the file store
//! (`crate::files`); a row is written only after they are all there, so a row always
//! points at a whole file.

use chrono::{DateTime, Utc};
use drover_core::files::{ArtifactLimits, FileInfo};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{from_ms, ms, Result, Store, StoreError};

const FILE_COLS: &str = "id, kind, name, size, sha256, job_id, attempt, created_at";

fn file_from_row(row: &AnyRow) -> Result<FileInfo> {
    Ok(FileInfo {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        name: row.try_get("name")?,
        size: row.try_get::<i64, _>("size")? as u64,
        sha256: row.try_get("sha256")?,
        job_id: row.try_get("job_id")?,
        attempt: row.try_get::<Option<i64>, _>("attempt")?.map(|a| a as u32),
        created_at: from_ms(row.try_get("created_at")?),
    })
}

/// A file whose bytes were just stored.
#[derive(Debug, Clone)]
pub struct NewFile<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub size: u64,
    pub sha256: &'a str,
}

/// Jobs not yet ended whose inputs name the upload `id` (ids are UUIDs, so a plain
/// substring match on the stored JSON is exact).
const USED_BY_UNFINISHED: &str =
    "SELECT id FROM jobs WHERE state IN ('queued', 'leased', 'running') AND inputs LIKE $1 LIMIT 1";

/// What `attempt` of `job_id` has uploaded as artifacts other than `path`: files and
/// bytes.
async fn artifact_usage(
    conn: &mut sqlx::AnyConnection,
    job_id: &str,
    attempt: u32,
    path: &str,
) -> Result<(u32, u64)> {
    let row = sqlx::query("SELECT COUNT(*) AS n, COALESCE(SUM(size), 0) AS bytes FROM files WHERE job_id = $1 AND attempt = $2 AND name <> $3")
        .bind(job_id)
        .bind(i64::from(attempt))
        .bind(path)
        .fetch_one(conn)
        .await?;
    Ok((
        row.try_get::<i64, _>("n")? as u32,
        row.try_get::<i64, _>("bytes")? as u64,
    ))
}

impl Store {
    /// Records an upload.
    pub async fn add_upload(&self, f: NewFile<'_>, now: DateTime<Utc>) -> Result<FileInfo> {
        sqlx::query("INSERT INTO files (id, kind, name, size, sha256, created_at) VALUES ($1, 'upload', $2, $3, $4, $5)")
            .bind(f.id)
            .bind(f.name)
            .bind(f.size as i64)
            .bind(f.sha256)
            .bind(ms(now))
            .execute(&self.write)
            .await?;
        self.file(f.id).await
    }

    /// One stored file.
    pub async fn file(&self, id: &str) -> Result<FileInfo> {
        let row = sqlx::query(&format!("SELECT {FILE_COLS} FROM files WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.write)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no file with id {id:?}")))?;
        file_from_row(&row)
    }

    /// The newest uploads first.
    pub async fn uploads(&self, limit: u32) -> Result<Vec<FileInfo>> {
        let rows = sqlx::query(&format!(
            "SELECT {FILE_COLS} FROM files WHERE kind = 'upload' ORDER BY created_at DESC, id DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(file_from_row).collect()
    }

    /// Whether an upload with this id exists.
    pub async fn upload_exists(&self, id: &str) -> Result<bool> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT id FROM files WHERE id = $1 AND kind = 'upload'")
                .bind(id)
                .fetch_optional(&self.read)
                .await?;
        Ok(found.is_some())
    }

    /// Forgets a file; the caller deletes its bytes. An upload that a job not yet ended
    /// takes as input is kept (409), since that job would fail without it.
    pub async fn remove_file(&self, id: &str) -> Result<FileInfo> {
        let file = self.file(id).await?;
        if file.kind == "upload" {
            let user: Option<String> = sqlx::query_scalar(USED_BY_UNFINISHED)
                .bind(format!("%\"{id}\"%"))
                .fetch_optional(&self.read)
                .await?;
            if let Some(job) = user {
                return Err(StoreError::Conflict(format!(
                    "file {id} is an input of job {job}, which has not ended; cancel it or wait for it to end"
                )));
            }
        }
        sqlx::query("DELETE FROM files WHERE id = $1")
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(file)
    }

    /// Bytes `attempt` may still upload as the artifact `path`, or why it may not upload
    /// one at all (too many files).
    pub async fn artifact_room(
        &self,
        job_id: &str,
        attempt: u32,
        path: &str,
        limits: ArtifactLimits,
    ) -> Result<u64> {
        let mut conn = self.read.acquire().await?;
        let (files, bytes) = artifact_usage(&mut conn, job_id, attempt, path).await?;
        if files >= limits.max_files {
            return Err(StoreError::TooLarge(format!(
                "attempt {attempt} of job {job_id} already has {files} artifacts, the limit"
            )));
        }
        Ok(limits.max_bytes.saturating_sub(bytes))
    }

    /// Records an artifact whose bytes are stored, if `attempt` is still the job's
    /// current attempt and held by `agent_id` (checked in the same transaction).
    /// Returns the artifact and the id of one it replaced (same path, same attempt),
    /// whose bytes the caller deletes.
    pub async fn add_artifact(
        &self,
        agent_id: &str,
        job_id: &str,
        attempt: u32,
        f: NewFile<'_>,
        limits: ArtifactLimits,
        now: DateTime<Utc>,
    ) -> Result<(FileInfo, Option<String>)> {
        let mut tx = self.write.begin().await?;
        self.fence(&mut tx, agent_id, job_id, attempt).await?;
        let (files, bytes) = artifact_usage(&mut tx, job_id, attempt, f.name).await?;
        if files >= limits.max_files || bytes.saturating_add(f.size) > limits.max_bytes {
            return Err(StoreError::TooLarge(format!(
                "attempt {attempt} of job {job_id} may upload at most {} artifacts and {} bytes of them",
                limits.max_files, limits.max_bytes
            )));
        }
        let replaced: Option<String> = sqlx::query_scalar(
            "SELECT id FROM files WHERE job_id = $1 AND attempt = $2 AND name = $3",
        )
        .bind(job_id)
        .bind(i64::from(attempt))
        .bind(f.name)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(old) = &replaced {
            sqlx::query("DELETE FROM files WHERE id = $1")
                .bind(old)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("INSERT INTO files (id, kind, name, size, sha256, job_id, attempt, created_at) VALUES ($1, 'artifact', $2, $3, $4, $5, $6, $7)")
            .bind(f.id)
            .bind(f.name)
            .bind(f.size as i64)
            .bind(f.sha256)
            .bind(job_id)
            .bind(i64::from(attempt))
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((self.file(f.id).await?, replaced))
    }

    /// A job's artifacts, of one attempt or of all, by attempt then path.
    pub async fn artifacts(&self, job_id: &str, attempt: Option<u32>) -> Result<Vec<FileInfo>> {
        let rows = sqlx::query(&format!(
            "SELECT {FILE_COLS} FROM files WHERE kind = 'artifact' AND job_id = $1 AND ($2 < 0 OR attempt = $2) ORDER BY attempt, name"
        ))
        .bind(job_id)
        .bind(attempt.map_or(-1, i64::from))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(file_from_row).collect()
    }

    /// Artifacts of jobs that ended before `cutoff`.
    pub async fn artifacts_to_expire(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT f.id FROM files f JOIN jobs j ON j.id = f.job_id WHERE f.kind = 'artifact' AND j.finished_at IS NOT NULL AND j.finished_at < $1 LIMIT $2")
            .bind(ms(cutoff))
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?)
    }

    /// Uploads made before `cutoff` that no job not yet ended takes as input.
    pub async fn uploads_to_expire(
        &self,
        cutoff: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<String>> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM files WHERE kind = 'upload' AND created_at < $1 ORDER BY created_at LIMIT $2",
        )
        .bind(ms(cutoff))
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        let mut unused = Vec::with_capacity(ids.len());
        for id in ids {
            let user: Option<String> = sqlx::query_scalar(USED_BY_UNFINISHED)
                .bind(format!("%\"{id}\"%"))
                .fetch_optional(&self.read)
                .await?;
            if user.is_none() {
                unused.push(id);
            }
        }
        Ok(unused)
    }

    /// Forgets files by id (their bytes are the caller's to delete, first).
    pub async fn forget_files(&self, ids: &[String]) -> Result<()> {
        for id in ids {
            sqlx::query("DELETE FROM files WHERE id = $1")
                .bind(id)
                .execute(&self.write)
                .await?;
        }
        Ok(())
    }

    /// Ids of every artifact of a job.
    pub async fn artifact_ids(&self, job_id: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT id FROM files WHERE kind = 'artifact' AND job_id = $1")
                .bind(job_id)
                .fetch_all(&self.read)
                .await?,
        )
    }
}

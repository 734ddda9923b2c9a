//! Log records, stored in chunks: one row per batch an agent ships, holding its records
//! as JSON lines. A job printing hundreds of MB thus costs a few hundred inserts rather
//! than millions, and the queue's tables never see log traffic.
//!
//! The chunks of one attempt cover disjoint `seq` ranges (keyed by `last_seq`), so
//! reading in `last_seq` order reads records in `seq` order. Storing is idempotent: a
//! batch whose records are all beyond the stored ones (what agents send) is one insert;
//! one that overlaps stored chunks is merged with them, stored records winning.

use std::collections::BTreeMap;

use drover_core::api::{LogRecord, Stream};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{from_ms, ms, Backend, Result, Store, StoreError};

/// Chunks fetched per query while reading.
const CHUNKS_PER_READ: i64 = 8;

/// One record as stored in a chunk line (timestamps as epoch milliseconds, like every
/// other stored time).
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    seq: u64,
    ts: i64,
    stream: &'a str,
    text: std::borrow::Cow<'a, str>,
}

fn encode(records: &[&LogRecord]) -> String {
    let mut out = String::with_capacity(records.iter().map(|r| r.text.len() + 64).sum());
    for r in records {
        let line = Stored {
            seq: r.seq,
            ts: ms(r.ts),
            stream: r.stream.as_str(),
            text: std::borrow::Cow::Borrowed(&r.text),
        };
        out.push_str(&serde_json::to_string(&line).expect("plain data serializes"));
        out.push('\n');
    }
    out
}

fn decode(chunk: &str) -> Result<Vec<LogRecord>> {
    chunk
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let s: Stored = serde_json::from_str(line)
                .map_err(|e| StoreError::Corrupt(format!("log chunk: {e}")))?;
            Ok(LogRecord {
                seq: s.seq,
                ts: from_ms(s.ts),
                stream: Stream::parse(s.stream)
                    .ok_or_else(|| StoreError::Corrupt(format!("log stream {:?}", s.stream)))?,
                text: s.text.into_owned(),
            })
        })
        .collect()
}

fn db_seq(seq: u64) -> i64 {
    seq.min(i64::MAX as u64) as i64
}

impl Store {
    /// Stores records; ones already stored (same seq) are left as they are.
    pub async fn append_logs(
        &self,
        job_id: &str,
        attempt: u32,
        records: &[LogRecord],
    ) -> Result<()> {
        // Sorted by seq, the first of duplicates within the batch kept.
        let mut incoming: BTreeMap<u64, &LogRecord> = BTreeMap::new();
        for r in records {
            incoming.entry(r.seq).or_insert(r);
        }
        let (Some(&lo), Some(&hi)) = (incoming.keys().next(), incoming.keys().next_back()) else {
            return Ok(());
        };
        // Encoded before the write transaction, which would otherwise hold the single
        // writer while a large batch is encoded; only a batch that overlaps stored
        // records (a resend) is encoded again, merged.
        let encoded = encode(&incoming.values().copied().collect::<Vec<_>>());
        let mut tx = self.logs_write.begin().await?;
        if self.backend == Backend::Postgres {
            // Appends to one attempt take turns, so two overlapping batches cannot both
            // miss each other (SQLite has a single writer anyway).
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), CAST($2 AS INTEGER))")
                .bind(job_id)
                .bind(i64::from(attempt))
                .execute(&mut *tx)
                .await?;
        }
        let overlapping = sqlx::query(
            "SELECT last_seq, records, object_key FROM log_chunks WHERE job_id = $1 AND attempt = $2 AND last_seq >= $3 AND first_seq <= $4",
        )
        .bind(job_id)
        .bind(i64::from(attempt))
        .bind(db_seq(lo))
        .bind(db_seq(hi))
        .fetch_all(&mut *tx)
        .await?;
        let mut stored: Vec<LogRecord> = Vec::new();
        let mut replaced_objects = Vec::new();
        for row in &overlapping {
            stored.extend(decode(&self.chunk_text(row).await?)?);
            replaced_objects.extend(row.try_get::<Option<String>, _>("object_key")?);
            sqlx::query(
                "DELETE FROM log_chunks WHERE job_id = $1 AND attempt = $2 AND last_seq = $3",
            )
            .bind(job_id)
            .bind(i64::from(attempt))
            .bind(row.try_get::<i64, _>("last_seq")?)
            .execute(&mut *tx)
            .await?;
        }
        let (first, last, encoded) = if stored.is_empty() {
            (lo, hi, encoded)
        } else {
            for r in &stored {
                incoming.insert(r.seq, r);
            }
            let merged: Vec<&LogRecord> = incoming.into_values().collect();
            let first = merged.first().map_or(lo, |r| r.seq);
            let last = merged.last().map_or(hi, |r| r.seq);
            (first, last, encode(&merged))
        };
        sqlx::query(
            "INSERT INTO log_chunks (job_id, attempt, first_seq, last_seq, records) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(job_id)
        .bind(i64::from(attempt))
        .bind(db_seq(first))
        .bind(db_seq(last))
        .bind(encoded)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.delete_objects(&replaced_objects).await;
        Ok(())
    }

    /// Stores the records of several attempts, each as [`Store::append_logs`] would:
    /// those that overlap nothing stored (what agents send) in one transaction and one
    /// multi-row insert; the others merged one by one.
    pub async fn append_logs_many(&self, items: &[(&str, u32, &[LogRecord])]) -> Result<()> {
        // Each encoded before the write transaction (see `append_logs`).
        let items: Vec<(&str, u32, Vec<&LogRecord>, String)> = items
            .iter()
            .map(|(job_id, attempt, records)| {
                let mut sorted: BTreeMap<u64, &LogRecord> = BTreeMap::new();
                for r in *records {
                    sorted.entry(r.seq).or_insert(r);
                }
                let sorted: Vec<&LogRecord> = sorted.into_values().collect();
                let encoded = encode(&sorted);
                (*job_id, *attempt, sorted, encoded)
            })
            .filter(|(_, _, records, _)| !records.is_empty())
            .collect();
        if items.is_empty() {
            return Ok(());
        }
        let mut tx = self.logs_write.begin().await?;
        if self.backend == Backend::Postgres {
            // As in `append_logs`, in one order so two batches never wait on each other.
            let mut keys: Vec<(&str, u32)> = items.iter().map(|(j, a, _, _)| (*j, *a)).collect();
            keys.sort_unstable();
            keys.dedup();
            for (job_id, attempt) in keys {
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), CAST($2 AS INTEGER))")
                    .bind(job_id)
                    .bind(i64::from(attempt))
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let mut stored: Vec<(String, u32, i64, i64)> = Vec::new();
        for chunk in items.chunks(super::CHUNK) {
            let pairs = self.values(chunk.len(), 2);
            let sql = format!(
                "SELECT job_id, attempt, first_seq, last_seq FROM log_chunks WHERE (job_id, attempt) IN (VALUES {pairs})"
            );
            let mut q = sqlx::query_as::<_, (String, i64, i64, i64)>(&sql);
            for (job_id, attempt, _, _) in chunk {
                q = q.bind(*job_id).bind(i64::from(*attempt));
            }
            for (job_id, attempt, first, last) in q.fetch_all(&mut *tx).await? {
                stored.push((job_id, attempt as u32, first, last));
            }
        }
        let range = |records: &[&LogRecord]| {
            (
                db_seq(records[0].seq),
                db_seq(records[records.len() - 1].seq),
            )
        };
        let (fresh, merge): (Vec<_>, Vec<_>) =
            items.iter().partition(|(job_id, attempt, records, _)| {
                let (lo, hi) = range(records);
                !stored.iter().any(|(j, a, first, last)| {
                    j == job_id && a == attempt && *last >= lo && *first <= hi
                })
            });
        for chunk in fresh.chunks(super::CHUNK) {
            let sql = format!(
                "INSERT INTO log_chunks (job_id, attempt, first_seq, last_seq, records) VALUES {}",
                self.values(chunk.len(), 5)
            );
            let mut q = sqlx::query(&sql);
            for (job_id, attempt, records, encoded) in chunk {
                let (lo, hi) = range(records);
                q = q
                    .bind(*job_id)
                    .bind(i64::from(*attempt))
                    .bind(lo)
                    .bind(hi)
                    .bind(encoded.as_str());
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        for (job_id, attempt, records, _) in merge {
            let records: Vec<LogRecord> = records.iter().map(|r| (*r).clone()).collect();
            self.append_logs(job_id, *attempt, &records).await?;
        }
        Ok(())
    }

    /// Up to `limit` records with `seq > after`, in order, optionally of one stream.
    pub async fn read_logs(
        &self,
        job_id: &str,
        attempt: u32,
        after: u64,
        stream: Option<Stream>,
        limit: u32,
    ) -> Result<Vec<LogRecord>> {
        let read = LogRead {
            after,
            stream,
            limit,
            gap_free: false,
        };
        Ok(self.read_log_page(job_id, attempt, read).await?.records)
    }

    /// A page of records and the cursor to read on from. With `gap_free` (for an attempt
    /// that may still be shipping) the page stops before the first missing `seq`: agents
    /// keep batches in flight, so a later batch can be stored before an earlier one, and
    /// a reader that moved past the gap would never see the earlier records.
    pub async fn read_log_page(
        &self,
        job_id: &str,
        attempt: u32,
        read: LogRead,
    ) -> Result<LogPageRead> {
        let LogRead {
            after,
            stream,
            limit,
            gap_free,
        } = read;
        let limit = limit as usize;
        let mut page = LogPageRead {
            records: Vec::new(),
            cursor: after,
        };
        let mut chunk_cursor = db_seq(after);
        loop {
            let rows = sqlx::query(
                "SELECT last_seq, records, object_key FROM log_chunks WHERE job_id = $1 AND attempt = $2 AND last_seq > $3 ORDER BY last_seq LIMIT $4",
            )
            .bind(job_id)
            .bind(i64::from(attempt))
            .bind(chunk_cursor)
            .bind(CHUNKS_PER_READ)
            .fetch_all(&self.logs_read)
            .await?;
            for row in &rows {
                chunk_cursor = row.try_get("last_seq")?;
                for r in decode(&self.chunk_text(row).await?)? {
                    if r.seq <= page.cursor {
                        continue;
                    }
                    if gap_free && r.seq != page.cursor + 1 {
                        return Ok(page);
                    }
                    if page.records.len() == limit {
                        return Ok(page);
                    }
                    page.cursor = r.seq;
                    if stream.is_none_or(|s| r.stream == s) {
                        page.records.push(r);
                    }
                }
            }
            if (rows.len() as i64) < CHUNKS_PER_READ || page.records.len() == limit {
                return Ok(page);
            }
        }
    }
}

/// Where an ended attempt's log went from the log database (`attempts.logs`, which
/// starts as `db`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogsAt {
    /// Moved to the object store; the log database keeps each chunk's key.
    Object,
    /// Deleted by retention.
    Expired,
}

impl LogsAt {
    /// As stored.
    fn as_str(self) -> &'static str {
        match self {
            LogsAt::Object => "object",
            LogsAt::Expired => "expired",
        }
    }
}

impl Store {
    /// The records of a chunk row (`records`, `object_key`): in the row, or in the
    /// object store when it was moved there.
    async fn chunk_text(&self, row: &sqlx::any::AnyRow) -> Result<String> {
        let Some(key) = row.try_get::<Option<String>, _>("object_key")? else {
            return Ok(row.try_get("records")?);
        };
        let files = self.files.as_ref().ok_or_else(|| {
            StoreError::Corrupt(format!(
                "log chunk {key} is in an object store this server does not use"
            ))
        })?;
        // The store's own error goes to the server log; the caller is told which store
        // is away (a 503: the read may work later).
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(key = %key, store = files.location(), error = %e, "cannot read a log chunk from the object store");
            StoreError::Unavailable(format!(
                "reading the log: the object store {} is unavailable",
                files.location()
            ))
        };
        let (_, mut body) = files
            .get(&object_store::path::Path::from(key.as_str()))
            .await
            .map_err(|e| unavailable(&e))?;
        let mut bytes = Vec::new();
        while let Some(part) = futures::StreamExt::next(&mut body).await {
            bytes.extend_from_slice(&part.map_err(|e| unavailable(&e))?);
        }
        String::from_utf8(bytes).map_err(|e| StoreError::Corrupt(format!("log chunk {key}: {e}")))
    }

    /// Deletes objects of moved chunks; one that cannot be deleted is only logged.
    async fn delete_objects(&self, keys: &[String]) {
        let Some(files) = &self.files else { return };
        for key in keys {
            if let Err(e) = files
                .delete(&object_store::path::Path::from(key.as_str()))
                .await
            {
                tracing::warn!(key = %key, error = %e, "cannot delete a log chunk from the object store");
            }
        }
    }

    /// Ended attempts whose log is still in the log database, oldest first.
    pub async fn logs_to_move(&self, limit: u32) -> Result<Vec<(String, u32)>> {
        let rows = sqlx::query("SELECT job_id, number FROM attempts WHERE logs = 'db' AND finished_at IS NOT NULL ORDER BY finished_at LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(job_attempt).collect()
    }

    /// Attempts whose job ended before `cutoff` and whose log was not deleted yet.
    pub async fn logs_to_expire(
        &self,
        cutoff: chrono::DateTime<chrono::Utc>,
        limit: u32,
    ) -> Result<Vec<(String, u32)>> {
        let rows = sqlx::query("SELECT a.job_id, a.number FROM attempts a JOIN jobs j ON j.id = a.job_id WHERE a.logs <> 'expired' AND a.finished_at IS NOT NULL AND j.finished_at IS NOT NULL AND j.finished_at < $1 LIMIT $2")
            .bind(ms(cutoff))
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(job_attempt).collect()
    }

    async fn set_logs_at(&self, job_id: &str, attempt: u32, at: LogsAt) -> Result<()> {
        sqlx::query("UPDATE attempts SET logs = $1 WHERE job_id = $2 AND number = $3")
            .bind(at.as_str())
            .bind(job_id)
            .bind(i64::from(attempt))
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Moves an ended attempt's log chunks to the object store, one chunk at a time
    /// (each chunk is one shipped batch, so none is large); readers find them there.
    /// Returns how many chunks moved; none without an object store.
    pub async fn move_logs(&self, job_id: &str, attempt: u32) -> Result<usize> {
        let Some(files) = self.files.as_ref().filter(|f| f.is_remote()) else {
            return Ok(0);
        };
        let mut moved = 0;
        loop {
            let rows = sqlx::query("SELECT last_seq, records FROM log_chunks WHERE job_id = $1 AND attempt = $2 AND object_key IS NULL ORDER BY last_seq LIMIT $3")
                .bind(job_id)
                .bind(i64::from(attempt))
                .bind(CHUNKS_PER_READ)
                .fetch_all(&self.logs_read)
                .await?;
            for row in &rows {
                let last: i64 = row.try_get("last_seq")?;
                let text: String = row.try_get("records")?;
                let key = format!("logs/{job_id}/{attempt}/{last}.jsonl");
                files
                    .put_bytes(&object_store::path::Path::from(key.as_str()), text.into())
                    .await
                    .map_err(StoreError::Unavailable)?;
                sqlx::query("UPDATE log_chunks SET records = '', object_key = $1 WHERE job_id = $2 AND attempt = $3 AND last_seq = $4 AND object_key IS NULL")
                    .bind(&key)
                    .bind(job_id)
                    .bind(i64::from(attempt))
                    .bind(last)
                    .execute(&self.logs_write)
                    .await?;
                moved += 1;
            }
            if (rows.len() as i64) < CHUNKS_PER_READ {
                break;
            }
        }
        self.set_logs_at(job_id, attempt, LogsAt::Object).await?;
        Ok(moved)
    }

    /// Deletes an attempt's log, wherever it is.
    pub async fn delete_logs(&self, job_id: &str, attempt: u32) -> Result<()> {
        let keys: Vec<String> = sqlx::query_scalar("SELECT object_key FROM log_chunks WHERE job_id = $1 AND attempt = $2 AND object_key IS NOT NULL")
            .bind(job_id)
            .bind(i64::from(attempt))
            .fetch_all(&self.logs_read)
            .await?;
        self.delete_objects(&keys).await;
        sqlx::query("DELETE FROM log_chunks WHERE job_id = $1 AND attempt = $2")
            .bind(job_id)
            .bind(i64::from(attempt))
            .execute(&self.logs_write)
            .await?;
        self.set_logs_at(job_id, attempt, LogsAt::Expired).await
    }
}

/// `(job_id, number)` of an attempts row.
fn job_attempt(row: &sqlx::any::AnyRow) -> Result<(String, u32)> {
    Ok((
        row.try_get("job_id")?,
        row.try_get::<i64, _>("number")? as u32,
    ))
}

/// How the API names a stored `attempts.logs` value.
pub(crate) fn log_place(stored: &str) -> &'static str {
    match stored {
        "object" => "object_store",
        "expired" => "expired",
        _ => "database",
    }
}

/// What [`Store::read_log_page`] reads.
#[derive(Debug, Clone, Copy)]
pub struct LogRead {
    /// Records with a `seq` above this one.
    pub after: u64,
    /// Only this stream's records (the cursor still moves past the others).
    pub stream: Option<Stream>,
    /// Most records returned.
    pub limit: u32,
    /// Stop before the first missing `seq` (see [`Store::read_log_page`]).
    pub gap_free: bool,
}

/// A page of log records.
#[derive(Debug)]
pub struct LogPageRead {
    pub records: Vec<LogRecord>,
    /// Read on after this `seq`: every record up to it was returned or filtered out.
    pub cursor: u64,
}

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
            "SELECT last_seq, records FROM log_chunks WHERE job_id = $1 AND attempt = $2 AND last_seq >= $3 AND first_seq <= $4",
        )
        .bind(job_id)
        .bind(i64::from(attempt))
        .bind(db_seq(lo))
        .bind(db_seq(hi))
        .fetch_all(&mut *tx)
        .await?;
        let mut stored: Vec<LogRecord> = Vec::new();
        for row in &overlapping {
            stored.extend(decode(row.try_get("records")?)?);
            sqlx::query(
                "DELETE FROM log_chunks WHERE job_id = $1 AND attempt = $2 AND last_seq = $3",
            )
            .bind(job_id)
            .bind(i64::from(attempt))
            .bind(row.try_get::<i64, _>("last_seq")?)
            .execute(&mut *tx)
            .await?;
        }
        for r in &stored {
            incoming.insert(r.seq, r);
        }
        let merged: Vec<&LogRecord> = incoming.into_values().collect();
        let first = merged.first().map_or(lo, |r| r.seq);
        let last = merged.last().map_or(hi, |r| r.seq);
        sqlx::query(
            "INSERT INTO log_chunks (job_id, attempt, first_seq, last_seq, records) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(job_id)
        .bind(i64::from(attempt))
        .bind(db_seq(first))
        .bind(db_seq(last))
        .bind(encode(&merged))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
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
                "SELECT last_seq, records FROM log_chunks WHERE job_id = $1 AND attempt = $2 AND last_seq > $3 ORDER BY last_seq LIMIT $4",
            )
            .bind(job_id)
            .bind(i64::from(attempt))
            .bind(chunk_cursor)
            .bind(CHUNKS_PER_READ)
            .fetch_all(&self.logs_read)
            .await?;
            for row in &rows {
                chunk_cursor = row.try_get("last_seq")?;
                for r in decode(row.try_get("records")?)? {
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

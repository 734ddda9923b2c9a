//! Log records: stored idempotently by `(job, attempt, seq)`, read back in `seq` order.

use drover_core::api::{LogRecord, Stream};
use sqlx::Row;

use super::{from_ms, ms, Result, Store, StoreError};

/// Rows per INSERT statement (6 parameters each; SQLite allows 32766 per statement).
const ROWS_PER_INSERT: usize = 1000;

impl Store {
    /// Stores records; ones already stored (same seq) are left as they are.
    pub async fn append_logs(
        &self,
        job_id: &str,
        attempt: u32,
        records: &[LogRecord],
    ) -> Result<()> {
        let mut tx = self.logs_write.begin().await?;
        for chunk in records.chunks(ROWS_PER_INSERT) {
            let values = self.values(chunk.len(), 6);
            let sql = format!(
                "INSERT INTO log_records (job_id, attempt, seq, ts, stream, text) VALUES {values} ON CONFLICT (job_id, attempt, seq) DO NOTHING"
            );
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q
                    .bind(job_id)
                    .bind(i64::from(attempt))
                    .bind(r.seq.min(i64::MAX as u64) as i64)
                    .bind(ms(r.ts))
                    .bind(r.stream.as_str())
                    .bind(r.text.clone());
            }
            q.execute(&mut *tx).await?;
        }
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
        let mut sql = "SELECT seq, ts, stream, text FROM log_records WHERE job_id = $1 AND attempt = $2 AND seq > $3".to_string();
        if stream.is_some() {
            sql += " AND stream = $5";
        }
        sql += " ORDER BY seq LIMIT $4";
        let mut q = sqlx::query(&sql)
            .bind(job_id)
            .bind(i64::from(attempt))
            .bind(after.min(i64::MAX as u64) as i64)
            .bind(i64::from(limit));
        if let Some(s) = stream {
            q = q.bind(s.as_str());
        }
        let rows = q.fetch_all(&self.logs_read).await?;
        rows.iter()
            .map(|row| {
                let stream: String = row.try_get("stream")?;
                Ok(LogRecord {
                    seq: row.try_get::<i64, _>("seq")? as u64,
                    ts: from_ms(row.try_get("ts")?),
                    stream: Stream::parse(&stream)
                        .ok_or_else(|| StoreError::Corrupt(format!("log stream {stream:?}")))?,
                    text: row.try_get("text")?,
                })
            })
            .collect()
    }
}

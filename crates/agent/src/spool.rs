//! The per-attempt log spool: records are appended as JSON lines by one writer (on a
//! blocking thread) and read back in batches by the shipper, which advances an
//! acknowledged offset. Records stay in memory while the shipper keeps up, so a job that
//! prints a few lines never touches the disk; past [`MEMORY_BYTES`] unshipped bytes (a
//! chatty job, a slow or unreachable server) they spill to the spool file, and stay there
//! for the rest of the attempt. The records still in memory when the job ends are written
//! with the end into the attempt's record (see `fence::mark_ended`), so an agent that dies
//! before shipping them still sends them when it starts again. Bounded: at `limit`
//! unshipped bytes the writer waits while the server keeps acknowledging batches (the
//! job then blocks on its pipe: a slow server loses no line), and drops records, with a
//! `system` marker saying how many, only once nothing was acknowledged for [`STALL`]
//! (the server is unreachable); past the output cap further output is discarded.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use drover_core::api::Stream;
use tokio::sync::Notify;

/// A shipped-everything spool larger than this is truncated back to empty.
const COMPACT_BYTES: u64 = 8 * 1024 * 1024;
/// Unshipped bytes kept in memory before the spool spills to its file (per attempt, so
/// an agent's memory for logs stays within slots × this).
pub const MEMORY_BYTES: usize = 1024 * 1024;
/// A full spool waits this long for the server to acknowledge something before it drops
/// lines: long enough for a slow server, short enough that an outage does not stall the
/// job.
pub const STALL: Duration = Duration::from_secs(1);

/// Limits of one spool.
#[derive(Debug, Clone, Copy)]
pub struct SpoolLimits {
    /// Most unshipped bytes kept on disk before records are dropped.
    pub unshipped_bytes: u64,
    /// Most stdout/stderr text bytes accepted for the whole attempt.
    pub output_bytes: u64,
}

#[derive(Debug, Default)]
struct SpoolState {
    /// End of the flushed records.
    written: u64,
    /// End of the records the server acknowledged.
    acked: u64,
    /// Bumped when the file is truncated or first written, so stale acks are ignored.
    generation: u64,
    closed: bool,
    /// Until the spool spills: the flushed records from offset `memory_start` on.
    memory: Vec<u8>,
    memory_start: u64,
    /// The spool file, once the records spilled to it.
    file: Option<Arc<File>>,
}

impl SpoolState {
    /// Forgets the acknowledged records held in memory.
    fn trim_memory(&mut self) {
        let shipped = self.acked.saturating_sub(self.memory_start) as usize;
        if shipped > 0 {
            self.memory.drain(..shipped.min(self.memory.len()));
            self.memory_start += shipped as u64;
        }
    }
}

/// State shared by the writer and the reader of one spool.
#[derive(Debug)]
pub struct SpoolShared {
    path: PathBuf,
    state: Mutex<SpoolState>,
    notify: Notify,
    /// Signalled on each acknowledgement, for a writer waiting for room.
    acked: Condvar,
}

impl SpoolShared {
    fn lock(&self) -> MutexGuard<'_, SpoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The flushed records not yet acknowledged that are only in memory (none once the
    /// spool spilled: its file holds them), as spool lines.
    pub fn unshipped_in_memory(&self) -> Vec<u8> {
        let mut st = self.lock();
        if st.file.is_some() {
            return Vec::new();
        }
        st.trim_memory();
        st.memory.clone()
    }
}

/// Where the writer puts records.
enum Sink {
    /// Records not flushed yet; a flush moves them to the shared memory.
    Memory(Vec<u8>),
    /// The spool file, after a spill.
    File(BufWriter<File>),
}

/// Appends records; owned by one blocking thread.
pub struct SpoolWriter {
    shared: Arc<SpoolShared>,
    sink: Sink,
    offset: u64,
    next_seq: u64,
    limits: SpoolLimits,
    output_bytes: u64,
    truncated: bool,
    dropped: u64,
    /// The spool file could not be written: records stay in memory, at most
    /// [`MEMORY_BYTES`] of them unshipped.
    spill_failed: bool,
    /// The acknowledged offset when the writer last gave up waiting for room: until the
    /// server acknowledges more, a full spool drops lines at once.
    stalled_at: Option<u64>,
    /// The last timestamp written: epoch milliseconds and their RFC 3339 form.
    ts: (i64, String),
    /// The line being encoded (reused).
    line: Vec<u8>,
}

/// A spool whose file, should it spill, is `path`; its writer and reader. Nothing is
/// written to disk until then.
pub fn create(path: &Path, limits: SpoolLimits) -> (SpoolWriter, SpoolReader) {
    let shared = Arc::new(SpoolShared {
        path: path.to_path_buf(),
        state: Mutex::new(SpoolState::default()),
        notify: Notify::new(),
        acked: Condvar::new(),
    });
    let writer = SpoolWriter {
        shared: shared.clone(),
        sink: Sink::Memory(Vec::new()),
        offset: 0,
        next_seq: 1,
        limits,
        output_bytes: 0,
        truncated: false,
        dropped: 0,
        spill_failed: false,
        stalled_at: None,
        ts: (i64::MIN, String::new()),
        line: Vec::new(),
    };
    let reader = SpoolReader {
        shared,
        handed_out: (0, 0),
    };
    (writer, reader)
}

impl SpoolWriter {
    /// Appends a line of job output, unless the output cap or the spool limit says no.
    pub fn append_output(&mut self, stream: Stream, text: String) -> std::io::Result<()> {
        if self.truncated {
            return Ok(());
        }
        self.output_bytes += text.len() as u64 + 1;
        if self.output_bytes > self.limits.output_bytes {
            self.truncated = true;
            let msg = format!(
                "[drover] output exceeded {} bytes; further output of this attempt is discarded",
                self.limits.output_bytes
            );
            return self.append_system(msg);
        }
        let limit = match self.spill_failed {
            true => self.limits.unshipped_bytes.min(MEMORY_BYTES as u64),
            false => self.limits.unshipped_bytes,
        };
        if !self.room_for(text.len() as u64, limit)? {
            self.dropped += 1;
            return Ok(());
        }
        self.write_drop_marker()?;
        self.write(stream, text)
    }

    /// Whether `len` more bytes fit under `limit` unshipped ones. If not, waits for the
    /// shipper to make room while the server acknowledges batches; gives up after
    /// [`STALL`] without one, and from then on at once until the next acknowledgement.
    fn room_for(&mut self, len: u64, limit: u64) -> std::io::Result<bool> {
        let acked = self.shared.lock().acked;
        if self.offset.saturating_sub(acked) + len <= limit {
            return Ok(true);
        }
        if self.stalled_at == Some(acked) {
            return Ok(false);
        }
        // What the writer holds must reach the shipper, or no acknowledgement comes.
        self.flush()?;
        let shared = self.shared.clone();
        let mut st = shared.lock();
        let (mut last, mut since) = (st.acked, Instant::now());
        loop {
            if self.offset.saturating_sub(st.acked) + len <= limit {
                self.stalled_at = None;
                return Ok(true);
            }
            if st.acked != last {
                (last, since) = (st.acked, Instant::now());
            }
            let left = STALL.saturating_sub(since.elapsed());
            if left.is_zero() {
                self.stalled_at = Some(st.acked);
                return Ok(false);
            }
            st = (shared.acked.wait_timeout(st, left))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Appends a `system` record (always kept).
    pub fn append_system(&mut self, text: String) -> std::io::Result<()> {
        self.write_drop_marker()?;
        self.write(Stream::System, text)
    }

    fn write_drop_marker(&mut self) -> std::io::Result<()> {
        if self.dropped == 0 {
            return Ok(());
        }
        let n = std::mem::take(&mut self.dropped);
        let text = format!(
            "[drover] log spool full (server unreachable?): dropped {n} lines of output here"
        );
        self.write(Stream::System, text)
    }

    /// Appends one record as a line of JSON in its wire form ([`drover_core::api::LogRecord`]), written by
    /// hand: the timestamp is formatted once per millisecond, not once per line.
    fn write(&mut self, stream: Stream, text: String) -> std::io::Result<()> {
        let now = Utc::now();
        if now.timestamp_millis() != self.ts.0 {
            self.ts = (
                now.timestamp_millis(),
                now.to_rfc3339_opts(SecondsFormat::Millis, true),
            );
        }
        let line = &mut self.line;
        line.clear();
        write!(
            line,
            r#"{{"seq":{},"ts":"{}","stream":"{}","text":"#,
            self.next_seq,
            self.ts.1,
            stream.as_str()
        )?;
        serde_json::to_writer(&mut *line, &text).map_err(std::io::Error::other)?;
        line.extend_from_slice(b"}\n");
        match &mut self.sink {
            Sink::Memory(pending) => pending.extend_from_slice(line),
            Sink::File(file) => file.write_all(line)?,
        }
        self.offset += line.len() as u64;
        self.next_seq += 1;
        Ok(())
    }

    /// Makes everything appended so far visible to the reader; spills the records to the
    /// spool file once too many wait in memory.
    pub fn flush(&mut self) -> std::io::Result<()> {
        let result = match &mut self.sink {
            Sink::Memory(pending) => {
                let mut st = self.shared.lock();
                st.trim_memory();
                st.memory.append(pending);
                st.written = self.offset;
                if st.memory.len() > MEMORY_BYTES && !self.spill_failed {
                    match spill(&self.shared.path, &mut st) {
                        Ok(file) => {
                            self.offset = st.written;
                            self.sink = Sink::File(file);
                            Ok(())
                        }
                        Err(e) => {
                            self.spill_failed = true;
                            Err(e)
                        }
                    }
                } else {
                    Ok(())
                }
            }
            Sink::File(file) => {
                file.flush()?;
                let mut st = self.shared.lock();
                if st.acked == self.offset && self.offset > COMPACT_BYTES {
                    file.get_mut().set_len(0)?;
                    file.get_mut().seek(SeekFrom::Start(0))?;
                    self.offset = 0;
                    st.acked = 0;
                    st.generation += 1;
                }
                st.written = self.offset;
                Ok(())
            }
        };
        self.shared.notify.notify_one();
        result
    }

    /// Writes a pending drop marker, flushes, and tells the reader no more will come.
    pub fn close(mut self) -> std::io::Result<()> {
        let result = self.write_drop_marker().and_then(|()| self.flush());
        self.shared.lock().closed = true;
        self.shared.notify.notify_one();
        result
    }
}

/// Moves the unshipped records from memory to a new spool file at `path`, which starts
/// a new generation of offsets (records handed out before are read again from the file:
/// the server stores each `seq` once); the writer's end of it.
fn spill(path: &Path, st: &mut SpoolState) -> std::io::Result<BufWriter<File>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let mut writer = BufWriter::with_capacity(64 * 1024, file.try_clone()?);
    writer.write_all(&st.memory)?;
    writer.flush()?;
    st.written = st.memory.len() as u64;
    st.acked = 0;
    st.generation += 1;
    st.memory = Vec::new();
    st.memory_start = 0;
    st.file = Some(Arc::new(file));
    Ok(writer)
}

/// Records read from the spool and not yet acknowledged.
#[derive(Debug)]
pub struct Batch {
    /// The records as the JSON body of a log request, `{"records":[…]}`: spool lines
    /// are records in their wire form, so they are copied, not parsed.
    pub body: Vec<u8>,
    /// How many records the body holds.
    pub count: usize,
    /// Whether the batch stopped at a size limit (more may be waiting).
    pub full: bool,
    end: u64,
    generation: u64,
}

impl Batch {
    /// The records of the batch, parsed.
    #[cfg(test)]
    pub fn records(&self) -> Vec<drover_core::api::LogRecord> {
        #[derive(serde::Deserialize)]
        struct Body {
            records: Vec<drover_core::api::LogRecord>,
        }
        serde_json::from_slice::<Body>(&self.body).unwrap().records
    }
}

/// Reads batches for the shipper.
pub struct SpoolReader {
    shared: Arc<SpoolShared>,
    /// Generation and end of the last batch handed out: the next one starts there, so
    /// several batches can be in flight before the first is acknowledged.
    handed_out: (u64, u64),
}

impl SpoolReader {
    /// Up to `max_records` records or about `max_bytes` of JSON after the last batch
    /// handed out; an empty batch when nothing is waiting.
    pub async fn next_batch(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> std::io::Result<Batch> {
        let (start, end, generation, file, mut data) = {
            let st = self.shared.lock();
            let start = match self.handed_out {
                (generation, end) if generation == st.generation => end.max(st.acked),
                _ => st.acked,
            };
            // In memory: copied now, under the lock, since the writer trims what is acked.
            let data = match (&st.file, start < st.written) {
                (None, true) => {
                    let from = start.saturating_sub(st.memory_start) as usize;
                    let to = (st.written - st.memory_start) as usize;
                    whole_lines(&st.memory[from.min(to)..to], max_bytes).to_vec()
                }
                _ => Vec::new(),
            };
            (start, st.written, st.generation, st.file.clone(), data)
        };
        let mut batch = Batch {
            body: br#"{"records":[]}"#.to_vec(),
            count: 0,
            full: false,
            end: start,
            generation,
        };
        if end <= start {
            return Ok(batch);
        }
        if let Some(file) = file {
            data = tokio::task::spawn_blocking(move || read_lines(&file, start, end, max_bytes))
                .await
                .map_err(std::io::Error::other)??;
        }
        batch.body.clear();
        batch.body.reserve(data.len() + 16);
        batch.body.extend_from_slice(b"{\"records\":[");
        let mut pos = 0;
        while batch.count < max_records {
            let Some(n) = data[pos..].iter().position(|&b| b == b'\n') else {
                break;
            };
            if batch.count > 0 {
                batch.body.push(b',');
            }
            batch.body.extend_from_slice(&data[pos..pos + n]);
            pos += n + 1;
            batch.count += 1;
        }
        batch.body.extend_from_slice(b"]}");
        batch.end = start + pos as u64;
        batch.full = batch.end < end;
        self.handed_out = (generation, batch.end);
        Ok(batch)
    }

    /// Marks `batch` as stored by the server.
    pub fn ack(&self, batch: &Batch) {
        let mut st = self.shared.lock();
        if st.generation == batch.generation && batch.end > st.acked {
            st.acked = batch.end;
            self.shared.acked.notify_all();
        }
    }

    /// The writer closed the spool: no more records will come.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// The writer closed the spool and every record was acknowledged.
    pub fn is_done(&self) -> bool {
        let st = self.shared.lock();
        st.closed && st.acked >= st.written
    }

    /// Waits until the writer flushes or closes (or a short while passes).
    pub async fn changed(&self) {
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(250),
            self.shared.notify.notified(),
        )
        .await;
    }

    /// The state the reader shares with the writer.
    pub fn shared(&self) -> Arc<SpoolShared> {
        self.shared.clone()
    }

    /// Path of the spool file (removed by the attempt when it ends).
    pub fn path(&self) -> &Path {
        &self.shared.path
    }
}

/// The lines at the start of `data` that fit in `max_bytes` (at least one).
fn whole_lines(data: &[u8], max_bytes: usize) -> &[u8] {
    if data.len() <= max_bytes {
        return data;
    }
    let cut = data[..max_bytes]
        .iter()
        .rposition(|&b| b == b'\n')
        .or_else(|| data.iter().position(|&b| b == b'\n'))
        .map_or(data.len(), |i| i + 1);
    &data[..cut]
}

/// Reads from `start` about `max_bytes` (at least one whole line, at most up to `end`).
fn read_lines(file: &File, start: u64, end: u64, max_bytes: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut want = (end - start).min(max_bytes.max(1) as u64) as usize;
    let mut data = Vec::new();
    loop {
        let have = data.len();
        data.resize(want, 0);
        file.read_exact_at(&mut data[have..], start + have as u64)?;
        if data.contains(&b'\n') || start + want as u64 >= end {
            return Ok(data);
        }
        want = ((want * 2) as u64).min(end - start) as usize;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(unshipped: u64, output: u64) -> SpoolLimits {
        SpoolLimits {
            unshipped_bytes: unshipped,
            output_bytes: output,
        }
    }

    #[tokio::test]
    async fn records_are_numbered_and_read_back_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(&dir.path().join("a.jsonl"), limits(1 << 30, 1 << 30));
        w.append_system("$ cmd".into()).unwrap();
        for i in 0..10 {
            w.append_output(Stream::Stdout, format!("line {i}"))
                .unwrap();
        }
        w.flush().unwrap();
        let b = r.next_batch(4, 1 << 20).await.unwrap();
        assert_eq!(b.count, 4);
        let records = b.records();
        assert_eq!(records.len(), 4);
        assert!(b.full);
        assert_eq!(records[0].seq, 1);
        assert_eq!(records[0].stream, Stream::System);
        // Batches can be in flight together: the next one starts after the last.
        let second = r.next_batch(2, 1 << 20).await.unwrap();
        assert_eq!(second.records()[0].seq, 5);
        r.ack(&b);
        r.ack(&second);
        let rest = r.next_batch(100, 1 << 20).await.unwrap();
        let rest_records = rest.records();
        assert_eq!(rest_records.first().unwrap().seq, 7);
        assert_eq!(rest_records.last().unwrap().seq, 11);
        assert!(!rest.full);
        r.ack(&rest);
        assert!(!r.is_done());
        w.close().unwrap();
        assert!(r.is_done());
    }

    #[tokio::test]
    async fn a_short_log_never_touches_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool").join("s.jsonl");
        let (mut w, mut r) = create(&path, limits(1 << 30, 1 << 30));
        w.append_output(Stream::Stdout, "one".into()).unwrap();
        w.append_output(Stream::Stderr, "two".into()).unwrap();
        w.close().unwrap();
        let b = r.next_batch(100, 1 << 20).await.unwrap();
        assert_eq!(b.count, 2);
        // Until acknowledged, they are what would go into the record with the end.
        let tail = r.shared().unshipped_in_memory();
        assert_eq!(tail.iter().filter(|&&c| c == b'\n').count(), 2);
        assert!(tail.starts_with(br#"{"seq":1,"#));
        r.ack(&b);
        assert!(r.is_done());
        assert!(r.shared().unshipped_in_memory().is_empty());
        assert!(!path.exists() && !path.parent().unwrap().exists());
    }

    #[tokio::test]
    async fn a_log_the_shipper_falls_behind_on_spills_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool").join("f.jsonl");
        let (mut w, mut r) = create(&path, limits(1 << 30, 1 << 40));
        let line = "y".repeat(999);
        let mut seen = Vec::new();
        for i in 0..100 {
            w.append_output(Stream::Stdout, format!("{i} {line}"))
                .unwrap();
        }
        w.flush().unwrap();
        assert!(!path.exists(), "100 kB stay in memory");
        let first = r.next_batch(10, 1 << 20).await.unwrap();
        seen.extend(first.records().iter().map(|r| r.seq));
        r.ack(&first);
        // A batch is out when the writer spills: its ack is for offsets that no longer
        // exist, and its records are read again from the file.
        let out = r.next_batch(10, 1 << 20).await.unwrap();
        seen.extend(out.records().iter().map(|r| r.seq));
        for i in 100..2000 {
            w.append_output(Stream::Stdout, format!("{i} {line}"))
                .unwrap();
        }
        w.flush().unwrap();
        assert!(path.exists(), "2 MB unshipped spill to the file");
        assert!(r.shared().unshipped_in_memory().is_empty());
        r.ack(&out);
        w.close().unwrap();
        loop {
            let b = r.next_batch(1000, 1 << 20).await.unwrap();
            if b.count == 0 {
                break;
            }
            seen.extend(b.records().iter().map(|r| r.seq));
            r.ack(&b);
        }
        assert!(r.is_done());
        let mut unique = seen.clone();
        unique.sort_unstable();
        unique.dedup();
        assert!(
            unique == (1..=2000).collect::<Vec<u64>>(),
            "every record, once at least"
        );
        assert_eq!(
            seen.len(),
            2010,
            "only the batch out at the spill is sent twice"
        );
    }

    #[test]
    fn memory_batches_end_on_whole_lines() {
        assert_eq!(whole_lines(b"ab\ncd\nef\n", 7), b"ab\ncd\n");
        assert_eq!(whole_lines(b"abcdef\ngh\n", 3), b"abcdef\n");
        assert_eq!(whole_lines(b"ab\n", 10), b"ab\n");
    }

    #[tokio::test]
    async fn records_are_written_in_their_wire_form() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(&dir.path().join("w.jsonl"), limits(1 << 30, 1 << 30));
        let odd = "\"quoted\" \\ back\tslash ünïcode \u{1} {\"json\": [1]}".to_string();
        let before = Utc::now();
        w.append_output(Stream::Stderr, odd.clone()).unwrap();
        w.append_system(String::new()).unwrap();
        w.close().unwrap();
        let records = r.next_batch(10, 1 << 20).await.unwrap().records();
        assert_eq!(records.len(), 2);
        assert_eq!((records[0].seq, records[0].stream), (1, Stream::Stderr));
        assert_eq!(records[0].text, odd);
        assert_eq!((records[1].seq, records[1].stream), (2, Stream::System));
        let skew = (records[0].ts - before).num_milliseconds();
        assert!((-1..1000).contains(&skew), "timestamp off by {skew} ms");
    }

    #[tokio::test]
    async fn a_full_spool_drops_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(&dir.path().join("b.jsonl"), limits(500, 1 << 30));
        for i in 0..100 {
            w.append_output(Stream::Stdout, format!("line {i}"))
                .unwrap();
        }
        w.flush().unwrap();
        let b = r.next_batch(1000, 1 << 20).await.unwrap();
        let kept = b.count;
        assert!(kept < 100 && kept > 0);
        r.ack(&b);
        w.append_output(Stream::Stdout, "after".into()).unwrap();
        w.close().unwrap();
        let b2 = r.next_batch(1000, 1 << 20).await.unwrap();
        let b2 = b2.records();
        assert_eq!(b2.len(), 2);
        assert_eq!(b2[0].stream, Stream::System);
        assert!(b2[0]
            .text
            .contains(&format!("dropped {} lines", 100 - kept)));
        assert_eq!(b2[0].seq, kept as u64 + 1);
        assert_eq!(b2[1].text, "after");
    }

    #[tokio::test]
    async fn output_past_the_cap_is_discarded_with_one_marker() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, mut r) = create(&dir.path().join("c.jsonl"), limits(1 << 30, 20));
        for _ in 0..10 {
            w.append_output(Stream::Stderr, "12345".into()).unwrap();
        }
        w.close().unwrap();
        let b = r.next_batch(1000, 1 << 20).await.unwrap();
        let records = b.records();
        let texts: Vec<&str> = records.iter().map(|r| r.text.as_str()).collect();
        assert_eq!(texts.len(), 4);
        assert!(texts[3].contains("output exceeded 20 bytes"));
    }

    #[tokio::test]
    async fn a_shipped_spool_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let (mut w, mut r) = create(&path, limits(1 << 30, 1 << 40));
        let big = "x".repeat(60_000);
        let mut last_seq = 0;
        for _ in 0..3 {
            for _ in 0..150 {
                w.append_output(Stream::Stdout, big.clone()).unwrap();
            }
            w.flush().unwrap();
            loop {
                let b = r.next_batch(5000, 1 << 20).await.unwrap();
                if b.count == 0 {
                    break;
                }
                let records = b.records();
                assert_eq!(records[0].seq, last_seq + 1);
                last_seq = records.last().unwrap().seq;
                r.ack(&b);
            }
            w.flush().unwrap();
        }
        assert_eq!(last_seq, 450);
        assert!(std::fs::metadata(&path).unwrap().len() < COMPACT_BYTES);
    }
}

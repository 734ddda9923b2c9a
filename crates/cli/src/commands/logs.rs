//! `drover logs`: a job's output, printed once or followed live over Server-Sent Events.
//!
//! Output: the job's stdout and stderr records both go to stdout, in record (`seq`)
//! order, so `drover logs JOB > out.txt` keeps the job's output as it was interleaved;
//! `--stream` picks one of them. drover's own lines about the job (`system` records, e.g.
//! a note that lines were dropped) go to stderr. `-o json` prints one LogRecord JSON
//! object per line.

use crate::output::outln;
use std::io::Write;
use std::time::Duration;

use drover_core::api::{Job, LogPage, LogRecord, Stream};
use futures::StreamExt;
use reqwest::Method;

use crate::client::{job_path, Client};
use crate::config::{ClientConfig, OutputFormat};
use crate::error::{CliError, Result};

/// Flags of `drover logs`.
#[derive(clap::Args)]
pub struct LogsArgs {
    /// The job id, or key:K for the job submitted with idempotency key K.
    pub job: String,
    /// Keep printing new lines until the job ends (across retries).
    #[arg(short, long)]
    follow: bool,
    /// Which attempt (default: the latest).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    attempt: Option<u32>,
    /// Only this stream.
    #[arg(long, value_parser = ["stdout", "stderr"])]
    stream: Option<String>,
}

/// What to follow and how to print it.
#[derive(Debug, Clone)]
pub struct Follow<'a> {
    /// The job id.
    pub job: &'a str,
    /// One attempt only; None follows the current one and then any retry.
    pub attempt: Option<u32>,
    /// `stdout` or `stderr` only.
    pub stream: Option<&'a str>,
    /// Print records as JSON lines.
    pub json: bool,
}

/// Prints one record where it belongs (see the module docs).
fn print_record(r: &LogRecord, json: bool) {
    if json {
        outln!("{}", serde_json::to_string(r).expect("records serialize"));
        return;
    }
    match r.stream {
        Stream::Stdout | Stream::Stderr => outln!("{}", r.text),
        Stream::System => eprintln!("{}", r.text),
    }
}

/// `drover logs`.
pub async fn logs(cfg: &ClientConfig, args: LogsArgs) -> Result<i32> {
    let client = Client::new(cfg)?;
    let json = cfg.output == OutputFormat::Json;
    if args.follow {
        let follow = Follow {
            job: &args.job,
            attempt: args.attempt,
            stream: args.stream.as_deref(),
            json,
        };
        follow_job(&client, &follow).await?;
        return Ok(0);
    }
    let mut after = 0;
    let mut attempt = args.attempt;
    loop {
        let mut path = format!("{}/logs?after={after}&limit=5000", job_path(&args.job));
        if let Some(a) = attempt {
            path += &format!("&attempt={a}");
        }
        if let Some(s) = &args.stream {
            path += &format!("&stream={s}");
        }
        let page: LogPage = client.get(&path).await?;
        for r in &page.records {
            print_record(r, json);
        }
        if after == 0 && page.records.is_empty() {
            note_expired(&client, &args.job, page.attempt).await;
        }
        if page.records.is_empty() || page.complete {
            return Ok(0);
        }
        // Later pages read the same attempt even if the job is retried meanwhile.
        attempt = Some(page.attempt);
        after = page.last_seq;
    }
}

/// Says so on stderr when an empty log is empty because the server's retention deleted it.
async fn note_expired(client: &Client, job: &str, attempt: u32) {
    let Ok(job) = client.get::<Job>(&job_path(job)).await else {
        return;
    };
    let expired = job
        .attempts
        .iter()
        .any(|a| a.number == attempt && a.log == "expired");
    if expired {
        eprintln!("the log of attempt {attempt} was deleted by the server's retention (--retain)");
    }
}

/// Follows the job's log until the job ends: the current attempt, then each retry (or
/// just `follow.attempt` when one is given).
pub async fn follow_job(client: &Client, follow: &Follow<'_>) -> Result<()> {
    let mut attempt = follow.attempt;
    if attempt.is_none() {
        // Pin the current attempt, so a resumed stream cannot slip into a retry.
        let job: Job = client.get(&job_path(follow.job)).await?;
        attempt = (job.current_attempt > 0).then_some(job.current_attempt);
    }
    loop {
        let done = follow_attempt(client, follow, attempt).await?;
        if follow.attempt.is_some() {
            return Ok(());
        }
        // The attempt ended; the job may be retried with another one.
        let next = loop {
            let job: Job = client.get(&job_path(follow.job)).await?;
            if job.current_attempt > done {
                break Some(job.current_attempt);
            }
            if job.state.is_terminal() {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        match next {
            Some(n) => {
                if !follow.json {
                    eprintln!("--- attempt {n} ---");
                }
                attempt = Some(n);
            }
            None => return Ok(()),
        }
    }
}

/// Streams one attempt over SSE until its `end` event and returns the attempt's number.
/// After a dropped connection it resumes after the last `seq` printed, so no line is
/// repeated or lost.
async fn follow_attempt(client: &Client, follow: &Follow<'_>, attempt: Option<u32>) -> Result<u32> {
    let mut after = 0u64;
    let mut failures = 0;
    loop {
        let mut path = format!("{}/logs/stream?after={after}", job_path(follow.job));
        if let Some(a) = attempt {
            path += &format!("&attempt={a}");
        }
        if let Some(s) = follow.stream {
            path += &format!("&stream={s}");
        }
        let resp = match client.send(client.request(Method::GET, &path)).await {
            Ok(r) => r,
            Err(CliError::Connect(msg)) if failures < 120 => {
                failures += 1;
                if failures == 1 {
                    eprintln!("(log stream interrupted: {msg}; retrying)");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        failures = 0;
        let mut body = resp.bytes_stream();
        let mut parser = SseParser::default();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else { break };
            for event in parser.push(&chunk) {
                match event.event.as_str() {
                    "record" => {
                        let Ok(r) = serde_json::from_str::<LogRecord>(&event.data) else {
                            continue;
                        };
                        if r.seq > after {
                            after = r.seq;
                            print_record(&r, follow.json);
                        }
                    }
                    "end" => {
                        let _ = std::io::stdout().flush();
                        return Ok(event.data.trim().parse().unwrap_or(0));
                    }
                    _ => {}
                }
            }
        }
        let _ = std::io::stdout().flush();
        // The connection dropped before the end: resume after the last line printed.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field (`message` when absent).
    pub event: String,
    /// The `id:` field.
    pub id: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// An incremental `text/event-stream` parser: feed it chunks as they arrive (split
/// anywhere, even inside a UTF-8 character), get whole events back.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
}

impl SseParser {
    /// Adds a chunk and returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf
            .extend(chunk.iter().copied().filter(|b| *b != b'\r'));
        let mut events = Vec::new();
        while let Some(pos) = self.buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buf.drain(..pos + 2).collect();
            if let Some(event) = parse_block(&String::from_utf8_lossy(&block)) {
                events.push(event);
            }
        }
        events
    }
}

fn parse_block(block: &str) -> Option<SseEvent> {
    let mut event = SseEvent::default();
    let mut data: Vec<&str> = Vec::new();
    for line in block.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event.event = value.to_string(),
            "id" => event.id = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    if data.is_empty() && event.event.is_empty() {
        return None; // a keep-alive comment
    }
    if event.event.is_empty() {
        event.event = "message".into();
    }
    event.data = data.join("\n");
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let text = "event: record\nid: 1\ndata: {\"text\":\"h\u{e9}\"}\n\n: keep-alive\n\nevent: end\ndata: 1\n\n";
        let bytes = text.as_bytes();
        for split in 0..bytes.len() {
            let mut p = SseParser::default();
            let mut events = p.push(&bytes[..split]);
            events.extend(p.push(&bytes[split..]));
            assert_eq!(events.len(), 2, "split at {split}");
            assert_eq!(events[0].event, "record");
            assert_eq!(events[0].id.as_deref(), Some("1"));
            assert_eq!(events[0].data, "{\"text\":\"h\u{e9}\"}");
            assert_eq!(events[1].event, "end");
            assert_eq!(events[1].data, "1");
        }
    }

    #[test]
    fn crlf_multi_line_data_and_default_event_name() {
        let mut p = SseParser::default();
        let events = p.push(b"data:a\r\ndata: b\r\n\r\n");
        assert_eq!(
            events,
            vec![SseEvent {
                event: "message".into(),
                id: None,
                data: "a\nb".into()
            }]
        );
        assert!(p.push(b"event: record\ndata: x\n").is_empty(), "incomplete");
        assert_eq!(p.push(b"\n")[0].data, "x");
    }
}

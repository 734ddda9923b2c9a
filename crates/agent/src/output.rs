//! Turning a child's byte stream into log lines: bounded line reading, splitting of long
//! lines at character boundaries, secret masking and `::progress` marker parsing.

use drover_core::api::ProgressUpdate;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest line kept in one record; longer lines are split into several records.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Reads lines (without their newline) from `inner`, never buffering more than `max` bytes.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    max: usize,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// A reader that splits lines longer than `max` bytes.
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            buf: Vec::new(),
            max: max.max(4),
        }
    }

    /// The next line or piece of a long line; `None` at end of stream. A last line
    /// without a newline is returned too.
    pub async fn next_line(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            let avail = self.inner.fill_buf().await?;
            if avail.is_empty() {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            let room = self.max - self.buf.len();
            let window = &avail[..avail.len().min(room + 1)];
            if let Some(i) = window.iter().position(|b| *b == b'\n') {
                self.buf.extend_from_slice(&window[..i]);
                self.inner.consume(i + 1);
                if self.buf.last() == Some(&b'\r') {
                    self.buf.pop();
                }
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            let take = avail.len().min(room);
            self.buf.extend_from_slice(&avail[..take]);
            self.inner.consume(take);
            if self.buf.len() >= self.max {
                let cut = char_boundary_cut(&self.buf);
                let rest = self.buf.split_off(cut);
                return Ok(Some(std::mem::replace(&mut self.buf, rest)));
            }
        }
    }
}

/// Where to cut `buf` so that a multi-byte UTF-8 character at its end is not split.
fn char_boundary_cut(buf: &[u8]) -> usize {
    let len = buf.len();
    let mut start = len;
    for back in 1..=4.min(len) {
        let b = buf[len - back];
        if b & 0xC0 != 0x80 {
            start = len - back;
            break;
        }
    }
    if start == len {
        return len;
    }
    let lead = buf[start];
    let width = match lead {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    };
    if start + width > len && start > 0 {
        start
    } else {
        len
    }
}

/// Replaces secret values with `***`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    secrets: Vec<String>,
}

impl Masker {
    /// A masker for these values; empty values are ignored, longer ones are replaced first.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a String>) -> Self {
        let mut secrets: Vec<String> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .cloned()
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Masker { secrets }
    }

    /// `text` with every secret value replaced.
    pub fn mask(&self, text: String) -> String {
        let mut text = text;
        for s in &self.secrets {
            if text.contains(s.as_str()) {
                text = text.replace(s.as_str(), "***");
            }
        }
        text
    }
}

/// Parses `PERCENT MESSAGE` (the progress file format); percent is clamped to 0..=100.
pub fn parse_progress(line: &str) -> Option<ProgressUpdate> {
    let line = line.trim();
    let (num, message) = match line.split_once(char::is_whitespace) {
        Some((n, m)) => (n, m.trim()),
        None => (line, ""),
    };
    let percent: f64 = num.trim_end_matches('%').parse().ok()?;
    if !percent.is_finite() {
        return None;
    }
    Some(ProgressUpdate {
        percent: percent.clamp(0.0, 100.0),
        message: message.to_string(),
    })
}

/// Parses a `::progress PERCENT MESSAGE` stdout marker line.
pub fn parse_progress_marker(line: &str) -> Option<ProgressUpdate> {
    parse_progress(line.strip_prefix("::progress ")?)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Vec<u8>> {
        let mut r = LineReader::new(tokio::io::BufReader::with_capacity(7, input), max);
        let mut out = Vec::new();
        while let Some(l) = r.next_line().await.unwrap() {
            out.push(l);
        }
        out
    }

    #[tokio::test]
    async fn splits_lines_and_keeps_the_last_one() {
        let got = lines(b"a\r\nbb\n\nccc", 64).await;
        assert_eq!(
            got,
            vec![b"a".to_vec(), b"bb".to_vec(), b"".to_vec(), b"ccc".to_vec()]
        );
    }

    #[tokio::test]
    async fn long_lines_are_split_without_breaking_characters() {
        let got = lines(b"0123456789\n", 4).await;
        assert_eq!(
            got,
            vec![b"0123".to_vec(), b"4567".to_vec(), b"89".to_vec()]
        );
        let exact = lines(b"0123\n", 4).await;
        assert_eq!(exact, vec![b"0123".to_vec()]);
        let text = "aé€😀b".repeat(50);
        let got = lines(text.as_bytes(), 8).await;
        let joined: String = got
            .iter()
            .map(|l| std::str::from_utf8(l).expect("split on a boundary"))
            .collect();
        assert_eq!(joined, text);
        assert!(got.iter().all(|l| l.len() <= 8));
    }

    #[test]
    fn masks_secrets_longest_first() {
        let secrets = ["abc".to_string(), "abcdef".to_string(), String::new()];
        let m = Masker::new(secrets.iter());
        assert_eq!(m.mask("x abcdef abc y".into()), "x *** *** y");
        assert_eq!(m.mask("nothing".into()), "nothing");
    }

    #[test]
    fn progress_lines_parse() {
        let p = parse_progress("42.5 half way there").unwrap();
        assert_eq!(p.percent, 42.5);
        assert_eq!(p.message, "half way there");
        assert_eq!(parse_progress("150").unwrap().percent, 100.0);
        assert!(parse_progress("lots done").is_none());
        assert!(parse_progress("NaN x").is_none());
        assert_eq!(
            parse_progress_marker("::progress 10 step").unwrap().percent,
            10.0
        );
        assert!(parse_progress_marker("progress 10").is_none());
    }
}

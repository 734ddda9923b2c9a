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
    /// Byte strings a long line is never split inside (the masked secrets).
    whole: Vec<Vec<u8>>,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// A reader that splits lines longer than `max` bytes.
    pub fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner,
            buf: Vec::new(),
            max: max.max(4),
            whole: Vec::new(),
        }
    }

    /// Never splits a long line inside one of `patterns` (up to half the line limit
    /// long), so a secret that straddles the split is still masked.
    pub fn keep_whole(mut self, patterns: Vec<Vec<u8>>) -> Self {
        self.whole = patterns
            .into_iter()
            .filter(|p| p.len() > 1 && p.len() <= self.max / 2)
            .collect();
        self
    }

    /// Where to split a full buffer: before the longest tail that could be the start
    /// of a pattern, else at its end.
    fn split_point(&self) -> usize {
        let len = self.buf.len();
        let longest = self.whole.iter().map(Vec::len).max().unwrap_or(0);
        for start in len.saturating_sub(longest.saturating_sub(1)).max(1)..len {
            let tail = &self.buf[start..];
            if self.whole.iter().any(|p| p.starts_with(tail)) {
                return start;
            }
        }
        len
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
                let cut = char_boundary_cut(&self.buf[..self.split_point()]);
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

/// Secrets shorter than this are not masked (masking `e` would mangle every line); the
/// server refuses them at submit.
use drover_core::spec::MIN_SECRET_LEN;

/// Replaces secret values, and their common encodings, with `***`.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    patterns: Vec<String>,
}

impl Masker {
    /// A masker for these values and their JSON-escaped, URL-encoded and base64 forms
    /// (standard and URL-safe, at each of the three alignments a value can have inside
    /// longer base64 text); values shorter than [`MIN_SECRET_LEN`] are ignored, longer
    /// patterns are replaced first.
    /// A value of several lines (a PEM key) is also masked line by line, since the log
    /// is masked a line at a time.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a String>) -> Self {
        let mut patterns: Vec<String> = values
            .into_iter()
            .flat_map(|v| {
                let lines = v.lines().map(str::trim).filter(|l| l.len() < v.len());
                std::iter::once(v.as_str()).chain(lines)
            })
            .filter(|v| v.len() >= MIN_SECRET_LEN)
            .flat_map(encodings)
            .collect();
        patterns.sort_by_key(|s| std::cmp::Reverse(s.len()));
        patterns.dedup();
        Masker { patterns }
    }

    /// `text` with every secret value replaced.
    pub fn mask(&self, text: String) -> String {
        let mut text = text;
        for s in &self.patterns {
            if text.contains(s.as_str()) {
                text = text.replace(s.as_str(), "***");
            }
        }
        text
    }

    /// `value` with every secret replaced in its strings (keys included).
    pub fn mask_json(&self, value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(s) => Value::String(self.mask(s)),
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|v| self.mask_json(v)).collect())
            }
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (self.mask(k), self.mask_json(v)))
                    .collect(),
            ),
            other => other,
        }
    }

    /// Every masked pattern, as bytes (for [`LineReader::keep_whole`]).
    pub fn patterns(&self) -> Vec<Vec<u8>> {
        self.patterns
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect()
    }
}

/// A secret as it may show up in output: itself, JSON-escaped, URL-encoded and base64.
fn encodings(value: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    use base64::Engine;
    let mut out = vec![value.to_string()];
    let json = serde_json::to_string(value).expect("strings serialize");
    out.push(json[1..json.len() - 1].to_string());
    out.push(percent_encode(value, false));
    out.push(percent_encode(value, true));
    for offset in 0..3usize {
        let mut bytes = vec![0u8; offset];
        bytes.extend_from_slice(value.as_bytes());
        // Keep the characters made only of the value's bits: skip those that hold the
        // unknown bytes before it, stop before those that hold the unknown bytes after.
        let first = (offset * 8).div_ceil(6);
        let last = bytes.len() * 8 / 6;
        for engine in [&STANDARD, &URL_SAFE] {
            let encoded = engine.encode(&bytes);
            let core = &encoded[first..last];
            if core.len() >= 6 {
                out.push(core.to_string());
            }
        }
        if offset == 0 {
            out.push(STANDARD.encode(value));
            out.push(URL_SAFE.encode(value));
        }
    }
    out.retain(|p| p.len() >= MIN_SECRET_LEN);
    out
}

/// `value` with every byte but RFC 3986's unreserved ones as `%XX`; with `plus`, spaces
/// as `+` (HTML forms).
fn percent_encode(value: &str, plus: bool) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for &b in value.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' if plus => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
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
        let secrets = ["abcd".to_string(), "abcdefgh".to_string(), String::new()];
        let m = Masker::new(secrets.iter());
        assert_eq!(m.mask("x abcdefgh abcd y".into()), "x *** *** y");
        assert_eq!(m.mask("nothing".into()), "nothing");
    }

    #[test]
    fn multi_line_secrets_are_masked_line_by_line_and_in_results() {
        let key = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END KEY-----\n";
        let m = Masker::new([key.to_string()].iter());
        assert_eq!(m.mask("BKcwggSjAgEAAoIBAQC7".into()), "***");
        assert_eq!(m.mask("  MIIEvQIBADANBgkqhkiG9w0BAQEFAASC".into()), "  ***");
        let result = serde_json::json!({"key": key, "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC": [1, "x BKcwggSjAgEAAoIBAQC7"]});
        let masked = m.mask_json(result).to_string();
        assert!(
            !masked.contains("MIIEvQ") && !masked.contains("BKcwgg"),
            "{masked}"
        );
        assert!(masked.contains("x ***"), "{masked}");
    }

    /// Regression: `S=e` masked every `e` of the log, command header included.
    #[test]
    fn values_too_short_to_mask_are_left_alone() {
        let m = Masker::new(["e".to_string()].iter());
        assert_eq!(m.mask("echo hello".into()), "echo hello");
    }

    #[test]
    fn encoded_secrets_are_masked_too() {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine;
        let secret = "s3cr3t/pa ss\"w+rd";
        let m = Masker::new([secret.to_string()].iter());
        let json = serde_json::to_string(&serde_json::json!({ "token": secret })).unwrap();
        assert!(!m.mask(json.clone()).contains("s3cr3t"), "{json}");
        assert_eq!(
            m.mask("u=s3cr3t%2Fpa%20ss%22w%2Brd&x=1".into()),
            "u=***&x=1"
        );
        assert_eq!(m.mask("q=s3cr3t%2Fpa+ss%22w%2Brd".into()), "q=***");
        for prefix in ["", "u:", "us:", "use:"] {
            let line = format!(
                "Authorization: Basic {}",
                STANDARD.encode(format!("{prefix}{secret}"))
            );
            let masked = m.mask(line.clone());
            assert!(masked.contains("***"), "{prefix:?}: {line} -> {masked}");
        }
    }

    /// Regression: a secret where a long line was split reached the log in two pieces.
    #[tokio::test]
    async fn long_lines_are_never_split_inside_a_secret() {
        let secret = "TOPSECRETVALUE";
        let m = Masker::new([secret.to_string()].iter());
        for at in 0..40 {
            let line = format!("{}{secret}{}\n", "x".repeat(at), "y".repeat(30));
            let mut r =
                LineReader::new(tokio::io::BufReader::with_capacity(7, line.as_bytes()), 32)
                    .keep_whole(m.patterns());
            let mut pieces = Vec::new();
            while let Some(l) = r.next_line().await.unwrap() {
                pieces.push(m.mask(String::from_utf8(l).unwrap()));
            }
            assert!(
                pieces
                    .iter()
                    .all(|p| !p.contains("TOPS") && !p.contains("LUE")),
                "{at}: {pieces:?}"
            );
            assert_eq!(
                pieces.concat().matches("***").count(),
                1,
                "{at}: {pieces:?}"
            );
        }
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

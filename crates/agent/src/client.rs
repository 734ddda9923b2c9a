//! The agent's HTTP client: typed calls to the agent routes, and retry with backoff.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use drover_core::api::{
    ErrorBody, FinishBatch, FinishBatchResult, FinishRequest, PollRequest, PollResponse,
    ProgressUpdate, RegisterRequest, RegisterResponse,
};
use drover_core::files::FileInfo;
use rand::Rng;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How a call to the server failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// 409 `stale_attempt` (or 404): the attempt is not ours any more; kill it.
    #[error("attempt is no longer current: {0}")]
    Stale(String),
    /// 401: the token is not accepted (re-register for polls).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Another 4xx: retrying the same request will not help.
    #[error("server refused the request ({status}): {message}")]
    Refused { status: u16, message: String },
    /// 5xx, a timeout or a connection error: retry later.
    #[error("server unreachable or failing: {0}")]
    Transient(String),
}

impl CallError {
    /// Whether the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, CallError::Transient(_))
    }
}

/// Exponential backoff with jitter: 100 ms doubling to 5 s.
#[derive(Debug, Clone, Default)]
pub struct RetryBackoff {
    failures: u32,
}

impl RetryBackoff {
    const BASE_MS: u64 = 100;
    const CAP_MS: u64 = 5_000;

    /// The delay before the next try; each call grows the next one.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.failures.min(16);
        self.failures = self.failures.saturating_add(1);
        let ceiling = Self::BASE_MS.saturating_mul(1 << exp).min(Self::CAP_MS);
        let half = ceiling / 2;
        let ms = half + rand::thread_rng().gen_range(0..=ceiling - half);
        Duration::from_millis(ms)
    }

    /// Forget earlier failures after a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Talks to a drover server with the agent's session token. Given several servers (one
/// database behind them), it uses one until a request to it fails in transport (refused,
/// cut, timed out), then the next: the caller's retry goes there. Every agent write is
/// fenced and idempotent, so a request that reached a dying server may be sent again.
pub struct Client {
    http: reqwest::Client,
    bases: Vec<String>,
    current: AtomicUsize,
    session: RwLock<String>,
}

impl Client {
    /// A client for `base` (e.g. `http://127.0.0.1:7070`, or several, comma-separated).
    pub fn new(base: &str, ca: Option<reqwest::Certificate>) -> Result<Client, reqwest::Error> {
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(10));
        if let Some(ca) = ca {
            builder = builder.add_root_certificate(ca);
        }
        let http = builder.build()?;
        let bases = base
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_string())
            .filter(|b| !b.is_empty())
            .collect();
        Ok(Client {
            http,
            bases,
            current: AtomicUsize::new(0),
            session: RwLock::new(String::new()),
        })
    }

    /// The server requests go to now.
    pub fn base(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.bases.len().max(1);
        self.bases.get(i).map_or("", String::as_str)
    }

    /// A request to `url` failed in transport: later ones go to the next server (once,
    /// however many requests to the same server failed at the same time).
    fn fail_over(&self, url: &str) {
        if self.bases.len() < 2 {
            return;
        }
        let i = self.current.load(Ordering::Relaxed);
        if url.starts_with(self.bases[i % self.bases.len()].as_str())
            && self
                .current
                .compare_exchange(
                    i,
                    (i + 1) % self.bases.len(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            tracing::warn!(from = %url, to = %self.base(), "server unreachable; going on with the next one");
        }
    }

    fn transport(&self, url: &str, e: &reqwest::Error) -> CallError {
        self.fail_over(url);
        CallError::Transient(error_chain(e))
    }

    fn session_token(&self) -> String {
        self.session
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Registers with the join token and keeps the session token for later calls.
    pub async fn register(
        &self,
        join_token: &str,
        req: &RegisterRequest,
    ) -> Result<RegisterResponse, CallError> {
        let url = format!("{}/v1/agents/register", self.base());
        let resp: RegisterResponse = self
            .send(&url, join_token, req, Duration::from_secs(30))
            .await?
            .ok_or_else(|| CallError::Transient("register answered without a body".into()))?;
        *self.session.write().unwrap_or_else(|e| e.into_inner()) = resp.token.clone();
        Ok(resp)
    }

    /// One long-poll; the HTTP timeout leaves room beyond `wait_ms`.
    pub async fn poll(&self, req: &PollRequest) -> Result<PollResponse, CallError> {
        let url = format!("{}/v1/agents/poll", self.base());
        let timeout = Duration::from_millis(req.wait_ms) + Duration::from_secs(15);
        self.send(&url, &self.session_token(), req, timeout)
            .await?
            .ok_or_else(|| CallError::Transient("poll answered without a body".into()))
    }

    fn attempt_url(&self, job_id: &str, attempt: u32, verb: &str) -> String {
        format!("{}/v1/jobs/{job_id}/attempts/{attempt}/{verb}", self.base())
    }

    /// `POST .../VERB` of an attempt with a JSON body; the answer's body is not needed.
    async fn attempt_write<B: Serialize + ?Sized>(
        &self,
        job_id: &str,
        attempt: u32,
        verb: &str,
        body: &B,
    ) -> Result<(), CallError> {
        let url = self.attempt_url(job_id, attempt, verb);
        self.send::<_, serde_json::Value>(&url, &self.session_token(), body, Self::WRITE_TIMEOUT)
            .await
            .map(drop)
    }

    /// `POST .../start`.
    pub async fn start(&self, job_id: &str, attempt: u32) -> Result<(), CallError> {
        self.attempt_write(job_id, attempt, "start", &serde_json::json!({}))
            .await
    }

    /// `POST .../logs` with a body that already is a JSON [`drover_core::api::LogBatch`] (the spool keeps
    /// records in their wire form, so shipping them parses and encodes nothing).
    /// With `start`, the server also marks the attempt started (one round trip for both).
    pub async fn logs(
        &self,
        job_id: &str,
        attempt: u32,
        body: bytes::Bytes,
        start: bool,
    ) -> Result<(), CallError> {
        let mut url = self.attempt_url(job_id, attempt, "logs");
        if start {
            url.push_str("?start=true");
        }
        self.send_bytes::<serde_json::Value>(&url, &self.session_token(), body, Self::WRITE_TIMEOUT)
            .await
            .map(drop)
    }

    /// `POST .../progress`.
    pub async fn progress(
        &self,
        job_id: &str,
        attempt: u32,
        update: &ProgressUpdate,
    ) -> Result<(), CallError> {
        self.attempt_write(job_id, attempt, "progress", update)
            .await
    }

    /// `POST .../finish`.
    pub async fn finish(
        &self,
        job_id: &str,
        attempt: u32,
        req: &FinishRequest,
    ) -> Result<(), CallError> {
        self.attempt_write(job_id, attempt, "finish", req).await
    }

    /// `POST /v1/agents/finish`: several attempts' ends, each answered on its own.
    pub async fn finish_batch(&self, batch: &FinishBatch) -> Result<FinishBatchResult, CallError> {
        let url = format!("{}/v1/agents/finish", self.base());
        self.send(&url, &self.session_token(), batch, Self::WRITE_TIMEOUT)
            .await?
            .ok_or_else(|| CallError::Transient("finish batch answered without a body".into()))
    }

    /// `POST /v1/agents/leave`: a clean exit; the server shows the agent offline at once.
    pub async fn leave(&self) -> Result<(), CallError> {
        let url = format!("{}/v1/agents/leave", self.base());
        self.send::<_, serde_json::Value>(
            &url,
            &self.session_token(),
            &serde_json::json!({}),
            Duration::from_secs(5),
        )
        .await
        .map(drop)
    }

    /// `POST .../release`: the agent is shutting down; the job goes back to the queue.
    pub async fn release(&self, job_id: &str, attempt: u32) -> Result<(), CallError> {
        self.attempt_write(job_id, attempt, "release", &serde_json::json!({}))
            .await
    }

    const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

    async fn send<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        url: &str,
        token: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<Option<T>, CallError> {
        let body = serde_json::to_vec(body).expect("plain data serializes");
        self.send_bytes(url, token, body.into(), timeout).await
    }

    /// POSTs `body` (JSON) and reads the answer.
    async fn send_bytes<T: DeserializeOwned>(
        &self,
        url: &str,
        token: &str,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> Result<Option<T>, CallError> {
        let resp = self
            .http
            .post(url)
            .bearer_auth(token)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport(url, &e))?;
        answer(resp, url).await
    }

    /// `GET …/inputs/{index}`: the answer, whose body the caller streams.
    pub async fn input(
        &self,
        job_id: &str,
        attempt: u32,
        index: usize,
    ) -> Result<reqwest::Response, CallError> {
        let url = self.attempt_url(job_id, attempt, &format!("inputs/{index}"));
        let resp = self
            .http
            .get(&url)
            .bearer_auth(self.session_token())
            .send()
            .await
            .map_err(|e| self.transport(&url, &e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(refusal(resp).await)
    }

    /// `POST …/artifacts?path=PATH`, streaming `body`.
    pub async fn upload_artifact(
        &self,
        job_id: &str,
        attempt: u32,
        path: &str,
        body: reqwest::Body,
    ) -> Result<FileInfo, CallError> {
        let url = self.attempt_url(job_id, attempt, "artifacts");
        let resp = self
            .http
            .post(&url)
            .query(&[("path", path)])
            .bearer_auth(self.session_token())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport(&url, &e))?;
        answer(resp, &url)
            .await?
            .ok_or_else(|| CallError::Transient(format!("{url} answered without a body")))
    }
}

/// The error an unsuccessful answer stands for.
async fn refusal(resp: reqwest::Response) -> CallError {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
        Ok(b) => (b.error.code, b.error.message),
        Err(_) => (String::new(), text),
    };
    match status {
        StatusCode::CONFLICT | StatusCode::NOT_FOUND => CallError::Stale(if code.is_empty() {
            message
        } else {
            format!("{code}: {message}")
        }),
        StatusCode::UNAUTHORIZED => CallError::Unauthorized(message),
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
            CallError::Transient(format!("{status}: {message}"))
        }
        s if s.is_server_error() => CallError::Transient(format!("{status}: {message}")),
        s => CallError::Refused {
            status: s.as_u16(),
            message,
        },
    }
}

/// Reads an answer: its JSON body on success, else the error it stands for.
async fn answer<T: DeserializeOwned>(
    resp: reqwest::Response,
    url: &str,
) -> Result<Option<T>, CallError> {
    let status = resp.status();
    if status.is_success() {
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| CallError::Transient(error_chain(&e)))?;
        if bytes.is_empty() {
            return Ok(None);
        }
        return serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| CallError::Transient(format!("unreadable answer from {url}: {e}")));
    }
    Err(refusal(resp).await)
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = RetryBackoff::default();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(5));
        }
        assert!(b.next_delay() >= Duration::from_millis(2_500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}

//! The typed HTTP client of the CLI; maps every HTTP failure to a `CliError`.

use drover_core::api::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::ClientConfig;
use crate::error::{CliError, Result};

/// The API path of a job, `/v1/jobs/ID`, with the id percent-encoded: an id such as
/// `../x` names a job, never another route.
pub fn job_path(id: &str) -> String {
    format!("/v1/jobs/{}", segment(id))
}

/// `s` percent-encoded as one path segment.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Whether the server hung up while the request's body was still being sent: one that
/// refuses a body for its size answers 413 and closes the connection before reading the
/// rest, and the client then sees the hang-up, not the answer.
pub fn hung_up(e: &reqwest::Error) -> bool {
    !e.is_connect() && !e.is_timeout()
}

/// A client bound to a server (or several on one database: a request whose connection
/// is refused goes to the next) and a token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The servers' base URLs.
    bases: Vec<String>,
    /// Which of them requests go to now.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    token: String,
    /// See [`ClientConfig::server_starting`].
    server_starting: Option<std::time::Instant>,
}

impl Client {
    /// Checks the URL and token and builds the HTTP client.
    pub fn new(cfg: &ClientConfig) -> Result<Client> {
        let token = cfg.token.clone().ok_or_else(|| {
            CliError::Auth(format!(
                "no token for {}: pass --token or set DROVER_TOKEN (`drover up` prints one and saves it for this machine)",
                cfg.server
            ))
        })?;
        let bases = crate::config::server_urls(&cfg.server)?;
        let mut builder =
            reqwest::Client::builder().connect_timeout(std::time::Duration::from_secs(5));
        if let Some(ca) = &cfg.ca_file {
            let pem = std::fs::read(ca).map_err(|e| {
                CliError::Usage(format!("cannot read CA file {}: {e}", ca.display()))
            })?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| {
                CliError::Usage(format!(
                    "CA file {} is not a PEM certificate: {e}",
                    ca.display()
                ))
            })?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| CliError::Other(format!("cannot set up HTTP: {e}")))?;
        Ok(Client {
            http,
            bases,
            current: Default::default(),
            token,
            server_starting: cfg.server_starting,
        })
    }

    /// The server requests go to now.
    pub fn base(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.bases[i % self.bases.len()]
    }

    /// A request to `path` with the token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base()))
            .bearer_auth(&self.token)
    }

    /// After a refused connection: the next server, with `req` pointed at it; None when
    /// every server was tried or there is only one.
    fn next_server(&self, req: &mut reqwest::Request, tried: &mut usize) -> Option<()> {
        if *tried + 1 >= self.bases.len() {
            return None;
        }
        *tried += 1;
        let from = self.base().to_string();
        self.current
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let to = self.base();
        let rest = req.url().as_str().strip_prefix(from.as_str())?.to_string();
        *req.url_mut() = format!("{to}{rest}").parse().ok()?;
        eprintln!("cannot reach {from}; trying {to}");
        Some(())
    }

    /// Sends `req`. A refused connection goes to the next server when there are several
    /// (the request never reached the first); while a `drover up` that wrote its context
    /// moments ago may still be starting, it is tried again.
    async fn dispatch(&self, req: reqwest::RequestBuilder) -> reqwest::Result<reqwest::Response> {
        let (mut req, mut said, mut tried) = (req.build()?, false, 0);
        loop {
            let again = req.try_clone();
            match self.http.execute(req).await {
                Err(e) if e.is_connect() => {
                    let Some(mut next) = again else { return Err(e) };
                    if self.next_server(&mut next, &mut tried).is_some() {
                        req = next;
                        continue;
                    }
                    if self
                        .server_starting
                        .is_none_or(|until| std::time::Instant::now() >= until)
                    {
                        return Err(e);
                    }
                    if !said {
                        eprintln!("waiting for the drover server at {} to start…", self.base());
                        said = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    req = next;
                }
                other => return other,
            }
        }
    }

    /// Sends and maps failures; returns the successful response.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = self
            .dispatch(req)
            .await
            .map_err(|e| self.connect_error(e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.http_error(resp).await)
    }

    /// GET `path` and decode its JSON.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.send(self.request(Method::GET, path)).await?;
        resp.json()
            .await
            .map_err(|e| CliError::Other(format!("unexpected answer from {path}: {e}")))
    }

    /// GET with extra request settings (e.g. a query string).
    pub async fn get_with<T: DeserializeOwned>(
        &self,
        path: &str,
        with: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<T> {
        let resp = self.send(with(self.request(Method::GET, path))).await?;
        resp.json()
            .await
            .map_err(|e| CliError::Other(format!("unexpected answer from {path}: {e}")))
    }

    /// POST a JSON body to `path` and decode the answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let body = serde_json::to_vec(body)
            .map_err(|e| CliError::Other(format!("cannot encode the request: {e}")))?;
        let size = body.len();
        let req = self
            .request(Method::POST, path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let resp = match self.dispatch(req).await {
            Ok(resp) if resp.status().is_success() => resp,
            Ok(resp) => return Err(self.http_error(resp).await),
            Err(e) => return Err(self.upload_error(e, size)),
        };
        resp.json()
            .await
            .map_err(|e| CliError::Other(format!("unexpected answer from {path}: {e}")))
    }

    /// DELETE `path`; None when the answer is 204.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        let resp = self.send(self.request(Method::DELETE, path)).await?;
        if resp.status() == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        resp.json()
            .await
            .map(Some)
            .map_err(|e| CliError::Other(format!("unexpected answer from {path}: {e}")))
    }

    /// A failed request with a body of `size` bytes: a server that hangs up while a large
    /// body is still being sent has, almost always, refused it for its size (it answers
    /// 413 and closes the connection before reading the rest).
    fn upload_error(&self, e: reqwest::Error, size: usize) -> CliError {
        const LARGE: usize = 1 << 20;
        if size > LARGE && hung_up(&e) {
            return CliError::Invalid(format!(
                "the server closed the connection while receiving this {:.1} MiB request: it is most likely over the server's body limit (8 MiB unless its operator changed it); send less per request",
                size as f64 / (1024.0 * 1024.0)
            ));
        }
        self.connect_error(e)
    }

    /// The one-line message for a server that cannot be reached.
    pub fn connect_error(&self, e: reqwest::Error) -> CliError {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            reason = s.to_string();
            source = s.source();
        }
        CliError::Connect(format!(
            "cannot reach the drover server at {} ({reason}); is it running? start one with `drover up`",
            self.bases.join(" or ")
        ))
    }

    /// The error an unsuccessful answer stands for.
    pub async fn http_error(&self, resp: reqwest::Response) -> CliError {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let (message, details) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => {
                let details: Vec<String> = body
                    .error
                    .details
                    .iter()
                    .map(|d| format!("  {}: {}", d.field, d.message))
                    .collect();
                (body.error.message, details)
            }
            Err(_) => (format!("{status}: {}", text.trim()), Vec::new()),
        };
        // The server's message repeats the details on one line for API users; here
        // each problem is printed once, on a line of its own.
        let full = if details.is_empty() {
            message.clone()
        } else {
            let head = message
                .split_once(": ")
                .map_or(message.as_str(), |(h, _)| h);
            format!("{head}:\n{}", details.join("\n"))
        };
        match status {
            StatusCode::UNAUTHORIZED => CliError::Auth(format!(
                "the server refused the token: {message}; pass --token or set DROVER_TOKEN"
            )),
            StatusCode::FORBIDDEN => CliError::Auth(format!("not allowed: {message}")),
            StatusCode::NOT_FOUND => CliError::NotFound(message),
            StatusCode::CONFLICT => CliError::Conflict(message),
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => CliError::Invalid(full),
            _ => CliError::Other(format!("server error: {message}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_percent_encoded_in_paths() {
        assert_eq!(job_path("01a2-b_c"), "/v1/jobs/01a2-b_c");
        assert_eq!(job_path("../x"), "/v1/jobs/%2E%2E%2Fx");
        assert_eq!(job_path("a b?c#d"), "/v1/jobs/a%20b%3Fc%23d");
    }
}

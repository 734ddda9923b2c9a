//! The benchmark's HTTP client: what a user or a synthetic agent sends.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use drover_core::api::{FinishRequest, Job, LogPage, RegisterResponse};
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// What the benchmark reads of a batch submit's answer: the ids. Reading only them
/// keeps the client's share of this machine's two cores small, so the figures measure
/// the server.
#[derive(Deserialize)]
struct Submitted {
    jobs: Vec<Submit>,
}

#[derive(Deserialize)]
struct Submit {
    id: String,
}

/// What a synthetic agent reads of a poll's answer.
#[derive(Deserialize)]
pub struct Polled {
    pub leases: Vec<Leased>,
}

/// A lease's job and attempt.
#[derive(Deserialize)]
pub struct Leased {
    pub job_id: String,
    pub attempt: u32,
}

/// A client of one server, or of several on one database: after a transport failure it
/// goes on with the next (callers retry).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    /// The first server's base URL.
    pub url: String,
    bases: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
    token: String,
}

impl Api {
    /// `urls`: one base URL, or several separated by commas.
    pub fn new(urls: &str, token: &str) -> Api {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .expect("http client");
        let bases: Vec<String> = urls.split(',').map(str::to_string).collect();
        Api {
            http,
            url: bases[0].clone(),
            bases: Arc::new(bases),
            current: Arc::default(),
            token: token.to_string(),
        }
    }

    /// The base URL requests go to now.
    pub fn base(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Moves on to the next server after `base` failed; once, however many requests to
    /// it failed at the same time.
    pub fn fail_over(&self, base: &str) {
        let i = self.current.load(Ordering::Relaxed);
        if self.bases[i % self.bases.len()] == base {
            let _ = self.current.compare_exchange(
                i,
                (i + 1) % self.bases.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + ?Sized)>,
    ) -> anyhow::Result<reqwest::Response> {
        let base = self.base().to_string();
        let mut req = self
            .http
            .request(method, format!("{base}{path}"))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = match req.send().await {
            Ok(resp) => resp,
            Err(e) => {
                self.fail_over(&base);
                return Err(e.into());
            }
        };
        if !resp.status().is_success() {
            let status = resp.status();
            bail!("{status}: {}", resp.text().await.unwrap_or_default());
        }
        Ok(resp)
    }

    pub async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: impl Serialize,
    ) -> anyhow::Result<T> {
        let resp = self.send(Method::POST, path, Some(&body)).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(serde_json::from_value(Value::Null)?);
        }
        Ok(resp.json().await?)
    }

    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self
            .send(Method::GET, path, None::<&Value>)
            .await?
            .json()
            .await?)
    }

    /// Streams the bytes at `path` into `dest`; returns how many.
    pub async fn download(&self, path: &str, dest: &std::path::Path) -> anyhow::Result<u64> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let resp = self.send(Method::GET, path, None::<&Value>).await?;
        let mut out =
            tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::create(dest).await?);
        let mut body = resp.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            n += chunk.len() as u64;
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        Ok(n)
    }

    /// Submits `specs` in batches of `batch`.
    pub async fn submit_all(&self, specs: &[Value], batch: usize) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::with_capacity(specs.len());
        for chunk in specs.chunks(batch) {
            #[derive(Serialize)]
            struct Batch<'a> {
                jobs: &'a [Value],
            }
            let got: Submitted = self.post("/v1/jobs/batch", Batch { jobs: chunk }).await?;
            ids.extend(got.jobs.into_iter().map(|j| j.id));
        }
        Ok(ids)
    }

    pub async fn job(&self, id: &str) -> anyhow::Result<Job> {
        self.get(&format!("/v1/jobs/{id}")).await
    }

    /// The server's Prometheus metrics.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        Ok(self
            .send(Method::GET, "/metrics", None::<&Value>)
            .await?
            .text()
            .await?)
    }

    /// Count of jobs in `state`, from the server's own metrics.
    pub async fn count(&self, state: &str) -> anyhow::Result<u64> {
        let text = self.metrics_text().await?;
        let prefix = "drover_jobs{";
        Ok(text
            .lines()
            .filter(|l| l.starts_with(prefix) && l.contains(&format!("state=\"{state}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }

    /// Waits until `n` jobs are in `state`.
    pub async fn wait_count(&self, state: &str, n: u64, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if self.count(state).await? >= n {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!(
                    "only {} of {n} jobs reached {state} within {limit:?}",
                    self.count(state).await?
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a job ended; returns it.
    pub async fn wait_done(&self, id: &str, limit: Duration) -> anyhow::Result<Job> {
        let start = Instant::now();
        loop {
            let job = self.job(id).await?;
            if job.state.is_terminal() {
                return Ok(job);
            }
            if start.elapsed() > limit {
                bail!("job {id} still {} after {limit:?}", job.state);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub async fn logs(&self, id: &str) -> anyhow::Result<LogPage> {
        self.get(&format!("/v1/jobs/{id}/logs")).await
    }

    pub async fn register(&self, name: &str, slots: u32) -> anyhow::Result<Api> {
        let r: RegisterResponse = self
            .post("/v1/agents/register", json!({"name": name, "slots": slots, "host": {"hostname": "bench", "os": "linux", "arch": "x86_64", "cpus": 1, "memory_bytes": 1, "version": "bench"}}))
            .await
            .context("register synthetic agent")?;
        Ok(Api::new(&self.bases.join(","), &r.token))
    }

    pub async fn poll(&self, running: &[(String, u32)], wait_ms: u64) -> anyhow::Result<Polled> {
        let running: Vec<Value> = running
            .iter()
            .map(|(j, a)| json!({"job_id": j, "attempt": a}))
            .collect();
        self.post(
            "/v1/agents/poll",
            json!({"running": running, "wait_ms": wait_ms}),
        )
        .await
    }

    /// Finishes many attempts as succeeded in one request.
    pub async fn finish_many(&self, leases: &[(String, u32)]) -> anyhow::Result<()> {
        #[derive(Serialize)]
        struct Item<'a> {
            job_id: &'a str,
            attempt: u32,
            outcome: &'static str,
            exit_code: i32,
        }
        #[derive(Serialize)]
        struct Finishes<'a> {
            finishes: Vec<Item<'a>>,
        }
        let finishes = leases
            .iter()
            .map(|(j, a)| Item {
                job_id: j,
                attempt: *a,
                outcome: "succeeded",
                exit_code: 0,
            })
            .collect();
        let v: Value = self
            .post("/v1/agents/finish", Finishes { finishes })
            .await?;
        if let Some(bad) = v["results"]
            .as_array()
            .and_then(|r| r.iter().find(|x| x["status"] != "ok"))
        {
            bail!("finish refused: {bad}");
        }
        Ok(())
    }

    pub async fn finish(&self, id: &str, attempt: u32) -> anyhow::Result<()> {
        let body = FinishRequest {
            outcome: drover_core::Outcome::Succeeded,
            exit_code: Some(0),
            error: None,
            result: None,
            gpus: None,
        };
        let _: Value = self
            .post(
                &format!("/v1/jobs/{id}/attempts/{attempt}/finish"),
                serde_json::to_value(body)?,
            )
            .await?;
        Ok(())
    }
}

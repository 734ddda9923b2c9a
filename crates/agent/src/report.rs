//! Reporting one attempt to the server: `start`, `logs`, `progress`, `finish`, each
//! retried with backoff for as long as it takes, and fenced: a stale answer kills the job.

use std::sync::Arc;

use drover_core::api::{FinishRequest, Lease, ProgressUpdate};
use tokio_util::sync::CancellationToken;

use crate::client::{CallError, Client, RetryBackoff};
use crate::finisher::Finisher;
use crate::output::Masker;
use crate::pipeline::Folded;
use crate::process::{self, StopReason, Stopper};

/// The attempt ends without a finish report: it is stale, or the agent gave up on it.
#[derive(Debug)]
pub struct Abandoned;

/// Why a retried call gave up.
#[derive(Debug)]
pub enum GaveUp {
    /// The attempt is stale, or the agent stopped reporting (after force-stop).
    Abandoned,
    /// The server refused this request (a 4xx other than 401/403/404/409); retrying it
    /// cannot help, but the attempt goes on.
    Refused,
}

impl From<GaveUp> for Abandoned {
    fn from(_: GaveUp) -> Self {
        Abandoned
    }
}

/// Sends the writes of one attempt.
#[derive(Clone)]
pub struct Reporter {
    client: Arc<Client>,
    finisher: Finisher,
    job_id: String,
    attempt: u32,
    stopper: Stopper,
    /// Cancelled when the agent stops retrying (some time after force-stop).
    abandon: CancellationToken,
    masker: Arc<Masker>,
}

impl Reporter {
    /// A reporter for `lease`'s attempt.
    pub fn new(
        client: Arc<Client>,
        finisher: Finisher,
        lease: &Lease,
        stopper: Stopper,
        abandon: CancellationToken,
        masker: Arc<Masker>,
    ) -> Reporter {
        Reporter {
            client,
            finisher,
            job_id: lease.job_id.clone(),
            attempt: lease.attempt,
            stopper,
            abandon,
            masker,
        }
    }

    /// `start`; a refused start is logged and the attempt goes on (finish will tell).
    pub async fn start(&self) -> Result<(), Abandoned> {
        let sent = self
            .retry("start", || self.client.start(&self.job_id, self.attempt))
            .await;
        match sent {
            Ok(()) | Err(GaveUp::Refused) => Ok(()),
            Err(GaveUp::Abandoned) => Err(Abandoned),
        }
    }

    /// One batch of log records, as the JSON body of the request; with `start`, it also
    /// reports the start.
    pub async fn logs(&self, body: bytes::Bytes, start: bool) -> Result<(), GaveUp> {
        // `Bytes`: each try sends the same buffer instead of a copy of the batch.
        self.retry("logs", || {
            self.client
                .logs(&self.job_id, self.attempt, body.clone(), start)
        })
        .await
    }

    /// One progress update.
    pub async fn progress(&self, update: &ProgressUpdate) -> Result<(), GaveUp> {
        self.retry("progress", || {
            self.client.progress(&self.job_id, self.attempt, update)
        })
        .await
    }

    /// The attempt's masker (the log's, built once per attempt).
    pub fn masker(&self) -> &Arc<Masker> {
        &self.masker
    }

    /// `finish`, with secrets masked in its error.
    pub async fn finish(&self, req: FinishRequest) -> Result<(), Abandoned> {
        self.finish_folded(req, None).await
    }

    /// `finish`, with the start and last records of a job whose start was not reported.
    async fn finish_folded(
        &self,
        req: FinishRequest,
        folded: Option<&Folded>,
    ) -> Result<(), Abandoned> {
        let req = FinishRequest {
            error: req.error.map(|e| self.masker.mask(e)),
            ..req
        };
        self.retry("finish", || {
            self.finisher
                .finish(&self.job_id, self.attempt, &req, folded)
        })
        .await
        .map_err(Abandoned::from)
    }

    /// Ends an attempt that the agent's own shutdown stopped, or reports how it ended:
    /// a job stopped for the agent's shutdown goes back to the queue instead of ending.
    pub async fn end(
        &self,
        req: FinishRequest,
        stopped: Option<StopReason>,
    ) -> Result<(), Abandoned> {
        self.end_folded(req, stopped, None).await
    }

    /// [`Reporter::end`] for a job whose start and last records were held for its end
    /// (a released job sends them as a log batch first).
    pub async fn end_folded(
        &self,
        req: FinishRequest,
        stopped: Option<StopReason>,
        folded: Option<Folded>,
    ) -> Result<(), Abandoned> {
        if stopped != Some(StopReason::Shutdown) {
            return self.finish_folded(req, folded.as_ref()).await;
        }
        if let Some(f) = folded {
            if let Err(GaveUp::Abandoned) = self.logs(f.body.into(), true).await {
                return Err(Abandoned);
            }
        }
        self.retry("release", || {
            self.client.release(&self.job_id, self.attempt)
        })
        .await
        .map_err(Abandoned::from)
    }

    /// Calls `f` until it succeeds; transient failures are retried with backoff (100 ms
    /// doubling to 5 s, jittered), for as long as it takes. Gives up when the attempt
    /// turns stale (409, 404, or 403 not-your-attempt: the job is killed), when the
    /// agent abandons it, or when the server refuses the request.
    async fn retry<F, Fut>(&self, what: &str, mut f: F) -> Result<(), GaveUp>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), CallError>>,
    {
        let mut backoff = RetryBackoff::default();
        let mut stop_rx = self.stopper.subscribe();
        loop {
            if self.abandon.is_cancelled() || self.stopper.current() == Some(StopReason::Stale) {
                return Err(GaveUp::Abandoned);
            }
            match f().await {
                Ok(()) => return Ok(()),
                Err(CallError::Stale(msg))
                | Err(CallError::Refused {
                    status: 403,
                    message: msg,
                }) => {
                    tracing::warn!(what, %msg, "server says the attempt is not ours any more: killing it");
                    self.stopper.stop(StopReason::Stale);
                    return Err(GaveUp::Abandoned);
                }
                Err(e @ CallError::Refused { .. }) => {
                    tracing::error!(what, error = %e, "server refused the request; not retrying it");
                    return Err(GaveUp::Refused);
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(what, error = %e, retry_in_ms = delay.as_millis() as u64, "server call failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.abandon.cancelled() => return Err(GaveUp::Abandoned),
                        _ = process::wait_stop(&mut stop_rx, |r| r == StopReason::Stale) => {
                            return Err(GaveUp::Abandoned)
                        }
                    }
                }
            }
        }
    }
}

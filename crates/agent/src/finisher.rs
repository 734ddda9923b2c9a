//! Sends the agent's `finish` reports together. Attempts that end while a report is on
//! its way wait for it and then go out in one `POST /v1/agents/finish`: one request and
//! one transaction on the server for all of them, and the next poll claims as many jobs
//! as ended. Nothing waits for a batch to fill: a lone report goes out at once, so a
//! quiet agent reports as fast as before, and a busy one makes fewer requests.
//!
//! Each report is still answered on its own, as `POST …/finish` would answer it, so
//! the attempt's retry (see `report`) is the same for both.

use std::sync::Arc;

use drover_core::api::{FinishBatch, FinishItem, FinishRequest, LogBatch};
use tokio::sync::{mpsc, oneshot};

use crate::client::{CallError, Client};
use crate::pipeline::Folded;

/// Most reports taken at once (the server takes up to 10,000 in a request) …
const MAX_BATCH: usize = 1000;
/// … and about the most bytes of log records in one request (each report's own are
/// at most the shipper's 1 MiB batch; the server takes 8 MiB bodies).
const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;

type Reply = oneshot::Sender<Result<(), CallError>>;

/// A handle to the agent's batching finish sender; its task ends with the last handle.
#[derive(Clone)]
pub struct Finisher {
    tx: mpsc::UnboundedSender<(FinishItem, Reply)>,
}

impl Finisher {
    /// Starts the sender on `client` (inside a runtime).
    pub fn start(client: Arc<Client>) -> Finisher {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(send_batches(client, rx));
        Finisher { tx }
    }

    /// Reports one attempt's end, answered as `POST …/finish` would answer it alone;
    /// with `folded`, also its start and last log records.
    pub async fn finish(
        &self,
        job_id: &str,
        attempt: u32,
        req: &FinishRequest,
        folded: Option<&Folded>,
    ) -> Result<(), CallError> {
        let (started_ms_ago, logs) = match folded {
            Some(f) => {
                let batch: LogBatch =
                    serde_json::from_slice(&f.body).map_err(|e| CallError::Refused {
                        status: 400,
                        message: format!("the spool's records do not parse: {e}"),
                    })?;
                (Some(f.started.elapsed().as_millis() as u64), batch.records)
            }
            None => (None, Vec::new()),
        };
        let item = FinishItem {
            job_id: job_id.to_string(),
            attempt,
            finish: req.clone(),
            started_ms_ago,
            logs,
        };
        let (reply, answer) = oneshot::channel();
        if self.tx.send((item, reply)).is_err() {
            return Err(CallError::Transient("the finish sender stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(CallError::Transient("the finish sender stopped".into())))
    }
}

/// Sends what waits, one request at a time, until every handle is gone.
async fn send_batches(client: Arc<Client>, mut rx: mpsc::UnboundedReceiver<(FinishItem, Reply)>) {
    let mut waiting = Vec::new();
    while rx.recv_many(&mut waiting, MAX_BATCH).await > 0 {
        let (items, replies): (Vec<_>, Vec<_>) = std::mem::take(&mut waiting).into_iter().unzip();
        for (reply, answer) in replies.into_iter().zip(send(&client, items).await) {
            let _ = reply.send(answer);
        }
    }
}

/// One answer per item, in order.
async fn send(client: &Client, items: Vec<FinishItem>) -> Vec<Result<(), CallError>> {
    let mut answers = Vec::with_capacity(items.len());
    let (mut chunk, mut bytes) = (Vec::new(), 0);
    for item in items {
        // A report the server would refuse as malformed refuses the whole batch (400):
        // it goes alone, so that only it gets the refusal.
        let alone = item.finish.check().is_err();
        let size: usize = item.logs.iter().map(|r| r.text.len() + 64).sum();
        if !chunk.is_empty() && (alone || bytes + size > MAX_BATCH_BYTES) {
            answers.extend(send_batch(client, std::mem::take(&mut chunk)).await);
            bytes = 0;
        }
        if alone {
            answers.extend(send_batch(client, vec![item]).await);
            continue;
        }
        bytes += size;
        chunk.push(item);
    }
    if !chunk.is_empty() {
        answers.extend(send_batch(client, chunk).await);
    }
    answers
}

/// One request for `items`; one answer per item, in order.
async fn send_batch(client: &Client, items: Vec<FinishItem>) -> Vec<Result<(), CallError>> {
    let n = items.len();
    match client.finish_batch(&FinishBatch { finishes: items }).await {
        Ok(result) if result.results.len() == n => result
            .results
            .into_iter()
            .map(|r| item_answer(&r.status))
            .collect(),
        Ok(result) => {
            let e = format!(
                "finish batch of {n} answered {} results",
                result.results.len()
            );
            vec![Err(CallError::Transient(e)); n]
        }
        Err(e) => vec![Err(e); n],
    }
}

/// What an item's `status` means, as the HTTP status of a single `finish` would.
fn item_answer(status: &str) -> Result<(), CallError> {
    match status {
        "ok" => Ok(()),
        // 409 or 404 for a single finish: the attempt is not this agent's any more.
        "stale_attempt" | "not_found" | "already_finished" | "conflict" => {
            Err(CallError::Stale(status.to_string()))
        }
        "forbidden" => Err(CallError::Refused {
            status: 403,
            message: "forbidden: the attempt is held by another agent".into(),
        }),
        other => Err(CallError::Refused {
            status: 400,
            message: format!("finish refused: {other}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_statuses_mean_what_a_single_finish_would() {
        assert!(item_answer("ok").is_ok());
        for stale in ["stale_attempt", "not_found", "already_finished", "conflict"] {
            assert!(matches!(item_answer(stale), Err(CallError::Stale(_))));
        }
        assert!(matches!(
            item_answer("forbidden"),
            Err(CallError::Refused { status: 403, .. })
        ));
        assert!(matches!(
            item_answer("what"),
            Err(CallError::Refused { status: 400, .. })
        ));
    }
}

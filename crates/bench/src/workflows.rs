//! Arrays and dependencies, against their two targets: an array of 10,000 jobs is
//! submitted in at most a second (one request, one transaction), and a job whose
//! dependency just ended is leased at most 5 ms later (p50), which only holds if the
//! dependency's finish wakes the waiting job and the polling agent at once.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use drover_core::api::{BatchSubmitted, JobEvents};
use drover_core::group::Group;
use drover_core::JobState;
use serde_json::json;

use crate::api::Api;
use crate::report::{Row, Target};
use crate::scenarios::{percentile, process, System};
use crate::Size;

pub async fn run(size: Size, runs: usize) -> anyhow::Result<Vec<Row>> {
    let mut rows = vec![array_submit(size, runs).await?];
    rows.extend(dependency_lease(size, runs).await?);
    Ok(rows)
}

/// One `POST /v1/groups`, from send to the 201. No agent: members being leased while
/// they are inserted would measure dispatch too.
async fn array_submit(size: Size, runs: usize) -> anyhow::Result<Row> {
    let count: u32 = if size == Size::Tiny { 500 } else { 10_000 };
    let mut took = Vec::new();
    for _ in 0..runs {
        let sys = System::start(None, None).await?;
        let body = json!({
            "job": process(&["true"]),
            "array": {"first": 0, "count": count, "parallelism": null},
        });
        let start = Instant::now();
        let group: Group = sys.api.post("/v1/groups", body).await?;
        took.push(start.elapsed().as_secs_f64() * 1000.0);
        if group.count != count {
            bail!("asked for {count} members, the group has {}", group.count);
        }
        sys.stop();
    }
    Ok(Row::new(
        "workflows",
        &format!("submit an array of {count} jobs (one POST /v1/groups)"),
        "ms",
        &took,
        None,
        Target::AtMost(1000.0),
    ))
}

/// Pairs of `true` jobs, the second after the first, through one real agent.
async fn dependency_lease(size: Size, runs: usize) -> anyhow::Result<Vec<Row>> {
    let pairs = if size == Size::Tiny { 20 } else { 200 };
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let sys = System::start(Some(2), None).await?;
        let mut samples = Vec::new();
        for i in 0..pairs {
            samples.push(finish_to_lease_ms(&sys.api, i).await?);
        }
        p50.push(percentile(&samples, 0.5));
        p99.push(percentile(&samples, 0.99));
        sys.stop();
    }
    Ok(vec![
        Row::new(
            "workflows",
            "dependency finished → dependent leased (p50)",
            "ms",
            &p50,
            None,
            Target::AtMost(5.0),
        ),
        Row::new(
            "workflows",
            "dependency finished → dependent leased (p99)",
            "ms",
            &p99,
            None,
            Target::None,
        ),
    ])
}

/// Submits A and B (after A) and waits for B: from A's `finished_at` to B's `leased`
/// event, both taken from the server's clock (stored to the millisecond), so no clock
/// of the benchmark's enters. The two go in one batch, B naming A by its key: submitted
/// apart, a fast A could end before B exists and B would never wait.
async fn finish_to_lease_ms(api: &Api, i: usize) -> anyhow::Result<f64> {
    let key = format!("workflows-{i}");
    let mut first = process(&["true"]);
    first["idempotency_key"] = json!(key);
    let mut second = process(&["true"]);
    second["after"] = json!([{"job": format!("key:{key}")}]);
    let got: BatchSubmitted = api
        .post("/v1/jobs/batch", json!({"jobs": [first, second]}))
        .await?;
    let [a, b] = &got.jobs[..] else {
        bail!("a batch of two returned {} jobs", got.jobs.len());
    };
    let b = api.wait_done(&b.id, Duration::from_secs(30)).await?;
    if b.state != JobState::Succeeded {
        bail!("the dependent job ended {}: {:?}", b.state, b.error);
    }
    let finished = api
        .job(&a.id)
        .await?
        .finished_at
        .context("the dependency has no finish time")?;
    let events: JobEvents = api.get(&format!("/v1/jobs/{}/events", b.id)).await?;
    let leased = events
        .events
        .iter()
        .find(|e| e.kind == "leased")
        .context("the dependent job has no leased event")?
        .at;
    let us = (leased - finished)
        .num_microseconds()
        .context("finish → lease out of range")?;
    Ok(us as f64 / 1000.0)
}

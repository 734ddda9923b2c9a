//! Several servers on one PostgreSQL database: what crossing servers adds to a job's
//! start (submitted to one server, its agent polling another: the wake-up goes through
//! PostgreSQL's NOTIFY), and what a second server does for queue throughput.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use crate::api::Api;
use crate::report::{Row, Target};
use crate::roles::{self, Proc, ADMIN};
use crate::scenarios::{drain_synthetic, percentile, process, submit_to_start_ms, wait_agents};
use crate::Size;

pub async fn run(size: Size, runs: usize) -> anyhow::Result<Vec<Row>> {
    let mut rows = latency(size, runs).await?;
    rows.extend(throughput(size, runs).await?);
    Ok(rows)
}

/// `n` servers on one fresh PostgreSQL database and one data directory.
struct Cluster {
    servers: Vec<Proc>,
    urls: Vec<String>,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(n: usize) -> anyhow::Result<Cluster> {
        let db = drover_server::testing_pg::fresh_database().await;
        let dir = tempfile::tempdir()?;
        let (mut servers, mut urls) = (Vec::new(), Vec::new());
        // One after the other: the first writes the secrets key the others read.
        for _ in 0..n {
            let (proc, url) = roles::start_server(&dir.path().join("server"), Some(&db))?;
            servers.push(proc);
            urls.push(url);
        }
        Ok(Cluster { servers, urls, dir })
    }

    fn stop(self) {
        for s in self.servers {
            s.stop();
        }
    }
}

/// Submit → process start with the job submitted to the server its agent polls, and to
/// another; taken in turns so both see the same machine.
async fn latency(size: Size, runs: usize) -> anyhow::Result<Vec<Row>> {
    let jobs = if size == Size::Tiny { 5 } else { 200 };
    let (mut same, mut cross, mut added) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        let cluster = Cluster::start(2).await?;
        let (on_a, on_b) = (
            Api::new(&cluster.urls[0], ADMIN),
            Api::new(&cluster.urls[1], ADMIN),
        );
        let agent = roles::start_agent(&cluster.urls[1], 2, &cluster.dir.path().join("agent"))?;
        wait_agents(&on_b, 1).await?;
        let (mut here, mut there) = (Vec::new(), Vec::new());
        for _ in 0..jobs {
            here.push(submit_to_start_ms(&on_b).await?);
            there.push(submit_to_start_ms(&on_a).await?);
        }
        let (p_here, p_there) = (percentile(&here, 0.5), percentile(&there, 0.5));
        same.push(p_here);
        cross.push(p_there);
        added.push(p_there - p_here);
        agent.stop();
        cluster.stop();
    }
    Ok(vec![
        Row::new(
            "cluster",
            "submit → process start p50, submitted to the server the agent polls",
            "ms",
            &same,
            None,
            Target::None,
        ),
        Row::new(
            "cluster",
            "submit → process start p50, submitted to another server",
            "ms",
            &cross,
            Some(&same),
            Target::None,
        ),
        Row::new(
            "cluster",
            "added by crossing servers (p50)",
            "ms",
            &added,
            None,
            Target::AtMost(2.0),
        ),
    ])
}

/// The queue scenario's synthetic load (two submitters in batches of 1,000, two agents
/// that finish every lease at once) on one server, then spread over two.
async fn throughput(size: Size, runs: usize) -> anyhow::Result<Vec<Row>> {
    let n = if size == Size::Tiny { 400 } else { 20_000 };
    let mut rates: Vec<Vec<f64>> = Vec::new();
    for servers in [1, 2] {
        let mut mine = Vec::new();
        for _ in 0..runs {
            let cluster = Cluster::start(servers).await?;
            let apis = [
                Api::new(&cluster.urls[0], ADMIN),
                Api::new(&cluster.urls[servers - 1], ADMIN),
            ];
            let agents = [
                apis[0].register("synthetic-0", 1000).await?,
                apis[1].register("synthetic-1", 1000).await?,
            ];
            let done = Arc::new(AtomicUsize::new(0));
            let half = vec![process(&["true"]); n / 2];
            let start = std::time::Instant::now();
            let (s0, s1, d0, d1) = tokio::join!(
                apis[0].submit_all(&half, 1000),
                apis[1].submit_all(&half, 1000),
                // Short polls: the other agent may take the last jobs.
                drain_synthetic(&agents[0], &done, n, 200),
                drain_synthetic(&agents[1], &done, n, 200),
            );
            s0?;
            s1?;
            d0?;
            d1?;
            mine.push(n as f64 / start.elapsed().as_secs_f64());
            cluster.stop();
        }
        rates.push(mine);
    }
    Ok(vec![
        Row::new(
            "cluster",
            "queue: submit + lease + finish, one server on PostgreSQL",
            "jobs/s",
            &rates[0],
            None,
            Target::None,
        ),
        Row::new(
            "cluster",
            "queue: the same spread over two servers on that database",
            "jobs/s",
            &rates[1],
            Some(&rates[0]),
            Target::RatioAtLeast(1.0),
        ),
    ])
}

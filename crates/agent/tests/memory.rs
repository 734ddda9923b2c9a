//! A job that prints far more than the output cap keeps running, its log says it was
//! truncated, and the agent's memory stays bounded while it reads everything.
//! (Its own test binary, so no other test's memory use disturbs the measurement.)

mod common;

use std::time::Duration;

use common::{agent_with, texts, Api};
use drover_core::api::Stream;
use drover_core::{JobState, SubmitRequest};
use drover_server::testing::TestServer;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_gibibyte_of_output_is_capped_and_memory_stays_bounded() {
    let server = TestServer::start().await;
    let api = Api::new(&server);
    let _agent = agent_with(&server, |c| c.output_cap_bytes = 1024 * 1024);
    let before = rss_bytes();
    let cmd = "head -c 512M /dev/zero | tr '\\0' x; echo; echo still running >&2";
    let job = api.submit(SubmitRequest::shell(cmd)).await;
    let mut peak = before;
    while !api.job(&job.id).await.unwrap().state.is_terminal() {
        peak = peak.max(rss_bytes());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:#?}");
    let grew = peak.saturating_sub(before);
    assert!(grew < 64 * 1024 * 1024, "agent grew by {} MiB", grew >> 20);
    let logs = api.logs(&job.id).await;
    let system = texts(&logs, Stream::System);
    let markers: Vec<&String> = system
        .iter()
        .filter(|t| t.contains("output exceeded"))
        .collect();
    assert_eq!(markers.len(), 1, "{system:#?}");
    assert!(
        texts(&logs, Stream::Stderr).is_empty(),
        "output after the cap is discarded"
    );
    let kept: usize = logs
        .iter()
        .filter(|r| r.stream == Stream::Stdout)
        .map(|r| r.text.len())
        .sum();
    assert!(kept <= 1024 * 1024);
}

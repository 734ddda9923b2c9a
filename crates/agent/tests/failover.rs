//! An agent given several servers on one PostgreSQL database goes on through another
//! when the one it talks to stops: its running job keeps its lease, its log reaches the
//! store without a gap, and it finishes once.

mod common;

use common::{agent_with, texts, Api};
use drover_core::api::Stream;
use drover_core::{JobState, SubmitRequest};
use drover_server::testing::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_goes_on_through_another_server_when_its_server_stops() {
    let db = drover_server::testing_pg::fresh_database().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut a = TestServer::start_with(TestServer::config_shared(tmp.path(), &db)).await;
    let b = TestServer::start_with(TestServer::config_shared(tmp.path(), &db)).await;
    let api = Api::new(&b);
    let both = format!("{},{}", a.url, b.url);
    let _agent = agent_with(&a, |c| c.server = both);
    let job = api
        .submit(SubmitRequest::shell(
            "for i in $(seq 1 30); do echo line $i; sleep 0.1; done",
        ))
        .await;
    api.wait_running(&job.id).await;
    a.stop().await;
    let done = api.wait_done(&job.id).await;
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.error);
    assert_eq!(done.attempts.len(), 1, "one attempt, run on");
    let lines = texts(&api.logs(&job.id).await, Stream::Stdout);
    let want: Vec<String> = (1..=30).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, want);
    // A new job goes to the agent through the server that is left.
    let next = api.submit(SubmitRequest::shell("echo again")).await;
    assert_eq!(api.wait_done(&next.id).await.state, JobState::Succeeded);
}

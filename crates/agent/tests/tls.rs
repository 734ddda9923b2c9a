//! An agent talks to an HTTPS server whose certificate it trusts through `ca_file`.

mod common;

use std::time::{Duration, Instant};

use common::{agent_with, RunningAgent};
use drover_core::api::Job;
use drover_core::{JobState, SubmitRequest};
use drover_server::testing::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_runs_jobs_from_an_https_server_with_a_custom_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let ca_path = tmp.path().join("ca.pem");
    let key_path = tmp.path().join("key.pem");
    std::fs::write(&ca_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let mut config = TestServer::config(tmp.path().join("data"), 0);
    config.tls = Some(drover_server::TlsFiles {
        cert: ca_path.clone(),
        key: key_path,
    });
    let mut server = TestServer::start_with(config).await;
    server.url = server.url.replace("http://", "https://");

    let agent: RunningAgent = agent_with(&server, |c| c.ca_file = Some(ca_path.clone()));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca_path).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let job: Job = http
        .post(format!("{}/v1/jobs", server.url))
        .bearer_auth(&server.admin_token)
        .json(&SubmitRequest::shell("echo over tls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: Job = http
            .get(format!("{}/v1/jobs/{}", server.url, job.id))
            .bearer_auth(&server.admin_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if got.state.is_terminal() {
            assert_eq!(got.state, JobState::Succeeded, "{got:#?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "job never ran over TLS: {got:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(agent);
}

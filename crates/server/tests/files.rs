//! The file API on both stores (the data directory, and S3 through a throwaway moto
//! server): uploads, inputs fetched by the agent whose attempt it is, artifacts with
//! their limits and fencing, downloads and the tar archive, byte for byte.

mod common;

use std::io::Read;

use common::{error_code, poll, register, shell, Client};
use drover_core::api::{Job, Lease};
use drover_core::files::{FileInfo, FileList};
use drover_server::testing::TestServer;
use drover_server::testing_s3::S3Server;
use drover_server::ServerConfig;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Bytes that differ from chunk to chunk, so a misplaced part shows.
fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u64 * 2_654_435_761 + seed as u64) >> 7) as u8)
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Sends `body` as raw bytes; the status and the answer (JSON when it is).
async fn send_bytes(c: &Client, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let resp = c
        .http
        .post(format!("{}{path}", c.base))
        .bearer_auth(&c.token)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// GETs raw bytes; the status, the announced sha256 and the bytes.
async fn fetch(c: &Client, path: &str) -> (StatusCode, Option<String>, Vec<u8>) {
    let resp = c
        .http
        .get(format!("{}{path}", c.base))
        .bearer_auth(&c.token)
        .send()
        .await
        .expect("request");
    let status = resp.status();
    let announced = resp
        .headers()
        .get("x-drover-sha256")
        .map(|v| v.to_str().unwrap().to_string());
    (status, announced, resp.bytes().await.unwrap().to_vec())
}

fn config(data_dir: std::path::PathBuf, s3: Option<&S3Server>) -> ServerConfig {
    let mut cfg = TestServer::config(data_dir, 0);
    cfg.max_file_bytes = 30 << 20;
    cfg.artifact_limits.max_files = 3;
    cfg.artifact_limits.max_bytes = 12 << 20;
    cfg.object_store = s3.map(|s| s.config("files-test"));
    cfg
}

async fn uploads_inputs_and_artifacts(s3: Option<&S3Server>) {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(tmp.path().to_path_buf(), s3)).await;
    let admin = Client::new(&server, &server.admin_token);
    let (_, t) = admin
        .post("/v1/tokens", json!({"name": "reader", "scope": "read"}))
        .await;
    let reader = Client::new(&server, t["token"].as_str().unwrap());

    // An upload of several multipart chunks reads back identical.
    let config_bytes = data((20 << 20) + 1234, 1);
    let (status, v) = send_bytes(&admin, "/v1/files?name=study.yaml", config_bytes.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let upload: FileInfo = serde_json::from_value(v).unwrap();
    assert_eq!(upload.size, config_bytes.len() as u64);
    assert_eq!(upload.sha256, sha(&config_bytes));
    let (status, announced, got) = fetch(&reader, &format!("/v1/files/{}", upload.id)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(announced.as_deref(), Some(upload.sha256.as_str()));
    assert!(got == config_bytes, "download differs");

    // Refusals store nothing.
    let wrong = format!("/v1/files?name=bad&sha256={}", "0".repeat(64));
    let (status, v) = send_bytes(&admin, &wrong, b"hello".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("sha256"),
        "{v}"
    );
    let (status, v) = send_bytes(&admin, "/v1/files?name=big", data(31 << 20, 2)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&(30u64 << 20).to_string()),
        "the limit is named: {v}"
    );
    let (status, v) = send_bytes(&reader, "/v1/files?name=r", b"x".to_vec()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let (_, v) = reader.get("/v1/files").await;
    let names: Vec<&str> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["study.yaml"]);

    // A job can only name uploads that exist.
    let mut spec = shell("cat study.yaml");
    spec["inputs"] = json!([{"path": "study.yaml", "from": {"file": "no-such-file"}}]);
    let (status, v) = admin.post("/v1/jobs", spec.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["details"][0]["field"], "inputs[0].from.file");
    spec["inputs"][0]["from"]["file"] = json!(upload.id);
    spec["artifacts"] = json!(["out/**"]);
    let job = admin.submit(spec).await;
    assert_eq!(job.artifacts, ["out/**"]);
    let (status, v) = admin
        .call(Method::DELETE, &format!("/v1/files/{}", upload.id), None)
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "an input of a queued job is kept: {v}"
    );

    // Only the agent whose attempt it is may fetch the input.
    let agent = register(&server, "a", json!({})).await;
    let other = register(&server, "b", json!({})).await;
    let lease = poll(&agent, &[], 5_000).await.leases.remove(0);
    assert_eq!(lease.inputs.len(), 1);
    assert_eq!(lease.artifact_limits.max_files, 3);
    let input = format!("/v1/jobs/{}/attempts/1/inputs/0", job.id);
    let (status, announced, got) = fetch(&agent, &input).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(announced.as_deref(), Some(upload.sha256.as_str()));
    assert!(got == config_bytes);
    let (status, _, _) = fetch(&other, &input).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = fetch(&reader, &input).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "client tokens are not agents"
    );

    // Artifacts: stored, replaced by path, limited, fenced.
    let art = |path: &str| format!("/v1/jobs/{}/attempts/1/artifacts?path={path}", job.id);
    let a = data((5 << 20) + 7, 3);
    let (status, v) = send_bytes(&agent, &art("out/a.bin"), data(10, 9)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, v) = send_bytes(&agent, &art("out/a.bin"), a.clone()).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the same path again replaces it: {v}"
    );
    let (status, v) = send_bytes(&other, &art("out/x"), b"x".to_vec()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let (status, v) = send_bytes(&agent, &art("../escape"), b"x".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let long_path = format!("out/{}/c.txt", "d".repeat(120));
    let small = [
        ("out/b.txt", b"bee\n".to_vec()),
        (long_path.as_str(), b"c".to_vec()),
    ];
    for (path, body) in &small {
        let (status, v) = send_bytes(&agent, &art(path), body.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
    }
    let (status, v) = send_bytes(&agent, &art("out/d.txt"), b"d".to_vec()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "a fourth file: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("3 artifacts"),
        "{v}"
    );
    let (status, v) = send_bytes(&agent, &art("out/b.txt"), data(8 << 20, 4)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "over the bytes: {v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("artifact limit"),
        "{v}"
    );

    // The attempt ends: it can no longer fetch or upload.
    let (status, v) = agent
        .post(
            &format!("/v1/jobs/{}/attempts/1/finish", job.id),
            json!({"outcome": "succeeded", "exit_code": 0, "error": null, "result": null}),
        )
        .await;
    assert!(status.is_success(), "{v}");
    let (status, v) = send_bytes(&agent, &art("out/late.txt"), b"late".to_vec()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert_eq!(error_code(&v), "stale_attempt");
    let (status, _, _) = fetch(&agent, &input).await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Listed, downloaded one by one and as an archive, byte for byte.
    let (status, v) = reader.get(&format!("/v1/jobs/{}/artifacts", job.id)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let list: FileList = serde_json::from_value(v).unwrap();
    let mut expected: Vec<(String, Vec<u8>)> = vec![("out/a.bin".into(), a)];
    expected.extend(small.iter().map(|(p, b)| (p.to_string(), b.clone())));
    expected.sort();
    let listed: Vec<(String, u32)> = list
        .files
        .iter()
        .map(|f| (f.name.clone(), f.attempt.unwrap()))
        .collect();
    let want: Vec<(String, u32)> = expected.iter().map(|(p, _)| (p.clone(), 1)).collect();
    assert_eq!(listed, want);
    for (f, (_, bytes)) in list.files.iter().zip(&expected) {
        assert_eq!(f.sha256, sha(bytes));
        let (status, _, got) = fetch(&reader, &format!("/v1/files/{}", f.id)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(&got == bytes, "{} differs", f.name);
    }
    let (status, _, tar) = fetch(&reader, &format!("/v1/jobs/{}/artifacts.tar", job.id)).await;
    assert_eq!(status, StatusCode::OK);
    let mut archive = tar::Archive::new(&tar[..]);
    let mut unpacked = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        unpacked.push((path, bytes));
    }
    assert!(unpacked == expected, "the archive holds the artifacts");
    let (status, _) = reader.get(&format!("/v1/jobs/{}/artifacts", "nope")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Once the job ended its input may go.
    let (status, v) = admin
        .call(Method::DELETE, &format!("/v1/files/{}", upload.id), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let (status, _, _) = fetch(&reader, &format!("/v1/files/{}", upload.id)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn files_on_the_embedded_store() {
    uploads_inputs_and_artifacts(None).await;
}

#[tokio::test]
async fn files_on_an_s3_store() {
    let s3 = tokio::task::spawn_blocking(S3Server::start)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    if let Some(s3) = &s3 {
        uploads_inputs_and_artifacts(Some(s3)).await;
    }
}

#[tokio::test]
async fn a_server_with_a_wrong_object_store_does_not_start() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = TestServer::config(tmp.path().to_path_buf(), 0);
    cfg.object_store = Some(drover_server::ObjectStoreConfig {
        url: "s3://no-bucket".into(),
        endpoint: Some("http://127.0.0.1:9".into()),
        region: Some("us-east-1".into()),
        access_key_id: Some("x".into()),
        secret_access_key: Some("y".into()),
        path_style: true,
    });
    let err = match drover_server::Server::bind(cfg).await {
        Ok(_) => panic!("started without a reachable object store"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("cannot write to object store s3://no-bucket"),
        "{err}"
    );
}

/// Runs one job through a fake agent: three log batches, an artifact, a finish.
/// Returns the job id and the log text as `logs.txt` must give it back.
async fn run_job_with_logs(server: &TestServer, admin: &Client) -> (String, String) {
    let mut spec = shell("echo");
    spec["artifacts"] = json!(["out/*"]);
    let job = admin.submit(spec).await;
    let agent = register(server, "logger", json!({})).await;
    let lease = poll(&agent, &[], 5_000).await.leases.remove(0);
    assert_eq!(lease.job_id, job.id);
    let mut text = String::new();
    let mut seq = 0u64;
    for batch in 0..3 {
        let records: Vec<Value> = (0..700)
            .map(|i| {
                seq += 1;
                let line = format!("batch {batch} line {i} {}", "x".repeat(i % 50));
                text.push_str(&line);
                text.push('\n');
                json!({"seq": seq, "ts": "2026-01-01T00:00:00Z", "stream": if i % 3 == 0 { "stderr" } else { "stdout" }, "text": line})
            })
            .collect();
        let (status, v) = agent
            .post(
                &format!("/v1/jobs/{}/attempts/1/logs", job.id),
                json!({ "records": records }),
            )
            .await;
        assert!(status.is_success(), "{v}");
    }
    let art = format!("/v1/jobs/{}/attempts/1/artifacts?path=out/r.txt", job.id);
    let (status, v) = send_bytes(&agent, &art, b"result".to_vec()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let (status, v) = agent
        .post(
            &format!("/v1/jobs/{}/attempts/1/finish", job.id),
            json!({"outcome": "succeeded", "exit_code": 0, "error": null, "result": null}),
        )
        .await;
    assert!(status.is_success(), "{v}");
    (job.id, text)
}

async fn logs_txt(c: &Client, job: &str) -> String {
    let (status, _, body) = fetch(c, &format!("/v1/jobs/{job}/logs.txt")).await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8(body).unwrap()
}

async fn log_place(c: &Client, job: &str) -> String {
    c.job(job).await.attempts[0].log.clone()
}

/// A server on moto whose one job's log has moved to the object store, and read back
/// identically from there. `None` where moto is not installed.
struct MovedLog {
    /// Killed on drop.
    s3: S3Server,
    _data: tempfile::TempDir,
    _server: TestServer,
    admin: Client,
    job: String,
}

impl MovedLog {
    async fn start() -> Option<MovedLog> {
        let s3 = tokio::task::spawn_blocking(S3Server::start)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"))?;
        let data = tempfile::tempdir().unwrap();
        let server = TestServer::start_with(config(data.path().to_path_buf(), Some(&s3))).await;
        let admin = Client::new(&server, &server.admin_token);
        let (job, text) = run_job_with_logs(&server, &admin).await;
        let start = std::time::Instant::now();
        while log_place(&admin, &job).await != "object_store" {
            assert!(start.elapsed().as_secs() < 30, "the log never moved");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(logs_txt(&admin, &job).await, text);
        Some(MovedLog {
            s3,
            _data: data,
            _server: server,
            admin,
            job,
        })
    }
}

#[tokio::test]
async fn logs_of_ended_attempts_move_to_the_object_store_and_read_back_identically() {
    let Some(moved) = MovedLog::start().await else {
        return;
    };
    let (admin, job) = (&moved.admin, &moved.job);
    // Pages from the middle, one stream only, read from the moved chunks.
    let (_, page) = admin
        .get(&format!(
            "/v1/jobs/{job}/logs?after=1000&limit=5&stream=stderr"
        ))
        .await;
    let seqs: Vec<u64> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1001, 1004, 1007, 1010, 1013], "{page}");
    assert_eq!(page["complete"], false);

    // Deleting the job deletes its log and artifacts, wherever they are.
    let (_, v) = admin.get(&format!("/v1/jobs/{job}/artifacts")).await;
    let artifact = v["files"][0]["id"].as_str().unwrap().to_string();
    let (status, v) = admin
        .call(Method::DELETE, &format!("/v1/jobs/{job}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    let (status, _) = admin.get(&format!("/v1/jobs/{job}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = fetch(admin, &format!("/v1/files/{artifact}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, v) = admin
        .call(Method::DELETE, &format!("/v1/jobs/{job}"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
}

/// Regression: a log moved to the object store was answered with 500 `internal` once the
/// store stopped answering, which says the server is broken rather than that the store
/// is away and the read may work later.
#[tokio::test]
async fn a_moved_log_whose_object_store_is_away_answers_503_naming_it() {
    let Some(moved) = MovedLog::start().await else {
        return;
    };
    let (admin, job) = (&moved.admin, &moved.job);

    drop(moved.s3);
    for path in [
        format!("/v1/jobs/{job}/logs.txt"),
        format!("/v1/jobs/{job}/logs?limit=5"),
    ] {
        let (status, _, body) = fetch(admin, &path).await;
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&body)));
        assert_eq!(
            (status, error_code(&v)),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            "{path}: {v}"
        );
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("reading the log: the object store s3://")
                && message.ends_with(" is unavailable; try again later"),
            "{path}: {message}"
        );
    }
}

#[tokio::test]
async fn retention_expires_files_artifacts_and_logs_of_ended_jobs_only() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path().to_path_buf(), None);
    let server = TestServer::start_with(cfg.clone()).await;
    let admin = Client::new(&server, &server.admin_token);
    let (ended, text) = run_job_with_logs(&server, &admin).await;
    assert_eq!(logs_txt(&admin, &ended).await, text);
    let (_, v) = send_bytes(&admin, "/v1/files?name=old.txt", b"old".to_vec()).await;
    let old_upload = v["id"].as_str().unwrap().to_string();
    let (_, v) = send_bytes(&admin, "/v1/files?name=needed.txt", b"needed".to_vec()).await;
    let needed = v["id"].as_str().unwrap().to_string();
    let mut waiting = shell("cat needed.txt");
    waiting["inputs"] = json!([{"path": "needed.txt", "from": {"file": needed}}]);
    waiting["labels"] = json!({"nobody": "has-this"});
    let waiting = admin.submit(waiting).await;
    let (status, v) = admin
        .call(Method::DELETE, &format!("/v1/jobs/{}", waiting.id), None)
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a queued job is not deleted: {v}"
    );
    drop(server);

    // A server with a short retention expires them at its start.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    cfg.retain = Some(std::time::Duration::from_secs(1));
    let server = TestServer::start_with(cfg).await;
    let admin = Client::new(&server, &server.admin_token);
    let start = std::time::Instant::now();
    while log_place(&admin, &ended).await != "expired" {
        assert!(start.elapsed().as_secs() < 30, "the log never expired");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(logs_txt(&admin, &ended).await, "");
    let (_, v) = admin.get(&format!("/v1/jobs/{ended}/artifacts")).await;
    assert_eq!(v["files"], json!([]), "{v}");
    let (status, _, _) = fetch(&admin, &format!("/v1/files/{old_upload}")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "an old upload nothing needs is gone"
    );
    let (status, _, got) = fetch(&admin, &format!("/v1/files/{needed}")).await;
    assert_eq!(
        (status, got),
        (StatusCode::OK, b"needed".to_vec()),
        "a queued job's input stays"
    );
    let job = admin.job(&ended).await;
    assert_eq!(
        job.state,
        drover_core::JobState::Succeeded,
        "the job itself stays"
    );
}

/// A job with an uploaded input (`in.txt`), submitted and leased to a new agent: the
/// admin's client, the agent's, the job, its lease and the uploaded file's id.
async fn leased_with_an_input(server: &TestServer) -> (Client, Client, Job, Lease, String) {
    let admin = Client::new(server, &server.admin_token);
    let (status, v) = send_bytes(&admin, "/v1/files?name=in.txt", b"input".to_vec()).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let file_id = v["id"].as_str().unwrap().to_string();
    let mut spec = shell("cat in.txt");
    spec["inputs"] = json!([{"path": "in.txt", "from": {"file": file_id}}]);
    let job = admin.submit(spec).await;
    let agent = register(server, "a", json!({})).await;
    let lease = poll(&agent, &[], 5_000).await.leases.remove(0);
    (admin, agent, job, lease, file_id)
}

/// Regression: any failure to look up an input's file answered 404 "input … was
/// deleted", which tells drover's agent that the attempt is gone (it kills the job),
/// even when it was the database that failed and a retry would have worked.
#[tokio::test]
async fn an_input_whose_lookup_fails_in_the_database_is_a_500_not_a_404() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(config(tmp.path().to_path_buf(), None)).await;
    let (_, agent, job, lease, _) = leased_with_an_input(&server).await;
    let input = format!("/v1/jobs/{}/attempts/{}/inputs/0", job.id, lease.attempt);
    let (status, _, got) = fetch(&agent, &input).await;
    assert_eq!((status, got), (StatusCode::OK, b"input".to_vec()));

    // The files table goes away under the server: looking the file up fails in the
    // database, while the job and its attempt are still there.
    sqlx::any::install_default_drivers();
    let db = format!("sqlite://{}", tmp.path().join("drover.db").display());
    let pool = sqlx::AnyPool::connect(&db).await.unwrap();
    sqlx::query("ALTER TABLE files RENAME TO files_gone")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (status, _, body) = fetch(&agent, &input).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, error_code(&v)),
        (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        "{v}"
    );
}

/// Regression: an object store that stopped answering made file uploads and downloads
/// fail with 500 `internal`, which says the server is broken rather than that the store
/// is away for now and the request may work later.
#[tokio::test]
async fn an_unreachable_object_store_answers_503_naming_it() {
    // An S3 endpoint that answers the server's start-up probe (and the first upload),
    // then goes away: every later request finds nothing listening.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app: axum::Router = axum::Router::new().fallback(s3_put_ok);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let s3 = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path().to_path_buf(), None);
    cfg.object_store = Some(drover_server::ObjectStoreConfig {
        url: "s3://gone/files".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
        access_key_id: Some("x".into()),
        secret_access_key: Some("y".into()),
        path_style: true,
    });
    let server = TestServer::start_with(cfg).await;
    let (admin, agent, job, lease, file_id) = leased_with_an_input(&server).await;
    let attempt = format!("/v1/jobs/{}/attempts/{}", job.id, lease.attempt);

    // The store goes away (a graceful stop closes the connections it kept, too).
    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(30), s3)
        .await
        .expect("the fake S3 endpoint stops")
        .unwrap();
    let artifact = format!("{attempt}/artifacts?path=out/c.txt");
    let mut answers = vec![
        send_bytes(&admin, "/v1/files?name=b.txt", b"b".to_vec()).await,
        send_bytes(&agent, &artifact, b"c".to_vec()).await,
    ];
    let downloads = [
        (&admin, format!("/v1/files/{file_id}")),
        (&agent, format!("{attempt}/inputs/0")),
    ];
    for (caller, path) in downloads {
        let (status, _, body) = fetch(caller, &path).await;
        answers.push((status, serde_json::from_slice(&body).unwrap()));
    }
    let want = "the object store s3://gone/files is unavailable; try again later";
    for (status, v) in answers {
        assert_eq!(
            (status, error_code(&v)),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            "{v}"
        );
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.ends_with(want), "{message}");
    }
}

/// What the fake S3 endpoint answers to any request: 200 with an ETag, as S3 answers a
/// PUT.
async fn s3_put_ok() -> impl axum::response::IntoResponse {
    ([(axum::http::header::ETAG, "\"e\"")], "")
}

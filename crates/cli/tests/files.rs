//! Files end to end with the real binary and a real agent (`drover up`): inputs from an
//! upload and from a URL served here, inputs that fail (404, wrong sha256) and are
//! retried, artifacts after success, failure and timeout, and a Docker job that reads
//! its input and writes an artifact, progress and a result.

mod common;
#[path = "../../agent/tests/common/docker.rs"]
#[allow(dead_code)]
mod docker;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use common::{json, stderr, stdout, Up};
use serde_json::Value;

/// What the shared Docker helpers wait at most.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Serves `GET /config.txt` with `body` and 404 for every other path, on a free port.
fn web_server(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let answer = if line.starts_with("GET /config.txt ") {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            };
            let _ = reader.get_mut().write_all(answer.as_bytes());
        }
    });
    port
}

/// The admin token `drover up` made.
fn admin_token(up: &Up) -> String {
    let text = std::fs::read_to_string(up.dir.join("data/tokens.toml")).unwrap();
    let tokens: toml::Table = toml::from_str(&text).unwrap();
    tokens["admin"].as_str().unwrap().to_string()
}

/// POSTs JSON to the server; the status and the answer.
fn post_json(up: &Up, path: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", up.port)).unwrap();
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        admin_token(up),
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer.split_whitespace().nth(1).unwrap().parse().unwrap();
    let json = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

/// Submits and returns the job id (printed on stdout).
fn wait(up: &Up, job: &str) -> i32 {
    up.drover(&["wait", job]).status.code().unwrap()
}

fn artifact_paths(up: &Up, job: &str) -> Vec<String> {
    let out = up.drover(&["artifacts", "ls", "-o", "json", job]);
    json(&out)["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_string())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn inputs_and_artifacts_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::start(tmp.path(), &tmp.path().join("ctx"), common::free_port());
    let web = web_server("from the web\n");
    std::fs::write(tmp.path().join("study.yaml"), "alpha: 1\n").unwrap();

    // An uploaded file under a path of its own and a URL, both in the workspace.
    let url = format!("http://127.0.0.1:{web}/config.txt=u.txt");
    let ok = up.submit(&[
        "--input",
        "study.yaml=conf/c.yaml",
        "--input-url",
        &url,
        "--artifact",
        "out/**",
        "--",
        "mkdir -p out/deep && cat conf/c.yaml u.txt > out/both.txt && echo x > out/deep/x.txt",
    ]);
    assert_eq!(wait(&up, &ok), 0, "{}", stdout(&up.drover(&["logs", &ok])));
    assert_eq!(artifact_paths(&up, &ok), ["out/both.txt", "out/deep/x.txt"]);
    let got = up.drover(&["artifacts", "get", &ok, "-O", "dl"]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(
        read(&tmp.path().join("dl/out/both.txt")),
        "alpha: 1\nfrom the web\n"
    );
    let one = up.drover(&["artifacts", "get", &ok, "out/deep/*", "-O", "one"]);
    assert!(one.status.success(), "{}", stderr(&one));
    assert!(tmp.path().join("one/out/deep/x.txt").exists());
    assert!(!tmp.path().join("one/out/both.txt").exists());

    // A URL that answers 404 fails the attempt before the command runs, naming the
    // input; the attempt is retried like any failed one.
    let missing = format!("http://127.0.0.1:{web}/missing.txt");
    let bad = up.submit(&[
        "--attempts",
        "2",
        "--backoff",
        "100ms",
        "--input-url",
        &missing,
        "--",
        "touch ran",
    ]);
    assert_eq!(wait(&up, &bad), 1);
    let job = up.status(&bad);
    assert_eq!(job["attempts_used"], 2, "{job}");
    let error = job["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("input missing.txt ({missing})")) && error.contains("404"),
        "{error}"
    );
    // drover's own lines (and the command's header) go to stderr.
    let log = stderr(&up.drover(&["logs", &bad]));
    assert!(log.contains("404"), "the failure is in the log: {log}");
    assert!(!log.contains("$ touch ran"), "the command never ran: {log}");

    // A wrong sha256 fails the same way.
    let spec = serde_json::json!({
        "exec": {"kind": "shell", "command": "cat c.txt"},
        "inputs": [{"path": "c.txt", "from": {"url": format!("http://127.0.0.1:{web}/config.txt")}, "sha256": "0".repeat(64)}],
        "max_attempts": 2,
        "backoff": {"base_ms": 100, "cap_ms": 100},
    });
    let (code, job) = post_json(&up, "/v1/jobs", &spec);
    assert_eq!(code, 201, "{job}");
    let id = job["id"].as_str().unwrap();
    assert_eq!(wait(&up, id), 1);
    let job = up.status(id);
    assert_eq!(job["attempts_used"], 2, "{job}");
    assert!(
        job["error"]
            .as_str()
            .unwrap()
            .contains("but the job expects 0000"),
        "{job}"
    );

    // Artifacts are kept whatever the outcome.
    let failed = up.submit(&[
        "--artifact",
        "out/*",
        "--",
        "mkdir out; echo f > out/f.txt; exit 3",
    ]);
    assert_eq!(wait(&up, &failed), 3);
    assert_eq!(artifact_paths(&up, &failed), ["out/f.txt"]);
    let slow = up.submit(&[
        "--timeout",
        "1s",
        "--artifact",
        "out/*",
        "--",
        "mkdir out; echo t > out/t.txt; sleep 30",
    ]);
    assert_eq!(wait(&up, &slow), 124);
    assert_eq!(artifact_paths(&up, &slow), ["out/t.txt"]);

    // Bad input from the command line: clear errors and fitting exit codes.
    let out = up.drover(&["submit", "--input", "nope.yaml", "--", "true"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nope.yaml"), "{}", stderr(&out));
    let out = up.drover(&["submit", "--artifact", "../x", "--", "true"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("artifacts[0]"), "{}", stderr(&out));
    let out = up.drover(&["artifacts", "get", &bad]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    up.stop();
}

#[test]
fn a_container_reads_its_input_and_hands_back_an_artifact_progress_and_a_result() {
    if !docker::docker_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let up = Up::start(tmp.path(), &tmp.path().join("ctx"), common::free_port());
    std::fs::write(tmp.path().join("in.txt"), "container input\n").unwrap();
    let job = up.submit(&[
            "--image",
            docker::IMAGE,
            "--pull",
            "never",
            "--input",
            "in.txt",
            "--artifact",
            "out/*",
            "--",
            "pwd; mkdir -p out && cat in.txt > out/copy.txt && echo '50 half way' >> $DROVER_PROGRESS && echo '{\"n\": 1}' > $DROVER_RESULT",
        ],
    );
    assert_eq!(
        wait(&up, &job),
        0,
        "{}",
        stdout(&up.drover(&["logs", &job]))
    );
    let log = stdout(&up.drover(&["logs", &job]));
    assert!(
        log.contains("/drover/workspace"),
        "the workspace is the working directory: {log}"
    );
    let done = up.status(&job);
    assert_eq!(done["result"], serde_json::json!({"n": 1}), "{done}");
    assert_eq!(done["progress"]["percent"], 50.0, "{done}");
    assert_eq!(done["progress"]["message"], "half way", "{done}");
    let got = up.drover(&["artifacts", "get", &job, "-O", "dl"]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(
        read(&tmp.path().join("dl/out/copy.txt")),
        "container input\n"
    );
    up.stop();
}

/// `drover server` on S3 (moto) with small artifact limits, and a real agent: the input
/// comes from the object store, artifacts over the limits are left out and named, and
/// the log, moved to the object store, reads back.
#[test]
fn a_server_on_s3_with_artifact_limits_end_to_end() {
    use common::{client, free_port, healthy, wait_until, Daemon, BIN};
    let Some(s3) = drover_server::testing_s3::S3Server::start().unwrap_or_else(|e| panic!("{e}"))
    else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = std::process::Command::new(BIN);
    server
        .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(dir.join("data"))
        .args(["--object-store", &format!("s3://{}/e2e", s3.bucket)])
        .args([
            "--object-store-endpoint",
            &s3.endpoint(),
            "--object-store-path-style",
        ])
        .args(["--artifact-max-files", "2", "--artifact-max-size", "1KiB"])
        .args(["--max-file-size", "1MiB"])
        .args(["--admin-token", "adm", "--join-token", "join"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("DROVER_CONFIG")
        .current_dir(dir);
    let _server = Daemon::spawn(server, dir, "server");
    wait_until("the server", Duration::from_secs(60), || healthy(port));
    let mut agent = std::process::Command::new(BIN);
    agent
        .args([
            "agent", "--name", "s3-agent", "--server", &url, "--token", "join",
        ])
        .arg("--work-dir")
        .arg(dir.join("agent"))
        .env_remove("DROVER_CONFIG")
        .current_dir(dir);
    let _agent = Daemon::spawn(agent, dir, "agent");
    let drover = |args: &[&str]| {
        client(&dir.join("ctx"), dir)
            .args(["--server", &url, "--token", "adm"])
            .args(args)
            .output()
            .unwrap()
    };
    std::fs::write(dir.join("cfg.txt"), "from s3\n").unwrap();
    let out = drover(&[
        "submit",
        "--wait",
        "--input",
        "cfg.txt",
        "--artifact",
        "out/*",
        "--",
        "mkdir out; cp cfg.txt out/a.txt; echo b > out/b.txt; echo c > out/c.txt; head -c 2000 /dev/zero > out/big.bin",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let job = json(&drover(&["ls", "-o", "json", "--limit", "1"]))["jobs"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = json(&drover(&["artifacts", "ls", "-o", "json", &job]));
    let names: Vec<&str> = listed["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["out/a.txt", "out/b.txt"]);
    let got = drover(&["artifacts", "get", &job, "out/a.txt", "-O", "dl"]);
    assert!(got.status.success(), "{}", stderr(&got));
    assert_eq!(read(&dir.join("dl/out/a.txt")), "from s3\n");
    wait_until("the log to move", Duration::from_secs(30), || {
        json(&drover(&["status", "-o", "json", &job]))["attempts"][0]["log"] == "object_store"
    });
    // drover's own lines go to stderr.
    let log = stderr(&drover(&["logs", &job]));
    assert!(log.contains("input cfg.txt (file "), "{log}");
    assert!(
        log.contains("left out 2 files over the limits of 2 files and 1024 bytes per attempt: out/big.bin, out/c.txt"),
        "{log}"
    );
    std::fs::write(dir.join("big.bin"), vec![7u8; 3 << 20]).unwrap();
    let out = drover(&["files", "put", "big.bin"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("file size limit"), "{}", stderr(&out));
}

//! A throwaway S3-compatible server for tests: `moto_server` (from PyPI's `moto`) on a
//! free loopback port, with one empty bucket. `scripts/test.sh` installs moto into
//! `target/test-venv` when it is missing and sets `DROVER_REQUIRE_S3=1`, so that CI can
//! never skip these tests quietly; a plain `cargo test` without moto skips them.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::ObjectStoreConfig;

/// A running `moto_server`; killed on drop.
pub struct S3Server {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The bucket made for the test.
    pub bucket: String,
}

/// Where `moto_server` is: `$DROVER_MOTO_SERVER`, else the test venv, else `PATH`.
fn moto_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DROVER_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let venv =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv/bin/moto_server");
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("moto_server"))
            .find(|p| p.exists())
    })
}

/// One HTTP/1.0 request on loopback; the status code.
fn request(port: u16, method: &str, path: &str) -> Option<u16> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req =
        format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.split_whitespace().nth(1)?.parse().ok()
}

impl S3Server {
    /// Starts moto with a fresh bucket. `Ok(None)` when moto is not installed and the
    /// environment does not demand it (`DROVER_REQUIRE_S3=1`, as `scripts/test.sh` sets).
    pub fn start() -> Result<Option<S3Server>, String> {
        let Some(bin) = moto_bin() else {
            if std::env::var_os("DROVER_REQUIRE_S3").is_some_and(|v| v == "1") {
                return Err("moto_server is not installed; scripts/test.sh installs it into target/test-venv".into());
            }
            eprintln!("skipping the S3 half of this test: moto_server is not installed (scripts/test.sh installs it)");
            return Ok(None);
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let server = S3Server {
            child,
            port,
            bucket: "drover-test".into(),
        };
        let start = Instant::now();
        while request(port, "GET", "/").is_none() {
            if start.elapsed() > Duration::from_secs(60) {
                return Err("moto_server did not answer within 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        match request(port, "PUT", &format!("/{}", server.bucket)) {
            Some(200) => Ok(Some(server)),
            other => Err(format!("cannot create the test bucket: {other:?}")),
        }
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Server settings for this store, under `prefix`.
    pub fn config(&self, prefix: &str) -> ObjectStoreConfig {
        ObjectStoreConfig {
            url: format!("s3://{}/{prefix}", self.bucket),
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some("testing".into()),
            secret_access_key: Some("testing".into()),
            path_style: true,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

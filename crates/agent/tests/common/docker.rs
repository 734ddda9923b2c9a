//! The Docker tests' image and helpers: a busybox root filesystem imported as
//! [`IMAGE`] (no registry needed), and `docker ps` checks.

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::DEADLINE;

pub const IMAGE: &str = "drover-test-busybox:latest";

/// True when the engine is there and the test image built; false when the tests are
/// skipped on purpose. Panics with a clear message otherwise.
pub fn docker_ready() -> bool {
    if std::env::var("DROVER_SKIP_DOCKER_TESTS").as_deref() == Ok("1") {
        eprintln!("DROVER_SKIP_DOCKER_TESTS=1: skipping a Docker test");
        return false;
    }
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = READY.get_or_init(prepare_image) {
        panic!("{e}\n(set DROVER_SKIP_DOCKER_TESTS=1 to skip the Docker tests)");
    }
    true
}

pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `docker {}`: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "`docker {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Imports a busybox root filesystem as [`IMAGE`] unless it is there already.
pub fn prepare_image() -> Result<(), String> {
    docker(&["version", "--format", "{{.Server.Version}}"])
        .map_err(|e| format!("the Docker engine is not reachable: {e}"))?;
    if docker(&["image", "inspect", IMAGE]).is_ok() {
        return Ok(());
    }
    let busybox = find_busybox().ok_or(
        "busybox is not installed: `apt-get install busybox-static` (scripts/test.sh does it)",
    )?;
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let bin = root.path().join("bin");
    for dir in ["bin", "tmp", "etc", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(root.path().join(dir)).map_err(|e| e.to_string())?;
    }
    std::fs::copy(&busybox, bin.join("busybox")).map_err(|e| e.to_string())?;
    let list = Command::new(&busybox)
        .arg("--list")
        .output()
        .map_err(|e| format!("busybox --list: {e}"))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !applet.is_empty() && applet != "busybox" {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).map_err(|e| e.to_string())?;
        }
    }
    std::fs::write(
        root.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
    )
    .map_err(|e| e.to_string())?;
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("tar: {e}"))?;
    let import = Command::new("docker")
        .args(["import", "-", IMAGE])
        .stdin(tar.stdout.take().expect("piped"))
        .output()
        .map_err(|e| format!("docker import: {e}"))?;
    let _ = tar.wait();
    if !import.status.success() {
        return Err(format!(
            "docker import failed: {}",
            String::from_utf8_lossy(&import.stderr)
        ));
    }
    Ok(())
}

pub fn find_busybox() -> Option<std::path::PathBuf> {
    let found = || {
        ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.is_file())
    };
    if let Some(p) = found() {
        return Some(p);
    }
    // A fresh machine: install it like scripts/test.sh would (only works as root).
    let _ = Command::new("apt-get")
        .args(["install", "-y", "-qq", "busybox-static"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    found()
}

/// Names of containers (running or not) whose name contains `part`.
pub fn containers(part: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("name={part}"),
        "--format",
        "{{.Names}}",
    ])
    .expect("docker ps")
    .lines()
    .map(str::to_string)
    .collect()
}

pub async fn wait_containers(part: &str, what: &str, pred: impl Fn(&[String]) -> bool) {
    let give_up = tokio::time::Instant::now() + DEADLINE;
    loop {
        let names = containers(part);
        if pred(&names) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "containers {part}: never {what}; seen {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An agent name no other test uses: agents remove containers labelled with their name.
pub fn unique_name(test: &str) -> String {
    format!("docker-{test}-{}", std::process::id())
}

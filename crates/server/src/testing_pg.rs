//! A throwaway PostgreSQL cluster for tests: `initdb` into a temp dir, `postgres` on a
//! free loopback port, a fresh database per caller, and a watchdog that stops the
//! cluster and removes its files when the test process exits.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A running cluster shared by every test of one test binary.
pub struct PgCluster {
    port: u16,
    next_db: AtomicU32,
}

static CLUSTER: OnceLock<Result<PgCluster, String>> = OnceLock::new();

fn bin_dir() -> Result<PathBuf, String> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").exists() {
                return Ok(dir);
            }
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| "PostgreSQL server binaries not found: install them (`apt-get install postgresql`) or run ./scripts/test.sh, which does".to_string())?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin: install postgresql".to_string())
}

fn is_root() -> bool {
    nix_free_euid() == 0
}

/// The effective uid, read from /proc to avoid unsafe libc calls.
fn nix_free_euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

/// Runs `program args` as the `postgres` user when we are root (PostgreSQL refuses root).
fn as_pg_user(program: &std::path::Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A fresh cluster's data directory in a new temp dir owned by the PostgreSQL user:
/// `(dir, data)`.
fn init_cluster() -> Result<(PathBuf, PathBuf), String> {
    let bin = bin_dir()?;
    let dir =
        std::env::temp_dir().join(format!("drover-pg-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    if is_root() {
        let out = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "chown of {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let data = dir.join("data");
    let out = as_pg_user(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "drover",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        ])
        .output()
        .map_err(|e| format!("cannot run initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((dir, data))
}

/// The server options of every throwaway cluster.
const PG_OPTIONS: &str = "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200";

fn start() -> Result<PgCluster, String> {
    let bin = bin_dir()?;
    let (dir, data) = init_cluster()?;
    let port = free_port();
    // The watchdog shell keeps postgres as its child and stops it once this test
    // process is gone, so a crashed test leaves no server behind.
    let script = format!(
        "{pg} -D {data} -p {port} -k {dir} {PG_OPTIONS} >{dir}/log 2>&1 & pid=$!; \
         while [ -d /proc/{parent} ] && kill -0 $pid 2>/dev/null; do sleep 0.5; done; kill -INT $pid 2>/dev/null; wait $pid; rm -rf {dir}",
        pg = bin.join("postgres").display(),
        data = data.display(),
        dir = dir.display(),
        parent = std::process::id(),
    );
    let mut sh = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    sh.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    sh.spawn()
        .map_err(|e| format!("cannot start postgres: {e}"))?;
    wait_ready(&bin, &dir, port)?;
    Ok(PgCluster {
        port,
        next_db: AtomicU32::new(0),
    })
}

fn wait_ready(bin: &std::path::Path, dir: &std::path::Path, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Command::new(bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "drover"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            break;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            return Err(format!(
                "postgres did not become ready in 30 s; its log:\n{log}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A cluster of one's own (not the shared one) that can be crashed and restarted, for
/// chaos runs; stopped and removed on drop.
pub struct OwnCluster {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
}

impl OwnCluster {
    /// Creates and starts a cluster on a free port (blocking).
    pub fn start() -> Result<OwnCluster, String> {
        let (dir, data) = init_cluster()?;
        let c = OwnCluster {
            bin: bin_dir()?,
            dir,
            data,
            port: free_port(),
        };
        c.pg_ctl_start()?;
        Ok(c)
    }

    /// A URL of the cluster's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://drover@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops PostgreSQL the way a crash would (`-m immediate`: no checkpoint, clients
    /// cut off) and starts it again; returns once it accepts connections.
    pub fn restart_immediately(&self) -> Result<(), String> {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"])?;
        self.pg_ctl_start()
    }

    fn pg_ctl_start(&self) -> Result<(), String> {
        // Commits are synchronous here (unlike the shared cluster): an immediate stop is a
        // crash, and an asynchronous commit would be lost in it.
        let opts = format!(
            "-p {} -k {} {}",
            self.port,
            self.dir.display(),
            PG_OPTIONS.replace("-c synchronous_commit=off ", "")
        );
        let log = self.dir.join("log");
        self.pg_ctl(&["start", "-w", "-o", &opts, "-l", &log.to_string_lossy()])?;
        wait_ready(&self.bin, &self.dir, self.port)
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), String> {
        let out = as_pg_user(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run pg_ctl: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "pg_ctl {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A URL of a new, empty database on the shared test cluster (started on first use).
/// Panics with the reason when PostgreSQL cannot be started.
pub async fn fresh_database() -> String {
    let cluster = tokio::task::spawn_blocking(|| {
        CLUSTER
            .get_or_init(start)
            .as_ref()
            .map(|c| (c.port, c.next_db.fetch_add(1, Ordering::SeqCst)))
            .map_err(Clone::clone)
    })
    .await
    .expect("pg start task");
    let (port, n) = cluster.unwrap_or_else(|e| panic!("cannot start a throwaway PostgreSQL: {e}"));
    let name = format!("drover_test_{n}");
    sqlx::any::install_default_drivers();
    let admin = format!("postgres://drover@127.0.0.1:{port}/postgres");
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
        .await
        .expect("connect to test cluster");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    format!("postgres://drover@127.0.0.1:{port}/{name}")
}

//! All SQL lives here: a store of verbs (`enqueue`, `claim`, `start`, `finish`, `renew`,
//! `reap`, `append_logs` …) over SQLite or PostgreSQL through sqlx's `Any` driver.
//!
//! Each verb that changes a job runs in one transaction and asks `drover_core::transition`
//! for the next state; no SQL here picks a state on its own. On SQLite all writes go
//! through one connection (SQLite has one writer anyway, and this makes every claim
//! serial); reads use a separate pool. On PostgreSQL claims lock candidate rows with
//! `FOR UPDATE SKIP LOCKED` so several servers can share one database.

mod agents;
mod audit;
mod deps;
mod files;
mod finish;
mod groups;
mod jobs;
mod leases;
mod logs;
mod migrate;
mod overview;
mod provisioned;
mod schedules;
mod seal;
mod sessions;
mod templates;
mod tokens;

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use drover_core::files::ArtifactLimits;

use crate::files::FileStore;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

pub use agents::{AgentAuth, NewAgent};
pub use audit::AuditEntry;
pub use files::NewFile;
pub use finish::FinishedMany;
pub use groups::parallelism_key;
pub use jobs::Canceled;
pub use leases::{AttemptWrite, PollOutcome, PROGRESS_KEPT, REQUEUE_MARGIN};
pub use logs::{LogPageRead, LogRead};
pub use overview::{QueueOverview, OVERVIEW_MINUTES};
pub use provisioned::{LiveStart, StartCounts};
pub use schedules::Ticked;
pub use seal::Sealer;
pub use tokens::{NewToken, TokenInfo};

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Errors of the store. `Conflict` and `NotFound` carry messages safe to show users.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Problems with jobs of a submit that only the store can see (a dependency that
    /// does not exist, a circle), by the job's index in the submit.
    #[error("invalid jobs: {0:?}")]
    Invalid(Vec<(usize, drover_core::spec::FieldError)>),
    /// The attempt is no longer the job's current one (fencing).
    #[error("attempt {attempt} of job {job_id} is no longer current; kill it")]
    StaleAttempt { job_id: String, attempt: u32 },
    /// The attempt already ended with a different report than this one.
    #[error("attempt {attempt} of job {job_id} already ended ({state}) with a different report; it cannot be finished twice")]
    AlreadyFinished {
        job_id: String,
        attempt: u32,
        state: String,
    },
    /// The attempt belongs to another agent.
    #[error("attempt {attempt} of job {job_id} belongs to another agent")]
    NotYourAttempt { job_id: String, attempt: u32 },
    /// The agent is not known any more (removed, or pruned): it must register again.
    #[error("agent {agent_id} is not known to the server; register again")]
    UnknownAgent { agent_id: String },
    /// The object store failed; the request may succeed later.
    #[error("object store: {0}")]
    Unavailable(String),
    /// Over a limit; the message names it.
    #[error("{0}")]
    TooLarge(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The database handle. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    /// Job, agent and token writes (one connection on SQLite).
    write: AnyPool,
    /// Reads.
    read: AnyPool,
    /// Log records: a separate SQLite file so a chatty job never blocks the queue's writer.
    logs_write: AnyPool,
    logs_read: AnyPool,
    /// Seals job secrets before they are written.
    sealer: Sealer,
    /// Put on every lease: what the server accepts as an attempt's artifacts.
    artifact_limits: ArtifactLimits,
    /// Most jobs of a queue leased or running at once.
    queue_limits: std::sync::Arc<std::collections::BTreeMap<String, u32>>,
    /// Where log chunks moved out of the database are (see `logs`).
    files: Option<FileStore>,
    /// On SQLite: this server's hold on the data directory.
    lock: Option<DirLock>,
}

/// An exclusive lock on `DATA/drover.db.lock`: one SQLite database takes one server
/// (two would each think their claims are serial). Released by [`Store::close`] or when
/// the process ends.
#[derive(Clone)]
struct DirLock(std::sync::Arc<std::sync::Mutex<Option<nix::fcntl::Flock<std::fs::File>>>>);

impl std::fmt::Debug for DirLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirLock")
    }
}

impl DirLock {
    fn take(data_dir: &Path) -> Result<DirLock> {
        let path = data_dir.join("drover.db.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StoreError::Conflict(format!("cannot open {}: {e}", path.display())))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| {
                StoreError::Conflict(format!(
                    "another drover server is using the SQLite database in {} ({e}); one SQLite database takes one server: stop the other, or use PostgreSQL (--database) for several servers",
                    data_dir.display()
                ))
            })?;
        Ok(DirLock(std::sync::Arc::new(std::sync::Mutex::new(Some(
            lock,
        )))))
    }

    fn release(&self) {
        if let Some(l) = self.0.lock().expect("lock mutex").take() {
            let _ = l.unlock();
        }
    }
}

impl Store {
    /// Opens (and migrates) the store: PostgreSQL when `database_url` is given, else
    /// SQLite files `drover.db` and `logs.db` in `data_dir`.
    pub async fn open(data_dir: &Path, database_url: Option<&str>) -> Result<Store> {
        Store::open_with_key(data_dir, database_url, None).await
    }

    /// [`Store::open`] with the key that seals job secrets in `key_file` (default
    /// `DATA/secrets.key`, created when missing). A database whose secrets another key
    /// sealed is refused: every server on one database needs the same key.
    pub async fn open_with_key(
        data_dir: &Path,
        database_url: Option<&str>,
        key_file: Option<&Path>,
    ) -> Result<Store> {
        sqlx::any::install_default_drivers();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .map_err(|e| {
                StoreError::Conflict(format!(
                    "cannot create data directory {}: {e}",
                    data_dir.display()
                ))
            })?;
        let key_path = key_file
            .map(Path::to_path_buf)
            .unwrap_or_else(|| data_dir.join("secrets.key"));
        let sealer = Sealer::load_or_create(&key_path)?;
        let store = match database_url {
            Some(url) => {
                if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
                    return Err(StoreError::Conflict(format!(
                        "unsupported database URL {url:?}: use postgres://user:password@host/db, or leave it out for SQLite"
                    )));
                }
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .connect(url)
                    .await?;
                Store {
                    backend: Backend::Postgres,
                    write: pool.clone(),
                    read: pool.clone(),
                    logs_write: pool.clone(),
                    logs_read: pool,
                    sealer,
                    artifact_limits: ArtifactLimits::default(),
                    queue_limits: Default::default(),
                    files: None,
                    lock: None,
                }
            }
            None => {
                let lock = DirLock::take(data_dir)?;
                let main = data_dir.join("drover.db");
                let logs = data_dir.join("logs.db");
                Store {
                    backend: Backend::Sqlite,
                    write: sqlite_pool(&main, 1).await?,
                    read: sqlite_pool(&main, 4).await?,
                    logs_write: sqlite_pool(&logs, 1).await?,
                    logs_read: sqlite_pool(&logs, 4).await?,
                    sealer,
                    artifact_limits: ArtifactLimits::default(),
                    queue_limits: Default::default(),
                    files: None,
                    lock: Some(lock),
                }
            }
        };
        migrate::run(&store).await?;
        store.check_key(&key_path).await?;
        Ok(store)
    }

    /// The database's value of fact `name`, which is `value` if none was recorded yet.
    async fn claim_meta(&self, name: &str, value: &str) -> Result<String> {
        sqlx::query(
            "INSERT INTO server_meta (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.write)
        .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM server_meta WHERE name = $1")
                .bind(name)
                .fetch_one(&self.write)
                .await?,
        )
    }

    /// Records the sealing key's fingerprint on first use, and refuses a different key.
    async fn check_key(&self, key_path: &Path) -> Result<()> {
        let mine = self.sealer.fingerprint();
        let theirs = self.claim_meta("secrets_key", mine).await?;
        if theirs != mine {
            return Err(StoreError::Conflict(format!(
                "this database's job secrets are sealed with key {theirs}, but this server's key ({}) is {mine}: every server on one database needs the same key; copy the first server's key file here or point --secrets-key-file at it",
                key_path.display()
            )));
        }
        Ok(())
    }

    /// Re-seals every job's secrets under `new` and records it as the database's key, in
    /// one transaction (all or nothing); returns how many jobs had secrets. Every server
    /// must be stopped: one still sealing with the old key would seal what others
    /// cannot open.
    pub async fn reseal_secrets(&self, new: &Sealer) -> Result<u64> {
        let mut tx = self.write.begin().await?;
        let rows =
            sqlx::query(r#"SELECT id, secrets FROM jobs WHERE secrets NOT LIKE '%"sealed":""%'"#)
                .fetch_all(&mut *tx)
                .await?;
        for row in &rows {
            let id: String = row.try_get("id")?;
            let open = self.sealer.open(&row.try_get::<String, _>("secrets")?)?;
            sqlx::query("UPDATE jobs SET secrets = $1 WHERE id = $2")
                .bind(new.seal(&open))
                .bind(&id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE server_meta SET value = $1 WHERE name = 'secrets_key'")
            .bind(new.fingerprint())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.len() as u64)
    }

    /// On PostgreSQL, where several servers may share the database: records which file
    /// store holds its files on first use, and refuses a server that would keep them
    /// elsewhere (a file uploaded through one server must be readable through all).
    pub async fn check_files(&self, files: &FileStore) -> Result<()> {
        if self.backend == Backend::Sqlite {
            return Ok(());
        }
        let mine = files.identity().map_err(StoreError::Conflict)?;
        let theirs = self.claim_meta("files", &mine).await?;
        if theirs != mine {
            return Err(StoreError::Conflict(format!(
                "this database's files are kept in {theirs}, but this server would keep them in {mine}: every server on one database needs the same --object-store (or, without one, the same data directory); to move the files for good, copy them over and then delete the row 'files' of the table server_meta"
            )));
        }
        Ok(())
    }

    /// The same store, reading (and, for an object store, moving) log chunks there.
    pub fn with_files(mut self, files: FileStore) -> Store {
        self.files = Some(files);
        self
    }

    /// The same store, leasing at most so many jobs of each of these queues at once.
    pub fn with_queue_limits(mut self, limits: std::collections::BTreeMap<String, u32>) -> Store {
        self.queue_limits = std::sync::Arc::new(limits);
        self
    }

    /// The same store, handing out leases with these artifact limits.
    pub fn with_artifact_limits(mut self, limits: ArtifactLimits) -> Store {
        self.artifact_limits = limits;
        self
    }

    /// The pool writes go through (on PostgreSQL, one pool serves everything).
    pub(crate) fn pool(&self) -> AnyPool {
        self.write.clone()
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// True when the database answers a trivial query.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.read).await.is_ok()
    }

    /// Closes every pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
        self.logs_write.close().await;
        self.logs_read.close().await;
        if let Some(l) = &self.lock {
            l.release();
        }
    }
}

async fn sqlite_pool(path: &Path, max: u32) -> Result<AnyPool> {
    // Created private before SQLite opens it; its -wal and -shm files take its mode.
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StoreError::Conflict(format!("cannot create {}: {e}", path.display())))?;
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let pool = AnyPoolOptions::new()
        .max_connections(max)
        .min_connections(1)
        // A connection to a local file does not go stale the way a network one does,
        // and the test sqlx makes before handing one out (a ping) is a round trip to
        // the connection's worker thread: one more per transaction and per statement.
        .test_before_acquire(false)
        .after_connect(|conn, _| {
            Box::pin(async move {
                use sqlx::Executor;
                // WAL with NORMAL sync: commits do not fsync (a power cut can lose the last
                // commits, never corrupt); fewer, larger checkpoints; reads through mmap
                // instead of a pread per page, and an 8 MiB page cache per connection
                // (there are 10), which bounds what the caches add to the server's RSS.
                conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 10000; PRAGMA mmap_size = 1073741824; PRAGMA cache_size = -8192;")
                    .await?;
                Ok(())
            })
        })
        .connect(&url)
        .await?;
    Ok(pool)
}

/// Milliseconds since the epoch, as every timestamp is stored.
pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_ms(v: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(v).single().unwrap_or_default()
}

pub(crate) fn opt_time(row: &AnyRow, col: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(row.try_get::<Option<i64>, _>(col)?.map(from_ms))
}

pub(crate) fn json_col<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
}

pub(crate) fn parse_col<T: FromStr>(row: &AnyRow, col: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    let text: String = row.try_get(col)?;
    text.parse()
        .map_err(|e: T::Err| StoreError::Corrupt(format!("{col}: {e}")))
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

/// Rows (or ids of an `IN` list) per statement of a set-wise write: 500 rows of 32
/// parameters stay below SQLite's 32766 and PostgreSQL's 65535 parameters.
pub(crate) const CHUNK: usize = 500;

/// The states of an ended job, as an SQL list.
pub(crate) const ENDED_SQL: &str = "('succeeded', 'failed', 'canceled', 'timed_out')";

/// `$k` placeholders for `n` parameters following `offset` earlier ones.
pub(crate) fn placeholders(offset: usize, n: usize) -> String {
    (1..=n)
        .map(|i| format!("${}", offset + i))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// `(…), (…)` placeholders for a multi-row INSERT of `rows` rows of `cols` columns
    /// that has no other parameters: `$k` on PostgreSQL, plain `?` on SQLite, where
    /// binding a named (`$k`) parameter walks the list of all names, which made large
    /// multi-row statements quadratic.
    pub(crate) fn values(&self, rows: usize, cols: usize) -> String {
        self.values_after(0, rows, cols)
    }

    /// [`Store::values`] for rows that follow `offset` other parameters.
    pub(crate) fn values_after(&self, offset: usize, rows: usize, cols: usize) -> String {
        (0..rows)
            .map(|r| format!("({})", self.params(offset + r * cols, cols)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The `i`-th (1-based) parameter of a statement: `$i` on PostgreSQL, `?` on SQLite
    /// (see [`Store::values`]; parameters must then be bound in the order they appear).
    pub(crate) fn param(&self, i: usize) -> String {
        match self.backend {
            Backend::Postgres => format!("${i}"),
            Backend::Sqlite => "?".to_string(),
        }
    }

    /// `n` parameters following `offset` earlier ones, comma-separated.
    pub(crate) fn params(&self, offset: usize, n: usize) -> String {
        (1..=n)
            .map(|i| self.param(offset + i))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use drover_core::JobState;

    #[test]
    fn the_sql_list_of_ended_states_is_the_terminal_states() {
        let names: Vec<String> = JobState::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        assert_eq!(super::ENDED_SQL, format!("({})", names.join(", ")));
    }
}

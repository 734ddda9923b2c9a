//! Server lifecycle: open the store, bind, serve, run the reaper, shut down in order.

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::Utc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, auth::hash_token};
use crate::files::FileStore;
use crate::housekeeping;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::state::AppState;
use crate::store::{Store, StoreError};
use crate::ServerConfig;

/// A bound, migrated server, ready to serve.
pub struct Server {
    state: AppState,
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot open the file store: {0}")]
    Files(String),
    #[error("server stopped: {0}")]
    Serve(std::io::Error),
    #[error("cannot load the TLS certificate {cert} / key {key}: {source}")]
    Tls {
        cert: String,
        key: String,
        source: std::io::Error,
    },
}

/// Re-seals the secrets of every job in `config`'s database, sealed with `config`'s key,
/// under the key in `new_key` (created when missing), and makes it the database's key;
/// returns how many jobs had secrets, and the new key's fingerprint. Every server on the
/// database must be stopped first, and started again with the new key.
pub async fn rotate_secrets_key(
    config: &ServerConfig,
    new_key: &std::path::Path,
) -> Result<(u64, String), ServerError> {
    let store = Store::open_with_key(
        &config.data_dir,
        config.database_url.as_deref(),
        config.secrets_key_file.as_deref(),
    )
    .await?;
    let new = crate::store::Sealer::load_or_create(new_key)?;
    let n = store.reseal_secrets(&new).await?;
    Ok((n, new.fingerprint().to_string()))
}

impl Server {
    /// Opens the store, runs migrations, makes sure bootstrap tokens exist, binds the listener.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> {
        let tls = match &config.tls {
            None => None,
            Some(files) => {
                // One process-wide crypto provider; a second install is harmless.
                let _ = rustls::crypto::ring::default_provider().install_default();
                let loaded =
                    axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key)
                        .await;
                Some(loaded.map_err(|source| ServerError::Tls {
                    cert: files.cert.display().to_string(),
                    key: files.key.display().to_string(),
                    source,
                })?)
            }
        };
        let files = FileStore::open(&config).await.map_err(ServerError::Files)?;
        let store = Store::open_with_key(
            &config.data_dir,
            config.database_url.as_deref(),
            config.secrets_key_file.as_deref(),
        )
        .await?
        .with_artifact_limits(config.artifact_limits)
        .with_queue_limits(config.queue_limits.clone())
        .with_files(files.clone());
        store.check_files(&files).await?;
        let now = Utc::now();
        for t in &config.bootstrap_tokens {
            store
                .ensure_token(&t.name, t.scope.as_str(), &hash_token(&t.secret), now)
                .await?;
        }
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
        let shutdown = CancellationToken::new();
        // Several servers on PostgreSQL: wake-ups cross them, one of them leads.
        let (hub, leader) = match &config.database_url {
            Some(url) => {
                let (hub, wakes) = Hub::published();
                crate::cluster::bridge(url.clone(), store.pool(), &hub, wakes, shutdown.clone());
                (hub, crate::cluster::lead(url.clone(), shutdown.clone()))
            }
            None => (Hub::default(), crate::cluster::Leader::always()),
        };
        let state = AppState {
            store,
            files,
            leader,
            providers: crate::provision::Board::new(&config.providers),
            local_addr: addr,
            config: Arc::new(config),
            hub,
            metrics: Metrics::default(),
            shutdown,
        };
        Ok(Server {
            state,
            listener,
            addr,
            tls,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` fires, then tells long-polls to reconnect, waits for
    /// in-flight requests and the reaper, and closes the database.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let state = self.state;
        let tasks = TaskTracker::new();
        tasks.spawn(reaper(state.clone()));
        tasks.spawn(housekeeping::log_mover(state.clone()));
        tasks.spawn(housekeeping::retention(state.clone()));
        tasks.spawn(housekeeping::agent_pruner(state.clone()));
        tasks.spawn(crate::provision::run(state.clone()));
        tasks.spawn(crate::schedules::run(state.clone()));
        let inner = state.shutdown.clone();
        let watcher = {
            let inner = inner.clone();
            async move {
                shutdown.cancelled().await;
                tracing::info!("shutting down: telling long-polls to reconnect");
                inner.cancel();
            }
        };
        tasks.spawn(watcher);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        tracing::info!(url = %format!("{scheme}://{}", self.addr), "drover server listening");
        let app = api::router(state.clone());
        let handle = axum_server::Handle::new();
        let stopper = handle.clone();
        tasks.spawn(async move {
            inner.cancelled().await;
            stopper.graceful_shutdown(Some(std::time::Duration::from_secs(30)));
        });
        let read_timeout = state.config.read_timeout;
        let result = match self.listener.into_std() {
            Ok(std_listener) => match self.tls {
                None => {
                    let mut server = axum_server::from_tcp(std_listener).handle(handle);
                    header_timeout(server.http_builder(), read_timeout);
                    server.serve(app.into_make_service()).await
                }
                Some(tls) => {
                    let mut server = axum_server::from_tcp_rustls(std_listener, tls).handle(handle);
                    header_timeout(server.http_builder(), read_timeout);
                    server.serve(app.into_make_service()).await
                }
            },
            Err(e) => Err(e),
        };
        state.shutdown.cancel();
        tasks.close();
        tasks.wait().await;
        state.store.close().await;
        result.map_err(ServerError::Serve)
    }
}

/// Closes HTTP/1 connections that do not send a request's headers within `limit`
/// (slow clients, or sockets opened and left alone).
fn header_timeout(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    limit: std::time::Duration,
) {
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limit);
}

/// Expires leases that were not renewed, a few times per TTL.
async fn reaper(state: AppState) {
    let every = (state.config.lease_ttl / 4).max(std::time::Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = state.shutdown.cancelled() => return,
        }
        if !state.leader.is_leader() {
            continue;
        }
        match state.store.reap(Utc::now()).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(expired = n, "expired leases of agents that stopped polling");
                state.hub.work_available();
            }
            Err(e) => tracing::error!(error = %e, "lease reaper failed; will try again"),
        }
    }
}

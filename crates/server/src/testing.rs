//! An in-process server on a random loopback port, for the tests of every crate.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::{BootstrapToken, Scope, Server, ServerConfig};

/// Admin token every `TestServer` accepts.
pub const ADMIN_TOKEN: &str = "drover_test_admin";
/// Join token every `TestServer` accepts.
pub const JOIN_TOKEN: &str = "drover_test_join";

/// A running server; stop it with [`TestServer::stop`] (dropping it also stops it).
pub struct TestServer {
    pub url: String,
    pub admin_token: String,
    pub join_token: String,
    pub data_dir: PathBuf,
    pub port: u16,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A fresh SQLite-backed server in a new temp dir.
    pub async fn start() -> TestServer {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut s = Self::start_with(Self::config(tmp.path().to_path_buf(), 0)).await;
        s._tmp = Some(tmp);
        s
    }

    /// The config `start` uses: loopback, given port (0 = any), test tokens, 3 s lease TTL.
    pub fn config(data_dir: PathBuf, port: u16) -> ServerConfig {
        let mut config = ServerConfig::new(data_dir);
        config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        config.lease_ttl = std::time::Duration::from_secs(3);
        config.bootstrap_tokens = vec![
            BootstrapToken {
                name: "test-admin".into(),
                scope: Scope::Admin,
                secret: ADMIN_TOKEN.into(),
            },
            BootstrapToken {
                name: "test-join".into(),
                scope: Scope::Join,
                secret: JOIN_TOKEN.into(),
            },
        ];
        config
    }

    /// The config of one of several servers on the PostgreSQL database `database_url`,
    /// all sharing the data directory `dir` (the secrets key and the files in it).
    pub fn config_shared(dir: &std::path::Path, database_url: &str) -> ServerConfig {
        let mut config = Self::config(dir.to_path_buf(), 0);
        config.database_url = Some(database_url.to_string());
        config
    }

    /// Starts a server with `config` (e.g. the same data dir and port again after `stop`).
    pub async fn start_with(config: ServerConfig) -> TestServer {
        let data_dir = config.data_dir.clone();
        let server = Server::bind(config).await.expect("server starts");
        let addr = server.local_addr();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let handle = tokio::spawn(async move {
            server.serve(token).await.expect("server runs");
        });
        TestServer {
            url: format!("http://{addr}"),
            admin_token: ADMIN_TOKEN.into(),
            join_token: JOIN_TOKEN.into(),
            data_dir,
            port: addr.port(),
            shutdown,
            handle: Some(handle),
            _tmp: None,
        }
    }

    /// Stops the server and waits until it has (the temp dir, if any, is kept until drop).
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

//! Placeholder while the server is written.
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;
use crate::ServerConfig;

/// A bound, migrated server, ready to serve.
pub struct Server { _config: ServerConfig, addr: SocketAddr }

#[derive(Debug, thiserror::Error)]
pub enum ServerError { #[error("{0}")] Other(String) }

impl Server {
    /// Opens the store, runs migrations, makes sure bootstrap tokens exist, binds the listener.
    pub async fn bind(config: ServerConfig) -> Result<Server, ServerError> { Ok(Server { addr: config.listen, _config: config }) }
    pub fn local_addr(&self) -> SocketAddr { self.addr }
    /// Serves until `shutdown` fires, then tells long-polls to reconnect and stops the background tasks.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), ServerError> { shutdown.cancelled().await; Ok(()) }
}

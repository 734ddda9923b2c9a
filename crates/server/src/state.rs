//! `AppState`: what every handler and background task shares.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::files::FileStore;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::ServerConfig;

/// Passed to handlers; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Where the bytes of files, artifacts and moved logs are kept.
    pub files: FileStore,
    pub config: Arc<ServerConfig>,
    pub hub: Hub,
    pub metrics: Metrics,
    /// Fires when the server begins to shut down; long-polls and log streams end on it.
    pub shutdown: CancellationToken,
    /// Whether this server does the singleton duties (reaper, provisioner, retention).
    pub leader: crate::cluster::Leader,
    /// Each provider's state, as the provisioner last saw it.
    pub providers: crate::provision::Board,
    /// The address the server listens at (the port chosen when the config said 0).
    pub local_addr: std::net::SocketAddr,
}

//! The agent's identity (its id and session token) kept in `identity.json` in its work
//! dir, mode 0600, so that a restarted agent is the same agent: the server then learns
//! from its first poll which attempts it no longer runs and retries them at once,
//! instead of after the lease TTL.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use drover_core::api::{AgentIdentity, RegisterResponse};
use serde::{Deserialize, Serialize};

/// What the file holds: the identity, and the server it is valid for.
#[derive(Serialize, Deserialize)]
struct Stored {
    server: String,
    agent_id: String,
    token: String,
}

fn path(work_dir: &Path) -> PathBuf {
    work_dir.join("identity.json")
}

/// The identity kept for `server`, if any (one for another server is ignored).
pub async fn load(work_dir: &Path, server: &str) -> Option<AgentIdentity> {
    let bytes = tokio::fs::read(path(work_dir)).await.ok()?;
    let stored: Stored = serde_json::from_slice(&bytes).ok()?;
    (stored.server == server).then_some(AgentIdentity {
        agent_id: stored.agent_id,
        token: stored.token,
    })
}

/// Keeps the identity the server gave; a failure is logged (the agent then registers
/// anew when it restarts, and its old attempts are retried after the lease TTL).
pub async fn save(work_dir: &Path, server: &str, registered: &RegisterResponse) {
    let stored = Stored {
        server: server.to_string(),
        agent_id: registered.agent_id.clone(),
        token: registered.token.clone(),
    };
    let file = path(work_dir);
    let write = tokio::task::spawn_blocking(move || write_private(&file, &stored)).await;
    match write {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot keep the agent's identity in its work dir")
        }
        Err(e) => tracing::warn!(error = %e, "cannot keep the agent's identity in its work dir"),
    }
}

fn write_private(file: &Path, stored: &Stored) -> std::io::Result<()> {
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec(stored).expect("plain data serializes"))?;
    f.sync_all()?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn identities_are_private_and_per_server() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), "http://a").await.is_none());
        let r = RegisterResponse {
            agent_id: "a-1".into(),
            token: "dra_x".into(),
            lease_ttl_ms: 1000,
            name: "a".into(),
        };
        save(dir.path(), "http://a", &r).await;
        let got = load(dir.path(), "http://a").await.unwrap();
        assert_eq!(
            (got.agent_id.as_str(), got.token.as_str()),
            ("a-1", "dra_x")
        );
        assert!(load(dir.path(), "http://b").await.is_none());
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

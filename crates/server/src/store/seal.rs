//! Job secrets at rest: sealed with ChaCha20-Poly1305 under a key kept in the data
//! directory (`secrets.key`, mode 0600), so the database itself (a PostgreSQL backup,
//! a copied `drover.db`) never holds a secret value in clear.

use std::collections::BTreeMap;
use std::path::Path;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Seals and opens secret maps.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
    /// Names the key without revealing it (the first 8 bytes of its SHA-256, in hex).
    fingerprint: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

/// What the `secrets` column holds: the names in clear (the read API shows them), the
/// values sealed.
#[derive(Serialize, Deserialize)]
pub(crate) struct SealedSecrets {
    pub names: Vec<String>,
    /// Hex of nonce (12 bytes) followed by the ciphertext; empty when there are none.
    pub sealed: String,
}

impl Sealer {
    /// Loads the key file, creating it with a fresh random key when missing.
    pub fn load_or_create(path: &Path) -> Result<Sealer, StoreError> {
        let key = match std::fs::read(path) {
            Ok(bytes) => {
                let hex_text = String::from_utf8_lossy(&bytes);
                let key = hex::decode(hex_text.trim()).ok().filter(|k| k.len() == 32).ok_or_else(|| {
                    StoreError::Conflict(format!("{} is not a 64-hex-digit key; restore it from a backup or remove it (secrets of queued jobs are then lost)", path.display()))
                })?;
                key
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ChaCha20Poly1305::generate_key(&mut OsRng).to_vec();
                write_private(path, hex::encode(&key).as_bytes()).map_err(|e| {
                    StoreError::Conflict(format!("cannot write {}: {e}", path.display()))
                })?;
                key
            }
            Err(e) => {
                return Err(StoreError::Conflict(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        use sha2::Digest;
        Ok(Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            fingerprint: hex::encode(&sha2::Sha256::digest(&key)[..8]),
        })
    }

    /// The key's fingerprint, which the database keeps so that every server sealing
    /// into it uses the same key.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub(crate) fn seal(&self, secrets: &BTreeMap<String, String>) -> String {
        let names = secrets.keys().cloned().collect();
        let sealed = if secrets.is_empty() {
            String::new()
        } else {
            let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
            let plain = serde_json::to_vec(secrets).expect("a string map serializes");
            let mut out = nonce.to_vec();
            out.extend(
                self.cipher
                    .encrypt(&nonce, plain.as_slice())
                    .expect("encryption of a small buffer"),
            );
            hex::encode(out)
        };
        super::to_json(&SealedSecrets { names, sealed })
    }

    pub(crate) fn open(&self, column: &str) -> Result<BTreeMap<String, String>, StoreError> {
        let s: SealedSecrets = serde_json::from_str(column)
            .map_err(|e| StoreError::Corrupt(format!("secrets: {e}")))?;
        if s.sealed.is_empty() {
            return Ok(BTreeMap::new());
        }
        let bytes =
            hex::decode(&s.sealed).map_err(|e| StoreError::Corrupt(format!("secrets: {e}")))?;
        if bytes.len() < 12 {
            return Err(StoreError::Corrupt("secrets: too short".into()));
        }
        let (nonce, data) = bytes.split_at(12);
        let plain = self.cipher.decrypt(Nonce::from_slice(nonce), data).map_err(|_| {
            StoreError::Corrupt("secrets cannot be opened with this server's secrets.key (was the key replaced?)".into())
        })?;
        serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt(format!("secrets: {e}")))
    }
}

/// Writes a file only its owner can read.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_round_trip_and_hide_values() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Sealer::load_or_create(&dir.path().join("k")).unwrap();
        let mut m = BTreeMap::new();
        m.insert("TOKEN".to_string(), "hunter2-value".to_string());
        let col = sealer.seal(&m);
        assert!(!col.contains("hunter2"));
        assert!(col.contains("TOKEN"));
        assert_eq!(sealer.open(&col).unwrap(), m);
        let again = Sealer::load_or_create(&dir.path().join("k")).unwrap();
        assert_eq!(again.open(&col).unwrap(), m, "the key file is reused");
        let other = Sealer::load_or_create(&dir.path().join("other")).unwrap();
        assert!(other.open(&col).is_err());
    }
}

//! The file store: the bytes of uploads, artifacts and moved logs. By default a folder
//! in the data directory; with `--object-store s3://…`, any S3-compatible store. Both go
//! through the `object_store` crate, so one code path streams either way: bytes pass
//! through in chunks and no file is ever held in memory whole.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as Key;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, PutPayload, RetryConfig, WriteMultipart};
use sha2::{Digest, Sha256};

use crate::ServerConfig;

/// Bytes per part of a multipart upload (S3 wants at least 5 MiB); a file smaller than
/// this is stored with one request.
const CHUNK: usize = 8 * 1024 * 1024;
/// Bytes per read when streaming a local file.
const READ_CHUNK: usize = 1024 * 1024;
/// Parts uploading at once; with [`CHUNK`] this bounds what one upload buffers.
const PARTS_IN_FLIGHT: usize = 2;

/// Where bytes are kept. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FileStore {
    inner: Arc<dyn ObjectStore>,
    /// `s3://bucket/prefix`, or the local folder, for messages.
    location: String,
    /// True for an object store (logs of finished attempts move there).
    remote: bool,
    /// The data directory, for the embedded store: files are read from it directly in
    /// large reads (`object_store` reads local files 8 KiB per blocking call, which
    /// made downloads five times slower than `cp`).
    local_root: Option<std::path::PathBuf>,
}

/// How a stored file turned out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    pub sha256: String,
}

/// Why a write did not store the file; nothing is left behind in any case.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    #[error("the file is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the file's sha256 is {got}, not the {expected} the upload announced")]
    Sha256 { expected: String, got: String },
    #[error("the upload broke off: {0}")]
    Body(String),
    #[error("the file store failed: {0}")]
    Store(String),
}

/// The key of a stored file.
pub fn file_key(id: &str) -> Key {
    Key::from(format!("files/{id}"))
}

impl FileStore {
    /// The store `config` asks for; an object store is tried with a small write and
    /// delete, so a wrong bucket or credentials stop the server at start, not at the
    /// first upload.
    pub async fn open(config: &ServerConfig) -> Result<FileStore, String> {
        let Some(os) = &config.object_store else {
            let dir = config.data_dir.join("files");
            // Private like the database: the files are the users' data.
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let local = LocalFileSystem::new_with_prefix(&config.data_dir)
                .map_err(|e| format!("cannot use {}: {e}", config.data_dir.display()))?;
            return Ok(FileStore {
                inner: Arc::new(local),
                location: dir.display().to_string(),
                remote: false,
                local_root: Some(config.data_dir.clone()),
            });
        };
        let rest = os.url.strip_prefix("s3://").ok_or_else(|| {
            format!(
                "object store {:?} is not an s3:// URL (s3://bucket or s3://bucket/prefix)",
                os.url
            )
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("object store {:?} names no bucket", os.url));
        }
        // A few quick retries: a store that does not answer fails the request (and the
        // start-up probe) within seconds instead of minutes.
        let retry = RetryConfig {
            max_retries: 3,
            retry_timeout: std::time::Duration::from_secs(30),
            ..Default::default()
        };
        let mut b = AmazonS3Builder::from_env()
            .with_retry(retry)
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(!os.path_style);
        if let Some(e) = &os.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        if let Some(r) = &os.region {
            b = b.with_region(r);
        }
        if let Some(k) = &os.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &os.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        let s3 = b
            .build()
            .map_err(|e| format!("cannot configure object store {}: {e}", os.url))?;
        let inner: Arc<dyn ObjectStore> = match prefix.trim_matches('/') {
            "" => Arc::new(s3),
            p => Arc::new(PrefixStore::new(s3, p)),
        };
        let store = FileStore {
            inner,
            location: os.url.clone(),
            remote: true,
            local_root: None,
        };
        let probe = Key::from(format!("probe/{}", uuid::Uuid::new_v4()));
        store
            .inner
            .put(&probe, PutPayload::from_static(b"drover"))
            .await
            .map_err(|e| format!("cannot write to object store {}: {e}", os.url))?;
        let _ = store.inner.delete(&probe).await;
        Ok(store)
    }

    /// Where the bytes go, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// What names this store among all stores, so that servers sharing a database can
    /// check they share it too: an object store's URL, or for a local folder the id in
    /// its `.store-id` (written on first use; another machine's folder has another).
    pub fn identity(&self) -> Result<String, String> {
        let Some(root) = &self.local_root else {
            return Ok(self.location.clone());
        };
        let marker = root.join("files").join(".store-id");
        match std::fs::read_to_string(&marker) {
            Ok(id) => Ok(format!("local folder {} ({})", self.location, id.trim())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                std::fs::write(&marker, &id)
                    .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
                Ok(format!("local folder {} ({id})", self.location))
            }
            Err(e) => Err(format!("cannot read {}: {e}", marker.display())),
        }
    }

    /// True for an object store: logs of finished attempts are moved there.
    pub fn is_remote(&self) -> bool {
        self.remote
    }

    /// Streams `body` into `key`, refusing more than `limit` bytes and, with `expected`,
    /// content whose sha256 differs. The key holds the file only if this returns `Ok`.
    pub async fn put<S, E>(
        &self,
        key: &Key,
        mut body: S,
        limit: u64,
        expected: Option<&str>,
    ) -> Result<Stored, PutError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin + Send,
        E: std::fmt::Display,
    {
        let mut hash = Sha256::new();
        let mut size = 0u64;
        let mut first = BytesMut::new();
        let mut writer: Option<WriteMultipart> = None;
        let result = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| PutError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(PutError::TooLarge { limit });
                }
                hash.update(&chunk);
                match &mut writer {
                    Some(w) => {
                        w.wait_for_capacity(PARTS_IN_FLIGHT)
                            .await
                            .map_err(|e| PutError::Store(e.to_string()))?;
                        w.put(chunk);
                    }
                    None => {
                        first.extend_from_slice(&chunk);
                        if first.len() >= CHUNK {
                            let upload = self
                                .inner
                                .put_multipart(key)
                                .await
                                .map_err(|e| PutError::Store(e.to_string()))?;
                            let mut w = WriteMultipart::new_with_chunk_size(upload, CHUNK);
                            w.put(std::mem::take(&mut first).freeze());
                            writer = Some(w);
                        }
                    }
                }
            }
            let got = hex::encode(hash.finalize_reset());
            if let Some(expected) = expected {
                if !got.eq_ignore_ascii_case(expected) {
                    return Err(PutError::Sha256 {
                        expected: expected.to_string(),
                        got,
                    });
                }
            }
            Ok(got)
        }
        .await;
        match (result, writer) {
            (Ok(sha256), Some(w)) => {
                w.finish()
                    .await
                    .map_err(|e| PutError::Store(e.to_string()))?;
                Ok(Stored { size, sha256 })
            }
            (Ok(sha256), None) => {
                self.inner
                    .put(key, PutPayload::from(first.freeze()))
                    .await
                    .map_err(|e| PutError::Store(e.to_string()))?;
                Ok(Stored { size, sha256 })
            }
            (Err(e), Some(w)) => {
                let _ = w.abort().await;
                Err(e)
            }
            (Err(e), None) => Err(e),
        }
    }

    /// Stores `bytes` whole (for small things such as a moved log).
    pub async fn put_bytes(&self, key: &Key, bytes: Bytes) -> Result<(), String> {
        self.inner
            .put(key, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The size and a stream of the bytes at `key`.
    pub async fn get(
        &self,
        key: &Key,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, object_store::Error>>), object_store::Error>
    {
        if let Some(root) = &self.local_root {
            let path = root.join(key.as_ref());
            let io = |source: std::io::Error| match source.kind() {
                std::io::ErrorKind::NotFound => object_store::Error::NotFound {
                    path: key.to_string(),
                    source: source.into(),
                },
                _ => object_store::Error::Generic {
                    store: "local",
                    source: source.into(),
                },
            };
            let file = tokio::fs::File::open(&path).await.map_err(io)?;
            let size = file.metadata().await.map_err(io)?.len();
            let stream = tokio_util::io::ReaderStream::with_capacity(file, READ_CHUNK).map(|r| {
                r.map_err(|source| object_store::Error::Generic {
                    store: "local",
                    source: source.into(),
                })
            });
            return Ok((size, stream.boxed()));
        }
        let got = self.inner.get(key).await?;
        let size = got.meta.size;
        Ok((size, got.into_stream()))
    }

    /// Deletes `key`; a key that is already gone is fine.
    pub async fn delete(&self, key: &Key) -> Result<(), String> {
        match self.inner.delete(key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn local() -> (tempfile::TempDir, FileStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(&ServerConfig::new(dir.path()))
            .await
            .unwrap();
        (dir, store)
    }

    fn chunks(data: &[u8], size: usize) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        let parts: Vec<Result<Bytes, String>> = data
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(parts)
    }

    async fn read_all(store: &FileStore, key: &Key) -> Vec<u8> {
        let (size, mut s) = store.get(key).await.unwrap();
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        assert_eq!(size, out.len() as u64);
        out
    }

    #[tokio::test]
    async fn small_and_multipart_files_read_back_identical() {
        let (_dir, store) = local().await;
        for len in [0, 10, CHUNK - 1, 2 * CHUNK + 123] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let key = file_key(&format!("f{len}"));
            let stored = store
                .put(&key, chunks(&data, 64 * 1024 + 3), u64::MAX, None)
                .await
                .unwrap();
            assert_eq!(stored.size, len as u64);
            assert_eq!(stored.sha256, hex::encode(Sha256::digest(&data)));
            assert_eq!(read_all(&store, &key).await, data);
        }
    }

    #[tokio::test]
    async fn too_large_and_wrong_sha256_leave_nothing_behind() {
        let (dir, store) = local().await;
        let data = vec![1u8; CHUNK + 10];
        let key = file_key("big");
        let e = store
            .put(&key, chunks(&data, 4096), CHUNK as u64, None)
            .await
            .unwrap_err();
        assert!(matches!(e, PutError::TooLarge { .. }), "{e}");
        let e = store
            .put(&key, chunks(b"hello", 2), 100, Some(&"0".repeat(64)))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("sha256"), "{e}");
        assert!(store.get(&key).await.is_err());
        let left: Vec<_> = std::fs::read_dir(dir.path().join("files"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

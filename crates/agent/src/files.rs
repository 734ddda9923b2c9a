//! Files in and out of a job: inputs put into the workspace before the command starts
//! (uploads through the server, URLs straight from where they are, inline text), and
//! artifacts uploaded after it ends. Bytes stream through in chunks both ways, with
//! sizes and sha256 checked; nothing is held in memory whole.

use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_core::api::Lease;
use drover_core::files::{artifact_matcher, Input, InputSource, META_DIR};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::client::{error_chain, CallError, Client, RetryBackoff};

/// Limits on URL inputs.
#[derive(Debug, Clone, Copy)]
pub struct InputLimits {
    /// Longest one download may take, connecting included.
    pub timeout: Duration,
    /// Largest input accepted.
    pub max_bytes: u64,
}

/// Tries per artifact when the server cannot be reached.
const UPLOAD_TRIES: u32 = 5;

/// Puts every input of `lease` into `workspace`, one after another. Returns a log line
/// per input, or the first failure, naming its input.
pub async fn fetch_inputs(
    client: &Client,
    lease: &Lease,
    workspace: &Path,
    limits: InputLimits,
) -> Result<Vec<String>, String> {
    let web = reqwest::Client::builder()
        .connect_timeout(limits.timeout.min(Duration::from_secs(30)))
        .timeout(limits.timeout)
        .build()
        .map_err(|e| format!("cannot make an HTTP client for inputs: {e}"))?;
    let mut lines = Vec::with_capacity(lease.inputs.len());
    for (index, input) in lease.inputs.iter().enumerate() {
        let started = std::time::Instant::now();
        let size = fetch_one(client, &web, lease, index, input, workspace, limits)
            .await
            .map_err(|e| format!("input {}: {e}", input.describe()))?;
        lines.push(format!(
            "[drover] input {}: {size} bytes in {:.1?}",
            input.describe(),
            started.elapsed()
        ));
    }
    Ok(lines)
}

async fn fetch_one(
    client: &Client,
    web: &reqwest::Client,
    lease: &Lease,
    index: usize,
    input: &Input,
    workspace: &Path,
    limits: InputLimits,
) -> Result<u64, String> {
    let dest = workspace.join(&input.path);
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let (resp, announced) = match &input.from {
        InputSource::Text(text) => {
            let digest = hex::encode(Sha256::digest(text.as_bytes()));
            check_sha(input.sha256.as_deref(), &digest)?;
            tokio::fs::write(&dest, text)
                .await
                .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
            return Ok(text.len() as u64);
        }
        InputSource::File(_) => {
            let resp = client
                .input(&lease.job_id, lease.attempt, index)
                .await
                .map_err(|e| match e {
                    CallError::Stale(m) | CallError::Refused { message: m, .. } => m,
                    e => e.to_string(),
                })?;
            let announced = resp
                .headers()
                .get("x-drover-sha256")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            (resp, announced)
        }
        InputSource::Url(url) => {
            let resp = web.get(url).send().await.map_err(|e| {
                if e.is_timeout() {
                    format!("no answer within {:?}", limits.timeout)
                } else {
                    error_chain(&e)
                }
            })?;
            let status = resp.status();
            if !status.is_success() {
                return Err(format!("the server answered HTTP {status}"));
            }
            (resp, None)
        }
    };
    if resp.content_length().is_some_and(|n| n > limits.max_bytes) {
        return Err(format!(
            "it is {} bytes, over the agent's input limit of {} bytes",
            resp.content_length().unwrap_or_default(),
            limits.max_bytes
        ));
    }
    let (size, digest) = stream_to_file(resp, &dest, limits).await?;
    if let Some(expected) = &announced {
        if !expected.eq_ignore_ascii_case(&digest) {
            return Err(format!(
                "arrived with sha256 {digest}, but the server stored {expected} (damaged on the way)"
            ));
        }
    }
    check_sha(input.sha256.as_deref(), &digest)?;
    Ok(size)
}

fn check_sha(expected: Option<&str>, got: &str) -> Result<(), String> {
    match expected {
        Some(e) if !e.eq_ignore_ascii_case(got) => {
            Err(format!("sha256 is {got}, but the job expects {e}"))
        }
        _ => Ok(()),
    }
}

/// Writes the body of `resp` to `dest`, hashing it and stopping past the size limit.
async fn stream_to_file(
    resp: reqwest::Response,
    dest: &Path,
    limits: InputLimits,
) -> Result<(u64, String), String> {
    let file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    // Large writes: the body arrives in small frames.
    let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            if e.is_timeout() {
                format!("the download took longer than {:?}", limits.timeout)
            } else {
                format!("the download broke off: {}", error_chain(&e))
            }
        })?;
        size += chunk.len() as u64;
        if size > limits.max_bytes {
            return Err(format!(
                "it is larger than the agent's input limit of {} bytes",
                limits.max_bytes
            ));
        }
        hash.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    }
    file.flush()
        .await
        .map_err(|e| format!("cannot write {}: {e}", dest.display()))?;
    Ok((size, hex::encode(hash.finalize())))
}

/// A file of the workspace that matched an artifact pattern.
#[derive(Debug, Clone, PartialEq)]
struct Found {
    /// Relative to the workspace, `/`-separated.
    rel: String,
    path: PathBuf,
    size: u64,
}

/// Regular files under `workspace` (symbolic links are not followed, so a job cannot
/// hand out the agent's files) that match `lease`'s patterns, by path.
fn find_artifacts(workspace: &Path, patterns: &[String]) -> Result<Vec<Found>, String> {
    let matcher = artifact_matcher(patterns)?;
    let mut found = Vec::new();
    let mut dirs = vec![(workspace.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
        };
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if prefix.is_empty() && name == META_DIR {
                continue;
            }
            let rel = format!("{prefix}{name}");
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                dirs.push((entry.path(), format!("{rel}/")));
            } else if meta.is_file() && matcher.is_match(&rel) {
                found.push(Found {
                    rel,
                    path: entry.path(),
                    size: meta.len(),
                });
            }
        }
    }
    found.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(found)
}

/// Uploads the artifacts of `lease` from `workspace`, within its limits. Returns the
/// log lines that say what was uploaded and what was left out, and why.
pub async fn upload_artifacts(client: &Client, lease: &Lease, workspace: &Path) -> Vec<String> {
    let (dir, patterns) = (workspace.to_path_buf(), lease.artifacts.clone());
    let found = match tokio::task::spawn_blocking(move || find_artifacts(&dir, &patterns)).await {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => return vec![format!("[drover] artifacts: {e}")],
        Err(e) => return vec![format!("[drover] artifacts: {e}")],
    };
    if found.is_empty() {
        return vec![format!(
            "[drover] artifacts: no file matched {}",
            lease.artifacts.join(", ")
        )];
    }
    let limits = lease.artifact_limits;
    let (mut take, mut left_out) = (Vec::new(), Vec::new());
    let mut bytes = 0u64;
    for f in found {
        if take.len() < limits.max_files as usize && bytes + f.size <= limits.max_bytes {
            bytes += f.size;
            take.push(f);
        } else {
            left_out.push(f);
        }
    }
    let mut lines = Vec::new();
    let (mut sent, mut sent_bytes) = (0usize, 0u64);
    for f in &take {
        match upload_one(client, lease, f).await {
            Ok(size) => {
                sent += 1;
                sent_bytes += size;
            }
            Err(Stop::Skip(e)) => {
                lines.push(format!("[drover] artifact {} not uploaded: {e}", f.rel))
            }
            Err(Stop::All(e)) => {
                lines.push(format!("[drover] artifacts: stopped uploading: {e}"));
                break;
            }
        }
    }
    lines.insert(
        0,
        format!("[drover] artifacts: uploaded {sent} files, {sent_bytes} bytes"),
    );
    if !left_out.is_empty() {
        let names: Vec<&str> = left_out.iter().take(10).map(|f| f.rel.as_str()).collect();
        let more = left_out.len().saturating_sub(names.len());
        lines.push(format!(
            "[drover] artifacts: left out {} files over the limits of {} files and {} bytes per attempt: {}{}",
            left_out.len(),
            limits.max_files,
            limits.max_bytes,
            names.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        ));
    }
    lines
}

/// Why an upload did not happen: this file only, or every later one too.
enum Stop {
    Skip(String),
    All(String),
}

async fn upload_one(client: &Client, lease: &Lease, f: &Found) -> Result<u64, Stop> {
    let mut backoff = RetryBackoff::default();
    let mut tries = 0;
    loop {
        tries += 1;
        let file = tokio::fs::File::open(&f.path)
            .await
            .map_err(|e| Stop::Skip(format!("cannot open it: {e}")))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            1024 * 1024,
        ));
        match client
            .upload_artifact(&lease.job_id, lease.attempt, &f.rel, body)
            .await
        {
            Ok(info) => return Ok(info.size),
            Err(e @ CallError::Transient(_)) if tries < UPLOAD_TRIES => {
                tracing::warn!(artifact = %f.rel, error = %e, "artifact upload failed; trying again");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(CallError::Refused { message, .. }) => return Err(Stop::Skip(message)),
            Err(e @ (CallError::Stale(_) | CallError::Unauthorized(_))) => {
                return Err(Stop::All(e.to_string()))
            }
            Err(e) => return Err(Stop::Skip(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_are_regular_files_that_match_outside_drovers_folder() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        std::fs::create_dir_all(w.join("out/deep")).unwrap();
        std::fs::create_dir_all(w.join(".drover")).unwrap();
        std::fs::write(w.join("out/a.txt"), "a").unwrap();
        std::fs::write(w.join("out/deep/b.txt"), "bb").unwrap();
        std::fs::write(w.join("out/c.bin"), "c").unwrap();
        std::fs::write(w.join(".drover/result.json"), "{}").unwrap();
        std::os::unix::fs::symlink("/etc/hostname", w.join("out/link.txt")).unwrap();
        let rels = |patterns: &[&str]| -> Vec<String> {
            let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
            find_artifacts(w, &p)
                .unwrap()
                .into_iter()
                .map(|f| f.rel)
                .collect()
        };
        assert_eq!(rels(&["out/*.txt"]), ["out/a.txt"]);
        assert_eq!(
            rels(&["out/**"]),
            ["out/a.txt", "out/c.bin", "out/deep/b.txt"]
        );
        assert_eq!(rels(&["**/*.json"]), Vec::<String>::new());
    }
}

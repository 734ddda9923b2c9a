//! Files: `drover files put|ls|get|rm` (uploads), `drover artifacts ls|get` (what jobs
//! made), and the uploads behind `drover submit --input`. Bytes stream both ways and
//! are checked against their sha256 on arrival.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use drover_core::files::{artifact_matcher, check_workspace_path, FileInfo, FileList};
use futures::StreamExt;
use reqwest::Method;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::client::{job_path, segment, Client};
use crate::config::{ClientConfig, OutputFormat};
use crate::error::{CliError, Result};
use crate::output::{self, outln};

/// Files at least this large show their progress on a terminal.
const SHOW_PROGRESS: u64 = 16 * 1024 * 1024;

/// `drover files …`.
#[derive(clap::Subcommand)]
pub enum FilesCommand {
    /// Upload a file; prints its id, for a job's `inputs` (`{"from": {"file": ID}}`).
    #[command(after_help = "Example:\n  drover files put study.yaml")]
    Put {
        /// The local file.
        file: PathBuf,
        /// The name it is listed under [default: the file's name].
        #[arg(long)]
        name: Option<String>,
    },
    /// List uploads, newest first.
    #[command(
        after_help = "Examples:\n  drover files ls\n  drover files ls -o json | jq -r '.files[].id'"
    )]
    Ls {
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Download a file (an upload or an artifact) by id.
    #[command(after_help = "Example:\n  drover files get 0193… -o study.yaml")]
    Get {
        id: String,
        /// Where to write it [default: its name, in the current folder].
        #[arg(short = 'O', long = "out")]
        out: Option<PathBuf>,
    },
    /// Delete a file (an upload that a job not yet ended takes as input is kept).
    #[command(after_help = "Example:\n  drover files rm 0193…")]
    Rm { id: String },
}

/// `drover artifacts …`.
#[derive(clap::Subcommand)]
pub enum ArtifactsCommand {
    /// List a job's artifacts: attempt, path, size, sha256.
    #[command(after_help = "Example:\n  drover artifacts ls JOB")]
    Ls {
        job: String,
        /// Only this attempt's.
        #[arg(long)]
        attempt: Option<u32>,
    },
    /// Download a job's artifacts (of its latest attempt that has any) into a folder.
    #[command(
        after_help = "Examples:\n  drover artifacts get JOB\n  drover artifacts get JOB 'results/*.csv' -O out/\n\nPATTERN matches paths in the workspace: * stays within a folder, ** crosses folders."
    )]
    Get {
        job: String,
        /// Only paths matching this pattern.
        pattern: Option<String>,
        /// Folder to write into [default: the current folder].
        #[arg(short = 'O', long = "out", default_value = ".")]
        out: PathBuf,
        /// This attempt's artifacts instead of the latest attempt's.
        #[arg(long)]
        attempt: Option<u32>,
    },
}

/// Uploads `path` under `name`, streaming it (with progress on a terminal).
pub async fn upload(client: &Client, path: &Path, name: &str) -> Result<FileInfo> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| CliError::Usage(format!("cannot read input file {}: {e}", path.display())))?;
    let size = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let sent = Arc::new(AtomicU64::new(0));
    let live = size >= SHOW_PROGRESS && output::stderr_is_tty();
    let counter = sent.clone();
    let label = path.display().to_string();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024).inspect(move |c| {
        if let Ok(c) = c {
            let now = counter.fetch_add(c.len() as u64, Ordering::Relaxed) + c.len() as u64;
            if live {
                eprint!("\r\x1b[2Kuploading {label}: {}%", now * 100 / size.max(1));
            }
        }
    });
    let req = client
        .request(Method::POST, "/v1/files")
        .query(&[("name", name)])
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(stream));
    let resp = req.send().await;
    if live {
        eprintln!();
    }
    let resp = match resp {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => return Err(client.http_error(r).await),
        Err(e) if crate::client::hung_up(&e) => {
            return Err(CliError::Invalid(format!(
                "the server closed the connection while receiving {} ({size} bytes): most likely it is over the server's file size limit (its --max-file-size)",
                path.display()
            )))
        }
        Err(e) => return Err(client.connect_error(e)),
    };
    let info: FileInfo = resp
        .json()
        .await
        .map_err(|e| CliError::Other(format!("unexpected answer to an upload: {e}")))?;
    if info.size != sent.load(Ordering::Relaxed) {
        return Err(CliError::Other(format!(
            "{} changed while it was uploaded ({} bytes sent, {} stored); upload it again",
            path.display(),
            sent.load(Ordering::Relaxed),
            info.size
        )));
    }
    Ok(info)
}

/// Streams the file at API `path` into `dest`, checking the sha256 the server sends.
async fn download(client: &Client, path: &str, dest: &Path) -> Result<u64> {
    let resp = client.send(client.request(Method::GET, path)).await?;
    let expected = resp
        .headers()
        .get("x-drover-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| CliError::Other(format!("cannot create {}: {e}", parent.display())))?;
    }
    let write_error =
        |e: std::io::Error| CliError::Other(format!("cannot write {}: {e}", dest.display()));
    let file = tokio::fs::File::create(dest).await.map_err(write_error)?;
    // Large writes: the body arrives in small frames.
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let mut hash = Sha256::new();
    let mut size = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| client.connect_error(e))?;
        hash.update(&chunk);
        size += chunk.len() as u64;
        out.write_all(&chunk).await.map_err(write_error)?;
    }
    out.flush().await.map_err(write_error)?;
    let got = hex::encode(hash.finalize());
    if let Some(expected) = expected.filter(|e| !e.eq_ignore_ascii_case(&got)) {
        let _ = tokio::fs::remove_file(dest).await;
        return Err(CliError::Other(format!(
            "{} arrived damaged (sha256 {got}, expected {expected}); download it again",
            dest.display()
        )));
    }
    Ok(size)
}

fn print_files(cfg: &ClientConfig, files: Vec<FileInfo>, with_attempt: bool) {
    if cfg.output == OutputFormat::Json {
        return output::json(&FileList { files });
    }
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            let mut row = vec![
                f.id.clone(),
                f.name.clone(),
                f.size.to_string(),
                f.sha256[..12].to_string(),
            ];
            if with_attempt {
                row[0] = f.attempt.unwrap_or_default().to_string();
            }
            row
        })
        .collect();
    let first = if with_attempt { "ATTEMPT" } else { "ID" };
    let name = if with_attempt { "PATH" } else { "NAME" };
    output::table(&[first, name, "BYTES", "SHA256"], &rows);
}

/// `drover files …`.
pub async fn files(cfg: &ClientConfig, cmd: FilesCommand) -> Result<i32> {
    let client = Client::new(cfg)?;
    match cmd {
        FilesCommand::Put { file, name } => {
            let name = match name {
                Some(n) => n,
                None => file_name(&file)?,
            };
            let info = upload(&client, &file, &name).await?;
            match cfg.output {
                OutputFormat::Json => output::json(&info),
                OutputFormat::Table => outln!("{}", info.id),
            }
        }
        FilesCommand::Ls { limit } => {
            let list: FileList = client
                .get_with("/v1/files", |r| r.query(&[("limit", limit)]))
                .await?;
            print_files(cfg, list.files, false);
        }
        FilesCommand::Get { id, out } => {
            let info: FileInfo = client.get(&format!("/v1/files/{}", segment(&id))).await?;
            let dest = match out {
                Some(p) => p,
                None => PathBuf::from(info.name.rsplit('/').next().unwrap_or("file")),
            };
            download(&client, &format!("/v1/files/{}", segment(&id)), &dest).await?;
            if cfg.output == OutputFormat::Table {
                outln!("{}", dest.display());
            }
        }
        FilesCommand::Rm { id } => {
            client
                .delete::<serde_json::Value>(&format!("/v1/files/{}", segment(&id)))
                .await?;
        }
    }
    Ok(0)
}

/// `drover artifacts …`.
pub async fn artifacts(cfg: &ClientConfig, cmd: ArtifactsCommand) -> Result<i32> {
    let client = Client::new(cfg)?;
    match cmd {
        ArtifactsCommand::Ls { job, attempt } => {
            let list = list_artifacts(&client, &job, attempt).await?;
            print_files(cfg, list, true);
        }
        ArtifactsCommand::Get {
            job,
            pattern,
            out,
            attempt,
        } => {
            let all = list_artifacts(&client, &job, attempt).await?;
            let Some(latest) = all.iter().filter_map(|f| f.attempt).max() else {
                return Err(CliError::NotFound(format!("job {job} has no artifacts")));
            };
            let matcher = match &pattern {
                Some(p) => {
                    Some(artifact_matcher(std::slice::from_ref(p)).map_err(CliError::Usage)?)
                }
                None => None,
            };
            let chosen: Vec<FileInfo> = all
                .into_iter()
                .filter(|f| f.attempt == Some(latest))
                .filter(|f| matcher.as_ref().is_none_or(|m| m.is_match(&f.name)))
                .collect();
            if chosen.is_empty() {
                return Err(CliError::NotFound(format!(
                    "no artifact of job {job} (attempt {latest}) matches {}",
                    pattern.unwrap_or_default()
                )));
            }
            for f in &chosen {
                // The server checks paths too; a path that leaves the folder is never written.
                check_workspace_path(&f.name).map_err(|m| {
                    CliError::Other(format!("artifact path {:?} {m}; not written", f.name))
                })?;
                let dest = out.join(&f.name);
                download(&client, &format!("/v1/files/{}", segment(&f.id)), &dest).await?;
                if cfg.output == OutputFormat::Table {
                    outln!("{}", dest.display());
                }
            }
            if cfg.output == OutputFormat::Json {
                output::json(&FileList { files: chosen });
            }
        }
    }
    Ok(0)
}

async fn list_artifacts(client: &Client, job: &str, attempt: Option<u32>) -> Result<Vec<FileInfo>> {
    let path = format!("{}/artifacts", job_path(job));
    let list: FileList = client
        .get_with(&path, |r| match attempt {
            Some(a) => r.query(&[("attempt", a)]),
            None => r,
        })
        .await?;
    Ok(list.files)
}

/// The last part of `path`, as an upload's name and default place in the workspace.
pub fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| CliError::Usage(format!("{} names no file", path.display())))
}

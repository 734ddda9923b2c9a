//! Where the agent keeps things in its work dir. One stem per attempt (the job id made
//! safe for a file name, and the attempt number) names its workspace, log spool and
//! record, so that a restarted agent finds all three from the record alone.

use std::path::{Path, PathBuf};

use drover_core::files::META_DIR;

/// Job workspaces, one folder per attempt.
pub fn workspaces_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("workspaces")
}

/// Log spools, one file per attempt.
pub fn spool_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("spool")
}

/// Attempt records (see `fence`), one file per attempt.
pub fn records_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("attempts")
}

/// `id` with every character but ASCII letters, digits, `-` and `_` replaced by `_`.
pub fn safe_name(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The files of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptFiles {
    pub workspace: PathBuf,
    pub spool: PathBuf,
    pub record: PathBuf,
}

impl AttemptFiles {
    /// The files of attempt `attempt` of job `job_id`.
    pub fn new(work_dir: &Path, job_id: &str, attempt: u32) -> AttemptFiles {
        Self::of_stem(work_dir, &format!("{}-{attempt}", safe_name(job_id)))
    }

    /// The files of the attempt whose record is `record`.
    pub fn of_record(work_dir: &Path, record: &Path) -> AttemptFiles {
        let stem = record.file_stem().unwrap_or_default().to_string_lossy();
        Self::of_stem(work_dir, &stem)
    }

    fn of_stem(work_dir: &Path, stem: &str) -> AttemptFiles {
        AttemptFiles {
            workspace: workspaces_dir(work_dir).join(stem),
            spool: spool_dir(work_dir).join(format!("{stem}.jsonl")),
            record: records_dir(work_dir).join(format!("{stem}.json")),
        }
    }

    /// drover's own files inside the workspace.
    pub fn meta(&self) -> PathBuf {
        self.workspace.join(META_DIR)
    }

    /// The file a job appends progress lines to (`DROVER_PROGRESS`).
    pub fn progress(&self) -> PathBuf {
        progress_in(&self.workspace)
    }

    /// The file a job writes its JSON result to (`DROVER_RESULT`).
    pub fn result(&self) -> PathBuf {
        result_in(&self.workspace)
    }
}

/// The progress file of the workspace at `workspace` (on the host, or as a container
/// sees it).
pub fn progress_in(workspace: &Path) -> PathBuf {
    workspace.join(META_DIR).join("progress")
}

/// The result file of the workspace at `workspace`.
pub fn result_in(workspace: &Path) -> PathBuf {
    workspace.join(META_DIR).join("result.json")
}

/// The environment a job gets from its lease, the same for a process and a container
/// (`workspace` as the job sees it): its env and secrets, then drover's own variables,
/// which win. `DROVER_METADATA` is the job's metadata as JSON, when it has any.
pub fn lease_env(lease: &drover_core::api::Lease, workspace: &Path) -> Vec<(String, String)> {
    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    let mut env: Vec<(String, String)> = lease
        .env
        .iter()
        .chain(lease.secrets.iter())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.push(("DROVER_JOB_ID".into(), lease.job_id.clone()));
    env.push(("DROVER_ATTEMPT".into(), lease.attempt.to_string()));
    env.push(("DROVER_WORKSPACE".into(), path(workspace.to_path_buf())));
    env.push(("DROVER_PROGRESS".into(), path(progress_in(workspace))));
    env.push(("DROVER_RESULT".into(), path(result_in(workspace))));
    if !lease.metadata.is_null() {
        env.push(("DROVER_METADATA".into(), lease.metadata.to_string()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_leads_back_to_its_attempts_files() {
        let w = Path::new("/w");
        let files = AttemptFiles::new(w, "a/b c", 2);
        assert_eq!(files.workspace, Path::new("/w/workspaces/a_b_c-2"));
        assert_eq!(files.spool, Path::new("/w/spool/a_b_c-2.jsonl"));
        assert_eq!(files.record, Path::new("/w/attempts/a_b_c-2.json"));
        assert_eq!(AttemptFiles::of_record(w, &files.record), files);
        assert_eq!(
            files.result(),
            Path::new("/w/workspaces/a_b_c-2/.drover/result.json")
        );
    }
}

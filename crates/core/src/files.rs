//! Files in and out of jobs: inputs put into the workspace before a job starts, artifact
//! patterns collected after it ends, and the wire types of the file API.

use chrono::{DateTime, Utc};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::spec::FieldError;

/// Most inputs one job may list.
pub const MAX_INPUTS: usize = 100;
/// Most artifact patterns one job may list.
pub const MAX_ARTIFACT_PATTERNS: usize = 100;
/// Longest workspace path of an input or artifact, and longest URL.
pub const MAX_PATH_LEN: usize = 1024;
/// The folder inside every workspace that drover keeps for itself (progress and result
/// files); inputs cannot be put there and artifacts are never collected from it.
pub const META_DIR: &str = ".drover";

/// A file put into the job's workspace before its command starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Where in the workspace, relative to it (`config/study.yaml`).
    pub path: String,
    pub from: InputSource,
    /// Expected sha256 of the content (hex); the attempt fails when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Where an input's bytes come from. One key on the wire: `{"file": ID}`,
/// `{"url": URL}` or `{"text": TEXT}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum InputSource {
    /// A file uploaded with `POST /v1/files`, by id.
    File(String),
    /// An `http` or `https` URL the agent downloads (the server never fetches it).
    Url(String),
    /// This text, as UTF-8.
    Text(String),
}

impl Input {
    /// `path (from …)`, as error messages and log lines name an input.
    pub fn describe(&self) -> String {
        match &self.from {
            InputSource::File(id) => format!("{} (file {id})", self.path),
            InputSource::Url(url) => format!("{} ({url})", self.path),
            InputSource::Text(t) => format!("{} (text, {} bytes)", self.path, t.len()),
        }
    }
}

/// Per-attempt limits on what an agent uploads as artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactLimits {
    pub max_files: u32,
    pub max_bytes: u64,
}

impl Default for ArtifactLimits {
    fn default() -> Self {
        ArtifactLimits {
            max_files: 1000,
            max_bytes: 10 * 1024 * 1024 * 1024,
        }
    }
}

/// A stored file (an upload or an artifact) as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FileInfo {
    pub id: String,
    /// `upload` or `artifact`.
    pub kind: String,
    /// The upload's name, or the artifact's path in the workspace.
    pub name: String,
    pub size: u64,
    /// Hex.
    pub sha256: String,
    /// The job and attempt an artifact came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    pub created_at: DateTime<Utc>,
}

/// `GET /v1/jobs/{id}/artifacts` and `GET /v1/files`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FileList {
    pub files: Vec<FileInfo>,
}

/// Checks a path relative to the workspace: no absolute path, no `..` or `.`, no empty
/// part, nothing in drover's own folder.
pub fn check_workspace_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("must not be empty".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("is longer than {MAX_PATH_LEN} bytes"));
    }
    if path.contains('\0') {
        return Err("must not contain a NUL byte".into());
    }
    if path.starts_with('/') {
        return Err("must be relative to the workspace, not absolute".into());
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return Err("must not contain empty, `.` or `..` parts".into());
    }
    if parts[0] == META_DIR {
        return Err(format!(
            "must not be inside {META_DIR}/, which drover keeps for itself"
        ));
    }
    Ok(())
}

/// Builds the matcher of a job's artifact patterns: `*` stays within one folder, `**`
/// crosses folders, and paths are matched relative to the workspace.
pub fn artifact_matcher(patterns: &[String]) -> Result<GlobSet, String> {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        let glob = GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("pattern {p:?}: {}", e.kind()))?;
        set.add(glob);
    }
    set.build().map_err(|e| e.to_string())
}

fn err(field: String, message: String) -> FieldError {
    FieldError { field, message }
}

/// Whether `s` is a sha256 in hex.
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a job's inputs and artifact patterns; problems are pushed onto `errs`.
pub fn check(errs: &mut Vec<FieldError>, inputs: &[Input], artifacts: &[String]) {
    if inputs.len() > MAX_INPUTS {
        errs.push(err("inputs".into(), format!("at most {MAX_INPUTS} inputs")));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, input) in inputs.iter().enumerate() {
        let field = format!("inputs[{i}]");
        if let Err(m) = check_workspace_path(&input.path) {
            errs.push(err(format!("{field}.path"), m));
        } else if !seen.insert(input.path.as_str()) {
            errs.push(err(
                format!("{field}.path"),
                format!("{:?} is listed twice", input.path),
            ));
        }
        if input.sha256.as_deref().is_some_and(|s| !is_sha256(s)) {
            errs.push(err(
                format!("{field}.sha256"),
                "must be 64 hexadecimal digits".into(),
            ));
        }
        match &input.from {
            InputSource::File(id) if id.is_empty() || id.len() > MAX_PATH_LEN => errs.push(err(
                format!("{field}.from.file"),
                "must be a file id".into(),
            )),
            InputSource::Url(url) => {
                let ok = (url.starts_with("http://") || url.starts_with("https://"))
                    && url.len() <= MAX_PATH_LEN
                    && !url.chars().any(char::is_whitespace);
                if !ok {
                    errs.push(err(
                        format!("{field}.from.url"),
                        format!("must be an http:// or https:// URL of at most {MAX_PATH_LEN} bytes without spaces"),
                    ));
                }
            }
            _ => {}
        }
    }
    if artifacts.len() > MAX_ARTIFACT_PATTERNS {
        errs.push(err(
            "artifacts".into(),
            format!("at most {MAX_ARTIFACT_PATTERNS} patterns"),
        ));
    }
    for (i, p) in artifacts.iter().enumerate() {
        let field = format!("artifacts[{i}]");
        if let Err(m) = check_workspace_path(p) {
            errs.push(err(field, m));
        } else if let Err(m) = artifact_matcher(std::slice::from_ref(p)) {
            errs.push(err(field, m));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_paths_stay_inside_the_workspace() {
        for ok in ["a", "config/study.yaml", "x.drover", "results/**"] {
            assert_eq!(check_workspace_path(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a//b",
            "./a",
            ".drover/result.json",
        ] {
            assert!(check_workspace_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn star_stays_in_its_folder_and_double_star_crosses() {
        let m = artifact_matcher(&["out/*.txt".into(), "results/**".into()]).unwrap();
        assert!(m.is_match("out/a.txt"));
        assert!(!m.is_match("out/deep/a.txt"));
        assert!(m.is_match("results/a/b/c.bin"));
        assert!(!m.is_match("other/a.txt"));
        assert!(artifact_matcher(&["a[".into()]).is_err());
    }

    #[test]
    fn inputs_are_checked_together() {
        let inputs = vec![
            Input {
                path: "c.yaml".into(),
                from: InputSource::Url("ftp://x".into()),
                sha256: Some("abc".into()),
            },
            Input {
                path: "c.yaml".into(),
                from: InputSource::Text("x".into()),
                sha256: None,
            },
        ];
        let mut errs = Vec::new();
        check(&mut errs, &inputs, &["../x".into(), "a[".into()]);
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "inputs[0].sha256",
                "inputs[0].from.url",
                "inputs[1].path",
                "artifacts[0]",
                "artifacts[1]"
            ]
        );
    }

    #[test]
    fn inputs_read_as_one_key_objects() {
        let i: Input =
            serde_json::from_str(r#"{"path":"a","from":{"url":"https://x/a"}}"#).unwrap();
        assert_eq!(i.from, InputSource::Url("https://x/a".into()));
        assert!(serde_json::from_str::<Input>(r#"{"path":"a","from":{"disk":"x"}}"#).is_err());
    }
}

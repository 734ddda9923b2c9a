//! `[[provider]]` tables of the server's config file: providers of agents on demand.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use drover_server::{ProviderConfig, ProviderKind};
use serde::Deserialize;

use super::parse_duration;
use crate::error::{CliError, Result};

/// One `[[provider]]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderFile {
    pub name: String,
    /// `process` or `docker`.
    pub kind: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub queues: Vec<String>,
    pub slots: Option<u32>,
    pub max_agents: Option<u32>,
    pub min_idle: Option<u32>,
    pub max_starts_per_minute: Option<u32>,
    /// e.g. `5m`.
    pub idle_timeout: Option<String>,
    /// e.g. `30s`.
    pub start_timeout: Option<String>,
    #[serde(default)]
    pub ephemeral: bool,
    /// The URL its agents reach the server at.
    pub server_url: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// process: the program (and first arguments) that runs `drover`; default this one.
    #[serde(default)]
    pub command: Vec<String>,
    /// docker: the agent image (its entrypoint is `drover`).
    pub image: Option<String>,
    pub network: Option<String>,
    #[serde(default)]
    pub mounts: Vec<String>,
    #[serde(default)]
    pub gpus: bool,
    /// docker: `missing` (default), `always` or `never`.
    pub pull: Option<String>,
}

/// Checks every `[[provider]]` table; each problem names the provider and the key.
pub fn resolve(files: &[ProviderFile]) -> Result<Vec<ProviderConfig>> {
    let mut names = HashSet::new();
    files.iter().map(|f| {
        let bad = |m: String| CliError::Usage(format!("[[provider]] {:?} in the config file: {m}", f.name));
        if f.name.trim().is_empty() || !f.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(bad("name must be letters, digits, - or _".into()));
        }
        if !names.insert(f.name.clone()) {
            return Err(bad("two providers have this name".into()));
        }
        let only = |key: &str, set: bool, kind: &str| {
            if set {
                Err(bad(format!("{key} is for kind = \"{kind}\" providers")))
            } else {
                Ok(())
            }
        };
        let kind = match f.kind.as_str() {
            "process" => {
                only("image", f.image.is_some(), "docker")?;
                only("network", f.network.is_some(), "docker")?;
                only("mounts", !f.mounts.is_empty(), "docker")?;
                only("gpus", f.gpus, "docker")?;
                only("pull", f.pull.is_some(), "docker")?;
                ProviderKind::Process { command: f.command.clone() }
            }
            "docker" => {
                only("command", !f.command.is_empty(), "process")?;
                let image = f.image.clone().filter(|i| !i.trim().is_empty()).ok_or_else(|| {
                    bad("a docker provider needs image = \"…\" (an image with drover as its entrypoint; see docker/agent.Dockerfile)".into())
                })?;
                if let Some(p) = f.pull.as_deref().filter(|p| !matches!(*p, "missing" | "always" | "never")) {
                    return Err(bad(format!("pull = {p:?}: use \"missing\", \"always\" or \"never\"")));
                }
                ProviderKind::Docker {
                    image,
                    network: f.network.clone(),
                    mounts: f.mounts.clone(),
                    gpus: f.gpus,
                    pull: f.pull.clone(),
                }
            }
            other => return Err(bad(format!("kind = {other:?}: use \"process\" or \"docker\""))),
        };
        let duration = |key: &str, v: &Option<String>, default: Duration| -> Result<Duration> {
            match v {
                None => Ok(default),
                Some(s) => parse_duration(s).map_err(|e| bad(format!("{key}: {e}"))),
            }
        };
        let count = |key: &str, v: Option<u32>, default: u32, min: u32| -> Result<u32> {
            let n = v.unwrap_or(default);
            if n < min {
                return Err(bad(format!("{key} must be at least {min}")));
            }
            Ok(n)
        };
        let max_agents = count("max_agents", f.max_agents, 1, 1)?;
        let min_idle = count("min_idle", f.min_idle, 0, 0)?;
        if min_idle > max_agents {
            return Err(bad(format!("min_idle ({min_idle}) is above max_agents ({max_agents})")));
        }
        Ok(ProviderConfig {
            name: f.name.clone(),
            kind,
            labels: f.labels.clone(),
            queues: f.queues.clone(),
            slots: count("slots", f.slots, 1, 1)?,
            max_agents,
            min_idle,
            max_starts_per_minute: count("max_starts_per_minute", f.max_starts_per_minute, 10, 1)?,
            idle_timeout: duration("idle_timeout", &f.idle_timeout, Duration::from_secs(300))?,
            start_timeout: duration("start_timeout", &f.start_timeout, Duration::from_secs(30))?,
            ephemeral: f.ephemeral,
            server_url: f.server_url.clone(),
            env: f.env.clone(),
        })
    }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<ProviderConfig>> {
        let f: super::super::FileConfig = toml::from_str(text).unwrap();
        resolve(&f.provider)
    }

    #[test]
    fn providers_are_read_and_checked() {
        let p = parse(
            "[[provider]]\nname = \"burst\"\nkind = \"process\"\nlabels = { pool = \"burst\" }\nmax_agents = 2\nidle_timeout = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(
            (p[0].max_agents, p[0].idle_timeout),
            (2, Duration::from_secs(5))
        );
        assert_eq!(p[0].labels["pool"], "burst");
        let e = parse("[[provider]]\nname = \"d\"\nkind = \"docker\"\n").unwrap_err();
        assert!(e.to_string().contains("needs image"), "{e}");
        let e = parse("[[provider]]\nname = \"x\"\nkind = \"vm\"\n").unwrap_err();
        assert!(
            e.to_string().contains("use \"process\" or \"docker\""),
            "{e}"
        );
        let e =
            parse("[[provider]]\nname = \"x\"\nkind = \"process\"\nmin_idle = 3\n").unwrap_err();
        assert!(e.to_string().contains("above max_agents"), "{e}");
    }
}

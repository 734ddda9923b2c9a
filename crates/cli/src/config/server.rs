//! `drover server`'s flags and their resolution into a `drover_server::ServerConfig`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use drover_server::{BootstrapToken, ObjectStoreConfig, Scope, ServerConfig, TlsFiles};

use super::{
    duration_from, parse_duration, parse_size, size_from, Env, FileConfig, LocalTokens, LogConfig,
};
use crate::error::{CliError, Result};

/// Flags of `drover server`; each also comes from env and the `[server]` table.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServerArgs {
    /// TOML config file (see drover.example.toml) [env: DROVER_CONFIG].
    #[arg(long, env = "DROVER_CONFIG", hide_env = true)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:7070] [env: DROVER_LISTEN].
    #[arg(long, env = "DROVER_LISTEN", hide_env = true)]
    pub listen: Option<SocketAddr>,
    /// Data directory: SQLite database, logs, secrets key, tokens.toml [default: ./.drover] [env: DROVER_DATA].
    #[arg(long, env = "DROVER_DATA", hide_env = true)]
    pub data: Option<PathBuf>,
    /// postgres://… to use PostgreSQL instead of SQLite [env: DROVER_DATABASE].
    #[arg(long, env = "DROVER_DATABASE", hide_env = true, hide_env_values = true)]
    pub database: Option<String>,
    /// Leases not renewed for this long expire, e.g. 30s [default: 30s] [env: DROVER_LEASE_TTL].
    #[arg(long, env = "DROVER_LEASE_TTL", hide_env = true, value_parser = parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// Serve /metrics without a token.
    #[arg(long)]
    pub public_metrics: bool,
    /// PEM certificate for HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (with --tls-cert).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Log format [default: text] [env: DROVER_LOG_FORMAT].
    #[arg(long, env = "DROVER_LOG_FORMAT", hide_env = true, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// Tracing filter, e.g. info or drover_server=debug [default: RUST_LOG, else info].
    #[arg(long)]
    pub log_level: Option<String>,
    /// Admin token to accept (default: generated once, kept in DATA/tokens.toml) [env: DROVER_ADMIN_TOKEN].
    #[arg(
        long,
        env = "DROVER_ADMIN_TOKEN",
        hide_env = true,
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Join token agents register with (default: generated once, kept in DATA/tokens.toml) [env: DROVER_JOIN_TOKEN].
    #[arg(
        long,
        env = "DROVER_JOIN_TOKEN",
        hide_env = true,
        hide_env_values = true
    )]
    pub join_token: Option<String>,
    /// Keep files, artifacts and finished jobs' logs in S3-compatible storage, s3://BUCKET[/PREFIX] [default: the data directory] [env: DROVER_OBJECT_STORE].
    #[arg(long, env = "DROVER_OBJECT_STORE", hide_env = true, value_name = "URL")]
    pub object_store: Option<String>,
    /// The object store's endpoint for stores other than AWS, e.g. http://127.0.0.1:9000 [env: DROVER_OBJECT_STORE_ENDPOINT, else AWS_ENDPOINT_URL].
    #[arg(
        long,
        env = "DROVER_OBJECT_STORE_ENDPOINT",
        hide_env = true,
        value_name = "URL"
    )]
    pub object_store_endpoint: Option<String>,
    /// The object store's region [default: AWS_REGION, else us-east-1] [env: DROVER_OBJECT_STORE_REGION].
    #[arg(long, env = "DROVER_OBJECT_STORE_REGION", hide_env = true)]
    pub object_store_region: Option<String>,
    /// Address the bucket in the path (http://host/bucket/key), as most self-hosted stores want [env: DROVER_OBJECT_STORE_PATH_STYLE].
    #[arg(long, env = "DROVER_OBJECT_STORE_PATH_STYLE", hide_env = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub object_store_path_style: bool,
    /// Largest file one upload may carry [default: 10GiB] [env: DROVER_MAX_FILE_SIZE].
    #[arg(long, env = "DROVER_MAX_FILE_SIZE", hide_env = true, value_parser = parse_size)]
    pub max_file_size: Option<u64>,
    /// Most artifacts one attempt may upload [default: 1000] [env: DROVER_ARTIFACT_MAX_FILES].
    #[arg(long, env = "DROVER_ARTIFACT_MAX_FILES", hide_env = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub artifact_max_files: Option<u32>,
    /// Most bytes of artifacts one attempt may upload [default: 10GiB] [env: DROVER_ARTIFACT_MAX_SIZE].
    #[arg(long, env = "DROVER_ARTIFACT_MAX_SIZE", hide_env = true, value_parser = parse_size)]
    pub artifact_max_size: Option<u64>,
    /// Delete files, artifacts and logs of jobs that ended longer ago than this, e.g. 30d [default: keep] [env: DROVER_RETAIN].
    #[arg(long, env = "DROVER_RETAIN", hide_env = true, value_parser = parse_duration)]
    pub retain: Option<Duration>,
    /// Forget agents not seen for this long [default: 24h] [env: DROVER_PRUNE_AGENTS_AFTER].
    #[arg(long, env = "DROVER_PRUNE_AGENTS_AFTER", hide_env = true, value_parser = parse_duration)]
    pub prune_agents_after: Option<Duration>,
    /// The key that seals job secrets; every server on one database needs the same [default: DATA/secrets.key, created when missing] [env: DROVER_SECRETS_KEY_FILE].
    #[arg(
        long,
        env = "DROVER_SECRETS_KEY_FILE",
        hide_env = true,
        value_name = "FILE"
    )]
    pub secrets_key_file: Option<PathBuf>,
    /// Re-seal every stored job secret under the key in FILE (created when missing), make
    /// it the database's key, and exit. Stop every server on the database first; then
    /// start them all with --secrets-key-file FILE.
    #[arg(long, value_name = "FILE")]
    pub rotate_secrets_key: Option<PathBuf>,
    /// At most N jobs of queue NAME leased or running at once, across all agents
    /// (repeatable; every server on one database needs the same).
    #[arg(long = "queue-limit", value_name = "NAME=N", value_parser = parse_queue_limit)]
    pub queue_limits: Vec<(String, u32)>,
}

fn parse_queue_limit(s: &str) -> std::result::Result<(String, u32), String> {
    let (name, n) = super::parse_kv(s)?;
    let n = n
        .parse::<u32>()
        .map_err(|_| format!("{s:?}: N must be a whole number"))?;
    Ok((name, n))
}

/// Everything `drover server` needs to start.
#[derive(Debug, Clone)]
pub struct ServerSetup {
    /// The server's configuration, bootstrap tokens included.
    pub config: ServerConfig,
    /// How to log.
    pub log: LogConfig,
    /// Tokens generated just now (to print once), with the file they were saved in.
    pub created_tokens: Option<(LocalTokens, PathBuf)>,
    /// Re-seal the secrets under this key and exit, instead of serving.
    pub rotate_secrets_key: Option<PathBuf>,
}

impl ServerSetup {
    /// Merges file < env < flags and finds (or creates) the bootstrap tokens.
    pub fn resolve(args: &ServerArgs, env: &Env) -> Result<ServerSetup> {
        let file = FileConfig::load(args.config.as_deref())?;
        let (mut config, log) = resolve_config(args, &file, env)?;
        let mut created_tokens = None;
        let (admin, join) = match (&args.admin_token, &args.join_token) {
            (Some(a), Some(j)) => (a.clone(), j.clone()),
            (a, j) => {
                let (t, new) = LocalTokens::load_or_create(&config.data_dir)?;
                if new {
                    created_tokens = Some((t.clone(), LocalTokens::path(&config.data_dir)));
                }
                (a.clone().unwrap_or(t.admin), j.clone().unwrap_or(t.join))
            }
        };
        config.bootstrap_tokens = bootstrap_tokens(&admin, &join);
        Ok(ServerSetup {
            config,
            log,
            created_tokens,
            rotate_secrets_key: args.rotate_secrets_key.clone(),
        })
    }
}

/// The admin and join tokens as bootstrap tokens the server makes sure exist.
pub(super) fn bootstrap_tokens(admin: &str, join: &str) -> Vec<BootstrapToken> {
    vec![
        BootstrapToken {
            name: "admin".into(),
            scope: Scope::Admin,
            secret: admin.to_string(),
        },
        BootstrapToken {
            name: "join".into(),
            scope: Scope::Join,
            secret: join.to_string(),
        },
    ]
}

fn resolve_config(
    args: &ServerArgs,
    file: &FileConfig,
    env: &Env,
) -> Result<(ServerConfig, LogConfig)> {
    let f = &file.server;
    let data = args
        .data
        .clone()
        .or_else(|| f.data.clone())
        .unwrap_or_else(|| PathBuf::from(".drover"));
    let mut cfg = ServerConfig::new(data);
    if let Some(listen) = args.listen {
        cfg.listen = listen;
    } else if let Some(l) = &f.listen {
        cfg.listen = l.parse().map_err(|_| {
            CliError::Usage(format!(
                "listen = {l:?} in the config file is not host:port, e.g. 127.0.0.1:7070"
            ))
        })?;
    }
    cfg.database_url = args.database.clone().or_else(|| f.database.clone());
    if let Some(ttl) = duration_from(args.lease_ttl, f.lease_ttl.as_deref(), "lease_ttl")? {
        cfg.lease_ttl = ttl;
    }
    if cfg.lease_ttl < Duration::from_secs(1) {
        return Err(CliError::Usage("the lease TTL must be at least 1s".into()));
    }
    cfg.public_metrics = args.public_metrics || f.public_metrics.unwrap_or(false);
    match (
        args.tls_cert.clone().or_else(|| f.tls_cert.clone()),
        args.tls_key.clone().or_else(|| f.tls_key.clone()),
    ) {
        (Some(cert), Some(key)) => cfg.tls = Some(TlsFiles { cert, key }),
        (None, None) => {}
        _ => {
            return Err(CliError::Usage(
                "give both a TLS certificate and a key (tls_cert and tls_key)".into(),
            ))
        }
    }
    cfg.object_store = object_store(args, f, env)?;
    let max_file = f.max_file_size.as_deref();
    if let Some(n) = size_from(args.max_file_size, max_file, "max_file_size")? {
        cfg.max_file_bytes = n;
    }
    if let Some(n) = args.artifact_max_files.or(f.artifact_max_files) {
        if n == 0 {
            return Err(CliError::Usage(
                "artifact_max_files in the config file must be at least 1".into(),
            ));
        }
        cfg.artifact_limits.max_files = n;
    }
    let max_artifacts = f.artifact_max_size.as_deref();
    if let Some(n) = size_from(args.artifact_max_size, max_artifacts, "artifact_max_size")? {
        cfg.artifact_limits.max_bytes = n;
    }
    cfg.retain = duration_from(args.retain, f.retain.as_deref(), "retain")?;
    let prune = f.prune_agents_after.as_deref();
    if let Some(d) = duration_from(args.prune_agents_after, prune, "prune_agents_after")? {
        if d < cfg.lease_ttl {
            return Err(CliError::Usage(format!(
                "prune_agents_after ({}) must be at least the lease TTL ({}): an agent is forgotten only once it is offline",
                humantime::format_duration(d),
                humantime::format_duration(cfg.lease_ttl)
            )));
        }
        cfg.prune_agents_after = d;
    }
    if cfg.retain.is_some_and(|r| r < Duration::from_secs(60)) {
        return Err(CliError::Usage(
            "retain must be at least 1m (it is how long ended jobs keep their files and logs)"
                .into(),
        ));
    }
    let format = args.log_format.as_deref().or(f.log_format.as_deref());
    if let Some(other) = format.filter(|f| !matches!(*f, "text" | "json")) {
        return Err(CliError::Usage(format!(
            "log_format = {other:?} in the config file: use \"text\" or \"json\""
        )));
    }
    cfg.providers = super::provider::resolve(&file.provider)?;
    cfg.queue_limits = f.queue_limits.clone();
    cfg.queue_limits.extend(args.queue_limits.iter().cloned());
    if let Some((q, _)) = cfg.queue_limits.iter().find(|(_, n)| **n == 0) {
        return Err(CliError::Usage(format!(
            "the limit of queue {q} is 0: a queue limit is at least 1"
        )));
    }
    cfg.secrets_key_file = args
        .secrets_key_file
        .clone()
        .or_else(|| f.secrets_key_file.clone());
    let level = args.log_level.as_deref().or(f.log_level.as_deref());
    Ok((cfg, LogConfig::resolve(format, level, env, "info")))
}

/// The object store settings, if one is configured: flags, else the file, else the
/// usual `AWS_*` variables (which the S3 client also reads for credentials).
fn object_store(
    args: &ServerArgs,
    f: &super::ServerFile,
    env: &Env,
) -> Result<Option<ObjectStoreConfig>> {
    let Some(url) = args.object_store.clone().or_else(|| f.object_store.clone()) else {
        return Ok(None);
    };
    if !url.starts_with("s3://") || url.len() <= "s3://".len() {
        return Err(CliError::Usage(format!(
            "object store {url:?} must look like s3://BUCKET or s3://BUCKET/PREFIX"
        )));
    }
    let var = |k: &str| env.var(k);
    Ok(Some(ObjectStoreConfig {
        url,
        endpoint: args
            .object_store_endpoint
            .clone()
            .or_else(|| f.object_store_endpoint.clone())
            .or_else(|| var("AWS_ENDPOINT_URL")),
        region: args
            .object_store_region
            .clone()
            .or_else(|| f.object_store_region.clone())
            .or_else(|| var("AWS_REGION"))
            .or_else(|| var("AWS_DEFAULT_REGION"))
            .or_else(|| Some("us-east-1".into())),
        access_key_id: f.object_store_access_key_id.clone(),
        secret_access_key: f.object_store_secret_access_key.clone(),
        path_style: args.object_store_path_style || f.object_store_path_style.unwrap_or(false),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(toml_text: &str) -> FileConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn flags_beat_the_file_which_beats_the_defaults() {
        let f = file(
            "[server]\nlisten = \"0.0.0.0:8000\"\ndata = \"/srv/drover\"\nlease_ttl = \"45s\"\nlog_format = \"json\"\n",
        );
        let (cfg, log) = resolve_config(&ServerArgs::default(), &f, &Env::default()).unwrap();
        assert_eq!(cfg.listen.to_string(), "0.0.0.0:8000");
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/drover"));
        assert_eq!(cfg.lease_ttl, Duration::from_secs(45));
        assert!(log.json);

        let args = ServerArgs {
            listen: Some("127.0.0.1:9000".parse().unwrap()),
            lease_ttl: Some(Duration::from_secs(10)),
            log_format: Some("text".into()),
            ..ServerArgs::default()
        };
        let (cfg, log) = resolve_config(&args, &f, &Env::default()).unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(cfg.data_dir, PathBuf::from("/srv/drover"));
        assert_eq!(cfg.lease_ttl, Duration::from_secs(10));
        assert!(!log.json);

        let (cfg, _) = resolve_config(
            &ServerArgs::default(),
            &FileConfig::default(),
            &Env::default(),
        )
        .unwrap();
        assert_eq!(cfg.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(cfg.data_dir, PathBuf::from(".drover"));
    }

    #[test]
    fn bad_file_values_are_usage_errors() {
        for text in [
            "[server]\nlisten = \"nowhere\"\n",
            "[server]\nlease_ttl = \"soon\"\n",
            "[server]\nlease_ttl = \"10ms\"\n",
            "[server]\ntls_cert = \"/c.pem\"\n",
            "[server]\nlog_format = \"xml\"\n",
        ] {
            let err =
                resolve_config(&ServerArgs::default(), &file(text), &Env::default()).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{text}: {err}");
        }
    }

    #[test]
    fn generated_tokens_are_kept_and_given_tokens_win() {
        let dir = tempfile::tempdir().unwrap();
        let args = ServerArgs {
            data: Some(dir.path().to_path_buf()),
            ..ServerArgs::default()
        };
        let first = ServerSetup::resolve(&args, &Env::default()).unwrap();
        let (tokens, path) = first.created_tokens.clone().expect("new tokens");
        assert_eq!(path, dir.path().join("tokens.toml"));
        assert_eq!(first.config.bootstrap_tokens[0].secret, tokens.admin);
        let again = ServerSetup::resolve(&args, &Env::default()).unwrap();
        assert!(again.created_tokens.is_none());
        assert_eq!(again.config.bootstrap_tokens[1].secret, tokens.join);

        let given = ServerArgs {
            admin_token: Some("mine".into()),
            ..args
        };
        let setup = ServerSetup::resolve(&given, &Env::default()).unwrap();
        assert_eq!(setup.config.bootstrap_tokens[0].secret, "mine");
        assert_eq!(setup.config.bootstrap_tokens[1].secret, tokens.join);
    }

    #[test]
    fn files_settings_come_from_flags_file_and_env() {
        let f = file(
            "[server]\nobject_store = \"s3://b/p\"\nobject_store_path_style = true\nobject_store_access_key_id = \"k\"\nmax_file_size = \"1GiB\"\nartifact_max_files = 7\nretain = \"30d\"\n",
        );
        let env = Env {
            vars: vec![
                ("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:9000".into()),
                ("AWS_REGION".into(), "eu-west-1".into()),
            ],
            ..Env::default()
        };
        let (cfg, _) = resolve_config(&ServerArgs::default(), &f, &env).unwrap();
        let os = cfg.object_store.unwrap();
        assert_eq!(os.url, "s3://b/p");
        assert_eq!(os.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(os.region.as_deref(), Some("eu-west-1"));
        assert_eq!(os.access_key_id.as_deref(), Some("k"));
        assert!(os.path_style);
        assert_eq!(cfg.max_file_bytes, 1 << 30);
        assert_eq!(cfg.artifact_limits.max_files, 7);
        assert_eq!(cfg.retain, Some(Duration::from_secs(30 * 86_400)));

        let args = ServerArgs {
            object_store: Some("https://b".into()),
            ..ServerArgs::default()
        };
        let err = resolve_config(&args, &f, &env).unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");
        let args = ServerArgs {
            retain: Some(Duration::from_secs(5)),
            ..ServerArgs::default()
        };
        let err = resolve_config(&args, &f, &env).unwrap_err();
        assert!(err.to_string().contains("at least 1m"), "{err}");
        let (cfg, _) =
            resolve_config(&ServerArgs::default(), &FileConfig::default(), &env).unwrap();
        assert!(cfg.object_store.is_none() && cfg.retain.is_none());
    }
}

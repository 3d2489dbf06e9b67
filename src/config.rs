//! `sluice.toml`, the file format only: the typed file, its host-level defaults, and strict
//! parsing into [`model`](crate::model) values (`[[job]]` tables are [`JobSpec`]s).
//!
//! A person typed this file, so it is strict: a key sluice does not know anywhere in it
//! (`bacth = 1`) is an error naming the key, found with `serde_ignored` while parsing, rather
//! than `deny_unknown_fields` on each struct, because the job spec it shares with the
//! registry must stay lenient (a newer version's fields are ignored there).
//! [`Config::validate`] checks every value and names the field at fault (`job[0].batch: …`).
//! Relative paths are taken from the current directory.
//! `SLUICE_REDIS_URL` / `--redis` override `[redis] url`, `SLUICE_DATA_DIR` / `--data-dir`
//! override `[host] data_dir` (applied by the CLI).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::logging::LogFormat;
use crate::model::connection::{Keepalive, Tls};
use crate::model::{AppendFsync, Connection, JobSpec, check_name};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct Config {
    /// This host process.
    #[serde(default)]
    pub host: HostConfig,
    /// Where Redis is.
    #[serde(default)]
    pub redis: RedisConfig,
    /// Plugins by name (`[[plugin]]`).
    #[serde(default, rename = "plugin")]
    pub plugins: Vec<PluginConfig>,
    /// Ingest jobs (`[[job]]`).
    #[serde(default, rename = "job")]
    pub jobs: Vec<JobSpec>,
    /// A directory of plugins to load and watch (`[plugins] dir`).
    #[serde(default, rename = "plugins")]
    pub plugins_dir: PluginsDir,
    /// The admin HTTP server (`[admin]`).
    #[serde(default)]
    pub admin: AdminConfig,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct AdminConfig {
    /// Address of the admin HTTP server (`/live`, `/ready`, `/metrics`), e.g.
    /// `127.0.0.1:9090`; unset (default): no server. `sluice run --admin ADDR` overrides it.
    #[serde(default)]
    pub listen: Option<String>,
    /// A file holding the bearer token the API's actions (stop, resume, replay) need;
    /// unset (default): the API is read-only.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl AdminConfig {
    /// The API token from `token_file` (trailing newlines dropped); None when unset.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the admin token file {}: {e}", path.display()))?;
        let token = token.trim_end_matches(['\r', '\n']);
        if token.is_empty() {
            anyhow::bail!("the admin token file {} is empty", path.display());
        }
        Ok(Some(token.to_string()))
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct PluginsDir {
    /// Every `NAME.wasm` here is loaded as plugin NAME at start and when it changes.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct HostConfig {
    /// Directory for the compile cache and the embedded Redis (default `.sluice`).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Prefix of every Redis key and group name sluice creates (default `sluice`).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// This host's consumer name in every job's group (default `<hostname>-<pid>`).
    #[serde(default)]
    pub consumer: Option<String>,
    /// Seconds to finish and commit in-flight batches after SIGTERM/SIGINT (default 10).
    #[serde(default = "default_shutdown_grace_s")]
    pub shutdown_grace_s: u64,
    /// The log filter, e.g. `info` or `info,sluice=debug` (default `info`); `SLUICE_LOG`
    /// wins. Reloaded on SIGHUP.
    #[serde(default)]
    pub log: Option<String>,
    /// `text` (default) or `json`: one JSON object per line.
    #[serde(default)]
    pub log_format: LogFormat,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            data_dir: default_data_dir(),
            prefix: default_prefix(),
            consumer: None,
            shutdown_grace_s: default_shutdown_grace_s(),
            log: None,
            log_format: LogFormat::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`, `rediss://…` or `unix:///path`. Omitted: start
    /// an embedded `redis-server` in the data dir.
    #[serde(default)]
    pub url: Option<String>,
    /// A file holding the Redis password (a mounted secret, say), used with whichever URL
    /// applies: no password need appear in this file, the environment or the command line.
    /// Trailing newlines are ignored.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// How often the embedded Redis fsyncs its append-only file: `everysec` (default: a
    /// power cut loses at most about the last second), `always` (every write, much slower),
    /// `no` (when the OS flushes).
    #[serde(default)]
    pub embedded_appendfsync: AppendFsync,
    /// The ACL user to log in as (a username in the URL wins), with the password of the URL,
    /// `password_file` or `SLUICE_REDIS_PASSWORD`.
    #[serde(default)]
    pub username: Option<String>,
    /// For `rediss://`: a PEM file of the CA that signed the server's certificate (default:
    /// the system's trusted roots).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// For `rediss://` with mutual TLS: PEM files of this client's certificate and its key.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Accept a server certificate that does not name the URL's host (default false; only
    /// for a test setup: it lets anyone with a certificate of that CA pose as the server).
    #[serde(default)]
    pub tls_insecure: bool,
    /// One attempt to connect (TCP, TLS, login) gives up after this (default 2000).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// A reply is awaited this long (on top of a blocking read's block time) before the
    /// command fails and the connection is made again (default 10000).
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// TCP keepalive: the first probe after this many idle seconds (default 30; 0: off, the
    /// OS default), then every `keepalive_interval_s` (default 10); the connection is
    /// dropped after `keepalive_count` unanswered probes (default 3).
    #[serde(default = "default_keepalive_s")]
    pub keepalive_s: u64,
    #[serde(default = "default_keepalive_interval_s")]
    pub keepalive_interval_s: u64,
    #[serde(default = "default_keepalive_count")]
    pub keepalive_count: u32,
    /// Reconnect backoff: the first delay (default 100 ms) and the longest (default 2000).
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// The protocol: `resp2` (default) or `resp3`.
    #[serde(default)]
    pub protocol: Protocol,
}

/// The Redis protocol version (`[redis] protocol`).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Resp2,
    Resp3,
}

fn default_connect_timeout_ms() -> u64 {
    2000
}
fn default_response_timeout_ms() -> u64 {
    10_000
}
fn default_keepalive_s() -> u64 {
    30
}
fn default_keepalive_interval_s() -> u64 {
    10
}
fn default_keepalive_count() -> u32 {
    3
}
fn default_reconnect_min_ms() -> u64 {
    100
}
fn default_reconnect_max_ms() -> u64 {
    2000
}

impl Default for RedisConfig {
    fn default() -> Self {
        toml::from_str("").expect("the defaults parse")
    }
}

impl RedisConfig {
    /// Every connection setting but the URL.
    pub fn connection(&self) -> Connection {
        let ms = std::time::Duration::from_millis;
        let secs = std::time::Duration::from_secs;
        Connection {
            username: self.username.clone(),
            tls: Tls {
                ca_file: self.tls_ca_file.clone(),
                cert_file: self.tls_cert_file.clone(),
                key_file: self.tls_key_file.clone(),
                insecure: self.tls_insecure,
            },
            connect_timeout: ms(self.connect_timeout_ms),
            response_timeout: ms(self.response_timeout_ms),
            keepalive: (self.keepalive_s > 0).then(|| Keepalive {
                idle: secs(self.keepalive_s),
                interval: secs(self.keepalive_interval_s),
                count: self.keepalive_count,
            }),
            reconnect_min: ms(self.reconnect_min_ms),
            reconnect_max: ms(self.reconnect_max_ms),
            resp3: self.protocol == Protocol::Resp3,
        }
    }

    /// The URL to use: `over` (`--redis`, `SLUICE_REDIS_URL`), else `url`; with the password
    /// of `password_file` put in (None: no URL, start or find the embedded Redis).
    pub fn resolve(&self, over: Option<String>) -> anyhow::Result<Option<String>> {
        self.resolve_with(over, std::env::var("SLUICE_REDIS_PASSWORD").ok())
    }

    /// [`RedisConfig::resolve`], with the password of `SLUICE_REDIS_PASSWORD` given (a
    /// `password_file` wins over it).
    fn resolve_with(
        &self,
        over: Option<String>,
        env_password: Option<String>,
    ) -> anyhow::Result<Option<String>> {
        let Some(url) = over.or_else(|| self.url.clone()) else {
            return Ok(None);
        };
        let password = match &self.password_file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!("reading the Redis password file {}: {e}", path.display())
            })?,
            None => match env_password.filter(|p| !p.is_empty()) {
                Some(password) => password,
                None => return Ok(Some(url)),
            },
        };
        with_password(&url, password.trim_end_matches(['\r', '\n']))
            .map(Some)
            .ok_or_else(|| anyhow::anyhow!("the Redis URL has no host to log in to"))
    }
}

impl RedisConfig {
    /// Check the connection settings, naming the field at fault.
    fn validate(&self) -> Result<(), (String, String)> {
        let field = |f: &str| format!("redis.{f}");
        let range = |f: &str, v: u64, lo: u64, hi: u64| {
            if v < lo || v > hi {
                Err((field(f), format!("must be {lo} to {hi}, got {v}")))
            } else {
                Ok(())
            }
        };
        range("connect_timeout_ms", self.connect_timeout_ms, 10, 300_000)?;
        range(
            "response_timeout_ms",
            self.response_timeout_ms,
            100,
            3_600_000,
        )?;
        if self.keepalive_s > 0 {
            range("keepalive_s", self.keepalive_s, 1, 7200)?;
            range("keepalive_interval_s", self.keepalive_interval_s, 1, 3600)?;
            range("keepalive_count", self.keepalive_count.into(), 1, 100)?;
        }
        range("reconnect_max_ms", self.reconnect_max_ms, 10, 600_000)?;
        range(
            "reconnect_min_ms",
            self.reconnect_min_ms,
            1,
            self.reconnect_max_ms,
        )?;
        if self.username.as_deref() == Some("") {
            return Err((field("username"), "must not be empty".into()));
        }
        let files = [
            ("tls_ca_file", &self.tls_ca_file),
            ("tls_cert_file", &self.tls_cert_file),
            ("tls_key_file", &self.tls_key_file),
        ];
        for (name, path) in files {
            if let Some(path) = path
                && !path.is_file()
            {
                return Err((field(name), format!("no such file: {}", path.display())));
            }
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err((
                field("tls_cert_file"),
                "a client certificate needs both tls_cert_file and tls_key_file".into(),
            ));
        }
        let tls_set = files.iter().any(|(_, p)| p.is_some()) || self.tls_insecure;
        if tls_set
            && let Some(url) = &self.url
            && !url.starts_with("rediss://")
        {
            return Err((
                field("url"),
                "the tls_* settings need a rediss:// URL (TLS)".into(),
            ));
        }
        Ok(())
    }
}

/// `url` with `password` as its password (percent-encoded), replacing any it had.
fn with_password(url: &str, password: &str) -> Option<String> {
    let encoded =
        percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC);
    let (scheme, rest) = url.split_once("://")?;
    if scheme == "unix" || scheme == "redis+unix" {
        let sep = if rest.contains('?') { '&' } else { '?' };
        return Some(format!("{url}{sep}pass={encoded}"));
    }
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (user, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (userinfo.split(':').next().unwrap_or_default(), host),
        None => ("", authority),
    };
    if host.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{user}:{encoded}@{host}{tail}"))
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PluginConfig {
    /// The name jobs use (`[a-zA-Z0-9_.-]`, 1–64 chars).
    pub name: String,
    /// The component file (`.wasm`).
    pub path: PathBuf,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".sluice")
}
fn default_prefix() -> String {
    "sluice".into()
}
fn default_shutdown_grace_s() -> u64 {
    10
}

/// A configuration problem, naming the field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}: {field}: {message}")]
    Invalid {
        path: String,
        field: String,
        message: String,
    },
}

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parse and validate config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: origin.into(),
            message: e.to_string().trim_end().to_string(),
        };
        let mut unknown = Vec::new();
        let config: Config = serde_ignored::deserialize(
            toml::Deserializer::parse(text).map_err(parse_error)?,
            |path| unknown.push(field_path(&path)),
        )
        .map_err(parse_error)?;
        if let Some(field) = unknown.into_iter().next() {
            return Err(ConfigError::Invalid {
                path: origin.into(),
                field,
                message: "unknown field (see examples/sluice.toml for every field)".into(),
            });
        }
        config
            .validate()
            .map_err(|(field, message)| ConfigError::Invalid {
                path: origin.into(),
                field,
                message,
            })?;
        Ok(config)
    }

    /// Check every field; on failure, the field's path and what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let h = &self.host;
        if h.prefix.is_empty() || h.prefix.contains(['{', '}', ' ']) {
            return Err((
                "host.prefix".into(),
                format!(
                    "must be non-empty, without spaces or braces, got {:?}",
                    h.prefix
                ),
            ));
        }
        if let Some(c) = &h.consumer {
            check_name(c).map_err(|m| ("host.consumer".to_string(), m))?;
        }
        if h.shutdown_grace_s > 3600 {
            return Err((
                "host.shutdown_grace_s".into(),
                format!("must be at most 3600, got {}", h.shutdown_grace_s),
            ));
        }
        if let Some(log) = &self.host.log {
            crate::logging::parse_filter(log).map_err(|m| ("host.log".to_string(), m))?;
        }
        if let Some(listen) = &self.admin.listen {
            listen.parse::<std::net::SocketAddr>().map_err(|e| {
                (
                    "admin.listen".to_string(),
                    format!("not an address like 127.0.0.1:9090 ({e}), got {listen:?}"),
                )
            })?;
        }
        if let Some(path) = &self.admin.token_file
            && !path.is_file()
        {
            return Err((
                "admin.token_file".into(),
                format!("no such file: {}", path.display()),
            ));
        }
        if self
            .redis
            .password_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(("redis.password_file".into(), "must not be empty".into()));
        }
        if let Some(url) = &self.redis.url {
            redis::Client::open(url.as_str()).map_err(|e| {
                (
                    "redis.url".to_string(),
                    format!("not a valid Redis URL: {e}"),
                )
            })?;
        }
        self.redis.validate()?;
        let mut plugin_names = HashSet::new();
        for (i, p) in self.plugins.iter().enumerate() {
            let at = |f: &str| format!("plugin[{i}].{f}");
            check_name(&p.name).map_err(|m| (at("name"), m))?;
            if !plugin_names.insert(p.name.as_str()) {
                return Err((at("name"), format!("duplicate plugin name `{}`", p.name)));
            }
            if p.path.as_os_str().is_empty() {
                return Err((at("path"), "must not be empty".into()));
            }
        }
        let mut job_names = HashSet::new();
        for (i, j) in self.jobs.iter().enumerate() {
            let at = |f: &str| format!("job[{i}].{f}");
            if !job_names.insert(j.name.as_str()) {
                return Err((at("name"), format!("duplicate job name `{}`", j.name)));
            }
            j.validate().map_err(|(f, m)| (at(&f), m))?;
            if !plugin_names.contains(j.plugin.as_str()) {
                return Err((
                    at("plugin"),
                    format!("no [[plugin]] named `{}` is configured", j.plugin),
                ));
            }
        }
        Ok(())
    }
}

/// `job[0].retry_backoff.bse_ms`, as [`Config::validate`] names fields.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => field_path(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[plugin]]
        name = "echo"
        path = "plugins/dist/echo.wasm"

        [[job]]
        name = "echo-events"
        source = "stream:events"
        plugin = "echo"
        [job.config]
        target = "events:out"
        threshold = 3
    "#;

    fn invalid(text: &str) -> String {
        match Config::parse(text, "t.toml") {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_example_with_defaults() {
        let c = Config::parse(GOOD, "t.toml").unwrap();
        assert_eq!(c.redis.url, None);
        assert_eq!(c.host.prefix, "sluice");
        let j = &c.jobs[0];
        assert_eq!(
            (j.batch, j.block_ms, j.deadline_ms, j.memory_mb),
            (256, 1000, 1000, 64)
        );
        // Where the source's stream is and the plugin's limits are tested beside the code
        // that derives them (store::keys, host::job).
        assert_eq!(j.source(), Ok(crate::model::Source::Stream("events")));
        let q = Config::parse(&GOOD.replace("stream:events", "queue:mail"), "t").unwrap();
        assert_eq!(q.jobs[0].source(), Ok(crate::model::Source::Queue("mail")));
        assert_eq!(j.plugin_config()["threshold"], "3");
        assert_eq!(
            (j.max_deliveries, j.claim_idle_ms, j.status_ttl_s),
            (5, 30_000, 86_400)
        );
        assert_eq!(
            j.delivery_policy().backoff_base,
            std::time::Duration::from_millis(1000)
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/sluice.toml");
        Config::load(&path).unwrap();
    }

    #[test]
    fn names_the_field_at_fault() {
        assert_eq!(
            invalid(&GOOD.replace("name = \"echo\"", "name = \"e cho\"")),
            "plugin[0].name"
        );
        assert_eq!(
            invalid(&format!("{GOOD}\nnested = [1]")),
            "job[0].config.nested"
        );
        assert_eq!(
            invalid(&GOOD.replace("stream:events", "events")),
            "job[0].source"
        );
        assert_eq!(
            invalid(&GOOD.replace("stream:events", "stream:a{}b")),
            "job[0].source"
        );
        Config::parse(&GOOD.replace("stream:events", "stream:orders:{eu}"), "t").unwrap();
        assert_eq!(
            invalid(&GOOD.replace("plugin = \"echo\"", "plugin = \"nope\"")),
            "job[0].plugin"
        );
        assert_eq!(
            invalid(&GOOD.replace("[job.config]", "batch = 0\n[job.config]")),
            "job[0].batch"
        );
        assert_eq!(
            invalid(&GOOD.replace("[job.config]", "memory_mb = 100000\n[job.config]")),
            "job[0].memory_mb"
        );
        assert_eq!(
            invalid(&GOOD.replace(
                "[job.config]",
                "retry_backoff = { base_ms = 500, max_ms = 100 }\n[job.config]"
            )),
            "job[0].retry_backoff.max_ms"
        );
        assert_eq!(
            invalid(&format!("[redis]\nurl = \"nope://x\"\n{GOOD}")),
            "redis.url"
        );
    }

    #[test]
    fn rejects_unknown_fields_with_their_name() {
        let err = Config::parse(
            &GOOD.replace("[job.config]", "bacth = 1\n[job.config]"),
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("bacth"), "{err}");
    }

    #[test]
    fn names_unknown_fields_by_their_whole_path() {
        assert_eq!(
            invalid(&GOOD.replace(
                "[job.config]",
                "retry_backoff = { bse_ms = 5 }\n[job.config]"
            )),
            "job[0].retry_backoff.bse_ms"
        );
        assert_eq!(
            invalid(&format!("[host]\nprefx = \"x\"\n{GOOD}")),
            "host.prefx"
        );
    }

    #[test]
    fn a_password_file_goes_into_the_url_encoded() {
        assert_eq!(
            with_password("redis://h:6380/2", "p@ss w").as_deref(),
            Some("redis://:p%40ss%20w@h:6380/2")
        );
        assert_eq!(
            with_password("rediss://app:old@h", "new").as_deref(),
            Some("rediss://app:new@h")
        );
        assert_eq!(
            with_password("unix:///run/r.sock", "x").as_deref(),
            Some("unix:///run/r.sock?pass=x")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        let r = RedisConfig {
            url: Some("redis://h".into()),
            password_file: Some(file),
            ..RedisConfig::default()
        };
        assert_eq!(
            r.resolve(None).unwrap().as_deref(),
            Some("redis://:s3cret@h")
        );
        assert_eq!(
            r.resolve(Some("redis://o:1".into())).unwrap().as_deref(),
            Some("redis://:s3cret@o:1")
        );
        // SLUICE_REDIS_PASSWORD applies when no file is configured; the file wins over it.
        let plain = RedisConfig {
            url: Some("redis://h".into()),
            ..RedisConfig::default()
        };
        assert_eq!(
            plain
                .resolve_with(None, Some("env".into()))
                .unwrap()
                .as_deref(),
            Some("redis://:env@h")
        );
        assert_eq!(
            plain.resolve_with(None, None).unwrap().as_deref(),
            Some("redis://h")
        );
        assert_eq!(
            r.resolve_with(None, Some("env".into())).unwrap().as_deref(),
            Some("redis://:s3cret@h")
        );
    }
}

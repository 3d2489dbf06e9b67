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

mod redis;

pub use redis::{Protocol, RedisConfig};

use crate::logging::LogFormat;
use crate::model::{JobSpec, check_name};

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
    /// Streams that `POST /ingest/{stream}` of the admin server may append to, each list
    /// with its token (`[[ingest]]`).
    #[serde(default)]
    pub ingest: Vec<IngestConfig>,
}

/// One allow-list of HTTP ingest: which streams a request bearing its token may append to.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct IngestConfig {
    /// Stream keys: a key (`orders`), a prefix ending in `*` (`webhooks:*`), or partitioned
    /// streams (`orders:{0..15}`, a request then names a `?key=`).
    pub streams: Vec<String>,
    /// A file holding the bearer token of these streams.
    pub token_file: PathBuf,
    /// The largest request body, in bytes (default 1 MiB, at most 64 MiB).
    #[serde(default = "default_ingest_max_bytes")]
    pub max_bytes: usize,
}

/// The default of `[[ingest]] max_bytes`: 1 MiB.
fn default_ingest_max_bytes() -> usize {
    1 << 20
}

/// The most `[[ingest]] max_bytes` may be: 64 MiB, what a stream entry can sensibly hold.
pub const MAX_INGEST_BYTES: usize = 64 << 20;

impl IngestConfig {
    /// The token from `token_file`.
    pub fn token(&self) -> anyhow::Result<String> {
        read_token(&self.token_file, "ingest")
    }
}

/// A bearer token from `path` (surrounding whitespace dropped); an empty file is an error.
fn read_token(path: &Path, what: &str) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading the {what} token file {}: {e}", path.display()))?;
    let token = token.trim();
    if token.is_empty() {
        anyhow::bail!("the {what} token file {} is empty", path.display());
    }
    Ok(token.to_string())
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct AdminConfig {
    /// Address of the admin HTTP server (`/live`, `/ready`, `/metrics`), e.g.
    /// `127.0.0.1:9090`; unset (default): no server. `sluice run --admin ADDR` overrides it.
    #[serde(default)]
    pub listen: Option<String>,
    /// A file holding the bearer token the API's and the dashboard's actions (stop, resume,
    /// replay, purge, rollback) need; unset (default): both are read-only.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Host names (besides IP addresses and `localhost`) the dashboard and the API answer
    /// to, as a browser sends them in `Host`; `"*"`: any. Guards against DNS rebinding.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

impl AdminConfig {
    /// The API token from `token_file` (surrounding whitespace dropped); None when unset.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        self.token_file
            .as_deref()
            .map(|path| read_token(path, "admin"))
            .transpose()
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
        let base = path.parent().unwrap_or(Path::new(""));
        Config::parse_at(&text, &path.display().to_string(), base)
    }

    /// Relative paths of a config file are relative to the file's directory, wherever sluice
    /// is started (the data dir too: by default `.sluice` beside the file). `--data-dir` and
    /// the other command-line paths are relative to the current directory, as usual.
    pub fn resolve_paths(&mut self, base: &Path) {
        let at = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        at(&mut self.host.data_dir);
        for plugin in &mut self.plugins {
            at(&mut plugin.path);
        }
        for ingest in &mut self.ingest {
            at(&mut ingest.token_file);
        }
        let r = &mut self.redis;
        for p in [
            &mut self.plugins_dir.dir,
            &mut self.admin.token_file,
            &mut r.password_file,
            &mut r.tls_ca_file,
            &mut r.tls_cert_file,
            &mut r.tls_key_file,
        ]
        .into_iter()
        .flatten()
        {
            at(p);
        }
    }

    /// Parse and validate config text; `origin` names it in errors. Relative paths stay
    /// relative to the current directory.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Config::parse_at(text, origin, Path::new(""))
    }

    /// [`Config::parse`], with relative paths taken from `base` (the file's directory).
    fn parse_at(text: &str, origin: &str, base: &Path) -> Result<Config, ConfigError> {
        let parse_error = |e: toml::de::Error| ConfigError::Parse {
            path: origin.into(),
            message: e.to_string().trim_end().to_string(),
        };
        let mut unknown = Vec::new();
        let mut config: Config = serde_ignored::deserialize(
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
        config.resolve_paths(base);
        config
            .validate()
            .map_err(|(field, message)| ConfigError::Invalid {
                path: origin.into(),
                field,
                message,
            })?;
        // A job over partitioned streams is a family of jobs, one per partition.
        config.jobs = config
            .jobs
            .iter()
            .flat_map(|j| j.expand().unwrap_or_default())
            .collect();
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
        if self.admin.token_file.is_some() {
            self.admin
                .token()
                .map_err(|e| ("admin.token_file".to_string(), e.to_string()))?;
        }
        for (i, name) in self.admin.allowed_hosts.iter().enumerate() {
            let fine = name == "*"
                || (!name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
            if !fine {
                return Err((
                    format!("admin.allowed_hosts[{i}]"),
                    format!("a host name (no port) or \"*\", got {name:?}"),
                ));
            }
        }
        for (i, ingest) in self.ingest.iter().enumerate() {
            let at = |f: &str| format!("ingest[{i}].{f}");
            if ingest.streams.is_empty() {
                return Err((at("streams"), "must name at least one stream".into()));
            }
            for (j, pattern) in ingest.streams.iter().enumerate() {
                check_ingest_pattern(pattern, &self.host.prefix)
                    .map_err(|m| (format!("ingest[{i}].streams[{j}]"), m))?;
            }
            if !(1..=MAX_INGEST_BYTES).contains(&ingest.max_bytes) {
                return Err((
                    at("max_bytes"),
                    format!("must be 1 to {MAX_INGEST_BYTES}, got {}", ingest.max_bytes),
                ));
            }
            ingest
                .token()
                .map_err(|e| (at("token_file"), e.to_string()))?;
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
            ::redis::Client::open(url.as_str()).map_err(|e| {
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
        for (i, family) in self.jobs.iter().enumerate() {
            let at = |f: &str| format!("job[{i}].{f}");
            // A job over partitioned streams stands for one job per partition, a job with
            // `also` sources for one per source: each is checked (and the sources together),
            // and none may share a name with another job.
            if !family.also.is_empty() {
                family.validate().map_err(|(f, m)| (at(&f), m))?;
            }
            for j in family.expand().map_err(|(f, m)| (at(&f), m))? {
                if !job_names.insert(j.name.clone()) {
                    return Err((at("name"), format!("duplicate job name `{}`", j.name)));
                }
                // Its plugin may be a [[plugin]] here, a file of [plugins] dir, or one loaded
                // into the registry with `plugin load`: a host runs the job once it has it.
                j.validate().map_err(|(f, m)| (at(&f), m))?;
                j.check_source_outside(&h.prefix)
                    .map_err(|(f, m)| (at(&f), m))?;
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

/// An `[[ingest]] streams` entry: a stream key, a prefix ending in `*`, or partitioned
/// streams; never only sluice's own keys (under `prefix:`: a request for one of those is
/// refused whatever pattern it matches).
fn check_ingest_pattern(pattern: &str, prefix: &str) -> Result<(), String> {
    if pattern.is_empty() || pattern.chars().any(char::is_control) {
        return Err(format!(
            "must be a stream key or a prefix ending in `*`, got {pattern:?}"
        ));
    }
    if pattern.strip_suffix('*').unwrap_or(pattern).contains('*') {
        return Err(format!("`*` may only end a prefix, got {pattern:?}"));
    }
    if let Some(Err(m)) = crate::model::Partitions::parse(pattern) {
        return Err(format!("{pattern:?}: {m}"));
    }
    let own = format!("{prefix}:");
    if pattern.starts_with(&own) {
        return Err(format!(
            "sluice's own keys (under `{own}`) are not for HTTP ingest, got {pattern:?}"
        ));
    }
    Ok(())
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

    #[test]
    fn relative_paths_are_the_config_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("conf").join("sluice.toml");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "a-token-of-enough-length-0123456789").unwrap();
        let text = format!(
            "[admin]\ntoken_file = \"{}\"\n[plugins]\ndir = \"wasm\"\n{GOOD}",
            token.display()
        );
        std::fs::write(&file, text).unwrap();
        let c = Config::load(&file).unwrap();
        let base = dir.path().join("conf");
        assert_eq!(c.plugins[0].path, base.join("plugins/dist/echo.wasm"));
        assert_eq!(c.plugins_dir.dir, Some(base.join("wasm")));
        assert_eq!(c.host.data_dir, base.join(".sluice"));
        // Absolute paths stay as they are.
        assert_eq!(c.admin.token_file, Some(token));
    }

    #[test]
    fn a_job_over_partitioned_streams_is_a_job_per_partition() {
        let text = GOOD.replace("stream:events", "stream:orders:{2..5}:in");
        let c = Config::parse(&text, "t").unwrap();
        let jobs: Vec<(&str, &str)> = c
            .jobs
            .iter()
            .map(|j| (j.name.as_str(), j.source.as_str()))
            .collect();
        assert_eq!(
            jobs,
            [
                ("echo-events.2", "stream:orders:{2}:in"),
                ("echo-events.3", "stream:orders:{3}:in"),
                ("echo-events.4", "stream:orders:{4}:in"),
                ("echo-events.5", "stream:orders:{5}:in"),
            ]
        );
        assert_eq!(c.jobs[3].config, c.jobs[0].config);
        let reversed = Config::parse(&GOOD.replace("stream:events", "stream:o:{5..2}"), "t");
        match reversed {
            Err(ConfigError::Invalid { field, message, .. }) => {
                assert_eq!(field, "job[0].source");
                assert!(message.contains("first ≤ last"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // A partition's job may not take another job's name.
        let clash = format!(
            "{}\n[[job]]\nname = \"echo-events.1\"\nsource = \"stream:x\"\nplugin = \"echo\"\n",
            GOOD.replace("stream:events", "stream:o:{0..1}")
        );
        assert_eq!(invalid(&clash), "job[1].name");
    }

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
        // A plugin not in the file may be in [plugins] dir or the registry: not an error.
        Config::parse(&GOOD.replace("plugin = \"echo\"", "plugin = \"nope\""), "t").unwrap();
        assert_eq!(
            invalid(&GOOD.replace("plugin = \"echo\"", "plugin = \"no pe\"")),
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
    fn the_admin_token_is_read_trimmed_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  t0k en \n").unwrap();
        let admin = AdminConfig {
            token_file: Some(file.clone()),
            ..AdminConfig::default()
        };
        assert_eq!(admin.token().unwrap().as_deref(), Some("t0k en"));
        std::fs::write(&file, " \n").unwrap();
        let text = format!("[admin]\ntoken_file = \"{}\"\n{GOOD}", file.display());
        assert_eq!(invalid(&text), "admin.token_file");
    }

    #[test]
    fn ingest_lists_are_checked_field_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "t0ken\n").unwrap();
        let ingest = |streams: &str, extra: &str| {
            format!(
                "[[ingest]]\nstreams = {streams}\ntoken_file = \"{}\"\n{extra}\n{GOOD}",
                file.display()
            )
        };
        let c = Config::parse(&ingest(r#"["in", "hooks:*", "o:{0..3}", "*"]"#, ""), "t").unwrap();
        assert_eq!(c.ingest[0].max_bytes, 1 << 20);
        assert_eq!(c.ingest[0].token().unwrap(), "t0ken");
        assert_eq!(invalid(&ingest("[]", "")), "ingest[0].streams");
        assert_eq!(
            invalid(&ingest(r#"["in", ""]"#, "")),
            "ingest[0].streams[1]"
        );
        assert_eq!(invalid(&ingest(r#"["a*b"]"#, "")), "ingest[0].streams[0]");
        assert_eq!(
            invalid(&ingest(r#"["o:{3..1}"]"#, "")),
            "ingest[0].streams[0]"
        );
        assert_eq!(
            invalid(&ingest(r#"["sluice:x"]"#, "")),
            "ingest[0].streams[0]"
        );
        assert_eq!(
            invalid(&ingest(r#"["in"]"#, "max_bytes = 0")),
            "ingest[0].max_bytes"
        );
        std::fs::write(&file, "").unwrap();
        assert_eq!(invalid(&ingest(r#"["in"]"#, "")), "ingest[0].token_file");
    }
}

//! `sluice.toml`: the typed configuration, its defaults and its validation.
//!
//! Parsing rejects unknown fields; [`Config::validate`] checks every value and names the
//! field at fault (`job[0].batch: …`). Relative paths are taken from the current directory.
//! `SLUICE_REDIS_URL` / `--redis` override `[redis] url`, `SLUICE_DATA_DIR` / `--data-dir`
//! override `[host] data_dir` (applied by the CLI).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::DeliveryPolicy;
use crate::runtime::{Limits, MAX_MEMORY_BYTES};
use crate::store::Keys;
use crate::store::stream::StartFrom;

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
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
    pub jobs: Vec<JobConfig>,
    /// A directory of plugins to load and watch (`[plugins] dir`).
    #[serde(default, rename = "plugins")]
    pub plugins_dir: PluginsDir,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginsDir {
    /// Every `NAME.wasm` here is loaded as plugin NAME at start and when it changes.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
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
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            data_dir: default_data_dir(),
            prefix: default_prefix(),
            consumer: None,
            shutdown_grace_s: default_shutdown_grace_s(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`, `rediss://…` or `unix:///path`. Omitted: start
    /// an embedded `redis-server` in the data dir.
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The name jobs use (`[a-zA-Z0-9_.-]`, 1–64 chars).
    pub name: String,
    /// The component file (`.wasm`).
    pub path: PathBuf,
}

/// A job's definition: from a `[[job]]` of the config file, or from `sluice job start`; kept
/// in the control registry as JSON.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Unique job name (`[a-zA-Z0-9_.-]`, 1–64 chars); names its consumer group and keys.
    pub name: String,
    /// The input: `stream:<key>`.
    pub source: String,
    /// The `[[plugin]]` that handles its events.
    pub plugin: String,
    /// Most entries read and committed together (1–10000, default 256).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// How long one read waits for new entries, in ms (1–60000, default 1000). Also bounds
    /// how long a stop waits for an idle job.
    #[serde(default = "default_block_ms")]
    pub block_ms: u64,
    /// Wall-clock budget of one event in the plugin, in ms (1–600000, default 1000).
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Memory cap of the plugin instance, in MiB (1–4096, default 64).
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Deliveries after which a failing event goes to the dead-letter stream (1–1000, default 5).
    #[serde(default = "default_max_deliveries")]
    pub max_deliveries: u32,
    /// Retry delays: exponential from `base_ms`, capped at `max_ms`, with jitter.
    #[serde(default)]
    pub retry_backoff: RetryBackoff,
    /// Entries pending on a consumer for longer than this (ms) are taken over by a live host
    /// (100–86400000, default 30000). Keep it well above the time one batch takes.
    #[serde(default = "default_claim_idle_ms")]
    pub claim_idle_ms: u64,
    /// How long the status record of an event that ever failed (retried, dead, or done after
    /// retries) is kept, in seconds (0 turns them off; default 86400).
    #[serde(default = "default_status_ttl_s")]
    pub status_ttl_s: u64,
    /// How long the status record of an event done on its first delivery is kept, in seconds
    /// (default 0: none; `event get` still reports such an event as done, from the consumer
    /// group). Writing them halves the throughput of a trivial job, and at 100k events/s
    /// every second of TTL is 100k keys.
    #[serde(default = "default_done_ttl_s")]
    pub done_ttl_s: u64,
    /// Streams the plugin may emit to: exact names or prefixes ending in `*`. Empty
    /// (default): any stream outside sluice's own keys (`<prefix>:…`).
    #[serde(default)]
    pub allowed_streams: Vec<String>,
    /// A new consumer group starts at the `beginning` of the stream (default) or at `new` entries.
    #[serde(default)]
    pub start: Start,
    /// A finite job finishes once its source is drained (nothing undelivered, pending or
    /// scheduled): the plugin gets `job-finished` and the job's state becomes `finished`.
    /// For one-off loads: fill the stream, then start the job (default false).
    #[serde(default)]
    pub finite: bool,
    /// Handed to the plugin's `init` and `config-get`; values may be strings, numbers or booleans.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetryBackoff {
    /// First retry delay in ms (default 1000).
    #[serde(default = "default_backoff_base_ms")]
    pub base_ms: u64,
    /// Longest retry delay in ms (default 60000).
    #[serde(default = "default_backoff_max_ms")]
    pub max_ms: u64,
}

impl Default for RetryBackoff {
    fn default() -> Self {
        RetryBackoff {
            base_ms: default_backoff_base_ms(),
            max_ms: default_backoff_max_ms(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    #[default]
    Beginning,
    New,
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
fn default_batch() -> usize {
    256
}
fn default_block_ms() -> u64 {
    1000
}
fn default_deadline_ms() -> u64 {
    1000
}
fn default_memory_mb() -> u64 {
    64
}
fn default_max_deliveries() -> u32 {
    5
}
fn default_claim_idle_ms() -> u64 {
    30_000
}
fn default_status_ttl_s() -> u64 {
    86_400
}
fn default_done_ttl_s() -> u64 {
    0
}
fn default_backoff_base_ms() -> u64 {
    1000
}
fn default_backoff_max_ms() -> u64 {
    60_000
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
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.into(),
            message: e.to_string().trim_end().to_string(),
        })?;
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
        if let Some(url) = &self.redis.url {
            redis::Client::open(url.as_str()).map_err(|e| {
                (
                    "redis.url".to_string(),
                    format!("not a valid Redis URL: {e}"),
                )
            })?;
        }
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

impl JobConfig {
    /// Check every field; on failure, the field (relative to the job) and what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let j = self;
        let at = |f: &str| f.to_string();
        check_name(&j.name).map_err(|m| (at("name"), m))?;
        parse_source(&j.source).map_err(|m| (at("source"), m))?;
        // The job's keys carry the stream's hash tag in braces; a tag holding a `}` (a key
        // like `a{}b`) would put them in another Redis Cluster slot than the stream.
        if crate::store::keys::hash_tag(&j.stream("sluice")).contains('}') {
            return Err((
                at("source"),
                format!(
                    "a stream key like this (`{{}}` that Redis Cluster ignores) is not supported, got {:?}",
                    j.source
                ),
            ));
        }
        check_name(&j.plugin).map_err(|m| (at("plugin"), m))?;
        in_range(j.batch as u64, 1, 10_000).map_err(|m| (at("batch"), m))?;
        in_range(j.block_ms, 1, 60_000).map_err(|m| (at("block_ms"), m))?;
        in_range(j.deadline_ms, 1, 600_000).map_err(|m| (at("deadline_ms"), m))?;
        in_range(j.memory_mb, 1, (MAX_MEMORY_BYTES >> 20) as u64)
            .map_err(|m| (at("memory_mb"), m))?;
        in_range(j.max_deliveries.into(), 1, 1000).map_err(|m| (at("max_deliveries"), m))?;
        in_range(j.retry_backoff.base_ms, 1, 86_400_000)
            .map_err(|m| (at("retry_backoff.base_ms"), m))?;
        in_range(j.retry_backoff.max_ms, j.retry_backoff.base_ms, 86_400_000).map_err(|m| {
            (
                at("retry_backoff.max_ms"),
                format!("{m} (at least base_ms)"),
            )
        })?;
        in_range(j.claim_idle_ms, 100, 86_400_000).map_err(|m| (at("claim_idle_ms"), m))?;
        in_range(j.status_ttl_s, 0, 31_536_000).map_err(|m| (at("status_ttl_s"), m))?;
        in_range(j.done_ttl_s, 0, 31_536_000).map_err(|m| (at("done_ttl_s"), m))?;
        for (n, pattern) in j.allowed_streams.iter().enumerate() {
            let literal = pattern.strip_suffix('*').unwrap_or(pattern);
            if literal.is_empty() || literal.contains('*') {
                return Err((
                    format!("allowed_streams[{n}]"),
                    format!("must be a stream name or a prefix ending in `*`, got {pattern:?}"),
                ));
            }
        }
        for (k, v) in &j.config {
            config_value(v).map_err(|m| (format!("config.{k}"), m))?;
        }
        Ok(())
    }

    /// The source stream key (validated by [`Config::validate`]).
    pub fn stream(&self, prefix: &str) -> String {
        match parse_source(&self.source) {
            Ok(Source::Stream(key)) => key.to_string(),
            Ok(Source::Queue(name)) => Keys::new(prefix).queue(name),
            Err(_) => String::new(),
        }
    }

    /// When the source is a sluice queue, its delayed-tasks key.
    pub fn delayed_key(&self, prefix: &str) -> Option<String> {
        match parse_source(&self.source) {
            Ok(Source::Queue(name)) => Some(Keys::delayed(&Keys::new(prefix).queue(name))),
            _ => None,
        }
    }

    /// `[job.config]` as the strings a plugin sees.
    pub fn plugin_config(&self) -> BTreeMap<String, String> {
        self.config
            .iter()
            .filter_map(|(k, v)| config_value(v).ok().map(|v| (k.clone(), v)))
            .collect()
    }

    /// The runtime limits of the job's plugin instances; `prefix` is the host's key prefix,
    /// whose keys a plugin may not write unless `allowed_streams` names them.
    pub fn limits(&self, prefix: &str) -> Limits {
        Limits {
            deadline: Duration::from_millis(self.deadline_ms),
            memory_bytes: (self.memory_mb as usize) << 20,
            allowed_streams: self.allowed_streams.clone(),
            reserved_prefix: format!("{prefix}:"),
            ..Limits::default()
        }
    }

    /// The job's retry and dead-letter policy.
    pub fn delivery_policy(&self) -> DeliveryPolicy {
        DeliveryPolicy {
            max_deliveries: self.max_deliveries,
            backoff_base: Duration::from_millis(self.retry_backoff.base_ms),
            backoff_max: Duration::from_millis(self.retry_backoff.max_ms),
        }
    }

    pub fn start_from(&self) -> StartFrom {
        match self.start {
            Start::Beginning => StartFrom::Beginning,
            Start::New => StartFrom::New,
        }
    }
}

/// Where a job's events come from.
enum Source<'a> {
    /// A Redis stream, by key.
    Stream(&'a str),
    /// A sluice queue (filled by plugins' `enqueue`), by name.
    Queue(&'a str),
}

fn parse_source(source: &str) -> Result<Source<'_>, String> {
    match source.split_once(':') {
        Some(("stream", key)) if !key.is_empty() => Ok(Source::Stream(key)),
        Some(("queue", name)) if check_name(name).is_ok() => Ok(Source::Queue(name)),
        _ => Err(format!(
            "must be `stream:<key>` or `queue:<name>` (name: 1–64 letters, digits, `_`, `-`, `.`), \
             got {source:?}"
        )),
    }
}

/// A plugin, job or consumer name: 1–64 letters, digits, `_`, `-`, `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1–64 characters of letters, digits, `_`, `-` or `.`, got {name:?}"
        ))
    }
}

fn in_range(v: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(format!("must be between {min} and {max}, got {v}"))
    }
}

fn config_value(v: &toml::Value) -> Result<String, String> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(format!(
            "must be a string, number or boolean, got a {}",
            other.type_str()
        )),
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
        assert_eq!(j.stream("sluice"), "events");
        let q = Config::parse(&GOOD.replace("stream:events", "queue:mail"), "t").unwrap();
        assert_eq!(q.jobs[0].stream("sluice"), "sluice:queue:{mail}");
        assert_eq!(
            q.jobs[0].delayed_key("sluice").as_deref(),
            Some("sluice:queue:{mail}:delayed")
        );
        assert_eq!(j.plugin_config()["threshold"], "3");
        assert_eq!(j.limits("sluice").memory_bytes, 64 << 20);
        assert_eq!(j.limits("sluice").reserved_prefix, "sluice:");
        assert_eq!(
            (j.max_deliveries, j.claim_idle_ms, j.status_ttl_s),
            (5, 30_000, 86_400)
        );
        assert_eq!(
            j.delivery_policy().backoff_base,
            Duration::from_millis(1000)
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
}

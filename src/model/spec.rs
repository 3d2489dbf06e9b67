//! A job's definition, [`JobSpec`]: what a `[[job]]` of the config file, `sluice job start`
//! and the control registry in Redis all describe, with its defaults (in one place, the
//! `default_*` functions below) and its checks.
//!
//! Decoding is lenient on purpose: a field this version does not know (written by a newer
//! CLI during a rolling upgrade) is ignored here, not an error. The config file is strict
//! (`config.rs` rejects unknown fields before it hands values over), and the registry keeps
//! unknown fields when it rewrites an entry (`store::control` patches the JSON).
//!
//! Why here and not in `config.rs`: the registry (`store/`) and the host read specs too, and
//! they must not depend on the file format.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::flow::{Aggregate, BreakerOptions, FlowOptions, MAX_AGGREGATES};
use super::policy::DeliveryPolicy;

/// Longest delay of an enqueued task (a plugin's `enqueue`, `sluice enqueue`): 30 days.
pub const MAX_DELAY_MS: u32 = 30 * 24 * 3600 * 1000;

/// Largest memory cap a job may ask for, in MiB (the runtime reserves slots this big).
pub const MAX_MEMORY_MB: u64 = 4096;

/// A job: a named binding source → plugin with its delivery policy and limits.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct JobSpec {
    /// Unique job name (`[a-zA-Z0-9_.-]`, 1–64 chars); names its consumer group and keys.
    pub name: String,
    /// The input: `stream:<key>` or `queue:<name>` (see [`Source`]).
    pub source: String,
    /// The plugin that handles its events.
    pub plugin: String,
    /// Most entries read and committed together (1–10000, default 256).
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Plugin instances handling a batch's events in parallel on one host (1–64, default 1):
    /// each takes the batch's next event from a shared cursor; the outcomes are committed as
    /// one batch, in read order. A plugin that reads job state is run on one instance
    /// whatever this says (its events see each other's writes in order).
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// How long one read waits for new entries, in ms (1–60000, default 1000). Also bounds
    /// how long a stop waits for an idle job.
    #[serde(default = "default_block_ms")]
    pub block_ms: u64,
    /// Wall-clock budget of one event in the plugin, in ms (1–600000, default 1000).
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Wall-clock budget of starting a plugin instance (instantiating it and running its
    /// `init`), in ms (1–600000, default 10000). A version whose `init` does not return in
    /// time is refused for the job.
    #[serde(default = "default_init_timeout_ms")]
    pub init_timeout_ms: u64,
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
    #[serde(default)]
    pub done_ttl_s: u64,
    /// Streams the plugin may emit to: exact names or prefixes ending in `*`. Empty
    /// (default): any stream outside sluice's own keys (`<prefix>:…`).
    #[serde(default)]
    pub allowed_streams: Vec<String>,
    /// Replicas of the Redis primary that must have a batch's writes (Redis `WAIT`) before
    /// the batch counts as committed and the job goes on (0–16, default 0: do not wait).
    /// While fewer replicas answer, the job waits (and says so in the log).
    #[serde(default)]
    pub wait_replicas: u32,
    /// How long one `WAIT` for replicas blocks, in ms (100–10000, default 1000, at most a
    /// third of `claim_idle_ms`); it is repeated until enough replicas have the writes.
    #[serde(default = "default_wait_timeout_ms")]
    pub wait_timeout_ms: u64,
    /// Largest input entry (its field names and values, in bytes) handed to the plugin
    /// (1024–536870912, default 1 MiB): a bigger one is dead-lettered unhandled.
    #[serde(default = "default_max_entry_bytes")]
    pub max_entry_bytes: usize,
    /// Queues the plugin may enqueue to: exact names or prefixes ending in `*`. Empty
    /// (default): any queue.
    #[serde(default)]
    pub allowed_queues: Vec<String>,
    /// A new consumer group starts at the `beginning` of the stream (default) or at `new` entries.
    #[serde(default)]
    pub start: Start,
    /// What becomes of source entries once handled: `keep` (default: the stream is left as
    /// producers and others trim it) or `acked`: trim the entries every consumer group on the
    /// stream has acknowledged (`XTRIM MINID` below the oldest entry some group still has
    /// pending or has not been delivered), one host at a time. A list job's stream is
    /// sluice's own and is always trimmed so.
    #[serde(default)]
    pub retention: Retention,
    /// With `retention = "acked"`: keep acknowledged entries at least this many seconds
    /// (default 0: trim them at the next pass).
    #[serde(default)]
    pub retention_keep_s: u64,
    /// With `retention = "acked"`: how often a host trims (ms, 100–3600000, default 10000).
    #[serde(default = "default_retention_every_ms")]
    pub retention_every_ms: u64,
    /// For a `list:KEY` source: the end of the list items are taken from, `right` (default:
    /// for producers that `LPUSH`, as Celery and Sidekiq do) or `left` (for `RPUSH`, as RQ
    /// does), so the oldest item goes first.
    #[serde(default)]
    pub list_pop: ListEnd,
    /// For a `scan:PATH` source: how the tree is walked (`[job.scan]`).
    #[serde(default)]
    pub scan: ScanOptions,
    /// Idempotency keys, per-key ordering, rate limits (`[job.flow]`).
    #[serde(default, skip_serializing_if = "FlowOptions::is_off")]
    pub flow: FlowOptions,
    /// The circuit breaker (`[job.breaker]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerOptions>,
    /// Thresholds on counts of its events (`[[job.aggregate]]`), each firing
    /// `threshold-reached` events to the plugin.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregate: Vec<Aggregate>,
    /// Jobs of one priority group take turns handling on each host: a turn is up to
    /// `weight` batches in a row (see [`JobSpec::weight`]). None: no group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_group: Option<String>,
    /// In a priority group: batches per turn (1–1000, default 1), its share when every
    /// job of the group has work.
    #[serde(default = "default_weight", skip_serializing_if = "is_default_weight")]
    pub weight: u32,
    /// More sources of the same job, each with its weight (`[[job.also]]`): the definition
    /// stands for a family, `<name>.0` reading `source` and `<name>.<i>` the `i`th of these,
    /// in a priority group of its own (the job's name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<AlsoSource>,
    /// A finite job finishes once its source is drained (nothing undelivered, pending or
    /// scheduled): the plugin gets `job-finished` and the job's state becomes `finished`.
    /// For one-off loads: fill the stream, then start the job (default false).
    #[serde(default)]
    pub finite: bool,
    /// For a timer (`every:`, `cron:`): due times missed while no host ran the job are each
    /// delivered (at most 1000 at once, oldest first) rather than counted in the next tick's
    /// `missed` (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub catch_up: bool,
    /// Handed to the plugin's `init` and `config-get`; values may be strings, numbers or
    /// booleans (checked by [`JobSpec::validate`]).
    #[serde(default)]
    pub config: BTreeMap<String, serde_json::Value>,
}

/// Another source of a job with priorities (`[[job.also]]`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct AlsoSource {
    pub source: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

fn is_default_weight(w: &u32) -> bool {
    *w == 1
}

/// Retry delays of a job.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
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

/// What becomes of a job's source entries once every group has acknowledged them.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Leave them (producers trim with `MAXLEN`, or nobody does).
    #[default]
    Keep,
    /// Trim them.
    Acked,
}

fn default_retention_every_ms() -> u64 {
    10_000
}

/// How a `scan:PATH` job walks its tree.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default)]
pub struct ScanOptions {
    /// Seconds from the start of one pass to the start of the next (0: no periodic passes;
    /// then the job must be `finite`, one pass). A pass still running when the next is due
    /// is reported, and the next starts when it ends.
    pub interval_s: u64,
    /// Most files looked at (stat, compared with the cache) in one walk task: a directory
    /// with more is split into tasks of this many, which any host may take (1–5000).
    pub files_per_task: usize,
    /// Every file is an event, changed or not (the cache is still written).
    pub ignore_cache: bool,
    /// Look for additions only: no deleted-file bookkeeping (a first load into an empty
    /// cache, faster).
    pub initial_ingest: bool,
    /// Also `dir-created` and `dir-deleted` events.
    pub dir_events: bool,
    /// Entries of these types are skipped (counted as excluded): `file`, `dir` (not
    /// descended into), `link`, `socket`, `fifo`, `block`, `char`.
    pub exclude_types: Vec<FileType>,
    /// Files whose name matches this regular expression are skipped.
    pub exclude_files: Option<String>,
    /// Directories whose name matches this regular expression are not descended into.
    pub exclude_dirs: Option<String>,
    /// Follow symbolic links to directories and files (default: a link is an entry of its
    /// own, with its target).
    pub follow_links: bool,
    /// Let the plugin read the tree: the root is preopened read-only in its WASI filesystem,
    /// at the same path; nothing else is.
    pub read: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            interval_s: 0,
            files_per_task: 200,
            ignore_cache: false,
            initial_ingest: false,
            dir_events: false,
            exclude_types: Vec::new(),
            exclude_files: None,
            exclude_dirs: None,
            follow_links: false,
            read: false,
        }
    }
}

/// A directory entry's type, as a scan tells them apart.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum FileType {
    File,
    Dir,
    Link,
    Socket,
    Fifo,
    Block,
    Char,
}

impl FileType {
    pub fn as_str(self) -> &'static str {
        match self {
            FileType::File => "file",
            FileType::Dir => "dir",
            FileType::Link => "link",
            FileType::Socket => "socket",
            FileType::Fifo => "fifo",
            FileType::Block => "block",
            FileType::Char => "char",
        }
    }
}

/// A scan's name pattern, compiled (bounded, so a spec cannot make a huge automaton).
pub fn scan_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("not a regular expression: {e}"))
}

/// An end of a Redis list.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ListEnd {
    Left,
    #[default]
    Right,
}

impl ListEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            ListEnd::Left => "left",
            ListEnd::Right => "right",
        }
    }
}

/// Where a new consumer group starts reading.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// Every entry already in the stream, then new ones (`XGROUP CREATE … 0`).
    #[default]
    Beginning,
    /// Only entries added after the group is created (`XGROUP CREATE … $`).
    New,
}

/// Redis's `appendfsync` choices, for the embedded Redis.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AppendFsync {
    Always,
    #[default]
    Everysec,
    No,
}

impl AppendFsync {
    pub fn as_str(self) -> &'static str {
        match self {
            AppendFsync::Always => "always",
            AppendFsync::Everysec => "everysec",
            AppendFsync::No => "no",
        }
    }
}

/// Where a job's events come from, parsed from [`JobSpec::source`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// A Redis stream, by key.
    Stream(&'a str),
    /// A sluice queue (filled by plugins' `enqueue`), by name.
    Queue(&'a str),
    /// A Redis list that producers `LPUSH`/`RPUSH` to, by key: its items are moved into the
    /// job's list stream (each in one script call, so none is lost or doubled on the way),
    /// and read from there like any stream.
    List(&'a str),
    /// A Redis pub/sub channel, by name, or a pattern of names (with `*`, `?` or `[`): its
    /// messages are appended to the job's channel stream by one subscribing host of the
    /// fleet, and read from there like any stream.
    Channel(&'a str),
    /// A directory tree, by absolute path: walked once (`finite`) or every
    /// `scan.interval_s`, each change of a file an event (see [`ScanOptions`]).
    Scan(&'a str),
    /// A timer: a `tick` event once per due time, exactly once across the fleet.
    Timer(Schedule<'a>),
}

/// When a timer job is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule<'a> {
    /// Every period (`every:30s`): at the multiples of the period since the epoch.
    Every(std::time::Duration),
    /// A cron expression (`cron:*/5 * * * *`), in UTC: five fields (minute granularity) or
    /// six (seconds first), parsed by `croner` (POSIX/Vixie, with `L`, `W`, `#` and `@hourly`
    /// style nicknames).
    Cron(&'a str),
}

impl Schedule<'_> {
    /// The cron expression parsed (`croner`), or why it is not one. The parse is cheap, and
    /// done once per run of a timer.
    pub fn cron(expr: &str) -> Result<croner::Cron, String> {
        croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(expr)
            .map_err(|e| format!("not a cron expression ({e})"))
    }
}

impl<'a> Source<'a> {
    pub fn parse(source: &'a str) -> Result<Self, String> {
        match source.split_once(':') {
            Some(("stream", key)) if !key.is_empty() => Ok(Source::Stream(key)),
            Some(("queue", name)) if check_name(name).is_ok() => Ok(Source::Queue(name)),
            Some(("list", key)) if !key.is_empty() => Ok(Source::List(key)),
            Some(("channel", name)) if !name.is_empty() => Ok(Source::Channel(name)),
            Some(("scan", path)) if path.starts_with('/') => Ok(Source::Scan(path)),
            Some(("every", period)) => match humantime::parse_duration(period) {
                Ok(p)
                    if p >= std::time::Duration::from_secs(1)
                        && p <= std::time::Duration::from_secs(366 * 86_400)
                        && p.subsec_nanos() == 0 =>
                {
                    Ok(p)
                }
                _ => Err(format!(
                    "`every:<period>` takes whole seconds from 1s to 366d (`every:30s`, \
                     `every:5m`, `every:1h`), got {source:?}"
                )),
            }
            .map(|p| Source::Timer(Schedule::Every(p))),
            Some(("cron", expr)) => {
                // `cron:"*/5 * * * *"` as the issue and shells write it, or bare.
                let expr = expr
                    .strip_prefix('"')
                    .and_then(|e| e.strip_suffix('"'))
                    .unwrap_or(expr)
                    .trim();
                Schedule::cron(expr)
                    .map(|_| Source::Timer(Schedule::Cron(expr)))
                    .map_err(|e| {
                        format!(
                            "`cron:<expression>` takes five fields (minute hour day-of-month \
                             month day-of-week), six (seconds first) or seven (and a year), in \
                             UTC, e.g. `cron:*/5 * * * *`; {source:?} is {e}"
                        )
                    })
            }
            _ => Err(format!(
                "must be `stream:<key>`, `queue:<name>` (name: 1–64 letters, digits, `_`, \
                 `-`, `.`), `list:<key>`, `channel:<name or pattern>`, `scan:<absolute \
                 path>`, `every:<period>` or `cron:<expression>`, got {source:?}"
            )),
        }
    }
}

/// A stream partitioned over several keys: `<prefix>{<first>..<last>}<suffix>`, the key of
/// partition `i` being `<prefix>{<i>}<suffix>`: each partition in a Redis Cluster slot of its
/// own (its tag is its number), so one logical stream spreads over every master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitions<'a> {
    prefix: &'a str,
    first: u32,
    last: u32,
    suffix: &'a str,
}

/// The most partitions one stream may have.
pub const MAX_PARTITIONS: u32 = 1024;

impl<'a> Partitions<'a> {
    /// The partitions `key` names, if it has a `{a..b}` range; an error for a bad range.
    pub fn parse(key: &'a str) -> Option<Result<Self, String>> {
        let open = key.find('{')?;
        let close = open + key[open..].find('}')?;
        let (a, b) = key[open + 1..close].split_once("..")?;
        let parsed = (|| {
            // Plain numbers only: a partition's key is `{<i>}`, as the number prints.
            let number = |t: &str| {
                let plain = !t.is_empty()
                    && t.bytes().all(|c| c.is_ascii_digit())
                    && (t == "0" || !t.starts_with('0'));
                plain
                    .then(|| t.parse::<u32>().ok())
                    .flatten()
                    .ok_or_else(|| format!("{t:?} is not a number without leading zeros"))
            };
            let first = number(a)?;
            let last = number(b)?;
            if first > last || last - first + 1 > MAX_PARTITIONS {
                return Err(format!(
                    "a range of partitions is {{first..last}} with first ≤ last, at most \
                     {MAX_PARTITIONS} of them, got {{{a}..{b}}}"
                ));
            }
            Ok(Partitions {
                prefix: &key[..open],
                first,
                last,
                suffix: &key[close + 1..],
            })
        })();
        Some(parsed)
    }

    /// How many partitions.
    pub fn count(&self) -> u32 {
        self.last - self.first + 1
    }

    /// The partitions' numbers.
    pub fn numbers(&self) -> std::ops::RangeInclusive<u32> {
        self.first..=self.last
    }

    /// The key of partition `i`.
    pub fn key(&self, i: u32) -> String {
        format!("{}{{{i}}}{}", self.prefix, self.suffix)
    }

    /// The key of the partition an entry with routing key `key` goes to: the key's Redis
    /// Cluster slot, modulo the number of partitions (so that producers in any language can
    /// compute it: CRC16-XMODEM of the key or its `{tag}`, mod 16384).
    pub fn of_key(&self, key: &str) -> String {
        let tag = hash_tag(key);
        let slot = u32::from(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % 16384);
        self.key(self.first + slot % self.count())
    }
}

/// Does `name` match `pattern` (an exact name, or a prefix ending in `*`)? How
/// `allowed_streams` and `allowed_queues` are read.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => name == pattern,
    }
}

/// Every default of a job, in one place: the spec's serde defaults, [`JobSpec::new`], and the
/// defaults of the runtime's limits, the delivery policy and `plugin test` all read these.
/// Most plugin instances one job runs in parallel on one host.
pub const MAX_CONCURRENCY: u32 = 64;

pub mod defaults {
    pub const BATCH: usize = 256;
    pub const BLOCK_MS: u64 = 1000;
    pub const DEADLINE_MS: u64 = 1000;
    pub const INIT_TIMEOUT_MS: u64 = 10_000;
    pub const MEMORY_MB: u64 = 64;
    pub const MAX_DELIVERIES: u32 = 5;
    pub const CLAIM_IDLE_MS: u64 = 30_000;
    pub const STATUS_TTL_S: u64 = 86_400;
    pub const DONE_TTL_S: u64 = 0;
    pub const BACKOFF_BASE_MS: u64 = 1000;
    pub const BACKOFF_MAX_MS: u64 = 60_000;
    pub const MAX_ENTRY_BYTES: usize = 1 << 20;
    pub const WAIT_TIMEOUT_MS: u64 = 1000;
}

fn default_batch() -> usize {
    defaults::BATCH
}
fn default_concurrency() -> u32 {
    1
}
fn default_block_ms() -> u64 {
    defaults::BLOCK_MS
}
fn default_deadline_ms() -> u64 {
    defaults::DEADLINE_MS
}
fn default_init_timeout_ms() -> u64 {
    defaults::INIT_TIMEOUT_MS
}
fn default_wait_timeout_ms() -> u64 {
    defaults::WAIT_TIMEOUT_MS
}
fn default_max_entry_bytes() -> usize {
    defaults::MAX_ENTRY_BYTES
}
fn default_memory_mb() -> u64 {
    defaults::MEMORY_MB
}
fn default_max_deliveries() -> u32 {
    defaults::MAX_DELIVERIES
}
fn default_claim_idle_ms() -> u64 {
    defaults::CLAIM_IDLE_MS
}
fn default_status_ttl_s() -> u64 {
    defaults::STATUS_TTL_S
}
fn default_backoff_base_ms() -> u64 {
    defaults::BACKOFF_BASE_MS
}
fn default_backoff_max_ms() -> u64 {
    defaults::BACKOFF_MAX_MS
}

impl JobSpec {
    /// A job with every default: what `[[job]]` with only these three fields means.
    pub fn new(name: &str, source: &str, plugin: &str) -> Self {
        JobSpec {
            name: name.into(),
            source: source.into(),
            plugin: plugin.into(),
            batch: default_batch(),
            concurrency: default_concurrency(),
            block_ms: default_block_ms(),
            deadline_ms: default_deadline_ms(),
            init_timeout_ms: default_init_timeout_ms(),
            memory_mb: default_memory_mb(),
            max_deliveries: default_max_deliveries(),
            retry_backoff: RetryBackoff::default(),
            claim_idle_ms: default_claim_idle_ms(),
            status_ttl_s: default_status_ttl_s(),
            done_ttl_s: defaults::DONE_TTL_S,
            allowed_streams: Vec::new(),
            allowed_queues: Vec::new(),
            max_entry_bytes: defaults::MAX_ENTRY_BYTES,
            wait_replicas: 0,
            wait_timeout_ms: defaults::WAIT_TIMEOUT_MS,
            start: Start::default(),
            retention: Retention::default(),
            retention_keep_s: 0,
            retention_every_ms: default_retention_every_ms(),
            list_pop: ListEnd::default(),
            scan: ScanOptions::default(),
            flow: FlowOptions::default(),
            breaker: None,
            aggregate: Vec::new(),
            catch_up: false,
            priority_group: None,
            weight: default_weight(),
            also: Vec::new(),
            finite: false,
            config: BTreeMap::new(),
        }
    }

    /// The parsed source ([`JobSpec::validate`] checks it parses).
    pub fn source(&self) -> Result<Source<'_>, String> {
        Source::parse(&self.source)
    }

    /// The jobs this definition stands for: itself, or, for a source of partitioned streams
    /// (`stream:orders:{0..15}`, see [`Partitions`]), one job per partition, named
    /// `<name>.<i>` and reading `orders:{<i>}`: a family sharing everything else. Each is a
    /// job like any other, with its keys in its partition's slot.
    pub fn expand(&self) -> Result<Vec<JobSpec>, (String, String)> {
        // Sources with priorities: a member per source, in a group of the job's name.
        if !self.also.is_empty() {
            let sources = std::iter::once((self.source.clone(), self.weight))
                .chain(self.also.iter().map(|a| (a.source.clone(), a.weight)));
            return Ok(sources
                .enumerate()
                .map(|(i, (source, weight))| JobSpec {
                    name: format!("{}.{i}", self.name),
                    source,
                    weight,
                    priority_group: Some(self.name.clone()),
                    also: Vec::new(),
                    ..self.clone()
                })
                .collect());
        }
        let (kind, key) = match self.source() {
            Ok(Source::Stream(key)) => ("stream", key),
            Ok(Source::List(key)) => ("list", key),
            _ => return Ok(vec![self.clone()]),
        };
        let partitions = match Partitions::parse(key) {
            None => return Ok(vec![self.clone()]),
            Some(p) => p.map_err(|m| ("source".to_string(), m))?,
        };
        Ok(partitions
            .numbers()
            .map(|i| JobSpec {
                name: format!("{}.{i}", self.name),
                source: format!("{kind}:{}", partitions.key(i)),
                ..self.clone()
            })
            .collect())
    }

    /// Check every field; on failure, the field (relative to the job) and what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let j = self;
        let at = |f: &str| f.to_string();
        check_name(&j.name).map_err(|m| (at("name"), m))?;
        let source = j.source().map_err(|m| (at("source"), m))?;
        if let Source::Stream(key) | Source::List(key) = source {
            // The job's keys carry the stream's hash tag in braces; a tag holding a `}` (a
            // key like `a{}b`) would put them in another Redis Cluster slot than the stream.
            if !tag_embeddable(key) {
                return Err((
                    at("source"),
                    format!(
                        "a key like this (`{{}}` that Redis Cluster ignores) is not \
                         supported, got {:?}",
                        j.source
                    ),
                ));
            }
        }
        if matches!(
            source,
            Source::List(_) | Source::Channel(_) | Source::Scan(_) | Source::Timer(_)
        ) && j.start == Start::New
        {
            return Err((
                at("start"),
                "a list, channel or scan job reads its own stream from its beginning: `start \
                 = \"new\"` is for streams"
                    .into(),
            ));
        }
        if let Source::Scan(_) = source {
            let s = &j.scan;
            if s.interval_s == 0 && !j.finite {
                return Err((
                    at("scan.interval_s"),
                    "a scan job walks its tree every `scan.interval_s` seconds, or once if it \
                     is `finite`: set one"
                        .into(),
                ));
            }
            if j.finite && s.interval_s > 0 {
                return Err((
                    at("scan.interval_s"),
                    "a finite scan job walks its tree once: no interval".into(),
                ));
            }
            if s.interval_s > 0 {
                in_range(s.interval_s, 1, 31_536_000).map_err(|m| (at("scan.interval_s"), m))?;
            }
            in_range(s.files_per_task as u64, 1, 5_000)
                .map_err(|m| (at("scan.files_per_task"), m))?;
            for (field, pattern) in [
                ("scan.exclude_files", &s.exclude_files),
                ("scan.exclude_dirs", &s.exclude_dirs),
            ] {
                if let Some(p) = pattern {
                    scan_regex(p).map_err(|m| (at(field), m))?;
                }
            }
        }
        if j.catch_up && !matches!(source, Source::Timer(_)) {
            return Err((
                at("catch_up"),
                "replays a timer's missed due times: only for `every:` and `cron:` sources".into(),
            ));
        }
        if matches!(source, Source::Channel(_) | Source::Timer(_)) && j.finite {
            return Err((
                at("finite"),
                "a channel or a timer never runs dry: such a job cannot be finite".into(),
            ));
        }
        j.flow.validate().map_err(|(f, m)| (at(f), m))?;
        in_range(j.weight.into(), 1, 1000).map_err(|m| (at("weight"), m))?;
        if let Some(g) = &j.priority_group {
            check_name(g).map_err(|m| (at("priority_group"), m))?;
        }
        if !j.also.is_empty() {
            if j.priority_group.is_some() {
                return Err((
                    at("priority_group"),
                    "a job with `also` sources is a priority group of its own (its name)".into(),
                ));
            }
            if j.also.len() > 15 {
                return Err((at("also"), "at most 15 more sources".into()));
            }
            for (i, a) in j.also.iter().enumerate() {
                let at_also = |f: &str| format!("also[{i}].{f}");
                if a.source == j.source || j.also[..i].iter().any(|b| b.source == a.source) {
                    return Err((
                        at_also("source"),
                        format!(
                            "{:?} is already a source of the job (its events would be \
                             handled twice)",
                            a.source
                        ),
                    ));
                }
                in_range(a.weight.into(), 1, 1000).map_err(|m| (at_also("weight"), m))?;
                let member = JobSpec {
                    source: a.source.clone(),
                    also: Vec::new(),
                    ..j.clone()
                };
                member
                    .validate()
                    .map_err(|(f, m)| (if f == "source" { at_also("source") } else { f }, m))?;
            }
            let partitioned = |s: &str| matches!(Source::parse(s), Ok(Source::Stream(k) | Source::List(k)) if Partitions::parse(k).is_some());
            if partitioned(&j.source) || j.also.iter().any(|a| partitioned(&a.source)) {
                return Err((
                    at("also"),
                    "partitioned streams and `also` sources do not mix: give each partition \
                     its own job"
                        .into(),
                ));
            }
        }
        if let Some(b) = &j.breaker {
            b.validate().map_err(|(f, m)| (at(f), m))?;
        }
        if j.aggregate.len() > MAX_AGGREGATES {
            return Err((
                at("aggregate"),
                format!("at most {MAX_AGGREGATES} aggregates per job"),
            ));
        }
        for (i, a) in j.aggregate.iter().enumerate() {
            a.validate().map_err(|(f, m)| {
                (
                    at(&f.replacen("aggregate", &format!("aggregate[{i}]"), 1)),
                    m,
                )
            })?;
            if j.aggregate[..i].iter().any(|b| b.name == a.name) {
                return Err((
                    at(&format!("aggregate[{i}].name")),
                    format!("`{}` names two aggregates", a.name),
                ));
            }
        }
        check_name(&j.plugin).map_err(|m| (at("plugin"), m))?;
        in_range(j.batch as u64, 1, 10_000).map_err(|m| (at("batch"), m))?;
        in_range(u64::from(j.concurrency), 1, MAX_CONCURRENCY as u64)
            .map_err(|m| (at("concurrency"), m))?;
        in_range(j.block_ms, 1, 60_000).map_err(|m| (at("block_ms"), m))?;
        in_range(j.deadline_ms, 1, 600_000).map_err(|m| (at("deadline_ms"), m))?;
        in_range(j.init_timeout_ms, 1, 600_000).map_err(|m| (at("init_timeout_ms"), m))?;
        in_range(j.memory_mb, 1, MAX_MEMORY_MB).map_err(|m| (at("memory_mb"), m))?;
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
        in_range(j.retention_keep_s, 0, 366 * 86_400).map_err(|m| (at("retention_keep_s"), m))?;
        in_range(j.retention_every_ms, 100, 3_600_000)
            .map_err(|m| (at("retention_every_ms"), m))?;
        in_range(j.status_ttl_s, 0, 31_536_000).map_err(|m| (at("status_ttl_s"), m))?;
        in_range(j.done_ttl_s, 0, 31_536_000).map_err(|m| (at("done_ttl_s"), m))?;
        in_range(j.max_entry_bytes as u64, 1024, 512 << 20)
            .map_err(|m| (at("max_entry_bytes"), m))?;
        in_range(j.wait_replicas.into(), 0, 16).map_err(|m| (at("wait_replicas"), m))?;
        in_range(j.wait_timeout_ms, 100, 10_000).map_err(|m| (at("wait_timeout_ms"), m))?;
        // The commit's connection also keeps in-flight entries fresh, and a WAIT holds it.
        if j.wait_replicas > 0 && j.wait_timeout_ms > j.claim_idle_ms / 3 {
            return Err((
                at("wait_timeout_ms"),
                format!(
                    "with wait_replicas, at most a third of claim_idle_ms ({} ms), got {}",
                    j.claim_idle_ms / 3,
                    j.wait_timeout_ms
                ),
            ));
        }
        for (list, patterns) in [
            ("allowed_streams", &j.allowed_streams),
            ("allowed_queues", &j.allowed_queues),
        ] {
            for (n, pattern) in patterns.iter().enumerate() {
                let literal = pattern.strip_suffix('*').unwrap_or(pattern);
                if literal.is_empty() || literal.contains('*') {
                    return Err((
                        format!("{list}[{n}]"),
                        format!("must be a name or a prefix ending in `*`, got {pattern:?}"),
                    ));
                }
            }
        }
        if let Ok(Source::Stream(own)) = j.source()
            && let Some(p) = j.allowed_streams.iter().find(|p| name_matches(p, own))
        {
            return Err((
                at("allowed_streams"),
                format!(
                    "{p:?} takes in the job's own source stream `{own}`: the job would read \
                     what it emits, without end"
                ),
            ));
        }
        for (k, v) in &j.config {
            config_value(v).map_err(|m| (format!("config.{k}"), m))?;
        }
        Ok(())
    }

    /// A source stream under sluice's own key prefix (the registry, a job's dead letters…)
    /// is not a source: refused where the prefix is known (the CLI, the config file).
    pub fn check_source_outside(&self, prefix: &str) -> Result<(), (String, String)> {
        match self.source() {
            Ok(Source::Stream(key) | Source::List(key))
                if key.starts_with(&format!("{prefix}:")) =>
            {
                Err((
                    "source".into(),
                    format!(
                        "`{key}` is one of sluice's own keys (prefix `{prefix}:`); read a stream of \
                     your own (`sluice tail --dlq JOB` follows a job's dead letters)"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// `config` as the strings a plugin sees.
    pub fn plugin_config(&self) -> BTreeMap<String, String> {
        self.config
            .iter()
            .filter_map(|(k, v)| config_value(v).ok().map(|v| (k.clone(), v)))
            .collect()
    }

    /// Whether hosts trim the job's source of acknowledged entries: with `retention =
    /// "acked"`, and always for a list or channel job (its stream is sluice's own, and its
    /// items are done with once handled, as a list's consumers expect).
    pub fn trims_source(&self) -> bool {
        self.retention == Retention::Acked
            || matches!(
                self.source(),
                Ok(Source::List(_) | Source::Channel(_) | Source::Scan(_) | Source::Timer(_))
            )
    }

    /// The job's retry and dead-letter policy.
    pub fn delivery_policy(&self) -> DeliveryPolicy {
        DeliveryPolicy {
            max_deliveries: self.max_deliveries,
            backoff_base: Duration::from_millis(self.retry_backoff.base_ms),
            backoff_max: Duration::from_millis(self.retry_backoff.max_ms),
            max_entry_bytes: self.max_entry_bytes,
        }
    }
}

/// The one name rule, for plugins, jobs, queues and consumers: 1–64 letters, digits, `_`,
/// `-`, `.` (so a name is safe inside a Redis key and a file name).
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

/// The part of a key Redis Cluster hashes: the content of the first non-empty `{…}`,
/// else the whole key.
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// Whether sluice can name keys in `key`'s Redis Cluster slot by putting its hash tag in
/// braces: not when the tag holds a brace itself (`a}b`, `x{}y`), which Redis would read as
/// another tag.
pub fn tag_embeddable(key: &str) -> bool {
    !hash_tag(key).contains(['{', '}'])
}

/// `min ≤ v ≤ max`, or what is wrong.
pub fn in_range(v: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(format!("must be between {min} and {max}, got {v}"))
    }
}

fn config_value(v: &serde_json::Value) -> Result<String, String> {
    use serde_json::Value;
    match v {
        Value::String(s) => Ok(s.clone()),
        // Whole numbers as written; other numbers as Rust shows an f64 (`3.0` → "3"), which
        // is what plugins have always been handed.
        Value::Number(n) if n.is_f64() => match n.as_f64() {
            Some(f) if f.is_finite() => Ok(f.to_string()),
            _ => Err("must be a finite number".into()),
        },
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Array(_) => Err("must be a string, number or boolean, got an array".into()),
        Value::Object(_) => Err("must be a string, number or boolean, got a table".into()),
        // TOML's `inf` and `nan` arrive as nothing: JSON (the registry) cannot hold them.
        Value::Null => Err("must be a string, finite number or boolean, got nothing".into()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn partitions_are_plain_ranges_in_braces() {
        let p = Partitions::parse("orders:{2..4}:in").unwrap().unwrap();
        assert_eq!(p.count(), 3);
        assert_eq!(p.key(3), "orders:{3}:in");
        assert!(Partitions::parse("orders:{eu}").is_none());
        assert!(Partitions::parse("orders").is_none());
        for bad in [
            "o:{007..009}",
            "o:{+1..3}",
            "o:{3..1}",
            "o:{0..5000}",
            "o:{a..b}",
        ] {
            assert!(Partitions::parse(bad).unwrap().is_err(), "{bad}");
        }
        let family = JobSpec::new("j", "stream:o:{0..1}", "p").expand().unwrap();
        let names: Vec<&str> = family.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["j.0", "j.1"]);
        assert_eq!(JobSpec::new("j", "queue:q", "p").expand().unwrap().len(), 1);
        let lists = JobSpec::new("j", "list:o:{0..1}", "p").expand().unwrap();
        let sources: Vec<&str> = lists.iter().map(|j| j.source.as_str()).collect();
        assert_eq!(sources, ["list:o:{0}", "list:o:{1}"]);
    }

    #[test]
    fn a_list_source_names_its_key_and_the_end_items_come_from() {
        let mut j = JobSpec::new("j", "list:celery", "p");
        assert_eq!(j.source(), Ok(Source::List("celery")));
        assert_eq!(j.list_pop, ListEnd::Right);
        assert!(j.trims_source());
        assert!(j.validate().is_ok());
        j.start = Start::New;
        assert_eq!(j.validate().unwrap_err().0, "start");
        assert!(JobSpec::new("j", "list:", "p").source().is_err());
        let own = JobSpec::new("j", "list:sluice:x", "p");
        assert_eq!(own.check_source_outside("sluice").unwrap_err().0, "source");
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "name": "j", "source": "list:rq", "plugin": "p", "list_pop": "left"
        }))
        .unwrap();
        assert_eq!(spec.list_pop, ListEnd::Left);
        assert!(!JobSpec::new("j", "stream:s", "p").trims_source());
        let mut c = JobSpec::new("j", "channel:news.*", "p");
        assert_eq!(c.source(), Ok(Source::Channel("news.*")));
        assert!(c.trims_source() && c.validate().is_ok());
        c.finite = true;
        assert_eq!(c.validate().unwrap_err().0, "finite");
        // A scan: an absolute path, once (finite) or every interval, never both or neither.
        let mut s = JobSpec::new("j", "scan:/data/in", "p");
        assert_eq!(s.source(), Ok(Source::Scan("/data/in")));
        assert!(JobSpec::new("j", "scan:data", "p").source().is_err());
        assert_eq!(s.validate().unwrap_err().0, "scan.interval_s");
        s.finite = true;
        assert!(s.validate().is_ok() && s.trims_source());
        s.scan.interval_s = 60;
        assert_eq!(s.validate().unwrap_err().0, "scan.interval_s");
        s.finite = false;
        assert!(s.validate().is_ok());
        s.scan.exclude_dirs = Some("(".into());
        assert_eq!(s.validate().unwrap_err().0, "scan.exclude_dirs");
        s.scan.exclude_dirs = None;
        s.scan.files_per_task = 0;
        assert_eq!(s.validate().unwrap_err().0, "scan.files_per_task");
        let parsed: JobSpec = serde_json::from_value(serde_json::json!({
            "name": "j", "source": "scan:/x", "plugin": "p",
            "scan": {"interval_s": 5, "exclude_types": ["link", "socket"]}
        }))
        .unwrap();
        assert_eq!(
            parsed.scan.exclude_types,
            [FileType::Link, FileType::Socket]
        );
        assert_eq!(parsed.scan.files_per_task, 200);
        // A timer: whole seconds, never finite.
        let mut t = JobSpec::new("j", "every:30s", "p");
        assert_eq!(
            t.source(),
            Ok(Source::Timer(Schedule::Every(
                std::time::Duration::from_secs(30)
            )))
        );
        assert!(t.validate().is_ok() && t.trims_source());
        t.finite = true;
        assert_eq!(t.validate().unwrap_err().0, "finite");
        for bad in [
            "every:",
            "every:500ms",
            "every:1.5s",
            "every:400d",
            "every:soon",
        ] {
            assert!(JobSpec::new("j", bad, "p").source().is_err(), "{bad}");
        }
        assert_eq!(
            JobSpec::new("j", "every:1h 30m", "p").source(),
            Ok(Source::Timer(Schedule::Every(
                std::time::Duration::from_secs(5400)
            )))
        );
        // A cron expression: five or six fields, quoted or not; never finite.
        for (src, expr) in [
            ("cron:*/5 * * * *", "*/5 * * * *"),
            ("cron:\"*/2 * * * * *\"", "*/2 * * * * *"),
            ("cron:@hourly", "@hourly"),
        ] {
            assert_eq!(
                JobSpec::new("j", src, "p").source(),
                Ok(Source::Timer(Schedule::Cron(expr)))
            );
        }
        for bad in ["cron:", "cron:* * *", "cron:61 * * * *", "cron:\"soon\""] {
            let e = JobSpec::new("j", bad, "p").source().unwrap_err();
            assert!(e.contains("five fields"), "{bad}: {e}");
        }
        let mut c = JobSpec::new("j", "cron:0 * * * *", "p");
        c.finite = true;
        assert_eq!(c.validate().unwrap_err().0, "finite");
        // Sources with priorities: a family; each source once; a group of its own.
        let mut p = JobSpec::new("p", "stream:hi", "x");
        p.also = vec![AlsoSource {
            source: "stream:lo".into(),
            weight: 1,
        }];
        assert!(p.validate().is_ok());
        let family = p.expand().unwrap();
        assert_eq!(family.len(), 2);
        assert_eq!(family[1].name, "p.1");
        assert_eq!(family[1].priority_group.as_deref(), Some("p"));
        p.priority_group = Some("g".into());
        assert_eq!(p.validate().unwrap_err().0, "priority_group");
        p.priority_group = None;
        p.also[0].source = "stream:hi".into();
        assert_eq!(p.validate().unwrap_err().0, "also[0].source");
        // Settings that mean nothing alone.
        let mut f = JobSpec::new("f", "stream:s", "x");
        f.flow.dedupe_ttl_s = Some(60);
        assert_eq!(f.validate().unwrap_err().0, "flow.dedupe_ttl_s");
        f.flow.dedupe_ttl_s = None;
        f.breaker = Some(super::super::flow::BreakerOptions {
            window_s: Some(10),
            ..Default::default()
        });
        assert_eq!(f.validate().unwrap_err().0, "breaker.failure_pct");
        // A channel is no key: sluice's own channels may be listened to.
        let own = JobSpec::new("j", "channel:sluice:events:x", "p");
        assert!(own.check_source_outside("sluice").is_ok());
    }

    use super::*;

    #[test]
    fn a_job_may_not_be_allowed_to_emit_to_its_own_source() {
        let mut j = JobSpec::new("j", "stream:events", "p");
        j.allowed_streams = vec!["out".into(), "ev*".into()];
        let (field, message) = j.validate().unwrap_err();
        assert_eq!(field, "allowed_streams");
        assert!(message.contains("own source stream `events`"), "{message}");
        j.allowed_streams = vec!["events:out".into()];
        assert!(j.validate().is_ok());
    }

    #[test]
    fn hash_tags_follow_redis_cluster_rules() {
        assert_eq!(hash_tag("events"), "events");
        assert_eq!(hash_tag("orders:{eu}:in"), "eu");
        assert_eq!(hash_tag("a{}b"), "a{}b");
        assert_eq!(hash_tag("a{b"), "a{b");
        assert_eq!(hash_tag("{x}{y}"), "x");
    }

    #[test]
    fn a_spec_from_a_newer_version_decodes_with_its_unknown_fields_ignored() {
        let json = r#"{"name":"j","source":"stream:s","plugin":"p","batch":8,
                       "paused_by_breaker":true,"retry_backoff":{"base_ms":5,"jitter":"full"}}"#;
        let spec: JobSpec = serde_json::from_str(json).unwrap();
        assert_eq!(spec.batch, 8);
        assert_eq!(spec.retry_backoff.base_ms, 5);
        assert_eq!(
            spec.deadline_ms,
            JobSpec::new("j", "stream:s", "p").deadline_ms
        );
    }

    #[test]
    fn config_values_are_scalars_seen_as_strings() {
        let mut spec = JobSpec::new("j", "stream:s", "p");
        spec.config.insert("n".into(), 3.into());
        spec.config.insert("f".into(), 1.5.into());
        spec.config.insert("b".into(), true.into());
        assert_eq!(spec.plugin_config()["n"], "3");
        assert_eq!(spec.plugin_config()["f"], "1.5");
        spec.config.insert("whole".into(), 3.0.into());
        assert_eq!(spec.plugin_config()["whole"], "3");
        assert_eq!(spec.plugin_config()["b"], "true");
        spec.config.insert("nested".into(), serde_json::json!([1]));
        assert_eq!(spec.validate().unwrap_err().0, "config.nested");
    }
}

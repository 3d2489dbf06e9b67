//! Every Redis key and name sluice uses, built in one place: this table is the one list (module
//! docs elsewhere name the builders they use, not the keys again).
//!
//! All keys live under a configurable prefix (default `sluice`). A job's own keys carry the
//! hash tag of its source stream, so that in Redis Cluster they share the stream's slot and
//! the commit script touches a single slot. The control registry shares the tag `{ctl}`.
//!
//! | key | type | written by | what |
//! | --- | --- | --- | --- |
//! | `<prefix>:jobs` | hash | `stream` (open) | job name → source stream key (what `job status` reads) |
//! | `<prefix>:{<tag>}:job:<job>` | hash | `stream`, `commit.lua`, `lifecycle` | the job's spec and counters: `source`, `plugin`, `group`, `started_at`, `received`, `acked`, `skipped`, `retried`, `failed`, `dead`, `conflicts` (commits refused because another host wrote what the batch read); `lifecycle_run`, `finished_run`: the run whose `job-started` / `job-finished` was issued |
//! | `<prefix>:{<tag>}:job:<job>:retry` | sorted set | `commit.lua`, `claim.lua` | entry id → when (ms since epoch) to deliver it again; the entry stays pending meanwhile |
//! | `<prefix>:{<tag>}:job:<job>:dlq` | stream | `commit.lua`, `claim.lua`, `dlq` | dead letters: `sluice:*` metadata fields, then the entry's own fields |
//! | `<prefix>:{<tag>}:job:<job>:event:<id>` | string, with a TTL | `commit.lua` | status record of a source entry: `status\|attempts\|plugin\|updated_at\|error`, status `done`, `retrying` or `dead` |
//! | `<prefix>:{<tag>}:job:<job>:lifecycle` | stream | `lifecycle` | lifecycle events `{kind, run}` (`job-started`, `job-finished`), read through the job's group before (after) its source; `…:lifecycle:retry`, `…:lifecycle:counters` and `…:lifecycle:event:<id>` are its retries, counters and status records |
//! | `<prefix>:{<tag>}:job:<job>:kv:<key>` | string | `commit.lua` | the plugin's key-value store |
//! | `<prefix>:{<tag>}:job:<job>:counter:<name>` | string (integer) | `commit.lua` | the plugin's counters |
//! | `<prefix>:{<tag>}:job:<job>:dedupe:<value>` | string, with a TTL | `commit.lua` | `flow.dedupe_by`: a committed idempotency key (value: the first event's id), kept `flow.dedupe_ttl_s` |
//! | `<prefix>:{<tag>}:job:<job>:order:<value>` | list | `order_read.lua`, `order_heads.lua`, `commit.lua` | `flow.order_by`: the ids of the key's entries delivered and not done, in stream order; only the first is handled |
//! | `<prefix>:{<tag>}:job:<job>:rate`, `…:rate:<value>` | string, with a TTL | `rate_take.lua` | `flow.rate_limit`, `flow.key_rate_limit`: the theoretical arrival time (µs, Redis's clock) of the job's (the key's) next event, GCRA |
//! | `<prefix>:{<tag>}:job:<job>:window:<name>` | sorted set | `commit.lua` | the plugin's windows: id → time (ms); entries older than a day are dropped |
//! | `<prefix>:{<tag>}:retention:<stream>` | string, with a TTL | `retention.lua` | the consumer that last trimmed the stream (`retention = "acked"`); others skip it until the TTL ends |
//! | `<prefix>:{<tag>}:held:<stream>` | sorted set | `commit.lua`, `dlq` | `<group>/<id>` → ms of `id`: source entries whose dead letter holds no copy of their fields (oversized, or too many fields to copy); retention keeps them until the dead letter is replayed or purged |
//! | `<prefix>:{<tag>}:job:<job>:outbox` | stream | `commit.lua` (through `stream::commit`), `forward` | on a Redis Cluster only: the job's effects aimed at keys of other slots, one entry per effect (`sluice:target`, `sluice:op`, its arguments), forwarded in order by one host at a time, read through group `<prefix>:forward`; `…:outbox:lock` (string, a few seconds: the forwarding host), `…:outbox:dead` (stream: entries whose target holds another type, with `sluice:error`) |
//! | `<prefix>:{<target's tag>}:forwarded:<job>@<source tag>:<target>` | string, kept a week | `forward.lua` | the id of the last outbox entry of the job forwarded to the target; in the target's slot, written in the same step as the target, so a forwarder stopped half-way never writes an entry twice |
//! | `<prefix>:queue:{<name>}` | stream | `commit.lua`, `claim.lua` | a sluice queue: entries `{payload}`, read by jobs with source `queue:<name>` |
//! | `<prefix>:queue:{<name>}:delayed` | sorted set | `commit.lua` | delayed tasks (`<job>/<event>/<n>\n<payload>` → due ms), moved to the queue by `claim.lua` when due |
//! | the source stream | stream | producers | read through consumer group `<prefix>:<job>` |
//! | streams plugins emit to | stream | `commit.lua` | written only by the commit script |
//! | `<prefix>:{ctl}:plugins` | hash | `control` | plugin name → current version, JSON `{sha256, size, loaded_at, origin, by}` |
//! | `<prefix>:{ctl}:plugin:<name>:versions` | list | `control` | the plugin's versions, newest first (at most 50) |
//! | `<prefix>:{ctl}:blob:<sha256>` | string | `control` | component bytes |
//! | `<prefix>:{ctl}:jobs` | hash | `control` | job name → JSON `{spec, state, changed_at}`; state `running`, `stopped` or `finished` |
//! | `<prefix>:{ctl}:epoch` | string | `control` | `<consumer>@<ms>` of the host that first registered into this registry; gone or changed: Redis lost its data, and hosts register their config files again |
//! | `<prefix>:{ctl}:runs` | hash | `control` | job name → its current run, raised by every `job start` |
//! | `<prefix>:{ctl}:hosts` | hash | `hosts` | consumer name → JSON `{consumer, sluice, hostname, pid, started_at, admin, stopped, jobs: {job: {version, run, stopping}}}`, a host's record, rewritten by its heartbeat (a clean stop marks it `stopped`) |
//! | `<prefix>:{ctl}:hosts:seen` | sorted set | `heartbeat.lua` | consumer name → when its host last beat (ms, Redis's clock); a host unseen for 10 s is not live, one unseen for an hour is forgotten |
//! | `<prefix>:{ctl}:refused` | hash | `control` | `<plugin>@<sha256>` → JSON `{host, reason, at}`: a version a host would not run |
//!
//! Names that are not keys:
//! - pub/sub channel `<prefix>:control`: `plugin <name>` / `job <name>` after each registry change;
//! - pub/sub channel `<prefix>:events:<job>` (and `…:lifecycle`): one JSON message per commit,
//!   `{"done":[ids…],"dead":[ids…]}`, listing the entries that reached a final state;
//! - consumer group of a job on its source (and lifecycle) stream: `<prefix>:<job>`;
//! - consumer name of a host: `[host] consumer`, else `<hostname>-<pid>`.

use crate::model::{JobSpec, Source, hash_tag};

/// Bytes as a part of a key, one-to-one: a value that is not UTF-8 has its other bytes and
/// `%` percent-encoded (`x%FF`); a UTF-8 one has only its `%` encoded (`100%25`).
pub fn key_part(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.replace('%', "%25"),
        Err(_) => {
            const OTHER: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');
            percent_encoding::percent_encode(bytes, OTHER).to_string()
        }
    }
}

/// Builds keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The control registry's keys share the hash tag `{ctl}`: one slot in Redis Cluster.
    fn ctl(&self, rest: &str) -> String {
        format!("{}:{{ctl}}:{rest}", self.prefix)
    }

    /// Hash: plugin name → its current version (JSON).
    pub fn ctl_plugins(&self) -> String {
        self.ctl("plugins")
    }

    /// List: a plugin's versions, newest first (JSON).
    pub fn ctl_versions(&self, plugin: &str) -> String {
        self.ctl(&format!("plugin:{plugin}:versions"))
    }

    /// String: a component's bytes, by sha256.
    pub fn ctl_blob(&self, sha256: &str) -> String {
        self.ctl(&format!("blob:{sha256}"))
    }

    /// Hash: job name → its definition and state (JSON).
    pub fn ctl_jobs(&self) -> String {
        self.ctl("jobs")
    }

    /// String: the registry's epoch, set once when a host first registers into an empty
    /// registry; a host that sees it vanish or change knows Redis lost (or replaced) its data.
    pub fn ctl_epoch(&self) -> String {
        self.ctl("epoch")
    }

    /// Hash: job name → its current run (a counter only `job start` raises).
    pub fn ctl_runs(&self) -> String {
        self.ctl("runs")
    }

    /// Hash: `<plugin>@<sha256>` → why a host refused that version (JSON).
    pub fn ctl_refused(&self) -> String {
        self.ctl("refused")
    }

    /// Hash: consumer name → a host's record (JSON), refreshed by its heartbeat.
    pub fn ctl_hosts(&self) -> String {
        self.ctl("hosts")
    }

    /// Sorted set: consumer name → when its host last beat (ms, Redis's clock).
    pub fn ctl_hosts_seen(&self) -> String {
        self.ctl("hosts:seen")
    }

    /// Pub/sub channel announcing registry changes.
    pub fn ctl_channel(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// Hash of every job's name → its source stream.
    pub fn jobs(&self) -> String {
        format!("{}:jobs", self.prefix)
    }

    /// The job's spec and counters hash, in the slot of its source stream.
    pub fn job(&self, job: &str, source: &str) -> String {
        format!("{}:{{{}}}:job:{job}", self.prefix, hash_tag(source))
    }

    /// The stream of a job's lifecycle events (`job-started`, `job-finished`), read through
    /// the job's group; in the job's slot.
    pub fn lifecycle(&self, job: &str, source: &str) -> String {
        format!("{}:lifecycle", self.job(job, source))
    }

    /// The lock of trimming a source stream (`retention = "acked"`): the consumer name of
    /// the host that trimmed it last, for `retention_every_ms`; in the stream's slot.
    pub fn retention_lock(&self, stream: &str) -> String {
        format!(
            "{}:{{{}}}:retention:{stream}",
            self.prefix,
            hash_tag(stream)
        )
    }

    /// Sorted set of the source entries dead letters refer to instead of holding a copy of
    /// their fields (`<group>/<id>` → the id's ms): retention keeps them; in the stream's slot.
    pub fn held(&self, stream: &str) -> String {
        format!("{}:{{{}}}:held:{stream}", self.prefix, hash_tag(stream))
    }

    /// Stream: on a Redis Cluster, a job's effects aimed at keys of other slots, one entry
    /// each, forwarded to them by [`crate::store::forward`]; in the job's slot.
    pub fn outbox(&self, job: &str, source: &str) -> String {
        format!("{}:outbox", self.job(job, source))
    }

    /// String: the host forwarding a job's outbox, for a few seconds at a time.
    pub fn outbox_lock(&self, job: &str, source: &str) -> String {
        format!("{}:outbox:lock", self.job(job, source))
    }

    /// Stream: outbox entries that could not be forwarded (their target holds another type),
    /// with the error; in the job's slot.
    pub fn outbox_dead(&self, job: &str, source: &str) -> String {
        format!("{}:outbox:dead", self.job(job, source))
    }

    /// The consumer group the forwarders read outboxes with.
    pub fn outbox_group(&self) -> String {
        format!("{}:forward", self.prefix)
    }

    /// String: the id of the last outbox entry of `job` (on `source`) forwarded to `target`;
    /// in `target`'s slot.
    pub fn forwarded(&self, target: &str, job: &str, source: &str) -> String {
        format!(
            "{}:{{{}}}:forwarded:{job}@{}:{target}",
            self.prefix,
            hash_tag(target),
            hash_tag(source)
        )
    }

    /// The sorted set of a job's scheduled retries.
    pub fn retry(&self, job: &str, source: &str) -> String {
        format!("{}:retry", self.job(job, source))
    }

    /// The dead-letter stream of a job.
    pub fn dlq(&self, job: &str, source: &str) -> String {
        format!("{}:dlq", self.job(job, source))
    }

    /// Prefix of a job's event status records; the record of entry `id` is this + `id`.
    pub fn event_prefix(&self, job: &str, source: &str) -> String {
        format!("{}:event:", self.job(job, source))
    }

    /// The pub/sub channel announcing a job's finished events.
    pub fn events_channel(&self, job: &str) -> String {
        format!("{}:events:{job}", self.prefix)
    }

    /// A key of the job's key-value store (the plugin's name `key`).
    pub fn kv(job_key: &str, key: &str) -> String {
        format!("{job_key}:kv:{key}")
    }

    /// A job counter.
    pub fn counter(job_key: &str, name: &str) -> String {
        format!("{job_key}:counter:{name}")
    }

    /// A job window (sorted set of ids scored by time).
    pub fn window(job_key: &str, name: &str) -> String {
        format!("{job_key}:window:{name}")
    }

    /// The stream of sluice queue `name` (its own hash tag).
    pub fn queue(&self, name: &str) -> String {
        format!("{}:queue:{{{name}}}", self.prefix)
    }

    /// The stream a `channel:NAME` job's subscriber appends the messages to: the job's own
    /// (two jobs on one channel each get every message), tagged with the job's name.
    pub fn channel_stream(&self, job: &str) -> String {
        format!("{}:channel:{{{job}}}", self.prefix)
    }

    /// The lease of a channel job's subscription: the token of the one subscriber of the
    /// fleet whose messages are appended (in the channel stream's slot).
    pub fn channel_lease(&self, job: &str) -> String {
        format!("{}:lease", self.channel_stream(job))
    }

    /// A `scan:PATH` job's stream: the file changes its walkers found, as events.
    pub fn scan_stream(&self, job: &str) -> String {
        format!("{}:scan:{{{job}}}", self.prefix)
    }

    /// A timer job's stream: its `tick` events, one per due time.
    pub fn timer_stream(&self, job: &str) -> String {
        format!("{}:timer:{{{job}}}", self.prefix)
    }

    /// A scan job's walk: one entry per directory (or batch of a large directory's files)
    /// still to be looked at in the current pass, read by the job's walkers through its
    /// group; a task leaves it once done.
    pub fn scan_tasks(&self, job: &str) -> String {
        format!("{}:tasks", self.scan_stream(job))
    }

    /// A scan job's change cache for directory `dir` (relative to the root; empty for the
    /// root): a hash of entry name → what it was when last handled (`<type letter>:<size>:
    /// <mtime ns>:<ctime ns>` for files, links and others; `d` for a subdirectory). A name
    /// that is not UTF-8 has its other bytes and `%` percent-encoded (`x%FF`); a UTF-8 one
    /// has only its `%` encoded (`100%25`): two directories never share a cache.
    pub fn scan_seen(&self, job: &str, dir: &[u8]) -> String {
        format!("{}:seen:{}", self.scan_stream(job), key_part(dir))
    }

    /// The stream the items of Redis list `key` are moved into for a `list:KEY` job: in the
    /// list's slot (its hash tag in braces, then the key itself if it has a tag of its own).
    pub fn list_stream(&self, key: &str) -> String {
        let tag = hash_tag(key);
        if tag == key {
            format!("{}:list:{{{key}}}", self.prefix)
        } else {
            format!("{}:list:{{{tag}}}:{key}", self.prefix)
        }
    }

    /// The list a list stream is fed from (None for any other key): the inverse of
    /// [`Keys::list_stream`].
    pub fn list_of_stream(&self, stream: &str) -> Option<String> {
        let rest = stream.strip_prefix(&format!("{}:list:{{", self.prefix))?;
        let (tag, after) = rest.split_once('}')?;
        match after.strip_prefix(':') {
            Some(key) => Some(key.to_string()),
            None if after.is_empty() => Some(tag.to_string()),
            None => None,
        }
    }

    /// Delayed tasks of a queue stream: payload member → due time.
    pub fn delayed(queue_stream: &str) -> String {
        format!("{queue_stream}:delayed")
    }

    /// The stream a job reads: its source stream, or its queue's stream.
    pub fn source_stream(&self, spec: &JobSpec) -> String {
        match spec.source() {
            Ok(Source::Stream(key)) => key.to_string(),
            Ok(Source::Queue(name)) => self.queue(name),
            Ok(Source::List(key)) => self.list_stream(key),
            Ok(Source::Channel(_)) => self.channel_stream(&spec.name),
            Ok(Source::Scan(_)) => self.scan_stream(&spec.name),
            Ok(Source::Timer(_)) => self.timer_stream(&spec.name),
            // Specs are validated before they are run; an invalid one reads nothing real.
            Err(_) => String::new(),
        }
    }

    /// When a job's source is a sluice queue, its delayed-tasks key.
    pub fn delayed_of(&self, spec: &JobSpec) -> Option<String> {
        match spec.source() {
            Ok(Source::Queue(name)) => Some(Keys::delayed(&self.queue(name))),
            _ => None,
        }
    }

    /// What feeds a job's source stream besides producers' appends, whose items keep a
    /// finite job from finishing: a queue's delayed tasks (a sorted set), a list source's
    /// list.
    pub fn upstream_of(&self, spec: &JobSpec) -> Option<String> {
        match spec.source() {
            Ok(Source::List(key)) => Some(key.to_string()),
            // A pass's walk tasks still to do (a stream emptied as they are done).
            Ok(Source::Scan(_)) => Some(self.scan_tasks(&spec.name)),
            _ => self.delayed_of(spec),
        }
    }

    /// The consumer group a job reads its source stream with.
    pub fn group(&self, job: &str) -> String {
        format!("{}:{job}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jobs_source_is_a_stream_or_a_queues_stream() {
        let k = Keys::new("sluice");
        let j = JobSpec::new("j", "stream:events", "echo");
        assert_eq!(k.source_stream(&j), "events");
        assert_eq!(k.delayed_of(&j), None);
        let q = JobSpec::new("j", "queue:mail", "echo");
        assert_eq!(k.source_stream(&q), "sluice:queue:{mail}");
        assert_eq!(
            k.delayed_of(&q).as_deref(),
            Some("sluice:queue:{mail}:delayed")
        );
    }

    #[test]
    fn a_list_job_reads_a_stream_in_its_lists_slot() {
        let k = Keys::new("sluice");
        let j = JobSpec::new("j", "list:celery", "echo");
        assert_eq!(k.source_stream(&j), "sluice:list:{celery}");
        assert_eq!(k.upstream_of(&j).as_deref(), Some("celery"));
        let tagged = JobSpec::new("j", "list:jobs:{eu}", "echo");
        let stream = k.source_stream(&tagged);
        assert_eq!(stream, "sluice:list:{eu}:jobs:{eu}");
        assert_eq!(hash_tag(&stream), hash_tag("jobs:{eu}"));
        for list in ["celery", "jobs:{eu}", "a:b"] {
            assert_eq!(
                k.list_of_stream(&k.list_stream(list)).as_deref(),
                Some(list)
            );
        }
        assert_eq!(k.list_of_stream("events"), None);
        assert_eq!(k.list_of_stream("sluice:list:{a}b"), None);
        let c = JobSpec::new("news", "channel:news.*", "echo");
        assert_eq!(k.source_stream(&c), "sluice:channel:{news}");
        assert_eq!(k.channel_lease("news"), "sluice:channel:{news}:lease");
        assert_eq!(k.upstream_of(&c), None);
        // Every directory its own cache, whatever bytes its name is made of.
        assert_eq!(k.scan_seen("s", b""), "sluice:scan:{s}:seen:");
        assert_eq!(
            k.scan_seen("s", "a/été".as_bytes()),
            "sluice:scan:{s}:seen:a/été"
        );
        assert_eq!(k.scan_seen("s", b"x\xff"), "sluice:scan:{s}:seen:x%FF");
        assert_eq!(k.scan_seen("s", b"x%FF"), "sluice:scan:{s}:seen:x%25FF");
        assert_ne!(k.scan_seen("s", b"x\xfe"), k.scan_seen("s", b"x\xff"));
        // A queue's delayed set feeds it as a list feeds a list job.
        let q = JobSpec::new("j", "queue:mail", "echo");
        assert_eq!(k.upstream_of(&q), k.delayed_of(&q));
    }

    #[test]
    fn job_keys_share_the_sources_slot() {
        let k = Keys::new("sluice");
        assert_eq!(k.job("echo", "events"), "sluice:{events}:job:echo");
        assert_eq!(k.job("echo", "o:{eu}"), "sluice:{eu}:job:echo");
        assert_eq!(k.group("echo"), "sluice:echo");
        assert_eq!(k.jobs(), "sluice:jobs");
        assert_eq!(k.retry("echo", "events"), "sluice:{events}:job:echo:retry");
        assert_eq!(k.dlq("echo", "events"), "sluice:{events}:job:echo:dlq");
        assert_eq!(
            k.event_prefix("echo", "events"),
            "sluice:{events}:job:echo:event:"
        );
        assert_eq!(k.events_channel("echo"), "sluice:events:echo");
        assert_eq!(k.queue("mail"), "sluice:queue:{mail}");
        assert_eq!(
            Keys::delayed(&k.queue("mail")),
            "sluice:queue:{mail}:delayed"
        );
        assert_eq!(hash_tag(&k.queue("mail")), "mail");
        let job = k.job("echo", "events");
        assert_eq!(Keys::kv(&job, "a"), "sluice:{events}:job:echo:kv:a");
        assert_eq!(
            Keys::counter(&job, "w"),
            "sluice:{events}:job:echo:counter:w"
        );
        assert_eq!(Keys::window(&job, "w"), "sluice:{events}:job:echo:window:w");
        assert_eq!(
            k.outbox("echo", "events"),
            "sluice:{events}:job:echo:outbox"
        );
        // The mark of what was forwarded lives with its target.
        let mark = k.forwarded("out:{eu}", "echo", "events");
        assert_eq!(mark, "sluice:{eu}:forwarded:echo@events:out:{eu}");
        assert_eq!(hash_tag(&mark), hash_tag("out:{eu}"));
    }
}

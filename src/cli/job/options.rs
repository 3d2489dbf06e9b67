//! Every field of a job's definition as a command-line option, for `job start` and `job
//! update`.

use anyhow::Context as _;

use crate::model::JobSpec;

/// Every field of a job's definition but its name, source and plugin (the `[[job]]` fields
/// of the config file; README lists what each means). Unset options leave the field as it
/// is: the default for a new job, the stored value for `update` and a restart.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JobOptions {
    /// Set a key of the plugin's config, as KEY=VALUE (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub plugin_config: Vec<String>,
    /// Remove a key of the plugin's config (repeatable)
    #[arg(long = "unset", value_name = "KEY")]
    pub unset: Vec<String>,
    /// Entries per batch
    #[arg(long)]
    pub batch: Option<usize>,
    /// Plugin instances handling a batch in parallel on each host
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// How long one read waits for new entries, in ms
    #[arg(long)]
    pub block_ms: Option<u64>,
    /// Per-event deadline in ms
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Budget of starting an instance (instantiating it and running `init`), in ms
    #[arg(long)]
    pub init_timeout_ms: Option<u64>,
    /// Plugin memory cap in MiB
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// Deliveries before an event is dead-lettered
    #[arg(long)]
    pub max_deliveries: Option<u32>,
    /// First retry delay in ms (`retry_backoff.base_ms`)
    #[arg(long)]
    pub retry_base_ms: Option<u64>,
    /// Longest retry delay in ms (`retry_backoff.max_ms`)
    #[arg(long)]
    pub retry_max_ms: Option<u64>,
    /// Entries idle this long (ms) on a consumer are taken over by a live host
    #[arg(long)]
    pub claim_idle_ms: Option<u64>,
    /// Keep the status record of an event that ever failed this many seconds (0: none)
    #[arg(long)]
    pub status_ttl_s: Option<u64>,
    /// Keep a status record of every event this many seconds (0: only of events that failed)
    #[arg(long)]
    pub done_ttl_s: Option<u64>,
    /// Streams the plugin may emit to, comma-separated names or prefixes ending in `*`
    /// ("": any stream outside sluice's keys)
    #[arg(long, value_name = "LIST")]
    pub allowed_streams: Option<String>,
    /// Queues the plugin may enqueue to, comma-separated ("": any)
    #[arg(long, value_name = "LIST")]
    pub allowed_queues: Option<String>,
    /// Replicas that must have a batch's writes before it counts as committed
    #[arg(long)]
    pub wait_replicas: Option<u32>,
    /// How long one WAIT for replicas blocks, in ms
    #[arg(long)]
    pub wait_timeout_ms: Option<u64>,
    /// Largest input entry handed to the plugin, in bytes
    #[arg(long)]
    pub max_entry_bytes: Option<usize>,
    /// Where a new group starts: beginning or new
    #[arg(long)]
    pub start: Option<String>,
    /// `acked`: trim source entries every consumer group acknowledged; `keep` (default)
    #[arg(long)]
    pub retention: Option<String>,
    /// With `--retention acked`: keep acknowledged entries at least this many seconds
    #[arg(long)]
    pub retention_keep_s: Option<u64>,
    /// With `--retention acked`: how often a host trims, in ms
    #[arg(long)]
    pub retention_every_ms: Option<u64>,
    /// For a `list:KEY` source: the end items are taken from, `right` (default, for
    /// producers that LPUSH) or `left` (for RPUSH)
    #[arg(long, value_name = "END")]
    pub list_pop: Option<String>,
    /// For a `scan:PATH` source: seconds between passes (0: one pass, with --finite)
    #[arg(long, value_name = "SECONDS")]
    pub interval_s: Option<u64>,
    /// For a scan: most files looked at per walk task (a larger directory is split)
    #[arg(long)]
    pub files_per_task: Option<usize>,
    /// For a scan: every file is an event, changed or not
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub ignore_cache: Option<bool>,
    /// For a scan: look for additions only, no deleted-file bookkeeping
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub initial_ingest: Option<bool>,
    /// For a scan: also dir-created and dir-deleted events
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub dir_events: Option<bool>,
    /// For a scan: entry types to skip, comma-separated (file, dir, link, socket, fifo,
    /// block, char)
    #[arg(long, value_name = "LIST")]
    pub exclude_types: Option<String>,
    /// For a scan: skip files whose name matches this regular expression
    #[arg(long, value_name = "REGEX")]
    pub exclude_files: Option<String>,
    /// For a scan: do not descend into directories whose name matches this regular expression
    #[arg(long, value_name = "REGEX")]
    pub exclude_dirs: Option<String>,
    /// For a scan: follow symbolic links
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub follow_links: Option<bool>,
    /// For a scan: let the plugin read the tree (read-only, the root at its own path)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub read: Option<bool>,
    /// Acknowledge an event whose value of this field was already committed as a duplicate,
    /// without running the plugin ("": off)
    #[arg(long, value_name = "FIELD")]
    pub dedupe_by: Option<String>,
    /// How long a committed idempotency key is remembered, in seconds
    #[arg(long)]
    pub dedupe_ttl_s: Option<u64>,
    /// Handle events with the same value of this field one at a time, in stream order,
    /// across the fleet ("": off)
    #[arg(long, value_name = "FIELD")]
    pub order_by: Option<String>,
    /// Most events the job handles across the fleet: 200/s, 1000/m, 36000/h ("": none)
    #[arg(long, value_name = "RATE")]
    pub rate_limit: Option<String>,
    /// Most events of one value of --rate-key: 5/s ("": none)
    #[arg(long, value_name = "RATE")]
    pub key_rate_limit: Option<String>,
    /// The field whose values --key-rate-limit counts apart ("": none)
    #[arg(long, value_name = "FIELD")]
    pub rate_key: Option<String>,
    /// Pause the job when more than this percentage of the deliveries over the breaker's
    /// window failed (0: no breaker)
    #[arg(long, value_name = "PCT")]
    pub breaker_failure_pct: Option<u32>,
    /// The breaker's window, in seconds
    #[arg(long, value_name = "SECONDS")]
    pub breaker_window_s: Option<u64>,
    /// Fewest deliveries in the window before the breaker may trip
    #[arg(long, value_name = "N")]
    pub breaker_min_events: Option<u64>,
    /// Take turns handling with the other jobs of this priority group on each host ("": none)
    #[arg(long, value_name = "GROUP")]
    pub priority_group: Option<String>,
    /// In a priority group: batches per turn, the job's share when every job has work
    #[arg(long)]
    pub weight: Option<u32>,
    /// A threshold firing `threshold-reached` to the plugin, as
    /// name=N,count=C,within_s=S[,key_by=FIELD][,sliding][,idle_s=S] (repeatable: the given
    /// ones replace the job's; `none` removes them all)
    #[arg(long, value_name = "SPEC")]
    pub aggregate: Vec<String>,
    /// For a timer: deliver each due time missed while no host ran the job (at most 1000),
    /// rather than count them in the next tick
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub catch_up: Option<bool>,
    /// Finish once the source is drained (the plugin gets `job-finished`); `--finite=false`
    /// turns it off
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub finite: Option<bool>,
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl JobOptions {
    /// Apply the options given to `spec`, then check it as `job start` and a `[[job]]` are.
    pub fn apply(&self, spec: &mut JobSpec) -> anyhow::Result<()> {
        fn set<T: Copy>(field: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *field = v;
            }
        }
        set(&mut spec.batch, self.batch);
        set(&mut spec.concurrency, self.concurrency);
        set(&mut spec.block_ms, self.block_ms);
        set(&mut spec.deadline_ms, self.deadline_ms);
        set(&mut spec.init_timeout_ms, self.init_timeout_ms);
        set(&mut spec.memory_mb, self.memory_mb);
        set(&mut spec.max_deliveries, self.max_deliveries);
        set(&mut spec.retry_backoff.base_ms, self.retry_base_ms);
        set(&mut spec.retry_backoff.max_ms, self.retry_max_ms);
        set(&mut spec.claim_idle_ms, self.claim_idle_ms);
        set(&mut spec.status_ttl_s, self.status_ttl_s);
        set(&mut spec.done_ttl_s, self.done_ttl_s);
        set(&mut spec.wait_replicas, self.wait_replicas);
        set(&mut spec.wait_timeout_ms, self.wait_timeout_ms);
        set(&mut spec.max_entry_bytes, self.max_entry_bytes);
        set(&mut spec.retention_keep_s, self.retention_keep_s);
        set(&mut spec.retention_every_ms, self.retention_every_ms);
        set(&mut spec.finite, self.finite);
        set(&mut spec.catch_up, self.catch_up);
        set(&mut spec.weight, self.weight);
        if let Some(g) = &self.priority_group {
            spec.priority_group = (!g.is_empty()).then(|| g.clone());
        }
        set(&mut spec.scan.interval_s, self.interval_s);
        set(&mut spec.scan.files_per_task, self.files_per_task);
        set(&mut spec.scan.ignore_cache, self.ignore_cache);
        set(&mut spec.scan.initial_ingest, self.initial_ingest);
        set(&mut spec.scan.dir_events, self.dir_events);
        set(&mut spec.scan.follow_links, self.follow_links);
        set(&mut spec.scan.read, self.read);
        if let Some(types) = &self.exclude_types {
            spec.scan.exclude_types = list(types)
                .iter()
                .map(|t| {
                    serde_json::from_value(t.as_str().into()).with_context(|| {
                        format!(
                            "invalid job: --exclude-types takes file, dir, link, socket, fifo, \
                             block or char, got {t:?}"
                        )
                    })
                })
                .collect::<anyhow::Result<_>>()?;
        }
        // An empty pattern takes the exclude away.
        if let Some(p) = &self.exclude_files {
            spec.scan.exclude_files = (!p.is_empty()).then(|| p.clone());
        }
        if let Some(p) = &self.exclude_dirs {
            spec.scan.exclude_dirs = (!p.is_empty()).then(|| p.clone());
        }
        if let Some(streams) = &self.allowed_streams {
            spec.allowed_streams = list(streams);
        }
        if let Some(queues) = &self.allowed_queues {
            spec.allowed_queues = list(queues);
        }
        if let Some(start) = &self.start {
            spec.start = serde_json::from_value(start.as_str().into()).with_context(|| {
                format!("invalid job: --start must be `beginning` or `new`, got {start:?}")
            })?;
        }
        if let Some(retention) = &self.retention {
            spec.retention =
                serde_json::from_value(retention.as_str().into()).with_context(|| {
                    format!("invalid job: --retention must be `keep` or `acked`, got {retention:?}")
                })?;
        }
        if let Some(end) = &self.list_pop {
            spec.list_pop = serde_json::from_value(end.as_str().into()).with_context(|| {
                format!("invalid job: --list-pop must be `left` or `right`, got {end:?}")
            })?;
        }
        // An empty value takes the setting away.
        let text = |v: &String| (!v.is_empty()).then(|| v.clone());
        let flow = &mut spec.flow;
        for (field, option) in [
            (&mut flow.dedupe_by, &self.dedupe_by),
            (&mut flow.order_by, &self.order_by),
            (&mut flow.rate_limit, &self.rate_limit),
            (&mut flow.key_rate_limit, &self.key_rate_limit),
            (&mut flow.rate_key, &self.rate_key),
        ] {
            if let Some(v) = option {
                *field = text(v);
            }
        }
        if self.dedupe_ttl_s.is_some() {
            flow.dedupe_ttl_s = self.dedupe_ttl_s;
        }
        if let Some(pct) = self.breaker_failure_pct {
            match pct {
                0 => spec.breaker = None,
                pct => {
                    spec.breaker
                        .get_or_insert_with(Default::default)
                        .failure_pct = Some(pct)
                }
            }
        }
        if self.breaker_window_s.is_some() || self.breaker_min_events.is_some() {
            let b = spec.breaker.as_mut().context(
                "invalid job: --breaker-window-s and --breaker-min-events need a breaker \
                 (--breaker-failure-pct)",
            )?;
            if self.breaker_window_s.is_some() {
                b.window_s = self.breaker_window_s;
            }
            if self.breaker_min_events.is_some() {
                b.min_events = self.breaker_min_events;
            }
        }
        if !self.aggregate.is_empty() {
            spec.aggregate = self
                .aggregate
                .iter()
                .filter(|a| a.as_str() != "none")
                .map(|a| {
                    crate::model::Aggregate::parse(a)
                        .map_err(|m| anyhow::anyhow!("invalid job: --aggregate {a:?}: {m}"))
                })
                .collect::<anyhow::Result<_>>()?;
        }
        for key in &self.unset {
            spec.config.remove(key);
        }
        for kv in &self.plugin_config {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--set takes KEY=VALUE, got {kv:?}"))?;
            spec.config.insert(k.into(), v.into());
        }
        spec.validate()
            .map_err(|(field, message)| anyhow::anyhow!("invalid job: {field}: {message}"))
    }
}

/// The job a `job start` of a new job describes, with the defaults and checks of a `[[job]]`.
pub fn job_spec(name: &str, source: &str, plugin: &str, o: &JobOptions) -> anyhow::Result<JobSpec> {
    let mut spec = JobSpec::new(name, source, plugin);
    o.apply(&mut spec)?;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// Every field of a job's definition can be set from the command line.
    #[test]
    fn every_spec_field_has_an_option() {
        #[derive(clap::Parser)]
        struct Probe {
            #[command(flatten)]
            options: JobOptions,
        }
        let command = Probe::command();
        let flags: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_long().map(String::from))
            .collect();
        // Every optional table filled in, so that its fields show.
        let mut full = JobSpec::new("j", "stream:s", "p");
        full.flow = crate::model::FlowOptions {
            dedupe_by: Some("f".into()),
            dedupe_ttl_s: Some(1),
            order_by: Some("f".into()),
            rate_limit: Some("1/s".into()),
            key_rate_limit: Some("1/s".into()),
            rate_key: Some("f".into()),
        };
        full.aggregate = vec![crate::model::Aggregate::parse("name=a,count=1").unwrap()];
        full.priority_group = Some("g".into());
        full.catch_up = true;
        full.weight = 2;
        full.breaker = Some(crate::model::BreakerOptions {
            failure_pct: Some(50),
            window_s: Some(1),
            min_events: Some(1),
        });
        let spec = serde_json::to_value(full).unwrap();
        for field in spec.as_object().unwrap().keys() {
            let wanted: Vec<String> = match field.as_str() {
                // `also` is the config file's shorthand for a family of jobs in a priority
                // group: on the command line, each member is started with --priority-group
                // and --weight.
                "name" | "source" | "plugin" | "also" => continue,
                "config" => vec!["set".into(), "unset".into()],
                "retry_backoff" => vec!["retry-base-ms".into(), "retry-max-ms".into()],
                "scan" => spec["scan"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|k| k.replace('_', "-"))
                    .collect(),
                "flow" => spec["flow"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|k| k.replace('_', "-"))
                    .collect(),
                "breaker" => spec["breaker"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .map(|k| format!("breaker-{}", k.replace('_', "-")))
                    .collect(),
                other => vec![other.replace('_', "-")],
            };
            for flag in &wanted {
                assert!(flags.contains(flag), "spec field `{field}` has no --{flag}");
            }
        }
    }

    #[test]
    fn options_change_only_what_they_name() {
        let mut spec = JobSpec::new("j", "stream:s", "p");
        spec.config.insert("keep".into(), "1".into());
        spec.config.insert("drop".into(), "2".into());
        let options = JobOptions {
            batch: Some(7),
            allowed_streams: Some("out, audit:*".into()),
            unset: vec!["drop".into()],
            finite: Some(true),
            ..JobOptions::default()
        };
        options.apply(&mut spec).unwrap();
        assert_eq!(spec.batch, 7);
        assert_eq!(spec.allowed_streams, ["out", "audit:*"]);
        assert!(spec.finite);
        assert_eq!(spec.config.keys().collect::<Vec<_>>(), ["keep"]);
        assert_eq!(spec.block_ms, crate::model::spec::defaults::BLOCK_MS);
        JobOptions {
            allowed_streams: Some(String::new()),
            ..JobOptions::default()
        }
        .apply(&mut spec)
        .unwrap();
        assert!(spec.allowed_streams.is_empty());
    }
}

//! Every metric sluice exports, declared here and only here: names, labels, units and what
//! they count. The rest of the code records through these functions, so `/metrics` and
//! README's list cannot drift apart. Recorded with the `metrics` facade; `sluice run --admin`
//! installs the Prometheus recorder (without it, recording is a no-op).
//!
//! | metric | type | labels | meaning |
//! | --- | --- | --- | --- |
//! | `sluice_events_total` | counter | `job`, `version`, `outcome` | events committed by this host: `outcome` is `acked`, `skipped`, `retried`, `failed` (a failed delivery, also counted as retried or dead), `dead` |
//! | `sluice_events_received_total` | counter | `job`, `version` | deliveries committed by this host (each ends acked, skipped, retried or dead: `job status`'s `received`) |
//! | `sluice_handle_seconds` | histogram | `job` | time to hand one batch to the plugin |
//! | `sluice_commit_seconds` | histogram | `job` | time to commit one batch (all its scripts, retries included) |
//! | `sluice_batch_events` | histogram | `job` | events per handled batch |
//! | `sluice_plugin_failures_total` | counter | `job`, `kind` | failed calls by kind: `error`, `trap`, `timeout`, `memory`, `limit`, `init`, `abandoned`, `conflict`, `oversized`, `unavailable` |
//! | `sluice_conflicts_total` | counter | `job` | commits refused because another host wrote what the batch read |
//! | `sluice_swaps_total` | counter | `job` | plugin versions handed to a running job |
//! | `sluice_refusals_total` | counter | `plugin` | plugin versions this host refused |
//! | `sluice_instance_recycles_total` | counter | `job`, `reason` | plugin instances replaced by a fresh one: `failed` (a trap, timeout or memory overrun left it unusable), `calls` (after 100000 calls, bounding what a leaky guest hoards) |
//! | `sluice_breaker_trips_total` | counter | `job` | times this host paused a job because its circuit breaker tripped (`[job.breaker]`) |
//! | `sluice_duplicates_total` | counter | `job` | events this host acknowledged as duplicates of a committed idempotency key (`flow.dedupe_by`), without their effects |
//! | `sluice_trimmed_total` | counter | `job` | source entries trimmed by this host (`retention = "acked"`) |
//! | `sluice_list_moved_total` | counter | `job` | items this host moved from a `list:KEY` job's list into its list stream |
//! | `sluice_channel_messages_total` | counter | `job`, `outcome` | messages this host's subscription to a `channel:NAME` job's channel heard: `appended` to the job's stream, or `dropped` (the lease was lost, or Redis failed, before they were written) |
//! | `sluice_scan_passes_total` | counter | `job`, `event` | a scan job's passes this host saw `started`, `ended` or `overdue` (each is seen by one host of the fleet) |
//! | `sluice_scan_files_total` | counter | `job`, `outcome` | files this host's walker looked at: `changed` (an event), `unchanged` (skipped by the cache), `deleted` (an event) |
//! | `sluice_forwarded_total` | counter | `job` | outbox entries this host wrote to their targets (Redis Cluster: effects aimed at other slots) |
//! | `sluice_outbox_dead_total` | counter | `job` | outbox entries that could not be forwarded (their target holds another type), moved to the outbox's dead letters |
//! | `sluice_ingested_total` | counter | `streams`, `status` | HTTP ingest requests (`POST /ingest/{stream}`) by the `[[ingest]] streams` pattern they matched (`-` when none) and answer: `ok`, `unauthorized`, `forbidden`, `too_large`, `bad_request`, `unavailable` |
//! | `sluice_ingested_entries_total` | counter | `streams` | stream entries appended by HTTP ingest |
//! | `sluice_redis_connection_errors_total` | counter | | Redis commands that failed on their connection (Redis away, a timeout); each makes that connection reconnect |
//! | `sluice_jobs_running` | gauge | | jobs this host runs |
//! | `sluice_job_lag` | gauge | `job` | entries of the source not yet delivered to the job's group (read from Redis at scrape time, fleet-wide) |
//! | `sluice_job_pending` | gauge | `job` | entries delivered and not yet acknowledged (fleet-wide) |
//! | `sluice_job_retries_scheduled` | gauge | `job` | retries waiting for their time (fleet-wide) |
//! | `sluice_job_dead_letters` | gauge | `job` | entries in the job's dead-letter stream |
//! | `sluice_job_outbox` | gauge | `job` | (Redis Cluster) entries of the job's outbox not yet forwarded |
//! | `sluice_job_outbox_lag_seconds` | gauge | `job` | (Redis Cluster) age of the oldest entry of the job's outbox: the forwarding lag |
//! | `sluice_build_info` | gauge | `version` | 1, labelled with sluice's version |

use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::model::Failure;

/// Describe every metric (once, when the recorder is installed).
pub fn describe() {
    describe_counter!(
        "sluice_events_total",
        "Events committed by this host, by job, plugin version and outcome"
    );
    describe_counter!(
        "sluice_events_received_total",
        "Deliveries committed by this host (acked, skipped, retried or dead), by job and plugin version"
    );
    describe_histogram!(
        "sluice_handle_seconds",
        metrics::Unit::Seconds,
        "Time to hand one batch to the plugin"
    );
    describe_histogram!(
        "sluice_commit_seconds",
        metrics::Unit::Seconds,
        "Time to commit one batch"
    );
    describe_histogram!("sluice_batch_events", "Events per handled batch");
    describe_counter!(
        "sluice_plugin_failures_total",
        "Failed plugin calls, by job and kind"
    );
    describe_counter!(
        "sluice_conflicts_total",
        "Commits refused because another host wrote what the batch read"
    );
    describe_counter!(
        "sluice_swaps_total",
        "Plugin versions handed to a running job"
    );
    describe_counter!("sluice_refusals_total", "Plugin versions this host refused");
    describe_gauge!("sluice_jobs_running", "Jobs this host runs");
    describe_counter!(
        "sluice_instance_recycles_total",
        "Plugin instances replaced by a fresh one, by job and reason (failed, calls)"
    );
    describe_counter!(
        "sluice_breaker_trips_total",
        "Times this host paused a job because its circuit breaker tripped"
    );
    describe_counter!(
        "sluice_duplicates_total",
        "Events this host acknowledged as duplicates of a committed idempotency key"
    );
    describe_counter!(
        "sluice_trimmed_total",
        "Source entries trimmed by this host (retention = acked)"
    );
    describe_counter!(
        "sluice_channel_messages_total",
        "Messages a channel job's subscription on this host heard, by outcome (appended, dropped)"
    );
    describe_counter!(
        "sluice_scan_passes_total",
        "Scan passes this host saw started, ended or overdue"
    );
    describe_counter!(
        "sluice_scan_files_total",
        "Files this host's scan walker looked at, by outcome (changed, unchanged, deleted)"
    );
    describe_counter!(
        "sluice_list_moved_total",
        "Items this host moved from a list job's list into its list stream"
    );
    describe_counter!(
        "sluice_redis_connection_errors_total",
        "Redis commands that failed on their connection (each reconnects it)"
    );
    describe_gauge!(
        "sluice_job_lag",
        "Entries of the source not yet delivered to the job's group"
    );
    describe_gauge!(
        "sluice_job_pending",
        "Entries delivered to the job's group and not yet acknowledged"
    );
    describe_gauge!(
        "sluice_job_retries_scheduled",
        "Retries of the job waiting for their time"
    );
    describe_gauge!(
        "sluice_job_dead_letters",
        "Entries in the job's dead-letter stream"
    );
    describe_counter!(
        "sluice_forwarded_total",
        "Outbox entries this host wrote to their targets (Redis Cluster: effects aimed at other slots)"
    );
    describe_counter!(
        "sluice_outbox_dead_total",
        "Outbox entries that could not be forwarded (their target holds another type)"
    );
    describe_gauge!(
        "sluice_job_outbox",
        "Entries of the job's outbox not yet forwarded (Redis Cluster)"
    );
    describe_gauge!(
        "sluice_job_outbox_lag_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest entry of the job's outbox: the forwarding lag (Redis Cluster)"
    );
    describe_counter!(
        "sluice_ingested_total",
        "HTTP ingest requests, by the [[ingest]] streams pattern they matched and answer"
    );
    describe_counter!(
        "sluice_ingested_entries_total",
        "Stream entries appended by HTTP ingest, by the [[ingest]] streams pattern"
    );
    describe_gauge!("sluice_build_info", "1, labelled with sluice's version");
    gauge!("sluice_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// What one commit of a batch of `job` (plugin `version`) did.
pub fn committed(job: &str, version: &str, outcomes: [(&'static str, u64); 5]) {
    // Every delivery committed ends in one of these; `failed` is counted within them.
    let received: u64 = outcomes
        .iter()
        .filter(|(o, _)| *o != "failed")
        .map(|(_, n)| n)
        .sum();
    if received > 0 {
        counter!("sluice_events_received_total", "job" => job.to_string(), "version" => short(version))
            .increment(received);
    }
    for (outcome, n) in outcomes {
        if n > 0 {
            counter!("sluice_events_total", "job" => job.to_string(), "version" => short(version), "outcome" => outcome)
                .increment(n);
        }
    }
}

/// A batch of `events` handled in `took`.
pub fn handled(job: &str, events: usize, took: Duration) {
    histogram!("sluice_handle_seconds", "job" => job.to_string()).record(took.as_secs_f64());
    histogram!("sluice_batch_events", "job" => job.to_string()).record(events as f64);
}

/// A batch committed in `took`.
pub fn commit_time(job: &str, took: Duration) {
    histogram!("sluice_commit_seconds", "job" => job.to_string()).record(took.as_secs_f64());
}

/// A failed plugin call.
pub fn failure(job: &str, failure: &Failure) {
    counter!("sluice_plugin_failures_total", "job" => job.to_string(), "kind" => failure.kind.as_str())
        .increment(1);
}

/// A commit refused for a conflict.
pub fn conflict(job: &str) {
    counter!("sluice_conflicts_total", "job" => job.to_string()).increment(1);
}

/// A plugin instance of `job` replaced, for `reason`.
pub fn recycle(job: &str, reason: &'static str) {
    counter!("sluice_instance_recycles_total", "job" => job.to_string(), "reason" => reason)
        .increment(1);
}

/// `n` source entries of `job` trimmed.
pub fn breaker_trip(job: &str) {
    counter!("sluice_breaker_trips_total", "job" => job.to_string()).increment(1);
}

pub fn duplicates(job: &str, n: u64) {
    if n > 0 {
        counter!("sluice_duplicates_total", "job" => job.to_string()).increment(n);
    }
}

pub fn trimmed(job: &str, n: u64) {
    counter!("sluice_trimmed_total", "job" => job.to_string()).increment(n);
}

/// `n` messages of `job`'s channel `appended` to its stream or `dropped`.
pub fn channel_messages(job: &str, outcome: &'static str, n: u64) {
    counter!("sluice_channel_messages_total", "job" => job.to_string(), "outcome" => outcome)
        .increment(n);
}

/// A scan pass of `job` `started`, `ended` or `overdue`.
pub fn scan_pass(job: &str, event: &'static str) {
    counter!("sluice_scan_passes_total", "job" => job.to_string(), "event" => event).increment(1);
}

/// Files of `job`'s scan looked at by this host, by outcome.
pub fn scan_files(job: &str, changed: u64, unchanged: u64, deleted: u64) {
    for (outcome, n) in [
        ("changed", changed),
        ("unchanged", unchanged),
        ("deleted", deleted),
    ] {
        if n > 0 {
            counter!("sluice_scan_files_total", "job" => job.to_string(), "outcome" => outcome)
                .increment(n);
        }
    }
}

/// `n` items of `job`'s list moved into its list stream.
pub fn list_moved(job: &str, n: u64) {
    counter!("sluice_list_moved_total", "job" => job.to_string()).increment(n);
}

/// `n` outbox entries of `job` written to their targets.
pub fn forwarded(job: &str, n: u64) {
    if n > 0 {
        counter!("sluice_forwarded_total", "job" => job.to_string()).increment(n);
    }
}

/// `n` outbox entries of `job` that could not be forwarded.
pub fn outbox_dead(job: &str, n: u64) {
    counter!("sluice_outbox_dead_total", "job" => job.to_string()).increment(n);
}

/// A job's outbox as Redis holds it (sampled at scrape time, on a cluster): entries not yet
/// forwarded, and the age of the oldest (ms).
pub fn job_outbox(job: &str, entries: u64, oldest_ms: u64) {
    gauge!("sluice_job_outbox", "job" => job.to_string()).set(entries as f64);
    gauge!("sluice_job_outbox_lag_seconds", "job" => job.to_string())
        .set(oldest_ms as f64 / 1000.0);
}

/// An HTTP ingest request answered `status`, having matched `[[ingest]]` pattern `streams`
/// (`-`: none), appending `entries`.
pub fn ingested(streams: &str, status: &'static str, entries: u64) {
    counter!("sluice_ingested_total", "streams" => streams.to_string(), "status" => status)
        .increment(1);
    if entries > 0 {
        counter!("sluice_ingested_entries_total", "streams" => streams.to_string())
            .increment(entries);
    }
}

/// A Redis command failed on its connection.
pub fn redis_connection_error() {
    counter!("sluice_redis_connection_errors_total").increment(1);
}

/// A new plugin version handed to a running job.
pub fn swap(job: &str) {
    counter!("sluice_swaps_total", "job" => job.to_string()).increment(1);
}

/// A plugin version refused.
pub fn refusal(plugin: &str) {
    counter!("sluice_refusals_total", "plugin" => plugin.to_string()).increment(1);
}

/// Jobs running here now.
pub fn jobs_running(n: usize) {
    gauge!("sluice_jobs_running").set(n as f64);
}

/// A job's state as Redis holds it (sampled at scrape time).
pub fn job_state(job: &str, lag: Option<u64>, pending: u64, scheduled: u64, dead_letters: u64) {
    if let Some(lag) = lag {
        gauge!("sluice_job_lag", "job" => job.to_string()).set(lag as f64);
    }
    gauge!("sluice_job_pending", "job" => job.to_string()).set(pending as f64);
    gauge!("sluice_job_retries_scheduled", "job" => job.to_string()).set(scheduled as f64);
    gauge!("sluice_job_dead_letters", "job" => job.to_string()).set(dead_letters as f64);
}

/// The short form of a version (sha256) used as a label.
fn short(version: &str) -> String {
    crate::model::short(version).to_string()
}

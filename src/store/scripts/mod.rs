//! Every Lua script sluice runs in Redis, one `.lua` file each beside this module, each built
//! once per process: a [`Script`] hashes its source when built, and is then sent as `EVALSHA`
//! (redis-rs loads it on `NOSCRIPT`). Each file's header lists its KEYS and ARGV.
//!
//! Scripts are the unit of atomicity: everything one of them does happens together or not
//! at all, in one Cluster slot (every key it touches shares one hash tag).

use std::sync::LazyLock;

use redis::Script;

macro_rules! scripts {
    ($($(#[$doc:meta])* $name:ident = $file:literal;)*) => {
        $(
            $(#[$doc])*
            pub static $name: LazyLock<Script> =
                LazyLock::new(|| Script::new(include_str!($file)));
        )*
    };
}

scripts! {
    /// A batch's effects, acks, retries, dead letters, status records and counters.
    COMMIT = "commit.lua";
    /// Redelivery: due retries, idle entries of other consumers, due delayed queue tasks.
    CLAIM = "claim.lua";
    /// Resets the idle time of entries still being handled here.
    REFRESH = "refresh.lua";
    /// Registers a job as a new run in the control registry.
    JOB_START = "job_start.lua";
    /// Compare-and-set of a job's registry entry.
    JOB_STATE = "job_state.lua";
    /// A host's heartbeat: its record, when Redis saw it, and forgetting long-dead hosts.
    HEARTBEAT = "heartbeat.lua";
    /// Deletes a job's registry entry, if unchanged.
    JOB_DELETE = "job_delete.lua";
    /// Appends `job-started`, once per run.
    LIFECYCLE_BEGIN = "lifecycle_begin.lua";
    /// Trims a source stream of what every group acknowledged (`retention = "acked"`).
    RETENTION = "retention.lua";
    /// A page of dead letters with long field values cut in Redis (the dashboard's list).
    DLQ_PREVIEW = "dlq_preview.lua";
    /// Appends `job-finished` once a finite job's source is drained, once per run.
    LIFECYCLE_FINISH = "lifecycle_finish.lua";
    /// Writes a job's outbox entries to one target of another cluster slot, each once.
    FORWARD = "forward.lua";
    /// Takes, renews or lets go of a lease one host holds at a time (an outbox's forwarding
    /// lock, a channel job's subscription).
    LEASE = "lease.lua";
    /// Reads a job's outbox for forwarding, only while holding its lock.
    OUTBOX_READ = "outbox_read.lua";
    /// Acknowledges and deletes forwarded outbox entries, dead-letters unforwardable ones.
    OUTBOX_DONE = "outbox_done.lua";
    /// Appends the entries of one HTTP ingest request to a stream, all or none.
    INGEST = "ingest.lua";
    /// Moves items of a list source's list into the job's list stream.
    LIST_PULL = "list_pull.lua";
    /// Appends messages a channel job's subscriber received to its channel stream, only
    /// while it holds the job's subscription lease.
    CHANNEL_BRIDGE = "channel_bridge.lua";
    /// Starts, ends and reports overdue a scan job's passes, each once across the fleet.
    SCAN_PASS = "scan_pass.lua";
    /// Finishes one walk task of a scan job: events, new tasks, counters, in one step.
    SCAN_STEP = "scan_step.lua";
    /// Appends a timer job's tick, once per due time across the fleet.
    TIMER_FIRE = "timer_fire.lua";
    /// Reads new entries of an ordered job and lists each under its key, in one step.
    ORDER_READ = "order_read.lua";
    /// Tells which entries of an ordered job are first of their key.
    ORDER_HEADS = "order_heads.lua";
    /// Takes units of a job's (or a key's) rate limit: how long to wait for them.
    RATE_TAKE = "rate_take.lua";
    /// Fires an aggregate's windows whose time is up, drops idle ones.
    AGG_TICK = "agg_tick.lua";
}

//! Lifecycle events of a job: `job-started` once per run of the job, before any host handles
//! its first event, and `job-finished` once when a finite job has handled its whole source —
//! each exactly once across the fleet, however many hosts run the job.
//!
//! Both are entries of the job's lifecycle stream ([`Keys::lifecycle`]), appended by a script
//! that runs at most once per run (the job hash remembers the run it issued them for), and
//! handled like any event through the job's consumer group: committed with their effects,
//! retried, taken over from a dead host, dead-lettered. A host reads the job's source only
//! once the lifecycle stream has nothing undelivered or pending.

use std::collections::HashMap;

use redis::aio::ConnectionManager;
use redis::{Script, Value};

use super::stream::StreamJob;
use super::{Keys, StoreError};

/// The job's lifecycle stream as a source of its own: read through the job's group, with its
/// own retries, counters, status records and channel (its events are not the job's input),
/// and not registered as the job's source.
pub fn stream_job(keys: &Keys, job: &str, plugin: &str, source: &str, consumer: &str) -> StreamJob {
    let stream = keys.lifecycle(job, source);
    let mut life = StreamJob::new(keys, job, plugin, &stream, consumer);
    life.register = false;
    life.retry_key = format!("{stream}:retry");
    life.counters_key = format!("{stream}:counters");
    life.event_prefix = format!("{stream}:event:");
    life.channel = format!("{}:lifecycle", keys.events_channel(job));
    life
}

/// Append `job-started` for `run`, unless done already. True if this call appended it.
pub async fn begin(
    conn: &mut ConnectionManager,
    keys: &Keys,
    job: &str,
    source: &str,
    run: u64,
) -> Result<bool, StoreError> {
    let script = Script::new(
        r"
        -- Runs only go up: a host acting on a run that is already over issues nothing.
        if tonumber(redis.call('HGET', KEYS[1], 'lifecycle_run') or '0') >= tonumber(ARGV[1]) then
          return 0
        end
        redis.call('HSET', KEYS[1], 'lifecycle_run', ARGV[1])
        redis.call('HDEL', KEYS[1], 'finished_run')
        pcall(redis.call, 'XGROUP', 'CREATE', KEYS[2], ARGV[2], '0', 'MKSTREAM')
        redis.call('XADD', KEYS[2], '*', 'kind', 'job-started', 'run', ARGV[1])
        return 1",
    );
    let added: i64 = script
        .key(keys.job(job, source))
        .key(keys.lifecycle(job, source))
        .arg(run)
        .arg(keys.group(job))
        .invoke_async(conn)
        .await?;
    Ok(added == 1)
}

/// Where a finite job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Its source still has entries to deliver, pending or scheduled.
    Working,
    /// `job-finished` was appended by this call.
    FinishIssued,
    /// `job-finished` was appended earlier (by any host).
    FinishedBefore,
}

/// For a finite job: when its source is drained (nothing undelivered, pending, scheduled or,
/// for a queue, delayed) and `job-started` is handled, append `job-finished` (once per run).
pub async fn check_finished(
    conn: &mut ConnectionManager,
    keys: &Keys,
    job: &str,
    source: &str,
    delayed: Option<&str>,
    run: u64,
) -> Result<Progress, StoreError> {
    let script = Script::new(
        r"
        if redis.call('HGET', KEYS[1], 'finished_run') == ARGV[1] then return 2 end
        -- Only for the run now under way (a host may still act on an older one).
        if redis.call('HGET', KEYS[1], 'lifecycle_run') ~= ARGV[1] then return 0 end
        local function id_at_least(a, b)
          local am, as = string.match(a, '^(%d+)-(%d+)$')
          local bm, bs = string.match(b, '^(%d+)-(%d+)$')
          am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
          return am > bm or (am == bm and as >= bs)
        end
        local function drained(stream)
          local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', stream)
          if not ok then return false end
          for _, g in ipairs(groups) do
            local f = {}
            for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
            if f['name'] == ARGV[2] then
              if f['pending'] ~= 0 then return false end
              if f['lag'] then return f['lag'] == 0 end
              -- No lag when entries were deleted: compare with the newest entry.
              local newest = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
              return #newest == 0 or id_at_least(f['last-delivered-id'], newest[1][1])
            end
          end
          return false
        end
        if not drained(KEYS[2]) or not drained(KEYS[3]) then return 0 end
        if redis.call('ZCARD', KEYS[4]) > 0 or redis.call('ZCARD', KEYS[5]) > 0 then return 0 end
        redis.call('HSET', KEYS[1], 'finished_run', ARGV[1])
        redis.call('XADD', KEYS[2], '*', 'kind', 'job-finished', 'run', ARGV[1])
        return 1",
    );
    let state: i64 = script
        .key(keys.job(job, source))
        .key(keys.lifecycle(job, source))
        .key(source)
        .key(keys.retry(job, source))
        // A queue's delayed tasks (same slot); else the retry set again.
        .key(delayed.map_or_else(|| keys.retry(job, source), str::to_string))
        .arg(run)
        .arg(keys.group(job))
        .invoke_async(conn)
        .await?;
    Ok(match state {
        1 => Progress::FinishIssued,
        2 => Progress::FinishedBefore,
        _ => Progress::Working,
    })
}

/// True when the job's lifecycle stream has nothing undelivered or pending for its group.
pub async fn drained(
    conn: &mut ConnectionManager,
    keys: &Keys,
    job: &str,
    source: &str,
) -> Result<bool, StoreError> {
    let reply: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(keys.lifecycle(job, source))
        .query_async(conn)
        .await?;
    let group = keys.group(job);
    Ok(reply.iter().any(|g| {
        let int = |k: &str| {
            g.get(k)
                .and_then(|v| redis::from_redis_value_ref::<i64>(v).ok())
        };
        g.get("name")
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
            .is_some_and(|n| n == group)
            && int("pending") == Some(0)
            && int("lag") == Some(0)
    }))
}

//! The Redis side of a `scan:PATH` job: its passes (`scan_pass.lua`), its walk tasks (a
//! stream read through the job's group by every host's walker, taken over from dead ones
//! after `claim_idle_ms`), and each task's result compared with the change cache and
//! committed in one step (`scan_step.lua`). The filesystem side is `crate::scan`; the host
//! joins them (`host/scan.rs`).

use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::{FromRedisValue as _, Value};

use super::{Conn, Keys, StoreError, scripts};

/// One scan job's names, as its walkers and passes use them.
#[derive(Debug, Clone)]
pub struct ScanJob {
    pub job: String,
    /// The tree's root: the events' source.
    pub root: String,
    /// The job hash (pass state and counters).
    pub job_key: String,
    pub tasks: String,
    /// The job's stream, where file changes go.
    pub events: String,
    pub lifecycle: String,
    pub group: String,
    pub consumer: String,
    pub keys: Keys,
}

impl ScanJob {
    pub fn new(keys: &Keys, job: &str, root: &str, consumer: &str) -> ScanJob {
        let events = keys.scan_stream(job);
        ScanJob {
            job: job.to_string(),
            root: root.to_string(),
            job_key: keys.job(job, &events),
            tasks: keys.scan_tasks(job),
            lifecycle: keys.lifecycle(job, &events),
            group: keys.group(job),
            consumer: consumer.to_string(),
            keys: keys.clone(),
            events,
        }
    }
}

/// What a tick of the passes did or found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// This tick started pass N.
    Started(u64),
    /// Pass N runs.
    Running(u64),
    /// This tick saw pass N end.
    Ended(u64),
    /// Pass N runs past its interval (reported once per pass, by this tick).
    Overdue(u64),
    /// The next pass is due in this long.
    Waiting(Duration),
    /// A finite job's one pass of this run is over.
    Done,
}

/// Start a pass if one is due, see one end, report one overdue (each once, fleet-wide).
/// `interval` zero: one pass per run (a finite job).
pub async fn tick(
    conn: &mut Conn,
    scan: &ScanJob,
    interval: Duration,
    run: u64,
) -> Result<Pass, StoreError> {
    let (what, n): (String, u64) = scripts::SCAN_PASS
        .key(&scan.job_key)
        .key(&scan.tasks)
        .key(&scan.events)
        .key(&scan.lifecycle)
        .arg(crate::model::now_ms())
        .arg(interval.as_millis() as u64)
        .arg(run)
        .arg(&scan.group)
        .invoke_async(conn)
        .await?;
    Ok(match what.as_str() {
        "started" => Pass::Started(n),
        "ended" => Pass::Ended(n),
        "overdue" => Pass::Overdue(n),
        "waiting" => Pass::Waiting(Duration::from_millis(n)),
        "done" => Pass::Done,
        _ => Pass::Running(n),
    })
}

/// A walk task: a directory to look at, or a batch of one directory's files to stat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    /// Relative to the root ("" for the root).
    pub dir: Vec<u8>,
    pub pass: u64,
    pub depth: u32,
    /// A batch's file names (None: the whole directory).
    pub names: Option<Vec<Vec<u8>>>,
}

fn task_of(entry: StreamId) -> Task {
    let bytes = |name: &str| {
        entry
            .map
            .get(name)
            .and_then(|v| Vec::<u8>::from_redis_value(v.clone()).ok())
    };
    let number = |name: &str| {
        bytes(name)
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Task {
        dir: bytes("dir").unwrap_or_default(),
        pass: number("pass"),
        depth: number("depth") as u32,
        names: bytes("names").map(|b| b.split(|c| *c == 0).map(<[u8]>::to_vec).collect()),
        id: entry.id,
    }
}

/// Up to `count` tasks for this walker: with `own`, first those it holds already (a
/// previous life's, or ones it could not finish), then new ones, waiting up to `block`.
pub async fn read_tasks(
    conn: &mut Conn,
    scan: &ScanJob,
    count: usize,
    block: Duration,
    own: bool,
) -> Result<Vec<Task>, StoreError> {
    let own = own.then_some(("0", None));
    for (start, block) in own.into_iter().chain([(">", Some(block))]) {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&scan.group)
            .arg(&scan.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&scan.tasks).arg(start);
        let reply: Option<StreamReadReply> = cmd.query_async(conn).await?;
        let tasks: Vec<Task> = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            // An own pending entry deleted meanwhile comes back without fields.
            .filter(|e| !e.map.is_empty())
            .map(task_of)
            .collect();
        if !tasks.is_empty() {
            return Ok(tasks);
        }
    }
    Ok(Vec::new())
}

/// Keep tasks `ids` from looking abandoned while this walker holds them (the stream's own
/// refresh: only those still this walker's and idle `min_idle` or more).
pub async fn refresh(
    conn: &mut Conn,
    scan: &ScanJob,
    ids: &[String],
    min_idle: Duration,
) -> Result<(), StoreError> {
    let _: u64 = scripts::REFRESH
        .key(&scan.tasks)
        .key(&scan.job_key)
        .arg(min_idle.as_millis() as u64)
        .arg(&scan.consumer)
        .arg(&scan.group)
        .arg(ids)
        .invoke_async(conn)
        .await?;
    Ok(())
}

/// Take over up to `count` tasks idle on other walkers for `idle` (dead or stuck hosts').
pub async fn claim_idle(
    conn: &mut Conn,
    scan: &ScanJob,
    idle: Duration,
    count: usize,
) -> Result<Vec<Task>, StoreError> {
    let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
        .arg(&scan.tasks)
        .arg(&scan.group)
        .arg(&scan.consumer)
        .arg(idle.as_millis() as u64)
        .arg("0-0")
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(reply
        .claimed
        .into_iter()
        .filter(|e| !e.map.is_empty())
        .map(task_of)
        .collect())
}

/// A file looked at: its name, cache signature, and its event's fields after `path`.
#[derive(Debug, Clone)]
pub struct FileFound {
    pub name: Vec<u8>,
    pub signature: String,
    pub fields: Vec<(&'static str, Vec<u8>)>,
}

/// What a walker found for one task.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The directory is gone: everything the cache has under it went.
    pub gone: bool,
    /// The directory could not be read: nothing is concluded about its entries.
    pub unreadable_dir: bool,
    /// Names present but not looked at by this task (excluded, unreadable, batched).
    pub present: Vec<Vec<u8>>,
    pub dirs: Vec<Vec<u8>>,
    pub batches: Vec<Vec<Vec<u8>>>,
    pub files: Vec<FileFound>,
    pub excluded: u64,
    pub unreadable: u64,
}

/// The job's choices that shape a step.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepFlags {
    pub ignore_cache: bool,
    pub initial_ingest: bool,
    pub dir_events: bool,
}

/// What a step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stepped {
    pub files: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub deleted: u64,
}

/// Commit task `task`'s result `found` in one step; None if the task is no longer this
/// walker's (another took it over).
pub async fn finish(
    conn: &mut Conn,
    scan: &ScanJob,
    task: &Task,
    found: &Found,
    flags: StepFlags,
) -> Result<Option<Stepped>, StoreError> {
    let whole = task.names.is_none();
    let mut f = String::new();
    if !flags.ignore_cache {
        f.push('c');
    }
    // Deletions are looked for in a directory read whole; in a gone one always.
    if found.gone || (!flags.initial_ingest && !found.unreadable_dir) {
        f.push('d');
    }
    if flags.dir_events {
        f.push('e');
    }
    let seen = scan.keys.scan_seen(&scan.job, &task.dir);
    let mut call = scripts::SCAN_STEP.key(&scan.tasks);
    call.key(&scan.events)
        .key(&scan.job_key)
        .key(&seen)
        .arg(&scan.group)
        .arg(&scan.consumer)
        .arg(&task.id)
        .arg(task.pass)
        .arg(f)
        .arg(&scan.root)
        .arg(&task.dir)
        .arg(task.depth)
        .arg(if whole { "1" } else { "0" })
        .arg(found.excluded)
        .arg(found.unreadable)
        .arg(found.present.len());
    for name in &found.present {
        call.arg(name);
    }
    call.arg(found.dirs.len());
    for name in &found.dirs {
        call.arg(name);
    }
    call.arg(found.batches.len());
    for batch in &found.batches {
        call.arg(batch.join(&0u8));
    }
    for file in &found.files {
        call.arg(&file.name)
            .arg(&file.signature)
            .arg(file.fields.len());
        for (name, value) in &file.fields {
            call.arg(*name).arg(value);
        }
    }
    let reply: Value = call.invoke_async(conn).await?;
    Ok(match reply {
        Value::Array(v) => {
            let n = |i: usize| match v.get(i) {
                Some(Value::Int(n)) => *n as u64,
                _ => 0,
            };
            Some(Stepped {
                files: n(0),
                changed: n(1),
                unchanged: n(2),
                deleted: n(3),
            })
        }
        _ => None,
    })
}

/// Where a scan job's passes stand, for `job status` (from its hash).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScanStatus {
    /// The newest pass's number (0: none yet), and whether it runs.
    pub pass: u64,
    pub running: bool,
    pub started_at: Option<u64>,
    pub ended_at: Option<u64>,
    /// The newest pass's counts: directories walked, files looked at, changed (events),
    /// unchanged (skipped by the cache), deleted, excluded, unreadable.
    pub dirs: u64,
    pub files: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub excluded: u64,
    pub unreadable: u64,
    /// Passes that ran past their interval.
    pub overdue: u64,
    /// Walk tasks of the running pass not yet done.
    pub tasks: u64,
}

impl ScanStatus {
    /// From a job hash's fields.
    pub fn of(hash: &std::collections::HashMap<String, String>, tasks: u64) -> ScanStatus {
        let num = |k: &str| hash.get(k).and_then(|v| v.parse().ok());
        ScanStatus {
            pass: num("scan_pass").unwrap_or(0),
            running: hash.get("scan_running").is_some_and(|v| v == "1"),
            started_at: num("scan_started_at"),
            ended_at: num("scan_ended_at"),
            dirs: num("scan_dirs").unwrap_or(0),
            files: num("scan_files").unwrap_or(0),
            changed: num("scan_changed").unwrap_or(0),
            unchanged: num("scan_unchanged").unwrap_or(0),
            deleted: num("scan_deleted").unwrap_or(0),
            excluded: num("scan_excluded").unwrap_or(0),
            unreadable: num("scan_unreadable").unwrap_or(0),
            overdue: num("scan_overdue").unwrap_or(0),
            tasks,
        }
    }
}
